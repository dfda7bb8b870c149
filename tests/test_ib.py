"""Deep IB (VIB, MINE-IB, MIGE-IB) and InfoMax-VAE: closed forms, gradients, smoke, bad input."""

import csv
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import ib as ib_config
from configs import infomax_vae as vae_config
from experiments import _common
from experiments import ib as ib_experiment
from experiments import infomax_vae as vae_experiment
from mi_jax import data, ib, probes, training, vae


def _quick(module, **overrides):
    config = module.get_config("quick")
    config.update_from_flattened_dict(overrides)
    return config


def _images(key, batch=6, shape=(4, 4, 1)):
    return jax.random.uniform(key, (batch, *shape))


def test_gaussian_kl_matches_numerical_integration():
    mu = np.array([[0.0, 1.5, -0.7], [2.0, 0.0, 0.3]], np.float32)
    sigma = np.array([[1.0, 0.5, 2.0], [0.2, 3.0, 1.0]], np.float32)
    t = np.linspace(-40, 40, 400_001)
    expected = np.zeros(2)
    for i in range(2):
        for k in range(3):
            q = np.exp(-0.5 * ((t - mu[i, k]) / sigma[i, k]) ** 2) / (
                sigma[i, k] * np.sqrt(2 * np.pi)
            )
            log_q = -0.5 * ((t - mu[i, k]) / sigma[i, k]) ** 2 - np.log(
                sigma[i, k] * np.sqrt(2 * np.pi)
            )
            log_p = -0.5 * t**2 - 0.5 * np.log(2 * np.pi)
            expected[i] += np.trapezoid(q * (log_q - log_p), t)
    np.testing.assert_allclose(jax.jit(ib.gaussian_kl)(mu, sigma), expected, rtol=1e-4)
    np.testing.assert_allclose(
        ib.gaussian_kl(jnp.zeros((1, 4)), jnp.ones((1, 4))), [0.0], atol=1e-7
    )


def _model(method, **kw):
    defaults = dict(
        method=method,
        num_classes=3,
        latent_dim=5,
        trunk_hparams=(("hidden", (8,)),),
        critic_hparams=(("hidden", (8,)), ("embed_dim", 4)),
    )
    return ib.IBModel(**{**defaults, **kw})


def test_kernel_init_reaches_the_encoder_and_the_decoder():
    """Glorot uniform (Alemi et al.'s TensorFlow default): every kernel's entries lie within
    +-sqrt(6 / (fan_in + fan_out)) with about that bound squared / 3 as variance; LeCun normal
    (Flax's) has variance 1 / fan_in and is not bounded that way."""
    x = jax.random.uniform(jax.random.key(0), (4, 8, 8, 1))
    for init_name in ("glorot_uniform", "lecun_normal"):
        model = _model("vib", latent_dim=64, trunk_hparams=(("hidden", (96,)),), num_classes=50)
        model = model.replace(kernel_init=init_name)
        params, _ = model.init(jax.random.key(1), x)
        kernels = [
            leaf
            for path, leaf in jax.tree_util.tree_leaves_with_path(params)
            if "kernel" in jax.tree_util.keystr(path)
        ]
        assert len(kernels) == 3  # two trunk layers and the decoder
        for kernel in kernels:
            fan_in, fan_out = kernel.shape
            limit = np.sqrt(6.0 / (fan_in + fan_out))
            want = limit**2 / 3 if init_name == "glorot_uniform" else 1.0 / fan_in
            assert abs(float(jnp.var(kernel)) / want - 1.0) < 0.1, (init_name, kernel.shape)
            assert (float(jnp.abs(kernel).max()) <= limit) == (init_name == "glorot_uniform")


def test_unknown_kernel_init_is_rejected_by_name():
    with pytest.raises(KeyError, match="kernel_init"):
        _model("vib", kernel_init="glorot")


def test_centered_inputs_feed_the_trunk_two_x_minus_one():
    """``centered_inputs`` is the same encoder applied to ``2 x - 1`` (Alemi et al.'s inputs)."""
    x = _images(jax.random.key(0))
    centered = ib.GaussianEncoder(
        latent_dim=3, trunk_hparams=(("hidden", (8,)),), centered_inputs=True
    )
    plain = centered.clone(centered_inputs=False)
    params = plain.init(jax.random.key(1), x)
    got = jax.jit(centered.apply)(params, x)
    want = plain.apply(params, 2.0 * x - 1.0)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)
    assert not np.allclose(got[0], plain.apply(params, x)[0])


def _loss_and_grads(model, params, states, x, y, key, beta):
    fn = jax.jit(jax.value_and_grad(model.loss, has_aux=True))
    (loss, (metrics, _)), grads = fn(params, states, x, y, key, beta)
    return loss, metrics, grads


def test_vib_at_beta_zero_is_the_deterministic_classifier_objective():
    x = _images(jax.random.key(0))
    y = jnp.array([0, 1, 2, 0, 1, 2])
    key = jax.random.key(3)
    # std_offset 40: sigma = softplus(raw - 40) ~ 1e-17, so sampled codes equal the means.
    vib, det = _model("vib", std_offset=40.0), _model("deterministic", std_offset=40.0)
    params, states = vib.init(jax.random.key(1), x)
    loss_v, metrics_v, grads_v = _loss_and_grads(vib, params, states, x, y, key, 0.0)
    loss_d, metrics_d, grads_d = _loss_and_grads(det, params, states, x, y, key, 0.0)
    np.testing.assert_allclose(loss_v, metrics_v["ce"], rtol=1e-6)  # beta 0: no penalty
    np.testing.assert_allclose(loss_v, loss_d, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads_v), jax.tree.leaves(grads_d), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # ... and beta scales exactly the closed-form KL.
    loss_b, metrics_b, _ = _loss_and_grads(vib, params, states, x, y, key, 0.3)
    np.testing.assert_allclose(loss_b, metrics_b["ce"] + 0.3 * metrics_b["kl"], rtol=1e-6)
    assert "kl" not in metrics_d  # no bottleneck, no rate to report (NaN was made on the device)
    # A sigma that underflows (softplus(raw - 120) < the least float32) stays finite: its
    # log, the KL and the gradients were inf and NaN.
    vib = _model("vib", std_offset=120.0)
    loss_v, metrics_v, grads_v = _loss_and_grads(vib, params, states, x, y, key, 0.0)
    assert np.isfinite(metrics_v["kl"]) and np.isfinite(loss_v)
    np.testing.assert_allclose(loss_v, loss_d, rtol=1e-6)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads_v))


def test_mine_ib_is_a_min_max_game():
    x = _images(jax.random.key(0), batch=8)
    y = jnp.arange(8) % 3
    model = _model("mine", bound="dv", std_offset=1.0)
    params, states = model.init(jax.random.key(1), x)
    key = jax.random.key(2)
    _, _, g0 = _loss_and_grads(model, params, states, x, y, key, 0.0)
    loss, metrics, g1 = _loss_and_grads(model, params, states, x, y, key, 0.5)
    # The value is the objective CE + beta * I (it read CE + (beta - 1) * I: the critic's own
    # term, which only its gradient needs).
    np.testing.assert_allclose(loss, metrics["ce"] + 0.5 * metrics["penalty"], rtol=1e-5)
    flat = x.reshape(8, -1)
    ensemble = model.ensemble

    def bound_of_critic(critic):
        z = model.sample(params, x, key, 1)[0][0]
        return ensemble.apply(critic, states, flat, z)[0][0]

    def bound_of_encoder(encoder):
        z = model.sample({**params, "encoder": encoder}, x, key, 1)[0][0]
        return ensemble.apply(params["critic"], states, flat, z)[0][0]

    np.testing.assert_allclose(metrics["penalty"], bound_of_critic(params["critic"]), rtol=1e-5)
    # The critic ascends the bound whatever beta is ...
    critic_grad = jax.grad(bound_of_critic)(params["critic"])
    for a, b in zip(jax.tree.leaves(g1["critic"]), jax.tree.leaves(critic_grad), strict=True):
        np.testing.assert_allclose(a, -b, rtol=1e-4, atol=1e-6)
    # ... and the encoder descends beta times it, on top of the cross-entropy.
    enc_grad = jax.grad(bound_of_encoder)(params["encoder"])
    diff = jax.tree.map(lambda a, b: a - b, g1["encoder"], g0["encoder"])
    for a, b in zip(jax.tree.leaves(diff), jax.tree.leaves(enc_grad), strict=True):
        np.testing.assert_allclose(a, 0.5 * b, rtol=1e-3, atol=1e-6)
    assert float(optax.tree.norm(critic_grad)) > 0 and float(optax.tree.norm(enc_grad)) > 0


