"""Variational lower bounds on mutual information, as pure functions of a critic score matrix.

Every bound takes ``scores`` of shape ``[batch, batch]`` with ``scores[i, j] = f(x_i, y_j)``: the
diagonal holds the critic on samples of the joint p(x, y), the off-diagonal entries on samples of
the product of marginals p(x) p(y). Each returns a scalar in nats whose *value* is the MI estimate
and whose *gradient* is the training signal (maximize it). Where a bound is trained with one
objective and read out with another (JS, SMILE), the two are combined with a straight-through
``stop_gradient`` so that one scalar serves both purposes; the registry's `Bound.objective`
gives the training objective's value too (for early stopping on held-out data).

Normalizations run over ``x`` for a fixed ``y`` (down a column), following the notation of
Poole et al. (2019): ``m(y) = E_{p(x)} e^{f(x, y)}``. All exponentials of scores go through
log-sum-exp, so the bounds stay finite in float32 at large MI; terms that are an exponential
by definition (NWJ, TUBA, FLO) use `_soft_exp`, which is exact below 80 and grows only
logarithmically above, so that their values and gradients stay finite even for a diverging
critic. Every bound computes in float32 at least: float16 or bfloat16 scores give float32 values
(the gradients of float16 scores, back in float16, still overflow once ``e^f`` passes 65504).

References:
  Poole, Ozair, van den Oord, Alemi, Tucker. On Variational Bounds of Mutual Information.
    ICML 2019. https://arxiv.org/abs/1905.06922
  Belghazi et al. Mutual Information Neural Estimation. ICML 2018. https://arxiv.org/abs/1801.04062
  Nguyen, Wainwright, Jordan. Estimating divergence functionals and the likelihood ratio by convex
    risk minimization. IEEE Trans. Inf. Theory 2010.
  van den Oord, Li, Vinyals. Representation Learning with Contrastive Predictive Coding. 2018.
  Nowozin, Cseke, Tomioka. f-GAN. NeurIPS 2016.
  Song, Ermon. Understanding the Limitations of Variational Mutual Information Estimators.
    ICLR 2020. https://arxiv.org/abs/1910.06222
  Guo et al. Tight Mutual Information Estimation With Contrastive Fenchel-Legendre Optimization.
    NeurIPS 2022. https://arxiv.org/abs/2107.01131
"""

import dataclasses
import functools
import inspect
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mi_jax import _checks
from mi_jax.types import Array, ArrayLike, PyTree

# Above this argument `_soft_exp` continues logarithmically: e^80 ~ 5.5e34 is still
# representable in float32 (max ~3.4e38), with room for the continuation's factor (at most
# 1 + log(3.4e38) ~ 90 for any finite float32 argument).
_EXP_SOFT_FROM = 80.0


def _soft_exp(x: Array) -> Array:
    """``exp(x)`` for ``x <= 80``, ``e^80 (1 + log(1 + x - 80))`` above; in float32 at least.

    Bounds such as NWJ contain ``E_q[e^f]`` itself, not its logarithm. A critic whose scores blow
    up would make ``e^f`` overflow to ``inf`` and its gradient to ``inf``/``nan``. The
    continuation matches the value and slope at 80 and stays increasing (slope
    ``e^80 / (1 + x - 80)``), so it still pushes the scores down, but it grows so slowly that the
    value stays finite for every finite float32 ``x`` (a linear one overflowed from ``x`` ~ 6e3
    on). Half-precision inputs are upcast: ``e^80`` is not a float16 number (max 65504).

    Args:
      x: an array of any shape and float dtype.

    Returns:
      An array of ``x``'s shape, in ``x``'s dtype promoted to at least float32.
    """
    x = _checks.at_least_float32(x)
    c = _EXP_SOFT_FROM
    below = x <= c
    # Each branch sees only arguments where it is finite (so `jnp.where` passes no NaN into the
    # gradient), and at x = c only the exponential does (`jnp.minimum` would halve the slope).
    exp_branch = jnp.exp(jnp.where(below, x, c))
    log_branch = jnp.exp(c) * (1.0 + jnp.log1p(jnp.where(below, 0.0, x - c)))
    return jnp.where(below, exp_branch, log_branch)


def _checked_scores(scores: ArrayLike) -> Array:
    """`_checks.check_scores`, then ``scores`` as an array in float32 at least.

    In half precision the bounds' sums and exponentials overflow (float16 stops at 65504, so
    ``e^f`` at ``f ~ 11``; a sum of batch^2 scores sooner), so every bound computes in float32
    and returns float32 for float16 or bfloat16 scores.
    """
    _checks.check_scores(scores)
    return _checks.at_least_float32(jnp.asarray(scores))


def _offdiag_mask(batch: int) -> Array:
    return ~jnp.eye(batch, dtype=bool)


def log_mean_exp_offdiag(scores: ArrayLike, axis: int | None = None) -> Array:
    """Log of the mean of ``exp(scores)`` over off-diagonal entries.

    Args:
      scores: ``[batch, batch]``.
      axis: ``None`` for all ``batch * (batch - 1)`` off-diagonal entries (a scalar), ``0`` for
        each column without its diagonal entry (``[batch]``), ``1`` for each row.

    Returns:
      ``[]`` if ``axis`` is None, else ``[batch]``; float32 at least.
    """
    _checks.check_scores(scores)
    # (A tuple (0, 1) would divide by batch - 1; 0.0 passed `in` and failed in XLA; True read 1.)
    integer = _checks.is_number(axis) and jnp.issubdtype(jnp.result_type(axis), jnp.integer)
    if not (axis is None or (integer and axis in (0, 1))):
        raise ValueError(f"`axis` must be None, 0 or 1, got {axis!r}.")
    axis = None if axis is None else int(axis)
    scores = _checks.at_least_float32(jnp.asarray(scores))  # float16: counts past 65504 are inf
    batch = scores.shape[0]
    masked = jnp.where(_offdiag_mask(batch), scores, -jnp.inf)
    count = batch * (batch - 1) if axis is None else batch - 1
    # (A Python float: past batch 46341 the count overflows int32, which jnp would make it.)
    return jax.nn.logsumexp(masked, axis=axis) - math.log(count)


