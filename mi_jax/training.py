"""Training critics: one pytree train state, one pure train step, loops compiled with `lax.scan`.

The unit of training is a `BoundEnsemble`: several bounds, each with its own critic (same
architecture, own parameters) and, where a bound needs one, its own extra network (FLO's
``u(x, y)``, TUBA's log baseline). Their critic parameters are stacked on a leading axis and
evaluated with one `jax.vmap`, so all bounds train in one compiled program with batched matrix
products (a single bound's critic runs on its slice, unbatched); each bound then reads only its
own slice of the scores. The loss is the sum of the bounds' negated values: the parameters
are disjoint and Adam acts per coordinate, so every bound trains as it would alone, up to float
rounding. A single bound's critic runs without the vmap, whose batched matmuls round
differently, and a bound sensitive to its critic's rounding (FLO or DV at high MI, as between
two seeds) can then end elsewhere over thousands of steps (the staircase's FLO at 10 nats,
levels 2, 6 and 10 nats of 600 steps each: 2.57 in the nine-bound run, -2.87 alone; two or
more bounds in a group give the nine-bound run's numbers for most bounds). Several seeds are
one more `jax.vmap` on the outside.
"""

import functools
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from flax.training import train_state

from mi_jax import _checks, parallel
from mi_jax import bounds as bounds_lib
from mi_jax import critics as critics_lib
from mi_jax import data as data_lib
from mi_jax.types import Array, PRNGKey, PyTree


class TrainState(train_state.TrainState):
    """Flax `TrainState` plus the bounds' own state (MINE's moving average)."""

    bound_states: PyTree = None


