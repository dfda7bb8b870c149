"""Critics: Flax Linen modules that map paired samples to a ``[batch, batch]`` score matrix.

``critic.apply(params, x, y)`` with ``x`` ``[batch, dim_x]`` and ``y`` ``[batch, dim_y]`` returns
``scores`` ``[batch, batch]`` with ``scores[i, j] = f(x_i, y_j)``, ready for `mi_jax.bounds`.

* `SeparableCritic`: ``f(x, y) = g(x)^T h(y)`` with two MLPs, cost linear in the batch.
* `BilinearCritic`: ``f(x, y) = x^T W y``.
* `InnerProductCritic`: ``f(x, y) = x^T y / temperature`` (no parameters; x and y of equal width).
* `ConcatCritic`: one MLP on ``[x_i, y_j]`` for all ``batch^2`` pairs; the most expressive and the
  most expensive. ``chunk_size`` evaluates it in row blocks under `jax.checkpoint`, so memory
  grows linearly in the batch (batch 1024 in a few hundred MB), with the same scores up to an
  ulp (XLA may fuse a block's matmuls differently: ~6e-8 at scores of order 1) and the same
  gradients up to float rounding (~1e-6: the backward pass sums in blocks).
* `PairMLP`: a scalar network on the joint pairs only (FLO's ``u(x, y)``), ``[batch]``.
* `BaselineMLP`: a scalar network on ``y`` (TUBA's learned log baseline ``log a(y)``), ``[batch]``.

Every network built of `dense` layers (all but the bilinear and inner-product critics) takes
``compute_dtype``: ``None``/``"float32"`` (default) or ``"bfloat16"``, which runs its matmuls in
mixed precision (`dense`, `bf16_matmul`) with the same parameters. Every network with weights
(all but `InnerProductCritic`, which has none) takes ``kernel_init``, the name of its weight
initializer: ``"lecun_normal"`` (Flax's default) or ``"glorot_uniform"`` (Keras's, which the
published staircase code used; `get_initializer`). For training a critic through a bound with an
exponential term (NWJ, MINE/DV, TUBA, FLO) give ``"glorot_uniform"``, as `mi_jax.estimate_mi`
and the staircase config do: LeCun-normal (256, 256) MLPs start with scores large enough for
those bounds to diverge (`mi_jax.training.make_ensemble`). The default stays Flax's, with
which the IB, InfoMax-VAE, halves and MIGE-toy results in the README were measured.
"""

import functools
import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
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
    """The element-wise activation registered as ``name`` (``"relu"``, ...); KeyError otherwise."""
    if name not in _ACTIVATIONS:
        raise _checks.unknown_name_error("activation", name, _ACTIVATIONS)
    return _ACTIVATIONS[name]


_INITIALIZERS: dict[str, Callable[..., Array]] = {
    "lecun_normal": nn.initializers.lecun_normal(),
    "glorot_uniform": nn.initializers.glorot_uniform(),
    "glorot_normal": nn.initializers.glorot_normal(),
    "he_normal": nn.initializers.he_normal(),
}


def get_initializer(name: str) -> Callable[..., Array]:
    """The kernel initializer registered as ``name`` (``"lecun_normal"``, ``"glorot_uniform"``,
    ``"glorot_normal"``, ``"he_normal"``); biases always start at zero."""
    if name not in _INITIALIZERS:
        raise _checks.unknown_name_error("kernel_init", name, _INITIALIZERS)
    return _INITIALIZERS[name]


_COMPUTE_DTYPES = ("float32", "bfloat16")


