"""What the experiments share: their config checks, seeds and sweep chunks, checkpoints and
resume, and the workdir's files (config.json, metrics JSONL, results JSON / CSV, plots). The
command line (flags, config files, messages of bad settings) is `experiments._cli`."""

import contextlib
import csv
import datetime
import errno
import functools
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mi_jax import _checks, probes
from mi_jax import bounds as bounds_lib
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


# The errors of a bad setting: the plain types the checks raise (and their hyperparameter
# error), not other subclasses, which come from elsewhere (a JSON decoder, JAX's tracer errors)
# and keep their tracebacks.
_SETTING_ERRORS = (ValueError, KeyError, TypeError, FileNotFoundError, _checks.HparamsError)


@contextlib.contextmanager
def config_checks():
    """Marks an experiment's checks of its settings, the part that runs before it writes
    anything: an error of a bad setting raised inside (`_SETTING_ERRORS`, by exact type) goes
    on unchanged, marked for `experiments._cli.run_experiment`, which prints its message
    alone. Other errors, and errors after the checks (in training), keep their tracebacks."""
    try:
        yield
    except Exception as e:
        if type(e) in _SETTING_ERRORS:
            e.bad_setting = True
        raise


def split_cpu_into_devices(count: int) -> None:
    """Has XLA's CPU platform expose ``count`` devices, so independent programs run concurrently.

    XLA:CPU runs the small matmuls of MI critics (batch 64) at about half the machine's peak
    whatever the thread count; two programs on two devices use both cores fully. Call before
    JAX touches a backend (it reads ``XLA_FLAGS`` once; later, a `RuntimeError` says so unless
    the CPU already has ``count`` devices); a device count already in ``XLA_FLAGS`` wins.
    Accelerator platforms are unaffected.
    """
    if count <= 1:
        return
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" in flags:
        return
    try:  # (no public way to ask whether a backend has started; a JAX without it: no check)
        from jax._src.xla_bridge import backends_are_initialized

        started = backends_are_initialized()
    except ImportError:
        started = False
    if started:
        if len(jax.devices("cpu")) == count:
            return  # split already (a notebook cell run again)
        raise RuntimeError(
            f"cannot split the CPU into {count} devices: JAX has started with "
            f"{len(jax.devices('cpu'))} CPU device(s), and XLA reads the split once, when JAX "
            "starts. Call `split_cpu_into_devices` before JAX's first computation (in a "
            "notebook: first, after a restart of the runtime)."
        )
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


def load_config_dataset(config):
    """`mi_jax.data.load_dataset` of ``config.dataset`` with the config's ``data_dir`` and
    ``max_examples`` (empty or 0: the default folder, every example)."""
    from mi_jax import data as data_lib

    return data_lib.load_dataset(
        config.dataset, data_dir=config.data_dir or None, max_examples=config.max_examples or None
    )


def seed_values(config) -> list[int]:
    """The seeds of a ``config.num_seeds`` run: ``config.seed, config.seed + 1, ...``.

    Seed ``config.seed + k`` of a K-seed run trains exactly what a one-seed run with
    ``config.seed = config.seed + k`` trains (initialization, batches, noise), up to the
    float rounding of the batched (vmapped) program; except what a run draws once for all its
    seeds from ``config.seed`` itself (IB's validation split).
    """
    return [int(config.seed) + k for k in range(check_num_seeds(config, consecutive=True))]


def seed_keys(seeds: list[int], n: int) -> tuple:
    """``n`` PRNG keys per seed, each seed's ``jax.random.key(seed)`` split ``n`` ways: the
    ``i``-th keys of all seeds ``[K]``, or, one seed, its own keys (no seed axis: the
    single-run program)."""
    keys = jnp.stack([jax.random.split(jax.random.key(s), n) for s in seeds])  # [K, n]
    return tuple(keys[:, i] if len(seeds) > 1 else keys[0, i] for i in range(n))


def jit_init(init, batched: bool, in_axes=0):
    """``init`` (of a train state) jitted, vmapped over the seeds' keys where ``batched``,
    with XLA's fast compile options: it runs once (default options compiled InfoMax's in 6-16
    s against 2.5-2.8 s on digits, IB's in three times as long, to the same parameters). (Not
    `mi_jax.training.run_once_compiler_options`' LLVM -O0, which `estimate_mi` and the
    staircase initialize with: it may move the parameters' last bits, and the README's IB,
    InfoMax and InfoMax-VAE results started from these.)"""
    from mi_jax import training

    fn = jax.vmap(init, in_axes=in_axes) if batched else init
    return jax.jit(fn, compiler_options=training.fast_compile_options())


@jax.jit
def leaf_slice(tree, i):
    """Entry ``i`` of every leaf of ``tree`` (a seed's, or a sweep setting's, slice of a stacked
    pytree): one program (eagerly, each leaf compiled two small ones)."""
    return jax.tree.map(lambda a: a[i], tree)


def seed_slices(tree, batched: bool) -> list:
    """The seeds' slices of a seed-stacked pytree (unbatched, one seed: ``[tree]``)."""
    if not batched:
        return [tree]
    return [leaf_slice(tree, k) for k in range(jax.tree.leaves(tree)[0].shape[0])]


