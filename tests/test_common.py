"""Workdir output shared by the experiments (`experiments._common`)."""

import json

from experiments import _common


def test_jsonl_rows_carry_their_run_and_a_cut_line_never_swallows_the_next_row(tmp_path):
    path = str(tmp_path / "metrics.jsonl")
    first = _common.JsonlWriter(path)
    first.write({"step": 1})
    first.close()
    with open(path, "a") as f:
        f.write('{"step": 2, "lo')  # a crash in the middle of a row
    second = _common.JsonlWriter(path)
    second.write({"step": 2})
    second.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1]) == {"step": 2, "run": 2}  # a line of its own
    assert _common.read_jsonl(path) == [{"step": 1, "run": 1}, {"step": 2, "run": 2}]
    # Rows written before runs were numbered count as run 0.
    (tmp_path / "old.jsonl").write_text('{"step": 1}\n')
    old = _common.JsonlWriter(str(tmp_path / "old.jsonl"))
    old.close()
    assert old.run == 1
