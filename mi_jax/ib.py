r"""Deep Information Bottleneck classification: VIB, MINE-IB and MIGE-IB on one encoder.

A stochastic encoder ``q(z | x) = N(mu(x), diag sigma(x)^2)`` and a softmax decoder
``p(y | z)`` are trained on

.. math:: \mathcal{L} = \mathbb{E}_{x, y}\,\mathbb{E}_{z \sim q(z|x)}[-\log p(y | z)]
          + \beta\, \hat I(X; Z),

the cross-entropy being (up to the constant ``H(Y)``) minus a variational lower bound on
``I(Z; Y)``. The methods differ only in how ``I(X; Z)`` is penalized (``method``):

* ``"vib"`` (Alemi et al., ICLR 2017): the variational upper bound
  ``E_x KL(q(z | x) || N(0, I)) >= I(X; Z)``, in closed form (`gaussian_kl`).
* ``"mine"`` (Belghazi et al., ICML 2018, section 5.3): a registered lower bound (MINE's
  bias-corrected DV by default) with its own critic ``T(x, z)`` on the flattened input and the
  code; a min-max game: the critic ascends the bound, the encoder descends ``beta`` times it.
* ``"mige"`` (Wen et al., ICLR 2020): no value, only the gradient
  ``grad I(X; Z) = grad H(Z) - grad H(Z | X)``: the marginal term from a score estimator on the
  batch's codes (`mi_jax.mige.entropy_surrogate`), the conditional term exact, since
  ``H(Z | X) = E_x sum_k log sigma_k(x) + const`` for a Gaussian encoder (this is the
  conditional-score route of `mi_jax.mige.encoder_mi_surrogate` with its zero-mean noise
  removed).
* ``"deterministic"``: the baseline without a bottleneck: ``z = mu(x)``, cross-entropy only.

The encoder is any registered trunk (`mi_jax.encoders`) whose global output has width
``2 K`` (means and, through ``softplus(. - std_offset)`` as in Alemi et al., standard
deviations); the decoder is one dense layer (logistic regression on ``z``, as in the paper).

References:
  Alemi, Fischer, Dillon & Murphy, "Deep Variational Information Bottleneck", ICLR 2017.
  Belghazi et al., "Mutual Information Neural Estimation", ICML 2018.
  Wen, Zhou, He, Zhou & Xu, "Mutual Information Gradient Estimation for Representation
  Learning", ICLR 2020.
"""

import math
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from mi_jax import _checks, training
from mi_jax import critics as critics_lib
from mi_jax import encoders as encoders_lib
from mi_jax import mige as mige_lib
from mi_jax import score as score_lib
from mi_jax.types import Array, PRNGKey, PyTree, ScoreFn

METHODS = ("deterministic", "vib", "mine", "mige")


def gaussian_kl(mu: Array, sigma: Array) -> Array:
    r"""``KL(N(mu, diag sigma^2) || N(0, I))`` per row, ``[B]``, for ``mu``, ``sigma`` ``[B, K]``:

    .. math:: \tfrac12 \sum_k \big(\mu_k^2 + \sigma_k^2 - 1 - 2 \log \sigma_k\big).
    """
    if jnp.shape(mu) != jnp.shape(sigma):
        raise ValueError(f"`mu` {jnp.shape(mu)} and `sigma` {jnp.shape(sigma)} differ in shape.")
    return 0.5 * jnp.sum(jnp.square(mu) + jnp.square(sigma) - 1.0 - 2.0 * jnp.log(sigma), -1)


