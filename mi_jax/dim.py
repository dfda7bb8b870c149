r"""Deep InfoMax objectives (Hjelm et al., ICLR 2019), with the MI estimator chosen by name.

An encoder maps an image ``x`` to a local feature map ``M`` (``[h, w, C]``, "M" in DIM) and a
global vector ``Y = E(x)`` (``[D]``). DIM maximizes

.. math:: \alpha\, \hat I(S; Y) + \frac{\beta}{L} \sum_{l=1}^{L} \hat I(M^{(l)}; Y)
          - \gamma\, \text{prior matching},

* global MI: between ``Y`` and a source ``S``, the feature map ``M`` (DIM's "global") or the input
  ``x`` itself;
* local MI: between ``Y`` and every location ``M^{(l)}`` of the feature map, averaged over the
  ``L = h w`` locations: the representation must carry what is shared across the image;
* prior matching: an adversarial discriminator pushes the distribution of ``sigmoid(Y)``
  (uniform prior) or ``Y`` (Gaussian prior) towards the prior.

``\hat I`` is any bound of `mi_jax.bounds`, by name (DIM's JSD is ``"js"``: the f-GAN
Jensen-Shannon objective trains the critic, its MI value is read out with NWJ; ``"infonce"``,
``"dv"``, ``"nwj"``, ``"flo"``, ...), evaluated on ``[B, B]`` score matrices from
encode-and-dot critics (``scores[i, j] = phi(S_i)^T psi(Y_j)``, one matrix per location for the
local term; each location's negatives are the other images at that location). Or ``"mige"``:
no critic, the MI gradient comes from score estimates (`mi_jax.mige`), and the term's value is
a surrogate whose gradient is the estimate.

References:
  Hjelm, Fedorov, Lavoie-Marchildon, Grewal, Bachman, Trischler & Bengio, "Learning deep
  representations by mutual information estimation and maximization", ICLR 2019.
  Wen, Zhou, He, Zhou & Xu, "Mutual Information Gradient Estimation for Representation
  Learning", ICLR 2020 (MIGE for DIM).
"""

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from mi_jax import _checks
from mi_jax import bounds as bounds_lib
from mi_jax import mige as mige_lib
from mi_jax import score as score_lib
from mi_jax.critics import check_clip, get_activation, soft_clip
from mi_jax.types import Array, PRNGKey, PyTree, ScoreFn

MIGE = "mige"
GLOBAL_SOURCES = ("feature_map", "input")
PRIORS = ("uniform", "gaussian")


class EmbedMLP(nn.Module):
    """``Dense -> act -> Dense`` plus a linear shortcut, on the last axis (DIM's critic blocks).

    On a ``[B, L, C]`` feature map it is a stack of 1x1 convolutions.
    """

    hidden: int = 512
    out_dim: int = 64
    activation: str = "relu"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        act = get_activation(self.activation)
        h = nn.Dense(self.out_dim, name="out")(act(nn.Dense(self.hidden, name="hidden")(x)))
        # The linear shortcut keeps an informative path open at initialization.
        return h + nn.Dense(self.out_dim, name="shortcut")(x)


def bound_input_heads(
    names: Sequence[str], hidden: int, phi: Array, psi: Array, prefix: str
) -> dict[str, Array]:
    """A bound's extra learned inputs (`mi_jax.bounds.Bound.inputs`) from critic embeddings.

    Call from inside a compact Flax module (the heads become its submodules, named
    ``f"{prefix}_u"`` / ``f"{prefix}_baseline"``).

    * ``"u"`` (FLO): `EmbedMLP` head on the concatenated joint pair ``[phi, psi]`` -> ``[..., B]``.
    * ``"log_baseline"`` (TUBA, I_alpha): head on ``psi`` alone, broadcast to ``phi``'s
      leading shape ``[..., B]``.

    Args:
      names: the bound's input names.
      hidden: hidden width of the heads.
      phi: ``[..., B, k]`` source embeddings.
      psi: ``[..., B, k]`` (broadcastable) embeddings they are paired with on the joint pairs.
      prefix: submodule name prefix.
    """
    extras = {}
    for name in names:
        if name == "u":
            pair = jnp.concatenate([phi, jnp.broadcast_to(psi, phi.shape)], axis=-1)
            extras["u"] = EmbedMLP(hidden, 1, name=f"{prefix}_u")(pair)[..., 0]
        elif name == "log_baseline":
            base = EmbedMLP(hidden, 1, name=f"{prefix}_baseline")(psi)[..., 0]
            extras["log_baseline"] = jnp.broadcast_to(base, phi.shape[:-1])
        else:
            raise ValueError(f"no critic head builds the bound input {name!r}.")
    return extras


