"""Sampling tasks with known mutual information, as pure functions of a PRNG key.

Every task is a family indexed by its true MI in nats: ``task.sample(key, mi, batch)`` returns
``x`` ``[batch, dim]`` and ``y`` ``[batch, dim]`` whose MI is exactly ``mi``. ``mi`` may be a
traced value, so a schedule of MI levels (the staircase of Poole et al. 2019) runs inside one
compiled ``lax.scan``.

* ``gaussian``: ``x ~ N(0, I)``, ``y = rho x + sqrt(1 - rho^2) eps`` per coordinate, with
  ``I = -dim/2 log(1 - rho^2)``.
* ``cubic``: the Gaussian task with ``y -> y^3`` (an invertible map: MI unchanged).
* ``spiral``: the Gaussian task with ``x`` rotated in coordinate pairs by an angle that grows with
  ``|x|^2`` (norm-preserving, so invertible; MI unchanged; a non-elementwise nonlinearity).
* ``cauchy``: the Gaussian task with every coordinate of ``x`` and ``y`` mapped to a standard
  Cauchy marginal through the normal and Cauchy CDFs (monotone per coordinate: MI unchanged;
  marginals without a mean or a variance).
* ``student_t``: a multivariate Student-t pair with ``df`` degrees of freedom; its MI is the
  Gaussian term plus a correction that depends only on ``df`` and the dimensions
  (Arellano-Valle, Contreras-Reyes & Genton 2013), so the minimum MI of the family is that
  correction.

Under ``jax_enable_x64`` the samples are float64 (the MI ceiling rises from 12 to 32 nats per
coordinate), drawn from float64 bits: the same key gives other samples than in float32 mode, so
a comparison of the two modes compares other draws as well as other arithmetic.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mi_jax import _checks
from mi_jax.types import Array, ArrayLike, PRNGKey


def _float(a: ArrayLike) -> Array:
    """``a`` as JAX's default float (float32, or float64 with ``jax_enable_x64``)."""
    return jnp.asarray(a, _sample_dtype())


def _check_values(value: ArrayLike, name: str, ok: Callable[[np.ndarray], np.ndarray], what: str):
    """A concrete ``value`` (a number or an array of them) with an entry that is not ``ok``
    (float64 entries in, booleans out) is a ValueError naming ``name`` and saying ``what`` it
    must be; traced: unchecked (the samplers' schedules run in ``lax.scan``)."""
    if isinstance(value, jax.core.Tracer):
        return
    arr = np.asarray(value)
    if not _is_numeric(arr.dtype):
        raise ValueError(f"`{name}` must be {what}, got {value!r:.80}.")
    arr = arr.astype(np.float64)
    if np.any(bad := ~ok(arr)):  # NaN fails every comparison
        raise ValueError(f"`{name}` must be {what}, got {arr[bad].ravel()[:4]}.")


def _is_numeric(dtype) -> bool:
    """Integers and floats, bfloat16 included (numpy's kind of it is "V"); not bools."""
    return jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)


def _check_dim(dim) -> None:
    """A width given as a Python or numpy integer, or a concrete JAX array of them, is checked
    (an integer >= 1); traced under jit or vmap, it is taken as it is."""
    if isinstance(dim, jax.Array):
        _check_values(dim, "dim", lambda a: (a >= 1) & (a == np.round(a)), "an integer >= 1")
    else:
        _checks.check_ints(dim=dim)


def _check_nats(mi: ArrayLike, finite: bool = False) -> None:
    if finite:
        _check_values(mi, "mi", lambda a: np.isfinite(a) & (a >= 0), "finite nats >= 0")
    else:
        _check_values(mi, "mi", lambda a: a >= 0, "nats >= 0")


def rho_from_mi(mi: ArrayLike, dim: int) -> Array:
    """Per-coordinate correlation giving ``mi`` nats (``>= 0``; ``inf``: 1) over ``dim``
    independent Gaussian pairs."""
    _check_dim(dim)
    _check_nats(mi)
    return _rho(mi, dim)


def _rho(mi: ArrayLike, dim: int) -> Array:
    return jnp.sqrt(-jnp.expm1(-2.0 * _float(mi) / dim))


