"""Critics of `mi_jax.critics`: shapes, references written from the parameters, and the
linear-memory (chunked) concat critic against the dense one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mi_jax import bounds, critics

_HIDDEN = (16, 12)


def _data(batch=8, dx=3, dy=4, seed=0):
    kx, ky = jax.random.split(jax.random.key(seed))
    return jax.random.normal(kx, (batch, dx)), jax.random.normal(ky, (batch, dy))


def _init_and_apply(critic, x, y):
    params = critic.init(jax.random.key(1), x, y)
    return params, jax.jit(critic.apply)(params, x, y)


def _dense(p, h):
    """``h @ kernel + bias`` for ``h`` of any rank (explicit broadcast: rank promotion raises)."""
    bias = p["bias"].reshape((1,) * (h.ndim - 1) + p["bias"].shape)
    return h @ p["kernel"] + bias


# --------------------------------------------------------------------------------------------
# Every critic.

_HPARAMS = {
    "separable": {"hidden": _HIDDEN, "embed_dim": 5},
    "bilinear": {},
    "inner_product": {"temperature": 0.5},
    "concat": {"hidden": _HIDDEN},
}


def test_registry_lists_all_critics():
    assert set(_HPARAMS) <= set(critics.available_critics())


# Every registered critic, a fork's too (at its defaults where `_HPARAMS` has no entry).
@pytest.mark.parametrize("name", critics.available_critics())
def test_every_critic_returns_float32_batch_by_batch_scores_under_jit(name):
    dy = 3 if name == "inner_product" else 4
    x, y = _data(batch=8, dx=3, dy=dy)
    critic = critics.get_critic(name, **_HPARAMS.get(name, {}))
    params, scores = _init_and_apply(critic, x, y)
    assert scores.shape == (8, 8)
    assert scores.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(scores)))
    # scores[i, j] = f(x_i, y_j): permuting the y's permutes the columns.
    perm = np.array([3, 0, 7, 1, 6, 2, 5, 4])
    np.testing.assert_allclose(
        jax.jit(critic.apply)(params, x, y[perm]), scores[:, perm], rtol=1e-5, atol=1e-5
    )
    # And it is not a constant: different pairs get different scores.
    assert float(jnp.std(scores)) > 1e-3


def _mlp_reference(p, h, n_layers, activation=jax.nn.relu):
    for k in range(n_layers - 1):
        h = activation(_dense(p[f"Dense_{k}"], h))
    return _dense(p[f"Dense_{n_layers - 1}"], h)


def test_separable_equals_g_of_x_times_h_of_y():
    x, y = _data(batch=8, dx=3, dy=4)
    params, scores = _init_and_apply(
        critics.get_critic("separable", hidden=_HIDDEN, embed_dim=5), x, y
    )
    p = params["params"]
    gx = _mlp_reference(p["g"], x, len(_HIDDEN) + 1)  # [B, 5]
    hy = _mlp_reference(p["h"], y, len(_HIDDEN) + 1)
    assert gx.shape == (8, 5)
    np.testing.assert_allclose(scores, gx @ hy.T, rtol=1e-5, atol=1e-5)


def test_separable_bilinear_term_starts_at_zero_and_learns():
    x, y = _data(batch=8, dx=3, dy=4)
    plain = critics.get_critic("separable", hidden=_HIDDEN, embed_dim=5)
    with_w = critics.get_critic("separable", hidden=_HIDDEN, embed_dim=5, bilinear=True)
    params, scores = _init_and_apply(with_w, x, y)
    np.testing.assert_array_equal(params["params"]["W"], np.zeros((3, 4)))
    plain_params = {"params": {k: v for k, v in params["params"].items() if k != "W"}}
    np.testing.assert_allclose(scores, plain.apply(plain_params, x, y), rtol=1e-5, atol=1e-7)
    # x^T W y is added: with W set, the scores move by exactly that ...
    w = jax.random.normal(jax.random.key(3), (3, 4))
    moved = with_w.apply({"params": {**params["params"], "W": w}}, x, y)
    np.testing.assert_allclose(moved - scores, x @ w @ y.T, rtol=1e-4, atol=1e-5)
    # ... and W gets a gradient at its zero start (no saddle, unlike a product of two
    # zero-initialized maps).
    grad = jax.jit(jax.grad(lambda p: bounds.infonce(with_w.apply(p, x, y))))(params)
    assert np.abs(grad["params"]["W"]).max() > 1e-3


def test_bilinear_and_inner_product_from_parameters():
    x, y = _data(batch=8, dx=3, dy=4)
    params, scores = _init_and_apply(critics.get_critic("bilinear"), x, y)
    w = params["params"]["W"]
    assert w.shape == (3, 4)
    np.testing.assert_allclose(scores, x @ w @ y.T, rtol=1e-5, atol=1e-5)
    x, y = _data(batch=8, dx=3, dy=3)
    params, scores = _init_and_apply(critics.get_critic("inner_product", temperature=0.5), x, y)
    assert jax.tree.leaves(params) == []
    np.testing.assert_allclose(scores, x @ y.T / 0.5, rtol=1e-5, atol=1e-5)


def _concat_reference(params, x, y, n_hidden, activation=jax.nn.relu):
    """The concat critic written naively: for every pair build [x_i, y_j] and run the MLP."""
    p = params["params"]
    b = x.shape[0]
    pairs = jnp.concatenate(
        [
            jnp.broadcast_to(x[:, None, :], (b, b, x.shape[1])),
            jnp.broadcast_to(y[None, :, :], (b, b, y.shape[1])),
        ],
        axis=-1,
    )  # [B, B, dx + dy]
    kernel = jnp.concatenate([p["first_x"]["kernel"], p["first_y"]["kernel"]], axis=0)
    h = activation(pairs @ kernel + p["first_y"]["bias"][None, None, :])
    head = p["rows"]["head"]
    for k in range(n_hidden - 1):
        h = activation(_dense(head[f"dense_{k}"], h))
    return _dense(head["out"], h)[..., 0]


@pytest.mark.parametrize("hidden", [(16,), (16, 12, 8)])
def test_concat_equals_naive_pairwise_mlp(hidden):
    x, y = _data(batch=8, dx=3, dy=4)
    critic = critics.get_critic("concat", hidden=hidden)
    params, scores = _init_and_apply(critic, x, y)
    assert "bias" not in params["params"]["first_x"]
    np.testing.assert_allclose(
        scores, _concat_reference(params, x, y, len(hidden)), rtol=1e-5, atol=1e-5
    )


def test_concat_activation_is_used():
    x, y = _data(batch=6, dx=3, dy=4)
    critic = critics.get_critic("concat", hidden=_HIDDEN, activation="tanh")
    params, scores = _init_and_apply(critic, x, y)
    np.testing.assert_allclose(
        scores, _concat_reference(params, x, y, 2, jnp.tanh), rtol=1e-5, atol=1e-5
    )
    assert not np.allclose(scores, _concat_reference(params, x, y, 2), atol=1e-4)


# --------------------------------------------------------------------------------------------
# Chunked (linear-memory) concat critic.


def _concat_loss(critic):
    # NWJ rather than InfoNCE: InfoNCE is invariant to shifting a column of scores, so its
    # gradient w.r.t. the output bias is exactly zero and would be compared at rounding level.
    def loss(params, x, y):
        return bounds.nwj(critic.apply(params, x, y))

    return loss


def test_chunked_concat_equals_dense_in_value_and_gradient():
    x, y = _data(batch=64, dx=5, dy=3, seed=3)
    dense = critics.get_critic("concat", hidden=_HIDDEN)
    params = jax.jit(dense.init)(jax.random.key(2), x, y)
    dense_value, dense_grad = jax.jit(jax.value_and_grad(_concat_loss(dense)))(params, x, y)
    dense_scores = jax.jit(dense.apply)(params, x, y)
    for chunk in (16, 8):
        chunked = critics.get_critic("concat", hidden=_HIDDEN, chunk_size=chunk)
        # Same parameter tree as the dense critic.
        chunked_params = jax.eval_shape(chunked.init, jax.random.key(2), x, y)
        assert jax.tree.structure(chunked_params) == jax.tree.structure(params)
        for a, b in zip(jax.tree.leaves(chunked_params), jax.tree.leaves(params), strict=True):
            assert a.shape == b.shape
        np.testing.assert_allclose(
            jax.jit(chunked.apply)(params, x, y), dense_scores, rtol=1e-5, atol=1e-5
        )
        value, grad = jax.jit(jax.value_and_grad(_concat_loss(chunked)))(params, x, y)
        # Same arithmetic in a different association order: float32 rounding only. Gradients
        # sum over B^2 = 4096 pairs, so the absolute tolerance is scaled by each leaf's size.
        np.testing.assert_allclose(value, dense_value, rtol=1e-5, atol=1e-5)
        for (path, g), gd in zip(
            jax.tree_util.tree_leaves_with_path(grad), jax.tree.leaves(dense_grad), strict=True
        ):
            scale = float(jnp.max(jnp.abs(gd)))
            assert scale > 0, path
            np.testing.assert_allclose(g, gd, rtol=1e-5, atol=1e-5 * scale, err_msg=str(path))


def test_a_chunk_that_does_not_divide_the_batch_gives_the_dense_scores_and_gradients():
    # Before: a ValueError, so `estimate_mi` with a chunked concat critic failed on most
    # held-out split sizes (20 % of N, which the user does not choose).
    x, y = _data(batch=12, dx=3, dy=4)
    dense = critics.get_critic("concat", hidden=_HIDDEN)
    params = jax.jit(dense.init)(jax.random.key(0), x, y)
    critic = critics.get_critic("concat", hidden=_HIDDEN, chunk_size=5)
    np.testing.assert_allclose(
        jax.jit(critic.apply)(params, x, y), jax.jit(dense.apply)(params, x, y), rtol=1e-5,
        atol=1e-5,
    )  # fmt: skip
    grad, want = (jax.jit(jax.grad(_concat_loss(c)))(params, x, y) for c in (critic, dense))
    for g, gd in zip(jax.tree.leaves(grad), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, gd, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(gd))))
    for chunk in (0, -2):
        with pytest.raises(ValueError, match="`chunk_size` must be a positive integer"):
            critics.get_critic("concat", hidden=_HIDDEN, chunk_size=chunk).apply(params, x, y)


def test_separable_bilinear_must_be_a_bool():
    # "False" from a config line built the bilinear term it meant to turn off.
    with pytest.raises(ValueError, match="SeparableCritic: `bilinear` must be True or False"):
        critics.get_critic("separable", hidden=(4,), embed_dim=2, bilinear="False")


def test_inner_product_temperature_must_be_positive():
    for temperature in (0.0, -1.0, float("inf"), "1.0"):  # inf: every score 0
        with pytest.raises(ValueError, match="`temperature` must be a positive finite number"):
            critics.get_critic("inner_product", temperature=temperature)


def test_chunked_concat_memory_is_linear_in_batch():
    batch, dim, hidden, chunk = 1024, 20, (256, 256), 64
    x = jax.ShapeDtypeStruct((batch, dim), jnp.float32)
    y = jax.ShapeDtypeStruct((batch, dim), jnp.float32)
    # Parameters do not depend on the batch: initialize on a small one.
    xs, ys = _data(batch=4, dx=dim, dy=dim)
    params = critics.get_critic("concat", hidden=hidden).init(jax.random.key(0), xs, ys)

    def temp_bytes(critic):
        compiled = jax.jit(jax.grad(_concat_loss(critic))).lower(params, x, y).compile()
        analysis = compiled.memory_analysis()
        if analysis is None or getattr(analysis, "temp_size_in_bytes", None) is None:
            pytest.skip("this backend reports no memory analysis")
        return analysis.temp_size_in_bytes

    chunked = temp_bytes(critics.get_critic("concat", hidden=hidden, chunk_size=chunk))
    # One [B, B, 256] float32 activation alone is 1 GiB; a block of rows is 64 MiB.
    assert chunked < 600e6, chunked
    dense = temp_bytes(critics.get_critic("concat", hidden=hidden))  # compiled, never run
    assert dense > 1024**3 > chunked, (dense, chunked)


# --------------------------------------------------------------------------------------------
# Scalar networks.


def test_pair_mlp_and_baseline_mlp_return_one_value_per_sample():
    x, y = _data(batch=8, dx=3, dy=4)
    pair = critics.PairMLP(hidden=(16,))
    params = pair.init(jax.random.key(0), x, y)
    u = jax.jit(pair.apply)(params, x, y)
    assert u.shape == (8,) and u.dtype == jnp.float32
    # u(x_i, y_i) is computed on the joint pairs only: the i-th value depends only on row i.
    x2 = x.at[0].set(x[0] + 1.0)
    u2 = jax.jit(pair.apply)(params, x2, y)
    np.testing.assert_allclose(u2[1:], u[1:], rtol=1e-6)
    assert not np.isclose(u2[0], u[0])
    # ... and reads y_i as well (FLO's optimal u is a function of both: a u of x alone left
    # FLO 0.35 nats low at 2 and 4 nats, a mutation check).
    u3 = jax.jit(pair.apply)(params, x, y.at[0].add(1.0))
    np.testing.assert_allclose(u3[1:], u[1:], rtol=1e-6)
    assert abs(float(u3[0] - u[0])) > 1e-3
    baseline = critics.BaselineMLP(hidden=(16,))
    bparams = baseline.init(jax.random.key(0), y)
    a = jax.jit(baseline.apply)(bparams, y)
    assert a.shape == (8,) and a.dtype == jnp.float32
    np.testing.assert_allclose(a[2], baseline.apply(bparams, y[2:3])[0], rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize("name", list(_HPARAMS))
def test_bad_inputs_raise_naming_the_argument(name):
    critic = critics.get_critic(name, **_HPARAMS[name])
    x, y = _data(batch=8, dx=3, dy=3)
    params = critic.init(jax.random.key(0), x, y)
    with pytest.raises(ValueError, match="batch size"):
        critic.apply(params, x, y[:6])
    with pytest.raises(ValueError, match="`x`"):
        critic.apply(params, x[:, 0], y)
    with pytest.raises(ValueError, match="`y`"):
        critic.apply(params, x, y[None])
    with pytest.raises(TypeError, match="`x`"):
        critic.apply(params, x.astype(jnp.int32), y)
    with pytest.raises(TypeError, match="`y`"):
        jax.jit(critic.apply)(params, x, y.astype(jnp.int32))


def test_inner_product_needs_equal_widths():
    x, y = _data(batch=4, dx=3, dy=4)
    with pytest.raises(ValueError, match="equal width"):
        critics.get_critic("inner_product").init(jax.random.key(0), x, y)


def test_unknown_critic_name_suggests_the_closest():
    with pytest.raises(KeyError) as info:
        critics.get_critic("concatt")
    message = str(info.value)
    assert "'concatt'" in message and "Did you mean 'concat'" in message


def test_unknown_hparam_raises_type_error_naming_it():
    with pytest.raises(TypeError, match="hiden"):
        critics.get_critic("concat", hiden=(8,))
    with pytest.raises(TypeError, match="chunk_size"):
        critics.get_critic("separable", chunk_size=8)


def test_unknown_activation_raises():
    for name in ("separable", "concat"):
        with pytest.raises(KeyError) as info:
            critics.get_critic(name, hidden=(8,), activation="rleu")
        assert "'rleu'" in str(info.value) and "'relu'" in str(info.value)


def test_critics_check_their_settings_when_built():
    """As the encoders do: a bad width, an unknown name or a bad number fails at
    `get_critic`, not at the first ``init`` (a model holding the critic was built and its
    run started before)."""
    cases = [
        ("separable", dict(hidden=(0,)), ValueError, "SeparableCritic: `hidden`"),
        ("separable", dict(embed_dim=(4,)), ValueError, "`embed_dim` must be an integer"),
        ("concat", dict(hidden=64), ValueError, "ConcatCritic: `hidden` must be a sequence"),
        ("concat", dict(hidden=()), ValueError, "at least one hidden layer"),
        ("concat", dict(chunk_size=0), ValueError, "`chunk_size`"),
        ("separable", dict(compute_dtype="bfloat61"), KeyError, "compute_dtype"),
        ("concat", dict(kernel_init="glorot_unifrom"), KeyError, "kernel_init"),
        ("bilinear", dict(kernel_init="glorot_unifrom"), KeyError, "kernel_init"),
        ("inner_product", dict(temperature=0.0), ValueError, "`temperature`"),
    ]
    for name, hparams, error, match in cases:
        with pytest.raises(error, match=match):
            critics.get_critic(name, **hparams)
    with pytest.raises(ValueError, match="MLP: `out_dim`"):
        critics.MLP(hidden=(8,), out_dim=0)


def test_concat_needs_a_hidden_layer():
    x, y = _data(batch=4, dx=3, dy=4)
    with pytest.raises(ValueError, match="hidden"):
        critics.get_critic("concat", hidden=()).init(jax.random.key(0), x, y)


def test_widths_below_one_are_named():
    # Before: a ZeroDivisionError from the weight initializer, or a negative-index TypeError.
    x, y = _data(batch=4, dx=3, dy=4)
    cases = [
        ("separable", dict(hidden=(8,), embed_dim=0), "SeparableCritic: `embed_dim`"),
        ("separable", dict(hidden=(0,)), "SeparableCritic: `hidden`"),
        ("concat", dict(hidden=(0,)), "ConcatCritic: `hidden`"),
        ("concat", dict(hidden=(8, -1)), "ConcatCritic: `hidden`"),
        # A bare width (was "'int' object is not iterable" from inside Flax).
        ("separable", dict(hidden=64), r"SeparableCritic: `hidden` must be a sequence"),
        ("concat", dict(hidden=64), r"ConcatCritic: `hidden` must be a sequence"),
    ]
    for name, hparams, match in cases:
        with pytest.raises(ValueError, match=match):
            critics.get_critic(name, **hparams).init(jax.random.key(0), x, y)
    with pytest.raises(ValueError, match="MLP: `hidden`"):
        critics.PairMLP(hidden=(0,)).init(jax.random.key(0), x, y)
    with pytest.raises(ValueError, match="MLP: `out_dim`"):
        critics.MLP(hidden=(8,), out_dim=0).init(jax.random.key(0), x)


def test_baseline_checks_its_input():
    x, y = _data(batch=4, dx=3, dy=4)
    baseline = critics.BaselineMLP(hidden=(8,))
    params = baseline.init(jax.random.key(0), y)
    with pytest.raises(ValueError, match="`y` must have shape"):
        baseline.apply(params, y[:, 0])
    with pytest.raises(TypeError, match="`y`"):
        baseline.apply(params, y.astype(jnp.int32))


# --------------------------------------------------------------------------------------------
# Mixed precision (compute_dtype="bfloat16").


def _round_bf16(a):
    return a.astype(jnp.bfloat16).astype(jnp.float32)


def test_bf16_matmul_value_and_gradients_against_a_reference():
    """Forward: bf16-rounded operands, f32 accumulation. Backward: g @ w.T on bf16-rounded
    operands, x.T @ g in float32 (a reference written here from those definitions)."""
    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (2, 5, 7))  # two batch axes, as in the concat critic
    w = jax.random.normal(kw, (7, 3))
    g = jax.random.normal(kg, (2, 5, 3))
    hi = jax.lax.Precision.HIGHEST
    y, vjp = jax.vjp(jax.jit(critics.bf16_matmul), x, w)
    dx, dw = vjp(g)
    np.testing.assert_allclose(
        y, jnp.matmul(_round_bf16(x), _round_bf16(w), precision=hi), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        dx, jnp.matmul(_round_bf16(g), _round_bf16(w).T, precision=hi), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        dw, jnp.einsum("abi,abo->io", x, g, precision=hi), rtol=1e-5, atol=1e-5
    )
    # And it is not the float32 product: bf16 rounding is visible at this size.
    assert float(jnp.max(jnp.abs(y - jnp.matmul(x, w, precision=hi)))) > 1e-4
    # Float64 operands (a Dense layer under x64 promotes both) get float64 gradients: the
    # input gradient came back float32.
    with jax.enable_x64(True):
        x64, w64 = (jnp.asarray(np.asarray(a), jnp.float64) for a in (x, w))
        grads = jax.grad(lambda a, b: jnp.sum(critics.bf16_matmul(a, b)), (0, 1))(x64, w64)
    assert (grads[0].dtype, grads[1].dtype) == (jnp.float64, jnp.float64)


@pytest.mark.parametrize("name", ["separable", "concat"])
def test_bf16_critic_has_the_same_parameters_and_close_scores(name):
    x, y = _data(batch=16, dx=6, dy=6)
    hparams = dict(_HPARAMS[name], hidden=(64, 64))
    c32 = critics.get_critic(name, **hparams)
    c16 = critics.get_critic(name, compute_dtype="bfloat16", **hparams)
    params = jax.jit(c32.init)(jax.random.key(1), x, y)
    assert jax.tree.structure(params) == jax.tree.structure(
        jax.eval_shape(c16.init, jax.random.key(1), x, y)
    )
    s32, s16 = jax.jit(c32.apply)(params, x, y), jax.jit(c16.apply)(params, x, y)
    assert s16.dtype == jnp.float32
    # bf16 keeps 8 significant bits; through three layers scores agree to a few % of their spread.
    np.testing.assert_allclose(s16, s32, atol=0.05 * float(jnp.std(s32)))

    def loss(p, critic):
        return bounds.infonce(critic.apply(p, x, y))

    g32, g16 = (jax.jit(jax.grad(loss), static_argnums=1)(params, c) for c in (c32, c16))
    # The whole gradient points the same way (single leaves can be ~0 in exact arithmetic,
    # e.g. an output bias InfoNCE is invariant to, so are compared as part of the whole).
    a32, a16 = (jnp.concatenate([v.ravel() for v in jax.tree.leaves(g)]) for g in (g32, g16))
    assert float(jnp.vdot(a32, a16) / (jnp.linalg.norm(a32) * jnp.linalg.norm(a16))) > 0.995


def test_unknown_compute_dtype_is_rejected():
    x, y = _data()
    with pytest.raises(KeyError, match="compute_dtype.*bfloat16"):
        critics.get_critic("separable", compute_dtype="bfloat61").init(jax.random.key(0), x, y)


# --------------------------------------------------------------------------------------------
# Weight initializers.


@pytest.mark.parametrize("name", ["separable", "concat"])
def test_kernel_init_sets_every_kernels_variance(name):
    """Glorot uniform: Var = 2 / (fan_in + fan_out); LeCun normal: Var = 1 / fan_in (Flax's
    truncated normal, rescaled to that variance); biases start at zero either way."""
    x, y = jax.random.normal(jax.random.key(0), (2, 4, 64))
    expected = {
        "glorot_uniform": lambda fi, fo: 2.0 / (fi + fo),
        "lecun_normal": lambda fi, fo: 1.0 / fi,
    }
    for init_name, variance in expected.items():
        critic = critics.get_critic(name, hidden=(128, 96), kernel_init=init_name)
        params = critic.init(jax.random.key(1), x, y)["params"]
        kernels = [
            (path, leaf)
            for path, leaf in jax.tree_util.tree_leaves_with_path(params)
            if "kernel" in jax.tree_util.keystr(path)
        ]
        assert len(kernels) == (6 if name == "separable" else 4)
        for path, kernel in kernels:
            fan_in, fan_out = kernel.shape
            ratio = float(jnp.var(kernel)) / variance(fan_in, fan_out)
            # >= 96 x 32 entries: the sample variance is within ~3 % (2 sigma of ~1.5 %)
            # for the larger kernels; the 96 x 1 output of the concat head is looser.
            tolerance = 0.35 if kernel.size < 200 else 0.06
            assert abs(ratio - 1.0) < tolerance, (init_name, jax.tree_util.keystr(path), ratio)
        biases = [leaf for leaf in jax.tree.leaves(params) if leaf.ndim == 1]
        assert all(float(jnp.abs(b).max()) == 0.0 for b in biases)


def test_bilinear_kernel_init_sets_w_variance():
    """``W`` [16, 64] (fan-in 16, fan-out 64: Glorot's variance 1/40 is not LeCun's 1/16): its
    sample variance within 12 % (about 3 sigma for 1024 normal entries), the uniform's
    entries within Glorot's limit sqrt(6 / 80)."""
    x = jax.random.normal(jax.random.key(0), (4, 16))
    y = jax.random.normal(jax.random.key(2), (4, 64))
    for init_name, variance in (("glorot_uniform", 2.0 / 80), ("lecun_normal", 1.0 / 16)):
        critic = critics.get_critic("bilinear", kernel_init=init_name)
        w = critic.init(jax.random.key(1), x, y)["params"]["W"]
        assert w.shape == (16, 64)
        assert abs(float(jnp.var(w)) / variance - 1.0) < 0.12, init_name
        if init_name == "glorot_uniform":
            assert float(jnp.abs(w).max()) <= np.sqrt(6.0 / 80)
    # The default is unchanged: Flax's LeCun normal.
    default = critics.get_critic("bilinear").init(jax.random.key(1), x, y)["params"]["W"]
    np.testing.assert_array_equal(default, w)
    with pytest.raises(KeyError, match="kernel_init.*glorot_uniform"):
        critics.get_critic("bilinear", kernel_init="glorot_unifrom").init(jax.random.key(0), x, y)


