"""Workdir output shared by the experiments: config.json, metrics JSONL, results JSON/CSV."""

import contextlib
import csv
import json
import math
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from mi_jax import _checks
from mi_jax._checks import hashable_hparams  # noqa: F401  (the experiments' builders use it)


def to_builtin(value):
    """Converts numpy/jax scalars and arrays (and containers of them) to JSON-able Python.

    Non-finite floats (NaN, +-inf: a diverged value, a metric with nothing to report) become
    None, JSON's ``null``, as pandas writes them: the files are strict JSON, which JavaScript,
    ``jq`` and other strict readers load (Python's ``NaN`` is not JSON). `number` reads such a
    value back as NaN.
    """
    if isinstance(value, Mapping):
        return {str(k): to_builtin(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_builtin(v) for v in value]
    if hasattr(value, "tolist"):
        return to_builtin(np.asarray(value).tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def number(value) -> float:
    """A number read back from our JSON files as a float: ``null`` (a non-finite value,
    `to_builtin`) as NaN."""
    return math.nan if value is None else float(value)


def define_experiment_flags(name: str):
    """``--config`` (a ``configs/NAME.py[:preset]`` file) and ``--workdir`` flags.

    Called from an experiment's ``__main__`` block, so that importing several experiments (as
    the tests do) defines no flag twice.
    """
    from absl import flags
    from ml_collections import config_flags

    config = config_flags.DEFINE_config_file("config", None, f"Path to a configs/{name}.py file.")
    workdir = flags.DEFINE_string(
        "workdir",
        None,
        f"Directory for outputs; default /tmp/mi_jax/{name}, /tmp/mi_jax/{name}_PRESET for "
        f"--config configs/{name}.py:PRESET (`default_workdir`).",
    )
    flags.mark_flags_as_required(["config"])
    return config, workdir


def default_workdir(name: str, config_arg: str | None) -> str:
    """The workdir of a run without ``--workdir``: one per config file and preset
    (``/tmp/mi_jax/NAME`` for ``configs/NAME.py``, ``/tmp/mi_jax/NAME_PRESET`` for
    ``configs/NAME.py:PRESET``, ``/tmp/mi_jax/NAME_MINE_PRESET`` for ``mine.py:PRESET``), so a
    quick run does not occupy the folder the full run resumes from."""
    path, _, preset = (config_arg or "").partition(":")
    stem = os.path.splitext(os.path.basename(path))[0]
    parts = [name] + ([stem] if stem and stem != name else []) + ([preset] if preset else [])
    return "/tmp/mi_jax/" + "_".join(parts)


# The errors of a bad setting: the plain types the checks raise (and their hyperparameter
# error), not other subclasses, which come from elsewhere (a JSON decoder, JAX's tracer errors)
# and keep their tracebacks.
_SETTING_ERRORS = (ValueError, KeyError, TypeError, FileNotFoundError, _checks.HparamsError)


@contextlib.contextmanager
def config_checks():
    """Marks an experiment's checks of its settings, the part that runs before it writes
    anything: an error of a bad setting raised inside (`_SETTING_ERRORS`, by exact type) goes
    on unchanged, marked for `run_experiment`, which prints its message alone. Other errors,
    and errors after the checks (in training), keep their tracebacks."""
    try:
        yield
    except Exception as e:
        if type(e) in _SETTING_ERRORS:
            e.bad_setting = True
        raise


def error_message(e: BaseException) -> str:
    """An error's message as written (``str`` of a KeyError quotes it), else its type; raised
    inside a registered factory (`mi_jax._checks.call_factory`), with the factory's name first
    where the message does not give it."""
    message = str(e.args[0]) if len(e.args) == 1 else str(e)
    message = message or type(e).__name__
    component = getattr(e, "component", None)
    return f"{component}: {message}" if component and component not in message else message


def run_experiment(name: str, train_and_evaluate, *, prepare=None, named_maps=()) -> None:
    """An experiment's ``__main__``: ``--config`` / ``--workdir`` flags, then
    ``train_and_evaluate(config, workdir)`` under `absl.app`.

    ``prepare(config)``, if given, runs first (e.g. `split_cpu_into_devices`, which must precede
    JAX's backend start); then `mi_jax.parallel.initialize_distributed` starts multi-host JAX
    where the environment describes a multi-process job. absl logging is set to WARNING: Orbax
    logs every checkpoint save at INFO, which would break up the progress bar. A bad setting
    found by `config_checks` (before anything is written) ends the run with its message alone;
    Ctrl-C with one line (exit status 130) instead of a traceback.

    ``named_maps``: the config's maps from registered names to hyperparameters
    (``critic_hparams``: ``{"separable": {...}, "concat": {...}}``). One given whole on the
    command line keeps the preset's entries for the names it does not give (`keep_preset_entries`).
    """
    from absl import app, flags, logging

    from mi_jax import parallel

    config, workdir_flag = define_experiment_flags(name)
    config_arg, overrides = [], []  # `--config`'s value and the overrides, read by `parse_flags`

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        logging.set_verbosity(logging.WARNING)
        _check_config_fields(name, config.value)
        if given := [f for f in named_maps if f"--config.{f}" in overrides]:
            keep_preset_entries(name, config.value, preset_config(config_arg[0]), given)
        workdir = workdir_flag.value
        if workdir is None:
            workdir = default_workdir(name, config_arg[0] if config_arg else None)
            print(f"{name}: writing to {workdir} (no --workdir given)")
        try:
            with config_checks():
                check_workdir(workdir)
                if prepare is not None:
                    prepare(config.value)
            parallel.initialize_distributed()
            train_and_evaluate(config.value, workdir)
        except KeyboardInterrupt:  # (the experiment's own `finally` blocks have run)
            print(
                f"\n{name}: interrupted; what it wrote, if anything, stays in {workdir} "
                '(README, "Workdirs and resuming": what the same command picks up).',
                file=sys.stderr,
            )
            raise SystemExit(130) from None
        except Exception as e:
            if getattr(e, "bad_setting", False):
                raise SystemExit(f"{name}: {error_message(e)}") from None
            raise

    def parse_flags(argv):
        _check_config_path(name, argv)
        config_arg.append(_config_arg(argv))
        given = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
        overrides.extend(given)
        if repeated := sorted({g for g in given if given.count(g) > 1}):
            # ml_collections joined a repeated tuple override's values (('nwj',) then ('dv',)
            # ran both bounds): two values for one setting are refused.
            raise SystemExit(f"{name}: {', '.join(repeated)} given more than once; give it once.")
        try:
            return flags.FLAGS(argv)
        except flags.Error as e:  # (what `app.parse_flags_with_usage` does, but for a preset)
            raise SystemExit(_flag_error_message(name, argv, e)) from None
        except (AttributeError, KeyError) as e:  # --config.FIELD=... of a field it does not have
            field = e  # ml_collections wraps a KeyError in the AttributeError
            while isinstance(field, BaseException) and field.args:
                field = field.args[0]
            raise SystemExit(
                f"{name}: the config has no field {field} (overrides given: {', '.join(given)}); "
                f"{_known_fields(name, argv, given)}"
            ) from None

    app.run(main, flags_parser=parse_flags)


def _repo_config(name: str, preset: str | None = None):
    """``configs/NAME.py``'s ``get_config(preset)``, or None where it cannot be read (an
    experiment run from elsewhere than the repository root, an unknown preset)."""
    import importlib

    try:
        return importlib.import_module(f"configs.{name}").get_config(preset or None)
    except (ImportError, ValueError):
        return None


def _known_fields(name: str, argv: list[str], overrides: list[str]) -> str:
    """The fields of ``configs/NAME.py[:preset]`` at the level where an override
    ``--config.a.b`` first names one that is not there (ml_collections suggests one by spelling
    only: ``num_steps`` in IB's config got "num_seeds", where IB counts ``num_epochs``); below
    a ``*_hparams`` map (keyword arguments, free-form), how to give the map whole."""
    given = _config_arg(argv)
    config = _repo_config(name, given.partition(":")[2] if given else None)
    if config is None:
        return f"see configs/{name}.py for its fields."
    for override in overrides:
        node, path, hparams = config, "config", None
        for part in override.removeprefix("--").split(".")[1:]:
            if not is_map(node):
                break
            if part not in node:
                if hparams:  # keyword arguments, free-form: the map is given whole
                    return f"`{hparams}` is a map of keyword arguments: give it whole, " + (
                        f"--{hparams}='{{...}}'."
                    )
                return f"`{path}` has the fields {', '.join(sorted(node)) or '(none)'}."
            node, path = node[part], f"{path}.{part}"
            if hparams is None and part.endswith("_hparams"):
                hparams = path
    return f"see configs/{name}.py for its fields."


def _check_config_fields(name: str, config) -> None:
    """Exits naming the fields of ``configs/NAME.py`` that ``config`` lacks: another
    experiment's config file failed deep in the run with a bare ``AttributeError: 'views'``."""
    expected = _repo_config(name)
    if expected is None:  # nothing to compare against
        return
    missing = sorted(set(expected) - set(config))
    if missing:
        raise SystemExit(
            f"{name}: the config lacks the fields {', '.join(missing[:6])}"
            f"{' ...' if len(missing) > 6 else ''} of configs/{name}.py; is --config another "
            f"experiment's? Use --config configs/{name}.py[:preset]."
        )


def check_workdir(workdir: str) -> None:
    """A `ValueError` naming ``--workdir`` when it (or the nearest existing folder above it)
    is not a directory this process can write into."""
    path = os.path.abspath(workdir)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        raise ValueError(f"--workdir {workdir!r}: {path!r} is a file, not a directory.")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"--workdir {workdir!r}: {path!r} is not writable.")


def _config_arg(argv: list[str]) -> str | None:
    """The value of ``--config`` (``path[:preset]``) in ``argv``, or None."""
    for i, arg in enumerate(argv[1:], start=1):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def _check_config_path(name: str, argv: list[str]) -> None:
    """Exits naming ``--config`` and the path when its file does not exist (ml_collections
    loads it lazily, inside the run, with a message that names neither)."""
    value = _config_arg(argv)
    path = None if value is None else value.split(":", 1)[0]
    if path is not None and not os.path.isfile(path):
        raise SystemExit(
            f"{name}: --config {value!r}: no file {path!r} (relative to {os.getcwd()}); "
            f"pass e.g. --config configs/{name}.py, from the repository's root."
        )
    if path is not None:  # its imports find the modules beside it
        folder = os.path.dirname(os.path.abspath(path))
        if folder not in sys.path:
            # Last, unlike a script's folder: a module there named like an installed one (or
            # one of the repository's) is not imported; the installed one is.
            sys.path.append(folder)


# ml_collections loads the ``--config`` file as this module (`config_flags._ConfigFileParser`:
# the flag's name + "_config"), once; `preset_config` reads it again from there.
_CONFIG_MODULE = "config_config"
_CONFIG_FILE_ERROR = "Error whilst parsing config file"  # ml_collections' wrapper of its errors


def _flag_error_message(name: str, argv: list[str], error: Exception) -> str:
    """The message a flag-parsing error ends the command line with: for a ValueError of the
    config file's ``get_config`` (an unknown preset), that error's own message; for the rest,
    absl's (`app.parse_flags_with_usage`). ml_collections wraps the first in a flag-parsing
    traceback."""
    cause = error
    while cause.__context__ is not None:
        cause = cause.__context__
    if _CONFIG_FILE_ERROR in str(error) and type(cause) is ValueError:
        return f"{name}: --config {_config_arg(argv)!r}: {cause}"
    return (
        f"FATAL Flags parsing error: {error}\nPass --helpshort or --helpfull to see help on flags."
    )


def preset_config(config_arg: str):
    """``get_config(preset)`` of the ``--config path[:preset]`` file ml_collections loaded,
    without the command line's overrides, from the module it loaded (the file runs once: a
    registration in it is not repeated); where that module is not found, from the file run
    again."""
    import importlib.util

    path, _, preset = config_arg.partition(":")
    module = sys.modules.get(_CONFIG_MODULE)
    if os.path.abspath(getattr(module, "__file__", None) or "") != os.path.abspath(path):
        spec = importlib.util.spec_from_file_location("_config_preset", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module.get_config(*([preset] if preset else []))


def keep_preset_entries(name: str, config, preset, fields) -> None:
    """Adds to each map ``config.<field>`` (``{registered name: hyperparameters}``, given whole
    on the command line) the ``preset``'s entries for the names it does not give, and says so.

    ``--config.critic_hparams='{"cosine": {...}}'`` dropped the preset's ``separable`` entry,
    and the baseline critic it compared with silently ran on the module's defaults (LeCun
    weights for the protocol's Glorot): the staircase's NWJ at 10 nats read -2.2 for 4.1.
    An entry given as ``{}`` still selects the module's defaults.
    """
    for field in fields:
        kept = {k: v for k, v in preset[field].items() if k not in config[field]}
        if not kept:
            continue
        with config.unlocked():
            for key, value in kept.items():
                config[field][key] = value
        named = ", ".join(repr(k) for k in config[field] if k not in kept) or "no entry"
        print(
            f"{name}: --config.{field} gives {named}; the preset's entries for "
            f"{', '.join(repr(k) for k in kept)} are kept (give one to replace it, {{}} for the "
            "defaults of its module)."
        )


def split_cpu_into_devices(count: int) -> None:
    """Has XLA's CPU platform expose ``count`` devices, so independent programs run concurrently.

    XLA:CPU runs the small matmuls of MI critics (batch 64) at about half the machine's peak
    whatever the thread count; two programs on two devices use both cores fully. Call before
    JAX touches a backend (it reads ``XLA_FLAGS`` once); a device count already in
    ``XLA_FLAGS`` wins. Accelerator platforms are unaffected.
    """
    if count <= 1:
        return
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()


def run_sweep_chunk(
    run, state, images, labels, settings, *, seed, batch_size, step, num_steps, setting_names
):
    """``num_steps`` steps of a `mi_jax.training.make_sweep_chunk` program from ``step``.

    Draws the resumable batch indices (`mi_jax.data.batch_indices`; ``seed`` a list: one
    sequence per seed, stacked ``[num_steps, K, B]`` for a ``num_seeds`` program), runs, pulls
    the metrics (``{name: [num_steps, S]}`` or ``[num_steps, K, S]``) to the host, and raises
    `mi_jax.training.NonFiniteError` naming the setting (``setting_names[s]``), the seed and
    the step of the first non-finite loss.

    Returns:
      ``(state, metrics, seconds)``.
    """
    import time

    import jax
    import jax.numpy as jnp

    from mi_jax import data as data_lib
    from mi_jax import training

    seeds = list(seed) if isinstance(seed, list | tuple) else None

    def draw(s):
        return data_lib.batch_indices(
            int(images.shape[0]), batch_size, seed=s, start_step=step, num_steps=num_steps
        )

    indices = draw(seed) if seeds is None else np.stack([draw(s) for s in seeds], axis=1)
    t0 = time.perf_counter()
    state, metrics = run(state, images, labels, jnp.asarray(indices), step, settings)
    metrics = jax.device_get(metrics)
    seconds = time.perf_counter() - t0
    index = training.first_nonfinite(metrics["loss"])
    if index is not None:
        where = "" if seeds is None else f" (seed {seeds[index[1]]})"
        raise training.NonFiniteError(
            f"the loss of {setting_names[index[-1]]}{where} became {metrics['loss'][index]} at "
            f"step {step + index[0] + 1}; results and checkpoints already written are kept."
        )
    return state, metrics, seconds


def seed_values(config) -> list[int]:
    """The seeds of a ``config.num_seeds`` run: ``config.seed, config.seed + 1, ...``.

    Seed ``config.seed + k`` of a K-seed run trains exactly what a one-seed run with
    ``config.seed = config.seed + k`` trains (initialization, batches, noise), up to the
    float rounding of the batched (vmapped) program.
    """
    return [int(config.seed) + k for k in range(check_num_seeds(config))]


def check_learning_rate(config, name: str = "learning_rate") -> None:
    """``config.<name>`` a positive, finite number, or a `ValueError` naming it (a negative
    rate trains without complaint: Adam then ascends the loss)."""
    rate = config[name]
    if not (_checks.is_real(rate) and 0 < rate < float("inf")):
        raise ValueError(f"`config.{name}` must be a positive number, got {rate!r}.")


def check_num_seeds(config) -> int:
    """``config.num_seeds`` (>= 1), or a `ValueError` naming it; ``config.seed`` too, where the
    config has one (an integer >= 0: the batch orders are drawn from it)."""
    k = config.num_seeds
    if not _checks.is_int(k) or k < 1:
        raise ValueError(f"`config.num_seeds` must be an integer >= 1, got {k!r}.")
    if "seed" in config and not (_checks.is_int(config.seed) and config.seed >= 0):
        raise ValueError(f"`config.seed` must be an integer >= 0, got {config.seed!r}.")
    return k


def check_unique(config, field: str) -> None:
    """A `ValueError` if the list ``config.<field>`` names an entry twice (it would run twice,
    or its second run would find the first's results and checkpoints)."""
    if len(set(config[field])) < len(config[field]):
        raise ValueError(f"`config.{field}` names an entry twice: {tuple(config[field])}.")


def check_batch_size(config) -> None:
    """``config.batch_size`` an integer ``>= 2``, where a bound (its off-diagonal pairs are the
    negatives) or a kernel score estimate reads the batch."""
    if not (_checks.is_int(config.batch_size) and config.batch_size >= 2):
        raise ValueError(
            "`config.batch_size` must be an integer >= 2 (an MI bound or a score estimate needs "
            f"two samples in a batch), got {config.batch_size!r}."
        )


def is_map(value) -> bool:
    """A dict or a `ml_collections.ConfigDict` (which is not a `Mapping`)."""
    return isinstance(value, Mapping) or hasattr(value, "to_dict")


def check_hparams_maps(config, *fields: str) -> None:
    """Every entry of ``config.<field>`` (``{name: hyperparameters}``) maps names to values
    (``{'smile': 5}`` failed in `dict` as "'int' object is not iterable")."""
    for field in fields:
        for name, hparams in config[field].items():
            if not is_map(hparams):
                raise ValueError(
                    f"`config.{field}.{name}` must map hyperparameter names to values, e.g. "
                    f"{{'hidden': (64,)}}, got {hparams!r}."
                )


def mean_over_seeds(rows: list[Mapping], group_by: tuple[str, ...]) -> list[dict]:
    """One row per group of ``rows`` (equal ``group_by`` fields, in first-seen order): every
    float field replaced by its mean over the group, plus ``{field}_std`` (the standard
    deviation over the group, ddof 0 as in `experiments.halves`) and ``num_seeds`` (the
    group's size); other fields (names, integers) from the group's first row, ``seed`` dropped.
    A float field read back from JSON as ``null`` (a non-finite value) counts as NaN, so the
    rows of a resumed run have the fields of a fresh one.
    """
    groups: dict[tuple, list[Mapping]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(k) for k in group_by), []).append(row)
    out = []
    for members in groups.values():
        merged = {k: v for k, v in members[0].items() if k != "seed"}
        for key in members[0]:
            column = [m.get(key) for m in members]
            given = [v for v in column if v is not None]
            if key not in group_by and given and all(_is_float(v) for v in given):
                column = np.asarray([np.nan if v is None else v for v in column], np.float64)
                merged[key] = float(np.mean(column))
                merged[f"{key}_std"] = float(np.std(column))
        merged["num_seeds"] = len(members)
        out.append(merged)
    return out


def _is_float(value) -> bool:
    return isinstance(value, float | np.floating)


def train_time_until(earlier: Mapping, step: int) -> tuple[float, list[list]]:
    """``(seconds, pairs)``: the training time an earlier run's results record up to ``step``
    (the checkpoint a resumed run starts from), and their ``train_s_by_step`` pairs ``[step,
    seconds so far]`` up to it. Results are written before each checkpoint, so a run stopped
    between the two recorded a chunk that the resumed run trains again: its total
    (``train_s``) would count that chunk twice. Results written without the pairs give their
    total."""
    if "train_s_by_step" not in earlier:
        return float(earlier.get("train_s", 0.0)), []
    pairs = [list(p) for p in earlier["train_s_by_step"] if p[0] <= step]
    return (float(pairs[-1][1]) if pairs else 0.0), pairs


def checkpoint_manager(path: str, keep: int = 1):
    """An Orbax `CheckpointManager` of the checkpoints in the folder ``path`` (made absolute;
    Orbax creates the folder here), keeping the latest ``keep``; one item, a pytree saved with
    ``ocp.args.StandardSave`` (declared, so its metadata can be read before a restore)."""
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    return ocp.CheckpointManager(
        os.path.abspath(path), options=options, item_handlers=ocp.StandardCheckpointHandler()
    )


def latest_checkpoint_step(path: str) -> int:
    """The step of the latest checkpoint in the folder ``path`` (0: none); creates nothing
    (a bad config found later leaves the workdir as it was)."""
    if not os.path.isdir(path):
        return 0
    manager = checkpoint_manager(path)
    try:
        return manager.latest_step() or 0
    finally:
        manager.close()


def checkpoint_step_within(path: str, num_steps: int, setting: str, per: int = 1) -> int:
    """`latest_checkpoint_step` of ``path``, or a `ValueError` where it is past this config's
    ``num_steps``: the workdir holds a longer run, which the results would then describe (or
    whose later evaluations they would lose). ``setting`` is the config field that sets the
    steps, ``per`` the steps per unit of it (an epoch's), for the least value that fits."""
    start = latest_checkpoint_step(path)
    if start > num_steps:
        raise ValueError(
            f"the checkpoint in {path} is at step {start}, past this config's {num_steps} steps "
            f"(`config.{setting}`): the workdir holds a longer run. Train as long ({setting} >= "
            f"{-(-start // per)}) or use a fresh --workdir."
        )
    return start


def restore_checkpoint(manager, step: int, state):
    """``state``'s structure restored from ``manager``'s checkpoint at ``step``, or a
    `ValueError` saying the checkpoint does not fit (written with another model or
    ``num_seeds``) instead of Orbax's shape errors. Nothing in the workdir is touched."""
    import orbax.checkpoint as ocp

    check_checkpoint_fits(manager, step, state)
    try:
        return manager.restore(step, args=ocp.args.StandardRestore(state))
    except (ValueError, TypeError, KeyError, FileNotFoundError) as e:
        detail = f"{type(e).__name__}: {e}"
        # Files of it missing (TensorStore's NOT_FOUND): damaged, cut or partly deleted; else
        # (other array names or shapes) another config's.
        if not (isinstance(e, FileNotFoundError) or "NOT_FOUND" in detail):
            raise _checkpoint_mismatch(manager, step, detail) from e
        others = [s for s in manager.all_steps() if s < step]
        where = os.path.join(str(manager.directory), str(step))
        raise WorkdirFileError(
            f"the checkpoint at step {step} ({where}) cannot be read: it is damaged (files "
            "missing or cut). Remove that folder to resume from "
            + (f"the checkpoint at step {max(others)}" if others else "the start")
            + f", or use a fresh --workdir. ({detail[:300]})"
        ) from e


def check_checkpoint_fits(manager, step: int, state) -> None:
    """Refuses (`ValueError`) ``manager``'s checkpoint at ``step`` when its array shapes are not
    ``state``'s (arrays or `jax.ShapeDtypeStruct` leaves: a structure from `jax.eval_shape`
    serves); reads only the checkpoint's metadata.

    The shapes are compared before anything is restored: a restore that Orbax rejects part-way
    leaves its reads in flight, which later fail into a closed event loop (reported as
    unraisable exceptions wherever the process happens to be)."""
    import jax

    def shapes(tree):
        return sorted(tuple(getattr(x, "shape", np.shape(x))) for x in jax.tree.leaves(tree))

    try:  # (read through a checkpointer of the item's folder, Orbax warned on every resume
        # that the step's metadata file was not there)
        metadata = manager.item_metadata(step)
        stored = shapes(getattr(metadata, "tree", metadata))
    except Exception:  # no readable metadata: the restore itself decides
        return
    wanted = shapes(state)
    if stored and stored != wanted:
        diff = sorted(set(stored) ^ set(wanted))[:4]
        raise _checkpoint_mismatch(
            manager, step, f"{len(stored)} stored arrays vs {len(wanted)}; shapes differ: {diff}"
        )


def _checkpoint_mismatch(manager, step: int, detail: str) -> ValueError:
    return ValueError(
        f"the checkpoint at step {step} in {manager.directory} does not fit this config's "
        f"train state (written with other model settings or another `config.num_seeds`?); "
        f"use a fresh --workdir, or the config that wrote it. ({detail[:300]})"
    )


def writes_files() -> bool:
    """Whether this process writes the workdir's files (config, metrics, results, plots): the
    first of a multi-process job, whose processes all hold the same results (they raced on
    the same temp files). Orbax checkpoints are saved by every process together."""
    return jax.process_index() == 0


def write_json(path: str, data) -> None:
    """Writes atomically (temp file, then rename), so a crash never leaves half a file."""
    if not writes_files():
        return
    with _replacing(path) as tmp, open(tmp, "w") as f:
        json.dump(to_builtin(data), f, indent=2, allow_nan=False)
        f.write("\n")


@contextlib.contextmanager
def _replacing(path: str):
    """Yields a temp path to write; on success it replaces ``path`` (an atomic rename), on any
    error it is removed: no half-written file, none left beside the old one."""
    tmp = path + ".tmp"
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_arrays(path: str, **arrays) -> None:
    """``np.savez_compressed`` atomically (a temp file, then rename, as `write_json`)."""
    if not writes_files():
        return
    with _replacing(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)


def mean_curve(rows: list[Mapping], key: str) -> tuple[list[float], list[float]]:
    """``(epochs, values)``: ``key`` of history ``rows`` per epoch, the mean over the seeds'
    rows of an epoch; a null (a non-finite value read back from JSON) as NaN."""
    epochs = sorted({r["epoch"] for r in rows})
    values = [np.mean([number(r[key]) for r in rows if r["epoch"] == e]) for e in epochs]
    return epochs, values


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (files only: no display needed), imported
    where a plot is drawn (the import costs ~0.5 s that a run without plots does not pay)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str, **kwargs) -> None:
    """``fig.savefig`` atomically (a temp file, then rename, as `write_json`): an interrupted
    save leaves the earlier plot whole. Closes ``fig`` (on every process, also one that writes
    no files)."""
    try:
        if writes_files():
            with _replacing(path) as tmp:
                fig.savefig(tmp, format=os.path.splitext(path)[1][1:] or "png", **kwargs)
    finally:
        pyplot().close(fig)