@struct.dataclass
class BoundEnsemble:
    """Bounds trained side by side, each with its own copy of one critic architecture.

    Attributes:
      bounds: the bounds (from `mi_jax.bounds.get_bound`).
      critic: a critic module returning ``[batch, batch]`` scores.
      aux_hidden: hidden widths of FLO's u network; the log baseline of TUBA and I_alpha uses
        only the first.
      aux_compute_dtype: matmul precision of the extra networks (see `mi_jax.critics.dense`).
      aux_kernel_init: weight initializer of the extra networks (`mi_jax.critics.get_initializer`).
    """

    bounds: tuple[bounds_lib.Bound, ...] = struct.field(pytree_node=False)
    critic: nn.Module = struct.field(pytree_node=False)
    aux_hidden: tuple[int, ...] = struct.field(pytree_node=False, default=(256, 256))
    aux_compute_dtype: str | None = struct.field(pytree_node=False, default=None)
    aux_kernel_init: str = struct.field(pytree_node=False, default="lecun_normal")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.bounds)

    def _aux_network(self, input_name: str, x: Array, y: Array) -> tuple[nn.Module, tuple]:
        """``(module, args)``: the network of a bound input (`bounds.BOUND_INPUTS`) and what
        it reads: FLO's u the joint pairs ``(x, y)``, the log-baseline ``y`` alone."""
        options = dict(compute_dtype=self.aux_compute_dtype, kernel_init=self.aux_kernel_init)
        if input_name == "u":
            return critics_lib.PairMLP(hidden=self.aux_hidden, **options), (x, y)
        if input_name == "log_baseline":
            return critics_lib.BaselineMLP(hidden=self.aux_hidden[:1], **options), (y,)
        raise ValueError(f"no network is known for the bound input {input_name!r}.")

    def init(self, rng: PRNGKey, x: Array, y: Array) -> tuple[PyTree, PyTree]:
        """Returns ``(params, bound_states)`` for batches ``x`` ``[B, dx]``, ``y`` ``[B, dy]``.

        All bounds start from the same critic initialization (drawn from ``rng``), so that
        differences between them come from the objectives alone.
        """
        _checks.check_key(rng, "rng")
        critic_params = self.critic.init(rng, x, y)
        n = len(self.bounds)
        stacked = jax.tree.map(lambda p: jnp.broadcast_to(p, (n, *p.shape)), critic_params)
        aux = {}
        for i, bound in enumerate(self.bounds):
            # The key comes from the bound's name (and its count among earlier bounds of that
            # name), not its position: a bound starts the same whatever else is in the ensemble.
            occurrence = self.names[:i].count(bound.name)
            bound_key = jax.random.fold_in(rng, zlib.crc32(bound.name.encode()) % 2**31)
            bound_key = jax.random.fold_in(bound_key, occurrence)
            for j, input_name in enumerate(bound.inputs):
                module, args = self._aux_network(input_name, x, y)
                key = jax.random.fold_in(bound_key, j)
                aux.setdefault(str(i), {})[input_name] = module.init(key, *args)
        states = tuple(b.init() for b in self.bounds)
        return {"critic": stacked, "aux": aux}, states

    def scores(self, params: PyTree, x: Array, y: Array) -> Array:
        """``[n_bounds, B, B]``: every bound's critic on the same batch."""
        if len(self.bounds) == 1:
            # One bound: its slice, no vmap (a vmap over one critic costs trace and compile
            # time, and turns each matmul into a batched dot, slower on XLA:CPU).
            one = jax.tree.map(lambda p: p[0], params["critic"])
            return self.critic.apply(one, x, y)[None]
        if not jax.tree.leaves(params["critic"]):  # parameter-free (inner_product): no axis
            scores = self.critic.apply(params["critic"], x, y)
            return jnp.broadcast_to(scores, (len(self.bounds), *scores.shape))
        return jax.vmap(self.critic.apply, in_axes=(0, None, None))(params["critic"], x, y)

    def apply(
        self, params: PyTree, bound_states: PyTree, x: Array, y: Array
    ) -> tuple[Array, PyTree]:
        """Returns ``(values [n_bounds], new_bound_states)`` on the batch ``(x, y)``."""
        return self._apply_to_scores(params, bound_states, self.scores(params, x, y), x, y)

    def evaluate(
        self, params: PyTree, bound_states: PyTree, x: Array, y: Array
    ) -> tuple[Array, Array]:
        """Returns ``(values [n_bounds], objectives [n_bounds])`` on a held-out batch: each
        bound's value and its training objective (`Bound.objective`, else the value), from
        one evaluation of the critics."""
        return self.evaluate_scores(params, bound_states, self.scores(params, x, y), x, y)

    def readouts(self, params: PyTree, bound_states: PyTree, x: Array, y: Array) -> Array:
        """``[n_bounds]``: `apply`'s values, each with its own gradient: a bound whose `apply`
        value carries another gradient (JS and SMILE the JS objective's, MINE its
        moving-average-corrected one) differentiates its `Bound.readout`. For derivatives of
        the estimates themselves, e.g. with respect to the samples (`experiments.mige_toy`)."""
        all_scores = self.scores(params, x, y)
        values, _ = self._apply_to_scores(params, bound_states, all_scores, x, y)
        return self._per_bound(values, all_scores, "readout")

    def evaluate_scores(
        self, params: PyTree, bound_states: PyTree, all_scores: Array, x: Array, y: Array
    ) -> tuple[Array, Array]:
        """`evaluate` on given ``[n_bounds, B, B]`` scores (e.g. the critics' scores after a
        recalibration); the extra networks (FLO's u, TUBA's baseline) still see ``x, y``."""
        values, _ = self._apply_to_scores(params, bound_states, all_scores, x, y)
        return values, self._per_bound(values, all_scores, "objective")

    def _per_bound(self, values: Array, all_scores: Array, attr: str) -> Array:
        """``[n_bounds]``: each bound's ``Bound.<attr>`` of its scores where it has one (`Bound`
        ``objective`` or ``readout``), else its value from ``values``."""
        out = []
        for i, bound in enumerate(self.bounds):
            fn = getattr(bound, attr)
            out.append(values[i] if fn is None else fn(all_scores[i]))
        return jnp.stack(out)

    def _apply_to_scores(
        self, params: PyTree, bound_states: PyTree, all_scores: Array, x: Array, y: Array
    ) -> tuple[Array, PyTree]:
        values, new_states = [], []
        for i, bound in enumerate(self.bounds):
            inputs = {}
            for input_name in bound.inputs:
                module, args = self._aux_network(input_name, x, y)
                inputs[input_name] = module.apply(params["aux"][str(i)][input_name], *args)
            value, state = bound.apply(all_scores[i], bound_states[i], **inputs)
            values.append(value)
            new_states.append(state)
        return jnp.stack(values), tuple(new_states)


