"""`experiments.mige_toy`: smoke run, error statistics, the Richardson score, bad configs."""

import functools
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import mige_toy as mige_toy_config
from experiments import mige_toy
from mi_jax import bounds, score, training
from tests.test_bounds import _rand_scores, _ref_smile


def _tiny(**overrides):
    config = mige_toy_config.get_config("quick")
    with config.unlocked():
        config.dims = (2,)
        config.num_rhos = 3
        config.num_samples = 64
        config.critic_steps = 5
        config.critic_hparams.hidden = (16,)
        config.aux_hidden = (16,)
        for k, v in overrides.items():
            setattr(config, k, v)
    return config


def test_train_and_evaluate_writes_everything(tmp_path):
    config = _tiny()
    results = mige_toy.train_and_evaluate(config, str(tmp_path))
    names = {r["estimator"] for r in results["rows"]}
    assert names == set(config.estimators) | {f"{b} (trained)" for b in config.bounds}
    assert all(r["finite"] for r in results["rows"])
    for r in results["rows"]:  # mean squared error = squared bias + variance, per rho
        assert r["rel_rmse"] ** 2 == pytest.approx(r["rel_bias"] ** 2 + r["rel_std"] ** 2, 1e-5)
    for f in ("config.json", "metrics.jsonl", "results.json", "mige_toy.png"):
        assert (tmp_path / f).exists()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(names) * config.num_rhos
    assert json.loads(lines[0])["true"] == pytest.approx(
        float(mige_toy.true_gradient(np.float32(-config.rho_max), 2)), rel=1e-6
    )


def test_mige_estimates_the_toy_gradient_at_d8():
    """A reduced run of the benchmark's default MIGE estimator (5 rhos x 2 seeds)."""
    config = mige_toy_config.get_config()
    rhos = jnp.linspace(-0.6, 0.6, 5)
    keys = jax.random.split(jax.random.key(0), 2)
    spec = config.estimators["mige_stein"].to_dict()
    grads, _, _ = mige_toy.mige_gradients(config, 8, spec, rhos, keys)
    stats = mige_toy.error_stats(grads, np.asarray(mige_toy.true_gradient(rhos, 8)))
    assert stats["rel_rmse"] < 0.1


def test_every_rho_and_seed_is_an_independent_case():
    # Each seed used one key at every rho: the same noise (and, for the trained bounds, the
    # same initialization and batches), errors at neighbouring rhos correlated 0.8. The same rho
    # twice now gives two different estimates, for MIGE and for a trained bound.
    config = _tiny(bounds=("nwj",))
    rhos = jnp.array([0.5, 0.5])
    keys = jax.random.split(jax.random.key(0), 2)
    spec = config.estimators["mige_stein"].to_dict()
    grads, _, _ = mige_toy.mige_gradients(config, 2, spec, rhos, keys)
    trained, *_ = mige_toy.bound_gradients(config, 2, rhos, keys)
    for g in (grads, trained[0]):  # [rhos, seeds]
        assert np.all(np.isfinite(g)) and np.all(g[0] != g[1]) and np.all(g[:, 0] != g[:, 1])


def test_a_learned_score_network_is_seeded_per_case(monkeypatch):
    # DSM trained every case's network from seed 0: one network's error in every case, counted
    # as bias. Each case now gets its own seed; a seed given in the config is kept.
    seen = []

    def estimator(samples, points=None, *, seed=0):  # records the seed it is called with
        jax.debug.callback(lambda s: seen.append(int(s)), seed)
        return -samples

    monkeypatch.setattr(
        mige_toy, "make_score_fn", lambda spec: functools.partial(estimator, **spec["hparams"])
    )
    config, rhos = _tiny(), jnp.array([0.3, 0.6])
    keys = jax.random.split(jax.random.key(0), 2)
    mige_toy.mige_gradients(config, 2, {"score": "fake", "hparams": {}}, rhos, keys)
    assert len(set(seen)) == 4  # 2 rhos x 2 seeds (each calls the estimator on x, y, (x, y))
    seen.clear()
    mige_toy.mige_gradients(config, 2, {"score": "fake", "hparams": {"seed": 7}}, rhos, keys)
    assert set(seen) == {7}


