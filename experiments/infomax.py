r"""DIM-style InfoMax: the main job.

  python -m experiments.infomax --config configs/infomax.py --workdir /tmp/infomax

Trains an encoder (`mi_jax.encoders`) by maximizing DIM's global and local MI terms with the
estimator named in the config (`mi_jax.dim`), then freezes it and fits linear and MLP probes
(`mi_jax.probes`) on its representations, next to the same probes on raw pixels and on the
randomly initialized encoder. The whole dataset sits on the device as uint8; each step is one
jitted call on precomputed, resumable batch indices, with no host sync inside a chunk of
``log_every`` steps. ``--config.num_seeds=K`` trains seeds ``seed .. seed + K - 1`` side by side
(the step vmapped over a seed axis of the train state); ``results.json`` then holds the probes'
mean and std over seeds (``probes``) and each seed's rows (``probes_per_seed``).

Writes to the workdir: ``config.json``; ``metrics.jsonl`` (a training row per chunk of
``log_every`` steps: the objective's metrics (`mi_jax.dim.DIMObjective.loss`) averaged over the
chunk's steps (and seeds), ``grad_norm`` the global norm of the whole gradient (encoder,
critics, prior discriminator), ``seconds`` / ``steps_per_s`` the chunk's own, the segment's
first row with its ``compile_s``; an eval row per evaluation: the trained encoder's probes'
test accuracies as ``PROBE_REPRESENTATION`` (``linear_global``), the final probes' marked
``"final"``); ``results.json`` (final probe table; ``compile_s`` the step's compilation,
``train_s`` the chunks after it, both this segment's; ``train_total_s`` every segment's,
compilations included); ``curves.png`` (loss, MI terms, probe accuracy over steps) and
``probes.png`` (final accuracies); ``checkpoints/`` (Orbax, the last ``keep_checkpoints``).
Rerunning with the same workdir resumes from the latest checkpoint: a ``"resume"`` row marks
its step in ``metrics.jsonl`` (`read_metrics` drops the earlier rows past it), and a periodic
evaluation due there that never finished is done first. A NaN loss stops the run naming the
step; checkpoints already written stay.
"""

import functools
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm import tqdm

from experiments import _cli, _common
from mi_jax import data as data_lib
from mi_jax import dim, encoders, parallel, probes, training
from mi_jax import score as score_lib


def build(config: ml_collections.ConfigDict, image_shape: tuple[int, ...]) -> dim.DIMObjective:
    """The DIM objective (encoder included) that ``config`` describes; bad names raise here."""
    encoder = encoders.get_encoder(
        config.encoder, latent_dim=config.latent_dim, **config.encoder_hparams.to_dict()
    )
    # MIGE's score estimator is checked whatever the estimator (a typo ran to the end unseen).
    score_lib.get_score_estimator(config.score_estimator, **config.score_hparams.to_dict())
    return dim.DIMObjective(
        encoder=encoder,
        estimator=config.estimator,
        estimator_hparams=_common.hashable_hparams(config.estimator_hparams.to_dict()),
        alpha=config.alpha,
        beta=config.beta,
        gamma=config.gamma,
        global_source=config.global_source,
        prior=config.prior,
        critic_hidden=config.critic_hidden,
        embed_dim=config.embed_dim,
        critic_clip=config.critic_clip or None,
        score_estimator=config.score_estimator,
        score_hparams=_common.hashable_hparams(config.score_hparams.to_dict()),
        mige_locations=config.mige_locations,
    )


# What a rerun in the same workdir may change (`_common.check_same_run`): the checkpoint resumes
# under a longer run, other logging, evaluation and checkpoint cadences, another data path, and
# the probes (fitted after training) may be refitted with other settings.
RESUMABLE = (
    "num_steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints", "data_dir",
    "probe",
)  # fmt: skip