def dense(
    features: int,
    compute_dtype: str | None = None,
    kernel_init: str = "lecun_normal",
    **kwargs,
) -> nn.Dense:
    """`nn.Dense` with float32 parameters; float32 activations and outputs on float32 (or
    half-precision) inputs, float64 ones on float64 inputs under ``jax_enable_x64``.

    ``compute_dtype="bfloat16"`` runs the layer's forward matmul and the input gradient's
    backward product on bfloat16 copies of their operands, accumulating in float32
    (`bf16_matmul`): mixed precision as on TPUs, where a default-precision float32 matmul is
    already one bfloat16 pass. The kernel gradient ``x.T @ g`` stays a float32 product (faster
    on XLA:CPU). Same parameter tree as the float32 layer; biases, optimizer and everything
    outside the matmuls stay float32. Being a `jax.custom_vjp`, the bfloat16 layer has reverse
    mode only: `jax.grad`, `jax.hessian` and Hessian-vector products work, a pure forward-mode
    `jax.jvp` / `jax.jacfwd` raises (use the float32 layer for those).
    """
    check_compute_dtype(compute_dtype)
    kwargs["kernel_init"] = get_initializer(kernel_init)
    if compute_dtype in (None, "float32"):
        return nn.Dense(features, **kwargs)
    return nn.Dense(features, dot_general=_bf16_dense_dot_general, **kwargs)


def _layers(module: nn.Module) -> Callable[..., nn.Dense]:
    """`dense` with ``module``'s ``compute_dtype`` and ``kernel_init``."""
    return functools.partial(
        dense, compute_dtype=module.compute_dtype, kernel_init=module.kernel_init
    )


def check_compute_dtype(compute_dtype: str | None) -> None:
    """A KeyError naming ``compute_dtype`` unless it is ``None`` (float32) or a known name."""
    if compute_dtype is not None and compute_dtype not in _COMPUTE_DTYPES:
        raise _checks.unknown_name_error("compute_dtype", compute_dtype, _COMPUTE_DTYPES)


@jax.custom_vjp
def bf16_matmul(x: Array, w: Array) -> Array:
    """``x @ w`` (``[..., n] @ [n, m]``) on bfloat16 operands with float32 accumulation.

    The input gradient ``g @ w.T`` is also a bfloat16 product (cotangent rounded to bfloat16);
    the kernel gradient ``x.T @ g`` is float32. Autodiff of a bfloat16 forward alone would
    multiply the float32 cotangent by the kernel in float32, as slow as no cast at all.
    """
    return _bf16_matmul_fwd(x, w)[0]


def _bf16_matmul_fwd(x, w):
    wb = w.astype(jnp.bfloat16)
    y = jnp.matmul(x.astype(jnp.bfloat16), wb, preferred_element_type=jnp.float32)
    # The bf16 kernel is kept for the input gradient, which contracts its output axis directly
    # (an explicit wb.T made XLA:CPU upcast that dot to float32).
    return y, (x, wb)


def _bf16_matmul_bwd(residuals, g):
    x, wb = residuals
    dx = jax.lax.dot_general(
        g.astype(jnp.bfloat16),
        wb,
        (((g.ndim - 1,), (1,)), ((), ())),
        preferred_element_type=jnp.float32,
    )
    # The kernel gradient x.T @ g contracts the batch and stays float32: on XLA:CPU this dot
    # (Eigen) measured faster than its bf16 version (YNNPACK), and it is exact up to rounding.
    batch_axes = tuple(range(x.ndim - 1))
    dw = jax.lax.dot_general(x, g, ((batch_axes, batch_axes), ((), ())))
    return dx.astype(x.dtype), dw  # float64 operands (under x64): float64 gradients


bf16_matmul.defvjp(_bf16_matmul_fwd, _bf16_matmul_bwd)


def _bf16_dense_dot_general(lhs, rhs, dimension_numbers, precision=None, **kwargs):
    """The ``dot_general`` Flax's `nn.Dense` calls, routed to `bf16_matmul`."""
    del precision, kwargs
    (lhs_contract, rhs_contract), (lhs_batch, _) = dimension_numbers
    if tuple(lhs_contract) != (lhs.ndim - 1,) or tuple(rhs_contract) != (0,) or lhs_batch:
        raise NotImplementedError(f"bf16 Dense expects x @ kernel, got {dimension_numbers}.")
    return bf16_matmul(lhs, rhs)