def mean_offdiag(values: ArrayLike) -> Array:
    """Mean of the off-diagonal entries of a ``[batch, batch]`` matrix, ``[]`` (float32 at
    least)."""
    _checks.check_scores(values, "values")
    values = _checks.at_least_float32(jnp.asarray(values))  # float16 sums and counts overflow
    batch = values.shape[0]
    total = jnp.sum(jnp.where(_offdiag_mask(batch), values, 0.0))
    return total / float(batch * (batch - 1))  # (a Python int past int32 at batch 46342)


def _baseline_row(log_baseline: ArrayLike, batch: int) -> Array:
    """A scalar or ``[batch]`` log baseline log a(y_j), as a ``[1, batch]`` row."""
    _checks.check_vector(log_baseline, batch, "log_baseline")
    return jnp.broadcast_to(_checks.at_least_float32(jnp.asarray(log_baseline)), (batch,))[None, :]


def dv(scores: ArrayLike) -> Array:
    r"""Donsker-Varadhan bound.

    .. math:: I_{DV} = E_{p(x,y)}[f(x,y)] - \log E_{p(x)p(y)}[e^{f(x,y)}]

    Tight for ``f = log p(y|x)/p(y) + c`` (any constant c). The batch estimate of the log term
    is biased, and its variance can grow exponentially in the MI (Song & Ermon 2020).

    Args:
      scores: ``[batch, batch]`` critic scores, diagonal = joint samples.

    Returns:
      ``[]`` the bound in nats.
    """
    scores = _checked_scores(scores)
    return jnp.mean(jnp.diag(scores)) - log_mean_exp_offdiag(scores)


def tuba(scores: ArrayLike, *, log_baseline: ArrayLike = 0.0) -> Array:
    r"""Tractable unnormalized Barber-Agakov bound (Poole et al. 2019, eq. 9).

    .. math:: I_{TUBA} = 1 + E_{p(x,y)}[f(x,y) - \log a(y)]
                       - E_{p(x)p(y)}\left[\frac{e^{f(x,y)}}{a(y)}\right]

    Tight for ``f = log p(y|x)/p(y) + log a(y)``; with ``a = 1`` this is NWJ up to a shift of the
    critic by one. Past an exponent of 80 the exponential continues logarithmically
    (`_soft_exp`, as in `nwj` and `flo`): values below about ``-5e34`` depart from the formula.

    Args:
      scores: ``[batch, batch]`` critic scores, diagonal = joint samples.
      log_baseline: ``log a(y_j)``, a scalar or ``[batch]`` (indexed by the column's ``y_j``).
        Its default 0 is ``a = 1`` (NWJ, shifted); ``get_bound("tuba")`` has no default: its
        trainers pass the learned baseline, and one missing is an error.

    Returns:
      ``[]`` the bound in nats.
    """
    scores = _checked_scores(scores)
    shifted = scores - _baseline_row(log_baseline, scores.shape[0])
    joint_term = jnp.mean(jnp.diag(shifted))
    marginal_term = _soft_exp(log_mean_exp_offdiag(shifted))
    return 1.0 + joint_term - marginal_term


def nwj(scores: ArrayLike) -> Array:
    r"""Nguyen-Wainwright-Jordan bound, the f-divergence bound used by MINE-f.

    .. math:: I_{NWJ} = E_{p(x,y)}[f(x,y)] - e^{-1} E_{p(x)p(y)}[e^{f(x,y)}]

    Unbiased for a fixed critic; tight for ``f = 1 + log p(y|x)/p(y)``. (`tuba` with ``a = e``:
    its exponential's continuation past 80 too.)

    Args:
      scores: ``[batch, batch]`` critic scores, diagonal = joint samples.

    Returns:
      ``[]`` the bound in nats.
    """
    return tuba(_checked_scores(scores) - 1.0)


def infonce(scores: ArrayLike) -> Array:
    r"""InfoNCE / contrastive predictive coding bound (van den Oord et al. 2018).

    .. math:: I_{NCE} = \frac{1}{B}\sum_j \log
              \frac{e^{f(x_j, y_j)}}{\frac{1}{B}\sum_i e^{f(x_i, y_j)}}

    Low variance, but never above ``log B``; tight as ``B -> inf`` for
    ``f = log p(y|x) + c(y)``.

    Args:
      scores: ``[batch, batch]`` critic scores, diagonal = joint samples.

    Returns:
      ``[]`` the bound in nats (at most ``log(batch)``).
    """
    scores = _checked_scores(scores)
    batch = scores.shape[0]
    return jnp.mean(jnp.diag(scores) - jax.nn.logsumexp(scores, axis=0)) + jnp.log(batch)