def _check_config(
    config: ml_collections.ConfigDict, representation_names: tuple[str, ...], channels: int
) -> None:
    _common.check_num_seeds(config, consecutive=True)  # seeds seed + k
    _common.check_learning_rate(config)
    _common.check_int_fields(
        config, "num_steps", "log_every", "eval_every", "checkpoint_every",
        "keep_checkpoints",  # 0: Orbax keeps none, and nothing could resume
        "probe.mlp_hidden",
    )  # fmt: skip
    _common.check_config_batch_size(config)
    if "augment" in config:
        data_lib.check_augment(
            config.augment.to_dict(), prefix="config.augment.", channels=channels
        )
    probe = config.probe
    probes.check_hparams(
        prefix="config.probe.", l2=probe.l2, max_iter=probe.max_iter, tol=probe.tol,
        epochs=probe.epochs, batch_size=probe.batch_size, learning_rate=probe.learning_rate,
        weight_decay=probe.weight_decay,
    )  # fmt: skip
    _common.check_probe_cache_dir(config)
    for name in ("eval_every", "checkpoint_every"):
        if config[name] % config.log_every:
            raise ValueError(
                f"`config.{name}` ({config[name]}) must be a multiple of `config.log_every` "
                f"({config.log_every}): evaluation and checkpoints happen between chunks."
            )
    for field, known, noun in (
        ("representations", representation_names, "representation"),
        ("periodic_representations", representation_names, "representation"),
        ("kinds", probes.PROBES, "probe"),
        ("periodic_kinds", probes.PROBES, "probe"),
    ):  # (periodic probes are optional; the final ones are the results)
        empty_ok = field.startswith("periodic")
        _common.check_names(config, f"probe.{field}", known, noun, empty_ok=empty_ok)


def make_chunk_fn(objective, augment: dict, mesh=None, num_seeds: int | None = None):
    """``run(state, images [N, H, W, C], indices, start_step, train_keys) -> (state, metrics)``.

    ``objective``: a `mi_jax.dim.DIMObjective`, `mi_jax.amdim.AMDIMObjective` or anything
    with their ``loss``. ``augment``: `mi_jax.data.augment_batch`'s parameters, applied to the
    batch before the loss (empty or all off: none; AMDIM draws its views inside its loss).
    ``indices [n, B]``: ``n`` steps, each one call of a jitted step with the state donated; the
    steps' metrics (``{name: [n]}``) stay on the device until the chunk ends (one host transfer
    per chunk). Keys are ``fold_in(train_key, step)``, so a resumed run draws what the
    uninterrupted run drew. With ``num_seeds = K``, the state, ``train_keys`` and the
    indices (``[n, K, B]``) carry a seed axis and each step is `jax.vmap`-ped over it: K
    independent runs in one program (metrics ``[n, K]``); a MIGE objective instead puts K
    copies of the step side by side in the program (batched Cholesky/eigh under `vmap` hung
    XLA:CPU).
    With a ``mesh`` (`mi_jax.parallel.data_mesh`), ``state`` and ``images`` replicated on it,
    each step is data-parallel: the batch is split over the devices and the bounds still see
    the whole batch's negatives (`mi_jax.parallel`). ``run.compile(...)``, given a chunk's
    arguments, compiles the step ahead of it (timed apart: ``compile_s``).

    Not a `lax.scan`: on XLA:CPU (jaxlib 0.10.2) the conv encoder's step inside a rolled while
    loop ran 13x slower than the same step jitted alone (2.0 s vs 0.15 s at batch 128 on MNIST;
    an unrolled scan matched the jitted step), and dispatching one step costs well under 1 ms.
    """
    grad_fn = jax.value_and_grad(objective.loss, has_aux=True)

    def one(state, images, idx, step, train_key):
        aug_key, loss_key = jax.random.split(jax.random.fold_in(train_key, step))
        batch = data_lib.to_float(images[idx])
        if mesh is not None:
            batch = parallel.shard_batch(batch, mesh)
        if augment and any(augment.values()):
            batch = data_lib.augment_batch(aug_key, batch, **augment)
        (_, (metrics, bound_states)), grads = grad_fn(
            state.params, state.bound_states, batch, loss_key
        )
        metrics["grad_norm"] = optax.tree.norm(grads)
        state = state.apply_gradients(grads=grads, bound_states=bound_states)
        if mesh is not None:
            state = parallel.replicate_like(state, mesh)
        return state, metrics

    if num_seeds is not None and getattr(objective, "is_mige", False):
        per_seed = one

        def one(state, images, idx, step, train_keys):
            # One copy of the step per seed in one program, not a loop: the conv step inside a
            # rolled loop (`lax.map`) ran 3.4x slower on XLA:CPU (MIGE, 3 seeds on digits).
            outs = [
                per_seed(
                    jax.tree.map(lambda a, k=k: a[k], state), images, idx[k], step, train_keys[k]
                )
                for k in range(num_seeds)
            ]
            return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

    elif num_seeds is not None:
        one = jax.vmap(one, in_axes=(0, None, 0, None, 0))
    step_fn = jax.jit(one, donate_argnums=0)

    def run(state, images, indices, start_step: int, train_keys):
        history = []
        for i in range(indices.shape[0]):
            state, metrics = step_fn(state, images, indices[i], start_step + i, train_keys)
            history.append(metrics)
        history = jax.device_get(history)
        return state, {k: np.stack([m[k] for m in history]) for k in history[0]}

    def compile_step(state, images, indices, start_step: int, train_keys) -> None:
        """Compiles the step for a chunk's arguments ahead of it (jit reuses the program), so
        that compilation is timed apart from training."""
        step_fn.lower(state, images, indices[0], start_step, train_keys).compile()

    run.compile = compile_step
    return run