def test_mige_penalty_gradient_matches_the_closed_form_for_a_linear_gaussian_encoder():
    # x ~ N(0, I_3), z = W x + s eps: I(X; Z) = 1/2 logdet(I + W W^T / s^2). With the exact
    # marginal score, the penalty's gradient is an unbiased estimate of grad I.
    w = jnp.array([[1.0, 0.5, 0.0], [0.0, 0.8, -0.4]])
    s = jnp.array(0.7)
    m = 200_000
    x = jax.random.normal(jax.random.key(0), (m, 3))
    eps = jax.random.normal(jax.random.key(1), (m, 2))

    def exact_score(z, w, s):
        cov = w @ w.T + s**2 * jnp.eye(2)
        return -jnp.linalg.solve(cov, z.T).T

    def penalty(w, s):
        z = x @ w.T + s * eps
        sigma = jnp.broadcast_to(s, (m, 2))
        score = lambda v: exact_score(v, jax.lax.stop_gradient(w), jax.lax.stop_gradient(s))  # noqa: E731
        return ib.mige_penalty(z, sigma, score)

    def closed_form(w, s):
        return 0.5 * jnp.linalg.slogdet(jnp.eye(2) + w @ w.T / s**2)[1]

    got = jax.jit(jax.grad(penalty, argnums=(0, 1)))(w, s)
    want = jax.grad(closed_form, argnums=(0, 1))(w, s)
    np.testing.assert_allclose(got[0], want[0], atol=0.02)
    np.testing.assert_allclose(got[1], want[1], rtol=0.02)


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="latent_dim"):
        _model("vib", latent_dim=0)
    with pytest.raises(ValueError, match=r"`latent_dim` must be an integer >= 1, got 2.5"):
        _model("vib", latent_dim=2.5)
    with pytest.raises(ValueError, match=r"MLPEncoder: `hidden` must hold integers >= 1"):
        _model("vib", trunk_hparams=(("hidden", (8, 0)),))
    with pytest.raises(ValueError, match=r"`decoder_hidden` must be a sequence of integers"):
        _vae_model(decoder_hidden=512)  # a bare width: was "'int' object is not iterable"
    with pytest.raises(KeyError, match="IB method"):
        _model("vibe")
    with pytest.raises(KeyError, match="unknown bound 'mien'"):
        _model("mine", bound="mien")
    with pytest.raises(KeyError, match="unknown bound 'nwjj'"):  # before: VIB ran with it
        _model("vib", bound="nwjj")
    # Labels and image shapes: before, optax's dtype error, a broadcast, an IndexError.
    model, x = _model("vib"), _images(jax.random.key(0))
    params, states = model.init(jax.random.key(1), x)
    labels = jnp.arange(6) % 3
    for bad, error, match in (
        (labels.astype(jnp.float32), TypeError, r"`labels` must be integer class indices"),
        (jax.nn.one_hot(labels, 3), ValueError, r"\[batch\] = \[6\].*labels.argmax\(-1\)"),
        (labels[:4], ValueError, r"`labels` must be \[batch\] = \[6\] class indices"),
        (labels + 1, ValueError, r"`labels` must lie in \[0, 3\) .`num_classes`., got .* \[1, 3\]"),
    ):
        with pytest.raises(error, match=match):
            model.loss(params, states, x, bad, jax.random.key(2), 0.1)
    vae_model = _vae_model()
    for images in (jnp.zeros((2, 8, 8, 1)), jnp.zeros((2, 4, 4))):
        with pytest.raises(ValueError, match=r"`images` must have shape \[batch, \*image_shape\]"):
            vae_model.init(jax.random.key(0), images)
    with pytest.raises(ValueError, match=r"`images` contains 1 NaN or infinite values"):
        model.loss(params, states, x.at[0, 0, 0, 0].set(jnp.nan), labels, jax.random.key(2), 0.1)
    with pytest.raises(TypeError, match=r"floats in \[0, 1\], got uint8; `mi_jax.data.to_float"):
        model.loss(params, states, (x * 255).astype(jnp.uint8), labels, jax.random.key(2), 0.1)
    with pytest.raises(KeyError, match="score estimator"):
        _model("mige", score_estimator="sge")
    with pytest.raises(ValueError, match=r"config.betas.vib"):
        ib_experiment.train_and_evaluate(_quick(ib_config, **{"betas.vib": (1e-3, -1.0)}), "/x")
    # Before: "0.1" and True ran as 0.1 and 1.0; a repeated beta ran twice, its rows doubled.
    for betas, match in (
        (("0.1",), r"`config.betas.vib` must hold finite numbers >= 0, got '0.1'"),
        ((True,), r"`config.betas.vib` must hold finite numbers >= 0, got True"),
        ((1e-3, 1e-3), r"`config.betas.vib` names a beta twice"),
    ):
        with pytest.raises(ValueError, match=match):
            ib_experiment.train_and_evaluate(_quick(ib_config, betas={"vib": betas}), "/x")
    with pytest.raises(ValueError, match=r"`config.batch_size` must be an integer >= 2"):
        ib_experiment.train_and_evaluate(_quick(ib_config, methods=("mine",), batch_size=1), "/x")
    with pytest.raises(
        KeyError, match=r"unknown method \(config.methods\) 'vibe'. Did you mean 'vib'"
    ):
        ib_experiment.train_and_evaluate(_quick(ib_config, methods=("vibe",)), "/x")
    with pytest.raises(ValueError, match="latent_dim"):
        ib_experiment.train_and_evaluate(_quick(ib_config, latent_dim=0), "/x")
    with pytest.raises(ValueError, match=r"config.models.vae.beta"):
        vae_experiment.train_and_evaluate(_quick(vae_config, **{"models.vae.beta": -1.0}), "/x")
    with pytest.raises(KeyError, match="unknown bound"):
        vae_experiment.train_and_evaluate(_quick(vae_config, bound="nwjj"), "/x")
    # Before: "could not convert string to float" / "'float' object is not iterable"; a
    # string "4" and True were taken as 4.0 and 1.0.
    for models, match in (
        ({"vae": {"beta": "abc"}}, r"`config.models.vae.beta` must be finite and >= 0"),
        ({"vae": {"beta": True}}, r"`config.models.vae.beta` must be finite and >= 0"),
        ({"vae": 1.0}, r"`config.models.vae` must be a dict of beta and gamma"),
    ):
        with pytest.raises(ValueError, match=match):
            vae_experiment.train_and_evaluate(_quick(vae_config, models=models), "/x")
    with pytest.raises(ValueError, match=r"`config.batch_size` must be an integer >= 2"):
        vae_experiment.train_and_evaluate(_quick(vae_config, batch_size=1), "/x")
    # Probe settings are read after training: a misspelt or missing one used to cost the run.
    probe = {"l2": 1e-4, "max_iter": 5, "tolerance": 1e-5}
    with pytest.raises(ValueError, match=r"unknown fields \['tolerance'\] in `config.probe`"):
        vae_experiment.train_and_evaluate(_quick(vae_config, probe=probe), "/x")
    with pytest.raises(ValueError, match=r"`config.probe` lacks \['tol'\]"):
        vae_experiment.train_and_evaluate(
            _quick(vae_config, probe={"l2": 1e-4, "max_iter": 5}), "/x"
        )
    # Before: found by the probes after training, naming `l2`; `clip` for critic_clip.
    with pytest.raises(ValueError, match=r"`config.probe.l2` is out of range"):
        vae_experiment.train_and_evaluate(_quick(vae_config, **{"probe.l2": -1.0}), "/x")
    with pytest.raises(ValueError, match=r"critic_clip"):
        _vae_model(critic_clip=-1.0)
    with pytest.raises(ValueError, match="latent_dim"):
        vae_experiment.train_and_evaluate(_quick(vae_config, latent_dim=0), "/x")
    # Optimizer settings (before: a negative rate trained without complaint, ascending the
    # loss; b1 = 1 turned the loss NaN at step 2, naming neither).
    bad_optimizer = [
        (dict(learning_rate=-1e-3), r"`config.learning_rate` must be a positive number"),
        (dict(lr_decay=-0.5), r"`config.lr_decay` must lie in \(0, 1\]"),
        (dict(adam_b1=1.0), r"`config.adam_b1` must lie in \[0, 1\)"),
        # Before: the second copy found the first's checkpoint and named no setting.
        (dict(methods=("vib", "vib")), r"`config.methods` names an entry twice"),
        # Before: 1 in float32, the weight average's debiasing divided by 0 (NaN errors, no
        # error raised); a NaN std_offset surfaced as a NaN loss after writing.
        (dict(ema_decay=0.99999999), r"`config.ema_decay` must lie in \[0, 1\)"),
        (dict(std_offset=float("nan")), r"`std_offset` must be a finite number"),
    ]
    for overrides, match in bad_optimizer:
        with pytest.raises(ValueError, match=match):
            ib_experiment.train_and_evaluate(_quick(ib_config, **overrides), "/x")
    with pytest.raises(ValueError, match=r"`config.learning_rate` must be a positive number"):
        vae_experiment.train_and_evaluate(_quick(vae_config, learning_rate=-1e-3), "/x")
    model, x = _model("vib"), _images(jax.random.key(0))
    params, _ = model.init(jax.random.key(1), x)
    for num_samples in (0, -1):  # before: NaN probabilities, or an XLA shape error
        with pytest.raises(ValueError, match="`num_samples` must be an integer >= 1"):
            model.predict(params, x, jax.random.key(2), num_samples)


def test_ib_experiment_smoke_and_resume(tmp_path):
    workdir = str(tmp_path)
    config = _quick(ib_config, methods=("deterministic", "vib", "mine", "mige"))
    results = ib_experiment.train_and_evaluate(config, workdir)
    for name in (
        "config.json",
        "metrics.jsonl",
        "results.json",
        "results.csv",
        "error_vs_beta.png",
    ):
        assert os.path.exists(os.path.join(workdir, name)), name
    finals = [r for m in results["methods"].values() for r in m["final"]]
    assert len(finals) == 1 + 3 * 2
    # An eval row's `kl` is the test split's; the training batches' beside it as `train_kl`.
    evals = [r for r in _common.iter_jsonl(os.path.join(workdir, "metrics.jsonl"))]
    vib_evals = [r for r in evals if r["kind"] == "eval" and r["method"] == "vib"]
    assert vib_evals and all(np.isfinite(r["train_kl"]) for r in vib_evals)
    for r in finals:
        assert 0.0 <= r["error_mean"] <= 1.0 and 0.0 <= r["error_sampled"] <= 1.0
        # Jensen: the averaged prediction's CE is at most the codes' mean CE (what I(Z;Y) uses).
        assert r["ce_single"] >= r["ce_sampled"] - 1e-5
    # H(Y) of the test labels, whose cross-entropies the I(Z; Y) >= H(Y) - CE column reads.
    test_labels = data.load_dataset(
        config.dataset, max_examples=config.max_examples or None
    ).test_labels
    p = np.bincount(test_labels) / len(test_labels)
    assert results["label_entropy"] == pytest.approx(-np.sum(p[p > 0] * np.log(p[p > 0])))
    table = ib_experiment.summary(results)  # the quick preset holds out a validation split
    assert "lowest validation error" in table and "val_err" in table and "test_err_3" in table
    assert "last_epoch" not in table
    # A later run of another length that keeps these methods: each row names its last epoch.
    longer = ib_experiment.summary({**results, "num_epochs": config.num_epochs + 3})
    assert f"{config.num_epochs + 3} epochs (methods kept" in longer
    header, _, *body = longer.split("training wall time")[0].strip().splitlines()[1:]
    column = header.split().index("last_epoch")
    assert [row.split()[column] for row in body] == [f"{config.num_epochs:g}"] * len(finals)
    # A rerun keeps every finished method without training it again.
    mtime = os.path.getmtime(os.path.join(workdir, "checkpoints", "vib"))
    again = ib_experiment.train_and_evaluate(config, workdir)
    assert again["methods"]["vib"]["final"] == results["methods"]["vib"]["final"]
    assert os.path.getmtime(os.path.join(workdir, "checkpoints", "vib")) == mtime


def test_the_deterministic_baseline_runs_under_jax_debug_nans(tmp_path):
    # Its "no rate" KL was a NaN made on the device, which stopped the whole sweep at once
    # under `jax_debug_nans` ("invalid value (nan) encountered in scan"); it is made on the host.
    with jax.debug_nans(True):
        results = ib_experiment.train_and_evaluate(
            _quick(ib_config, methods=("deterministic",)), str(tmp_path)
        )
    (final,) = results["methods"]["deterministic"]["final"]
    assert np.isnan(final["kl"]) and 0.0 <= final["error_mean"] <= 1.0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["methods"]["deterministic"]["final"][0]["kl"] is None  # JSON's null
    assert "| nan" in ib_experiment.summary(results) or " nan " in ib_experiment.summary(results)


@pytest.mark.slow  # a resume corner
def test_a_method_new_to_a_workdir_may_take_other_betas_there(tmp_path):
    # Before: adding MINE-IB at other betas to a workdir of VIB runs was refused as "another
    # config" (betas.mine differed, though MINE-IB had never run there).
    workdir = str(tmp_path)
    first = ib_experiment.train_and_evaluate(_quick(ib_config, methods=("vib",)), workdir)
    config = _quick(ib_config, methods=("vib", "mine"))
    config.betas.mine = (3e-3,)
    config.mine.critic_hparams.embed_dim = 4
    results = ib_experiment.train_and_evaluate(config, workdir)
    assert [r["beta"] for r in results["methods"]["mine"]["final"]] == [3e-3]
    assert results["methods"]["vib"]["final"] == first["methods"]["vib"]["final"]  # kept
    # A method that ran there keeps its settings.
    config = _quick(ib_config, methods=("vib", "mine"))
    config.betas.mine = (1e-2,)
    with pytest.raises(ValueError, match=r"betas.mine: \[0.003\] -> \[0.01\]"):
        ib_experiment.train_and_evaluate(config, workdir)
    assert ib_experiment.settings_of_new_methods(workdir) == (
        "betas.deterministic",
        "betas.mige",
        "mige",
    )