def noise_from_mi(mi: ArrayLike, dim: int) -> Array:
    """``sqrt(1 - rho^2) = exp(-mi / dim)``, the noise's share of each coordinate (``mi >= 0``).

    In closed form: from ``rho``, ``1 - rho^2`` cancels to 0 in float32 once ``mi / dim`` passes
    about 8 (``rho`` rounds to 1, ``y = x``, infinite MI).
    """
    _check_dim(dim)
    _check_nats(mi)
    return _noise(mi, dim)


def _noise(mi: ArrayLike, dim: int) -> Array:
    return jnp.exp(-_float(mi) / dim)


def mi_from_rho(rho: ArrayLike, dim: int) -> Array:
    """``I = -dim/2 log(1 - rho^2)`` for ``dim`` independent pairs of correlation ``rho`` (in
    ``[-1, 1]``).

    In float32, ``1 - rho^2`` loses digits as ``rho`` nears 1: a round trip through
    `rho_from_mi` reads 5.9956 nats for 6 per coordinate, 7.971 for 8, and ``rho`` rounds to 1
    (``inf``) from about 9. There the MI is ``-dim log(noise)`` of `noise_from_mi` (what the
    samplers use), or float64 (``jax_enable_x64``).
    """
    _check_dim(dim)
    _check_values(rho, "rho", lambda a: np.abs(a) <= 1, "a correlation in [-1, 1]")
    return -0.5 * dim * jnp.log1p(-jnp.square(_float(rho)))


def correlated_gaussian(key: PRNGKey, mi: ArrayLike, batch: int, dim: int) -> tuple[Array, Array]:
    """``x ~ N(0, I_dim)``, ``y = rho x + sqrt(1 - rho^2) eps``, with MI ``mi`` nats (``>= 0``;
    at most what float32 samples carry, `max_mi_per_dim` per coordinate: more is an error).

    Returns:
      ``x`` ``[batch, dim]``, ``y`` ``[batch, dim]``.
    """
    _checks.check_key(key)
    _checks.check_ints(batch=batch, dim=dim)
    _check_mi(mi, 0.0, dim)
    return _gaussian_pair(key, mi, batch, dim)


def gaussian_log_ratio(x: ArrayLike, y: ArrayLike, mi: ArrayLike) -> Array:
    """The optimal critic of `correlated_gaussian`: ``scores[i, j] = log p(x_i, y_j) / (p(x_i)
    p(y_j))`` in closed form, with the sampler's ``rho`` for ``mi`` nats (NWJ's optimal critic
    is one more).

    Args:
      x: ``[batch, dim]`` samples of the pair's first half.
      y: ``[batch, dim]`` the paired second half.
      mi: the pair's MI in nats.

    Returns:
      ``[batch, batch]`` scores.
    """
    x, y = jnp.asarray(x), jnp.asarray(y)  # traced too (no value checks)
    if x.ndim != 2 or y.shape != x.shape:
        raise ValueError(
            f"`x` and `y` must both have shape [batch, dim], got {x.shape} and {y.shape}."
        )
    _check_scalar_mi(mi)
    _check_nats(mi, finite=True)  # inf: a zero noise, NaN scores
    dim = x.shape[-1]
    rho, noise = _rho(mi, dim), _noise(mi, dim)
    xi, yj = x[:, None, :], y[None, :, :]  # [B, 1, d], [1, B, d]
    # log p(y | x) - log p(y) with p(y | x) = N(rho x, noise^2): the residual's form keeps
    # float32 exact where 1 - rho^2 and the expanded quadratic cancel (from 8 nats per
    # coordinate: 7.73 nats read at 8, NaN from 9).
    log_ratio = 0.5 * jnp.square(yj) - 0.5 * jnp.square((yj - rho * xi) / noise)
    return jnp.sum(log_ratio, axis=-1) + _float(mi)  # sum over d of -log(noise) = mi


def _gaussian_pair(key: PRNGKey, mi: ArrayLike, batch: int, dim: int) -> tuple[Array, Array]:
    """`correlated_gaussian` without the check of ``mi`` (its callers have checked it)."""
    kx, ke = jax.random.split(key)
    x = jax.random.normal(kx, (batch, dim))
    eps = jax.random.normal(ke, (batch, dim))
    return x, _rho(mi, dim) * x + _noise(mi, dim) * eps


