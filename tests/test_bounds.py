"""Variational MI bounds of `mi_jax.bounds`.

Four kinds of check: the exact log density ratio of a correlated Gaussian makes every bound equal
the true MI (statistical tolerances from standard errors); small score matrices against plain
numpy references written here with loops; identities and orderings that hold for every score
matrix; and jit / vmap / gradient / error-message behaviour.
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mi_jax import bounds, tasks

# --------------------------------------------------------------------------------------------
# Helpers


def _rand_scores(seed: int, batch: int = 4, scale: float = 2.0) -> np.ndarray:
    return (scale * np.random.default_rng(seed).standard_normal((batch, batch))).astype(np.float32)


def _rand_vec(seed: int, batch: int = 4, scale: float = 1.0) -> np.ndarray:
    return (scale * np.random.default_rng(seed).standard_normal(batch)).astype(np.float32)


def _log_mean_exp_offdiag_cols(s):
    """``[B]``: log of the mean of exp over each column without its diagonal entry."""
    b = s.shape[0]
    masked = jnp.where(jnp.eye(b, dtype=bool), -jnp.inf, s)
    return jax.nn.logsumexp(masked, axis=0) - jnp.log(b - 1.0)


# --------------------------------------------------------------------------------------------
# 1. The optimal critic: every bound estimates the true MI.

_NUM_KEYS = 16
_BATCH = 1024


def _all_estimates(key, mi, dim):
    x, y = tasks.correlated_gaussian(key, mi, _BATCH, dim)
    s = tasks.gaussian_log_ratio(x, y, mi)
    # A baseline that depends on y_j: TUBA is tight for f = log ratio + log a(y).
    log_a = 0.5 * jnp.tanh(y[:, 0]) + 0.3
    diag = jnp.diag(s)
    u_batch_opt = _log_mean_exp_offdiag_cols(s) - diag
    return {
        "nwj": bounds.nwj(s + 1.0),
        "dv": bounds.dv(s),
        "tuba": bounds.tuba(s + log_a[None, :], log_baseline=log_a),
        "flo_batch_optimal_u": bounds.flo(s, u_batch_opt),
        "flo_u_neg_f": bounds.flo(s, -diag),
        "js": bounds.js(s),
        "smile_no_clip": bounds.smile(s, clip=None),
        "interpolated_0": bounds.interpolated(s, alpha=0.0, log_baseline=0.0),
        "interpolated_0.5": bounds.interpolated(s, alpha=0.5, log_baseline=0.0),
        "interpolated_1": bounds.interpolated(s, alpha=1.0, log_baseline=0.0),
        "infonce": bounds.infonce(s),
    }


_DIM = 3


@jax.jit
def _estimates_over_keys(keys, mi):
    # `mi` is traced: one compilation serves every MI level.
    return jax.lax.map(lambda k: _all_estimates(k, mi, _DIM), keys)


@pytest.mark.parametrize("mi", [1.0, 2.0])
def test_optimal_critic_bounds_equal_true_mi(mi):
    keys = jax.random.split(jax.random.key(1234), _NUM_KEYS)
    est = {k: np.asarray(v, np.float64) for k, v in _estimates_over_keys(keys, mi).items()}
    # Tolerance: 4 standard errors of the mean over the independent keys (estimated from the
    # spread across keys; the noise is dominated by the joint term mean_j log r_jj, whose
    # variance is dim * rho^2 / B, about 0.04^2 for mi=1, dim=3), plus a one-sided allowance
    # for the O(1/B) batch bias of estimators that normalize with a batch mean. To first order
    # that bias is at most chi^2 / (B - 1), where for this Gaussian 1 + chi^2(p || p_x p_y)
    # = prod 1/(1 - rho^2) = e^{2 I}; its sign is known. InfoNCE and I_alpha are lower bounds
    # for every critic (biased down); DV and FLO with the batch-optimal u contain -log Z_hat
    # with E[Z_hat] = 1 (biased up, by Jensen); NWJ, TUBA, JS (NWJ read-out), I_0 and FLO with
    # u = -f are unbiased.
    allowance = math.expm1(2.0 * mi) / (_BATCH - 1)
    down = {"infonce", "interpolated_0.5", "interpolated_1"}
    up = {"dv", "smile_no_clip", "flo_batch_optimal_u"}
    for name, values in est.items():
        assert np.all(np.isfinite(values)), name
        mean = values.mean()
        se = values.std(ddof=1) / math.sqrt(len(values))
        lo = mi - 4.0 * se - (allowance if name in down else 0.0)
        hi = mi + 4.0 * se + (allowance if name in up else 0.0)
        assert lo <= mean <= hi, (name, mean, se, mi)
    # InfoNCE never exceeds log B, in every batch.
    assert np.all(est["infonce"] <= math.log(_BATCH) + 1e-5)
    # Biases have known signs: InfoNCE is a lower bound, and with the batch-optimal u, FLO is
    # the leave-one-out ("L1Out") estimate, an upper bound in expectation (Jensen on log Z_hat).
    assert np.mean(est["infonce"]) <= np.mean(est["flo_batch_optimal_u"])


def test_infonce_saturates_at_log_batch_when_mi_is_large():
    # MI = 15 nats >> log 64 = 4.16. The per-column gap log B - InfoNCE_j is
    # log(1 + sum_{i != j} r_ij / r_jj) with sum_{i != j} r_ij ~ B - 1 and log r_jj ~ I +- 3.1
    # (Var_p[log r] = dim rho^2), so a typical column's gap is ~ 63 e^{-15} ~ 2e-5; only rare
    # columns with log r_jj < 6.4 reach 0.1. (Across 2000 seeds the batch mean gap has median
    # < 1e-5 and maximum 0.06.)
    mi, dim, batch = 15.0, 10, 64

    @jax.jit
    def run(key):
        x, y = tasks.correlated_gaussian(key, mi, batch, dim)
        s = tasks.gaussian_log_ratio(x, y, mi)
        return bounds.infonce(s), jnp.mean(jnp.diag(s))

    infonce, joint_term = (float(v) for v in run(jax.random.key(7)))
    assert infonce <= math.log(batch) + 1e-5
    assert math.log(batch) - infonce < 0.1
    assert mi - infonce > 10.0
    # The critic itself sees the 15 nats: its joint term is unbiased for I, with standard
    # deviation sqrt(dim rho^2 / B) = 0.39; 4 of them.
    rho2 = float(tasks.rho_from_mi(mi, dim)) ** 2
    assert abs(joint_term - mi) <= 4.0 * math.sqrt(dim * rho2 / batch)


# --------------------------------------------------------------------------------------------
# 2. Small cases against numpy references written with loops (float64).

_S3 = np.array([[1.0, -0.5, 0.2], [0.3, 2.0, -1.0], [-0.7, 0.4, 0.5]], np.float32)
_S4 = _rand_scores(11, 4)
_A4 = _rand_vec(12, 4, 0.5)
_U4 = _rand_vec(13, 4)


def _offdiag_pairs(b):
    return [(i, j) for i in range(b) for j in range(b) if i != j]


def _ref_dv(s):
    s = s.astype(np.float64)
    b = len(s)
    z = np.mean([np.exp(s[i, j]) for i, j in _offdiag_pairs(b)])
    return np.mean(np.diag(s)) - np.log(z)


def _ref_tuba(s, a):
    s = s.astype(np.float64)
    b = len(s)
    a = np.broadcast_to(np.asarray(a, np.float64), (b,))
    joint = np.mean([s[j, j] - a[j] for j in range(b)])
    marginal = np.mean([np.exp(s[i, j] - a[j]) for i, j in _offdiag_pairs(b)])
    return 1.0 + joint - marginal


def _ref_nwj(s):
    s = s.astype(np.float64)
    b = len(s)
    marginal = np.mean([np.exp(s[i, j]) for i, j in _offdiag_pairs(b)])
    return np.mean(np.diag(s)) - marginal / np.e


def _ref_infonce(s):
    s = s.astype(np.float64)
    b = len(s)
    terms = []
    for j in range(b):
        denom = np.mean([np.exp(s[i, j]) for i in range(b)])
        terms.append(s[j, j] - np.log(denom))
    return np.mean(terms)


def _softplus(v):
    return np.log1p(np.exp(v))


def _ref_js_fgan(s):
    s = s.astype(np.float64)
    b = len(s)
    joint = np.mean([-_softplus(-s[j, j]) for j in range(b)])
    marginal = np.mean([_softplus(s[i, j]) for i, j in _offdiag_pairs(b)])
    return joint - marginal


def _ref_smile(s, clip):
    s = s.astype(np.float64)
    b = len(s)
    z = np.mean([np.exp(min(max(s[i, j], -clip), clip)) for i, j in _offdiag_pairs(b)])
    return np.mean(np.diag(s)) - np.log(z)


def _ref_flo(s, u):
    s, u = s.astype(np.float64), u.astype(np.float64)
    b = len(s)
    terms = []
    for j in range(b):
        ratio = np.mean([np.exp(s[i, j] - s[j, j]) for i in range(b) if i != j])
        terms.append(-u[j] - np.exp(-u[j]) * ratio)
    return 1.0 + np.mean(terms)


def _ref_loo_infonce(s):
    """Mean over ordered pairs i != j of s_jj - log(1/(B-1) sum_{k != i} exp(s_kj)).

    In log space (float64 log-sum-exp over the kept entries), so it is exact for huge scores.
    """
    s = s.astype(np.float64)
    b = len(s)
    terms = []
    for i, j in _offdiag_pairs(b):
        kept = np.array([s[k, j] for k in range(b) if k != i])
        log_m = kept.max() + np.log(np.mean(np.exp(kept - kept.max())))
        terms.append(s[j, j] - log_m)
    return np.mean(terms)


def _ref_interpolated(s, alpha, a):
    """Poole et al. eq. 13 in a batch, leave-one-out: written pair by pair from the docstring.

    Joint pair (x_j, y_j): the K = B - 1 samples are all x except one other x_i (x_j is among
    them), averaged over i != j. Marginal pair (x_i, y_j): the K samples are all x except x_j
    (x_i is among them).
    """
    s = s.astype(np.float64)
    b = len(s)
    a = np.broadcast_to(np.asarray(a, np.float64), (b,))

    def baseline(j, left_out):
        m = np.mean([np.exp(s[k, j]) for k in range(b) if k != left_out])
        return alpha * m + (1.0 - alpha) * np.exp(a[j])

    joint = np.mean([s[j, j] - np.log(baseline(j, i)) for i, j in _offdiag_pairs(b)])
    marginal = np.mean([np.exp(s[i, j]) / baseline(j, j) for i, j in _offdiag_pairs(b)])
    return 1.0 + joint - marginal


# float32 results of O(1) against float64 references: a few ulps (eps32 = 1.2e-7) per operation.
_RTOL = 2e-6
_ATOL = 2e-6


@pytest.mark.parametrize("s", [_S3, _S4], ids=["3x3", "4x4"])
def test_bounds_match_numpy_loop_references(s):
    b = len(s)
    u = _U4[:b]
    a = _A4[:b]

    @jax.jit
    def values(s, u, a):
        return {
            "dv": bounds.dv(s),
            "nwj": bounds.nwj(s),
            "tuba_scalar": bounds.tuba(s, log_baseline=0.7),
            "tuba_vector": bounds.tuba(s, log_baseline=a),
            "infonce": bounds.infonce(s),
            "js_fgan": bounds.js_fgan(s),
            "js": bounds.js(s),
            "smile_clip_0.5": bounds.smile(s, clip=0.5),
            "smile_clip_1_smile_grad": bounds.smile(s, clip=1.0, gradient="smile"),
            "smile_no_clip": bounds.smile(s, clip=None),
            "flo": bounds.flo(s, u),
            "interpolated_1": bounds.interpolated(s, alpha=1.0),
            "interpolated_0.3": bounds.interpolated(s, alpha=0.3, log_baseline=a),
            "interpolated_0.3_scalar": bounds.interpolated(s, alpha=0.3, log_baseline=-0.4),
            "interpolated_0": bounds.interpolated(s, alpha=0.0, log_baseline=a),
        }

    refs = {
        "dv": _ref_dv(s),
        "nwj": _ref_nwj(s),
        "tuba_scalar": _ref_tuba(s, 0.7),
        "tuba_vector": _ref_tuba(s, a),
        "infonce": _ref_infonce(s),
        "js_fgan": _ref_js_fgan(s),
        "js": _ref_nwj(s + 1.0),
        "smile_clip_0.5": _ref_smile(s, 0.5),
        "smile_clip_1_smile_grad": _ref_smile(s, 1.0),
        "smile_no_clip": _ref_dv(s),
        "flo": _ref_flo(s, u),
        "interpolated_1": _ref_loo_infonce(s),
        "interpolated_0.3": _ref_interpolated(s, 0.3, a),
        "interpolated_0.3_scalar": _ref_interpolated(s, 0.3, -0.4),
        "interpolated_0": _ref_interpolated(s, 0.0, a),
    }
    # Eq. 13 of Poole et al. at alpha = 1 is the leave-one-out InfoNCE form.
    np.testing.assert_allclose(_ref_interpolated(s, 1.0, 0.0), refs["interpolated_1"], rtol=1e-12)
    got = values(s, u, a)
    assert set(got) == set(refs)
    for name, want in refs.items():
        assert got[name].shape == () and got[name].dtype == jnp.float32, name
        np.testing.assert_allclose(float(got[name]), want, rtol=_RTOL, atol=_ATOL, err_msg=name)


def test_references_are_not_degenerate():
    """The hand-computed values differ from each other, so the comparisons above can fail."""
    s = _S3
    values = [
        _ref_dv(s),
        _ref_nwj(s),
        _ref_tuba(s, 0.7),
        _ref_infonce(s),
        _ref_js_fgan(s),
        _ref_smile(s, 0.5),
        _ref_flo(s, _U4[:3]),
        _ref_loo_infonce(s),
        _ref_interpolated(s, 0.3, _A4[:3]),
    ]
    for v, w in itertools.combinations(values, 2):
        assert abs(v - w) > 1e-3


# --------------------------------------------------------------------------------------------
# 3. Identities and orderings that hold for every score matrix.

# Stacks of random score matrices, one stack per batch size (vmapped: one compile per size).
_RANDOM = {
    b: np.stack([_rand_scores(10 * b + k, b, scale) for k, scale in enumerate((0.5, 3.0, 10.0))])
    for b in (2, 7)
}


@jax.jit
def _identity_values(s, a, du):
    """Everything the identity test compares, for one score matrix ``s`` [B, B]."""
    u_opt = _log_mean_exp_offdiag_cols(s) - jnp.diag(s)
    out = {
        "dv": bounds.dv(s),
        "nwj": bounds.nwj(s),
        "nwj_s+1": bounds.nwj(s + 1.0),
        "tuba_1": bounds.tuba(s, log_baseline=1.0),
        "flo_u=-f": bounds.flo(s, -jnp.diag(s)),
        "flo_u_opt": bounds.flo(s, u_opt),
        "mean_-u_opt": jnp.mean(-u_opt),
        "flo_u_perturbed": jax.vmap(lambda d: bounds.flo(s, u_opt + d))(du),
        "js": bounds.js(s),
        "infonce": bounds.infonce(s),
        "smile_none_js": bounds.smile(s, clip=None),
        "smile_none_smile": bounds.smile(s, clip=None, gradient="smile"),
        "smile_big_js": bounds.smile(s, clip=100.0),
        "smile_big_smile": bounds.smile(s, clip=100.0, gradient="smile"),
    }
    for c in (-3.0, 0.0, 1.0, 2.5):
        out[f"tuba_{c}"] = bounds.tuba(s, log_baseline=c)
    for name, base in (("0", 0.0), ("0.8", 0.8), ("vec", a)):
        out[f"interp0_{name}"] = bounds.interpolated(s, alpha=0.0, log_baseline=base)
        out[f"tuba_base_{name}"] = bounds.tuba(s, log_baseline=base)
    return out


@pytest.mark.parametrize("batch", list(_RANDOM))
def test_identities_and_orderings(batch):
    stack = _RANDOM[batch]
    a = np.stack([_rand_vec(100 + k, batch) for k in range(len(stack))])
    du = np.stack(
        [
            np.stack([_rand_vec(200 + 10 * k + m, batch) for m in range(5)])
            for k in range(len(stack))
        ]
    )
    vals = {
        k: np.asarray(v, np.float64) for k, v in jax.vmap(_identity_values)(stack, a, du).items()
    }
    close = lambda x, y, tol=1e-5: np.testing.assert_allclose(x, y, rtol=tol, atol=tol)
    # Scale-aware slack for float32 inequalities.
    slack = 1e-5 * np.maximum(1.0, np.abs(vals["dv"]))
    # log z <= z e^{-c} + c - 1 for every scalar c, hence DV >= TUBA(c) (and NWJ = TUBA(1)).
    for c in (-3.0, 0.0, 1.0, 2.5):
        assert np.all(vals["dv"] >= vals[f"tuba_{c}"] - slack), c
    assert np.all(vals["dv"] >= vals["nwj"] - slack)
    # NWJ is TUBA with a = e; FLO with u = -f(x, y) is TUBA with a = 1, i.e. NWJ of s + 1.
    close(vals["nwj"], vals["tuba_1"])
    close(vals["flo_u=-f"], vals["nwj_s+1"])
    # I_alpha at alpha = 0 is TUBA with the same baseline (scalar or per-column).
    for name in ("0", "0.8", "vec"):
        close(vals[f"interp0_{name}"], vals[f"tuba_base_{name}"])
    # JS reads out NWJ(s + 1); SMILE without clipping, or with a clip no score reaches, is DV.
    assert np.abs(stack).max() < 100.0
    close(vals["js"], vals["nwj_s+1"], 1e-6)
    for k in ("smile_none_js", "smile_none_smile", "smile_big_js", "smile_big_smile"):
        close(vals[k], vals["dv"], 1e-6)
    # InfoNCE <= log B: s_jj is in every normalizer.
    assert np.all(vals["infonce"] <= math.log(batch) + 1e-5)
    # For fixed scores FLO is maximized by u_j = log mean_{i != j} e^{s_ij - s_jj}, where it
    # equals mean_j (-u_j); any other u gives less.
    close(vals["flo_u_opt"], vals["mean_-u_opt"])
    slack_flo = 1e-5 * np.maximum(1.0, np.abs(vals["flo_u_opt"]))
    assert np.all(vals["flo_u_perturbed"] <= (vals["flo_u_opt"] + slack_flo)[:, None])


_interpolated_1 = jax.jit(lambda s: bounds.interpolated(s, alpha=1.0))


def _max_column_dominance(s):
    """Largest gap (nats) between the largest and second-largest entry of a column."""
    top = np.sort(s, axis=0)
    return float((top[-1] - top[-2]).max())


def _loo_cases():
    mats = [m for stack in _RANDOM.values() for m in stack]
    # Dominance ~11 (precision lost, still finite), ~33 and 40 (-inf / NaN).
    mats += [
        _rand_scores(82, 8, 10.0),
        _rand_scores(900, 6, 30.0),
        np.where(np.eye(4, dtype=bool), 20.0, -20.0),
    ]
    cases = []
    for i, s in enumerate(mats):
        s = s.astype(np.float32)
        g = _max_column_dominance(s)
        cases.append(pytest.param(s, id=f"B{len(s)}_{i}_dominance{g:.0f}"))
    return cases


@pytest.mark.parametrize("s", _loo_cases())
def test_leave_one_out_infonce_matches_reference_and_is_at_most_log_batch_minus_one(s):
    # I_1 averages s_jj - log(1/(B-1) sum_{k != i} e^{s_kj}) over i != j; s_jj is in every such
    # sum, so I_1 <= log(B - 1). Tolerance: float32 rounding of O(|s|) quantities.
    b = len(s)
    value = float(_interpolated_1(s))
    want = _ref_loo_infonce(s)
    np.testing.assert_allclose(value, want, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(s).max()))
    assert value <= math.log(b - 1) + 1e-5


def test_js_and_smile_gradients_are_the_js_objective():
    # gradient="smile" differentiates the clipped bound itself, written out here.
    def clipped(v):
        b = v.shape[0]
        off = jnp.where(jnp.eye(b, dtype=bool), -jnp.inf, jnp.clip(v, -1.0, 1.0))
        return jnp.mean(jnp.diag(v)) - (jax.nn.logsumexp(off) - jnp.log(b * (b - 1.0)))

    @jax.jit
    def grads(s):
        return {
            "js_fgan": jax.grad(bounds.js_fgan)(s),
            "js": jax.grad(bounds.js)(s),
            "smile_js": jax.grad(lambda v: bounds.smile(v, clip=1.0))(s),
            "smile_smile": jax.grad(lambda v: bounds.smile(v, clip=1.0, gradient="smile"))(s),
            "clipped": jax.grad(clipped)(s),
        }

    g = grads(_S4)
    for name in ("js", "smile_js"):
        np.testing.assert_allclose(g[name], g["js_fgan"], rtol=1e-6, atol=1e-7, err_msg=name)
    np.testing.assert_allclose(g["smile_smile"], g["clipped"], rtol=1e-5, atol=1e-7)
    assert not np.allclose(g["clipped"], g["js_fgan"], atol=1e-3)


def test_readouts_carry_the_values_own_gradient():
    # JS and SMILE train on the JS objective; `readout` is their value with its own gradient
    # (the MIGE toy differentiated the JS objective for both before: identical rows).
    def nwj_plus_one(v):  # NWJ of f + 1, written out: mean diag f - mean_{i != j} e^{f_ij}
        b = v.shape[0]
        off = jnp.where(jnp.eye(b, dtype=bool), 0.0, jnp.exp(v))
        return jnp.mean(jnp.diag(v)) - jnp.sum(off) / (b * (b - 1.0))

    for bound, reference in (
        (bounds.get_bound("js"), nwj_plus_one),
        (
            bounds.get_bound("smile", clip=1.0),
            lambda v: bounds.smile(v, clip=1.0, gradient="smile"),
        ),
    ):
        value, readout = jax.jit(jax.value_and_grad(bound.readout))(_S4)
        np.testing.assert_allclose(value, jax.jit(bound)(_S4), rtol=1e-6, err_msg=bound.name)
        want = jax.jit(jax.grad(reference))(_S4)
        np.testing.assert_allclose(readout, want, rtol=1e-5, atol=1e-7)
        trained = jax.jit(jax.grad(lambda v, b=bound: b.apply(v, b.init())[0]))(_S4)
        assert not np.allclose(readout, trained, atol=1e-3), bound.name
    assert bounds.get_bound("nwj").readout is None  # its value carries its own gradient
    assert bounds.get_bound("mine").readout is bounds.dv  # (apply: the corrected gradient)
    assert bounds.get_bound("smile", clip=None, gradient="smile").readout is None
    with pytest.raises(ValueError, match="a `readout` goes with an `objective`"):
        bounds.make_bound("mine_nwj", bounds.nwj, readout=bounds.nwj)
    with pytest.raises(TypeError, match="`readout` of bound 'mine_js' must be a function"):
        bounds.make_bound("mine_js", bounds.js, objective=bounds.js_fgan, readout=1.0)


def test_js_calibration_finds_the_js_optimal_affine_map():
    x, y = tasks.correlated_gaussian(jax.random.key(7), 2.0, _BATCH, _DIM)
    s = tasks.gaussian_log_ratio(x, y, 2.0)

    @jax.jit
    def calibrate_and_check(scores):
        ab = bounds.js_calibration(scores, iterations=20)
        objective = lambda p: bounds.js_fgan(p[0] * scores + p[1])  # noqa: E731
        return ab, jax.grad(objective)(ab), objective(ab), objective(jnp.array([1.0, 0.0]))

    ab_true, grad, best, identity = calibrate_and_check(s)
    # The log density ratio is the JS objective's population optimum: (a, b) near (1, 0), off
    # only by the sampling noise of 1024 joint pairs.
    np.testing.assert_allclose(ab_true, [1.0, 0.0], atol=0.1)
    np.testing.assert_allclose(grad, 0.0, atol=1e-5)  # a stationary point ...
    assert best >= identity  # ... and never worse than the identity
    # An overconfident, shifted critic 2 s + 1 maps back onto the same critic a s + b: the
    # optimum is equivariant, a' = a / 2 and b' = b - a / 2.
    ab_scaled, grad_scaled, best_scaled, identity_scaled = calibrate_and_check(2.0 * s + 1.0)
    np.testing.assert_allclose(
        ab_scaled, [ab_true[0] / 2, ab_true[1] - ab_true[0] / 2], rtol=1e-3, atol=1e-4
    )
    np.testing.assert_allclose(best_scaled, best, rtol=1e-5)
    assert identity_scaled < best_scaled - 0.1  # the overconfident critic was far off
    np.testing.assert_allclose(grad_scaled, 0.0, atol=1e-5)
    # Scores that are pure noise: the best affine map is nearly the constant critic (a within
    # about 5 standard errors of 0: the diagonal's mean is noise of sd ~ 1 / sqrt(1024)), and
    # its objective is hardly above the constant critic's -2 log 2.
    noise = jax.random.normal(jax.random.key(8), (_BATCH, _BATCH))
    ab_noise, grad_noise, best_noise, _ = calibrate_and_check(noise)
    assert abs(float(ab_noise[0])) < 0.15 and abs(float(ab_noise[1])) < 0.01
    assert 0.0 <= best_noise + 2 * math.log(2) < 0.005
    np.testing.assert_allclose(grad_noise, 0.0, atol=5e-5)  # float32 sums over 10^6 pairs


@pytest.mark.parametrize("scale, shift", [(5.0, -10.0), (30.0, 0.0), (0.1, 3.0)])
def test_js_calibration_reaches_the_optimum_from_the_identity_in_four_candidates(scale, shift):
    # A critic far off: shifted and overconfident (its sigmoids saturate at the identity, where
    # the Newton step overshoots by orders of magnitude), or far too timid. Four candidates,
    # `estimate_mi`'s budget, reach the objective of the map that 64 reach.
    x, y = tasks.correlated_gaussian(jax.random.key(7), 2.0, 256, 20)
    scores = scale * tasks.gaussian_log_ratio(x, y, 2.0) + shift
    objective = lambda p: bounds.js_fgan(p[0] * scores + p[1])  # noqa: E731
    calibrate = jax.jit(bounds.js_calibration, static_argnames="iterations")
    four, many = calibrate(scores, iterations=4), calibrate(scores, iterations=64)
    np.testing.assert_allclose(objective(four), objective(many), rtol=1e-5)
    np.testing.assert_allclose(four, many, rtol=1e-3, atol=1e-3)
    assert objective(four) > objective(jnp.array([1.0, 0.0])) + 0.01


def test_js_calibration_by_default_reaches_the_optimum_of_a_far_critic_at_high_mi():
    # At high MI the discriminant start is further off and four candidates are not enough: on
    # this critic (30x overconfident, shifted by -20) they kept the identity, where SMILE reads
    # 216.8 nats against the optimum's 10.0 (the former default, 4). The default evaluates 32.
    x, y = tasks.correlated_gaussian(jax.random.key(0), 8.0, 400, 5)
    scores = 30.0 * tasks.gaussian_log_ratio(x, y, 8.0) - 20.0
    objective = lambda p: bounds.js_fgan(p[0] * scores + p[1])  # noqa: E731
    calibrate = jax.jit(bounds.js_calibration, static_argnames="iterations")
    np.testing.assert_allclose(
        objective(calibrate(scores)), objective(calibrate(scores, iterations=128)), atol=1e-5
    )


# --------------------------------------------------------------------------------------------
# 4. jit and vmap.

_FNS = {
    "dv": lambda s, v: bounds.dv(s),
    "nwj": lambda s, v: bounds.nwj(s),
    "tuba": lambda s, v: bounds.tuba(s, log_baseline=v),
    "infonce": lambda s, v: bounds.infonce(s),
    "js_fgan": lambda s, v: bounds.js_fgan(s),
    "js": lambda s, v: bounds.js(s),
    "smile": lambda s, v: bounds.smile(s, clip=1.0),
    "smile_no_clip": lambda s, v: bounds.smile(s, clip=None, gradient="smile"),
    "interpolated_0": lambda s, v: bounds.interpolated(s, alpha=0.0, log_baseline=v),
    "interpolated_0.3": lambda s, v: bounds.interpolated(s, alpha=0.3, log_baseline=v),
    "interpolated_1": lambda s, v: bounds.interpolated(s, alpha=1.0),
    "flo": lambda s, v: bounds.flo(s, v),
    "mine_first_step": lambda s, v: bounds.mine(decay=0.9).update(s, bounds.mine().init())[0],
}


_JIT_STACK = np.stack([_rand_scores(300 + k, 5) for k in range(3)])
_JIT_VECS = np.stack([_rand_vec(400 + k, 5) for k in range(3)])


def _values_and_grads(s, v):
    """Every bound's value and gradient (w.r.t. scores and the [B] input) in one program."""
    return {name: jax.value_and_grad(fn, argnums=(0, 1))(s, v) for name, fn in _FNS.items()}