@functools.lru_cache(maxsize=16)
def _representation_fn(objective, wanted: tuple[str, ...]):
    """One function object per (objective, wanted): `probes.extract_features` jits it, and jit
    reuses a compilation only for the same function, so periodic evaluations compile once."""

    def apply(params, x):  # only the wanted ones leave the device (feature maps are large)
        out = objective.representations(params, data_lib.to_float(x))
        return tuple(out[k] for k in wanted)

    return apply


def representations(objective, encoder_params, images: np.ndarray, wanted, mesh=None) -> dict:
    """``{name: [N, F] features}`` of the encoder for the wanted representations (the images
    split over ``mesh``'s devices, if given)."""
    wanted = tuple(wanted)
    apply = _representation_fn(objective, wanted)
    features = probes.extract_features(apply, encoder_params, images, mesh=mesh)
    return dict(zip(wanted, features, strict=True))


def run_probes(
    config, train: dict, test: dict, labels, num_classes: int, prefix: str, kinds=None, seed=None
) -> list:
    """Fits ``kinds`` (default ``config.probe.kinds``) on every representation of ``train``;
    ``seed`` (default ``config.seed``) initializes and shuffles the MLP probes. With
    ``config.probe.cache_dir`` a fit made before on the same features and settings is read
    from there (the row's ``cached``)."""
    cache_dir = _common.probe_cache_dir(config)
    rows = []
    for rep in train:
        for kind in config.probe.kinds if kinds is None else kinds:
            t0 = time.perf_counter()
            result, cached = _common.fit_probe_cached(
                cache_dir,
                train[rep],
                labels[0],
                test[rep],
                labels[1],
                kind=kind,
                num_classes=num_classes,
                hidden=config.probe.mlp_hidden,
                l2=config.probe.l2,
                max_iter=config.probe.max_iter,
                tol=config.probe.tol,
                epochs=config.probe.epochs,
                batch_size=config.probe.batch_size,
                learning_rate=config.probe.learning_rate,
                weight_decay=config.probe.weight_decay,
                seed=config.seed if seed is None else seed,
            )
            rows.append(
                dict(
                    encoder=prefix,
                    representation=rep,
                    dim=int(np.prod(train[rep].shape[1:])),
                    probe=kind,
                    train_accuracy=result.train_accuracy,
                    test_accuracy=result.test_accuracy,
                    iterations=result.iterations,
                    converged=result.converged,  # linear: L-BFGS reached `tol` (MLP: None)
                    seconds=time.perf_counter() - t0,
                    **({"cached": cached} if cache_dir else {}),
                )
            )
    return rows


