"""AMDIM: scores against hand computations, encoder shapes, views, objective errors, smoke runs."""

import json
import math
import os

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import amdim as amdim_config
from experiments import amdim as amdim_experiment
from mi_jax import amdim, bounds, data
from tests.test_bounds import _rand_scores, _ref_smile
from tests.test_dim import _embed, _np_infonce


def test_scores_are_scaled_soft_clipped_and_penalized_as_by_hand():
    anchors = jnp.array([[1.0, 2.0], [3.0, -1.0]])  # [B=2, k=2]
    targets = jnp.array(  # [B=2, L=3, k=2]
        [[[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]], [[-1.0, 4.0], [5.0, 5.0], [0.5, 0.0]]]
    )
    raw = np.zeros((2, 2, 3))
    for i in range(2):
        for j in range(2):
            for loc in range(3):
                raw[i, j, loc] = float(np.dot(anchors[i], targets[j, loc])) / math.sqrt(2)
    scores, got_raw = jax.jit(lambda a, t: amdim.nce_scores(a, t, clip=3.0))(anchors, targets)
    np.testing.assert_allclose(got_raw, raw, rtol=1e-6)
    np.testing.assert_allclose(scores, 3.0 * np.tanh(raw / 3.0), rtol=1e-6)
    assert float(jnp.max(jnp.abs(scores))) < 3.0  # the clip binds: raw reaches 10.6
    unclipped, _ = amdim.nce_scores(anchors, targets, clip=None)
    np.testing.assert_allclose(unclipped, raw, rtol=1e-6)


def test_critic_penalty_is_the_mean_squared_raw_score():
    key = jax.random.key(0)
    feats = amdim.MultiScaleOutput(
        map7=jax.random.normal(key, (3, 7, 7, 4)),
        map5=jax.random.normal(jax.random.fold_in(key, 1), (3, 5, 5, 4)),
        global_=jax.random.normal(jax.random.fold_in(key, 2), (3, 6)),
    )
    critic = amdim.AMDIMCritic(predictions=("1-7",), hidden=8, embed_dim=5, critic_clip=20.0)
    params = critic.init(key, feats, feats, jnp.zeros(3, jnp.int32))
    out = critic.apply(params, feats, feats, jnp.zeros(3, jnp.int32))["1-7"]
    # Recompute by hand from the embedding networks' parameters.
    p = params["params"]

    def dense(q, x):
        return x @ q["kernel"] + q["bias"].reshape((1,) * (x.ndim - 1) + (-1,))

    def mlp(q, x):
        h = jax.nn.relu(dense(q["hidden"], x))
        return dense(q["out"], h) + dense(q["shortcut"], x)

    anchors = mlp(p["anchor_global"], feats.global_)
    targets = mlp(p["target_map7"], feats.map7.reshape(3, 49, 4))
    raw = jnp.einsum("ik,jlk->ijl", anchors, targets) / jnp.sqrt(5.0)
    np.testing.assert_allclose(out.penalty, jnp.mean(raw**2), rtol=1e-5)
    assert out.matrices.shape == (49, 3, 3)
    fewer = jax.tree.map(lambda x: x[:2], feats)
    with pytest.raises(ValueError, match="equal shapes"):
        critic.apply(params, feats, fewer, jnp.zeros(3, jnp.int32))


def test_pooled_matrices_put_positives_on_the_diagonal_and_pool_negatives():
    scores = jax.random.normal(jax.random.key(1), (3, 3, 4)) * 2
    m = np.asarray(amdim.pooled_score_matrices(scores))
    s = np.asarray(scores)
    for loc in range(4):
        for i in range(3):
            for j in range(3):
                # Row: the target image j; column: the anchor i (mi_jax.bounds' layout).
                want = s[i, i, loc] if i == j else np.log(np.mean(np.exp(s[i, j])))
                np.testing.assert_allclose(m[loc, j, i], want, rtol=1e-5, atol=1e-6)