class DIMScores(NamedTuple):
    """Score matrices (and each bound's extra inputs) for the global and local terms.

    Attributes:
      global_scores: ``[B, B]`` or ``None`` (no global term).
      global_inputs: extra bound inputs, e.g. ``{"u": [B]}``.
      local_scores: ``[L, B, B]`` or ``None`` (no local term).
      local_inputs: extra bound inputs per location, e.g. ``{"u": [L, B]}``.
    """

    global_scores: Array | None
    global_inputs: dict[str, Array]
    local_scores: Array | None
    local_inputs: dict[str, Array]


class DIMCritic(nn.Module):
    """Encode-and-dot critics: ``scores[i, j] = phi(S_i)^T psi(Y_j)`` (global),
    ``scores[l, i, j] = phi_loc(M_i^{(l)})^T psi_loc(Y_j)`` (local).

    Attributes:
      hidden: hidden width of every embedding network.
      embed_dim: width of the shared embedding space.
      use_global / use_local: which terms to build.
      critic_clip: soft clipping ``c tanh(s / c)`` of the scores (``None``: off).
      extra_inputs: the bound's extra learned inputs (`mi_jax.bounds.Bound.inputs`): ``"u"``
        (FLO: a head on the concatenated joint-pair embeddings) and ``"log_baseline"`` (TUBA,
        I_alpha: a head on ``psi(Y_j)``).
    """

    hidden: int = 512
    embed_dim: int = 64
    use_global: bool = True
    use_local: bool = True
    extra_inputs: tuple[str, ...] = ()
    critic_clip: float | None = 10.0

    def _clip(self, scores: Array) -> Array:
        # Soft clipping c tanh(s / c), as in AMDIM (Bachman et al. 2019): without it the
        # unnormalized dot products grow without bound under the JSD/NWJ objectives (the
        # optimum of the log density ratio between disjoint images is infinite).
        return soft_clip(scores, self.critic_clip)

    @nn.compact
    def __call__(self, source: Array, local: Array, global_: Array) -> DIMScores:
        """``source`` ``[B, ...]`` (global term), ``local`` ``[B, h, w, C]``, ``global_``
        ``[B, D]``."""
        batch = global_.shape[0]
        g_scores, g_inputs, l_scores, l_inputs = None, {}, None, {}
        if self.use_global:
            phi = EmbedMLP(self.hidden, self.embed_dim, name="global_source")(
                source.reshape(batch, -1)
            )
            psi = EmbedMLP(self.hidden, self.embed_dim, name="global_y")(global_)
            g_scores = self._clip(phi @ psi.T)
            g_inputs = bound_input_heads(self.extra_inputs, self.hidden, phi, psi, "global")
        if self.use_local:
            feats = local.reshape(batch, -1, local.shape[-1])  # [B, L, C]
            phi = EmbedMLP(self.hidden, self.embed_dim, name="local_map")(feats)  # [B, L, k]
            psi = EmbedMLP(self.hidden, self.embed_dim, name="local_y")(global_)  # [B, k]
            l_scores = self._clip(jnp.einsum("ilk,jk->lij", phi, psi))
            l_inputs = {
                k: v.T  # [B, L] -> [L, B]
                for k, v in bound_input_heads(
                    self.extra_inputs, self.hidden, phi, psi[:, None, :], "local"
                ).items()
            }
        return DIMScores(g_scores, g_inputs, l_scores, l_inputs)


class PriorDiscriminator(nn.Module):
    """``D(z)`` ``[B]`` logits: prior sample (1) or encoder output (0). DIM uses (1000, 200)."""

    hidden: Sequence[int] = (1000, 200)

    @nn.compact
    def __call__(self, z: Array) -> Array:
        for width in self.hidden:
            z = nn.relu(nn.Dense(width)(z))
        return nn.Dense(1)(z)[:, 0]


def sample_prior(key: PRNGKey, shape: tuple[int, ...], prior: str) -> Array:
    """Samples of the prior: ``U[0, 1]`` (``"uniform"``) or ``N(0, I)`` (``"gaussian"``)."""
    _checks.check_key(key, "key")
    if prior == "uniform":
        return jax.random.uniform(key, shape, jnp.float32)
    if prior == "gaussian":
        return jax.random.normal(key, shape, jnp.float32)
    raise ValueError(f"`prior` must be one of {PRIORS}, got {prior!r}.")


