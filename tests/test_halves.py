"""The MNIST-halves study: couplings, views, encoders, verdicts, smoke run, resume, bad input."""

import json
import os

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import halves as halves_config
from experiments import halves as halves_experiment
from mi_jax import bounds, halves, probes, training
from tests.test_bounds import _rand_scores, _ref_smile


def test_coupling_stack_is_exactly_invertible_with_unit_jacobian_determinant():
    encoder = halves.RealNVPEncoder(num_layers=5, hidden=(32,))
    x = jax.random.normal(jax.random.key(0), (4, 3, 6, 1))  # D = 18
    params = encoder.init(jax.random.key(1), x)
    z = jax.jit(encoder.apply)(params, x)
    chex.assert_shape(z, (4, 18))
    assert float(jnp.max(jnp.abs(z - x.reshape(4, -1)))) > 0.1  # it does transform
    back = encoder.apply(params, z, inverse=True)
    np.testing.assert_allclose(back, x.reshape(4, -1), atol=1e-5)
    jac = jax.jacfwd(lambda v: encoder.apply(params, v[None])[0])(x[0].reshape(-1))
    np.testing.assert_allclose(jnp.linalg.det(jac), 1.0, atol=1e-5)


@pytest.mark.parametrize("dim", [32, 33])
def test_two_couplings_update_every_coordinate(dim):
    # A pair of layers shares a split with the roles swapped (RealNVP's alternating masks);
    # independent random splits left about a quarter of the coordinates untouched by two.
    encoder = halves.RealNVPEncoder(num_layers=2, hidden=(16,))
    x = jax.random.normal(jax.random.key(0), (3, dim))
    z = encoder.apply(encoder.init(jax.random.key(1), x), x)
    assert np.all(np.abs(np.asarray(z - x)).max(axis=0) > 1e-4)


def test_single_coupling_changes_only_the_updated_half():
    layer = halves.AdditiveCoupling(dim=10, hidden=(8,), permutation_seed=3)
    x = jax.random.normal(jax.random.key(0), (2, 10))
    params = layer.init(jax.random.key(1), x)
    z = layer.apply(params, x)
    unchanged = np.isclose(np.asarray(z), np.asarray(x)).all(axis=0)
    assert unchanged.sum() == 5  # the conditioning half passes through
    np.testing.assert_allclose(layer.apply(params, z, method="inverse"), x, atol=1e-6)


def test_split_halves_and_odd_heights():
    images = np.arange(2 * 6 * 3 * 1).reshape(2, 6, 3, 1)
    top, bottom = halves.split_halves(images)
    np.testing.assert_array_equal(top, images[:, :3])
    np.testing.assert_array_equal(bottom, images[:, 3:])
    with pytest.raises(ValueError, match="even height"):
        halves.split_halves(np.zeros((2, 7, 3, 1)))
    with pytest.raises(ValueError, match=r"\[N, H, W, C\]"):
        halves.split_halves(np.zeros((2, 6, 3)))


@pytest.mark.parametrize("name", ["mlp", "realnvp", "conv"])
def test_half_encoders_shapes(name):
    hparams = {
        "mlp": {"hidden": (8,), "out_dim": 5},
        "realnvp": {"num_layers": 2, "hidden": (8,)},
        "conv": {"channels": (4, 6), "out_dim": 5},
    }[name]
    encoder = halves.get_half_encoder(name, **hparams)
    x = jnp.zeros((3, 4, 8, 1))
    params = encoder.init(jax.random.key(0), x)
    out = encoder.apply(params, x)
    chex.assert_shape(out, (3, 32 if name == "realnvp" else 5))
    # NumPy images too (RealNVP's couplings failed on them: no `.at`), and integer pixels as
    # their float values (RealNVP's stayed uint8, wrapping modulo 256).
    np.testing.assert_array_equal(encoder.apply(params, np.asarray(x)), out)
    pixels = jax.random.randint(jax.random.key(1), x.shape, 0, 256).astype(jnp.uint8)
    as_float = encoder.apply(params, pixels.astype(jnp.float32))
    np.testing.assert_allclose(encoder.apply(params, np.asarray(pixels)), as_float, rtol=1e-6)


