r"""A learned score estimator: denoising score matching with a small Flax MLP.

``dsm_score(samples, points)`` fits ``s_theta`` to the samples by denoising score matching
(Vincent, 2011): for ``z~ = z + sigma eps``, ``s_theta(z~)`` is regressed on
``-(z~ - z) / sigma^2 = -eps / sigma``, whose minimizer is the score of ``q`` smoothed by
``N(0, sigma^2 I)``; it then evaluates ``s_theta`` at ``points``. Training is a `lax.scan` of
Adam steps inside the function, so the estimator stays a pure, jit-able function of the samples
(with a fixed key), like the kernel estimators in `mi_jax.score`, and is registered there as
``"dsm"``.

The samples are standardized per coordinate and ``sigma`` is ``noise_scale`` in those units:
small noise means little smoothing bias but a noisier regression target (variance ~ 1/sigma^2).

References:
  Vincent, "A Connection Between Score Matching and Denoising Autoencoders", Neural
  Computation 2011; Song & Ermon, "Generative Modeling by Estimating Gradients of the Data
  Distribution", NeurIPS 2019.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mi_jax import _checks, critics, score
from mi_jax.types import Array, ArrayLike


class ScoreMLP(nn.Module):
    """``s(z)``: an MLP from ``[N, d]`` to ``[N, d]``."""

    hidden: Sequence[int] = (128, 128)
    activation: str = "silu"

    @nn.compact
    def __call__(self, z: Array) -> Array:
        return critics.MLP(self.hidden, z.shape[-1], self.activation)(z)


def dsm_score(
    samples: ArrayLike,
    points: ArrayLike | None = None,
    *,
    noise_scale: float = 0.3,
    steps: int = 500,
    batch_size: int = 256,
    hidden: Sequence[int] = (128, 128),
    learning_rate: float = 3e-3,
    seed: int = 0,
) -> Array:
    """Denoising-score-matching estimate of ``grad log q`` at ``points``, ``[N, d]``.

    Args:
      samples: ``[M, d]`` samples of ``q`` (standardized internally; the score is mapped back).
      points: ``[N, d]`` where to evaluate; ``None`` means at ``samples``.
      noise_scale: ``sigma`` relative to the samples' standard deviation, > 0.
      steps: Adam steps.
      batch_size: samples per step (capped at ``M``).
      hidden: hidden widths of the score network.
      learning_rate: Adam's learning rate.
      seed: seed of the initialization, the minibatches and the noise.

    Returns:
      ``[N, d]`` score estimates.
    """
    samples = score._check_samples(samples)
    points = samples if points is None else score._check_samples(points, "points", least=1)
    if not noise_scale > 0:
        raise ValueError(f"`noise_scale` must be > 0, got {noise_scale}.")
    if points.shape[1] != samples.shape[1]:
        raise ValueError(
            f"`points` must have the samples' dimension {samples.shape[1]}, got {points.shape}."
        )
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if not (_checks.is_int(value) and value >= 1):
            raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    m = samples.shape[0]
    # Standardize: z = (x - mean) / std, so grad_x log q = grad_z log q_z / std.
    mean = jnp.mean(samples, axis=0, keepdims=True)
    std = jnp.maximum(jnp.std(samples, axis=0, keepdims=True), 1e-6)
    z = (samples - mean) / std
    sigma = noise_scale
    net = ScoreMLP(tuple(hidden))
    key = jax.random.key(seed)
    init_key, loop_key = jax.random.split(key)
    params = net.init(init_key, z[:1])
    optimizer = optax.adam(learning_rate)
    batch = min(batch_size, m)

    def loss_fn(params, key):
        idx_key, noise_key = jax.random.split(key)
        zb = z[jax.random.choice(idx_key, m, (batch,), replace=False)]
        eps = jax.random.normal(noise_key, zb.shape, zb.dtype)  # float32 samples: also in x64
        pred = net.apply(params, zb + sigma * eps)
        # sigma^2-weighted DSM loss: |sigma s + eps|^2, of order one at every sigma.
        return jnp.mean(jnp.sum(jnp.square(sigma * pred + eps), axis=-1))

    def step(carry, i):
        params, opt_state = carry
        grads = jax.grad(loss_fn)(params, jax.random.fold_in(loop_key, i))
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), jnp.arange(steps))
    return net.apply(params, (points - mean) / std) / std


score.register_score_estimator("dsm", dsm_score)