def js_fgan(scores: ArrayLike) -> Array:
    r"""The f-GAN Jensen-Shannon objective (a bound on 2 JS(p || q) - log 4, not on MI).

    .. math:: E_{p(x,y)}[-\mathrm{sp}(-f)] - E_{p(x)p(y)}[\mathrm{sp}(f)]

    Maximized by ``f = log p(x,y)/(p(x)p(y))``: the log density ratio, which makes it a good,
    low-variance way to *train* a critic whose value is then read out with another bound.

    Args:
      scores: ``[batch, batch]`` critic scores, diagonal = joint samples.

    Returns:
      ``[]`` the objective.
    """
    scores = _checked_scores(scores)
    joint_term = -jnp.mean(jax.nn.softplus(-jnp.diag(scores)))
    marginal_term = mean_offdiag(jax.nn.softplus(scores))
    return joint_term - marginal_term


def js_calibration(scores: ArrayLike, init: ArrayLike = (1.0, 0.0), iterations: int = 32) -> Array:
    r"""The affine map of a critic that maximizes its JS objective: Platt scaling.

    .. math:: (a, b) = \arg\max_{a, b} \; \mathrm{js\_fgan}(a f + b)

    The objective is concave in ``(a, b)`` (softplus is convex), so Newton's method from a
    nearby start converges fast. Each iteration evaluates the objective with its gradient and
    Hessian at a candidate in one pass over the scores; a candidate better than the best so
    far is kept and followed by its Newton step, a worse one is replaced by the midpoint
    between it and the best, so the result is never worse than ``init``. The second candidate
    is a start that does not depend on the critic's scale or offset: the linear discriminant
    of the joint and the marginal pairs' scores (each pair's score mapped to the log-likelihood
    ratio of two Gaussians of one variance fitted to them). From ``init`` alone, a critic far
    off (shifted and overconfident, as one overfitting a few hundred pairs) kept ``init``: its
    Newton step overshoots by orders of magnitude, and so does every halving. Every ``a f + b`` is
    a critic, so any bound read on it is still a bound; a critic that grew overconfident while
    overfitting (scores too large: its JS objective falls while its ranking of the pairs still
    improves) gets ``a < 1``, and ``a = b = 0`` is the constant critic. On a critic that has
    learned only noise ``a`` can come out negative (the ranking reversed): still a critic, and
    a valid bound.

    Args:
      scores: ``[batch, batch]`` critic scores, diagonal = joint samples.
      init: ``[2]`` the starting ``(a, b)`` (the identity map; or a previous result, for a
        critic that changed little since).
      iterations: candidates evaluated (the first is ``init``, the second the discriminant
        start; where that is no better, the third is ``init``'s Newton step). Each is one
        pass over the scores. From the identity, on the true log density ratio of 400 pairs
        scaled 0.2-100x and shifted by up to 50: at 2 nats in 5 dimensions 4 candidates reach
        the objective of 128 (within 1e-3; in 1 dimension, scaled 5x or shifted by 10 and
        more, they fall short by 0.3), at 4-10 nats 8-32 are needed (the discriminant start,
        two Gaussians of one variance, is further off there; every overshooting Newton step is
        halved one candidate at a time), and 32, the default, fall short only in the farthest
        case (100x and shifted by 50 at 10 nats: 0.03). `mi_jax.estimate_mi` evaluates 4 per
        evaluation, each warm-started from the last: end to end within 0.3 nats (3 %) of 64 at
        2-8 nats.

    Returns:
      ``[2]`` the best ``(a, b)`` evaluated.
    """
    f = _checked_scores(scores)
    if jnp.asarray(init).shape != (2,):
        raise ValueError(
            f"`init` must be an (a, b) pair, shape [2], got shape {jnp.asarray(init).shape}."
        )
    _checks.check_ints(iterations=iterations)
    batch = f.shape[0]
    diag = jnp.diag(f)
    w_joint, w_marginal = 1.0 / batch, 1.0 / (batch * (batch - 1))

    def softplus_and_sigmoid(s):
        e = jnp.exp(-jnp.abs(s))  # one exp serves both
        return jnp.maximum(s, 0.0) + jnp.log1p(e), jnp.where(s >= 0, 1.0, e) / (1.0 + e)

    def objective_and_derivatives(p):
        sp_s, sig_s = softplus_and_sigmoid(p[0] * f + p[1])  # every pair, as a marginal pair
        sp_d, sig_d = softplus_and_sigmoid(p[0] * diag + p[1])
        # The joint term on the diagonal, the marginal term on the rest: the sums over all
        # pairs have the diagonal's marginal share taken out again. First and second
        # derivatives in each pair's score, then the chain rule to (a, b).
        d1_marginal, d2_marginal = -w_marginal * sig_s, -w_marginal * sig_s * (1 - sig_s)
        d1_diag = w_joint * (1 - sig_d) + w_marginal * sig_d
        d2_diag = -(w_joint - w_marginal) * sig_d * (1 - sig_d)
        # The diagonal's six sums as one reduction of a [6, batch] stack: summed one by one,
        # each is two more kernels to compile (XLA:CPU splits a long reduction in two).
        on_diag = jnp.sum(
            jnp.stack(
                [
                    -w_joint * (sp_d - p[0] * diag - p[1]) + w_marginal * sp_d,
                    *(d1_diag * diag**k for k in (1, 0)),
                    *(d2_diag * diag**k for k in (2, 1, 0)),
                ]
            ),
            axis=1,
        )
        value = -w_marginal * jnp.sum(sp_s) + on_diag[0]
        grad = jnp.stack([jnp.sum(d1_marginal * f**k) for k in (1, 0)]) + on_diag[1:3]
        h_aa, h_ab, h_bb = (jnp.sum(d2_marginal * f**k) + on_diag[5 - k] for k in (2, 1, 0))
        return value, grad, (h_aa - 1e-9, h_ab, h_bb - 1e-9)

    # The discriminant start (docstring): the two kinds of pairs' score means and pooled
    # variance, their moments taken about the joint mean.
    centre = jnp.mean(diag)  # moments about it: no cancellation for a shifted critic
    sums = jnp.stack([jnp.sum(f - centre), jnp.sum((f - centre) ** 2)])
    diag_sums = jnp.stack([jnp.sum(diag - centre), jnp.sum((diag - centre) ** 2)])
    joint = diag_sums / batch
    marginal = (sums - diag_sums) / (batch * (batch - 1))
    variance = (joint[1] - joint[0] ** 2 + marginal[1] - marginal[0] ** 2) / 2
    a0 = jnp.where(variance > 0, (joint[0] - marginal[0]) / jnp.where(variance > 0, variance, 1), 0)
    discriminant = jnp.stack([a0, -a0 * (centre + (joint[0] + marginal[0]) / 2)])

    def step(carry, i):
        best, best_value, candidate, fallback = carry
        value, grad, hess = objective_and_derivatives(candidate)
        better = jnp.isfinite(value) & (value >= best_value)
        best = jnp.where(better, candidate, best)
        best_value = jnp.where(better, value, best_value)
        h_aa, h_ab, h_bb = hess  # the 2 x 2 Newton system, solved in closed form
        det = h_aa * h_bb - h_ab**2
        newton = (
            candidate
            - jnp.stack([h_bb * grad[0] - h_ab * grad[1], h_aa * grad[1] - h_ab * grad[0]]) / det
        )
        following = jnp.where(better, newton, (best + candidate) / 2)
        # The second candidate is the discriminant start; where it is no better than `init`,
        # the third is what would have followed `init`.
        fallback = jnp.where(i == 0, following, fallback)
        following = jnp.where(i == 1, jnp.where(better, newton, fallback), following)
        candidate = jnp.where(i == 0, discriminant, following)
        return (best, best_value, candidate, fallback), None

    p0 = jnp.asarray(init, f.dtype)
    (best, *_), _ = jax.lax.scan(
        step, (p0, jnp.array(-jnp.inf, f.dtype), p0, p0), jnp.arange(iterations)
    )
    return best