def fast_compile_options() -> dict[str, Any]:
    """Compiler options for programs of many small kernels that are compiled more than run
    (`estimate_mi`'s rounds), on CPU: XLA's older loop emitters, which compile them in about two
    thirds of the time (the same HLO; the rounds run ~8 % slower), and LLVM at -O1, which cuts
    another fifth (`estimate_mi`'s round: 0.75-0.91 s against 0.99-1.09 s; the round runs as
    fast, 71.5 against 71.6 ms median; the older emitters alone compute the same bits, -O1
    moves the last bits: `estimate_mi`'s held-out curve by up to 4e-5 and its estimate by
    ~2e-7 nats on an AVX-512 CPU). Other backends: none."""
    if jax.default_backend() != "cpu":
        return {}
    options = {"xla_backend_optimization_level": 1}
    if compile_option_known("xla_cpu_use_fusion_emitters", False):  # (removed in jaxlib 0.11.1)
        options["xla_cpu_use_fusion_emitters"] = False
    return options


@functools.cache
def compile_option_known(name: str, value: Any) -> bool:
    """Whether this jaxlib's compiler for the default backend takes the option ``name``:
    options come and go between releases (jaxlib 0.11.1 removed XLA:CPU's
    ``xla_cpu_use_fusion_emitters``), and a program given one it does not know fails to
    compile. Found once per process by compiling an empty program with it."""
    try:
        jax.jit(lambda x: x, compiler_options={name: value}).lower(np.float32(0)).compile()
    except Exception as e:  # (jax.errors.JaxRuntimeError, by another name in older jaxlibs)
        if "No such compile option" in str(e):
            return False
        raise
    return True


def run_once_compiler_options() -> dict[str, Any]:
    """Compiler options for programs that run once (initialization), on CPU: skip the costly
    optimizations (LLVM at -O0: float rounding may differ from the default's in the last bit).
    Other backends: none (as `fast_compile_options`; measured on CPU only)."""
    if jax.default_backend() != "cpu":
        return {}
    return {
        **fast_compile_options(),
        "xla_backend_optimization_level": 0,
        "xla_llvm_disable_expensive_passes": True,
    }


def fast_division_compiler_options() -> dict[str, Any]:
    """Compiler options for long-running training loops, on CPU: a division may be compiled
    as a multiplication by the reciprocal (LLVM's ``arcp``), so that ``x / c`` with ``c``
    the same over a loop costs one division and a multiply per element. Adam divides every
    moment by its bias correction, a scalar, each step: on a 2-core AVX-512 CPU this took
    ~0.1 ms off the staircase's step (~20 % of Adam's time; of the run up to ~3 %, within the
    noise in a later check).

    These are XLA:CPU's fast-math options with NaN, inf and the math functions kept IEEE
    (so ``isnan``/``isfinite`` and the divergence checks see what they would); XLA has no
    switch for LLVM's other fast-math flags, so reassociation and no-signed-zeros come with
    them: sums may round differently (a cumulative sum by ~1e-6 relative) and a signed zero
    may lose its sign (``1 / (0.0 - x)`` at ``x = +0`` reads -inf). Results move at float32
    rounding. Other backends: none (measured on CPU only)."""
    if jax.default_backend() != "cpu":
        return {}
    return {
        "xla_cpu_enable_fast_math": True,
        "xla_cpu_fast_math_honor_nans": True,
        "xla_cpu_fast_math_honor_infs": True,
        "xla_cpu_fast_math_honor_functions": True,
        "xla_cpu_fast_math_honor_division": False,
    }


def create_train_state(
    ensemble: BoundEnsemble, optimizer: optax.GradientTransformation, rng: PRNGKey, x, y
) -> TrainState:
    """A fresh `TrainState` for ``ensemble`` (``x``, ``y`` fix the input shapes)."""
    params, bound_states = ensemble.init(rng, x, y)
    return TrainState.create(
        apply_fn=ensemble.apply, params=params, tx=optimizer, bound_states=bound_states
    )


# What `make_train_step`'s metrics hold.
STEP_METRICS = ("mi", "loss", "grad_norm", "param_norm")


