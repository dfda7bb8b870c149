"""DIM objectives: critics' scores, local/global terms, prior matching, by hand computations."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mi_jax import bounds, dim, encoders, mige, score


def _np_infonce(s):
    s = np.asarray(s, np.float64)
    lse = np.log(np.sum(np.exp(s), axis=0))
    return np.mean(np.diag(s) - lse) + np.log(s.shape[0])


def _np_js_fgan(s):
    s = np.asarray(s, np.float64)
    sp = lambda v: np.log1p(np.exp(v))
    b = s.shape[0]
    off = ~np.eye(b, dtype=bool)
    return -np.mean(sp(-np.diag(s))) - np.mean(sp(s[off]))


def _embed(p, x):
    """EmbedMLP by hand: Dense -> relu -> Dense, plus a linear shortcut."""
    x = np.asarray(x, np.float64)
    h = np.maximum(x @ p["hidden"]["kernel"] + p["hidden"]["bias"], 0)
    out = h @ p["out"]["kernel"] + p["out"]["bias"]
    return out + x @ p["shortcut"]["kernel"] + p["shortcut"]["bias"]


def _features(batch=6, h=2, w=3, c=4, d=5, seed=0):
    rng = np.random.default_rng(seed)
    local = rng.normal(size=(batch, h, w, c)).astype(np.float32)
    global_ = rng.normal(size=(batch, d)).astype(np.float32)
    return jnp.asarray(local), jnp.asarray(global_)


def test_critic_scores_match_a_hand_computation():
    local, global_ = _features()
    critic = dim.DIMCritic(hidden=7, embed_dim=3, critic_clip=None)
    params = jax.jit(critic.init)(jax.random.key(0), local, local, global_)
    out = jax.jit(critic.apply)(params, local, local, global_)
    p = jax.tree.map(np.asarray, params["params"])
    b, L = local.shape[0], local.shape[1] * local.shape[2]
    phi = _embed(p["global_source"], np.asarray(local).reshape(b, -1))
    psi = _embed(p["global_y"], np.asarray(global_))
    np.testing.assert_allclose(out.global_scores, phi @ psi.T, rtol=1e-5, atol=1e-5)
    feats = np.asarray(local).reshape(b, L, -1)
    psi_l = _embed(p["local_y"], np.asarray(global_))
    for loc in range(L):
        phi_l = _embed(p["local_map"], feats[:, loc])
        np.testing.assert_allclose(out.local_scores[loc], phi_l @ psi_l.T, rtol=1e-5, atol=1e-5)


def test_critic_clip_is_a_soft_tanh_clip():
    local, global_ = _features()
    raw = dim.DIMCritic(hidden=7, embed_dim=3, critic_clip=None)
    clipped = dim.DIMCritic(hidden=7, embed_dim=3, critic_clip=0.5)
    params = jax.jit(raw.init)(jax.random.key(0), local, local, global_)
    a = jax.jit(raw.apply)(params, local, local, global_).local_scores
    b = jax.jit(clipped.apply)(params, local, local, global_).local_scores
    np.testing.assert_allclose(b, 0.5 * np.tanh(np.asarray(a) / 0.5), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "estimator, reference", [("infonce", _np_infonce), ("js", None), ("dv", None)]
)
def test_objective_is_weighted_global_plus_mean_local(estimator, reference):
    """loss = -(alpha I(global) + beta mean_l I(local_l)), each I the bound on its own scores."""
    encoder = encoders.get_encoder("conv", channels=(4, 6), fc_width=8, latent_dim=5)
    objective = dim.DIMObjective(
        encoder=encoder,
        estimator=estimator,
        alpha=0.3,
        beta=0.7,
        gamma=0.0,
        critic_hidden=8,
        embed_dim=4,
    )
    images = jax.random.uniform(jax.random.key(1), (6, 8, 8, 1))
    params, states = jax.jit(objective.init)(jax.random.key(2), images)
    loss, (metrics, _) = jax.jit(objective.loss)(params, states, images, jax.random.key(3))
    fn = bounds.get_bound(estimator)

    @jax.jit
    def by_hand(params):
        local, _, global_ = encoder.apply(params["encoder"], images)
        scores = objective._critic().apply(params["critic"], local, local, global_)
        g = fn.apply(scores.global_scores, fn.init())[0]
        return scores, g, [fn.apply(s, fn.init())[0] for s in scores.local_scores]

    scores, g, per_loc = by_hand(params)
    if reference is not None:  # an independent numpy formula, not the library's bound
        g_ref = reference(scores.global_scores)
        np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-5)
        per_loc_ref = [reference(s) for s in scores.local_scores]
        np.testing.assert_allclose(per_loc, per_loc_ref, rtol=1e-4, atol=1e-5)
    assert len(per_loc) == 4  # 8x8 -> 2x2 map
    np.testing.assert_allclose(metrics["mi_global"], g, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics["mi_local"], np.mean(per_loc), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loss, -(0.3 * g + 0.7 * np.mean(per_loc)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        metrics["infonce_local"],
        np.mean([_np_infonce(s) for s in scores.local_scores]),
        rtol=1e-4,
        atol=1e-5,
    )


def test_js_trains_with_the_fgan_gradient():
    # DIM's JSD: the value is the NWJ read-out, the gradient that of the f-GAN objective.
    s = jax.random.normal(jax.random.key(0), (5, 5))
    np.testing.assert_allclose(
        jax.grad(bounds.js)(s),
        jax.grad(lambda v: jnp.asarray(_np_js_fgan_jax(v)))(s),
        rtol=1e-5,
        atol=1e-6,
    )


def _np_js_fgan_jax(s):
    b = s.shape[0]
    off = ~jnp.eye(b, dtype=bool)
    return -jnp.mean(jax.nn.softplus(-jnp.diag(s))) - jnp.sum(
        jnp.where(off, jax.nn.softplus(s), 0.0)
    ) / (b * (b - 1))


def test_prior_matching_losses_and_their_gradient_split():
    disc_apply = lambda p, z: z @ p  # a linear discriminator, logits [B]
    w = jnp.array([0.5, -1.0, 2.0])
    encoded = jax.random.normal(jax.random.key(0), (4, 3))
    prior = jax.random.uniform(jax.random.key(1), (4, 3))
    enc_loss, disc_loss = dim.prior_matching_losses(disc_apply, w, encoded, prior)
    sp = lambda v: np.log1p(np.exp(v))
    e, pr, wn = np.asarray(encoded), np.asarray(prior), np.asarray(w)
    np.testing.assert_allclose(enc_loss, np.mean(sp(-(e @ wn))), rtol=1e-5)
    np.testing.assert_allclose(disc_loss, np.mean(sp(-(pr @ wn))) + np.mean(sp(e @ wn)), rtol=1e-5)
    # The encoder loss never moves the discriminator; the discriminator loss never the encoder.
    g_w = jax.grad(lambda w: dim.prior_matching_losses(disc_apply, w, encoded, prior)[0])(w)
    g_z = jax.grad(lambda z: dim.prior_matching_losses(disc_apply, w, z, prior)[1])(encoded)
    np.testing.assert_array_equal(g_w, 0.0)
    np.testing.assert_array_equal(g_z, 0.0)


def test_sample_prior():
    # U[0, 1] and N(0, 1): moments within about 4-5 standard errors of 2000 / 4000 draws
    # (the uniform's mean 0.0065, its variance 0.0017; the normal's mean 0.016, its std 0.011).
    u = dim.sample_prior(jax.random.key(0), (1000, 2), "uniform")
    assert float(u.min()) >= 0 and float(u.max()) <= 1
    assert abs(float(u.mean()) - 0.5) < 0.03 and abs(float(u.var()) - 1 / 12) < 0.008
    n = dim.sample_prior(jax.random.key(0), (4000,), "gaussian")
    assert abs(float(n.mean())) < 0.06 and abs(float(n.std()) - 1) < 0.05
    with pytest.raises(ValueError, match="prior"):
        dim.sample_prior(jax.random.key(0), (2,), "laplace")


def test_hparams_given_as_a_mapping_keep_the_objective_hashable():
    # Before: a dict was taken as given (the docstring's example), and the objective could no
    # longer be a static argument of jit ("Non-hashable static arguments").
    encoder = encoders.get_encoder("conv", channels=(4, 6), fc_width=8, latent_dim=5)
    kw = dict(encoder=encoder, estimator="smile", critic_hidden=8, embed_dim=4)
    given = dim.DIMObjective(**kw, estimator_hparams={"gradient": "js", "clip": 2.0})
    pairs = dim.DIMObjective(**kw, estimator_hparams=(("clip", 2.0), ("gradient", "js")))
    assert given == pairs and hash(given) == hash(pairs)
    assert given.bound.name == "smile"
    traces = []

    @functools.partial(jax.jit, static_argnums=0)
    def prior_draw(objective, key):
        traces.append(1)
        return dim.sample_prior(key, (2,), objective.prior)

    for objective in (given, pairs):
        prior_draw(objective, jax.random.key(0))
    assert len(traces) == 1


@pytest.mark.parametrize(
    "estimator, global_source",
    [("flo", "feature_map"), ("tuba", "feature_map"), ("mine", "input")]
    + [("mige", "feature_map"), ("mige", "input")],
)
def test_every_kind_of_estimator_gives_finite_encoder_gradients(estimator, global_source):
    encoder = encoders.get_encoder("conv", channels=(4, 6), fc_width=8, latent_dim=5)
    objective = dim.DIMObjective(
        encoder=encoder,
        estimator=estimator,
        global_source=global_source,
        alpha=0.5,
        beta=1.0,
        gamma=0.1,
        critic_hidden=8,
        embed_dim=4,
        mige_locations=2,
    )
    images = jax.random.uniform(jax.random.key(1), (8, 8, 8, 1))
    params, states = jax.jit(objective.init)(jax.random.key(2), images)
    grad_fn = jax.jit(jax.grad(objective.loss, has_aux=True))
    grads, (metrics, new_states) = grad_fn(params, states, images, jax.random.key(3))
    chex.assert_trees_all_equal_structs(states, new_states)
    leaves = jax.tree.leaves(grads["encoder"])
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert any(float(jnp.abs(g).max()) > 0 for g in leaves)
    assert ("critic" in params) == (estimator != "mige")


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(estimator="infonse"), KeyError, "infonce"),
        (dict(estimator="mige", score_estimator="stien"), KeyError, "stein"),
        # (Before: read by nothing under MIGE, without a word.)
        (
            dict(estimator="mige", estimator_hparams=(("threshold", 0.9),)),
            ValueError,
            "`estimator_hparams`.*MIGE has no bound.*`score_hparams`",
        ),
        (dict(estimator="smile", estimator_hparams=(("clipp", 1.0),)), TypeError, "clipp"),
        (dict(alpha=0.0, beta=0.0), ValueError, "alpha"),
        (dict(gamma=-1.0), ValueError, "gamma"),
        (dict(prior="laplace"), ValueError, "prior"),
        (dict(global_source="pixels"), ValueError, "global_source"),
        (dict(critic_clip=-1.0), ValueError, "`critic_clip`"),
        (dict(beta=float("nan")), ValueError, "`beta` must be finite"),
        (dict(alpha=float("inf")), ValueError, "`alpha` must be finite"),
        (dict(embed_dim=0), ValueError, "`embed_dim` must be an integer >= 1"),
        (dict(critic_hidden=0), ValueError, "`critic_hidden` must be an integer >= 1"),
        (dict(mige_locations=1.5), ValueError, "`mige_locations` must be an integer"),
    ],
)
def test_bad_objective_configuration_is_named(kwargs, error, match):
    encoder = encoders.get_encoder("mlp", hidden=(8,), latent_dim=4)
    with pytest.raises(error, match=match):
        dim.DIMObjective(encoder=encoder, **kwargs)


def _lookup_bug_bound(*, axis="row"):
    """A registered bound whose factory has a bug: its default is not in its own table."""
    sign = {"rows": 1.0, "columns": -1.0}[axis]  # KeyError: 'row'
    return bounds.make_bound("lookup_bug", lambda scores: sign * bounds.infonce(scores))


@pytest.mark.parametrize("objective", ["dim", "amdim"])
def test_an_error_inside_a_registered_bound_is_its_own_not_an_unknown_name(monkeypatch, objective):
    # Before: any KeyError from `get_bound` read "unknown estimator 'lookup_bug'. Did you mean
    # 'lookup_bug'?", the registered name listed among the known ones and the bug hidden.
    from mi_jax import amdim

    monkeypatch.setitem(bounds._REGISTRY, "lookup_bug", _lookup_bug_bound)  # noqa: SLF001
    if objective == "dim":
        encoder = encoders.get_encoder("mlp", hidden=(8,), latent_dim=4)
        build = functools.partial(dim.DIMObjective, encoder=encoder)
    else:
        encoder = amdim.MultiScaleEncoder(stem_width=4, widths=(6, 5, 3))
        build = functools.partial(amdim.AMDIMObjective, encoder=encoder)
    with pytest.raises(KeyError) as info:
        build(estimator="lookup_bug")
    assert str(info.value) == "'row'"
    with pytest.raises(KeyError, match="unknown estimator 'lookup_bg'. Did you mean 'lookup_bug'"):
        build(estimator="lookup_bg")


# --------------------------------------------------------------------------------------------
# Hand recomputations (a mutation check: each of these caught a change the tests above let through).


def _sp(v):
    return np.logaddexp(0.0, v)


def _dim_objective(**kw):
    encoder = encoders.get_encoder("conv", channels=(4, 6), fc_width=8, latent_dim=5)
    defaults = dict(
        encoder=encoder, estimator="infonce", alpha=0.3, beta=0.7, critic_hidden=8, embed_dim=4
    )
    return dim.DIMObjective(**{**defaults, **kw})


def test_dim_loss_adds_gamma_times_the_encoders_prior_loss_on_sigmoid_y():
    """Catches: prior term's sign, no sigmoid for the uniform prior, gamma on the
    discriminator's loss: loss = -(alpha I_g + beta I_l) + gamma E[softplus(-D(sigmoid Y))]
    + disc_loss, with the Gaussian prior reading Y itself."""
    images = jax.random.uniform(jax.random.key(1), (6, 8, 8, 1))
    for prior in ("uniform", "gaussian"):
        objective = _dim_objective(gamma=0.25, prior=prior)
        params, states = jax.jit(objective.init)(jax.random.key(2), images)
        loss, (m, _) = jax.jit(objective.loss)(params, states, images, jax.random.key(3))

        @jax.jit
        def by_hand(params, prior=prior, objective=objective):
            local, _, global_ = objective.encoder.apply(params["encoder"], images)
            scores = objective._critic().apply(params["critic"], local, local, global_)
            encoded = jax.nn.sigmoid(global_) if prior == "uniform" else global_
            return scores, dim.PriorDiscriminator().apply(params["prior_disc"], encoded)

        scores, logits = by_hand(params)
        g = _np_infonce(scores.global_scores)
        loc = np.mean([_np_infonce(s) for s in scores.local_scores])
        logits = np.asarray(logits)
        enc_loss = np.mean(_sp(-logits))
        np.testing.assert_allclose(m["prior_encoder"], enc_loss, rtol=1e-5, atol=1e-6)
        want = -(0.3 * g + 0.7 * loc) + 0.25 * enc_loss + float(m["prior_disc"])
        np.testing.assert_allclose(loss, want, rtol=1e-4, atol=1e-5)


def test_dim_input_source_scores_the_images_not_the_feature_map():
    """Catches: `global_source="input"` ignored: the global term read I(M; Y)."""
    objective = _dim_objective(global_source="input", alpha=1.0, beta=0.5, gamma=0.0)
    images = jax.random.uniform(jax.random.key(1), (6, 8, 8, 1))
    params, states = objective.init(jax.random.key(2), images)
    kernel = params["critic"]["params"]["global_source"]["hidden"]["kernel"]
    assert kernel.shape[0] == 8 * 8 * 1  # the flattened image, not the 2x2x6 map
    _, (m, _) = jax.jit(objective.loss)(params, states, images, jax.random.key(3))
    local, _, global_ = objective.encoder.apply(params["encoder"], images)
    p = jax.tree.map(np.asarray, params["critic"]["params"])
    phi = _embed(p["global_source"], np.asarray(images).reshape(6, -1))
    psi = _embed(p["global_y"], global_)
    clipped = 10.0 * np.tanh(phi @ psi.T / 10.0)
    np.testing.assert_allclose(m["mi_global"], _np_infonce(clipped), rtol=1e-4, atol=1e-5)


def test_dim_local_extra_inputs_pair_each_location_with_its_own_image():
    """Catches: FLO's u head on another image's Y and [B, L] -> [L, B] by reshape, not
    transpose: u[l, i] = head([phi_loc(M_i^l), psi_loc(Y_i)])."""
    rng = np.random.default_rng(0)
    local = jnp.asarray(rng.normal(size=(5, 2, 3, 4)), jnp.float32)
    global_ = jnp.asarray(rng.normal(size=(5, 6)), jnp.float32)
    critic = dim.DIMCritic(hidden=7, embed_dim=3, critic_clip=None, extra_inputs=("u",))
    params = jax.jit(critic.init)(jax.random.key(0), local, local, global_)
    out = jax.jit(critic.apply)(params, local, local, global_)
    p = jax.tree.map(np.asarray, params["params"])
    feats = np.asarray(local).reshape(5, 6, 4)
    psi = _embed(p["local_y"], global_)  # [B, k]
    assert out.local_inputs["u"].shape == (6, 5)
    for loc in range(6):
        phi = _embed(p["local_map"], feats[:, loc])  # [B, k]
        u = _embed(p["local_u"], np.concatenate([phi, psi], -1))[:, 0]
        np.testing.assert_allclose(out.local_inputs["u"][loc], u, rtol=1e-4, atol=1e-5)


def test_mige_local_surrogate_averages_the_chosen_locations():
    """Catches: every chosen location read as location 0."""
    key = jax.random.key(0)
    local = jax.random.normal(key, (16, 3, 2))
    global_ = local[:, 1] @ jnp.ones((2, 3)) + 0.1 * jax.random.normal(key, (16, 3))
    fn = score.get_score_estimator("stein")
    got = jax.jit(dim.mige_local_surrogate, static_argnums=3)(local, global_, jnp.array([1, 2]), fn)
    one = jax.jit(lambda i: mige.mi_surrogate(local[:, i], global_, fn))
    want = 0.5 * (one(1) + one(2))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert abs(float(want) - float(one(0))) > 1e-3