def _checked_df(df: float) -> float:
    """Student-t degrees of freedom, positive and finite, as a Python float (concrete: the MI
    correction is computed on the host in float64, and a sampler closes over it)."""
    if not _checks.is_positive_finite(df):
        raise ValueError(
            f"`df` must be a positive finite number (inf: the gaussian task), got {df!r}."
        )
    return float(df)


def least_sampled_df() -> float:
    """The least ``df`` `student_t` samples in the samplers' float now: 0.234 in float32, 0.029
    under ``jax_enable_x64``.

    A row's scale ``sqrt(df / w)``, ``w ~ chi^2(df)``, passes the float's largest value ``e^L``
    (the row is +-inf) when ``w / 2 < e^(-2 L)``, which has probability about ``e^(-L df)``:
    at df = 0.1 in float32, 1.5e-4 of the rows. Below this df it is more than 1e-9.
    """
    return float(np.log(1e9) / np.log(np.finfo(_sample_dtype()).max))


def _checked_sampled_df(df: float) -> float:
    df = _checked_df(df)
    if df < (least := least_sampled_df()):
        raise ValueError(
            f"`df` of {df:g} is below {least:.3g}, the least Student-t df whose samples stay "
            f"within {_sample_dtype().name}'s range (at df = 0.1 in float32, 1.5e-4 of the rows "
            "are +-inf); use a larger `df`, or float64 (`jax_enable_x64`: from 0.029)."
        )
    return df


# The most Gaussian MI per coordinate float32 samples carry: the noise's share of a
# coordinate, exp(-mi / dim), is 6e-6 at 12 nats, some 50 float32 spacings of a value near 1;
# rounding y to float32 adds under 1e-3 of the noise's variance where |y| < 4 (under 3e-4 nats
# per coordinate), though 0.5 % of the pairs already round to y == x. At 17 nats half of them
# do (an infinite MI, whatever the task reports). The same margin in float64 (the samplers
# draw float64 under `jax_enable_x64`) is 32 nats: exp(-32) = 1.3e-14, some 57 float64 spacings
# of 1; 0.4 % of the pairs round to y == x (96 % at 40 nats).
MAX_MI_PER_DIM = 12.0
MAX_MI_PER_DIM_FLOAT64 = 32.0


def _sample_dtype() -> np.dtype:
    """The samplers' float now: float32, or float64 under ``jax_enable_x64``."""
    return jnp.dtype(jnp.result_type(float))


def max_mi_per_dim() -> float:
    """The most Gaussian MI per coordinate the samples carry in the samplers' float now:
    `MAX_MI_PER_DIM` (float32), `MAX_MI_PER_DIM_FLOAT64` under ``jax_enable_x64``.

    Only while they stay in that float: `mi_jax.estimate_mi` trains in float32, and a float32
    cast of float64 samples past 12 nats per coordinate makes ``y == x`` again (at 30 nats, for
    every pair)."""
    return MAX_MI_PER_DIM_FLOAT64 if _sample_dtype() == np.float64 else MAX_MI_PER_DIM


def _most_mi(min_mi: float, dim: int) -> float:
    """The most MI a family of least MI ``min_mi`` carries in samples of width ``dim``."""
    return min_mi + dim * max_mi_per_dim()


def _check_scalar_mi(mi: ArrayLike) -> None:
    """One MI (static: traced ones too); a ``[dim]`` vector broadcast per coordinate, reading
    its mean as the pair's MI, silently."""
    if np.ndim(mi) != 0:
        raise ValueError(
            f"`mi` must be one number of nats (the pair's total MI), got shape {np.shape(mi)}; "
            "vmap over the MIs for several pairs."
        )


