"""`mi_jax.estimate_mi` and its command line."""

import dataclasses
import json
import os
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

import mi_jax
from experiments import estimate as estimate_cli
from mi_jax import bounds, critics, tasks, training
from mi_jax import estimate as estimate_lib


@pytest.fixture(scope="module")
def gaussian_2d():
    x, y = tasks.get_task("gaussian", dim=2).sample(jax.random.key(0), 1.0, 4000)
    return np.asarray(x), np.asarray(y)


def test_recovers_gaussian_mi_within_10_percent(gaussian_2d):
    x, y = gaussian_2d
    result = mi_jax.estimate_mi(x, y, seeds=2)
    assert result.mi.shape == (2,)
    np.testing.assert_allclose(result.mi, 1.0, rtol=0.10)
    assert result.test_curve.shape == result.objective_curve.shape == (2, len(result.steps))
    # Early stopping watches the held-out JS objective (SMILE's training objective); the
    # estimate is the held-out SMILE value where that objective peaked.
    best = np.nanargmax(result.objective_curve, axis=1)
    np.testing.assert_array_equal(result.best_step, result.steps[best])
    np.testing.assert_allclose(result.mi, result.test_curve[[0, 1], best], rtol=1e-6)
    # The JS objective is at most 2 JS - log 4 <= 0; the trained critics beat the constant
    # one (every score 0: -2 log 2).
    assert -2 * np.log(2) < np.nanmax(result.objective_curve) < 0


def test_independent_samples_give_near_zero(gaussian_2d):
    x, _ = gaussian_2d
    y = np.random.default_rng(1).normal(size=(4000, 3))
    result = mi_jax.estimate_mi(x, y, max_steps=400)
    assert abs(result.mi) < 0.05


@pytest.fixture(scope="module")
def independent_20d():
    rng = np.random.default_rng(5)
    return rng.normal(size=(3000, 20)), rng.normal(size=(3000, 20))


def test_independent_high_dimensional_samples_do_not_read_below_zero(independent_20d):
    # A critic that can only learn noise from 2400 pairs in 20 + 20 dimensions: the held-out
    # SMILE of the raw critic is negative at every evaluation (-0.25 nats at N = 5000), an
    # impossible MI. The calibrated critic shrinks towards the constant critic (a -> 0) ...
    x, y = independent_20d
    result = mi_jax.estimate_mi(x, y, max_steps=800)
    assert 0.0 <= result.mi < 0.02
    # ... so far that it beats the constant critic: the estimate is a trained critic's.
    assert result.best_step > 0 and abs(result.calibration[0]) < 0.3
    # ... and without calibration no trained critic beats the constant one on the held-out JS
    # objective, so the estimate is that critic's: 0 nats, at step 0, map (0, 0).
    raw = mi_jax.estimate_mi(x, y, max_steps=800, calibrate=False)
    assert np.nanmax(raw.test_curve) < 0
    assert np.nanmax(raw.objective_curve) < -2 * np.log(2)
    assert (raw.mi, raw.best_step) == (0.0, 0)
    np.testing.assert_array_equal(raw.calibration, [0.0, 0.0])


def test_a_critic_overfitting_few_pairs_in_many_dimensions_is_calibrated_not_dropped():
    # 500 pairs of a 20-d Gaussian with 2 nats: after its first 100 steps the critic is shifted
    # and overconfident (held-out JS objective -4.5, the constant critic's -1.39). The
    # calibration from the identity alone stayed at the identity at every evaluation, so the
    # estimate was the constant critic's 0 nats on 8 seeds of 8; calibrated it reads about 1.
    x, y = tasks.get_task("gaussian", dim=20).sample(jax.random.key(3), 2.0, 500)
    result = mi_jax.estimate_mi(np.asarray(x), np.asarray(y), seeds=2)
    assert np.all(result.best_step > 0)
    assert np.all((result.mi > 0.5) & (result.mi < 2.0))
    assert np.all(result.calibration[:, 0] < 0.5)


def test_calibration_raises_the_held_out_js_objective_of_the_same_critics(gaussian_2d):
    # (That the map found is the JS-optimal one: tests/test_bounds.py, js_calibration.)
    x, y = gaussian_2d
    result = mi_jax.estimate_mi(x, y, seeds=2, max_steps=500)
    assert result.calibration.shape == (2, 2)
    raw = mi_jax.estimate_mi(x, y, seeds=2, max_steps=500, calibrate=False)
    np.testing.assert_array_equal(raw.calibration, np.tile([1.0, 0.0], (2, 1)))
    # Calibrating can only raise the held-out JS objective at each evaluation (same critics:
    # calibration changes what is read, not how the critic trains) ...
    rounds = min(np.isfinite(result.objective_curve).sum(1).min(), 3)
    gain = result.objective_curve[:, :rounds] - raw.objective_curve[:, :rounds]
    assert np.all(gain >= -1e-6)
    np.testing.assert_allclose(result.train_curve[:, :rounds], raw.train_curve[:, :rounds])
    # ... and it does raise it: a critic trained 100-300 steps on 3200 pairs is not exactly
    # calibrated on held-out ones (measured: gains of 2e-5 to 1.6e-3 nats, maps 1-7 % from
    # the identity), so the map chosen is not the identity.
    assert np.all(gain.max(axis=1) > 1e-4), gain
    assert np.all(np.abs(result.calibration - [1.0, 0.0]).max(axis=1) > 1e-3), result.calibration


def test_rank_standardization_is_invariant_to_monotone_maps_of_each_column(gaussian_2d):
    x, y = gaussian_2d
    x, y = x[:1500].astype(np.float64), y[:1500].astype(np.float64)  # no ties from rounding
    kwargs = dict(standardize="rank", max_steps=300)
    plain = mi_jax.estimate_mi(x, y, **kwargs)
    # A strictly increasing map per column (the cubic task's, and an exponential) keeps every
    # rank, so the Gaussianized samples, and with them the estimate, are the same.
    warped = mi_jax.estimate_mi(x**3, np.exp(y), **kwargs)
    assert warped.mi == plain.mi
    np.testing.assert_array_equal(warped.test_curve, plain.test_curve)
    # The marginals it trains on are standard normal (up to the empirical CDF's steps).
    g = estimate_lib._gaussianize(x**3, np.arange(len(x)), "x")
    np.testing.assert_allclose(g.mean(0), 0.0, atol=1e-3)
    np.testing.assert_allclose(g.std(0), 1.0, atol=0.02)
    # "auto" ranks x^3 and exp(y) (their variance sits in their tails), and so reads the same.
    auto = mi_jax.estimate_mi(x**3, np.exp(y), max_steps=300)
    assert auto.rank_columns == {"x": [0, 1], "y": [0, 1]} and auto.mi == plain.mi


def test_auto_standardization_ranks_exactly_the_heavy_tailed_columns():
    rng = np.random.default_rng(0)
    g = rng.normal(size=(4000, 6))
    columns = np.stack(
        [
            g[:, 0],  # Gaussian: z-scored
            g[:, 1] ** 3,  # the cubic task's marginal: ranked
            np.tan(np.pi * (rng.uniform(size=4000) - 0.5)),  # Cauchy: ranked
            rng.standard_t(5, size=4000),  # Student-t, 5 degrees of freedom: z-scored
            (rng.uniform(size=4000) < 0.1).astype(float),  # a point mass at 0: ranked
            rng.integers(0, 20, size=4000).astype(float),  # class labels 0-19: z-scored
        ],
        axis=1,
    )
    train = np.arange(3200)
    out, ranked = estimate_lib._standardized(columns, train, "auto", "x")
    assert ranked == [1, 2, 4]
    z = estimate_lib._zscores(columns, train, "x")
    z = np.clip(z, z[train].min(axis=0), z[train].max(axis=0))  # held-out rows beyond the range
    np.testing.assert_array_equal(out[:, [0, 3, 5]], z[:, [0, 3, 5]])
    np.testing.assert_array_equal(
        out[:, ranked], estimate_lib._gaussianize(columns[:, ranked], train, "x")
    )
    assert estimate_lib._standardized(columns, train, True, "x")[1] == []
    assert estimate_lib._standardized(columns, train, "rank", "x")[1] == list(range(6))