def test_representations_of_the_seeds_are_computed_in_bounded_chunks():
    # The conv encoder on MNIST's 60,000 probe images in one call peaked at 20.7 GB (the
    # study was killed for memory): the encoder must only ever see chunks.
    encoder = halves.get_half_encoder("conv", channels=(4, 6), out_dim=5)
    images = jax.random.uniform(jax.random.key(0), (1201, 4, 8, 1))
    keys = jax.random.split(jax.random.key(1), 3)
    params = jax.vmap(encoder.init, in_axes=(0, None))(keys, images[:2])
    seen = []

    class Spy:  # the encoder's interface, recording the batch sizes it is traced with
        def apply(self, p, x):
            seen.append(x.shape[0])
            return encoder.apply(p, x)

    mesh = halves_experiment.parallel.checked_mesh(None)
    got = halves_experiment.represent(Spy(), params, np.asarray(images), mesh)
    want = jax.vmap(encoder.apply, in_axes=(0, None))(params, images)
    chex.assert_shape(got, (3, 1201, 5))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert seen and max(seen) <= 500, seen


def test_unknown_encoder_names_and_hyperparameters():
    with pytest.raises(KeyError, match="unknown half encoder 'realnpv'.*Did you mean 'realnvp'"):
        halves.get_half_encoder("realnpv")
    with pytest.raises(TypeError, match="width"):
        halves.get_half_encoder("mlp", width=3)


def test_model_value_is_the_bound_on_the_encoded_views():
    encoder = halves.get_half_encoder("mlp", hidden=(8,), out_dim=4)
    ensemble = training.make_ensemble(["infonce"], "bilinear")
    model = halves.HalvesModel(encoder=encoder, ensemble=ensemble)
    top = jax.random.normal(jax.random.key(0), (16, 2, 4, 1))
    bottom = top + 0.1 * jax.random.normal(jax.random.key(1), top.shape)
    params, states = model.init(jax.random.key(2), top, bottom)
    value, _ = jax.jit(model.value)(params, states, top, bottom)
    z1 = encoder.apply(params["top"], top)
    z2 = encoder.apply(params["bottom"], bottom)
    want, _ = ensemble.apply(params["critic"], states, z1, z2)
    np.testing.assert_allclose(value, want[0], rtol=1e-5)
    assert float(value) <= np.log(16) + 1e-5
    with pytest.raises(ValueError, match="same number of views"):
        model.value(params, states, top, bottom[:8])
    with pytest.raises(ValueError, match="one bound"):
        halves.HalvesModel(
            encoder=encoder, ensemble=training.make_ensemble(["nwj", "dv"], "bilinear")
        )


