"""`experiments.benchmark`: the accuracy table on one small case."""

import jax
import numpy as np

import mi_jax
from experiments import _common, benchmark


def test_accuracy_rows_compare_the_two_rules(monkeypatch):
    monkeypatch.setattr(benchmark, "ACCURACY_CASES", {"set A": ([("gaussian", 2, 1.0)], (0,))})
    rows = benchmark.accuracy_rows(n=800)
    assert [r["task"] for r in rows] == ["gaussian", "mean |rel. error|"]
    x, y = mi_jax.get_task("gaussian", dim=2).sample(jax.random.key(0), 1.0, 800)
    x, y = np.asarray(x), np.asarray(y)
    defaults = mi_jax.estimate_mi(x, y, seed=0).mi
    earlier = mi_jax.estimate_mi(x, y, seed=0, **benchmark.EARLIER_RULE).mi
    assert rows[0]["defaults"] == f"{defaults:.2f}" and rows[0]["earlier"] == f"{earlier:.2f}"
    assert rows[1]["earlier_rel"] == f"{abs(earlier - 1.0):.3f}"
    table = _common.format_table(rows, benchmark.ACCURACY_COLUMNS)
    assert "mean |rel. error|" in table and len(table.splitlines()) == 4


def test_independence_rows_shuffle_y_against_x():
    rows = benchmark.independence_rows(n=600, dims=(3,), draws=(0,))
    assert [r["dim"] for r in rows] == [3]
    x, y = mi_jax.get_task("gaussian", dim=3).sample(jax.random.key(0), 1.0, 600)
    y = np.asarray(y)[np.random.default_rng(0).permutation(600)]
    expected = mi_jax.estimate_mi(np.asarray(x), y, seed=0).mi
    assert rows[0]["defaults"] == f"{expected:.3f}"
    assert 0.0 <= expected < 0.05  # never below 0, and near it
