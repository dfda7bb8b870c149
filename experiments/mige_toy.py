r"""The MIGE toy (Wen et al., 2020): gradient of MI for per-dimension correlated Gaussians.

  python -m experiments.mige_toy --config configs/mige_toy.py --workdir /tmp/mige_toy

For ``d`` in ``config.dims`` and ``rho`` on a grid in ``[-rho_max, rho_max]``, draw ``x = eps1``,
``y = rho eps1 + sqrt(1 - rho^2) eps2`` (256 samples, reparameterized in ``rho``) and estimate
``dI/drho`` (true: ``rho d / (1 - rho^2)``):

* MIGE: ``jax.grad`` of `mi_jax.mige.mi_surrogate` with a score estimator (Stein, SSGE).
* Trained bounds: a separable critic trained ``critic_steps`` steps at that ``rho`` (fresh
  samples each step), then ``d bound / d rho`` through the samples with the critic fixed.

Per ``d`` and estimator: relative RMSE (RMSE over all rho and seeds / RMS of the true gradient),
relative bias (RMS over rho of the seed-mean error / RMS true), standard deviation over seeds
(``rel_std``: relative, like the others), and wall time (compilation separate; the trained
bounds train side by side, so each of their rows holds the same shared ``run_s`` and
``compile_s``: count them once). Writes ``config.json``, ``metrics.jsonl`` (one row per d,
estimator, rho), ``results.json``, and ``mige_toy.png`` (estimated vs true curves). A trained
bound whose training value turns non-finite gets a ``finite: false`` row; once every estimator
has run and the plot is written, the run ends with a `NonFiniteError` naming it and the step.

MIGE cases run one after another in a compiled `lax.map` rather than a `vmap`: batched LAPACK
calls (Cholesky, eigh) hung on a second execution (jax 0.10.2 on the CPU: 0 % CPU, threads
waiting, no error; cause not established), a loop does not.
With several devices the (rho, seed) cases are independent problems and are divided among them
(`jax.shard_map` around the loop; the trained bounds' vmap is partitioned by `jax.jit`): each
case computes what it computes on one device (the trained bounds bit for bit, the MIGE
estimators to float rounding, ~1e-7).
"""

import functools
import inspect
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm import tqdm

from experiments import _cli, _common
from mi_jax import _checks, mige, parallel, training
from mi_jax import bounds as bounds_lib
from mi_jax import score as score_lib


def true_gradient(rho, dim: int):
    """``dI/drho`` for ``I = -dim/2 log(1 - rho^2)``."""
    return rho * dim / (1.0 - rho**2)


def toy_samples(rho, key, dim: int, num: int):
    """``(x, y)`` ``[num, dim]`` each, differentiable in ``rho``."""
    e1, e2 = jax.random.normal(key, (2, num, dim), jnp.float32)  # (the same under x64)
    return e1, rho * e1 + jnp.sqrt(1.0 - rho**2) * e2


def make_score_fn(spec) -> score_lib.ScoreFn:
    """A score estimator from a config entry (see configs/mige_toy.py)."""
    base = score_lib.get_score_estimator(spec["score"], **dict(spec.get("hparams", {})))
    if "bandwidth_scale" not in spec and not spec.get("richardson"):
        return base  # a non-kernel estimator (e.g. the learned "dsm") takes no bandwidth
    try:
        inspect.signature(base).bind(None, bandwidth=None)
    except TypeError:
        raise ValueError(
            f"score estimator {spec['score']!r} takes no kernel bandwidth: `bandwidth_scale` and "
            "`richardson` do not apply to it."
        ) from None
    scale = float(spec.get("bandwidth_scale", 1.0))
    c = float(spec.get("richardson", 0.0))

    def at(z, factor):
        return base(z, bandwidth=score_lib.median_bandwidth(z, scale=scale * factor))

    if not c:
        return lambda z: at(z, 1.0)
    if not 1.0 < c < np.inf:  # NaN too
        raise ValueError(f"`richardson` must be 0 (off) or a bandwidth ratio > 1, got {c}.")
    # Kernel smoothing biases the score by O(h^2); two bandwidths cancel the leading term.
    return lambda z: (c**2 * at(z, 1.0) - at(z, c)) / (c**2 - 1.0)