def test_verdicts_from_hand_made_runs():
    def run(enc, critic, bound, acc0, accs, mi):
        return {
            "encoder": enc,
            "critic": critic,
            "bound": bound,
            "accuracy": [[acc0] * len(accs), accs],
            "initial_accuracy_mean": acc0,
            "final_accuracy_mean": float(np.mean(accs)),
            "final_accuracy_std": float(np.std(accs)),
            "accuracy_gain_mean": float(np.mean(accs) - acc0),
            "accuracy_gain_std": float(np.std(accs)),
            "final_mi_mean": mi,
        }

    runs = [
        run("realnvp", "bilinear", "nce", 0.80, [0.90, 0.91, 0.92], 1.0),
        run("realnvp", "concat", "nce", 0.80, [0.85, 0.86, 0.84], 3.0),
        run("mlp", "bilinear", "nce", 0.80, [0.95, 0.95, 0.96], 2.0),
        run("mlp", "concat", "nce", 0.80, [0.94, 0.95, 0.95], 2.5),
    ]
    v = halves_experiment.verdicts(runs)
    assert v["bijective"]["holds"] is True  # both RealNVP runs gain ~5-11 points
    # Gains of 0, 2 and 4 points: mean 2, standard error 1.15 (std ddof 1 over sqrt(3)), so
    # 2 standard errors (2.3) exceed the mean. Catches: the standard error as std ddof 0 over
    # sqrt(n) (0.94: a gain inside the noise would show the finding).
    small = run("realnvp", "bilinear", "nce", 0.80, [0.80, 0.82, 0.84], 1.0)
    assert halves_experiment.verdicts([small])["bijective"]["holds"] is False
    assert (
        halves_experiment.verdicts(
            [run("realnvp", "bilinear", "nce", 0.80, [0.81, 0.82, 0.83], 1.0)]
        )["bijective"]["holds"]
        is True
    )
    assert v["looser_bounds"]["holds"] is True  # realnvp: bilinear (MI 1.0) beats concat (3.0)
    assert "realnvp/nce" in v["looser_bounds"]["evidence"]
    # encoder spread: bilinear 0.953 vs 0.91 (4.3 pts), concat 0.947 vs 0.85 (9.7); estimator
    # spread: realnvp 6 pts, mlp 0.7 -> encoder 7.0 > estimator 3.3, a gap of 3.67 points.
    # The other terms cancel: the gap is mlp/concat minus realnvp/bilinear, seed by seed 4, 4
    # and 3 points (a seed's runs share keys and batches), whose mean has a standard error of
    # 0.33 points (std ddof 1 over sqrt(3)); taken as independent runs it read 0.67.
    assert v["encoder_matters"]["holds"] is True
    assert "a gap of 3.67 +- 0.33 points" in v["encoder_matters"]["evidence"]

    # The same means with seeds ten times as spread: a gap inside 2 standard errors does not
    # show the finding (before: it held on any gap, noise included).
    def spread(r, k):
        accs = np.asarray(r["accuracy"][-1])
        return dict(r, accuracy=[r["accuracy"][0], list(accs.mean() + k * (accs - accs.mean()))])

    v = halves_experiment.verdicts([spread(r, 10.0) for r in runs])
    assert (
        v["encoder_matters"]["holds"] is False
        and "3.67 +- 3.33" in v["encoder_matters"]["evidence"]
    )
    one = [dict(r, accuracy=[[a[0]] for a in r["accuracy"]]) for r in runs]  # one seed each
    assert halves_experiment.verdicts(one)["encoder_matters"]["holds"] is None
    # A non-finite spread decides nothing (it read "does not hold", a gap of nan ± nan).
    broken = [dict(runs[0], accuracy=[runs[0]["accuracy"][0], [0.9, np.nan, 0.9]]), *runs[1:]]
    assert halves_experiment.verdicts(broken)["encoder_matters"]["holds"] is None
    flat = [
        dict(r, final_accuracy_mean=r["initial_accuracy_mean"], accuracy_gain_mean=0.0)
        for r in runs
    ]
    assert halves_experiment.verdicts(flat)["bijective"]["holds"] is False
    # One seed: no spread to test a gain or a margin against (a 0.3-point gain "held" before).
    single = [run("realnvp", c, "nce", 0.80, [0.803], mi) for c, mi in (("a", 1.0), ("b", 2.0))]
    v = halves_experiment.verdicts(single)
    assert v["bijective"]["holds"] is None and v["looser_bounds"]["holds"] is None


def tiny_config(**overrides):
    config = halves_config.get_config("quick")
    config.unlock()
    config.max_examples = 64
    config.batch_size = 16
    config.encoders = ("mlp", "realnvp")
    config.critics = ("bilinear",)
    config.bounds = ("infonce",)
    config.encoder_hparams.mlp = {"hidden": (8,), "out_dim": 4}
    config.encoder_hparams.realnvp = {"num_layers": 2, "hidden": (8,)}
    config.num_steps = 4
    config.log_every = 2
    config.eval_every = 2
    config.mi_eval_batches = 1
    config.probe.max_iter = 5
    config.update_from_flattened_dict(overrides)
    config.lock()
    return config