@_cli.locks_workdir
def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    build_fn=None,
    name: str = "infomax",
    mesh=None,
) -> dict:
    """Trains (or resumes), evaluates, writes everything into ``workdir``; returns the results.

    ``build_fn(config, image_shape) -> objective`` (default `build`, DIM) makes the objective:
    anything with ``init``, ``loss``, ``representations`` and ``representation_names`` like
    `mi_jax.dim.DIMObjective` (`experiments.amdim` passes AMDIM's). ``name`` labels the bar.
    ``mesh``: the devices to train data-parallel on (default: all, `mi_jax.parallel`).
    """
    with _common.config_checks():  # before anything is written
        _common.check_path_encoding(workdir)  # (its checkpoints')
        dataset = _common.load_config_dataset(config)
        objective = (build_fn or build)(config, dataset.image_shape)
        _check_config(config, objective.representation_names, dataset.image_shape[-1])
        _common.check_same_run(workdir, config, RESUMABLE)
        batch_size = config.batch_size
        num_train = dataset.train_images.shape[0]
        if batch_size > num_train:
            raise ValueError(
                f"`config.batch_size` ({batch_size}) exceeds the {num_train} training images."
            )
        mesh = parallel.checked_mesh(mesh)
        parallel.check_batch_size(batch_size, mesh, "config.batch_size")
        checkpoints = os.path.join(workdir, "checkpoints")
        start = _common.checkpoint_step_within(checkpoints, config.num_steps, "num_steps")
    seeds = _common.seed_values(config)
    batched = len(seeds) > 1  # one seed: no seed axis (the single-run program)
    init_keys, train_keys = _common.seed_keys(seeds, 2)
    sample = data_lib.to_float(jnp.asarray(dataset.train_images[:batch_size]))

    def create(key, sample):
        params, bound_states = objective.init(key, sample)
        return training.TrainState.create(
            apply_fn=objective.encoder.apply,
            params=params,
            tx=optax.adam(config.learning_rate),
            bound_states=bound_states,
        )

    # One program (vmapped: a step counter per seed).
    state = _common.jit_init(create, batched, in_axes=(0, None))(init_keys, sample)
    # A copy: the train state's buffers are donated to the compiled steps.
    initial_encoder = parallel.replicate(jax.tree.map(jnp.copy, state.params["encoder"]), mesh)
    state = parallel.replicate(state, mesh)  # restored checkpoints take this layout too
    # (A checkpoint of another model is refused before config.json is written.)
    manager, state = _common.resume(checkpoints, start, state, config.keep_checkpoints)
    _common.write_config(workdir, config)

    images = parallel.replicate(dataset.train_images, mesh)
    augment = config.augment.to_dict() if "augment" in config else {}
    run = make_chunk_fn(objective, augment, mesh, len(seeds) if batched else None)
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    # A periodic evaluation already written at the checkpoint's step (read before this run
    # adds rows; an earlier run's final probes there, at its last step, are not one).
    evaluated = start and any(
        r["step"] == start and not r.get("final") for r in read_metrics(metrics_path)[1]
    )
    writer = _common.JsonlWriter(metrics_path)

    def log_eval(step: int) -> dict:
        """The periodic probes on the encoder at ``step``, written as an eval row (with the
        ``seconds`` they took)."""
        t0 = time.perf_counter()
        per_seed = [
            periodic_eval(config, objective, p, dataset, mesh, seed=s)
            for s, p in zip(
                seeds, _common.seed_slices(state.params["encoder"], batched), strict=True
            )
        ]
        acc = {k: float(np.mean([a[k] for a in per_seed])) for k in per_seed[0]}
        eval_row = {"step": step, "kind": "eval", **acc}
        if batched:
            eval_row["per_seed"] = {k: [a[k] for a in per_seed] for k in acc}
        writer.write({**eval_row, "seconds": time.perf_counter() - t0})
        return acc

    compile_s, train_s, step = 0.0, 0.0, start
    progress = tqdm(total=config.num_steps, initial=start, desc=f"{name} {config.estimator}")
    try:
        if start:
            # The rows an earlier run wrote after this checkpoint describe training that is
            # now done again: `read_metrics` drops them from the curves (they stay in the file).
            writer.write({"step": start, "kind": "resume"})
            if start % config.eval_every == 0 and start < config.num_steps and not evaluated:
                log_eval(start)  # the run stopped between the checkpoint and its evaluation
        while step < config.num_steps:
            # Chunks end on multiples of log_every (so evaluations and checkpoints keep their
            # schedule after a resume from an odd step, e.g. a run's final checkpoint).
            n = min(config.log_every - step % config.log_every, config.num_steps - step)
            indices = np.stack(
                [
                    data_lib.batch_indices(
                        num_train, batch_size, seed=s, start_step=step, num_steps=n
                    )
                    for s in seeds
                ],
                axis=1,
            )  # [n, K, B]
            indices = parallel.replicate(indices if batched else indices[:, 0], mesh)
            if step == start:
                t0 = time.perf_counter()
                run.compile(state, images, indices, step, train_keys)
                compile_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            state, metrics = run(state, images, indices, step, train_keys)
            elapsed = time.perf_counter() - t0
            train_s += elapsed
            _raise_if_nonfinite(metrics["loss"], config, step, seeds, manager, workdir)
            step += n
            row = {"step": step, "kind": "train", "seconds": elapsed, "steps_per_s": n / elapsed}
            if step - n == start:  # (the segment's compilation, before this chunk's seconds)
                row["compile_s"] = compile_s
            row.update({k: float(np.mean(v)) for k, v in metrics.items()})
            if batched:  # the per-seed means; the row's values average over the seeds too
                row["per_seed"] = {k: np.mean(v, axis=0) for k, v in metrics.items()}
            writer.write(row)
            progress.update(n)
            progress.set_postfix(loss=f"{row['loss']:.3f}")
            if step % config.checkpoint_every == 0 or step == config.num_steps:
                _common.save_checkpoint(manager, step, state)
            if step % config.eval_every == 0 and step < config.num_steps:
                acc = log_eval(step)
                progress.set_postfix(
                    loss=f"{row['loss']:.3f}", **{k: f"{v:.3f}" for k, v in acc.items()}
                )
        manager.wait_until_finished()
        progress.close()  # (the bar ends before the probes print; `finally` closes it again)
        t0 = time.perf_counter()
        per_seed_rows = []
        for k, (s, trained, initial) in enumerate(
            zip(
                seeds,
                _common.seed_slices(state.params["encoder"], batched),
                _common.seed_slices(initial_encoder, batched),
                strict=True,
            )
        ):
            rows = evaluate(
                config, objective, trained, initial, dataset, mesh, seed=s, pixels=k == 0
            )
            per_seed_rows += [{**r, "seed": s} for r in rows]
        eval_s = time.perf_counter() - t0
        if batched:
            final = _common.mean_over_seeds(per_seed_rows, ("encoder", "representation", "probe"))
        else:
            final = [{k: v for k, v in r.items() if k != "seed"} for r in per_seed_rows]
        writer.write(
            {
                "step": step,
                "kind": "eval",
                "final": True,  # the final probes (`config.probe`), not the periodic ones
                **{
                    f"{r['probe']}_{r['representation']}": r["test_accuracy"]
                    for r in final
                    if r["encoder"] == "trained"
                },
            }
        )
    finally:
        # Saves run in the background: a NaN (or any error) raised right after one must not
        # leave it half written when the process exits.
        manager.close()  # (after waiting for a save in flight)
        progress.close()
        writer.close()

    train_rows, eval_rows = read_metrics(os.path.join(workdir, "metrics.jsonl"))
    results = {
        # The settings, where a rerun finds them if config.json is gone (`check_same_run`).
        "config": _common.to_builtin(config.to_dict()),
        "dataset": config.dataset,
        "estimator": config.estimator,
        "num_steps": config.num_steps,
        "num_seeds": len(seeds),
        "seeds": seeds,
        "resumed_from": start,
        "devices": mesh.devices.size,
        "compile_s": compile_s,
        "train_s": train_s,
        "eval_s": eval_s,
        # Every segment of a resumed run (their compilations included): the chunks behind the
        # final encoder, from metrics.jsonl; compile_s and train_s count this segment only.
        # (Rows before 2026-12-06 have no compile_s: their first chunk's seconds included it.)
        "train_total_s": sum(r["seconds"] + r.get("compile_s", 0.0) for r in train_rows),
        # The periodic probes behind the final encoder, likewise (rows written before they
        # were timed count 0).
        "periodic_eval_s": sum(r.get("seconds", 0.0) for r in eval_rows if not r.get("final")),
        # With several seeds: the mean over seeds, ``*_std`` the spread (raw pixels: one fit).
        "probes": final,
    }
    if batched:
        results["probes_per_seed"] = per_seed_rows
    _common.write_json(os.path.join(workdir, "results.json"), results)
    plot(
        workdir,
        final,
        f"{name}: {config.dataset}, {config.estimator}, {step} steps"
        + (f", {len(seeds)} seeds (mean)" if batched else ""),
    )
    print(summary(results))
    return results