def test_standardization_works_in_place_and_in_column_blocks():
    """Wide inputs (activations of 6272 units): whole-array expressions peaked at 6 times the
    input (10,000 x 6272 float32: 1.4 GB above it, 6 s); the statistics now go a block of
    columns at a time, to the same z-scores, over block boundaries too."""
    import tracemalloc

    rng = np.random.default_rng(0)
    a = np.maximum(rng.standard_normal((1000, 2100), dtype=np.float32), 0)  # 5 blocks
    a[:, 700] = 5.0  # constant: zeroed (warned)
    train = rng.permutation(1000)[:800]
    for standardize in ("auto", True):
        tracemalloc.start()
        with pytest.warns(UserWarning, match="constant"):
            z, _ = estimate_lib._standardized(a, train, standardize, "x")
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 3.2 * a.nbytes, peak / a.nbytes  # the float64 copy is 2
    # A reference: the z-scores of the whole training split at once, clipped to its range.
    t = a[train].astype(np.float64)
    std = np.where(t.std(0) > 0, t.std(0), 1.0)
    ref = (a - t.mean(0)) / std
    ref = np.clip(ref, ref[train].min(0), ref[train].max(0))
    ref[:, 700] = 0.0
    np.testing.assert_allclose(z, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("standardize", ["auto", True])
def test_a_float64_constant_is_constant_whatever_its_rounding(standardize):
    # Before: the std of a column of 0.1 in float64, summed row by row, is rounding noise of
    # ~100 spacings of the mean at N = 2000: taken for data, the column read +-1 (True) or was
    # ranked as heavy-tailed and failed as "constant in every sample" (auto), at N >= 1000.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2000, 3))
    x[:, 1] = 0.1
    train = np.arange(1600)
    with pytest.warns(UserWarning, match=r"columns \[1\] .* constant on the training split"):
        z, ranked = estimate_lib._standardized(x, train, standardize, "x")
    assert np.all(z[:, 1] == 0.0) and 1 not in ranked
    assert np.all(np.abs(z[train][:, [0, 2]].std(0) - 1.0) < 1e-9)


def test_auto_standardization_reads_heavy_tailed_marginals_near_the_mi():
    # A 5-d Gaussian pair of 2 nats with every coordinate mapped to a Cauchy marginal
    # (monotone: the MI stays 2). Z-scored, a few extreme pairs dominated the held-out bound:
    # 94.2 and 6.0 nats on two draws (2026-12-05); ranked, 1.99 and 2.04.
    x, y = (
        np.asarray(a, np.float64)
        for a in tasks.correlated_gaussian(jax.random.key(0), 2.0, 5000, 5)
    )
    cauchy = lambda a: 1.0 / np.tan(np.pi * scipy.special.ndtr(-a))  # noqa: E731
    result = mi_jax.estimate_mi(cauchy(x), cauchy(y))
    assert result.rank_columns == {"x": [0, 1, 2, 3, 4], "y": [0, 1, 2, 3, 4]}
    assert abs(result.mi - 2.0) < 0.2, result.mi
    # Gaussian samples are z-scored as before.
    assert mi_jax.estimate_mi(x, y, max_steps=100).rank_columns == {"x": [], "y": []}


def test_an_outlier_in_the_held_out_split_is_clipped_to_the_training_range():
    # One pair at (1000, 1000) in a 1-d Gaussian pair of 1 nat, in the held-out split (the
    # training statistics, without it, z-score the column): 2477 and 1869 nats with seeds 1 and
    # 3 (2026-12-05), 0 nats in 2-d; clipped to the training range, within the seeds' reading.
    x, y = (
        np.array(a, np.float64) for a in tasks.correlated_gaussian(jax.random.key(0), 1.0, 2500, 1)
    )
    _, held_out = estimate_lib._split(len(x), 0.2, estimate_lib.DEFAULTS["max_test"], 1, 1)
    x[held_out[0]] = y[held_out[0]] = 1e3
    with pytest.warns(UserWarning, match="has 1 held-out value\\(s\\) far beyond") as caught:
        result = mi_jax.estimate_mi(x, y, seed=1)
    assert caught[0].filename == __file__  # the line that called estimate_mi
    assert result.rank_columns == {"x": [], "y": []}  # z-scored: the clip at work
    assert abs(result.mi - 1.0) < 0.15, result.mi
    z, _ = estimate_lib._standardized(x, np.setdiff1d(np.arange(len(x)), held_out), True, "x")
    assert z[held_out[0], 0] == z[np.setdiff1d(np.arange(len(x)), held_out), 0].max()


def test_repeated_rows_of_continuous_data_warn_and_categorical_pairs_do_not():
    # Independent 20-d samples, each row 5 times: 5.7 nats of 0, silently (the copies on both
    # sides of the split are recognized). Categorical pairs repeat by nature: no warning.
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(2, 200, 3))
    with pytest.warns(UserWarning, match=r"the 1000 rows \(x, y\) hold 200 distinct pairs"):
        mi_jax.estimate_mi(np.repeat(x, 5, 0), np.repeat(y, 5, 0), max_steps=100)
    labels = rng.integers(0, 4, 1000)
    ages = rng.integers(18, 91, 1000)  # an integer covariate against the label: no artefact
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mi_jax.estimate_mi(labels, (labels + (rng.random(1000) < 0.3)) % 4, max_steps=100)
        mi_jax.estimate_mi(ages, labels, max_steps=100)


def test_y_the_same_as_x_warns_that_the_mi_is_infinite(gaussian_2d):
    # Before: y = x (infinite MI) read 9.9-19.8 nats in 3-8 dimensions, silently.
    x, y = gaussian_2d
    x, y = x[:500], y[:500]
    for same, standardize in ((x, "auto"), (3.0 * x + 1.0, "auto"), (np.exp(x), "rank")):
        with pytest.warns(UserWarning, match=r"same samples .* log 100 = 4.61 nats"):
            mi_jax.estimate_mi(x, same, max_steps=20, eval_every=10, standardize=standardize)
    # Rounded samples where y is x: the repeats warning says they may be the data.
    rounded = np.round(x[:, :1], 1)
    with pytest.warns(UserWarning) as caught:
        mi_jax.estimate_mi(rounded, rounded, max_steps=20, eval_every=10)
    assert any("values rounded to a grid repeat by nature" in str(w.message) for w in caught)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mi_jax.estimate_mi(x, y, max_steps=20, eval_every=10)
        # Discrete samples: I(X; X) = H(X), finite (log 2 for a fair coin), a fair check.
        coin = np.random.default_rng(0).integers(0, 2, (500, 1)).astype(np.float32)
        mi_jax.estimate_mi(coin, coin, max_steps=20, eval_every=10)


def _entropy_estimates(labels):
    """Miller-Madow's and Chao-Shen's estimates of the entropy of a label sample, computed here
    from their formulas."""
    n = len(labels)
    _, counts = np.unique(labels, return_counts=True)
    p = counts / n
    miller_madow = -np.sum(p * np.log(p)) + (len(counts) - 1) / (2 * n)
    coverage = 1 - np.sum(counts == 1) / n
    q = coverage * p
    chao_shen = -np.sum(q * np.log(q) / (1 - (1 - q) ** n))
    return miller_madow, chao_shen, coverage


