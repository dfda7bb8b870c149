"""The contract every registered bound meets, a fork's new one included (README, "Adding a bound").

The checks are parametrized over `mi_jax.bounds.available_bounds()` at collection, so a bound
added to the registry is checked without a line here: its interface, jit and vmap, finite values
and gradients for diverging scores, the training objective's gradient, and that with the optimal
critic of a correlated Gaussian it does not read above the true MI. `tests/test_bounds.py` checks
each built-in bound's own formula against references.
"""

import math
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mi_jax import bounds, critics, tasks


def _inputs(bound, batch: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(batch).astype(np.float32) for k in bound.inputs}


def _value_fn(bound):
    state = bound.init()
    return lambda scores, inputs: bound.apply(scores, state, **inputs)[0]


def check_interface_jit_and_vmap(bound):
    assert set(bound.inputs) <= set(bounds.BOUND_INPUTS), bound.inputs
    state = bound.init()
    rng = np.random.default_rng(1)
    stack = (2.0 * rng.standard_normal((3, 6, 6))).astype(np.float32)
    inputs = [_inputs(bound, 6, seed) for seed in range(3)]
    value, new_state = bound.apply(stack[0], state, **inputs[0])  # eager, op by op
    assert value.shape == () and value.dtype == jnp.float32 and np.isfinite(float(value))
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    fn = jax.value_and_grad(_value_fn(bound), argnums=(0, 1))
    loop = [jax.jit(fn)(s, v) for s, v in zip(stack, inputs, strict=True)]
    np.testing.assert_allclose(float(loop[0][0]), float(value), rtol=1e-6, atol=1e-6)
    stacked_inputs = jax.tree.map(lambda *a: np.stack(a), *inputs)
    values, (grad_scores, grad_inputs) = jax.jit(jax.vmap(fn))(stack, stacked_inputs)
    np.testing.assert_allclose(values, [float(v) for v, _ in loop], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(grad_scores, np.stack([g[0] for _, g in loop]), rtol=1e-5, atol=1e-6)
    for k in bound.inputs:
        loop_grads = np.stack([g[1][k] for _, g in loop])
        np.testing.assert_allclose(grad_inputs[k], loop_grads, rtol=1e-5, atol=1e-6)
    # The critic is trained through the scores, the learned inputs through their gradients.
    assert np.all(np.isfinite(grad_scores)) and np.any(grad_scores != 0)
    for k in bound.inputs:
        assert np.all(np.isfinite(grad_inputs[k])) and np.any(grad_inputs[k] != 0), k


def check_training_objective(bound):
    """``Bound.objective`` (where the bound has one) is what training follows: its gradient is
    the bound's."""
    if bound.objective is None:
        return
    s = (2.0 * np.random.default_rng(2).standard_normal((6, 6))).astype(np.float32)
    inputs = _inputs(bound, 6)
    assert np.isfinite(float(bound.objective(s)))
    np.testing.assert_allclose(
        jax.grad(bound.objective)(s),
        jax.grad(_value_fn(bound))(s, inputs),
        rtol=1e-5,
        atol=1e-7,
    )


_B = 4
_EYE = np.eye(_B, dtype=bool)
_SIGNS = np.sign(np.random.default_rng(5).standard_normal((_B, _B)))
_HUGE = {  # a critic that diverged: scores of +-1e4
    "all_pos": np.full((_B, _B), 1.0),
    "all_neg": np.full((_B, _B), -1.0),
    "diag_pos_off_neg": np.where(_EYE, 1.0, -1.0),
    "diag_neg_off_pos": np.where(_EYE, -1.0, 1.0),
    "random_signs": _SIGNS,
}


def check_finite_for_diverging_scores(bound):
    fn = jax.jit(jax.value_and_grad(_value_fn(bound), argnums=(0, 1)))
    inputs = {k: np.zeros(_B, np.float32) for k in bound.inputs}
    for pattern, signs in _HUGE.items():
        value, grads = fn((1e4 * signs).astype(np.float32), inputs)
        assert np.isfinite(float(value)), pattern
        assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads)), pattern


_MI, _DIM, _BATCH, _KEYS = 1.0, 3, 256, 64


def _optimal_scores(key):
    """``[B, B]`` the optimal critic on a batch of the correlated Gaussian."""
    x, y = tasks.correlated_gaussian(key, _MI, _BATCH, _DIM)
    return tasks.gaussian_log_ratio(x, y, _MI)


