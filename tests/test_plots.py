"""The experiments' figures: what each panel shows (caught before they are saved)."""

import json

import numpy as np

from experiments import _common, halves, ib, infomax, mige_toy, staircase


def _notes(ax) -> str:
    return " ".join(t.get_text() for t in ax.texts)


def test_limit_axis_notes_the_values_beyond_it():
    _, ax = _common.subplots()
    _common.limit_axis(ax, -1.0, 3.0, [np.array([0.5, -7.25e3, np.nan]), [2.0, 4.5]])
    assert ax.get_ylim() == (-1.0, 3.0)
    assert _notes(ax) == (
        "off scale: min -7.25e+03\noff scale: max 4.5\nnot finite (not drawn): 1 value"
    )  # (before: the NaN unmentioned, a diverged curve read as a shorter one)
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
    assert _notes(figures["m.png"].axes[0]) == "off scale: max 1e+07 (flo)"
    # Its band (std 0) is drawn; one wider than the axis is not (it covered every curve).
    curves[8]["nwj"] = np.array([[1e5, -1e5, 0.0]] * 5)
    mige_toy.plot("m2.png", curves, rhos, [8])
    bands = [c for c in figures["m2.png"].axes[0].collections if len(c.get_paths())]
    assert len(bands) == 2 and "band: ± std over 3 seeds" in figures["m2.png"].axes[0].get_title()


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
    error_panel, kl_panel = figures["wd/curves.png"].axes
    labels = kl_panel.get_legend_handles_labels()[1]
    assert labels == ["vib beta=0.001", "vib beta=0.01"]
    # A run's colour is the same in both panels (before: the KL panel, without the
    # deterministic net, shifted every colour by one).
    colours = [
        {ln.get_label(): ln.get_color() for ln in ax.lines} for ax in (error_panel, kl_panel)
    ]
    assert all(colours[0][k] == c for k, c in colours[1].items())
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


def test_halves_accuracy_shows_the_seeds_spread_and_the_raw_pixels(figures):
    # Before: means only (a 0.7-point range stretched over the axis read as a ranking) and no
    # raw-pixel baseline, which the run prints.
    runs = [
        dict(encoder="mlp", critic=c, bound="infonce", steps=[0, 10], mi_test=np.ones((2, 2)),
             accuracy=np.array([[0.80, 0.84], [0.86, 0.88]]))
        for c in ("bilinear", "separable")
    ]  # fmt: skip
    halves.plot("wd", runs, pixel_accuracy=0.847)
    accuracy = figures["wd/curves.png"].axes[0]
    assert len(accuracy.collections) == 2  # a band per combination
    assert "raw pixels" in accuracy.get_legend_handles_labels()[1]
    assert "mean ± std over 2 seeds" in accuracy.get_title()


def test_infomax_vae_gives_each_model_one_colour_in_every_panel(figures):
    from experiments import infomax_vae

    history = [
        dict(model=m, epoch=e, seed=0, elbo=-1.0, kl=2.0, mi=1.0, recon=-1.0)
        for m in ("vae", "beta_vae", "infomax_vae")
        for e in (1, 2)
    ]
    infomax_vae.plot_curves("c.png", history, ["vae", "beta_vae", "infomax_vae"])
    colours = {}
    for ax in figures["c.png"].axes:
        for line in ax.lines:
            model = line.get_label().split(":")[0]
            colours.setdefault(model, set()).add(line.get_color())
    assert all(len(c) == 1 for c in colours.values()) and len(colours) == 3, colours


def test_infomax_curves_draw_the_random_encoder_and_pixels_and_name_the_run(tmp_path, figures):
    rows = [dict(step=s, kind="train", seconds=1.0, loss=-1.0, mi_global=0.1 * s) for s in (1, 2)]
    rows.append(dict(step=2, kind="eval", seconds=4.0, linear_global=0.9))
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    final = [
        dict(encoder=e, representation=r, probe="linear", test_accuracy=a)
        for e, r, a in (("trained", "global", 0.97), ("random", "global", 0.93),
                        ("none", "pixels", 0.958))
    ]  # fmt: skip
    infomax.plot(str(tmp_path), final, "infomax: digits, js, 2 steps")
    fig = figures[str(tmp_path / "curves.png")]
    probes = fig.axes[2]
    assert probes.get_legend_handles_labels()[1] == [
        "linear_global", "linear_global, random encoder", "linear on raw pixels"
    ]  # fmt: skip
    assert fig.get_suptitle() == "infomax: digits, js, 2 steps"
    (bars,) = figures[str(tmp_path / "probes.png")].axes
    assert [t.get_text() for t in bars.texts] == ["0.970", "0.930", "0.958"]