def test_a_critic_that_cannot_be_built_fails_before_any_combination_trains(tmp_path):
    # Before: ConcatCritic's `hidden=(0,)` failed at its first init, after the bilinear
    # combinations had trained (their results kept, the run stopped midway).
    config = tiny_config(critics=("bilinear", "concat"))
    with config.unlocked():
        config.critic_hparams.concat = {"hidden": (0,)}
    with pytest.raises(
        ValueError,
        match=r"`config.critic_hparams.concat` \(the concat critic\): ConcatCritic: `hidden`",
    ):
        halves_experiment.train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_a_diverged_combination_says_what_is_kept(tmp_path, monkeypatch):
    # Before: "finished combinations are kept in results.json" where none had finished.
    from mi_jax import training

    with pytest.raises(training.NonFiniteError, match="No combination had finished: there is no"):
        halves_experiment.train_and_evaluate(
            tiny_config(encoders=("mlp",), learning_rate=1e7), str(tmp_path / "first")
        )
    assert not (tmp_path / "first" / "results.json").exists()
    run_combination = halves_experiment.run_combination

    def second_diverges(config, model, views, progress, writer, label, *args):
        if label["encoder"] == "realnvp":
            raise training.NonFiniteError("realnvp/bilinear/infonce: the bound became nan.")
        return run_combination(config, model, views, progress, writer, label, *args)

    monkeypatch.setattr(halves_experiment, "run_combination", second_diverges)
    with pytest.raises(
        training.NonFiniteError, match="The 1 combination.s. finished before it are kept"
    ):
        halves_experiment.train_and_evaluate(tiny_config(), str(tmp_path / "second"))
    with open(tmp_path / "second" / "results.json") as f:
        assert [r["encoder"] for r in json.load(f)["runs"]] == ["mlp"]


def test_experiment_runs_writes_everything_and_resumes(tmp_path, capsys):
    config = tiny_config()
    results = halves_experiment.train_and_evaluate(config, str(tmp_path))
    for name in ("config.json", "metrics.jsonl", "results.json", "results.csv", "curves.png"):
        assert os.path.getsize(tmp_path / name) > 0, name
    assert [(r["encoder"], r["steps"]) for r in results["runs"]] == [
        ("mlp", [0, 2, 4]),
        ("realnvp", [0, 2, 4]),
    ]
    for r in results["runs"]:
        assert np.shape(r["accuracy"]) == (3, 2)  # evaluations x seeds
        assert 0 <= r["final_accuracy_mean"] <= 1 and np.isfinite(r["final_mi_mean"])
    assert 0 < results["pixel_accuracy"] <= 1
    assert set(results["verdicts"]) == set(halves_experiment.FINDINGS)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 6
    # Every per-seed field a list of the seeds' values (step 0's training MI: nulls; before: a
    # null in place of the list, which pandas' explode refused beside the others).
    for row in rows:
        assert len(row["mi_train"]) == len(row["accuracy"]) == len(row["mi_test"]), row
    assert all(v is None for row in rows if row["step"] == 0 for v in row["mi_train"])
    # The tiny config's probes (max_iter 5) stop before their tolerance: counted and named.
    for r in results["runs"]:
        flags = [
            c for row in rows if row["encoder"] == r["encoder"] for c in row["probe_converged"]
        ]
        assert r["probes_unconverged"] == flags.count(False) == 6
    assert results["pixel_probe_converged"] is False
    assert "'mlp/bilinear/infonce': 6" in halves_experiment.summary(results)
    assert "'raw pixels': 1" in halves_experiment.summary(results)
    # A combination finished by code before 2026-12-06 has no count: named as unrecorded
    # (before: left out of the note, as if its probes had converged).
    old = {**results, "runs": [{**results["runs"][0], "probes_unconverged": None}]}
    del old["runs"][0]["probes_unconverged"]
    summary = halves_experiment.summary(old)
    assert "'mlp/bilinear/infonce'" not in summary  # not counted as stopped early, either
    assert "not recorded (finished by code before 2026-12-06): mlp/bilinear/infonce" in summary
    # A rerun with the same workdir and config trains nothing and returns the same table.
    again = halves_experiment.train_and_evaluate(config, str(tmp_path))
    assert "Resuming: 2 of 2" in capsys.readouterr().out
    assert again["runs"] == json.loads(json.dumps(results["runs"]))
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 6


