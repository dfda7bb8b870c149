r"""One table from InfoMax and AMDIM runs: test accuracy per estimator, representation and probe.

  python -m experiments.infomax_table /tmp/infomax/js /tmp/infomax/infonce ...

Each argument is the workdir of a finished `experiments.infomax` or `experiments.amdim` run
(its ``results.json``; the ``experiment`` column says which). A row per run: the trained
encoder's probe test accuracies, then the same probes on the randomly initialized encoder and
on raw pixels (the baselines the run also measured), and the run's wall time (compilation,
training over every segment of a resumed run, and the probes, periodic and final).
A run with ``num_seeds > 1`` shows each accuracy as "mean ± std" over its seeds (`rows_from`
keeps the means as numbers and the spreads under ``COLUMN std``); its raw-pixel probes, fitted
once, show one number.
"""

import json
import os
import sys

from experiments import _common

# What a row reads from a run's results.json.
REQUIRED = ("dataset", "estimator", "num_steps", "probes", "train_total_s", "eval_s")


def rows_from(workdirs: list[str]) -> tuple[list[dict], list[str]]:
    """Table rows (one per workdir) and their column names."""
    rows, probe_columns = [], []
    for workdir in workdirs:
        path = os.path.join(workdir, "results.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} does not exist: is {workdir!r} a finished run?")
        with open(path) as f:
            results = json.load(f)
        missing = [k for k in REQUIRED if k not in results]
        if missing:
            raise ValueError(
                f"{path} lacks {missing}: {workdir!r} is not a finished InfoMax or AMDIM run."
            )
        row = {
            # AMDIM shares InfoMax's trainer and results; its config alone has `views`.
            "experiment": "amdim" if "views" in results.get("config", {}) else "infomax",
            "dataset": results["dataset"],
            "estimator": results["estimator"],
            "steps": results["num_steps"],
            "seeds": results.get("num_seeds", 1),
        }
        for probe in results["probes"]:
            column = f"{probe['encoder']}:{probe['representation']}:{probe['probe']}"
            row[column] = probe["test_accuracy"]
            if probe.get("num_seeds", 1) > 1:  # raw pixels are fitted once: no spread
                row[f"{column} std"] = probe["test_accuracy_std"]
            if column not in probe_columns:
                probe_columns.append(column)
        probes_s = results.get("periodic_eval_s", 0.0) + results["eval_s"]  # (earlier runs: 0)
        row["minutes"] = (results["train_total_s"] + probes_s) / 60
        rows.append(row)
    for row in rows:  # runs probed on different representations: blank cells
        for column in probe_columns:
            row.setdefault(column, "-")
    return rows, ["experiment", "dataset", "estimator", "steps", "seeds", *probe_columns, "minutes"]


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit(__doc__)
    try:
        rows, columns = rows_from(argv)
    except (OSError, ValueError) as e:  # a workdir that is not a finished run: named
        raise SystemExit(f"error: {e}") from e
    for row in rows:  # "mean ± std" where a run had several seeds
        for column in columns:
            if f"{column} std" in row:
                row[column] = f"{row[column]:.3f} ± {row[f'{column} std']:.3f}"
    print(_common.format_table(rows, columns))


if __name__ == "__main__":
    main(sys.argv[1:])
