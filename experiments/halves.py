r"""The MNIST-halves study (Tschannen et al., ICLR 2020): does maximizing MI explain good features?

  python -m experiments.halves --config configs/halves.py --workdir /tmp/halves

For every encoder x critic x bound of the config, ``num_seeds`` seeds are trained in one
compiled program (`jax.vmap` over seeds) to maximize the bound between the encoded top and
bottom halves (`mi_jax.halves`); every ``eval_every`` steps a logistic regression is fitted on
the standardized representation of the top half (per seed) and the bound is evaluated on
held-out test batches. Then the study's three findings are checked against our numbers, and
the raw-pixel baseline (logistic regression on the standardized, noisy top halves) is reported.

Writes to the workdir: ``config.json``; ``metrics.jsonl`` (one row per combination and
evaluation, per-seed values included); ``results.json`` (the table, the curves, the verdicts;
rewritten after every finished combination, so a killed run keeps what it finished and a
rerun with the same workdir and config skips it; a combination the killed run had started
is trained again from its start, so its rows appear in ``metrics.jsonl`` twice: the later ones
are the run ``results.json`` reports); ``results.csv``; ``curves.png`` (accuracy and MI
estimate over training per combination). ``accuracy`` is the probe's test accuracy per seed; a
combination's ``seconds`` (the table's minutes) runs from after its step-0 probes to its end,
its compilation and periodic probes included. A progress bar runs over all combinations' steps.
"""

import functools
import itertools
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm import tqdm

from experiments import _cli, _common
from mi_jax import _checks, halves, parallel, probes, training
from mi_jax import bounds as bounds_lib
from mi_jax import critics as critics_lib
from mi_jax import data as data_lib

FINDINGS = {
    "bijective": "(1) with a bijective encoder the MI is constant, yet linear accuracy improves",
    "looser_bounds": "(2) looser bounds with simpler critics can give better representations",
    "encoder_matters": "(3) the encoder architecture can matter more than the estimator",
}


def _check_config(config: ml_collections.ConfigDict) -> None:
    _common.check_learning_rate(config)
    for field, known, noun in (
        ("encoders", halves.available_half_encoders(), "encoder"),
        ("critics", critics_lib.available_critics(), "critic"),
        ("bounds", bounds_lib.available_bounds(), "bound"),
    ):
        _common.check_names(config, field, known, noun)
        _common.check_unique(config, field)
    _common.check_num_seeds(config)  # and config.seed
    _common.check_config_batch_size(config)
    _common.check_hparams_maps(config, "encoder_hparams", "critic_hparams")
    _common.check_bound_hparams(config)
    for field, known, noun in (
        ("encoder_hparams", halves.available_half_encoders(), "encoder"),
        ("critic_hparams", critics_lib.available_critics(), "critic"),
    ):  # a misspelt entry would leave its module at the defaults
        _common.check_names(config, field, known, noun, empty_ok=True)
    _common.check_int_fields(config, "num_steps", "log_every", "eval_every", "mi_eval_batches")
    if config.eval_every % config.log_every:
        raise ValueError(
            f"`config.eval_every` ({config.eval_every}) must be a multiple of "
            f"`config.log_every` ({config.log_every})."
        )
    if not (_checks.is_real(config.noise_std) and 0 <= config.noise_std < float("inf")):
        raise ValueError(f"`config.noise_std` must be finite and >= 0, got {config.noise_std}.")
    probe = config.probe
    if not (_checks.is_int(probe.train_examples) and probe.train_examples >= 0):
        raise ValueError(
            f"`config.probe.train_examples` must be an integer >= 0 (0: all), got "
            f"{probe.train_examples!r}."
        )
    probes.check_hparams(
        prefix="config.probe.", l2=probe.l2, max_iter=probe.max_iter, tol=probe.tol
    )
    _common.check_probe_cache_dir(config)