def _cases(rhos, keys, mesh):
    """Every (rho, seed) pair, rho-major, padded (by repeating the last) to a multiple of the
    device count and split over the mesh: ``(rho [C], key [C])`` and the true count.

    Each case has its own key (the seed's, folded with the rho's index): with one key per seed
    at every rho, the errors at neighbouring rhos were correlated (0.8) and the seed-mean bias
    rested on ``num_seeds`` noise draws, not ``num_rhos x num_seeds``.
    """
    rho = jnp.repeat(rhos, len(keys))
    rho_index = jnp.repeat(jnp.arange(len(rhos)), len(keys))
    key = jax.vmap(jax.random.fold_in)(jnp.tile(keys, len(rhos)), rho_index)
    count, devices = rho.shape[0], mesh.devices.size
    pad = -count % devices
    cases = [jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)]) for a in (rho, key)]
    return tuple(parallel.put_batch(a, mesh) for a in cases), count


def mige_gradients(
    config, dim: int, spec, rhos, keys, mesh=None
) -> tuple[np.ndarray, float, float]:
    """``[num_rhos, num_seeds]`` MIGE estimates of dI/drho, and (compile, run) seconds."""
    mesh = parallel.checked_mesh(mesh)
    score_fn = make_score_fn(spec)
    n = config.num_samples
    # A learned estimator (DSM) trains a network per case: its seed comes from the case's key
    # unless the config fixes one (one fixed network's error in every case counted as bias).
    seeded = "seed" in inspect.signature(score_fn).parameters and "seed" not in spec.get(
        "hparams", {}
    )

    def one(case):
        rho, key = case
        fn = score_fn
        if seeded:
            seed = jax.random.randint(jax.random.fold_in(key, 1), (), 0, 2**31 - 1, jnp.int32)
            fn = functools.partial(score_fn, seed=seed)
        surrogate = lambda r: mige.mi_surrogate(*toy_samples(r, key, dim, n), fn)
        return jax.grad(surrogate)(rho)

    cases, count = _cases(rhos, keys, mesh)
    data = jax.sharding.PartitionSpec(parallel.DATA_AXIS)
    # Each device loops over its own share of the cases; no values cross devices (hence no
    # check of which values vary across them: the score estimators' loops start from constants).
    loop = jax.shard_map(
        lambda cases: jax.lax.map(one, cases),
        mesh=mesh,
        in_specs=data,
        out_specs=data,
        check_vma=False,
    )
    t0 = time.perf_counter()
    # Gathered onto every device: each process reads all of them.
    compiled = jax.jit(loop, out_shardings=parallel.replicated(mesh)).lower(cases).compile()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    grads = np.asarray(compiled(cases))[:count].reshape(len(rhos), len(keys))
    return grads, compile_s, time.perf_counter() - t0