def test_steps_restored_from_a_checkpoint_do_not_count_in_the_progress_rate():
    import io

    from tqdm import tqdm

    # Before: `update(start)` counted them as trained at once (the rate 7x the real one).
    clock = [0.0]
    progress = tqdm(total=100, file=io.StringIO())
    progress._time = lambda: clock[0]  # noqa: SLF001 (a clock the test moves)
    progress.start_t = progress.last_print_t = 0.0
    clock[0] = 0.01
    ib_experiment.skip_restored_steps(progress, 60)  # restored at once
    for _ in range(3):
        clock[0] += 1.0  # a trained step a second
        progress.update(1)
    info = progress.format_dict
    assert (info["n"], info["n"] - info["initial"]) == (63, 3)
    assert info["rate"] == pytest.approx(1.0, rel=0.05)  # (the old way: 60.4 steps a second)
    progress.close()
    off = tqdm(total=100, disable=True)  # (no `initial` attribute)
    ib_experiment.skip_restored_steps(off, 60)
    assert off.n == 60


def test_ib_resumes_an_interrupted_method_from_its_checkpoint(tmp_path):
    workdir = str(tmp_path)
    full = ib_experiment.train_and_evaluate(
        _quick(ib_config, methods=("vib",)), str(tmp_path / "a")
    )
    # One epoch of two, then the full run in the same workdir: it continues at the checkpoint.
    ib_experiment.train_and_evaluate(_quick(ib_config, methods=("vib",), num_epochs=1), workdir)
    resumed = ib_experiment.train_and_evaluate(_quick(ib_config, methods=("vib",)), workdir)
    a, b = full["methods"]["vib"]["final"], resumed["methods"]["vib"]["final"]
    for ra, rb in zip(a, b, strict=True):
        np.testing.assert_allclose(ra["error_mean"], rb["error_mean"], atol=1e-6)
        np.testing.assert_allclose(ra["train_ce"], rb["train_ce"], rtol=1e-4)
    # The first epoch's evaluations are kept (the validation choice sees both epochs).
    history = resumed["methods"]["vib"]["history"]
    assert [r["epoch"] for r in history] == [r["epoch"] for r in full["methods"]["vib"]["history"]]
    assert sorted({r["epoch"] for r in history}) == [1.0, 2.0]
    # Another method in the same workdir: the finished one is kept beside it.
    both = ib_experiment.train_and_evaluate(_quick(ib_config, methods=("deterministic",)), workdir)
    assert set(both["methods"]) == {"vib", "deterministic"}
    assert both["methods"]["vib"]["final"] == resumed["methods"]["vib"]["final"]
    # A setting the checkpoints were trained under may not change: refused before anything is
    # written (earlier: the checkpoint was restored and its rows relabelled with the new betas).
    written = {n: (tmp_path / n).read_bytes() for n in ("config.json", "results.json")}
    with pytest.raises(ValueError, match=r"another config \(betas.vib: \[0.001, 0.01\] -> \[0.5\]"):
        ib_experiment.train_and_evaluate(
            _quick(ib_config, methods=("vib",), **{"betas.vib": (0.5,)}), workdir
        )
    assert {n: (tmp_path / n).read_bytes() for n in written} == written
    # Fewer epochs than vib's checkpoint holds: refused before anything is written (before:
    # results.json was cut to epoch 1 beside the epoch-2 checkpoint, and a later two-epoch run
    # resumed at the end, trained nothing and reported epoch 1 as final and complete).
    with pytest.raises(ValueError, match=r"vib: .* at step \d+, past .* longer run"):
        ib_experiment.train_and_evaluate(_quick(ib_config, methods=("vib",), num_epochs=1), workdir)
    assert {n: (tmp_path / n).read_bytes() for n in written} == written


def test_a_resume_without_results_json_reads_the_evaluations_back_from_metrics(tmp_path):
    # Before: the resumed method's history started at the checkpoint, so the validation choice
    # saw only the later epochs (here epoch 2 picked where the whole run picks epoch 1).
    full = ib_experiment.train_and_evaluate(
        _quick(ib_config, methods=("vib",)), str(tmp_path / "a")
    )["methods"]["vib"]
    workdir = str(tmp_path / "b")
    ib_experiment.train_and_evaluate(_quick(ib_config, methods=("vib",), num_epochs=1), workdir)
    os.remove(os.path.join(workdir, "results.json"))
    resumed = ib_experiment.train_and_evaluate(_quick(ib_config, methods=("vib",)), workdir)
    resumed = resumed["methods"]["vib"]
    assert [r["epoch"] for r in resumed["history"]] == [r["epoch"] for r in full["history"]]
    for ra, rb in zip(full["selected"], resumed["selected"], strict=True):
        assert ra["epoch"] == rb["epoch"]
        np.testing.assert_allclose(ra["error_mean"], rb["error_mean"], atol=1e-6)


def test_a_checkpoint_of_another_model_is_refused_before_config_json_is_written(tmp_path):
    ib_experiment.train_and_evaluate(_quick(ib_config, methods=("vib",), num_epochs=1), tmp_path)
    (tmp_path / "config.json").unlink()
    results = (tmp_path / "results.json").read_bytes()
    # Without config.json, the config results.json records is compared (before: another
    # learning rate resumed the checkpoint and dropped its evaluations from results.json).
    with pytest.raises(ValueError, match=r"another config \(learning_rate: 0.001 -> 0.5\).*json"):
        ib_experiment.train_and_evaluate(
            _quick(ib_config, methods=("vib",), learning_rate=0.5), tmp_path
        )
    assert (tmp_path / "results.json").read_bytes() == results
    (tmp_path / "results.json").unlink()  # nothing left to compare a rerun's settings with
    # Refused before anything is written, naming the method (before: config.json was rewritten
    # with the refused settings first, and found out only at vib's turn, after "deterministic"
    # had trained; the run's own config was then refused).
    with pytest.raises(ValueError, match=r"vib: the checkpoint .* does not fit"):
        ib_experiment.train_and_evaluate(
            _quick(ib_config, methods=("deterministic", "vib"), latent_dim=3), tmp_path
        )
    assert not (tmp_path / "config.json").exists() and not (tmp_path / "results.json").exists()
    assert not (tmp_path / "checkpoints" / "deterministic").exists()
    resumed = ib_experiment.train_and_evaluate(_quick(ib_config, methods=("vib",)), tmp_path)
    assert resumed["methods"]["vib"]["complete"]


def test_a_run_stopped_after_its_last_evaluation_reports_that_evaluation(tmp_path, monkeypatch):
    # Before: the checkpoint was saved before results.json: stopped between the two at the last
    # chunk, the rerun found nothing left to train and reported the previous evaluation.
    workdir = str(tmp_path)
    real_run_method = ib_experiment.run_method

    def stopped(config, method, dataset, validation, progress, writer, on_eval, **kwargs):
        def on_last_eval(*args, **kw):
            if kw["complete"]:  # stopped before the last evaluation is written
                raise RuntimeError("stopped")
            on_eval(*args, **kw)

        on_last_eval.previous = on_eval.previous
        return real_run_method(
            config, method, dataset, validation, progress, writer, on_last_eval, **kwargs
        )

    monkeypatch.setattr(ib_experiment, "run_method", stopped)
    with pytest.raises(RuntimeError, match="stopped"):
        ib_experiment.train_and_evaluate(_quick(ib_config, methods=("vib",)), workdir)
    monkeypatch.setattr(ib_experiment, "run_method", real_run_method)
    results = ib_experiment.train_and_evaluate(_quick(ib_config, methods=("vib",)), workdir)
    num_epochs = _quick(ib_config).num_epochs
    assert [r["epoch"] for r in results["methods"]["vib"]["final"]] == [num_epochs] * 2


def _one_second_chunks(monkeypatch):
    """Every training chunk of the sweep trainer reports one second (training times exact)."""
    real = _common.run_sweep_chunk

    def chunk(*args, **kwargs):
        state, metrics, _ = real(*args, **kwargs)
        return state, metrics, 1.0

    monkeypatch.setattr(_common, "run_sweep_chunk", chunk)


@pytest.mark.slow  # time bookkeeping across a resume
def test_a_resumed_method_counts_each_chunks_training_time_once(tmp_path, monkeypatch):
    # Stopped after the last evaluation is written and before its checkpoint: the rerun trains
    # that chunk again from the previous checkpoint. Before: it started from results.json's
    # total, which held the chunk already (3 chunks counted of 2).
    real_run_method = ib_experiment.run_method

    def stopped(config, method, dataset, validation, progress, writer, on_eval, **kwargs):
        def on_last_eval(*args, **kw):
            on_eval(*args, **kw)
            if kw["complete"]:  # written, the checkpoint not yet
                raise RuntimeError("stopped")

        on_last_eval.previous = on_eval.previous
        return real_run_method(
            config, method, dataset, validation, progress, writer, on_last_eval, **kwargs
        )

    _one_second_chunks(monkeypatch)
    monkeypatch.setattr(ib_experiment, "run_method", stopped)
    config = _quick(ib_config, methods=("vib",))
    with pytest.raises(RuntimeError, match="stopped"):
        ib_experiment.train_and_evaluate(config, tmp_path)
    monkeypatch.setattr(ib_experiment, "run_method", real_run_method)
    entry = ib_experiment.train_and_evaluate(config, tmp_path)["methods"]["vib"]
    assert config.num_epochs == 2 and entry["train_s"] == 2.0
    # Each evaluation once. Catches: the evaluations after the checkpoint kept in the history
    # beside the rerun's (the last epoch twice).
    keys = [(r["beta"], r["step"]) for r in entry["history"]]
    assert len(keys) == len(set(keys)), keys
    steps = sorted({r["step"] for r in entry["history"]})
    assert entry["train_s_by_step"] == [[steps[0], 1.0], [steps[1], 2.0]]


@pytest.mark.slow  # the one-seed case's test stays
def test_a_resume_without_results_json_reads_every_seeds_evaluations_back(tmp_path):
    # Catches: the rows read back from metrics.jsonl keyed by (beta, step) without the seed:
    # one seed's evaluations dropped.
    workdir = str(tmp_path)
    config = _quick(ib_config, methods=("vib",), num_seeds=2, num_epochs=1)
    ib_experiment.train_and_evaluate(config, workdir)
    os.remove(os.path.join(workdir, "results.json"))
    config.num_epochs = 2
    entry = ib_experiment.train_and_evaluate(config, workdir)["methods"]["vib"]
    first = sorted((r["beta"], r["seed"]) for r in entry["history"] if r["epoch"] == 1)
    assert first == sorted((b, s) for b in entry["betas"] for s in (0, 1))