def load_views(config) -> dict[str, np.ndarray]:
    """Float views ``{"train_top", "train_bottom", "test_top", "test_bottom"}`` ``[N, h, W, C]``
    and labels; the probe's training subset; a fixed noise draw on the evaluation views."""
    dataset = _common.load_config_dataset(config)
    views = {}
    for split in ("train", "test"):
        images = getattr(dataset, f"{split}_images").astype(np.float32) / 255.0
        views[f"{split}_top"], views[f"{split}_bottom"] = (
            np.asarray(v) for v in halves.split_halves(images)
        )
        views[f"{split}_labels"] = getattr(dataset, f"{split}_labels")
    n = views["train_top"].shape[0]
    count = min(n, config.probe.train_examples or n)
    pick = np.random.default_rng(12345).permutation(n)[:count]
    views["probe_top"] = views["train_top"][pick]
    views["probe_labels"] = views["train_labels"][pick]
    if config.noise_std:  # one fixed noise draw for every evaluation (and the pixel baseline)
        rng = np.random.default_rng(54321)
        for key in ("probe_top", "test_top", "test_bottom"):
            noise = rng.standard_normal(views[key].shape).astype(np.float32)
            views[key] = views[key] + config.noise_std * noise
    views["num_classes"] = dataset.num_classes
    return views


def build(config, encoder: str, critic: str, bound: str) -> halves.HalvesModel:
    """The model of one combination; bad encoder or critic hyperparameters raise here, naming
    ``config.encoder_hparams.ENCODER`` or ``config.critic_hparams.CRITIC``."""
    try:
        # No entry: the encoder's defaults.
        enc = halves.get_half_encoder(encoder, **dict(config.encoder_hparams.get(encoder, {})))
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"`config.encoder_hparams.{encoder}`: {_cli.error_message(e)}") from None
    hparams = dict(config.critic_hparams.get(critic, {}))
    try:
        specs = _common.bound_specs(config, [bound])  # (checked in `_check_config`)
        ensemble = training.make_ensemble(specs, critic, hparams, aux_hidden=(128,))
    except (ValueError, TypeError, KeyError) as e:
        message = f"`config.critic_hparams.{critic}` (the {critic} critic): "
        raise ValueError(message + _cli.error_message(e)) from None
    return halves.HalvesModel(encoder=enc, ensemble=ensemble)


def check_models(config, models: dict, views) -> None:
    """Traces each encoder's ``init`` on a batch of half-images, then each combination's critic
    on the encoder's codes (`jax.eval_shape`: no compilation, no arithmetic), so an encoder that
    cannot encode them (a RealNVP on 1-pixel halves, ...) or a critic that cannot take their
    width fails, naming ``config.encoder_hparams.ENCODER`` or ``config.critic_hparams.CRITIC``,
    before any combination trains (settings bad in themselves fail earlier, in `build`)."""
    batch = jax.ShapeDtypeStruct((config.batch_size, *views["train_top"].shape[1:]), jnp.float32)
    codes = {}
    for (encoder, critic, bound), model in models.items():
        if encoder not in codes:
            try:
                params = jax.eval_shape(model.encoder.init, jax.random.key(0), batch)
                codes[encoder] = jax.eval_shape(model.encoder.apply, params, batch)
            except (ValueError, TypeError) as e:
                raise ValueError(
                    f"`config.encoder_hparams.{encoder}`: the {encoder} encoder cannot encode "
                    f"the half-images of shape {batch.shape[1:]}: {e}"
                ) from None
        try:
            jax.eval_shape(model.ensemble.init, jax.random.key(0), codes[encoder], codes[encoder])
        except (ValueError, TypeError, KeyError) as e:
            raise ValueError(
                f"`config.critic_hparams.{critic}` (the {critic} critic, with the {bound} "
                f"bound's networks): {e}"
            ) from None