class WorkdirFileError(ValueError):
    """A file of the workdir that is unreadable or missing where a run needs it (cut, edited or
    deleted by hand): `run_experiment` prints its message alone, naming the file."""

    bad_setting = True


def read_json(path: str):
    """A JSON file of the workdir; one that does not parse is a `WorkdirFileError` naming it."""
    with open(path) as f:
        try:
            return json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise WorkdirFileError(
                f"{path} is not valid JSON ({e}): restore it, or use a fresh --workdir."
            ) from None


def write_config(workdir: str, config) -> None:
    os.makedirs(workdir, exist_ok=True)
    write_json(os.path.join(workdir, "config.json"), config.to_dict())


def config_changes(old: Mapping, config, may_differ: Iterable[str] = ()) -> list[str]:
    """``"key: old -> new"`` for every setting (dotted path) where the config dict ``old``
    (as `write_config` stores it) and ``config`` differ, except under the keys ``may_differ``."""

    def flat(tree, prefix=""):
        if isinstance(tree, Mapping):
            return {
                k: v for key, sub in tree.items() for k, v in flat(sub, f"{prefix}{key}.").items()
            }
        return {prefix[:-1]: json.dumps(to_builtin(tree), sort_keys=True)}

    before, after = flat(to_builtin(old)), flat(to_builtin(config.to_dict()))
    free = tuple(may_differ)
    return [
        f"{k}: {before.get(k, '(absent)')} -> {after.get(k, '(absent)')}"
        for k in sorted(before.keys() | after.keys())
        if before.get(k) != after.get(k) and not any(k == m or k.startswith(m + ".") for m in free)
    ]