@pytest.fixture(scope="module")
def jit_results():
    # One compilation for the jitted loop and one for the vmapped program, shared by all names.
    single = jax.jit(_values_and_grads)
    loop = [single(s, v) for s, v in zip(_JIT_STACK, _JIT_VECS, strict=True)]
    batched = jax.jit(jax.vmap(_values_and_grads))(_JIT_STACK, _JIT_VECS)
    return loop, batched


@pytest.mark.parametrize("name", list(_FNS))
def test_jit_equals_eager_and_vmap_equals_loop(name, jit_results):
    fn = _FNS[name]
    loop, batched = jit_results
    jitted = np.array([float(r[name][0]) for r in loop])
    # Op by op, without jit (one matrix: eager dispatch is slow).
    np.testing.assert_allclose(
        jitted[0], float(fn(_JIT_STACK[0], _JIT_VECS[0])), rtol=1e-6, atol=1e-6
    )
    bvalue, bgrad = batched[name]
    assert bvalue.shape == (3,)
    np.testing.assert_allclose(bvalue, jitted, rtol=1e-6, atol=1e-6)
    for k in range(2):
        np.testing.assert_allclose(
            bgrad[k], np.stack([r[name][1][k] for r in loop]), rtol=1e-5, atol=1e-6
        )


# --------------------------------------------------------------------------------------------
# 5. Finite gradients for diverging critics.

