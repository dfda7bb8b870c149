"""The experiments' figures: what each panel shows (caught before they are saved)."""

import json

import numpy as np
import pytest

from experiments import _common, halves, ib, infomax, mige_toy, staircase


@pytest.fixture
def figures(monkeypatch):
    """``{file name: figure}`` of the figures the code under test saves (not written)."""
    caught = {}
    monkeypatch.setattr(_common, "save_figure", lambda fig, path, **_: caught.update({path: fig}))
    return caught


def _notes(ax) -> str:
    return " ".join(t.get_text() for t in ax.texts)


def test_limit_axis_notes_the_values_beyond_it():
    _, ax = _common.subplots()
    _common.limit_axis(ax, -1.0, 3.0, [np.array([0.5, -7.25e3, np.nan]), [2.0, 4.5]])
    assert ax.get_ylim() == (-1.0, 3.0)
    assert _notes(ax) == "off scale: min -7.25e+03\noff scale: max 4.5"
    _, ax2 = _common.subplots()
    _common.limit_axis(ax2, -1.0, 3.0, [[0.0, 2.9]])
    assert _notes(ax2) == ""


def test_plots_leave_pyplot_and_its_backend_alone(tmp_path):
    # Before: every experiment's plot switched matplotlib to Agg for the whole process (a
    # notebook's inline backend stopped showing figures after `train_and_evaluate`).
    import matplotlib
    import matplotlib.pyplot as plt

    before = matplotlib.get_backend()
    matplotlib.use("svg")  # a backend no plot of ours asks for, as "inline" is not
    try:
        values = np.linspace(0.0, 2.0, 40).reshape(1, 40, 1)
        path = str(tmp_path / "staircase.png")
        staircase.plot_staircase(path, values, np.full(40, 2.0), ["infonce"], "t", ema_decay=0.9)
        assert matplotlib.get_backend() == "svg"
        assert plt.get_fignums() == []  # nothing for a notebook to show or to leak
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"  # drawn and written without pyplot
    finally:
        matplotlib.use(before)


def test_halves_mi_panel_shows_curves_that_stay_below_minus_one(figures):
    # Before: the axis was cut to [-1, max + 0.3], empty where every value of an encoder was
    # below -1 (RealNVP with a bilinear critic on `:quick`: -1.3 to -7.8).
    steps = [0, 10, 20, 30]
    runs = [
        dict(encoder="realnvp", critic="bilinear", bound=bound, steps=steps,
             accuracy=np.full((4, 2), 0.5), mi_test=np.array([start, -5.0, -2.0, -1.3])[:, None]
             + np.array([0.0, -0.2]))
        for bound, start in (("infonce", -7.8), ("nwj", -7000.0))
    ]  # fmt: skip
    halves.plot("wd", runs)
    ax = figures["wd/curves.png"].axes[1]
    low, high = ax.get_ylim()
    assert low < -2.2 and -1.3 < high < 0.5  # the later half of every curve, and 0
    assert "off scale: min -7e+03" in _notes(ax)  # (of the drawn means over seeds)


def test_staircase_notes_a_smoothed_estimate_off_the_axis(figures):
    steps = 200
    true_mi = np.full(steps, 2.0)
    values = np.stack([np.full(steps, 2.0), np.linspace(0.0, -5e5, steps)], axis=-1)[None]
    staircase.plot_staircase("s.png", values, true_mi, ["infonce", "js"], "t", ema_decay=0.9)
    fine, diverged = figures["s.png"].axes[:2]
    assert _notes(fine) == "" and "off scale: min -" in _notes(diverged)


def test_mige_toy_notes_an_estimator_off_the_axis(figures):
    rhos = np.linspace(-0.5, 0.5, 5)
    truth = mige_toy.true_gradient(rhos, 8)[:, None]
    curves = {8: {"mige_ssge": np.repeat(truth, 3, axis=1), "flo": 1e7 * np.ones((5, 3))}}
    mige_toy.plot("m.png", curves, rhos, [8])
    assert _notes(figures["m.png"].axes[0]) == "off scale: max 1e+07"


def test_ib_figures_show_the_seeds_spread_and_no_kl_for_the_deterministic_net(figures):
    # Before: means only (a gap of 0.14 points drawn where the seeds' spread was 0.5), and the
    # KL panel's legend listed the deterministic net, which has no KL line.
    history = [
        dict(beta=beta, seed=seed, epoch=epoch, error_mean=0.1 + 0.01 * seed, kl=10.0 + epoch)
        for beta in (1e-3, 1e-2)
        for seed in (0, 1)
        for epoch in (1, 2)
    ]
    selected = [
        dict(beta=beta, error_mean=0.105, error_mean_std=0.005, num_seeds=2)
        for beta in (1e-3, 1e-2)
    ]
    det = [dict(r, beta=0.0) for r in history if r["beta"] == 1e-3]
    results = {
        "methods": {
            "deterministic": dict(betas=[0.0], history=det, selected=[dict(selected[0], beta=0.0)]),
            "vib": dict(betas=[1e-3, 1e-2], history=history, selected=selected),
        }
    }
    ib.plot("wd", results)
    (ax,) = figures["wd/error_vs_beta.png"].axes
    (bars,) = ax.containers  # vib's error bars
    assert np.allclose(bars.lines[2][0].get_segments()[0][:, 1], [10.0, 11.0])
    assert len(ax.patches) == 1  # the deterministic net's band
    assert "mean ± std over 2 seeds" in ax.get_title()
    _, kl_panel = figures["wd/curves.png"].axes
    labels = kl_panel.get_legend_handles_labels()[1]
    assert labels == ["vib beta=0.001", "vib beta=0.01"]
    # Over less than a decade a log axis labels its ticks as plain numbers (was 1.05x10^1).
    figures["wd/curves.png"].canvas.draw()
    ticks = [t.get_text() for t in kl_panel.get_yticklabels(minor=True) if t.get_text()]
    assert ticks and all("times" not in t and "^" not in t for t in ticks), ticks


def test_infomax_draws_the_infonce_readout_once_where_it_is_the_estimate(tmp_path, figures):
    # Before: with the InfoNCE estimator, mi_local and infonce_local (the same numbers) were
    # two legend entries and one visible line.
    rows = [
        dict(step=s, kind="train", seconds=1.0, loss=-1.0, mi_local=0.1 * s,
             infonce_local=0.1 * s, mi_global=0.2 * s, infonce_global=0.3 * s)
        for s in (1, 2)
    ]  # fmt: skip
    rows.append(dict(step=2, kind="eval", seconds=4.0, linear_global=0.5))
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    final = [dict(encoder="trained", representation="global", probe="linear", test_accuracy=0.5)]
    infomax.plot(str(tmp_path), final)
    losses, mi, probes = figures[str(tmp_path / "curves.png")].axes
    assert mi.get_legend_handles_labels()[1] == [
        "mi_global", "infonce_global", "mi_local (= infonce_local)"
    ]  # fmt: skip
    assert probes.get_legend_handles_labels()[1] == ["linear_global"]  # not the seconds
