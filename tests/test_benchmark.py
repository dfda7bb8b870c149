"""`experiments.benchmark`: the accuracy table on one small case."""

import json
import subprocess
import warnings

import jax
import numpy as np
import pytest

import mi_jax
from experiments import _common, benchmark


def test_accuracy_rows_compare_the_two_rules(monkeypatch):
    # A Cauchy case, where the two rules read differently at two decimals. Catches: the
    # columns swapped, the relative error's sign flipped.
    monkeypatch.setattr(benchmark, "ACCURACY_CASES", {"set A": ([("cauchy", 2, 1.0)], (0,))})
    rows = benchmark.accuracy_rows(n=800)
    assert [r["task"] for r in rows] == ["cauchy", "mean |rel. error|"]
    x, y = mi_jax.get_task("cauchy", dim=2).sample(jax.random.key(0), 1.0, 800)
    x, y = np.asarray(x), np.asarray(y)
    with warnings.catch_warnings():  # (the Cauchy tails: held-out values far out, as expected)
        warnings.filterwarnings("ignore", "`[xy]` has .* held-out value.s. far beyond")
        defaults = mi_jax.estimate_mi(x, y, seed=0).mi
        earlier = mi_jax.estimate_mi(x, y, seed=0, **benchmark.EARLIER_RULE).mi
    assert f"{defaults:.2f}" != f"{earlier:.2f}"
    assert rows[0]["defaults"] == f"{defaults:.2f}" and rows[0]["earlier"] == f"{earlier:.2f}"
    assert rows[0]["defaults_rel"] == f"{defaults - 1.0:+.2f}"
    assert rows[0]["earlier_rel"] == f"{earlier - 1.0:+.2f}"
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


def test_estimate_rows_report_the_fit_time_and_the_signed_relative_error(monkeypatch):
    # Each case runs in a fresh process, which reports its fit (compilation included) and its
    # time with the imports. Catches: the relative error's sign flipped, the seconds with the
    # imports (the README's 2-second target is the fit's).
    out = json.dumps({"mi": 1.5, "best_step": 100, "seconds": 2.0, "with_import": 5.0})
    done = subprocess.CompletedProcess([], 0, stdout=out + "\n", stderr="")
    monkeypatch.setattr(benchmark.subprocess, "run", lambda *args, **kwargs: done)
    rows = benchmark.estimate_rows()
    first = rows[0]
    assert (first["task"], first["dim"], first["true_mi"]) == ("gaussian", 5, 2.0)
    assert first["rel_error"] == pytest.approx(-0.25) and first["seconds"] == 2.0