def test_ib_training_does_not_depend_on_the_evaluation_cadence(tmp_path):
    # Evaluating every epoch or every second one splits training into chunks differently;
    # each step's batch and key come from its global step either way. Catches: each chunk's
    # batches drawn from step 0 (every chunk repeats epoch 1's batch order).
    finals = [
        ib_experiment.train_and_evaluate(
            _quick(ib_config, methods=("vib",), eval_every_epochs=every), str(tmp_path / str(every))
        )["methods"]["vib"]["final"]
        for every in (1, 2)
    ]
    for a, b in zip(*finals, strict=True):
        np.testing.assert_allclose(a["error_mean"], b["error_mean"], atol=1e-6)
        np.testing.assert_allclose(a["kl"], b["kl"], rtol=1e-4)


def test_an_interrupted_rerun_keeps_a_finished_method_listed_after_it(tmp_path, monkeypatch):
    # Before: results.json, rewritten at the first method's first evaluation, dropped every
    # earlier entry of a method listed again (vib, finished): interrupted there, vib's results
    # were lost and its finished checkpoint refused on the next run.
    workdir = str(tmp_path)
    first = ib_experiment.train_and_evaluate(_quick(ib_config, methods=("vib",)), workdir)
    real_run_method = ib_experiment.run_method

    def interrupted(config, method, dataset, validation, progress, writer, on_eval, **kwargs):
        def on_first_eval(*args, **kw):
            on_eval(*args, **kw)
            raise RuntimeError("interrupted")

        on_first_eval.previous = on_eval.previous
        return real_run_method(
            config, method, dataset, validation, progress, writer, on_first_eval, **kwargs
        )

    monkeypatch.setattr(ib_experiment, "run_method", interrupted)
    with pytest.raises(RuntimeError, match="interrupted"):
        ib_experiment.train_and_evaluate(
            _quick(ib_config, methods=("deterministic", "vib")), workdir
        )
    with open(os.path.join(workdir, "results.json")) as f:
        kept = json.load(f)["methods"]
    assert set(kept) == {"deterministic", "vib"}
    assert kept["vib"]["final"] == first["methods"]["vib"]["final"]


def test_predict_averages_probabilities_over_the_sampled_codes():
    x = _images(jax.random.key(0), batch=4)
    model = _model("vib", std_offset=-1.0)  # sigma ~ 1: the codes' predictions differ
    key = jax.random.key(2)

    @jax.jit  # one program: the prediction, and the codes it draws ([12, 4, 5]) with their mean
    def run(init_key):
        params, _ = model.init(init_key, x)
        return (
            params["decoder"]["params"],
            model.predict(params, x, key, 12),
            model.sample(params, x, key, 12),
        )

    decoder, pred, (z, mu, _) = jax.device_get(run(jax.random.key(1)))  # numpy from here on

    def softmax(logits):
        return np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)

    logits = z @ decoder["kernel"] + decoder["bias"]  # [12, 4, 3], by hand
    np.testing.assert_allclose(pred.probs_sampled, softmax(logits).mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pred.log_probs_sampled, np.log(softmax(logits)).mean(0), rtol=1e-5)
    at_mean = softmax(mu @ decoder["kernel"] + decoder["bias"])
    np.testing.assert_allclose(pred.probs_at_mean, at_mean, rtol=1e-5)
    # Not the softmax of the averaged logits (a different predictive distribution).
    assert np.max(np.abs(pred.probs_sampled - softmax(logits.mean(0)))) > 1e-3
    np.testing.assert_allclose(pred.probs_sampled.sum(-1), 1.0, rtol=1e-6)


def test_negative_weights_given_as_numbers_are_refused():
    # Checked before anything is computed: no parameters needed.
    x, y, key = _images(jax.random.key(0)), jnp.array([0, 1, 2, 0, 1, 2]), jax.random.key(2)
    for beta in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="`beta` must be finite and >= 0"):
            _model("vib").loss(None, (), x, y, key, beta)
    with pytest.raises(ValueError, match="`beta` must be finite and >= 0, got -1"):
        _vae_model().loss(None, (), x, key, -1, 0.0)
    with pytest.raises(ValueError, match="`gamma` must be finite and >= 0, got -1"):
        _vae_model().loss(None, (), x, key, 1.0, -1)
    with pytest.raises(ValueError, match="`latent_dim` must be an integer >= 1"):
        _vae_model(latent_dim=1.5)


def _vae_model(**kw):
    defaults = dict(
        image_shape=(4, 4, 1),
        latent_dim=3,
        encoder_hparams=(("hidden", (8,)),),
        decoder_hidden=(8,),
        critic_hparams=(("hidden", (8,)), ("embed_dim", 4)),
    )
    return vae.InfoMaxVAE(**{**defaults, **kw})


def test_infomax_vae_routes_each_gradient_to_its_player():
    """Encoder: grad of -recon + beta KL - gamma I (the critic fixed); critic: -grad I (the
    codes fixed), whatever gamma; decoder: -grad recon, untouched by gamma."""
    x = _images(jax.random.key(0), batch=5)
    # Linear decoder and critic embeddings: every player still has parameters, and the program
    # compiles faster.
    critic = (("hidden", ()), ("embed_dim", 4))
    model = _vae_model(bound="nwj", decoder_hidden=(), critic_hparams=critic)
    key = jax.random.key(2)

    @jax.jit  # one program: init and every gradient
    def gradients(init_key):
        p, states = model.init(init_key, x)

        def terms(p):  # recon, KL and the bound, by their definitions
            mu, sigma = model.encoder.apply(p["encoder"], x)
            z = mu + sigma * jax.random.normal(key, mu.shape)
            logits = model.decoder.apply(p["decoder"], z)
            mi = model.ensemble.apply(p["critic"], states, x.reshape(5, -1), z)[0][0]
            return (
                jnp.mean(vae.bernoulli_log_likelihood(logits, x)),
                jnp.mean(ib.gaussian_kl(mu, sigma)),
                mi,
            )

        def loss(p, gamma):
            return model.loss(p, states, x, key, 2.0, gamma)[0]

        by_term = [jax.grad(lambda p, i=i: terms(p)[i])(p) for i in range(3)]
        return jax.grad(loss)(p, 0.0), jax.grad(loss)(p, 0.5), by_term

    g0, g1, (recon, kl, mi) = jax.device_get(gradients(jax.random.key(1)))  # numpy from here on

    def close(got, *weighted):  # got == sum of weight * gradient, leaf by leaf
        for leaves in zip(jax.tree.leaves(got), *map(jax.tree.leaves, weighted[1::2]), strict=True):
            want = sum(w * g for w, g in zip(weighted[::2], leaves[1:], strict=True))
            np.testing.assert_allclose(leaves[0], want, rtol=1e-4, atol=1e-5)

    close(g0["encoder"], -1.0, recon["encoder"], 2.0, kl["encoder"])
    close(g1["encoder"], -1.0, recon["encoder"], 2.0, kl["encoder"], -0.5, mi["encoder"])
    for g in (g0, g1):
        close(g["critic"], -1.0, mi["critic"])
        close(g["decoder"], -1.0, recon["decoder"])
    assert all(np.any(leaf != 0) for leaf in jax.tree.leaves((mi["encoder"], mi["critic"])))


def test_infomax_vae_loss_terms_and_smoke(tmp_path, monkeypatch):
    model = _vae_model()
    x = _images(jax.random.key(0), batch=5)
    params, states = model.init(jax.random.key(1), x)
    key = jax.random.key(2)
    loss, (m, _) = jax.jit(model.loss)(params, states, x, key, 2.0, 0.5)
    # The objective (it read -1.5 mi: the critic's own -mi, which only its gradient needs).
    np.testing.assert_allclose(loss, -m["recon"] + 2.0 * m["kl"] - 0.5 * m["mi"], rtol=1e-5)
    np.testing.assert_allclose(m["elbo"], m["recon"] - m["kl"], rtol=1e-6)
    # Bernoulli log-likelihood against its definition.
    logits = jax.random.normal(key, x.shape)
    p = jax.nn.sigmoid(logits)
    want = jnp.sum((x * jnp.log(p) + (1 - x) * jnp.log(1 - p)).reshape(5, -1), -1)
    np.testing.assert_allclose(vae.bernoulli_log_likelihood(logits, x), want, rtol=1e-5)

    workdir = str(tmp_path)
    results = vae_experiment.train_and_evaluate(_quick(vae_config), workdir)
    for name in ("config.json", "metrics.jsonl", "results.json", "samples.png", "curves.png"):
        assert os.path.exists(os.path.join(workdir, name)), name
    models = {r["model"] for r in results["table"]}
    assert models == {"vae", "beta_vae", "infomax_vae", "raw pixels"}
    with open(os.path.join(workdir, "results.json")) as f:
        saved = json.load(f)
    assert all(np.isfinite(r["elbo"]) for r in saved["table"] if r["model"] != "raw pixels")
    # The evaluation's full batches: how many test images its metrics saw.
    batch = _quick(vae_config).batch_size
    assert saved["eval_test_images"] == saved["test_images"] // batch * batch > 0
    # Another gamma in this workdir would restore the gamma-trained checkpoint under the new
    # label: refused, naming the setting.
    with pytest.raises(ValueError, match=r"models.infomax_vae.gamma: .* -> 50.0"):
        vae_experiment.train_and_evaluate(
            _quick(vae_config, **{"models.infomax_vae.gamma": 50.0}), workdir
        )


@pytest.mark.slow  # the reruns' bookkeeping (15-30 s on a 2-core AVX2 host)
def test_a_finished_infomax_vae_run_reruns_refits_and_rebuilds_its_results(tmp_path, monkeypatch):
    workdir = str(tmp_path)
    vae_experiment.train_and_evaluate(_quick(vae_config), workdir)
    with open(os.path.join(workdir, "results.json")) as f:
        saved = json.load(f)
    # A rerun of the finished run trains nothing and keeps its training time (before: 0 s).
    rerun = vae_experiment.train_and_evaluate(_quick(vae_config), workdir)
    assert rerun["train_s"] == saved["train_s"] > 0
    # The probes are fitted after training, on every run: other probe settings refit them on
    # the same models (before: refused as another run), as InfoMax does.
    rerun = vae_experiment.train_and_evaluate(_quick(vae_config, **{"probe.l2": 10.0}), workdir)
    assert rerun["train_s"] == saved["train_s"]
    assert [r["elbo"] for r in rerun["table"][:-1]] == [r["elbo"] for r in saved["table"][:-1]]
    # results.json gone: the evaluations come back from metrics.jsonl (before: a table of
    # blank ELBO, KL and MI columns, and an empty history, reported as a success).
    os.remove(os.path.join(workdir, "results.json"))
    rebuilt = vae_experiment.train_and_evaluate(_quick(vae_config), workdir)
    assert [r["elbo"] for r in rebuilt["table"][:-1]] == [r["elbo"] for r in saved["table"][:-1]]
    assert [{k: v for k, v in r.items() if k != "run"} for r in saved["history"]] == [
        json.loads(json.dumps(_common.to_builtin(r))) for r in rebuilt["history"]
    ]
    # A longer rerun stopped before its probes keeps the finished run's table, marked with the
    # training it describes (before: results.json lost it, leaving it only in results.csv).

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(vae_experiment, "probe_accuracies", interrupted)
    epochs = _quick(vae_config).num_epochs
    with pytest.raises(KeyboardInterrupt):
        vae_experiment.train_and_evaluate(_quick(vae_config, num_epochs=epochs + 1), workdir)
    with open(os.path.join(workdir, "results.json")) as f:
        kept = json.load(f)
    assert kept["num_epochs"] == epochs + 1 and kept["table_num_epochs"] == epochs
    assert kept["table"] == json.loads(json.dumps(_common.to_builtin(rebuilt["table"])))


