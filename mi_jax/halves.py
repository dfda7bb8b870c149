r"""The MNIST-halves study of Tschannen et al. (ICLR 2020): MI between the top and bottom half.

Two views of an image ``x``: its top half ``x_1`` and its bottom half ``x_2`` (optionally with
small Gaussian noise). Encoders ``g_1, g_2`` (separate parameters) and a critic ``f`` are trained
to maximize a bound on ``I(g_1(x_1); g_2(x_2))``; the representation ``g_1(x_1)`` is then judged
by a linear classifier. With a *bijective* encoder (`RealNVPEncoder`, additive couplings) the
true MI ``I(g_1(x_1); g_2(x_2)) = I(x_1; x_2)`` cannot change during training, so whatever
improves the representation is not "more information" — the point of the study.

Encoders of a half-image ``[B, h, W, C]`` to ``[B, D]`` (`get_half_encoder`):

* ``"mlp"``: flatten, MLP (``critics.MLP``).
* ``"realnvp"`` `RealNVPEncoder`: flatten, additive coupling layers (volume preserving,
  exactly invertible; ``D = h W C``).
* ``"conv"`` `HalfConvEncoder`: two 3x3 convs (the second stride 2) and a Dense layer.

`HalvesModel` pairs two encoders with a critic and one bound from `mi_jax.training`'s
`BoundEnsemble` (any registered critic and bound).

Reference:
  Tschannen, Djolonga, Rubenstein, Gelly & Lucic, "On Mutual Information Maximization for
  Representation Learning", ICLR 2020. https://arxiv.org/abs/1907.13625
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from mi_jax import _checks, training
from mi_jax.critics import MLP, get_activation
from mi_jax.encoders import PatchConv
from mi_jax.types import Array, ArrayLike, PRNGKey, PyTree


def split_halves(images: ArrayLike) -> tuple[Array, Array]:
    """``images`` ``[N, H, W, C]`` -> ``(top [N, H/2, W, C], bottom [N, H/2, W, C])``.

    Raises:
      ValueError: ``images`` is not rank 4 or ``H`` is odd (the halves would differ in shape).
    """
    shape = jnp.shape(images)
    if len(shape) != 4:
        raise ValueError(f"`images` must have shape [N, H, W, C], got {shape}.")
    if shape[1] % 2:
        raise ValueError(
            f"`images` must have an even height to split into two equal halves, got H = "
            f"{shape[1]} (shape {shape})."
        )
    half = shape[1] // 2
    return images[:, :half], images[:, half:]


def add_noise(key: PRNGKey, views: Array, std: float) -> Array:
    """``views + std * N(0, 1)`` (``std = 0``: unchanged; ``config.noise_std`` in the study)."""
    _checks.check_key(key, "key")
    if not (_checks.is_number(std) and 0 <= std < float("inf")):
        raise ValueError(f"`std` must be finite and >= 0, got {std!r}.")
    if std == 0:
        return views
    return views + std * jax.random.normal(key, views.shape, views.dtype)


def _flat(x: ArrayLike) -> Array:
    return jnp.reshape(x, (jnp.shape(x)[0], -1))  # (a NumPy array too: `.at` below)


class AdditiveCoupling(nn.Module):
    """``z = x`` except ``z[upd] = x[upd] + t(x[cond])``: volume preserving (unit Jacobian
    determinant) and exactly invertible (`inverse` subtracts the same ``t``).

    ``cond`` and ``upd`` split the ``dim`` coordinates in two halves after a fixed permutation
    drawn from ``permutation_seed`` (the first ``dim // 2`` permuted coordinates condition,
    the rest are updated; ``swap`` exchanges the two roles). `RealNVPEncoder` pairs its layers
    as RealNVP alternates its masks: a layer and the next share a split with the roles swapped,
    so every coordinate is updated within two layers.

    Attributes:
      dim: input width ``D``.
      hidden: hidden widths of ``t``.
      permutation_seed: seed of the layer's fixed split.
      swap: update the first ``dim // 2`` permuted coordinates instead of the rest.
      activation: name of ``t``'s activation.
    """

    dim: int
    hidden: Sequence[int] = (256,)
    permutation_seed: int = 0
    swap: bool = False
    activation: str = "relu"

    def setup(self):
        perm = np.random.default_rng(self.permutation_seed).permutation(self.dim)
        first, rest = np.sort(perm[: self.dim // 2]), np.sort(perm[self.dim // 2 :])
        self.cond, self.upd = (rest, first) if self.swap else (first, rest)
        self.shift = MLP(tuple(self.hidden), len(self.upd), self.activation)

    def __call__(self, x: Array) -> Array:
        """``x`` ``[B, D]`` -> ``z`` ``[B, D]``."""
        x = jnp.asarray(x)
        return x.at[:, self.upd].add(self.shift(x[:, self.cond]))

    def inverse(self, z: Array) -> Array:
        """``z`` ``[B, D]`` -> ``x`` ``[B, D]`` (``z[cond] = x[cond]``, so ``t`` is recomputed)."""
        z = jnp.asarray(z)
        return z.at[:, self.upd].add(-self.shift(z[:, self.cond]))


def check_realnvp_input(shape: Sequence[int]) -> None:
    """Raises unless a batch of shape ``[B, ...]`` flattens to ``D >= 2`` values per example:
    a coupling updates half of them from the other half, and with ``D = 1`` one half is empty."""
    if len(shape) < 2 or int(np.prod(shape[1:])) < 2:
        raise ValueError(
            f"RealNVPEncoder needs at least 2 values per example (a coupling updates one half "
            f"from the other), got inputs of shape {tuple(shape)}."
        )


class RealNVPEncoder(nn.Module):
    """A stack of `AdditiveCoupling` layers on the flattened half-image: a bijection of
    ``R^D``, ``D = h W C``, with unit Jacobian determinant (the RealNVP of Dinh et al. 2017
    without the scaling, i.e. NICE's additive coupling).

    Attributes:
      num_layers: coupling layers.
      hidden: hidden widths of each coupling's shift network.
    """

    num_layers: int = 6
    hidden: Sequence[int] = (256,)

    def __post_init__(self):
        _checks.check_int_sequences("RealNVPEncoder", hidden=self.hidden)
        _checks.check_ints("RealNVPEncoder", num_layers=self.num_layers)
        super().__post_init__()

    @nn.compact
    def __call__(self, images: Array, inverse: bool = False) -> Array:
        """``images`` ``[B, h, W, C]`` (or ``[B, D]``) -> ``[B, D]``; with ``inverse=True``,
        ``z`` ``[B, D]`` -> the flattened input it encodes (the layers undone in reverse)."""
        check_realnvp_input(jnp.shape(images))
        z = _flat(images)
        if not jnp.issubdtype(z.dtype, jnp.floating):  # (uint8 pixels wrapped modulo 256)
            z = z.astype(jnp.float32)  # as the Dense layers of the other encoders promote them
        layers = [  # pairs of layers share a random split, roles swapped
            AdditiveCoupling(
                z.shape[1],
                tuple(self.hidden),
                permutation_seed=k // 2,
                swap=k % 2 == 1,
                name=f"coupling{k}",
            )
            for k in range(self.num_layers)
        ]
        if inverse:
            for layer in reversed(layers):
                z = layer.inverse(z)
        else:
            for layer in layers:
                z = layer(z)
        return z


class HalfConvEncoder(nn.Module):
    """``Conv 3x3 (c1) -> act -> Conv 3x3 stride 2 (c2) -> act -> flatten -> Dense(out_dim)``.

    Attributes:
      channels: ``(c1, c2)``.
      out_dim: ``D``.
      activation: name of the activation.
    """

    channels: Sequence[int] = (32, 64)
    out_dim: int = 100
    activation: str = "relu"

    def __post_init__(self):
        _checks.check_int_sequences("HalfConvEncoder", channels=self.channels)
        if len(self.channels) != 2:
            raise ValueError(
                f"HalfConvEncoder: `channels` must be (c1, c2), two widths, got "
                f"{tuple(self.channels)}."
            )
        _checks.check_ints("HalfConvEncoder", out_dim=self.out_dim)
        super().__post_init__()

    @nn.compact
    def __call__(self, images: Array) -> Array:
        """``images`` ``[B, h, W, C]`` -> ``[B, out_dim]``."""
        if images.ndim != 4:
            raise ValueError(
                f"HalfConvEncoder needs half-images [B, h, W, C], got shape {images.shape}."
            )
        act = get_activation(self.activation)
        c1, c2 = self.channels
        # nn.Conv's function, parameters and names; faster when seeds are vmapped (PatchConv).
        h = act(PatchConv(c1, name="Conv_0")(images))
        h = act(PatchConv(c2, strides=(2, 2), name="Conv_1")(h))
        return nn.Dense(self.out_dim)(_flat(h))


class HalfMLPEncoder(nn.Module):
    """Flatten, then `mi_jax.critics.MLP` (``hidden`` widths, linear output of ``out_dim``)."""

    hidden: Sequence[int] = (300, 300)
    out_dim: int = 100
    activation: str = "relu"

    def __post_init__(self):
        _checks.check_int_sequences("HalfMLPEncoder", hidden=self.hidden)
        _checks.check_ints("HalfMLPEncoder", out_dim=self.out_dim)
        super().__post_init__()

    @nn.compact
    def __call__(self, images: Array) -> Array:
        """``images`` ``[B, h, W, C]`` -> ``[B, out_dim]``."""
        return MLP(tuple(self.hidden), self.out_dim, self.activation)(_flat(images))


_HALF_ENCODERS: dict[str, type[nn.Module]] = {
    "mlp": HalfMLPEncoder,
    "realnvp": RealNVPEncoder,
    "conv": HalfConvEncoder,
}


def available_half_encoders() -> tuple[str, ...]:
    """The half-image encoders' names (`get_half_encoder`)."""
    return tuple(_HALF_ENCODERS)


def get_half_encoder(name: str, **hparams) -> nn.Module:
    """Builds the half-image encoder registered as ``name`` (``"mlp"``, ``"realnvp"``,
    ``"conv"``) with its hyperparameters."""
    return _checks.build_registered("half encoder", name, _HALF_ENCODERS, hparams)


@struct.dataclass
class HalvesModel:
    """Encoders ``g_1`` (top), ``g_2`` (bottom) and a one-bound `BoundEnsemble` (critic and the
    bound's extra networks) maximizing ``I(g_1(x_1); g_2(x_2))``.

    Attributes:
      encoder: the encoder architecture (two copies, separate parameters).
      ensemble: exactly one bound with its critic (`mi_jax.training.make_ensemble`).
    """

    encoder: nn.Module = struct.field(pytree_node=False)
    ensemble: training.BoundEnsemble = struct.field(pytree_node=False)

    def __post_init__(self):
        if len(self.ensemble.bounds) != 1:
            raise ValueError(f"HalvesModel takes one bound, got {self.ensemble.names}.")

    def init(self, rng: PRNGKey, top: Array, bottom: Array) -> tuple[PyTree, PyTree]:
        """``(params, bound_states)`` from a batch of views ``[B, h, W, C]``."""
        _checks.check_key(rng, "rng")
        k1, k2, k3 = jax.random.split(rng, 3)
        params = {"top": self.encoder.init(k1, top), "bottom": self.encoder.init(k2, bottom)}
        z1 = self.encoder.apply(params["top"], top)
        z2 = self.encoder.apply(params["bottom"], bottom)
        params["critic"], states = self.ensemble.init(k3, z1, z2)
        return params, states

    def value(
        self, params: PyTree, bound_states: PyTree, top: Array, bottom: Array
    ) -> tuple[Array, PyTree]:
        """``(bound value [], new_bound_states)`` on a batch of views ``[B, h, W, C]`` each."""
        if jnp.shape(top)[0] != jnp.shape(bottom)[0]:
            raise ValueError(
                f"`top` and `bottom` must hold the same number of views (paired by index), got "
                f"shapes {jnp.shape(top)} and {jnp.shape(bottom)}."
            )
        z1 = self.encoder.apply(params["top"], top)
        z2 = self.encoder.apply(params["bottom"], bottom)
        values, states = self.ensemble.apply(params["critic"], bound_states, z1, z2)
        return values[0], states

    def represent(self, params: PyTree, top: Array) -> Array:
        """``g_1(x_1)`` ``[B, D]``: the representation the linear classifier reads."""
        return self.encoder.apply(params["top"], top)