def check_learning_rate(config, name: str = "learning_rate") -> None:
    """``config.<name>`` a positive, finite number, or a `ValueError` naming it (a negative
    rate trains without complaint: Adam then ascends the loss)."""
    rate = config[name]
    if not (_checks.is_real(rate) and 0 < rate < float("inf")):
        raise ValueError(f"`config.{name}` must be a positive number, got {rate!r}.")


def check_num_seeds(config, consecutive: bool = False) -> int:
    """``config.num_seeds`` (>= 1), or a `ValueError` naming it; ``config.seed`` too, where the
    config has one: an integer in ``[0, 2**32)`` (the batch orders are drawn from it;
    `jax.random.key` takes a seed modulo 2**32 outside x64 mode, so seed 2**32 would silently
    rerun seed 0). ``consecutive``: the run's seeds are ``seed + k`` (`seed_values`), each
    below 2**32 (others split one key drawn from ``seed``)."""
    check_int_fields(config, "num_seeds")
    if "seed" in config:
        check_int_fields(config, "seed", least=0)
        last = config.seed + (config.num_seeds - 1 if consecutive else 0)
        if last >= 2**32:
            which = "`config.seed` + `config.num_seeds` - 1" if consecutive else "`config.seed`"
            raise ValueError(
                f"{which} must be below 2**32 (JAX takes a seed modulo 2**32: seed 2**32 would "
                f"rerun seed 0), got seed {config.seed} and {config.num_seeds} seed(s)."
            )
    return config.num_seeds


def check_unique(config, field: str) -> None:
    """A `ValueError` if the list ``config.<field>`` names an entry twice (it would run twice,
    or its second run would find the first's results and checkpoints)."""
    if len(set(config[field])) < len(config[field]):
        raise ValueError(f"`config.{field}` names an entry twice: {tuple(config[field])}.")


def check_config_batch_size(config) -> None:
    """``config.batch_size`` an integer ``>= 2``, where a bound (its off-diagonal pairs are the
    negatives) or a kernel score estimate reads the batch."""
    if not (_checks.is_int(config.batch_size) and config.batch_size >= 2):
        raise ValueError(
            "`config.batch_size` must be an integer >= 2 (an MI bound or a score estimate needs "
            f"two samples in a batch), got {config.batch_size!r}."
        )


def config_field(config, path: str):
    """``config.<path>``, a dotted path (``"probe.kinds"``)."""
    for part in path.split("."):
        config = config[part]
    return config


def check_int_fields(config, *fields: str, least: int = 1) -> None:
    """A `ValueError` naming the first ``config.<field>`` (a dotted path) that is not an
    integer ``>= least`` (`mi_jax._checks.check_ints`, by the field's name)."""
    for field in fields:
        _checks.check_ints(least=least, **{f"config.{field}": config_field(config, field)})


def check_names(config, field: str, known, noun: str, *, empty_ok: bool = False) -> None:
    """``config.<field>`` (a dotted path): names from ``known``, a list (or a map's keys),
    at least one unless ``empty_ok``. An unknown one is the KeyError of
    `mi_jax._checks.unknown_name_error` (``noun`` and the field named, a close name
    suggested)."""
    names = config_field(config, field)
    if not names and not empty_ok:
        raise ValueError(f"`config.{field}` is empty: name at least one of {', '.join(known)}.")
    for name in names:
        if not _checks.is_known(name, known):
            raise _checks.unknown_name_error(f"{noun} (config.{field})", name, known)


def is_map(value) -> bool:
    """A dict or a `ml_collections.ConfigDict` (which is not a `Mapping`)."""
    return isinstance(value, Mapping) or hasattr(value, "to_dict")


def error_message(e: BaseException) -> str:
    """An error's message as written (``str`` of a KeyError quotes it), else its type; raised
    inside a registered factory (`mi_jax._checks.call_factory`), with the factory's name first
    where the message does not give it."""
    message = str(e.args[0]) if len(e.args) == 1 else str(e)
    message = message or type(e).__name__
    component = getattr(e, "component", None)
    return f"{component}: {message}" if component and component not in message else message


def bound_specs(config, names: Iterable[str]) -> list[tuple[str, dict]]:
    """``[(name, hparams)]`` of the named bounds, each with its ``config.bound_hparams`` entry
    (a bound without one takes its defaults): `mi_jax.training.make_ensemble`'s specs."""
    return [(n, dict(config.bound_hparams.get(n, {}))) for n in names]