def test_error_stats_against_hand_computation():
    true = np.array([1.0, -1.0])
    grads = np.array([[2.0, 0.0], [-1.0, -1.0]])  # row errors: [1, -1] and [0, 0]
    stats = mige_toy.error_stats(grads, true)
    assert stats["rel_rmse"] == pytest.approx(np.sqrt(0.5))
    assert stats["rel_bias"] == pytest.approx(0.0)
    assert stats["rel_std"] == pytest.approx(np.sqrt(0.5))


def test_richardson_score_combines_two_bandwidths():
    z = jax.random.normal(jax.random.key(0), (50, 2))
    spec = {"score": "stein", "hparams": {"eta": 0.1}, "bandwidth_scale": 2.0, "richardson": 1.5}
    got = jax.jit(mige_toy.make_score_fn(spec))(z)
    h = jax.jit(functools.partial(score.median_bandwidth, scale=2.0))(z)
    stein = jax.jit(functools.partial(score.stein_score, eta=0.1))
    s1, s2 = stein(z, bandwidth=h), stein(z, bandwidth=1.5 * h)
    np.testing.assert_allclose(got, (2.25 * s1 - s2) / 1.25, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="richardson"):
        mige_toy.make_score_fn(dict(spec, richardson=0.5))


@pytest.mark.parametrize(
    "field, value, error, match",
    [
        ("bounds", ("nwj", "infonc"), KeyError, "infonce"),
        ("rho_max", 1.0, ValueError, "rho_max"),
        # Before: 0.99999999 passed, rounded to 1 in the float32 grid, and the run wrote null
        # rows, then failed in matplotlib on an infinite axis limit.
        ("rho_max", 0.99999999, ValueError, r"rho_max must lie in \(0, 1\) in float32"),
        ("num_rhos", 1, ValueError, "num_rhos"),
        # Before: zero training steps read as trained bounds; a seed of -1 ran as 2**32 - 1; a
        # zero width failed after the MIGE rows were written, naming `hidden`.
        ("critic_steps", -3, ValueError, "`config.critic_steps` must be an integer >= 1"),
        ("seed", -1, ValueError, "`config.seed` must be an integer >= 0"),
        ("aux_hidden", (0,), ValueError, "`config.aux_hidden` must hold integers"),
        ("critic_hparams", {"hidden": (0,), "embed_dim": 8}, ValueError, "`hidden` must hold"),
        # Before: a repeated bound trained twice and was reported once; a repeated d ran twice.
        ("bounds", ("nwj", "nwj"), ValueError, "`config.bounds` names an entry twice"),
        ("dims", (2, 2), ValueError, "`config.dims` names an entry twice"),
    ],
)
def test_bad_config_is_rejected(tmp_path, field, value, error, match):
    with pytest.raises(error, match=match):
        mige_toy.train_and_evaluate(_tiny(**{field: value}), str(tmp_path))
    assert not (tmp_path / "config.json").exists()


def test_a_diverging_trained_bound_is_named_once_every_result_is_written(tmp_path):
    # Before: the run ended normally with a NaN row that named no bound or step. The other
    # estimators still run and everything is plotted first.
    config = _tiny(bounds=("nwj",), learning_rate=1e30)
    with pytest.raises(training.NonFiniteError, match=r"trained bound 'nwj' became non-finite"):
        mige_toy.train_and_evaluate(config, str(tmp_path))
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    finite = {r["estimator"]: r["finite"] for r in rows}
    assert finite.pop("nwj (trained)") is False and finite and all(finite.values())
    assert (tmp_path / "mige_toy.png").exists()