def js(scores: ArrayLike) -> Array:
    r"""Critic trained with the f-GAN JS objective, MI read out with NWJ (Poole et al. 2019).

    The value is ``nwj(scores + 1)`` (the JS-optimal critic is the log density ratio, NWJ's optimum
    is that plus one); the gradient is that of `js_fgan`. The released code of Poole et al. (the
    Colab's ``js_lower_bound``) and of Song & Ermon, which follows it, reads ``nwj(scores)``
    instead: exactly ``1/e`` nats lower at the JS-optimal critic (``I - 1/e``), so "JS" figures
    from either read lower than ours by about that.

    Args:
      scores: ``[batch, batch]`` critic scores, diagonal = joint samples.

    Returns:
      ``[]`` the NWJ estimate in nats, with the JS gradient.
    """
    train = js_fgan(scores)  # (first: it checks the scores)
    return _straight_through(js_readout(scores), train)


def js_readout(scores: ArrayLike) -> Array:
    """`js`'s value, ``nwj(scores + 1)``, with its own gradient (`js` carries `js_fgan`'s)."""
    # Upcast before the + 1, which float16 rounds away at large scores (spacing 8 at 1e4).
    return nwj(_checks.at_least_float32(jnp.asarray(scores)) + 1.0)


def smile(scores: ArrayLike, *, clip: float | None = 5.0, gradient: str = "js") -> Array:
    r"""SMILE: DV with the partition-function ratio clipped to ``[e^-tau, e^tau]``.

    Song & Ermon (2020).

    .. math:: I_{SMILE} = E_{p(x,y)}[f]
              - \log E_{p(x)p(y)}[\mathrm{clip}(e^{f}, e^{-\tau}, e^{\tau})]

    Clipping trades a bias for a variance that no longer grows like e^{I}. ``clip=None`` is DV.

    Args:
      scores: ``[batch, batch]`` critic scores, diagonal = joint samples.
      clip: ``tau``, or None for no clipping.
      gradient: ``"js"`` trains the critic with the f-GAN JS objective and reads SMILE out, as the
        authors' experiments do; ``"smile"`` uses the gradient of the clipped bound itself. With
        a finite ``clip`` that objective is unbounded above (the joint term is not clipped, the
        marginal term is at most ``tau``: training drives every score up, to ~1e8 nats), so the
        registry (`get_bound`), which builds training objectives, refuses it.

    Returns:
      ``[]`` the bound in nats.
    """
    _checks.check_scores(scores)
    if clip is not None and not (_checks.is_number(clip) and _checks.host_float(clip) > 0):
        raise ValueError(f"`clip` must be a positive number or None, got {clip!r}.")
    if gradient not in ("js", "smile"):
        raise ValueError(f"`gradient` must be 'js' or 'smile', got {gradient!r}.")
    scores = _checks.at_least_float32(jnp.asarray(scores))
    clipped = scores if clip is None else jnp.clip(scores, -clip, clip)
    value = jnp.mean(jnp.diag(scores)) - log_mean_exp_offdiag(clipped)
    if gradient == "smile":
        return value
    return _straight_through(value, js_fgan(scores))