def check_bound_hparams(config) -> None:
    """``config.bound_hparams`` (``{bound name: hyperparameters}``): registered names, each
    entry a map the bound takes, every bound built; a bad entry is a ValueError naming
    ``config.bound_hparams.NAME``."""
    check_hparams_maps(config, "bound_hparams")
    check_names(config, "bound_hparams", bounds_lib.available_bounds(), "bound", empty_ok=True)
    for name, hparams in config.bound_hparams.items():
        try:
            bounds_lib.get_bound(name, **dict(hparams))
        except (ValueError, TypeError, KeyError) as e:
            raise ValueError(f"`config.bound_hparams.{name}`: {error_message(e)}") from None


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
    group's size); so is an integer field whose members differ (a probe's L-BFGS iterations:
    it read seed 0's); a field boolean in every member holds where it holds for each; other
    fields (names, integers equal in every member) from the group's first row, ``seed``
    dropped.
    A float field read back from JSON as ``null`` (a non-finite value) counts as NaN, so the
    rows of a resumed run have the fields of a fresh one.
    """
    groups: dict[tuple, list[Mapping]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(k) for k in group_by), []).append(row)
    # Integer fields that differ between the members of some group: averaged in every group,
    # so that all rows have the same fields (a CSV column blank in some rows read NaN).
    varying = {
        key
        for members in groups.values()
        for key in members[0]
        if len({m.get(key) for m in members}) > 1
        and all(_checks.is_int(m.get(key)) for m in members)
    }
    # Fields holding a float in some row: a group whose every member read one back as null
    # (NaN in each seed, such as the deterministic baseline's KL) gets its NaN mean and
    # spread too, as a fresh run's rows have them.
    floats = {key for row in rows for key, value in row.items() if _is_float(value)}
    out = []
    for members in groups.values():
        merged = {k: v for k, v in members[0].items() if k != "seed"}
        for key in [k for k in merged if k not in group_by]:
            column = [m.get(key) for m in members]
            given = [v for v in column if v is not None]
            numbers = all(_is_float(v) for v in given) or (
                key in varying and all(_checks.is_int(v) for v in given)
            )
            if (given or key in floats) and numbers:
                column = np.asarray([np.nan if v is None else v for v in column], np.float64)
                merged[key] = float(np.mean(column))
                merged[f"{key}_std"] = float(np.std(column))
            elif all(isinstance(v, bool) for v in column):
                merged[key] = all(column)
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


def check_path_encoding(path: str, name: str = "the workdir") -> None:
    """A `ValueError` naming ``name`` where ``path`` is not written the same in UTF-8 as in
    Python's filesystem encoding: Orbax's array store (TensorStore) takes paths as UTF-8, so
    under a latin-1 locale the checkpoints of ``/runs/résumé`` went to a ``/runs/rÃ©sumÃ©``
    beside it (the run ended well, no resume found them), under ``LC_ALL=C PYTHONUTF8=0`` the
    first save failed ("Unable to cast Python instance of type <class 'str'> to C++ type")."""
    path = os.path.abspath(path)
    try:
        same = os.fsencode(path) == path.encode("utf-8")
    except UnicodeEncodeError:
        same = False
    if not same:
        encoding = sys.getfilesystemencoding()
        utf8 = encoding.replace("-", "").lower() == "utf8"  # (then the name is not UTF-8)
        raise ValueError(
            f"{name} {path!r} has characters that Python's filesystem encoding ({encoding}) "
            "writes otherwise than UTF-8, which the checkpoints' store takes: use an ASCII "
            + ("path." if utf8 else "path, or run Python in UTF-8 mode (PYTHONUTF8=1).")
        )


def checkpoint_manager(path: str, keep: int = 1):
    """An Orbax `CheckpointManager` of the checkpoints in the folder ``path`` (made absolute;
    Orbax creates the folder here), keeping the latest ``keep``; one item, a pytree saved with
    ``ocp.args.StandardSave`` (declared, so its metadata can be read before a restore). A path
    Orbax would write elsewhere is refused (`check_path_encoding`)."""
    import orbax.checkpoint as ocp

    check_path_encoding(path, "the checkpoints' folder")

    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    return ocp.CheckpointManager(
        os.path.abspath(path), options=options, item_handlers=ocp.StandardCheckpointHandler()
    )


def save_checkpoint(manager, step: int, state, *, wait: bool = False) -> None:
    """Saves ``state`` as the checkpoint at ``step`` (``wait``: until it is written; else the
    manager finishes it in the background), with Ctrl-C held back until the save call returns:
    an interrupt inside Orbax's `save` left its threads half started, and the run's one-line
    message came with dozens of tracebacks from them (and the manager's `close` waited for the
    save all the same)."""
    import orbax.checkpoint as ocp

    with deferred_interrupt("a checkpoint"):
        manager.save(step, args=ocp.args.StandardSave(state))
        if wait:
            manager.wait_until_finished()


@contextlib.contextmanager
def deferred_interrupt(what: str):
    """Runs the block with Ctrl-C (SIGINT) and SIGTERM held back, then delivers the first that
    came to the handler it had (Python's SIGINT handler raises `KeyboardInterrupt` after the
    block; `stop_on_sigterm`'s raises `Terminated`; a default one ends the process, after the
    block). A signal ignored, or handled outside Python, is left as it is. An error raised in
    the block goes on as it is, a held signal dropped (the error stops the run). Only the main
    thread handles signals: elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    held = [s for s, handler in previous.items() if handler not in (None, signal.SIG_IGN)]
    caught = []

    def hold(signum, frame):
        caught.append(signum)  # first: the message may fail (output piped to a `tee` stopped)
        if len(caught) == 1:
            with contextlib.suppress(OSError):
                print(f"\nwriting {what}: stopping after it.", file=sys.stderr)

    for s in held:
        signal.signal(s, hold)
    try:
        yield
    finally:
        for s in held:
            signal.signal(s, previous[s])
    if caught:
        signal.raise_signal(caught[0])


class Terminated(BaseException):
    """SIGTERM (a scheduler's preemption, `kill`) during `stop_on_sigterm`'s block: raised where
    the run is, as Ctrl-C raises `KeyboardInterrupt`, so its `finally` blocks close its files
    and wait for a checkpoint in flight."""