def test_js_and_smile_rows_differentiate_their_estimates(tmp_path, monkeypatch):
    # Before: both rows differentiated the JS objective they train on (identical rows, 0.857
    # relative error against 0.03-0.10 for their estimates' own rho-gradients).
    config = _tiny(bounds=("js", "smile"), critic_steps=50)
    rhos = jnp.asarray([0.3, 0.6])
    keys = jax.random.split(jax.random.key(0), 2)
    grads = mige_toy.bound_gradients(config, 2, rhos, keys)[0]  # [bounds, rhos, seeds]
    assert np.all(np.isfinite(grads)) and not np.allclose(grads[0], grads[1], rtol=1e-3)
    # A fork's bound trained on another objective without a readout: refused, not misread.
    monkeypatch.setattr(bounds, "_REGISTRY", dict(bounds._REGISTRY))  # noqa: SLF001
    bounds.register_bound(
        "js_only", lambda **kw: bounds.make_bound("js_only", bounds.js, objective=bounds.js_fgan)
    )
    with pytest.raises(ValueError, match="bound 'js_only' trains on another objective"):
        mige_toy.train_and_evaluate(_tiny(bounds=("js_only",)), str(tmp_path))
    assert not (tmp_path / "config.json").exists()


def test_estimator_names_of_the_trained_bounds_rows_are_refused(tmp_path):
    # Before: an estimator named "bounds" never ran (the trained bounds ran twice), and one
    # named "nwj (trained)" had its row replaced by the trained bound's.
    for name in ("bounds", "nwj (trained)"):
        config = _tiny()
        with config.unlocked():
            config.estimators[name] = config.estimators.mige_ssge.to_dict()
        with pytest.raises(ValueError, match="taken by the trained bounds' rows"):
            mige_toy.train_and_evaluate(config, str(tmp_path))


def test_unknown_score_estimator_is_rejected(tmp_path):
    config = _tiny()
    with config.unlocked():
        config.estimators.mige_ssge.score = "sgse"
    with pytest.raises(KeyError, match="ssge"):
        mige_toy.train_and_evaluate(config, str(tmp_path))


def test_bad_estimator_entries_are_rejected_before_anything_is_written(tmp_path):
    # Before: a misspelt bandwidth_scale ran at scale 1, a scale of 0 gave NaN errors, and a
    # misspelt hyperparameter failed after the first estimator's results were written.
    cases = [
        ({"bandwith_scale": 4.0}, ValueError, r"unknown keys \['bandwith_scale'\]"),
        ({"bandwidth_scale": 0.0}, ValueError, "bandwidth_scale must be a positive number"),
        ({"hparams": {"etta": 1e-3}}, TypeError, "etta"),
        # Before: "'float' object is not iterable"; a message naming `richardson` alone.
        ({"hparams": 1e-3}, ValueError, r"config.estimators.mige_stein.hparams must map"),
        ({"richardson": 0.5}, ValueError, r"config.estimators.mige_stein: `richardson` must"),
    ]
    for entry, error, match in cases:
        config = _tiny()
        with config.unlocked():
            config.estimators.mige_stein = {**config.estimators.mige_stein.to_dict(), **entry}
        with pytest.raises(error, match=match):
            mige_toy.train_and_evaluate(config, str(tmp_path))
        assert not (tmp_path / "config.json").exists()
    for entry in ("stein", {"hparams": {}}):  # were AttributeErrors: 'str' has no 'score'
        config = _tiny()
        with config.unlocked():
            config.estimators = {"mige_stein": entry}
        with pytest.raises(ValueError, match=r"config.estimators.mige_stein must be a dict with"):
            mige_toy.train_and_evaluate(config, str(tmp_path))
    # A learned estimator has no bandwidth: this failed in its first compiled call.
    config = _tiny()
    with config.unlocked():
        config.estimators.mige_stein = {"score": "dsm", "richardson": 1.5}
    with pytest.raises(ValueError, match="'dsm' takes no kernel bandwidth"):
        mige_toy.train_and_evaluate(config, str(tmp_path))
    assert not (tmp_path / "config.json").exists()