def _check_pair(x, y) -> None:
    for name, a in (("x", x), ("y", y)):
        if jnp.ndim(a) != 2:
            raise ValueError(f"`{name}` must have shape [batch, dim], got shape {jnp.shape(a)}.")
        _checks.check_float(a, name)
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"`x` and `y` must have the same batch size, got {x.shape[0]} and {y.shape[0]}."
        )


def _check_layers(owner: str, module: nn.Module) -> None:
    """The layer settings of an MLP critic, checked when it is built (as the encoders check
    theirs): a bad width or an unknown name used to surface at the first ``init``."""
    _checks.check_int_sequences(owner, hidden=module.hidden)
    get_activation(module.activation)
    check_compute_dtype(module.compute_dtype)
    get_initializer(module.kernel_init)


class MLP(nn.Module):
    """``Dense -> act`` for each hidden width, then a linear ``Dense(out_dim)``.

    Attributes:
      hidden: widths of the hidden layers.
      out_dim: output width.
      activation: name of the activation (see `get_activation`).
      compute_dtype: matmul precision (see `dense`).
      kernel_init: name of the weight initializer (see `get_initializer`).
    """

    hidden: Sequence[int] = (256, 256)
    out_dim: int = 32
    activation: str = "relu"
    compute_dtype: str | None = None
    kernel_init: str = "lecun_normal"

    def __post_init__(self):
        _check_layers("MLP", self)
        _checks.check_ints("MLP", out_dim=self.out_dim)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array) -> Array:
        act = get_activation(self.activation)
        layer = _layers(self)
        for width in self.hidden:
            x = act(layer(width)(x))
        return layer(self.out_dim)(x)


class SeparableCritic(nn.Module):
    """``f(x, y) = g(x)^T h(y)``, with g and h MLPs into a shared ``embed_dim`` space.

    With ``bilinear=True``, plus ``x^T W y`` with ``W`` ``[dim_x, dim_y]`` initialized at zero
    (the critic starts as the plain one; the gradient in ``W`` is not zero there): the
    log density ratio of a Gaussian pair is bilinear up to terms in x or y alone, and in many
    dimensions the MLPs overfit a few thousand pairs before they learn it.
    """

    hidden: Sequence[int] = (256, 256)
    embed_dim: int = 32
    activation: str = "relu"
    compute_dtype: str | None = None
    bilinear: bool = False
    kernel_init: str = "lecun_normal"

    def __post_init__(self):
        _check_layers("SeparableCritic", self)
        _checks.check_ints("SeparableCritic", embed_dim=self.embed_dim)
        _checks.check_bools("SeparableCritic", bilinear=self.bilinear)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, y: Array) -> Array:
        """``x`` ``[batch, dim_x]``, ``y`` ``[batch, dim_y]`` -> ``[batch, batch]``."""
        _check_pair(x, y)
        mlp = functools.partial(
            MLP, self.hidden, self.embed_dim, self.activation, self.compute_dtype, self.kernel_init
        )
        gx, hy = mlp(name="g")(x), mlp(name="h")(y)
        scores = gx @ hy.T
        if self.bilinear:
            w = self.param("W", nn.initializers.zeros, (x.shape[1], y.shape[1]), jnp.float32)
            # In float32 at least: in float16 |x^T W y| past 65504 was inf (scores 1e5 there).
            x, y = (_checks.at_least_float32(jnp.asarray(a)) for a in (x, y))
            scores = scores + (x @ w.astype(x.dtype)) @ y.T
        return scores