def test_infonce_on_pooled_matrices_uses_every_negative_location():
    # The module docstring's claim: InfoNCE on the pooled matrix at location l is
    # s_iil - log((e^{s_iil} + sum_{j != i} mean_l' e^{s_ijl'}) / B), averaged over i.
    batch, locs = 4, 3
    s = np.asarray(jax.random.normal(jax.random.key(2), (batch, batch, locs)) * 3, np.float64)
    m = amdim.pooled_score_matrices(jnp.asarray(s, jnp.float32))
    for loc in range(locs):
        want = np.mean(
            [
                s[i, i, loc]
                - np.log(
                    (
                        np.exp(s[i, i, loc])
                        + sum(np.mean(np.exp(s[i, j])) for j in range(batch) if j != i)
                    )
                    / batch
                )
                for i in range(batch)
            ]
        )
        np.testing.assert_allclose(bounds.infonce(m[loc]), want, rtol=1e-5)


@pytest.mark.parametrize("size", [7, 8, 28, 32])
def test_multiscale_encoder_shapes(size):
    encoder = amdim.MultiScaleEncoder(stem_width=4, widths=(6, 5, 3))
    images = jnp.zeros((2, size, size, 3 if size == 32 else 1))
    params = encoder.init(jax.random.key(0), images)
    out = jax.jit(encoder.apply)(params, images)
    chex.assert_shape(out.map7, (2, 7, 7, 6))
    chex.assert_shape(out.map5, (2, 5, 5, 5))
    chex.assert_shape(out.global_, (2, 3))


def test_multiscale_encoder_rejects_small_images():
    encoder = amdim.MultiScaleEncoder(stem_width=4, widths=(6, 5, 3))
    with pytest.raises(ValueError, match="H, W >= 7"):
        encoder.init(jax.random.key(0), jnp.zeros((2, 6, 6, 1)))


def test_random_resized_crop_identity_shape_determinism():
    image = jax.random.uniform(jax.random.key(0), (8, 10, 3))
    same = data.random_resized_crop(jax.random.key(1), image, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    np.testing.assert_allclose(same, image, atol=1e-6)
    crop = jax.jit(lambda k, x: data.random_resized_crop(k, x, scale=(0.2, 0.5)))
    a, b = crop(jax.random.key(3), image), crop(jax.random.key(3), image)
    assert a.shape == image.shape and a.dtype == image.dtype
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, crop(jax.random.key(4), image))


def test_random_resized_crop_of_a_quarter_stretches_a_ramp():
    # A crop of area 1/4 and ratio 1 is a 4x4 window of an 8x8 ramp, stretched 2x: the rows
    # step by 1/2 per output pixel.
    ramp = jnp.broadcast_to(jnp.arange(8.0)[:, None, None], (8, 8, 1))
    out = data.random_resized_crop(jax.random.key(5), ramp, scale=(0.25, 0.25), ratio=(1.0, 1.0))
    # (interior rows: the bilinear kernel is renormalized where it reaches past the image edge)
    np.testing.assert_allclose(np.diff(np.asarray(out[1:-1, 3, 0])), 0.5, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"scale": (0.0, 1.0)}, "`scale`"),
        ({"scale": (0.5, 1.2)}, "`scale`"),
        ({"scale": (0.8, 0.5)}, "`scale`"),
        ({"ratio": (2.0, 1.0)}, "`ratio`"),
        ({"ratio": (-1.0, 1.0)}, "`ratio`"),
    ],
)
def test_random_resized_crop_rejects_out_of_range_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        data.random_resized_crop(jax.random.key(0), jnp.zeros((8, 8, 1)), **kwargs)


def test_random_grayscale():
    image = jax.random.uniform(jax.random.key(0), (4, 4, 3))
    gray = data.random_grayscale(jax.random.key(1), image, p=1.0)
    luma = image @ jnp.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(gray, jnp.repeat(luma[..., None], 3, axis=-1), rtol=1e-6)
    np.testing.assert_array_equal(data.random_grayscale(jax.random.key(1), image, p=0.0), image)
    with pytest.raises(ValueError, match="`p`"):
        data.random_grayscale(jax.random.key(1), image, p=1.5)