def test_ensemble_extra_networks_take_the_critics_kernel_init():
    from mi_jax import training

    ensemble = training.make_ensemble(
        ["flo"], "separable", {"hidden": (16,), "embed_dim": 4, "kernel_init": "glorot_uniform"}
    )
    assert ensemble.aux_kernel_init == "glorot_uniform"
    assert training.make_ensemble(["flo"], "separable").aux_kernel_init == "lecun_normal"


def test_unknown_kernel_init_is_rejected():
    x, y = _data()
    with pytest.raises(KeyError, match="kernel_init.*glorot_uniform"):
        critics.get_critic("separable", kernel_init="glorot_unifrom").init(jax.random.key(0), x, y)


def test_soft_clip_bounds_the_scores_and_rejects_a_negative_clip():
    s = jnp.array([-1e4, -1.0, 0.0, 0.5, 1e4])
    want = 10.0 * np.tanh(np.asarray(s, np.float64) / 10.0)
    np.testing.assert_allclose(critics.soft_clip(s, 10.0), want, rtol=1e-6)  # float32
    np.testing.assert_array_equal(critics.soft_clip(s, None), s)
    with pytest.raises(ValueError, match="`clip` must be a positive number"):
        critics.soft_clip(s, -1.0)


def test_chunked_concat_critic_gradient_memory_grows_linearly_in_the_batch():
    # Before: the first layer's y part was the scan's carry, so the backward pass kept a copy
    # per block: the gradient's working memory grew like batch^2 / chunk (167 MB at batch 1024
    # in blocks of 8, 2.25 GB at 4096), not linearly as documented. Compiled only.
    critic = critics.ConcatCritic(hidden=(256, 256), chunk_size=8)

    def working_memory(batch):
        x = jax.ShapeDtypeStruct((batch, 20), jnp.float32)
        params = jax.eval_shape(critic.init, jax.random.key(0), x, x)
        loss = jax.grad(lambda p, x, y: bounds.infonce(critic.apply(p, x, y)))
        compiled = jax.jit(loss).lower(params, x, x).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    small, large = working_memory(1024), working_memory(2048)
    assert large < 2.6 * small, (small, large)  # linear: 2x (measured 2.2x); was 4x