def prior_matching_losses(
    disc_apply: Callable[[PyTree, Array], Array],
    disc_params: PyTree,
    encoded: Array,
    prior_samples: Array,
) -> tuple[Array, Array]:
    """The adversarial prior-matching losses (both minimized), ``(encoder_loss, disc_loss)``.

    ``disc_loss = E_prior[softplus(-D)] + E_enc[softplus(D)]`` trains the discriminator (the
    encoded samples are stop-gradiented); ``encoder_loss = E_enc[softplus(-D)]`` (the
    non-saturating generator loss) trains the encoder with the discriminator frozen. Because
    each loss reaches only its own parameters, their sum can be differentiated once.

    Args:
      disc_apply: ``disc_apply(params, z [B, D]) -> [B]`` logits.
      disc_params: the discriminator's parameters.
      encoded: ``[B, D]`` encoder outputs mapped into the prior's space.
      prior_samples: ``[B, D]`` samples of the prior.
    """
    d_prior = disc_apply(disc_params, prior_samples)
    d_encoded = disc_apply(disc_params, jax.lax.stop_gradient(encoded))
    disc_loss = jnp.mean(jax.nn.softplus(-d_prior)) + jnp.mean(jax.nn.softplus(d_encoded))
    d_for_encoder = disc_apply(jax.lax.stop_gradient(disc_params), encoded)
    encoder_loss = jnp.mean(jax.nn.softplus(-d_for_encoder))
    return encoder_loss, disc_loss


def local_bound_values(
    bound: bounds_lib.Bound, scores: Array, states: PyTree, inputs: dict[str, Array]
) -> tuple[Array, PyTree]:
    """One bound per location: ``scores`` ``[L, B, B]`` -> ``([L] values, states)``.

    ``states`` carries a leading ``[L]`` axis (see `init_local_states`).
    """

    def one(scores_l, state_l, inputs_l):
        return bound.apply(scores_l, state_l, **inputs_l)

    return jax.vmap(one)(scores, states, inputs)


def init_local_states(bound: bounds_lib.Bound, num_locations: int) -> PyTree:
    """The bound's state stacked ``num_locations`` times (MINE keeps one average per location)."""
    return jax.tree.map(lambda s: jnp.broadcast_to(s, (num_locations, *jnp.shape(s))), bound.init())


def mige_local_surrogate(
    local: Array, global_: Array, locations: Array, score_fn: ScoreFn
) -> Array:
    """Mean over the chosen locations of ``mi_surrogate(M^{(l)}, Y)``: ``grad`` estimates the
    local term's gradient (unbiased over uniformly drawn locations).

    Args:
      local: ``[B, L, C]`` feature vectors.
      global_: ``[B, D]``.
      locations: ``[k]`` int location indices.
      score_fn: the score estimator.
    """
    if len(jnp.shape(local)) != 3 or len(jnp.shape(global_)) != 2:
        raise ValueError(
            f"`local` must be [B, L, C] and `global_` [B, D], got shapes {jnp.shape(local)} and "
            f"{jnp.shape(global_)}."
        )
    num = jnp.shape(local)[1]
    if len(jnp.shape(locations)) != 1 or not jnp.issubdtype(
        jnp.result_type(locations), jnp.integer
    ):
        raise ValueError(
            f"`locations` must be [k] integer indices, got {jnp.result_type(locations)} of shape "
            f"{jnp.shape(locations)}."
        )
    if not isinstance(locations, jax.core.Tracer) and not np.all(
        (np.asarray(locations) >= 0) & (np.asarray(locations) < num)
    ):  # indexing clamps: location 7 of 3 read location 2, silently
        raise ValueError(f"`locations` must lie in [0, {num}), got {np.asarray(locations)}.")

    # lax.map, not vmap: batched Cholesky/eigh under vmap hung on XLA:CPU (see mi_jax.mige).
    def one(loc):
        return mige_lib.mi_surrogate(local[:, loc, :], global_, score_fn)

    return jnp.mean(jax.lax.map(one, locations))


