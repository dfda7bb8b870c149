"""Score estimators (`mi_jax.score`) and MIGE gradients (`mi_jax.mige`) against closed forms."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mi_jax import mige, score


def _correlated_gaussian(dim, num, seed=0):
    a = jax.random.normal(jax.random.key(100 + dim), (dim, dim)) / np.sqrt(dim) + jnp.eye(dim)
    mean = 0.3 * jnp.arange(dim, dtype=jnp.float32)
    x = mean[None, :] + jax.random.normal(jax.random.key(seed), (num, dim)) @ a.T
    return x, mean, a @ a.T


def _rel_rmse(est, true):
    return float(jnp.sqrt(jnp.mean((est - true) ** 2)) / jnp.sqrt(jnp.mean(true**2)))


# Measured at these seeds (1000 samples, median bandwidth): stein 0.17 / 0.33, ssge 0.20 / 0.30
# for d = 2 / 10. The tolerances leave room for other seeds; predicting zero scores 1.0.
@pytest.mark.parametrize("dim, tol", [(2, 0.3), (10, 0.45)])
@pytest.mark.parametrize(
    "estimator", [lambda s: score.stein_score(s, eta=0.1), lambda s: score.ssge_score(s)]
)
def test_recovers_a_correlated_gaussian_score(dim, tol, estimator):
    x, mean, cov = _correlated_gaussian(dim, 1000)
    est = jax.jit(estimator)(x)
    assert est.shape == x.shape
    assert _rel_rmse(est, score.gaussian_score(x, mean, cov)) < tol


@pytest.mark.parametrize("dim, tol", [(2, 0.3), (10, 0.45)])
def test_ssge_out_of_sample(dim, tol):
    x, mean, cov = _correlated_gaussian(dim, 1000)
    points, _, _ = _correlated_gaussian(dim, 300, seed=7)
    est = jax.jit(score.ssge_score)(x, points)
    assert est.shape == points.shape
    assert _rel_rmse(est, score.gaussian_score(points, mean, cov)) < tol


def test_ssge_with_every_eigenfunction_is_stein_without_ridge():
    """Both equal K^{-1} D / sigma^2 (module docstring); a float64 numpy reference on a
    well-conditioned Gram matrix (narrow bandwidth)."""
    x = np.asarray(jax.random.normal(jax.random.key(0), (30, 3)), np.float64)
    sigma = 0.4
    k = np.exp(-((x[:, None] - x[None]) ** 2).sum(-1) / (2 * sigma**2))
    assert np.linalg.cond(k) < 1e3
    d = k @ x - k.sum(1, keepdims=True) * x
    expected = np.linalg.solve(k, d) / sigma**2
    xf = jnp.asarray(x, jnp.float32)
    full = jax.jit(lambda x: score.ssge_score(x, num_eigen=30, bandwidth=sigma))(xf)
    stein = jax.jit(lambda x: score.stein_score(x, eta=1e-6, bandwidth=sigma))(xf)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(full, expected, atol=1e-3 * scale)
    np.testing.assert_allclose(stein, expected, atol=1e-3 * scale)
    # Out of sample, SSGE's eigenfunctions extended by the kernel: k(p, X) K^{-2} D / sigma^2
    # (catches the given bandwidth left out of k(p, X)).
    p = np.asarray(jax.random.normal(jax.random.key(9), (10, 3)), np.float64)
    k_p = np.exp(-((p[:, None] - x[None]) ** 2).sum(-1) / (2 * sigma**2))
    expected = k_p @ np.linalg.solve(k, np.linalg.solve(k, d)) / sigma**2
    points = jnp.asarray(p, jnp.float32)
    outside = score.ssge_score(xf, points, num_eigen=30, bandwidth=sigma)
    np.testing.assert_allclose(outside, expected, atol=2e-2 * np.abs(expected).max())


def _stein_reference(x, sigma, eta):
    """Li & Turner's estimate at the samples, in float64 NumPy from the formula."""
    k = np.exp(-((x[:, None] - x[None]) ** 2).sum(-1) / (2 * sigma**2))
    # <grad, K>_i = sum_m grad_{x_m} k(x_m, x_i) = -sum_m k_mi (x_m - x_i) / sigma^2
    grad_k = -np.einsum("mi,mid->id", k, x[:, None] - x[None]) / sigma**2
    return -np.linalg.solve(k + eta * np.eye(len(x)), grad_k)