def _raise_if_nonfinite(losses, config, step: int, seeds, manager, workdir: str) -> None:
    """A `training.NonFiniteError` naming the step (and seed) of the first non-finite loss
    in a chunk's ``losses`` (``[n]`` or ``[n, K]``) and the checkpoints kept."""
    index = training.first_nonfinite(losses)
    if index is None:
        return
    manager.wait_until_finished()  # the last save completes before it is named as kept
    where = f" (seed {seeds[index[1]]})" if losses.ndim > 1 else ""
    latest = manager.latest_step()
    kept = (
        "no checkpoint was written before it"
        if latest is None
        else f"the checkpoints already written (latest: step {latest}) are kept in "
        f"{os.path.join(workdir, 'checkpoints')}"
    )
    raise training.NonFiniteError(
        f"the loss of estimator {config.estimator!r} became {losses[index]} at step "
        f"{step + 1 + index[0]}{where}; {kept}."
    )


def periodic_eval(config, objective, encoder_params, dataset, mesh=None, seed=None) -> dict:
    """``config.probe.periodic_kinds`` probes on the trained encoder's
    ``config.probe.periodic_representations``: ``{"linear_global": test accuracy, ...}`` (the
    curves in ``curves.png``). ``seed``: the run's (default ``config.seed``)."""
    labels = (dataset.train_labels, dataset.test_labels)
    wanted = list(config.probe.periodic_representations)
    train = representations(objective, encoder_params, dataset.train_images, wanted, mesh)
    test = representations(objective, encoder_params, dataset.test_images, wanted, mesh)
    rows = run_probes(
        config, train, test, labels, dataset.num_classes, "trained",
        config.probe.periodic_kinds, seed,
    )  # fmt: skip
    return {f"{r['probe']}_{r['representation']}": r["test_accuracy"] for r in rows}