_B = 4
_EYE = np.eye(_B, dtype=bool)
_PATTERNS = {
    "all_pos": np.full((_B, _B), 1e4, np.float32),
    "all_neg": np.full((_B, _B), -1e4, np.float32),
    "diag_pos_off_neg": np.where(_EYE, 1e4, -1e4).astype(np.float32),
    "diag_neg_off_pos": np.where(_EYE, -1e4, 1e4).astype(np.float32),
    "random_signs": (1e4 * np.sign(np.random.default_rng(5).standard_normal((_B, _B)))).astype(
        np.float32
    ),
}
# Where a leave-one-out normalizer computed by cancellation, log(S - e^s), would make the
# gradient NaN: the diagonal dominates every column, so each marginal normalizer (which leaves
# the diagonal out) would come out -inf. `_log_loo_mean_exp` computes that case directly; it
# has its own test below.
_NAN_GRAD = {"interpolated_1": ("diag_pos_off_neg",)}
_GRAD_FNS = {
    "dv": lambda s: bounds.dv(s),
    "nwj": lambda s: bounds.nwj(s),
    "tuba": lambda s: bounds.tuba(s, log_baseline=0.0),
    "infonce": lambda s: bounds.infonce(s),
    "js_fgan": lambda s: bounds.js_fgan(s),
    "js": lambda s: bounds.js(s),
    "smile_js_grad": lambda s: bounds.smile(s, clip=5.0),
    "smile_smile_grad": lambda s: bounds.smile(s, clip=5.0, gradient="smile"),
    "smile_no_clip": lambda s: bounds.smile(s, clip=None, gradient="smile"),
    "interpolated_0": lambda s: bounds.interpolated(s, alpha=0.0),
    "interpolated_0.5": lambda s: bounds.interpolated(s, alpha=0.5),
    "interpolated_1": lambda s: bounds.interpolated(s, alpha=1.0),
    "flo_u0": lambda s: bounds.flo(s, jnp.zeros(_B, jnp.float32)),
    "mine": lambda s: bounds.mine(decay=0.9).update(s, bounds.mine().init())[0],
}