def _straight_through(value: Array, objective: Array) -> Array:
    """``value``, differentiated as ``objective``: a bound read out as one estimate and trained
    by another's gradient (JS and SMILE by the f-GAN JS objective's, MINE by its corrected one)."""
    return objective + jax.lax.stop_gradient(value - objective)


def _log_loo_mean_exp(scores: Array) -> Array:
    """``out[i, j] = log 1/(B-1) sum_{k != i} exp(scores[k, j])``: leave row i out of column j.

    For an entry below its column's maximum, ``log(S - e^s) = s + log(expm1(log S - s))`` is
    well conditioned: ``log S - s >= log 2``. Leaving out the maximum itself would cancel
    catastrophically when it dominates the column, so that case is a direct masked log-sum-exp.
    The gap's value is clamped at its exact lower bound ``log 2``: in float32, at scores above
    ~1.7e7 an entry tied with the column's maximum rounds ``log S`` to ``s`` itself (a gap of 0,
    -inf). Only the value: the gradient stays the unclamped gap's, the exact one (a tie at the
    maximum, where the gap is exactly ``log 2``, often rounds to just below it, and the clamp's
    zero gradient there moved the left-out entry's weight onto the kept one: twice I_1's
    gradient in that column).
    """
    batch = scores.shape[0]
    lse = jax.nn.logsumexp(scores, axis=0, keepdims=True)  # [1, B]
    is_top = jnp.arange(batch)[:, None] == jnp.argmax(scores, axis=0)[None, :]  # [B, B]
    lse_without_top = jax.nn.logsumexp(jnp.where(is_top, -jnp.inf, scores), axis=0)  # [B]
    log2 = jnp.log(2.0).astype(lse.dtype)
    raw = lse - scores
    gap = jnp.where(raw >= log2, raw, raw + jax.lax.stop_gradient(log2 - raw))
    gap = jnp.where(is_top, 1.0, gap)
    loo = jnp.where(is_top, lse_without_top[None, :], scores + _log_expm1(gap))
    return loo - jnp.log(batch - 1)


def _log_expm1(g: Array) -> Array:
    """``log(e^g - 1)`` for ``g > 0`` without overflow (``g + log(1 - e^-g)`` for large g).

    Each branch sees only inputs where it is finite, so the unused branch cannot put a NaN into
    the gradient through `jnp.where`.
    """
    large = g > 1.0
    small_branch = jnp.log(jnp.expm1(jnp.where(large, 1.0, g)))
    large_branch = jnp.where(large, g, 2.0) + jnp.log1p(-jnp.exp(-jnp.where(large, g, 2.0)))
    return jnp.where(large, large_branch, small_branch)


def interpolated(scores: ArrayLike, *, alpha: float = 0.01, log_baseline: ArrayLike = 0.0) -> Array:
    r"""The interpolated bound I_alpha of Poole et al. (2019, eq. 13).

    .. math:: I_\alpha = 1
              + E_{p(x_{1:K}, y)}\left[\log \frac{e^{f(x_1,y)}}{a_\alpha(y; x_{1:K})}\right]
              - E_{p(x_{1:K})p(y)}\left[\frac{e^{f(x_1,y)}}{a_\alpha(y; x_{1:K})}\right],
              \quad a_\alpha = \alpha\, m(y; x_{1:K}) + (1-\alpha)\, a(y)

    with ``m(y; x_{1:K}) = 1/K sum_k e^{f(x_k, y)}``. ``alpha = 1`` gives InfoNCE with
    ``K = B - 1`` (bounded by ``log(B - 1)``, identically 0 at ``B = 2``; not `infonce`, which
    has ``K = B``), ``alpha = 0`` gives TUBA; in between it trades bias for variance. In a
    batch, each term uses the ``K = B - 1`` samples of x that are independent of the other
    sample in the pair (leave-one-out), so the estimate stays a valid bound.

    Args:
      scores: ``[batch, batch]`` critic scores, diagonal = joint samples.
      alpha: interpolation weight in ``[0, 1]``.
      log_baseline: ``log a(y_j)``, a scalar or ``[batch]``.
        As in `tuba`, ``get_bound("interpolated")`` takes no default for it.

    Returns:
      ``[]`` the bound in nats.
    """
    _checks.check_scores(scores)
    # (`is_number`: a concrete jnp.asarray(0.1) too; True, which was 1 (InfoNCE), is not one)
    if not (_checks.is_number(alpha) and 0.0 <= _checks.host_float(alpha) <= 1.0):
        raise ValueError(f"`alpha` must be a number in [0, 1], got {alpha!r}.")
    alpha = _checks.host_float(alpha)
    if alpha == 0.0:
        return tuba(scores, log_baseline=log_baseline)
    scores = _checks.at_least_float32(jnp.asarray(scores))
    batch = scores.shape[0]
    log_a = jnp.broadcast_to(_baseline_row(log_baseline, batch), (batch, batch))
    # A Python-number baseline defers to the scores' dtype (`jnp.diag` below would otherwise
    # turn a weak float64 under x64 into a strong one and the value into float64).
    log_a = log_a.astype(jnp.result_type(scores, log_baseline))
    # Marginal pairs (x_i, y_j), i != j: the K samples are all x except x_j (which depends on
    # y_j); x_i is one of them.
    log_m = _log_loo_mean_exp(scores)
    if alpha == 1.0:
        log_base = log_m
    else:
        log_base = jnp.logaddexp(jnp.log(alpha) + log_m, jnp.log1p(-alpha) + log_a)
    # Their mean over i is m(y_j) = exp(log_m[j, j]), so the term is the mean over j of
    # m_j / a_alpha(y_j) = 1 / (alpha + (1 - alpha) a(y_j) / m_j), at most 1 / alpha. As
    # exp(scores - log_base) it differenced two large exponents: at scores ~1e4 their float32
    # rounding, times up to 1 / alpha, read 0.7 nats off at alpha = 1e-3 and gradients 8 % off
    # at 0.01.
    log_ratio = jnp.diag(log_a) - jnp.diag(log_m)  # log a(y_j) - log m_j
    marginal_term = jnp.mean(jnp.exp(-jnp.logaddexp(jnp.log(alpha), jnp.log1p(-alpha) + log_ratio)))
    # Joint pair (x_j, y_j): the K samples leave out one other x_i, averaged over the B - 1 choices.
    joint_term = mean_offdiag(jnp.diag(scores)[None, :] - log_base)
    return 1.0 + joint_term - marginal_term


