"""Sampling tasks with known MI (`mi_jax.tasks`): closed forms checked by Monte Carlo with
fixed seeds and tolerances from standard errors."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
from scipy import integrate
from scipy.special import gammaln

from mi_jax import tasks

_N = 200_000


# --------------------------------------------------------------------------------------------
# rho <-> MI.


def test_rho_from_mi_and_mi_from_rho_are_inverses():
    mi = np.array([1e-3, 0.1, 0.5, 1.0, 2.0, 4.0, 6.0], np.float32)
    for dim in (1, 3, 10):
        mi_d = mi[mi / dim <= 2.0]  # past ~2 nats per coordinate, rho rounds towards 1
        rho = jax.jit(tasks.rho_from_mi, static_argnums=1)(mi_d, dim)
        assert np.all((rho > 0) & (rho < 1))
        back = np.asarray(tasks.mi_from_rho(rho, dim), np.float64)
        # Tolerance: the round trip amplifies rho's float32 rounding (eps = 1.2e-7) by the
        # condition number |d log I / d log rho| = 2 rho^2 / ((1 - rho^2) (I / dim)), at most
        # 2 e^4 / 2 ~ 55 here; 16 eps * condition number bounds it with margin.
        m = mi_d.astype(np.float64) / dim
        rho2 = -np.expm1(-2.0 * m)
        cond = 2.0 * rho2 / (np.exp(-2.0 * m) * m)
        assert np.all(np.abs(back - mi_d) <= 16 * 1.2e-7 * cond * mi_d + 1e-9), (dim, back, mi_d)
        # The closed form itself, in float64.
        np.testing.assert_allclose(np.asarray(rho, np.float64) ** 2, rho2, rtol=1e-6)
    rho = np.array([0.0, 0.1, 0.5, 0.9], np.float32)
    np.testing.assert_allclose(tasks.rho_from_mi(tasks.mi_from_rho(rho, 2), 2), rho, atol=1e-6)
    np.testing.assert_allclose(tasks.mi_from_rho(0.5, 4), -2.0 * math.log(0.75), rtol=1e-6)


# --------------------------------------------------------------------------------------------
# The Gaussian task.


@pytest.fixture(scope="module")
def gaussian_sample():
    mi, dim = 1.5, 3
    x, y = jax.jit(tasks.correlated_gaussian, static_argnums=(2, 3))(jax.random.key(0), mi, _N, dim)
    return mi, dim, np.asarray(x, np.float64), np.asarray(y, np.float64)


def test_correlated_gaussian_has_the_right_correlation(gaussian_sample):
    mi, dim, x, y = gaussian_sample
    assert x.shape == y.shape == (_N, dim)
    rho = float(tasks.rho_from_mi(mi, dim))
    corr = np.corrcoef(np.concatenate([x, y], axis=1), rowvar=False)
    # Standard errors of a sample correlation: (1 - rho^2) / sqrt(n); 1 / sqrt(n) where it is 0.
    # 5 standard errors over these 15 distinct entries.
    se_rho = (1.0 - rho**2) / math.sqrt(_N)
    se_zero = 1.0 / math.sqrt(_N)
    want = np.eye(2 * dim)
    want[:dim, dim:] = want[dim:, :dim] = rho * np.eye(dim)
    se = np.where(want == rho, se_rho, se_zero)
    assert np.all(np.abs(corr - want) <= 5 * se + 1e-12), corr
    # Unit variances: standard error sqrt(2 / n).
    var = np.concatenate([x, y], axis=1).var(axis=0)
    assert np.all(np.abs(var - 1.0) <= 5 * math.sqrt(2.0 / _N)), var


def test_correlated_gaussian_plugin_mi_matches(gaussian_sample):
    mi, dim, x, y = gaussian_sample
    corr = np.corrcoef(np.concatenate([x, y], axis=1), rowvar=False)
    logdet = lambda c: np.linalg.slogdet(c)[1]
    estimate = -0.5 * (logdet(corr) - logdet(corr[:dim, :dim]) - logdet(corr[dim:, dim:]))
    # The plug-in MI is efficient: its variance is Var_p[log r] / n = dim rho^2 / n; its bias
    # from the dim^2 estimated cross-correlations is about dim^2 / (2 n).
    rho2 = float(tasks.rho_from_mi(mi, dim)) ** 2
    se = math.sqrt(dim * rho2 / _N)
    assert abs(estimate - mi) <= 5 * se + dim**2 / _N, (estimate, mi, se)


@pytest.mark.parametrize("mi", [8.0, 10.0, 12.0])
def test_gaussian_keeps_its_mi_at_many_nats_per_coordinate(mi):
    # One coordinate: the noise's share exp(-mi) is 3e-4..6e-6. Computed as sqrt(1 - rho^2) in
    # float32 it was 3 % off at 8 nats and 0 (y = x, infinite MI) from about 8.3 on.
    n = 100_000
    x, y = tasks.correlated_gaussian(jax.random.key(5), mi, n, 1)
    r = np.corrcoef(np.asarray(x, np.float64)[:, 0], np.asarray(y, np.float64)[:, 0])[0, 1]
    # Plug-in MI: standard error sqrt(rho^2 / n) ~ 1 / sqrt(n) (as above); 5 of them.
    assert abs(-0.5 * math.log1p(-(r**2)) - mi) <= 5 / math.sqrt(n), r


def test_mi_below_a_tasks_least_mi_is_an_error():
    for mi in (-0.5, float("nan"), float("inf")):  # inf returned y = x
        with pytest.raises(ValueError, match="`mi` must be a finite number of nats, at least 0 "):
            tasks.correlated_gaussian(jax.random.key(0), mi, 4, 2)
    task = tasks.get_task("student_t", dim=2, df=1.0)  # least MI 0.43 nats
    with pytest.raises(ValueError, match="`mi` must be a finite number of nats, at least 0.43"):
        task.sample(jax.random.key(0), 0.05, 4)
    task.sample(jax.random.key(0), task.min_mi, 4)  # the least MI itself is fine


def test_mi_beyond_what_float32_samples_carry_is_an_error():
    # Before: 20 nats in one coordinate returned y == x for 97 % of the pairs (an infinite MI).
    x, y = tasks.correlated_gaussian(jax.random.key(0), 20.0, 10_000, 2)  # 10 per coordinate
    assert np.mean(np.asarray(x) == np.asarray(y)) < 0.01
    for name in ("gaussian", "cubic", "spiral", "student_t", "cauchy"):
        task = tasks.get_task(name, dim=2)
        most = task.max_mi
        assert most == pytest.approx(task.min_mi + 2 * tasks.MAX_MI_PER_DIM)
        task.sample(jax.random.key(0), most, 4)
        with pytest.raises(ValueError, match="more than float32 samples of width 2 carry"):
            task.sample(jax.random.key(0), np.float32(most + 0.01), 4)
    for mi in ("1", True, None):  # a string passed the check and failed later, inside JAX
        with pytest.raises(ValueError, match="`mi` must be a finite number of nats"):
            tasks.correlated_gaussian(jax.random.key(0), mi, 4, 2)


def test_float64_samples_carry_more_mi_per_coordinate():
    # Under jax_enable_x64 the samplers draw float64: the float32 limit (12 nats per
    # coordinate) refused MI the samples carry. 30 nats in one coordinate: no pair has y == x,
    # and the noise has the share the MI says; beyond 32 nats the same refusal, naming float64.
    with jax.enable_x64(True):
        assert tasks.max_mi_per_dim() == tasks.MAX_MI_PER_DIM_FLOAT64 == 32.0
        x, y = tasks.correlated_gaussian(jax.random.key(0), 30.0, 10_000, 1)
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == np.float64 and np.mean(x == y) < 0.001
        np.testing.assert_allclose(np.std(y - x), np.exp(-30.0), rtol=0.03)
        task = tasks.get_task("cubic", dim=2)
        assert task.max_mi == pytest.approx(64.0)
        with pytest.raises(ValueError, match="more than float64 samples of width 2 carry"):
            task.sample(jax.random.key(0), 64.5, 4)
    assert tasks.max_mi_per_dim() == 12.0  # back in float32


def test_gaussian_sampler_vmaps_over_keys():
    keys = jax.random.split(jax.random.key(3), 4)
    xs, ys = jax.vmap(lambda k: tasks.correlated_gaussian(k, 1.0, 16, 2))(keys)
    for k in range(4):
        x, y = tasks.correlated_gaussian(keys[k], 1.0, 16, 2)
        np.testing.assert_allclose(xs[k], x, rtol=1e-6)
        np.testing.assert_allclose(ys[k], y, rtol=1e-6)


# --------------------------------------------------------------------------------------------
# Invertible transforms: cubic and spiral.


def test_cubic_is_the_gaussian_task_with_y_cubed():
    mi, dim = 1.5, 3
    key = jax.random.key(0)
    xc, yc = jax.jit(tasks.get_task("cubic", dim=dim).sample, static_argnums=2)(key, mi, _N)
    xg, yg = tasks.get_task("gaussian", dim=dim).sample(key, mi, _N)
    np.testing.assert_allclose(xc, xg, rtol=1e-5, atol=1e-6)  # jit vs eager rounding
    yc = np.asarray(yc, np.float64)
    assert not np.allclose(yc, yg, atol=0.1)
    # y -> y^3 is inverted by the real cube root (float32 rounding of y^3 only).
    np.testing.assert_allclose(np.cbrt(yc), yg, rtol=1e-5, atol=1e-6)
    # So cbrt(y) is Gaussian with correlation rho with x (5 standard errors (1 - rho^2)/sqrt(n)).
    rho = float(tasks.rho_from_mi(mi, dim))
    x = np.asarray(xc, np.float64)
    for k in range(dim):
        r = np.corrcoef(x[:, k], np.cbrt(yc[:, k]))[0, 1]
        assert abs(r - rho) <= 5 * (1 - rho**2) / math.sqrt(_N), (k, r, rho)
        # While the linear correlation with y^3 itself is 3 rho / sqrt(15) (E[z^4] = 3,
        # E[z^6] = 15), i.e. the transform really is applied. SE of r is below 1 / sqrt(n)
        # times a kurtosis factor ~ 3 for a cubed Gaussian.
        r3 = np.corrcoef(x[:, k], yc[:, k])[0, 1]
        assert abs(r3 - 3 * rho / math.sqrt(15)) <= 5 * 3 / math.sqrt(_N), (k, r3)


def test_cauchy_is_the_gaussian_task_with_cauchy_marginals():
    mi, dim = 1.5, 3
    key = jax.random.key(0)
    xc, yc = jax.jit(tasks.get_task("cauchy", dim=dim).sample, static_argnums=2)(key, mi, _N)
    xg, yg = (np.asarray(a, np.float64) for a in tasks.correlated_gaussian(key, mi, _N, dim))
    xc, yc = np.asarray(xc, np.float64), np.asarray(yc, np.float64)
    # Each coordinate through the Cauchy CDF and the normal quantile gives back the Gaussian
    # sample (float32 rounding only): a monotone map per coordinate, so the MI is mi.
    back = lambda c: scipy.special.ndtri(0.5 + np.arctan(c) / np.pi)  # noqa: E731
    np.testing.assert_allclose(back(xc), xg, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(back(yc), yg, rtol=1e-4, atol=1e-4)
    # Standard Cauchy marginals: quartiles -1, 0, 1 (each within 5 standard errors, at most
    # 2 pi sqrt(3/16) / sqrt(n) = 2.72 / sqrt(n) for a Cauchy sample quartile), extreme values
    # far beyond any Gaussian's.
    for c in (xc, yc):
        q = np.percentile(c, [25, 50, 75], axis=0)
        np.testing.assert_allclose(q, np.array([[-1.0], [0.0], [1.0]]).repeat(dim, 1),
                                   atol=5 * 2.72 / math.sqrt(_N))  # fmt: skip
        assert np.abs(c).max() > 100


@pytest.mark.parametrize("dim", [2, 5])
def test_spiral_is_a_norm_preserving_invertible_rotation(dim):
    mi, n = 1.0, 4096
    key = jax.random.key(1)
    xs, ys = jax.jit(tasks.get_task("spiral", dim=dim).sample, static_argnums=2)(key, mi, n)
    xg, yg = tasks.get_task("gaussian", dim=dim).sample(key, mi, n)
    # (jit vs eager: float32 rounding only)
    np.testing.assert_allclose(ys, yg, rtol=1e-5, atol=1e-6)
    xs, xg = np.asarray(xs, np.float64), np.asarray(xg, np.float64)
    np.testing.assert_allclose(np.linalg.norm(xs, axis=1), np.linalg.norm(xg, axis=1), rtol=1e-5)
    assert np.mean(np.abs(xs - xg)) > 0.1  # it does move the points
    # Invert: the angle 0.5 |x|^2 is readable from the output (norm preserved); rotate each
    # coordinate pair back. float32 angles up to ~15 rad: absolute error ~1e-5.
    angle = 0.5 * np.sum(xs**2, axis=1)
    cos, sin = np.cos(angle), np.sin(angle)
    back = xs.copy()
    for p in range(dim // 2):
        a, b = xs[:, 2 * p], xs[:, 2 * p + 1]
        back[:, 2 * p] = cos * a + sin * b
        back[:, 2 * p + 1] = -sin * a + cos * b
    np.testing.assert_allclose(back, xg, atol=1e-4)
    if dim % 2:
        np.testing.assert_allclose(xs[:, -1], xg[:, -1], rtol=1e-6)


# --------------------------------------------------------------------------------------------
# Student-t.


def _logpdf_t(z, df):
    """Standard multivariate Student-t log density, ``z`` [n, k], float64."""
    k = z.shape[1]
    q = np.sum(z**2, axis=1)
    return (
        gammaln((df + k) / 2)
        - gammaln(df / 2)
        - k / 2 * np.log(df * np.pi)
        - (df + k) / 2 * np.log1p(q / df)
    )


@pytest.mark.parametrize("df,dim,mi", [(3.0, 2, 1.0), (5.0, 5, 2.0)])
def test_student_t_closed_form_mi_by_monte_carlo(df, dim, mi):
    task = tasks.get_task("student_t", dim=dim, df=df)
    assert task.min_mi == pytest.approx(float(tasks.student_t_mi_correction(df, dim, dim)))
    assert mi > task.min_mi
    x, y = jax.jit(task.sample, static_argnums=2)(jax.random.key(5), mi, _N)
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    # The sampler's Gaussian correlation (same float32 computation as the sampler).
    rho = float(tasks.rho_from_mi(mi - tasks.student_t_mi_correction(df, dim, dim), dim))
    s = math.sqrt(1.0 - rho**2)
    # (x, y) is Student-t with scale [[I, rho I], [rho I, I]]: whiten with the Cholesky factor.
    joint = _logpdf_t(np.concatenate([x, (y - rho * x) / s], axis=1), df) - dim * math.log(s)
    pointwise = joint - _logpdf_t(x, df) - _logpdf_t(y, df)
    mean, se = pointwise.mean(), pointwise.std() / math.sqrt(_N)
    assert abs(mean - mi) <= 5 * se, (mean, mi, se)
    # The correction is not negligible here: leaving it out would fail the check.
    assert float(tasks.student_t_mi_correction(df, dim, dim)) > 20 * se


def test_student_t_samples_stay_finite_at_small_df():
    # df = 0.25: the chi^2 draw underflowed to 0 in float32 for some rows (infinite samples);
    # drawn as a log-gamma it does not (the tails themselves reach 1e28 here).
    task = tasks.get_task("student_t", dim=2, df=0.25)
    x, y = task.sample(jax.random.key(1), task.min_mi + 1.0, 100_000)
    assert np.all(np.isfinite(np.asarray(x))) and np.all(np.isfinite(np.asarray(y)))


def test_student_t_below_the_least_sampled_df_is_refused():
    """At df = 0.1 the row's scale sqrt(df / w) itself passes float32's range for ~1.5e-4 of the
    rows (+-inf samples, a review's count in 1e6; e^(-L df) with L = log of float32's largest):
    refused by name, at the task and at the sampler; the MI correction alone is still given."""
    assert tasks.least_sampled_df() == pytest.approx(np.log(1e9) / np.log(3.4028235e38))
    assert np.exp(-np.log(3.4028235e38) * 0.1) == pytest.approx(1.4e-4, rel=0.1)
    with pytest.raises(ValueError, match="`df` of 0.1 is below 0.234"):
        tasks.get_task("student_t", dim=2, df=0.1)
    with pytest.raises(ValueError, match="`df` of 0.2 is below"):
        tasks.student_t(jax.random.key(0), 1.0, 4, 2, 0.2)
    assert tasks.student_t_mi_correction(0.1, 2, 2) > 0


def test_a_float32_copy_of_the_least_mi_is_that_mi():
    """A staircase level at the family's least MI is a float32 copy of it, which may round
    below it (df = 0.5, dim 1): it was refused as below the least MI."""
    task = tasks.get_task("student_t", dim=1, df=0.5)
    level = tasks.staircase_mi(0, levels=(task.min_mi,), steps_per_level=1)
    assert float(level) < task.min_mi  # the case: rounded down
    x, _ = task.sample(jax.random.key(0), level, 4)
    assert x.shape == (4, 1)
    with pytest.raises(ValueError, match="at least"):
        task.sample(jax.random.key(0), task.min_mi - 1e-3, 4)
    # A least MI of 0 has no margin: a negative MI gave NaN samples.
    for name in ("gaussian", "cubic", "spiral", "cauchy"):
        with pytest.raises(ValueError, match="at least"):
            tasks.get_task(name, dim=2).sample(jax.random.key(0), -4e-7, 8)


def test_a_float32_copy_of_the_most_mi_is_that_mi():
    """The same at the top: a float32 copy of a Student-t task's `max_mi` (df 3, dim 20) rounds
    above it, and was refused as more than the samples carry."""
    task = tasks.get_task("student_t", dim=20, df=3.0)
    level = tasks.staircase_mi(0, levels=(task.max_mi,), steps_per_level=1)
    assert float(level) > task.max_mi  # the case: rounded up
    x, _ = task.sample(jax.random.key(0), level, 4)
    assert bool(jnp.all(jnp.isfinite(x)))
    with pytest.raises(ValueError, match="more than float32 samples"):
        task.sample(jax.random.key(0), task.max_mi + 1e-3, 4)


def test_a_step_beyond_jaxs_integer_is_refused():
    # Without x64 it was cast to int32 and wrapped: step 2**31 read the first level, 2 nats.
    with pytest.raises(ValueError, match="`step` must be at most 2147483647"):
        tasks.staircase_mi(np.int64(2**31), steps_per_level=4000)


def _t_entropy_offset_by_quadrature(dim, df):
    """Entropy of a standard ``dim``-d Student-t minus ``dim/2 log(df pi)``, from its density
    (`_logpdf_t`) with the expectation done numerically: for ``z`` Student-t,
    ``b = (|z|^2/df) / (1 + |z|^2/df) ~ Beta(dim/2, df/2)``, so
    ``E[log1p(|z|^2/df)] = E[-log(1 - b)]``, a QUADPACK integral against the Beta weight
    (``weight="alg-logb"``: ``t^(a-1) (1-t)^(b-1) log(1-t)``), not the digamma formula."""
    a, b = dim / 2, df / 2
    integral, _ = integrate.quad(lambda t: -1.0, 0.0, 1.0, weight="alg-logb", wvar=(a - 1, b - 1))
    mean_log1p = integral / math.exp(gammaln(a) + gammaln(b) - gammaln(a + b))
    return gammaln(b) - gammaln(a + b) + (a + b) * mean_log1p


@pytest.mark.parametrize("dim", [1, 2, 5])
def test_student_t_correction_positive_and_decreasing_for_moderate_df(dim):
    dfs = [0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0]
    got = np.array([tasks.student_t_mi_correction(df, dim, dim) for df in dfs])
    offset = _t_entropy_offset_by_quadrature
    want = np.array([2 * offset(dim, df) - offset(2 * dim, df) for df in dfs])
    # Both in float64, with the same cancellation: the correction is a difference of terms up to
    # 3e5 times larger (dim = 1, df = 30), resolved to ~6e-11 relative (eps64 = 2.2e-16); the
    # quadrature adds ~1e-13. Measured agreement: 8e-12 at worst.
    np.testing.assert_allclose(got, want, rtol=2e-10, atol=0.0)
    assert np.all(got > 0)
    assert np.all(np.diff(got) < 0)
    if dim == 2:  # In closed form at df = 2: log 2 - 1/2.
        np.testing.assert_allclose(got[dfs.index(2.0)], math.log(2.0) - 0.5, rtol=1e-14)


def test_student_t_correction_tends_to_zero_for_large_df():
    dfs = [3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 1e4, 1e5]
    got = np.array([float(tasks.student_t_mi_correction(df, 2, 2)) for df in dfs])
    assert np.all(got > 0), got
    assert np.all(np.diff(got) < 0), got
    # The float64 values are below 1e-7 from df = 1e4 on.
    assert np.all(got[dfs.index(1e4) :] < 1e-7), got


# --------------------------------------------------------------------------------------------
# Staircase schedule.


def test_staircase_mi_levels_and_clamping():
    levels = (2.0, 4.0, 6.0)
    steps = jnp.array([0, 1, 9, 10, 19, 20, 29, 30, 31, 1000])
    want = [2, 2, 2, 4, 4, 6, 6, 6, 6, 6]
    f = jax.jit(lambda s: tasks.staircase_mi(s, levels=levels, steps_per_level=10))
    np.testing.assert_array_equal(f(steps), want)
    np.testing.assert_array_equal([float(f(s)) for s in steps], want)
    # The default staircase (2, 4, 6, 8, 10 nats).
    np.testing.assert_array_equal(
        tasks.staircase_mi(jnp.array([0, 4, 5, 24, 25, 10**6]), steps_per_level=5),
        [2, 2, 4, 10, 10, 10],
    )


# --------------------------------------------------------------------------------------------
# Registry and jit.


def test_the_registry_lists_the_built_in_tasks():
    assert {"gaussian", "cubic", "spiral", "student_t", "cauchy"} <= set(tasks.available_tasks())


@pytest.mark.parametrize("name", tasks.available_tasks())  # a fork's tasks too
def test_sample_under_jit_with_traced_mi(name):
    task = tasks.get_task(name, dim=3)
    assert task.name == name and task.dim == 3
    chex.clear_trace_counter()
    counted = chex.assert_max_traces(lambda k, m: task.sample(k, m, 8), n=1)
    sample = jax.jit(counted)
    key = jax.random.key(4)
    mi_low, mi_high = task.min_mi + 0.5, task.min_mi + 3.0
    x1, y1 = sample(key, jnp.float32(mi_low))
    x2, y2 = sample(key, jnp.float32(mi_high))  # same trace: mi is traced
    assert x1.shape == y1.shape == (8, 3)
    assert x1.dtype == y1.dtype == jnp.float32
    eager = task.sample(key, jnp.float32(mi_low), 8)
    # jit vs eager: float32 rounding (fused multiply-adds) in y = rho x + s eps, whose terms are
    # as large as the largest sample, so the absolute tolerance scales with it.
    for got, want in zip((x1, y1), eager, strict=True):
        scale = float(np.abs(np.asarray(want)).max())
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale)
    # MI is used: a larger MI ties y more closely to x (same noise, different rho).
    assert not np.allclose(y1, y2)


def test_public_samplers_check_their_arguments():
    key = jax.random.key(0)
    cases = [
        (lambda: tasks.correlated_gaussian(key, 1.0, 8, 0), "`dim`"),
        (lambda: tasks.correlated_gaussian(key, 1.0, 8, -1), "`dim`"),
        (lambda: tasks.correlated_gaussian(key, 1.0, 0, 2), "`batch`"),
        (lambda: tasks.correlated_gaussian(key, 1.0, 8.0, 2), "`batch`"),
        (lambda: tasks.student_t(key, 2.0, 8, 2, -1.0), "`df`"),
        (lambda: tasks.student_t(key, 2.0, 8, 2, 0.0), "`df`"),
        (lambda: tasks.student_t(key, 2.0, 8, 2, float("nan")), "`df`"),
        (lambda: tasks.student_t(key, 2.0, 8, 2, True), "`df`"),  # ran as df = 1
        (lambda: tasks.student_t(key, 2.0, 8, 0, 3.0), "`dim`"),
        (lambda: tasks.student_t(key, 2.0, -8, 2, 3.0), "`batch`"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            call()


def test_staircase_rejects_a_concrete_negative_step_and_clamps_a_traced_one():
    """(A negative index used to wrap around: step -1 gave the last level.)"""
    for step in (-1, np.array([0, 5, -3])):
        with pytest.raises(ValueError, match="`step`"):
            tasks.staircase_mi(step, steps_per_level=5)
    traced = jax.jit(lambda s: tasks.staircase_mi(s, steps_per_level=5))
    np.testing.assert_array_equal(traced(jnp.array([-1, -100, 0, 5])), [2, 2, 2, 4])


@pytest.mark.parametrize("name", ["gaussian", "cubic", "spiral", "student_t", "cauchy"])
def test_sampling_needs_one_prng_key(name):
    # Before: an integer seed failed deep inside jax.random ("invalid PRNG key data").
    task = tasks.get_task(name, dim=2)
    for bad in (0, np.int32(3), jax.random.split(jax.random.key(0), 2), jnp.zeros(2)):
        with pytest.raises(TypeError, match=r"`key` must be one PRNG key, e.g. `jax.random.key"):
            task.sample(bad, 1.0, 4)
    for key in (jax.random.key(0), jax.random.PRNGKey(0)):  # typed, and raw uint32 [2]
        assert task.sample(key, 1.0, 4)[0].shape == (4, 2)
    keys = jax.random.split(jax.random.key(0), 3)
    assert jax.jit(jax.vmap(lambda k: task.sample(k, 1.0, 4)[1]))(keys).shape == (3, 4, 2)


def test_get_task_errors():
    with pytest.raises(KeyError) as info:
        tasks.get_task("gausian", dim=2)
    assert "'gausian'" in str(info.value) and "Did you mean 'gaussian'" in str(info.value)
    for dim in (0, -1, 2.0):
        with pytest.raises(ValueError, match="dim"):
            tasks.get_task("gaussian", dim=dim)
    with pytest.raises(ValueError, match="dim"):
        tasks.get_task("spiral", dim=1)
    for df in (0.0, float("inf")):
        with pytest.raises(ValueError, match="df"):
            tasks.get_task("student_t", dim=2, df=df)
    with pytest.raises(ValueError, match="dim"):
        tasks.get_task("gaussian", dim=True)
    assert tasks.get_task("gaussian", dim=np.int64(3)).dim == 3
    with pytest.raises(ValueError, match="steps_per_level"):
        tasks.staircase_mi(3, steps_per_level=0)
    # Before: an IndexError, NaN samples from a negative MI, an indexer error naming nothing.
    for levels in ((), (-1.0,), (2.0, float("nan"))):
        with pytest.raises(ValueError, match="`levels` must be finite MI values >= 0"):
            tasks.staircase_mi(3, levels=levels, steps_per_level=2)
    for step in (3.0, np.array([0.0, 1.0])):
        with pytest.raises(TypeError, match="`step` must be an integer"):
            tasks.staircase_mi(step, steps_per_level=2)
    with pytest.raises(ValueError, match="`speed` must be a finite number"):
        tasks.get_task("spiral", dim=2, speed=float("nan"))
    with pytest.raises(TypeError, match="speeed"):
        tasks.get_task("spiral", dim=2, speeed=1.0)


def test_gaussian_log_ratio_is_the_log_density_ratio():
    """Against scipy: log N([x, y]; 0, [[I, rho I], [rho I, I]]) - log N(x) - log N(y)."""
    from scipy.stats import multivariate_normal

    dim, mi = 3, 1.5
    x, y = tasks.correlated_gaussian(jax.random.key(3), mi, 5, dim)
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    rho = float(tasks.rho_from_mi(mi, dim))
    cov = np.block([[np.eye(dim), rho * np.eye(dim)], [rho * np.eye(dim), np.eye(dim)]])
    joint = multivariate_normal(np.zeros(2 * dim), cov)
    marginal = multivariate_normal(np.zeros(dim), np.eye(dim))
    want = np.array(
        [
            [joint.logpdf(np.concatenate([xi, yj])) - marginal.logpdf(xi) - marginal.logpdf(yj)
             for yj in y]
            for xi in x
        ]
    )  # fmt: skip
    np.testing.assert_allclose(tasks.gaussian_log_ratio(x, y, mi), want, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=r"`x` and `y` must both have shape \[batch, dim\]"):
        tasks.gaussian_log_ratio(x, y[:, :2], mi)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: tasks.rho_from_mi(-1.0, 2), r"`mi` must be nats >= 0, got \[-1.\]"),
        (lambda: tasks.rho_from_mi(jnp.array([1.0, jnp.nan]), 2), r"`mi` .* got \[nan\]"),
        (lambda: tasks.noise_from_mi(-0.5, 2), "`mi` must be nats >= 0"),
        (lambda: tasks.rho_from_mi(1.0, 0), "`dim` must be an integer >= 1, got 0"),
        (lambda: tasks.noise_from_mi(1.0, 2.5), "`dim` must be an integer >= 1"),
        (lambda: tasks.mi_from_rho(1.5, 2), r"`rho` must be a correlation in \[-1, 1\]"),
        (lambda: tasks.mi_from_rho("0.5", 2), "`rho` must be a correlation"),
        (lambda: tasks.gaussian_log_ratio(jnp.ones((4, 2)), jnp.ones((4, 2)), -1.0),
         "`mi` must be finite nats >= 0"),
        (lambda: tasks.gaussian_log_ratio(jnp.ones((4, 2)), jnp.ones((4, 2)), jnp.inf),
         r"`mi` must be finite nats >= 0, got \[inf\]"),
        (lambda: tasks.student_t_mi_correction(0.0, 2, 2), "`df` must be a positive finite"),
        (lambda: tasks.student_t_mi_correction(3.0, 2, 0), "`dim_y` must be an integer >= 1"),
    ],
)  # fmt: skip
def test_closed_form_helpers_refuse_bad_values(call, match):
    # They returned NaN (rho from a negative MI, the log ratio at infinite MI), divided by zero
    # or raised deep in scipy; traced values are not checked (below).
    with pytest.raises(ValueError, match=match):
        call()


def test_closed_form_helpers_take_traced_and_limit_values():
    # Under jit: no value check (a schedule's MI is traced), the same numbers; `dim` traced
    # too, or a JAX integer, or vmapped (the checks of the first version refused them).
    want = [0.0, np.sqrt(1 - np.exp(-2.0))]
    rho = jax.jit(tasks.rho_from_mi, static_argnums=1)(jnp.array([0.0, 2.0]), 2)
    np.testing.assert_allclose(rho, want, rtol=1e-6)
    np.testing.assert_allclose(
        jax.jit(tasks.rho_from_mi)(jnp.array([0.0, 2.0]), 2), want, rtol=1e-6
    )
    np.testing.assert_allclose(tasks.rho_from_mi(2.0, jnp.int32(2)), want[1], rtol=1e-6)
    dims = jnp.array([1, 2])
    np.testing.assert_allclose(
        jax.vmap(tasks.noise_from_mi, in_axes=(None, 0))(2.0, dims),
        np.exp(-2.0 / np.array([1, 2])),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        tasks.mi_from_rho(jnp.bfloat16(0.5), 1), -0.5 * np.log(0.75), rtol=1e-2
    )
    assert float(tasks.rho_from_mi(jnp.inf, 3)) == 1.0
    assert float(tasks.noise_from_mi(jnp.inf, 3)) == 0.0
    assert float(tasks.mi_from_rho(-1.0, 2)) == np.inf


@pytest.mark.parametrize("mi, dim", [(0.5, 2), (5.0, 1), (8.0, 1), (9.0, 1), (11.0, 1), (45.0, 5)])
def test_gaussian_log_ratio_stays_exact_in_float32_at_high_mi_per_coordinate(mi, dim):
    # E_p[log ratio] = mi; each diagonal entry is mi + sum(y^2 - eps^2) / 2 (std about
    # sqrt(dim), y ~ x here). Expanded, 1 - rho^2 and the quadratic cancelled: 7.73 nats at 8,
    # NaN from 9.
    x, y = tasks.correlated_gaussian(jax.random.key(4), mi, 2048, dim)
    scores = np.asarray(tasks.gaussian_log_ratio(x, y, mi))
    diag = np.diag(scores)
    assert np.all(np.isfinite(diag))
    assert abs(diag.mean() - mi) < 4 * np.sqrt(dim / diag.size), diag.mean()
    # Every entry against the same form in float64 (at 5 nats and d = 1 the expanded form was
    # 179 nats off the diagonal); float32's relative error on these huge negative scores.
    x64, y64 = np.asarray(x, np.float64)[:64], np.asarray(y, np.float64)[:64]
    rho, noise = np.sqrt(-np.expm1(-2 * mi / dim)), np.exp(-mi / dim)
    want = mi + np.sum(
        0.5 * y64[None] ** 2 - 0.5 * ((y64[None] - rho * x64[:, None]) / noise) ** 2, axis=-1
    )
    np.testing.assert_allclose(scores[:64, :64], want, rtol=1e-5, atol=2e-2)


def test_a_registered_task_is_built_by_name_and_checked(monkeypatch):
    monkeypatch.setattr(tasks, "_TASKS", dict(tasks._TASKS))  # noqa: SLF001
    # (Names of its own: a fork may register a "sinh" task of its own.)

    def sinh_task(dim):  # y -> sinh(y): invertible, so the MI is the Gaussian pair's
        def sample(key, mi, batch):
            x, y = tasks.correlated_gaussian(key, mi, batch, dim)
            return x, jnp.sinh(y)

        return tasks.Task("test_sinh", dim, sample)

    tasks.register_task("test_sinh", sinh_task)
    assert "test_sinh" in tasks.available_tasks()
    x, y = tasks.get_task("test_sinh", dim=3).sample(jax.random.key(0), 2.0, 8)
    gx, gy = tasks.get_task("gaussian", dim=3).sample(jax.random.key(0), 2.0, 8)
    np.testing.assert_array_equal(x, gx)
    np.testing.assert_allclose(y, np.sinh(gy), rtol=1e-6)
    # The staircase takes it by name.
    from configs import staircase as staircase_config
    from experiments import staircase

    config = staircase_config.get_config("quick")
    config.tasks = ("test_sinh",)
    staircase.validate_config(config)
    with pytest.raises(ValueError, match="the task name 'gaussian' is already registered"):
        tasks.register_task("gaussian", sinh_task)
    with pytest.raises(TypeError, match="task 'bad' must be registered with a callable"):
        tasks.register_task("bad", "sinh")

    def buggy(dim, scale=1.0):
        return tasks.Task("buggy", dim, jnp.zeros(dim, dtype=str(dim)), 0.0)

    tasks.register_task("buggy", buggy)
    with pytest.raises(TypeError) as info:  # read "bad hyperparameters [] for task 'buggy'"
        tasks.get_task("buggy", dim=3)
    assert "bad hyperparameters" not in str(info.value)
    with pytest.raises(
        TypeError, match=r"unknown hyperparameters \['df'\] for task 'buggy'; known: \['scale'\]"
    ):
        tasks.get_task("buggy", dim=3, df=2.0)
    tasks.register_task("bare", lambda dim: sinh_task(dim).sample)  # a sampler, not a Task
    with pytest.raises(TypeError, match="the factory of task 'bare' must return a `Task`"):
        tasks.get_task("bare", dim=2)


@pytest.mark.parametrize("df, dim_x, dim_y", [(3.0, 1, 3), (1.5, 2, 5)])
def test_student_t_correction_for_unequal_widths_by_monte_carlo(df, dim_x, dim_y):
    """With an identity scale matrix the Gaussian part of the MI is 0, so the MI of the t pair
    (x [dim_x], y [dim_y]) is the correction itself: checked against a float64 Monte Carlo
    mean of log p(x, y) - log p(x) - log p(y) from the densities (not the entropy formula),
    for widths that differ (the samplers only ever use dim_x = dim_y), and symmetric in them."""
    rng = np.random.default_rng(0)
    n = 400_000
    z = rng.standard_normal((n, dim_x + dim_y))
    t = z / np.sqrt(rng.chisquare(df, (n, 1)) / df)
    pointwise = _logpdf_t(t, df) - _logpdf_t(t[:, :dim_x], df) - _logpdf_t(t[:, dim_x:], df)
    mean, se = pointwise.mean(), pointwise.std() / math.sqrt(n)
    got = tasks.student_t_mi_correction(df, dim_x, dim_y)
    assert abs(got - mean) <= 5 * se, (got, mean, se)  # se ~ 1e-3 here
    assert tasks.student_t_mi_correction(df, dim_y, dim_x) == pytest.approx(got, rel=1e-12)


def test_a_concrete_non_integer_jax_dim_is_refused():
    """`dim` as a concrete JAX array is checked like a Python one: 2.5 is no width (it gave
    rho for 2.5 coordinates silently); an integer-valued one is taken."""
    with pytest.raises(ValueError, match="`dim` must be an integer >= 1"):
        tasks.rho_from_mi(1.0, jnp.array(2.5))
    with pytest.raises(ValueError, match="`dim` must be an integer >= 1"):
        tasks.noise_from_mi(1.0, jnp.array(0))
    np.testing.assert_allclose(tasks.noise_from_mi(1.0, jnp.array(2.0)), math.exp(-0.5), rtol=1e-6)


def test_staircase_mi_is_float32_under_x64():
    """Documented: float32 MI (a staircase level is a float32 value, which `_check_mi`'s
    float32 margin expects), under jax_enable_x64 too."""
    with jax.enable_x64(True):
        mi = tasks.staircase_mi(jnp.array([0, 10]), levels=(2.0, 4.0), steps_per_level=10)
    assert mi.dtype == jnp.float32
    np.testing.assert_array_equal(mi, [2.0, 4.0])


def test_mi_from_rho_keeps_float64_under_x64():
    """Under jax_enable_x64, mi_from_rho computes in float64 (its docstring's remedy for rho
    near 1): 10 nats per coordinate, where 1 - rho^2 = e^-20 and a float32 rho rounds to 1
    (an infinite MI)."""
    rho = math.sqrt(-math.expm1(-20.0))  # float64 rho of 10 nats in dim 1
    with jax.enable_x64(True):
        mi = tasks.mi_from_rho(rho, 1)
        assert mi.dtype == jnp.float64
        # |d I / d rho| = rho / (1 - rho^2) ~ 5e8: float64 rounding of rho (1e-16) gives ~1e-7.
        assert abs(float(mi) - 10.0) < 1e-5, float(mi)


def test_a_staircase_level_of_zero_nats_is_allowed():
    """Levels are MI values >= 0: a level of 0 nats (independent x and y) is one."""
    mi = tasks.staircase_mi(jnp.array([0, 1, 2]), levels=(0.0, 2.0), steps_per_level=1)
    np.testing.assert_array_equal(mi, [0.0, 2.0, 2.0])
    with pytest.raises(ValueError, match="`levels` must be finite MI values >= 0"):
        tasks.staircase_mi(0, levels=(-1.0, 2.0), steps_per_level=1)


def test_float64_samples_take_a_smaller_student_t_df():
    """Under jax_enable_x64 the least df is float64's (0.029, as documented): df = 0.1, refused
    in float32, builds and gives finite float64 samples; below 0.029 it is refused."""
    with jax.enable_x64(True):
        task = tasks.get_task("student_t", dim=2, df=0.1)
        x, y = task.sample(jax.random.key(1), task.min_mi + 1.0, 20_000)
        assert x.dtype == jnp.float64
        assert np.all(np.isfinite(np.asarray(x))) and np.all(np.isfinite(np.asarray(y)))
        with pytest.raises(ValueError, match="`df` of 0.02 is below 0.029"):
            tasks.get_task("student_t", dim=2, df=0.02)


def test_student_t_traced_mi_below_the_least_is_clamped_to_it():
    """Traced (a staircase level under jit), an MI below the Student-t family's least is not
    checked: it samples the least MI (Gaussian part 0), finite, not NaN from a negative
    Gaussian MI."""
    task = tasks.get_task("student_t", dim=2, df=3.0)
    sample = jax.jit(task.sample, static_argnums=2)
    key = jax.random.key(4)
    x, y = sample(key, 0.5 * task.min_mi, 256)
    assert np.all(np.isfinite(np.asarray(x))) and np.all(np.isfinite(np.asarray(y)))
    x0, y0 = sample(key, task.min_mi, 256)
    np.testing.assert_allclose(x, x0, rtol=1e-6)
    np.testing.assert_allclose(y, y0, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["gaussian", "cubic", "spiral", "cauchy", "student_t"])
def test_same_key_same_samples_other_keys_independent_samples(name):
    """The key is the only source of randomness: the same key gives the same pair, and two
    keys give independent ones. Independence is read from the rows' log norms, which also
    carry the Student-t rows' shared chi^2 scale: their correlation across two keys within
    5 / sqrt(n) of 0 (before: a sampler that ignored the key, or drew the t scale from a fixed
    key (log-norm correlation ~0.36 at df = 3), passed every test)."""
    n = 20_000
    task = tasks.get_task(name, dim=2)
    sample = jax.jit(task.sample, static_argnums=2)
    mi = task.min_mi + 1.0
    k1, k2 = jax.random.split(jax.random.key(11))
    a, b = sample(k1, mi, n), sample(k1, mi, n)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)
    c = sample(k2, mi, n)
    for u, v in zip(a, c, strict=True):
        lu, lv = (np.log(np.linalg.norm(np.asarray(t, np.float64), axis=1)) for t in (u, v))
        r = np.corrcoef(lu, lv)[0, 1]
        assert abs(r) < 5 / math.sqrt(n), (name, r)