@struct.dataclass
class DIMObjective:
    """The full DIM loss for one encoder, one estimator and the term weights.

    Attributes:
      encoder: a module ``encoder(images) -> (local, features, global_)`` (`mi_jax.encoders`).
      estimator: a bound name from `mi_jax.bounds` or ``"mige"``.
      estimator_hparams: the bound's hyperparameters, ``(("clip", 5.0),)`` for SMILE, or a
        mapping (``{"clip": 5.0}``), kept as its sorted pairs so that the objective stays hashable
        (a static argument of `jax.jit`).
      alpha / beta / gamma: weights of the global, local and prior terms.
      global_source: ``"feature_map"`` (DIM) or ``"input"``.
      prior: ``"uniform"`` or ``"gaussian"``.
      critic_hidden / embed_dim: the encode-and-dot critics' sizes.
      critic_clip: soft clipping of the critics' scores (``None``: off).
      score_estimator / score_hparams: MIGE's score estimator (`mi_jax.score`; the default
        here is Stein's, while ``configs/infomax.py`` and the README's MIGE rows use ``"ssge"``)
        and its hyperparameters (pairs, or a mapping, as ``estimator_hparams``).
      mige_locations: for MIGE's local term, the number of locations drawn per step (at most
        the feature map's: a larger number takes every location).
    """

    encoder: nn.Module = struct.field(pytree_node=False)
    estimator: str = struct.field(pytree_node=False, default="js")
    estimator_hparams: tuple[tuple[str, Any], ...] = struct.field(pytree_node=False, default=())
    alpha: float = struct.field(pytree_node=False, default=0.0)
    beta: float = struct.field(pytree_node=False, default=1.0)
    gamma: float = struct.field(pytree_node=False, default=0.1)
    global_source: str = struct.field(pytree_node=False, default="feature_map")
    prior: str = struct.field(pytree_node=False, default="uniform")
    critic_hidden: int = struct.field(pytree_node=False, default=512)
    embed_dim: int = struct.field(pytree_node=False, default=64)
    critic_clip: float | None = struct.field(pytree_node=False, default=10.0)
    score_estimator: str = struct.field(pytree_node=False, default="stein")
    score_hparams: tuple[tuple[str, Any], ...] = struct.field(pytree_node=False, default=())
    mige_locations: int = struct.field(pytree_node=False, default=4)

    def __post_init__(self):
        _checks.freeze_fields(self, ("estimator_hparams", "score_hparams"))
        check_clip(self.critic_clip, "critic_clip")
        if self.global_source not in GLOBAL_SOURCES:
            raise ValueError(
                f"`global_source` must be one of {GLOBAL_SOURCES}, got {self.global_source!r}."
            )
        if self.prior not in PRIORS:
            raise ValueError(f"`prior` must be one of {PRIORS}, got {self.prior!r}.")
        for name in ("alpha", "beta", "gamma"):
            _checks.check_weight(getattr(self, name), name)
        if self.alpha == 0 and self.beta == 0:
            raise ValueError("`alpha` and `beta` are both 0: there is no MI term to maximize.")
        if self.estimator == MIGE and self.estimator_hparams:
            raise ValueError(
                f"`estimator_hparams` {dict(self.estimator_hparams)} are a bound's, and MIGE has "
                "no bound: its score estimator takes `score_hparams`."
            )
        _checks.check_ints(
            critic_hidden=self.critic_hidden,
            embed_dim=self.embed_dim,
            mige_locations=self.mige_locations,
        )
        # Unknown estimator names and bad hyperparameters fail here, at once.
        _ = self.bound, self.score_fn

    @property
    def is_mige(self) -> bool:
        return self.estimator == MIGE

    @property
    def bound(self) -> bounds_lib.Bound | None:
        if self.is_mige:
            return None
        if not _checks.is_known(self.estimator, bounds_lib.available_bounds()):
            # Name the alias set of this objective (bounds + "mige") in the message.
            known = (*bounds_lib.available_bounds(), MIGE)
            raise _checks.unknown_name_error("estimator", self.estimator, known)
        # (A registered bound's own errors, a KeyError among them, pass as they are.)
        return bounds_lib.get_bound(self.estimator, **dict(self.estimator_hparams))

    @property
    def score_fn(self) -> ScoreFn | None:
        if not self.is_mige:
            return None
        return score_lib.get_score_estimator(self.score_estimator, **dict(self.score_hparams))

    def _critic(self) -> DIMCritic:
        return DIMCritic(
            hidden=self.critic_hidden,
            embed_dim=self.embed_dim,
            use_global=self.alpha > 0,
            use_local=self.beta > 0,
            extra_inputs=self.bound.inputs,
            critic_clip=self.critic_clip,
        )

    # Names of `representations`, in the order probes report them.
    representation_names = ("global", "features", "local")

    def representations(self, encoder_params: PyTree, images: Array) -> dict[str, Array]:
        """``{name: [B, F]}`` what probes read: ``global`` (Y ``[B, D]``), ``features`` (fc),
        ``local`` (the feature map M, flattened to ``[B, h w C]``)."""
        local, features, global_ = self.encoder.apply(encoder_params, images)
        return {
            "global": global_,
            "features": features,
            "local": local.reshape(local.shape[0], -1),
        }

    def _source(self, images: Array, local: Array) -> Array:
        return images if self.global_source == "input" else local

    def init(self, rng: PRNGKey, images: Array) -> tuple[PyTree, PyTree]:
        """``(params, bound_states)`` for a batch of images ``[B, H, W, C]`` (float)."""
        _checks.check_key(rng, "rng")
        enc_key, critic_key, disc_key = jax.random.split(rng, 3)
        params = {"encoder": self.encoder.init(enc_key, images)}
        local, _, global_ = self.encoder.apply(params["encoder"], images)
        if not self.is_mige:
            source = self._source(images, local)
            params["critic"] = self._critic().init(critic_key, source, local, global_)
        if self.gamma > 0:
            params["prior_disc"] = PriorDiscriminator().init(disc_key, global_)
        states = {}
        if not self.is_mige:
            if self.alpha > 0:
                states["global"] = self.bound.init()
            if self.beta > 0:
                states["local"] = init_local_states(self.bound, local.shape[1] * local.shape[2])
        return params, states

    def loss(
        self, params: PyTree, bound_states: PyTree, images: Array, rng: PRNGKey
    ) -> tuple[Array, tuple[dict[str, Array], PyTree]]:
        """``(loss, (metrics, new_bound_states))``; ``images`` ``[B, H, W, C]`` (float).

        Metrics: ``loss``; ``mi_global`` / ``mi_local`` (the bound's value; for MIGE the
        surrogate, whose value means nothing); ``infonce_global`` / ``infonce_local`` (InfoNCE
        on the same scores: a lower bound for any critic, a common yardstick across
        estimators, at most ``log B``); ``prior_encoder`` / ``prior_disc`` losses.
        """
        local, _, global_ = self.encoder.apply(params["encoder"], images)
        batch = images.shape[0]
        source = self._source(images, local)
        metrics, states = {}, dict(bound_states)
        mi = jnp.zeros(())
        if self.is_mige:
            fn = self.score_fn
            if self.alpha > 0:
                s = source.reshape(batch, -1)
                if self.global_source == "input":
                    term = mige_lib.infomax_surrogate(s, global_, fn)
                else:
                    term = mige_lib.mi_surrogate(s, global_, fn)
                metrics["mi_global"] = term
                mi += self.alpha * term
            if self.beta > 0:
                feats = local.reshape(batch, -1, local.shape[-1])
                num_locations = feats.shape[1]
                count = min(self.mige_locations, num_locations)
                locations = jax.random.choice(
                    jax.random.fold_in(rng, 1), num_locations, (count,), replace=False
                )
                term = mige_local_surrogate(feats, global_, locations, fn)
                metrics["mi_local"] = term
                mi += self.beta * term
        else:
            scores = self._critic().apply(params["critic"], source, local, global_)
            if self.alpha > 0:
                value, states["global"] = self.bound.apply(
                    scores.global_scores, bound_states["global"], **scores.global_inputs
                )
                metrics["mi_global"] = value
                metrics["infonce_global"] = bounds_lib.infonce(scores.global_scores)
                mi += self.alpha * value
            if self.beta > 0:
                values, states["local"] = local_bound_values(
                    self.bound, scores.local_scores, bound_states["local"], scores.local_inputs
                )
                metrics["mi_local"] = jnp.mean(values)
                metrics["infonce_local"] = jnp.mean(
                    jax.vmap(bounds_lib.infonce)(scores.local_scores)
                )
                mi += self.beta * metrics["mi_local"]
        loss = -mi
        if self.gamma > 0:
            disc = PriorDiscriminator()
            encoded = jax.nn.sigmoid(global_) if self.prior == "uniform" else global_
            prior = sample_prior(jax.random.fold_in(rng, 2), encoded.shape, self.prior)
            enc_loss, disc_loss = prior_matching_losses(
                disc.apply, params["prior_disc"], encoded, prior
            )
            metrics["prior_encoder"], metrics["prior_disc"] = enc_loss, disc_loss
            loss = loss + self.gamma * enc_loss + disc_loss
        metrics["loss"] = loss
        return loss, (metrics, states)
