r"""Estimate I(X; Y) from a file of paired samples.

  python -m experiments.estimate --data FILE.npz [--bound smile] [--critic separable] [--seeds 5]
      [--bound_hparams '{"clip": 5.0}'] [--critic_hparams '{"hidden": (256,)}']
      [--standardize auto|zscore|rank|none] [--batch_size 128] [--eval_every N]
      [--max_steps 3000] [--test_fraction 0.2] [--imports my_bounds]

``FILE.npz`` holds arrays ``x`` ``[N, dim_x]`` and ``y`` ``[N, dim_y]`` (``[N]`` counts as one
dimension). Prints the estimate in nats (and bits); with ``--seeds K`` the mean and standard
deviation over K critics trained in one compiled program. ``--json OUT`` also writes the result
(`mi_jax.MIEstimate`'s fields and ``"unit": "nats"``) with its held-out curves (bound, training
objective) and training curve, as strict JSON
(``null`` for the evaluations after a critic's early stop, NaN in `mi_jax.MIEstimate`), to a
new file: an existing one (an earlier result, the data) is refused before any training;
``--json -`` prints it on stdout instead (the lines above then on stderr). ``--imports``
imports modules of your own first (found in the current folder or on ``PYTHONPATH``), so that
the bounds and critics they register are names ``--bound`` and ``--critic`` take.
"""

import ast
import dataclasses
import importlib
import json
import os
import sys

import numpy as np
from absl import app, flags, logging

from experiments import _cli, _common
from mi_jax import estimate as estimate_lib

_DATA = flags.DEFINE_string("data", None, "An .npz file with arrays `x` and `y`.")
_BOUND = flags.DEFINE_string("bound", estimate_lib.DEFAULTS["bound"], "Registered bound name.")
_CRITIC = flags.DEFINE_string("critic", estimate_lib.DEFAULTS["critic"], "Registered critic name.")
_BOUND_HPARAMS = flags.DEFINE_string(
    "bound_hparams", None, "The bound's hyperparameters, a dict literal: '{\"clip\": 5.0}'."
)
_CRITIC_HPARAMS = flags.DEFINE_string(
    "critic_hparams", None, "The critic's (replacing only the keys given): '{\"hidden\": (256,)}'."
)
_SEEDS = flags.DEFINE_integer("seeds", None, "Train this many critics (vmapped) and report all.")
_SEED = flags.DEFINE_integer(
    "seed", estimate_lib.DEFAULTS["seed"], "Seed for the split, initialization and minibatches."
)
_MAX_STEPS = flags.DEFINE_integer("max_steps", estimate_lib.DEFAULTS["max_steps"], "Step limit.")
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", estimate_lib.DEFAULTS["batch_size"], "Training minibatch size."
)
_EVAL_EVERY = flags.DEFINE_integer(
    "eval_every",
    estimate_lib.DEFAULTS["eval_every"],
    "Training steps between evaluations (default: ~3.2 epochs, 10-100 steps).",
)
_TEST_FRACTION = flags.DEFINE_float(
    "test_fraction", estimate_lib.DEFAULTS["test_fraction"], "Fraction of samples held out."
)
_JSON = flags.DEFINE_string(
    "json",
    None,
    "Optional path for a new JSON file with the full result; '-': the JSON on stdout (the "
    "printed lines then on stderr).",
)
_STANDARDIZE_ARG = {"auto": "auto", "zscore": True, "rank": "rank", "none": False}
_STANDARDIZE = flags.DEFINE_enum(
    "standardize",
    # (`estimate_mi`'s default, by its name here)
    next(k for k, v in _STANDARDIZE_ARG.items() if v == estimate_lib.DEFAULTS["standardize"]),
    list(_STANDARDIZE_ARG),
    "Per column: z-scores, with ranks for heavy-tailed columns (auto); z-scores; the rank "
    "(marginal) Gaussianization; or the samples as given.",
)
_IMPORTS = flags.DEFINE_list(
    "imports",
    [],
    "Modules of your own to import first, comma-separated (found in the current folder or on "
    "PYTHONPATH): the bounds and critics they register become names --bound and --critic take.",
)


def import_modules(names: list[str]) -> None:
    """Imports each ``--imports`` module; one that is not found is a usage error naming it (an
    error inside a module that is found goes on with its traceback: a bug in it)."""
    for name in names:
        if name.endswith(".py"):  # (imported as module "NAME", then "NAME.py" not found)
            raise SystemExit(
                f"estimate: --imports {name!r}: give the module's name, without .py: "
                f"--imports {name.removesuffix('.py')}"
            )
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is None or not (name == e.name or name.startswith(e.name + ".")):
                raise  # a module that the found one imports
            raise SystemExit(
                f"estimate: --imports {name!r}: no such module in the current folder "
                f"({os.getcwd()}) or on PYTHONPATH."
            ) from None


