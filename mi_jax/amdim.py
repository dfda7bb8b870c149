r"""AMDIM (Bachman, Hjelm & Buchwalter, NeurIPS 2019): MI across the scales of two augmented views.

Two views ``x_a, x_b`` of each image are drawn by random augmentation (`augment_views`). A
multi-scale encoder (`MultiScaleEncoder`) maps each view to a 7x7 feature map, a 5x5 feature map
and a global vector (the 1x1 map). Features of one view *predict* features of the other:

* ``"1-5"``: the global vector of view a predicts every location of view b's 5x5 map;
* ``"1-7"``: the global vector predicts every location of the 7x7 map;
* ``"5-5"``: one location of view a's 5x5 map (drawn uniformly per image and step) predicts
  every location of view b's 5x5 map;

each in both directions (a -> b and b -> a). These are the paper's 1->5, 1->7 and 5->5 on
128x128 ImageNet crops, on small images here: the encoder first brings any input of at least 7
pixels a side to a 7x7 map.

Scores. Anchor ``i`` and target location ``l`` of image ``j`` are embedded (`EmbedMLP`, 1x1
convolutions on maps) to ``a_i, t_{j,l}`` in ``R^k``; the score is

.. math:: s_{ijl} = c \tanh\!\big(\langle a_i, t_{j,l}\rangle / (c\sqrt{k})\big),

scaled by ``1/sqrt(k)`` and soft-clipped (``c = 20`` by default), and the loss adds
``lambda * mean((<a_i, t_{j,l}> / sqrt(k))^2)`` over all pairs (the small penalty on squared
scores that keeps the clip out of saturation; ``lambda = 0.05`` by default).

Negatives are all locations of all other images of the batch. Any bound of `mi_jax.bounds`
applies: those are functions of a ``[B, B]`` matrix ``scores[x, y]`` with the joint pairs on
the diagonal and the marginal expectations taken over ``x`` (down each column). Here ``y`` is
the anchor and ``x`` the target image; per target location ``l`` the bound sees

.. math:: S^{(l)}_{ii} = s_{iil}, \qquad
          S^{(l)}_{ji} = \log \frac{1}{L}\sum_{l'} e^{s_{ijl'}} \quad (j \ne i),

column ``i`` holding anchor ``i``'s positive and, pooled with a log-mean-exp, each other
image's ``L`` locations. Every bound that sees the negatives only through ``mean exp(s)``
(InfoNCE, DV, NWJ, FLO, TUBA, MINE) then averages ``exp`` over all ``(B - 1) L`` negative
pairs exactly; for InfoNCE this is the paper's NCE (a softmax of the positive against the
negatives) with its ``(B - 1) L`` negatives weighted ``1 / L`` each, so the bound stays
``<= log B``: the reference code weights each negative 1, which equals ours with every positive
score lowered by ``log L`` (its loss is not ours, nor are its gradients on the positives).
SMILE clips the pooled score, not each location's (the same as clipping each only while no
score passes ``+-tau``), and JS (softplus of the negatives) sees the pooled score as one
negative per image: still valid objectives, no longer averages over locations.

Reference:
  Bachman, Hjelm & Buchwalter, "Learning Representations by Maximizing Mutual Information
  Across Views", NeurIPS 2019. https://arxiv.org/abs/1906.00910
"""

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from mi_jax import _checks
from mi_jax import bounds as bounds_lib
from mi_jax import data as data_lib
from mi_jax.critics import check_clip, get_activation, soft_clip
from mi_jax.dim import EmbedMLP, bound_input_heads, init_local_states, local_bound_values
from mi_jax.encoders import _check_images
from mi_jax.types import Array, PRNGKey, PyTree

PREDICTIONS = ("1-5", "1-7", "5-5")

# ------------------------------------------------------------------------------------------------
# Encoder