def check_same_run(
    workdir: str, config, may_differ: Iterable[str] = (), added: Mapping[str, Any] | None = None
) -> None:
    """Refuses to continue another configuration's run in ``workdir``.

    A workdir holds one run: its checkpoints are restored and its results extended, so an
    earlier run there (metrics, results or checkpoints) must have had the settings of
    ``config``, except those under ``may_differ`` (a run's length, cadences, paths: what a
    resumed run may change). Else a `ValueError` lists the differences, before anything is
    written. The earlier settings are read from ``config.json``, or, where it is gone, from
    the config every experiment's ``results.json`` records. ``added``: top-level settings the
    experiment gained after runs were written, with the value those runs had (an earlier
    config without the key ran with it).
    """
    may_differ = tuple(may_differ)  # read twice below
    path = os.path.join(workdir, "config.json")
    written = [os.path.join(workdir, n) for n in ("metrics.jsonl", "results.json")]
    checkpoints = os.path.join(workdir, "checkpoints")
    has_run = any(os.path.exists(p) and os.path.getsize(p) for p in written) or any(
        files for _, _, files in os.walk(checkpoints)
    )
    if not has_run:
        return
    if os.path.exists(path):
        earlier = read_json(path)
    else:
        path = written[1]
        try:
            earlier = read_json(path).get("config")
        except WorkdirFileError:  # not JSON: named as such
            raise
        except (OSError, AttributeError):  # none, or not a dict
            earlier = None
        if not isinstance(earlier, Mapping):  # (before: resumed under any config, silently)
            print(
                f"warning: {workdir} holds a run whose config is gone (neither config.json nor "
                "results.json records it): it is continued under this config, checked against "
                "its checkpoints' array shapes only. Restore config.json to check the settings.",
                file=sys.stderr,
            )
            return
    changes = config_changes({**(added or {}), **earlier}, config, may_differ)
    if changes:
        shown = "; ".join(changes[:6]) + (
            f"; and {len(changes) - 6} more" if len(changes) > 6 else ""
        )
        raise ValueError(
            f"{workdir} holds a run of another config ({shown}); a rerun there would mix the two. "
            f"Use a fresh --workdir, or the config in {path}"
            + (f" (only {', '.join(may_differ)} may change on a rerun)." if may_differ else ".")
        )


