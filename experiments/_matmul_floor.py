"""The matmul floor of a training step: its matmuls alone, timed (`experiments.staircase`'s
``config.matmul_floor_steps``).

`dot_calls` lists every ``dot_general`` a traced step runs (forward, backward, scan bodies);
`matmul_only_program` runs exactly those matmuls, with the same shapes, dimension numbers and
dtypes, on random operands and nothing else: what the step's matmuls cost on their own.
"""

import functools

import jax
import jax.extend as jex
import jax.numpy as jnp
import numpy as np


def dot_calls(jaxpr: jex.core.Jaxpr) -> list[tuple]:
    """Every ``dot_general`` a jaxpr runs, sub-jaxprs included (call and scan bodies, the
    backward pass of a gradient), a scan's body repeated ``length`` times.

    Returns ``(lhs aval, rhs aval, dimension_numbers, preferred_element_type)`` per call.
    (A ``while`` body, whose trip count is not static, is counted once, and every branch of a
    ``cond``: exact for the staircase's one-step program, which has neither.)
    """
    calls = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            lhs, rhs = (v.aval for v in eqn.invars)
            dims, out_dtype = eqn.params["dimension_numbers"], eqn.params["preferred_element_type"]
            calls.append((lhs, rhs, dims, out_dtype))
        repeat = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
        for sub in jex.core.jaxprs_in_params(eqn.params):
            calls += dot_calls(sub) * repeat
    return calls


def dot_flops(calls: list[tuple]) -> float:
    """FLOPs of the calls from `dot_calls`: 2 x batch x rows x columns x contraction each."""
    total = 0.0
    for lhs, rhs, ((lhs_contract, _), (lhs_batch, _)), _ in calls:
        contract = np.prod([lhs.shape[d] for d in lhs_contract])
        batch = np.prod([lhs.shape[d] for d in lhs_batch])
        total += 2.0 * lhs.size * rhs.size / (contract * batch)
    return total


def matmul_only_program(calls: list[tuple], steps: int):
    """A function of the operands (one ``(lhs, rhs)`` pair per call) that runs ``steps``
    iterations of exactly these matmuls (shapes, dimension numbers, dtypes) and nothing else:
    what a training step's matmuls cost on their own, its floor.

    In each iteration the smaller operand of every matmul is shifted by a scalar carried from
    the previous one, so that no matmul can be hoisted out of the loop or merged with another
    (the matmuls of one step stay independent of each other, which makes the floor a little
    optimistic).
    """

    def run(operands):
        def body(carry, _):
            total = carry
            for (lhs, rhs), (_, _, dims, out_dtype) in zip(operands, calls, strict=True):
                if lhs.size <= rhs.size:
                    lhs = lhs + carry.astype(lhs.dtype)
                else:
                    rhs = rhs + carry.astype(rhs.dtype)
                out = jax.lax.dot_general(lhs, rhs, dims, preferred_element_type=out_dtype)
                total = total + 1e-30 * out.reshape(-1)[0].astype(jnp.float32)
            return total, None

        return jax.lax.scan(body, jnp.float32(0.0), None, length=steps)[0]

    return run


def random_operands(calls: list[tuple], key: jax.Array) -> list[tuple]:
    """Standard-normal ``(lhs, rhs)`` arrays of the calls' shapes and dtypes (distinct arrays:
    equal constants would let XLA merge matmuls)."""
    keys = jax.random.split(key, 2 * len(calls))
    return [
        tuple(
            jax.random.normal(k, aval.shape, jnp.float32).astype(aval.dtype)
            for k, aval in zip(keys[2 * i : 2 * i + 2], call[:2], strict=True)
        )
        for i, call in enumerate(calls)
    ]


def compile_floor(jaxpr: jex.core.Jaxpr, steps: int, place=lambda operands: operands):
    """``(run, flops)``: ``run()`` runs ``steps`` iterations of the jaxpr's matmuls alone,
    compiled, on random operands put where ``place`` puts them (a device); ``flops`` is one
    iteration's FLOP count (`dot_flops`)."""
    calls = dot_calls(jaxpr)
    operands = place(random_operands(calls, jax.random.key(1)))
    compiled = jax.jit(matmul_only_program(calls, steps)).lower(operands).compile()
    return functools.partial(compiled, operands), dot_flops(calls)