def _finite(a) -> bool:
    return bool(np.all(np.isfinite(np.asarray(a, np.float32))))


def _huge_score_results(dtype):
    """{bound: {pattern: (value finite?, gradient finite?)}} for scores of ``dtype``, from one
    program vmapped over the patterns."""
    fns = {n: jax.value_and_grad(f) for n, f in _GRAD_FNS.items()}
    out = jax.jit(jax.vmap(lambda s: {n: f(s) for n, f in fns.items()}))(
        np.stack(list(_PATTERNS.values())).astype(dtype)
    )
    return {
        n: {p: (_finite(v[k]), _finite(g[k])) for k, p in enumerate(_PATTERNS)}
        for n, (v, g) in out.items()
    }


@pytest.fixture(scope="module")
def huge_score_grads():
    return _huge_score_results(np.float32)


@pytest.mark.parametrize("fname", list(_GRAD_FNS))
def test_gradients_finite_for_huge_scores(fname, huge_score_grads):
    """Scores of +-1e4: the values too (the soft exponential's continuation above 80 grows only
    logarithmically; a linear one overflowed float32 from ~6e3 on)."""
    results = huge_score_grads[fname]
    assert all(value for value, _ in results.values()), results
    finite = {p: grad for p, (_, grad) in results.items() if p not in _NAN_GRAD.get(fname, ())}
    assert len(finite) >= 4 and all(finite.values()), finite