def test_half_precision_inputs_give_float32_scores_without_overflow():
    # Before: SeparableCritic's bilinear term x^T W y ran in float16 (inf past 65504: 12 of 256
    # scores at features of scale 50, DV inf, InfoNCE NaN), and InnerProductCritic returned
    # the inputs' dtype where every other critic returns float32.
    rng = np.random.default_rng(0)
    x = 50.0 * rng.normal(size=(16, 64))
    y = x + 5.0 * rng.normal(size=(16, 64))
    half = [jnp.asarray(a, jnp.float16) for a in (x, y)]
    ref = [jnp.asarray(a, jnp.float32) for a in half]  # the same values in float32
    separable = critics.SeparableCritic(hidden=(8,), embed_dim=4, bilinear=True)
    params = separable.init(jax.random.key(0), *ref)
    params["params"]["W"] = 0.5 * jnp.eye(64)
    scores = separable.apply(params, *half)
    assert scores.dtype == jnp.float32 and np.all(np.isfinite(scores))
    np.testing.assert_allclose(scores, separable.apply(params, *ref), rtol=1e-5)
    assert np.max(np.abs(scores)) > 65504  # (past float16's range)
    inner = critics.InnerProductCritic(temperature=0.05)
    bf16 = [jnp.asarray(a / 400.0, jnp.bfloat16) for a in (x, y)]
    out = inner.apply({}, *bf16)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, inner.apply({}, *(b.astype(jnp.float32) for b in bf16)))


