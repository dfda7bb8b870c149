"""Writes each ``notebooks/*.py`` (jupytext "percent" format) as an output-free ``.ipynb``.

  python notebooks/sync.py          # rewrite the .ipynb files
  python notebooks/sync.py --check  # exit 1 if any .ipynb is out of date

The ``.py`` files are the source (reviewable diffs, runnable as scripts, executed at tiny size
by the tests); the ``.ipynb`` files are what Colab opens. With jupytext installed,
``jupytext --sync notebooks/*.py`` does the same pairing.
"""

import glob
import json
import os
import re
import sys

_CELL = re.compile(r"^# %%(?: \[(markdown)\])?.*$")


def to_notebook(source: str) -> dict:
    """The nbformat-4 notebook (as a dict) of a percent-format script."""
    lines = source.splitlines()
    if lines and lines[0] == "# ---":  # the jupytext header
        end = lines.index("# ---", 1)
        lines = lines[end + 1 :]
    cells, kind, body = [], None, []

    def flush():
        text = "\n".join(body).strip("\n")
        if kind is not None and text:
            if kind == "markdown":
                text = "\n".join(
                    line[2:] if line.startswith("# ") else line.lstrip("#")
                    for line in text.splitlines()
                )
            cell = {
                "cell_type": kind,
                "id": f"cell-{len(cells)}",  # (nbformat 4.5 wants one: stable, by position)
                "metadata": {},
                "source": text.splitlines(keepends=True),
            }
            if kind == "code":
                cell.update(execution_count=None, outputs=[])
            cells.append(cell)

    for line in lines:
        match = _CELL.match(line)
        if match:
            flush()
            kind, body = ("markdown" if match.group(1) else "code"), []
        else:
            body.append(line)
    flush()
    return {
        "cells": cells,
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
            "accelerator": "TPU",
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def render(path: str) -> str:
    with open(path) as f:
        return json.dumps(to_notebook(f.read()), indent=1) + "\n"


def main(check: bool) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    stale = []
    for path in sorted(glob.glob(os.path.join(here, "*.py"))):
        if os.path.basename(path) == "sync.py":
            continue
        target = path[:-3] + ".ipynb"
        text = render(path)
        current = None
        if os.path.exists(target):
            with open(target) as f:
                current = f.read()
        if current != text:
            stale.append(target)
            if not check:
                with open(target, "w") as f:
                    f.write(text)
    if check and stale:
        print("out of date (run python notebooks/sync.py):", *stale, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main("--check" in sys.argv[1:]))
