"""Bad input across the public API: each call below once returned a wrong number silently or
failed deep inside JAX naming nothing (a sweep of the public functions, 2026-12-05). Each must
now raise an error that names the argument; the valid neighbours of the refused values (an
infinite clip, a traced ridge, betas in an array) keep working."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mi_jax import (
    amdim,
    bounds,
    critics,
    data,
    dim,
    encoders,
    halves,
    ib,
    mige,
    parallel,
    probes,
    score,
    tasks,
    training,
    vae,
)

_KEY = jax.random.key(0)
_Z = jax.random.normal(_KEY, (16, 2))
_IMAGE = jnp.full((4, 4, 1), 0.5)

# (call, error type, a piece of the message naming the argument)
_BAD_CALLS = {
    # soft clipping: inf * tanh(s / inf) read NaN for every score
    "soft_clip of a string": (lambda: critics.soft_clip(_Z, "5"), ValueError, "`clip`"),
    "soft_clip of NaN": (lambda: critics.soft_clip(_Z, float("nan")), ValueError, "`clip`"),
    # make_ensemble: "nwj" iterated as the bounds 'n', 'w', 'j'
    "make_ensemble of one string": (
        lambda: training.make_ensemble("nwj", "separable"),
        TypeError,
        "write \\['nwj'\\]",
    ),
    "make_ensemble of a spec without a dict": (
        lambda: training.make_ensemble([("smile", 3.0)], "separable"),
        TypeError,
        "bound_specs",
    ),
    "make_ensemble of an int aux_hidden": (
        lambda: training.make_ensemble(["nwj"], "separable", aux_hidden=64),
        ValueError,
        "`aux_hidden`",
    ),
    "make_ensemble of a string clip": (
        lambda: training.make_ensemble(["nwj"], "separable", clip="5"),
        ValueError,
        "`clip`",
    ),
    "check_ensemble of a zero width": (  # ZeroDivisionError in an initializer
        lambda: training.check_ensemble(training.make_ensemble(["nwj"], "separable"), 0, 3),
        ValueError,
        "`dim_x`",
    ),
    # the weight average: 1.5 read -0.21 where 0.5 was right, 1.0 inf
    "averaged_params of a decay above 1": (
        lambda: training.averaged_params(None, 1.5),
        ValueError,
        "`ema_decay`",
    ),
    "make_sweep_chunk of a string flag": (
        lambda: training.make_sweep_chunk(lambda *a: None, _KEY, sequential="False"),
        ValueError,
        "`sequential`",
    ),
    # a Bernoulli likelihood of 0..255 pixels: +1014 nats; of mismatched shapes: broadcast
    "bernoulli_log_likelihood of uint8 images": (
        lambda: vae.bernoulli_log_likelihood(
            jnp.ones((1, 2, 2, 1)), jnp.full((1, 2, 2, 1), 255, jnp.uint8)
        ),
        TypeError,
        "to_float",
    ),
    "bernoulli_log_likelihood of other shapes": (
        lambda: vae.bernoulli_log_likelihood(jnp.zeros((2, 4)), jnp.zeros((2, 2, 2, 1))),
        ValueError,
        "`logits` and `images`",
    ),
    # kernels: 50000^2 wrapped in int32 (a distance of 0)
    "squared_distances of integers": (
        lambda: score.squared_distances(jnp.array([[50000]]), jnp.array([[0]])),
        TypeError,
        "`x`",
    ),
    "squared_distances of other widths": (
        lambda: score.squared_distances(jnp.ones((2, 2)), jnp.ones((2, 3))),
        ValueError,
        "same dim",
    ),
    "rbf_kernel of a zero bandwidth": (
        lambda: score.rbf_kernel(_Z, _Z, 0.0),
        ValueError,
        "`bandwidth`",
    ),
    "entropy_surrogate of a number": (
        lambda: mige.entropy_surrogate(_Z, 3),
        TypeError,
        "`score_fn`",
    ),
    # tasks: a concrete JAX dim was never checked (mi_from_rho read a negative MI)
    "mi_from_rho of a negative JAX dim": (
        lambda: tasks.mi_from_rho(0.5, jnp.array(-1)),
        ValueError,
        "`dim`",
    ),
    "rho_from_mi of a zero JAX dim": (
        lambda: tasks.rho_from_mi(1.0, jnp.array(0)),
        ValueError,
        "`dim`",
    ),
    # a [dim] vector of MIs was spread over the coordinates: the pair's MI its mean
    "correlated_gaussian of a vector mi": (
        lambda: tasks.correlated_gaussian(_KEY, jnp.array([0.0, 0.0, 30.0]), 3, 3),
        ValueError,
        "`mi` must be one number",
    ),
    "gaussian_log_ratio of a vector mi": (
        lambda: tasks.gaussian_log_ratio(jnp.ones((2, 3)), jnp.ones((2, 3)), jnp.ones(3)),
        ValueError,
        "`mi` must be one number",
    ),
    "staircase_mi of one level": (
        lambda: tasks.staircase_mi(3, levels=2.0, steps_per_level=2),
        ValueError,
        "`levels`",
    ),
    "staircase_mi of a list of steps": (
        lambda: tasks.staircase_mi([1, 2], steps_per_level=2),
        TypeError,
        "`step`",
    ),
    # probes: an array from apply_fn was iterated row by row into mixed-up "features"
    "extract_features of an apply_fn returning an array": (
        lambda: probes.extract_features(lambda p, x: x, None, np.ones((5, 2)), batch_size=2),
        TypeError,
        "`apply_fn` must return a tuple",
    ),
    "extract_features of a negative batch size": (
        lambda: probes.extract_features(lambda p, x: (x,), None, np.ones((5, 2)), batch_size=-1),
        ValueError,
        "`batch_size`",
    ),
    "check_hparams of an unknown name": (
        lambda: probes.check_hparams(l22=0.1),
        ValueError,
        "l22",
    ),
    "check_hparams of a string": (lambda: probes.check_hparams(l2="0.1"), ValueError, "`l2`"),
    "fit_probe of a fractional num_classes": (
        lambda: probes.fit_probe(
            np.ones((4, 2)), [0, 1, 0, 1], np.ones((2, 2)), [0, 1], num_classes=2.5
        ),  # fmt: skip
        ValueError,
        "`num_classes`",
    ),
    "fit_probe of complex features": (
        lambda: probes.fit_probe(np.ones((4, 2), complex), [0, 1, 0, 1], np.ones((2, 2)), [0, 1]),
        TypeError,
        "`train_features` must be real",
    ),
    # DIM's MIGE term: location 7 of 3 was clamped to location 2
    "mige_local_surrogate of a location out of range": (
        lambda: dim.mige_local_surrogate(
            jnp.ones((4, 3, 2)), jnp.ones((4, 2)), jnp.array([7]), score.stein_score
        ),
        ValueError,
        "`locations` must lie in \\[0, 3\\)",
    ),
    "check_betas of one number": (lambda: ib.check_betas(0.5), ValueError, "e.g. \\(0.5,\\)"),
    "check_betas of None": (lambda: ib.check_betas([None]), ValueError, "`betas`"),
    "log_mean_exp_offdiag of a float axis": (
        lambda: bounds.log_mean_exp_offdiag(jnp.eye(3), 0.0),
        ValueError,
        "`axis`",
    ),
    "log_mean_exp_offdiag of a bool axis": (  # read as axis 1
        lambda: bounds.log_mean_exp_offdiag(jnp.eye(3), True),
        ValueError,
        "`axis`",
    ),
    "mine update of a state that is not MineState": (
        lambda: bounds.mine().update(jnp.eye(3), ()),
        TypeError,
        "`state`",
    ),
    "data_mesh_for of a fractional batch": (
        lambda: parallel.data_mesh_for(2.5),
        ValueError,
        "`batch_size`",
    ),
    "add_noise of NaN": (
        lambda: halves.add_noise(_KEY, _Z, float("nan")),
        ValueError,
        "`std`",
    ),
    # images: a 2-channel image failed in a broadcast; "False" flipped; inf whitened
    "random_grayscale of two channels": (
        lambda: data.random_grayscale(_KEY, jnp.ones((2, 2, 2)), p=0.5),
        ValueError,
        "1 or 3 channels",
    ),
    "augment_image of a string flag": (
        lambda: data.augment_image(_KEY, _IMAGE, flip="False"),
        ValueError,
        "`flip`",
    ),
    "color_jitter of an infinite strength": (
        lambda: data.color_jitter(_KEY, _IMAGE, brightness=np.inf, contrast=0.0, saturation=0.0),
        ValueError,
        "`brightness`",
    ),
    # sizes and shapes accepted before, failing later or running nothing
    "make_scan_trainer of -1 steps": (
        lambda: training.make_scan_trainer(
            training.make_ensemble(["nwj"], "separable"), lambda k, s: None, -1
        ),
        ValueError,
        "`num_steps`",
    ),
    "check_batch_size of 0": (
        lambda: parallel.check_batch_size(0, parallel.data_mesh()),
        ValueError,
        "`batch_size` must be",  # (the library's argument; the experiments name their config's)
    ),
    "data_mesh of no devices": (lambda: parallel.data_mesh([]), ValueError, "`devices`"),
    "InfoMaxVAE of a 2-d image_shape": (
        lambda: vae.InfoMaxVAE(image_shape=(8, 8)),
        ValueError,
        "`image_shape`",
    ),
    # a tuple for a count passed the integer check (each entry was checked) and failed later:
    # Flax's "Shapes must be 1D sequences", "can't multiply sequence by non-int", or nothing
    "DIMObjective of a tuple critic width": (
        lambda: dim.DIMObjective(encoders.get_encoder("mlp"), critic_hidden=(16, 16)),
        ValueError,
        "`critic_hidden` must be an integer",
    ),
    "get_task of a tuple dim": (
        lambda: tasks.get_task("gaussian", dim=(5,)),
        ValueError,
        "`dim` must be an integer",
    ),
    "correlated_gaussian of a tuple dim": (
        lambda: tasks.correlated_gaussian(_KEY, 1.0, 3, (2,)),
        ValueError,
        "`dim` must be an integer",
    ),
    "IBModel of a tuple latent size": (
        lambda: ib.IBModel(latent_dim=(2,)),
        ValueError,
        "`latent_dim` must be an integer",
    ),
    "ResNetEncoder of a zero in its blocks per stage": (
        lambda: encoders.ResNetEncoder(widths=(8, 8), blocks_per_stage=(1, 0)),
        ValueError,
        "`blocks_per_stage` must hold integers",
    ),
}


# An integer seed where a PRNG key goes failed in `jax.random` as "invalid PRNG key data. Got 0".
_IMAGES = jnp.zeros((2, 8, 8, 1))
_SEED_FOR_KEY = {
    "augment_views": lambda: amdim.augment_views(0, _IMAGES),
    "AMDIMObjective.init": lambda: amdim.AMDIMObjective(amdim.MultiScaleEncoder()).init(0, _IMAGES),
    "random_crop": lambda: data.random_crop(0, _IMAGE, padding=1),
    "random_resized_crop": lambda: data.random_resized_crop(0, _IMAGE),
    "color_jitter": lambda: data.color_jitter(
        0, _IMAGE, brightness=0.1, contrast=0.1, saturation=0.1
    ),
    "random_grayscale": lambda: data.random_grayscale(0, _IMAGE, p=0.5),
    "random_flip": lambda: data.random_flip(0, _IMAGE),
    "sample_prior": lambda: dim.sample_prior(0, (2, 3), "gaussian"),
    "DIMObjective.init": lambda: dim.DIMObjective(encoders.get_encoder("mlp")).init(0, _IMAGES),
    "add_noise": lambda: halves.add_noise(0, _Z, 0.1),
    "HalvesModel.init": lambda: halves.HalvesModel(
        halves.get_half_encoder("mlp"), training.make_ensemble(["infonce"], "bilinear")
    ).init(0, _IMAGES[:, :4], _IMAGES[:, 4:]),
    "IBModel.init": lambda: ib.IBModel().init(0, _IMAGES),
    "IBModel.sample": lambda: ib.IBModel().sample({}, _IMAGES, 0, 2),
    "BoundEnsemble.init": lambda: training.make_ensemble(["nwj"], "separable").init(0, _Z, _Z),
    "InfoMaxVAE.init": lambda: vae.InfoMaxVAE(image_shape=(8, 8, 1)).init(0, _IMAGES),
    "InfoMaxVAE.generate": lambda: vae.InfoMaxVAE(image_shape=(8, 8, 1)).generate({}, 0, 2),
}


@pytest.mark.parametrize("name", list(_SEED_FOR_KEY))
def test_a_seed_for_a_key_is_refused_naming_the_argument(name):
    with pytest.raises(TypeError, match=r"`(rng|key)` must be one PRNG key"):
        _SEED_FOR_KEY[name]()


def test_every_kind_of_key_is_taken():
    """Typed keys, raw threefry keys ([2]), as numpy arrays too, and batched keys inside a
    vmap; raw rbg keys ([4], for `jax_default_prng_impl` "rbg") pass the check."""
    for key in (
        jax.random.key(0),
        jax.random.PRNGKey(0),
        np.asarray(jax.random.PRNGKey(0)),
        jax.random.key(0, impl="rbg"),
    ):
        assert data.random_flip(key, _IMAGE).shape == _IMAGE.shape
    from mi_jax import _checks

    _checks.check_key(jax.random.PRNGKey(0, impl="rbg"))
    keys = jax.random.split(jax.random.key(1), 3)
    assert jax.vmap(data.random_flip, in_axes=(0, None))(keys, _IMAGE).shape == (3, *_IMAGE.shape)


@pytest.mark.parametrize("name", list(_BAD_CALLS))
def test_bad_input_is_refused_naming_the_argument(name):
    call, error, message = _BAD_CALLS[name]
    with pytest.raises(error, match=message):
        call()


def test_an_infinite_clip_is_no_clip_and_trains():
    """``c tanh(s / c)`` tends to ``s`` as ``c -> inf`` (as SMILE's clip=inf is DV); it read NaN."""
    s = jnp.array([-1e4, -1.0, 0.0, 3.0])
    np.testing.assert_array_equal(critics.soft_clip(s, float("inf")), s)
    ensemble = training.make_ensemble(["nwj"], "separable", {"hidden": (4,)}, clip=float("inf"))
    x, y = jax.random.normal(_KEY, (2, 8, 3))
    state = training.create_train_state(ensemble, optax.adam(1e-3), _KEY, x, y)
    _, metrics = jax.jit(training.make_train_step(ensemble))(state, (x, y), _KEY)
    assert np.all(np.isfinite(metrics["mi"]))


def test_valid_neighbours_of_the_refused_values_still_pass():
    # a traced ridge (a sweep of eta under jit) as a traced bandwidth always was
    eta_jit = jax.jit(lambda eta: score.stein_score(_Z, eta=eta))(0.1)
    np.testing.assert_allclose(eta_jit, score.stein_score(_Z, eta=0.1), atol=1e-4)  # float32
    # betas in an array, a JAX dim that is a valid integer, several MIs through vmap
    assert ib.check_betas(jnp.array([1e-3, 0.0])) == (pytest.approx(1e-3), 0.0)
    assert float(tasks.mi_from_rho(0.0, jnp.array(3))) == 0.0
    sample = functools.partial(tasks.correlated_gaussian, _KEY, batch=4, dim=2)
    assert jax.vmap(sample)(jnp.array([1.0, 2.0]))[0].shape == (2, 4, 2)
    # 0-d arrays as hyperparameters, as plain numbers
    s = jnp.array([0.5, 30.0])
    np.testing.assert_array_equal(critics.soft_clip(s, jnp.asarray(5.0)), critics.soft_clip(s, 5))
    assert bounds.log_mean_exp_offdiag(jnp.eye(3), jnp.asarray(1)).shape == (3,)
    assert halves.add_noise(_KEY, _Z, jnp.asarray(0.1)).shape == _Z.shape
    assert data.random_grayscale(_KEY, jnp.ones((2, 2, 3)), p=jnp.asarray(0.5)).shape == (2, 2, 3)
    # ... everywhere (before: these were refused as "not a number" where the above passed)
    assert float(score.median_bandwidth(_Z, scale=jnp.asarray(2.0))) == pytest.approx(
        2 * float(score.median_bandwidth(_Z)), rel=1e-6
    )
    # (df as a float on the host: the correction in float64, the sampler traceable; a review
    # found the first version's float32 correction and a sampler failing under jit)
    task = tasks.get_task("student_t", dim=2, df=jnp.asarray(200.0))
    assert task.min_mi == tasks.get_task("student_t", dim=2, df=200.0).min_mi
    assert jax.jit(lambda k: task.sample(k, 1.0, 4)[0])(_KEY).shape == (4, 2)
    # one count of blocks for every stage, or one per stage
    for blocks in (2, (1, 2)):
        encoders.ResNetEncoder(widths=(8, 8), blocks_per_stage=blocks)
    # the kernel's public form equals the estimators' (a 1-d pair at distance 2: e^-2)
    k = score.rbf_kernel(jnp.array([[0.0]]), jnp.array([[2.0]]), 1.0)
    np.testing.assert_allclose(k, [[np.exp(-2.0)]], rtol=1e-6)


@pytest.mark.parametrize(
    "get, name, kind",
    [
        (lambda: bounds.get_bound("smile", clp=1.0), "clp", "bound 'smile'"),
        (lambda: bounds.get_bound("mine", decy=0.1), "decy", "bound 'mine'"),
        (lambda: critics.get_critic("separable", hiden=(4,)), "hiden", "critic 'separable'"),
        (lambda: tasks.get_task("student_t", dim=2, dff=3.0), "dff", "task 'student_t'"),
        (lambda: score.get_score_estimator("ssge", thresh=0.9), "thresh", "score estimator 'ssge'"),
    ],
)
def test_every_registry_names_unknown_hyperparameters_and_the_known_ones(get, name, kind):
    # Before: three formats ("bad hyperparameters [...] for 'ssge': got an unexpected keyword
    # argument", without the known names; "... for task ...: ...; known: [...]").
    with pytest.raises(
        TypeError, match=rf"^unknown hyperparameters \['{name}'\] for {kind}; known: \["
    ):
        get()


def test_a_score_estimator_missing_a_required_hyperparameter_is_named_at_once(monkeypatch):
    # The first version of the shared name check let it through, to fail inside training.
    def needs_width(samples, *, width):
        return samples / width

    monkeypatch.setattr(score, "_REGISTRY", dict(score._REGISTRY))  # noqa: SLF001
    score.register_score_estimator("needs_width", needs_width)
    with pytest.raises(TypeError, match="score estimator 'needs_width': missing .* 'width'"):
        score.get_score_estimator("needs_width")
    with pytest.raises(TypeError, match=r"unknown hyperparameters \['points'\] .* 'ssge'"):
        score.get_score_estimator("ssge", points=_Z)  # an argument of the call, not one


def test_an_integer_beyond_floats_range_is_refused_by_name():
    # Before: OverflowError ("int too large to convert to float"), naming nothing.
    with pytest.raises(ValueError, match="`brightness`"):
        data.color_jitter(_KEY, jnp.ones((2, 2, 3)), brightness=10**400, contrast=0, saturation=0)
    with pytest.raises(ValueError, match="`scale`"):
        score.median_bandwidth(_Z, scale=10**400)


def test_a_bound_function_wrapped_with_functools_wraps_has_its_names_checked():
    def plain(scores, t=1.0):
        return jnp.mean(jnp.diag(scores)) * t

    @functools.wraps(plain)
    def wrapped(*args, **kwargs):
        return plain(*args, **kwargs)

    with pytest.raises(TypeError, match=r"unknown hyperparameters \['tau'\] for bound 'w'; known"):
        bounds.make_bound("w", wrapped, tau=1.0)
    assert bounds.make_bound("w", wrapped, t=2.0).name == "w"