def _views(**overrides):
    views = dict(amdim.AMDIMObjective.__dataclass_fields__["views"].default)
    views.update(overrides)
    return views


def test_views_keep_shape_and_dtype_and_are_deterministic_given_the_key():
    images = jax.random.uniform(jax.random.key(0), (5, 12, 12, 3))
    params = _views(flip=True, brightness=0.4, contrast=0.4, saturation=0.4, grayscale=0.5)
    fn = jax.jit(lambda k, x: amdim.augment_views(k, x, **params))
    a1, b1 = fn(jax.random.key(7), images)
    a2, b2 = fn(jax.random.key(7), images)
    assert a1.shape == images.shape and a1.dtype == images.dtype
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(b1, b2)
    assert not np.allclose(a1, b1)  # the two views differ
    assert float(a1.min()) >= 0.0 and float(a1.max()) <= 1.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"predictions": ("1-5", "2-5")}, "`predictions`"),
        ({"predictions": ()}, "`predictions`"),
        ({"predictions": ("1-5", "1-5")}, "without repeats"),
        ({"penalty": -0.1}, "`penalty`"),
        ({"critic_clip": -1.0}, "`critic_clip`"),
        ({"estimator": "nope"}, "estimator"),
        ({"views": tuple(sorted(_views(crop_scale=(0.5, 2.0)).items()))}, "views.crop_scale"),
        ({"views": tuple(sorted(_views(grayscale=2.0).items()))}, "views.grayscale"),
        ({"views": tuple(sorted(_views(brightness=-1.0).items()))}, "views.brightness"),
        # Before: a string flip or strength, or no grayscale, failed (or flipped) at the first
        # traced step, naming nothing.
        ({"views": tuple(sorted(_views(flip="False").items()))}, "views.flip"),
        ({"views": tuple(sorted(_views(contrast="0.1").items()))}, "views.contrast"),
        ({"views": tuple(sorted(_views(saturation=float("inf")).items()))}, "views.saturation"),
        ({"views": tuple(sorted(_views(grayscale=None).items()))}, "views.grayscale"),
        ({"embed_dim": 0}, "`embed_dim` must be an integer >= 1"),
        ({"critic_hidden": 0}, "`critic_hidden` must be an integer >= 1"),
        ({"penalty": float("nan")}, "`penalty` must be finite"),
        ({"critic_clip": float("nan")}, "`critic_clip`"),
    ],
)
def test_objective_rejects_bad_settings(kwargs, match):
    encoder = amdim.MultiScaleEncoder(stem_width=4, widths=(6, 5, 3))
    with pytest.raises((ValueError, KeyError), match=match):
        amdim.AMDIMObjective(encoder=encoder, **kwargs)


def test_multiscale_encoder_rejects_zero_widths_when_built():
    with pytest.raises(ValueError, match=r"MultiScaleEncoder: `stem_width` must be an integer"):
        amdim.MultiScaleEncoder(stem_width=0)
    with pytest.raises(ValueError, match=r"MultiScaleEncoder: `widths` must hold integers"):
        amdim.MultiScaleEncoder(widths=(8, 0, 8))
    with pytest.raises(ValueError, match=r"`widths` must be \(C7, C5, D\)"):
        amdim.MultiScaleEncoder(widths=(8, 8))