def _check_mi(mi: ArrayLike, min_mi: float, dim: int) -> None:
    """A concrete ``mi`` below the family's least MI, infinite or NaN, or above what the
    samples of width ``dim`` carry (``min_mi + dim * max_mi_per_dim()``) is an error; traced:
    unchecked. An array of MIs is refused whatever its values (a sampler draws one pair)."""
    _check_scalar_mi(mi)
    least = f"a finite number of nats, at least {min_mi:.6g} (this task's least MI)"
    # A float32 copy of ``min_mi`` (a staircase level) may round below it: taken as ``min_mi``
    # (relative: a least MI of 0 has no margin, a negative MI gave NaN samples).
    floor = min_mi - 4 * np.finfo(np.float32).eps * abs(min_mi)
    _check_values(mi, "mi", lambda a: np.isfinite(a) & (a >= floor), least)  # inf gave y = x
    if isinstance(mi, jax.core.Tracer):
        return
    mi = np.asarray(mi).astype(np.float64)
    most = _most_mi(min_mi, dim)
    # (A float32 copy of ``most``, a Student-t task's `Task.max_mi`, may round above it.)
    over = mi > most * (1 + 4 * np.finfo(np.float32).eps)
    if np.any(over):
        raise ValueError(
            f"`mi` of {mi[over].ravel()[:4]} nats is more than {_sample_dtype().name} samples "
            f"of width {dim} carry ({max_mi_per_dim():g} nats per coordinate: {most:.6g}; "
            "beyond it y equals x for some pairs, an infinite MI); use a larger `dim`."
        )


def _spiral(x: Array, speed: float = 0.5) -> Array:
    """Rotates coordinate pairs (0,1), (2,3), ... by ``speed * |x|^2`` radians, per sample.

    Invertible in exact arithmetic; in float32 the angle read back from the rounded output is
    off by ~``speed |x|^2 eps``, which near the ceiling rivals the noise: at 12 nats per
    coordinate in dim 20 a float64 decoder of the samples reads 0.13-0.20 nats (under 0.1 %)
    less than the Gaussian pair's 240, against under 0.004 at 10 nats per coordinate or in dim 2
    (2026-12-05): noise added by rounding, which a critic meets near the ceiling only. The
    loss grows with the angle: at `Task.max_mi` in float32, 1.4 nats (0.2 %) in dim 50 and 10
    (0.8 %) in dim 100 at speed 0.5, 15 (6 %) in dim 20 at speed 5 (a float64 decoder,
    2026-12-05); at speed 0.5 and 10 nats per coordinate it stays under 0.2.
    """
    dim = x.shape[-1]
    pairs = dim // 2
    angle = speed * jnp.sum(jnp.square(x), axis=-1, keepdims=True)  # [batch, 1]
    a, b = x[:, 0 : 2 * pairs : 2], x[:, 1 : 2 * pairs : 2]
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    ra, rb = cos * a - sin * b, sin * a + cos * b
    rotated = jnp.stack([ra, rb], axis=-1).reshape(x.shape[0], 2 * pairs)
    return jnp.concatenate([rotated, x[:, 2 * pairs :]], axis=-1)


def _t_entropy_offset(df: float, dim: int) -> float:
    """Entropy of a standard d-dim Student-t minus its ``log det`` and ``log (df pi)`` parts."""
    from scipy import special  # here: at the top, 0.13 s of every `import mi_jax`

    half_df, half_total = df / 2.0, (df + dim) / 2.0
    return float(
        special.gammaln(half_df)
        - special.gammaln(half_total)
        + half_total * (special.digamma(half_total) - special.digamma(half_df))
    )


def student_t_mi_correction(df: float, dim_x: int, dim_y: int) -> float:
    """MI of a Student-t pair minus the MI of the Gaussian with the same scale matrix (>= 0).

    Computed on the host in float64 (a difference of terms of size ``df log df``: float32 would
    leave only rounding noise beyond df ~ 100).
    """
    df = _checked_df(df)
    _checks.check_ints(dim_x=dim_x, dim_y=dim_y)
    return max(
        0.0,
        _t_entropy_offset(df, dim_x)
        + _t_entropy_offset(df, dim_y)
        - _t_entropy_offset(df, dim_x + dim_y),
    )


