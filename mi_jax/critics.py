"""Critics: Flax Linen modules that map paired samples to a ``[batch, batch]`` score matrix.

``critic.apply(params, x, y)`` with ``x`` ``[batch, dim_x]`` and ``y`` ``[batch, dim_y]`` returns
``scores`` ``[batch, batch]`` with ``scores[i, j] = f(x_i, y_j)``, ready for `mi_jax.bounds`.

* `SeparableCritic`: ``f(x, y) = g(x)^T h(y)`` with two MLPs, cost linear in the batch.
* `BilinearCritic`: ``f(x, y) = x^T W y``.
* `InnerProductCritic`: ``f(x, y) = x^T y / temperature`` (no parameters; x and y of equal width).
* `ConcatCritic`: one MLP on ``[x_i, y_j]`` for all ``batch^2`` pairs; the most expressive and the
  most expensive. ``chunk_size`` evaluates it in row blocks under `jax.checkpoint`, so memory
  grows linearly in the batch (batch 1024 in a few hundred MB), with the same result.
* `PairMLP`: a scalar network on the joint pairs only (FLO's ``u(x, y)``), ``[batch]``.
* `BaselineMLP`: a scalar network on ``y`` (TUBA's learned log baseline ``log a(y)``), ``[batch]``.
"""

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from mi_jax import _checks
from mi_jax.types import Array

_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": nn.relu,
    "gelu": nn.gelu,
    "elu": nn.elu,
    "tanh": jnp.tanh,
    "silu": nn.silu,
    "softplus": nn.softplus,
    "leaky_relu": nn.leaky_relu,
}


def get_activation(name: str) -> Callable[[Array], Array]:
    if name not in _ACTIVATIONS:
        raise _checks.unknown_name_error("activation", name, _ACTIVATIONS)
    return _ACTIVATIONS[name]


def _check_pair(x, y) -> None:
    for name, a in (("x", x), ("y", y)):
        if jnp.ndim(a) != 2:
            raise ValueError(f"`{name}` must have shape [batch, dim], got shape {jnp.shape(a)}.")
        _checks.check_float(a, name)
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"`x` and `y` must have the same batch size, got {x.shape[0]} and {y.shape[0]}."
        )


class MLP(nn.Module):
    """``Dense -> act`` for each hidden width, then a linear ``Dense(out_dim)``.

    Attributes:
      hidden: widths of the hidden layers.
      out_dim: output width.
      activation: name of the activation (see `get_activation`).
    """

    hidden: Sequence[int] = (256, 256)
    out_dim: int = 32
    activation: str = "relu"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        act = get_activation(self.activation)
        for width in self.hidden:
            x = act(nn.Dense(width)(x))
        return nn.Dense(self.out_dim)(x)


class SeparableCritic(nn.Module):
    """``f(x, y) = g(x)^T h(y)``, with g and h MLPs into a shared ``embed_dim`` space."""

    hidden: Sequence[int] = (256, 256)
    embed_dim: int = 32
    activation: str = "relu"

    @nn.compact
    def __call__(self, x: Array, y: Array) -> Array:
        """``x`` ``[batch, dim_x]``, ``y`` ``[batch, dim_y]`` -> ``[batch, batch]``."""
        _check_pair(x, y)
        gx = MLP(self.hidden, self.embed_dim, self.activation, name="g")(x)
        hy = MLP(self.hidden, self.embed_dim, self.activation, name="h")(y)
        return gx @ hy.T


class BilinearCritic(nn.Module):
    """``f(x, y) = x^T W y`` with a learned ``W`` ``[dim_x, dim_y]``."""

    @nn.compact
    def __call__(self, x: Array, y: Array) -> Array:
        """``x`` ``[batch, dim_x]``, ``y`` ``[batch, dim_y]`` -> ``[batch, batch]``."""
        _check_pair(x, y)
        w = self.param("W", nn.initializers.lecun_normal(), (x.shape[1], y.shape[1]))
        return x @ w @ y.T


class InnerProductCritic(nn.Module):
    """``f(x, y) = x^T y / temperature`` (parameter-free; for already-embedded x and y)."""

    temperature: float = 1.0

    @nn.compact
    def __call__(self, x: Array, y: Array) -> Array:
        """``x`` ``[batch, dim]``, ``y`` ``[batch, dim]`` -> ``[batch, batch]``."""
        _check_pair(x, y)
        if x.shape[1] != y.shape[1]:
            raise ValueError(
                f"InnerProductCritic needs `x` and `y` of equal width, got {x.shape[1]} and "
                f"{y.shape[1]}; use a separable or bilinear critic instead."
            )
        return x @ y.T / self.temperature