def test_an_interrupted_rerun_keeps_the_earlier_rows(tmp_path, monkeypatch):
    config = _tiny(bounds=())
    first = mige_toy.train_and_evaluate(config, str(tmp_path))
    names = [r["estimator"] for r in first["rows"]]
    real = mige_toy.mige_gradients

    def second_fails(config, dim, spec, *args):
        if spec == config.estimators[names[1]].to_dict():
            raise RuntimeError("interrupted")
        return real(config, dim, spec, *args)

    monkeypatch.setattr(mige_toy, "mige_gradients", second_fails)
    with pytest.raises(RuntimeError, match="interrupted"):
        mige_toy.train_and_evaluate(config, str(tmp_path))
    with open(tmp_path / "results.json") as f:
        kept = json.load(f)["rows"]
    assert [r["estimator"] for r in kept] == names  # before: the first estimator's row only
    assert kept[1] == json.loads(json.dumps(first["rows"][1]))  # the earlier run's


def test_a_learned_estimator_is_used_without_a_bandwidth():
    z = jax.random.normal(jax.random.key(1), (40, 2))
    got = mige_toy.make_score_fn({"score": "dsm", "hparams": {"steps": 5}})(z)
    np.testing.assert_allclose(got, score.get_score_estimator("dsm", steps=5)(z), rtol=1e-6)


def test_learned_score_preset_runs_only_the_dsm_estimator(tmp_path):
    """The README's learned-score row: MIGE with the DSM score, no trained bounds (shortened)."""
    config = mige_toy_config.get_config("learned_score")
    assert dict(config.estimators.mige_dsm.hparams) == {"noise_scale": 0.1}
    with config.unlocked():
        config.dims, config.num_rhos, config.num_seeds, config.num_samples = (2,), 2, 1, 32
        config.estimators.mige_dsm.hparams.steps = 5
    results = mige_toy.train_and_evaluate(config, str(tmp_path))
    assert [r["estimator"] for r in results["rows"]] == ["mige_dsm"]
    assert results["rows"][0]["finite"]


def test_benchmark_loop_completes_twice_in_a_fresh_process():
    """Batched LAPACK calls hung here on a second execution (module docstring); the toy's
    `lax.map` loop must finish every time. A subprocess with a timeout turns a hang into a
    failure instead of a stuck test run."""
    import subprocess
    import sys

    code = (
        "import jax, jax.numpy as jnp\n"
        "from configs import mige_toy as C\n"
        "from experiments import mige_toy as M\n"
        "cfg = C.get_config()\n"
        "rhos = jnp.linspace(-0.8, 0.8, 6); keys = jax.random.split(jax.random.key(0), 2)\n"
        "for name in ('mige_stein', 'mige_ssge', 'mige_stein'):\n"
        "    M.mige_gradients(cfg, 8, cfg.estimators[name].to_dict(), rhos, keys)\n"
        "print('done')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=180, check=True
    )
    assert out.stdout.strip().endswith("done")


def test_toy_samples_are_the_same_under_x64():
    # Before: under `jax_enable_x64` the toy drew float64 samples (and an int64 DSM seed) from
    # the same keys: another run, the MIGE rows' rel. RMSE 0.030 / 0.068 against 0.024 / 0.059.
    key = jax.random.key(3)
    float32_mode = np.asarray(mige_toy.toy_samples(0.5, key, 3, 4))
    with jax.enable_x64(True):
        x64_mode = np.asarray(mige_toy.toy_samples(0.5, key, 3, 4))
    assert x64_mode.dtype == float32_mode.dtype == np.float32
    np.testing.assert_allclose(x64_mode, float32_mode, rtol=1e-6)