def _scalar_mlp_reference(p, h, activation):
    """The MLP of PairMLP / BaselineMLP written from its parameters: Dense -> act per hidden
    layer, then a linear Dense(1)."""
    layers = p["params"]["MLP_0"]
    return _mlp_reference(layers, h, len(layers), activation)[:, 0]


@pytest.mark.parametrize(
    "activation, fn", [("tanh", jnp.tanh), ("elu", jax.nn.elu), ("leaky_relu", jax.nn.leaky_relu)]
)
def test_pair_and_baseline_mlp_use_their_activation(activation, fn):
    """PairMLP and BaselineMLP equal their MLP written from the parameters with the activation
    they were given (before: a check of shapes and row independence only, so either network
    silently running relu went unnoticed)."""
    x, y = _data(batch=8, dx=3, dy=4)
    hi = jax.default_matmul_precision("highest")
    pair = critics.PairMLP(hidden=(16, 12), activation=activation)
    params = pair.init(jax.random.key(0), x, y)
    with hi:
        want = _scalar_mlp_reference(params, jnp.concatenate([x, y], axis=-1), fn)
        got = pair.apply(params, x, y)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    baseline = critics.BaselineMLP(hidden=(16,), activation=activation)
    bparams = baseline.init(jax.random.key(0), y)
    with hi:
        want = _scalar_mlp_reference(bparams, y, fn)
        got = baseline.apply(bparams, y)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["pair", "baseline"])