def make_train_step(
    ensemble: BoundEnsemble, metrics: Sequence[str] | None = None
) -> Callable[[TrainState, tuple[Array, Array], PRNGKey], tuple[TrainState, dict[str, Array]]]:
    """The pure step ``train_step(state, batch, rng) -> (state, metrics)``.

    ``batch`` is ``(x [B, dx], y [B, dy])``. The step's metrics are ``"mi"`` (each bound's value
    before the update, ``[n_bounds]``), ``"loss"`` ``[]``, ``"grad_norm"`` and ``"param_norm"``
    (``[n_bounds]``, of each bound's critic); ``metrics`` names the ones to compute (None: all).
    """
    metrics = _check_metrics(metrics)

    def train_step(state: TrainState, batch: tuple[Array, Array], rng: PRNGKey):
        del rng  # The critics are deterministic; the key keeps one signature for all steps.
        x, y = batch

        def loss_fn(params):
            values, bound_states = ensemble.apply(params, state.bound_states, x, y)
            return -jnp.sum(values), (values, bound_states)

        (loss, (values, bound_states)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        new_state = state.apply_gradients(grads=grads, bound_states=bound_states)

        def norms(tree):  # [n_bounds]; zeros for a parameter-free critic
            if not jax.tree.leaves(tree):
                return jnp.zeros(len(ensemble.bounds))
            return jax.vmap(optax.tree.norm)(tree)

        compute = {
            "mi": lambda: values,
            "loss": lambda: loss,
            "grad_norm": lambda: norms(grads["critic"]),
            "param_norm": lambda: norms(state.params["critic"]),
        }
        return new_state, {name: compute[name]() for name in metrics}

    return train_step


def _check_metrics(metrics: Sequence[str] | None) -> tuple[str, ...]:
    """The metric names to compute (None: all of `STEP_METRICS`); an unknown name raises."""
    if metrics is None:
        return STEP_METRICS
    if unknown := sorted(set(metrics) - set(STEP_METRICS)):
        raise ValueError(f"unknown `metrics` {unknown}; the train step has {list(STEP_METRICS)}.")
    return tuple(metrics)


def make_scan_trainer(
    ensemble: BoundEnsemble,
    sample_fn: Callable[[PRNGKey, Array], tuple[Array, Array]],
    num_steps: int,
    mesh=None,
    metrics: Sequence[str] | None = None,
) -> Callable[[TrainState, PRNGKey, Array], tuple[TrainState, dict[str, Array]]]:
    """``run(state, rng, start_step) -> (state, metrics)``: ``num_steps`` steps in one `lax.scan`.

    Each step splits ``fold_in(rng, step)`` into two keys: the first draws a fresh batch
    ``sample_fn(key, step)``, the second goes to the train step; so a run split into chunks
    gives the same numbers as one long run (chunks of two steps or more: a one-step chunk
    compiles without a loop and rounds differently, ~5e-7 at first, compounding over a run as
    any rounding does: 2e-3 in InfoNCE's value within 500 steps). Metrics are stacked over steps
    (``[num_steps, ...]``) and stay on device until the caller pulls them; ``metrics`` names the
    ones to keep (None: all of `make_train_step`'s). A metric not kept is not computed: the
    norms read every parameter and gradient once more per step. With a ``mesh``
    (`mi_jax.parallel.data_mesh`; ``state`` replicated on it) each batch is split over the
    devices and the bounds still see all of it (the ``[B, B]`` scores of the global batch).
    """
    _checks.check_ints("make_scan_trainer", num_steps=num_steps)
    train_step = make_train_step(ensemble, metrics)

    def run(state: TrainState, rng: PRNGKey, start_step: Array):
        def body(state, step):
            data_key, step_key = jax.random.split(jax.random.fold_in(rng, step))
            batch = sample_fn(data_key, step)
            if mesh is not None:
                batch = parallel.shard_batch(batch, mesh)
            state, step_metrics = train_step(state, batch, step_key)
            if mesh is not None:
                state = parallel.replicate_like(state, mesh)
            return state, step_metrics

        steps = start_step + jnp.arange(num_steps)
        return jax.lax.scan(body, state, steps)

    return run


def make_ensemble(
    bound_specs: Sequence[str | tuple[str, dict[str, Any]]],
    critic: str,
    critic_hparams: dict[str, Any] | None = None,
    aux_hidden: Sequence[int] = (256, 256),
    clip: float | None = None,
) -> BoundEnsemble:
    """Builds a `BoundEnsemble` from names: ``make_ensemble(["nwj", ("smile", {"clip": 5.0})],
    "separable", {"hidden": (256, 256), "embed_dim": 32, "kernel_init": "glorot_uniform"})``.

    Give wide critics ``"kernel_init": "glorot_uniform"``, as `mi_jax.estimate_mi` and the
    staircase config do: with Flax's LeCun-normal default the (256, 256) separable critic
    starts with scores of standard deviation 1-2.4 (up to 16), and the bounds with an
    exponential term diverge from there (a review, Gaussian pair of 2 nats in 4-d, batch 128,
    Adam 1e-3, 1000 steps, four seeds: TUBA and MINE read -3e35 to 1.6 nats, NWJ -0.03 to
    1.18; Glorot-uniform: 1.59-1.95, NWJ 1.87-1.91).

    The extra networks (FLO's u, TUBA's baseline) take the critic's ``compute_dtype`` and
    ``kernel_init``; ``aux_hidden`` gives the u network's hidden widths (the baseline uses the
    first only). ``clip``
    soft-clips the critic's scores (`mi_jax.critics.soft_clip`; ``None``, 0 or ``inf``: off).
    """
    if isinstance(bound_specs, str):  # iterated, "nwj" read as the bounds 'n', 'w', 'j'
        raise TypeError(
            f"`bound_specs` must be a sequence of bound names or (name, hparams) pairs, got the "
            f"string {bound_specs!r}; write [{bound_specs!r}]."
        )
    _checks.check_int_sequences("make_ensemble", aux_hidden=aux_hidden)
    critics_lib.check_clip(clip)
    bounds = []
    for spec in bound_specs:
        if not (isinstance(spec, str) or _is_named_hparams(spec)):
            raise TypeError(
                "each of `bound_specs` must be a bound name or a (name, hparams dict) pair, "
                f"got {spec!r}."
            )
        name, hparams = (spec, {}) if isinstance(spec, str) else spec
        bounds.append(bounds_lib.get_bound(name, **dict(hparams)))
    if not bounds:
        raise ValueError("`bound_specs` is empty: name at least one bound.")
    module = critics_lib.get_critic(critic, **dict(critic_hparams or {}))
    compute_dtype = getattr(module, "compute_dtype", None)
    kernel_init = getattr(module, "kernel_init", "lecun_normal")
    if not critics_lib.clip_is_off(clip):
        module = critics_lib.ClippedCritic(module, clip)
    return BoundEnsemble(tuple(bounds), module, tuple(aux_hidden), compute_dtype, kernel_init)


def _is_named_hparams(spec) -> bool:
    return (
        isinstance(spec, Sequence)
        and len(spec) == 2
        and isinstance(spec[0], str)
        and hasattr(spec[1], "items")  # a Mapping, or a ConfigDict (which is none)
    )


def check_ensemble(ensemble: BoundEnsemble, dim_x: int, dim_y: int) -> None:
    """Traces ``ensemble.init`` on a batch of two (no compilation): what only shows with
    inputs (a critic that does not take these widths, a bad width of the extra networks)
    fails here, named by its module, before a run has written anything (the critics check
    their own settings when built)."""
    _checks.check_ints("check_ensemble", dim_x=dim_x, dim_y=dim_y)
    x, y = (
        jax.ShapeDtypeStruct((2, dim_x), jnp.float32),
        jax.ShapeDtypeStruct((2, dim_y), jnp.float32),
    )
    jax.eval_shape(ensemble.init, jax.random.key(0), x, y)


class NonFiniteError(FloatingPointError):
    """A bound's value or loss became NaN/inf; the message names the bound and the step."""


def first_nonfinite(values, step_axis: int = 0) -> tuple[int, ...] | None:
    """The index of the earliest non-finite entry of the host array ``values`` along its step
    axis (ties: the lowest index on the other axes), or None where every entry is finite.

    The one search behind every "became NaN at step ..." error: `raise_if_nonfinite`, InfoMax's
    chunks, the sweep chunks of IB and InfoMax-VAE.
    """
    bad = np.moveaxis(~np.isfinite(np.asarray(values)), step_axis, 0)
    if not bad.any():
        return None
    index = [int(i) for i in np.argwhere(bad)[0]]
    index.insert(step_axis, index.pop(0))
    return tuple(index)


def raise_if_nonfinite(values, names: Sequence[str], first_step: int, seed_axis: bool) -> None:
    """Raises `NonFiniteError` naming the first step and bound with a non-finite value.

    Args:
      values: host array ``[steps, n_bounds]`` or ``[seeds, steps, n_bounds]``.
      names: bound names.
      first_step: the steps done before ``values[..., 0, :]`` (the message counts steps from 1,
        as the metrics rows do: ``values[..., 0, :]`` is step ``first_step + 1``).
      seed_axis: whether ``values`` has a leading seed axis.
    """
    values = np.asarray(values)
    index = first_nonfinite(values, step_axis=1 if seed_axis else 0)
    if index is None:
        return
    *seed, step, bound = index
    where = f" (seed index {seed[0]})" if seed_axis else ""
    raise NonFiniteError(
        f"bound {names[bound]!r} became {values[index]} at step {first_step + step + 1}{where}."
    )


# --- Sweeps: several settings of one model (betas, weights) trained side by side ----------------


class SweepState(TrainState):
    """A `TrainState` plus a zero-initialized moving average of the parameters (``ema_params``,
    debiased by `averaged_params`). In a sweep every leaf has a leading settings axis."""

    ema_params: PyTree = None


def create_sweep_state(params, bound_states, tx, num_settings: int) -> SweepState:
    """``num_settings`` copies of one fresh state: every setting starts from the same
    initialization, so differences come from the settings alone."""
    _checks.check_ints("create_sweep_state", num_settings=num_settings)
    one = SweepState.create(
        apply_fn=None,
        params=params,
        tx=tx,
        bound_states=bound_states,
        ema_params=jax.tree.map(jnp.zeros_like, params),
    )
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (num_settings, *jnp.shape(a))), one)