def linear_probe(config, train_x, train_y, test_x, test_y, num_classes, seed=0):
    """The linear probe's `mi_jax.probes.ProbeResult` (`mi_jax.probes.fit_probe` standardizes
    the features with the training split's statistics); read from ``config.probe.cache_dir``
    where the same fit was made before (`experiments._common.fit_probe_cached`)."""
    result, _ = _common.fit_probe_cached(
        _common.probe_cache_dir(config),
        train_x,
        train_y,
        test_x,
        test_y,
        kind="linear",
        num_classes=num_classes,
        l2=config.probe.l2,
        max_iter=config.probe.max_iter,
        tol=config.probe.tol,
        seed=seed,
    )
    return result


# Each seed's key folded with the step: one program for every combination (each compiled it).
_fold_in_each = jax.jit(jax.vmap(jax.random.fold_in, in_axes=(0, None)))


def run_combination(
    config,
    model: halves.HalvesModel,
    views,
    progress,
    writer,
    label: dict,
    mesh,
    initial_fits: dict | None = None,
) -> dict:
    """Trains ``num_seeds`` seeds of ``model`` and evaluates them; returns the run's record.

    Data-parallel over ``mesh``: every seed's batch is split over the devices.
    ``initial_fits``: the step-0 probes by encoder and parameters, shared between the
    combinations of a study (every critic and bound starts from the same top encoder: on MNIST
    15 of the 18 step-0 evaluations repeated one of the other three: about 260 s, by the timing
    of one evaluation per encoder, 5 s for the MLP, 32 for RealNVP, 18 for the conv net); filled
    here.
    """
    initial_fits = {} if initial_fits is None else initial_fits
    seeds = config.num_seeds
    batch = config.batch_size
    tx = optax.adam(config.learning_rate)
    train_top, train_bottom = parallel.replicate((views["train_top"], views["train_bottom"]), mesh)
    num_train = train_top.shape[0]
    if batch > num_train:
        raise ValueError(f"`config.batch_size` ({batch}) exceeds the {num_train} training images.")

    keys = jax.random.split(jax.random.key(config.seed), seeds)

    def init(key, top, bottom):
        params, bound_states = model.init(key, top, bottom)
        return training.TrainState.create(
            apply_fn=model.value, params=params, tx=tx, bound_states=bound_states
        )

    # One program that runs once: XLA's fast options compile it in about half the time, to the
    # same parameters.
    init = jax.jit(
        jax.vmap(init, in_axes=(0, None, None)), compiler_options=training.fast_compile_options()
    )
    state = parallel.replicate(init(keys, train_top[:batch], train_bottom[:batch]), mesh)

    def step(state, top_all, bottom_all, idx, key):
        k_top, k_bottom = jax.random.split(key)
        top_all, bottom_all = parallel.shard_batch((top_all[idx], bottom_all[idx]), mesh)
        top = halves.add_noise(k_top, top_all, config.noise_std)
        bottom = halves.add_noise(k_bottom, bottom_all, config.noise_std)

        def loss_fn(params):
            value, bound_states = model.value(params, state.bound_states, top, bottom)
            return -value, (value, bound_states)

        grads, (value, bound_states) = jax.grad(loss_fn, has_aux=True)(state.params)
        state = state.apply_gradients(grads=grads, bound_states=bound_states)
        return parallel.replicate_like(state, mesh), value

    vstep = jax.jit(jax.vmap(step, in_axes=(0, None, None, 0, 0)), donate_argnums=0)
    test_value = jax.jit(jax.vmap(model.value, in_axes=(0, 0, None, None)))
    num_test = views["test_top"].shape[0]

    def put(images):  # split over the devices where the count allows, else replicated
        if images.shape[0] % mesh.devices.size:
            return parallel.replicate(images, mesh)
        return parallel.put_batch(images, mesh)

    test_batches = [
        (put(views["test_top"][s : s + batch]), put(views["test_bottom"][s : s + batch]))
        for s in range(0, num_test - batch + 1, batch)
    ][: config.mi_eval_batches]

    def probe_fits(top_params):  # (of the top encoder's parameters alone)
        feats_train = represent(model.encoder, top_params, views["probe_top"], mesh)
        feats_test = represent(model.encoder, top_params, views["test_top"], mesh)
        return [
            linear_probe(
                config,
                feats_train[s],
                views["probe_labels"],
                feats_test[s],
                views["test_labels"],
                views["num_classes"],
                seed=s,
            )
            for s in range(seeds)
        ]

    def evaluate(step_num, state, train_mi):
        if step_num == 0:
            key = (model.encoder, _common.fingerprint(state.params["top"]))
            if key not in initial_fits:
                initial_fits[key] = probe_fits(state.params["top"])
            fits = initial_fits[key]
        else:
            fits = probe_fits(state.params["top"])
        acc = [fit.test_accuracy for fit in fits]
        mi = np.mean(
            [
                np.asarray(test_value(state.params, state.bound_states, t, b)[0])
                for t, b in test_batches
            ],
            axis=0,
        )
        row = {
            **label,
            "step": step_num,
            "accuracy": acc,
            "probe_converged": [fit.converged for fit in fits],  # (L-BFGS reached probe.tol)
            "mi_test": mi.tolist(),
            # Per seed (none trained at step 0: nulls, a list of the same length as the others).
            "mi_train": [None] * len(acc) if train_mi is None else train_mi,
        }
        writer.write(row)
        return row

    history = [evaluate(0, state, None)]
    step_num, t0 = 0, time.perf_counter()
    train_mi = []
    while step_num < config.num_steps:
        n = min(config.log_every, config.num_steps - step_num)
        idx = np.stack(
            [
                data_lib.batch_indices(
                    num_train, batch, seed=config.seed * 1000 + s, start_step=step_num, num_steps=n
                )
                for s in range(seeds)
            ],
            axis=1,
        )  # [n, seeds, B]
        idx = jnp.asarray(idx)  # one transfer per chunk
        values = []
        for i in range(n):
            step_keys = _fold_in_each(keys, step_num + i)
            state, value = vstep(state, train_top, train_bottom, idx[i], step_keys)
            values.append(value)
        values = np.asarray(jax.device_get(values))  # [n, seeds]
        if (bad := training.first_nonfinite(values)) is not None:
            raise training.NonFiniteError(
                f"{label}: the bound became {values[bad]} at step {step_num + bad[0] + 1} "
                f"(seed index {bad[1]})."
            )
        step_num += n
        train_mi = values.mean(0).tolist()
        progress.update(n)
        if step_num % config.eval_every == 0 or step_num == config.num_steps:
            row = evaluate(step_num, state, train_mi)
            history.append(row)
            progress.set_postfix(
                acc=f"{np.mean(row['accuracy']):.3f}", mi=f"{np.mean(row['mi_test']):.2f}"
            )
    first, last = history[0], history[-1]
    return {
        **label,
        "steps": [r["step"] for r in history],
        "accuracy": [r["accuracy"] for r in history],
        "mi_test": [r["mi_test"] for r in history],
        "initial_accuracy_mean": float(np.mean(first["accuracy"])),
        "final_accuracy_mean": float(np.mean(last["accuracy"])),
        "final_accuracy_std": float(np.std(last["accuracy"])),
        "accuracy_gain_mean": float(np.mean(np.subtract(last["accuracy"], first["accuracy"]))),
        "accuracy_gain_std": float(np.std(np.subtract(last["accuracy"], first["accuracy"]))),
        "final_mi_mean": float(np.mean(last["mi_test"])),
        "final_mi_std": float(np.std(last["mi_test"])),
        # At most config.mi_eval_batches: as many full batches as the test split holds.
        "mi_test_batches": len(test_batches),
        # Probe fits (seeds x evaluations) that stopped at probe.max_iter before probe.tol.
        "probes_unconverged": sum(not c for r in history for c in r["probe_converged"]),
        "seconds": time.perf_counter() - t0,
    }


