"""Image encoders for DIM-style InfoMax: Flax Linen modules from images to representations.

``encoder.apply(params, images)`` with ``images`` ``[batch, height, width, channels]`` (float,
values in ``[0, 1]``) returns an `EncoderOutput` with the three representations Deep InfoMax
(DIM) maximizes MI between:

* ``local`` ``[batch, h, w, c_local]``: the last convolutional feature map, DIM's ``M``; every
  spatial position is one "local feature" of a patch of the image.
* ``features`` ``[batch, F]``: the penultimate (fully connected or pooled) layer, DIM's ``fc``.
* ``global_`` ``[batch, latent_dim]``: the global representation, DIM's ``Y``.

Encoders, chosen by name with `get_encoder`:

* ``"mlp"`` `MLPEncoder`: an MLP on the flattened image (``local`` is a 1x1 map).
* ``"conv"`` `ConvEncoder`: a DCGAN-style encoder for small images after DIM's (two stride-2
  4x4 convs; DIM's own has 5x5 kernels at 28x28, three 4x4 convs at 32x32).
* ``"resnet"`` `ResNetEncoder`: a small pre-activation ResNet with GroupNorm, for 32x32 images.

There is no BatchNorm anywhere: the train state stays a pure parameter tree (no ``batch_stats``
collection, no ``mutable=`` in the step), and the representation of one image does not depend
on the rest of its batch, which matters for contrastive bounds whose negatives are the other
samples of the batch (BatchNorm leaks batch statistics into every score). The MLP and conv
encoders use no normalization (DIM's small encoders train without it at these depths); the
ResNet uses GroupNorm, batch-independent and stable at any batch size.

Every encoder takes ``kernel_init``, the name of its weight initializer
(`mi_jax.critics.get_initializer`; Flax's ``"lecun_normal"`` by default). ``compute_dtype``
(``None``/``"float32"`` or ``"bfloat16"``) applies to the Dense layers only,
through `mi_jax.critics.dense`; convolutions stay float32 (on the small images here the
fully connected layers hold most parameters and FLOPs of `ConvEncoder`, and mixed-precision
convolutions would need their own custom VJP).

References:
  Hjelm et al., "Learning deep representations by mutual information estimation and
  maximization", ICLR 2019. https://arxiv.org/abs/1808.06670
"""

import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import flax.linen as nn
import jax.numpy as jnp