def flo(scores: ArrayLike, u: ArrayLike) -> Array:
    r"""FLO, the Fenchel-Legendre optimization bound (Guo et al. 2022).

    .. math:: I_{FLO} = 1 + E_{p(x,y)}\left[-u(x,y) - e^{-u(x,y)}
              E_{p(x')}\left[e^{f(x',y) - f(x,y)}\right]\right]

    A lower bound for every critic ``f`` and every ``u``; for a fixed ``f`` the optimal ``u`` is
    ``log E_{x'} e^{f(x',y) - f(x,y)}``, and with the optimal critic the bound is tight. Both
    networks are trained by maximizing it; no log-partition function is estimated from the batch.
    In a batch the inner mean over ``x'`` takes the ``B - 1`` other samples (``i != j``), an
    unbiased estimate for fixed ``f`` and ``u``. Past an exponent of 80 the exponential continues
    logarithmically (`_soft_exp`): values below about ``-5e34`` depart from the formula.

    Args:
      scores: ``[batch, batch]`` critic scores, diagonal = joint samples.
      u: ``[batch]``, ``u(x_j, y_j)`` on the joint pairs.

    Returns:
      ``[]`` the bound in nats.
    """
    scores = _checked_scores(scores)
    batch = scores.shape[0]
    if jnp.shape(u) != (batch,):
        raise ValueError(
            f"`u` must have shape [{batch}] (one value per joint pair), got {jnp.shape(u)}."
        )
    _checks.check_float(u, "u")
    u = _checks.at_least_float32(jnp.asarray(u))  # a bfloat16 mean(u) was off by ~4e-3 nats
    log_ratio = log_mean_exp_offdiag(scores, axis=0) - jnp.diag(scores)
    # Each term divided by the batch before the sum: a diverging critic's terms (up to ~5e36
    # each, `_soft_exp`) summed first overflowed float32 to -inf (from a batch of ~700 at
    # scores of 1000, of ~70 at the ceiling).
    return 1.0 - jnp.mean(u) - jnp.sum(_soft_exp(log_ratio - u) / batch)


# --- MINE: DV with a moving-average-corrected gradient -------------------------------------


class MineState(NamedTuple):
    """State of MINE's moving average of ``E_q[e^f]``, kept in log space."""

    log_ema: Array  # [] log of the (uncorrected) exponential moving average (unread at count 0)
    count: Array  # [] number of updates so far (for the bias correction)


class StatefulBound(NamedTuple):
    """An ``(init, update)`` pair of pure functions, like `optax.GradientTransformation`.

    ``init() -> state``; ``update(scores, state) -> (value, new_state)``.
    """

    init: Callable[[], PyTree]
    update: Callable[[Array, PyTree], tuple[Array, PyTree]]


def mine(*, decay: float = 0.99) -> StatefulBound:
    r"""MINE (Belghazi et al. 2018): the DV bound with a bias-corrected gradient.

    The gradient of DV's log term, ``grad E_q[e^f] / E_q[e^f]``, is biased when the denominator
    is a batch mean. MINE replaces the denominator with an exponential moving average over steps.
    Here the moving average is bias-corrected as in Adam (it starts at zero), so that

    .. math:: \nabla \hat I = \nabla \bar f_{joint}
              - \frac{\nabla \overline{e^{f}}_{marginal}}{\mathrm{EMA}_t / (1 - d^t)}.

    The returned value equals `dv` (the estimate); only its gradient differs.

    Args:
      decay: the moving average's decay ``d`` in ``[0, 1)``.

    Returns:
      A `StatefulBound`; ``update(scores [batch, batch], state) -> (value [], state)``.
    """
    # In float32, where it is applied: 0.99999999 rounds to 1 (log(1 - d) = -inf: NaN values).
    if not (_checks.is_number(decay) and 0.0 <= np.float32(_checks.host_float(decay)) < 1.0):
        raise ValueError(f"`decay` must be a number in [0, 1) (in float32), got {decay!r}.")
    decay = _checks.host_float(decay)

    def init() -> MineState:
        # log_ema 0, not log 0 = -inf: the first update does not read it (`count` 0), and an
        # -inf made `jax_debug_infs` stop every program that starts a MINE state.
        return MineState(log_ema=jnp.zeros((), jnp.float32), count=jnp.array(0, jnp.int32))

    def update(scores: ArrayLike, state: MineState) -> tuple[Array, MineState]:
        scores = _checked_scores(scores)
        if not isinstance(state, MineState):  # ("'tuple' object has no attribute 'log_ema'")
            raise TypeError(f"`state` must be the MineState of `init()`, got {state!r:.80}.")
        log_marginal = log_mean_exp_offdiag(scores)  # log of the batch mean of e^f
        batch_log_mean = jax.lax.stop_gradient(log_marginal)
        if decay == 0.0:
            log_ema = batch_log_mean
        else:  # log(d ema + (1 - d) batch mean); the average of nothing is 0
            new_term = jnp.log1p(-decay) + batch_log_mean
            log_ema = jnp.where(
                state.count == 0,
                new_term,
                jnp.logaddexp(jnp.log(decay) + state.log_ema, new_term),
            )
        count = state.count + 1
        log_corrected = log_ema - jnp.log1p(-(decay ** count.astype(jnp.float32)))
        joint_term = jnp.mean(jnp.diag(scores))
        # exp(log_marginal - log_corrected) <= 1 / (1 - decay): no overflow.
        surrogate = joint_term - jnp.exp(log_marginal - log_corrected)
        value = joint_term - log_marginal
        return _straight_through(value, surrogate), MineState(
            log_ema=log_ema.astype(jnp.float32), count=count
        )

    return StatefulBound(init, update)