def _groups(runs: list[dict], key) -> list[list[dict]]:
    """``runs`` grouped by ``key(run)`` (in key order)."""
    ordered = sorted(runs, key=key)
    return [list(group) for _, group in itertools.groupby(ordered, key=key)]


def verdicts(runs: list[dict]) -> dict[str, dict]:
    """The three findings, each ``{"holds": bool | None, "evidence": str}`` (``None``: the
    config lacks the runs to decide)."""
    out = {}
    # (1) Bijective encoder: accuracy gain (final - initial, per seed), significant when its
    # mean exceeds 2 standard errors over the seeds (with one seed there is no standard error:
    # undecided).
    bij = [r for r in runs if r["encoder"] == "realnvp"]
    one_seed = bool(runs) and len(runs[0]["accuracy"][-1]) < 2
    if one_seed:
        out["bijective"] = {"holds": None, "evidence": "one seed: no spread to test against."}
    elif bij:
        sig = [
            r
            for r in bij
            if r["accuracy_gain_mean"]
            > 2 * r["accuracy_gain_std"] / np.sqrt(max(1, len(r["accuracy"][-1]) - 1))
            and r["accuracy_gain_mean"] > 0
        ]
        gains = ", ".join(
            f"{r['critic']}/{r['bound']} {100 * r['accuracy_gain_mean']:+.1f}" for r in bij
        )
        # The finding is existential (MI fixed, accuracy up): one significant gain shows it.
        out["bijective"] = {
            "holds": len(sig) > 0,
            "evidence": (
                f"{len(sig)} of {len(bij)} RealNVP runs raise the linear accuracy significantly "
                f"(gain in points, final minus initial: {gains}) although "
                "I(g1(x1); g2(x2)) = I(x1; x2) is fixed by bijectivity."
            ),
        }
    else:
        out["bijective"] = {"holds": None, "evidence": "no realnvp runs in the config."}
    # (2) Within an (encoder, bound) group: the critic with the highest MI estimate is not the
    # one with the best accuracy, by more than the seeds' spread.
    cases, groups = [], 0
    for group in _groups(runs, lambda r: (r["encoder"], r["bound"])):
        if len(group) < 2:
            continue
        groups += 1
        enc, bound = group[0]["encoder"], group[0]["bound"]
        top_mi = max(group, key=lambda r: r["final_mi_mean"])
        best = max(group, key=lambda r: r["final_accuracy_mean"])
        margin = best["final_accuracy_mean"] - top_mi["final_accuracy_mean"]
        if best is not top_mi and margin > max(
            best["final_accuracy_std"], top_mi["final_accuracy_std"]
        ):
            cases.append(
                f"{enc}/{bound}: {best['critic']} (MI {best['final_mi_mean']:.2f}, acc "
                f"{best['final_accuracy_mean']:.3f}) beats {top_mi['critic']} (MI "
                f"{top_mi['final_mi_mean']:.2f}, acc {top_mi['final_accuracy_mean']:.3f})"
            )
    out["looser_bounds"] = {
        "holds": (len(cases) > 0) if groups and not one_seed else None,
        "evidence": (
            f"in {len(cases)} of {groups} encoder/bound groups a critic with a lower MI estimate "
            "gives the better representation"
            + (": " + "; ".join(cases) if cases else ".")
            + (" One seed: no spread to test against." if one_seed else "")
        ),
    }

    # (3) Spread of accuracy across encoders (estimator fixed) against across estimators
    # (encoder fixed), each the mean of its groups' ranges (best minus worst run). The finding
    # holds when the gap exceeds 2 standard errors (as (1)): with each range's best and worst
    # runs taken as given, the gap is a weighted sum of run means, computed seed by seed (a
    # seed's runs share their keys and batch order, so their accuracies are correlated; taken
    # as independent runs, the standard error was 0.33 points where the seeds' own gaps give
    # 0.59 on digits, 0.23 against 0.15 on MNIST), its standard error that of the mean of the
    # seeds' gaps. Picking best and worst from noisy means widens a group's range the more runs
    # it has, which this leaves out: with estimator groups larger than encoder groups (6 runs
    # against 3 here) it errs towards "does not hold".
    means = np.array([r["final_accuracy_mean"] for r in runs])
    weights = np.zeros(len(runs))

    def spread(key, sign):
        groups = [g for g in _groups(range(len(runs)), lambda i: key(runs[i])) if len(g) > 1]
        for group in groups:
            weights[max(group, key=means.__getitem__)] += sign / len(groups)
            weights[min(group, key=means.__getitem__)] -= sign / len(groups)
        return float(np.mean([np.ptp(means[g]) for g in groups])) if groups else None

    by_encoder = spread(lambda r: (r["critic"], r["bound"]), 1.0)
    by_estimator = spread(lambda r: r["encoder"], -1.0)
    if by_encoder is None or by_estimator is None:
        out["encoder_matters"] = {
            "holds": None,
            "evidence": "needs several encoders and estimators.",
        }
    else:
        per_seed = np.array([r["accuracy"][-1] for r in runs], float)  # [runs, seeds]
        gaps = weights @ per_seed  # the gap in each seed: its mean is the gap
        stderr = float(np.std(gaps, ddof=1) / np.sqrt(gaps.size)) if gaps.size > 1 else np.nan
        gap = by_encoder - by_estimator
        evidence = (
            f"changing the encoder (critic and bound fixed) moves the accuracy by "
            f"{100 * by_encoder:.1f} points on average; changing critic and bound (encoder "
            f"fixed) by {100 * by_estimator:.1f}"
        )
        out["encoder_matters"] = (
            {"holds": None, "evidence": evidence + ". One seed: no spread to test the gap against."}
            if one_seed
            else {
                "holds": bool(gap > 2 * stderr) if np.isfinite(gap + stderr) else None,
                "evidence": evidence + f": a gap of {100 * gap:.2f} +- {100 * stderr:.2f} points "
                "(standard error over the seeds; the finding needs 2 standard errors).",
            }
        )
    return out