def test_infomax_vae_on_binarized_images(tmp_path, monkeypatch):
    # On grey levels the Bernoulli "ELBO" bounds no log p(x); `binarize` makes the data binary.
    config = _quick(vae_config, binarize=True)
    seen, binarize = [], data.binarize

    def spy(dataset):
        seen.append(binarize(dataset))
        return seen[-1]

    monkeypatch.setattr(data, "binarize", spy)
    results = vae_experiment.train_and_evaluate(config, str(tmp_path / "binary"))
    assert len(seen) == 1 and set(np.unique(seen[0].train_images)) == {0, 255}
    grey = vae_experiment.train_and_evaluate(_quick(vae_config), str(tmp_path / "grey"))
    # The binary images are what the models trained and were evaluated on.
    assert [r["elbo"] for r in results["table"][:-1]] != [r["elbo"] for r in grey["table"][:-1]]
    assert all(np.isfinite(r["elbo"]) for r in results["table"] if r["model"] != "raw pixels")


@pytest.mark.slow  # a plotting corner
def test_infomax_vae_plots_fewer_test_images_than_its_grid(tmp_path):
    # With 8 test images the 10-column sample grid failed (IndexError) after the probes:
    # samples.png and curves.png were never written, and every rerun failed the same way.
    config = _quick(vae_config, max_examples=8, batch_size=8)
    vae_experiment.train_and_evaluate(config, str(tmp_path))
    for name in ("samples.png", "curves.png", "results.json"):
        assert (tmp_path / name).exists(), name


def test_infomax_vae_curves_plot_a_non_finite_evaluation_read_back_as_null(tmp_path):
    # Before: a history read back from JSON (a resume) with a null value raised in np.mean.
    row = {"model": "vae", "elbo": -1.0, "kl": 2.0, "mi": 1.0, "recon": -2.0}
    history = [{**row, "epoch": 1.0, "kl": None}, {**row, "epoch": 2.0}]
    vae_experiment.plot_curves(str(tmp_path / "curves.png"), history, ["vae"])
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_bernoulli_likelihood_normalizes_over_binary_images_only():
    # Summed over every image of four pixels, p(x | z) is 1 over the 16 binary images, and more
    # than 1 over grey levels {0, 1/2, 1}: an ELBO on grey images bounds no log p(x).
    logits = jnp.array([[-1.0, 0.3, 2.0, 0.0]]).reshape(1, 2, 2, 1)
    grid = lambda values: np.stack(np.meshgrid(*[values] * 4, indexing="ij"), -1).reshape(
        -1, 2, 2, 1
    )
    for values, total in (((0.0, 1.0), 1.0), ((0.0, 0.5, 1.0), None)):
        images = jnp.asarray(grid(values), jnp.float32)
        p = jnp.exp(vae.bernoulli_log_likelihood(jnp.broadcast_to(logits, images.shape), images))
        if total is None:
            assert float(p.sum()) > 1.5
        else:
            assert float(p.sum()) == pytest.approx(total, rel=1e-5)


def test_ib_num_seeds_trains_each_seed_as_its_own_sweep(tmp_path):
    # Seed 0 + k of a 2-seed run is the one-seed run with seed k: VIB vmaps the seeds, MIGE-IB
    # maps over them (`jax.lax.map`). No validation split: it is drawn from `config.seed`.
    methods = dict(methods=("vib", "mige"), validation_examples=0)
    pair = ib_experiment.train_and_evaluate(
        _quick(ib_config, num_seeds=2, **methods), str(tmp_path / "pair")
    )
    alone = ib_experiment.train_and_evaluate(
        _quick(ib_config, seed=1, **methods), str(tmp_path / "alone")
    )
    assert pair["num_seeds"] == 2
    for method in methods["methods"]:
        entry = pair["methods"][method]
        seed_one = [r for r in entry["final_per_seed"] if r["seed"] == 1]
        for a, b in zip(seed_one, alone["methods"][method]["final"], strict=True):
            assert a["beta"] == b["beta"]
            np.testing.assert_allclose(a["train_ce"], b["train_ce"], rtol=1e-5)
            # Batched and plain programs agree to float32 round-off, which may flip one of
            # digits' 360 test images, no more.
            assert a["error_mean"] == pytest.approx(b["error_mean"], abs=1.01 / 360)
        for row in entry["final"]:
            errors = [r["error_mean"] for r in entry["final_per_seed"] if r["beta"] == row["beta"]]
            assert row["num_seeds"] == len(errors) == 2
            assert row["error_mean"] == pytest.approx(np.mean(errors))
            assert row["error_mean_std"] == pytest.approx(np.std(errors))
        seeds = {r["seed"] for r in entry["final_per_seed"]}
        assert seeds == {0, 1}
    table = ib_experiment.summary(pair)
    assert "test_err_std" in table and "no validation split" in table and "val_err" not in table


@pytest.mark.slow  # the sweep trainer's seeds, shared with IB: test_ib_num_seeds_... stays
def test_infomax_vae_num_seeds_trains_each_seed_as_its_own_run(tmp_path):
    pair = vae_experiment.train_and_evaluate(
        _quick(vae_config, num_seeds=2), str(tmp_path / "pair")
    )
    alone = vae_experiment.train_and_evaluate(_quick(vae_config, seed=1), str(tmp_path / "alone"))
    seed_one = [r for r in pair["table_per_seed"] if r.get("seed") == 1]
    models = [r for r in alone["table"] if r["model"] != "raw pixels"]  # pixels: fitted once
    assert [r["model"] for r in seed_one] == [r["model"] for r in models]
    for a, b in zip(seed_one, models, strict=True):
        np.testing.assert_allclose(a["elbo"], b["elbo"], rtol=1e-5)
        # One of the 360 test images may flip (float32 round-off of batched vs plain codes).
        assert a["probe_test_accuracy"] == pytest.approx(b["probe_test_accuracy"], abs=1.01 / 360)
    for row in pair["table"][:-1]:  # the last: raw pixels
        values = [r["elbo"] for r in pair["table_per_seed"] if r["model"] == row["model"]]
        assert row["num_seeds"] == 2 and row["elbo"] == pytest.approx(np.mean(values))
        assert row["elbo_std"] == pytest.approx(np.std(values)) and row["elbo_std"] > 0
    assert pair["table"][-1]["model"] == "raw pixels" and "elbo_std" in vae_experiment.summary(pair)
    # Raw pixels are fitted once: no "0.000" spread in the summary.
    table = vae_experiment.summary(pair).split("\nlinear probes stopped")[0]  # (a note below)
    (pixels,) = [line for line in table.splitlines() if "raw pixels" in line]
    assert pixels.split()[-1] == "-"
    # Whether each probe converged: over seeds, where every seed's did; unfinished ones named.
    for row in pair["table"][:-1]:
        flags = [r["probe_converged"] for r in pair["table_per_seed"] if r["model"] == row["model"]]
        assert row["probe_converged"] == all(flags)
    cut = {
        **pair,
        "table": [{**r, "probe_converged": r is pair["table"][0]} for r in pair["table"]],
    }
    names = [r["model"] for r in pair["table"][1:]]
    assert f"before config.probe.tol: {names}" in vae_experiment.summary(cut)
    done = {**pair, "table": [{**r, "probe_converged": True} for r in pair["table"]]}
    assert "linear probes stopped" not in vae_experiment.summary(done)


def test_mnist_presets_share_the_protocol_and_differ_in_the_schedule():
    mnist, paper = ib_config.get_config("mnist"), ib_config.get_config("mnist_paper")
    differ = {k for k in mnist.to_dict() if mnist[k] != paper[k]}
    # The paper's preset also handles the data as the authors' code does (README).
    assert differ == {
        "methods", "betas", "num_epochs", "learning_rate", "lr_decay", "lr_decay_epochs",
        "eval_every_epochs", "validation_examples", "kernel_init", "centered_inputs",
    }  # fmt: skip
    assert (paper.num_epochs, paper.learning_rate, paper.betas.vib) == (200, 1e-4, (1e-3,))
    assert (paper.validation_examples, paper.kernel_init, paper.centered_inputs) == (
        0, "glorot_uniform", True,
    )  # fmt: skip
    final = ib_config.get_config("mnist_final")
    differ = {k for k in mnist.to_dict() if mnist[k] != final[k]}
    assert differ == {"methods", "betas", "validation_examples", "eval_every_epochs"}
    assert (final.betas.vib, final.validation_examples, final.num_epochs) == ((3e-4,), 0, 15)
    assert final.methods == ("deterministic", "vib")
    with pytest.raises(ValueError, match="unknown preset 'mnst'"):
        ib_config.get_config("mnst")


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("mine.bound", "nope", "unknown bound 'nope'"),
        ("mine.critic", "sepparable", "unknown critic 'sepparable'"),
        ("mige.score_estimator", "nope", "unknown score estimator 'nope'"),
    ],
)
def test_settings_of_methods_not_run_are_still_checked(field, value, match):
    config = _quick(ib_config, methods=("vib",), **{field: value})  # a typo ran to the end
    with pytest.raises(KeyError, match=match):
        ib_experiment.build(config, "vib", 10)


@pytest.mark.slow  # the probe cache; tests/test_halves.py's test of it stays
def test_infomax_vae_reads_its_probe_fits_from_a_shared_cache(tmp_path, monkeypatch):
    cache = str(tmp_path / "cache")
    first = vae_experiment.train_and_evaluate(
        _quick(vae_config, **{"probe.cache_dir": cache}), str(tmp_path / "a")
    )
    fits = []
    real = probes.fit_probe
    monkeypatch.setattr(probes, "fit_probe", lambda *a, **k: fits.append(1) or real(*a, **k))
    second = vae_experiment.train_and_evaluate(
        _quick(vae_config, **{"probe.cache_dir": cache}), str(tmp_path / "b")
    )
    assert fits == []  # the raw pixels' and every model's (trained the same) read back
    assert [r["probe_test_accuracy"] for r in second["table"]] == [
        r["probe_test_accuracy"] for r in first["table"]
    ]
    with pytest.raises(ValueError, match="unknown fields \\['cach'\\] in `config.probe`"):
        config = _quick(vae_config)
        with config.unlocked():
            config.probe.cach = "x"
        vae_experiment.train_and_evaluate(config, str(tmp_path / "c"))