def student_t(key: PRNGKey, mi: ArrayLike, batch: int, dim: int, df: float) -> tuple[Array, Array]:
    """Multivariate Student-t pair ``(x, y) = z / sqrt(w / df)``, ``z`` a correlated Gaussian pair,
    ``w ~ chi^2(df)``, with total MI ``mi`` nats (at least `student_t_mi_correction`; at most
    that plus `max_mi_per_dim` per coordinate, what float32 samples carry: more is an error).
    ``df`` at least `least_sampled_df` (0.234 in float32: below it some rows are +-inf).

    Returns:
      ``x`` ``[batch, dim]``, ``y`` ``[batch, dim]``.
    """
    _checks.check_key(key)
    _checks.check_ints(batch=batch, dim=dim)
    df = _checked_sampled_df(df)
    correction = student_t_mi_correction(df, dim, dim)
    _check_mi(mi, correction, dim)
    kz, kw = jax.random.split(key)
    # (Traced, a level below the correction would sample the family's least MI: clamped.)
    gaussian_mi = jnp.maximum(mi - correction, 0.0)
    x, y = _gaussian_pair(kz, gaussian_mi, batch, dim)
    # 1 / sqrt(w / df), w / 2 ~ Gamma(df / 2), from log w: at small df the gamma draw itself
    # underflows to 0 in float32 (df = 0.1: ~1 % of the rows), its logarithm does not (the
    # scale itself passes float32's range below `least_sampled_df`, which is refused).
    log_half_w = jax.random.loggamma(kw, df / 2.0, (batch, 1))
    scale = jnp.sqrt(df / 2.0) * jnp.exp(-0.5 * log_half_w)
    return x * scale, y * scale


class Task(NamedTuple):
    """A family of distributions indexed by their exact MI.

    Attributes:
      name: registry name.
      dim: width of x and of y.
      sample: ``sample(key, mi, batch) -> (x [batch, dim], y [batch, dim])``; ``mi`` in
        ``[min_mi, max_mi]`` (a concrete one outside it is an error; a traced one is not
        checked: below 0 the Gaussian samplers give NaN, above ``max_mi`` ``y`` equals ``x``
        for some pairs).
      min_mi: the smallest MI the family can express (nats).
    """

    name: str
    dim: int
    sample: Callable[[PRNGKey, ArrayLike, int], tuple[Array, Array]]
    min_mi: float = 0.0

    @property
    def max_mi(self) -> float:
        """The most MI the samples carry (``min_mi`` + `max_mi_per_dim` per coordinate: 12 nats
        in float32, 32 under ``jax_enable_x64``)."""
        return _most_mi(self.min_mi, self.dim)


def _gaussian(dim: int) -> Task:
    return Task("gaussian", dim, lambda key, mi, batch: correlated_gaussian(key, mi, batch, dim))


def _mapped_gaussian(name: str, dim: int, fx=None, fy=None) -> Task:
    """The correlated Gaussian pair with ``x`` mapped by ``fx`` and ``y`` by ``fy`` (invertible
    maps, which keep the MI; None: as drawn)."""

    def sample(key, mi, batch):
        x, y = correlated_gaussian(key, mi, batch, dim)
        return (x if fx is None else fx(x)), (y if fy is None else fy(y))

    return Task(name, dim, sample)


def _cubic(dim: int) -> Task:
    return _mapped_gaussian("cubic", dim, fy=lambda y: y**3)


def _to_cauchy(z: Array) -> Array:
    """A standard normal coordinate mapped to a standard Cauchy one, ``tan(pi (Phi(z) - 1/2))
    = sign(z) tan(pi/2 erf(|z| / sqrt 2))``, from |z| = sqrt 2 on as ``sign(z) / tan(pi/2
    erfc(|z| / sqrt 2))``: in float32 ``Phi(z)`` rounds to 1/2 near 0 (the sign came out wrong
    below |z| ~ 4e-8) and to 1 from z ~ 5.4; erf keeps the digits near 0, erfc in the tail
    (finite up to |z| ~ 13, a probability of 1e-38). Monotone, so the MI is unchanged."""
    a = jnp.abs(z) / jnp.sqrt(2.0)
    center = jnp.tan(0.5 * jnp.pi * jax.scipy.special.erf(a))
    tail = 1.0 / jnp.tan(0.5 * jnp.pi * jax.scipy.special.erfc(a))
    return jnp.sign(z) * jnp.where(a < 1.0, center, tail)


def _cauchy(dim: int) -> Task:
    return _mapped_gaussian("cauchy", dim, fx=_to_cauchy, fy=_to_cauchy)