def mige_penalty(z: Array, sigma: Array, score_fn: ScoreFn) -> Array:
    r"""A scalar whose gradient estimates ``grad I(X; Z)`` for a Gaussian encoder (MIGE-IB).

    ``I(X; Z) = H(Z) - H(Z | X)`` with ``H(Z | X) = E_x sum_k log sigma_k(x) + const``: the
    first gradient from ``score_fn``'s estimate of ``grad log q(z)`` at the codes
    (`mi_jax.mige.entropy_surrogate`), the second exact. Its value is not ``I``.

    Args:
      z: ``[M, K]`` reparameterized codes ``mu + sigma * eps``.
      sigma: ``[B, K]`` the encoder's standard deviations (``M`` a multiple of ``B`` is fine:
        only their mean log enters).
      score_fn: ``score_fn(samples [M, K]) -> [M, K]`` (a registered estimator, or exact).
    """
    marginal = mige_lib.entropy_surrogate(z, score_fn)
    return marginal - jnp.mean(jnp.sum(jnp.log(sigma), axis=-1))


class GaussianEncoder(nn.Module):
    """``x -> (mu, sigma)``, each ``[B, latent_dim]``: a registered trunk with a ``2 K`` head.

    Attributes:
      latent_dim: ``K``, the code's width (>= 1).
      trunk: a name from `mi_jax.encoders` (``"mlp"`` for the permutation-invariant protocol).
      trunk_hparams: its hyperparameters, as ``((name, value), ...)`` (hashable).
      std_offset: ``sigma = softplus(raw - std_offset)``; 5 (Alemi et al.) starts the encoder
        nearly deterministic (``sigma ~ 0.007``).
      centered_inputs: feed the trunk ``2 x - 1`` (pixels in ``[-1, 1]``, as Alemi et al.'s
        code does) instead of ``x`` in ``[0, 1]``.
      kernel_init: the trunk's weight initializer (`mi_jax.critics.get_initializer`).
    """

    latent_dim: int = 256
    trunk: str = "mlp"
    trunk_hparams: tuple[tuple[str, Any], ...] = (("hidden", (1024, 1024)),)
    std_offset: float = 5.0
    centered_inputs: bool = False
    kernel_init: str = "lecun_normal"

    @nn.compact
    def __call__(self, images: Array) -> tuple[Array, Array]:
        """``images`` ``[B, H, W, C]`` (float in ``[0, 1]``) -> ``(mu, sigma)`` ``[B, K]``,
        ``sigma > 0``."""
        head = encoders_lib.get_encoder(
            self.trunk,
            latent_dim=2 * self.latent_dim,
            kernel_init=self.kernel_init,
            **dict(self.trunk_hparams),
        )
        out = head(2.0 * images - 1.0 if self.centered_inputs else images).global_
        mu, raw = jnp.split(out, 2, axis=-1)
        # Floored at the least normal float: a sigma that underflows to 0 (nothing pushes it
        # up at beta = 0) would make log sigma, the KL and its gradient inf and the loss NaN.
        return mu, jnp.maximum(jax.nn.softplus(raw - self.std_offset), jnp.finfo(raw.dtype).tiny)


class Prediction(NamedTuple):
    """What `IBModel.predict` returns for a batch of ``B`` images and ``C`` classes.

    Attributes:
      probs_at_mean: ``[B, C]`` the softmax at the posterior mean ``z = mu(x)``.
      probs_sampled: ``[B, C]`` the softmax averaged over the sampled codes (the predictive
        distribution; ``H(Y)`` minus its cross-entropy bounds what all the codes together hold
        about ``Y``, not ``I(Z; Y)`` of one code).
      kl: ``[B]`` ``KL(q(z|x) || N(0, I))``; None for the deterministic baseline (no rate:
        its code is not stochastic; no NaN is made on the device, where ``jax_debug_nans``
        would stop on it).
      log_probs_sampled: ``[B, C]`` the log-softmax averaged over the sampled codes: minus its
        entry at the label is the single-code cross-entropy ``E_z [-log q(y | z)]``, which gives
        the lower bound ``I(Z; Y) >= H(Y) - CE``.
    """

    probs_at_mean: Array
    probs_sampled: Array
    kl: Array | None
    log_probs_sampled: Array