@pytest.mark.parametrize("fname", list(_NAN_GRAD))
def test_interpolated_gradients_finite_when_one_entry_dominates(fname, huge_score_grads):
    finite = {p: huge_score_grads[fname][p][1] for p in _NAN_GRAD[fname]}
    assert all(finite.values()), finite


def test_leave_one_out_normalizer_with_ties_at_huge_scores():
    """Two rows tied at every column's maximum, at +-3e7: float32 rounds ``log S`` to the tied
    entry itself there, and an unclamped gap of 0 made the normalizer -inf and I_1 NaN. Against
    a float64 leave-one-out log-sum-exp over the same float32 scores."""
    rng = np.random.default_rng(0)
    batch = 8
    scores = rng.uniform(-3e7, 3e7, (batch, batch)).astype(np.float32)
    scores[[2, 5]] = 3e7
    s64 = scores.astype(np.float64)
    reference = np.array(
        [[np.logaddexp.reduce(np.delete(s64[:, j], i)) for j in range(batch)] for i in range(batch)]
    ) - np.log(batch - 1)
    loo = jax.jit(bounds._log_loo_mean_exp)(scores)
    np.testing.assert_allclose(np.asarray(loo), reference, rtol=1e-6)
    value, grad = jax.jit(jax.value_and_grad(lambda s: bounds.interpolated(s, alpha=1.0)))(scores)
    assert _finite(value) and _finite(grad)


@pytest.mark.parametrize("alpha", [1.0, 0.5, 0.01])
def test_interpolated_gradient_with_a_tie_at_a_columns_maximum(alpha):
    """A column with two entries tied at its maximum (a saturated critic; at B = 2 a constant
    one, as at initialization): the leave-one-out gap of the tied entry is exactly log 2, and
    its value's clamp there took the gradient away (I_1's was twice the true one in that
    column, nonzero at B = 2 where I_1 is identically 0). Against central differences of the
    float64 reference, written from the paper."""
    cases = [
        np.array([[5.0, 0.3, 0.3], [5.0, 0.3, 0.3], [-45.0, 0.3, 0.3]]),
        np.zeros((2, 2)),
        np.array([[2.0, -1.0, 0.5, 0.0], [2.0, 1.0, 0.5, 0.2], [-30, 0.0, 0.5, 3.0], [0, 1, 0, 1]]),
    ]
    for s in cases:
        grad = jax.jit(jax.grad(lambda x: bounds.interpolated(x, alpha=alpha)))(s.astype("f4"))
        h, want = 1e-5, np.zeros_like(s)
        for index in np.ndindex(s.shape):
            step = np.zeros_like(s)
            step[index] = h
            up, down = (_ref_interpolated(s + d, alpha, 0.0) for d in (step, -step))
            want[index] = (up - down) / (2 * h)
        np.testing.assert_allclose(np.asarray(grad), want, atol=2e-5, err_msg=str(s))


def test_half_precision_learned_inputs_are_computed_in_float32():
    """FLO's ``u`` and TUBA's log baseline in bfloat16 (a network's output in mixed precision)
    are read in float32 as the scores are: FLO's ``mean(u)`` in bfloat16 was off by ~4e-3 nats
    (the helper's example: -0.7828 against -0.7789)."""
    s = jnp.array([[1.0, 0.0], [0.0, 1.0]], jnp.bfloat16)
    v = jnp.array([1.1, 2.3], jnp.bfloat16)
    v32 = v.astype(jnp.float32)  # the same numbers, exactly
    assert float(bounds.flo(s, v)) == float(bounds.flo(s, v32))
    want = _ref_flo(np.asarray(s, np.float64), np.asarray(v32, np.float64))
    np.testing.assert_allclose(float(bounds.flo(s, v)), want, rtol=1e-6)
    assert float(bounds.tuba(s, log_baseline=v)) == float(bounds.tuba(s, log_baseline=v32))


def test_half_precision_scores_are_computed_in_float32():
    """Every bound returns float32 for float16 or bfloat16 scores. At +-1e4, their values stay
    finite (in float16, e^80 and sums of 1e4's overflow); bfloat16 has float32's range, so its
    gradients do too. float16's gradients cannot (e^f passes 65504 from f ~ 11 on)."""
    for dtype in (jnp.float16, jnp.bfloat16):
        spec = jax.ShapeDtypeStruct((_B, _B), dtype)
        for name, fn in _GRAD_FNS.items():
            assert jax.eval_shape(fn, spec).dtype == jnp.float32, (dtype, name)
    # The bounds with the soft exponential, and those whose float16 sums overflowed.
    names = ("nwj", "js", "interpolated_0.5", "flo_u0")

    @jax.jit
    def values_and_grads(half, bf16):
        values = {n: jax.vmap(_GRAD_FNS[n])(half) for n in names}
        return values, {n: jax.vmap(jax.grad(_GRAD_FNS[n]))(bf16) for n in names}

    pats = np.stack(list(_PATTERNS.values()))
    values, grads = values_and_grads(pats.astype(jnp.float16), pats.astype(jnp.bfloat16))
    assert all(_finite(v) for v in values.values()), values
    assert all(_finite(g) for g in grads.values())


def test_float32_scores_give_float32_values_under_x64():
    """Under ``jax_enable_x64`` a bound's Python-number arguments defer to the scores' dtype
    (interpolated at alpha = 0 returned float64: its scalar baseline, through `jnp.diag`,
    became a strong float64, which a float32 scan carry refuses)."""
    with jax.enable_x64(True):
        for dtype in (jnp.float32, jnp.float16, jnp.bfloat16):
            spec = jax.ShapeDtypeStruct((_B, _B), dtype)
            for name, fn in _GRAD_FNS.items():
                assert jax.eval_shape(fn, spec).dtype == jnp.float32, (dtype, name)


def test_offdiagonal_helpers_compute_half_precision_in_float32():
    # 300 x 299 = 89,700 entries: past float16's 65,504, the count and the sum were inf (a NaN
    # mean), and the log-mean-exp came back in float16 (0.531 for 0.501).
    values = np.full((300, 300), 1e-3, np.float32)
    np.fill_diagonal(values, 7.0)
    for dtype in (jnp.float16, jnp.bfloat16):
        half = jnp.asarray(values, dtype)
        exact = float(jnp.asarray(1e-3, dtype).astype(jnp.float32))  # the entries as rounded
        mean = bounds.mean_offdiag(half)
        assert mean.dtype == jnp.float32 and mean == pytest.approx(exact, rel=1e-5)
        lme = bounds.log_mean_exp_offdiag(half + 0.5)
        assert lme.dtype == jnp.float32
        assert lme == pytest.approx(float(jnp.asarray(1e-3 + 0.5, dtype)), rel=1e-5)


def _interpolated_huge_value_cases():
    cases = []
    for pname in _PATTERNS:
        # Correct (to float32 rounding) unless some column has a single dominating entry.
        dominated = _max_column_dominance(_PATTERNS[pname]) > 8.0
        cases.append(pytest.param(pname, id=f"{pname}-dominated{int(dominated)}"))
    return cases


@pytest.mark.parametrize("pname", _interpolated_huge_value_cases())
def test_interpolated_value_for_huge_scores(pname):
    # The log-space float64 reference is exact; float32 can resolve 1e4 only to ~1e-3.
    s = _PATTERNS[pname]
    value = float(_interpolated_1(s))
    np.testing.assert_allclose(value, _ref_loo_infonce(s), rtol=1e-6, atol=1e-2)


@pytest.mark.parametrize("argname", ["u", "log_baseline"])
def test_gradients_finite_for_huge_extra_inputs(argname):
    fn = {"u": bounds.flo, "log_baseline": lambda s, a: bounds.tuba(s, log_baseline=a)}[argname]
    pats = np.stack(list(_PATTERNS.values()))
    grad = jax.jit(
        jax.vmap(jax.vmap(jax.grad(fn, argnums=(0, 1)), in_axes=(None, 0)), in_axes=(0, None))
    )
    extra = np.stack(
        [
            np.full(_B, 1e4, np.float32),
            np.full(_B, -1e4, np.float32),
            np.array([1e4, -1e4, 0.0, 1e4], np.float32),
        ]
    )
    gs, ge = grad(pats, extra)  # [patterns, extras, ...]
    assert np.all(np.isfinite(np.asarray(gs))) and np.all(np.isfinite(np.asarray(ge)))
    values = jax.jit(jax.vmap(jax.vmap(fn, in_axes=(None, 0)), in_axes=(0, None)))(pats, extra)
    assert values.shape == (len(_PATTERNS), 3) and np.all(np.isfinite(np.asarray(values)))