def _spiral_task(dim: int, speed: float = 0.5) -> Task:
    if dim < 2:
        raise ValueError(f"the spiral task needs `dim` >= 2, got {dim}.")
    if not (_checks.is_real(speed) and np.isfinite(speed)):
        raise ValueError(f"the spiral task's `speed` must be a finite number, got {speed!r}.")
    return _mapped_gaussian("spiral", dim, fx=lambda x: _spiral(x, speed))


def _student_t_task(dim: int, df: float = 5.0) -> Task:
    df = _checked_sampled_df(df)
    min_mi = student_t_mi_correction(df, dim, dim)
    return Task("student_t", dim, lambda key, mi, batch: student_t(key, mi, batch, dim, df), min_mi)


_TASKS: dict[str, Callable[..., Task]] = {
    "gaussian": _gaussian,
    "cubic": _cubic,
    "spiral": _spiral_task,
    "student_t": _student_t_task,
    "cauchy": _cauchy,
}


def available_tasks() -> tuple[str, ...]:
    """The registered tasks' names (`get_task`, `register_task`)."""
    return tuple(_TASKS)


def register_task(name: str, factory: Callable[..., Task], *, override: bool = False) -> None:
    """Registers ``factory(dim, **hparams) -> Task`` under ``name`` (``override``: in place of
    a task of that name).

    The task's ``sample(key, mi, batch)`` must give pairs whose MI is exactly ``mi`` for every
    ``mi >= min_mi``, traced or not (the staircase schedules it inside `jax.lax.scan`): e.g.
    `correlated_gaussian` followed by an invertible map of ``x`` or ``y``, which keeps the MI.
    """
    _checks.register("task", name, factory, _TASKS, override=override)


def get_task(name: str, *, dim: int, **hparams) -> Task:
    """Builds the task ``name`` of width ``dim``, e.g. ``get_task("student_t", dim=5, df=3.0)``."""
    if not _checks.is_known(name, _TASKS):
        raise _checks.unknown_name_error("task", name, _TASKS)
    _checks.check_ints(dim=dim)
    task = _checks.call_factory("task", name, _TASKS[name], int(dim), **hparams)
    if not isinstance(task, Task):
        raise TypeError(f"the factory of task {name!r} must return a `Task`, got {task!r}.")
    return task


def staircase_mi(
    step: ArrayLike, *, levels: tuple[float, ...] = (2.0, 4.0, 6.0, 8.0, 10.0), steps_per_level: int
) -> Array:
    """The true MI at ``step`` of the staircase schedule (Poole et al. 2019, Fig. 2).

    Level ``k`` holds for steps ``[k, k + 1) * steps_per_level``. (The published code's
    ``round(linspace(0.5, 5.5 - 1e-9, n)) * 2`` agrees at every step but the first, which
    NumPy's round-half-to-even sets to 0 nats.)

    Args:
      step: the training step, ``>= 0``, a scalar or an array of any shape (traced under
        `jax.jit`, where a negative step is clamped to the first level; concrete, it is an
        error).
      levels: the MI of each level, in nats; the last one holds after the staircase ends.
      steps_per_level: steps spent at each level.

    Returns:
      float32 MI of ``step``'s shape.
    """
    _checks.check_ints(steps_per_level=steps_per_level)
    finite = (_checks.is_real(v) and 0 <= v < np.inf for v in np.ravel(levels))
    if not (np.ndim(levels) == 1 and len(levels) and all(finite)):
        raise ValueError(f"`levels` must be finite MI values >= 0 (nats), got {levels!r}.")
    _checks.check_not_a_list(step, "step")
    if not jnp.issubdtype(jnp.result_type(step), jnp.integer):
        raise TypeError(f"`step` must be an integer (array), got dtype {jnp.result_type(step)}.")
    if not isinstance(step, jax.core.Tracer):
        if np.any(np.asarray(step) < 0):
            raise ValueError(f"`step` must be >= 0, got {step!r}.")
        most = np.iinfo(jnp.result_type(int)).max  # int32 without x64, where a larger one wraps
        if np.any(np.asarray(step) > most):
            raise ValueError(f"`step` must be at most {most} (JAX's integer), got {step!r}.")
    # (Without the lower clamp a negative index would wrap around to the last levels.)
    index = jnp.clip(jnp.asarray(step) // steps_per_level, 0, len(levels) - 1)
    return jnp.asarray(levels, jnp.float32)[index]