@pytest.mark.parametrize("estimator", ["infonce", "flo", "nwj", "mine"])
def test_loss_and_gradients_are_finite_under_jit(estimator):
    encoder = amdim.MultiScaleEncoder(stem_width=4, widths=(6, 5, 3))
    objective = amdim.AMDIMObjective(
        encoder=encoder, estimator=estimator, critic_hidden=8, embed_dim=4
    )
    images = jax.random.uniform(jax.random.key(0), (6, 8, 8, 1))
    params, states = objective.init(jax.random.key(1), images)
    grad_fn = jax.jit(jax.value_and_grad(objective.loss, has_aux=True))
    (loss, (metrics, new_states)), grads = grad_fn(params, states, images, jax.random.key(2))
    assert np.isfinite(float(loss))
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    assert set(metrics) >= {"mi_1-5", "mi_1-7", "mi_5-5", "infonce_5-5", "score_penalty"}
    assert float(metrics["infonce_1-7"]) <= math.log(6) + 1e-5
    if estimator == "infonce":  # (the views' key handling, the same for every estimator)
        # Raw (uint32 [2]) keys work too: the views split them as typed keys.
        raw = jax.jit(objective.loss)(params, states, images, jax.random.PRNGKey(2))[0]
        assert np.isfinite(float(raw))
    chex.assert_trees_all_equal_structs(states, new_states)
    reps = objective.representations(params["encoder"], images)
    assert {k: v.shape for k, v in reps.items()} == {
        "global": (6, 3),
        "map5": (6, 125),
        "map7": (6, 294),
    }


def tiny_config(**overrides):
    config = amdim_config.get_config("quick")
    config.unlock()
    config.max_examples = 48
    config.batch_size = 16
    config.encoder_hparams = {"stem_width": 4, "widths": (8, 8, 8)}
    config.critic_hidden = 8
    config.embed_dim = 8
    config.num_steps = 2
    config.log_every = 1
    config.eval_every = 2
    config.checkpoint_every = 1
    config.probe.epochs = 1
    config.probe.max_iter = 5
    config.probe.mlp_hidden = 8
    config.probe.representations = ("global", "map5")
    config.update_from_flattened_dict(overrides)
    config.lock()
    return config


# FLO and NWJ runs are slow-marked: the objective-level test above covers every bound under jit.
@pytest.mark.parametrize(
    "estimator",
    [
        "infonce",
        pytest.param("flo", marks=pytest.mark.slow),
        pytest.param("nwj", marks=pytest.mark.slow),
    ],
)
def test_experiment_runs_and_writes_everything(tmp_path, estimator):
    # InfoNCE with two seeds vmapped (the shared trainer's seed axis through AMDIM's views).
    seeds = 2 if estimator == "infonce" else 1
    config = tiny_config(estimator=estimator, num_seeds=seeds)
    results = amdim_experiment.train_and_evaluate(config, str(tmp_path))
    assert results["num_seeds"] == seeds
    for name in ("config.json", "metrics.jsonl", "results.json", "curves.png", "probes.png"):
        assert os.path.getsize(tmp_path / name) > 0, name
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2"]
    table = {(r["encoder"], r["representation"], r["probe"]) for r in results["probes"]}
    assert ("trained", "map5", "linear") in table and ("random", "global", "mlp") in table
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2]
    assert all(np.isfinite(r["mi_1-5"]) for r in train)
    if seeds > 1:
        assert all(len(r["per_seed"]["mi_1-5"]) == 2 for r in train)
        assert all(
            r["num_seeds"] == (1 if r["encoder"] == "none" else 2) for r in results["probes"]
        )


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"views.crop_scale": (0.0, 1.0)}, "views.crop_scale"),
        ({"views.grayscale": -0.5}, "views.grayscale"),
        ({"estimator": "nope"}, "estimator"),
        ({"predictions": ("1-9",)}, "predictions"),
        ({"probe.representations": ("features",)}, "probe.representations"),
        ({"embed_dim": 0}, "embed_dim"),
        ({"encoder_hparams.stem_width": 0}, "stem_width"),
        # Before: an unknown key was silently ignored; a bare width, "'int' is not iterable".
        (
            {"encoder_hparams": {"stem_width": 4, "widths": (8, 8, 8), "depth": 3}},
            r"unknown fields \['depth'\] in `config.encoder_hparams`",
        ),
        ({"encoder_hparams": {"widths": 8}}, r"`config.encoder_hparams`: .*`widths` must be a seq"),
    ],
)
def test_experiment_bad_config_names_the_field(tmp_path, overrides, match):
    with pytest.raises((ValueError, KeyError), match=match):
        amdim_experiment.train_and_evaluate(tiny_config(**overrides), str(tmp_path))