def test_stein_matches_a_direct_numpy_reference():
    x = np.asarray(jax.random.normal(jax.random.key(3), (12, 2)), np.float64)
    sigma, eta = 1.3, 0.05
    expected = _stein_reference(x, sigma, eta)
    got = score.stein_score(jnp.asarray(x, jnp.float32), eta=eta, bandwidth=sigma)
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=2e-3)


def test_threshold_keeps_the_fewest_eigenfunctions_that_hold_it():
    """The count kept, against a float64 spectrum of a Gram matrix (200 samples, sigma = 1): the
    first J whose cumulative fraction reaches ``t``, or, for ``t`` near 1, all above the floor
    ``sqrt(eps32) lambda_1``. The float64 values lie >= 1e-4 (relative: >= 1e-2) from both
    cut-offs, far beyond float32's rounding of them."""
    x = np.asarray(_correlated_gaussian(2, 200)[0], np.float64)
    gram = np.exp(-((x[:, None] - x[None]) ** 2).sum(-1) / 2.0)
    eigvals = np.linalg.eigvalsh(gram)[::-1]
    cumulative = np.cumsum(eigvals) / eigvals.sum()
    ratio = eigvals / eigvals[0] / np.sqrt(np.finfo(np.float32).eps)
    above_floor = int(np.sum(ratio > 1.0))
    assert not np.any(np.abs(ratio - 1.0) < 1e-2)
    for t in (0.9, 0.99, 0.999999):
        j = int(np.argmax(cumulative >= t)) + 1
        if t < 0.999:
            assert j < above_floor and min(cumulative[j - 1] - t, t - cumulative[j - 2]) > 1e-4
        else:  # asks for more than the floor lets through
            assert j > above_floor + 5
        count = min(j, above_floor)
        kept = score._kept_eigenvalues(jnp.asarray(eigvals, jnp.float32), None, t)
        assert kept.tolist() == [True] * count + [False] * (200 - count), t


def test_eigenvalues_below_sqrt_eps_of_the_largest_are_always_dropped():
    eigvals = jnp.array([100.0, 10.0, 1.0, 1e-2, 1e-5, 0.0])  # floor: 3.45e-4 * 100 = 0.0345
    kept = functools.partial(score._kept_eigenvalues, eigvals)
    assert kept(6, None).tolist() == [True] * 3 + [False] * 3
    assert kept(None, 1.0).tolist() == [True] * 3 + [False] * 3
    assert kept(2, None).tolist() == [True] * 2 + [False] * 4
    assert kept(None, 0.9).tolist() == [True] + [False] * 5  # 100 / 111.01 = 0.9008


@pytest.mark.parametrize("hparams", [{"num_eigen": 200}, {"threshold": 1.0}])
def test_ssge_with_every_eigenfunction_stays_accurate_in_float32(hparams):
    """A numerically singular Gram matrix: its smallest float32 eigenvalues are round-off
    (~1e-5 against ~180), which, weighted 1/lambda^2, once gave estimates 1e5 times the score.
    A guard against that blow-up, not a test of accuracy (the tests above): measured here 0.55
    at the samples, 0.63 out of sample (predicting zero scores 1.0)."""
    x = jax.random.normal(jax.random.key(0), (200, 2))
    points = jax.random.normal(jax.random.key(50), (100, 2))
    est, out = jax.jit(
        lambda x, p: (score.ssge_score(x, **hparams), score.ssge_score(x, p, **hparams))
    )(x, points)
    assert _rel_rmse(est, -x) < 0.8
    assert _rel_rmse(out, -points) < 0.8


def test_float32_samples_under_enable_x64():
    """The median's bisection carry (a float64 zero failed the loop's type check) and a float64
    bandwidth keep the samples' dtype."""
    x, _, _ = _correlated_gaussian(2, 20)
    with jax.enable_x64(True):
        results = jax.jit(
            lambda x: (
                score.median_bandwidth(x),
                score.stein_score(x),
                score.ssge_score(x, bandwidth=np.float64(1.0)),
            )
        )(x)
    for r in results:
        assert r.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(r)))