def test_an_estimate_above_a_discrete_sides_entropy_is_reported_as_that_bound():
    """A label of 100 classes that x determines: SMILE at tau = 3 read 6.2 nats of log 100 =
    4.61 (above H(Y), an impossible value; a review of discrete data, 2026-12-06). The
    estimate is now at most the label's entropy, with a warning; continuous data have none."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 100, 2000)
    onehot = np.eye(100, dtype=np.float32)[labels]
    centres = 6.0 * rng.normal(size=(100, 5))
    x = centres[labels] + rng.normal(size=(2000, 5))
    with pytest.warns(UserWarning, match=r"passed the entropy of the discrete `y` \(4.6"):
        result = mi_jax.estimate_mi(x, onehot)
    miller_madow, chao_shen, coverage = _entropy_estimates(labels)
    assert coverage == 1.0 and chao_shen < miller_madow  # (all seen: Chao-Shen reads lower)
    assert result.ceiling == pytest.approx(miller_madow, rel=1e-9) and result.mi == result.ceiling
    # The true I(X; Y) is within 0.03 nats of log 100 here (classes 6 sd apart in 5-d).
    assert abs(result.mi - np.log(100)) < 0.06
    # Below the entropy nothing changes, and continuous sides have no ceiling.
    coin = labels % 2
    noisy = coin + 0.8 * rng.normal(size=2000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        binary = mi_jax.estimate_mi(noisy, coin)
        free = mi_jax.estimate_mi(noisy, noisy + rng.normal(size=2000))
    assert 0 < binary.mi < binary.ceiling < np.log(2) + 1e-3
    assert free.ceiling is None


def test_a_thinly_sampled_discrete_side_warns_without_capping():
    """Zipf labels (exponent 1.5 over 1e5 classes; H = 3.17 nats): 5 % of the rows are classes
    seen once, and the entropy estimates read low (Miller-Madow 3.03 at N = 5000), so capping
    there put the estimate 0.13-0.18 nats below the MI (a review, 2026-12-06). Below the
    coverage `CEILING_COVERAGE` an estimate above the entropy estimate warns only."""
    rng = np.random.default_rng(1)
    weights = np.arange(1, 100_001, dtype=float) ** -1.5
    labels = rng.choice(len(weights), 3000, p=weights / weights.sum())
    miller_madow, chao_shen, coverage = _entropy_estimates(labels)
    assert 0.9 < coverage < estimate_lib.CEILING_COVERAGE
    codes = rng.normal(size=(100_000, 8)).astype(np.float32)[labels]
    x = codes + 0.01 * rng.normal(size=codes.shape)  # y nearly determined: I = H(Y) = 3.17
    with pytest.warns(UserWarning, match=r"covers its distribution too thinly .* coverage 0.9"):
        result = mi_jax.estimate_mi(x, codes)
    assert result.ceiling is None and result.mi > max(miller_madow, chao_shen)
    entropies = estimate_lib._discrete_entropies(*estimate_lib._row_hashes(x, codes))
    assert entropies == [pytest.approx((max(miller_madow, chao_shen), "y", coverage))]


def test_the_cap_is_the_smallest_entropy_of_a_well_covered_side():
    # A thinly covered x of smaller entropy (a 2-unit bottleneck in bfloat16: 43 rows,
    # coverage 0.98) hid the one-hot labels' cap before (a review, 2026-12-06).
    entropies = [(1.6, "x", 0.98), (2.3, "y", 1.0)]
    for mi, cap, match in (
        (3.0, 2.3, r"discrete `y` \(2.300 nats, estimated\).*reported as that bound"),
        (2.0, 2.0, r"discrete `x` \(1.600 nats, estimated\).*too thinly"),
    ):
        fitted = {"mi": mi}
        with pytest.warns(UserWarning, match=match):
            assert estimate_lib._apply_entropy_ceiling(fitted, entropies, {"clip": 3.0}) == 2.3
        assert fitted["mi"] == cap
    two = [(2.3, "y", 1.0), (2.0, "x", 0.995)]  # two covered sides: the smaller caps
    with pytest.warns(UserWarning, match=r"discrete `x` \(2.000 nats"):
        assert estimate_lib._apply_entropy_ceiling({"mi": 2.5}, two, {}) == 2.0
    fitted = {"mi": np.array([1.0, 2.5])}  # seeds: each capped alone
    with pytest.warns(UserWarning, match="reported as that bound"):
        estimate_lib._apply_entropy_ceiling(fitted, entropies, {})
    np.testing.assert_array_equal(fitted["mi"], [1.0, 2.3])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert estimate_lib._apply_entropy_ceiling({"mi": 1.0}, entropies, {}) == 2.3
        assert estimate_lib._apply_entropy_ceiling({"mi": 9.0}, [], {}) is None


def test_row_hashes_tell_one_hot_rows_apart():
    # The bits of 1.0 end in 52 zeros: multiplied by a weight without mixing, the rows of a
    # one-hot code of 1000 classes fell into ~4096 values and collided.
    hx, hy = estimate_lib._row_hashes(np.eye(1000), np.eye(1000, dtype=np.float32) * 0.5)
    assert len(np.unique(hx)) == len(np.unique(hy)) == 1000


def test_a_bound_registered_as_any_callable_object_runs(monkeypatch, gaussian_2d):
    # Before: a factory that is an instance of a dataclass with `__call__` (unhashable) failed
    # in the program cache's key: "unhashable type".
    import dataclasses

    from mi_jax import bounds

    @dataclasses.dataclass
    class Halved:
        scale: float = 0.5

        def __call__(self):
            return bounds.make_bound("halved", lambda s: self.scale * bounds.infonce(s))

    monkeypatch.setattr(bounds, "_REGISTRY", dict(bounds._REGISTRY))  # noqa: SLF001
    bounds.register_bound("halved", Halved())
    x, y = gaussian_2d
    kwargs = dict(bound="halved", max_steps=20, eval_every=10, critic_hparams={"hidden": (8,)})
    first = mi_jax.estimate_mi(x[:600], y[:600], **kwargs)
    misses = estimate_lib._compiled_fit.cache_info().misses
    assert mi_jax.estimate_mi(x[:600], y[:600], **kwargs).mi == first.mi
    assert estimate_lib._compiled_fit.cache_info().misses == misses


def test_stopped_early_says_whether_the_limit_cut_training_short(gaussian_2d):
    x, y = gaussian_2d
    # One round of 100 steps: the held-out objective improved at its only evaluation.
    short = mi_jax.estimate_mi(x, y, max_steps=100, eval_every=100)
    assert short.stopped_early is False and short.best_step == 100
    full = mi_jax.estimate_mi(x, y, seeds=2)  # the defaults: 5 evaluations without a gain
    assert full.stopped_early.shape == (2,) and full.stopped_early.all()
    assert np.all(np.asarray(full.steps)[-1] < estimate_lib.DEFAULTS["max_steps"])


def test_small_samples_are_evaluated_every_few_epochs():
    # 100 steps are 3.2 epochs of N = 5000's 4000 training pairs, where the defaults were tuned;
    # at N = 200, 80 epochs, and the critic had passed its held-out peak before the first
    # evaluation: this draw of a 5-d Gaussian with 2 nats read 0.92 (four critics 0.89-0.94,
    # every best step the first, 100).
    assert estimate_lib.default_eval_every(4000, 128) == 100
    assert estimate_lib.default_eval_every(10**6, 128) == 100
    assert estimate_lib.default_eval_every(1600, 128) == 40
    assert estimate_lib.default_eval_every(160, 128) == 10
    x, y = tasks.get_task("gaussian", dim=5).sample(jax.random.key(4), 2.0, 200)
    result = mi_jax.estimate_mi(np.asarray(x), np.asarray(y), seeds=4)
    assert list(result.steps[:2]) == [10, 20]
    assert np.all(result.best_step < 100)
    assert result.mi.mean() > 1.05  # (1.16)


def test_seed_is_deterministic(gaussian_2d):
    x, y = gaussian_2d
    a = mi_jax.estimate_mi(x[:1000], y[:1000], max_steps=200, seed=3)
    b = mi_jax.estimate_mi(x[:1000], y[:1000], max_steps=200, seed=3)
    assert a.mi == b.mi


def test_default_learning_rate_follows_the_training_objective(gaussian_2d):
    """None: 3e-3 for a bound trained with the JS objective, 1e-3 for the others."""
    x, y = gaussian_2d
    for bound, rate in (
        ("smile", estimate_lib.JS_LEARNING_RATE),
        ("nwj", estimate_lib.OTHER_LEARNING_RATE),
    ):
        default = mi_jax.estimate_mi(x[:1000], y[:1000], bound=bound, max_steps=200, seed=1)
        given = mi_jax.estimate_mi(
            x[:1000], y[:1000], bound=bound, max_steps=200, seed=1, learning_rate=rate
        )
        np.testing.assert_array_equal(default.test_curve, given.test_curve)
    assert (estimate_lib.JS_LEARNING_RATE, estimate_lib.OTHER_LEARNING_RATE) == (3e-3, 1e-3)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(x=np.zeros((10, 2, 2)), y=np.zeros((10, 1))), ValueError, "`x`"),
        (dict(x=np.zeros((10, 2)), y=np.zeros((9, 1))), ValueError, "same number"),
        (dict(x=np.full((10, 2), np.nan), y=np.zeros((10, 1))), ValueError, "NaN"),
        (dict(x=np.zeros((1, 2)), y=np.zeros((1, 1))), ValueError, "at least"),
        (dict(x=np.array([["a"] * 2] * 10), y=np.zeros((10, 1))), TypeError, "`x`"),
        (dict(bound="infonc"), KeyError, "infonce"),
        (dict(critic="concatt"), KeyError, "concat"),
        (dict(test_fraction=1.5), ValueError, "test_fraction"),
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(seed=2**40), ValueError, "`seed`"),
        (dict(stop_on="bond"), ValueError, "`stop_on`"),
        (dict(bound="infonce", calibrate=True), ValueError, "`calibrate"),
        (dict(standardize="ranks"), ValueError, "`standardize`"),
        (dict(learning_rate=0.0), ValueError, "`learning_rate`"),
        (dict(learning_rate=float("nan")), ValueError, "`learning_rate`"),
        (dict(batch_size=1), ValueError, "`batch_size` must be an integer >= 2"),
        (dict(batch_size=True), ValueError, "`batch_size`"),
        (dict(seed=-1), ValueError, "`seed`"),
        (dict(seeds=True), ValueError, "`seeds`"),
        (dict(max_test=0), ValueError, "`max_test`"),
        (dict(x=np.zeros((200, 0))), ValueError, "`x` must have shape .* dim >= 1"),
        (dict(x=np.ones((200, 1)) * 1e39, standardize=False), ValueError, "`x` has values beyond"),
        # All zeros in float32: read as no information (2e-7 nats of 0.67) without an error.
        (
            dict(x=np.linspace(1.0, 2.0, 400).reshape(200, 2) * 1e-300, standardize=False),
            ValueError,
            r"`x` has values beyond float32's range \(columns of magnitude",
        ),
        (dict(bound=["smile"]), KeyError, r"a bound name must be a string, got \['smile'\]"),
        (dict(bound="interpolated", bound_hparams={"log_baseline": 0.5}), TypeError, "learned"),
        (dict(test_fraction=0.1), ValueError, "held-out split .20 .*at least 32"),
        (dict(test_fraction="0.2"), ValueError, "`test_fraction`"),
        (dict(mesh="cpu"), ValueError, "`mesh` must be a jax.sharding.Mesh"),
        # Another axis name failed in compilation: "Resource axis: data ... is not found".
        (
            dict(mesh=jax.sharding.Mesh(np.array(jax.devices()[:1]), ("batch",))),
            ValueError,
            "`mesh` must have the one axis 'data'",
        ),
        (dict(bound_hparams=5.0), ValueError, "`bound_hparams` must be a dict"),
        (dict(critic_hparams=[("hidden", 8)]), ValueError, "`critic_hparams` must be a dict"),
        (dict(calibrate="no"), ValueError, "`calibrate` must be True, False or None"),
        # Ragged rows: named, not numpy's "inhomogeneous shape" alone.
        (dict(x=[[1.0], [1.0, 2.0]] * 100), ValueError, "`x` must be a rectangular array"),
        # A width of 0: named, not a ZeroDivisionError from a weight initializer.
        (dict(critic_hparams={"hidden": (0,)}), ValueError, "SeparableCritic: `hidden`"),
        (dict(critic_hparams={"hidden": (8,), "embed_dim": 0}), ValueError, "`embed_dim`"),
        (dict(critic="concat", critic_hparams={"hidden": (8, 0)}), ValueError, "`hidden`"),
        (dict(critic="concat", critic_hparams={"hidden": (0,)}), ValueError, "`hidden`"),
        (dict(critic="concat", critic_hparams={"hidden": ()}), ValueError, "`hidden`"),
    ],
)
def test_bad_input_names_the_argument(gaussian_2d, kwargs, error, match):
    x, y = gaussian_2d
    kwargs = dict(dict(x=x[:200], y=y[:200], max_steps=10), **kwargs)
    with pytest.raises(error, match=match):
        mi_jax.estimate_mi(kwargs.pop("x"), kwargs.pop("y"), **kwargs)


def test_a_held_out_outlier_beyond_float32_after_standardizing_is_clipped(gaussian_2d):
    # A held-out value of 1e300 among z-scores of the training split: once an error telling the
    # user to pass `standardize=True` (which they had), then one naming float32's range; now
    # clipped to the training range: a finite estimate, which the one pair off the joint (x at
    # the training maximum, y ordinary) among 40 held-out pairs lowers (0.58 against 0.84
    # without it, 100 steps), never raises.
    x, y = (np.array(a[:200], np.float64) for a in gaussian_2d)
    clean = mi_jax.estimate_mi(x, y, max_steps=100)
    x[np.random.default_rng(0).permutation(200)[0], 0] = 1e300  # the first held-out sample
    with pytest.warns(UserWarning, match="column 0: 1e[+]300 against .*missing-value code"):
        assert 0.0 < mi_jax.estimate_mi(x, y, max_steps=100).mi <= clean.mi


def test_numpy_integers_bool_and_bfloat16_inputs_and_a_huge_step_limit(gaussian_2d):
    x, y = (np.asarray(a)[:400] for a in gaussian_2d)
    # numpy integers overflowed in the host arithmetic (seed * 1_000_003, steps * batch):
    # errors from numpy, or another minibatch order than the same Python int.
    given = mi_jax.estimate_mi(x, y, max_steps=np.int16(200), batch_size=np.int8(100), seed=3000)
    plain = mi_jax.estimate_mi(x, y, max_steps=200, batch_size=100, seed=np.int32(3000))
    assert given.mi == plain.mi and given.best_step == plain.best_step
    # Binary and bfloat16 data are numbers (they were refused as "must be numeric").
    assert np.isfinite(mi_jax.estimate_mi(x > 0, y > 0, max_steps=100).mi)
    as_bf16 = mi_jax.estimate_mi(jnp.asarray(x, jnp.bfloat16), y, max_steps=100)
    same = mi_jax.estimate_mi(
        np.asarray(jnp.asarray(x, jnp.bfloat16), np.float32), y, max_steps=100
    )
    assert as_bf16.mi == same.mi
    # Taken exactly, in float32. Catches: bfloat16 through float16 (1e6 refused as infinite).
    from mi_jax import _checks

    wide = np.array([1e6, -3e9, 1e-6, 2.5], np.float32).astype(jnp.bfloat16)
    taken, _ = _checks.check_samples(wide, np.arange(4.0), min_samples=2)
    assert taken.dtype == np.float32
    np.testing.assert_array_equal(taken[:, 0], wide.astype(np.float32))
    # The curves cover the rounds run: 10**12 steps allocated 745 GiB of curves up front.
    huge = mi_jax.estimate_mi(x, y, max_steps=10**12, eval_every=50, patience=2)
    assert len(huge.steps) == len(huge.test_curve) < 100
    assert huge.best_step == huge.steps[np.nanargmax(huge.objective_curve)]


@pytest.mark.parametrize("critic", ["bilinear", "separable"])
def test_x64_mode_trains_the_same_float32_critic(gaussian_2d, critic):
    # Under jax_enable_x64, `self.param` made the bilinear W float64: the calibration came back
    # float64 and the next round refused it (a raw XLA TypeError), and with the default critic
    # Adam ran W in float64 (another estimate for the same data).
    x, y = (np.asarray(a)[:400] for a in gaussian_2d)
    plain = mi_jax.estimate_mi(x, y, critic=critic, max_steps=200, eval_every=50)
    with jax.enable_x64(True):
        wide = mi_jax.estimate_mi(x, y, critic=critic, max_steps=200, eval_every=50)
        params = critics.get_critic(critic).init(jax.random.key(0), x[:4], y[:4])
    assert {a.dtype for a in jax.tree.leaves(params)} == {np.dtype(np.float32)}
    assert wide.mi == plain.mi and wide.best_step == plain.best_step
    # Before, the same only because the programs compiled in float32 mode served the x64 call:
    # compiled under x64, Adam's bias correction ran in float64 (1.085761 for 1.085390 at 300
    # steps), and a float32-mode call afterwards was served that program.
    estimate_lib._compiled_fit.cache_clear()
    with jax.enable_x64(True):
        wide = mi_jax.estimate_mi(x, y, critic=critic, max_steps=200, eval_every=50)
    assert wide.mi == plain.mi and wide.best_step == plain.best_step


def test_a_concat_critic_scores_the_held_out_split_in_row_blocks(gaussian_2d, monkeypatch):
    # All n_test^2 pairs at once held 8 GiB of activations at n_test = 2048; in blocks the
    # same estimate comes out (here blocks of 3 rows of 80: 8 * 3 * 80 activations).
    x, y = (np.asarray(a)[:400] for a in gaussian_2d)
    settings = dict(critic="concat", critic_hparams={"hidden": (8,)}, max_steps=100)
    monkeypatch.setattr(estimate_lib, "HELD_OUT_BLOCK", 8 * 3 * 80)
    ensemble = training.make_ensemble(["smile"], "concat", {"hidden": (8,)})
    assert estimate_lib._blocked_for_held_out(ensemble, 80).critic.chunk_size == 3
    estimate_lib._compiled_fit.cache_clear()  # programs are cached on the settings
    blocked = mi_jax.estimate_mi(x, y, **settings)
    monkeypatch.setattr(estimate_lib, "HELD_OUT_BLOCK", 2**40)
    estimate_lib._compiled_fit.cache_clear()
    assert estimate_lib._blocked_for_held_out(ensemble, 80) is ensemble
    dense = mi_jax.estimate_mi(x, y, **settings)
    assert blocked.best_step == dense.best_step
    np.testing.assert_allclose(blocked.test_curve, dense.test_curve, rtol=1e-5, atol=1e-6)
    # A chunk size given is kept.
    given = training.make_ensemble(["smile"], "concat", {"hidden": (8,), "chunk_size": 5})
    assert estimate_lib._blocked_for_held_out(given, 80) is given


def test_stop_on_bound_reports_the_curves_maximum(gaussian_2d):
    x, y = gaussian_2d
    result = mi_jax.estimate_mi(x[:2000], y[:2000], max_steps=600, stop_on="bound")
    assert result.mi == np.nanmax(result.test_curve)
    # A bound trained on its own value watches that value: the two held-out curves coincide.
    nwj = mi_jax.estimate_mi(x[:2000], y[:2000], bound="nwj", max_steps=300)
    np.testing.assert_array_equal(nwj.objective_curve, nwj.test_curve)
    assert nwj.mi == np.nanmax(nwj.test_curve)


def test_constant_columns_are_zeroed_with_a_warning_and_a_constant_side_is_rejected():
    """Before (2026-12-06, a review of network activations): a column constant in every sample
    was an error: digits' inputs (3 pixels never on), a layer with a dead ReLU unit, failed
    under the default `standardize`, and ran under `standardize=False`."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3))
    y = x[:, :1] + 0.5 * rng.normal(size=(400, 1))
    dead = np.concatenate([x, np.zeros((400, 1)), np.full((400, 1), 3.0)], axis=1)
    reference = mi_jax.estimate_mi(x, y, max_steps=200)
    for standardize in ("auto", True, "rank"):
        with pytest.warns(UserWarning, match=r"`x` has columns \[3, 4\] \(2\) constant on the "
                          r"training split and everywhere \(dead units"):  # fmt: skip
            result = mi_jax.estimate_mi(dead, y, max_steps=200, standardize=standardize)
        if standardize != "rank":  # (the constant columns add nothing: the same estimate)
            assert result.mi == pytest.approx(reference.mi, abs=0.02)
    train = np.arange(320)
    for standardize in ("auto", True, "rank"):  # zero in both splits, whatever the mode
        with pytest.warns(UserWarning, match="constant on the training split"):
            z, _ = estimate_lib._standardized(dead, train, standardize, "x")
        assert np.all(z[:, 3:] == 0) and np.all(np.std(z[:, :3], axis=0) > 0.5)
    # Constant on the training split alone, a far held-out value: zeroed, and not also "far
    # beyond the training split's range" (the review of 2026-12-06 found both said).
    tiny = np.stack([x[:, 0], 1e16 + 2.0 * (np.arange(400) % 2)], axis=1)
    tiny[estimate_lib._split(400, 0.2, 2048, 1, seed=1)[1][0], 1] = 1e16 + 64  # held out
    with pytest.warns(UserWarning) as caught:
        mi_jax.estimate_mi(tiny, y, max_steps=20, eval_every=10, seed=1)
    assert [str(w.message)[:24] for w in caught] == ["`x` has columns [1] (1) "]
    # A spread float64 rounds away entirely (1e20 + x: one value) or to a few levels (1e16 + x:
    # spacing 2) counts as none; a side constant in every column is an error.
    for offset in (1e20, 1e16):
        with pytest.raises(ValueError, match=r"`x` is constant in every sample"):
            mi_jax.estimate_mi(offset + x[:, :1], y, max_steps=10)
    for standardize in ("auto", "rank"):
        with pytest.raises(ValueError, match=r"`y` is constant in every sample"):
            mi_jax.estimate_mi(x, np.ones((400, 2)), standardize=standardize)
        rare = np.zeros((400, 2))
        rare[estimate_lib._split(400, 0.2, 2048, 1, seed=0)[1][:3], 1] = 1.0  # held out only
        with pytest.raises(ValueError, match=r"`y` is constant on the training split in every"):
            mi_jax.estimate_mi(x, rare, standardize=standardize, seed=0)