@contextlib.contextmanager
def stop_on_sigterm():
    """Runs the block with SIGTERM raising `Terminated` in the main thread, once: a second
    SIGTERM while the run stops is ignored (a scheduler may repeat it before its SIGKILL).
    Elsewhere than the main thread the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def latest_checkpoint_step(path: str) -> int:
    """The step of the latest finished checkpoint in the folder ``path`` (0: none), read from
    the folder's names: it creates nothing (a bad config found later leaves the workdir as it
    was), and it is not a `CheckpointManager`, whose creation is a barrier of all processes:
    made only where the folder exists, one process could wait there for another that had
    already created the folder for its own manager (a two-process test hung once at IB's
    first method)."""
    import orbax.checkpoint as ocp

    # The steps the managers read: folders named by the step alone, finished (not Orbax's
    # temporary ones, nor a folder of the user's such as backup_5).
    steps = ocp.path.step.standard_name_format().find_all(path)
    return max((metadata.step for metadata in steps), default=0)


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


def resume(path: str, start: int, state, keep: int = 1):
    """``(manager, state)``: the `checkpoint_manager` of ``path`` and ``state`` restored from
    its checkpoint at ``start`` (0: ``state`` as given). A checkpoint that does not fit
    (`restore_checkpoint`) raises with the manager closed."""
    manager = checkpoint_manager(path, keep)
    if start:
        try:
            state = restore_checkpoint(manager, start, state)
        except BaseException:
            manager.close()
            raise
        print(f"Resumed from the checkpoint at step {start} in {path}.")
    return manager, state


def restore_checkpoint(manager, step: int, state):
    """``state``'s structure restored from ``manager``'s checkpoint at ``step``, or a
    `CheckpointMismatchError` saying the checkpoint does not fit (written with another model or
    ``num_seeds``) instead of Orbax's shape errors, or a `WorkdirFileError` saying it is
    damaged. Nothing in the workdir is touched."""
    import orbax.checkpoint as ocp

    where = os.path.join(str(manager.directory), str(step))
    if not os.path.isdir(where):  # removed since the run listed it: not damage (checked first:
        # a restore Orbax fails part-way leaves reads in flight, unraisable errors later)
        raise WorkdirFileError(
            f"the checkpoint at step {step} ({where}) disappeared while this run read it: is "
            "another run writing this workdir (where the filesystem has no locks)? Rerun when "
            "it has ended, to resume from its latest checkpoint."
        )
    metadata_read = check_checkpoint_fits(manager, step, state)
    try:
        return manager.restore(step, args=ocp.args.StandardRestore(state))
    except Exception as e:
        _quiet_abandoned_coroutines()
        chain = [e]
        while chain[-1].__cause__ is not None:  # (Orbax wraps TensorStore's message)
            chain.append(chain[-1].__cause__)
        messages = " ".join(f"{type(c).__name__}: {c}" for c in chain)
        detail = f"{type(chain[-1]).__name__}: {chain[-1]}".split("\n")[0]
        # The same array names and shapes in another tree (a NamedTuple become a dict, a key
        # holding "/"): another config's, as Orbax says.
        if metadata_read and "tree structures do not match" in messages:
            raise _checkpoint_mismatch(manager, step, detail) from e
        # Unreadable metadata, the tree's own metadata gone (a pytree structure error), or the
        # data failing in the storage layer (files missing: NOT_FOUND; cut: OUT_OF_RANGE;
        # altered: a decompression or decoding error): damage. Anything else (out of memory, a
        # device error) goes on as it is.
        if metadata_read and not (
            isinstance(chain[-1], FileNotFoundError) or _STORAGE_ERROR.search(messages)
        ):
            raise
        others = [s for s in manager.all_steps() if s < step]
        raise WorkdirFileError(
            f"the checkpoint at step {step} ({where}) cannot be read: it is damaged (files "
            "missing, cut or altered). Remove that folder to resume from "
            + (f"the checkpoint at step {max(others)}" if others else "the start")
            + f", or use a fresh --workdir. ({detail[:300]})"
        ) from e


# Errors of the files under a checkpoint: TensorStore's (status codes, its reads' messages),
# Orbax's wrapper of a failed read, and jax's where the tree's structure file is gone.
_STORAGE_ERROR = re.compile(
    r"NOT_FOUND|OUT_OF_RANGE|DATA_LOSS|FAILED_PRECONDITION|Error (reading|opening|decoding)"
    r"|Encountered error while reading|pytree structure error"
)


def _quiet_abandoned_reads() -> None:
    """Keeps the reads a failed Orbax read (a restore, or its metadata) leaves in flight from
    burying the run's one-line message: they fail into its closed event loop (`RuntimeError:
    Event loop is closed`, from TensorStore's threads, reported as unraisable), or with the
    read's own error as their coroutines are collected (unraisable too, at the process's end)
    or logged by asyncio ("exception was never retrieved"): hundreds of tracebacks on an
    InfoMax checkpoint. Only those are dropped (told by their messages), from then on in the
    process; called before the first read (installed just before a restore, it let some
    through)."""
    import logging

    def abandoned(exc) -> bool:  # (the closed loop, or the read's own error)
        if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
            return True
        return exc is not None and bool(_STORAGE_ERROR.search(f"{exc} {exc.__cause__}"))

    def keep_record(record) -> bool:  # (a logging filter: False drops the record)
        error = record.exc_info[1] if record.exc_info else None
        return not ("exception was never retrieved" in record.getMessage() and abandoned(error))

    keep_record._drops_abandoned_reads = True
    asyncio_log = logging.getLogger("asyncio")
    if not any(getattr(f, "_drops_abandoned_reads", False) for f in asyncio_log.filters):
        asyncio_log.addFilter(keep_record)

    for owner, name in ((sys, "unraisablehook"), (threading, "excepthook")):
        hook = getattr(owner, name)  # (both take an argument with `exc_value`)
        if not getattr(hook, "_drops_abandoned_reads", False):

            def quiet_hook(args, _next=hook):
                if not abandoned(args.exc_value):
                    _next(args)

            quiet_hook._drops_abandoned_reads = True
            setattr(owner, name, quiet_hook)


def _quiet_abandoned_coroutines() -> None:
    """After a failed Orbax read: its coroutines that never ran are collected later, each with
    a `RuntimeWarning` ("coroutine 'Store._get_array_metadatas' was never awaited") that would
    follow the one-line message; those warnings are dropped."""
    warnings.filterwarnings("ignore", r"coroutine '[\w.]+' was never awaited", RuntimeWarning)


def _tree_signature(tree) -> list[tuple[str, tuple[int, ...]]]:
    """Each leaf's path (field, key or index names joined by "/") and shape, sorted: what a
    checkpoint's metadata and the train state it restores into must share."""

    def name(key) -> str:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                return str(getattr(key, attr))
        return str(key)

    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return sorted(
        ("/".join(name(k) for k in path), tuple(getattr(x, "shape", np.shape(x))))
        for path, x in leaves
    )


def check_checkpoint_fits(manager, step: int, state) -> bool:
    """Refuses (`CheckpointMismatchError`) ``manager``'s checkpoint at ``step`` when its arrays'
    names or shapes are not ``state``'s (arrays or `jax.ShapeDtypeStruct` leaves: a structure
    from `jax.eval_shape` serves); reads only the checkpoint's metadata.

    They are compared before anything is restored: a restore that Orbax rejects part-way
    leaves its reads in flight, which later fail into a closed event loop (reported as
    unraisable exceptions wherever the process happens to be). Returns whether the metadata
    could be read (if not, the restore decides, and fails: damage)."""
    _quiet_abandoned_reads()
    try:  # (read through a checkpointer of the item's folder, Orbax warned on every resume
        # that the step's metadata file was not there)
        metadata = manager.item_metadata(step)
        stored = _tree_signature(getattr(metadata, "tree", metadata))
    except Exception:
        _quiet_abandoned_coroutines()
        return False
    wanted = _tree_signature(state)
    if stored and stored != wanted:
        stored, wanted = dict(stored), dict(wanted)
        detail = f"{len(stored)} stored arrays vs {len(wanted)}"
        if names := sorted(stored.keys() ^ wanted.keys()):
            detail += f"; names in one only: {names[:4]}"
        if shapes := [
            f"{n}: {stored[n]} stored, {wanted[n]} here"
            for n in sorted(stored.keys() & wanted.keys())
            if stored[n] != wanted[n]
        ]:
            detail += f"; shapes differ: {shapes[:4]}"
        raise _checkpoint_mismatch(manager, step, detail)
    return True


class CheckpointMismatchError(ValueError):
    """A checkpoint written under another config: `experiments._cli.run_experiment` prints its
    message alone."""

    bad_setting = True


def _checkpoint_mismatch(manager, step: int, detail: str) -> ValueError:
    return CheckpointMismatchError(
        f"the checkpoint at step {step} in {manager.directory} does not fit this config's "
        f"train state (written with other model settings or another `config.num_seeds`?); "
        f"use a fresh --workdir, or the config that wrote it. ({detail[:300]})"
    )


def writes_files() -> bool:
    """Whether this process writes the workdir's files (config, metrics, results, plots): the
    first of a multi-process job, whose processes all hold the same results (they raced on
    the same temp files). Orbax checkpoints are saved by every process together."""
    return jax.process_index() == 0


def write_json(path: str, data, *, exclusive: bool = False) -> None:
    """Writes atomically (temp file, then rename), so a crash never leaves half a file.

    ``exclusive``: never over an existing file, one that appeared while the data were computed
    included: a `FileExistsError` then (`_replacing`).
    """
    if not writes_files():
        return
    with _replacing(path, exclusive=exclusive) as tmp, open(tmp, "w") as f:
        json.dump(to_builtin(data), f, indent=2, allow_nan=False)
        f.write("\n")


@contextlib.contextmanager
def _replacing(path: str, *, exclusive: bool = False):
    """Yields a temp path to write; on success it replaces ``path`` (an atomic rename, once the
    temp file is synced to the disk), on any error it is removed: no half-written file, none
    left beside the old one. The temp name is the process's and thread's own: two writers of
    one file do not write into each other's.

    ``exclusive``: the temp file is linked to ``path`` instead, which fails where ``path``
    exists (a `FileExistsError`; where the filesystem has no hard links, such as a FUSE mount,
    an existence check before the rename, which two writers at once may both pass).
    """
    tmp = f"{path}.{os.getpid()}-{threading.get_ident()}.tmp"
    try:
        yield tmp
        # On the disk before it replaces anything: after a crash of the machine (not only of
        # the process) the rename may otherwise be there before the data, an empty file in
        # place of the results that were written before.
        with open(tmp, "rb+") as f:
            try:
                os.fsync(f.fileno())
            except OSError as e:  # a filesystem that cannot sync (some FUSE mounts): as is
                if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
        if not exclusive:
            os.replace(tmp, path)
            return
        try:
            os.link(tmp, path)
        except OSError as e:
            if isinstance(e, FileExistsError) or os.path.exists(path):
                raise FileExistsError(f"{path} exists; it is not overwritten.") from None
            os.replace(tmp, path)  # (no hard links here)
        else:
            os.remove(tmp)
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


def subplots(*args, figsize=None, **kwargs):
    """``(figure, axes)`` as ``pyplot.subplots(*args, figsize=..., **kwargs)`` returns them, on a
    bare `matplotlib.figure.Figure`: drawn for a file only, without pyplot, so that a notebook's
    backend and figures stay as they were (pyplot's ``use("Agg")`` switched an inline backend
    off for the rest of the session). Matplotlib is imported here: ~0.5 s that a run without
    plots does not pay."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*args, **kwargs)


def plain_log_ticks(ax) -> None:
    """Tick labels of ``ax``'s log-scale y-axis as plain numbers (``1.25``, ``80``), minor ticks
    labelled where the axis spans less than a decade: matplotlib's default reads
    ``8.35x10^1`` there."""
    from matplotlib import ticker

    ax.yaxis.set_major_formatter(ticker.LogFormatter(labelOnlyBase=False))
    ax.yaxis.set_minor_formatter(
        ticker.LogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.4))
    )


def integer_ticks():
    """A tick locator for an axis of whole numbers (steps, epochs): no tick at 2.25."""
    from matplotlib import ticker

    return ticker.MaxNLocator(integer=True)


def limit_axis(
    ax, low: float, high: float, curves: Sequence, names: Sequence[str] | None = None
) -> None:
    """Sets ``ax``'s y-axis to ``[low, high]`` and writes in the panel how far the finite values
    of ``curves`` (the arrays drawn, any shapes) reach beyond it, naming the curve that does
    where ``names`` are given, and how many are not finite (a diverged run's NaN, which a line
    leaves out), so that a curve off the axis or cut short is not read as a missing or shorter
    one."""
    ax.set_ylim(low, high)
    arrays = [np.ravel(np.asarray(c, dtype=float)) for c in curves]
    values = np.concatenate([*arrays, []])
    finite = np.isfinite(values)
    values, missing = values[finite], int(np.sum(~finite))

    def whose(extreme) -> str:
        if names is None:
            return ""
        return " (" + ", ".join(n for n, a in zip(names, arrays, strict=True) if extreme in a) + ")"

    notes = [
        f"off scale: {side} {extreme:.3g}{whose(extreme)}"
        for side, beyond, extreme in (
            ("min", values < low, values.min(initial=np.inf)),
            ("max", values > high, values.max(initial=-np.inf)),
        )
        if beyond.any()
    ]
    if missing:
        notes.append(f"not finite (not drawn): {missing} value{'s' * (missing > 1)}")
    if notes:  # (black: a colour would read as one of the curves')
        ax.text(0.02, 0.02, "\n".join(notes), transform=ax.transAxes, fontsize=7, color="k",
                va="bottom")  # fmt: skip


def save_figure(fig, path: str, **kwargs) -> None:
    """``fig.savefig`` atomically (a temp file, then rename, as `write_json`): an interrupted
    save leaves the earlier plot whole. (A `subplots` figure is not registered with pyplot:
    nothing to close.)"""
    if writes_files():
        with _replacing(path) as tmp:
            fig.savefig(tmp, format=os.path.splitext(path)[1][1:] or "png", **kwargs)


class WorkdirFileError(ValueError):
    """A file of the workdir that is unreadable or missing where a run needs it (cut, edited or
    deleted by hand): `experiments._cli.run_experiment` prints its message alone, naming the
    file."""

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
    """Writes ``config.json`` (the settings) and appends this start (or resume) of the run to
    ``runs.jsonl`` (`environment`): so a workdir says which library versions and devices made
    each part of its results, a run resumed after an upgrade of jax included."""
    os.makedirs(workdir, exist_ok=True)
    write_json(os.path.join(workdir, "config.json"), config.to_dict())
    # (Through `JsonlWriter`: a line an earlier start's crash cut short is ended first, so
    # that this one stays readable; its "run" numbers the starts.)
    if writes_files():
        writer = JsonlWriter(os.path.join(workdir, "runs.jsonl"))
        try:
            writer.write(environment())
        finally:
            writer.close()


_VERSIONED = ("mi_jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")


def environment() -> dict:
    """This process: when it started the run (UTC), its command line, Python's and the
    libraries' versions, mi_jax's git commit where it runs from a checkout (its version number
    does not change with the code), and the devices it sees (a run may train on fewer:
    ``results.json``'s ``devices``)."""
    devices = jax.devices()
    return {
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "argv": sys.argv,
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in _VERSIONED},
        "mi_jax_commit": _git_commit(),
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "visible_devices": len(devices),
        "processes": jax.process_count(),
    }


def _git_commit() -> str | None:
    """The commit of the checkout mi_jax is imported from (a ``+`` after it: with uncommitted
    changes), or None (an installed copy, no git)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(probes.__file__)))
    if not os.path.exists(os.path.join(root, ".git")):
        return None
    try:
        run = functools.partial(
            subprocess.run, capture_output=True, text=True, timeout=10, check=True, cwd=root
        )
        commit = run(["git", "rev-parse", "HEAD"]).stdout.strip()
        dirty = run(["git", "status", "--porcelain", "--untracked-files=no"]).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+" if dirty else "")


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:  # (mi_jax on PYTHONPATH, not installed)
        return None


def config_changes(old: Mapping, config, may_differ: Iterable[str] = ()) -> list[str]:
    """``"key: old -> new"`` for every setting (dotted path) where the config dict ``old``
    (as `write_config` stores it) and ``config`` differ, except under the keys ``may_differ``."""

    before, after = _flat_settings(old), _flat_settings(config.to_dict())
    free = tuple(may_differ)
    return [
        f"{k}: {before.get(k, '(absent)')} -> {after.get(k, '(absent)')}"
        for k in sorted(before.keys() | after.keys())
        if before.get(k) != after.get(k) and not any(k == m or k.startswith(m + ".") for m in free)
    ]


def _flat_settings(tree, prefix: str = "") -> dict[str, str]:
    """``{dotted key: JSON of the value}`` for every leaf of a config dict."""
    if isinstance(tree, Mapping):
        return {
            k: v
            for key, sub in tree.items()
            for k, v in _flat_settings(sub, f"{prefix}{key}.").items()
        }
    return {prefix[:-1]: json.dumps(to_builtin(tree), sort_keys=True)}


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
        try:  # (not JSON: `read_json`'s WorkdirFileError, naming the file, goes on)
            earlier = read_json(path).get("config")
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
        # Top-level fields this config does not have (a map's keys change with the preset or
        # an override): no command line of this code gives that config back (README: renames).
        if gone := sorted(set(earlier) - set(config.to_dict())):
            advice = (
                f"Use a fresh --workdir: that run has settings this code does not have "
                f"({', '.join(gone)}), written by an earlier mi_jax or another config file."
            )
        else:
            advice = f"Use a fresh --workdir, or the config in {path}" + (
                f" (only {', '.join(may_differ)} may change on a rerun)." if may_differ else "."
            )
        raise ValueError(
            f"{workdir} holds a run of another config ({shown}); a rerun there would mix the "
            f"two. {advice}"
        )


class JsonlWriter:
    """Appends one JSON object per line and flushes, so rows survive a crash.

    Every row gets a ``"run"`` number: one more than the largest in the file when it is opened
    (rows without one count as run 0), so the rows of a rerun or a resumed run in the same
    workdir can be told from the earlier ones. A last line a crash cut short is ended first:
    the next row starts a line of its own (`iter_jsonl` skips the cut one).
    """

    def __init__(self, path: str):
        self._file = None  # a process other than the first (`writes_files`) writes nothing
        if not writes_files():
            return
        written = os.path.exists(path) and os.path.getsize(path) > 0
        rows = iter_jsonl(path) if written else ()  # one row at a time (1e6 rows: 1.6 GB)
        self.run = 1 + max((r.get("run", 0) for r in rows), default=0)
        cut = False
        if written:
            with open(path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                cut = f.read(1) != b"\n"
        self.path = path
        # Unbuffered: each row goes out whole when written, and a write that fails (a full
        # disk) fails there, naming the file, not again when the file closes.
        self._file = open(path, "ab", buffering=0)  # noqa: SIM115 - closed in close()
        if cut:
            self._write(b"\n")

    def write(self, row: Mapping) -> None:
        if self._file is None:
            return
        line = json.dumps(to_builtin({**row, "run": self.run}), allow_nan=False) + "\n"
        self._write(line.encode())

    def _write(self, data: bytes) -> None:
        try:
            while data:  # (a raw file may take part of it)
                data = data[self._file.write(data) :]
        except OSError as e:
            raise OSError(e.errno, e.strerror, self.path) from None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def iter_jsonl(path: str) -> Iterator[dict]:
    """The rows of a JSONL file, in order, one at a time; a line a crash cut short (not JSON)
    is skipped."""
    with open(path) as f:
        for line in f:
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def evaluations_from_metrics(
    workdir: str, start: int, key: Sequence[str], kind=None, match: Mapping | None = None, who=""
) -> list[dict]:
    """The evaluation rows up to the checkpoint at ``start``, read back from the workdir's
    ``metrics.jsonl`` for a resumed run whose results.json holds none (gone), saying so (the
    training time before them is not known): the rows of ``kind`` with the fields in
    ``match``, the last written of each ``key`` (a run resumed from an earlier checkpoint wrote
    some again), in step order, without their ``"run"`` and ``"kind"``."""
    path = os.path.join(workdir, "metrics.jsonl")
    last = {}
    for row in iter_jsonl(path) if os.path.exists(path) else ():
        if row.get("step", start + 1) > start or (kind is not None and row.get("kind") != kind):
            continue
        if all(row.get(k) == v for k, v in (match or {}).items()):
            last[tuple(row.get(k) for k in key)] = row
    rows = [{k: v for k, v in r.items() if k not in ("run", "kind")} for r in last.values()]
    rows.sort(key=lambda r: r["step"])  # (stable: the order within a step kept)
    print(
        f"{who}results.json holds no evaluation up to the checkpoint at step {start}: "
        f"{len({r['step'] for r in rows})} evaluations are read back from metrics.jsonl; the "
        "training time before them is not known (train_s counts this run's)."
    )
    return rows


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


def fingerprint(*trees) -> str:
    """A SHA-256 (hex) of ``trees``: their structure and their leaves' shapes, dtypes and
    values."""
    leaves, structure = jax.tree.flatten(jax.device_get(trees))
    digest = hashlib.sha256(str(structure).encode())
    for leaf in leaves:
        leaf = np.ascontiguousarray(leaf)
        digest.update(f"{leaf.shape}{leaf.dtype}".encode())
        digest.update(leaf.reshape(-1).view(np.uint8))  # (bfloat16 has no buffer format)
    return digest.hexdigest()


@functools.cache
def _probes_code() -> dict:
    """What a cached probe fit is keyed by besides its data and settings: a digest of
    `mi_jax.probes`' source and the versions of the libraries it computes with."""
    with open(probes.__file__, "rb") as f:
        source = hashlib.sha256(f.read()).hexdigest()
    versions = {name: _version(name) for name in ("jax", "jaxlib", "flax", "optax")}
    return {"mi_jax.probes": source, **versions}


def probe_cache_dir(config) -> str:
    """``config.probe.cache_dir``, the folder of `fit_probe_cached` ("": none; a config file
    written before the setting existed has none)."""
    return config.probe.get("cache_dir", "")


def check_probe_cache_dir(config) -> None:
    """A `ValueError` naming ``config.probe.cache_dir`` where its folder cannot be made or
    written (a run would learn it after training, a warning per fit)."""
    if not (cache_dir := probe_cache_dir(config)):
        return
    cache_dir = os.path.expanduser(cache_dir)
    try:
        os.makedirs(cache_dir, exist_ok=True)
    except OSError as e:
        raise ValueError(f"`config.probe.cache_dir` cannot be made: {e}") from None
    if not os.access(cache_dir, os.W_OK | os.X_OK):
        raise ValueError(f"`config.probe.cache_dir` ({cache_dir!r}) is not writable.")


def _probe_context() -> dict:
    """What a probe fit depends on besides its data and settings: the code (`_probes_code`),
    the device (its rounding: CPU against GPU), the x64 flag and the PRNG settings (the MLP's
    initialization and batches)."""
    device = jax.devices()[0]
    return {
        "code": _probes_code(),
        "device": [device.platform, device.device_kind],
        "x64": bool(jax.config.jax_enable_x64),
        **dict(_checks.trace_settings()),
    }


def fit_probe_cached(cache_dir: str, train_x, train_y, test_x, test_y, **settings):
    """``(result, cached)``: `mi_jax.probes.fit_probe(train_x, train_y, test_x, test_y,
    **settings)`, read from ``cache_dir`` where the same fit was made before (``cached``
    True), else fitted and stored there; ``cache_dir`` "": no cache.

    A sweep refits the same baselines in every run (on MNIST an InfoMax run spent 263 s of 17
    minutes on its random encoder's and raw pixels' probes, the same in all six estimators'
    runs). A fit is keyed by a SHA-256 of its inputs (shapes, dtypes, values), its settings,
    the source of `mi_jax.probes`, the versions of jax, jaxlib, flax and optax, the device,
    the x64 flag and the PRNG settings (`mi_jax._checks.trace_settings`): any change to those
    fits anew. An entry that does not parse is refitted and replaced; one that cannot be
    written warns, and the run goes on with the fit it made.
    """
    if not cache_dir:
        return probes.fit_probe(train_x, train_y, test_x, test_y, **settings), False
    cache_dir = os.path.expanduser(cache_dir)
    meta = {"settings": settings, **_probe_context()}
    described = json.dumps(to_builtin(meta), sort_keys=True)
    key = hashlib.sha256(
        (described + fingerprint(train_x, train_y, test_x, test_y)).encode()
    ).hexdigest()
    path = os.path.join(cache_dir, f"probe-{key}.json")
    try:
        with open(path) as f:
            return probes.ProbeResult(**json.load(f)["result"]), True
    except (OSError, ValueError, KeyError, TypeError):  # absent, cut or foreign: fit it
        pass
    result = probes.fit_probe(train_x, train_y, test_x, test_y, **settings)
    entry = {
        "result": result._asdict(),
        # What it was fitted on, for a person reading the cache.
        "shapes": {"train": list(np.shape(train_x)), "test": list(np.shape(test_x))},
        **meta,
    }
    try:
        os.makedirs(cache_dir, exist_ok=True)
        write_json(path, entry)
    except OSError as e:
        warnings.warn(f"the probe fit was not cached in {cache_dir!r}: {e}", stacklevel=2)
    return result, False


def unfinished_probes_note(unfinished) -> str:
    """The line under an experiment's table naming its linear probes whose L-BFGS stopped at
    ``config.probe.max_iter`` before ``config.probe.tol`` (``unfinished``: their names, or a
    map from names to counts of such fits), led by a newline; "" where there are none."""
    if not unfinished:
        return ""
    return f"\nlinear probes stopped at config.probe.max_iter before config.probe.tol: {unfinished}"


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
