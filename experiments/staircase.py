r"""The staircase benchmark of Poole et al. (2019): MI bounds tracking a stepwise-rising true MI.

  python -m experiments.staircase --config configs/staircase.py --workdir /tmp/staircase

For each task (Gaussian, cubic) and critic (separable, concat), all bounds train side by side in
one compiled program (`mi_jax.training.BoundEnsemble`), one critic per bound through the whole
staircase, fresh samples every step. The workdir receives `config.json`, `metrics.jsonl`
(`mi/BOUND`: means over `log_every` steps and the seeds), `results.json` and `results.csv`
(per bound and level: mean, bias, variance and MSE of the estimates over the last
`stats_fraction` of the level), per task
and critic every step's estimate (`estimates_TASK_CRITIC.npz`: ``estimates`` ``[seeds, steps,
bounds]``, ``true_mi`` ``[steps]``, ``bounds``) and a PNG in the style of the paper's Fig. 2.
"""

import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm import tqdm

from experiments import _cli, _common, _matmul_floor
from mi_jax import _checks, parallel, training
from mi_jax import bounds as bounds_lib
from mi_jax import critics as critics_lib
from mi_jax import tasks as tasks_lib


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raises a clear error for unknown names and impossible sizes before anything runs."""
    bounds, critics = bounds_lib.available_bounds(), critics_lib.available_critics()
    for field, known, noun in (
        ("bounds", bounds, "bound"),
        ("critics", critics, "critic"),
        ("tasks", tasks_lib.available_tasks(), "task"),
        ("task_hparams", tasks_lib.available_tasks(), "task"),
        ("critic_hparams", critics, "critic"),
    ):  # (an empty list is refused below)
        _common.check_names(config, field, known, noun, empty_ok=True)
    for field in ("bounds", "critics", "tasks", "levels"):
        if not config[field]:
            raise ValueError(f"config.{field} is empty.")
        _common.check_unique(config, field)
    if not all(_checks.is_real(level) and 0 < level < np.inf for level in config.levels):
        raise ValueError(f"config.levels must be positive MI values (nats), got {config.levels}.")
    # Every task, bound and critic is built here, so that a bad width, a typo in a bound's
    # hyperparameters or a level a task cannot express fails before the first run writes.
    _common.check_hparams_maps(config, "critic_hparams", "task_hparams")
    _common.check_bound_hparams(config)
    for name, hparams in config.task_hparams.items():
        if "dim" in hparams:
            raise ValueError(
                f"`config.task_hparams.{name}` sets `dim`: every task's width is `config.dim`."
            )
    for name in config.tasks:
        task = _task(config, name)
        if min(config.levels) < task.min_mi:
            raise ValueError(
                f"config.levels: the {name!r} task at dim {config.dim} has at least "
                f"{task.min_mi:.4f} nats of MI, below which it cannot go; got "
                f"{min(config.levels)}."
            )
        if max(config.levels) > task.max_mi:
            raise ValueError(
                f"config.levels: {max(config.levels)} nats is more than the samples of the "
                f"{name!r} task at dim {config.dim} carry ({task.max_mi:.4g}; beyond it y equals "
                "x for some pairs); raise config.dim."
            )
    for name in set(config.task_hparams) - set(config.tasks):  # (built above if it runs)
        _task(config, name)
    for name, hparams in config.critic_hparams.items():
        critics_lib.get_critic(name, **dict(hparams))
    _checks.check_int_sequences(**{"config.aux_hidden": config.aux_hidden})  # FLO's, TUBA's nets
    specs = _common.bound_specs(config, config.bounds)
    critics_lib.check_compute_dtype(config.compute_dtype)
    for name in config.critics:  # traced, as `_GroupRun` builds them: widths are checked there
        ensemble = training.make_ensemble(
            specs, name, _critic_hparams(config, name), config.aux_hidden
        )
        training.check_ensemble(ensemble, config.dim, config.dim)
    _common.check_learning_rate(config)
    smoothing = config.plot_smoothing
    if not (_checks.is_real(smoothing) and 0 <= smoothing < 1):
        raise ValueError(
            f"config.plot_smoothing (an EMA decay) must lie in [0, 1), got {smoothing!r}."
        )
    if not 0.0 < config.stats_fraction <= 1.0:
        raise ValueError(f"config.stats_fraction must lie in (0, 1], got {config.stats_fraction}.")
    _common.check_num_seeds(config)
    if config.bound_groups < 0 or config.cpu_devices < 1:
        raise ValueError(
            f"config.bound_groups must be >= 0 (0: one per device) and config.cpu_devices >= 1, "
            f"got {config.bound_groups} and {config.cpu_devices}."
        )
    _common.check_config_batch_size(config)
    if config.parallel not in ("bounds", "data"):
        raise ValueError(
            f"config.parallel must be 'bounds' (bound groups side by side, one per device) or "
            f"'data' (every batch split over all devices), got {config.parallel!r}."
        )
    if config.parallel == "data":
        parallel.check_batch_size(config.batch_size, parallel.data_mesh(), "config.batch_size")
    _common.check_int_fields(config, "steps_per_level")
    total = config.steps_per_level * len(config.levels)
    if config.chunk_steps < 1 or total % config.chunk_steps:
        raise ValueError(
            f"config.chunk_steps ({config.chunk_steps}) must divide the total number of steps "
            f"({total} = steps_per_level x levels)."
        )
    if config.log_every < 1 or config.chunk_steps % config.log_every:
        raise ValueError(
            f"config.log_every ({config.log_every}) must divide config.chunk_steps "
            f"({config.chunk_steps}): the metrics are means over whole windows of a chunk."
        )
    if config.steps_per_level % config.log_every:  # a row would mix two levels' estimates
        raise ValueError(
            f"config.log_every ({config.log_every}) must divide config.steps_per_level "
            f"({config.steps_per_level}): a metrics row averages steps of one MI level."
        )
    if config.matmul_floor_steps < 0:
        raise ValueError(
            f"config.matmul_floor_steps must be >= 0 (0: off), got {config.matmul_floor_steps}."
        )
    if config.matmul_floor_steps and config.parallel != "bounds":
        raise ValueError(
            "config.matmul_floor_steps needs config.parallel = 'bounds' (the matmul-only "
            "programs run one per bound group and device)."
        )


def level_statistics(values: np.ndarray, config) -> list[dict]:
    """Per-level statistics of the estimates.

    Args:
      values: ``[seeds, steps, n_bounds]`` estimates.
      config: the staircase config.

    Returns:
      One row per (bound, level): ``mean``, ``bias``, ``variance``, ``mse`` over the last
      ``stats_fraction`` of the level's steps, pooled over seeds (``variance`` with ddof 0, so
      ``mse = bias^2 + variance`` exactly); ``seed_std``: the standard deviation (ddof 0) over
      seeds of each seed's mean in that window (NaN, ``null`` in the JSON, for one seed: not
      measured).
    """
    rows = []
    spl = config.steps_per_level
    window = max(1, int(round(spl * config.stats_fraction)))
    for b, name in enumerate(config.bounds):
        for level_index, true_mi in enumerate(config.levels):
            end = (level_index + 1) * spl
            per_seed = values[:, end - window : end, b].astype(np.float64)  # [seeds, window]
            est = per_seed.reshape(-1)
            mean = float(np.mean(est))
            var = float(np.var(est))
            rows.append(
                dict(
                    bound=name,
                    true_mi=float(true_mi),
                    mean=mean,
                    bias=mean - true_mi,
                    variance=var,
                    mse=float(np.mean((est - true_mi) ** 2)),
                    seed_std=float(np.std(per_seed.mean(axis=1))) if len(values) > 1 else np.nan,
                )
            )
    return rows


def _ema(x: np.ndarray, decay: float) -> np.ndarray:
    out = np.empty_like(x)
    acc = x[0]
    for i, v in enumerate(x):
        acc = decay * acc + (1 - decay) * v
        out[i] = acc
    return out


def plot_staircase(
    path: str, values: np.ndarray, true_mi: np.ndarray, names, title: str, ema_decay: float
) -> None:
    """One panel per bound: raw estimates (light), EMA-smoothed estimate, true MI (black)."""
    n = len(names)
    cols = min(n, 5)
    rows = -(-n // cols)
    fig, axes = _common.subplots(
        rows, cols, figsize=(3.2 * cols, 2.8 * rows), sharey=True, squeeze=False
    )
    steps = np.arange(values.shape[1])
    top = float(np.max(true_mi)) * 1.5
    marker = "." if len(steps) == 1 else None  # (a line of one point draws nothing)
    for b, name in enumerate(names):
        ax = axes[b // cols][b % cols]
        smoothed = [_ema(values[s, :, b], ema_decay) for s in range(values.shape[0])]
        for s, curve in enumerate(smoothed):
            ax.plot(steps, values[s, :, b], color=f"C{b % 10}", alpha=0.15, lw=0.5, marker=marker)
            ax.plot(steps, curve, color=f"C{b % 10}", lw=1.2, marker=marker)
        ax.plot(steps, true_mi, color="black", lw=1.0, marker=marker)
        ax.set_title(name)
        # The raw estimates are noisy: where only the smoothed ones leave the axis is noted.
        _common.limit_axis(ax, -1.0, top, smoothed)
        ax.set_xlabel("step")
    for b in range(n, rows * cols):
        axes[b // cols][b % cols].axis("off")
    axes[0][0].set_ylabel("MI (nats)")
    fig.suptitle(
        f"{title}\nblack: true MI; bold: the estimate smoothed (EMA, decay {ema_decay:g}); "
        "light: each step's estimate",
        fontsize=9,
    )
    fig.tight_layout()
    _common.save_figure(fig, path, dpi=110)


def bound_groups(config, num_groups: int) -> list[list[int]]:
    """Splits the bounds (indices into ``config.bounds``) into ``num_groups`` groups of about
    equal cost: a critic each, plus FLO's u network and TUBA's baseline where present."""
    costs = []
    for name, hparams in _common.bound_specs(config, config.bounds):
        inputs = bounds_lib.get_bound(name, **hparams).inputs
        costs.append(1.0 + 0.5 * ("u" in inputs) + 0.2 * ("log_baseline" in inputs))
    groups = [[] for _ in range(max(1, min(num_groups, len(costs))))]
    loads = [0.0] * len(groups)
    for i in sorted(range(len(costs)), key=lambda i: -costs[i]):  # largest first
        g = loads.index(min(loads))
        groups[g].append(i)
        loads[g] += costs[i]
    return [sorted(g) for g in groups]


def _flops(lowered) -> float:
    """XLA's FLOP count of a lowered program (NaN where the backend gives none)."""
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return float((cost or {}).get("flops", float("nan")))