def test_estimates_do_not_move_with_the_samples_far_from_the_origin():
    # The score is translation equivariant. Before, in float32 at an offset of 1000, the
    # distances |x|^2 + |y|^2 - 2 x.y cancelled: Stein failed ("`eta` too small"), SSGE's
    # relative error rose from 0.25 to 0.64.
    x, _, _ = _correlated_gaussian(2, 200)
    stein, ssge, bandwidth = map(
        jax.jit, (score.stein_score, score.ssge_score, score.median_bandwidth)
    )
    for estimate in (stein, ssge):
        np.testing.assert_allclose(estimate(x + 1000.0), estimate(x), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(ssge(x + 1000.0, x[:1] + 1000.0), ssge(x, x[:1]), atol=1e-3)
    np.testing.assert_allclose(bandwidth(x + 1000.0), bandwidth(x), rtol=1e-4)


def test_one_far_outlier_does_not_spoil_the_others():
    """One sample at 1e5 among 200 unit-scale ones (float32): centred on the mean (500 away
    from the rest) the distances cancelled, the Stein estimate failed ("`eta` ... too small":
    a Gram matrix with a negative eigenvalue), and bisecting the squared distance up to the
    largest one read the median bandwidth 1.90 (at an outlier of 1e6: 15.3) for 1.72."""
    x = np.asarray(jax.random.normal(jax.random.key(2), (200, 2)), np.float64)
    for far in (1e5, 1e6):
        x[0] = [far, 0.0]
        got = score.median_bandwidth(x.astype(np.float32))
        np.testing.assert_allclose(got, _numpy_lower_median_distance(x), rtol=1e-5)
    x[0] = [1e5, 0.0]
    x32 = x.astype(np.float32)
    sigma = float(_numpy_lower_median_distance(x))
    want = _stein_reference(x32.astype(np.float64), sigma, 0.1)[1:]
    got = np.asarray(score.stein_score(x32, bandwidth=sigma))[1:]
    np.testing.assert_allclose(got, want, atol=1e-3 * np.abs(want).max())


def test_samples_at_equal_distances_from_their_mean_are_centred():
    """Balanced one-hot rows (3 classes x 10): every radius equal, their mean rounded just
    below them, so the bulk the center is taken over was empty (0 / 0 = NaN center; the
    estimators refused the finite samples as NaN and the bandwidth read 1e-6 for sqrt 2)."""
    x = np.eye(3, dtype=np.float32)[np.repeat(np.arange(3), 10)]
    np.testing.assert_allclose(score.median_bandwidth(x), np.sqrt(2.0), rtol=1e-6)
    for estimate in (score.stein_score, score.ssge_score):
        assert np.all(np.isfinite(np.asarray(estimate(x))))


def test_median_bandwidth_of_nan_samples_under_jit_is_nan():
    # (Concrete NaN samples are refused by name; traced ones read the floor, 1e-6, before.)
    x = np.array(jax.random.normal(jax.random.key(0), (20, 2)), np.float32)
    x[3, 1] = np.nan
    assert np.isnan(float(jax.jit(score.median_bandwidth)(x)))


@pytest.mark.parametrize("scale", [1e-8, 1e-20, 1e20])
def test_median_bandwidth_and_estimates_scale_with_the_samples(scale):
    """Scale equivariance: the bandwidth was floored at 1e-6 (1 + spread), a fixed 1e-6 for
    small samples (at 1e-8: the estimate 84 % off, at 1e-20 zero), and at 1e20 the squared
    distances overflowed float32 (inf)."""
    x = np.asarray(jax.random.normal(jax.random.key(2), (200, 2)), np.float64)
    got = score.median_bandwidth((scale * x).astype(np.float32))
    np.testing.assert_allclose(float(got) / scale, _numpy_lower_median_distance(x), rtol=1e-5)
    if scale == 1e-8:  # (the estimators' own distances under- or overflow beyond)
        small = np.asarray(score.stein_score((scale * x).astype(np.float32))) * scale
        np.testing.assert_allclose(small, score.stein_score(x.astype(np.float32)), atol=1e-3)


def test_vmap_equals_loop():
    xs = jnp.stack([_correlated_gaussian(2, 100, seed=s)[0] for s in range(3)])
    batched = jax.jit(jax.vmap(score.ssge_score))(xs)
    for i in range(3):
        one = jax.jit(score.ssge_score)(xs[i])
        np.testing.assert_allclose(batched[i], one, rtol=1e-4, atol=1e-4)


def test_identical_samples_give_zero_scores_not_nan():
    x = jnp.ones((16, 3))
    ssge = jax.jit(score.ssge_score, static_argnames="num_eigen")
    for est in (jax.jit(score.stein_score)(x), ssge(x), ssge(x, num_eigen=4)):
        assert bool(jnp.all(jnp.isfinite(est)))
        np.testing.assert_allclose(est, 0.0, atol=1e-6)


def _numpy_lower_median_distance(x):
    d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))[np.triu_indices(len(x), k=1)]
    d = np.sort(d[d > 0])
    return d[(len(d) + 1) // 2 - 1]


@pytest.mark.parametrize("n", [2, 3, 7, 200])
def test_median_bandwidth_is_the_lower_median_distance(n):
    x = np.asarray(jax.random.normal(jax.random.key(n), (n, 3)), np.float64)
    got = jax.jit(score.median_bandwidth)(jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(got, _numpy_lower_median_distance(x), rtol=1e-6)


def test_median_bandwidth_skips_repeated_rows():
    x = np.array(jax.random.normal(jax.random.key(0), (200, 2)), np.float32)
    x[:160] = 0.0  # 160 equal rows: 12720 of the 19900 pairs at distance 0
    got = score.median_bandwidth(x)
    np.testing.assert_allclose(got, _numpy_lower_median_distance(x.astype(np.float64)), rtol=1e-6)
    # The median over all pairs (0) made every estimate exactly 0, at the distinct rows too.
    assert float(jnp.min(jnp.abs(score.ssge_score(x)[160:]))) > 0.0


@pytest.mark.parametrize("dim", [3, 300])
def test_median_bandwidth_skips_repeated_rows_away_from_the_center(dim):
    # Equal rows that are not 0 once centred: their |x|^2 + |y|^2 - 2 x.y rounds to ~1e-22
    # rather than 0; counted as distances, they made the median the 1e-6 floor in 21 of 300
    # such draws, and SSGE's and Stein's estimates 0 at the distinct rows.
    for seed in range(20):
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((40, dim)).astype(np.float32)
        x[:30] = x[0] + 5.0 * rng.standard_normal(dim).astype(np.float32)  # 30 equal rows,
        x = x[rng.permutation(40)]  # anywhere (in any lane of a vectorized loop)
        want = _numpy_lower_median_distance(x.astype(np.float64))
        for fn in (score.median_bandwidth, jax.jit(score.median_bandwidth)):
            np.testing.assert_allclose(fn(x), want, rtol=1e-5, err_msg=f"seed {seed}")
    distinct = np.any(x != x[np.argmax(np.sum(x == x[:, None], axis=(1, 2)))], axis=1)
    for fn in (score.ssge_score, score.stein_score):
        assert float(jnp.min(jnp.sum(jnp.abs(jax.jit(fn)(x)[distinct]), axis=1))) > 0.0


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_half_precision_samples_are_estimated_in_float32(dtype):
    x, _, _ = _correlated_gaussian(2, 64)
    half = x.astype(dtype)
    for fn in map(jax.jit, (score.stein_score, score.ssge_score)):  # LAPACK: no half precision
        est = fn(half)
        assert est.dtype == jnp.float32
        np.testing.assert_allclose(est, fn(half.astype(jnp.float32)), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype, offset", [(jnp.float16, 200.0), (jnp.bfloat16, 5.0)])
def test_half_precision_kernels_are_computed_in_float32(dtype, offset):
    # Before: |x|^2 + |y|^2 - 2 x.y in the inputs' dtype: float16 rows at 200 from the origin
    # read NaN (|x|^2 past 65504), bfloat16 rows at 5 a kernel diagonal of 0.6, not 1.
    rng = np.random.default_rng(0)
    x = jnp.asarray(offset + rng.normal(size=(6, 4)), dtype)
    y = jnp.asarray(offset + rng.normal(size=(5, 4)), dtype)
    xs, ys = (np.asarray(a, np.float64) for a in (x, y))  # the values the inputs hold
    want = np.sum((xs[:, None] - ys[None]) ** 2, axis=-1)
    d2 = score.squared_distances(x, y)
    assert d2.dtype == jnp.float32
    np.testing.assert_allclose(d2, want, rtol=1e-4, atol=1e-4)
    k = score.rbf_kernel(x, x, 2.0)
    assert k.dtype == jnp.float32
    np.testing.assert_allclose(np.diag(k), 1.0, rtol=1e-6)
    np.testing.assert_allclose(score.rbf_kernel(x, y, 2.0), np.exp(-want / 8.0), atol=1e-5)
    # A non-finite row is NaN in its own row alone (centring on all rows spread it).
    bad = x.at[2, 0].set(jnp.nan)
    d2 = np.asarray(score.squared_distances(bad, y))
    assert np.all(np.isnan(d2[2])) and np.all(np.isfinite(np.delete(d2, 2, axis=0)))
    np.testing.assert_allclose(
        np.delete(d2, 2, axis=0), np.delete(want, 2, axis=0), rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda x: score.ssge_score(x[:5], num_eigen=8), ValueError, "num_eigen"),
        (lambda x: score.ssge_score(x, threshold=0.0), ValueError, "threshold"),
        (lambda x: score.stein_score(x, eta=0.0), ValueError, "eta"),
        (lambda x: score.stein_score(x[0]), ValueError, "samples"),
        (lambda x: score.ssge_score(x[:1]), ValueError, "at least 2"),
        (lambda x: score.ssge_score(x.astype(jnp.int32)), TypeError, "samples"),
        (lambda x: score.ssge_score(x, x[:, :1]), ValueError, "points"),
        (lambda x: score.get_score_estimator("sgse"), KeyError, "ssge"),
        (lambda x: score.get_score_estimator("dms"), KeyError, "dsm"),
        (lambda x: score.get_score_estimator("stein", etta=1.0), TypeError, "etta"),
        # Values too, when bound (before: when first called, after an experiment's other parts
        # had trained), and strings are not numbers (before: JAX's or Python's own errors).
        (lambda x: score.get_score_estimator("ssge", threshold=2.0), ValueError, "`threshold`"),
        (lambda x: score.get_score_estimator("ssge", num_eigen=0), ValueError, "`num_eigen`"),
        (lambda x: score.get_score_estimator("stein", eta=-1.0), ValueError, "`eta`"),
        (lambda x: score.get_score_estimator("ssge", bandwidth="1"), ValueError, "`bandwidth`"),
        (lambda x: score.stein_score(x, eta="0.1"), ValueError, "`eta` must be a positive"),
        (lambda x: score.ssge_score(x, threshold="0.9"), ValueError, "`threshold` must lie"),
        (lambda x: score.ssge_score(x[:, :0]), ValueError, "dim >= 1"),
        (lambda x: score.stein_score(x, bandwidth=0.0), ValueError, "bandwidth"),
        (lambda x: score.ssge_score(x, bandwidth=-1.0), ValueError, "bandwidth"),
        # Ridge below float32's resolution of the Gram matrix: Cholesky fails (NaN before).
        (lambda x: score.stein_score(x, eta=1e-9, bandwidth=10.0), ValueError, "`eta`.*too small"),
        # Before: an all-zero estimate, and a bare "truth value of an array is ambiguous".
        (lambda x: score.stein_score(x, eta=float("inf")), ValueError, "`eta` must be a positive"),
        (lambda x: score.stein_score(x, eta=jnp.array([0.1, 0.2])), ValueError, "`eta`"),
        (lambda x: score.median_bandwidth(x, scale=0.0), ValueError, "`scale` must be a positive"),
        (lambda x: score.median_bandwidth(x[:1]), ValueError, "`samples`.*at least 2"),
        (lambda x: score.median_bandwidth(x[:, 0]), ValueError, "`samples` must have shape"),
        (lambda x: score.ssge_score(x, x[:0]), ValueError, "`points` needs at least 1 sample"),
        # Before: "stein_score() takes 1 positional argument but 2 were given".
        (lambda x: score.get_score_estimator("stein")(x, x[:3]), ValueError, "`points`.*'ssge'"),
    ],
)
def test_bad_input_raises_naming_the_argument(call, error, match):
    x, _, _ = _correlated_gaussian(2, 20)
    with pytest.raises(error, match=match):
        call(x)


def test_nan_samples_raise_eagerly_and_poison_the_surrogate_under_jit():
    x, _, _ = _correlated_gaussian(2, 20)
    x = x.at[3, 1].set(jnp.nan)
    for fn in (score.stein_score, score.ssge_score):
        with pytest.raises(ValueError, match="samples.*1 NaN"):
            fn(x)
    # Under jit the check cannot see values: the surrogate's value is NaN (what the training
    # loops test), never a finite value with a silently NaN gradient.
    value, grad = jax.jit(jax.value_and_grad(mige.entropy_surrogate))(x)
    assert not bool(jnp.isfinite(value))
    assert not bool(jnp.all(jnp.isfinite(grad)))


# --------------------------------------------------------------------------------------------
# MIGE.


def test_entropy_gradient_of_a_scaled_gaussian():
    """z = s * eps, eps ~ N(0, I_d): H = d log s + const, so dH/ds = d / s."""
    dim, s = 3, 1.7
    eps = jax.random.normal(jax.random.key(0), (1000, dim))
    for name in ("ssge", "stein"):
        grad = jax.jit(jax.grad(lambda s, name=name: mige.entropy_surrogate(s * eps, name)))(s)
        np.testing.assert_allclose(grad, dim / s, rtol=0.15)


def test_entropy_gradient_of_a_learnable_linear_map_is_inverse_transpose():
    """z = eps L^T: H(Z) = log|det L| + const, so dH/dL = L^{-T} (here for a lower-triangular
    L, compared on its lower triangle)."""
    dim = 3
    eps = jax.random.normal(jax.random.key(4), (2000, dim))
    chol = jnp.array([[1.0, 0.0, 0.0], [0.4, 0.8, 0.0], [-0.3, 0.2, 1.2]])
    grad = jax.jit(jax.grad(lambda m: mige.entropy_surrogate(eps @ m.T, "stein")))(chol)
    true = jnp.tril(jnp.linalg.inv(chol).T)
    err = jnp.linalg.norm(jnp.tril(grad) - true) / jnp.linalg.norm(true)
    assert float(err) < 0.15


def _toy_samples(rho, dim, key, num=1000):
    e1, e2 = jax.random.normal(key, (2, num, dim))
    return e1, rho * e1 + jnp.sqrt(1.0 - rho**2) * e2


@pytest.mark.parametrize("rho", [-0.5, 0.2, 0.6])
def test_mi_gradient_of_the_gaussian_toy(rho):
    """I = -d/2 log(1 - rho^2) per-dimension pairs: dI/drho = rho d / (1 - rho^2)."""
    dim = 2
    key = jax.random.key(1)
    grad = jax.jit(jax.grad(lambda r: mige.mi_surrogate(*_toy_samples(r, dim, key), "ssge")))(rho)
    true = rho * dim / (1 - rho**2)
    assert abs(float(grad) - true) < 0.2 * abs(true) + 0.1


@pytest.mark.parametrize("rho", [-0.5, 0.6])
def test_infomax_gradient_of_the_gaussian_toy_moves_only_the_codes(rho):
    """``infomax_surrogate(x, z)`` is ``grad H(Z) - grad H(X, Z)`` with ``x`` held constant: on
    the toy (unit-variance Z) it is ``-grad H(X, Z) = rho d / (1 - rho^2)``, as ``dI/drho``; a
    parameter that moves only ``x`` gets no gradient."""
    dim = 2
    key = jax.random.key(1)
    grad = jax.jit(jax.grad(lambda r: mige.infomax_surrogate(*_toy_samples(r, dim, key), "ssge")))
    true = rho * dim / (1 - rho**2)
    assert abs(float(grad(rho)) - true) < 0.2 * abs(true) + 0.1
    x, z = _toy_samples(rho, dim, key)
    scale_x = jax.jit(jax.grad(lambda s: mige.infomax_surrogate(s * x, z, "ssge")))(1.3)
    assert float(scale_x) == 0.0


@pytest.mark.parametrize("surrogate", [mige.mi_surrogate, mige.infomax_surrogate])
def test_mi_gradient_where_the_codes_entropy_moves(surrogate):
    """z = s x + c eps, x ~ N(0, I_d): I = d/2 log(1 + s^2 / c^2), H(X, Z) free of s, so
    dI/ds = dH(Z)/ds = d s / (s^2 + c^2). Catches the codes' entropy term dropped or read on
    the other side (the toy above keeps Z at unit variance: its dH(Z)/drho is 0)."""
    dim, s, c = 2, 1.0, 0.5
    x, eps = jax.random.normal(jax.random.key(5), (2, 1000, dim))
    grad = jax.jit(jax.grad(lambda s: surrogate(x, s * x + c * eps, "ssge")))(s)
    true = dim * s / (s**2 + c**2)  # 1.6 (measured 1.565)
    assert abs(float(grad) - true) < 0.25 * true


def test_entropy_surrogate_with_the_exact_score_is_its_formula():
    """With the score of N(0, I), -z: the surrogate is the mean of |z|^2 and its gradient
    z / M, -score / M (catches a 1 / (M - 1), 1.6 % at DIM's batch of 64); SSGE by default."""
    z = jax.random.normal(jax.random.key(0), (8, 3))
    exact = functools.partial(mige.entropy_surrogate, score_fn=lambda v: -v)
    np.testing.assert_allclose(jax.jit(exact)(z), jnp.mean(jnp.sum(z * z, -1)), rtol=1e-6)
    np.testing.assert_allclose(jax.jit(jax.grad(exact))(z), z / 8, rtol=1e-6)
    z = jax.random.normal(jax.random.key(2), (60, 2))
    ssge = jax.jit(mige.entropy_surrogate, static_argnums=1)
    np.testing.assert_array_equal(jax.jit(mige.entropy_surrogate)(z), ssge(z, "ssge"))


def test_encoder_mi_gradient_with_known_conditional_score():
    """z = x + sigma eps with x ~ N(0, 1): I(X; Z) = 1/2 log(1 + 1/sigma^2) per dimension."""
    dim, sigma = 2, 0.8
    x, eps = jax.random.normal(jax.random.key(2), (2, 1000, dim))

    def surrogate(sigma):
        z = x + sigma * eps
        return mige.encoder_mi_surrogate(z, -eps / sigma, "ssge")

    true = dim * (-1.0 / (sigma * (sigma**2 + 1.0)))  # d/dsigma of d/2 log(1 + 1/sigma^2)
    grad = jax.jit(jax.grad(surrogate))(sigma)
    assert abs(float(grad) - true) < 0.2 * abs(true)


def test_surrogates_reject_bad_shapes():
    x = jnp.zeros((10, 2))
    with pytest.raises(ValueError, match="`z`"):
        mige.entropy_surrogate(x[0])
    with pytest.raises(ValueError, match="same num_samples"):
        mige.mi_surrogate(x, x[:5])
    with pytest.raises(ValueError, match="conditional_score"):
        mige.encoder_mi_surrogate(x, x[:, :1])


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda x: mige.infomax_surrogate(x, x[:5]), ValueError, "`x` and `z`.*same num_samples"),
        (lambda x: mige.infomax_surrogate(x[0], x), ValueError, "`x`"),
        (lambda x: mige.infomax_surrogate(x, x[:, :0]), ValueError, "`z`.*dim >= 1"),
        (lambda x: mige.infomax_surrogate(x.astype(jnp.int32), x), TypeError, "`x`"),
        (lambda x: mige.infomax_surrogate(x, x.astype(jnp.int32)), TypeError, "`z`"),
        (lambda x: mige.mi_surrogate(x.astype(jnp.int32), x), TypeError, "`x`"),
        (lambda x: mige.mi_surrogate(x, x.astype(jnp.int32)), TypeError, "`y`"),
        (lambda x: mige.mi_surrogate(x, x.at[0, 0].set(jnp.nan)), ValueError, "`y`.*1 NaN"),
        (lambda x: mige.entropy_surrogate(x.astype(jnp.int32)), TypeError, "`z`"),
        (lambda x: mige.encoder_mi_surrogate(x, x.astype(jnp.int32)), TypeError, "conditional"),
        (lambda x: mige.encoder_mi_surrogate(x, x.at[0].set(jnp.nan)), ValueError, "conditional"),
        # A [M, 1] score broadcast against [M, 2] samples: a silently wrong gradient before.
        (lambda x: mige.entropy_surrogate(x, lambda v: -v[:, :1]), ValueError, "`score_fn`"),
    ],
)
def test_surrogates_name_the_bad_argument(call, error, match):
    x, _, _ = _correlated_gaussian(2, 10)
    with pytest.raises(error, match=match):
        call(x)