@pytest.mark.slow  # a speed-up's guard (19-36 s); the experiment's tests stay
def test_the_step_0_probes_are_fitted_once_per_encoder(tmp_path, monkeypatch):
    """Every critic and bound of an encoder starts from the same top encoder: its step-0
    probes (on MNIST 15 of 18 repeated, about 260 s) are fitted once, to the same numbers."""
    fits = []
    probe = halves_experiment.linear_probe
    monkeypatch.setattr(
        halves_experiment, "linear_probe", lambda *a, **k: fits.append(1) or probe(*a, **k)
    )
    config = tiny_config(critics=("bilinear", "separable"), bounds=("infonce", "nwj"))
    with config.unlocked():
        config.critic_hparams.separable = {"hidden": (8,), "embed_dim": 4}
    results = halves_experiment.train_and_evaluate(config, str(tmp_path / "all"))
    # 1 pixel probe; per encoder 2 seeds at step 0, then 4 combinations x 2 evaluations x 2
    assert len(fits) == 1 + 2 * (2 + 4 * 2 * 2)
    for encoder in ("mlp", "realnvp"):
        initial = {tuple(r["accuracy"][0]) for r in results["runs"] if r["encoder"] == encoder}
        assert len(initial) == 1
        alone = halves_experiment.train_and_evaluate(
            tiny_config(encoders=(encoder,), critics=("bilinear",), bounds=("nwj",)),
            str(tmp_path / encoder),
        )
        assert initial == {tuple(alone["runs"][0]["accuracy"][0])}


def test_seeds_are_independent_and_reproducible(tmp_path):
    config = tiny_config(encoders=("mlp",))
    a = halves_experiment.train_and_evaluate(config, str(tmp_path / "a"))
    b = halves_experiment.train_and_evaluate(config, str(tmp_path / "b"))
    assert a["runs"][0]["mi_test"] == b["runs"][0]["mi_test"]
    final_mi = a["runs"][0]["mi_test"][-1]
    assert final_mi[0] != final_mi[1]  # two seeds, two different runs


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"encoders": ("mlp", "flow")}, "config.encoders"),
        ({"critics": ("bilinearr",)}, r"config.critics\) 'bilinearr'. Did you mean 'bilinear'"),
        ({"bounds": ("nce",)}, "config.bounds"),
        ({"noise_std": -0.1}, "noise_std"),
        ({"num_seeds": 0}, "num_seeds"),
        ({"encoders": ()}, "config.encoders"),
        ({"encoders": ("mlp", "mlp")}, "`config.encoders` names an entry twice"),  # trained twice
        ({"mi_eval_batches": 0}, "mi_eval_batches"),
        ({"batch_size": 10_000}, "batch_size"),
        ({"batch_size": 1}, "`config.batch_size` must be an integer >= 2"),  # was in the bound
        # Before: a NaN noise failed in the probe naming `train_features`; a negative seed after
        # a metrics row was written; a negative probe size silently dropped that many images.
        ({"noise_std": float("nan")}, "`config.noise_std` must be finite"),
        ({"seed": -1}, "`config.seed` must be an integer >= 0"),
        ({"probe.train_examples": -5}, "`config.probe.train_examples` must be an integer >= 0"),
        ({"probe.l2": -1.0}, "`config.probe.l2` is out of range"),
    ],
)
def test_bad_config_names_the_field(tmp_path, overrides, match):
    with pytest.raises((ValueError, KeyError), match=match):  # KeyError: an unknown name
        halves_experiment.train_and_evaluate(tiny_config(**overrides), str(tmp_path))