def test_models_given_dicts_and_lists_are_hashable_and_run_under_jit_as_static_arguments():
    # Before: dicts and lists were taken as given, the model worked eagerly, and `jax.jit`
    # with it static failed later ("Non-hashable static arguments", "unhashable type: 'list'").
    # (`DIMObjective`: tests/test_dim.py.)
    from mi_jax import amdim

    given = _model(
        "mine",
        trunk_hparams={"hidden": [8]},
        critic_hparams={"embed_dim": 4, "hidden": (8,)},
        bound_hparams={"decay": 0.9},
    )
    assert given == _model("mine", bound_hparams=(("decay", 0.9),))
    assert hash(given) == hash(_model("mine", bound_hparams=(("decay", 0.9),)))
    images = jax.random.uniform(jax.random.key(0), (6, 4, 4, 1))
    labels = jnp.arange(6) % 3
    params, states = given.init(jax.random.key(1), images)
    loss = jax.jit(lambda m, *a: m.loss(*a)[0], static_argnums=0)
    args = (params, states, images, labels, jax.random.key(2), jnp.float32(1e-3))
    assert np.isfinite(float(loss(given, *args)))
    model = _vae_model(
        image_shape=[4, 4, 1], encoder_hparams={"hidden": [8]}, decoder_hidden=[8],
        critic_hparams={"hidden": [8], "embed_dim": 4}, bound_hparams={},
    )  # fmt: skip
    assert model == _vae_model() and hash(model) == hash(_vae_model())
    encoder = amdim.MultiScaleEncoder(stem_width=4, widths=(6, 5, 3))
    objective = amdim.AMDIMObjective(
        encoder=encoder, predictions=["1-5"], estimator="smile", estimator_hparams={"clip": 2.0},
        views=dict(
            amdim.AMDIMObjective(encoder=encoder).views
        ),
    )  # fmt: skip
    assert hash(objective) and objective.predictions == ("1-5",)


# --------------------------------------------------------------------------------------------
# Hand recomputations (a mutation check: each of these caught a change the tests above let through).


def _ib_model(method, **kw):
    """`_model` with sigma ~ 1.3 at the start (codes far from their means)."""
    return _model(method, **{"std_offset": -1.0, **kw})


def test_ib_codes_have_the_encoders_mean_and_standard_deviation():
    """Catches: z = mu + sigma^2 eps. 4000 codes per example: the std's standard error is
    1.1 %, the tolerance 5 %; the mean's 1.6 % of sigma, the tolerance 8 %."""
    x = jax.random.uniform(jax.random.key(0), (4, 4, 4, 1))
    model = _ib_model("vib", std_offset=-2.0)  # sigma ~ 2: sigma^2 ~ 4
    params, _ = model.init(jax.random.key(1), x)
    z, mu, sigma = model.sample(params, x, jax.random.key(2), 4000)
    mu_e, sigma_e = model.encoder.apply(params["encoder"], x)
    np.testing.assert_allclose(mu, mu_e, rtol=1e-6)
    assert float(jnp.min(sigma)) > 1.5  # sigma^2 differs from sigma by > 50 %
    np.testing.assert_allclose(jnp.std(z, axis=0), sigma, rtol=0.05)
    assert bool(jnp.all(jnp.abs(jnp.mean(z, axis=0) - mu) < 0.08 * sigma))


def test_ib_kl_metric_is_the_batch_mean_of_the_closed_form():
    """Catches: the KL summed over the batch: beta's scale then grows with the batch size."""
    x = jax.random.uniform(jax.random.key(0), (6, 4, 4, 1))
    y = jnp.array([0, 1, 2, 0, 1, 2])
    model = _ib_model("vib")
    params, states = model.init(jax.random.key(1), x)
    loss, (m, _) = model.loss(params, states, x, y, jax.random.key(2), 0.3)
    mu, sigma = model.encoder.apply(params["encoder"], x)
    mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
    kl = np.mean(0.5 * np.sum(mu**2 + sigma**2 - 1 - 2 * np.log(sigma), -1))
    np.testing.assert_allclose(m["kl"], kl, rtol=1e-5)
    np.testing.assert_allclose(loss, m["ce"] + 0.3 * kl, rtol=1e-5)


def test_mige_ib_penalty_is_taken_on_the_sampled_codes():
    """Catches: MIGE-IB's marginal entropy taken on the means instead of the codes."""
    x = jax.random.uniform(jax.random.key(0), (8, 4, 4, 1))
    y = jnp.arange(8) % 3
    model = _ib_model("mige", score_estimator="stein", train_samples=2)
    params, states = model.init(jax.random.key(1), x)
    key = jax.random.key(2)
    _, (m, _) = model.loss(params, states, x, y, key, 0.5)
    z, mu, sigma = model.sample(params, x, key, 2)
    want = ib.mige_penalty(z.reshape(-1, 5), sigma, model.score_fn)
    np.testing.assert_allclose(m["penalty"], want, rtol=1e-4, atol=1e-5)
    on_means = ib.mige_penalty(jnp.broadcast_to(mu, z.shape).reshape(-1, 5), sigma, model.score_fn)
    assert abs(float(want) - float(on_means)) > 1e-2


