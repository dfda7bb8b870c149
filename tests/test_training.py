"""Train state, train step and scan loop of `mi_jax.training`."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mi_jax
from mi_jax import critics, tasks, training

NAMES = ["dv", "mine", "nwj", "tuba", "infonce", "js", "interpolated", "smile", "flo"]


def _setup(names, critic="separable", hparams=None, batch=32, dim=4, optimizer=None):
    ensemble = training.make_ensemble(
        names, critic, hparams or {"hidden": (32,), "embed_dim": 8}, aux_hidden=(16,)
    )
    task = tasks.get_task("gaussian", dim=dim)
    sample = lambda key, step: task.sample(key, 1.0, batch)  # noqa: E731
    x, y = sample(jax.random.key(0), 0)
    state = training.create_train_state(
        ensemble, optimizer or optax.adam(1e-2), jax.random.key(1), x, y
    )
    return ensemble, sample, state


def test_train_step_traces_once_and_matches_separate_training():
    """Bounds trained side by side update exactly as each would alone (disjoint parameters).

    SGD rather than Adam: some gradients are zero up to float rounding (the bias of g under a
    column-normalized bound), and Adam's normalization would amplify that rounding noise.
    """
    ensemble, sample, state = _setup(["nwj", "infonce"], optimizer=optax.sgd(0.1))
    step = training.make_train_step(ensemble)
    counted = chex.assert_max_traces(step, n=1)
    jitted = jax.jit(counted)
    batches = [sample(jax.random.key(10 + i), i) for i in range(3)]
    for i, batch in enumerate(batches):
        state, metrics = jitted(state, batch, jax.random.key(i))
    assert metrics["mi"].shape == (2,)
    assert metrics["grad_norm"].shape == (2,)

    for b, name in enumerate(["nwj", "infonce"]):
        alone, _, alone_state = _setup([name], optimizer=optax.sgd(0.1))
        alone_step = jax.jit(training.make_train_step(alone))
        for i, batch in enumerate(batches):
            alone_state, alone_metrics = alone_step(alone_state, batch, jax.random.key(i))
        np.testing.assert_allclose(alone_metrics["mi"][0], metrics["mi"][b], rtol=1e-5, atol=1e-5)
        for got, want in zip(
            jax.tree.leaves(state.params["critic"]),
            jax.tree.leaves(alone_state.params["critic"]),
            strict=True,
        ):
            np.testing.assert_allclose(got[b], want[0], rtol=1e-4, atol=1e-6)


def test_all_bounds_train_together_and_improve():
    """Every bound's estimate rises from its initial value on a 1-nat task (scan, 300 steps),
    and stays near or below the MI (measured: 0.58-0.92 nats over the last 50 steps)."""
    ensemble, sample, state = _setup(NAMES, batch=64)
    run = jax.jit(training.make_scan_trainer(ensemble, sample, 300))
    state, metrics = run(state, jax.random.key(2), jnp.array(0))
    mi = np.asarray(metrics["mi"])  # [steps, bounds]
    assert mi.shape == (300, len(NAMES))
    assert np.all(np.isfinite(mi))
    first, last = mi[:20].mean(0), mi[-50:].mean(0)
    assert np.all(last > first + 0.2), dict(zip(NAMES, last - first, strict=True))
    # Training-batch values of critics fit to those batches: a little optimism is allowed.
    assert np.all(last < 1.15), dict(zip(NAMES, last, strict=True))
    # MINE's moving-average state advanced every step.
    assert int(state.bound_states[NAMES.index("mine")].count) == 300


def test_scan_in_chunks_equals_one_scan():
    """fold_in(rng, step) keys: two chunks of 5 steps give the same numbers as 10 steps."""
    ensemble, sample, state = _setup(["smile", "flo"])
    run10 = jax.jit(training.make_scan_trainer(ensemble, sample, 10))
    run5 = jax.jit(training.make_scan_trainer(ensemble, sample, 5))
    s10, m10 = run10(state, jax.random.key(3), jnp.array(0))
    s5, m5a = run5(state, jax.random.key(3), jnp.array(0))
    s5, m5b = run5(s5, jax.random.key(3), jnp.array(5))
    np.testing.assert_allclose(
        np.concatenate([m5a["mi"], m5b["mi"]]), m10["mi"], rtol=1e-5, atol=1e-5
    )


def test_each_scan_step_samples_at_its_own_step():
    # The staircase's chunks need not divide its levels (`:quick`: 500-step chunks, 200-step
    # levels): a step must draw its batch at its own step, not its chunk's first. Fixed
    # critics (SGD at 0), so each step's value is the critic's on that step's batch.
    task = tasks.get_task("gaussian", dim=2)

    def sample(key, step):
        return task.sample(key, tasks.staircase_mi(step, levels=(0.5, 4.0), steps_per_level=2), 32)

    ensemble = training.make_ensemble(["infonce"], "separable", {"hidden": (16,), "embed_dim": 8})
    state = training.create_train_state(
        ensemble, optax.sgd(0.0), jax.random.key(4), *sample(jax.random.key(0), 0)
    )
    rng = jax.random.key(5)
    run = jax.jit(training.make_scan_trainer(ensemble, sample, 3))
    for start in (0, 1):
        _, metrics = run(state, rng, jnp.int32(start))
        want = []
        for step in range(start, start + 3):  # the documented keys: fold_in(rng, step), first
            data_key = jax.random.split(jax.random.fold_in(rng, step))[0]
            values, _ = ensemble.apply(state.params, state.bound_states, *sample(data_key, step))
            want.append(values[0])
        np.testing.assert_allclose(metrics["mi"][:, 0], want, rtol=1e-5, atol=1e-6)


def test_the_log_baseline_network_reads_y():
    """TUBA's and I_alpha's baseline is a(y) (Poole et al. 2019): the ensemble's values equal
    the bounds given `BaselineMLP` on y."""
    x, y = tasks.correlated_gaussian(jax.random.key(2), 1.0, 16, 3)
    ensemble = training.make_ensemble(
        ["tuba", "interpolated"], "separable", {"hidden": (16,), "embed_dim": 8}, aux_hidden=(16,)
    )
    params, states = jax.jit(ensemble.init)(jax.random.key(3), x, y)
    values, _ = jax.jit(ensemble.apply)(params, states, x, y)
    baseline = critics.BaselineMLP(hidden=(16,))

    @jax.jit
    def by_hand(params):
        scores = ensemble.scores(params, x, y)
        return [
            bound(scores[i], log_baseline=baseline.apply(params["aux"][str(i)]["log_baseline"], y))
            for i, bound in enumerate([mi_jax.bounds.tuba, mi_jax.bounds.interpolated])
        ]

    for i, want in enumerate(by_hand(params)):
        np.testing.assert_allclose(values[i], want, rtol=1e-6)


def test_scan_keeps_only_the_named_metrics():
    """``metrics=("mi",)`` returns the same values and state, and only them."""
    ensemble, sample, state = _setup(["nwj", "smile"])
    full = jax.jit(training.make_scan_trainer(ensemble, sample, 4))
    only_mi = jax.jit(training.make_scan_trainer(ensemble, sample, 4, metrics=("mi",)))
    s_full, m_full = full(state, jax.random.key(5), jnp.array(0))
    s_mi, m_mi = only_mi(state, jax.random.key(5), jnp.array(0))
    assert set(m_full) == set(training.STEP_METRICS) and set(m_mi) == {"mi"}
    np.testing.assert_allclose(m_mi["mi"], m_full["mi"], rtol=1e-6, atol=1e-6)
    chex.assert_trees_all_close(s_mi.params, s_full.params, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="grad_nrom"):
        training.make_scan_trainer(ensemble, sample, 4, metrics=("mi", "grad_nrom"))
    with pytest.raises(ValueError, match="lost"):
        training.make_train_step(ensemble, metrics=("lost",))
    # The step itself computes only what it is asked for (nothing for XLA to prune).
    batch = sample(jax.random.key(6), 0)
    jaxpr = jax.make_jaxpr(training.make_train_step(ensemble, ("mi",)))(state, batch, None)
    full_jaxpr = jax.make_jaxpr(training.make_train_step(ensemble))(state, batch, None)
    assert len(jaxpr.eqns) < len(full_jaxpr.eqns)
    assert len(jaxpr.out_avals) == len(full_jaxpr.out_avals) - 3


def test_vmap_over_seeds_equals_loop():
    ensemble, sample, state = _setup(["js"])
    run = training.make_scan_trainer(ensemble, sample, 5)
    keys = jax.random.split(jax.random.key(4), 3)
    states = jax.tree.map(lambda a: jnp.stack([a] * 3), state)
    _, batched = jax.jit(jax.vmap(run, in_axes=(0, 0, None)))(states, keys, jnp.array(0))
    for s in range(3):
        _, single = jax.jit(run)(state, keys[s], jnp.array(0))
        np.testing.assert_allclose(batched["mi"][s], single["mi"], rtol=1e-5, atol=1e-5)


def test_nonfinite_error_names_bound_and_step():
    values = np.zeros((2, 10, 3))
    values[1, 7, 2] = np.nan
    with pytest.raises(training.NonFiniteError, match=r"'c'.*step 108.*seed index 1"):
        training.raise_if_nonfinite(values, ["a", "b", "c"], 100, seed_axis=True)
    training.raise_if_nonfinite(np.zeros((4, 3)), ["a", "b", "c"], 0, seed_axis=False)
    # With several seeds the earliest step is reported, whichever seed it is in.
    values[0, 9, 0] = np.inf
    values[1, 7, 2] = 0.0
    values[1, 8, 1] = np.nan
    with pytest.raises(training.NonFiniteError, match=r"'b' became nan at step 109 .seed index 1"):
        training.raise_if_nonfinite(values, ["a", "b", "c"], 100, seed_axis=True)


def test_first_nonfinite_is_the_earliest_step_on_any_other_axis():
    values = np.zeros((5, 2, 3))  # [steps, seeds, settings]
    assert training.first_nonfinite(values) is None
    values[3, 0, 0] = np.inf
    values[2, 1, 2] = np.nan
    assert training.first_nonfinite(values) == (2, 1, 2)
    # The step axis elsewhere: [seeds, steps, settings].
    assert training.first_nonfinite(np.moveaxis(values, 0, 1), step_axis=1) == (1, 2, 2)


def test_a_nan_in_a_sweep_chunk_names_setting_seed_and_step():
    from experiments import _common

    def run(state, images, labels, indices, step, settings):  # [n, K, S] losses, one NaN
        loss = np.zeros((indices.shape[0], indices.shape[1], len(settings)))
        loss[2, 1, 0] = np.nan
        return state, {"loss": loss}

    with pytest.raises(training.NonFiniteError, match=r"vib 1e-3 \(seed 7\) became nan at step 13"):
        _common.run_sweep_chunk(
            run, None, np.zeros((20, 3)), None, [0.001, 0.01], seed=[6, 7], batch_size=4,
            step=10, num_steps=4, setting_names=["vib 1e-3", "vib 1e-2"],
        )  # fmt: skip


@pytest.mark.parametrize("clip", [None, 0.0, float("inf")])
def test_a_clip_that_means_off_leaves_the_critic_as_it_is(clip):
    # Before: inf (documented as off) wrapped the critic in `ClippedCritic`: the same scores
    # under another parameter tree, so a checkpoint of one did not load as the other.
    ensemble = training.make_ensemble(["nwj"], "bilinear", clip=clip)
    assert ensemble.critic == critics.get_critic("bilinear")
    x = jnp.ones((4, 3))
    params, _ = ensemble.init(jax.random.key(0), x, x)
    assert jax.tree.structure(params["critic"]) == jax.tree.structure({"params": {"W": 0}})
    clipped = training.make_ensemble(["nwj"], "bilinear", clip=2.0)
    assert isinstance(clipped.critic, critics.ClippedCritic) and clipped.critic.clip == 2.0


def test_make_ensemble_errors():
    with pytest.raises(KeyError, match="infonce"):
        training.make_ensemble(["infonc"], "separable")
    with pytest.raises(KeyError, match="separable"):
        training.make_ensemble(["nwj"], "seperable")
    with pytest.raises(ValueError, match="empty"):
        training.make_ensemble([], "separable")
    with pytest.raises(TypeError, match="clip"):
        training.make_ensemble([("nwj", {"clip": 1.0})], "separable")
    # estimate_mi trains the critic: a parameter-free one is refused, naming it (before:
    # optax's "Need at least one array to concatenate").
    samples = np.random.default_rng(0).normal(size=(2, 200, 2))
    with pytest.raises(ValueError, match="`critic` 'inner_product' has no parameters"):
        mi_jax.estimate_mi(*samples, critic="inner_product")


def test_a_parameter_free_critic_trains_beside_other_bounds_networks():
    # inner_product next to TUBA's baseline: the fixed scores are shared by every bound and the
    # baseline trains (before: a vmap over the critic's empty parameters failed).
    ensemble, sample, state = _setup(
        ["infonce", "tuba"], "inner_product", {"temperature": 1.0}, dim=3
    )
    baseline = jax.tree.leaves(state.params["aux"])
    run = jax.jit(training.make_scan_trainer(ensemble, sample, 5))
    new, metrics = run(state, jax.random.key(2), 0)
    np.testing.assert_allclose(metrics["grad_norm"], 0.0)
    assert np.all(np.isfinite(metrics["mi"]))
    assert not np.allclose(jax.tree.leaves(new.params["aux"])[-1], baseline[-1])
    x, y = sample(jax.random.key(3), 0)
    scores = ensemble.scores(new.params, x, y)
    np.testing.assert_allclose(scores[0], x @ y.T, rtol=1e-6)
    np.testing.assert_allclose(scores[1], scores[0])


@pytest.mark.parametrize("sequential", [False, True])
def test_sweep_chunk_with_seeds_runs_each_seed_as_its_own_sweep(sequential):
    # A seed axis of 2 over a sweep of 2 settings (weights on a noisy penalty): seed k equals
    # the seedless program run with seed k's key and batches; metrics [n, K, S].
    def loss_fn(params, bound_states, x, y, key, weight):
        pred = x.reshape(x.shape[0], -1) @ params["w"]
        noise = jax.random.normal(key, params["w"].shape)
        loss = jnp.mean((pred[:, 0] - y) ** 2) + weight * jnp.sum((params["w"] - noise) ** 2)
        return loss, ({"loss": loss}, bound_states)

    images = jax.random.randint(jax.random.key(0), (20, 2, 2, 1), 0, 256).astype(jnp.uint8)
    labels = jnp.arange(20, dtype=jnp.float32) / 20
    tx = optax.adam(1e-2)
    weights = jnp.asarray([0.0, 0.5])
    keys = jax.random.split(jax.random.key(1), 2)
    indices = jax.random.randint(jax.random.key(2), (3, 2, 5), 0, 20)  # [n, K, B]

    def fresh(seed):
        params = {"w": jax.random.normal(jax.random.key(10 + seed), (4, 1))}
        return training.create_sweep_state(params, None, tx, 2)

    both = jax.tree.map(lambda *a: jnp.stack(a), fresh(0), fresh(1))
    run = training.make_sweep_chunk(loss_fn, keys, num_seeds=2, sequential=sequential)
    state, metrics = run(both, images, labels, indices, 4, weights)
    assert metrics["loss"].shape == (3, 2, 2)
    for k in range(2):
        single = training.make_sweep_chunk(loss_fn, keys[k], sequential=sequential)
        s, m = single(fresh(k), images, labels, indices[:, k], 4, weights)
        np.testing.assert_allclose(metrics["loss"][:, k], m["loss"], rtol=1e-6)
        np.testing.assert_allclose(state.params["w"][k], s.params["w"], rtol=1e-6)
    assert not np.allclose(metrics["loss"][:, 0], metrics["loss"][:, 1])
    # Images already in [0, 1] would be divided by 255 a second time: refused.
    with pytest.raises(TypeError, match="`images` must be uint8"):
        run(both, images.astype(jnp.float32) / 255, labels, indices, 4, weights)
    # The debiased weight average keeps the [K, S] leading axes.
    averaged = training.averaged_params(state.replace(ema_params=state.params), 0.9)
    assert averaged["w"].shape == (2, 2, 4, 1) and state.step.shape == (2, 2)
    np.testing.assert_allclose(averaged["w"], state.params["w"] / (1 - 0.9**3), rtol=1e-6)
    # Before the first step (t = 0) the average is the parameters themselves (was 0 / 0: NaN).
    fresh_both = jax.tree.map(lambda *a: jnp.stack(a), fresh(0), fresh(1))  # `both` was donated
    untrained = training.averaged_params(fresh_both, 0.9)
    np.testing.assert_array_equal(untrained["w"], fresh_both.params["w"])


def test_each_sweep_step_draws_with_the_train_key_folded_with_the_step():
    # Catches one key for every step (the comparison of seeds above shares it on both sides).
    def loss_fn(params, bound_states, x, y, key, setting):
        return jnp.sum(params["w"] ** 2), ({"draw": jax.random.uniform(key)}, bound_states)

    state = training.create_sweep_state({"w": jnp.ones(2)}, None, optax.sgd(0.1), 2)
    key = jax.random.key(5)
    images, labels = jnp.zeros((4, 2, 2, 1), jnp.uint8), jnp.zeros(4)
    run = training.make_sweep_chunk(loss_fn, key)
    _, metrics = run(state, images, labels, jnp.zeros((3, 2), jnp.int32), 7, jnp.zeros(2))
    want = [jax.random.uniform(jax.random.fold_in(key, 7 + i)) for i in range(3)]
    np.testing.assert_array_equal(metrics["draw"], np.repeat(np.asarray(want)[:, None], 2, 1))


def test_a_bounds_extra_network_starts_the_same_whatever_precedes_it():
    # TUBA's baseline alone and after NWJ (which has none): the same initial parameters.
    x, y = jnp.ones((4, 3)), jnp.ones((4, 2))
    hparams = {"hidden": (8,), "embed_dim": 4}
    alone = training.make_ensemble(["tuba"], "separable", hparams, (8,))
    after = training.make_ensemble(["nwj", "tuba"], "separable", hparams, (8,))
    first, _ = alone.init(jax.random.key(0), x, y)
    second, _ = after.init(jax.random.key(0), x, y)
    chex.assert_trees_all_equal(first["aux"]["0"], second["aux"]["1"])


@pytest.mark.parametrize("decay", [0.999, 0.9999, 0.99999])
def test_averaged_params_of_unchanging_parameters_are_the_parameters(decay):
    # The average's weights sum to the `1 - d^t` it is divided by. Before: `d` applied in
    # float32 and `1 - d` rounded from the Python float, so the average of unchanging
    # parameters read (1 - d) / (1 - float32(d)) of them: 0.99984 at 0.9999, 0.99855 at 0.99999.
    def loss_fn(params, bound_states, x, y, key, setting):
        loss = jnp.sum(params["w"]) * setting
        return loss, ({"loss": loss}, bound_states)

    images, labels = np.zeros((8, 2, 2, 1), np.uint8), np.zeros((8,), np.int32)
    state = training.create_sweep_state({"w": jnp.ones((3,))}, (), optax.sgd(0.1), 1)
    run = training.make_sweep_chunk(loss_fn, jax.random.key(0), ema_decay=decay)
    state, _ = run(state, images, labels, jnp.zeros((20, 4), jnp.int32), 0, jnp.zeros((1,)))
    np.testing.assert_allclose(training.averaged_params(state, decay)["w"], 1.0, rtol=2e-6)
    # bfloat16 parameters keep their dtype in the average (a float32 decay made the scan's
    # carry change type: a TypeError).
    half = training.create_sweep_state({"w": jnp.ones((3,), jnp.bfloat16)}, (), optax.sgd(0.1), 1)
    half, _ = run(half, images, labels, jnp.zeros((3, 4), jnp.int32), 0, jnp.zeros((1,)))
    assert half.ema_params["w"].dtype == jnp.bfloat16


def test_averaged_params_compiles_once_for_states_with_new_optimizers():
    # Before: jitted on the whole state, whose optimizer (a static field) each IB run made anew:
    # a program compiled, and kept, per run and method.
    params = {"w": jnp.ones((3, 4, 2))}
    states = [
        training.create_sweep_state(params, (), optax.adam(1e-3), num_settings=3) for _ in range(3)
    ]
    before = training._debiased_average._cache_size()  # noqa: SLF001
    for state in states:
        averaged = training.averaged_params(state.replace(step=state.step + 2), 0.5)
        np.testing.assert_allclose(averaged["w"], 0.0)  # an average of zeros, debiased
    assert training._debiased_average._cache_size() - before <= 1  # noqa: SLF001


def test_evaluate_gives_each_bounds_value_and_training_objective():
    from mi_jax import bounds

    ensemble, sample, state = _setup(NAMES)
    x, y = sample(jax.random.key(3), 0)
    values, objectives = jax.jit(ensemble.evaluate)(state.params, state.bound_states, x, y)
    applied, _ = jax.jit(ensemble.apply)(state.params, state.bound_states, x, y)
    np.testing.assert_allclose(values, applied, rtol=1e-6)
    scores = jax.jit(ensemble.scores)(state.params, x, y)
    for i, name in enumerate(NAMES):
        # JS and SMILE train on the f-GAN JS objective; the others on their own value.
        want = bounds.js_fgan(scores[i]) if name in ("js", "smile") else applied[i]
        np.testing.assert_allclose(objectives[i], want, rtol=1e-5, err_msg=name)


def test_readouts_are_the_values_with_each_ones_own_gradient():
    from mi_jax import bounds

    ensemble, sample, state = _setup(NAMES)
    apply = jax.jit(ensemble.apply)  # (each call in eager mode: 3x the test's time)
    states = state.bound_states
    for k in range(3):  # MINE's moving average, away from the batch's own mean
        states = apply(state.params, states, *sample(jax.random.key(10 + k), k))[1]
    x, y = sample(jax.random.key(3), 0)
    readouts = jax.jit(ensemble.readouts)(state.params, states, x, y)
    applied, _ = apply(state.params, states, x, y)
    np.testing.assert_allclose(readouts, applied, rtol=1e-5)
    # Gradients with respect to the samples: JS's and SMILE's are their estimates' (NWJ of
    # f + 1, the clipped bound), not the JS objective's, MINE's its DV value's, not the
    # moving-average-corrected one; every other bound's as `apply`'s.
    by_x = jax.jit(jax.jacrev(ensemble.readouts, argnums=2))(state.params, states, x, y)
    applied_by_x = jax.jit(jax.jacrev(lambda x: ensemble.apply(state.params, states, x, y)[0]))(x)
    readout_fns = {
        "js": lambda s: bounds.nwj(s + 1.0),
        "smile": bounds.get_bound("smile").readout,
        "mine": bounds.dv,
    }
    for i, name in enumerate(NAMES):
        if name in readout_fns:
            crit = jax.tree.map(lambda p, i=i: p[i], state.params["critic"])

            def estimate(x, crit=crit, readout=readout_fns[name]):
                return readout(ensemble.critic.apply(crit, x, y))

            own = jax.jit(jax.grad(estimate))(x)
            np.testing.assert_allclose(by_x[i], own, rtol=1e-4, atol=1e-6, err_msg=name)
            assert not np.allclose(by_x[i], applied_by_x[i], atol=1e-4), name
        else:
            # (two compiled programs: rounding of 1e-7 where the largest entries are ~3)
            np.testing.assert_allclose(by_x[i], applied_by_x[i], rtol=1e-5, atol=1e-6)


def test_mean_over_seeds_averages_every_float_field():
    from experiments import _common

    rows = [
        dict(method="a", seed=0, acc=0.5, err=np.float32(0.25), step=10, iters=90, ok=True),
        dict(method="a", seed=1, acc=0.7, err=np.float32(0.75), step=10, iters=110, ok=False),
        dict(method="b", seed=0, acc=0.1, err=np.float32(0.5), step=20, iters=50, ok=True),
    ]
    a, b = _common.mean_over_seeds(rows, ("method",))
    assert (a["acc"], a["acc_std"], a["err"], a["err_std"]) == pytest.approx((0.6, 0.1, 0.5, 0.25))
    assert (a["step"], a["num_seeds"], "seed" in a, a["ok"]) == (10, 2, False, False)
    # Integers that differ between the seeds are averaged too (before: seed 0's 90).
    assert (a["iters"], a["iters_std"], "step_std" in a) == (100.0, 10.0, False)
    # ... in every group, so all rows have the same fields (b's one seed: a spread of 0).
    assert (b["err"], b["err_std"], b["num_seeds"], b["iters"], b["iters_std"]) == (
        0.5, 0.0, 1, 50.0, 0.0
    )  # fmt: skip
    assert set(a) == set(b)


def test_a_group_whose_every_row_was_read_back_as_null_has_the_fields_of_a_fresh_one():
    from experiments import _common

    fresh = [dict(method="det", seed=s, kl=float("nan")) for s in (0, 1)]
    fresh.append(dict(method="vib", seed=0, kl=1.0))
    back = [dict(r, kl=None) if r["method"] == "det" else r for r in fresh]  # from results.json
    det_fresh, vib_fresh = _common.mean_over_seeds(fresh, ("method",))
    det_back, vib_back = _common.mean_over_seeds(back, ("method",))
    # Before: the group read back lacked `kl_std`, its `kl` null (a CSV cell left blank).
    assert set(det_back) == set(det_fresh) == set(vib_back)
    assert np.isnan(det_back["kl"]) and np.isnan(det_back["kl_std"])


def test_rows_read_back_from_json_with_nulls_merge_and_write_like_fresh_ones(tmp_path):
    # A resumed multi-seed IB run: the deterministic baseline's KL (NaN) read back from JSON as
    # null in seed 0's row got no `kl_std`, and results.csv, written with the first row's fields,
    # failed on the rows after it ("dict contains fields not in fieldnames: 'kl_std'").
    from experiments import _common

    rows = [
        dict(method="det", seed=0, kl=None, err=0.5),  # from results.json
        dict(method="det", seed=1, kl=float("nan"), err=0.7),
        dict(method="vib", seed=0, kl=2.0, err=0.4),
        dict(method="vib", seed=1, kl=4.0, err=0.2),
    ]
    det, vib = _common.mean_over_seeds(rows, ("method",))
    assert set(det) == set(vib) and np.isnan(det["kl"]) and np.isnan(det["kl_std"])
    assert (vib["kl"], vib["kl_std"]) == (3.0, 1.0)
    path = str(tmp_path / "results.csv")
    _common.write_csv(path, [dict(a=1), dict(a=2, b=3.0)])  # rows with different fields
    assert (tmp_path / "results.csv").read_text().splitlines() == ["a,b", "1,", "2,3.0"]
    assert not list(tmp_path.glob("*.tmp"))


# XLA:CPU's defaults, as per-program options: they override the suite's fast-compile flags
# (tests/conftest.py), which would otherwise compile the reference like the options under test.
_DEFAULT_CPU_OPTIONS = {
    "xla_backend_optimization_level": 3,
    "xla_llvm_disable_expensive_passes": False,
}
if jax.default_backend() == "cpu" and training.compile_option_known(
    "xla_cpu_use_fusion_emitters", True
):  # (jaxlib before 0.11.1)
    _DEFAULT_CPU_OPTIONS["xla_cpu_use_fusion_emitters"] = True


def test_an_unknown_compile_option_is_found_not_raised():
    # jaxlib 0.11.1 removed `xla_cpu_use_fusion_emitters`: every program compiled with it
    # failed ("No such compile option"), estimate_mi's and the experiments' included.
    assert not training.compile_option_known("xla_no_such_option_here", True)
    assert training.compile_option_known("xla_backend_optimization_level", 1)
    assert all(
        training.compile_option_known(k, v) for k, v in training.fast_compile_options().items()
    )


def test_fast_division_options_keep_nan_inf_and_adam():
    """The training loops' fast-math option keeps NaN and inf: they still propagate and are
    still seen by `isnan` / `isfinite` (what the divergence checks read), and Adam's steps
    match the default compilation to float32 rounding."""
    options = training.fast_division_compiler_options()
    on_cpu = jax.default_backend() == "cpu"
    assert bool(options) == on_cpu  # other backends: their defaults (measured on CPU only)

    def checks(x, c):
        q = x / c
        return q, jnp.isnan(q), jnp.isfinite(q), jnp.where(jnp.isfinite(q), q, -1.0)

    x = jnp.array([jnp.nan, jnp.inf, 1.0, 0.0, -3.0, 1e38, 7.0])
    c = jnp.array([1.0, 2.0, 0.0, 0.0, 0.0, 1e-3, 3.0])
    expected = jax.jit(checks)(x, c)
    got = jax.jit(checks).lower(x, c).compile(options)(x, c)
    for e, g in zip(expected, got, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=1e-6)  # NaN == NaN here

    tx = optax.adam(5e-4)

    def adam_steps(p):
        def body(carry, i):
            p, state = carry
            updates, state = tx.update(jnp.sin(3.0 * p + i), state, p)
            return (optax.apply_updates(p, updates), state), None

        return jax.lax.scan(body, (p, tx.init(p)), jnp.arange(50))[0][0]

    p = jax.random.normal(jax.random.key(0), (64, 64))
    expected = jax.jit(adam_steps)(p)
    got = jax.jit(adam_steps).lower(p).compile(options)(p)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "options", [training.fast_compile_options, training.run_once_compiler_options]
)
def test_compiler_options_compile_the_same_function(options):
    # A train step's ingredients: a matmul, transcendental and reduction kernels, an update.
    def step(w, x):
        scores = x @ w @ x.T
        loss = jax.nn.logsumexp(scores, axis=1).mean() - jnp.diag(scores).mean()
        return w - 0.1 * jax.grad(lambda w: jnp.tanh(w).sum() * loss)(w), loss

    w, x = (
        jax.random.normal(jax.random.key(0), (8, 8)),
        jax.random.normal(jax.random.key(1), (16, 8)),
    )
    on_cpu = jax.default_backend() == "cpu"
    assert bool(options()) == on_cpu  # other backends: their defaults (measured on CPU only)
    if on_cpu and options is training.run_once_compiler_options:  # -O0 over the fast -O1
        assert options()["xla_backend_optimization_level"] == 0
    expected = jax.jit(step, compiler_options=_DEFAULT_CPU_OPTIONS if on_cpu else None)(w, x)
    got = jax.jit(step, compiler_options=options())(w, x)
    chex.assert_trees_all_close(got, expected, rtol=1e-5, atol=1e-6)