def _task(config, name: str) -> tasks_lib.Task:
    """Task ``name`` at ``config.dim``, with its hyperparameters from ``config.task_hparams``
    (a value its factory refuses is named with the setting)."""
    hparams = dict(config.task_hparams.get(name, {}))
    try:
        return tasks_lib.get_task(name, dim=config.dim, **hparams)
    except (ValueError, TypeError) as e:
        if not hparams or type(e) not in (ValueError, TypeError):
            raise
        message = f"`config.task_hparams.{name}` {hparams}: {_cli.error_message(e)}"
        raise type(e)(message) from e


def _critic_hparams(config, name: str) -> dict:
    """Critic ``name``'s hyperparameters from the config, with ``config.compute_dtype`` for a
    critic that has that setting (the MLP critics); one without it (bilinear, inner product,
    most of a user's) has float32 matmuls only."""
    hparams = dict(config.critic_hparams.get(name, {}))
    if "compute_dtype" in critics_lib.critic_fields(name):
        hparams["compute_dtype"] = config.compute_dtype
    elif config.compute_dtype not in (None, "float32"):
        raise ValueError(
            f"config.compute_dtype is {config.compute_dtype!r}, but critic {name!r} has no "
            "`compute_dtype` setting (its matmuls are float32); use 'float32' for it."
        )
    return hparams


