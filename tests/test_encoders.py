"""Encoders of `mi_jax.encoders`: output shapes per image size, a reference written from the
parameters, parameter counts by hand, gradients, batch independence, registry and errors."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mi_jax import encoders
from mi_jax.encoders import EncoderOutput

# (batch, H, W, C) of 8x8 digits, MNIST and CIFAR.
_DIGITS, _MNIST, _CIFAR = (3, 8, 8, 1), (3, 28, 28, 1), (3, 32, 32, 3)

# Expected `local` shapes [h, w, c] and feature widths with default hparams.
_EXPECTED = {
    ("mlp", _DIGITS): ((1, 1, 512), 512),
    ("mlp", _MNIST): ((1, 1, 512), 512),
    ("mlp", _CIFAR): ((1, 1, 512), 512),
    ("conv", _DIGITS): ((2, 2, 128), 1024),
    ("conv", _MNIST): ((7, 7, 128), 1024),
    ("conv", _CIFAR): ((8, 8, 128), 1024),
    ("resnet", _DIGITS): ((2, 2, 256), 256),
    ("resnet", _MNIST): ((7, 7, 256), 256),
    ("resnet", _CIFAR): ((8, 8, 256), 256),
}

# Small widths for the tests that compile and differentiate (keeps the file fast on CPU).
_SMALL = {
    "mlp": {"hidden": (32, 24), "latent_dim": 6},
    "conv": {"channels": (8, 16), "fc_width": 32, "latent_dim": 6},
    "resnet": {"widths": (8, 16, 16), "stem_width": 8, "latent_dim": 6, "norm_groups": 4},
}


def _images(shape, seed=0):
    return jax.random.uniform(jax.random.key(seed), shape)


def _num_params(params):
    return sum(leaf.size for leaf in jax.tree.leaves(params))


@pytest.mark.parametrize(("name", "shape"), list(_EXPECTED))
def test_default_encoders_output_shapes(name, shape):
    encoder = encoders.get_encoder(name)
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    params = jax.eval_shape(encoder.init, jax.random.key(0), x)
    out = jax.eval_shape(encoder.apply, params, x)
    assert isinstance(out, EncoderOutput)
    (local_hw_c, width) = _EXPECTED[name, shape]
    batch = shape[0]
    assert out.local.shape == (batch, *local_hw_c)
    assert out.features.shape == (batch, width)
    assert out.global_.shape == (batch, 64)
    assert {a.dtype for a in out} == {jnp.dtype(jnp.float32)}


@pytest.mark.parametrize("name", list(_SMALL))
def test_jit_matches_eager_and_each_image_is_encoded_independently_of_its_batch(name):
    encoder = encoders.get_encoder(name, **_SMALL[name])
    x = _images(_MNIST)
    params = jax.jit(encoder.init)(jax.random.key(1), x)
    apply = jax.jit(encoder.apply)
    eager = encoder.apply(params, x)
    jitted = apply(params, x)
    for a, b in zip(eager, jitted, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
        assert np.all(np.isfinite(np.asarray(b)))
    # Different images get different global representations.
    assert float(jnp.min(jnp.std(jitted.global_, axis=0))) > 1e-4
    # No BatchNorm: contrastive negatives must not leak into one sample's representation.
    alone = apply(params, x[1:2])
    for a, b in zip(jitted, alone, strict=True):
        np.testing.assert_allclose(a[1:2], b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(_SMALL))
def test_gradient_of_global_reaches_every_parameter(name):
    encoder = encoders.get_encoder(name, **_SMALL[name])
    x = _images(_CIFAR)
    params = jax.jit(encoder.init)(jax.random.key(2), x)
    grads = jax.jit(jax.grad(lambda p: jnp.sum(encoder.apply(p, x).global_)))(params)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        g = np.asarray(g)
        assert np.all(np.isfinite(g)), jax.tree_util.keystr(path)
        assert np.any(g != 0), jax.tree_util.keystr(path)


def test_conv_encoder_equals_reference_written_from_params():
    hp = _SMALL["conv"]
    encoder = encoders.get_encoder("conv", **hp)
    x = _images(_MNIST)
    params = encoder.init(jax.random.key(3), x)
    out = jax.jit(encoder.apply)(params, x)
    p = params["params"]

    def conv(h, q):
        y = jax.lax.conv_general_dilated(
            h, q["kernel"], (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return y + q["bias"].reshape(1, 1, 1, -1)

    def dense(h, q):
        return h @ q["kernel"] + q["bias"][None, :]

    h = jax.nn.relu(conv(jax.nn.relu(conv(x, p["Conv_0"])), p["Conv_1"]))
    assert h.shape == (3, 7, 7, 16)
    features = jax.nn.relu(dense(h.reshape(3, -1), p["fc"]))
    global_ = dense(features, p["global"])
    np.testing.assert_allclose(out.local, h, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.features, features, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.global_, global_, rtol=1e-4, atol=1e-5)


def test_mlp_encoder_local_is_the_last_hidden_layer_as_a_1x1_map():
    encoder = encoders.get_encoder("mlp", **_SMALL["mlp"])
    x = _images(_DIGITS)
    params = encoder.init(jax.random.key(4), x)
    out = encoder.apply(params, x)
    assert out.local.shape == (3, 1, 1, 24)
    np.testing.assert_array_equal(out.local[:, 0, 0, :], out.features)
    p = params["params"]
    np.testing.assert_allclose(
        out.global_,
        out.features @ p["global"]["kernel"] + p["global"]["bias"][None, :],
        rtol=1e-5,
        atol=1e-6,
    )


def test_param_counts_by_hand():
    def conv(k, c_in, c_out, bias=True):
        return k * k * c_in * c_out + (c_out if bias else 0)

    def dense(n_in, n_out):
        return n_in * n_out + n_out

    def count(name, shape, **hparams):
        encoder = encoders.get_encoder(name, **hparams)
        x = jax.ShapeDtypeStruct(shape, jnp.float32)
        return _num_params(jax.eval_shape(encoder.init, jax.random.key(0), x))

    # ConvEncoder, defaults, MNIST: 28 -> 14 -> 7.
    conv_mnist = conv(4, 1, 64) + conv(4, 64, 128) + dense(7 * 7 * 128, 1024) + dense(1024, 64)
    assert conv_mnist == 6_621_440
    assert count("conv", _MNIST) == conv_mnist

    # MLPEncoder, defaults, CIFAR.
    assert count("mlp", _CIFAR) == dense(32 * 32 * 3, 512) + dense(512, 512) + dense(512, 64)

    # ResNetEncoder, defaults, CIFAR: stem, then per block GroupNorm(2c_in) + conv3x3 (no bias)
    # + GroupNorm(2c) + conv3x3 (no bias) [+ 1x1 shortcut], final GroupNorm, Dense.
    def block(c_in, c):
        shortcut = conv(1, c_in, c, bias=False) if c_in != c else 0
        return 2 * c_in + conv(3, c_in, c, False) + 2 * c + conv(3, c, c, False) + shortcut

    resnet = (
        conv(3, 3, 64) + block(64, 64) + block(64, 128) + block(128, 256) + 2 * 256 + dense(256, 64)
    )
    assert count("resnet", _CIFAR) == resnet
    # Parameters do not depend on the image size (global pooling); only the stem on channels.
    assert count("resnet", _MNIST) == resnet - 9 * 2 * 64
    # Two blocks per stage adds one width-preserving block per stage.
    two = count("resnet", _CIFAR, blocks_per_stage=2)
    assert two == resnet + block(64, 64) + block(128, 128) + block(256, 256)


def test_resnet_stages_and_groupnorm_groups_are_configurable():
    encoder = encoders.get_encoder(
        "resnet", widths=[12, 20], strides=[2, 2], blocks_per_stage=[1, 2], stem_width=6
    )
    x = jax.ShapeDtypeStruct(_CIFAR, jnp.float32)
    params = jax.eval_shape(encoder.init, jax.random.key(0), x)
    out = jax.eval_shape(encoder.apply, params, x)
    assert out.local.shape == (3, 8, 8, 20)
    assert set(params["params"]) == {
        "stem",
        "stage0_block0",
        "stage1_block0",
        "stage1_block1",
        "final_norm",
        "global",
    }


def test_bfloat16_compute_dtype_keeps_params_and_is_close():
    hp = _SMALL["conv"]
    x = _images(_MNIST)
    f32 = encoders.get_encoder("conv", **hp)
    bf16 = encoders.get_encoder("conv", compute_dtype="bfloat16", **hp)
    params = f32.init(jax.random.key(5), x)
    assert jax.tree.structure(bf16.init(jax.random.key(5), x)) == jax.tree.structure(params)
    a, b = f32.apply(params, x), jax.jit(bf16.apply)(params, x)
    assert b.global_.dtype == jnp.float32
    np.testing.assert_array_equal(a.local, b.local)  # convs stay float32
    scale = float(jnp.max(jnp.abs(a.global_)))
    np.testing.assert_allclose(b.global_, a.global_, atol=2e-2 * scale)
    assert not np.array_equal(np.asarray(a.global_), np.asarray(b.global_))


# --------------------------------------------------------------------------------------------
# Registry and errors.


def test_registry_names_and_register():
    assert encoders.available_encoders() == ("mlp", "conv", "resnet")
    with pytest.raises(ValueError, match="already registered"):
        encoders.register_encoder("conv", encoders.MLPEncoder)
    encoders.register_encoder("conv", encoders.ConvEncoder)  # the same class again: a no-op
    assert encoders._ENCODERS["conv"] is encoders.ConvEncoder  # noqa: SLF001
    encoders.register_encoder("test_tiny_conv", encoders.ConvEncoder)
    try:
        assert isinstance(encoders.get_encoder("test_tiny_conv"), encoders.ConvEncoder)
    finally:
        del encoders._ENCODERS["test_tiny_conv"]


def test_unknown_encoder_suggests_close_match():
    with pytest.raises(KeyError, match="Did you mean 'resnet'"):
        encoders.get_encoder("resnt")


def test_unknown_hparam_is_a_type_error_naming_it():
    with pytest.raises(TypeError, match=r"\['hiden'\].*'mlp'"):
        encoders.get_encoder("mlp", hiden=(8,))


def _init(name, shape, dtype=jnp.float32, **hparams):
    encoder = encoders.get_encoder(name, **hparams)
    return encoder.init(jax.random.key(0), jnp.zeros(shape, dtype))


@pytest.mark.parametrize("name", list(_SMALL))
def test_rank3_images_are_rejected(name):
    with pytest.raises(ValueError, match=r"`images`.*\(3, 28, 28\)"):
        _init(name, (3, 28, 28))


@pytest.mark.parametrize("name", list(_SMALL))
def test_integer_images_are_rejected_with_a_hint(name):
    with pytest.raises(TypeError, match=r"`images`.*uint8.*mi_jax\.data\.to_float"):
        _init(name, (3, 8, 8, 1), jnp.uint8)


def test_too_small_images_are_rejected_naming_the_minimum():
    with pytest.raises(ValueError, match=r"2 stride-2 convs needs H, W >= 4.*\(3, 2, 2, 1\)"):
        _init("conv", (3, 2, 2, 1))
    with pytest.raises(ValueError, match=r"3 stride-2 convs needs H, W >= 8.*\(3, 8, 4, 1\)"):
        _init("conv", (3, 8, 4, 1), channels=(4, 4, 4))
    with pytest.raises(ValueError, match=r"ResNetEncoder.*H, W >= 4.*\(3, 2, 2, 3\)"):
        _init("resnet", (3, 2, 2, 3))
    # The minimum itself is accepted: the smallest map is 1x1.
    params = _init("conv", (3, 4, 4, 1), **_SMALL["conv"])
    out = encoders.get_encoder("conv", **_SMALL["conv"]).apply(params, jnp.zeros((3, 4, 4, 1)))
    assert out.local.shape == (3, 1, 1, 16)
    assert math.prod(out.local.shape[1:3]) == 1


def test_bad_architectures_are_rejected():
    with pytest.raises(ValueError, match="one stride and one block count per stage"):
        _init("resnet", _CIFAR, widths=(8, 8), strides=(1, 2, 2))
    with pytest.raises(ValueError, match="at least one hidden layer"):
        _init("mlp", _DIGITS, hidden=())
    with pytest.raises(ValueError, match="at least one conv layer"):
        _init("conv", _DIGITS, channels=())
    with pytest.raises(KeyError, match="compute_dtype"):
        _init("mlp", _DIGITS, compute_dtype="float16")
    with pytest.raises(KeyError, match="activation"):
        _init("conv", _DIGITS, activation="rleu")


@pytest.mark.parametrize(
    ("name", "hparams", "match"),
    [
        ("mlp", {"latent_dim": 0}, r"MLPEncoder: `latent_dim` must be an integer >= 1, got 0"),
        ("mlp", {"hidden": (8, 0)}, r"MLPEncoder: `hidden` must hold integers >= 1"),
        ("conv", {"fc_width": 0}, r"ConvEncoder: `fc_width` must be an integer >= 1"),
        ("conv", {"latent_dim": 2.5}, r"ConvEncoder: `latent_dim` must be an integer >= 1"),
        ("resnet", {"stem_width": 0}, r"ResNetEncoder: `stem_width`"),
        ("resnet", {"widths": (8, 0, 8)}, r"ResNetEncoder: `widths` must hold integers"),
        ("resnet", {"blocks_per_stage": 2.5}, r"ResNetEncoder: `blocks_per_stage` must be an"),
        ("mlp", {"hidden": 64}, r"MLPEncoder: `hidden` must be a sequence of integers"),
    ],
)
def test_zero_or_fractional_widths_are_named_when_the_encoder_is_built(name, hparams, match):
    # Before: a ZeroDivisionError from the weight initializer at init, naming no field.
    with pytest.raises(ValueError, match=match):
        encoders.get_encoder(name, **hparams)


@pytest.mark.parametrize(
    "shape, kernel, strides",
    [
        ((3, 14, 28, 1), (3, 3), (1, 1)),
        ((3, 14, 28, 4), (3, 3), (2, 2)),  # even size, stride 2: XLA pads (0, 1)
        ((2, 7, 9, 2), (3, 3), (2, 2)),  # odd sizes
        ((2, 8, 8, 3), (4, 4), (2, 2)),  # even kernel
        ((2, 5, 6, 2), (1, 3), (1, 2)),
    ],
)
def test_patch_conv_is_nn_conv_with_same_padding(shape, kernel, strides):
    """Same parameters and initialization as nn.Conv(padding="SAME"), and under jit the same
    values and parameter gradients (float32 round-off)."""
    import flax.linen as nn

    x = jax.random.normal(jax.random.key(0), shape)
    ref = nn.Conv(5, kernel, strides=strides, padding="SAME")
    patch = encoders.PatchConv(5, kernel, strides)
    params = ref.init(jax.random.key(1), x)
    assert jax.tree.all(
        jax.tree.map(lambda a, b: bool(jnp.all(a == b)), params, patch.init(jax.random.key(1), x))
    )
    # A non-zero bias, so that its broadcast is checked too.
    params = jax.tree.map(lambda a: a + 0.1 * jnp.cos(jnp.arange(a.size)).reshape(a.shape), params)

    def outputs_and_grads(module):
        loss = lambda p: jnp.sum(jnp.sin(module.apply(p, x)))
        return jax.jit(lambda p: (module.apply(p, x), jax.grad(loss)(p)))(params)

    (want, want_grad), (got, got_grad) = outputs_and_grads(ref), outputs_and_grads(patch)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), got_grad, want_grad
    )


def test_patch_conv_rejects_an_input_that_is_not_rank_4():
    with pytest.raises(ValueError, match="`x` of shape"):
        encoders.PatchConv(4).init(jax.random.key(0), jnp.zeros((8, 8, 1)))


def test_a_groupnorm_of_one_value_per_group_is_refused_not_a_constant_encoder():
    # Before: 4x4 images, strides (2, 2), widths (8, 8) and 8 groups normalized each value of
    # the final 1x1 map by itself: every image gave the same features (spread 0.0).
    images = jax.random.uniform(jax.random.key(0), (6, 4, 4, 1))
    narrow = encoders.ResNetEncoder(widths=(8, 8), strides=(2, 2), stem_width=8)
    with pytest.raises(ValueError, match="8 groups of 8 channels on a 1x1 map.*norm_groups"):
        narrow.init(jax.random.key(1), images)
    fewer = encoders.ResNetEncoder(widths=(8, 8), strides=(2, 2), stem_width=8, norm_groups=2)
    out, _ = jax.jit(fewer.init_with_output)(jax.random.key(1), images)
    assert float(jnp.max(jnp.std(out.features, axis=0))) > 0.05  # (before: 0.0)


# --------------------------------------------------------------------------------------------
# Hand recomputations (a mutation check: each of these caught a change the tests above let through).


def test_resnet_features_are_the_global_average_pool_of_local():
    """Catches: max pooling in place of the mean; the final activation after the GroupNorm
    left out (a signed map: ReLU's is non-negative, about half zeros)."""
    enc = encoders.get_encoder(
        "resnet", widths=(8, 16), strides=(1, 2), stem_width=8, latent_dim=6, norm_groups=4
    )
    x = jax.random.uniform(jax.random.key(0), (3, 8, 8, 1))
    out = jax.jit(lambda x: enc.apply(enc.init(jax.random.key(1), x), x))(x)
    np.testing.assert_allclose(out.features, jnp.mean(out.local, axis=(1, 2)), rtol=1e-5, atol=1e-6)
    assert float(out.local.min()) >= 0.0 and 0.2 < float(jnp.mean(out.local == 0.0)) < 0.8


def test_preact_block_shortcut_is_a_projection_of_the_preactivated_input():
    """Catches: the projection shortcut reading the raw input, not act(norm(x)) as documented."""
    block = encoders._PreActBlock(8, 2, "relu", 2)
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 4))
    params = jax.jit(block.init)(jax.random.key(1), x)

    @jax.jit
    def by_hand(p, x):
        gn = lambda name, v: nn.GroupNorm(num_groups=2).apply({"params": p[name]}, v)  # noqa: E731
        conv = lambda name, k, s, v: nn.Conv(  # noqa: E731
            8, k, strides=s, padding="SAME", use_bias=False
        ).apply({"params": p[name]}, v)
        pre = jax.nn.relu(gn("GroupNorm_0", x))
        h = jax.nn.relu(gn("GroupNorm_1", conv("Conv_0", (3, 3), 2, pre)))
        return conv("shortcut", (1, 1), 2, pre) + conv("Conv_1", (3, 3), 1, h)

    want = by_hand(params["params"], x)
    np.testing.assert_allclose(jax.jit(block.apply)(params, x), want, rtol=1e-5, atol=1e-5)
