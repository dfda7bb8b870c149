"""`estimate_mi`: MI between two sample arrays, in one call.

Standardize, hold out a test split, train a critic with a bound on minibatches, evaluate the
bound on the held-out split every ``eval_every`` steps, and stop when its training objective
(`mi_jax.bounds.Bound.objective`: JS for the default SMILE) has not improved on the held-out
split for ``patience`` evaluations; the estimate is the held-out bound at the best of them.
For bounds trained with the JS objective, every evaluation first recalibrates the critic: the
affine map ``a f + b`` with the best held-out JS objective (`mi_jax.bounds.js_calibration`)
undoes the overconfidence a critic acquires while it overfits, so the watched objective and the
bound read on it keep improving while the critic still ranks pairs better. A critic has to beat
the constant one (every score 0: bound 0 nats) on that objective, else the estimate is 0.
After the host-side checks, two compiled programs do the work (an initialization, and a
round: ``eval_every`` steps in a `lax.scan` plus the held-out calibration, bound and
objective); the host sees a few scalars per round and decides early stopping. ``seeds=K``
trains K critics (different initializations and minibatch orders) vmapped side by side. With
several devices (a ``mesh``; default: the most devices the batch size splits over) every
minibatch and the held-out split are divided among them (`mi_jax.parallel`) and the bound
still sees the whole batch. The programs
are compiled ahead of time, in parallel, and cached: a second call with the same settings and
array shapes compiles nothing.
"""

import concurrent.futures
import dataclasses
import functools
import warnings
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mi_jax import _checks, parallel, training
from mi_jax import bounds as bounds_lib
from mi_jax import critics as critics_lib
from mi_jax.types import ArrayLike


@dataclasses.dataclass(frozen=True)
class MIEstimate:
    """The result of `estimate_mi`.

    Attributes:
      mi: the estimate in nats: the held-out bound at the evaluation with the best held-out
        training objective (a float), or ``[K]`` estimates when ``seeds=K``; 0 where no
        trained critic beat the constant critic on that objective; at most ``ceiling``.
      best_step: training step of that evaluation (``[K]`` with seeds; 0: the constant
        critic).
      steps: ``[rounds]`` the training step of each evaluation, over the rounds run (to the
        last seed's early stop, or ``max_steps``).
      test_curve: ``[rounds]`` (or ``[K, rounds]``) held-out bound values (of the calibrated
        critic, with calibration); NaN for a seed after its early stop.
      objective_curve: like ``test_curve``, the held-out training objective that early stopping
        watches (the bound's own value, ``test_curve``, for bounds trained on it).
      train_curve: ``[rounds]`` (or ``[K, rounds]``) mean training bound over each round.
      bound: the bound's name.
      critic: the critic's name.
      calibration: ``[2]`` (or ``[K, 2]``) the ``(a, b)`` of the critic ``a f + b`` the
        estimate was read on (``(1, 0)`` without calibration; ``(0, 0)``, the constant
        critic, where no trained critic beat it).
      rank_columns: ``{"x": [...], "y": [...]}``, the columns mapped by rank to normal scores
        (``standardize="auto"``: the heavy-tailed ones; ``"rank"``: all; else none).
      stopped_early: whether early stopping's criterion was met (``patience`` evaluations
        without a gain in the watched held-out quantity, ``stop_on``; possibly in the last
        round, at ``max_steps``) or a diverged training value ended training (``[K]`` with
        seeds). False: ``max_steps`` ended it with the best of that quantity among the last
        ``patience`` evaluations, and a longer run may read higher.
      ceiling: where ``x`` or ``y`` is discrete (labels, one-hot codes, counts) and the sample
        covers its distribution (`CEILING_COVERAGE`), the smaller entropy of such a side in
        nats, estimated (`_discrete_entropies`): I(X; Y) is at most the entropy, and ``mi``
        at most this (an estimate above it is reported as it, with a warning); else None.
    """

    mi: Any
    best_step: Any
    steps: np.ndarray
    test_curve: np.ndarray
    objective_curve: np.ndarray
    train_curve: np.ndarray
    bound: str
    critic: str
    calibration: Any = None
    rank_columns: dict = dataclasses.field(default_factory=lambda: {"x": [], "y": []})
    stopped_early: Any = None
    ceiling: float | None = None


DEFAULTS = dict(
    bound="smile",
    bound_hparams=None,  # None: the chosen bound's defaults (below for SMILE)
    critic="separable",
    critic_hparams=None,  # None: the chosen critic's defaults (below for the separable one)
    batch_size=128,
    learning_rate=None,  # None: by the bound's training objective (below)
    max_steps=3000,
    eval_every=None,  # None: every ~3.2 epochs, 10-100 steps (`default_eval_every`)
    patience=None,  # None: PATIENCE_STEPS' worth of evaluations (5 of 100 steps)
    stop_on="objective",
    test_fraction=0.2,
    max_test=2048,
    standardize="auto",
    seed=0,
)  # (the command line's defaults too, `experiments.estimate`)


# One hidden layer reads higher than two in many dimensions (2026-12-05, five seeds, N = 5000:
# 20-d 4 nats 3.73 vs 3.45; 5-d 2 nats 2.04 vs 1.97, both within 2 %); the bilinear term x^T W y
# (zero at the start) lets the critic learn the Gaussian-like part of the dependence in many
# dimensions before the MLPs overfit (README, "estimate_mi defaults").
# Glorot-uniform kernels rather than Flax's LeCun normal: mean absolute relative error 10.8
# against 11.9 % over sets A-D, 7.8 against 8.9 % on set E, 13.1 against 15.2 % on the fresh set
# F, in 1-3 fewer evaluations (README).
# The joint critic likewise (it had the module's two layers of 256 and LeCun-normal kernels:
# 54-66 s a call on 2000 pairs against 2.4-3.0 s, reading 0.96 / 1.89 against 0.97 / 2.11 nats
# of 1 / 2 in 2 / 5 dimensions; README).
DEFAULT_CRITIC_HPARAMS = {
    "separable": {
        "hidden": (128,),
        "embed_dim": 32,
        "bilinear": True,
        "kernel_init": "glorot_uniform",
    },
    "concat": {"hidden": (128,), "kernel_init": "glorot_uniform"},
}
# tau = 3 rather than SMILE's 5: with early stopping on the held-out JS objective, the mean
# absolute relative error falls from 22.6 to 12.9 % on the cases it was chosen on and from
# 26.6 to 17.7 % on a second set of cases and draws (README, `experiments.benchmark`).
DEFAULT_BOUND_HPARAMS = {"smile": {"clip": 3.0}}
# Adam's learning rate when none is given: 3e-3 for bounds trained with the JS objective
# (SMILE, JS), 1e-3 for the others. With JS training and the calibrated objective, 3e-3 reaches
# the held-out peak after about a third fewer evaluations (5-d Gaussian: 15 instead of 26
# rounds, 2.5 instead of 3.2 s) at the same accuracy (mean abs. relative error 11.9 against
# 12.7 % on sets A-D, 8.9 against 8.3 % on the fresh set E; 5e-3: 11.3 and 8.5 %, but higher
# at 6-10 nats; README). The exponential bounds trained on their own value (NWJ, DV, ...)
# diverge at 3e-3 (held-out NWJ -5 to -25 nats on a 2-d Gaussian).
JS_LEARNING_RATE, OTHER_LEARNING_RATE = 3e-3, 1e-3
# Candidates of the critic's calibration per evaluation (warm-started from the last one).
CALIBRATION_ITERATIONS = 4
# The held-out evaluations: every 100 steps where the training split is large (3.2 epochs of
# the 4000 training pairs of N = 5000 at batch 128, where the defaults were tuned), every ~3.2
# epochs on a smaller one (at least 10 steps). 100 steps are 80 epochs at N = 200: the critic
# had passed its held-out peak before the first evaluation (fresh draws of 2-10-d Gaussians at
# 1-2 nats: mean abs. relative error 35 / 23 / 16 % at N = 200 / 500 / 1000 with 100 steps,
# 23 / 17 / 12 % now; README, "Small samples"). Patience: the evaluations of 500 steps.
EVAL_EVERY_MAX, EVAL_EVERY_MIN, EVAL_EPOCHS, PATIENCE_STEPS = 100, 10, 3.2, 500
# The least held-out split: the estimate is read (and the critic calibrated, and early stopping
# decided) on it. With 2 held-out pairs of independent samples the estimate read up to 22 nats.
MIN_TEST = 32
# A side whose values repeat (a label, one-hot codes, counts) has a finite entropy, which bounds
# I(X; Y) from above. SMILE at tau = 3 reads above it for a label of more than ~20 classes
# that X nearly determines (the density ratio passes e^3 off the diagonal): 100 classes, one-
# hot, Y = X: 6.19 nats of log 100 = 4.61; 5-d Gaussian classes: 6.32 of 4.59 (2026-12-06).
# Where the sample covers the side's distribution (Good-Turing coverage, 1 - singletons / N, at
# least CEILING_COVERAGE) its entropy estimate caps the estimate; where it covers it more
# thinly (at least DISCRETE_COVERAGE: the rows mostly repeat), classes the sample never saw hold
# entropy no estimate sees (2 % of the mass over 1e5 classes, coverage 0.98: 0.05-0.17 nats low;
# Zipf labels of exponent 1.5 over 1e5 classes at N = 5000, coverage 0.95: Miller-Madow 3.03 of
# H = 3.17, Chao-Shen, the larger, 3.18), and an estimate above it only warns.
CEILING_COVERAGE, DISCRETE_COVERAGE = 0.99, 0.5
# A joint (concat) critic scores the held-out split's n_test^2 pairs in row blocks of at most
# this many activations per layer (2^25 floats, 128 MiB): all pairs at once held 8 GiB of
# activations at n_test = 2048 (hidden 256, 256); in blocks of 64 rows 260 MiB, and the
# evaluation took 4.5 s instead of 10 s on 2 CPU cores.
HELD_OUT_BLOCK = 2**25