def test_pair_and_baseline_mlp_take_their_kernel_init(name):
    """Glorot uniform on a [64, 128] hidden kernel: variance 2/192 (LeCun normal's is 1/64,
    three times more), every entry within sqrt(6/192). The ensemble passes the critic's
    kernel_init to these networks (FLO's u, the TUBA baseline), so a network that dropped it
    started from LeCun normal, the start the docs warn diverges under exponential bounds."""
    x, y = (jax.random.normal(k, (4, 32)) for k in jax.random.split(jax.random.key(0)))
    if name == "pair":  # fan-in 64: x and y concatenated
        net = critics.PairMLP(hidden=(128,), kernel_init="glorot_uniform")
        params = net.init(jax.random.key(1), x, y)
        x_in = jnp.concatenate([x, y], axis=-1)
    else:
        net = critics.BaselineMLP(hidden=(128,), kernel_init="glorot_uniform")
        y = jnp.concatenate([x, y], axis=-1)  # [4, 64]
        params = net.init(jax.random.key(1), y)
        x_in = y
    kernel = params["params"]["MLP_0"]["Dense_0"]["kernel"]
    assert kernel.shape == (x_in.shape[1], 128)
    fan_in, fan_out = kernel.shape
    # 8192 entries: the sample variance is within ~3 % (2 sigma); 10 % is generous.
    assert abs(float(jnp.var(kernel)) * (fan_in + fan_out) / 2.0 - 1.0) < 0.1
    assert float(jnp.abs(kernel).max()) <= np.sqrt(6.0 / (fan_in + fan_out))