@pytest.mark.parametrize("batch, score", [(1024, 1000.0), (80, 3e38)])
def test_flo_of_a_diverging_critic_stays_finite_at_large_batch(batch, score):
    # Off-diagonal scores of 1000 (a diverging critic): each pair's soft exponential is ~4e35,
    # and their sum over a batch of 1024 overflowed float32 to -inf (NWJ's one term did not);
    # at the continuation's ceiling (~5e36 a term) from a batch of ~70.
    scores = np.where(np.eye(batch, dtype=bool), 0.0, score).astype(np.float32)
    u = np.zeros(batch, np.float32)
    # float64 reference of the same formula: the log ratio log(mean_{i != j} e^s) - 0 = s.
    want = 1.0 - np.exp(80.0) * (1.0 + np.log1p(float(np.float32(score)) - 80.0))
    value, (gs, gu) = jax.jit(jax.value_and_grad(bounds.flo, argnums=(0, 1)))(scores, u)
    np.testing.assert_allclose(value, want, rtol=1e-5)
    assert np.all(np.isfinite(np.asarray(gs))) and np.all(np.isfinite(np.asarray(gu)))


@pytest.mark.parametrize("alpha", [0.01, 1e-3, 1e-8, 0.5])
def test_interpolated_float32_agrees_with_float64_at_huge_scores(alpha):
    # A column dominated by one score of 1e4: the marginal term was exp(s - log a_alpha), a
    # difference of two exponents near 1e4 whose float32 rounding it multiplied by up to
    # 1 / alpha: the value read 0.7 nats off at alpha = 1e-3, gradients 8 % off at 0.01 and
    # +-7072 for -0.083 at 1e-8. (A float64 reference written from eq. 13 in log space, by a
    # review: -30.361248 at alpha 0.01.)
    s = np.array([[-0.77, 1e4, 0.79], [0.89, 1e4, 0.59], [-0.09, -0.97, 1e4]])
    log_a = np.array([3.5, -9.6, 4.5])

    def fn(s, log_a):
        return bounds.interpolated(s, alpha=alpha, log_baseline=log_a)

    with jax.enable_x64(True):
        want, (want_gs, want_ga) = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))(s, log_a)
        want, want_gs, want_ga = float(want), np.asarray(want_gs), np.asarray(want_ga)
    if alpha == 0.01:
        np.testing.assert_allclose(want, -30.361248, atol=1e-6)
    got, (gs, ga) = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))(
        s.astype(np.float32), log_a.astype(np.float32)
    )
    # float32 resolves scores of 1e4 to ~1e-3: the joint term's log-differences keep that.
    np.testing.assert_allclose(float(got), want, rtol=1e-6, atol=2e-3)
    np.testing.assert_allclose(np.asarray(gs), want_gs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ga), want_ga, rtol=1e-5, atol=1e-6)


def test_interpolated_finite_when_diagonal_dominates_moderately():
    """A minimal, realistic case: scores 20 on the diagonal and -20 off it (B = 4).

    Exact value at alpha = 1: the joint normalizers leave out an off-diagonal entry
    (log mean = 20 - log 3), the marginal normalizers leave out the diagonal one (log mean =
    -20), so I_1 = 1 + log 3 - 1 = log 3.
    """
    s = np.where(_EYE, 20.0, -20.0).astype(np.float32)
    want = _ref_interpolated(s, 1.0, 0.0)
    np.testing.assert_allclose(want, math.log(3.0), rtol=1e-9)
    got = jax.jit(lambda s: bounds.interpolated(s, alpha=1.0))(s)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    grad = jax.jit(jax.grad(lambda s: bounds.interpolated(s, alpha=1.0)))(s)
    assert np.all(np.isfinite(np.asarray(grad)))


# --------------------------------------------------------------------------------------------
# 6. MINE.


def _mine_reference_grad(score_list, decay):
    """d value / d scores at each step: 1/B on the diagonal, -e^{s_ij} / (B (B-1) EMA_hat) off.

    EMA_t = sum_{k <= t} (1 - d) d^{t - k} m_k with m_k the off-diagonal mean of e^{s} at step
    k; EMA_hat = EMA_t / (1 - d^t) (Adam's bias correction).
    """
    grads = []
    ms = []
    for t, s in enumerate(score_list, start=1):
        s = s.astype(np.float64)
        b = len(s)
        ms.append(np.mean([np.exp(s[i, j]) for i, j in _offdiag_pairs(b)]))
        ema = sum((1.0 - decay) * decay ** (t - k) * m for k, m in enumerate(ms, start=1))
        corrected = ema / (1.0 - decay**t)
        g = np.zeros_like(s)
        for i in range(b):
            for j in range(b):
                g[i, j] = 1.0 / b if i == j else -np.exp(s[i, j]) / (b * (b - 1) * corrected)
        grads.append(g)
    return grads