def test_each_trained_bounds_row_is_its_own_and_a_divergence_names_its_case(tmp_path, monkeypatch):
    # Two trained bounds, two seeds; the run is told case 3 diverged (cases are rho-major:
    # rho index 1, seed index 1), which it reports after writing every row. Catches: the
    # bounds' names given to each other's gradients, the metrics' std with ddof 1, the case
    # index split by the number of rhos.
    config = _tiny(bounds=("nwj", "infonce"), estimators={}, num_seeds=2)
    rhos = np.linspace(-config.rho_max, config.rho_max, config.num_rhos, dtype=np.float32)
    keys = jax.random.split(jax.random.key(config.seed), config.num_seeds)
    grads = mige_toy.bound_gradients(config, 2, rhos, keys)[0]  # [bounds, rhos, seeds]
    assert not np.allclose(grads[0], grads[1])
    monkeypatch.setattr(training, "first_nonfinite", lambda a, step_axis=0: (3, 0, 0))
    with pytest.raises(training.NonFiniteError, match=rf"rho={rhos[1]:.3g}, seed index 1\)"):
        mige_toy.train_and_evaluate(config, str(tmp_path))
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    metrics = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    true = mige_toy.true_gradient(rhos, 2)
    for name, g in zip(config.bounds, grads, strict=True):
        (row,) = [r for r in rows if r["estimator"] == f"{name} (trained)"]
        assert row["rel_rmse"] == pytest.approx(mige_toy.error_stats(g, true)["rel_rmse"], 1e-5)
        stds = [m["std"] for m in metrics if m["estimator"] == f"{name} (trained)"]
        np.testing.assert_allclose(stds, g.std(axis=1), rtol=1e-5)


def test_the_summary_puts_each_number_under_its_label():
    # Catches: the relative bias and spread columns swapped.
    row = {"dim": 2, "estimator": "stein", "rel_rmse": 0.3, "rel_bias": 0.1, "rel_std": 0.2,
           "run_s": 1.0, "compile_s": 2.0}  # fmt: skip
    header, _, line = mige_toy.summary({"rows": [row]}).splitlines()[-3:]
    cells = dict(zip(header.split(), line.split(), strict=True))
    assert (cells["rel_rmse"], cells["rel_bias"], cells["rel_std"]) == ("0.300", "0.100", "0.200")
    assert (cells["run_s"], cells["compile_s"]) == ("1.000", "2.000")


def test_bound_hyperparameters_reach_the_trained_bounds(tmp_path, monkeypatch):
    """`config.bound_hparams` ({bound: hyperparameters}) sets the trained bounds' settings,
    in the check and in the run (before: names only, every bound at its defaults); a bad
    entry fails before anything is written, naming it."""
    built = []

    def recording(*args, **kwargs):
        built.append(make(*args, **kwargs))
        return built[-1]

    make = training.make_ensemble
    monkeypatch.setattr(training, "make_ensemble", recording)
    config = _tiny(estimators={}, bounds=("smile", "infonce"))
    with config.unlocked():
        config.bound_hparams = ml_collections.ConfigDict({"smile": {"clip": 2.0}})
    mige_toy.train_and_evaluate(config, str(tmp_path / "run"))
    s = _rand_scores(707, 5, scale=4.0)
    assert abs(_ref_smile(s, 2.0) - _ref_smile(s, 5.0)) > 1e-2  # tau matters on these scores
    assert len(built) >= 2  # the check's ensemble and the run's
    for ensemble in built:
        smile, infonce = ensemble.bounds
        np.testing.assert_allclose(float(smile(s)), _ref_smile(s, 2.0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(float(infonce(s)), float(bounds.infonce(s)), rtol=1e-6)
    with config.unlocked():
        config.bound_hparams = ml_collections.ConfigDict({"smile": {"clp": 2.0}})
    with pytest.raises(ValueError, match=r"`config.bound_hparams.smile`: .*clp"):
        mige_toy.train_and_evaluate(config, str(tmp_path / "bad"))
    assert not (tmp_path / "bad").exists()