def test_hyperparameter_entries_must_be_maps_and_absent_ones_take_the_defaults(tmp_path):
    config = tiny_config()
    with config.unlocked():  # was "'int' object has no attribute 'to_dict'", after a run
        config.critic_hparams = {"bilinear": 5}
    with pytest.raises(ValueError, match=r"`config.critic_hparams.bilinear` must map"):
        halves_experiment.train_and_evaluate(config, str(tmp_path))
    assert not os.listdir(tmp_path)
    config = tiny_config()
    with config.unlocked():  # only mlp's given: realnvp takes its defaults (was KeyError)
        config.encoder_hparams = {"mlp": {"hidden": (8,), "out_dim": 4}}
    model = halves_experiment.build(config, "realnvp", "bilinear", "infonce")
    assert model.encoder == halves.get_half_encoder("realnvp")
    with config.unlocked():  # a misspelt entry would leave realnvp at its defaults
        config.encoder_hparams = {"realnpv": {"num_layers": 2}}
    with pytest.raises(KeyError, match=r"unknown encoder \(config.encoder_hparams\) 'realnpv'"):
        halves_experiment.train_and_evaluate(config, str(tmp_path))


def test_encoders_that_cannot_run_fail_before_any_combination_trains(tmp_path):
    # Three conv widths: refused when the models are built (before: "too many values to
    # unpack" once the mlp combinations had trained).
    config = tiny_config(encoders=("mlp", "conv"), **{"encoder_hparams.conv.channels": (4, 8, 8)})
    with pytest.raises(ValueError, match=r"encoder_hparams.conv`: .*`channels` must be \(c1, c2\)"):
        halves_experiment.train_and_evaluate(config, str(tmp_path))
    assert not os.listdir(tmp_path)
    with pytest.raises(ValueError, match=r"HalfMLPEncoder: `out_dim` must be an integer >= 1"):
        halves.get_half_encoder("mlp", out_dim=0)
    # A bare width (was "'int' object is not iterable" / "has no len()").
    with pytest.raises(ValueError, match=r"HalfMLPEncoder: `hidden` must be a sequence"):
        halves.get_half_encoder("mlp", hidden=64)
    with pytest.raises(ValueError, match=r"HalfConvEncoder: `channels` must be a sequence"):
        halves.get_half_encoder("conv", channels=64)
    # RealNVP on 1-pixel halves (before: a ZeroDivisionError at init): named by the encoder, and
    # by the experiment's check on the views' shape (an abstract trace, no compilation).
    with pytest.raises(ValueError, match="RealNVPEncoder needs at least 2 values per example"):
        halves.RealNVPEncoder(num_layers=2, hidden=(4,)).init(
            jax.random.key(0), jnp.zeros((3, 1, 1, 1))
        )
    config = tiny_config()
    models = {
        ("realnvp", "bilinear", "infonce"): halves_experiment.build(
            config, "realnvp", "bilinear", "infonce"
        )
    }
    with pytest.raises(ValueError, match=r"encoder_hparams.realnvp`: .*\(1, 1, 1\).*at least 2"):
        halves_experiment.check_models(config, models, {"train_top": np.zeros((64, 1, 1, 1))})


def test_a_shared_probe_cache_serves_a_rerun_elsewhere_the_same_results(tmp_path, monkeypatch):
    # config.probe.cache_dir, as InfoMax's: a second study in another workdir reads back the
    # probe fits (raw pixels, step 0's, and the later ones where the encoders end the same).
    cache = str(tmp_path / "cache")
    first = halves_experiment.train_and_evaluate(
        tiny_config(**{"probe.cache_dir": cache}), str(tmp_path / "a")
    )
    fits = []
    real = probes.fit_probe
    monkeypatch.setattr(probes, "fit_probe", lambda *a, **k: fits.append(1) or real(*a, **k))
    second = halves_experiment.train_and_evaluate(
        tiny_config(**{"probe.cache_dir": cache}), str(tmp_path / "b")
    )
    assert fits == []  # (the encoders train the same in both: every fit is read back)
    assert second["pixel_accuracy"] == first["pixel_accuracy"]
    assert [r["final_accuracy_mean"] for r in second["runs"]] == [
        r["final_accuracy_mean"] for r in first["runs"]
    ]
    # Another cache folder on a resume of the same study is bookkeeping, not another study.
    halves_experiment.train_and_evaluate(tiny_config(), str(tmp_path / "b"))


# --------------------------------------------------------------------------------------------
# Hand recomputations (a mutation check: each of these caught a change the tests above let through).


