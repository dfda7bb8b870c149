r"""VAE, beta-VAE and InfoMax-VAE (Rezaabad & Vishwanath, 2020) in one model.

With a Gaussian encoder ``q(z | x)`` (`mi_jax.ib.GaussianEncoder`), a Bernoulli decoder
``p(x | z)`` and the prior ``N(0, I)``, the loss is

.. math:: \mathcal{L} = -\mathbb{E}_q[\log p(x | z)] + \beta\, \mathrm{KL}(q(z|x) \| p(z))
          - \gamma\, \hat I(X; Z),

``beta = 1, gamma = 0`` the VAE, ``beta > 1`` the beta-VAE (Higgins et al. 2017), ``gamma > 0``
the InfoMax-VAE, whose ``\hat I`` is a registered lower bound (NWJ by default) evaluated by a
critic ``T(x, z)`` on the batch's pairs: the diagonal holds the encoder's joint samples, the
off-diagonal pairs each ``x`` with the other examples' codes (every batch permutation at once).
The critic always ascends ``\hat I`` (with weight 1, whatever gamma), so every model, the
plain VAE included, reports an MI estimate from the same kind of critic; the encoder sees the
bound only through ``gamma``. Pixels are in ``[0, 1]``; the Bernoulli log-likelihood of a grey
value is the usual cross-entropy, a normalized likelihood for binary images only: on grey levels
the "ELBO" is a training objective, not a bound on ``log p(x)`` (`mi_jax.data.binarize` makes the
images binary).

References:
  Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014.
  Higgins et al., "beta-VAE", ICLR 2017.
  Rezaabad & Vishwanath, "Learning Representations by Maximizing Mutual Information in
  Variational Autoencoders", ISIT 2020 (arXiv 1912.13361).
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from mi_jax import _checks, training
from mi_jax import bounds as bounds_lib
from mi_jax import critics as critics_lib
from mi_jax import encoders as encoders_lib
from mi_jax.ib import GaussianEncoder, gaussian_kl
from mi_jax.types import Array, PRNGKey, PyTree


class BernoulliDecoder(nn.Module):
    """``z [B, K] -> logits [B, H, W, C]`` of independent Bernoulli pixels (an MLP)."""

    image_shape: tuple[int, int, int]
    hidden: Sequence[int] = (512, 512)
    activation: str = "relu"

    @nn.compact
    def __call__(self, z: Array) -> Array:
        act = critics_lib.get_activation(self.activation)
        h = z
        for width in self.hidden:
            h = act(nn.Dense(width)(h))
        size = self.image_shape[0] * self.image_shape[1] * self.image_shape[2]
        return nn.Dense(size)(h).reshape(*z.shape[:-1], *self.image_shape)


def bernoulli_log_likelihood(logits: Array, images: Array) -> Array:
    """``sum_pixels log p(x | z)`` per image ``[B]``; ``logits``, ``images`` ``[B, H, W, C]``
    (``images`` floats in ``[0, 1]``)."""
    if jnp.shape(logits) != jnp.shape(images) or len(jnp.shape(images)) < 2:
        raise ValueError(
            f"`logits` and `images` must have one shape [batch, ...], got {jnp.shape(logits)} "
            f"and {jnp.shape(images)}."
        )
    _checks.check_float(logits, "logits")
    encoders_lib.check_unit_images(images)
    per_pixel = -optax.sigmoid_binary_cross_entropy(logits, images)
    return jnp.sum(per_pixel.reshape(per_pixel.shape[0], -1), axis=-1)


@struct.dataclass
class InfoMaxVAE:
    """The model and its loss; ``beta`` and ``gamma`` are arguments, so several settings vmap.

    Attributes:
      image_shape: ``(H, W, C)``.
      latent_dim: ``K`` (>= 1).
      encoder_hparams: the `GaussianEncoder`'s trunk (an MLP) hyperparameters; its standard
        deviation is ``softplus(raw)``, without `IBModel`'s offset (``encoder.apply(
        params["encoder"], images)`` gives ``(mu, sigma)``).
      decoder_hidden: the decoder MLP's widths.
      bound / bound_hparams / critic / critic_hparams / critic_clip: ``\\hat I(X; Z)`` (any
        registered bound and critic; the critic sees the flattened image and the code).
    """

    image_shape: tuple[int, int, int] = struct.field(pytree_node=False, default=(8, 8, 1))
    latent_dim: int = struct.field(pytree_node=False, default=16)
    encoder_hparams: tuple[tuple[str, Any], ...] = struct.field(
        pytree_node=False, default=(("hidden", (512, 512)),)
    )
    decoder_hidden: tuple[int, ...] = struct.field(pytree_node=False, default=(512, 512))
    bound: str = struct.field(pytree_node=False, default="nwj")
    bound_hparams: tuple[tuple[str, Any], ...] = struct.field(pytree_node=False, default=())
    critic: str = struct.field(pytree_node=False, default="separable")
    critic_hparams: tuple[tuple[str, Any], ...] = struct.field(pytree_node=False, default=())
    critic_clip: float | None = struct.field(pytree_node=False, default=10.0)

    def __post_init__(self):
        _checks.freeze_fields(
            self,
            ("encoder_hparams", "bound_hparams", "critic_hparams"),
            ("image_shape", "decoder_hidden"),
        )
        _checks.check_ints(latent_dim=self.latent_dim)
        if not (isinstance(self.image_shape, tuple | list) and len(self.image_shape) == 3):
            raise ValueError(f"`image_shape` must be (H, W, C), got {self.image_shape!r}.")
        _checks.check_int_sequences(image_shape=tuple(self.image_shape))
        critics_lib.check_clip(self.critic_clip, "critic_clip")
        _checks.check_int_sequences(decoder_hidden=self.decoder_hidden)
        _ = self.ensemble  # unknown bound or critic names fail here

    def _check_images(self, images) -> None:
        """``images`` ``[B, *image_shape]``: the decoder's output has ``image_shape`` (other
        shapes failed in a broadcast of the likelihood, or with an IndexError)."""
        if len(self.image_shape) != 3 or jnp.shape(images)[1:] != tuple(self.image_shape):
            raise ValueError(
                f"`images` must have shape [batch, *image_shape] with `image_shape` (H, W, C) = "
                f"{tuple(self.image_shape)}, got {jnp.shape(images)}; set `image_shape` to the "
                "images' (H, W, C)."
            )

    @property
    def encoder(self) -> GaussianEncoder:
        # sigma = softplus(raw), no offset (`IBModel`'s default is 5, Alemi et al.'s).
        return GaussianEncoder(self.latent_dim, "mlp", self.encoder_hparams, std_offset=0.0)

    @property
    def decoder(self) -> BernoulliDecoder:
        return BernoulliDecoder(tuple(self.image_shape), tuple(self.decoder_hidden))

    @property
    def ensemble(self) -> training.BoundEnsemble:
        return training.make_ensemble(
            [(self.bound, dict(self.bound_hparams))],
            self.critic,
            dict(self.critic_hparams),
            clip=self.critic_clip,
        )

    def init(self, rng: PRNGKey, images: Array) -> tuple[PyTree, PyTree]:
        """``(params, bound_states)`` for ``images`` ``[B, H, W, C]`` in ``[0, 1]``."""
        _checks.check_key(rng, "rng")
        self._check_images(images)
        enc_key, dec_key, critic_key = jax.random.split(rng, 3)
        enc = self.encoder.init(enc_key, images)
        mu, _ = self.encoder.apply(enc, images)
        critic, states = self.ensemble.init(critic_key, images.reshape(images.shape[0], -1), mu)
        return {"encoder": enc, "decoder": self.decoder.init(dec_key, mu), "critic": critic}, states

    def loss(
        self,
        params: PyTree,
        bound_states: PyTree,
        images: Array,
        rng: PRNGKey,
        beta: Array,
        gamma: Array,
    ) -> tuple[Array, tuple[dict[str, Array], PyTree]]:
        """``(loss, (metrics, bound_states))``, means over the batch; ``beta``, ``gamma`` ``[]``
        (>= 0); ``images`` ``[B, *image_shape]`` in ``[0, 1]``.

        Metrics (nats, means over the batch): ``elbo`` (with weight 1 on the KL: the ELBO, a
        lower bound on ``log p(x)`` for binary images), ``recon`` (``E log p(x | z)``), ``kl``
        (the rate, an upper bound on ``I(X; Z)``), ``mi`` (the bound's estimate), ``infonce``
        (InfoNCE on the same critic's scores, at most ``log B``), ``loss``.

        A negative or non-finite ``beta`` or ``gamma`` given as a Python number raises; arrays
        (traced in the training step) are not read (`mi_jax._checks.check_weight`).
        """
        _checks.check_weight(beta, "beta")
        _checks.check_weight(gamma, "gamma")
        self._check_images(images)
        mu, sigma = self.encoder.apply(params["encoder"], images)
        z = mu + sigma * jax.random.normal(rng, mu.shape, mu.dtype)
        recon = jnp.mean(bernoulli_log_likelihood(self.decoder.apply(params["decoder"], z), images))
        kl = jnp.mean(gaussian_kl(mu, sigma))
        flat = images.reshape(images.shape[0], -1)
        critic = params["critic"]
        # The encoder ascends gamma * I through z with the critic fixed; the critic ascends I
        # with the codes fixed (XLA shares the forward pass).
        (mi_enc,), _ = self.ensemble.apply(jax.lax.stop_gradient(critic), bound_states, flat, z)
        (mi,), states = self.ensemble.apply(critic, bound_states, flat, jax.lax.stop_gradient(z))
        # The value reads the objective above; the critic's -mi term (and its stop-gradient
        # copy) only steers the critic's gradient.
        loss = -recon + beta * kl - gamma * mi_enc - mi + jax.lax.stop_gradient(mi)
        # InfoNCE on the same critic's scores: a low-variance yardstick (at most log B), where
        # NWJ's estimate of several nats swings by nats between batches.
        scores = self.ensemble.scores(critic, flat, jax.lax.stop_gradient(z))[0]
        infonce = jax.lax.stop_gradient(bounds_lib.infonce(scores))
        metrics = dict(loss=loss, elbo=recon - kl, recon=recon, kl=kl, mi=mi, infonce=infonce)
        return loss, (metrics, states)

    def reconstruct(self, params: PyTree, images: Array) -> Array:
        """Decoder means (pixel probabilities) at the posterior means, ``[B, H, W, C]``."""
        self._check_images(images)
        mu, _ = self.encoder.apply(params["encoder"], images)
        return jax.nn.sigmoid(self.decoder.apply(params["decoder"], mu))

    def generate(self, params: PyTree, rng: PRNGKey, num: int) -> Array:
        """Decoder means at ``num`` prior samples, ``[num, H, W, C]``."""
        _checks.check_key(rng, "rng")
        _checks.check_ints(num=num)
        z = jax.random.normal(rng, (num, self.latent_dim), jnp.float32)
        return jax.nn.sigmoid(self.decoder.apply(params["decoder"], z))