def evaluate(
    config, objective, encoder_params, initial_params, dataset, mesh=None, seed=None, pixels=True
) -> list[dict]:
    """Probe table: trained encoder, randomly initialized encoder, raw pixels (unless
    ``pixels`` is false: a multi-seed run fits those once). ``seed``: the run's (default
    ``config.seed``), for the MLP probes."""
    labels = (dataset.train_labels, dataset.test_labels)
    wanted = list(config.probe.representations)
    rows = []
    for name, p in (("trained", encoder_params), ("random", initial_params)):
        train = representations(objective, p, dataset.train_images, wanted, mesh)
        test = representations(objective, p, dataset.test_images, wanted, mesh)
        rows += run_probes(config, train, test, labels, dataset.num_classes, name, seed=seed)
    if pixels:
        train = {"pixels": dataset.train_images.reshape(len(dataset.train_images), -1) / 255.0}
        test = {"pixels": dataset.test_images.reshape(len(dataset.test_images), -1) / 255.0}
        rows += run_probes(config, train, test, labels, dataset.num_classes, "none", seed=seed)
    return rows


def cached_fits(results: dict) -> tuple[int, int]:
    """``(k, n)``: ``k`` of the run's ``n`` final probe fits (each seed's) were read from
    ``config.probe.cache_dir``."""
    fits = results.get("probes_per_seed", results["probes"])
    return sum(bool(r.get("cached")) for r in fits), len(fits)


def summary(results: dict) -> str:
    cols = ["encoder", "representation", "dim", "probe", "train_accuracy", "test_accuracy"]
    seeds = ""
    if results.get("num_seeds", 1) > 1:  # mean over seeds, and their spread
        cols.append("test_accuracy_std")
        seeds = f" x {results['num_seeds']} seeds (mean, std)"
    # A resumed or repeated run: compile_s and train_s are its own; training in all from the log.
    total = results.get("train_total_s", results["compile_s"] + results["train_s"])
    earlier = (
        f" (training over every run in the workdir: {total:.1f} s)"
        if abs(total - results["compile_s"] - results["train_s"]) > 0.05
        else ""
    )
    rows = [  # raw pixels are fitted once: no spread to show
        r if r.get("num_seeds", 1) > 1 else {**r, "test_accuracy_std": "-"}
        for r in results["probes"]
    ]
    unfinished = [
        f"{r['encoder']}/{r['representation']}"
        for r in results["probes"]
        if r.get("converged") is False
    ]
    cached, fits = cached_fits(results)
    cache_note = (
        f"\nprobe fits read from config.probe.cache_dir (made by an earlier run): {cached} of "
        f"{fits}"
        if cached
        else ""
    )
    return (
        f"\n{results['dataset']}, estimator {results['estimator']}, {results['num_steps']} steps"
        f"{seeds}: "
        f"compile {results['compile_s']:.1f} s, train {results['train_s']:.1f} s{earlier}, "
        f"final probes {results['eval_s']:.1f} s, periodic probes "
        f"{results.get('periodic_eval_s', 0):.1f} s (every run in the workdir)\n"
        + _common.format_table(rows, cols)
        + _common.unfinished_probes_note(unfinished)
        + cache_note
    )