def bound_gradients(
    config, dim: int, rhos, keys, mesh=None
) -> tuple[np.ndarray, float, float, tuple[int, int, int, int] | None]:
    """``([n_bounds, num_rhos, num_seeds]`` rho-gradients of trained bounds, compile and run
    seconds, the first divergence)``: ``(rho index, seed index, step, bound index)`` of the
    earliest critic step whose training value was non-finite, or None."""
    mesh = parallel.checked_mesh(mesh)
    ensemble = training.make_ensemble(
        _common.bound_specs(config, config.bounds),
        "separable",
        dict(config.critic_hparams),
        config.aux_hidden,
    )
    optimizer = optax.adam(config.learning_rate)
    step = training.make_train_step(ensemble, metrics=("mi",))
    n = config.num_samples

    def one(rho, key):
        init_key, train_key, eval_key = jax.random.split(key, 3)
        x0, y0 = toy_samples(rho, jax.random.fold_in(train_key, 0), dim, n)  # the first batch
        state = training.create_train_state(ensemble, optimizer, init_key, x0, y0)

        def body(state, i):
            data_key = jax.random.fold_in(train_key, i)
            # The critics are deterministic: the step's key goes unused.
            state, metrics = step(state, toy_samples(rho, data_key, dim, n), data_key)
            return state, metrics["mi"]

        state, trained = jax.lax.scan(body, state, jnp.arange(config.critic_steps))

        def values(r):  # each bound's estimate, with its own gradient (not JS's for SMILE)
            x, y = toy_samples(r, eval_key, dim, n)
            return ensemble.readouts(state.params, state.bound_states, x, y)

        return jax.jacrev(values)(rho), trained  # [n_bounds], [steps, n_bounds]

    cases, count = _cases(rhos, keys, mesh)
    fn = jax.jit(jax.vmap(one), out_shardings=parallel.replicated(mesh))  # as above
    t0 = time.perf_counter()
    compiled = fn.lower(*cases).compile()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    grads, trained = (np.asarray(a)[:count] for a in compiled(*cases))  # [cases, ...]
    run_s = time.perf_counter() - t0
    grads = grads.reshape(len(rhos), len(keys), -1)
    bad = training.first_nonfinite(trained, step_axis=1)  # (case, step, bound)
    diverged = None if bad is None else (*divmod(bad[0], len(keys)), bad[1], bad[2])
    return np.moveaxis(grads, -1, 0), compile_s, run_s, diverged


def error_stats(grads: np.ndarray, true: np.ndarray) -> dict:
    """Relative RMSE, relative bias and spread of ``grads`` ``[rhos, seeds]`` against ``true``."""
    rms_true = float(np.sqrt(np.mean(true**2)))
    err = grads - true[:, None]
    finite = bool(np.all(np.isfinite(grads)))
    return dict(
        rel_rmse=float(np.sqrt(np.mean(err**2))) / rms_true,
        rel_bias=float(np.sqrt(np.mean(err.mean(axis=1) ** 2))) / rms_true,
        rel_std=float(np.sqrt(np.mean(grads.var(axis=1)))) / rms_true,
        finite=finite,
    )


# What an entry of config.estimators may hold (configs/mige_toy.py).
ESTIMATOR_KEYS = ("score", "hparams", "bandwidth_scale", "richardson")