class BilinearCritic(nn.Module):
    """``f(x, y) = x^T W y`` with a learned ``W`` ``[dim_x, dim_y]``.

    Attributes:
      kernel_init: name of ``W``'s initializer (see `get_initializer`; fan-in ``dim_x``,
        fan-out ``dim_y``).
    """

    kernel_init: str = "lecun_normal"

    def __post_init__(self):
        get_initializer(self.kernel_init)  # an unknown name fails here
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, y: Array) -> Array:
        """``x`` ``[batch, dim_x]``, ``y`` ``[batch, dim_y]`` -> ``[batch, batch]``."""
        _check_pair(x, y)
        init = get_initializer(self.kernel_init)
        w = self.param("W", init, (x.shape[1], y.shape[1]), jnp.float32)
        return x @ w @ y.T


class InnerProductCritic(nn.Module):
    """``f(x, y) = x^T y / temperature`` (parameter-free, so no ``kernel_init``; for
    already-embedded x and y)."""

    temperature: float = 1.0

    def __post_init__(self):
        if not _checks.is_positive_finite(self.temperature):
            raise ValueError(
                f"`temperature` must be a positive finite number, got {self.temperature!r}."
            )
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, y: Array) -> Array:
        """``x`` ``[batch, dim]``, ``y`` ``[batch, dim]`` -> ``[batch, batch]``."""
        _check_pair(x, y)
        if x.shape[1] != y.shape[1]:
            raise ValueError(
                f"InnerProductCritic needs `x` and `y` of equal width, got {x.shape[1]} and "
                f"{y.shape[1]}; use a separable or bilinear critic instead."
            )
        # float32 scores, as every critic's, from half-precision embeddings too.
        x, y = (_checks.at_least_float32(jnp.asarray(a)) for a in (x, y))
        return x @ y.T / self.temperature


class ConcatCritic(nn.Module):
    """A joint MLP ``f(x, y) = MLP([x, y])`` evaluated on all ``batch^2`` pairs.

    The first layer is linear, so ``W [x_i; y_j] = W_x x_i + W_y y_j``: it is computed once per
    sample and broadcast over pairs, and only the later layers run on ``batch^2`` rows.
    ``W_x`` and ``W_y`` are initialized as two layers, each with its own fan-in (``dim_x``,
    ``dim_y``), not as one layer of fan-in ``dim_x + dim_y``: with the default LeCun-normal
    kernels the first pre-activations start about sqrt(2) larger when ``dim_x = dim_y``
    (Glorot-uniform: ~4 %). The same functions, another starting point.

    Attributes:
      hidden: widths of the hidden layers (at least one).
      activation: name of the activation.
      chunk_size: if set, evaluate rows of x in blocks of this size under `jax.checkpoint`, so
        activations of only one block are alive at a time, in the forward and in the backward
        pass (a batch it does not divide ends in a padded block). ``None`` evaluates all pairs
        at once (fastest for small batches).
      compute_dtype: matmul precision (see `dense`).
      kernel_init: name of the weight initializer (see `get_initializer`).
    """

    hidden: Sequence[int] = (256, 256)
    activation: str = "relu"
    chunk_size: int | None = None
    compute_dtype: str | None = None
    kernel_init: str = "lecun_normal"

    def __post_init__(self):
        _check_layers("ConcatCritic", self)
        if not self.hidden:
            raise ValueError("ConcatCritic needs at least one hidden layer (`hidden`).")
        if self.chunk_size is not None and not (
            _checks.is_int(self.chunk_size) and self.chunk_size >= 1
        ):
            raise ValueError(
                f"`chunk_size` must be a positive integer or None, got {self.chunk_size!r}."
            )
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, y: Array) -> Array:
        """``x`` ``[batch, dim_x]``, ``y`` ``[batch, dim_y]`` -> ``[batch, batch]``."""
        _check_pair(x, y)
        batch = x.shape[0]
        first = self.hidden[0]
        # Split first layer: no bias on the x part, the shared bias sits on the y part.
        layer = _layers(self)
        ax = layer(first, use_bias=False, name="first_x")(x)  # [batch, first]
        ay = layer(first, name="first_y")(y)  # [batch, first]
        rest_hidden = tuple(self.hidden[1:])
        if self.chunk_size is None or self.chunk_size >= batch:
            _, scores = _RowBlock(
                rest_hidden, self.activation, self.compute_dtype, self.kernel_init, name="rows"
            )((), ay, ax)
            return scores
        # A batch that is no multiple of the chunk (a held-out split, say) gets a last block
        # padded with rows of zeros, whose scores are computed and dropped.
        ax = jnp.pad(ax, ((0, -batch % self.chunk_size), (0, 0)))
        blocks = ax.reshape(-1, self.chunk_size, first)
        # A lifted scan over row blocks; parameters are broadcast (shared, same tree as the dense
        # path) and each block is rematerialized in the backward pass, so only one block's
        # activations are alive at a time. ``ay`` is a broadcast input, not the carry: carried,
        # the backward pass kept a copy of it per block (batch^2 / chunk * first floats, 2.1 GB
        # at batch 4096 in blocks of 8: memory quadratic in the batch).
        scan_rows = nn.scan(
            nn.remat(_RowBlock),
            variable_broadcast="params",
            split_rngs={"params": False},
            in_axes=(nn.broadcast, 0),
            out_axes=0,
        )
        _, scores = scan_rows(
            rest_hidden, self.activation, self.compute_dtype, self.kernel_init, name="rows"
        )((), ay, blocks)
        return scores.reshape(-1, batch)[:batch]


