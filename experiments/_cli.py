"""The experiments' command line: ``--config`` / ``--workdir`` flags, config files and presets,
overrides, and the one-line messages of bad settings (`run_experiment`)."""

import contextlib
import errno
import functools
import importlib.util
import os
import re
import socket
import sys
import threading
import time

from experiments._common import (
    Terminated,
    config_checks,
    error_message,
    is_map,
    stop_on_sigterm,
    writes_files,
)

# Where runs without --workdir write. Not `/tmp/mi_jax` (the default until 2026-12-07): a
# folder named as the package shadows it for a Python started beside it, here in /tmp, under an
# editable install (`pip install -e .`): `import mi_jax` gave an empty namespace package there,
# and `mi_jax.estimate_mi` an AttributeError.
DEFAULT_ROOT = "/tmp/mi_jax_runs"
EARLIER_DEFAULT_ROOT = "/tmp/mi_jax"


def define_experiment_flags(name: str):
    """``--config`` (a ``configs/NAME.py[:preset]`` file) and ``--workdir`` flags.

    Called from an experiment's ``__main__`` block, so that importing several experiments (as
    the tests do) defines no flag twice.
    """
    from absl import flags
    from ml_collections import config_flags

    presets = getattr(_repo_config_module(name), "PRESETS", ())
    try:  # (ml_collections reads the command line, flag files included, as it defines the flag)
        config = config_flags.DEFINE_config_file(
            "config",
            None,
            f"Path to a configs/{name}.py file (required), with :PRESET for a preset"
            + (f" ({', '.join(presets)})" if presets else "")
            + "; override any field with --config.FIELD=VALUE.",
        )
    except (flags.CantOpenFlagFileError, flags.IllegalFlagValueError) as e:
        # (a --flagfile that cannot be read, or given no file: a traceback before)
        raise SystemExit(f"{name}: {str(e).removeprefix('ERROR:: ')}") from None
    workdir = flags.DEFINE_string(
        "workdir",
        None,
        f"Directory for outputs; default {DEFAULT_ROOT}/{name}, {DEFAULT_ROOT}/{name}_PRESET "
        f"for --config configs/{name}.py:PRESET (`default_workdir`).",
    )
    flags.mark_flags_as_required(["config"])
    # Key flags of the main module (absl names it by sys.argv[0]), so that `--help` lists them
    # rather than only `--helpfull` among absl's own.
    for flag in ("config", "workdir"):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[flag])
    return config, workdir


def default_workdir(name: str, config_arg: str | None, root: str | None = None) -> str:
    """The workdir of a run without ``--workdir``: one per config file and preset
    (``ROOT/NAME`` for ``configs/NAME.py``, ``ROOT/NAME_PRESET`` for ``configs/NAME.py:PRESET``,
    ``ROOT/NAME_MINE_PRESET`` for ``mine.py:PRESET``; ``ROOT`` is `DEFAULT_ROOT` unless ``root``
    is given), so a quick run does not occupy the folder the full run resumes from."""
    path, _, preset = (config_arg or "").partition(":")
    stem = os.path.splitext(os.path.basename(path))[0]
    parts = [name] + ([stem] if stem and stem != name else []) + ([preset] if preset else [])
    return os.path.join(DEFAULT_ROOT if root is None else root, "_".join(parts))


def _stop_behind(e: BaseException) -> BaseException | None:
    """The Ctrl-C or SIGTERM (`Terminated`) during whose handling ``e`` was raised, if any."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt | Terminated):
            return e
        seen.add(id(e))
        e = e.__context__
    return None


# A full disk or quota, a read-only filesystem, a file past the size limit: errors of writes
# alone (an EIO may be a read's).
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)


def _write_failure(e: BaseException) -> str | None:
    """What failed to be written behind ``e`` (in its chain of causes and contexts), if a
    write failed for lack of space or a read-only filesystem: an `OSError` of such an errno, or
    an error of Orbax's background checkpoint writer naming one (``os_error_code='28'``)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _WRITE_ERRNOS:
            where = f": {e.filename}" if e.filename else ""
            return f"{os.strerror(e.errno)}{where}"
        code = re.search(r"os_error_code='(\d+)'", str(e))
        if code and int(code.group(1)) in _WRITE_ERRNOS:
            return f"{os.strerror(int(code.group(1)))}, writing a checkpoint"
        e = e.__cause__ or e.__context__
    return None