def _check_labels(labels, batch: int, num_classes: int) -> None:
    """``labels`` must be ``[batch]`` integer class indices (a float or one-hot array failed
    in optax's cross-entropy or a broadcast, with a message that named no labels), and, where
    concrete, in ``[0, num_classes)`` (outside it the loss was NaN, the accuracy still read)."""
    if jnp.shape(labels) != (batch,):
        raise ValueError(
            f"`labels` must be [batch] = [{batch}] class indices, got shape {jnp.shape(labels)}"
            + ("; one-hot labels: `labels.argmax(-1)`." if jnp.ndim(labels) == 2 else ".")
        )
    if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
        raise TypeError(
            f"`labels` must be integer class indices, got {jnp.result_type(labels)}; "
            "`labels.astype(jnp.int32)`."
        )
    if not isinstance(labels, jax.core.Tracer):
        values = np.asarray(labels)
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(
                f"`labels` must lie in [0, {num_classes}) (`num_classes`), got values in "
                f"[{values.min()}, {values.max()}]."
            )


@struct.dataclass
class IBModel:
    """Encoder, decoder and ``I(X; Z)`` penalty of one method; pure ``init``/``loss``/``predict``.

    Attributes:
      method: one of `METHODS`.
      num_classes: the decoder's outputs.
      latent_dim / trunk / trunk_hparams / std_offset / centered_inputs: the `GaussianEncoder`.
      kernel_init: weight initializer of the encoder and the decoder
        (`mi_jax.critics.get_initializer`; Alemi et al.'s TensorFlow code: ``"glorot_uniform"``).
      bound / bound_hparams / critic / critic_hparams: MINE-IB's bound and critic ``T(x, z)``
        (any registered ones; the critic sees the flattened input and the code).
      critic_clip: `mi_jax.critics.soft_clip` of the critic's scores (``None``: off). The
        encoder minimizes a lower bound, so it can push the scores where the critic is wrong
        and without limit; unclipped, MINE-IB on digits diverged (scores and codes to inf).
      score_estimator / score_hparams: MIGE-IB's marginal score estimator (`mi_jax.score`).
      train_samples: codes drawn per example in a training step (the decoder's cross-entropy
        averages them; MINE-IB's critic scores the first).
    """

    method: str = struct.field(pytree_node=False, default="vib")
    num_classes: int = struct.field(pytree_node=False, default=10)
    latent_dim: int = struct.field(pytree_node=False, default=256)
    trunk: str = struct.field(pytree_node=False, default="mlp")
    trunk_hparams: tuple[tuple[str, Any], ...] = struct.field(
        pytree_node=False, default=(("hidden", (1024, 1024)),)
    )
    std_offset: float = struct.field(pytree_node=False, default=5.0)
    centered_inputs: bool = struct.field(pytree_node=False, default=False)
    kernel_init: str = struct.field(pytree_node=False, default="lecun_normal")
    bound: str = struct.field(pytree_node=False, default="mine")
    bound_hparams: tuple[tuple[str, Any], ...] = struct.field(pytree_node=False, default=())
    critic: str = struct.field(pytree_node=False, default="separable")
    critic_hparams: tuple[tuple[str, Any], ...] = struct.field(pytree_node=False, default=())
    critic_clip: float | None = struct.field(pytree_node=False, default=10.0)
    score_estimator: str = struct.field(pytree_node=False, default="ssge")
    score_hparams: tuple[tuple[str, Any], ...] = struct.field(pytree_node=False, default=())
    train_samples: int = struct.field(pytree_node=False, default=1)

    def __post_init__(self):
        _checks.freeze_fields(
            self, ("trunk_hparams", "bound_hparams", "critic_hparams", "score_hparams")
        )
        if self.method not in METHODS:
            raise _checks.unknown_name_error("IB method", self.method, METHODS)
        _checks.check_ints(latent_dim=self.latent_dim, train_samples=self.train_samples)
        _checks.check_ints(least=2, num_classes=self.num_classes)
        critics_lib.check_clip(self.critic_clip, "critic_clip")
        if not _checks.is_real(self.std_offset) or not math.isfinite(self.std_offset):
            raise ValueError(f"`std_offset` must be a finite number, got {self.std_offset!r}.")
        # Unknown names and hyperparameters fail here, before anything is traced.
        encoders_lib.get_encoder(self.trunk, latent_dim=2, **dict(self.trunk_hparams))
        critics_lib.get_initializer(self.kernel_init)
        _ = self.ensemble  # (any method: a misspelt bound or critic is a typo there too)
        if self.method == "mige":
            _ = self.score_fn

    @property
    def encoder(self) -> GaussianEncoder:
        return GaussianEncoder(
            self.latent_dim,
            self.trunk,
            self.trunk_hparams,
            self.std_offset,
            self.centered_inputs,
            self.kernel_init,
        )

    @property
    def decoder(self) -> nn.Module:
        return critics_lib.dense(self.num_classes, kernel_init=self.kernel_init)

    @property
    def ensemble(self) -> training.BoundEnsemble:
        """MINE-IB's bound with its critic (and FLO's/TUBA's extra network, if it has one)."""
        return training.make_ensemble(
            [(self.bound, dict(self.bound_hparams))],
            self.critic,
            dict(self.critic_hparams),
            clip=self.critic_clip,
        )

    @property
    def score_fn(self) -> ScoreFn:
        return score_lib.get_score_estimator(self.score_estimator, **dict(self.score_hparams))

    def init(self, rng: PRNGKey, images: Array) -> tuple[PyTree, PyTree]:
        """``(params, bound_states)`` for a batch ``images`` ``[B, H, W, C]`` (float)."""
        _checks.check_key(rng, "rng")
        enc_key, dec_key, critic_key = jax.random.split(rng, 3)
        encoder_params = self.encoder.init(enc_key, images)
        mu, _ = self.encoder.apply(encoder_params, images)
        params = {"encoder": encoder_params, "decoder": self.decoder.init(dec_key, mu)}
        states = ()
        if self.method == "mine":
            flat = images.reshape(images.shape[0], -1)
            params["critic"], states = self.ensemble.init(critic_key, flat, mu)
        return params, states

    def sample(self, params: PyTree, images: Array, rng: PRNGKey, num_samples: int):
        """``(z [S, B, K], mu [B, K], sigma [B, K])``; ``z = mu`` for ``"deterministic"``."""
        _checks.check_key(rng, "rng")
        _checks.check_ints(num_samples=num_samples)
        mu, sigma = self.encoder.apply(params["encoder"], images)
        if self.method == "deterministic":
            return jnp.broadcast_to(mu, (num_samples, *mu.shape)), mu, sigma
        eps = jax.random.normal(rng, (num_samples, *mu.shape), mu.dtype)
        return mu[None] + sigma[None] * eps, mu, sigma

    def loss(
        self,
        params: PyTree,
        bound_states: PyTree,
        images: Array,
        labels: Array,
        rng: PRNGKey,
        beta: Array,
    ) -> tuple[Array, tuple[dict[str, Array], PyTree]]:
        """``(loss, (metrics, new_bound_states))`` on a batch; ``beta`` ``[]`` (>= 0).

        ``images`` ``[B, H, W, C]`` (float), ``labels`` ``[B]`` int. Metrics: ``loss``, ``ce``
        (mean cross-entropy of the sampled codes), ``kl`` (``E KL(q(z|x) || N(0, I))``, an
        upper bound on ``I(X; Z)``; absent for the deterministic baseline), ``penalty`` (what
        ``beta`` multiplies: the KL, the MINE bound's value, MIGE's surrogate) and ``accuracy``.

        A negative or non-finite ``beta`` given as a Python number raises; an array (traced in
        the training step) is not read (`mi_jax._checks.check_weight`).
        """
        _checks.check_weight(beta, "beta")
        _check_labels(labels, jnp.shape(images)[0], self.num_classes)
        z, mu, sigma = self.sample(params, images, rng, self.train_samples)
        logits = self.decoder.apply(params["decoder"], z)  # [S, B, C]
        ce = jnp.mean(
            optax.softmax_cross_entropy_with_integer_labels(
                logits, jnp.broadcast_to(labels, logits.shape[:-1])
            )
        )
        kl = jnp.mean(gaussian_kl(mu, sigma))
        states = bound_states
        if self.method == "deterministic":
            kl = None  # the unused sigma head: no bottleneck, I(X; Z) unbounded
            penalty = jnp.zeros(())
            loss = ce
        elif self.method == "vib":
            penalty = kl
            loss = ce + beta * penalty
        elif self.method == "mine":
            flat = images.reshape(images.shape[0], -1)
            z0 = z[0]  # the critic scores the first code of each example
            critic = params["critic"]
            # Encoder side: descend beta * I through z with the critic held fixed. Critic
            # side: ascend I with the codes held fixed. The forward pass is shared by XLA.
            (value_enc,), _ = self.ensemble.apply(
                jax.lax.stop_gradient(critic), bound_states, flat, z0
            )
            (value,), states = self.ensemble.apply(
                critic, bound_states, flat, jax.lax.stop_gradient(z0)
            )
            penalty = value
            # The value reads CE + beta * I, the objective; the critic's -I term (and its
            # stop-gradient copy) only steers the critic's gradient.
            loss = ce + beta * value_enc - value + jax.lax.stop_gradient(value)
        else:  # mige
            penalty = mige_penalty(z.reshape(-1, z.shape[-1]), sigma, self.score_fn)
            loss = ce + beta * penalty
        accuracy = jnp.mean(jnp.argmax(logits, -1) == labels[None, :])
        metrics = dict(loss=loss, ce=ce, penalty=penalty, accuracy=accuracy)
        if kl is not None:
            metrics["kl"] = kl
        return loss, (metrics, states)

    def predict(self, params: PyTree, images: Array, rng: PRNGKey, num_samples: int) -> Prediction:
        """A `Prediction`: ``(probs_at_mean [B, C], probs_sampled [B, C], kl [B] (None for the
        deterministic baseline), log_probs_sampled [B, C])``.

        ``probs_sampled`` averages the softmax (not the logits) over ``num_samples`` codes
        (Alemi et al. use 12); ``log_probs_sampled`` averages the log-softmax over the same codes.
        """
        z, mu, sigma = self.sample(params, images, rng, num_samples)
        logits = self.decoder.apply(params["decoder"], z)  # [S, B, C]
        kl = None if self.method == "deterministic" else gaussian_kl(mu, sigma)
        return Prediction(
            probs_at_mean=jax.nn.softmax(self.decoder.apply(params["decoder"], mu)),
            probs_sampled=jnp.mean(jax.nn.softmax(logits), axis=0),
            kl=kl,
            log_probs_sampled=jnp.mean(jax.nn.log_softmax(logits), axis=0),
        )


def check_betas(betas: Sequence[float], name: str = "betas") -> tuple[float, ...]:
    """Non-empty, numbers (not strings or bools, which `float` would take), finite, ``>= 0``;
    returned as a tuple of floats."""
    if isinstance(betas, str) or not isinstance(betas, Iterable):
        raise ValueError(f"`{name}` must be a sequence of betas, e.g. ({betas!r},), got {betas!r}.")
    betas = tuple(betas)
    if not betas:
        raise ValueError(f"`{name}` is empty: give at least one beta.")
    for b in betas:
        if not (_checks.is_number(b) and 0 <= float(b) < math.inf):  # NaN fails `0 <=` too
            raise ValueError(f"`{name}` must hold finite numbers >= 0, got {b!r}.")
    return tuple(float(b) for b in betas)