def test_vae_sigma_is_softplus_of_the_raw_head_without_offset():
    """Catches: IBModel's offset 5 applied to the VAE: sigma ~ 0.007 at init, not ~0.7."""
    model = _vae_model()
    x = jax.random.uniform(jax.random.key(0), (5, 4, 4, 1))
    params, _ = model.init(jax.random.key(1), x)
    p = jax.tree.map(np.asarray, params["encoder"]["params"]["MLPEncoder_0"])
    h = np.maximum(np.asarray(x).reshape(5, -1) @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"], 0)
    out = h @ p["global"]["kernel"] + p["global"]["bias"]
    mu, sigma = model.encoder.apply(params["encoder"], x)
    np.testing.assert_allclose(mu, out[:, :3], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sigma, np.logaddexp(0, out[:, 3:]), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Reported statistics by hand (a mutation check: each caught a change the tests above missed).


def test_the_selected_evaluation_has_the_lowest_validation_error_earliest_on_a_tie():
    """Catches: selected by TEST error, highest validation error, tie to the latest."""
    head = dict(method="vib", beta=0.1)
    history = [
        dict(head, epoch=1, error_mean=0.10, val_error_mean=0.30),
        dict(head, epoch=2, error_mean=0.20, val_error_mean=0.20),
        dict(head, epoch=3, error_mean=0.05, val_error_mean=0.20),
    ]
    entry = ib_experiment.method_entry("vib", [0.1], history)
    assert [r["epoch"] for r in entry["selected"]] == [2]
    assert [r["epoch"] for r in entry["final"]] == [3]


def test_eval_fn_reports_the_sampled_error_and_the_mean_kl_of_predict():
    """Catches: error_sampled read at the posterior mean, max KL for the mean KL."""
    model = ib.IBModel(
        method="vib", num_classes=3, latent_dim=5, trunk_hparams=(("hidden", (8,)),),
        std_offset=-1.0,  # sigma ~ 1.3: sampled codes' predictions differ from the mean's
    )  # fmt: skip
    images = np.random.default_rng(0).integers(0, 256, (64, 4, 4, 1)).astype(np.uint8)
    params, _ = model.init(jax.random.key(1), data.to_float(images[:4]))
    key = jax.random.key(2)
    pred = model.predict(params, data.to_float(images), jax.random.fold_in(key, 0), 12)
    labels = np.asarray(np.argmax(pred.probs_sampled, -1), np.int32)
    error_at_mean = float(np.mean(np.argmax(pred.probs_at_mean, -1) != labels))
    assert error_at_mean > 0.05  # (the case tells the two apart)
    evaluate = ib_experiment.make_eval_fn(model, 12, eval_batch=64)
    metrics = jax.device_get(evaluate(jax.tree.map(lambda p: p[None], params), images, labels, key))
    assert float(metrics["error_sampled"][0]) == pytest.approx(0.0, abs=1e-7)
    assert float(metrics["error_mean"][0]) == pytest.approx(error_at_mean, abs=1e-7)
    assert float(metrics["kl"][0]) == pytest.approx(float(np.mean(pred.kl)), rel=1e-5)


def test_the_weight_average_is_evaluated_on_the_test_and_the_validation_split(
    tmp_path, monkeypatch
):
    """Catches: the raw parameters evaluated, not the EMA, validation read on the test set."""
    averaged, calls = [], []
    real_average, real_make = training.averaged_params, ib_experiment.make_eval_fn

    def average(state, decay):
        out = real_average(state, decay)
        averaged.append(out)
        return out

    def make(*args, **kwargs):
        evaluate = real_make(*args, **kwargs)

        def spy(params, images, labels, key):
            calls.append((any(params is a for a in averaged), images.shape[0]))
            return evaluate(params, images, labels, key)

        return spy

    monkeypatch.setattr(training, "averaged_params", average)
    monkeypatch.setattr(ib_experiment, "make_eval_fn", make)
    config = ib_config.get_config("quick")
    config.update_from_flattened_dict({"methods": ("vib",)})
    assert config.ema_decay > 0  # (at 0 the average is the parameters themselves)
    ib_experiment.train_and_evaluate(config, str(tmp_path))
    assert calls and all(is_average for is_average, _ in calls)
    sizes = [n for _, n in calls]
    assert sizes.count(config.validation_examples) == len(sizes) // 2 > 0


@pytest.mark.parametrize("stopped", ["before", pytest.param("after", marks=pytest.mark.slow)])
def test_infomax_vae_stopped_around_its_last_checkpoint_reports_the_last_epoch(
    tmp_path, monkeypatch, stopped
):
    # A run stopped between its last evaluation (written to results.json) and its checkpoint,
    # or just after that checkpoint; then run again. Chunks are made to take one second each.
    # Catches: the checkpoint saved before results.json (the table of a 2-epoch run then
    # reports epoch 1), the evaluations after the checkpoint kept beside the rerun's, the
    # rerun's training time counted from results.json's total (a chunk twice), and a
    # checkpoint of another model refused only after config.json was overwritten.
    real_save = _common.save_checkpoint
    saves = []

    def stop_at_the_last_save(manager, step, state, **kwargs):
        saves.append(step)
        if stopped == "after":
            real_save(manager, step, state, **kwargs)
        if len(saves) == 2:
            raise RuntimeError("stopped")
        if stopped == "before":
            real_save(manager, step, state, **kwargs)

    _one_second_chunks(monkeypatch)
    monkeypatch.setattr(_common, "save_checkpoint", stop_at_the_last_save)
    config = _quick(vae_config)
    with pytest.raises(RuntimeError, match="stopped"):
        vae_experiment.train_and_evaluate(config, str(tmp_path))
    monkeypatch.setattr(_common, "save_checkpoint", real_save)
    results = vae_experiment.train_and_evaluate(config, str(tmp_path))
    assert config.num_epochs == 2 and results["train_s"] == 2.0
    keys = [(r["model"], r["step"]) for r in results["history"]]
    assert len(keys) == len(set(keys)), keys
    assert {r["epoch"] for r in results["table"] if "epoch" in r} == {2.0}
    assert {r["model"] for r in results["table"] if "epoch" in r} == set(results["models"])
    if stopped == "after":
        for name in ("config.json", "results.json"):
            (tmp_path / name).unlink()
        with pytest.raises(ValueError, match="does not fit"):
            vae_experiment.train_and_evaluate(
                _quick(vae_config, latent_dim=config.latent_dim + 1), str(tmp_path)
            )
        assert not (tmp_path / "config.json").exists()


def _vae_pair(model):
    x = jax.random.uniform(jax.random.key(0), (4, 4, 4, 1))
    a, b = model.init(jax.random.key(1), x), model.init(jax.random.key(2), x)
    return jax.tree.map(lambda u, v: np.stack([u, v]), a, b)  # (params, states), [2, ...]


def _small_dataset():
    rng = np.random.default_rng(0)
    return data.Dataset(
        name="fake",
        train_images=rng.integers(0, 256, (40, 4, 4, 1), dtype=np.uint8),
        train_labels=np.arange(40, dtype=np.int32) % 3,
        test_images=rng.integers(0, 256, (10, 4, 4, 1), dtype=np.uint8),
        test_labels=np.arange(10, dtype=np.int32) % 3,
        num_classes=3,
    )


def test_vae_eval_is_each_models_mean_over_full_test_batches_at_kl_weight_one():
    # Catches: the reconstruction and KL terms swapped, the first test batch only.
    model = _vae_model()
    params, states = _vae_pair(model)
    images = _small_dataset().test_images  # 10 images, batch 4: two batches, 2 left out
    key = jax.random.key(5)
    got = vae_experiment.make_eval_fn(model, 4)(params, states, images, key)
    for i in range(2):
        p, s = _common.leaf_slice((params, states), i)
        per_batch = []
        for j in range(2):
            x = data.to_float(images[4 * j : 4 * j + 4])
            _, (m, _) = model.loss(p, s, x, jax.random.fold_in(key, j), 1.0, 0.0)
            per_batch.append(m)
        for name in ("elbo", "recon", "kl", "mi", "infonce"):
            want = np.mean([float(m[name]) for m in per_batch])
            np.testing.assert_allclose(got[name][i], want, rtol=1e-5, atol=1e-6, err_msg=name)


def test_vae_probe_rows_name_the_model_whose_encoder_gave_the_features(monkeypatch):
    # Catches: the first model's encoder probed for every model.
    model = _vae_model()
    params, _ = _vae_pair(model)
    dataset = _small_dataset()
    seen = []
    real = _common.fit_probe_cached

    def spy(cache_dir, train_x, *args, **kwargs):
        seen.append(np.asarray(train_x))
        return real(cache_dir, train_x, *args, **kwargs)

    monkeypatch.setattr(_common, "fit_probe_cached", spy)
    config = ml_collections.ConfigDict(
        dict(probe=dict(l2=1e-3, max_iter=20, tol=1e-4, cache_dir=""))
    )
    rows = vae_experiment.probe_accuracies(config, model, params, dataset, ["a", "b"])
    assert [r["model"] for r in rows] == ["a", "b", "raw pixels"]
    for i in range(2):
        enc = _common.leaf_slice(params["encoder"], i)
        mu = model.encoder.apply(enc, data.to_float(dataset.train_images))[0]
        np.testing.assert_allclose(seen[i], np.asarray(mu), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(seen[2], dataset.train_images.reshape(40, -1) / 255.0)


def test_vae_sample_grid_shows_each_models_reconstructions_and_samples(tmp_path, figures):
    # Catches: the originals shown as reconstructions, the first model's parameters in every
    # model's rows.
    model = _vae_model()
    params, _ = _vae_pair(model)
    dataset = _small_dataset()
    key = jax.random.key(3)
    vae_experiment.plot_samples(str(tmp_path / "s.png"), model, params, dataset, ["a", "b"], key, 3)
    (fig,) = figures.values()
    axes = np.asarray(fig.axes).reshape(5, 3)
    originals = data.to_float(dataset.test_images[:3])
    want = [np.asarray(originals)]
    for i in range(2):
        p = _common.leaf_slice(params, i)
        want += [np.asarray(model.reconstruct(p, originals)), np.asarray(model.generate(p, key, 3))]
    labels = ["test images", "a: reconstructions", "a: samples", "b: reconstructions", "b: samples"]
    for r in range(5):
        assert axes[r, 0].get_ylabel() == labels[r]
        for c in range(3):
            shown = np.asarray(axes[r, c].get_images()[0].get_array())
            np.testing.assert_allclose(shown, want[r][c, ..., 0], rtol=1e-5, atol=1e-6)


def test_vae_curves_put_kl_and_bound_and_elbo_in_their_own_lines(tmp_path, figures):
    # Catches: the KL and bound curves swapped.
    history = [
        dict(model=m, epoch=e, seed=0, elbo=-10.0 * (k + 1) - e, kl=2.0 + k + e,
             mi=0.5 + k - 0.1 * e, recon=-5.0 * (k + 1) - e)
        for k, m in enumerate(("vae", "infomax_vae"))
        for e in (1, 2)
    ]  # fmt: skip
    vae_experiment.plot_curves(str(tmp_path / "c.png"), history, ["vae", "infomax_vae"])
    (fig,) = figures.values()
    lines = {
        (a, line.get_label()): np.asarray(line.get_ydata())
        for a, ax in enumerate(fig.axes)
        for line in ax.lines
    }
    for m in ("vae", "infomax_vae"):
        rows = [r for r in history if r["model"] == m]
        np.testing.assert_allclose(lines[(0, m)], [r["elbo"] for r in rows])
        np.testing.assert_allclose(lines[(1, f"{m}: KL (upper)")], [r["kl"] for r in rows])
        np.testing.assert_allclose(lines[(1, f"{m}: bound (lower)")], [r["mi"] for r in rows])
        np.testing.assert_allclose(lines[(2, m)], [r["recon"] for r in rows])


def test_vae_two_seed_run_reports_the_last_evaluation_settings_and_means(tmp_path, monkeypatch):
    """The probes and plots are replaced (cheap); training and evaluation are real.

    Catches: ``train_*`` of a chunk's last step (not its mean), the table from the first
    evaluation, beta and gamma under another model's name, the probes' spread missing from the
    summary, results.csv holding the per-seed table."""
    config = vae_config.get_config("quick")
    config.update_from_flattened_dict(dict(num_seeds=2, max_examples=300, batch_size=50))
    chunks = []
    real_chunk = _common.run_sweep_chunk

    def spy_chunk(*args, **kwargs):
        out = real_chunk(*args, **kwargs)
        chunks.append(jax.device_get(out[1]))
        return out

    calls = []

    def fake_probes(config, model, params, dataset, names, pixels=True, mesh=None):
        calls.append(1)
        rows = [dict(model=n, probe_test_accuracy=0.1 * (i + 1) + 0.05 * len(calls),
                     probe_converged=True) for i, n in enumerate(names)]  # fmt: skip
        if pixels:
            rows.append(dict(model="raw pixels", probe_test_accuracy=0.9, probe_converged=True))
        return rows

    monkeypatch.setattr(_common, "run_sweep_chunk", spy_chunk)
    monkeypatch.setattr(vae_experiment, "probe_accuracies", fake_probes)
    monkeypatch.setattr(vae_experiment, "plot_samples", lambda *a, **k: None)
    monkeypatch.setattr(vae_experiment, "plot_curves", lambda *a, **k: None)
    results = vae_experiment.train_and_evaluate(config, str(tmp_path))
    names = list(config.models)
    # Each model's beta and gamma under its own name.
    for name in names:
        assert results["models"][name] == dict(config.models[name])
    for row in results["table"][:-1] + results["table_per_seed"]:
        if row["model"] != "raw pixels":
            assert (row["beta"], row["gamma"]) == (
                config.models[row["model"]].beta, config.models[row["model"]].gamma,
            )  # fmt: skip
    # train_*: the mean over the chunk's steps of that seed's and model's training metrics.
    assert len(chunks) == 2
    history = results["history"]
    steps = sorted({r["step"] for r in history})
    for step, metrics in zip(steps, chunks, strict=True):
        for i, name in enumerate(names):
            for k in (0, 1):
                (row,) = [r for r in history
                          if (r["model"], r["seed"], r["step"]) == (name, k, step)]  # fmt: skip
                assert row["train_mi"] == pytest.approx(float(np.mean(metrics["mi"][:, k, i])))
    # The per-seed table: the last evaluation of that model and seed, with that seed's probe.
    last = history[-1]["step"]
    for k in (0, 1):
        for i, name in enumerate(names):
            (row,) = [r for r in results["table_per_seed"]
                      if (r["model"], r.get("seed")) == (name, k)]  # fmt: skip
            (want,) = [r for r in history if (r["model"], r["seed"], r["step"]) == (name, k, last)]
            assert row["elbo"] == want["elbo"] and row["kl"] == want["kl"]
            assert row["probe_test_accuracy"] == pytest.approx(0.1 * (i + 1) + 0.05 * (k + 1))
    # The table: mean and std over both seeds, one row per model, and results.csv holds it.
    for i, name in enumerate(names):
        (row,) = [r for r in results["table"] if r["model"] == name]
        assert row["num_seeds"] == 2
        assert row["probe_test_accuracy"] == pytest.approx(0.1 * (i + 1) + 0.075)
        assert row["probe_test_accuracy_std"] == pytest.approx(0.025)
    with open(tmp_path / "results.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert [r["model"] for r in csv_rows] == [r["model"] for r in results["table"]]
    assert "probe_test_accuracy_std" in vae_experiment.summary(results)
    assert results["eval_test_images"] == results["test_images"] // 50 * 50


def _decoder_log_probs(params, z):
    """The IB decoder's class log-probabilities at codes ``z`` ``[..., K]``, in float64 numpy:
    a softmax over ``z W + b`` written from its parameters."""
    dec = jax.tree.map(lambda a: np.asarray(a, np.float64), params["decoder"]["params"])
    logits = np.asarray(z, np.float64) @ dec["kernel"] + dec["bias"]
    return logits - np.log(np.exp(logits).sum(-1, keepdims=True))


def test_ib_ce_is_the_mean_over_every_sampled_code_and_example():
    """Catches: the cross-entropy summed over the batch (beta's scale then shrinks with the
    batch size) or taken on the first of ``train_samples`` codes only."""
    x = _images(jax.random.key(0), batch=6)
    y = jnp.array([0, 1, 2, 0, 1, 2])
    model = _ib_model("vib", train_samples=3)  # sigma ~ 1.3: the three codes' CEs differ
    params, states = model.init(jax.random.key(1), x)
    key = jax.random.key(2)
    loss, (m, _) = jax.jit(model.loss)(params, states, x, y, key, 0.0)
    z, _, _ = model.sample(params, x, key, 3)
    log_p = _decoder_log_probs(params, z)  # [3, 6, 3]
    index = np.broadcast_to(np.asarray(y)[None, :, None], (3, 6, 1))
    nll = -np.take_along_axis(log_p, index, -1)[..., 0]  # [3, 6]
    per_code = nll.mean(1)
    assert np.ptp(per_code) > 1e-2  # (the case tells "first code only" apart)
    np.testing.assert_allclose(m["ce"], nll.mean(), rtol=1e-5)
    np.testing.assert_allclose(loss, nll.mean(), rtol=1e-5)  # beta 0: the loss is the CE


def test_the_deterministic_baseline_uses_the_mean_code_whatever_its_sigma_head():
    """Catches: the deterministic baseline sampling ``mu + sigma eps`` like VIB (its codes then
    carry the unused sigma head's noise; test_vib_at_beta_zero... runs at sigma ~ 1e-17, where
    the two coincide)."""
    x = _images(jax.random.key(0), batch=4)
    y = jnp.array([0, 1, 2, 0])
    det = _ib_model("deterministic")  # sigma ~ 1.3: a sampled code is far from its mean
    params, states = det.init(jax.random.key(1), x)
    key = jax.random.key(2)
    z, mu, sigma = det.sample(params, x, key, 5)
    assert float(jnp.min(sigma)) > 0.5
    np.testing.assert_array_equal(z, jnp.broadcast_to(mu, z.shape))
    pred = det.predict(params, x, key, 12)
    np.testing.assert_allclose(pred.probs_sampled, pred.probs_at_mean, rtol=1e-6, atol=1e-7)
    # Its loss at any beta is the cross-entropy at the means.
    want = -np.mean(_decoder_log_probs(params, mu)[np.arange(4), np.asarray(y)])
    loss, (m, _) = det.loss(params, states, x, y, key, 0.7)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(m["ce"], want, rtol=1e-5)


def test_mine_ib_at_beta_zero_trains_the_encoder_on_the_cross_entropy_alone():
    """Catches: the critic's own term ``-I`` reaching the encoder (its codes not stopped):
    test_mine_ib_is_a_min_max_game compares beta 0.5 with beta 0, where that term cancels.
    At beta 0 MINE-IB's encoder and decoder gradients are VIB's at beta 0 (the CE's)."""
    x = _images(jax.random.key(0), batch=8)
    y = jnp.arange(8) % 3
    mine = _model("mine", bound="dv", std_offset=1.0)
    vib = mine.replace(method="vib")
    params, states = mine.init(jax.random.key(1), x)
    key = jax.random.key(2)
    _, _, g_mine = _loss_and_grads(mine, params, states, x, y, key, 0.0)
    no_critic = {k: v for k, v in params.items() if k != "critic"}
    _, _, g_vib = _loss_and_grads(vib, no_critic, (), x, y, key, 0.0)
    for part in ("encoder", "decoder"):
        for a, b in zip(jax.tree.leaves(g_mine[part]), jax.tree.leaves(g_vib[part]), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)

    # (the critic's term has an encoder gradient here: the case tells the two apart)
    def bound_of_encoder(encoder):
        z = mine.sample({**params, "encoder": encoder}, x, key, 1)[0][0]
        return mine.ensemble.apply(params["critic"], states, x.reshape(8, -1), z)[0][0]

    grad_i = jax.grad(bound_of_encoder)(params["encoder"])
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grad_i)) > 1e-4


def _mine_state_after_one_update(scores, decay=0.99):
    """MINE's moving average after its first update, from its definition: count 1 and
    ``log((1 - d) mean_{i != j} e^{f_ij})``."""
    s = np.asarray(scores, np.float64)
    off = s[~np.eye(s.shape[0], dtype=bool)]
    return 1, np.log(1 - decay) + np.log(np.mean(np.exp(off)))


def test_mine_ib_returns_the_updated_moving_average():
    """Catches: the loss returning the bound states it was given (MINE's moving average never
    moves: its bias correction then divides by a one-step average forever)."""
    x = _images(jax.random.key(0), batch=8)
    y = jnp.arange(8) % 3
    model = _model("mine", std_offset=1.0)  # bound "mine" (the default): a stateful bound
    params, states = model.init(jax.random.key(1), x)
    key = jax.random.key(2)
    _, (_, new_states) = jax.jit(model.loss)(params, states, x, y, key, 0.5)
    z0 = model.sample(params, x, key, 1)[0][0]
    scores = model.ensemble.scores(params["critic"], x.reshape(8, -1), z0)[0]
    count, log_ema = _mine_state_after_one_update(scores)
    state = new_states[0]  # the one bound's MineState
    assert int(state.count) == count
    np.testing.assert_allclose(float(state.log_ema), log_ema, rtol=1e-5, atol=1e-5)
    # Threaded through a second step, it counts on.
    _, (_, again) = jax.jit(model.loss)(params, new_states, x, y, key, 0.5)
    assert int(again[0].count) == 2


def test_infomax_vae_returns_the_updated_moving_average():
    """As above for the InfoMax-VAE's critic under MINE's bound."""
    x = _images(jax.random.key(0), batch=5)
    model = _vae_model(bound="mine")
    params, states = model.init(jax.random.key(1), x)
    key = jax.random.key(2)
    _, (_, new_states) = jax.jit(model.loss)(params, states, x, key, 1.0, 0.5)
    mu, sigma = model.encoder.apply(params["encoder"], x)
    z = mu + sigma * jax.random.normal(key, mu.shape)
    scores = model.ensemble.scores(params["critic"], x.reshape(5, -1), z)[0]
    count, log_ema = _mine_state_after_one_update(scores)
    assert int(new_states[0].count) == count
    np.testing.assert_allclose(float(new_states[0].log_ema), log_ema, rtol=1e-5, atol=1e-5)


def test_vae_generate_decodes_standard_normal_prior_samples():
    """Catches: ``generate`` drawing its codes from another distribution than the prior
    ``N(0, I)`` (e.g. uniform). With a linear decoder the logits are ``z W + b``: the codes
    come back by least squares and must have mean 0 and variance 1 in every dimension. 20,000
    codes: the mean's standard error is 0.007 (tolerance 0.05), the variance's 0.01 (0.06)."""
    model = _vae_model(decoder_hidden=())
    params, _ = model.init(jax.random.key(1), _images(jax.random.key(0), batch=5))
    images = np.asarray(model.generate(params, jax.random.key(3), 20_000), np.float64)
    assert images.shape == (20_000, 4, 4, 1) and images.min() >= 0 and images.max() <= 1
    dec = params["decoder"]["params"]["Dense_0"]
    w, b = np.asarray(dec["kernel"], np.float64), np.asarray(dec["bias"], np.float64)
    logits = np.log(images) - np.log1p(-images)  # [N, 4, 4, 1]
    z = np.linalg.lstsq(w.T, (logits.reshape(20_000, -1) - b).T, rcond=None)[0].T  # [N, 3]
    np.testing.assert_allclose(z.mean(0), 0.0, atol=0.05)
    np.testing.assert_allclose(z.var(0), 1.0, atol=0.06)


def test_vae_reconstruct_is_the_sigmoid_of_the_decoder_at_the_posterior_mean():
    """Catches: logits returned as pixel probabilities, or a code other than the mean."""
    model = _vae_model(decoder_hidden=())
    x = _images(jax.random.key(0), batch=5)
    params, _ = model.init(jax.random.key(1), x)
    mu, _ = model.encoder.apply(params["encoder"], x)
    dec = params["decoder"]["params"]["Dense_0"]
    logits = np.asarray(mu, np.float64) @ np.asarray(dec["kernel"], np.float64) + np.asarray(
        dec["bias"], np.float64
    )
    want = (1.0 / (1.0 + np.exp(-logits))).reshape(5, 4, 4, 1)
    np.testing.assert_allclose(model.reconstruct(params, x), want, rtol=1e-5, atol=1e-6)


def test_bernoulli_decoder_applies_its_activation_between_layers():
    """Catches: the decoder MLP's hidden layers without their activation (a linear decoder)."""
    decoder = vae.BernoulliDecoder((2, 2, 1), hidden=(8,))
    z = jax.random.normal(jax.random.key(0), (6, 3))
    params = decoder.init(jax.random.key(1), z)
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params["params"])
    h = np.maximum(np.asarray(z, np.float64) @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"], 0)
    assert (h == 0).any()  # (relu clips something: the case tells it from a linear layer)
    want = (h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]).reshape(6, 2, 2, 1)
    np.testing.assert_allclose(decoder.apply(params, z), want, rtol=1e-5, atol=1e-6)


def test_ib_model_needs_two_classes():
    """Catches: ``num_classes = 1`` accepted (a softmax over one class: CE 0, nothing learnt)."""
    with pytest.raises(ValueError, match="num_classes"):
        _model("vib", num_classes=1)


def test_ib_eval_draws_fresh_codes_for_every_chunk():
    """Catches: every ``eval_batch`` chunk of the test split sampled with the same key (the
    j-th image of each chunk then gets the same noise: the 10 chunks of MNIST's test split are
    one draw, not ten). The split ``[A; A]`` in two chunks: with fresh noise its sampled
    cross-entropy differs from ``A``'s alone; with the noise reused it is ``A``'s exactly."""
    # sigma ~ 1.3: the sampled predictions vary with the noise
    model = ib.IBModel(
        method="vib",
        num_classes=3,
        latent_dim=5,
        trunk_hparams=(("hidden", (8,)),),
        std_offset=-1.0,
    )
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (32, 4, 4, 1)).astype(np.uint8)
    labels = rng.integers(0, 3, 32).astype(np.int32)
    params, _ = model.init(jax.random.key(1), data.to_float(images[:4]))
    stacked = jax.tree.map(lambda p: p[None], params)
    evaluate = ib_experiment.make_eval_fn(model, 12, eval_batch=32)
    key = jax.random.key(2)
    once = jax.device_get(evaluate(stacked, images, labels, key))
    twice = jax.device_get(
        evaluate(stacked, np.concatenate([images, images]), np.concatenate([labels, labels]), key)
    )
    # (the posterior-mean error has no noise: the same either way)
    assert float(twice["error_mean"][0]) == pytest.approx(float(once["error_mean"][0]), abs=1e-7)
    assert abs(float(twice["ce_sampled"][0]) - float(once["ce_sampled"][0])) > 1e-4
    assert abs(float(twice["ce_single"][0]) - float(once["ce_single"][0])) > 1e-4