def validate_config(config) -> None:
    _common.check_learning_rate(config)
    _common.check_num_seeds(config)  # and config.seed
    if not config.estimators and not config.bounds:
        raise ValueError("config.estimators and config.bounds are both empty: nothing to run.")
    for name, spec in config.estimators.items():
        if name == "bounds" or name.endswith(" (trained)"):  # the trained bounds' rows
            raise ValueError(
                f"config.estimators.{name}: the name is taken by the trained bounds' rows."
            )
        if not _common.is_map(spec) or "score" not in spec:
            raise ValueError(
                f"config.estimators.{name} must be a dict with a 'score' (an estimator's name) "
                f"and optionally {ESTIMATOR_KEYS[1:]}, got {spec!r}."
            )
        if spec.score not in score_lib.available_score_estimators():
            raise _checks.unknown_name_error(
                f"score estimator (config.estimators.{name}.score)",
                spec.score,
                score_lib.available_score_estimators(),
            )
        unknown = sorted(set(spec) - set(ESTIMATOR_KEYS))
        if unknown:  # a misspelt bandwidth_scale would silently run at scale 1
            raise ValueError(
                f"config.estimators.{name} has unknown keys {unknown}; known: {ESTIMATOR_KEYS}."
            )
        scale = spec.get("bandwidth_scale", 1.0)
        if not (_checks.is_real(scale) and 0 < scale < np.inf):
            raise ValueError(
                f"config.estimators.{name}.bandwidth_scale must be a positive number, got "
                f"{scale!r}."
            )
        if not _common.is_map(spec.get("hparams", {})):
            raise ValueError(
                f"config.estimators.{name}.hparams must map hyperparameter names to values, got "
                f"{spec.hparams!r}."
            )
        try:  # its hyperparameters, before anything is written
            make_score_fn(spec.to_dict())
        except (ValueError, TypeError) as e:
            raise type(e)(f"config.estimators.{name}: {e}") from None
    _common.check_unique(config, "bounds")  # trained twice, reported once
    _common.check_names(config, "bounds", bounds_lib.available_bounds(), "bound", empty_ok=True)
    _common.check_bound_hparams(config)
    if config.bounds:
        _common.check_int_fields(config, "critic_steps")
        # The bounds' networks, built (traced, not compiled) before anything is written.
        _checks.check_int_sequences(**{"config.aux_hidden": config.aux_hidden})
        ensemble = training.make_ensemble(
            _common.bound_specs(config, config.bounds),
            "separable",
            dict(config.critic_hparams),
            config.aux_hidden,
        )
        training.check_ensemble(ensemble, 1, 1)
        for bound in ensemble.bounds:  # (a registered one of a fork's)
            if bound.objective is not None and bound.readout is None:
                raise ValueError(
                    f"config.bounds: bound {bound.name!r} trains on another objective "
                    "(`Bound.objective`) and gives no `readout`: its rho-gradient here would be "
                    "that objective's, not its estimate's."
                )
    # In float32, where the grid is built (0.99999999 rounds to 1: an infinite true gradient).
    if not (_checks.is_real(config.rho_max) and 0.0 < np.float32(config.rho_max) < 1.0):
        raise ValueError(f"config.rho_max must lie in (0, 1) in float32, got {config.rho_max}.")
    _common.check_int_fields(config, "num_samples", "num_rhos", least=2)
    if not config.dims or not all(_checks.is_int(d) and d >= 1 for d in config.dims):
        raise ValueError(f"config.dims must hold positive integers, got {config.dims}.")
    _common.check_unique(config, "dims")


def _replace_row(rows: list[dict], row: dict) -> None:
    """Puts ``row`` in place of the row of its dimension and estimator, or at the end."""
    key = (row["dim"], row["estimator"])
    for i, r in enumerate(rows):
        if (r["dim"], r["estimator"]) == key:
            rows[i] = row
            return
    rows.append(row)