@pytest.mark.parametrize("name", ["pair", "baseline"])
def test_pair_and_baseline_mlp_take_their_compute_dtype(name):
    """bfloat16 PairMLP / BaselineMLP: same parameters, outputs close to float32 but visibly
    rounded (a network that dropped compute_dtype gave the float32 values exactly)."""
    x, y = _data(batch=16, dx=6, dy=6)
    if name == "pair":
        n32, n16 = (critics.PairMLP(hidden=(64, 64), compute_dtype=c) for c in (None, "bfloat16"))
        args = (x, y)
    else:
        n32, n16 = (critics.BaselineMLP(hidden=(64,), compute_dtype=c) for c in (None, "bfloat16"))
        args = (y,)
    params = n32.init(jax.random.key(1), *args)
    assert jax.tree.structure(params) == jax.tree.structure(n16.init(jax.random.key(1), *args))
    with jax.default_matmul_precision("highest"):
        v32 = n32.apply(params, *args)
    v16 = jax.jit(n16.apply)(params, *args)
    assert v16.dtype == jnp.float32
    spread = float(jnp.std(v32))
    np.testing.assert_allclose(v16, v32, atol=0.05 * spread)
    # bf16 keeps 8 significant bits: some output moves by more than 1e-4 of the spread.
    assert float(jnp.max(jnp.abs(v16 - v32))) > 1e-4 * spread