def summary(results: dict) -> str:
    cols = ["encoder", "critic", "bound", "final_mi", "initial_acc", "final_acc", "minutes"]
    rows = [
        {
            "encoder": r["encoder"],
            "critic": r["critic"],
            "bound": r["bound"],
            "final_mi": f"{r['final_mi_mean']:.2f} +- {r['final_mi_std']:.2f}",
            "initial_acc": f"{r['initial_accuracy_mean']:.3f}",
            "final_acc": f"{r['final_accuracy_mean']:.3f} +- {r['final_accuracy_std']:.3f}",
            "minutes": r["seconds"] / 60,
        }
        for r in results["runs"]
    ]
    lines = [
        f"\n{results['dataset']} halves, {results['num_seeds']} seeds, "
        f"{results['num_steps']} steps (MI: the bound on held-out test batches, nats; "
        "accuracy: logistic regression on the standardized top-half representation, "
        "mean +- std over seeds)",
        _common.format_table(rows, cols),
        f"raw pixels (noisy top half, standardized): {results['pixel_accuracy']:.3f}",
    ]

    def name(r):
        return f"{r['encoder']}/{r['critic']}/{r['bound']}"

    unfinished = {  # fits per combination (seeds x evaluations)
        name(r): r["probes_unconverged"] for r in results["runs"] if r.get("probes_unconverged")
    }
    if results.get("pixel_probe_converged") is False:
        unfinished["raw pixels"] = 1
    if note := _common.unfinished_probes_note(unfinished):
        lines.append(note[1:])
    if unrecorded := [name(r) for r in results["runs"] if "probes_unconverged" not in r]:
        lines.append(
            "linear probes' convergence not recorded (finished by code before 2026-12-06): "
            + ", ".join(unrecorded)
        )
    for key, v in results["verdicts"].items():
        state = {True: "HOLDS", False: "does not hold", None: "undecided"}[v["holds"]]
        lines.append(f"{FINDINGS[key]}: {state}. {v['evidence']}")
    return "\n".join(lines)


