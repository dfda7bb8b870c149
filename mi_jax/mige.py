r"""MIGE: gradients of entropy and mutual information from score estimates (Wen et al., 2020).

For reparameterized samples ``z = g_theta(eps)`` of ``q_theta``,

.. math:: \nabla_\theta H(Z) = -\mathbb{E}\big[\nabla_z \log q_\theta(z)^\top
   \partial z / \partial\theta\big]

(the term ``E[grad_theta log q_theta(z)]`` vanishes: it is the gradient of ``int q = 1``). The
score ``grad_z log q`` is unknown for an implicit ``q``; MIGE plugs in a score estimate
``s(z)`` (`mi_jax.score`) computed from the same samples. The estimate is exposed as a scalar
*surrogate* whose `jax.grad` is the gradient estimate, so it drops into optax like a bound:

.. math:: \tilde H(z) = -\frac{1}{M}\sum_m \mathrm{sg}[s(z_m)]^\top z_m,

with ``sg`` the stop-gradient. Its *value* is not an entropy (only its gradient means anything).

Mutual information follows from ``I(X; Y) = H(X) + H(Y) - H(X, Y)``:
``mi_surrogate(x, y)`` has gradient ``grad H(X) + grad H(Y) - grad H(X, Y)``, with the joint
score estimated on the concatenated samples ``[x, y]``.

Which variables must be reparameterized: every sample whose distribution depends on theta must
be a differentiable function of theta and of noise drawn independently of theta, so that
``dz/dtheta`` exists (an encoder's output ``z = E_theta(x)`` for data ``x``, or
``mu_theta(x) + sigma_theta(x) eps`` for a stochastic encoder). Data that does not depend on
theta (``x`` in the InfoMax case ``I(X; E_theta(X))``) needs no gradient: its entropy term is
constant, and it enters only through the joint score. Samples drawn by a non-differentiable
sampler (a categorical, say) give a zero gradient here, silently: reparameterize or use a bound.

The Information Bottleneck (as in the paper): ``encoder_mi_surrogate`` gives ``grad I(X; Z)``
for a stochastic encoder (its conditional score is known in closed form, so only the marginal
score ``grad log q(z)`` is estimated). ``I(Z; Y)`` for a continuous target is
``mi_surrogate(z, y)``; for a discrete label it has no score, and the usual variational lower
bound ``H(Y) - CE`` (a classifier's cross-entropy on ``z``) supplies its gradient.

Batching: on XLA:CPU (jaxlib 0.10.2) a ``jit(vmap(grad(mi_surrogate)))`` over many cases hung
here on its second execution (batched Cholesky/eigh inside); `experiments.mige_toy` loops over
cases with `jax.lax.map`, which does not.

References:
  Wen, Zhou, He, Zhou & Xu, "Mutual Information Gradient Estimation for Representation
  Learning", ICLR 2020 (arXiv 2005.01123).
"""

import jax
import jax.numpy as jnp

from mi_jax import _checks
from mi_jax import score as score_lib
from mi_jax.types import Array, ArrayLike, ScoreFn


def _resolve(score_fn: ScoreFn | str | None) -> ScoreFn:
    if score_fn is None:
        return score_lib.get_score_estimator("ssge")
    if isinstance(score_fn, str):
        return score_lib.get_score_estimator(score_fn)
    if not callable(score_fn):
        raise TypeError(
            "`score_fn` must be a function samples -> scores, a registered estimator name "
            f"({', '.join(score_lib.available_score_estimators())}) or None, got {score_fn!r}."
        )
    return score_fn


def _check_paired(**arrays: ArrayLike) -> None:
    """Checks of paired sample matrices, with errors naming the argument: each as a score
    estimator's ``samples`` (``[M, d]`` float, ``M >= 2``, ``d >= 1``, finite where concrete),
    all with the same ``M``."""
    for name, a in arrays.items():
        score_lib._check_samples(a, name)
    sizes = {name: jnp.shape(a)[0] for name, a in arrays.items()}
    if len(set(sizes.values())) > 1:
        names = " and ".join(f"`{n}`" for n in sizes)
        raise ValueError(
            f"{names} must hold the same num_samples (paired samples), got shapes "
            f"{', '.join(str(jnp.shape(a)) for a in arrays.values())}."
        )