_INIT_VARIANCES = {  # name: (variance from fan-in and fan-out, uniform?)
    "lecun_normal": (lambda fi, fo: 1.0 / fi, False),
    "glorot_uniform": (lambda fi, fo: 2.0 / (fi + fo), True),
    "glorot_normal": (lambda fi, fo: 2.0 / (fi + fo), False),
    "he_normal": (lambda fi, fo: 2.0 / fi, False),
}


def test_every_registered_initializer_is_checked():
    assert set(_INIT_VARIANCES) == set(critics._INITIALIZERS)


@pytest.mark.parametrize("name", sorted(_INIT_VARIANCES))
def test_every_registered_initializer_has_its_variance_and_shape(name):
    """Each registered kernel_init on a [64, 256] kernel (fan-in != fan-out, so the LeCun,
    Glorot and He variances 1/64, 1/160, 1/32 all differ): sample variance within 6 % (16384
    entries: ~2 % at 3 sigma), and a uniform's entries within sqrt(3) standard deviations
    while a normal's (Flax's truncated at 2 sigma) reach past it (P(|z| > sqrt 3) ~ 6 %)."""
    variance, uniform = _INIT_VARIANCES[name]
    w = critics.get_initializer(name)(jax.random.key(0), (64, 256), jnp.float32)
    want = variance(64, 256)
    assert abs(float(jnp.var(w)) / want - 1.0) < 0.06, (name, float(jnp.var(w)) / want)
    limit = np.sqrt(3.0 * want)
    if uniform:
        assert float(jnp.abs(w).max()) <= limit * (1 + 1e-6)
    else:
        assert float(jnp.abs(w).max()) > 1.05 * limit