class _PairHead(nn.Module):
    """Hidden layers after the first, then a scalar output, applied on the last axis."""

    hidden: tuple[int, ...]
    activation: str
    compute_dtype: str | None = None
    kernel_init: str = "lecun_normal"

    @nn.compact
    def __call__(self, h: Array) -> Array:
        act = get_activation(self.activation)
        layer = _layers(self)
        for i, width in enumerate(self.hidden):
            h = act(layer(width, name=f"dense_{i}")(h))
        return layer(1, name="out")(h)[..., 0]


class _RowBlock(nn.Module):
    """One block of rows of the concat critic (scanned; shares the head's parameters)."""

    hidden: tuple[int, ...]
    activation: str
    compute_dtype: str | None = None
    kernel_init: str = "lecun_normal"

    @nn.compact
    def __call__(self, carry: tuple, ay: Array, ax_block: Array) -> tuple[tuple, Array]:
        """``ay`` ``[batch, first]``, ``ax_block`` ``[rows, first]`` -> ``(carry, [rows, batch])``
        (``carry``: an empty one, for `nn.scan`)."""
        act = get_activation(self.activation)
        h = act(ax_block[:, None, :] + ay[None, :, :])
        head = _PairHead(
            self.hidden, self.activation, self.compute_dtype, self.kernel_init, name="head"
        )
        return carry, head(h)


class PairMLP(nn.Module):
    """A scalar network on joint pairs: ``u(x_i, y_i)`` ``[batch]`` (FLO's second network)."""

    hidden: Sequence[int] = (256, 256)
    activation: str = "relu"
    compute_dtype: str | None = None
    kernel_init: str = "lecun_normal"

    def __post_init__(self):
        _check_layers("PairMLP", self)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, y: Array) -> Array:
        """``x`` ``[batch, dim_x]``, ``y`` ``[batch, dim_y]`` -> ``[batch]``."""
        _check_pair(x, y)
        mlp = MLP(self.hidden, 1, self.activation, self.compute_dtype, self.kernel_init)
        return mlp(jnp.concatenate([x, y], axis=-1))[:, 0]