class MultiScaleOutput(NamedTuple):
    """Features of a batch at three scales.

    Attributes:
      map7: ``[B, 7, 7, C7]``.
      map5: ``[B, 5, 5, C5]``.
      global_: ``[B, D]`` (the 1x1 map).
    """

    map7: Array
    map5: Array
    global_: Array


class MultiScaleEncoder(nn.Module):
    """A conv encoder whose receptive fields grow from 7x7 to 5x5 to 1x1 maps, for any input of at
    least 7x7 pixels.

    Stem: 4x4 stride-2 convs while a side is at least 14 (28 -> 14 -> 7, 32 -> 16 -> 8, 96 ->
    ... -> 12; the first with ``stem_width`` channels if a side is at least 28, the others, and
    those of a 14-27-pixel input, with ``widths[0]``), then one VALID conv with kernel
    ``size - 6`` to exactly 7x7 (a 1x1 conv when already 7; an input under 14 pixels, such as
    8x8 digits, first gets a 3x3 SAME conv of ``stem_width``). Trunk: ``map7`` after a 1x1 block;
    3x3 VALID conv to ``map5`` and a 1x1 block; 3x3 VALID convs 5 -> 3 -> 1 and a 1x1 block to
    ``global_``. A "1x1 block" is ``x + Dense(act(Dense(x)))``, AMDIM's way of adding depth
    without growing the receptive field. ReLU-family activations after every conv; no
    normalization (the representation of an image does not depend on its batch, as in
    `mi_jax.encoders`).

    Attributes:
      stem_width: channels of the first conv (of an input at least 28 or under 14 pixels a
        side; a 14-27-pixel input has no conv of this width).
      widths: ``(C7, C5, D)`` channels of ``map7``, ``map5`` and ``global_``.
      activation: name of the activation.
    """

    stem_width: int = 32
    widths: Sequence[int] = (128, 128, 256)
    activation: str = "relu"

    def __post_init__(self):
        _checks.check_int_sequences("MultiScaleEncoder", widths=self.widths)
        if len(self.widths) != 3:
            raise ValueError(f"`widths` must be (C7, C5, D), got {tuple(self.widths)}.")
        _checks.check_ints("MultiScaleEncoder", stem_width=self.stem_width)
        super().__post_init__()

    @nn.compact
    def __call__(self, images: Array) -> MultiScaleOutput:
        """``images`` ``[B, H, W, C]`` float, ``H, W >= 7`` -> `MultiScaleOutput`."""
        _check_images(images, "MultiScaleEncoder", 7, "a 7x7 first map")
        act = get_activation(self.activation)
        c7, c5, d = self.widths

        def block(x, width, name):
            return x + nn.Dense(width, name=f"{name}_out")(act(nn.Dense(width, name=name)(x)))

        h = images
        size = list(images.shape[1:3])
        if min(size) < 14:
            h = act(nn.Conv(self.stem_width, (3, 3), padding="SAME", name="stem")(h))
        n = 0
        while max(size) >= 14:
            strides = tuple(2 if s >= 14 else 1 for s in size)
            width = self.stem_width if n == 0 and max(size) >= 28 else c7
            h = act(nn.Conv(width, (4, 4), strides=strides, padding="SAME", name=f"down{n}")(h))
            size = [-(-s // st) for s, st in zip(size, strides, strict=True)]
            n += 1
        h = act(nn.Conv(c7, (size[0] - 6, size[1] - 6), padding="VALID", name="to7")(h))
        map7 = act(block(h, c7, "block7"))
        h = act(nn.Conv(c5, (3, 3), padding="VALID", name="conv5")(map7))
        map5 = act(block(h, c5, "block5"))
        h = act(nn.Conv(c5, (3, 3), padding="VALID", name="conv3")(map5))
        h = act(nn.Conv(d, (3, 3), padding="VALID", name="conv1")(h))[:, 0, 0, :]
        global_ = act(block(h, d, "block1"))
        return MultiScaleOutput(map7=map7, map5=map5, global_=global_)


# ------------------------------------------------------------------------------------------------
# Scores


def nce_scores(anchors: Array, targets: Array, *, clip: float | None) -> tuple[Array, Array]:
    """Scaled, soft-clipped scores of every anchor against every target location.

    Args:
      anchors: ``[B, k]`` anchor embeddings ``a_i``.
      targets: ``[B, L, k]`` target embeddings ``t_{j,l}``.
      clip: ``c`` of ``c tanh(s / c)``; ``None`` or 0: no clipping.

    Returns:
      ``(scores [B, B, L], raw [B, B, L])``: ``raw = <a_i, t_{j,l}> / sqrt(k)`` (what the
      penalty squares) and ``scores`` its clipped version.
    """
    k = anchors.shape[-1]
    raw = jnp.einsum("ik,jlk->ijl", anchors, targets) / jnp.sqrt(jnp.asarray(k, anchors.dtype))
    scores = soft_clip(raw, clip)
    return scores, raw


def pooled_score_matrices(scores: Array) -> Array:
    """``[B, B, L]`` scores ``s[i, j, l]`` (anchor ``i``, target image ``j``, location ``l``) ->
    ``[L, B, B]`` matrices in `mi_jax.bounds`' layout ``[x = target, y = anchor]``: the
    positive ``s[i, i, l]`` at ``[l, i, i]`` and, at ``[l, j, i]`` (``j != i``),
    ``log mean_l' exp s[i, j, l']`` (all of image ``j``'s locations pooled; see the module
    docstring)."""
    batch = scores.shape[0]
    pooled = jax.nn.logsumexp(scores, axis=-1) - jnp.log(scores.shape[-1])  # [B(i), B(j)]
    eye = jnp.eye(batch, dtype=bool)
    joint = jnp.moveaxis(scores, -1, 0)  # [L, B(i), B(j)]
    return jnp.swapaxes(jnp.where(eye[None], joint, pooled[None]), 1, 2)


class AMDIMScores(NamedTuple):
    """One prediction in one direction: ``matrices`` ``[L, B, B]`` (see
    `pooled_score_matrices`), the bound's extra inputs ``{name: [L, B]}``, and ``penalty`` (the
    mean squared raw score)."""

    matrices: Array
    inputs: dict[str, Array]
    penalty: Array


class AMDIMCritic(nn.Module):
    """Embeddings of the anchors and targets of every prediction, and their scores.

    One `EmbedMLP` (1x1 convolutions on maps) per feature and role: ``global`` and ``map5``
    as anchors, ``map5`` and ``map7`` as targets.

    Attributes:
      predictions: which of `PREDICTIONS` to score.
      hidden: hidden width of the embeddings.
      embed_dim: ``k``.
      critic_clip: ``c`` of the soft clipping (``None``: off).
      extra_inputs: the bound's extra learned inputs (`mi_jax.dim.bound_input_heads`).
    """

    predictions: Sequence[str] = PREDICTIONS
    hidden: int = 256
    embed_dim: int = 128
    critic_clip: float | None = 20.0
    extra_inputs: tuple[str, ...] = ()

    @nn.compact
    def __call__(
        self, features_a: MultiScaleOutput, features_b: MultiScaleOutput, locations: Array
    ) -> dict[str, AMDIMScores]:
        """Scores of every prediction with view a's anchors against view b's targets.

        Args:
          features_a / features_b: the two views' `MultiScaleOutput` (batch ``B``).
          locations: ``[B]`` int, the location of view a's 5x5 map each image's 5-5 anchor is.

        Returns:
          ``{prediction: AMDIMScores}``.
        """

        shapes = [jax.tree.map(jnp.shape, f) for f in (features_a, features_b)]
        if shapes[0] != shapes[1]:
            raise ValueError(
                "the two views' features must have equal shapes (the same images, augmented "
                f"twice), got {shapes[0]} and {shapes[1]}."
            )

        def flat(m):
            return m.reshape(m.shape[0], -1, m.shape[-1])  # [B, L, C]

        cache = {}

        def embed(name, x):  # each embedding network built and applied once
            if name not in cache:
                cache[name] = EmbedMLP(self.hidden, self.embed_dim, name=name)(x)
            return cache[name]

        out = {}
        for pred in self.predictions:
            source, target = pred.split("-")
            if source == "1":
                anchors = embed("anchor_global", features_a.global_)
            else:
                picked = jnp.take_along_axis(
                    flat(features_a.map5), locations[:, None, None], axis=1
                )[:, 0]
                anchors = embed("anchor_map5", picked)
            targets = embed(f"target_map{target}", flat(getattr(features_b, f"map{target}")))
            scores, raw = nce_scores(anchors, targets, clip=self.critic_clip)
            inputs = bound_input_heads(
                self.extra_inputs, self.hidden, targets, anchors[:, None, :], f"{pred}"
            )
            out[pred] = AMDIMScores(
                matrices=pooled_score_matrices(scores),
                inputs={k: v.T for k, v in inputs.items()},  # [B, L] -> [L, B]
                penalty=jnp.mean(jnp.square(raw)),
            )
        return out


# ------------------------------------------------------------------------------------------------
# Views


def augment_view(
    key: PRNGKey,
    image: Array,
    *,
    crop_scale: tuple[float, float],
    crop_ratio: tuple[float, float],
    flip: bool,
    brightness: float,
    contrast: float,
    saturation: float,
    grayscale: float,
) -> Array:
    """One view of one ``[H, W, C]`` image in ``[0, 1]``: `mi_jax.data.random_resized_crop`,
    then flip and colour jitter (`mi_jax.data.augment_image`), then
    `mi_jax.data.random_grayscale` with probability ``grayscale`` (colour images only)."""
    k_crop, k_rest, k_gray = jax.random.split(key, 3)
    image = data_lib.random_resized_crop(k_crop, image, scale=crop_scale, ratio=crop_ratio)
    image = data_lib.augment_image(
        k_rest, image, flip=flip, brightness=brightness, contrast=contrast, saturation=saturation
    )
    return data_lib.random_grayscale(k_gray, image, p=grayscale)


def augment_views(key: PRNGKey, images: Array, **params) -> tuple[Array, Array]:
    """Two independent views ``([B, H, W, C], [B, H, W, C])`` of a batch (`augment_view`
    vmapped, one key per image and view)."""
    _checks.check_key(key, "key")
    if jnp.ndim(images) != 4:
        raise ValueError(f"`images` must have shape [B, H, W, C], got {jnp.shape(images)}.")
    batch = images.shape[0]
    keys = jax.random.split(key, (2, batch))  # typed or raw (PRNGKey) keys alike
    one = jax.vmap(functools.partial(augment_view, **params))
    return one(keys[0], images), one(keys[1], images)


VIEW_PARAMS = (
    "brightness",
    "contrast",
    "crop_ratio",
    "crop_scale",
    "flip",
    "grayscale",
    "saturation",
)


def check_view_params(params: dict[str, Any], channels: int | None = None) -> None:
    """Raises a ValueError naming the first missing, unknown or out-of-range view parameter
    (with the images' ``channels``: a colour setting their channels cannot take)."""
    unknown, missing = set(params) - set(VIEW_PARAMS), set(VIEW_PARAMS) - set(params)
    if unknown or missing:
        raise ValueError(
            f"`views` has unknown field(s) {sorted(unknown)} and lacks {sorted(missing)}; "
            f"its fields are {', '.join(VIEW_PARAMS)}."
        )
    data_lib._check_range(params["crop_scale"], "views.crop_scale", upper=1.0)
    data_lib._check_range(params["crop_ratio"], "views.crop_ratio")
    for name in ("brightness", "contrast", "saturation"):
        data_lib._check_strength(params[name], f"views.{name}")
    if not isinstance(params["flip"], bool | np.bool_):
        raise ValueError(f"`views.flip` must be True or False, got {params['flip']!r}.")
    grayscale = params["grayscale"]
    if not (_checks.is_number(grayscale) and 0 <= _checks.host_float(grayscale) <= 1):
        raise ValueError(
            f"`views.grayscale` must be a probability in [0, 1], got {params['grayscale']!r}."
        )
    if channels is not None:
        data_lib.check_colour_channels(params, channels, "views.")


# ------------------------------------------------------------------------------------------------
# Objective


@struct.dataclass
class AMDIMObjective:
    """The AMDIM loss for one encoder and one bound.

    The same protocol as `mi_jax.dim.DIMObjective` (``init``, ``loss``, ``representations``),
    so `experiments.infomax`'s trainer runs it; the two views are drawn inside ``loss``.

    Attributes:
      encoder: a `MultiScaleEncoder` (or any module returning a `MultiScaleOutput`).
      estimator: a bound name from `mi_jax.bounds` (``"infonce"`` by default).
      estimator_hparams: the bound's hyperparameters.
      predictions: a non-empty subset of `PREDICTIONS`.
      critic_hidden / embed_dim: the embeddings' sizes.
      critic_clip: ``c`` of the soft clipping (``None``: off).
      penalty: weight ``lambda`` of the squared-score penalty (``>= 0``).
      views: `augment_view`'s parameters, as sorted ``(name, value)`` pairs.
    """

    encoder: nn.Module = struct.field(pytree_node=False)
    estimator: str = struct.field(pytree_node=False, default="infonce")
    estimator_hparams: tuple[tuple[str, Any], ...] = struct.field(pytree_node=False, default=())
    predictions: tuple[str, ...] = struct.field(pytree_node=False, default=PREDICTIONS)
    critic_hidden: int = struct.field(pytree_node=False, default=256)
    embed_dim: int = struct.field(pytree_node=False, default=128)
    critic_clip: float | None = struct.field(pytree_node=False, default=20.0)
    penalty: float = struct.field(pytree_node=False, default=0.05)
    views: tuple[tuple[str, Any], ...] = struct.field(
        pytree_node=False,
        default=(
            ("brightness", 0.0),
            ("contrast", 0.0),
            ("crop_ratio", (3 / 4, 4 / 3)),
            ("crop_scale", (0.35, 1.0)),
            ("flip", False),
            ("grayscale", 0.0),
            ("saturation", 0.0),
        ),
    )

    representation_names = ("global", "map5", "map7")

    def __post_init__(self):
        _checks.freeze_fields(self, ("estimator_hparams", "views"), ("predictions",))
        bad = [p for p in self.predictions if p not in PREDICTIONS]
        if bad or not self.predictions or len(set(self.predictions)) < len(self.predictions):
            raise ValueError(
                f"`predictions` must be a non-empty subset of {PREDICTIONS} without repeats, got "
                f"{tuple(self.predictions)}."
            )
        _checks.check_weight(self.penalty, "penalty")
        _checks.check_ints(critic_hidden=self.critic_hidden, embed_dim=self.embed_dim)
        check_clip(self.critic_clip, "critic_clip")
        check_view_params(dict(self.views))
        _ = self.bound  # unknown names fail here

    @property
    def bound(self) -> bounds_lib.Bound:
        if not _checks.is_known(self.estimator, bounds_lib.available_bounds()):
            raise _checks.unknown_name_error(
                "estimator", self.estimator, bounds_lib.available_bounds()
            )
        # (A registered bound's own errors, a KeyError among them, pass as they are.)
        return bounds_lib.get_bound(self.estimator, **dict(self.estimator_hparams))

    def _critic(self) -> AMDIMCritic:
        return AMDIMCritic(
            predictions=tuple(self.predictions),
            hidden=self.critic_hidden,
            embed_dim=self.embed_dim,
            critic_clip=self.critic_clip,
            extra_inputs=self.bound.inputs,
        )

    def representations(self, encoder_params: PyTree, images: Array) -> dict[str, Array]:
        """``{name: [B, F]}`` what probes read: ``global`` ``[B, D]``, ``map5`` ``[B, 25 C5]``,
        ``map7`` ``[B, 49 C7]``."""
        out = self.encoder.apply(encoder_params, images)
        return {
            "global": out.global_,
            "map5": out.map5.reshape(out.map5.shape[0], -1),
            "map7": out.map7.reshape(out.map7.shape[0], -1),
        }

    def init(self, rng: PRNGKey, images: Array) -> tuple[PyTree, PyTree]:
        """``(params, bound_states)`` for a batch of images ``[B, H, W, C]`` (float)."""
        _checks.check_key(rng, "rng")
        enc_key, critic_key = jax.random.split(rng)
        params = {"encoder": self.encoder.init(enc_key, images)}
        feats = self.encoder.apply(params["encoder"], images)
        locations = jnp.zeros((images.shape[0],), jnp.int32)
        params["critic"] = self._critic().init(critic_key, feats, feats, locations)
        sizes = {k: m.shape[1] * m.shape[2] for k, m in (("5", feats.map5), ("7", feats.map7))}
        states = {
            f"{pred}_{direction}": init_local_states(self.bound, sizes[pred[-1]])
            for pred in self.predictions
            for direction in ("ab", "ba")
        }
        return params, states

    def loss(
        self, params: PyTree, bound_states: PyTree, images: Array, rng: PRNGKey
    ) -> tuple[Array, tuple[dict[str, Array], PyTree]]:
        """``(loss, (metrics, new_bound_states))``; ``images`` ``[B, H, W, C]`` float in [0, 1].

        ``loss = -mean_predictions(bound) + penalty * mean squared raw score``. Metrics:
        ``mi_<prediction>`` (the bound, averaged over locations and both directions),
        ``infonce_<prediction>`` (InfoNCE on the same matrices, a yardstick ``<= log B``),
        ``score_penalty``, ``loss``.
        """
        view_key, loc_key = jax.random.split(rng)
        view_a, view_b = augment_views(view_key, images, **dict(self.views))
        batch = images.shape[0]
        both = self.encoder.apply(params["encoder"], jnp.concatenate([view_a, view_b]))
        feats_a = jax.tree.map(lambda x: x[:batch], both)
        feats_b = jax.tree.map(lambda x: x[batch:], both)
        num5 = feats_a.map5.shape[1] * feats_a.map5.shape[2]
        loc_keys = jax.random.split(loc_key)
        critic = self._critic()
        metrics, states = {}, {}
        mi, penalty = [], []
        for direction, (fa, fb), k in (
            ("ab", (feats_a, feats_b), loc_keys[0]),
            ("ba", (feats_b, feats_a), loc_keys[1]),
        ):
            locations = jax.random.randint(k, (batch,), 0, num5, jnp.int32)
            scores = critic.apply(params["critic"], fa, fb, locations)
            for pred, s in scores.items():
                name = f"{pred}_{direction}"
                values, states[name] = local_bound_values(
                    self.bound, s.matrices, bound_states[name], s.inputs
                )
                metrics[f"mi_{name}"] = jnp.mean(values)
                metrics[f"infonce_{name}"] = jnp.mean(jax.vmap(bounds_lib.infonce)(s.matrices))
                mi.append(metrics[f"mi_{name}"])
                penalty.append(s.penalty)
        for pred in self.predictions:  # report per prediction, averaged over directions
            for kind in ("mi", "infonce"):
                ab, ba = metrics.pop(f"{kind}_{pred}_ab"), metrics.pop(f"{kind}_{pred}_ba")
                metrics[f"{kind}_{pred}"] = 0.5 * (ab + ba)
        metrics["score_penalty"] = jnp.mean(jnp.stack(penalty))
        loss = -jnp.mean(jnp.stack(mi)) + self.penalty * metrics["score_penalty"]
        metrics["loss"] = loss
        return loss, (metrics, states)