@pytest.mark.parametrize("decay", [0.0, 0.5, 0.9])
def test_mine_value_is_dv_and_gradient_uses_corrected_moving_average(decay):
    score_list = [_rand_scores(500 + t, 4, scale=1.5) + t for t in range(3)]  # shifting scale
    init, update = bounds.mine(decay=decay)
    update_jit = jax.jit(update)
    grad_fn = jax.jit(jax.grad(lambda s, st: update(s, st)[0]))
    state = init()
    refs = _mine_reference_grad(score_list, decay)
    for s, ref in zip(score_list, refs, strict=True):
        value, new_state = update_jit(s, state)
        np.testing.assert_allclose(float(value), float(bounds.dv(s)), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(grad_fn(s, state), ref, rtol=1e-5, atol=1e-7)
        state = new_state
    assert int(state.count) == 3
    if decay > 0.0:
        # With a moving average the gradient is not DV's (the batch mean differs from EMA_hat).
        assert not np.allclose(
            grad_fn(score_list[-1], state), jax.grad(bounds.dv)(score_list[-1]), rtol=1e-3
        )


def test_mine_state_is_namedtuple_and_update_is_pure():
    init, update = bounds.mine(decay=0.9)
    state = init()
    assert isinstance(state, bounds.MineState)
    assert isinstance(state, tuple) and state._fields == ("log_ema", "count")
    assert int(state.count) == 0 and float(state.log_ema) == 0.0  # (not -inf: jax_debug_infs)
    s = _rand_scores(600, 5)
    v1, st1 = update(s, state)
    v2, st2 = update(s, state)
    assert float(v1) == float(v2)
    assert float(st1.log_ema) == float(st2.log_ema) and int(st1.count) == int(st2.count) == 1
    # The input state was not modified.
    assert int(state.count) == 0 and float(state.log_ema) == 0.0
    vj, stj = jax.jit(update)(s, state)
    np.testing.assert_allclose(float(vj), float(v1), rtol=1e-6)
    np.testing.assert_allclose(float(stj.log_ema), float(st1.log_ema), rtol=1e-6)
    assert stj.log_ema.dtype == jnp.float32 and stj.count.dtype == jnp.int32
    # After one step with bias correction, EMA_hat is the batch mean itself.
    m1 = math.log(np.mean(np.exp(s[~np.eye(5, dtype=bool)].astype(np.float64))))
    np.testing.assert_allclose(float(st1.log_ema) - math.log1p(-0.9), m1, rtol=1e-5)
    # A state saved by the earlier init (log_ema -inf at count 0) updates the same way.
    old = bounds.MineState(jnp.array(-jnp.inf, jnp.float32), jnp.array(0, jnp.int32))
    assert float(update(s, old)[1].log_ema) == float(st1.log_ema)


def test_mine_runs_under_jax_debug_infs():
    init, update = bounds.mine(decay=0.9)
    s = _rand_scores(601, 5)
    with jax.debug_infs(True):
        state = jax.jit(init)()
        for _ in range(2):
            value, state = jax.jit(update)(s, state)
    np.testing.assert_allclose(float(value), float(bounds.dv(s)), rtol=1e-6)


def test_mine_rejects_bad_decay():
    # 0.99999999 is 1 in float32, where the moving average runs (before: NaN values).
    for d in (-0.1, 1.0, 1.5, 0.99999999):
        with pytest.raises(ValueError, match="decay"):
            bounds.mine(decay=d)


# --------------------------------------------------------------------------------------------
# 7. Registry.

_EXPECTED = {"dv", "mine", "nwj", "tuba", "infonce", "js", "interpolated", "smile", "flo"}


def test_registry_lists_all_bounds():
    assert set(bounds.available_bounds()) >= _EXPECTED


@pytest.mark.parametrize("name", sorted(_EXPECTED))
def test_every_registered_bound_applies_through_the_interface(name):
    s = _rand_scores(700, 6)
    inputs_values = {"u": _rand_vec(701, 6), "log_baseline": _rand_vec(702, 6, 0.3)}
    bound = bounds.get_bound(name)
    assert bound.name == name
    assert set(bound.inputs) <= set(inputs_values)
    inputs = {k: inputs_values[k] for k in bound.inputs}
    state = bound.init()
    value, new_state = bound.apply(s, state, **inputs)
    assert value.shape == () and np.isfinite(float(value))
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    # Under jit, with gradients flowing to the scores and to the extra inputs.
    (jvalue, jstate), grads = jax.jit(
        jax.value_and_grad(
            lambda s, inp: bound.apply(s, state, **inp), argnums=(0, 1), has_aux=True
        )
    )(s, inputs)
    np.testing.assert_allclose(float(jvalue), float(value), rtol=1e-6, atol=1e-6)
    assert jax.tree.structure(jstate) == jax.tree.structure(state)
    want = {
        "dv": lambda: bounds.dv(s),
        "mine": lambda: bounds.dv(s),
        "nwj": lambda: bounds.nwj(s),
        "tuba": lambda: bounds.tuba(s, log_baseline=inputs_values["log_baseline"]),
        "infonce": lambda: bounds.infonce(s),
        "js": lambda: bounds.js(s),
        "interpolated": lambda: bounds.interpolated(s, log_baseline=inputs_values["log_baseline"]),
        "smile": lambda: bounds.smile(s),
        "flo": lambda: bounds.flo(s, inputs_values["u"]),
    }[name]()
    np.testing.assert_allclose(float(value), float(want), rtol=1e-6, atol=1e-6)
    assert np.all(np.isfinite(np.asarray(grads[0]))) and np.any(np.asarray(grads[0]) != 0)
    for k in bound.inputs:
        assert np.any(np.asarray(grads[1][k]) != 0), k
    # The `Bound` itself jitted, twice (as a NamedTuple it took no weak reference: a TypeError,
    # then a crashed interpreter on the second try), and its abstract evaluation.
    for _ in range(2):
        np.testing.assert_allclose(float(jax.jit(bound)(s, **inputs)), float(value), rtol=1e-6)
    assert jax.eval_shape(bound, s, **inputs).shape == ()


def test_registry_hparams_are_bound():
    s = _rand_scores(710, 5)
    np.testing.assert_allclose(
        bounds.get_bound("smile", clip=0.5).apply(s, ())[0], bounds.smile(s, clip=0.5), rtol=1e-6
    )
    b = bounds.get_bound("interpolated", alpha=0.3)
    np.testing.assert_allclose(
        b.apply(s, (), log_baseline=jnp.zeros(5))[0], bounds.interpolated(s, alpha=0.3), rtol=1e-6
    )
    mine = bounds.get_bound("mine", decay=0.5)
    state = mine.init()
    for _ in range(2):
        _, state = mine.apply(s, state)
    assert int(state.count) == 2


def test_a_bound_is_callable_and_needs_its_declared_inputs():
    s = _rand_scores(712, 5)
    # Called, a bound reads its value with a fresh state (`apply(s, init())[0]`).
    for name, direct in [("nwj", bounds.nwj), ("infonce", bounds.infonce), ("mine", bounds.dv)]:
        np.testing.assert_allclose(bounds.get_bound(name)(s), direct(s), rtol=1e-6)
    u = jnp.linspace(-1.0, 1.0, 5)
    np.testing.assert_allclose(bounds.get_bound("flo")(s, u=u), bounds.flo(s, u), rtol=1e-6)
    # Without a learned input it declares: named (FLO raised Python's "missing 1 required
    # positional argument"; TUBA and I_alpha read log a(y) = 0, the network's output lost).
    for name, missing in [("flo", "u"), ("tuba", "log_baseline"), ("interpolated", "log_baseline")]:
        with pytest.raises(
            TypeError, match=f"bound '{name}' takes its learned inputs \\['{missing}'\\]"
        ):
            bounds.get_bound(name).apply(s, ())


def test_register_bound_refuses_a_bound_function_for_a_factory():
    # Before: accepted; the first use failed with "bad hyperparameters [] for bound 'plain':
    # infonce() missing 1 required positional argument: 'scores'".
    with pytest.raises(TypeError, match=r"register_bound takes a factory .* not a bound function"):
        bounds.register_bound("plain_infonce", bounds.infonce)
    assert "plain_infonce" not in bounds.available_bounds()

    # A factory that requires a hyperparameter stays welcome (`get_bound` passes it).
    def needs_tau(tau):
        return bounds.make_bound("needs_tau", bounds.smile, clip=tau)

    bounds.register_bound("needs_tau", needs_tau)
    try:
        value = bounds.get_bound("needs_tau", tau=2.0)(_rand_scores(713, 4))
        np.testing.assert_allclose(value, bounds.smile(_rand_scores(713, 4), clip=2.0), rtol=1e-6)
    finally:
        bounds._REGISTRY.pop("needs_tau")


def test_registry_objective_is_the_function_training_follows():
    s = _rand_scores(711, 6)
    for name, hparams in [("js", {}), ("smile", {}), ("smile", {"clip": 2.0, "gradient": "js"})]:
        bound = bounds.get_bound(name, **hparams)
        np.testing.assert_allclose(bound.objective(s), bounds.js_fgan(s), rtol=1e-6)
        # The objective's gradient is the bound's gradient (the straight-through readout).
        np.testing.assert_allclose(
            jax.grad(bound.objective)(s),
            jax.grad(lambda t, b=bound: b.apply(t, ())[0])(s),
            rtol=1e-5,
        )
    for name, hparams in [
        ("smile", {"gradient": "smile", "clip": None}),
        ("nwj", {}),
        ("infonce", {}),
    ]:
        assert bounds.get_bound(name, **hparams).objective is None
    # The clipped bound's own gradient is unbounded above: estimate_mi read 6.9e8 nats of 1.
    with pytest.raises(ValueError, match="gradient='smile' and a finite `clip`"):
        bounds.get_bound("smile", gradient="smile")


def test_unknown_bound_name_suggests_the_closest():
    with pytest.raises(KeyError) as info:
        bounds.get_bound("infonc")
    message = str(info.value)
    assert "'infonc'" in message and "Did you mean 'infonce'" in message
    with pytest.raises(KeyError, match="'infoNCE'. Did you mean 'infonce'"):  # the paper's case
        bounds.get_bound("infoNCE")
    with pytest.raises(KeyError, match="'nope'"):
        bounds.get_bound("nope")


@pytest.mark.parametrize(
    "name,hparams",
    [
        ("dv", {"clip": 1.0}),
        ("mine", {"decay_rate": 0.9}),
        ("flo", {"alpha": 0.1}),
        ("nwj", {"x": 1}),
    ],
)
def test_bad_hparams_raise_type_error(name, hparams):
    with pytest.raises(TypeError, match=list(hparams)[0]):
        bounds.get_bound(name, **hparams)


def test_unknown_hparams_error_lists_what_the_bound_takes():
    # Before: "<lambda>() got an unexpected keyword argument", or the bound function's.
    for name, known in (
        ("smile", "['clip', 'gradient']"),
        ("interpolated", "['alpha']"),  # log_baseline is a learned input, not a hyperparameter
        ("mine", "['decay']"),
        ("dv", "[]"),
    ):
        with pytest.raises(TypeError) as info:
            bounds.get_bound(name, tau=3.0)
        assert str(info.value).endswith(f"['tau'] for bound '{name}'; known: {known}.")


def test_bad_hparams_of_smile_and_interpolated_raise_in_get_bound():
    with pytest.raises(TypeError, match="clipp"):
        bounds.get_bound("smile", clipp=1.0)
    # Values of the wrong type ran as numbers: clip=True as 1, alpha=True as InfoNCE's 1.
    for name, hparams, match in (
        ("smile", {"clip": True}, "`clip` must be a positive number or None"),
        ("smile", {"clip": "5"}, "`clip` must be a positive number or None"),
        ("interpolated", {"alpha": True}, r"`alpha` must be a number in \[0, 1\]"),
        ("interpolated", {"alpha": "0.5"}, r"`alpha` must be a number in \[0, 1\]"),
        ("mine", {"decay": True}, r"`decay` must be a number in \[0, 1\)"),
    ):
        with pytest.raises((TypeError, ValueError), match=match):
            bounds.get_bound(name, **hparams)
    # A concrete 0-d array is a number, as for every other hyperparameter (`_checks.is_number`):
    # these three refused `jnp.asarray(5.0)` as "not a positive number".
    s = _rand_scores(703, 6)
    for name, key, value in (("smile", "clip", 2.0), ("interpolated", "alpha", 0.3)) + (
        ("mine", "decay", 0.9),
    ):
        inputs = {"log_baseline": jnp.zeros(6)} if name == "interpolated" else {}
        want = bounds.get_bound(name, **{key: value})(s, **inputs)
        got = bounds.get_bound(name, **{key: jnp.asarray(value)})(s, **inputs)
        np.testing.assert_allclose(float(got), float(want), rtol=1e-6, err_msg=name)


# --------------------------------------------------------------------------------------------
# 8. Bad input.


def test_scores_given_as_nested_lists_are_named():
    # Before: "Cannot determine dtype of [[0.0, 1.0], [1.0, 0.0]]", from jnp.result_type.
    for name in ("dv", "smile", "infonce"):
        with pytest.raises(TypeError, match="`scores` must be an array, got a list"):
            bounds.get_bound(name).apply([[0.0, 1.0], [1.0, 0.0]], ())


_SCORE_FNS = {
    "dv": bounds.dv,
    "nwj": bounds.nwj,
    "tuba": bounds.tuba,
    "infonce": bounds.infonce,
    "js_fgan": bounds.js_fgan,
    "js": bounds.js,
    "smile": bounds.smile,
    "interpolated": bounds.interpolated,
    "flo": lambda s: bounds.flo(s, jnp.zeros(jnp.shape(s)[:1], jnp.float32)),
    "mine": lambda s: bounds.mine().update(s, bounds.mine().init()),
    # The public helpers the bounds are built from, and the calibration.
    "log_mean_exp_offdiag": bounds.log_mean_exp_offdiag,
    "js_calibration": bounds.js_calibration,
}
_BAD_SCORES = {
    "non_square": (np.zeros((3, 4), np.float32), ValueError),
    "rank_1": (np.zeros((4,), np.float32), ValueError),
    "rank_3": (np.zeros((2, 4, 4), np.float32), ValueError),
    "batch_1": (np.zeros((1, 1), np.float32), ValueError),
    "int_dtype": (np.zeros((4, 4), np.int32), TypeError),
}


def _bad_score_cases():
    cases = []
    for fname, bad in itertools.product(_SCORE_FNS, _BAD_SCORES):
        marks = ()
        cases.append(pytest.param(fname, bad, id=f"{fname}-{bad}", marks=marks))
    return cases


@pytest.mark.parametrize("fname,bad", _bad_score_cases())
def test_bad_scores_raise_naming_scores(fname, bad):
    scores, err = _BAD_SCORES[bad]
    with pytest.raises(err, match="scores"):
        _SCORE_FNS[fname](scores)
    with pytest.raises(err, match="scores"):  # also while tracing
        jax.jit(_SCORE_FNS[fname])(scores)


def test_bad_extra_inputs_raise_naming_them():
    s = _rand_scores(800, 4)
    # A tuple axis would have divided the sum over all pairs by batch - 1.
    for axis in ((0, 1), 2, -1):
        with pytest.raises(ValueError, match="`axis` must be None, 0 or 1"):
            bounds.log_mean_exp_offdiag(s, axis=axis)
    with pytest.raises(ValueError, match="`values` must be a .batch, batch. score matrix"):
        bounds.mean_offdiag(jnp.ones(4))
    # Before: a scan carry-type error, or `init` returned unchanged for a bad count.
    with pytest.raises(ValueError, match="`init` must be an .a, b. pair"):
        bounds.js_calibration(s, init=(1.0,))
    for iterations in (-1, 0, 2.5):
        with pytest.raises(ValueError, match="`iterations` must be an integer >= 1"):
            bounds.js_calibration(s, iterations=iterations)
    for u in (jnp.zeros(3), jnp.zeros((4, 1)), jnp.zeros(()), jnp.zeros(5)):
        with pytest.raises(ValueError, match="`u`"):
            bounds.flo(s, u)
    with pytest.raises(TypeError, match="`u`"):
        bounds.flo(s, jnp.zeros(4, jnp.int32))
    for base in (jnp.zeros(3), jnp.zeros((4, 4)), jnp.zeros((1, 4))):
        with pytest.raises(ValueError, match="log_baseline"):
            bounds.tuba(s, log_baseline=base)
        with pytest.raises(ValueError, match="log_baseline"):
            bounds.interpolated(s, alpha=0.5, log_baseline=base)
    with pytest.raises(TypeError, match="log_baseline"):
        bounds.tuba(s, log_baseline=jnp.zeros(4, jnp.int32))
    for clip in (0.0, -1.0):
        with pytest.raises(ValueError, match="clip"):
            bounds.smile(s, clip=clip)
    with pytest.raises(ValueError, match="gradient"):
        bounds.smile(s, gradient="dv")
    for alpha in (-0.1, 1.01, 2.0):
        with pytest.raises(ValueError, match="alpha"):
            bounds.interpolated(s, alpha=alpha)


def test_every_bound_traces_at_a_batch_whose_pair_count_passes_int32():
    # Before: batch 46342 (46342 * 46341 > 2**31 - 1 off-diagonal pairs) raised OverflowError in
    # seven bounds and in `log_mean_exp_offdiag` / `mean_offdiag` (an 8.6 GB score matrix,
    # which fits on a large accelerator). Traced only: no memory is used.
    n = 46342
    scores = jax.ShapeDtypeStruct((n, n), jnp.float32)
    column = jax.ShapeDtypeStruct((n,), jnp.float32)
    for name in bounds.available_bounds():
        bound = bounds.get_bound(name)
        inputs = {key: column for key in bound.inputs}
        out = jax.eval_shape(lambda s, kw, b=bound: b.apply(s, b.init(), **kw)[0], scores, inputs)
        assert out.shape == () and out.dtype == jnp.float32, name
    for fn in (bounds.log_mean_exp_offdiag, bounds.mean_offdiag):
        assert jax.eval_shape(fn, scores).shape == ()


def test_registry_defaults_are_the_documented_ones():
    """A bound named without its hyperparameter reads the documented default: SMILE's
    tau = 5 (Song & Ermon), I_alpha's alpha = 0.01, MINE's decay 0.99 (each against a float64
    reference that takes the value explicitly).

    Catches: `smile`'s default clip, `interpolated`'s default alpha or `mine`'s default decay
    changed (every config naming the bound without the key would silently change)."""
    # SMILE: scores with marginal entries past +-5 (and within +-10), so tau matters.
    s = _rand_scores(701, 5, scale=4.0)
    off = s[~np.eye(5, dtype=bool)]
    assert np.any(np.abs(off) > 5.5)
    assert abs(_ref_smile(s, 5.0) - _ref_smile(s, 10.0)) > 1e-2  # not vacuous
    for value in (bounds.get_bound("smile")(s), bounds.smile(s)):
        np.testing.assert_allclose(float(value), _ref_smile(s, 5.0), rtol=1e-5, atol=1e-5)

    # I_alpha with a learned baseline.
    s = _rand_scores(702, 5, scale=1.5)
    a = _rand_vec(703, 5)
    assert abs(_ref_interpolated(s, 0.01, a) - _ref_interpolated(s, 0.1, a)) > 1e-3
    got = bounds.get_bound("interpolated")(s, log_baseline=a)
    np.testing.assert_allclose(float(got), _ref_interpolated(s, 0.01, a), rtol=1e-5, atol=1e-5)

    # MINE: from the second step on, the gradient depends on the decay.
    score_list = [_rand_scores(704 + t, 4, scale=1.5) + t for t in range(3)]
    bound = bounds.get_bound("mine")
    grad_fn = jax.jit(jax.grad(lambda sc, st: bound.apply(sc, st)[0]))
    refs, others = _mine_reference_grad(score_list, 0.99), _mine_reference_grad(score_list, 0.9)
    assert np.max(np.abs(refs[-1] - others[-1])) > 1e-3  # not vacuous
    state = bound.init()
    for sc, ref in zip(score_list, refs, strict=True):
        np.testing.assert_allclose(grad_fn(sc, state), ref, rtol=1e-5, atol=1e-7)
        state = bound.apply(sc, state)[1]