@pytest.mark.slow  # the tfds mock path itself is covered by tests/test_infomax.py (cifar10)
def test_stl10_preset_trains_through_mock_data(tmp_path, tfds):
    # 96x96 colour images: three stride-2 convs and a 6x6 VALID conv reach the 7x7 map; the
    # colour augmentations (jitter, greyscale) run.
    preset = amdim_config.get_config("stl10")
    config = tiny_config(
        dataset="stl10",
        views=preset.views.to_dict(),
        batch_size=8,
        max_examples=16,
        **{"probe.kinds": ("linear",), "probe.representations": ("global",)},
    )
    with tfds.testing.mock_data(num_examples=16):
        results = amdim_experiment.train_and_evaluate(config, str(tmp_path))
    assert results["dataset"] == "stl10"
    assert {r["encoder"] for r in results["probes"]} == {"trained", "random", "none"}


@pytest.mark.slow  # four-channel images (STL-10 style); the experiment test stays
def test_four_channel_images_train_with_colour_off_and_a_colour_setting_is_named(
    tmp_path, monkeypatch
):
    # Before: every AMDIM view checked for 1 or 3 channels (grayscale's check ran before its
    # p == 0 return): RGBA or multispectral data failed at the first step, after config.json.
    monkeypatch.setattr(data, "_REGISTRY", dict(data._REGISTRY))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (48, 8, 8, 4), dtype=np.uint8)
    labels = (np.arange(48) % 3).astype(np.int32)
    data.register_dataset(
        "four", lambda **_: data.Dataset("four", images, labels, images, labels, 3)
    )
    results = amdim_experiment.train_and_evaluate(tiny_config(dataset="four"), str(tmp_path / "a"))
    assert all(0.0 <= r["test_accuracy"] <= 1.0 for r in results["probes"])
    with pytest.raises(ValueError, match="`views.contrast` needs images of 1 or 3 channels"):
        amdim_experiment.train_and_evaluate(
            tiny_config(dataset="four", **{"views.contrast": 0.4}), str(tmp_path / "b")
        )
    assert not (tmp_path / "b" / "config.json").exists()


# --------------------------------------------------------------------------------------------
# Hand recomputations (a mutation check: each of these caught a change the tests above let through).