@pytest.mark.parametrize("standardize", ["auto", True, "rank"])
def test_a_class_drawn_in_the_held_out_split_alone_is_zeroed_with_a_warning(standardize):
    """One-hot labels whose rare class fell in the held-out split only: before, an error at
    that seed (its column constant on the training split) and an estimate at others (a review,
    2026-12-06). Now the column is 0 in both splits, with a warning, at every seed."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 400)
    _, test_idx = estimate_lib._split(400, 0.2, 2048, 1, seed=0)
    labels[labels == 3] = 0
    labels[test_idx[:2]] = 3  # class 3: two held-out samples, none in training
    x = labels[:, None] + 0.3 * rng.normal(size=(400, 2))
    y = np.eye(4)[labels]
    with pytest.warns(UserWarning, match=r"`y` has columns \[3\] \(1\) constant on the training "):
        result = mi_jax.estimate_mi(x, y, standardize=standardize, seed=0, max_steps=300)
    assert 0.5 < result.mi < np.log(3) + 0.01
    assert (3 in result.rank_columns["y"]) == (standardize == "rank")


def test_hyperparameters_given_replace_the_defaults_and_may_be_numpy_arrays(gaussian_2d):
    x, y = gaussian_2d
    kwargs = dict(max_steps=200, critic_hparams={"hidden": (16,), "embed_dim": 8})
    given = mi_jax.estimate_mi(x[:600], y[:600], **kwargs)
    # The other defaults stay: the bilinear term, Glorot-uniform kernels (and SMILE's tau = 3).
    spelled_out = {**estimate_lib.DEFAULT_CRITIC_HPARAMS["separable"], **kwargs["critic_hparams"]}
    assert spelled_out["bilinear"] and spelled_out["kernel_init"] == "glorot_uniform"
    full = mi_jax.estimate_mi(x[:600], y[:600], max_steps=200, critic_hparams=spelled_out)
    np.testing.assert_array_equal(full.test_curve, given.test_curve)
    # SMILE's gradient given (its default): tau stays 3 (the bound's own default is 5).
    js_gradient = mi_jax.estimate_mi(x[:600], y[:600], **kwargs, bound_hparams={"gradient": "js"})
    np.testing.assert_array_equal(js_gradient.test_curve, given.test_curve)
    tau5 = mi_jax.estimate_mi(x[:600], y[:600], **kwargs, bound_hparams={"clip": 5.0})
    assert not np.array_equal(tau5.test_curve, given.test_curve)  # tau changes the readout
    kwargs["critic_hparams"]["hidden"] = np.array([16])
    assert mi_jax.estimate_mi(x[:600], y[:600], **kwargs).mi == given.mi


def test_cli_reads_npz_and_reports(tmp_path, gaussian_2d, monkeypatch):
    x, y = gaussian_2d
    path = tmp_path / "pairs.npz"
    np.savez(path, x=x[:2000], y=y[:2000])
    monkeypatch.setenv("HOME", str(tmp_path))
    loaded = estimate_cli.load_pairs("~/pairs.npz")  # (the shell leaves `--data=~/...` as is)
    np.testing.assert_array_equal(loaded[0], x[:2000])
    np.testing.assert_array_equal(loaded[1], y[:2000])
    result = estimate_cli.run(str(path), max_steps=300, critic="bilinear")
    direct = mi_jax.estimate_mi(x[:2000], y[:2000], max_steps=300, critic="bilinear")
    assert result.critic == "bilinear" and result.mi == direct.mi > 0
    np.savez(tmp_path / "bad.npz", a=x)
    with pytest.raises(KeyError, match=r"lacks arrays \['x', 'y'\]"):
        estimate_cli.load_pairs(str(tmp_path / "bad.npz"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        estimate_cli.load_pairs(str(tmp_path / "missing.npz"))
    np.save(tmp_path / "one.npy", x)
    (tmp_path / "pairs.csv").write_text("1,2\n3,4\n")
    (tmp_path / "empty.npz").write_bytes(b"")
    (tmp_path / "cut.npz").write_bytes(path.read_bytes()[:300])
    np.savez(tmp_path / "objects.npz", x=np.array([1.0, "a"], dtype=object), y=y[:2])
    for name in ("one.npy", "pairs.csv", "empty.npz", "cut.npz"):
        with pytest.raises(ValueError, match=r"--data file .* (is one array|is not an .npz)"):
            estimate_cli.load_pairs(str(tmp_path / name))
    with pytest.raises(ValueError, match=r"--data file .*objects.npz.*: array 'x' is unreadable"):
        estimate_cli.load_pairs(str(tmp_path / "objects.npz"))
    with pytest.raises(ValueError, match="is not a file"):
        estimate_cli.load_pairs(str(tmp_path))
    # Not "pickled (object) data ... load it unsafely using the `allow_pickle=` keyword".
    with pytest.raises(ValueError, match=r"pairs.csv' is not an .npz .*neither a zip") as info:
        estimate_cli.load_pairs(str(tmp_path / "pairs.csv"))
    assert "pickle" not in str(info.value)
    # One damaged byte anywhere in a compressed file: a message naming --data (some had leaked
    # a bare zlib.error or tokenize.TokenError).
    np.savez_compressed(tmp_path / "packed.npz", x=x[:200], y=y[:200])
    packed = (tmp_path / "packed.npz").read_bytes()
    refused = 0
    for offset in range(0, len(packed), 7):
        damaged = bytearray(packed)
        damaged[offset] ^= 0xFF
        (tmp_path / "damaged.npz").write_bytes(bytes(damaged))
        try:
            loaded = estimate_cli.load_pairs(str(tmp_path / "damaged.npz"))
        except (ValueError, KeyError) as e:
            assert "--data file" in str(e), (offset, e)
            refused += 1
        else:  # a byte the format does not read (a zip header's timestamp, say): same arrays
            np.testing.assert_array_equal(loaded[0], x[:200], err_msg=f"offset {offset}")
            np.testing.assert_array_equal(loaded[1], y[:200], err_msg=f"offset {offset}")
    assert refused > len(packed) // 7 // 2, refused  # measured: 472 of 493 offsets


def test_cli_says_how_far_the_estimate_moved_when_max_steps_cut_training(gaussian_2d):
    x, y = gaussian_2d
    one = mi_jax.estimate_mi(x[:1000], y[:1000], max_steps=800, eval_every=100, patience=10)
    assert not one.stopped_early
    # The last 500 steps: evaluations at 300 and 800.
    moved = one.test_curve[-1] - one.test_curve[2]
    assert estimate_cli.limit_note(one, 800) == (
        "--max_steps 800 ended training before early stopping did: over its last 500 steps the "
        f"held-out estimate moved by {moved:+.3f} nats ({one.test_curve[2]:.3f} -> "
        f"{one.test_curve[-1]:.3f}); where it still rises, a longer run may read higher."
    )
    assert estimate_cli.limit_note(dataclasses.replace(one, stopped_early=True), 800) is None
    # An estimate at a discrete side's entropy cannot read higher: no note.
    at_ceiling = dataclasses.replace(one, ceiling=one.mi)
    assert estimate_cli.limit_note(at_ceiling, 800) is None
    two = mi_jax.estimate_mi(x[:1000], y[:1000], max_steps=200, eval_every=100, seeds=2)
    moves = two.test_curve[:, 1] - two.test_curve[:, 0]
    assert f"moved by {moves[np.argmax(np.abs(moves))]:+.3f} nats" in estimate_cli.limit_note(
        two, 200
    )
    assert "the largest move of 2 seeds" in estimate_cli.limit_note(two, 200)
    # Catches: the largest rise taken for the largest move (a fall of 0.3 beside a rise of 0.1).
    falls = dataclasses.replace(two, test_curve=np.array([[1.3, 1.0], [0.9, 1.0]]))
    assert "moved by -0.300 nats (1.300 -> 1.000," in estimate_cli.limit_note(falls, 200)
    single = dataclasses.replace(one, steps=one.steps[:1], test_curve=one.test_curve[:1])
    assert estimate_cli.limit_note(single, 100) == (
        "--max_steps 100 ended training at its first evaluation."
    )


def test_cli_says_when_the_estimate_is_a_discrete_sides_entropy(tmp_path, capsys):
    # A label of 50 classes against itself: SMILE's value passes log 50, the entropy caps it.
    labels = np.eye(50)[np.random.default_rng(0).integers(0, 50, 1000)]
    np.savez(tmp_path / "labels.npz", x=labels, y=labels)
    with pytest.warns(UserWarning, match="passed the entropy of the discrete"):
        out = _run_main(capsys, "--data", str(tmp_path / "labels.npz"))
    (line,) = [s for s in out.out.splitlines() if s.startswith("I(X;Y) = ")]
    value = float(line.split()[2])
    assert f"The estimate is the entropy of a discrete side ({value:.4f} nats)" in out.out
    assert abs(value - np.log(50)) < 0.02 and "longer run" not in out.out


def _cli_refusal(capsys, *args: str) -> tuple[str, str]:
    """``(message, printed)``: `experiments.estimate.main` run in this process with the flags
    ``args``, ending in the usage error (SystemExit) it raised; what it printed meanwhile."""
    with pytest.raises(SystemExit) as info:
        _run_main(capsys, *args)
    out = capsys.readouterr()
    return str(info.value), out.out + out.err


def test_cli_refuses_a_json_path_it_cannot_write_before_training(
    tmp_path, gaussian_2d, capsys, monkeypatch
):
    np.savez(tmp_path / "pairs.npz", x=gaussian_2d[0][:500], y=gaussian_2d[1][:500])
    monkeypatch.chdir(tmp_path)
    trained = []
    monkeypatch.setattr(estimate_cli, "run", lambda *a, **k: trained.append(1))
    # Before: the estimate was trained and printed, then the write failed (IsADirectoryError).
    message, printed = _cli_refusal(capsys, "--data", "pairs.npz", "--json", str(tmp_path))
    assert "not a file that can be written" in message and "I(X;Y)" not in printed
    # Before: an earlier result, or the --data file itself, was overwritten without a word.
    (tmp_path / "earlier.json").write_text("{}")
    data_bytes = (tmp_path / "pairs.npz").read_bytes()
    # A symbolic link, dangling too: refused before training (not after it, as a file that
    # appeared meanwhile).
    os.symlink("results/out.json", tmp_path / "link.json")
    for existing in ("earlier.json", "pairs.npz", "link.json"):
        message, printed = _cli_refusal(capsys, "--data", "pairs.npz", "--json", existing)
        assert "exists; it is not overwritten" in message and "I(X;Y)" not in printed
    assert not trained
    assert (tmp_path / "earlier.json").read_text() == "{}"
    assert (tmp_path / "pairs.npz").read_bytes() == data_bytes
    # (The command's exit status and its stderr for such a usage error: the tests below.)


def test_cli_json_on_stdout_and_a_closed_output_pipe(tmp_path, gaussian_2d):
    # (x with a constant column: the library's warning reaches the command's stderr)
    x = np.concatenate([gaussian_2d[0][:500], np.ones((500, 1))], axis=1)
    np.savez(tmp_path / "pairs.npz", x=x, y=gaussian_2d[1][:500])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root, JAX_PLATFORMS="cpu")
    command = [sys.executable, "-m", "experiments.estimate", "--data", "pairs.npz"]
    command += ["--max_steps", "100", "--json"]
    # `--json -`: the JSON alone on stdout (before: a file named "-", and no way to pipe it).
    out = subprocess.run(
        [*command, "-"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    record = json.loads(out.stdout)
    assert record["unit"] == "nats" and record["mi"] > 0 and "I(X;Y) = " in out.stderr
    assert "`x` has columns [2] (1) constant on the training split" in out.stderr
    assert os.listdir(tmp_path) == ["pairs.npz"]
    # A reader gone before the estimate was printed (`| head -0`): before, a BrokenPipeError
    # traceback and status 1 (an experiment's print between IB's methods stopped the rest).
    # Now the command runs to its end, quietly, and its file is written.
    read, write = os.pipe()
    os.close(read)
    with subprocess.Popen(
        [*command, "out.json"], cwd=tmp_path, stdout=write, stderr=subprocess.PIPE, env=env
    ) as proc:
        os.close(write)
        err = proc.stderr.read().decode()
    assert proc.returncode == 0 and "Traceback" not in err, err[-2000:]
    assert json.loads((tmp_path / "out.json").read_text())["mi"] == pytest.approx(record["mi"])


def _run_main(capsys, *args: str):
    """`experiments.estimate.main` run in this process with the flags ``args`` (absl's flags and
    logging verbosity restored after it); what it printed, as capsys gives it."""
    from absl import flags, logging
    from absl.testing import flagsaver

    verbosity = logging.get_verbosity()
    capsys.readouterr()
    try:
        with flagsaver.flagsaver():
            flags.FLAGS(["estimate", *args])
            estimate_cli.main(["estimate"])
    finally:
        logging.set_verbosity(verbosity)
    return capsys.readouterr()


def _cli_in_process(capsys, *args: str) -> tuple[dict, str]:
    """``(record, line)``: `experiments.estimate.main` run in this process with ``--json -``
    and the flags ``args``: the JSON it printed on stdout, and its "I(X;Y) = " line (stderr)."""
    out = _run_main(capsys, "--json", "-", *args)
    (line,) = [x for x in out.err.splitlines() if x.startswith("I(X;Y) = ")]
    return json.loads(out.out), line


def test_cli_prints_what_its_json_holds_and_passes_each_flag_on(tmp_path, capsys):
    # x in units 100 times y's: z-scores and the samples as given train different critics.
    # Catches: --seed or --standardize not reaching estimate_mi (or zscore read as none), the
    # printed mean being one seed's, the printed std with ddof 1, bits as nats times log 2,
    # the printed best step being the last one.
    x, y = tasks.get_task("gaussian", dim=2).sample(jax.random.key(0), 1.0, 1000)
    x, y = 100.0 * np.asarray(x), np.asarray(y)
    np.savez(tmp_path / "pairs.npz", x=x, y=y)
    data = ["--data", str(tmp_path / "pairs.npz"), "--seed", "3", "--eval_every", "10"]
    record, line = _cli_in_process(
        capsys, *data, "--seeds", "2", "--standardize", "zscore", "--max_steps", "300"
    )
    direct = mi_jax.estimate_mi(
        x, y, seeds=2, seed=3, eval_every=10, max_steps=300, standardize=True
    )
    np.testing.assert_allclose(record["mi"], direct.mi, rtol=1e-6)
    assert line.startswith(
        f"I(X;Y) = {np.mean(direct.mi):.4f} +- {np.std(direct.mi):.4f} nats = "
        f"{np.mean(direct.mi) / np.log(2):.4f} bits over 2 seeds"
    ), line
    record, line = _cli_in_process(capsys, *data)  # (the default step limit)
    assert record["stopped_early"] and record["best_step"] < record["steps"][-1]
    mi = record["mi"]
    assert line.startswith(f"I(X;Y) = {mi:.4f} nats = {mi / np.log(2):.4f} bits "), line
    assert line.endswith(f"best held-out step {record['best_step']})"), line


def test_cli_keeps_a_json_file_that_appeared_while_it_trained(
    tmp_path, gaussian_2d, capsys, monkeypatch
):
    # Two estimates given one --json at once: before, both passed the check made before
    # training, and the second to finish replaced the first's result without a word.
    np.savez(tmp_path / "pairs.npz", x=gaussian_2d[0][:500], y=gaussian_2d[1][:500])
    monkeypatch.chdir(tmp_path)
    trained = estimate_cli.run

    def run(*args, **kwargs):  # another process writes the file meanwhile
        result = trained(*args, **kwargs)
        (tmp_path / "out.json").write_text('{"other": 1}')
        return result

    monkeypatch.setattr(estimate_cli, "run", run)
    message, printed = _cli_refusal(
        capsys, "--data", "pairs.npz", "--json", "out.json", "--max_steps", "20"
    )
    assert "I(X;Y)" in printed  # printed, so not lost
    assert "--json 'out.json' appeared while this estimate ran" in message
    assert (tmp_path / "out.json").read_text() == '{"other": 1}'
    assert sorted(os.listdir(tmp_path)) == ["out.json", "pairs.npz"]  # no temp file left


def test_cli_bad_settings_are_usage_errors_and_test_fraction_is_a_flag(
    tmp_path, gaussian_2d, capsys, monkeypatch
):
    # Before: a 19-line traceback ending in the ValueError; and the error for few samples
    # asked for a larger `test_fraction`, which the CLI had no flag for.
    np.savez(tmp_path / "pairs.npz", x=gaussian_2d[0][:40], y=gaussian_2d[1][:40])
    monkeypatch.chdir(tmp_path)
    message, _ = _cli_refusal(capsys, "--data", "pairs.npz")  # 8 held out, 32 needed
    assert "larger `test_fraction`" in message
    # As commands: the usage error's message alone, and a run with the flag.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root, JAX_PLATFORMS="cpu")
    command = [sys.executable, "-m", "experiments.estimate", "--data", "pairs.npz"]
    for flags, ok, text in (
        (["--seeds", "0"], False, "`seeds` must be a positive integer"),
        (["--test_fraction", "0.8", "--max_steps", "10"], True, "I(X;Y) ="),
    ):
        out = subprocess.run(
            [*command, *flags], cwd=tmp_path, capture_output=True, text=True, env=env,
            timeout=120,
        )  # fmt: skip
        assert (out.returncode == 0) == ok, out.stderr[-2000:]
        assert text in (out.stdout if ok else out.stderr) and "Traceback" not in out.stderr
        # The message alone: before, absl's 44-line flag list came first; and JAX's INFO line
        # about a missing TPU library on a successful run.
        assert "Training minibatch size." not in out.stderr and "libtpu" not in out.stderr


def test_cli_takes_bound_and_critic_hyperparameters(tmp_path, gaussian_2d, capsys, monkeypatch):
    assert estimate_cli.parse_hparams(None, "bound_hparams") is None
    assert estimate_cli.parse_hparams("{'hidden': (64,)}", "critic_hparams") == {"hidden": (64,)}
    for bad in ("clip=5", "[1, 2]", "{'a': os.sep}"):
        with pytest.raises(ValueError, match="--bound_hparams must be a dict literal"):
            estimate_cli.parse_hparams(bad, "bound_hparams")
    np.savez(tmp_path / "pairs.npz", x=gaussian_2d[0][:400], y=gaussian_2d[1][:400])
    monkeypatch.chdir(tmp_path)
    message, _ = _cli_refusal(
        capsys, "--data", "pairs.npz", "--max_steps", "10", "--bound_hparams", "{'tau': 5.0}"
    )
    assert "unknown hyperparameters ['tau'] for bound 'smile'; known: ['clip', 'gradient']" in (
        message
    )


def test_single_seed_runs_unbatched_with_the_batched_numbers(gaussian_2d):
    # seeds=None compiles a program without a seed axis; seeds=1 the vmapped one. Same keys,
    # same minibatches: the same estimate up to float reassociation.
    x, y = gaussian_2d
    one = mi_jax.estimate_mi(x[:1000], y[:1000], max_steps=300, seed=5)
    batched = mi_jax.estimate_mi(x[:1000], y[:1000], max_steps=300, seed=5, seeds=1)
    assert batched.mi.shape == (1,)
    np.testing.assert_allclose(batched.mi[0], one.mi, rtol=1e-4)
    np.testing.assert_allclose(batched.test_curve[0], one.test_curve, rtol=1e-4)
    # A pilot of one seed is member 0 of the final run of three (as the docstring says); the
    # others are not the runs of seed + k.
    three = mi_jax.estimate_mi(x[:1000], y[:1000], max_steps=300, seed=5, seeds=3)
    np.testing.assert_allclose(three.test_curve[0], one.test_curve, rtol=1e-4)
    six = mi_jax.estimate_mi(x[:1000], y[:1000], max_steps=300, seed=6)
    assert abs(three.mi[1] - six.mi) > 1e-4


def test_compiled_programs_are_reused_for_equal_shapes(gaussian_2d):
    from mi_jax import estimate as estimate_lib

    x, y = gaussian_2d
    estimate_lib._compiled_fit.cache_clear()
    mi_jax.estimate_mi(x[:800], y[:800], max_steps=100, seed=0)
    mi_jax.estimate_mi(x[800:1600], y[800:1600], max_steps=100, seed=1)
    info = estimate_lib._compiled_fit.cache_info()
    assert (info.misses, info.hits) == (1, 1)
    estimate_lib.clear_cache()  # the public way to free them
    assert estimate_lib._compiled_fit.cache_info().currsize == 0


def test_standardization_is_computed_before_the_float32_cast(gaussian_2d):
    # Scales that float32 statistics could not take: the variance of x * 1e20 overflows it,
    # 1e8 + x has no spread left in float32, and 1e-30 x underflows its variance; in float64
    # the variance of x * 1e160 overflows and that of x * 1e-300 underflows.
    x, y = gaussian_2d[0][:1000].astype(np.float64), gaussian_2d[1][:1000]
    kwargs = dict(max_steps=200, seed=2)
    plain = mi_jax.estimate_mi(x, y, **kwargs).mi
    assert plain > 0.5
    for scaled in (x * 1e20, 1e8 + x, x * 1e-30, x * 1e160, x * 1e-300):
        np.testing.assert_allclose(mi_jax.estimate_mi(scaled, y, **kwargs).mi, plain, rtol=1e-3)
    # A spread of 1e-12 of the offset (microsecond timestamps with a millisecond spread) is
    # ~4000 float64 levels per standard deviation, not a constant column: it rounds the
    # z-scores by ~1e-4 (so the training differs slightly).
    np.testing.assert_allclose(mi_jax.estimate_mi(1e12 + 0.5 * x, y, **kwargs).mi, plain, rtol=0.05)


def test_max_steps_is_a_limit_and_estimates_are_never_negative(gaussian_2d):
    x, y = gaussian_2d
    kwargs = dict(eval_every=100)
    assert list(mi_jax.estimate_mi(x[:1000], y[:1000], max_steps=50, **kwargs).steps) == [50]
    assert list(mi_jax.estimate_mi(x[:1000], y[:1000], max_steps=250, **kwargs).steps) == [
        100,
        200,
    ]
    # Independent samples, early stopping on the bound's own (noisy) value: its maximum can sit
    # just below 0 nats, which the constant critic beats (it read -0.001 to -0.004 nats before).
    y_independent = np.random.default_rng(3).normal(size=(2000, 1))
    result = mi_jax.estimate_mi(
        x[:2000, :1], y_independent, stop_on="bound", calibrate=False, seeds=4, max_steps=300
    )
    assert np.all(result.mi >= 0.0) and np.all(result.mi < 0.01)
    assert np.all((result.mi == 0.0) == (result.best_step == 0))


def test_a_diverging_critic_names_the_bound_and_steps(gaussian_2d, monkeypatch):
    x, y = gaussian_2d
    with pytest.raises(training.NonFiniteError, match=r"bound 'nwj' became .* in training steps"):
        mi_jax.estimate_mi(
            x[:1000], y[:1000], bound="nwj", learning_rate=1e6, max_steps=200, eval_every=100
        )
    # NaN for every critic (a user's bound with a bad hyperparameter): not only the learning
    # rate is suspect in the first round.
    monkeypatch.setattr(bounds, "_REGISTRY", dict(bounds._REGISTRY))  # noqa: SLF001
    bounds.register_bound(
        "nan_always", lambda: bounds.make_bound("nan_always", lambda s: bounds.nwj(s) * jnp.nan)
    )
    with pytest.raises(
        training.NonFiniteError,
        match=r"steps 1-100; try a lower `learning_rate`, or check the bound and its hyper",
    ):
        mi_jax.estimate_mi(x[:1000], y[:1000], bound="nan_always", max_steps=200, eval_every=100)


def _nwj_until_1_8():
    # NWJ until the critic's mean joint score passes 1.8, then NaN (a stand-in for divergence
    # partway through training: the optimal NWJ critic's mean joint score is 1 + I = 2 here).
    def value(scores, state):
        return jnp.where(jnp.mean(jnp.diag(scores)) > 1.8, jnp.nan, bounds.nwj(scores)), state

    return bounds.Bound("nwj_until_1_8", lambda: (), value)


def test_a_critic_diverging_after_its_best_keeps_that_estimate(gaussian_2d):
    if "nwj_until_1_8" not in bounds.available_bounds():
        bounds.register_bound("nwj_until_1_8", _nwj_until_1_8)
    x, y = gaussian_2d
    result = mi_jax.estimate_mi(
        x[:2000], y[:2000], bound="nwj_until_1_8", max_steps=1500, eval_every=100
    )
    # Round 1 (steps 101-200) turned the training value NaN: that round's evaluation does not
    # count, training stops, and the estimate is round 0's.
    assert np.isfinite(result.train_curve[0]) and np.isnan(result.train_curve[1])
    assert np.all(np.isnan(result.test_curve[2:]))
    assert result.best_step == 100 and result.mi == pytest.approx(result.test_curve[0])
    assert result.mi > 0


def test_held_out_samples_beyond_max_test_train(gaussian_2d, monkeypatch):
    # 20 % of 1000 is 200 held out, capped at 64: the other 136 join the training split.
    specs = []
    compiled = estimate_lib._compiled_fit
    monkeypatch.setattr(
        estimate_lib, "_compiled_fit", lambda spec: specs.append(spec) or compiled(spec)
    )
    x, y = gaussian_2d
    mi_jax.estimate_mi(x[:1000], y[:1000], max_test=64, max_steps=10)
    assert specs[0].train_shapes == ((936, 2), (936, 2))
    assert specs[0].test_shapes == ((64, 2), (64, 2))


def test_a_bound_registered_again_is_not_served_from_the_program_cache(monkeypatch, gaussian_2d):
    # A notebook cell run again registers its bound again (override=True): estimate_mi's
    # cached programs, keyed on the bound's name, must not run the earlier definition.
    from mi_jax import bounds

    monkeypatch.setattr(bounds, "_REGISTRY", dict(bounds._REGISTRY))  # noqa: SLF001
    x, y = gaussian_2d
    kwargs = dict(bound="mine_cell", max_steps=100, critic_hparams={"hidden": (16,)})
    bounds.register_bound("mine_cell", lambda: bounds.make_bound("mine_cell", bounds.infonce))
    first = mi_jax.estimate_mi(x[:600], y[:600], **kwargs)
    with pytest.raises(ValueError, match="already registered .`override=True` replaces it"):
        bounds.register_bound("mine_cell", lambda: bounds.get_bound("nwj"))

    def half_infonce(scores):
        return 0.5 * bounds.infonce(scores)

    bounds.register_bound(
        "mine_cell", lambda: bounds.make_bound("mine_cell", half_infonce), override=True
    )
    again = mi_jax.estimate_mi(x[:600], y[:600], **kwargs)
    assert again.mi != first.mi
    np.testing.assert_allclose(again.train_curve[0], 0.5 * first.train_curve[0], rtol=1e-4)


def test_registering_anything_else_keeps_the_program_cache(monkeypatch, gaussian_2d):
    # Before: every `register` call of any kind (a task, a dataset, the same factory again, as a
    # notebook cell run again does) made the next call compile anew and keep both programs.
    from mi_jax import bounds, data

    monkeypatch.setattr(tasks, "_TASKS", dict(tasks._TASKS))  # noqa: SLF001
    monkeypatch.setattr(bounds, "_REGISTRY", dict(bounds._REGISTRY))  # noqa: SLF001
    x, y = gaussian_2d
    kwargs = dict(max_steps=20, eval_every=10, critic_hparams={"hidden": (8,)})
    first = mi_jax.estimate_mi(x[:600], y[:600], **kwargs)
    misses = estimate_lib._compiled_fit.cache_info().misses
    factory = tasks._TASKS["gaussian"]  # noqa: SLF001
    for _ in range(2):
        tasks.register_task("my_task", factory)
        bounds.register_bound("infonce", bounds._REGISTRY["infonce"])  # noqa: SLF001
    data.register_dataset("digits", data._REGISTRY["digits"])  # noqa: SLF001
    again = mi_jax.estimate_mi(x[:600], y[:600], **kwargs)
    assert estimate_lib._compiled_fit.cache_info().misses == misses
    assert again.mi == first.mi


def test_a_call_under_other_jax_settings_is_not_served_from_the_program_cache(
    monkeypatch, gaussian_2d
):
    # Before: the programs cached by a default-precision call served a later call under
    # `jax.default_matmul_precision("highest")` (on a GPU, TF32 matmuls the user had turned off).
    programs = []
    compiled = estimate_lib._compiled_fit
    monkeypatch.setattr(
        estimate_lib, "_compiled_fit", lambda spec: programs.append(compiled(spec)) or programs[-1]
    )
    x, y = gaussian_2d
    kwargs = dict(max_steps=20, eval_every=10, critic_hparams={"hidden": (8,)})
    first = mi_jax.estimate_mi(x[:400], y[:400], **kwargs)
    with jax.default_matmul_precision("highest"):
        mi_jax.estimate_mi(x[:400], y[:400], **kwargs)
    default, highest = (p[1].as_text() for p in programs)
    assert "operand_precision={highest,highest}" not in default
    assert "operand_precision={highest,highest}" in highest
    # The other random stream of `jax_threefry_partitionable`: other numbers, not the cached.
    with jax.threefry_partitionable(not jax.config.jax_threefry_partitionable):
        other = mi_jax.estimate_mi(x[:400], y[:400], **kwargs)
    assert len(programs) == 3 and not np.array_equal(other.train_curve, first.train_curve)


def test_seeds_share_the_held_out_memory(monkeypatch):
    # Before: the held-out evaluation was vmapped with the training, so every seed's n_test^2
    # score matrices and calibration temporaries were alive at once: XLA's working memory of a
    # round 128 MB for one seed, 384 MB for 4, 1.5 GB for 16 (n_test = 2048).
    specs = []

    class Stop(Exception):
        pass

    def compile_only(spec, *args, **kwargs):
        specs.append(spec)
        raise Stop

    monkeypatch.setattr(estimate_lib, "_fit", compile_only)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((10240, 2)).astype(np.float32)  # 2048 held out
    for seeds in (1, 8):
        with pytest.raises(Stop):
            estimate_lib.estimate_mi(x, x + rng.standard_normal(x.shape), seeds=seeds, max_steps=1)
    one, eight = (
        estimate_lib._compiled_fit(spec)[1].memory_analysis().temp_size_in_bytes for spec in specs
    )
    assert specs[0].test_shapes[0][0] == 2048 and one > 2048**2 * 4  # a score matrix at least
    assert eight < 1.5 * one, (one, eight)


def test_cli_imports_a_module_that_registers_a_bound(tmp_path, gaussian_2d, capsys, monkeypatch):
    # Before: a bound registered in a module of one's own was out of the command line's reach
    # ("unknown bound"), the README's config-file route being the experiments' only.
    (tmp_path / "my_bounds.py").write_text(
        "from mi_jax import bounds\n"
        "def half_infonce(scores, *, scale=0.5):\n"
        "    return scale * bounds.infonce(scores)\n"
        "bounds.register_bound('half_infonce', lambda **kw: bounds.make_bound("
        "'half_infonce', half_infonce, **kw))\n"
    )
    (tmp_path / "broken.py").write_text("import no_such_dependency\n")
    np.savez(tmp_path / "pairs.npz", x=gaussian_2d[0][:400], y=gaussian_2d[1][:400])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # The command, in a process of its own: the module registers its bound there (in this one
    # it would stay registered for the tests after it), found in the current folder.
    out = subprocess.run(
        [sys.executable, "-m", "experiments.estimate", "--data", "pairs.npz", "--max_steps", "20",
         "--bound", "half_infonce", "--imports", "my_bounds", "--bound_hparams", "{'scale': 0.25}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env=dict(os.environ, PYTHONPATH=root, JAX_PLATFORMS="cpu"),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "(half_infonce, separable critic" in out.stdout
    # The refusals, in this process (the current folder on the path, as `python -m` puts it).
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    command = ("--data", "pairs.npz", "--max_steps", "20", "--bound", "half_infonce")
    message, _ = _cli_refusal(capsys, *command)
    assert "unknown bound 'half_infonce'" in message
    message, _ = _cli_refusal(capsys, *command, "--imports", "my_bounz")
    assert "--imports 'my_bounz': no such module in the current folder" in message
    # "NAME.py": refused before any import (before: imported, then "no such module").
    message, _ = _cli_refusal(capsys, *command, "--imports", "my_bounds.py")
    assert "give the module's name, without .py" in message and "my_bounds" not in sys.modules
    # Its own missing import: a bug in it, raised as it is (a traceback in the command).
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency"):
        estimate_cli.import_modules(["broken"])


# --------------------------------------------------------------------------------------------
# Reported statistics by hand (a mutation check: each caught a change the tests above missed).


def test_an_estimate_whose_bound_is_negative_reads_zero_at_step_zero():
    """Catches: `& (mi > 0)` dropped: a critic whose held-out objective beats the constant
    critic's but whose held-out bound is negative reported that negative MI."""
    stop = estimate_lib._EarlyStopping(1, patience=3, stop_on="objective")
    reference = -2 * np.log(2)  # the constant critic's JS objective
    stop.update(0, np.array([[0.5, 0.1]]), (np.array([-0.2]), np.array([-1.0]), np.array([0.3])))
    mi, best_step, *_, chosen = stop.result(reference, "smile", 100, batched=True)
    assert mi.tolist() == [0.0] and best_step.tolist() == [0]
    np.testing.assert_array_equal(chosen, [[0.0, 0.0]])