class JsonlWriter:
    """Appends one JSON object per line and flushes, so rows survive a crash.

    Every row gets a ``"run"`` number: one more than the largest in the file when it is opened
    (rows without one count as run 0), so the rows of a rerun or a resumed run in the same
    workdir can be told from the earlier ones. A last line a crash cut short is ended first:
    the next row starts a line of its own (`read_jsonl` skips the cut one).
    """

    def __init__(self, path: str):
        self._file = None  # a process other than the first (`writes_files`) writes nothing
        if not writes_files():
            return
        written = os.path.exists(path) and os.path.getsize(path) > 0
        rows = read_jsonl(path) if written else []
        self.run = 1 + max((r.get("run", 0) for r in rows), default=0)
        cut = False
        if written:
            with open(path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                cut = f.read(1) != b"\n"
        self._file = open(path, "a")  # noqa: SIM115 - closed in close()
        if cut:
            self._file.write("\n")

    def write(self, row: Mapping) -> None:
        if self._file is None:
            return
        self._file.write(json.dumps(to_builtin({**row, "run": self.run}), allow_nan=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def read_jsonl(path: str) -> list[dict]:
    """The rows of a JSONL file, in order; a line a crash cut short (not JSON) is skipped."""
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def rows_until(path: str, step: int, key: Sequence[str], kind: str | None = None, **match):
    """The rows of the JSONL file ``path`` at steps up to ``step`` (of ``kind``, with the
    fields in ``match``), the last written of each ``key`` (a run resumed from an earlier
    checkpoint wrote some again), in step order, without their ``"run"`` and ``"kind"``: the
    evaluations a resumed run reads back from ``metrics.jsonl`` when its results.json is gone."""
    last = {}
    for row in read_jsonl(path) if os.path.exists(path) else []:
        if row.get("step", step + 1) > step or (kind is not None and row.get("kind") != kind):
            continue
        if all(row.get(k) == v for k, v in match.items()):
            last[tuple(row.get(k) for k in key)] = row
    rows = [{k: v for k, v in r.items() if k not in ("run", "kind")} for r in last.values()]
    return sorted(rows, key=lambda r: r["step"])  # (stable: the order within a step kept)


def write_csv(path: str, rows: Iterable[Mapping]) -> None:
    rows = list(rows)
    if not rows or not writes_files():
        return
    # Every row's fields, in first-seen order (a row without a field leaves its cell empty).
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with _replacing(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(to_builtin(rows))


def format_table(rows: list[Mapping], columns: list[str], floatfmt: str = "{:.3f}") -> str:
    """A plain-text table a person can read."""

    def fmt(v):
        return floatfmt.format(v) if isinstance(v, float) else str(v)

    cells = [[fmt(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = "  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join([line, sep, *body])