def test_amdim_loss_matches_a_hand_recomputation():
    """Catches: b -> a scored as a -> b, penalty sign, 5-5 anchor taken from the target
    view, 5-5 anchor always location 0, reported MI of one direction only."""
    # ELU: with ReLU most of the tiny encoder's global units are dead at init (InfoNCE of a
    # constant anchor: exactly 0, whatever the pairing).
    encoder = amdim.MultiScaleEncoder(stem_width=4, widths=(8, 8, 8), activation="elu")
    objective = amdim.AMDIMObjective(
        encoder=encoder,
        estimator="infonce",
        critic_hidden=8,
        embed_dim=4,
        penalty=0.05,
        critic_clip=2.0,
    )
    b = 6
    images = jax.random.uniform(jax.random.key(0), (b, 8, 8, 1))
    params, states = objective.init(jax.random.key(1), images)

    def scale(tree, c):  # at init the scores are ~1e-4 and every MI ~1e-5: a vacuous check
        return jax.tree_util.tree_map_with_path(
            lambda path, v: v * c if "kernel" in jax.tree_util.keystr(path) else v, tree
        )

    params = {"encoder": scale(params["encoder"], 1.3), "critic": scale(params["critic"], 2.0)}
    rng = jax.random.key(2)
    loss, (m, _) = jax.jit(objective.loss)(params, states, images, rng)

    # The documented procedure, step by step.
    view_key, loc_key = jax.random.split(rng)
    view_a, view_b = amdim.augment_views(view_key, images, **dict(objective.views))
    fa = encoder.apply(params["encoder"], view_a)
    fb = encoder.apply(params["encoder"], view_b)
    keys = jax.random.split(loc_key)
    p = jax.tree.map(np.asarray, params["critic"]["params"])

    def flat(x):
        x = np.asarray(x, np.float64)
        return x.reshape(x.shape[0], -1, x.shape[-1])

    mis, pens, per = [], [], {}
    for direction, (src, tgt), k in (("ab", (fa, fb), keys[0]), ("ba", (fb, fa), keys[1])):
        locs = np.asarray(jax.random.randint(k, (b,), 0, 25, jnp.int32))
        assert len(set(locs.tolist())) > 1
        for pred in ("1-5", "1-7", "5-5"):
            s, t = pred.split("-")
            if s == "1":
                anchors = _embed(p["anchor_global"], src.global_)
            else:
                anchors = _embed(p["anchor_map5"], flat(src.map5)[np.arange(b), locs])
            targets = _embed(p[f"target_map{t}"], flat(getattr(tgt, f"map{t}")))
            raw = np.einsum("ik,jlk->ijl", anchors, targets) / np.sqrt(4.0)
            sc = 2.0 * np.tanh(raw / 2.0)
            L = sc.shape[-1]
            pooled = np.log(np.mean(np.exp(sc), -1))  # [i, j]
            vals = []
            for loc in range(L):
                mat = np.where(np.eye(b, dtype=bool), sc[:, :, loc], pooled).T  # [target, anchor]
                vals.append(_np_infonce(mat))
            per[(pred, direction)] = np.mean(vals)
            mis.append(np.mean(vals))
            pens.append(np.mean(raw**2))
    want = -np.mean(mis) + 0.05 * np.mean(pens)
    np.testing.assert_allclose(loss, want, rtol=1e-4, atol=1e-5)
    for pred in ("1-5", "1-7", "5-5"):
        both = 0.5 * (per[(pred, "ab")] + per[(pred, "ba")])
        assert abs(both) > 0.1 and abs(per[(pred, "ab")] - per[(pred, "ba")]) > 0.01  # not vacuous
        np.testing.assert_allclose(m[f"mi_{pred}"], both, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(m["score_penalty"], np.mean(pens), rtol=1e-4)


def test_amdim_run_is_labelled_amdim_and_uses_its_own_objective(tmp_path, monkeypatch):
    """`experiments.amdim` reports through InfoMax's trainer: its plots' titles and progress
    bar carry ``name``; an AMDIM run must not be labelled (or built) as InfoMax's.

    Catches: ``name="infomax"``."""
    from experiments import infomax

    seen = {}
    monkeypatch.setattr(infomax, "train_and_evaluate", lambda config, workdir, **k: seen.update(k))
    amdim_experiment.train_and_evaluate(ml_collections.ConfigDict({}), str(tmp_path))
    assert seen["name"] == "amdim" and seen["build_fn"] is amdim_experiment.build


@pytest.mark.parametrize("size", [(28, 32), (8, 20)])
def test_multiscale_encoder_shapes_of_non_square_images(size):
    """The stem treats each side on its own (strides and the VALID conv to 7x7 per axis):
    a non-square input still gives 7x7 and 5x5 maps.

    Catches: the `to7` kernel's width read from the height (a 7x8 "7x7" map, whose global
    vector silently keeps one of two 1x1 positions)."""
    encoder = amdim.MultiScaleEncoder(stem_width=4, widths=(6, 5, 3))
    images = jnp.zeros((2, *size, 1))
    params = encoder.init(jax.random.key(0), images)
    out = jax.jit(encoder.apply)(params, images)
    assert out.map7.shape == (2, 7, 7, 6)
    assert out.map5.shape == (2, 5, 5, 5)
    assert out.global_.shape == (2, 3)


@pytest.mark.parametrize(
    "size, downs, to7", [(14, 1, 1), (28, 2, 1), (32, 2, 2), (20, 1, 4), (8, 0, 2)]
)
def test_multiscale_encoder_stem_is_the_documented_one(size, downs, to7):
    """The docstring's stem: 4x4 stride-2 convs while a side is at least 14 (14 -> 7,
    28 -> 14 -> 7, 32 -> 16 -> 8, 20 -> 10), then a VALID conv of kernel ``size - 6`` to 7x7.

    Catches: `while max(size) > 14` (a 28x28 MNIST image, or a 14x14 one, then meets one stride-2
    conv fewer and an 8x8 VALID conv instead, with every shape unchanged)."""
    encoder = amdim.MultiScaleEncoder(stem_width=4, widths=(6, 5, 3))
    params = encoder.init(jax.random.key(0), jnp.zeros((1, size, size, 1)))["params"]
    assert sorted(k for k in params if k.startswith("down")) == [f"down{n}" for n in range(downs)]
    assert params["to7"]["kernel"].shape[:2] == (to7, to7)


def test_objective_defaults_are_the_papers_penalty_and_clip():
    """The module docstring's defaults: ``lambda = 0.05`` and ``c = 20``; an objective built
    without them computes the loss of one that names them.

    Catches: either default changed."""
    encoder = amdim.MultiScaleEncoder(stem_width=4, widths=(8, 8, 8), activation="elu")
    kw = dict(encoder=encoder, critic_hidden=8, embed_dim=4)
    default = amdim.AMDIMObjective(**kw)
    explicit = amdim.AMDIMObjective(**kw, penalty=0.05, critic_clip=20.0)
    images = jax.random.uniform(jax.random.key(0), (6, 8, 8, 1))
    params, states = explicit.init(jax.random.key(1), images)

    # Large scores: the clip at 20 (against 10, say) and the penalty must both matter.
    def scale(tree, c):  # at init the scores are ~1e-4: neither setting would show
        return jax.tree_util.tree_map_with_path(
            lambda path, v: v * c if "kernel" in jax.tree_util.keystr(path) else v, tree
        )

    params = {"encoder": scale(params["encoder"], 1.3), "critic": scale(params["critic"], 2.0)}
    rng = jax.random.key(2)
    want, (m, _) = explicit.loss(params, states, images, rng)
    got, _ = default.loss(params, states, images, rng)
    assert float(m["score_penalty"]) > 1.0  # the penalty's weight is visible in the loss
    np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
    for other in (dict(penalty=0.5), dict(critic_clip=10.0)):  # not vacuous
        changed = amdim.AMDIMObjective(**{**kw, "penalty": 0.05, "critic_clip": 20.0, **other})
        other_loss, _ = changed.loss(params, states, images, rng)
        assert abs(float(other_loss) - float(want)) > 0.1


def test_experiment_build_passes_the_configs_bound_settings_and_clip():
    """`config.estimator_hparams` reaches the bound and `config.critic_clip` the critic
    (0: off).

    Catches: either config key silently dropped in `experiments.amdim.build` (the run then
    trains SMILE at tau = 5 whatever the config says)."""
    config = tiny_config(estimator="smile", critic_clip=3.0, penalty=0.2)
    config.unlock()
    config.estimator_hparams = {"clip": 2.0}
    config.lock()
    objective = amdim_experiment.build(config, (8, 8, 1))
    assert dict(objective.estimator_hparams) == {"clip": 2.0}
    assert objective.critic_clip == 3.0 and objective.penalty == 0.2
    s = _rand_scores(705, 5, scale=4.0)
    assert abs(_ref_smile(s, 2.0) - _ref_smile(s, 5.0)) > 1e-2
    np.testing.assert_allclose(float(objective.bound(s)), _ref_smile(s, 2.0), rtol=1e-5, atol=1e-5)
    off = amdim_experiment.build(tiny_config(critic_clip=0.0), (8, 8, 1))
    assert off.critic_clip is None


def test_views_missing_a_field_are_named():
    """A `views` mapping without a field fails with the field named (check_view_params),
    not as a bare KeyError from the first range check that reads it.

    Catches: `check_view_params` testing only for unknown fields."""
    views = dict(amdim.AMDIMObjective(encoder=amdim.MultiScaleEncoder()).views)
    for name in ("crop_scale", "grayscale"):
        with pytest.raises(ValueError, match=rf"lacks \['{name}'\]"):
            amdim.check_view_params({k: v for k, v in views.items() if k != name})