# --------------------------------------------------------------------------------------------
# The learned estimator (denoising score matching, `mi_jax.score_nets`).


# Measured at this seed: 0.24 (d = 2) and 0.43 (d = 10) relative RMSE with the defaults.
@pytest.mark.parametrize("dim, tol", [(2, 0.35), pytest.param(10, 0.55, marks=pytest.mark.slow)])
def test_dsm_recovers_a_correlated_gaussian_score(dim, tol):
    x, mean, cov = _correlated_gaussian(dim, 1000)
    dsm = score.get_score_estimator("dsm")
    est = jax.jit(dsm)(x)
    assert _rel_rmse(est, score.gaussian_score(x, mean, cov)) < tol
    points, _, _ = _correlated_gaussian(dim, 200, seed=5)
    out = jax.jit(dsm)(x, points)
    assert _rel_rmse(out, score.gaussian_score(points, mean, cov)) < tol


def test_dsm_is_deterministic_and_rejects_bad_hparams():
    x, _, _ = _correlated_gaussian(2, 200)
    dsm = score.get_score_estimator("dsm", steps=20)
    np.testing.assert_array_equal(dsm(x), dsm(x))
    with pytest.raises(ValueError, match="noise_scale"):
        score.get_score_estimator("dsm", noise_scale=0.0)(x)
    with pytest.raises(ValueError, match="steps"):
        score.get_score_estimator("dsm", steps=0)(x)
    with pytest.raises(ValueError, match="batch_size"):
        score.get_score_estimator("dsm", batch_size=0)(x)
    with pytest.raises(ValueError, match="`points` must have the samples' dimension"):
        score.get_score_estimator("dsm", steps=2)(x, x[:, :1])