# --- Registry -----------------------------------------------------------------------------


# The learned inputs a bound may take besides the scores, each from a network the trainers add
# (`mi_jax.training.BoundEnsemble`): FLO's u(x, y) and a log-baseline log a(y).
BOUND_INPUTS = ("u", "log_baseline")


# A frozen dataclass, not a NamedTuple as optax's (init, update) pairs are: a `Bound` is
# called, and `jax.jit(bound)` needs a weak reference to it, which no tuple takes (jaxlib 0.10
# raised a TypeError, then crashed the interpreter on a second try).
@dataclasses.dataclass(frozen=True)
class Bound:
    """A bound chosen by name, with a uniform interface for trainers.

    Attributes:
      name: the registry name.
      init: ``init() -> state`` (``()`` for stateless bounds).
      apply: ``apply(scores, state, **inputs) -> (value, new_state)``.
      inputs: names of extra learned inputs the bound needs besides the scores: ``"u"``
        (``[batch]``, FLO) or ``"log_baseline"`` (``[batch]``, TUBA and I_alpha).
      objective: ``objective(scores) -> []``, the objective whose gradient training follows,
        for bounds trained with one objective and read out with another (``js`` and ``smile``
        with ``gradient="js"``: `js_fgan`); None where the value is its own objective. Early
        stopping on held-out data watches it (`mi_jax.estimate_mi`).
      readout: ``readout(scores) -> []``, the value with its own gradient, for a bound whose
        ``apply`` value carries another gradient (an ``objective``'s; MINE's corrected one: its
        readout is `dv`): to differentiate the estimate itself, e.g. with respect to the samples
        (`mi_jax.training.BoundEnsemble.readouts`); None otherwise.
    """

    name: str
    init: Callable[[], PyTree]
    apply: Callable[..., tuple[Array, PyTree]]
    inputs: tuple[str, ...] = ()
    objective: Callable[[Array], Array] | None = None
    readout: Callable[[Array], Array] | None = None

    def __call__(self, scores: ArrayLike, **inputs: ArrayLike) -> Array:
        """The bound's value on ``scores`` ``[batch, batch]`` (and its ``inputs``), read with
        a fresh state: ``get_bound("nwj")(scores)``. (MINE's value does not depend on its
        state; its corrected gradient does: train it through ``apply`` and its state.)"""
        return self.apply(scores, self.init(), **inputs)[0]


def make_bound(
    name: str,
    fn: Callable[..., Array],
    inputs: tuple[str, ...] = (),
    objective: Callable[[Array], Array] | None = None,
    readout: Callable[[Array], Array] | None = None,
    **hparams: Any,
) -> Bound:
    """The `Bound` of a stateless bound function ``fn(scores, **inputs, **hparams) -> []``.

    Every bound of this module but MINE is one; so is a new one (README, "Adding a bound"),
    ``register_bound("my_bound", lambda **kw: make_bound("my_bound", my_bound, **kw))``, whose
    ``tests/test_bound_contract.py`` checks then run with the others'.

    Args:
      name: the registry name.
      fn: the bound, a pure function of the ``[batch, batch]`` scores.
      inputs: the learned inputs ``fn`` takes by keyword besides the scores (``"u"``,
        ``"log_baseline"``: see `Bound`).
      objective: the training objective, where it is not the value (see `Bound`).
      readout: with an ``objective``, the value with its own gradient (see `Bound`).
      **hparams: ``fn``'s hyperparameters, checked now by tracing ``fn`` on an abstract 2 x 2
        matrix (nothing is compiled or run), rather than inside a jitted step later.
    """
    if not (isinstance(inputs, tuple) and set(inputs) <= set(BOUND_INPUTS)):
        raise ValueError(
            f"`inputs` of bound {name!r} must be a tuple of names from {BOUND_INPUTS} (the "
            f"learned inputs the trainers give a bound), got {inputs!r}."
        )
    if clash := sorted(set(hparams) & set(inputs)):
        raise _checks.HparamsError(
            f"{clash} of bound {name!r} are learned inputs (the trainer's networks give them), "
            "not hyperparameters."
        )
    for what, f in (("objective", objective), ("readout", readout)):
        if f is not None and not callable(f):
            raise TypeError(f"`{what}` of bound {name!r} must be a function of the scores.")
    if readout is not None and objective is None:
        raise ValueError(
            f"bound {name!r}: a `readout` goes with an `objective` (without one, the value "
            "carries its own gradient)."
        )
    _checks.check_hparam_names("bound", name, fn, hparams, positional=1, exclude=inputs)
    scores = jax.ShapeDtypeStruct((2, 2), jnp.float32)
    vector = jax.ShapeDtypeStruct((2,), jnp.float32)

    def check_scalar(what, out):
        if not (getattr(out, "shape", None) == () and jnp.issubdtype(out.dtype, jnp.floating)):
            raise TypeError(
                f"bound {name!r}: its {what} must be a float scalar (shape []), got "
                f"{getattr(out, 'shape', type(out))} {getattr(out, 'dtype', '')}."
            )

    inputs_spec = {k: vector for k in inputs}
    check_scalar("value", jax.eval_shape(functools.partial(fn, **hparams), scores, **inputs_spec))
    for what, f in (("objective", objective), ("readout", readout)):
        if f is not None:
            check_scalar(what, jax.eval_shape(f, scores))

    def apply(scores, state, **extra):
        if missing := [k for k in inputs if k not in extra]:
            # (TUBA and I_alpha would read log a(y) = 0 silently: the network's output lost.)
            raise TypeError(
                f"bound {name!r} takes its learned inputs {missing} by keyword, `[batch]` "
                "arrays from the trainer's networks (`Bound.inputs`); missing."
            )
        return fn(scores, **extra, **hparams), state

    return Bound(name, lambda: (), apply, inputs, objective, readout)