def test_halves_representation_is_the_top_encoders():
    """Catches: the probe read the bottom encoder applied to the top half."""
    encoder = halves.get_half_encoder("mlp", hidden=(8,), out_dim=4)
    model = halves.HalvesModel(
        encoder=encoder, ensemble=training.make_ensemble(["infonce"], "bilinear")
    )
    top = jax.random.normal(jax.random.key(0), (6, 2, 4, 1))
    bottom = jax.random.normal(jax.random.key(1), (6, 2, 4, 1))
    params, _ = model.init(jax.random.key(2), top, bottom)
    got = model.represent(params, top)
    np.testing.assert_allclose(got, encoder.apply(params["top"], top), rtol=1e-6)
    assert not np.allclose(got, encoder.apply(params["bottom"], top))


def test_add_noise_has_standard_deviation_std():
    """Catches: std**2 noise. 16000 draws: the std's standard error is 0.6 %, tolerance 3 %."""
    views = jnp.zeros((2000, 8))
    out = halves.add_noise(jax.random.key(0), views, 0.3)
    np.testing.assert_allclose(float(jnp.std(out)), 0.3, rtol=0.03)
    assert abs(float(jnp.mean(out))) < 0.3 * 5 / np.sqrt(16000)


# --------------------------------------------------------------------------------------------
# Reported statistics by hand (a mutation check: each caught a change the tests above missed).


def test_the_final_row_is_the_last_evaluation_and_each_number_sits_under_its_label(
    tmp_path, monkeypatch
):
    # The probes return a scripted sequence (raw pixels first, then each evaluation's seeds)
    # that rises and falls. Catches: the best evaluation reported as the final one, the
    # spreads with ddof 1 (the verdict divides the gain's std by sqrt(n - 1): its standard
    # error would be too large), the summary's initial accuracy showing the final one.
    script = iter([0.7, 0.5, 0.6, 0.9, 0.8, 0.7, 0.6])
    monkeypatch.setattr(
        halves_experiment,
        "linear_probe",
        lambda *a, **k: probes.ProbeResult(0.0, next(script), 1, True),
    )
    results = halves_experiment.train_and_evaluate(tiny_config(encoders=("mlp",)), str(tmp_path))
    (run,) = results["runs"]
    assert run["accuracy"] == [[0.5, 0.6], [0.9, 0.8], [0.7, 0.6]]
    assert run["initial_accuracy_mean"] == pytest.approx(0.55)
    assert run["final_accuracy_mean"] == pytest.approx(0.65)
    assert run["final_accuracy_std"] == pytest.approx(0.05)
    assert run["accuracy_gain_mean"] == pytest.approx(0.1)
    assert run["accuracy_gain_std"] == pytest.approx(0.1)  # gains 0.2 and 0.0
    assert run["final_mi_mean"] == pytest.approx(np.mean(run["mi_test"][-1]))
    assert run["final_mi_std"] == pytest.approx(np.std(run["mi_test"][-1]))
    (line,) = [x for x in halves_experiment.summary(results).splitlines() if "bilinear" in x]
    assert "0.550" in line and "0.650" in line and line.index("0.550") < line.index("0.650")


def test_chunks_and_held_out_batches_change_only_what_they_should(tmp_path):
    # One run evaluates every step on one held-out batch; the other every second step (chunks
    # of two) on two. Training is the same; the second's training MI is the mean over its
    # chunk's steps, and its held-out MI reads a second batch. Catches: the training MI of the
    # chunk's last step only; the held-out MI of the first batch only.
    def run(name, **overrides):
        config = tiny_config(encoders=("mlp",), **overrides)
        halves_experiment.train_and_evaluate(config, str(tmp_path / name))
        rows = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        return {r["step"]: r for r in map(json.loads, rows)}

    every = run("every", log_every=1, eval_every=1, mi_eval_batches=1)
    second = run("second", log_every=2, eval_every=2, mi_eval_batches=2)
    assert sorted(every) == [0, 1, 2, 3, 4] and sorted(second) == [0, 2, 4]
    for step in (2, 4):
        np.testing.assert_allclose(second[step]["accuracy"], every[step]["accuracy"], atol=1e-6)
        np.testing.assert_allclose(
            second[step]["mi_train"],
            np.mean([every[step - 1]["mi_train"], every[step]["mi_train"]], axis=0),
            rtol=1e-5,
        )
    assert not np.allclose(second[0]["mi_test"], every[0]["mi_test"], rtol=1e-3, atol=0)