def test_every_registered_activation_is_its_closed_form():
    """Each name of `get_activation` against its formula, in float64 numpy on a grid across
    0 (before: only tanh and relu were exercised, so e.g. elu -> selu or leaky_relu -> relu
    passed). gelu is Flax's default, the tanh approximation (within 5e-4 of the erf form)."""
    z = np.linspace(-4.0, 4.0, 161)
    sig = 1.0 / (1.0 + np.exp(-z))
    want = {
        "relu": np.maximum(z, 0.0),
        "gelu": 0.5 * z * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (z + 0.044715 * z**3))),
        "elu": np.where(z > 0, z, np.expm1(z)),
        "tanh": np.tanh(z),
        "silu": z * sig,
        "softplus": np.log1p(np.exp(z)),
        "leaky_relu": np.where(z > 0, z, 0.01 * z),
    }
    assert set(want) == set(critics._ACTIVATIONS)  # a newly registered one gets its formula here
    for name, ref in want.items():
        got = np.asarray(critics.get_activation(name)(jnp.asarray(z, jnp.float32)), np.float64)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6, err_msg=name)


def test_chunked_concat_keeps_activation_kernel_init_and_compute_dtype():
    """The chunked concat critic builds its row blocks from the same settings as the dense one
    (before: the chunked tests all ran relu, LeCun normal and float32, so a scan that dropped
    any of them went unnoticed): the same initial parameters for glorot_uniform, the same tanh
    scores, and the same bfloat16 scores (visibly not the float32 ones)."""
    x, y = _data(batch=12, dx=3, dy=4)
    hp = dict(hidden=(16, 12), activation="tanh", kernel_init="glorot_uniform")
    dense = critics.get_critic("concat", **hp)
    chunked = critics.get_critic("concat", chunk_size=5, **hp)
    params = dense.init(jax.random.key(2), x, y)
    chunked_params = chunked.init(jax.random.key(2), x, y)
    for a, b in zip(jax.tree.leaves(chunked_params), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)
    want = dense.apply(params, x, y)
    np.testing.assert_allclose(jax.jit(chunked.apply)(params, x, y), want, rtol=1e-5, atol=1e-5)
    relu = critics.get_critic("concat", hidden=(16, 12), chunk_size=5).apply(params, x, y)
    assert not np.allclose(relu, want, atol=1e-3)  # tanh is not relu on these params
    d16 = critics.get_critic("concat", compute_dtype="bfloat16", **hp)
    c16 = critics.get_critic("concat", compute_dtype="bfloat16", chunk_size=5, **hp)
    s16 = jax.jit(d16.apply)(params, x, y)
    # Same bf16 arithmetic, blocked differently: float32 accumulation rounding only.
    np.testing.assert_allclose(jax.jit(c16.apply)(params, x, y), s16, rtol=1e-4, atol=1e-4)
    assert float(jnp.max(jnp.abs(s16 - want))) > 1e-3  # and bf16 rounding is visible


@pytest.mark.parametrize("name", ["separable", "concat"])
def test_compute_dtype_float32_is_the_default_float32_layer(name):
    """compute_dtype="float32" (the name a config writes) is the float32 layer, as None is: the
    same scores bit for bit (a bfloat16 layer differs by ~1e-2 here)."""
    x, y = _data(batch=8, dx=3, dy=3)
    hp = {"separable": {"hidden": (16, 12), "embed_dim": 5}, "concat": {"hidden": (16, 12)}}[name]
    c_none = critics.get_critic(name, **hp)
    c_f32 = critics.get_critic(name, compute_dtype="float32", **hp)
    params = c_none.init(jax.random.key(1), x, y)
    np.testing.assert_array_equal(
        jax.jit(c_f32.apply)(params, x, y), jax.jit(c_none.apply)(params, x, y)
    )