def _candidate_inputs(scores):
    """Values of the learned inputs to try: 0, and each one's optimum for the built-in bound
    that takes it (any value keeps a bound a bound): FLO's u, log E_x' e^{f(x', y) - f(x, y)},
    and TUBA's log a(y), log E_x e^{f(x, y)} (about 0 at the optimal critic)."""
    return (
        {"u": jnp.zeros(_BATCH), "log_baseline": jnp.zeros(_BATCH)},
        {
            "u": bounds.log_mean_exp_offdiag(scores, axis=0) - jnp.diag(scores),
            "log_baseline": bounds.log_mean_exp_offdiag(scores, axis=0),
        },
    )


_SHIFTS = (-1.0, 0.0, 1.0)  # f* + 1 is NWJ's optimal critic


def check_at_most_the_true_mi(bound):
    """With the optimal critic f* of a correlated Gaussian shifted by c in {-1, 0, 1}, and each
    of `_candidate_inputs`, the mean over 64 batches of 256 is at most the true MI plus 4
    standard errors and the first-order upward bias of a batch-mean normalizer,
    (e^{2I} - 1) / (B - 1) (DV's: `tests/test_bounds.py`). Returns the largest mean."""
    value = _value_fn(bound)

    def candidates(key):
        scores = _optimal_scores(key)
        return jnp.stack(
            [
                value(scores + shift, {k: inputs[k] for k in bound.inputs})
                for shift in _SHIFTS
                for inputs in _candidate_inputs(scores + shift)
            ]
        )

    keys = jax.random.split(jax.random.key(7), _KEYS)
    values = np.asarray(jax.jit(lambda ks: jax.lax.map(candidates, ks))(keys), np.float64)
    assert np.all(np.isfinite(values))
    means, se = values.mean(0), values.std(0, ddof=1) / math.sqrt(_KEYS)
    allowance = math.expm1(2.0 * _MI) / (_BATCH - 1)
    assert np.all(means <= _MI + 4.0 * se + allowance), (means, se)
    return float(means.max())


CHECKS = (
    check_interface_jit_and_vmap,
    check_training_objective,
    check_finite_for_diverging_scores,
    check_at_most_the_true_mi,
)


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
@pytest.mark.parametrize("name", bounds.available_bounds())
def test_every_registered_bound_meets_the_contract(name, check):
    bound = bounds.get_bound(name)
    if check is check_training_objective and bound.objective is None:
        pytest.skip(f"{name!r} trains on its own value (no separate objective to check)")
    check(bound)


def test_the_contract_refuses_an_upper_bound():
    """The checks can fail: bounds that read above the MI are caught, even where the critic at
    0 reads far below it (NWJ: 1 - 1/e below; FLO at u = 0: 0.86 below)."""
    too_high = {
        "dv": lambda scores: bounds.dv(scores) + 0.2,
        "nwj": lambda scores: bounds.nwj(scores) + 0.2,
        "flo": lambda scores, u: bounds.flo(scores, u) + 0.2,
    }
    for name, fn in too_high.items():
        inputs = ("u",) if name == "flo" else ()
        with pytest.raises(AssertionError):
            check_at_most_the_true_mi(bounds.make_bound(f"{name}_plus", fn, inputs))
    unstable = bounds.make_bound(  # a plain exp overflows float32 at +-1e4
        "unstable", lambda scores: jnp.mean(jnp.diag(scores)) - jnp.mean(jnp.exp(scores - 1.0))
    )
    with pytest.raises(AssertionError, match="all_pos"):
        check_finite_for_diverging_scores(unstable)