def plot(workdir: str, runs: list[dict], pixel_accuracy: float | None = None) -> None:
    """``curves.png``: per encoder, the probe's accuracy (mean over seeds, a band of +- one
    std where there are several; the raw pixels' dotted) and the held-out MI estimate."""
    encoders = sorted({r["encoder"] for r in runs})
    seeds = np.shape(runs[0]["accuracy"])[1] if runs else 1
    spread = f"\n(mean ± std over {seeds} seeds)" if seeds > 1 else ""
    fig, axes = _common.subplots(2, len(encoders), figsize=(5 * len(encoders), 8), squeeze=False)
    for col, enc in enumerate(encoders):
        curves = []  # the MI curves drawn (means over seeds)
        for k, r in enumerate(r for r in runs if r["encoder"] == enc):
            style = dict(label=f"{r['critic']}/{r['bound']}", color=f"C{k % 10}")
            accuracy = np.asarray(r["accuracy"], dtype=float)  # [evaluations, seeds]
            mean = accuracy.mean(axis=1)
            axes[0, col].plot(r["steps"], mean, "o-", **style)
            if accuracy.shape[1] > 1:  # (a gap between means can be the seeds' noise)
                std = accuracy.std(axis=1)
                axes[0, col].fill_between(
                    r["steps"], mean - std, mean + std, color=style["color"], alpha=0.15
                )
            curves.append(np.mean(np.asarray(r["mi_test"], dtype=float), axis=1))
            axes[1, col].plot(r["steps"], curves[-1], "o-", **style)
        if pixel_accuracy is not None:
            axes[0, col].axhline(pixel_accuracy, color="k", ls=":", label="raw pixels")
        axes[0, col].set(
            title=f"{enc}: linear probe on the top half{spread}",
            xlabel="step",
            ylabel="test accuracy",
        )
        axes[1, col].set(title=f"{enc}: MI estimate (test batches)", xlabel="step", ylabel="nats")
        axes[0, col].xaxis.set_major_locator(_common.integer_ticks())
        axes[1, col].xaxis.set_major_locator(_common.integer_ticks())
        # NWJ starts far below 0 with an untrained critic (-7000 with RealNVP on digits): the
        # axis spans 0 and the later half of every curve (the trained part), the rest is noted.
        late = np.concatenate([c[len(c) // 2 :] for c in curves])
        late = late[np.isfinite(late)]
        if late.size:
            low, high = min(0.0, late.min()), max(0.0, late.max())
            pad = 0.05 * (high - low) + 0.1
            _common.limit_axis(axes[1, col], low - pad, high + pad, curves)
        axes[0, col].legend(fontsize=7)  # (the MI panel below: the same colours)
    fig.tight_layout()
    _common.save_figure(fig, os.path.join(workdir, "curves.png"), dpi=100)


@functools.lru_cache(maxsize=8)
def _represent_fn(encoder):
    """``(params [S, ...], images [b, ...]) -> ([b, S, D],)``: one function object per encoder,
    so every critic and bound of an encoder reuses its compilation (jitted per combination, with
    the critic's parameters in its input, it compiled 36 times where 6 serve, 22 s of
    `:quick`)."""

    def apply(params, images):
        return (jnp.swapaxes(jax.vmap(encoder.apply, in_axes=(0, None))(params, images), 0, 1),)

    return apply


def represent(encoder, params, images: np.ndarray, mesh) -> np.ndarray:
    """The seeds' top representations ``[S, N, D]`` of ``images`` ``[N, h, W, C]`` on the host,
    in chunks of 500 images (`mi_jax.probes.extract_features`): the conv encoder on MNIST's
    60,000 probe images in one call peaked at 20.7 GB and took 24 s (chunked: 1.0 GB, 14.5 s)."""
    (features,) = probes.extract_features(_represent_fn(encoder), params, images, mesh=mesh)
    return np.swapaxes(features, 0, 1)


RESUMABLE = ("data_dir", "probe.cache_dir")


@_cli.locks_workdir
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, mesh=None) -> dict:
    """Runs (or finishes) the study; writes everything into ``workdir``; returns the results.

    ``mesh``: the devices to train data-parallel on (default: all, `mi_jax.parallel`).
    """
    with _common.config_checks():  # before anything is written
        _check_config(config)
        mesh = parallel.checked_mesh(mesh)
        parallel.check_batch_size(config.batch_size, mesh, "config.batch_size")
        combos = list(itertools.product(config.encoders, config.critics, config.bounds))
        models = {c: build(config, *c) for c in combos}  # bad hyperparameters fail before training
        views = load_views(config)
        check_models(config, models, views)
        if config.batch_size > len(views["test_top"]):  # the held-out MI needs a full test batch
            raise ValueError(
                f"`config.batch_size` ({config.batch_size}) exceeds the {len(views['test_top'])} "
                "test images."
            )
        # A rerun in the same workdir keeps the combinations it finished: every setting but the
        # data path must be the same.
        _common.check_same_run(workdir, config, RESUMABLE)
    os.makedirs(workdir, exist_ok=True)
    results_path = os.path.join(workdir, "results.json")
    done = {}
    if os.path.exists(results_path):
        previous = _common.read_json(results_path)
        if not _common.config_changes(previous.get("config", {}), config, RESUMABLE):
            done = {(r["encoder"], r["critic"], r["bound"]): r for r in previous["runs"]}
            print(f"Resuming: {len(done)} of {len(combos)} combinations already in {results_path}.")
    _common.write_config(workdir, config)

    t0 = time.perf_counter()
    pixel = linear_probe(
        config,
        views["probe_top"].reshape(len(views["probe_top"]), -1),
        views["probe_labels"],
        views["test_top"].reshape(len(views["test_top"]), -1),
        views["test_labels"],
        views["num_classes"],
    )
    results = {
        "dataset": config.dataset,
        "num_seeds": config.num_seeds,
        "num_steps": config.num_steps,
        "devices": mesh.devices.size,
        "config": _common.to_builtin(config.to_dict()),
        "pixel_accuracy": pixel.test_accuracy,
        "pixel_probe_converged": pixel.converged,
        "runs": [],
    }
    todo = [c for c in combos if c not in done]
    initial_fits = {}  # (run_combination)
    writer = _common.JsonlWriter(os.path.join(workdir, "metrics.jsonl"))
    progress = tqdm(total=len(todo) * config.num_steps, desc="halves")
    try:
        for combo in combos:
            if combo in done:
                results["runs"].append(done[combo])
                continue
            label = dict(zip(("encoder", "critic", "bound"), combo, strict=True))
            progress.set_description(f"halves {'/'.join(combo)}")
            try:
                run = run_combination(
                    config, models[combo], views, progress, writer, label, mesh, initial_fits
                )
            except training.NonFiniteError as e:
                kept = len(results["runs"])
                raise training.NonFiniteError(
                    f"{e} The {kept} combination(s) finished before it are kept in results.json."
                    if kept
                    else f"{e} No combination had finished: there is no results.json."
                ) from None
            results["runs"].append(run)
            results["verdicts"] = verdicts(results["runs"])
            _common.write_json(results_path, results)
    finally:
        progress.close()
        writer.close()
    results["verdicts"] = verdicts(results["runs"])
    results["seconds"] = time.perf_counter() - t0
    _common.write_json(results_path, results)
    _common.write_csv(
        os.path.join(workdir, "results.csv"),
        [{k: v for k, v in r.items() if not isinstance(v, list)} for r in results["runs"]],
    )
    plot(workdir, results["runs"], results["pixel_accuracy"])
    print(summary(results))
    return results


if __name__ == "__main__":
    _cli.run_experiment(
        "halves",
        train_and_evaluate,
        named_maps=("encoder_hparams", "critic_hparams", "bound_hparams"),
    )