def check_ema_decay(ema_decay, name: str = "ema_decay") -> None:
    """A weight average's decay: a real number in ``[0, 1)`` in float32, where it is applied (1
    would divide by ``1 - 1^t = 0``; 0.99999999 rounds to 1)."""
    if not (_checks.is_real(ema_decay) and 0.0 <= np.float32(ema_decay) < 1.0):
        raise ValueError(f"`{name}` must lie in [0, 1) (in float32), got {ema_decay!r}.")


def averaged_params(state: SweepState, ema_decay: float) -> PyTree:
    """The debiased moving average ``ema / (1 - d^t)`` per setting (``d = 0``: the parameters;
    before the first step, ``t = 0``, the parameters too, where the ratio was 0 / 0); one
    program (eagerly, a small one was compiled per parameter array)."""
    check_ema_decay(ema_decay)
    if ema_decay == 0.0:
        return state.params
    return _debiased_average(state.ema_params, state.params, state.step, float(ema_decay))


# Jitted on the arrays alone: on the whole state, its optimizer (a static field, made anew by
# each run) made every run compile, and keep, a program of its own.
@functools.partial(jax.jit, static_argnames="ema_decay")
def _debiased_average(ema_params: PyTree, params: PyTree, step: Array, ema_decay: float):
    trained = step > 0  # [settings] or [K, S]
    # 1 - d^t as -expm1(t log d), with the float32 d that `make_sweep_chunk` applies (1 - d^t
    # lost 3e-4 of itself to cancellation at d = 0.99999 and t = 20).
    log_decay = np.float32(np.log(np.float32(ema_decay)))  # (d > 0: `averaged_params`)
    correction = jnp.where(trained, -jnp.expm1(step.astype(jnp.float32) * log_decay), 1.0)

    def average(ema, params):
        lead = (*correction.shape, *([1] * (ema.ndim - correction.ndim)))
        return jnp.where(trained.reshape(lead), ema / correction.reshape(lead), params)

    return jax.tree.map(average, ema_params, params)