def _readme_block(heading: str) -> str:
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split(heading, 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_bound_registers_runs_and_meets_the_contract(capsys):
    code = _readme_block("### Adding a bound")
    try:
        exec(compile(code, "README.md (Adding a bound)", "exec"), {})
        printed = float(capsys.readouterr().out.split()[-1])  # its estimate_mi, 2 nats true
        # A lower bound (InfoNCE's value, at most log 128 = 4.85) on 2 nats; it prints 1.89.
        assert 1.75 < printed < 2.1
        bound = bounds.get_bound("js_infonce")
        for check in CHECKS:
            check(bound)
        with pytest.raises(TypeError, match="js_infonce"):  # hyperparameters checked by name
            bounds.get_bound("js_infonce", clip=3.0)
    finally:
        bounds._REGISTRY.pop("js_infonce", None)  # noqa: SLF001 (other tests list the registry)


def test_a_soft_clipped_smile_reads_above_the_mi_and_is_caught():
    """What the contract is for: a plausible variant, SMILE with the clip made soft
    (c tanh(f / c), which shrinks every positive score), over-reads at the optimal critic: 1.14
    nats of 1 at c = 2 (the threshold, 1.07; every built-in bound reads at most 1.022)."""

    def soft_smile(scores, *, clip=2.0):
        soft = clip * jnp.tanh(scores / clip)
        return jnp.mean(jnp.diag(scores)) - bounds.log_mean_exp_offdiag(soft)

    with pytest.raises(AssertionError):
        check_at_most_the_true_mi(bounds.make_bound("soft_smile", soft_smile))


def test_make_bound_names_bad_inputs():
    fn = bounds.tuba  # takes log_baseline
    for inputs in ("log_baseline", ("baseline",), ["log_baseline"]):  # a str, unknown, a list
        with pytest.raises(ValueError, match=r"`inputs` of bound 'tuba2' must be a tuple"):
            bounds.make_bound("tuba2", fn, inputs)
    assert bounds.make_bound("tuba2", fn, ("log_baseline",)).inputs == ("log_baseline",)
    # Each was accepted and failed later, inside a compiled step, naming nothing.
    with pytest.raises(TypeError, match=r"\['log_baseline'\] of bound 'interpolated' are learned"):
        bounds.get_bound("interpolated", log_baseline=0.5)
    with pytest.raises(TypeError, match=r"bound 'vec': its value must be a float scalar"):
        bounds.make_bound("vec", jnp.diag)
    with pytest.raises(TypeError, match=r"bound 'int': its value must be a float scalar"):
        bounds.make_bound("int", lambda s: jnp.sum(s).astype(jnp.int32))
    with pytest.raises(TypeError, match=r"`objective` of bound 'o' must be a function"):
        bounds.make_bound("o", bounds.dv, objective=3)
    with pytest.raises(TypeError, match=r"bound 'o': its objective must be a float scalar"):
        bounds.make_bound("o", bounds.dv, objective=lambda s: s)


def test_registries_refuse_broken_entries(monkeypatch):
    monkeypatch.setattr(bounds, "_REGISTRY", dict(bounds._REGISTRY))  # noqa: SLF001
    monkeypatch.setattr(critics, "_CRITICS", dict(critics._CRITICS))  # noqa: SLF001
    with pytest.raises(TypeError, match="bound 'r1' must be registered with a callable"):
        bounds.register_bound("r1", "not a factory")
    for name in ("", None, ("dv",)):
        with pytest.raises(TypeError, match="the name of a new bound must be a non-empty string"):
            bounds.register_bound(name, lambda: bounds.get_bound("dv"))
    with pytest.raises(ValueError, match="the bound name 'dv' is already registered"):
        bounds.register_bound("dv", lambda: bounds.get_bound("dv"))
    bounds.register_bound("plain", lambda: bounds.dv)  # a function, not a Bound: found on use
    with pytest.raises(TypeError, match="returned a function, not a `Bound`"):
        bounds.get_bound("plain")
    with pytest.raises(TypeError, match="critic 'zz' must be a Module class"):
        critics.register_critic("zz", lambda **kw: None)
    # The same object again is a no-op; another one under a taken name is refused.
    critics.register_critic("separable", critics._CRITICS["separable"])  # noqa: SLF001
    with pytest.raises(ValueError, match="the critic name 'separable' is already registered"):
        critics.register_critic("separable", critics.BilinearCritic)
    # A bug inside a user's bound is its own error, traceback and all; it read "bad
    # hyperparameters ['t'] for bound 'buggy'", the traceback cut.
    bounds.register_bound("buggy", lambda t=1.0: bounds.make_bound("buggy", jnp.log(1, 2)))
    with pytest.raises(TypeError) as info:
        bounds.get_bound("buggy", t=2.0)
    assert "bad hyperparameters" not in str(info.value)
    assert info.value.component == "bound 'buggy'"  # what the command line names
    assert info.value.__traceback__.tb_next is not None  # not cut at `get_bound`
    with pytest.raises(
        TypeError, match=r"unknown hyperparameters \['tau'\] for bound 'buggy'; known: \['t'\]"
    ):
        bounds.get_bound("buggy", tau=2.0)  # what the factory's signature does not take
    # A list (as a config may hold) was an "unhashable type" TypeError.
    with pytest.raises(KeyError, match=r"a bound name must be a string, got \['dv'\]"):
        bounds.get_bound(["dv"])
    with pytest.raises(KeyError, match="a critic name must be a string"):
        critics.get_critic(["separable"])