def test_a_rerun_trains_each_bound_a_cut_results_json_lacks(tmp_path):
    # Catches: finished combinations matched by encoder and critic alone (the second bound's
    # row would be the first bound's, never trained).
    config = tiny_config(encoders=("mlp",), bounds=("infonce", "nwj"))
    halves_experiment.train_and_evaluate(config, str(tmp_path))
    saved = json.loads((tmp_path / "results.json").read_text())
    saved["runs"] = saved["runs"][:1]  # stopped after the first combination
    (tmp_path / "results.json").write_text(json.dumps(saved))
    again = halves_experiment.train_and_evaluate(config, str(tmp_path))
    assert [r["bound"] for r in again["runs"]] == ["infonce", "nwj"]
    assert again["runs"][1]["mi_test"] != again["runs"][0]["mi_test"]


@pytest.mark.parametrize("shape", [(4, 8), (14, 28), (5, 7)])
def test_half_conv_encoder_strides_only_its_second_conv(shape):
    """``Conv 3x3 (c1) -> Conv 3x3 stride 2 (c2) -> Dense``: the Dense layer reads
    ``ceil(h / 2) * ceil(W / 2) * c2`` features (SAME padding).

    Catches: the stride on the first conv (or on both), which only the parameter shapes show."""
    encoder = halves.HalfConvEncoder(channels=(3, 5), out_dim=7)
    h, w = shape
    x = jnp.zeros((2, h, w, 1))
    params = encoder.init(jax.random.key(0), x)["params"]
    assert params["Conv_0"]["kernel"].shape == (3, 3, 1, 3)
    assert params["Conv_1"]["kernel"].shape == (3, 3, 3, 5)
    assert params["Dense_0"]["kernel"].shape == (-(-h // 2) * -(-w // 2) * 5, 7)
    assert encoder.apply({"params": params}, x).shape == (2, 7)


def test_bound_hyperparameters_reach_each_combinations_bound(tmp_path):
    """`config.bound_hparams` ({bound: hyperparameters}) sets the swept bounds' settings
    (before: the study had no such key, so SMILE always ran at tau = 5, I_alpha at alpha =
    0.01); a bad entry fails before anything is written, naming it."""
    config = tiny_config(bounds=("smile", "infonce"))
    with config.unlocked():
        config.bound_hparams = ml_collections.ConfigDict({"smile": {"clip": 2.0}})
    s = _rand_scores(706, 5, scale=4.0)
    assert abs(_ref_smile(s, 2.0) - _ref_smile(s, 5.0)) > 1e-2  # tau matters on these scores
    (bound,) = halves_experiment.build(config, "mlp", "bilinear", "smile").ensemble.bounds
    np.testing.assert_allclose(float(bound(s)), _ref_smile(s, 2.0), rtol=1e-5, atol=1e-5)
    (bound,) = halves_experiment.build(config, "mlp", "bilinear", "infonce").ensemble.bounds
    np.testing.assert_allclose(float(bound(s)), float(bounds.infonce(s)), rtol=1e-6)
    for entry, error, match in [
        ({"smile": {"clp": 2.0}}, ValueError, r"`config.bound_hparams.smile`: .*clp"),
        ({"smile": {"clip": -1.0}}, ValueError, r"`config.bound_hparams.smile`: .*`clip` must be"),
        ({"smiel": {"clip": 2.0}}, KeyError, "smile"),
        ({"smile": 2.0}, ValueError, r"`config.bound_hparams.smile` must map"),
    ]:
        with config.unlocked():
            config.bound_hparams = ml_collections.ConfigDict(entry)
        with pytest.raises(error, match=match):
            halves_experiment.train_and_evaluate(config, str(tmp_path))
        assert not os.listdir(tmp_path)