def test_mige_train_step_traces_once_and_raises_the_mi_estimate():
    """An InfoMax step with the MIGE gradient, jitted: one trace over several steps, and the
    encoder moves towards more information (a noisy linear encoder z = W x + 0.5 eps, whose
    exact I(X; Z) = 1/2 log det(I + 4 W W^T) grows with W)."""
    import chex
    import optax

    x = jax.random.normal(jax.random.key(0), (256, 2))
    eps = jax.random.normal(jax.random.key(1), (256, 2))
    optimizer = optax.sgd(0.05)

    def exact_mi(w):
        return 0.5 * jnp.linalg.slogdet(jnp.eye(2) + 4.0 * w @ w.T)[1]

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(w, opt_state):
        grad = jax.grad(lambda w: -mige.mi_surrogate(x, x @ w.T + 0.5 * eps, "stein"))(w)
        updates, opt_state = optimizer.update(grad, opt_state, w)
        return optax.apply_updates(w, updates), opt_state

    w = 0.3 * jnp.eye(2)
    opt_state = optimizer.init(w)
    start = float(exact_mi(w))
    for _ in range(5):
        w, opt_state = step(w, opt_state)
    assert float(exact_mi(w)) > start + 0.05


@pytest.mark.slow  # float64 variant
def test_ssge_keeps_the_same_eigenfunctions_in_float64():
    # Before: the eigenvalue floor was sqrt(eps) of the samples' dtype: in float64 it let 45
    # eigenfunctions through for float32's 17, and with num_eigen=200 the out-of-sample error
    # was 27 times the score's size (0.63 in float32): the small eigenvalues are the sample's
    # noise too, not only the arithmetic's.
    x = jax.random.normal(jax.random.key(0), (200, 2), jnp.float32)
    points = jax.random.normal(jax.random.key(50), (100, 2), jnp.float32)

    def error(x, points):
        estimate = score.ssge_score(x, points, num_eigen=200)
        return float(jnp.sqrt(jnp.mean((estimate + points) ** 2) / jnp.mean(points**2)))

    narrow = error(x, points)
    with jax.enable_x64(True):
        wide = error(x.astype(jnp.float64), points.astype(jnp.float64))
    assert narrow < 1.0 and wide == pytest.approx(narrow, rel=1e-3), (narrow, wide)