def test_ib_argument_checks_missed_by_the_mutation_check():
    """Catches: negative labels accepted (optax's cross-entropy reads them as garbage, no
    error), ``train_samples = 0`` accepted (the CE a mean of nothing: NaN), an infinite beta
    in a sweep (``check_betas``; the training step's traced beta is not read), and
    `gaussian_kl` broadcasting ``sigma [B, 1]`` against ``mu [B, K]``."""
    model, x = _model("vib"), _images(jax.random.key(0))
    params, states = model.init(jax.random.key(1), x)
    match = r"`labels` must lie in \[0, 3\) .`num_classes`., got .* \[-1, 1\]"
    with pytest.raises(ValueError, match=match):
        model.loss(params, states, x, jnp.arange(6) % 3 - 1, jax.random.key(2), 0.1)
    with pytest.raises(ValueError, match="train_samples"):
        _model("vib", train_samples=0)
    with pytest.raises(ValueError, match=r"`betas` must hold finite numbers >= 0, got inf"):
        ib.check_betas([1e-3, float("inf")])
    with pytest.raises(ValueError, match="differ in shape"):
        ib.gaussian_kl(jnp.zeros((2, 3)), jnp.ones((2, 1)))


def test_vae_reconstruct_and_generate_check_their_arguments():
    """A wrong image shape in `reconstruct` and a count below 1 (or not an integer) in
    `generate` are named (before: a shape error deep in the encoder's MLP, and an empty or
    negative-size draw)."""
    model = _vae_model()
    x = _images(jax.random.key(0), batch=5)
    params, _ = model.init(jax.random.key(1), x)
    with pytest.raises(ValueError, match=r"`images` must have shape \[batch, \*image_shape\]"):
        model.reconstruct(params, x[:, :3])
    for num in (0, -2, 2.5):
        with pytest.raises(ValueError, match=r"`num` must be an integer >= 1"):
            model.generate(params, jax.random.key(2), num)
    assert model.generate(params, jax.random.key(2), 3).shape == (3, 4, 4, 1)