class BaselineMLP(nn.Module):
    """A learned log baseline ``log a(y_j)`` ``[batch]`` for TUBA and I_alpha."""

    hidden: Sequence[int] = (64,)
    activation: str = "relu"
    compute_dtype: str | None = None
    kernel_init: str = "lecun_normal"

    def __post_init__(self):
        _check_layers("BaselineMLP", self)
        super().__post_init__()

    @nn.compact
    def __call__(self, y: Array) -> Array:
        """``y`` ``[batch, dim_y]`` -> ``[batch]``."""
        if jnp.ndim(y) != 2:
            raise ValueError(f"`y` must have shape [batch, dim], got shape {jnp.shape(y)}.")
        _checks.check_float(y, "y")
        return MLP(self.hidden, 1, self.activation, self.compute_dtype, self.kernel_init)(y)[:, 0]


def soft_clip(scores: Array, clip: float | None) -> Array:
    """``c tanh(s / c)`` (AMDIM, Bachman et al. 2019): identity near 0, bounded by ``c``.

    ``None``, 0 or ``inf`` (the limit ``c -> inf``): no clipping. Keeps critic scores finite
    where a bound's optimum is not (the log density ratio between disjoint inputs), or where an
    adversary (an encoder minimizing the bound) can push them without limit.
    """
    check_clip(clip)
    if clip_is_off(clip):  # (inf tanh(s / inf) would read inf * 0 = NaN)
        return scores
    return clip * jnp.tanh(scores / clip)


def clip_is_off(clip: float | None) -> bool:
    """Whether `soft_clip`'s ``c`` means no clipping: ``None``, 0 or ``inf``."""
    return not clip or math.isinf(clip)


def check_clip(clip: float | None, name: str = "clip") -> None:
    """`soft_clip`'s ``c``: a positive number, or None / 0 / ``inf`` for none (``c tanh(s / c)``
    is even in ``c``: a negative one would clip at ``|c|`` silently)."""
    if clip is not None and not (_checks.is_number(clip) and clip >= 0):  # NaN fails >= 0 too
        raise ValueError(f"`{name}` must be a positive number (None, 0 or inf: off), got {clip!r}.")


class ClippedCritic(nn.Module):
    """Any critic with `soft_clip` applied to its ``[batch, batch]`` scores."""

    critic: nn.Module
    clip: float | None

    @nn.compact
    def __call__(self, x: Array, y: Array) -> Array:
        return soft_clip(self.critic(x, y), self.clip)


_CRITICS: dict[str, type[nn.Module]] = {
    "separable": SeparableCritic,
    "bilinear": BilinearCritic,
    "inner_product": InnerProductCritic,
    "concat": ConcatCritic,
}


def available_critics() -> tuple[str, ...]:
    """The registered critics' names (`get_critic`, `register_critic`)."""
    return tuple(_CRITICS)


def register_critic(name: str, cls: type[nn.Module], *, override: bool = False) -> None:
    """Registers a critic module class (called as ``cls(**hparams)``) under ``name``;
    ``override`` replaces a critic of that name."""
    _checks.register("critic", name, cls, _CRITICS, base=nn.Module, override=override)


def critic_fields(name: str) -> tuple[str, ...]:
    """The hyperparameters the critic registered as ``name`` takes (its module's fields)."""
    return tuple(sorted(_checks.registered_fields("critic", name, _CRITICS)))


def get_critic(name: str, **hparams) -> nn.Module:
    """Builds the critic registered as ``name``: ``get_critic("concat", hidden=(256, 256))``."""
    return _checks.build_registered("critic", name, _CRITICS, hparams)


def flops_concat_critic(batch: int, dim_x: int, dim_y: int, hidden: Sequence[int]) -> int:
    """Forward FLOPs (2 per multiply-add) of `ConcatCritic` on one ``[batch, batch]`` matrix."""
    first = hidden[0]
    flops = 2 * batch * (dim_x + dim_y) * first
    widths = list(hidden) + [1]
    for a, b in zip(widths[:-1], widths[1:], strict=True):
        flops += 2 * batch * batch * a * b
    return flops