def entropy_surrogate(z: ArrayLike, score_fn: ScoreFn | str | None = None) -> Array:
    """A scalar whose gradient (w.r.t. whatever ``z`` depends on) estimates ``grad H(Z)``.

    Args:
      z: ``[M, d]`` reparameterized samples.
      score_fn: ``score_fn(samples) -> [M, d]`` score estimates at the samples, a registered
        estimator name, or ``None`` (SSGE with its defaults).

    Returns:
      ``[]``: ``-mean_m sg[s(z_m)] . z_m``.
    """
    _check_paired(z=z)
    z = jnp.asarray(z)
    scores = jax.lax.stop_gradient(_resolve(score_fn)(jax.lax.stop_gradient(z)))
    if jnp.shape(scores) != z.shape:  # a [M, 1] score would broadcast into a wrong gradient
        raise ValueError(
            f"`score_fn` must return scores of the samples' shape {z.shape}, got "
            f"{jnp.shape(scores)}."
        )
    return _surrogate(scores, z)


def _surrogate(score: Array, z: Array) -> Array:
    """``-mean_m sg[s_m] . z_m``: its gradient through ``z`` is the entropy's, given the score
    ``s`` of ``z``'s density at the samples."""
    return -jnp.mean(jnp.sum(jax.lax.stop_gradient(score) * z, axis=-1))


def mi_surrogate(x: ArrayLike, y: ArrayLike, score_fn: ScoreFn | str | None = None) -> Array:
    """A scalar whose gradient estimates ``grad I(X; Y) = grad H(X) + grad H(Y) - grad H(X, Y)``.

    Args:
      x: ``[M, dx]`` samples (reparameterized where they depend on the parameters).
      y: ``[M, dy]`` samples paired with ``x``.
      score_fn: as in `entropy_surrogate`, used for ``X``, ``Y`` and ``(X, Y)``.

    Returns:
      ``[]`` surrogate.
    """
    _check_paired(x=x, y=y)
    x, y = jnp.asarray(x), jnp.asarray(y)
    fn = _resolve(score_fn)
    joint = jnp.concatenate([x, y], axis=-1)
    return entropy_surrogate(x, fn) + entropy_surrogate(y, fn) - entropy_surrogate(joint, fn)


def infomax_surrogate(x: ArrayLike, z: ArrayLike, score_fn: ScoreFn | str | None = None) -> Array:
    """``grad I(X; Z)`` for a deterministic encoder ``z = E_theta(x)`` of data ``x``.

    ``H(X)`` does not depend on theta, so this is ``grad H(Z) - grad H(X, Z)``; ``x`` enters
    only through the joint score. (For a deterministic injective encoder of continuous ``x``,
    ``I(X; Z)`` is infinite; as in the paper, the estimate is the gradient of the smoothed
    finite-sample quantity and is useful as a training signal.)

    Args:
      x: ``[M, dx]`` data (float; treated as a constant).
      z: ``[M, dz]`` its codes ``E_theta(x)``.
      score_fn: as in `entropy_surrogate`, used for ``Z`` and ``(X, Z)``.

    Returns:
      ``[]`` surrogate.
    """
    _check_paired(x=x, z=z)
    x, z = jax.lax.stop_gradient(jnp.asarray(x)), jnp.asarray(z)
    fn = _resolve(score_fn)
    joint = jnp.concatenate([x, z], axis=-1)
    return entropy_surrogate(z, fn) - entropy_surrogate(joint, fn)


def encoder_mi_surrogate(
    z: ArrayLike, conditional_score: ArrayLike, score_fn: ScoreFn | str | None = None
) -> Array:
    """``grad I(X; Z)`` for a stochastic encoder ``z ~ q_theta(z | x)`` (the IB case).

    ``I(X; Z) = H(Z) - H(Z | X)``. ``grad H(Z)`` comes from the estimated marginal score; the
    conditional score is known for the usual encoders, e.g. ``-(z - mu) / sigma^2`` for
    ``z = mu_theta(x) + sigma_theta(x) eps`` (so ``grad H(Z | X) = E[grad sum log sigma]``).

    Args:
      z: ``[M, d]`` reparameterized encoder samples, one per data point.
      conditional_score: ``[M, d]`` ``grad_z log q(z_m | x_m)`` (treated as a constant).
      score_fn: estimator of the marginal score, as in `entropy_surrogate`.
    """
    _check_paired(z=z)
    _checks.check_float(conditional_score, "conditional_score")
    _checks.check_finite_if_concrete(conditional_score, "conditional_score")
    z = jnp.asarray(z)
    conditional_score = jnp.asarray(conditional_score)
    if conditional_score.shape != z.shape:
        raise ValueError(
            f"`conditional_score` must have the shape of `z` {z.shape}, got "
            f"{conditional_score.shape}."
        )
    return entropy_surrogate(z, score_fn) - _surrogate(conditional_score, z)