class _GroupRun:
    """One group of bounds on one device (or, with a ``mesh``, on all of its devices, each
    batch split over them): its ensemble, states and compiled chunk runner."""

    def __init__(self, config, names, critic_name, sample, device, seed_keys, init_keys, mesh=None):
        specs = _common.bound_specs(config, names)
        ensemble = training.make_ensemble(
            specs, critic_name, _critic_hparams(config, critic_name), config.aux_hidden
        )
        optimizer = optax.adam(config.learning_rate)
        # Input shapes only (the parameters do not depend on the values): drawing a batch
        # eagerly ran some 30 small programs, each compiled (~2 s).
        x0, y0 = jax.eval_shape(sample, jax.random.key(0), 0)
        # What the critics' matmuls run in: bfloat16 where asked, else the samples' float
        # (float64 under `jax_enable_x64`, the parameters promoted to it).
        self.matmul_dtype = (
            "bfloat16"
            if config.compute_dtype == "bfloat16"
            else jnp.result_type(x0.dtype, jnp.float32).name
        )

        def init(key):
            x, y = (jnp.zeros(a.shape, a.dtype) for a in (x0, y0))
            return training.create_train_state(ensemble, optimizer, key, x, y)

        # Only the bound values leave the program (the norms would cost a pass over every
        # parameter and gradient per step).
        runner = training.make_scan_trainer(ensemble, sample, config.chunk_steps, mesh, ("mi",))
        # Seeds are vmapped; a single seed runs unbatched, since a vmap over an axis of size
        # one still turns every matmul into a two-batch-axis dot, ~30 % slower on XLA:CPU.
        self.batched = config.num_seeds > 1
        if self.batched:
            init, run, keys = jax.vmap(init), jax.vmap(runner, in_axes=(0, 0, None)), seed_keys
        else:
            init_keys, run, keys = init_keys[0], runner, seed_keys[0]
        # One small compiled program rather than a few hundred eager ops.
        states = jax.jit(init, compiler_options=training.run_once_compiler_options())(init_keys)
        self.devices = [str(device)] if mesh is None else [str(d) for d in mesh.devices.flat]

        def place(tree):  # global arrays over a mesh: each process holds its devices' copies
            return jax.device_put(tree, device) if mesh is None else parallel.replicate(tree, mesh)

        self.states, self.keys = place((states, keys))
        t0 = time.perf_counter()
        # The start step as int32, as `dispatch` passes it (a Python 0 lowers as int64 under x64).
        lowered = jax.jit(run, donate_argnums=0).lower(self.states, self.keys, np.int32(0))
        # Adam's scalar divisions as multiplications by a reciprocal: up to ~3 % of the run on CPU.
        self.compiled = lowered.compile(training.fast_division_compiler_options())
        self.compile_s = time.perf_counter() - t0
        # FLOPs of one step (sampling, critics, bounds, gradients, Adam), counted by XLA on the
        # lowered chunk: its cost analysis counts a loop's body once, so this is one step's
        # count (plus the chunk's step numbers, one integer add per step), without tracing a
        # one-step program.
        self.flops_per_step = _flops(lowered)
        self.matmul_only, self.matmul_flops_per_step = None, None
        if config.matmul_floor_steps:  # the step's matmuls alone, compiled for this device
            one_step = training.make_scan_trainer(ensemble, sample, 1, mesh, ("mi",))
            if self.batched:
                one_step = jax.vmap(one_step, in_axes=(0, 0, None))
            traced = jax.jit(one_step).trace(self.states, self.keys, np.int32(0))
            self.matmul_only, self.matmul_flops_per_step = _matmul_floor.compile_floor(
                traced.jaxpr.jaxpr, config.matmul_floor_steps, place
            )

    def dispatch(self, start: int):
        """Starts one chunk (asynchronously) and returns its on-device ``mi`` metrics."""
        # The start step goes as a host integer: creating it as a jax array would wait on the
        # default device, which is busy with another group's chunk.
        self.states, metrics = self.compiled(self.states, self.keys, np.int32(start))
        return metrics["mi"]

    def host_values(self, mi) -> np.ndarray:
        mi = np.asarray(mi)
        return mi if self.batched else mi[None]  # [seeds, chunk, bounds in this group]