from mi_jax import _checks
from mi_jax.critics import check_compute_dtype, dense, get_activation, get_initializer
from mi_jax.types import Array


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int, int]:
    """``(low, high, out)`` of XLA's ``"SAME"`` padding along one spatial axis."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2, out


class PatchConv(nn.Module):
    """A ``"SAME"``-padded 2-d convolution computed as one matmul over gathered patches.

    The same function, parameters (``kernel`` ``[kh, kw, C_in, C_out]``, ``bias``) and
    initialization as ``nn.Conv(features, kernel_size, strides, padding="SAME")``, for small
    kernels: the ``kh kw`` shifted (strided) slices of the padded input are concatenated into
    ``[B, h', w', kh kw C_in]`` and multiplied by the reshaped kernel. Under ``jax.vmap`` over
    parameters (several seeds in one program) a convolution becomes a grouped convolution, which
    XLA:CPU runs slower than the batched matmul this layer becomes: the halves study's conv
    encoder, three vmapped seeds on 2 cores, forward and backward in 65-70 instead of 117 ms,
    and its training steps 1.5x faster; the slices' gradients are pads and adds.
    """

    features: int
    kernel_size: tuple[int, int] = (3, 3)
    strides: tuple[int, int] = (1, 1)
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """``x`` ``[B, h, w, C_in]`` -> ``[B, ceil(h / s_h), ceil(w / s_w), features]``."""
        if x.ndim != 4:
            raise ValueError(f"PatchConv needs `x` of shape [B, h, w, C_in], got {x.shape}.")
        (kh, kw), (sh, sw) = self.kernel_size, self.strides
        c_in = x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (kh, kw, c_in, self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        lo_h, hi_h, out_h = _same_padding(x.shape[1], kh, sh)
        lo_w, hi_w, out_w = _same_padding(x.shape[2], kw, sw)
        x = jnp.pad(x, ((0, 0), (lo_h, hi_h), (lo_w, hi_w), (0, 0)))
        patches = jnp.concatenate(
            [
                x[:, i : i + sh * (out_h - 1) + 1 : sh, j : j + sw * (out_w - 1) + 1 : sw]
                for i in range(kh)
                for j in range(kw)
            ],
            axis=-1,
        )  # [B, h', w', kh kw C_in], ordered (i, j, c) like the kernel's leading axes
        return patches @ kernel.reshape(kh * kw * c_in, self.features) + bias[None, None, None]


class EncoderOutput(NamedTuple):
    """The representations of a batch of images (all float32).

    Attributes:
      local: ``[batch, h, w, c_local]`` the last convolutional feature map (DIM's ``M``).
      features: ``[batch, F]`` the penultimate layer (DIM's ``fc``).
      global_: ``[batch, latent_dim]`` the global representation (DIM's ``Y``).
    """

    local: Array
    features: Array
    global_: Array


def _check_images(images, encoder: str, min_size: int = 1, why: str = "") -> None:
    """Static checks of ``images`` ``[batch, height, width, channels]`` (free under jit)."""
    shape = jnp.shape(images)
    if len(shape) != 4:
        raise ValueError(
            f"`images` must have shape [batch, height, width, channels], got an array of rank "
            f"{len(shape)} with shape {shape}; add a trailing channel axis for grayscale images."
        )
    check_unit_images(images)
    if shape[1] < min_size or shape[2] < min_size:
        raise ValueError(
            f"{encoder} with {why} needs H, W >= {min_size}, got `images` of shape {shape}."
        )


def check_unit_images(images) -> None:
    """``images`` hold floats (finite where concrete; free under jit). The pixels are meant to
    lie in ``[0, 1]``; their range is not checked (a host sync where concrete)."""
    try:
        _checks.check_float(images, "images")
    except TypeError:
        # (not `astype(jnp.float32)`, which keeps pixels in [0, 255]: the likelihoods and KL
        # then read thousands of nats, silently)
        raise TypeError(
            f"`images` must hold floats in [0, 1], got {jnp.result_type(images)}; "
            "`mi_jax.data.to_float(images)` converts integer pixels in [0, 255]."
        ) from None
    _checks.check_finite_if_concrete(images, "images")


def _tuple(x: int | Sequence[int]) -> tuple[int, ...]:
    return tuple(x) if isinstance(x, Sequence) else (x,)


class MLPEncoder(nn.Module):
    """An MLP on the flattened image: ``Dense -> act`` per hidden width, then ``Dense(latent_dim)``.

    It has no spatial structure, so ``local`` is the last hidden layer as a 1x1 map
    ``[batch, 1, 1, hidden[-1]]``: a local DIM objective then has one "location" per image and
    degenerates gracefully to a global objective between ``features`` and ``global_`` (useful as
    a baseline and for tabular-like inputs, at no extra code in the trainer).

    Attributes:
      hidden: widths of the hidden layers (at least one); ``features`` has width ``hidden[-1]``.
      latent_dim: width ``D`` of ``global_``.
      activation: name of the activation (see `mi_jax.critics.get_activation`).
      compute_dtype: ``None``/``"float32"`` or ``"bfloat16"`` matmuls (see `mi_jax.critics.dense`).
      kernel_init: name of the weight initializer (`mi_jax.critics.get_initializer`).
    """

    hidden: Sequence[int] = (512, 512)
    latent_dim: int = 64
    activation: str = "relu"
    compute_dtype: str | None = None
    kernel_init: str = "lecun_normal"

    def __post_init__(self):
        if not self.hidden:
            raise ValueError("MLPEncoder needs at least one hidden layer (`hidden`).")
        _checks.check_int_sequences("MLPEncoder", hidden=self.hidden)
        _checks.check_ints("MLPEncoder", latent_dim=self.latent_dim)
        super().__post_init__()

    @nn.compact
    def __call__(self, images: Array) -> EncoderOutput:
        """``images`` ``[batch, H, W, C]`` -> `EncoderOutput` (``local`` ``[batch, 1, 1, F]``)."""
        _check_images(images, "MLPEncoder")
        check_compute_dtype(self.compute_dtype)
        act = get_activation(self.activation)
        h = images.reshape(images.shape[0], -1)  # [batch, H * W * C]
        for width in self.hidden:
            h = act(dense(width, self.compute_dtype, self.kernel_init)(h))
        global_ = dense(self.latent_dim, self.compute_dtype, self.kernel_init, name="global")(h)
        return EncoderOutput(local=h[:, None, None, :], features=h, global_=global_)


class ConvEncoder(nn.Module):
    """A DCGAN-style encoder for small images after DIM's.

    DIM's released encoders: two stride-2 5x5 convs (64, 128 channels) and a 1024-unit Dense at
    28x28, three stride-2 4x4 convs at 32x32; here 4x4 kernels at every size (the defaults give
    DIM's 28x28 shapes: a 7x7x128 ``local`` map and 1024 ``features``).

    ``[Conv 4x4 stride 2 -> act] * len(channels)`` is ``local``; flatten -> ``Dense(fc_width)
    -> act`` is ``features``; ``Dense(latent_dim)`` is ``global_``. "SAME" padding halves the
    spatial size per conv (rounding up): with the default two convs 28x28 -> 14 -> 7,
    32x32 -> 16 -> 8 and 8x8 -> 4 -> 2. Inputs need ``H, W >= 2**len(channels)``, so that no conv
    sees a map smaller than its stride.

    No normalization: DIM's small-image encoder uses BatchNorm, dropped here (see the module
    docstring); at two conv layers plus two Dense layers it trains without one.

    Attributes:
      channels: output channels of the stride-2 convs; ``local`` has ``channels[-1]`` channels.
      fc_width: width ``F`` of ``features``.
      latent_dim: width ``D`` of ``global_``.
      activation: name of the activation.
      compute_dtype: matmul dtype of the Dense layers (convs stay float32).
      kernel_init: name of the weight initializer of every layer.
    """

    channels: Sequence[int] = (64, 128)
    fc_width: int = 1024
    latent_dim: int = 64
    activation: str = "relu"
    compute_dtype: str | None = None
    kernel_init: str = "lecun_normal"

    def __post_init__(self):
        if not self.channels:
            raise ValueError("ConvEncoder needs at least one conv layer (`channels`).")
        _checks.check_int_sequences("ConvEncoder", channels=self.channels)
        _checks.check_ints(
            "ConvEncoder",
            fc_width=self.fc_width,
            latent_dim=self.latent_dim,
        )
        super().__post_init__()

    @nn.compact
    def __call__(self, images: Array) -> EncoderOutput:
        """``images`` ``[batch, H, W, C]`` -> `EncoderOutput` (``local`` ``[batch, H/4, W/4, 128]``
        with the defaults)."""
        n = len(self.channels)
        _check_images(images, "ConvEncoder", 2**n, f"{n} stride-2 convs")
        check_compute_dtype(self.compute_dtype)
        act = get_activation(self.activation)
        h = images
        init = get_initializer(self.kernel_init)
        for width in self.channels:
            h = act(nn.Conv(width, (4, 4), strides=(2, 2), padding="SAME", kernel_init=init)(h))
        local = h  # [batch, ceil(H / 2**n), ceil(W / 2**n), channels[-1]]
        flat = h.reshape(h.shape[0], -1)
        features = act(dense(self.fc_width, self.compute_dtype, self.kernel_init, name="fc")(flat))
        global_ = dense(self.latent_dim, self.compute_dtype, self.kernel_init, name="global")(
            features
        )
        return EncoderOutput(local=local, features=features, global_=global_)


def _group_norm(x: Array, groups: int, name: str | None = None) -> Array:
    """GroupNorm of ``x`` ``[batch, H, W, C]`` with ``gcd(groups, C)`` groups (a divisor of any
    width: 8 for the usual multiples of 8)."""
    groups = math.gcd(groups, x.shape[-1])
    if x.shape[-1] // groups * x.shape[1] * x.shape[2] == 1:  # (static shapes)
        raise ValueError(
            f"ResNetEncoder: GroupNorm with {groups} groups of {x.shape[-1]} channels on a "
            f"{x.shape[1]}x{x.shape[2]} map normalizes each value by itself, a constant "
            "output whatever the image: use fewer `norm_groups`, wider stages or larger images."
        )
    return nn.GroupNorm(num_groups=groups, name=name)(x)


class _PreActBlock(nn.Module):
    """A pre-activation basic block: ``x + conv(act(norm(conv(act(norm(x))))))``.

    When the stride or width changes, the shortcut is a 1x1 conv of the pre-activated input
    (He et al., 2016b), so both branches start from the same normalized signal.
    """

    width: int
    stride: int
    activation: str
    norm_groups: int
    kernel_init: str = "lecun_normal"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        act = get_activation(self.activation)
        # Convs feeding a GroupNorm (or the next block's) carry no bias: the norm's own bias
        # makes it redundant.
        conv = functools.partial(
            nn.Conv, self.width, use_bias=False, kernel_init=get_initializer(self.kernel_init)
        )
        pre = act(_group_norm(x, self.norm_groups))
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.width:
            shortcut = conv((1, 1), strides=self.stride, name="shortcut")(pre)
        h = conv((3, 3), strides=self.stride, padding="SAME")(pre)
        h = act(_group_norm(h, self.norm_groups))
        h = conv((3, 3), padding="SAME")(h)
        return shortcut + h


class ResNetEncoder(nn.Module):
    """A small pre-activation ResNet with GroupNorm, for 32x32 images (CIFAR-10/100, STL-10 crops).

    Stem ``Conv 3x3 (stem_width)``, then one stage per entry of ``widths``: ``blocks_per_stage``
    pre-activation basic blocks (the first of a stage with that stage's stride), then a final
    ``GroupNorm -> act`` (pre-activation networks end un-normalized otherwise). With the default
    strides (1, 2, 2) a 32x32 input gives an 8x8 map, which is ``local`` (DIM's 8x8 local
    features for 32x32 images). ``features`` is its global average pool ``[batch, widths[-1]]``
    and ``global_ = Dense(latent_dim)(features)``: no extra fully connected layer, the pooled
    ResNet features already are the penultimate layer.

    Normalization is GroupNorm with ``gcd(norm_groups, width)`` groups: batch-independent (see
    the module docstring) and with no running statistics to carry in the train state.

    Attributes:
      widths: channels of each stage; ``local`` has ``widths[-1]`` channels.
      strides: stride of the first block of each stage (SAME padding: size / stride, rounded
        up). Inputs need ``H, W >= prod(strides)``.
      blocks_per_stage: residual blocks per stage, one int for all stages or one per stage.
      stem_width: channels of the stem convolution.
      latent_dim: width ``D`` of ``global_``.
      activation: name of the activation.
      norm_groups: the number of GroupNorm groups (reduced to a divisor of the width).
      compute_dtype: matmul dtype of the final Dense layer (convs stay float32).
      kernel_init: name of the weight initializer of every conv and Dense layer.

    References:
      He et al., "Identity Mappings in Deep Residual Networks", ECCV 2016.
      Wu and He, "Group Normalization", ECCV 2018.
    """

    widths: Sequence[int] = (64, 128, 256)
    strides: Sequence[int] = (1, 2, 2)
    blocks_per_stage: int | Sequence[int] = 1
    stem_width: int = 64
    latent_dim: int = 64
    activation: str = "relu"
    norm_groups: int = 8
    compute_dtype: str | None = None
    kernel_init: str = "lecun_normal"

    def __post_init__(self):
        _checks.check_int_sequences("ResNetEncoder", widths=self.widths, strides=self.strides)
        blocks = self.blocks_per_stage  # one count, or one per stage
        check = _checks.check_int_sequences if isinstance(blocks, Sequence) else _checks.check_ints
        check("ResNetEncoder", blocks_per_stage=blocks)
        _checks.check_ints(
            "ResNetEncoder",
            stem_width=self.stem_width,
            latent_dim=self.latent_dim,
            norm_groups=self.norm_groups,
        )
        super().__post_init__()

    @nn.compact
    def __call__(self, images: Array) -> EncoderOutput:
        """``images`` ``[batch, H, W, C]`` -> `EncoderOutput` (``local`` ``[batch, 8, 8, 256]`` for
        32x32 inputs with the defaults)."""
        widths, strides = tuple(self.widths), tuple(self.strides)
        blocks = _tuple(self.blocks_per_stage)
        if len(blocks) == 1:
            blocks = blocks * len(widths)
        if not widths or len(strides) != len(widths) or len(blocks) != len(widths):
            raise ValueError(
                f"ResNetEncoder needs one stride and one block count per stage, got widths="
                f"{widths}, strides={strides}, blocks_per_stage={self.blocks_per_stage}."
            )
        downsampling = math.prod(strides)
        _check_images(images, "ResNetEncoder", downsampling, f"strides {strides}")
        check_compute_dtype(self.compute_dtype)
        act = get_activation(self.activation)
        init = get_initializer(self.kernel_init)
        h = nn.Conv(self.stem_width, (3, 3), padding="SAME", kernel_init=init, name="stem")(images)
        for stage, (width, stride, n_blocks) in enumerate(
            zip(widths, strides, blocks, strict=True)
        ):
            for block in range(n_blocks):
                h = _PreActBlock(
                    width,
                    stride if block == 0 else 1,
                    self.activation,
                    self.norm_groups,
                    self.kernel_init,
                    name=f"stage{stage}_block{block}",
                )(h)
        local = act(_group_norm(h, self.norm_groups, name="final_norm"))
        features = jnp.mean(local, axis=(1, 2))  # [batch, widths[-1]]
        global_ = dense(self.latent_dim, self.compute_dtype, self.kernel_init, name="global")(
            features
        )
        return EncoderOutput(local=local, features=features, global_=global_)


_ENCODERS: dict[str, type[nn.Module]] = {
    "mlp": MLPEncoder,
    "conv": ConvEncoder,
    "resnet": ResNetEncoder,
}


def available_encoders() -> tuple[str, ...]:
    """The registered encoders' names (`get_encoder`, `register_encoder`)."""
    return tuple(_ENCODERS)


def register_encoder(name: str, cls: type[nn.Module], *, override: bool = False) -> None:
    """Registers an encoder module class (called as ``cls(**hparams)``) under ``name``
    (``override``: in place of an encoder of that name).

    ``cls(**hparams).apply(params, images)`` must return an `EncoderOutput`.
    """
    _checks.register("encoder", name, cls, _ENCODERS, base=nn.Module, override=override)


def get_encoder(name: str, **hparams) -> nn.Module:
    """Builds the encoder registered as ``name``: ``get_encoder("conv", latent_dim=64)``.

    Lists (e.g. from a config) are turned into tuples, so the module stays hashable.
    """
    return _checks.build_registered("encoder", name, _ENCODERS, hparams)