def make_sweep_chunk(
    loss_fn: Callable[..., tuple[Array, tuple[dict[str, Array], PyTree]]],
    train_key: PRNGKey,
    *,
    ema_decay: float = 0.0,
    sequential: bool = False,
    mesh=None,
    num_seeds: int | None = None,
):
    """``run(state, images, labels, indices [n, B], start_step, settings) -> (state, metrics)``.

    ``loss_fn(params, bound_states, images, labels, key, setting) -> (loss, (metrics,
    bound_states))`` with ``setting`` one slice of ``settings`` (a pytree with a leading axis,
    e.g. the betas ``[S]``). ``state`` is a `SweepState` stacked over settings. The ``n`` steps
    run in one jitted `lax.scan` (``state`` donated); each step updates every setting on the
    same batch ``images[idx]`` (uint8, converted with ``x / 255``; float images are refused)
    and the same key ``fold_in(train_key, step)``, so settings differ only by their values and
    a resumed run repeats the uninterrupted one. ``sequential`` runs the settings with
    `jax.lax.map` instead of `jax.vmap` (for losses whose batched form misbehaves, such as a
    batched ``eigh`` on XLA:CPU). Metrics come back stacked ``[n, S]``. With a ``mesh``
    (`mi_jax.parallel.data_mesh`; ``state``, ``images`` and ``labels`` replicated on it) each
    step is data-parallel: the batch is split over the devices, the losses see all of it.

    ``num_seeds = K``: K independent runs of the whole sweep side by side. ``train_key`` is
    then ``[K]`` keys, ``state`` is stacked ``[K, S]``, ``indices`` are ``[n, K, B]`` (each
    seed its own batches) and metrics come back ``[n, K, S]``; the seed axis is one more
    `jax.vmap` (``sequential``: one more `jax.lax.map`).
    """
    check_ema_decay(ema_decay)
    # The decay and its complement both as float32 values, so the weights sum to ``1 - d^t``
    # with the ``d`` that `averaged_params` divides by (a Python float's ``1 - d``, rounded on
    # its own, scaled the average by ``(1 - d) / (1 - float32(d))``: 0.99984 at d = 0.9999);
    # held as Python floats, which keep a bfloat16 parameter's dtype (NumPy scalars do not).
    decay = float(np.float32(ema_decay))
    complement = float(np.float32(1) - np.float32(ema_decay))
    _checks.check_bools("make_sweep_chunk", sequential=sequential)
    if num_seeds is not None:
        _checks.check_ints("make_sweep_chunk", num_seeds=num_seeds)

    def one(state, x, y, key, setting):
        (_, (metrics, bound_states)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.bound_states, x, y, key, setting
        )
        state = state.apply_gradients(grads=grads, bound_states=bound_states)
        ema = jax.tree.map(lambda e, p: decay * e + complement * p, state.ema_params, state.params)
        return state.replace(ema_params=ema), metrics

    if sequential:

        def every_setting(state, x, y, key, settings):
            return jax.lax.map(lambda ss: one(ss[0], x, y, key, ss[1]), (state, settings))

    else:
        every_setting = jax.vmap(one, in_axes=(0, None, None, None, 0))

    @functools.partial(jax.jit, donate_argnums=0)
    def run(state, images, labels, indices, start_step, settings):
        def seed_step(state, idx, seed_key, step):
            key = jax.random.fold_in(seed_key, step)
            x, y = data_lib.to_float(images[idx]), labels[idx]  # refuses float images
            if mesh is None:
                return every_setting(state, x, y, key, settings)
            state, metrics = every_setting(
                state, *parallel.shard_batch((x, y), mesh), key, settings
            )
            return parallel.replicate_like(state, mesh), metrics

        def body(state, inputs):
            i, idx = inputs
            if num_seeds is None:
                return seed_step(state, idx, train_key, start_step + i)
            if sequential:
                return jax.lax.map(lambda a: seed_step(*a, start_step + i), (state, idx, train_key))
            return jax.vmap(seed_step, in_axes=(0, 0, 0, None))(
                state, idx, train_key, start_step + i
            )

        return jax.lax.scan(body, state, (jnp.arange(indices.shape[0]), indices))

    return run