def plot(path: str, curves: dict, rhos: np.ndarray, dims) -> None:
    fig, axes = _common.subplots(1, len(dims), figsize=(4.2 * len(dims), 3.6), squeeze=False)
    for ax, dim in zip(axes[0], dims, strict=True):
        ax.plot(rhos, true_gradient(rhos, dim), color="black", lw=2, label="true")
        means = []
        top = 1.5 * float(true_gradient(rhos.max(), dim))
        for i, (name, grads) in enumerate(curves[dim].items()):
            mean, std = grads.mean(axis=1), grads.std(axis=1)
            ax.plot(rhos, mean, color=f"C{i % 10}", lw=1.2, label=name)
            # The band where it is narrower than the axis (a diverged bound's filled it all).
            ax.fill_between(rhos, mean - std, mean + std, where=std < top, color=f"C{i % 10}",
                            alpha=0.2)  # fmt: skip
            means.append(mean)
        _common.limit_axis(ax, -top, top, means, names=list(curves[dim]))
        seeds = next(iter(curves[dim].values())).shape[1] if curves[dim] else 1
        ax.set_title(f"d = {dim}" + (f" (band: ± std over {seeds} seeds)" if seeds > 1 else ""))
        ax.set_xlabel("rho")
    axes[0][0].set_ylabel("dI/drho (nats)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    _common.save_figure(fig, path, dpi=110)


@_cli.locks_workdir
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, mesh=None) -> dict:
    """Runs every estimator at every dimension; ``mesh``: the devices the cases are split over
    (default: all, `mi_jax.parallel.data_mesh`)."""
    with _common.config_checks():  # before anything is written
        validate_config(config)
        mesh = parallel.checked_mesh(mesh)
        _common.check_same_run(workdir, config)  # another config's results stay
        # A rerun of this config replaces each estimator's rows as it finishes: the earlier
        # run's stay until then, so an interrupted rerun loses none of them.
        results_path = os.path.join(workdir, "results.json")
        earlier = _common.read_json(results_path) if os.path.exists(results_path) else {}
    os.makedirs(workdir, exist_ok=True)
    _common.write_config(workdir, config)
    writer = _common.JsonlWriter(os.path.join(workdir, "metrics.jsonl"))
    rhos = np.linspace(-config.rho_max, config.rho_max, config.num_rhos, dtype=np.float32)
    keys = jax.random.split(jax.random.key(config.seed), config.num_seeds)
    results, curves = (
        {"config": _common.to_builtin(config.to_dict()), "rows": earlier.get("rows", [])},
        {},
    )
    tasks = [(d, name) for d in config.dims for name in config.estimators]
    tasks += [(d, "bounds") for d in config.dims if config.bounds]
    divergences = []  # reported when every task has run
    try:
        with tqdm(total=len(tasks), desc="mige_toy", unit="estimator") as progress:
            for dim, name in tasks:
                progress.set_postfix_str(f"d={dim} {name}")
                true = true_gradient(rhos, dim)
                diverged = None
                if name == "bounds":
                    grads, compile_s, run_s, diverged = bound_gradients(
                        config, dim, rhos, keys, mesh
                    )
                    named = {f"{b} (trained)": g for b, g in zip(config.bounds, grads, strict=True)}
                else:
                    spec = config.estimators[name].to_dict()
                    grads, compile_s, run_s = mige_gradients(config, dim, spec, rhos, keys, mesh)
                    named = {name: grads}
                for est_name, g in named.items():
                    row = dict(
                        dim=dim,
                        estimator=est_name,
                        compile_s=compile_s,
                        run_s=run_s,
                        **error_stats(g, true),
                    )
                    _replace_row(results["rows"], row)
                    curves.setdefault(dim, {})[est_name] = g
                    for r, rho in enumerate(rhos):
                        writer.write(
                            dict(
                                dim=dim,
                                estimator=est_name,
                                rho=float(rho),
                                true=float(true[r]),
                                mean=float(g[r].mean()),
                                std=float(g[r].std()),
                            )
                        )
                _common.write_json(results_path, results)
                if diverged is not None:  # its rows say finite: false; the run goes on
                    r, s, step, b = diverged
                    divergences.append(
                        f"trained bound {config.bounds[b]!r} became non-finite at critic step "
                        f"{step + 1} (d={dim}, rho={rhos[r]:.3g}, seed index {s})"
                    )
                progress.update(1)
    finally:
        writer.close()
    plot(os.path.join(workdir, "mige_toy.png"), curves, rhos, tuple(config.dims))
    print(summary(results))
    if divergences:  # after every result is written and plotted
        raise training.NonFiniteError(
            "; ".join(divergences) + ". Try a lower config.learning_rate."
        )
    return results


def summary(results: dict) -> str:
    rows = [
        dict(
            d=r["dim"],
            estimator=r["estimator"],
            rel_rmse=r["rel_rmse"],
            rel_bias=r["rel_bias"],
            rel_std=r["rel_std"],
            run_s=r["run_s"],
            compile_s=r["compile_s"],
        )
        for r in results["rows"]
    ]
    cols = ["d", "estimator", "rel_rmse", "rel_bias", "rel_std", "run_s", "compile_s"]
    return (
        "\ndI/drho over the rho grid and seeds: errors relative to the RMS true gradient "
        "(run_s of trained bounds covers all of them together)\n" + _common.format_table(rows, cols)
    )


if __name__ == "__main__":
    _cli.run_experiment("mige_toy", train_and_evaluate, named_maps=("bound_hparams",))