def test_each_seed_draws_its_own_minibatches(monkeypatch):
    """Catches: every member of seeds=K used the same minibatch order: the spread over seeds held
    the initializations' share alone."""
    drawn = []
    real = estimate_lib._minibatches

    def spy(seed, *args):
        drawn.append(seed)
        return real(seed, *args)

    monkeypatch.setattr(estimate_lib, "_minibatches", spy)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 2))
    estimate_lib.estimate_mi(x, x + rng.normal(size=x.shape), seeds=3, max_steps=20, eval_every=10)
    assert len(drawn) == 3 and len(set(drawn)) == 3


def test_minibatches_walk_through_epochs_without_a_repeat_in_a_batch():
    # Catches: the same indices handed out every round (most samples of a large N never
    # trained on); a batch across an epoch boundary kept with a repeated index (a joint pair
    # among the negatives).
    batches = estimate_lib._minibatches(7, 10, 4, 3)  # boundaries fall inside batches
    for _ in range(60):
        assert all(len(np.unique(row)) == 4 for row in next(batches))
    batches = estimate_lib._minibatches(3, 40, 4, 5)  # two rounds of 5 x 4: one epoch
    first = np.concatenate([next(batches).ravel(), next(batches).ravel()])
    np.testing.assert_array_equal(np.sort(first), np.arange(40))