def estimate_mi(
    x: ArrayLike,
    y: ArrayLike,
    *,
    bound: str = DEFAULTS["bound"],
    bound_hparams: dict[str, Any] | None = DEFAULTS["bound_hparams"],
    critic: str = DEFAULTS["critic"],
    critic_hparams: dict[str, Any] | None = DEFAULTS["critic_hparams"],
    batch_size: int = DEFAULTS["batch_size"],
    learning_rate: float | None = DEFAULTS["learning_rate"],
    max_steps: int = DEFAULTS["max_steps"],
    eval_every: int | None = DEFAULTS["eval_every"],
    patience: int | None = DEFAULTS["patience"],
    stop_on: str = DEFAULTS["stop_on"],
    test_fraction: float = DEFAULTS["test_fraction"],
    max_test: int = DEFAULTS["max_test"],
    standardize: bool | str = DEFAULTS["standardize"],
    calibrate: bool | None = None,
    seed: int = DEFAULTS["seed"],
    seeds: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> MIEstimate:
    """Estimates I(X; Y) in nats from paired samples.

    Defaults (compared on correlated Gaussians, their cubic transforms, Student-t and spiral
    pairs in 1-50 dimensions; the README lists the measured accuracy): SMILE (tau = 3) trained
    with the JS gradient, a separable critic ``g(x)^T h(y) + x^T W y`` (one hidden layer of 128,
    a 32-d embedding, Glorot-uniform kernels, ``W`` starting at 0; ``critic="concat"``: one
    hidden layer of 128, Glorot-uniform kernels), Adam at 3e-3 (1e-3 for bounds not trained with
    the JS objective), batch 128, at most 3000 steps, evaluation every ~3.2 epochs, 10-100
    steps (100 from about 4000 training pairs at batch 128, N = 5000) on a 20 % held-out split (at
    most 2048 samples) of the critic recalibrated there (``calibrate``), early stopping after
    500 steps without improvement of the held-out JS objective; the
    estimate is the held-out SMILE value of the calibrated critic at the best of them, or 0
    where no trained critic beat the constant critic (on the watched objective, and on the
    bound: an estimate is never below 0 nats). A critic whose training value turns NaN or
    infinite trains no further: its best evaluation before is its estimate, or, if it had none
    that beat the constant critic, the call stops with a `mi_jax.training.NonFiniteError` naming
    the bound and the steps. About 160 samples are the least at the default ``test_fraction``
    (the held-out split needs `MIN_TEST`).

    Discrete data: give a categorical variable one-hot (a column of class indices asks the
    critic for an arbitrary function of one number: 20 classes read 2.06 nats of 2.56, one-hot
    2.63; README). Where a side is discrete and the sample covers its distribution, the
    estimate is at most its entropy (``MIEstimate.ceiling``): SMILE at tau = 3 reads above it
    for labels of more than ~20 classes that the other side nearly determines.

    Many dimensions read low, the more so the less MI each carries (README, "Where it reads
    low"): a linear layer of width 8 / 64 / 256 at 3 nats read 2.86 / 2.02 / 0.62. Compare
    the layers of a network at one width. Columns constant on the training split (dead units)
    are set to 0, with a warning.

    Args:
      x: ``[N, dim_x]`` samples (``[N]`` is read as one dimension).
      y: ``[N, dim_y]`` samples paired with ``x``.
      bound: a registered bound name (`mi_jax.bounds.available_bounds`).
      bound_hparams: keyword hyperparameters of the bound, e.g. ``{"clip": 5.0}``, over
        `DEFAULT_BOUND_HPARAMS` for that bound (the keys given replace those; the bound's own
        defaults for the rest, and for bounds not listed).
      critic: a registered critic name (`mi_jax.critics.available_critics`).
      critic_hparams: keyword hyperparameters of the critic over `DEFAULT_CRITIC_HPARAMS` for
        that critic (the keys given replace those: ``{"hidden": (256,)}`` keeps the bilinear
        term and the Glorot-uniform kernels, ``{"bilinear": False}`` drops the term; the
        module's own defaults for the rest, and for critics not listed there).
      batch_size: training minibatch size (>= 2; capped at the training split's size).
      learning_rate: Adam's learning rate; None: `JS_LEARNING_RATE` (3e-3) for a bound trained
        with the JS objective (SMILE, JS), `OTHER_LEARNING_RATE` (1e-3) for the others.
      max_steps: upper limit on training steps: training runs in whole rounds of
        ``eval_every`` steps, as many as fit (``eval_every`` is capped at ``max_steps``).
      eval_every: training steps between held-out evaluations; None (default):
        `default_eval_every`, ~3.2 epochs at ``batch_size`` within 10-100 steps (100 from
        about 4000 training pairs at batch 128; at batch 512, 25).
      patience: evaluations without improvement of the ``stop_on`` quantity before stopping;
        None (default): as many as make `PATIENCE_STEPS` (500) steps (5 of 100 steps).
      stop_on: what early stopping watches on the held-out split: ``"objective"``, the
        training objective (the bound's `~mi_jax.bounds.Bound.objective`, else its value), or
        ``"bound"``, the bound's value itself (its maximum over a noisy curve reads high).
      test_fraction: fraction of samples held out.
      max_test: cap on the held-out split (its score matrix is square); samples beyond it
        join the training split. The held-out split needs at least `MIN_TEST` (32) samples.
      standardize: True: scale each column to zero mean and unit variance (train-split
        statistics; held-out values beyond the training split's range are clipped to it, here
        and under ``"auto"``); ``"rank"``: map each column through its train-split empirical CDF and
        the standard normal quantile function (marginal Gaussianization: monotone in each
        column, so the MI is unchanged; it tames heavy tails, and reads the cubic transform
        much better, Student-t pairs worse, README); ``"auto"`` (default): z-scores, and
        ranks for the columns whose variance sits in their tails (the middle half of their
        training z-scores spans less than `HEAVY_TAIL_IQR`: Cauchy or Student-t marginals
        of up to ~2 degrees of freedom (about half of the columns of 3), the cubic of a
        Gaussian, a point mass; z-scored, a
        few extreme pairs dominate the held-out bound, which then read up to 4.5 times the MI,
        38 times before the clip, README); ``MIEstimate.rank_columns`` names them. False:
        the samples as they are.
      calibrate: at every evaluation, replace the critic ``f`` by the affine ``a f + b`` that
        maximizes the held-out JS objective (`mi_jax.bounds.js_calibration`, warm-started from
        the previous evaluation's map, with a second start fitted to the scores' moments)
        before the bound and the objective are read on it. None
        (default): calibrate where the bound is trained with the JS objective (SMILE, JS);
        True with another bound is an error.
      seed: seed for the split, the initialization and the minibatches.
      seeds: if set, train this many critics vmapped in one program and return all estimates.
        Member 0 is the run of ``seeds=None`` with the same ``seed`` (up to float rounding),
        and the first members of a larger ``seeds`` those of a smaller one (a pilot of one
        seed and a final run of five agree on it); member k is not the run of ``seed + k``
        (its keys are split from ``seed``'s). Their spread is the critics' on these samples
        (one train/held-out split), not an error bar on the MI: in many dimensions at little
        MI per dimension the estimates agree with each other more closely than with the MI
        (README, "`estimate_mi` defaults").
      mesh: the devices to split every minibatch and the held-out split over
        (`mi_jax.parallel.data_mesh`). Default: the most devices that ``batch_size`` splits
        over (`mi_jax.parallel.data_mesh_for`: all of them when their number divides it).
        With ``n > 1`` devices ``batch_size`` must be a multiple of ``n`` and the held-out
        split is cut to a multiple of ``n`` (the rows cut train); one device runs the
        unsharded program.

    Returns:
      An `MIEstimate`.
    """
    x, y = _checks.check_samples(x, y, min_samples=8)
    hx, hy = _row_hashes(x, y)
    _warn_if_repeated_rows(x, y, hx, hy)
    _check_arguments(
        bound=bound, bound_hparams=bound_hparams, critic=critic, critic_hparams=critic_hparams,
        batch_size=batch_size, max_steps=max_steps, eval_every=eval_every, patience=patience,
        stop_on=stop_on, test_fraction=test_fraction, max_test=max_test,
        standardize=standardize, calibrate=calibrate, seed=seed, seeds=seeds, mesh=mesh,
    )  # fmt: skip
    # Python ints from here on: numpy's (np.int8(100), np.int32(3000)) overflowed in the
    # arithmetic below (seed * 1_000_003) or wrapped silently.
    batch_size, max_steps, max_test, seed = (
        int(v) for v in (batch_size, max_steps, max_test, seed)
    )
    seeds = None if seeds is None else int(seeds)
    # The keys given replace those of the tuned defaults; the others stay.
    bound_hparams = {**DEFAULT_BOUND_HPARAMS.get(bound, {}), **(bound_hparams or {})}
    critic_hparams = {**DEFAULT_CRITIC_HPARAMS.get(critic, {}), **(critic_hparams or {})}
    learning_rate, calibrate = _by_objective(bound, bound_hparams, learning_rate, calibrate)

    mesh = parallel.data_mesh_for(batch_size) if mesh is None else mesh
    devices = mesh.devices.size
    if devices > 1:
        parallel.check_batch_size(batch_size, mesh)
    train_idx, test_idx = _split(len(x), test_fraction, max_test, devices, seed)
    arrays, ranked = _prepared(x, y, train_idx, test_idx, standardize, mesh)
    x_train, y_train, x_test, y_test = arrays
    batch = min(batch_size, len(train_idx) // devices * devices)
    eval_every = default_eval_every(len(train_idx), batch) if eval_every is None else eval_every
    eval_every = min(int(eval_every), max_steps)  # max_steps is a limit: one whole round at least
    patience = -(-PATIENCE_STEPS // eval_every) if patience is None else int(patience)
    spec = _FitSpec(
        bound=bound,
        bound_hparams=_checks.hashable_hparams(bound_hparams),
        critic=critic,
        critic_hparams=_checks.hashable_hparams(critic_hparams),
        learning_rate=float(learning_rate),
        batch=batch,
        eval_every=eval_every,
        calibrate=bool(calibrate),
        num_seeds=seeds,
        train_shapes=(x_train.shape, y_train.shape),
        test_shapes=(x_test.shape, y_test.shape),
        mesh=mesh if devices > 1 else None,
        device=None if devices > 1 else mesh.devices.flat[0],
        factories=(
            _ByIdentity(bounds_lib._REGISTRY[bound]),
            _ByIdentity(critics_lib._CRITICS[critic]),
        ),
        trace_settings=_checks.trace_settings(),
    )
    # Traced and run in float32 mode whatever `jax_enable_x64` says (the data are float32):
    # under x64 Adam's bias correction ran in float64, another estimate from the same data, and
    # the programs cached in one mode served the other.
    with jax.enable_x64(False):
        fitted = _fit(spec, arrays, seed, max_steps // eval_every, patience, stop_on)
    fitted["ceiling"] = _apply_entropy_ceiling(fitted, _discrete_entropies(hx, hy), bound_hparams)
    return MIEstimate(**fitted, bound=bound, critic=critic, rank_columns=ranked)


def _apply_entropy_ceiling(fitted: dict, entropies: list, bound_hparams: dict) -> float | None:
    """Caps ``fitted["mi"]`` at the smallest entropy of a discrete side whose sample covers
    its distribution (`_discrete_entropies`, coverage at least `CEILING_COVERAGE`), with a
    warning naming the values it replaced; warns only where the estimate passes the entropy
    of a side covered more thinly. Returns the cap, if any."""
    covered = [e for e in entropies if e[2] >= CEILING_COVERAGE]
    cap = min(covered) if covered else None
    passed = sorted(e for e in entropies if np.any(fitted["mi"] > e[0]))
    if not passed:
        return None if cap is None else cap[0]
    # The cap where the estimate passed it, else the smallest entropy it passed (warned only).
    entropy, side, coverage = cap if cap is not None and cap in passed else passed[0]
    tau = bound_hparams.get("clip")
    warnings.warn(
        f"the estimate ({np.round(fitted['mi'], 3).tolist()} nats) passed the entropy of the "
        f"discrete `{side}` ({entropy:.3f} nats, estimated), which bounds I(X; Y) from above: "
        + (
            "reported as that bound (`MIEstimate.ceiling`)."
            if coverage >= CEILING_COVERAGE
            else f"its sample covers its distribution too thinly (Good-Turing coverage "
            f"{coverage:.3f}, below {CEILING_COVERAGE}: classes never sampled) to cap the "
            "estimate, which may read high."
        )
        + (
            f" SMILE's clip (tau = {tau}) reads high where the density ratio passes e^tau, as "
            "for a label of more than ~20 classes that the other side nearly determines: a "
            "larger `clip` reads closer."
            if "clip" in bound_hparams and tau is not None
            else ""
        ),
        stacklevel=3,
    )
    if coverage >= CEILING_COVERAGE:
        mi = np.minimum(fitted["mi"], entropy)
        fitted["mi"] = float(mi) if np.ndim(mi) == 0 else mi
    return None if cap is None else cap[0]


def default_eval_every(num_train: int, batch_size: int) -> int:
    """`estimate_mi`'s default steps between held-out evaluations: ~`EVAL_EPOCHS` (3.2) epochs
    of a training split of ``num_train`` pairs at ``batch_size``, clipped to [`EVAL_EVERY_MIN`,
    `EVAL_EVERY_MAX`] (10, 100): at batch 128, 100 from 4000 training pairs (N = 5000) up, 40
    at N = 2000."""
    steps = round(EVAL_EPOCHS * num_train / batch_size)
    return int(min(EVAL_EVERY_MAX, max(EVAL_EVERY_MIN, steps)))


def _check_arguments(
    *, bound, bound_hparams, critic, critic_hparams, batch_size, max_steps, eval_every, patience,
    stop_on, test_fraction, max_test, standardize, calibrate, seed, seeds, mesh,
) -> None:  # fmt: skip
    """`estimate_mi`'s checks of its settings: a ValueError (a KeyError for an unknown name)
    naming the first bad one."""
    if not (_checks.is_real(test_fraction) and 0.0 < test_fraction < 1.0):
        raise ValueError(f"`test_fraction` must be a number in (0, 1), got {test_fraction!r}.")
    for name, value, least in (
        ("batch_size", batch_size, 2),  # a bound needs a pair off the diagonal
        ("max_steps", max_steps, 1),
        ("eval_every", eval_every, 1),
        ("patience", patience, 1),
        ("max_test", max_test, MIN_TEST),
    ):
        if value is None and name in ("eval_every", "patience"):
            continue  # (the defaults, set from the training split's size)
        _checks.check_ints(least=least, **{name: value})
    if not (_checks.is_int(seed) and 0 <= seed < 2**31):
        raise ValueError(f"`seed` must be an integer in [0, 2**31), got {seed!r}.")
    if not (standardize is True or standardize is False or standardize in ("rank", "auto")):
        raise ValueError(
            f"`standardize` must be 'auto', True, False or 'rank', got {standardize!r}."
        )
    if stop_on not in ("objective", "bound"):
        raise ValueError(f"`stop_on` must be 'objective' or 'bound', got {stop_on!r}.")
    if calibrate is not None and not isinstance(calibrate, bool | np.bool_):
        raise ValueError(f"`calibrate` must be True, False or None, got {calibrate!r}.")
    if mesh is not None:
        parallel.check_mesh(mesh)
    for kind, name, known in (
        ("bound", bound, bounds_lib.available_bounds()),
        ("critic", critic, critics_lib.available_critics()),
    ):
        if not _checks.is_known(name, known):
            raise _checks.unknown_name_error(kind, name, known)
    for name, hparams in (("bound_hparams", bound_hparams), ("critic_hparams", critic_hparams)):
        if hparams is not None and not isinstance(hparams, Mapping):
            raise ValueError(f"`{name}` must be a dict of keyword arguments, got {hparams!r}.")
    if seeds is not None and not (_checks.is_int(seeds) and seeds >= 1):
        raise ValueError(f"`seeds` must be a positive integer or None, got {seeds!r}.")


def _prepared(x, y, train_idx, test_idx, standardize, mesh) -> tuple[tuple, dict]:
    """``((x_train, y_train, x_test, y_test), rank_columns)``: the samples standardized (on
    the training split's statistics) as float32 arrays on the mesh's devices: global arrays
    over several devices (and processes), else on its one device."""
    raw = (x, y)
    (x, x_ranked), (y, y_ranked) = (
        _standardized(a, train_idx, standardize, name) for a, name in ((x, "x"), (y, "y"))
    )
    if standardize is not False:  # (ranked columns place such values at their extremes by design)
        for a, z, ranked, name in zip(raw, (x, y), (x_ranked, y_ranked), "xy", strict=True):
            zeroed = np.flatnonzero(np.all(z == 0.0, axis=0))  # (constant in training: warned)
            z_scored = np.setdiff1d(np.arange(a.shape[1]), np.union1d(ranked, zeroed))
            _warn_if_far_outside(a, train_idx, test_idx, name, z_scored)
    if standardize is False:
        x, y = (_to_float32(a, name) for a, name in ((x, "x"), (y, "y")))
    else:  # (z-scores clipped to the training rows' range, and ranks: within float32's)
        x, y = x.astype(np.float32), y.astype(np.float32)
    if _same_continuous_samples(x, y):
        warnings.warn(
            "x and y are the same samples (after standardization, to rounding: y = x, or an "
            "increasing affine or monotone map of it, column by column). I(X; Y) is then H(X): "
            f"infinite for continuous samples, and no estimate from {len(test_idx)} held-out "
            f"pairs certifies much above log {len(test_idx)} = "
            f"{np.log(len(test_idx)):.2f} nats (McAllester & Stratos 2020): the estimate grows "
            "with N and the dimension. Was y meant to be another variable?",
            stacklevel=3,
        )
    data = (x[train_idx], y[train_idx], x[test_idx], y[test_idx])
    # (`jax.device_put`: `jnp.asarray` of a numpy array compiles a program per shape.)
    if mesh.devices.size > 1:
        arrays = parallel.replicate(data, mesh)
    else:
        arrays = jax.device_put(data, mesh.devices.flat[0])
    return tuple(arrays), {"x": x_ranked, "y": y_ranked}


def _same_continuous_samples(x: np.ndarray, y: np.ndarray) -> bool:
    """Whether the standardized ``x`` and ``y`` agree to float32 rounding (a z-scored ``3 x + 1``
    differs from x by ulps), with a column of x of more than N / 2 distinct values (discrete
    samples have a finite I(X; X) = H(X), a fair check of an estimator). The first rows decide
    almost every call without a pass over the data."""
    if x.shape != y.shape:
        return False

    def close(a, b):
        return bool(np.all(np.abs(a - b) <= 1e-5 * (1.0 + np.abs(a))))

    if not close(x[:16], y[:16]) or not all(
        close(x[i : i + 65536], y[i : i + 65536]) for i in range(0, len(x), 65536)
    ):
        return False
    return any(len(np.unique(x[:, j])) > len(x) / 2 for j in range(x.shape[1]))


def _fit(spec: "_FitSpec", arrays, seed: int, rounds: int, patience: int, stop_on: str):
    """Trains ``spec``'s critics on ``arrays`` for at most ``rounds`` rounds with early
    stopping; the `MIEstimate` fields it decides (``mi``, ``best_step``, ``steps``, the
    curves, ``calibration``, ``stopped_early``), without the seed axis for one seed
    (``spec.num_seeds`` None)."""
    init, train_round = _compiled_fit(spec)
    x_train, y_train = arrays[:2]
    states, data_keys, constant_objective = init(np.int32(seed), x_train, y_train)
    num_seeds = spec.num_seeds or 1
    samplers = [
        _minibatches(seed * 1_000_003 + k, len(x_train), spec.batch, spec.eval_every)
        for k in range(num_seeds)
    ]
    stopping = _EarlyStopping(num_seeds, patience, stop_on)
    for r in range(rounds):  # whole rounds within the limit
        if not stopping.active.any():
            break
        seed_args = (np.stack([next(s) for s in samplers]), stopping.active, stopping.calibration)
        if spec.num_seeds is None:  # no seed axis
            seed_args = tuple(a[0] for a in seed_args)
        states, calibration, values = train_round(
            states, data_keys, np.int32(r), *seed_args, *arrays
        )
        stopping.update(r, calibration, values)  # the one host sync per round

    # The reference the best critic must beat: the constant critic (every score 0), which
    # carries no dependence and whose bound is 0 nats. Its held-out objective needs no data.
    # Without it, a critic that learned only noise reads below 0 (-0.5 nats on independent
    # 50-d samples), an impossible value for MI. A critic that beats it on the objective can
    # still read below 0 nats on the bound: the constant critic's 0 is the estimate then too.
    reference = float(constant_objective) if stop_on == "objective" else 0.0
    batched = spec.num_seeds is not None
    mi, best_step, steps, *curves, calibration = stopping.result(
        reference, spec.bound, spec.eval_every, batched
    )
    stopped = ~stopping.active
    if not batched:
        mi, best_step, calibration = float(mi[0]), int(best_step[0]), calibration[0]
        curves, stopped = [c[0] for c in curves], bool(stopped[0])
    test_curve, objective_curve, train_curve = curves
    return dict(
        mi=mi, best_step=best_step, steps=steps, test_curve=test_curve,
        objective_curve=objective_curve, train_curve=train_curve, calibration=calibration,
        stopped_early=stopped,
    )  # fmt: skip


def _by_objective(
    bound: str, bound_hparams: dict, learning_rate: float | None, calibrate: bool | None
) -> tuple[float, bool]:
    """The learning rate and the calibration, by the bound's training objective where not given."""
    trained_on_js = bounds_lib.get_bound(bound, **bound_hparams).objective is bounds_lib.js_fgan
    if learning_rate is None:
        learning_rate = JS_LEARNING_RATE if trained_on_js else OTHER_LEARNING_RATE
    elif not _checks.is_positive_finite(learning_rate):
        raise ValueError(
            f"`learning_rate` must be a positive number or None, got {learning_rate!r}."
        )
    if calibrate is None:
        calibrate = trained_on_js
    elif calibrate and not trained_on_js:
        raise ValueError(
            f"`calibrate=True` needs a bound trained with the JS objective (smile, js; "
            f"`make_bound(..., objective=bounds.js_fgan)`); {bound!r} with {bound_hparams} is "
            "not."
        )
    return learning_rate, calibrate


def _split(
    n: int, test_fraction: float, max_test: int, devices: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(train_idx, test_idx)``: a random held-out split of ``n`` samples, a multiple of
    ``devices`` (an equal share per device) and at least `MIN_TEST`; all the rest train."""
    order = np.random.default_rng(seed).permutation(n)
    n_test = min(max(2, int(round(test_fraction * n))), max_test)
    n_test -= n_test % devices  # (the rows this leaves out of the held-out split train)
    test_idx, train_idx = order[:n_test], order[n_test:]
    if len(train_idx) < max(2, devices) or len(test_idx) < MIN_TEST:
        raise ValueError(
            f"{n} samples leave too few for training ({len(train_idx)}) or the held-out split "
            f"({len(test_idx)} with `test_fraction` {test_fraction}, a multiple of the {devices} "
            f"device(s); at least {MIN_TEST}); pass more samples or a larger `test_fraction`."
        )
    return train_idx, test_idx


def _standardized(
    a: np.ndarray, train_idx: np.ndarray, standardize: bool | str, name: str
) -> tuple[np.ndarray, list[int]]:
    """``a`` standardized as asked (train-split statistics), or as given; and the columns
    mapped by rank."""
    # Statistics and ranks of the samples as given, in float64: a float32 cast first could
    # overflow the variance (x ~ 1e20), lose the spread (1e8 + x) or tie ranks.
    if standardize == "rank":
        return _gaussianize(a, train_idx, name), list(range(a.shape[1]))
    if standardize is False:
        return a, []
    z = _zscores(a, train_idx, name)
    # Held-out values beyond the training split's range, clipped to it (the training rows lie
    # within it): the critic never saw them, and one held-out pair at z = 1000 (an outlier
    # the training statistics did not include) read 2477 nats of 1, or 0 (README).
    lo, hi, q1, q3 = (np.empty(z.shape[1]) for _ in range(4))
    for cols, train in _training_blocks(z, train_idx):
        lo[cols], hi[cols] = train.min(axis=0), train.max(axis=0)
        if standardize == "auto":  # (`train` is a copy: sorted in place)
            q1[cols], q3[cols] = np.percentile(train, [25, 75], axis=0, overwrite_input=True)
    np.clip(z, lo, hi, out=z)
    if standardize is True:
        return z, []
    flat = np.all(z == 0.0, axis=0)  # (set to 0 by `_zscores`, which said so)
    heavy = np.flatnonzero((q3 - q1 < HEAVY_TAIL_IQR) & ~flat)
    if heavy.size:
        z[:, heavy] = _gaussianize(a[:, heavy], train_idx, name)
    return z, heavy.tolist()


def _row_hashes(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[N]`` hashes of the rows of ``x`` and of ``y``: their values' exact bits, mixed, times
    random odd 64-bit weights, summed with wraparound (a sort of whole rows took 9 s at 1e6 x
    101). The mixing (SplitMix64's finalizer, a bijection) matters: the bits of 1.0 end in 52
    zeros, so unmixed, one-hot rows of 100 classes hashed to ~4096 values and collided."""
    n = len(x)
    rng = np.random.default_rng(0)

    def mixed(bits: np.ndarray) -> np.ndarray:  # uint64 arithmetic wraps, exactly
        bits = (bits ^ (bits >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        bits = (bits ^ (bits >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return bits ^ (bits >> np.uint64(31))

    def hashed(a: np.ndarray) -> np.ndarray:  # column by column: no [N, d] float64 copy
        a = np.asarray(a).reshape(n, -1)
        h = np.zeros(n, np.uint64)
        for j in range(a.shape[1]):
            bits = (a[:, j].astype(np.float64) + 0.0).view(np.uint64)  # (-0.0 as 0.0)
            h += mixed(bits) * np.uint64(rng.integers(0, 2**62) * 2 + 1)
        return h

    return hashed(x), hashed(y)


def _discrete_entropies(hx: np.ndarray, hy: np.ndarray) -> list[tuple[float, str, float]]:
    """``(H, side, coverage)`` of each discrete side (``"x"``, ``"y"``: Good-Turing coverage
    ``1 - singletons / N`` at least `DISCRETE_COVERAGE`; ``hx``, ``hy``: `_row_hashes`).

    H is the larger of two estimates of the entropy, each of which reads low in its own regime
    (a larger ceiling is the safer one): the plug-in entropy with Miller and Madow's correction
    ``(K - 1) / 2N`` (low where many classes are unseen: uniform over 490 classes, N = 1000,
    -0.06 nats) and Chao and Shen's coverage-adjusted one (low where all are seen: the same at
    N = 5000, -0.05; Zipf labels, N = 5000: MM -0.13, CS +0.02 nats). A thin tail of unseen
    classes still reads low: 1 % of the mass over 1e5 classes, coverage 0.99: -0.05 to -0.07.
    """
    n = len(hx)
    found = []
    for side, h in (("x", hx), ("y", hy)):
        _, counts = np.unique(h, return_counts=True)
        coverage = 1.0 - np.sum(counts == 1) / n
        if coverage < DISCRETE_COVERAGE:
            continue
        p = counts / n
        miller_madow = -np.sum(p * np.log(p)) + (len(counts) - 1) / (2 * n)
        seen = coverage * p  # Chao-Shen: the seen classes' mass, Horvitz-Thompson weighted
        chao_shen = -np.sum(seen * np.log(seen) / (1.0 - (1.0 - seen) ** n))
        found.append((float(max(miller_madow, chao_shen)), side, float(coverage)))
    return found


def _warn_if_repeated_rows(x: np.ndarray, y: np.ndarray, hx: np.ndarray, hy: np.ndarray) -> None:
    """Warns where the rows look resampled or padded: at least 1 % of the rows ``(x_i, y_i)``
    are exact copies of others, over more than sqrt(N) distinct rows; the copies hold values
    that are not integers (continuous values do not repeat by chance); and one side determines
    the other (in 99 % of the distinct x, or of the distinct y, one partner only). The critic
    recognizes copies on both sides of the split: independent samples, each row 5 times, read
    5.7 nats in 20 dimensions. Categorical and integer data do not warn; data rounded to a grid
    coarse enough to repeat, where one side determines the other, do (the warning says so).
    ``hx``, ``hy``: the rows' hashes (`_row_hashes`)."""
    n = len(x)
    x, y = (np.asarray(a).reshape(n, -1) for a in (x, y))
    pairs, first, counts = np.unique(hx * np.uint64(3) + hy, return_index=True, return_counts=True)
    rows = len(pairs)
    if n - rows < 0.01 * n or rows <= np.sqrt(n):
        return
    copied = first[counts > 1]  # a row of each repeated pair
    values = np.concatenate([x[copied], y[copied]], axis=1).astype(np.float64)
    if np.all(values == np.round(values)):  # integer codes repeat by nature
        return
    one_partner = max(len(np.unique(hx[first])), len(np.unique(hy[first])))
    if one_partner < 0.99 * rows:
        return
    warnings.warn(
        f"the {n} rows (x, y) hold {rows} distinct pairs: {n - rows} are exact copies, of values "
        "that are not integers, and one side determines the other. Resampled or padded data? "
        "The copies fall on both sides of the train / held-out split, where the critic "
        "recognizes them: the estimate reads the MI of the data as given (each repeated pair an "
        "atom). If the repeats are an artefact, pass the distinct rows (values rounded to a "
        "grid repeat by nature: then they are the data).",
        stacklevel=3,
    )


def _warn_if_far_outside(a: np.ndarray, train_idx, test_idx, name: str, columns) -> None:
    """Warns where held-out values of ``a``'s z-scored ``columns`` lie more than
    three times the training range's width beyond it: they are clipped to it, silently else (a
    missing-value code such as -999 or 1e300 that the training split does not hold, or an
    outlier the split left out of training; at one width, Student-t columns of 3 degrees of
    freedom warned in 1 % of calls per column)."""
    if not len(columns):
        return
    train = a[np.ix_(train_idx, columns)]
    lo, hi = train.min(axis=0).astype(np.float64), train.max(axis=0).astype(np.float64)
    del train
    held = a[np.ix_(test_idx, columns)]  # (compared with float64 limits: no overflow)
    far = (held < lo - 3 * (hi - lo)) | (held > hi + 3 * (hi - lo))
    if far.any():
        cols = np.flatnonzero(far.any(axis=0))
        j = cols[0]
        warnings.warn(
            f"`{name}` has {int(far.sum())} held-out value(s) far beyond the training split's "
            f"range (columns {np.asarray(columns)[cols[:8]].tolist()}; column {columns[j]}: "
            f"{held[far[:, j], j][0]:.6g} against {lo[j]:.6g} to {hi[j]:.6g}): they are clipped "
            "to it. Outliers, or a missing-value code?",
            stacklevel=4,  # (the user's call: here, `_prepared`, `estimate_mi`)
        )


class _EarlyStopping:
    """The host's side of `estimate_mi`'s rounds, for ``num_seeds`` critics side by side: the
    curves, each seed's best evaluation so far and its calibration, and which seeds still
    train (``active``: fewer than ``patience`` evaluations since their best)."""

    def __init__(self, num_seeds: int, patience: int, stop_on: str):
        self.patience, self.stop_on = patience, stop_on
        # Each round's (bound, objective, training value, calibration) per seed, NaN for a
        # seed that has stopped; only the rounds run (a huge `max_steps` allocates nothing).
        self.rows = []
        self.best = np.full(num_seeds, -np.inf)
        self.best_round = np.zeros(num_seeds, int)
        self.calibration = np.tile(np.array([1.0, 0.0], np.float32), (num_seeds, 1))  # (a, b)
        self.since_best = np.zeros(num_seeds, int)
        self.diverged = np.full(num_seeds, -1)  # the round the training value turned non-finite
        self.diverged_value = np.zeros(num_seeds)

    @property
    def active(self) -> np.ndarray:
        return self.since_best < self.patience

    def update(self, r: int, calibration, values) -> None:
        """Reads round ``r``'s ``[K, 2]`` calibration and ``(test, objective, train)`` values."""
        num_seeds, active = len(self.best), self.active
        calibration = np.asarray(calibration, np.float32).reshape(num_seeds, 2)
        self.calibration = np.where(active[:, None], calibration, self.calibration)
        test_value, objective, train_value = (np.asarray(v).reshape(num_seeds) for v in values)
        # A critic whose training value turns non-finite trains no further; its estimate is
        # its best evaluation before, if that beat the constant critic (else an error, below).
        newly = active & ~np.isfinite(train_value)
        self.diverged[newly], self.diverged_value[newly] = r, train_value[newly]
        self.rows.append(
            [
                np.where(active, v, np.nan)
                for v in (test_value, objective, train_value, *self.calibration.T)
            ]
        )
        watched = objective if self.stop_on == "objective" else test_value
        # A finite bound value is required too: a critic whose held-out SMILE is NaN is no
        # estimate, however good its objective.
        improved = active & ~newly & (watched > self.best) & np.isfinite(test_value)
        self.best = np.where(improved, watched, self.best)
        self.best_round = np.where(improved, r, self.best_round)
        self.since_best = np.where(improved, 0, self.since_best + active)
        self.since_best[newly] = self.patience

    def result(self, reference: float, bound: str, eval_every: int, batched: bool):
        """``(mi, best_step, steps, test, objective, train curves, calibration)``, seeds first,
        for seeds whose best evaluation beat ``reference`` (the constant critic's; else 0)."""
        seed_range = np.arange(len(self.best))
        # [K, rounds run] each; the calibration [K, rounds run, 2].
        test_curve, objective_curve, train_curve, *calibration_curve = np.stack(
            self.rows, axis=2, dtype=np.float64
        )
        calibration_curve = np.stack(calibration_curve, axis=-1)
        failed = np.flatnonzero((self.diverged >= 0) & ~(self.best >= reference))
        if failed.size:  # diverged before it was an estimate: 0 nats would hide that
            k = failed[0]
            raise training.NonFiniteError(
                f"bound {bound!r} became {self.diverged_value[k]} in training steps "
                f"{self.diverged[k] * eval_every + 1}-{(self.diverged[k] + 1) * eval_every}"
                + (f" (seed index {k})" if batched else "")
                + "; try a lower `learning_rate`"
                # (in the first round it may be the bound itself: NaN for any critic)
                + (
                    ", or check the bound and its hyperparameters."
                    if self.diverged[k] == 0
                    else "."
                )
            )
        if not np.all(np.isfinite(self.best)):
            raise training.NonFiniteError(
                f"bound {bound!r} never gave a finite held-out value (last: bound "
                f"{test_curve[:, -1]}, objective {objective_curve[:, -1]}); try a lower "
                "`learning_rate` or another bound."
            )
        steps = (np.arange(test_curve.shape[1]) + 1) * eval_every
        mi = test_curve[seed_range, self.best_round]
        trained = (self.best >= reference) & (mi > 0)
        best_step = np.where(trained, steps[self.best_round], 0)
        mi = np.where(trained, mi, 0.0)
        # (Without calibration the programs pass the identity (1, 0) through unchanged.)
        chosen = calibration_curve[seed_range, self.best_round]
        chosen = np.where(trained[:, None], chosen, 0.0)
        return mi, best_step, steps, test_curve, objective_curve, train_curve, chosen


def _minibatches(seed: int, n: int, batch: int, steps: int):
    """Yields ``[steps, batch]`` index arrays: epochs of shuffled indices, no repeats in a batch.

    (A repeated sample in a batch would put a joint pair off the diagonal, among the negatives.)
    """
    rng = np.random.default_rng(seed)
    buffer = np.empty(0, np.int32)
    while True:
        need = steps * batch
        while len(buffer) < need:
            buffer = np.concatenate([buffer, rng.permutation(n).astype(np.int32)])
        take, buffer = buffer[:need].reshape(steps, batch), buffer[need:]
        # An epoch boundary inside a batch may repeat an index; redraw such batches.
        for i in range(steps):
            if len(np.unique(take[i])) < batch:
                take[i] = rng.choice(n, batch, replace=False)
        yield take


def _to_float32(a: np.ndarray, name: str) -> np.ndarray:
    """Samples used as given (``standardize=False``) in float32, refused where float32 loses
    them."""
    with np.errstate(over="ignore", under="ignore"):  # reported below, naming the argument
        out = a.astype(np.float32)
    lost = (
        f"`{name}` has values beyond float32's range ({{}}); rescale it or standardize it "
        "(`standardize=True`; on the command line `--standardize zscore`)."
    )
    if not np.all(np.isfinite(out)):
        raise ValueError(lost.format(f"{np.abs(a).max():.3g}"))
    # A column entirely below float32's normal range keeps few or no bits (x * 1e-300 became
    # all zeros and read as no information); single tiny values among larger ones are fine.
    peak = np.maximum(a.max(axis=0), -a.min(axis=0))
    if np.any((peak > 0) & (peak < np.finfo(np.float32).tiny)):
        raise ValueError(lost.format(f"columns of magnitude {peak.min():.3g}"))
    return out


# `standardize="auto"` maps a column by rank where the middle half of its training z-scores
# spans less than this: 1.349 for a Gaussian, 1.13 for Student-t with 5 degrees of freedom, 0.88
# with 3 (the population's; at 4000 samples the median column's 0.905: 43 % of 200 columns
# were ranked), 0.57 with 2 (at 4000 samples; its variance is infinite), 0.16 for the cubic of a
# Gaussian, 0.01-0.05 for Cauchy samples, 0 for a point mass holding both quartiles (over half
# the samples in the middle, three quarters at an end; a ReLU unit, zeros at its minimum and a
# half-Gaussian above, spans 1.16 at 50 % zeros and 0.85-0.89 at 60 %). (A Gaussian column spans
# under 0.9 in ~1 of 1000 columns at 80 samples, in none of 1000 at 800; ranked, it reads the
# same.)
HEAVY_TAIL_IQR = 0.9


def _training_blocks(z: np.ndarray, train_idx: np.ndarray, block: int = 512):
    """``(columns, z[train_idx, columns])`` for blocks of ``block`` columns: per-column
    statistics of the training rows without a copy of them all."""
    for start in range(0, z.shape[1], block):
        cols = slice(start, start + block)
        yield cols, z[train_idx, cols]


def _zscores(a: np.ndarray, train_idx: np.ndarray, name: str) -> np.ndarray:
    """Z-scores with the train split's mean and std, computed in float64.

    Each column is first divided by the power of two nearest below its largest magnitude
    (exact: the z-scores are unchanged), so the variance cannot overflow (values ~ 1e160).
    """
    # One float64 copy worked on in place; the statistics a block of columns at a time (at
    # 10,000 x 6272, whole-array expressions peaked at 5.6 times the float32 input).
    z = np.array(a, np.float64)
    scale, mean, std, spread = (np.empty(z.shape[1]) for _ in range(4))
    for cols, train in _training_blocks(z, train_idx):
        lo, hi = train.min(axis=0), train.max(axis=0)
        peak = np.maximum(hi, -lo)
        scale[cols] = np.exp2(np.floor(np.log2(np.where(peak > 0, peak, 1.0))))
        train /= scale[cols]
        mean[cols], std[cols] = train.mean(axis=0), train.std(axis=0)
        spread[cols] = hi / scale[cols] - lo / scale[cols]  # (the scaled range: powers of 2)
    z /= scale
    # A range within 64 float64 spacings of the mean counts as none: a column of a handful of
    # levels (1e16 + x: spacing 2; 1e20 + x: one value). 1e8 + x and 1e12 + 0.5 x (timestamps
    # in microseconds with a millisecond spread) keep their spread. The range, not the std: a
    # float64 constant such as 0.1 has a std of rounding noise (summed row by row, ~100
    # spacings of the mean at N = 2000), and was taken for data (2026-12-06: z-scores of +-1,
    # then ranked as heavy-tailed and "constant in every sample", an error, at N >= 1000).
    tolerance = 64 * np.finfo(np.float64).eps
    flat = spread <= tolerance * np.abs(mean)
    if np.any(flat):
        everywhere, some = np.zeros_like(flat), z[:, flat]  # (these columns alone)
        some_spread = some.max(axis=0) - some.min(axis=0)
        everywhere[flat] = some_spread <= tolerance * np.abs(some.mean(axis=0))
        _check_constant_columns(flat, everywhere, name)
    z -= mean
    z /= np.where(flat, 1.0, std)
    z[:, flat] = 0.0
    return z


def _check_constant_columns(constant: np.ndarray, everywhere: np.ndarray, name: str) -> None:
    """``constant``: ``[dim]``, the columns constant on the training split (``everywhere``: in
    every sample), which the caller sets to 0 in both splits: a warning naming them, or a
    ValueError where every column is constant on the training split. Such columns carry
    nothing the critic could learn: dead ReLU units, pixels never on (three of digits' 64), a
    class of a one-hot code drawn in the held-out split alone. (Before 2026-12-06 an error:
    the inputs of digits, a layer with a dead unit, and, at some seeds only, labels with a rare
    class, all failed.)"""
    if not np.any(constant):
        return
    if np.all(constant):
        raise ValueError(
            f"`{name}` is constant in every sample: it carries no information (I = 0)."
            if np.all(everywhere)
            else f"`{name}` is constant on the training split in every column: nothing there "
            "for a critic to learn; pass more samples."
        )
    held_out = constant & ~everywhere
    warnings.warn(
        f"`{name}` has columns {np.flatnonzero(constant).tolist()[:20]}"
        + (" ..." if np.sum(constant) > 20 else "")
        + f" ({int(np.sum(constant))}) constant on the training split"
        + (
            f", {int(np.sum(held_out))} of them not in the held-out split (a rare class of a "
            "one-hot code?)"
            if np.any(held_out)
            else " and everywhere (dead units, pixels never on?)"
        )
        + ": they carry nothing the critic could learn and are set to 0 in both splits.",
        stacklevel=7,  # (estimate_mi's caller)
    )


def _gaussianize(a: np.ndarray, train_idx: np.ndarray, name: str) -> np.ndarray:
    """Each column through the train split's empirical CDF (mid-rank of ties, ``(r + 1/2) /
    (n + 1)``, held-out values placed among the training ones) and the normal quantile; a
    column of one training value is 0 (`_check_constant_columns`). Constant means one
    value here, exactly: ranks lose no precision, where z-scores of ``1e16 + x`` do
    (`_zscores` takes a range within 64 float64 spacings of the mean as none)."""
    import scipy.special  # here: at the top, 0.13 s of every `import mi_jax`

    train = np.sort(a[train_idx], axis=0)
    flat = train[0] == train[-1]
    _check_constant_columns(flat, np.min(a, axis=0) == np.max(a, axis=0), name)
    n = len(train_idx)
    u = np.empty(a.shape, np.float64)
    for j in range(a.shape[1]):
        # Sorted queries: the searches walk the sorted column in order (3x faster at N = 1e6,
        # where unsorted ones took 15 of a call's 23 s on Cauchy columns).
        order = np.argsort(a[:, j])
        column = a[order, j]
        left = np.searchsorted(train[:, j], column, "left")
        right = np.searchsorted(train[:, j], column, "right")
        u[order, j] = ((left + right) / 2 + 0.5) / (n + 1)
    return np.where(flat, 0.0, scipy.special.ndtri(u)).astype(np.float32)


def _blocked_for_held_out(ensemble: training.BoundEnsemble, n_test: int) -> training.BoundEnsemble:
    """``ensemble`` with a concat critic that evaluates ``n_test`` rows in blocks of
    `HELD_OUT_BLOCK` activations (the same parameters; a ``chunk_size`` given stays)."""
    critic = ensemble.critic
    if not isinstance(critic, critics_lib.ConcatCritic) or critic.chunk_size is not None:
        return ensemble
    widths = [w for w in critic.hidden if _checks.is_int(w) and w >= 1]
    if not widths or len(widths) < len(critic.hidden):  # the critic names a bad `hidden`
        return ensemble
    rows = max(1, HELD_OUT_BLOCK // (n_test * max(widths)))
    blocks = -(-n_test // rows)
    if blocks == 1:
        return ensemble
    # Equal blocks: the last one padded by less than a block (354 rows of 370 padded to 708).
    return ensemble.replace(critic=critic.clone(chunk_size=-(-n_test // blocks)))


@dataclasses.dataclass(frozen=True, eq=False)
class _ByIdentity:
    """A key that is ``obj`` itself (compared with ``is``; any callable, hashable or not),
    keeping it alive while the key is: its id cannot pass to another object meanwhile."""

    obj: Any

    def __eq__(self, other):
        return isinstance(other, _ByIdentity) and other.obj is self.obj

    def __hash__(self):
        return id(self.obj)


@dataclasses.dataclass(frozen=True)
class _FitSpec:
    """Everything the compiled programs depend on (hashable: programs are cached on it)."""

    bound: str
    bound_hparams: tuple
    critic: str
    critic_hparams: tuple
    learning_rate: float
    batch: int
    eval_every: int
    calibrate: bool
    num_seeds: int | None  # None: one seed, no seed axis
    train_shapes: tuple
    test_shapes: tuple
    mesh: Any = None  # several devices: batches and the held-out split sharded over them
    device: Any = None  # else the one device the programs run on
    # The registered bound's and critic's factories: one registered again under its name
    # (override=True) gets new programs, not the cached ones (before, a count of every
    # registration of anything, so a task registered again made every call compile anew).
    factories: tuple = ()
    # JAX settings read while tracing that change the numbers (`jax.default_matmul_precision`,
    # the PRNG implementation and its partitionable mode): a call under other ones gets its own
    # programs, as `jax.jit` would (before, the cached default-precision programs served a call
    # under "highest").
    trace_settings: tuple = ()


def clear_cache() -> None:
    """Frees the compiled programs `estimate_mi` keeps for later calls on data of the same
    shapes with the same settings: up to 64 entries of about 10 MB each on CPU, so a sweep over
    many sample sizes holds ~0.6 GB until this is called (the next call compiles again). JAX's
    own tracing caches keep under 1 MB per shape beside them (`jax.clear_caches()` frees those).
    The memory freed goes back to the process's allocator, which reuses it: the process's
    resident size barely drops."""
    _compiled_fit.cache_clear()


# Each entry is two small executables; 64 keeps a sweep's programs (the benchmark's accuracy
# and independence tables cycle through 38 settings, which 8 entries compiled again and again).
@functools.lru_cache(maxsize=64)
def _compiled_fit(spec: _FitSpec):
    """Compiled ``init(seed, x_train, y_train) -> (states, data_keys, constant_objective)``
    (the last: the held-out objective of the constant critic, every score 0) and
    ``train_round(states, data_keys, round, idx, active, calibration, data...) -> (states,
    calibration, (test, objective, train))``.

    A round is ``eval_every`` steps in a `lax.scan` over the minibatch indices ``idx``
    ``[eval_every, batch]``, then (with ``spec.calibrate``) the critic's affine calibration
    ``(a, b)`` on the held-out scores, warm-started from ``calibration``, and the bound and its
    training objective on the calibrated held-out scores; a
    seed that has stopped (``active`` false) keeps its state. With ``spec.num_seeds`` the
    training is vmapped over seeds (``idx`` ``[K, eval_every, batch]``, ``active`` ``[K]``) and
    the held-out evaluation runs one seed after another (`jax.lax.map`); a single seed
    runs unbatched (a vmap over an axis of size one costs trace and compile time, and turns
    each matmul into a slower batched dot on XLA:CPU). Both programs are compiled ahead of
    time, side by side. Programs are cached on ``spec``: estimates on more data of the same
    shapes with the same settings reuse them. With ``spec.mesh`` the data and states are
    replicated over its devices, and each minibatch and the held-out split are split along
    their batch axis.
    """
    ensemble = training.make_ensemble(
        [(spec.bound, dict(spec.bound_hparams))], spec.critic, dict(spec.critic_hparams)
    )
    # Adam on one flat vector of all parameters: its update is a few kernels instead of three
    # per parameter array (the critic has nine), which on XLA:CPU makes the rounds ~15 % and the
    # call ~10 % faster (README); the same arithmetic. (A large critic would pay for the copies
    # in and out of the flat vector: the staircase runs ~20 % slower with it.)
    optimizer = optax.flatten(optax.adam(spec.learning_rate))
    train_step = training.make_train_step(ensemble, metrics=("mi",))
    held_out = _blocked_for_held_out(ensemble, spec.test_shapes[0][0])
    num_seeds, batched = spec.num_seeds or 1, spec.num_seeds is not None
    mesh = spec.mesh

    def shard(batch):
        return batch if mesh is None else parallel.shard_batch(batch, mesh)

    def replicate(tree):
        return tree if mesh is None else parallel.replicate_like(tree, mesh)

    def init_all(seed, x_train, y_train):
        keys = jax.random.split(jax.random.key(seed), (num_seeds, 2))
        init_keys, data_keys = keys[:, 0], keys[:, 1]

        def init_one(key):
            params, bound_states = ensemble.init(key, x_train[: spec.batch], y_train[: spec.batch])
            if not jax.tree.leaves(params["critic"]):  # optax.flatten: "Need at least one array"
                raise ValueError(
                    f"`critic` {spec.critic!r} has no parameters: estimate_mi trains the "
                    "critic; use a separable, bilinear or concat one (a parameter-free critic "
                    "scores embeddings an encoder learns, as in DIM or the halves study)."
                )
            return training.TrainState.create(
                apply_fn=ensemble.apply, params=params, tx=optimizer, bound_states=bound_states
            )

        # The held-out objective of the critic that scores every pair 0 (its bound: 0 nats):
        # for a bound trained on its own value (DV, InfoNCE, NWJ, ...) that value, 0; for one
        # trained on another objective, that objective at zero scores (-2 log 2 for JS).
        objective = ensemble.bounds[0].objective
        constant = jnp.zeros(()) if objective is None else objective(jnp.zeros((2, 2)))
        if batched:
            return replicate((jax.vmap(init_one)(init_keys), data_keys, constant))
        return replicate((init_one(init_keys[0]), data_keys[0], constant))

    def train_one(state, data_key, r, batch_idx, active, x_train, y_train):
        """A seed's ``eval_every`` steps: its new state and mean training value."""

        def body(state, inputs):
            step_key, idx = inputs
            state, metrics = train_step(state, shard((x_train[idx], y_train[idx])), step_key)
            return replicate(state), metrics["mi"][0]

        step_keys = jax.random.split(jax.random.fold_in(data_key, r), spec.eval_every)
        new_state, values = jax.lax.scan(body, state, (step_keys, batch_idx))
        if batched:  # A single seed that has stopped is not run again.
            new_state = jax.tree.map(lambda a, b: jnp.where(active, a, b), new_state, state)
        return new_state, jnp.mean(values)

    def evaluate_one(state, calibration, x_test, y_test):
        """A seed's calibration and held-out ``(bound, objective)``."""
        x_test, y_test = shard((x_test, y_test))
        scores = held_out.scores(state.params, x_test, y_test)  # [1, n_test, n_test]
        if spec.calibrate:
            calibration = bounds_lib.js_calibration(
                scores[0], calibration, iterations=CALIBRATION_ITERATIONS
            )
            scores = calibration[0] * scores + calibration[1]
        test_value, test_objective = ensemble.evaluate_scores(
            state.params, state.bound_states, scores, x_test, y_test
        )
        return calibration, (test_value[0], test_objective[0])

    def round_one(
        state, data_key, r, batch_idx, active, calibration, x_train, y_train, x_test, y_test
    ):
        if not batched:
            state, train_value = train_one(state, data_key, r, batch_idx, active, x_train, y_train)
            calibration, test = evaluate_one(state, calibration, x_test, y_test)
        else:
            state, train_value = jax.vmap(train_one, in_axes=(0, 0, None, 0, 0, None, None))(
                state, data_key, r, batch_idx, active, x_train, y_train
            )
            # The held-out split seed after seed: its n_test^2 score matrices and their
            # temporaries once, not once per seed (vmapped, 16 seeds held 1.5 GB at n_test
            # 2048; one at a time 0.1 GB).
            calibration, test = jax.lax.map(
                lambda a: evaluate_one(*a, x_test, y_test), (state, calibration)
            )
        return replicate(state), calibration, (*test, train_value)

    # Abstract arguments for ahead-of-time compilation, replicated over the mesh if there is one.
    if mesh is None:
        # (jax 0.12.1 deprecated the class for the function, which jax before 0.10 lacks)
        single = getattr(jax.sharding, "make_single_device_sharding", None)
        sharding = (single or jax.sharding.SingleDeviceSharding)(spec.device)
    else:
        sharding = parallel.replicated(mesh)

    def arg(shape, dtype=jnp.float32):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)

    (x_train, y_train), (x_test, y_test) = (
        [arg(s) for s in shapes] for shapes in (spec.train_shapes, spec.test_shapes)
    )
    seed = arg((), jnp.int32)
    lead = (num_seeds,) if batched else ()
    idx = arg((*lead, spec.eval_every, spec.batch), jnp.int32)
    active = arg(lead, jnp.bool_)
    calibration = arg((*lead, 2))
    train_round = jax.jit(
        round_one, donate_argnums=0, compiler_options=training.fast_compile_options()
    )
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        # XLA compiles without holding the GIL: the initialization compiles while the round is
        # traced and compiled. Its traced output shapes are the round's state arguments.
        init = jax.jit(init_all, compiler_options=training.run_once_compiler_options()).lower(
            seed, x_train, y_train
        )
        init_future = pool.submit(init.compile)
        states, keys, _ = init.out_info
        states, keys = jax.tree.map(lambda a: arg(a.shape, a.dtype), (states, keys))
        round_index = arg((), jnp.int32)
        round_compiled = train_round.lower(
            states, keys, round_index, idx, active, calibration, x_train, y_train, x_test, y_test
        ).compile()
        return init_future.result(), round_compiled