def run_one(config, task_name: str, critic_name: str, metrics_writer, progress) -> dict:
    """Trains all bounds on one task with one critic; returns values and timings.

    The bounds are split into groups (`bound_groups`), one per local device by default, each
    group one compiled program on its device; the groups' chunks are dispatched together and
    run concurrently (on a CPU host split into several XLA devices, on one core each). With
    ``config.parallel = "data"`` all bounds form one group whose batches are split over every
    device (`mi_jax.parallel`).
    """
    names = tuple(config.bounds)
    task = _task(config, task_name)
    levels = tuple(config.levels)
    total = config.steps_per_level * len(levels)

    def mi_at(step):
        return tasks_lib.staircase_mi(step, levels=levels, steps_per_level=config.steps_per_level)

    def sample(key, step):
        return task.sample(key, mi_at(step), config.batch_size)

    root = jax.random.key(config.seed)
    init_key, data_key = jax.random.split(root)
    seed_keys = jax.random.split(data_key, config.num_seeds)
    init_keys = jax.random.split(init_key, config.num_seeds)
    devices = jax.local_devices()
    mesh = None
    if config.parallel == "data":  # one group, every batch split over all devices
        mesh = parallel.data_mesh()
        groups = [list(range(len(names)))]
    else:
        groups = bound_groups(config, config.bound_groups or len(devices))
    runs = [
        _GroupRun(
            config,
            [names[i] for i in group],
            critic_name,
            sample,
            devices[g % len(devices)],
            seed_keys,
            init_keys,
            mesh,
        )
        for g, group in enumerate(groups)
    ]
    compile_s = sum(r.compile_s for r in runs)

    # Host copy, for logging and plots (one program; eagerly, one per operation).
    true_mi = np.asarray(jax.jit(mi_at)(np.arange(total, dtype=np.int32)))
    chunks = []
    t0 = time.perf_counter()
    for start in range(0, total, config.chunk_steps):
        pending = [r.dispatch(start) for r in runs]  # all groups start before any is read
        fetched = [r.host_values(v) for r, v in zip(runs, pending, strict=True)]  # the sync
        # (float64 under x64: a value past float32's range must not read as inf)
        mi = np.empty((config.num_seeds, config.chunk_steps, len(names)), fetched[0].dtype)
        for group, values in zip(groups, fetched, strict=True):
            mi[..., group] = values
        chunks.append(mi)
        for i in range(0, config.chunk_steps, config.log_every):
            block = mi[:, i : i + config.log_every]
            step = start + i + config.log_every
            metrics_writer.write(
                dict(
                    task=task_name,
                    critic=critic_name,
                    step=step,
                    true_mi=float(true_mi[step - 1]),
                    **{f"mi/{n}": float(np.mean(block[..., b])) for b, n in enumerate(names)},
                )
            )
        progress.update(config.chunk_steps)
        training.raise_if_nonfinite(
            mi, [f"{n} ({task_name}, {critic_name})" for n in names], start, seed_axis=True
        )
    run_s = time.perf_counter() - t0
    values = np.concatenate(chunks, axis=1)
    flops_per_step = sum(r.flops_per_step for r in runs)
    matmul_floor_s = matmul_gflop_per_step = None
    if config.matmul_floor_steps:  # all groups' matmul-only programs side by side, as above
        t0 = time.perf_counter()
        jax.block_until_ready([r.matmul_only() for r in runs])
        matmul_floor_s = (time.perf_counter() - t0) * total / config.matmul_floor_steps
        matmul_gflop_per_step = sum(r.matmul_flops_per_step for r in runs) / 1e9
    return dict(
        values=values,
        true_mi=true_mi,
        compile_s=compile_s,
        run_s=run_s,
        steps=total,
        steps_per_s=total / run_s,
        gflop_per_step=flops_per_step / 1e9,
        gflop_per_s=flops_per_step * total / run_s / 1e9,
        groups=[[names[i] for i in g] for g in groups],
        devices=[d for r in runs for d in r.devices],
        matmul_floor_s=matmul_floor_s,
        matmul_gflop_per_step=matmul_gflop_per_step,
        matmul_dtype=runs[0].matmul_dtype,
    )