def read_metrics(path: str) -> tuple[list[dict], list[dict]]:
    """Train and eval rows of ``metrics.jsonl``, by step. After a resume (a ``"resume"`` row at
    the checkpoint's step) the rows an earlier run wrote past that step are dropped, and the
    latest row per step wins."""
    rows = {}
    for row in _common.iter_jsonl(path) if os.path.exists(path) else ():
        if row["kind"] == "resume":
            rows = {key: r for key, r in rows.items() if r["step"] <= row["step"]}
        else:
            rows[(row["kind"], row["step"])] = row
    ordered = sorted(rows.values(), key=lambda r: r["step"])
    return [r for r in ordered if r["kind"] == "train"], [r for r in ordered if r["kind"] == "eval"]


def plot(workdir: str, final: list[dict], title: str = "") -> None:
    """``curves.png`` (losses, MI terms, the periodic probes with the final ones of the random
    encoder and the raw pixels dotted) and ``probes.png`` (the final probes, each bar
    labelled); ``title`` (the run: dataset, estimator, steps) heads both."""
    train, evals = read_metrics(os.path.join(workdir, "metrics.jsonl"))
    fig, axes = _common.subplots(1, 3, figsize=(15, 4))
    steps = [r["step"] for r in train]
    axes[0].plot(steps, [r["loss"] for r in train], label="loss")
    keys = sorted(train[0]) if train else []
    for key in keys:
        if key.startswith("prior_") or key == "score_penalty":
            axes[0].plot(steps, [r[key] for r in train], label=key)
    axes[0].set(xlabel="step", title="losses")
    for key in keys:
        if key.startswith("mi_"):
            # With the InfoNCE estimator its InfoNCE readout is the same curve: one line.
            twin = "infonce_" + key.removeprefix("mi_")
            same = twin in keys and all(r[key] == r[twin] for r in train)
            label = f"{key} (= {twin})" if same else key
            axes[1].plot(steps, [r[key] for r in train], label=label)
            if twin in keys and not same:
                axes[1].plot(steps, [r[twin] for r in train], label=twin)
    axes[1].set(xlabel="step", title="MI terms (nats; MIGE: surrogate)")
    not_probes = {"step", "kind", "per_seed", "run", "final", "seconds"}
    for k, key in enumerate(sorted({k for r in evals for k in r} - not_probes)):
        points = [(r["step"], r[key]) for r in evals if key in r]
        axes[2].plot(*zip(*points, strict=True), "o-", color=f"C{k % 10}", label=key)
        for r in final:  # the same probe on the untrained encoder: what training added
            if r["encoder"] == "random" and f"{r['probe']}_{r['representation']}" == key:
                axes[2].axhline(r["test_accuracy"], color=f"C{k % 10}", ls=":", lw=1,
                                label=f"{key}, random encoder")  # fmt: skip
    for r in final:
        if r["encoder"] == "none":
            axes[2].axhline(r["test_accuracy"], color="k", ls=":", lw=1,
                            label=f"{r['probe']} on raw pixels")  # fmt: skip
    axes[2].set(xlabel="step", ylabel="test accuracy", title="probes (test accuracy)")
    for ax in axes:
        ax.xaxis.set_major_locator(_common.integer_ticks())
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _common.save_figure(fig, os.path.join(workdir, "curves.png"), dpi=100)

    fig, ax = _common.subplots(figsize=(9, 4))
    labels = [f"{r['encoder']}\n{r['representation']}\n{r['probe']}" for r in final]
    encoders = list(dict.fromkeys(r["encoder"] for r in final))  # trained, random, none
    bars = ax.bar(
        range(len(final)),
        [r["test_accuracy"] for r in final],
        yerr=[r.get("test_accuracy_std", 0.0) for r in final],  # over seeds, if several
        color=[f"C{encoders.index(r['encoder']) % 10}" for r in final],
    )
    ax.bar_label(bars, fmt="%.3f", fontsize=7)  # (0.972 against 0.961 is not readable off bars)
    ax.set_xticks(range(len(final)), labels, fontsize=7)
    ax.set(
        ylabel="test accuracy",
        ylim=(0, 1.08),
        title="probes on frozen representations" + (f": {title}" if title else ""),
    )
    fig.tight_layout()
    _common.save_figure(fig, os.path.join(workdir, "probes.png"), dpi=100)


if __name__ == "__main__":
    _cli.run_experiment("infomax", train_and_evaluate)