class _QuietWhenClosed:
    """A text stream (``sys.stdout``, ``sys.stderr``) that goes quiet once its reader is gone:
    the first write into a closed pipe (``| head``, a ``tee`` that ended) points the file
    descriptor at ``/dev/null`` and the program goes on, instead of a `BrokenPipeError`
    raised from whichever ``print`` met it (a summary printed between IB's methods stopped the
    methods still to come)."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._silence()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._silence()

    def _silence(self) -> None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._stream.fileno())  # (the buffered text then goes there too)
        os.close(devnull)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def quiet_when_output_closed() -> None:
    """Makes ``sys.stdout`` and ``sys.stderr`` `_QuietWhenClosed`: a command whose output pipe
    closes runs on to its end, its files written (called by every command line)."""
    from absl import logging

    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, _QuietWhenClosed):
            setattr(sys, name, _QuietWhenClosed(stream))
    # absl's handler holds the stream it started with, and writes a line again to stderr
    # where that is not `sys.stderr` (`--alsologtostderr`): through the quiet one, once.
    handler = logging.get_absl_handler().python_handler
    if getattr(sys.stderr, "_stream", None) is handler.stream:
        handler.stream = sys.stderr


def run_experiment(name: str, train_and_evaluate, *, prepare=None, named_maps=()) -> None:
    """An experiment's ``__main__``: ``--config`` / ``--workdir`` flags, then
    ``train_and_evaluate(config, workdir)`` under `absl.app`.

    ``prepare(config)``, if given, runs first (e.g. `split_cpu_into_devices`, which must precede
    JAX's backend start); then `mi_jax.parallel.initialize_distributed` starts multi-host JAX
    where the environment describes a multi-process job. absl logging is set to WARNING: Orbax
    logs every checkpoint save at INFO, which would break up the progress bar. A bad setting
    found by `config_checks` (before anything is written) ends the run with its message alone,
    as does a run that diverged (`mi_jax.training.NonFiniteError`, naming what and the step);
    Ctrl-C with one line (exit status 130) instead of a traceback, and SIGTERM (a scheduler's
    preemption) the same way (exit status 143): the experiment's `finally` blocks run, a
    checkpoint being saved is finished.

    ``named_maps``: the config's maps from registered names to hyperparameters
    (``critic_hparams``: ``{"separable": {...}, "concat": {...}}``). One given whole on the
    command line keeps the preset's entries for the names it does not give (`keep_preset_entries`).
    """
    from absl import app, flags, logging

    from mi_jax import parallel, training

    config, workdir_flag = define_experiment_flags(name)
    config_arg, overrides = [], []  # `--config`'s value and the overrides, read by `parse_flags`

    def main(argv):
        if len(argv) > 1:
            raise SystemExit(
                f"{name}: unexpected arguments {argv[1:]}: give settings as flags, "
                "--flag=value (--help lists them)."
            )
        # Lines as they are printed where stdout is a file or a pipe (a scheduler's log), as on
        # a terminal: not a block later, behind the progress bar, or never if the job is killed.
        if reconfigure := getattr(sys.stdout, "reconfigure", None):
            reconfigure(line_buffering=True)
        quiet_when_output_closed()
        logging.set_verbosity(logging.WARNING)
        _check_config_fields(name, config.value)
        if given := [f for f in named_maps if f"--config.{f}" in overrides]:
            keep_preset_entries(name, config.value, preset_config(config_arg[0]), given)
        workdir = workdir_flag.value
        if workdir is None:
            config_file = config_arg[0] if config_arg else None
            workdir = default_workdir(name, config_file)
            print(f"{name}: writing to {workdir} (no --workdir given)")
            earlier = default_workdir(name, config_file, EARLIER_DEFAULT_ROOT)
            if os.path.exists(os.path.join(earlier, "config.json")) and not os.path.exists(workdir):
                print(
                    f"{name}: {earlier}, this command's default workdir before 2026-12-07, holds "
                    f"an earlier run: to go on with it there, give --workdir={earlier}"
                )
        # The shell leaves `--workdir=~/runs` as it is: the home directory, not a folder `~`.
        workdir = os.path.expanduser(workdir)
        distributed = False
        try:
            with config_checks():
                check_workdir(workdir)
                if prepare is not None:
                    prepare(config.value)
            distributed = parallel.initialize_distributed()
            with stop_on_sigterm(), workdir_lock(workdir):
                train_and_evaluate(config.value, workdir)
            if writes_files():  # (the last line: where to look)
                print(f"{name}: done; its files are in {workdir}")
        except (KeyboardInterrupt, Terminated) as e:  # (the experiment's `finally` blocks ran)
            stopped(isinstance(e, Terminated), workdir, distributed)
        except Exception as e:
            # A bad setting, or a run that diverged (its message names what and the step): the
            # message is the whole story.
            if getattr(e, "bad_setting", False) or isinstance(e, training.NonFiniteError):
                raise SystemExit(f"{name}: {error_message(e)}") from None
            # The output pipe gone while the run stopped (a scheduler signals the whole job
            # step, `tee` included): a progress bar's close in a `finally` block raised
            # BrokenPipeError over the signal's exception.
            if isinstance(e, OSError) and (stop := _stop_behind(e)) is not None:
                stopped(isinstance(stop, Terminated), workdir, distributed)
            # A full disk: one line (Orbax's writer threads printed hundreds more at shutdown).
            if (failed := _write_failure(e)) is not None:
                end(
                    f"{name}: a write failed ({failed}); what the run wrote before stays in "
                    f"{workdir} (the metrics, the checkpoints saved whole): free the space and "
                    "run the same command to resume.",
                    1,
                    distributed,
                )
            raise

    def stopped(sigterm: bool, workdir: str, distributed: bool):
        """Ends a run that Ctrl-C or SIGTERM stopped: one line, and status 130 or 143."""
        end(
            f"{name}: {'stopped by SIGTERM' if sigterm else 'interrupted'}; what it wrote, if "
            f"anything, stays in {workdir} "
            '(README, "Workdirs and resuming": what the same command picks up).',
            143 if sigterm else 130,  # (128 + the signal's number)
            distributed,
        )

    def end(message: str, status: int, distributed: bool):
        """Ends the run with ``message`` on stderr and exit ``status``."""
        with contextlib.suppress(OSError):  # (the output may be gone)
            print(f"\n{message}", file=sys.stderr)
        if distributed:  # (its shutdown tells the other processes)
            raise SystemExit(status) from None
        # Without Python's shutdown: a signal during a compilation left XLA compiling on its
        # threads, and the CPU client, destroyed at shutdown, waited for it and crashed (a
        # segmentation fault, status -11, after this message). Every file is closed by now.
        with contextlib.suppress(OSError):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(status)

    def parse_flags(argv):
        # --flagfile's flags in its place, for the checks below as for absl (the default
        # workdir of a `:quick` preset given in a flag file was the full run's); a file that
        # cannot be read was refused as the flags were defined
        flag_file = any(a.startswith(("--flagfile", "-flagfile")) for a in argv[1:])
        argv = [argv[0], *flags.FLAGS.read_flags_from_files(argv[1:], force_gnu=False)]
        where = " (flag files included)" if flag_file else ""
        if sum(a == "--config" or a.startswith("--config=") for a in argv[1:]) > 1:
            # (absl took the last, the default workdir and the checks here the first: a
            # `:quick` run wrote into the full run's folder)
            raise SystemExit(f"{name}: --config given more than once{where}; give it once.")
        argv = _check_config_path(name, argv)
        config_arg.append(_config_arg(argv))
        given = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
        overrides.extend(given)
        if repeated := sorted({g for g in given if given.count(g) > 1}):
            # ml_collections joined a repeated tuple override's values (('nwj',) then ('dv',)
            # ran both bounds): two values for one setting are refused.
            raise SystemExit(
                f"{name}: {', '.join(repeated)} given more than once{where}; give it once."
            )
        try:
            return flags.FLAGS(argv)
        except flags.Error as e:  # (what `app.parse_flags_with_usage` does, but for a preset)
            raise SystemExit(_flag_error_message(name, argv, e)) from None
        # --config.FIELD=... of a field it does not have, or below a setting that has no
        # fields (--config.bounds.x: a TypeError of the tuple)
        except (AttributeError, KeyError, TypeError) as e:
            raise SystemExit(_unknown_field_message(name, argv, given, e)) from None

    app.run(main, flags_parser=parse_flags)


def _repo_config_module(name: str):
    """The module ``configs.NAME`` (the repository's or the installed one), or None."""
    try:
        return importlib.import_module(f"configs.{name}")
    except ImportError:
        return None


def _repo_config(name: str, preset: str | None = None):
    """``configs/NAME.py``'s ``get_config(preset)``, or None where it cannot be read (an
    experiment run from elsewhere than the repository root, an unknown preset)."""
    module = _repo_config_module(name)
    try:
        return None if module is None else module.get_config(preset or None)
    except ValueError:
        return None


def _known_fields(name: str, argv: list[str], overrides: list[str]) -> str:
    """The fields of ``configs/NAME.py[:preset]`` at the level where an override
    ``--config.a.b`` first names one that is not there (ml_collections suggests one by spelling
    only: ``num_steps`` in IB's config got "num_seeds", where IB counts ``num_epochs``); below
    a ``*_hparams`` map (keyword arguments, free-form), how to give the map whole."""
    unknown = _first_unknown_field(name, argv, overrides)
    if unknown is None:
        return f"see configs/{name}.py for its fields."
    node, path, _, hparams = unknown
    if hparams:  # keyword arguments, free-form: the map is given whole
        return f"`{hparams}` is a map of keyword arguments: give it whole, --{hparams}='{{...}}'."
    if not is_map(node):
        return f"`{path}` is a setting, not a map of fields: give it whole, --{path}=..."
    return f"`{path}` has the fields {', '.join(sorted(node)) or '(none)'}."


def _first_unknown_field(name: str, argv: list[str], overrides: list[str]):
    """``(node, path, part, hparams)`` where the first of ``overrides`` (``--config.a.b``) names
    a field ``part`` that ``configs/NAME.py[:preset]``'s ``node`` at ``path`` does not have
    (``hparams``: the ``*_hparams`` map above it, if any), or None where none does or the
    config cannot be read."""
    given = _config_arg(argv)
    config = _repo_config(name, given.partition(":")[2] if given else None)
    if config is None:
        return None
    for override in overrides:
        node, path, hparams = config, "config", None
        for part in override.removeprefix("--").split(".")[1:]:
            if not is_map(node) or part not in node:
                return node, path, part, hparams
            node, path = node[part], f"{path}.{part}"
            if hparams is None and part.endswith("_hparams"):
                hparams = path
    return None


def _unknown_field_message(name: str, argv: list[str], given: list[str], error) -> str:
    """One line for an override ``given`` of a field the config does not have (``error``:
    ml_collections' AttributeError or KeyError, or a TypeError below a tuple)."""
    unknown = _first_unknown_field(name, argv, given)
    if unknown is not None:
        field = repr(unknown[2])
    else:
        field = error  # ml_collections wraps a KeyError in the AttributeError
        while isinstance(field, BaseException) and field.args:
            field = field.args[0]
        field = " ".join(str(field).split())  # (its "Did you mean" came after a newline)
    return (
        f"{name}: the config has no field {field} (overrides given: {', '.join(given)}); "
        f"{_known_fields(name, argv, given)}"
    )


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
    if not workdir:  # e.g. `--workdir=$WORKDIR` with the variable unset
        raise ValueError("--workdir is empty: give the folder to write into.")
    path = os.path.abspath(workdir)
    while not os.path.exists(path):
        if os.path.islink(path):
            raise ValueError(
                f"--workdir {workdir!r}: {path!r} is a symbolic link to {os.readlink(path)!r}, "
                "which does not exist."
            )
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        raise ValueError(f"--workdir {workdir!r}: {path!r} is a file, not a directory.")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"--workdir {workdir!r}: {path!r} is not writable.")


class WorkdirBusyError(RuntimeError):
    """The workdir is in use by another run (`workdir_lock`)."""

    bad_setting = True  # `run_experiment` prints its message alone


LOCK_FILE = ".mi_jax_run.lock"
# The workdirs whose lock this process holds, and the (process, thread) holding each (a
# forked child inherits the dict and the thread's id, not the lock).
_HELD: dict[str, tuple[int, int]] = {}


@contextlib.contextmanager
def workdir_lock(workdir: str):
    """Holds an exclusive lock (`fcntl.flock`) on ``WORKDIR/.mi_jax_run.lock`` while a run uses
    the workdir: a command line run (`run_experiment`), or an experiment's
    ``train_and_evaluate`` called from Python (`locks_workdir`).

    A second run in the same workdir meanwhile (the same command started twice, tasks of a job
    array given one ``--workdir``, a notebook's call beside a script's) is refused at once, a
    `WorkdirBusyError` naming the first one's process and host, instead of interleaving its
    metrics rows, results and checkpoints with the first run's (before: both ran, and one
    removed the other's checkpoint in flight). The thread holding the lock may take it again
    (an experiment run inside another's, in its workdir). The processes of one multi-process
    job share the workdir: process ``i > 0`` locks ``.mi_jax_run.{i}.lock``, process 0 the
    plain file, so that each process of a second job of the same size meets its counterpart
    of the first (of another size, or against a single-process run, only the processes of the
    same index meet: one is refused, and the job stops there or at its first collective). The
    operating system frees the lock when the process ends, however it ends, so a killed run's
    workdir takes the next run. The lock file goes at the end, and so do the folders this made
    for the workdir where nothing was written there. Where the filesystem has no locks (a
    warning says so) or Python no `fcntl` (Windows), runs go unguarded.
    """
    import jax

    key = os.path.realpath(workdir)
    holder = (os.getpid(), threading.get_ident())
    if _HELD.get(key) == holder:
        yield
        return
    made = []  # the folders this makes, deepest first
    # (Absolute: the lock file is removed at the end, whatever the current directory is then.)
    workdir = folder = os.path.abspath(workdir)
    while not os.path.exists(folder):
        made.append(folder)
        folder = os.path.dirname(folder)
    process = jax.process_index() if jax.process_count() > 1 else 0
    lock = _locked_file(workdir, LOCK_FILE if process == 0 else f".mi_jax_run.{process}.lock")
    _HELD[key] = holder
    try:
        yield
    finally:
        del _HELD[key]
        if lock is not None:
            with contextlib.suppress(FileNotFoundError):  # (removed by hand meanwhile)
                os.remove(lock.name)  # (while locked: a run starting now locks a new file)
            lock.close()
        for folder in made:
            try:
                os.rmdir(folder)
            except OSError:  # not empty: the run wrote there
                break


def locks_workdir(train_and_evaluate):
    """An experiment's ``train_and_evaluate(config, workdir, ...)`` run under `workdir_lock`
    (from Python as from the command line, whose lock it takes again)."""

    @functools.wraps(train_and_evaluate)
    def locked(config, workdir, *args, **kwargs):
        with workdir_lock(workdir):
            return train_and_evaluate(config, workdir, *args, **kwargs)

    return locked


def _locked_file(workdir: str, name: str):
    """The workdir's lock file ``name`` (the folders made as needed), open and locked, naming
    this process; None where there are no locks. A `WorkdirBusyError` where another run holds
    it."""
    try:
        import fcntl
    except ImportError:
        return None
    path = os.path.join(workdir, name)
    while True:
        os.makedirs(workdir, exist_ok=True)
        try:
            f = open(path, "a+")  # noqa: SIM115 - returned, or closed below
        except FileNotFoundError:  # the folder removed meanwhile by a run ending
            continue
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "a process"
            f.close()
            raise WorkdirBusyError(
                f"--workdir {workdir!r} is in use by another run ({holder}); wait for it to "
                "end, or give another --workdir (a workdir holds one run at a time)."
            ) from None
        except OSError as e:  # no locks here (some network filesystems)
            f.close()
            with contextlib.suppress(OSError):
                os.remove(path)
            print(
                f"warning: {workdir} cannot be locked ({e}): another run started there "
                "meanwhile would not be refused.",
                file=sys.stderr,
            )
            return None
        try:  # the file this locked is still the one at `path`, not one a run ending removed
            if os.path.samestat(os.fstat(f.fileno()), os.stat(path)):
                break
        except FileNotFoundError:
            pass
        f.close()
    since = time.strftime("%Y-%m-%d %H:%M:%S")
    # Who holds it, for a second run's message; on a full disk the lock holds without it
    # (unbuffered: a failed buffered write raised again when the lock file closed).
    with contextlib.suppress(OSError):
        f.truncate(0)
        os.write(
            f.fileno(), f"pid {os.getpid()} on {socket.gethostname()}, since {since}\n".encode()
        )
    return f


def _config_arg(argv: list[str]) -> str | None:
    """The value of ``--config`` (``path[:preset]``) in ``argv``, or None."""
    for i, arg in enumerate(argv[1:], start=1):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def _check_config_path(name: str, argv: list[str]) -> list[str]:
    """``argv`` with ``--config``'s file found: as given, else (``configs/NAME.py`` run outside
    the repository, as after a wheel install) the installed ``configs`` package's file of that
    name, said in one line. Exits naming ``--config`` and the path where neither exists
    (ml_collections loads it lazily, inside the run, with a message that names neither)."""
    value = _config_arg(argv)
    path = None if value is None else value.split(":", 1)[0]
    if path is not None and not os.path.isfile(path):
        installed = _installed_config(path)
        if installed is None:
            raise SystemExit(
                f"{name}: --config {value!r}: no file {path!r} (relative to {os.getcwd()}); "
                f"pass e.g. --config configs/{name}.py (found in the repository's root or the "
                "installed package `configs`), or a config file's path."
            )
        print(f"{name}: --config {value}: not a file here; reading the installed {installed}")
        new_value = installed + value[len(path) :]
        argv = [
            new_value
            if a == value and argv[i - 1] == "--config"
            else ("--config=" + new_value if a == "--config=" + value else a)
            for i, a in enumerate(argv)
        ]
        path = installed
    if path is not None:  # its imports find the modules beside it
        folder = os.path.dirname(os.path.abspath(path))
        if folder not in sys.path:
            # Last, unlike a script's folder: a module there named like an installed one (or
            # one of the repository's) is not imported; the installed one is.
            sys.path.append(folder)
    return argv


def _installed_config(path: str) -> str | None:
    """The file ``configs/REST`` of the installed package ``configs`` for ``path`` =
    ``configs/REST`` (relative), or None."""
    parts = os.path.normpath(path).split(os.sep)
    if os.path.isabs(path) or len(parts) < 2 or parts[0] != "configs":
        return None
    spec = importlib.util.find_spec("configs")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = os.path.join(folder, *parts[1:])
        if os.path.isfile(candidate):
            return candidate
    return None


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