def test_the_split_is_a_disjoint_partition_with_the_documented_held_out_size():
    # Catches: the held-out size floored instead of rounded; the rows a multi-device split
    # leaves out of the held-out split lost to training too (before 2026-12-07: 3 of 203
    # samples on 8 devices trained nowhere).
    for n, fraction, cap, devices in (
        (334, 0.25, 10**9, 1), (203, 0.2, 10**9, 1), (1000, 0.2, 64, 1), (203, 0.2, 10**9, 8),
    ):  # fmt: skip
        train, test = estimate_lib._split(n, fraction, cap, devices, 0)
        assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == n
        size = min(round(fraction * n), cap)
        assert len(test) == size - size % devices


def test_seed_sets_the_critics_initialization(monkeypatch):
    # The same split and minibatches for both seeds: only the initialization may differ.
    # Catches: the critics initialized from a fixed key (the spread over seeds would lack the
    # initialization's share).
    split, minibatches = estimate_lib._split, estimate_lib._minibatches
    monkeypatch.setattr(estimate_lib, "_split", lambda *args: split(*args[:-1], 0))
    monkeypatch.setattr(estimate_lib, "_minibatches", lambda seed, *args: minibatches(0, *args))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2))
    y = x + 0.5 * rng.normal(size=(200, 2))
    kwargs = dict(max_steps=10, eval_every=10, batch_size=32)
    a, b = (estimate_lib.estimate_mi(x, y, seed=s, **kwargs) for s in (0, 1))
    assert not np.array_equal(a.train_curve, b.train_curve)