def _smile_bound(name: str, **hparams: Any) -> Bound:
    # `smile`'s own defaults for what is not given (one place states them: its signature).
    defaults = {
        k: p.default for k, p in inspect.signature(smile).parameters.items() if k != "scores"
    }
    gradient, clip = ({**defaults, **hparams}[k] for k in ("gradient", "clip"))
    # Trained on the JS objective, read out as the clipped bound (its value's own gradient).
    readout = functools.partial(smile, clip=clip, gradient="smile")
    js_trained = {"objective": js_fgan, "readout": readout} if gradient == "js" else {}
    bound = make_bound(name, smile, **js_trained, **hparams)
    # (clip, checked by make_bound: None or a positive number)
    if gradient == "smile" and clip is not None and math.isfinite(clip):
        raise ValueError(
            "bound 'smile' with gradient='smile' and a finite `clip`: as a training objective the "
            "clipped bound is unbounded above (only the marginal term is clipped; the critic's "
            "scores grow without limit, estimates reach ~1e8 nats). Train with gradient='js' "
            "(the default, as Song & Ermon do) or clip=None (DV)."
        )
    return bound


def _mine_bound(name: str, **hparams: Any) -> Bound:
    _checks.check_hparam_names("bound", name, mine, hparams)
    pair = mine(**hparams)
    return Bound(name, pair.init, pair.update, readout=dv)


_REGISTRY: dict[str, Callable[..., Bound]] = {
    "dv": lambda **kw: make_bound("dv", dv, **kw),
    "mine": lambda **kw: _mine_bound("mine", **kw),
    "nwj": lambda **kw: make_bound("nwj", nwj, **kw),
    "tuba": lambda **kw: make_bound("tuba", tuba, ("log_baseline",), **kw),
    "infonce": lambda **kw: make_bound("infonce", infonce, **kw),
    "js": lambda **kw: make_bound("js", js, objective=js_fgan, readout=js_readout, **kw),
    "interpolated": lambda **kw: make_bound("interpolated", interpolated, ("log_baseline",), **kw),
    "smile": lambda **kw: _smile_bound("smile", **kw),
    "flo": lambda **kw: make_bound("flo", flo, ("u",), **kw),
}


def register_bound(name: str, factory: Callable[..., Bound], *, override: bool = False) -> None:
    """Registers ``factory(**hparams) -> Bound`` under ``name`` (for new bounds in forks);
    ``override`` replaces a bound of that name."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # not callable (`register` says so), or unreadable
        parameters = ()
    first = next(iter(parameters), None)
    if first is not None and first.name == "scores" and first.default is first.empty:
        # A bound function itself failed only when first used, its message blaming "bad
        # hyperparameters []". (A factory may require hyperparameters: `get_bound` passes them.)
        raise TypeError(
            f"register_bound takes a factory `(**hparams) -> Bound`, not a bound function of "
            f"`scores`: register `lambda **kw: make_bound({name!r}, fn, **kw)` for {name!r}."
        )
    _checks.register("bound", name, factory, _REGISTRY, override=override)


def available_bounds() -> tuple[str, ...]:
    """Names of all registered bounds."""
    return tuple(_REGISTRY)


def get_bound(name: str, **hparams: Any) -> Bound:
    """Returns the bound registered as ``name``, with hyperparameters bound.

    Example: ``get_bound("smile", clip=5.0)``, ``get_bound("mine", decay=0.99)``,
    ``get_bound("interpolated", alpha=0.01)``.
    """
    if not _checks.is_known(name, _REGISTRY):
        raise _checks.unknown_name_error("bound", name, _REGISTRY)
    bound = _checks.call_factory("bound", name, _REGISTRY[name], **hparams)
    if not isinstance(bound, Bound):
        raise TypeError(
            f"the factory registered as bound {name!r} returned a {type(bound).__name__}, not a "
            "`Bound` (build one with `make_bound`)."
        )
    return bound