def _note_unsplit_cpu(config) -> None:
    """Says so where ``config.cpu_devices`` asks for more CPU devices than JAX has: the
    command line splits the host before JAX starts (`_common.split_cpu_into_devices`), a call
    from Python after JAX's first computation cannot."""
    if config.parallel != "bounds" or jax.default_backend() != "cpu":
        return
    if (have := len(jax.local_devices())) < config.cpu_devices:
        print(
            f"Note: config.cpu_devices = {config.cpu_devices}, but JAX runs on {have} CPU "
            "device(s): the bound groups do not run side by side (slower). "
            "The command line splits the host before JAX starts; from Python, call "
            f"`experiments._common.split_cpu_into_devices({config.cpu_devices})` before JAX's "
            "first computation."
        )


@_cli.locks_workdir
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs the staircase for every task and critic in ``config``; returns the results dict."""
    with _common.config_checks():  # before anything is written
        validate_config(config)
        _common.check_same_run(workdir, config)  # another config's results stay
        # A rerun of this config replaces each task/critic's results as it finishes: those of
        # the earlier run stay until then, so an interrupted rerun loses none of them.
        path = os.path.join(workdir, "results.json")
        earlier = _common.read_json(path) if os.path.exists(path) else {}  # before any write
    _note_unsplit_cpu(config)
    os.makedirs(workdir, exist_ok=True)
    _common.write_config(workdir, config)
    writer = _common.JsonlWriter(os.path.join(workdir, "metrics.jsonl"))
    results = {"runs": [], "statistics": [], **earlier}  # its wall time too, until replaced
    results["config"] = _common.to_builtin(config.to_dict())  # for `check_same_run`
    total = config.steps_per_level * len(config.levels)
    combos = [(t, c) for t in config.tasks for c in config.critics]
    wall0 = time.perf_counter()
    try:
        with tqdm(total=total * len(combos), desc="staircase", unit="step") as progress:
            for task_name, critic_name in combos:
                progress.set_postfix_str(f"{task_name}/{critic_name}")
                out = run_one(config, task_name, critic_name, writer, progress)
                stats = level_statistics(out["values"], config)
                for row in stats:
                    row.update(task=task_name, critic=critic_name)
                run = dict(
                    task=task_name,
                    critic=critic_name,
                    bounds=list(config.bounds),
                    compile_s=out["compile_s"],
                    run_s=out["run_s"],
                    steps=out["steps"],
                    steps_per_s=out["steps_per_s"],
                    gflop_per_step=out["gflop_per_step"],
                    gflop_per_s=out["gflop_per_s"],
                    bound_steps_per_s=out["steps_per_s"] * len(config.bounds) * config.num_seeds,
                    compute_dtype=config.compute_dtype,
                    matmul_dtype=out["matmul_dtype"],
                    bound_groups=out["groups"],
                    devices=out["devices"],
                    matmul_floor_s=out["matmul_floor_s"],
                    matmul_gflop_per_step=out["matmul_gflop_per_step"],
                )
                _replace_combination(results, task_name, critic_name, run, stats)
                # Results so far are written after every run, so a later failure loses nothing.
                _common.write_json(os.path.join(workdir, "results.json"), results)
                _common.write_csv(os.path.join(workdir, "results.csv"), results["statistics"])
                # Every step's estimate, from which every statistic and plot can be recomputed
                # (metrics.jsonl holds means over `log_every` steps).
                _common.write_arrays(
                    os.path.join(workdir, f"estimates_{task_name}_{critic_name}.npz"),
                    estimates=out["values"],  # [seeds, steps, bounds]
                    true_mi=out["true_mi"],  # [steps]
                    bounds=np.asarray(config.bounds),
                )
                plot_staircase(
                    os.path.join(workdir, f"staircase_{task_name}_{critic_name}.png"),
                    out["values"],
                    out["true_mi"],
                    config.bounds,
                    f"{task_name} task, {critic_name} critic (d={config.dim}, batch "
                    f"{config.batch_size})",
                    config.plot_smoothing,
                )
    finally:
        writer.close()
    results["wall_s"] = time.perf_counter() - wall0
    _common.write_json(os.path.join(workdir, "results.json"), results)
    print(summary(results, config))
    return results


def _replace_combination(results: dict, task: str, critic: str, run: dict, stats: list) -> None:
    """Puts one task/critic's ``run`` and statistics rows into ``results`` in place of any
    earlier ones of that combination (an earlier run's place in the order is kept)."""

    def other(row):
        return (row["task"], row["critic"]) != (task, critic)

    places = [i for i, r in enumerate(results["runs"]) if not other(r)]
    runs = [r for r in results["runs"] if other(r)]
    runs.insert(places[0] if places else len(runs), run)
    results["runs"] = runs
    results["statistics"] = [r for r in results["statistics"] if other(r)] + list(stats)


def _num(v: float) -> str:
    """Two decimals for readable values, scientific notation for diverged ones."""
    return f"{v:.2f}" if abs(v) < 1e4 else f"{v:.1e}"


def summary(results: dict, config) -> str:
    lines = []
    for run in results["runs"]:
        matmul_dtype = run.get("matmul_dtype", config.compute_dtype)  # (older results: none)
        lines.append(
            f"\n{run['task']} / {run['critic']}: {run['steps']} steps x {len(run['bounds'])} bounds"
            f" x {config.num_seeds} seed(s), {matmul_dtype} matmuls, "
            f"{len(run['bound_groups'])} bound group(s) on {len(set(run['devices']))} device(s): "
            f"compile {run['compile_s']:.1f} s, run {run['run_s']:.1f} s "
            f"({run['steps_per_s']:.0f} steps/s, {run['bound_steps_per_s']:.0f} bound-steps/s; "
            f"{run['gflop_per_step']:.3f} GFLOP per step, {run['gflop_per_s']:.1f} GFLOP/s)"
        )
        if run.get("matmul_floor_s") is not None:
            lines.append(
                f"the step's matmuls alone (same shapes and dtypes, nothing else, groups side by "
                f"side; timed over {config.matmul_floor_steps} steps): "
                f"{run['matmul_floor_s']:.1f} s for the {run['steps']} steps, "
                f"{run['matmul_floor_s'] / run['run_s']:.0%} of the run "
                f"({run['matmul_gflop_per_step']:.3f} GFLOP per step)"
            )
        rows = [
            r
            for r in results["statistics"]
            if r["task"] == run["task"] and r["critic"] == run["critic"]
        ]
        table = []
        for name in run["bounds"]:
            row = {"bound": name}
            for r in rows:
                if r["bound"] == name:
                    row[f"I={r['true_mi']:g}"] = f"{_num(r['mean'])} ({_num(r['variance'])})"
            table.append(row)
        cols = ["bound"] + [f"I={m:g}" for m in config.levels]
        lines.append(
            f"mean estimate in nats (variance, nats^2) over the last {config.stats_fraction:.0%} "
            "of each level"
        )
        lines.append(_common.format_table(table, cols))
    lines.append(f"\ntotal wall time {results.get('wall_s', float('nan')):.1f} s")
    return "\n".join(lines)


if __name__ == "__main__":
    _cli.run_experiment(
        "staircase",
        train_and_evaluate,
        prepare=lambda config: _common.split_cpu_into_devices(config.cpu_devices),
        named_maps=("bound_hparams", "critic_hparams", "task_hparams"),
    )
