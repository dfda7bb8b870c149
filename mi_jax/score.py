r"""Score estimators: ``grad_x log q(x)`` from samples of an implicit distribution ``q``.

Pure functions of a sample matrix ``samples`` ``[num_samples, dim]``; they work under `jax.jit`
and `jax.vmap` and return ``[num_points, dim]`` estimates.

* `stein_score` (Li & Turner, 2018): ``G = -(K + eta I)^{-1} <grad, K>`` at the samples.
* `ssge_score` (Shi, Sun & Zhu, 2018), the spectral Stein gradient estimator: Nystrom
  eigenfunctions of the RBF Gram matrix, truncated to a fixed number or to a cumulative
  eigenvalue threshold; evaluates at new points (out of sample).

Both use the RBF kernel ``k(x, x') = exp(-|x - x'|^2 / (2 sigma^2))`` with the median heuristic
``sigma = median_{i<j} |x_i - x_j|`` (`median_bandwidth`) unless ``bandwidth`` is given. In exact
arithmetic, SSGE with all eigenfunctions kept equals Stein with ``eta = 0`` at the samples (both
are ``K^{-1} D / sigma^2`` with ``D_n = sum_m k(x_m, x_n) (x_m - x_n)``); the truncation is
SSGE's regularizer, as ``eta`` is Stein's. In floating point the Gram matrix is numerically
singular (its small eigenvalues are round-off), so SSGE always drops the eigenvalues below
``sqrt(eps) lambda_max`` as well, whatever ``num_eigen`` or ``threshold`` asks for (see
`ssge_score`); the two agree only for a well-conditioned Gram matrix.

Estimators are also reachable by name (`get_score_estimator`), with their hyperparameters bound:
``score_fn = get_score_estimator("ssge", threshold=0.99)``; ``score_fn(samples)`` or
``score_fn(samples, points)``.

NaN or infinite samples: a concrete array raises a ValueError naming the argument. Under
`jax.jit` the values are unknown at trace time; the estimate is then NaN, and so is the value of
any `mi_jax.mige` surrogate built on it, which the training loops check after each chunk (they
stop, naming the step) -- a NaN never passes silently as a gradient. The same holds for
finite samples whose squared distances overflow the float (spreads beyond ~1e19 in float32):
rescale them (the estimators are scale equivariant: the score of ``c x`` is ``score(x) / c``).

References:
  Li & Turner, "Gradient Estimators for Implicit Models", ICLR 2018.
  Shi, Sun & Zhu, "A Spectral Approach to Gradient Estimation for Implicit Distributions",
  ICML 2018.
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from mi_jax import _checks
from mi_jax.types import Array, ArrayLike, ScoreFn

# The kernels' matmuls in full float32 (on a TPU or GPU the default precision rounds matmul
# operands to bfloat16 or TF32).
_HIGHEST = jax.lax.Precision.HIGHEST


def _check_samples(samples, name: str = "samples", least: int = 2) -> Array:
    shape = jnp.shape(samples)
    if len(shape) != 2 or shape[1] == 0:
        raise ValueError(
            f"`{name}` must have shape [num_samples, dim] with dim >= 1, got shape {shape}."
        )
    if shape[0] < least:
        raise ValueError(
            f"`{name}` needs at least {least} sample(s) for a kernel estimate, got {shape[0]}."
        )
    _checks.check_float(samples, name)
    _checks.check_finite_if_concrete(samples, name)
    samples = jnp.asarray(samples)
    # float16 / bfloat16 are computed in float32: the linear solves (LAPACK) have no half
    # precision, and the kernel sums would lose most of their bits.
    return _checks.at_least_float32(samples)


def _centered(samples: Array, *others: Array) -> tuple[Array, ...]:
    """``samples`` and ``others`` less a center of the samples' bulk. The estimators are
    translation equivariant, and their distances ``|x|^2 + |y|^2 - 2 x.y`` and sums ``sum_m
    k_mn (x_m - x_n)`` cancel catastrophically far from the origin (float32 samples at an
    offset of 1000: the Stein estimate failed, SSGE's error rose from 0.25 to 0.64).

    The center is the mean of the samples no farther from the mean than the average: the mean
    alone, which one far outlier drags away from the rest, left them 500 from the origin with
    one sample at 1e5 among 200 of unit scale (the Stein estimate failed, its Gram matrix not
    positive definite; SSGE was off by 38 % at the others). A coordinate-wise median would do
    too, at a sort per call (a third of the MIGE toy's run time on XLA:CPU).
    """
    mean = jnp.mean(samples, axis=0, keepdims=True)
    radius = jnp.sqrt(jnp.sum(jnp.square(samples - mean), axis=1, keepdims=True))  # [n, 1]
    # Never empty: the nearest sample is in (equal radii, balanced one-hot rows say, may
    # average to just below each of them in floating point: the center was 0 / 0 = NaN).
    bulk = (radius <= jnp.maximum(jnp.mean(radius), jnp.min(radius))).astype(samples.dtype)
    center = jnp.sum(bulk * samples, axis=0, keepdims=True) / jnp.sum(bulk)
    return (samples - center, *(o - center for o in others))


def squared_distances(x: ArrayLike, y: ArrayLike) -> Array:
    """``[n, m]`` squared Euclidean distances between the rows of ``x`` ``[n, d]`` and ``y``
    ``[m, d]`` (floats; float32 at least; clipped at 0 against cancellation)."""
    _check_rows(x, y)
    return _squared_distances(*_kernel_inputs(x, y))


def _kernel_inputs(x: ArrayLike, y: ArrayLike) -> tuple[Array, Array]:
    """``x`` and ``y`` in float32 at least, less a center of ``x``'s finite rows' bulk
    (`_centered`): the distances ``|x|^2 + |y|^2 - 2 x.y`` lost every bit in bfloat16
    (distances 0 between rows 2-9 apart), overflowed in float16 (NaN at 200 from the origin),
    and cancel in float32 far from the origin. A non-finite row of ``x`` is its own row's NaN,
    not everyone's (a center of all rows would be NaN)."""
    x, y = (_checks.at_least_float32(jnp.asarray(a)) for a in (x, y))
    finite = jnp.all(jnp.isfinite(x), axis=1, keepdims=True)
    fill = jnp.sum(jnp.where(finite, x, 0.0), axis=0) / jnp.maximum(jnp.sum(finite), 1)
    return _centered(jnp.where(finite, x, fill), x, y)[1:]


def _check_rows(x, y) -> None:
    """Static checks of a kernel's two arguments: float ``[n, d]``, ``[m, d]`` (integers would
    overflow in ``|x|^2``: 50000^2 wraps in int32)."""
    for name, value in (("x", x), ("y", y)):
        _checks.check_float(value, name)
        if len(jnp.shape(value)) != 2:
            raise ValueError(f"`{name}` must have shape [rows, dim], got {jnp.shape(value)}.")
    if jnp.shape(x)[1] != jnp.shape(y)[1]:
        raise ValueError(
            f"`x` and `y` must have the same dim, got shapes {jnp.shape(x)} and {jnp.shape(y)}."
        )


def _squared_distances(x: Array, y: Array) -> Array:
    d2 = (
        jnp.sum(x * x, axis=-1)[:, None]
        + jnp.sum(y * y, axis=-1)[None, :]
        - 2.0 * jnp.matmul(x, y.T, precision=jax.lax.Precision.HIGHEST)
    )
    return jnp.maximum(d2, 0.0)


def median_bandwidth(samples: ArrayLike, *, scale: float = 1.0) -> Array:
    """The median heuristic: ``scale * median_{i<j} |x_i - x_j|``, ``[]``, over the pairs of
    distinct samples (repeated rows: with most rows equal, the median over all pairs was 0 and
    every score estimate 0, even at the distinct samples).

    The median is the lower median (the ``ceil(P/2)``-th smallest of the ``P`` nonzero pairwise
    distances between rows that are not equal), found by bisection on the logarithm of the
    squared distance: 32 vectorized counting passes (precision relative to the median, about the
    float's own, whatever the largest distance: bisecting the squared distance itself, an
    outlier at 1e6 among 200 unit-scale samples read 15.3 for 1.72) instead of a sort, several
    times faster on XLA:CPU.
    The distances are taken on the samples divided by their spread (the largest ``|x|`` once
    centred), so the result is scale equivariant and finite wherever the samples are (at a
    scale of 1e-8 a fixed floor of 1e-6 took the median's place; at 1e20 the squared distances
    overflowed float32).
    Identical samples give a zero median; the result is then a tiny positive value (1e-6 of
    their spread, or 1e-6 where they are exactly equal; the floor of any median), so that
    kernels stay finite (and the estimate is zero: identical samples carry no information
    about the score).
    """
    if not _checks.is_positive_finite(scale):
        raise ValueError(f"`scale` must be a positive finite number, got {scale!r}.")
    (samples,) = _centered(_check_samples(samples))
    spread = jnp.max(jnp.abs(samples))
    unit = jnp.where(spread > 0, spread, 1.0)
    n, dim = samples.shape
    rows, cols = jnp.triu_indices(n, k=1)
    scaled = samples / unit
    pairs = _squared_distances(scaled, scaled)[rows, cols]  # [n (n - 1) / 2]
    # Two equal rows' |x|^2 + |y|^2 - 2 x.y is their rounding, not 0 (~1e-22 away from the
    # center); read as a distance, with most rows equal, it was the median (the 1e-6 floor).
    # Equal rows are told by two row-wise sums, which they give bit for bit (the same
    # operations in the same order) and distinct rows almost never; a tolerance on the distance
    # instead also dropped close distinct pairs (a tight cluster's, off the center: +5 to +9 %
    # on its median).
    weights = jnp.sin(jnp.arange(1, dim + 1, dtype=scaled.dtype))  # (sin k != 0 for k >= 1)
    hashes = [jnp.sum(scaled * scaled, axis=-1), jnp.sum(scaled * weights[None, :], axis=-1)]
    equal = functools.reduce(jnp.logical_and, [h[rows] == h[cols] for h in hashes])
    distinct = (pairs > 0) & ~equal
    count = jnp.sum(distinct)
    rank = (count + 1) // 2  # the lower median is the rank-th smallest
    log_pairs = jnp.log(jnp.where(distinct, pairs, 1.0))

    def bisect(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        enough = jnp.sum(distinct & (log_pairs <= mid)) >= rank
        return jnp.where(enough, lo, mid), jnp.where(enough, mid, hi)

    # (With no distinct pair the bounds are 0 and the median is not used.)
    lo = jnp.where(count > 0, jnp.min(jnp.where(distinct, log_pairs, jnp.inf)), 0.0)
    hi = jnp.where(count > 0, jnp.max(jnp.where(distinct, log_pairs, -jnp.inf)), 0.0)
    _, log_median_d2 = jax.lax.fori_loop(0, 32, bisect, (lo, hi))
    sigma = jnp.where(count > 0, unit * jnp.exp(0.5 * log_median_d2), 0.0)
    # NaN or inf samples (unchecked under jit) give NaN, not the floor of a spread of NaN.
    return jnp.where(jnp.isfinite(spread), scale * jnp.maximum(sigma, 1e-6 * unit), jnp.nan)


def rbf_kernel(x: ArrayLike, y: ArrayLike, bandwidth: ArrayLike) -> Array:
    """``[n, m]`` RBF kernel ``exp(-|x_i - y_j|^2 / (2 bandwidth^2))`` of float ``x`` ``[n, d]``,
    ``y`` ``[m, d]`` (float32 at least); ``bandwidth`` positive (checked where concrete)."""
    _check_rows(x, y)
    if bandwidth is None:  # the estimators' "median heuristic" default is theirs, not the kernel's
        raise ValueError("`bandwidth` must be a positive finite scalar, got None.")
    _check_bandwidth(bandwidth)
    return _rbf_kernel(*_kernel_inputs(x, y), bandwidth)


def _rbf_kernel(x: Array, y: Array, bandwidth) -> Array:
    return jnp.exp(-_squared_distances(x, y) / (2.0 * jnp.square(bandwidth)))


def _kernel_stats(samples: Array, bandwidth) -> tuple[Array, Array, Array]:
    """``(K [M, M], D [M, d], sigma [])`` with ``D_n = sum_m K_mn (x_m - x_n)`` (``bandwidth``
    checked by the caller)."""
    # In the samples' dtype: a float64 bandwidth (numpy, or `jax_enable_x64`) would otherwise
    # promote float32 samples' kernels and estimates to float64.
    sigma = (
        median_bandwidth(samples) if bandwidth is None else jnp.asarray(bandwidth, samples.dtype)
    )
    gram = _rbf_kernel(samples, samples, sigma)
    # sum_m K_mn x_m - (sum_m K_mn) x_n, as two matmuls (no [M, M, d] tensor).
    d = (
        jnp.matmul(gram, samples, precision=_HIGHEST)
        - jnp.sum(gram, axis=1, keepdims=True) * samples
    )
    return gram, d, sigma


def _check_bandwidth(bandwidth) -> None:
    """``None`` (the median heuristic), a traced value, or a positive finite scalar."""
    if bandwidth is None or isinstance(bandwidth, jax.core.Tracer):
        return
    if not _checks.is_positive_finite(bandwidth):
        raise ValueError(f"`bandwidth` must be a positive finite scalar, got {bandwidth!r}.")


def _check_stein_hparams(*, eta=0.1, bandwidth=None) -> None:
    """A traced ``eta`` (a swept ridge, under jit or vmap) is taken as it is, like a traced
    ``bandwidth``."""
    if not isinstance(eta, jax.core.Tracer) and not _checks.is_positive_finite(eta):
        raise ValueError(
            f"`eta` must be a positive finite scalar (it makes K + eta I invertible), got {eta!r}."
        )
    _check_bandwidth(bandwidth)


def _check_ssge_hparams(*, num_eigen=None, threshold=0.99, bandwidth=None, num_samples=None):
    """``num_eigen`` in ``[1, num_samples]`` (any positive integer where the samples are not
    known yet, `get_score_estimator`), else ``threshold`` in ``(0, 1]``."""
    if num_eigen is not None:
        most = float("inf") if num_samples is None else num_samples
        if not (_checks.is_int(num_eigen) and 1 <= num_eigen <= most):
            upper = "num_samples" if num_samples is None else f"num_samples = {num_samples}"
            raise ValueError(f"`num_eigen` must be an integer in [1, {upper}], got {num_eigen!r}.")
    elif not (_checks.is_positive_finite(threshold) and float(threshold) <= 1.0):
        raise ValueError(f"`threshold` must lie in (0, 1] (or set `num_eigen`), got {threshold!r}.")
    _check_bandwidth(bandwidth)


def stein_score(
    samples: ArrayLike,
    points: None = None,
    *,
    eta: float = 0.1,
    bandwidth: ArrayLike | None = None,
) -> Array:
    r"""The Stein gradient estimator of ``grad log q`` at the samples, ``[M, d]``.

    .. math:: \hat G = -(K + \eta I)^{-1} \langle \nabla, K \rangle,\quad
       \langle \nabla, K \rangle_{i} = \sum_m \nabla_{x_m} k(x_m, x_i)
       = -\frac{1}{\sigma^2} \sum_m k(x_m, x_i)(x_m - x_i).

    Args:
      samples: ``[M, d]`` samples of ``q``.
      points: must be left out: the estimator is defined at the samples only (`ssge_score`
        and `mi_jax.score_nets.dsm_score` estimate the score elsewhere too).
      eta: ridge ``eta`` added to the Gram matrix (the estimator's regularizer); must be > 0.
      bandwidth: RBF bandwidth ``sigma``; ``None`` takes the median heuristic.

    Returns:
      ``[M, d]`` score estimates at ``samples``.

    References:
      Li & Turner, "Gradient Estimators for Implicit Models", ICLR 2018, eq. (8).
    """
    if points is not None:  # (was "takes 1 positional argument but 2 were given")
        raise ValueError(
            "`points`: the Stein estimator estimates the score at the samples only; 'ssge' or "
            "'dsm' estimate it at other points."
        )
    (samples,) = _centered(_check_samples(samples))
    _check_stein_hparams(eta=eta, bandwidth=bandwidth)
    gram, d, sigma = _kernel_stats(samples, bandwidth)
    m = samples.shape[0]
    chol = jax.scipy.linalg.cho_factor(gram + eta * jnp.eye(m, dtype=gram.dtype))
    score = jax.scipy.linalg.cho_solve(chol, d) / jnp.square(sigma)
    if not isinstance(score, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(score))):
        # Finite samples (checked above): the Cholesky factorization failed.
        raise ValueError(
            f"`eta` ({eta}) is too small for this Gram matrix in {gram.dtype}: K + eta I is not "
            "numerically positive definite; use a larger `eta` (default 0.1)."
        )
    return score


def ssge_score(
    samples: ArrayLike,
    points: ArrayLike | None = None,
    *,
    num_eigen: int | None = None,
    threshold: float | None = 0.99,
    bandwidth: ArrayLike | None = None,
) -> Array:
    r"""The spectral Stein gradient estimator (SSGE) of ``grad log q``, ``[N, d]``.

    With ``K u_j = \lambda_j u_j`` (eigenpairs of the ``M x M`` Gram matrix, largest first), the
    Nystrom eigenfunctions are ``\psi_j(x) = \sqrt{M}/\lambda_j \sum_m k(x, x_m) u_{jm}``, and

    .. math:: \hat g(x) = \sum_{j \le J} \beta_j \psi_j(x),\quad
       \beta_j = -\frac{1}{M}\sum_m \nabla \psi_j(x_m)
       \;\Longrightarrow\; \hat g(x) = \frac{1}{\sigma^2}\, k(x, X)\, U_J \Lambda_J^{-2}
       U_J^\top D,

    with ``D_n = sum_m k(x_m, x_n)(x_m - x_n)``. ``J`` is ``num_eigen``, or else the smallest
    ``J`` whose eigenvalues hold ``threshold`` of the trace (applied as a mask, so ``J`` may
    depend on the data under `jax.jit`). Of these, eigenvalues below ``sqrt(eps) lambda_1``
    (``eps`` of float32 in every dtype: ``sqrt(eps)`` is 3.5e-4) are dropped too: they are
    round-off of a numerically singular Gram matrix, or the sample's noise, and their weight
    ``lambda^-2`` would blow it up by orders of magnitude (``num_eigen = M`` or
    ``threshold = 1`` keeps every eigenvalue above that floor, not every eigenvalue).

    Args:
      samples: ``[M, d]`` samples of ``q``.
      points: ``[N, d]`` where to estimate the score; ``None`` means at ``samples``.
      num_eigen: a fixed number of eigenfunctions ``J`` (``1 <= J <= M``; fewer where the
        eigenvalues fall below the floor above); overrides ``threshold``.
      threshold: cumulative eigenvalue fraction in ``(0, 1]`` that selects ``J``.
      bandwidth: RBF bandwidth ``sigma``; ``None`` takes the median heuristic.

    Returns:
      ``[N, d]`` score estimates.

    References:
      Shi, Sun & Zhu, "A Spectral Approach to Gradient Estimation for Implicit Distributions",
      ICML 2018, eqs. (16)-(17).
    """
    samples = _check_samples(samples)
    _check_ssge_hparams(
        num_eigen=num_eigen, threshold=threshold, bandwidth=bandwidth, num_samples=samples.shape[0]
    )
    at_samples = points is None
    points = samples if at_samples else _check_samples(points, "points", least=1)
    if points.shape[1] != samples.shape[1]:
        raise ValueError(
            f"`points` must have the samples' dimension {samples.shape[1]}, got {points.shape}."
        )
    samples, points = _centered(samples, points)
    gram, d, sigma = _kernel_stats(samples, bandwidth)
    eigvals, eigvecs = jnp.linalg.eigh(gram)  # ascending
    eigvals, eigvecs = eigvals[::-1], eigvecs[:, ::-1]
    eigvals = jnp.maximum(eigvals, 0.0)  # round-off can make tiny ones negative
    keep = _kept_eigenvalues(eigvals, num_eigen, threshold)
    inv_sq = jnp.where(keep, 1.0 / jnp.square(jnp.where(keep, eigvals, 1.0)), 0.0)
    coef = jnp.matmul(
        eigvecs * inv_sq[None, :], jnp.matmul(eigvecs.T, d, precision=_HIGHEST), precision=_HIGHEST
    )
    k_points = gram if at_samples else _rbf_kernel(points, samples, sigma)
    return jnp.matmul(k_points, coef, precision=_HIGHEST) / jnp.square(sigma)


def _kept_eigenvalues(eigvals: Array, num_eigen: int | None, threshold: float | None) -> Array:
    """``[M]`` bool: which of the descending ``eigvals`` ``[M]`` (``>= 0``) SSGE keeps.

    The first ``num_eigen``, or the fewest that hold ``threshold`` of the trace; in either case
    only those above ``sqrt(eps) * lambda_1``. `jnp.linalg.eigh` resolves each eigenvalue
    to about ``eps * lambda_1`` (absolute), so the smallest ones of a numerically singular Gram
    matrix are noise of that size (measured: ~1e-5 for ``lambda_1`` ~ 180 in float32 with 300
    samples of a 2-d Gaussian, an estimate 1e5 times the score). Out of sample the weight is
    ``lambda^-2``, so a kept eigenvalue amplifies that noise by ``eps (lambda_1 / lambda)^2``,
    at most 1 above the floor: ``rcond = sqrt(eps)``, where `jnp.linalg.pinv` (weight
    ``lambda^-1``) uses ``M eps``. On the case above it also measured best: relative RMSE 0.46
    with ``sqrt(eps)``, against 0.57 with ``M eps`` and 0.64 with 1e-5. The floor is float32's
    in every dtype: the eigenfunctions of the smallest eigenvalues are noise of the sample as
    well as of the arithmetic, and float64's ``sqrt(eps)`` let 45 of them through for float32's
    17 (200 samples of a 2-d Gaussian, ``num_eigen=200``: out-of-sample relative error 27
    against 0.63).
    """
    m = eigvals.shape[0]
    if num_eigen is not None:
        keep = jnp.arange(m) < num_eigen
    else:
        cumulative = jnp.cumsum(eigvals) / jnp.sum(eigvals)
        # The first J with cumulative[J-1] >= threshold: keep j while the mass before it is short.
        keep = jnp.concatenate([jnp.array([True]), cumulative[:-1] < threshold])
    # lambda_1 >= 1 (the trace of an RBF Gram matrix is M), so zero eigenvalues go too.
    floor = jnp.sqrt(jnp.finfo(jnp.float32).eps) * eigvals[0]
    return keep & (eigvals > floor)


def gaussian_score(x: ArrayLike, mean: ArrayLike, cov: ArrayLike) -> Array:
    """The exact score ``-cov^{-1} (x - mean)`` of a Gaussian, ``[N, d]`` (for tests and
    benchmarks)."""
    x = jnp.asarray(x)
    centred = x - jnp.reshape(jnp.asarray(mean), (1, -1))
    return -jnp.linalg.solve(jnp.asarray(cov), centred.T).T


_REGISTRY: dict[str, Callable[..., Array]] = {"stein": stein_score, "ssge": ssge_score}
# The built-in estimators' hyperparameter values, checked when `get_score_estimator` binds them
# (an experiment's config fails before any training, not when the estimator is first called).
_HPARAM_CHECKS: dict[Callable[..., Array], Callable[..., None]] = {
    stein_score: _check_stein_hparams,
    ssge_score: _check_ssge_hparams,
}


def available_score_estimators() -> tuple[str, ...]:
    """The registered score estimators' names (`get_score_estimator`)."""
    return tuple(_REGISTRY)


def register_score_estimator(
    name: str, fn: Callable[..., Array], *, override: bool = False
) -> None:
    """Registers ``fn(samples, [points], **hparams) -> [N, d]`` under ``name`` (``points``
    where the estimator can evaluate elsewhere than at the samples; ``override``: in place of
    an estimator of that name)."""
    _checks.register("score estimator", name, fn, _REGISTRY, override=override)


def get_score_estimator(name: str, **hparams) -> ScoreFn:
    """``fn(samples, [points])`` with hyperparameters bound: ``get_score_estimator("stein",
    eta=0.1)``; ``points`` only for estimators that take them (``ssge``, ``dsm``): ``stein``
    estimates at the samples only. Unknown names and hyperparameters raise at once, and so do
    bad values of the built-in estimators' (``stein``, ``ssge``)."""
    if not _checks.is_known(name, _REGISTRY):
        raise _checks.unknown_name_error("score estimator", name, _REGISTRY)
    fn = _REGISTRY[name]
    # (``points``, where an estimator takes them, are an argument of the call.)
    _checks.check_call("score estimator", name, fn, (None,), hparams, exclude=("points",))
    if (check := _HPARAM_CHECKS.get(fn)) is not None:
        check(**hparams)  # other estimators check their values when called
    return functools.partial(fn, **hparams)