_ZIP_MAGIC, _NPY_MAGIC = b"PK", b"\x93NUMPY"  # the first bytes of an .npz and of an .npy


def load_pairs(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads arrays ``x`` and ``y`` from an .npz file (a leading ``~`` is the home directory),
    with errors that say what is missing."""
    path = os.path.expanduser(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"--data file {path!r} does not exist.")
    if not os.path.isfile(path):
        raise ValueError(f"--data {path!r} is not a file.")
    not_npz = f"--data file {path!r} is not an .npz of arrays x and y"
    # Text, pickle, empty, cut short, damaged anywhere (zipfile, zlib and numpy's header parser
    # raise a dozen kinds of error for one bad byte): every one is named as --data's.
    unreadable = Exception
    with open(path, "rb") as f:  # closed on every error (np.load leaks a cut .npz's handle)
        # numpy takes any other file for a pickle, and says so ("... load it unsafely using
        # the `allow_pickle=` keyword"): neither a zip nor an .npy is named as what it is.
        if not f.read(len(_NPY_MAGIC)).startswith((_ZIP_MAGIC, _NPY_MAGIC)):
            raise ValueError(f"{not_npz}: it is neither a zip archive (.npz) nor an .npy file.")
        f.seek(0)
        try:
            data = np.load(f, allow_pickle=False)
        except unreadable as e:  # text, pickle, empty, cut short
            raise ValueError(f"{not_npz} ({type(e).__name__}: {e}).") from e
        if not isinstance(data, np.lib.npyio.NpzFile):  # a single .npy array
            raise ValueError(f"--data file {path!r} is one array, not an .npz of arrays x and y.")
        missing = [k for k in ("x", "y") if k not in data.files]
        if missing:
            raise KeyError(f"--data file {path!r} lacks arrays {missing}; it has {data.files}.")
        arrays = []
        for key in ("x", "y"):
            try:  # members are read here: an object array, or a damaged member
                arrays.append(data[key])
            except unreadable as e:
                raise ValueError(f"--data file {path!r}: array {key!r} is unreadable ({e}).") from e
        return tuple(arrays)


def parse_hparams(text: str | None, flag: str) -> dict | None:
    """A ``--bound_hparams`` / ``--critic_hparams`` value: a Python dict literal, or None."""
    if text is None:
        return None
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = None
    if not isinstance(value, dict):
        raise ValueError(
            f"--{flag} must be a dict literal such as '{{\"clip\": 5.0}}', got {text!r}."
        )
    return value


def run(path: str, **kwargs) -> estimate_lib.MIEstimate:
    x, y = load_pairs(path)
    return estimate_lib.estimate_mi(x, y, **kwargs)


def limit_note(result: estimate_lib.MIEstimate, max_steps: int) -> str | None:
    """The line saying that ``max_steps`` ended training before early stopping (of one seed or
    more) did, with how far the held-out estimate moved over the last
    `~mi_jax.estimate.PATIENCE_STEPS` steps (the most of the seeds stopped by the limit); None
    where early stopping ended every seed. At small N the watched objective can creep up by
    little for thousands of steps while the estimate stands still (a review: 20-d, N = 200,
    1.94 nats at 3000 steps and at 6000), and "a longer run may read higher" alone
    over-promised there."""
    cut = ~np.atleast_1d(result.stopped_early)
    if result.ceiling is not None:  # (an estimate at the ceiling cannot read higher)
        cut &= np.atleast_1d(result.mi) < result.ceiling
    if not cut.any():
        return None
    steps = np.asarray(result.steps)
    if len(steps) == 1:
        return f"--max_steps {max_steps} ended training at its first evaluation."
    curves = np.atleast_2d(result.test_curve)[cut]
    first = min(
        int(np.searchsorted(steps, steps[-1] - estimate_lib.PATIENCE_STEPS)), len(steps) - 1
    )
    if first == len(steps) - 1:
        first -= 1  # (one evaluation in the window: the change from the one before)
    moved = curves[:, -1] - curves[:, first]
    k = int(np.argmax(np.abs(moved)))
    return (
        f"--max_steps {max_steps} ended training before early stopping did: over its last "
        f"{steps[-1] - steps[first]} steps the held-out estimate moved by {moved[k]:+.3f} nats "
        f"({curves[k, first]:.3f} -> {curves[k, -1]:.3f}"
        + (f", the largest move of {cut.sum()} seeds" if np.ndim(result.stopped_early) else "")
        + "); where it still rises, a longer run may read higher."
    )


def main(argv):
    if len(argv) > 1:
        raise SystemExit(
            f"estimate: unexpected arguments {argv[1:]}: give settings as flags, "
            "--flag=value (--help lists them)."
        )
    logging.set_verbosity(logging.WARNING)  # JAX's INFO line on a missing TPU library
    import_modules(_IMPORTS.value)
    to_stdout = _JSON.value == "-"
    out = sys.stderr if to_stdout else sys.stdout  # (stdout: the JSON alone)
    json_path = _JSON.value and not to_stdout and os.path.expanduser(_JSON.value)
    if json_path:  # checked before the training, whose result it would hold
        folder = os.path.dirname(os.path.abspath(json_path))
        if not os.path.isdir(folder):
            raise SystemExit(f"estimate: --json {_JSON.value!r}: its directory does not exist.")
        if os.path.isdir(json_path) or not os.access(folder, os.W_OK):
            raise SystemExit(f"estimate: --json {_JSON.value!r}: not a file that can be written.")
        if os.path.lexists(json_path):  # an earlier result, the --data file, a symbolic link
            raise SystemExit(
                f"estimate: --json {_JSON.value!r} exists; it is not overwritten: give a new "
                "path or remove it."
            )
    try:
        result = run(
            _DATA.value,
            bound=_BOUND.value,
            bound_hparams=parse_hparams(_BOUND_HPARAMS.value, "bound_hparams"),
            critic=_CRITIC.value,
            critic_hparams=parse_hparams(_CRITIC_HPARAMS.value, "critic_hparams"),
            seeds=_SEEDS.value,
            seed=_SEED.value,
            max_steps=_MAX_STEPS.value,
            batch_size=_BATCH_SIZE.value,
            eval_every=_EVAL_EVERY.value,
            test_fraction=_TEST_FRACTION.value,
            standardize=_STANDARDIZE_ARG[_STANDARDIZE.value],
        )
    except (ValueError, KeyError, TypeError, FileNotFoundError) as e:
        # Bad data or settings: the message names the argument (`seeds` is --seeds), alone (no
        # traceback, no flag list). (A critic that diverged, `NonFiniteError`, keeps its own.)
        raise SystemExit(f"estimate: {_cli.error_message(e)}") from e
    mi = np.atleast_1d(result.mi)
    if _SEEDS.value is None:
        print(
            f"I(X;Y) = {mi[0]:.4f} nats = {mi[0] / np.log(2):.4f} bits "
            f"({result.bound}, {result.critic} critic, best held-out step {result.best_step})",
            file=out,
        )
    else:
        print(
            f"I(X;Y) = {mi.mean():.4f} +- {mi.std():.4f} nats = {mi.mean() / np.log(2):.4f} bits "
            f"over {len(mi)} seeds "
            f"({result.bound}, {result.critic} critic): {np.round(mi, 4).tolist()} nats",
            file=out,
        )
    if result.ceiling is not None and np.any(mi >= result.ceiling):
        print(
            f"The estimate of {np.sum(mi >= result.ceiling)} of {len(mi)} seed(s) is the entropy "
            f"of a discrete side ({result.ceiling:.4f} nats), an upper bound of I(X;Y) that the "
            "bound's value passed (see the warning)."
            if _SEEDS.value is not None
            else f"The estimate is the entropy of a discrete side ({result.ceiling:.4f} nats), "
            "an upper bound of I(X;Y) that the bound's value passed (see the warning).",
            file=out,
        )
    if (note := limit_note(result, _MAX_STEPS.value)) is not None:
        print(note, file=out)
    if any(result.rank_columns.values()):
        print(
            f"Columns ranked (heavy tails or a point mass; --standardize): {result.rank_columns}",
            file=out,
        )
    record = {
        "unit": "nats",  # (of mi, the curves and the ceiling)
        **{f.name: getattr(result, f.name) for f in dataclasses.fields(result)},
    }
    if to_stdout:
        print(json.dumps(_common.to_builtin(record), indent=2, allow_nan=False))
    elif json_path:
        try:
            _common.write_json(json_path, record, exclusive=True)
        except FileExistsError:  # written by another process while this one trained
            raise SystemExit(
                f"estimate: --json {_JSON.value!r} appeared while this estimate ran (another "
                "run's?); it is not overwritten, and the estimate above is not saved."
            ) from None
        print(f"The result with its curves: {json_path}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["data"])
    _cli.quiet_when_output_closed()
    app.run(main)