class ConcatCritic(nn.Module):
    """A joint MLP ``f(x, y) = MLP([x, y])`` evaluated on all ``batch^2`` pairs.

    The first layer is linear, so ``W [x_i; y_j] = W_x x_i + W_y y_j``: it is computed once per
    sample and broadcast over pairs, and only the later layers run on ``batch^2`` rows.

    Attributes:
      hidden: widths of the hidden layers (at least one).
      activation: name of the activation.
      chunk_size: if set, evaluate rows of x in blocks of this size under `jax.checkpoint`, so
        activations of only one block are alive at a time, in the forward and in the backward
        pass. Must divide the batch. ``None`` evaluates all pairs at once (fastest for small
        batches).
    """

    hidden: Sequence[int] = (256, 256)
    activation: str = "relu"
    chunk_size: int | None = None

    @nn.compact
    def __call__(self, x: Array, y: Array) -> Array:
        """``x`` ``[batch, dim_x]``, ``y`` ``[batch, dim_y]`` -> ``[batch, batch]``."""
        _check_pair(x, y)
        if not self.hidden:
            raise ValueError("ConcatCritic needs at least one hidden layer (`hidden`).")
        get_activation(self.activation)  # fail early on an unknown name
        batch = x.shape[0]
        first = self.hidden[0]
        # Split first layer: no bias on the x part, the shared bias sits on the y part.
        ax = nn.Dense(first, use_bias=False, name="first_x")(x)  # [batch, first]
        ay = nn.Dense(first, name="first_y")(y)  # [batch, first]
        rest_hidden = tuple(self.hidden[1:])
        if self.chunk_size is None or self.chunk_size >= batch:
            _, scores = _RowBlock(rest_hidden, self.activation, name="rows")(ay, ax)
            return scores
        if batch % self.chunk_size:
            raise ValueError(
                f"`chunk_size` ({self.chunk_size}) must divide the batch size ({batch})."
            )
        blocks = ax.reshape(batch // self.chunk_size, self.chunk_size, first)
        # A lifted scan over row blocks; parameters are broadcast (shared, same tree as the dense
        # path) and each block is rematerialized in the backward pass, so only one block's
        # activations are alive at a time.
        scan_rows = nn.scan(
            nn.remat(_RowBlock),
            variable_broadcast="params",
            split_rngs={"params": False},
            in_axes=0,
            out_axes=0,
        )
        _, scores = scan_rows(rest_hidden, self.activation, name="rows")(ay, blocks)
        return scores.reshape(batch, batch)


class _PairHead(nn.Module):
    """Hidden layers after the first, then a scalar output, applied on the last axis."""

    hidden: tuple[int, ...]
    activation: str

    @nn.compact
    def __call__(self, h: Array) -> Array:
        act = get_activation(self.activation)
        for i, width in enumerate(self.hidden):
            h = act(nn.Dense(width, name=f"dense_{i}")(h))
        return nn.Dense(1, name="out")(h)[..., 0]


class _RowBlock(nn.Module):
    """One block of rows of the concat critic (scanned; shares the head's parameters)."""

    hidden: tuple[int, ...]
    activation: str

    @nn.compact
    def __call__(self, ay: Array, ax_block: Array) -> tuple[Array, Array]:
        act = get_activation(self.activation)
        h = act(ax_block[:, None, :] + ay[None, :, :])
        return ay, _PairHead(self.hidden, self.activation, name="head")(h)


class PairMLP(nn.Module):
    """A scalar network on joint pairs: ``u(x_i, y_i)`` ``[batch]`` (FLO's second network)."""

    hidden: Sequence[int] = (256, 256)
    activation: str = "relu"

    @nn.compact
    def __call__(self, x: Array, y: Array) -> Array:
        """``x`` ``[batch, dim_x]``, ``y`` ``[batch, dim_y]`` -> ``[batch]``."""
        _check_pair(x, y)
        return MLP(self.hidden, 1, self.activation)(jnp.concatenate([x, y], axis=-1))[:, 0]


class BaselineMLP(nn.Module):
    """A learned log baseline ``log a(y_j)`` ``[batch]`` for TUBA and I_alpha."""

    hidden: Sequence[int] = (64,)
    activation: str = "relu"

    @nn.compact
    def __call__(self, y: Array) -> Array:
        """``y`` ``[batch, dim_y]`` -> ``[batch]``."""
        return MLP(self.hidden, 1, self.activation)(y)[:, 0]


_CRITICS: dict[str, type[nn.Module]] = {
    "separable": SeparableCritic,
    "bilinear": BilinearCritic,
    "inner_product": InnerProductCritic,
    "concat": ConcatCritic,
}


def available_critics() -> tuple[str, ...]:
    return tuple(_CRITICS)


def register_critic(name: str, cls: type[nn.Module]) -> None:
    """Registers a critic module class (called as ``cls(**hparams)``) under ``name``."""
    if name in _CRITICS:
        raise ValueError(f"a critic named {name!r} is already registered.")
    _CRITICS[name] = cls


def get_critic(name: str, **hparams) -> nn.Module:
    """Builds the critic registered as ``name``: ``get_critic("concat", hidden=(256, 256))``."""
    if name not in _CRITICS:
        raise _checks.unknown_name_error("critic", name, _CRITICS)
    cls = _CRITICS[name]
    known = set(cls.__dataclass_fields__) - {"parent", "name"}
    unknown = set(hparams) - known
    if unknown:
        raise TypeError(
            f"unknown hyperparameters {sorted(unknown)} for critic {name!r}; "
            f"known: {sorted(known)}."
        )
    if "hidden" in hparams:
        hparams = dict(hparams, hidden=tuple(hparams["hidden"]))
    return cls(**hparams)


def flops_concat_critic(batch: int, dim_x: int, dim_y: int, hidden: Sequence[int]) -> int:
    """Forward FLOPs (2 per multiply-add) of `ConcatCritic` on one ``[batch, batch]`` matrix."""
    first = hidden[0]
    flops = 2 * batch * (dim_x + dim_y) * first
    widths = list(hidden) + [1]
    for a, b in zip(widths[:-1], widths[1:], strict=True):
        flops += 2 * batch * batch * a * b
    return flops
