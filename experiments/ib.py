r"""Deep Information Bottleneck classification: VIB, MINE-IB, MIGE-IB and a deterministic baseline.

  python -m experiments.ib --config configs/ib.py --workdir /tmp/ib

For each method of the config (`mi_jax.ib`), every beta of its sweep is trained in one compiled
program (the betas are a `jax.vmap` axis, all starting from the same initialization and seeing
the same batches and noise; ``num_seeds = K`` adds a seed axis: K independent sweeps, each with
its own initialization, batches and noise, reported as mean and std over seeds; the validation
split, drawn from ``config.seed``, is the same for all K, so seed ``seed + k`` of such a run
trains on other images than a run of that seed alone), with the
protocol of Alemi et al. (2017): Adam (b1 = 0.5), the learning rate decayed by ``lr_decay``
every ``lr_decay_epochs`` epochs (theirs, and the digits default: 0.97 every 2; the MNIST
presets: 0.85 every epoch), and an exponential moving average of the weights (debiased as in
Adam) that is what gets evaluated. Evaluation: test error with the posterior mean ``z =
mu(x)`` and with sampling (softmax averaged over ``test_samples`` codes), and the test set's
``E KL(q(z|x) || N(0, I))``, an upper bound on ``I(X; Z)``.

MIGE-IB's betas (and seeds) run one after another inside the program (`jax.lax.map`), not
vmapped: on XLA:CPU a vmapped (batched) eigendecomposition inside a gradient hung on its second
execution (see `mi_jax.mige`).

Writes to the workdir: ``config.json``; ``metrics.jsonl`` (a training row per chunk and an
eval row per evaluation, per method and beta; a training row's ``accuracy``, loss terms and KL
are means over the chunk's training batches, not a held-out split); ``results.json`` (the
table, rewritten after
every evaluation; a method finished on the same schedule is skipped on rerun);
``results.csv`` (the selected evaluations, one row per method and beta; errors as fractions
there and in ``results.json``, in % in the printed table); ``error_vs_beta.png`` and
``curves.png``; ``checkpoints/METHOD/`` (Orbax; an interrupted method resumes from its last
evaluation; fewer epochs than a checkpoint holds are refused). A NaN loss stops the run naming
the method, beta and step; results and checkpoints already written stay.
"""

import contextlib
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from tqdm import tqdm

from experiments import _cli, _common
from mi_jax import _checks, bounds, critics, ib, parallel, score, training
from mi_jax import data as data_lib


def build(config: ml_collections.ConfigDict, method: str, num_classes: int) -> ib.IBModel:
    """The `mi_jax.ib.IBModel` of ``method``; unknown names and bad sizes raise here (the
    MINE and MIGE settings whatever the method: a typo there ran to the end unseen)."""
    bounds.get_bound(config.mine.bound, **config.mine.bound_hparams.to_dict())
    critics.get_critic(config.mine.critic, **config.mine.critic_hparams.to_dict())
    score.get_score_estimator(config.mige.score_estimator, **config.mige.score_hparams.to_dict())
    return ib.IBModel(
        method=method,
        num_classes=num_classes,
        latent_dim=config.latent_dim,
        trunk=config.encoder,
        trunk_hparams=_common.hashable_hparams(config.encoder_hparams.to_dict()),
        std_offset=config.std_offset,
        centered_inputs=config.centered_inputs,
        kernel_init=config.kernel_init,
        bound=config.mine.bound,
        bound_hparams=_common.hashable_hparams(config.mine.bound_hparams.to_dict()),
        critic=config.mine.critic,
        critic_hparams=_common.hashable_hparams(config.mine.critic_hparams.to_dict()),
        critic_clip=config.mine.critic_clip or None,
        score_estimator=config.mige.score_estimator,
        score_hparams=_common.hashable_hparams(config.mige.score_hparams.to_dict()),
        train_samples=config.train_samples,
    )


# What a rerun in the same workdir may change (`_common.check_same_run`): a method's checkpoint
# resumes under a longer schedule (a shorter one is refused, `check_checkpoints`), other
# evaluation cadences or another data path, and the methods run are each kept apart (their own
# checkpoints and results entries).
RESUMABLE = ("num_epochs", "eval_every_epochs", "eval_batch_size", "data_dir", "methods")


# A method's own settings, besides its betas.
METHOD_SETTINGS = {"mine": ("mine",), "mige": ("mige",)}


def settings_of_new_methods(workdir: str) -> tuple[str, ...]:
    """The settings of the methods that never ran in ``workdir`` (no row in its
    ``metrics.jsonl``, no entry in its ``results.json``, no checkpoint): their betas and own
    sections, which a rerun there may change (adding MINE-IB at other betas to a workdir of VIB
    runs was refused as another config)."""
    metrics, results = (os.path.join(workdir, n) for n in ("metrics.jsonl", "results.json"))
    rows = _common.iter_jsonl(metrics) if os.path.exists(metrics) else ()
    ran = {row.get("method") for row in rows if isinstance(row, dict)}
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):  # none, or unreadable
        ran |= set(_common.read_json(results)["methods"])
    checkpoints = os.path.join(workdir, "checkpoints")
    ran |= set(os.listdir(checkpoints)) if os.path.isdir(checkpoints) else set()
    return tuple(
        setting
        for method in ib.METHODS
        if method not in ran
        for setting in (f"betas.{method}", *METHOD_SETTINGS.get(method, ()))
    )


def betas_of(config: ml_collections.ConfigDict, method: str) -> tuple[float, ...]:
    """The sweep of ``method``; the deterministic baseline has no penalty (beta 0)."""
    if method == "deterministic":
        return (0.0,)
    betas = ib.check_betas(config.betas[method], f"config.betas.{method}")
    if len(set(betas)) < len(betas):  # it would run twice, its rows doubled
        raise ValueError(f"`config.betas.{method}` names a beta twice: {betas}.")
    return betas


def _check_config(config: ml_collections.ConfigDict) -> None:
    _common.check_names(config, "methods", ib.METHODS, "method")
    swept = [m for m in ib.METHODS if m != "deterministic"]  # the methods with a beta
    _common.check_names(config, "betas", swept, "method", empty_ok=True)
    for method in config.methods:
        if method != "deterministic" and method not in config.betas:
            raise ValueError(f"`config.betas` has no sweep for method {method!r}.")
        betas_of(config, method)
    _common.check_num_seeds(config, consecutive=True)  # seeds seed + k
    _common.check_learning_rate(config)
    if not (_checks.is_real(config.lr_decay) and 0 < config.lr_decay <= 1):
        raise ValueError(f"`config.lr_decay` must lie in (0, 1], got {config.lr_decay!r}.")
    if not (_checks.is_real(config.adam_b1) and 0 <= config.adam_b1 < 1):
        raise ValueError(f"`config.adam_b1` must lie in [0, 1), got {config.adam_b1!r}.")
    _common.check_unique(config, "methods")
    if {"mine", "mige"} & set(config.methods):  # a bound, or a kernel score estimate, per batch
        _common.check_config_batch_size(config)
    _common.check_int_fields(
        config, "num_epochs", "batch_size", "eval_every_epochs", "test_samples",
        "eval_batch_size", "lr_decay_epochs",
    )  # fmt: skip
    _common.check_int_fields(config, "validation_examples", least=0)  # 0: no split
    training.check_ema_decay(config.ema_decay, "config.ema_decay")


def make_eval_fn(
    model: ib.IBModel, num_samples: int, eval_batch: int, seed_axis: bool = False, mesh=None
):
    """``evaluate(params [nb, ...], images [M, ...], labels [M], key) -> metrics [nb]``:
    test error at the posterior mean and with ``num_samples`` codes, mean KL (absent for the
    deterministic baseline: the caller reports NaN), and two test
    cross-entropies: ``ce_sampled`` of the prediction averaged over the codes (the test log
    loss) and ``ce_single``, ``-log q(y | z)`` averaged over the codes (what ``H(Y) - CE``
    needs to bound ``I(Z; Y)``; `label_entropy`).
    ``seed_axis``: params ``[K, nb, ...]``, keys ``[K]``, metrics ``[K, nb]``. With a
    ``mesh`` each chunk of ``eval_batch`` images is split over its devices (a remainder that
    does not split evenly runs replicated)."""

    def one(params, images, labels, key):
        m = images.shape[0] // eval_batch * eval_batch  # full batches, then the remainder
        main = (images[:m].reshape(-1, eval_batch, *images.shape[1:]), jnp.arange(m // eval_batch))

        def chunk(inputs):
            x, i = inputs
            if mesh is not None and x.shape[0] % mesh.devices.size == 0:
                x = parallel.shard_batch(x, mesh)
            return model.predict(
                params, data_lib.to_float(x), jax.random.fold_in(key, i), num_samples
            )

        # (tree maps: the deterministic baseline's `kl` is None)
        parts = jax.tree.map(lambda p: p.reshape(-1, *p.shape[2:]), jax.lax.map(chunk, main))
        if m < images.shape[0]:
            rest = chunk((images[m:], m // eval_batch))
            parts = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), parts, rest)
        probs_mean, probs_sampled, kl, log_probs_sampled = parts
        metrics = {
            "error_mean": jnp.mean(jnp.argmax(probs_mean, -1) != labels),
            "error_sampled": jnp.mean(jnp.argmax(probs_sampled, -1) != labels),
            "ce_sampled": -jnp.mean(
                jnp.log(jnp.take_along_axis(probs_sampled, labels[:, None], 1) + 1e-12)
            ),
            "ce_single": -jnp.mean(jnp.take_along_axis(log_probs_sampled, labels[:, None], 1)),
        }
        if kl is not None:
            metrics["kl"] = jnp.mean(kl)
        return metrics

    every_beta = jax.vmap(one, in_axes=(0, None, None, None))
    if seed_axis:
        every_beta = jax.vmap(every_beta, in_axes=(0, None, None, 0))
    return jax.jit(every_beta)


def _checkpoint_manager(workdir: str, method: str) -> ocp.CheckpointManager:
    return _common.checkpoint_manager(os.path.join(workdir, "checkpoints", method))


def sweep_init(config: ml_collections.ConfigDict, method: str, dataset: data_lib.Dataset):
    """``(model, init, (init_key, train_key, eval_key))`` of ``method``'s sweep: ``init(init_key)``
    is the train state of all its betas (with a leading seed axis when ``config.num_seeds >
    1``; one seed: no seed axis, the single-run program), jitted."""
    model = build(config, method, dataset.num_classes)
    nb = len(betas_of(config, method))
    steps_per_epoch = dataset.train_images.shape[0] // config.batch_size
    seeds = _common.seed_values(config)
    batched = len(seeds) > 1
    keys = _common.seed_keys(seeds, 3)
    schedule = optax.exponential_decay(
        config.learning_rate,
        transition_steps=config.lr_decay_epochs * steps_per_epoch,
        decay_rate=config.lr_decay,
        staircase=True,
    )
    tx = optax.adam(schedule, b1=config.adam_b1)
    sample = data_lib.to_float(jnp.asarray(dataset.train_images[: config.batch_size]))

    def init(key):
        params, bound_states = model.init(key, sample)
        return training.create_sweep_state(params, bound_states, tx, nb)

    return model, _common.jit_init(init, batched), keys


def check_checkpoints(config: ml_collections.ConfigDict, dataset: data_lib.Dataset, workdir: str):
    """Refuses a method's checkpoint in ``workdir`` that this run could not continue, with a
    `ValueError` that names the method, before anything is written (as `experiments.infomax`
    and `experiments.infomax_vae` refuse it):

    - one past this schedule's end: its evaluations past the end would be cut from
      results.json while the checkpoint stays, so a later rerun on the longer schedule would
      resume at its end, train nothing and report an earlier evaluation as the final one;
    - one of another model (its array shapes are not this config's train state), in a workdir
      whose ``config.json`` and ``results.json`` are gone (`_common.check_same_run` compares
      the settings they record, and warns where there are none): found only when the method's
      turn came, after ``config.json`` had been rewritten with the refused settings.
    """
    steps_per_epoch = dataset.train_images.shape[0] // config.batch_size
    num_steps = config.num_epochs * steps_per_epoch
    for method in config.methods:
        path = os.path.join(workdir, "checkpoints", method)
        try:
            start = _common.checkpoint_step_within(path, num_steps, "num_epochs", steps_per_epoch)
        except ValueError as e:
            raise ValueError(f"{method}: {e}") from None
        if start:
            _, init, (init_key, _, _) = sweep_init(config, method, dataset)
            manager = _checkpoint_manager(workdir, method)
            try:
                _common.check_checkpoint_fits(manager, start, jax.eval_shape(init, init_key))
            except ValueError as e:
                raise ValueError(f"{method}: {e}") from None
            finally:
                manager.close()


def label_entropy(labels: np.ndarray, num_classes: int) -> float:
    """``H(Y)`` of the empirical label distribution (nats): ``I(Z; Y) >= H(Y) - CE`` for the
    single-code cross-entropy ``CE = E_{x, y} E_{z ~ q(z|x)} [-log q(y | z)]`` (the eval rows'
    ``ce_single``; ``ce_sampled``, the cross-entropy of the prediction averaged over several
    codes, bounds the information in all of them together instead)."""
    p = np.bincount(labels, minlength=num_classes) / len(labels)
    p = p[p > 0]
    return float(-np.sum(p * np.log(p)))


def split_validation(dataset: data_lib.Dataset, count: int, seed: int):
    """``(train dataset without the held-out images, (val_images, val_labels))``: ``count``
    training images chosen by a seeded permutation (none: ``count`` 0, ``None`` for the pair).
    Drawn once per run (from ``config.seed``) and shared by all of its seeds."""
    if count <= 0:
        return dataset, None
    n = dataset.train_images.shape[0]
    if count >= n:
        raise ValueError(
            f"`config.validation_examples` ({count}) must be smaller than the {n} training images."
        )
    perm = np.random.default_rng([seed, 1]).permutation(n)
    val, train = np.sort(perm[:count]), np.sort(perm[count:])
    held_out = (dataset.train_images[val], dataset.train_labels[val])
    return dataset._replace(
        train_images=dataset.train_images[train], train_labels=dataset.train_labels[train]
    ), held_out


def method_entry(method: str, betas, history: list[dict], **extra) -> dict:
    """A method's results: its history, the last evaluation per beta (``final``) and the
    evaluation with the lowest validation error per beta (``selected``; a tie, common on a few
    hundred validation images, goes to the earliest epoch; without a validation split, the
    last). With several seeds (rows with a ``seed``) both are chosen per beta and
    seed (kept in ``final_per_seed`` and ``selected_per_seed``) and ``final`` / ``selected``
    hold their mean over seeds, with ``*_std`` and ``num_seeds`` (`_common.mean_over_seeds`):
    seeds that picked other epochs give a mean ``step`` / ``epoch`` between them (19.5 for 13
    and 26, with ``step_std``), no evaluation's own."""
    seeds = list(dict.fromkeys(r.get("seed") for r in history))
    final, selected = [], []
    for beta in betas:
        for seed in seeds:
            rows = [r for r in history if r["beta"] == beta and r.get("seed") == seed]
            if rows:
                key = "val_error_mean" if "val_error_mean" in rows[0] else None
                final.append(rows[-1])
                selected.append(min(rows, key=lambda r: r[key]) if key else rows[-1])
    entry = dict(method=method, betas=list(betas), history=history)
    if len(seeds) > 1:
        entry.update(final_per_seed=final, selected_per_seed=selected)
        final, selected = (
            _common.mean_over_seeds(rows, ("method", "beta")) for rows in (final, selected)
        )
    return dict(entry, final=final, selected=selected, **extra)


def skip_restored_steps(progress: tqdm, steps: int) -> None:
    """Advance ``progress`` by ``steps`` restored from a checkpoint without counting them in its
    rate, as tqdm's ``initial`` does (an ``update`` read them as trained at once: the rate 7x
    the real one and the time left a fraction of it after a resume)."""
    progress.n += steps
    if not progress.disable:  # (a disabled bar has no `initial`)
        progress.initial += steps
        progress.last_print_n = progress.n
        progress.refresh()


def run_method(
    config, method, dataset, validation, progress, writer, on_eval, *, workdir: str, mesh
) -> dict:
    """Trains (or resumes) every beta of ``method``; returns its results entry."""
    manager = _checkpoint_manager(workdir, method)
    try:
        return _train_method(
            config, method, dataset, validation, progress, writer, on_eval,
            workdir=workdir, mesh=mesh, manager=manager,
        )  # fmt: skip
    finally:
        manager.close()  # (after waiting for a save in flight)


def _train_method(
    config, method, dataset, validation, progress, writer, on_eval, *, workdir, mesh, manager
) -> dict:
    model, init, (init_key, train_key, eval_key) = sweep_init(config, method, dataset)
    betas = betas_of(config, method)
    nb = len(betas)
    num_train = dataset.train_images.shape[0]
    steps_per_epoch = num_train // config.batch_size
    num_steps = config.num_epochs * steps_per_epoch
    chunk_steps = config.eval_every_epochs * steps_per_epoch
    seeds = _common.seed_values(config)
    batched = len(seeds) > 1  # one seed: no seed axis (the single-run program)
    state = parallel.replicate(init(init_key), mesh)  # restored checkpoints take this layout too
    start = manager.latest_step() or 0
    # train_s: training chunks, compilation included (in the first); clock: [step, train_s]
    # at each evaluation (`_common.train_time_until`).
    history, train_s, clock = [], 0.0, []
    if start:
        state = _common.restore_checkpoint(manager, start, state)
        # The evaluations up to the checkpoint (which `check_checkpoints` keeps within
        # this schedule), and the training time spent so far.
        earlier = on_eval.previous(method)
        history = [r for r in earlier.get("history", []) if r["step"] <= start]
        train_s, clock = _common.train_time_until(earlier, start)
        if not history:  # results.json gone: the evaluations are in metrics.jsonl too
            history = _common.evaluations_from_metrics(
                workdir, start, ("beta", "seed", "step"), "eval", {"method": method}, f"{method}: "
            )
        if start == num_steps and not history:
            raise ValueError(
                f"{method}: the checkpoint in {manager.directory} is at this schedule's end "
                f"(step {start}) and neither results.json nor metrics.jsonl holds an evaluation "
                "of it; use a fresh --workdir."
            )
        print(f"{method}: resumed from the checkpoint at step {start}.")
        skip_restored_steps(progress, start)

    run = training.make_sweep_chunk(
        model.loss,
        train_key,
        ema_decay=config.ema_decay,
        sequential=model.method == "mige",
        mesh=mesh,
        num_seeds=len(seeds) if batched else None,
    )
    evaluate = make_eval_fn(model, config.test_samples, config.eval_batch_size, batched, mesh)
    images, labels, test_images, test_labels = parallel.replicate(
        (dataset.train_images, dataset.train_labels, dataset.test_images, dataset.test_labels),
        mesh,
    )
    betas_arr = jnp.asarray(betas, jnp.float32)
    step = start
    while step < num_steps:
        n = min(chunk_steps, num_steps - step)
        state, metrics, seconds = _common.run_sweep_chunk(
            run, state, images, labels, betas_arr, seed=seeds if batched else seeds[0],
            batch_size=config.batch_size, step=step, num_steps=n,
            setting_names=[f"method {method!r} with beta {b}" for b in betas],
        )  # fmt: skip
        train_s += seconds
        step += n
        averaged = training.averaged_params(state, config.ema_decay)
        evals = jax.device_get(evaluate(averaged, test_images, test_labels, eval_key))
        # No rate for the deterministic baseline: NaN, made here (`ib.Prediction`), not on the
        # device, so that `jax_debug_nans` runs the whole sweep.
        evals.setdefault("kl", np.full_like(evals["error_mean"], np.nan))
        if validation is not None:
            val = jax.device_get(evaluate(averaged, *validation, eval_key))
            evals["val_error_mean"] = val["error_mean"]
            evals["val_error_sampled"] = val["error_sampled"]
        if not batched:  # a seed axis of one
            metrics = {k: v[:, None] for k, v in metrics.items()}
            evals = {k: v[None] for k, v in evals.items()}
        for b, beta in enumerate(betas):
            for k, seed in enumerate(seeds):
                train_row = {name: float(np.mean(v[:, k, b])) for name, v in metrics.items()}
                head = {"method": method, "beta": beta, **({"seed": seed} if batched else {})}
                writer.write({**head, "step": step, "kind": "train", **train_row})
                row = {
                    **head,
                    "step": step,
                    "epoch": step / steps_per_epoch,
                    **{name: float(v[k, b]) for name, v in evals.items()},
                    "train_ce": train_row["ce"],
                    "train_penalty": train_row["penalty"],
                    "train_accuracy": train_row["accuracy"],
                    # (`kl` here is the test split's; a train row's, its batches')
                    **({"train_kl": train_row["kl"]} if "kl" in train_row else {}),
                }
                writer.write({"kind": "eval", **row})
                history.append(row)
        # The evaluation is written before the checkpoint: a run stopped between the two
        # resumes at the previous checkpoint and evaluates again (the other way round, a
        # checkpoint at the last step had no evaluation and an earlier one was reported).
        clock.append([step, train_s])
        on_eval(method, history, complete=step >= num_steps, train_s=train_s, train_s_by_step=clock)
        _common.save_checkpoint(manager, step, state, wait=True)
        progress.update(n)
        # The latest epoch's test error of the best beta, its mean over the seeds (the table
        # picks epochs on validation). The method is in the bar's description.
        latest = history[-nb * len(seeds) :]
        best = min(np.mean([r["error_mean"] for r in latest if r["beta"] == b]) for b in betas)
        progress.set_postfix(test_error_best_beta=f"{100 * best:.2f}%")
    return method_entry(
        method, betas, history, train_s=train_s, train_s_by_step=clock, steps=num_steps
    )


def summary(results: dict) -> str:
    """The table of selected evaluations (lowest validation error per beta; without a
    validation split, the last), in %."""
    has_val = any("val_error_mean" in r for e in results["methods"].values() for r in e["selected"])
    samples = results.get("config", {}).get("test_samples", 12)
    # Methods kept from an earlier run in the workdir may have trained for another number of
    # epochs than this run's: then every row names the epoch of its last evaluation.
    lasts = {last["epoch"] for e in results["methods"].values() for last in e["final"]}
    mixed = lasts != {results["num_epochs"]}
    rows = []
    for entry in results["methods"].values():
        for r, last in zip(entry["selected"], entry["final"], strict=True):
            rows.append(
                {
                    "method": r["method"],
                    "beta": f"{r['beta']:g}",
                    "epoch": f"{r['epoch']:g}",
                    **({"last_epoch": f"{last['epoch']:g}"} if mixed else {}),
                    **({"val_err": 100 * r.get("val_error_mean", np.nan)} if has_val else {}),
                    "test_err": 100 * r["error_mean"],
                    **({"test_err_std": 100 * r["error_mean_std"]} if "num_seeds" in r else {}),
                    f"test_err_{samples}": 100 * r["error_sampled"],
                    "last_test_err": 100 * last["error_mean"],
                    # (A method kept from an earlier run reads its NaN KL back as null.)
                    "KL": _common.number(r["kl"]),
                    # H(Y) - single-code CE (results written before `ce_single`: nan, no bound).
                    "I(Z;Y)>=": results["label_entropy"] - _common.number(r.get("ce_single")),
                    "train_err": 100 * (1 - r["train_accuracy"]),
                }
            )
    cols = list(dict.fromkeys(c for r in rows for c in r))
    rows = [{c: r.get(c, "") for c in cols} for r in rows]
    seeds = results.get("num_seeds", 1)
    chosen = (
        "the evaluation with the lowest validation error per beta (errors in %: val, "
        if has_val
        else "the last evaluation per beta, no validation split (errors in %: "
    )
    epochs = f"{results['num_epochs']} epochs" + (
        " (methods kept from earlier runs: their last_epoch)" if mixed else ""
    )
    head = (
        f"\n{results['dataset']}, {epochs}; {chosen}test at the posterior "
        f"mean, test with {samples} samples, test at the last epoch; KL in nats, "
        "I(Z;Y)>= the lower bound H(Y) - CE of one code, train_err: the training batches' running "
        "error since the previous evaluation, weights as they trained, one sampled code)"
        + (f"; mean over {seeds} seeds, test_err_std their spread" if seeds > 1 else "")
        + "\n"
    )
    walls = ", ".join(
        f"{m} {e['train_s']:.0f} s" for m, e in results["methods"].items() if "train_s" in e
    )
    table = _common.format_table(rows, cols, floatfmt="{:.2f}")
    return head + table + f"\ntraining wall time (compilation included): {walls}"


def plot(workdir: str, results: dict) -> None:
    fig, ax = _common.subplots(figsize=(6, 4))
    seeds = 1
    for method, entry in results["methods"].items():
        final = entry["selected"]
        # With several seeds: their mean, and their spread (one standard deviation).
        seeds = max(seeds, final[0].get("num_seeds", 1))
        error = np.array([100 * _common.number(r["error_mean"]) for r in final])
        spread = np.array([100 * _common.number(r.get("error_mean_std", 0.0)) for r in final])
        if method == "deterministic":
            ax.axhline(error[0], color="k", ls="--", label="deterministic")
            if spread[0] > 0:
                ax.axhspan(error[0] - spread[0], error[0] + spread[0], color="k", alpha=0.1)
            continue
        betas = [r["beta"] for r in final]
        ax.errorbar(betas, error, yerr=spread if spread.any() else None, fmt="o-", capsize=3,
                    label=method)  # fmt: skip
    ax.set(
        xscale="log",
        xlabel="beta",
        ylabel="test error (%), posterior mean",
        title="error vs beta" + (f" (mean ± std over {seeds} seeds)" if seeds > 1 else ""),
    )
    ax.legend()
    fig.tight_layout()
    _common.save_figure(fig, os.path.join(workdir, "error_vs_beta.png"), dpi=100)

    fig, axes = _common.subplots(1, 2, figsize=(12, 4))
    runs = [(m, beta, e) for m, e in results["methods"].items() for beta in e["betas"]]
    for k, (method, beta, entry) in enumerate(runs):
        rows = [r for r in entry["history"] if r["beta"] == beta]
        label = method if method == "deterministic" else f"{method} beta={beta:g}"
        # One colour per run in both panels (the KL panel leaves the deterministic one out).
        style = dict(label=label, color=f"C{k % 10}", ls=("-", "--", ":")[k // 10 % 3])
        epochs, error = _common.mean_curve(rows, "error_mean")
        axes[0].plot(epochs, 100 * np.asarray(error), **style)
        if method != "deterministic":  # (no KL: its code is not stochastic)
            axes[1].plot(*_common.mean_curve(rows, "kl"), **style)
    axes[0].set(xlabel="epoch", ylabel="test error (%)", yscale="log", title="test error (mean z)")
    axes[1].set(
        xlabel="epoch", ylabel="nats", yscale="log", title="E KL(q(z|x) || N(0, I)) >= I(X; Z)"
    )
    for ax in axes:
        _common.plain_log_ticks(ax)
        ax.xaxis.set_major_locator(_common.integer_ticks())
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    _common.save_figure(fig, os.path.join(workdir, "curves.png"), dpi=100)


@_cli.locks_workdir
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, mesh=None) -> dict:
    """Runs (or finishes) every method's sweep; writes everything into ``workdir``.

    ``mesh``: the devices to train data-parallel on (default: all, `mi_jax.parallel`).
    """
    with _common.config_checks():  # before anything is written
        _common.check_path_encoding(workdir)  # (its checkpoints')
        _check_config(config)
        mesh = parallel.checked_mesh(mesh)
        parallel.check_batch_size(config.batch_size, mesh, "config.batch_size")
        dataset = _common.load_config_dataset(config)
        dataset, validation = split_validation(dataset, config.validation_examples, config.seed)
        if validation is not None:
            validation = parallel.replicate(validation, mesh)
        for method in config.methods:  # bad names and sizes fail before any training
            build(config, method, dataset.num_classes)
        if config.batch_size > dataset.train_images.shape[0]:
            raise ValueError(
                f"`config.batch_size` ({config.batch_size}) exceeds the "
                f"{dataset.train_images.shape[0]} training images."
            )
        may_differ = RESUMABLE + settings_of_new_methods(workdir)
        _common.check_same_run(workdir, config, may_differ)
        steps_per_epoch = dataset.train_images.shape[0] // config.batch_size
        num_steps = config.num_epochs * steps_per_epoch
        check_checkpoints(config, dataset, workdir)
    os.makedirs(workdir, exist_ok=True)
    results_path = os.path.join(workdir, "results.json")
    config_dict = _common.to_builtin(config.to_dict())
    previous = {}
    if os.path.exists(results_path):
        old = _common.read_json(results_path)
        if not _common.config_changes(old.get("config", {}), config, may_differ):
            previous = old["methods"]
    _common.write_config(workdir, config)

    results = {
        "dataset": config.dataset,
        "num_epochs": config.num_epochs,
        # Of the test labels: the eval rows' cross-entropies are test-set averages.
        "label_entropy": label_entropy(dataset.test_labels, dataset.num_classes),
        "devices": mesh.devices.size,
        "num_seeds": config.num_seeds,
        "config": config_dict,
        # Methods run earlier in this workdir: kept, each until it is rerun (an interrupted
        # rerun of a finished method's predecessor keeps it).
        "methods": dict(previous),
    }

    def on_eval(method, history, **extra):  # complete, train_s, train_s_by_step
        entry = method_entry(method, betas_of(config, method), history, **extra)
        results["methods"][method] = entry
        _common.write_json(results_path, results)

    on_eval.previous = lambda m: dict(previous.get(m, {}))

    def finished(entry):  # complete, and on this schedule
        return entry.get("complete") and entry.get("steps") == num_steps

    todo = [m for m in config.methods if not finished(previous.get(m, {}))]
    progress = tqdm(total=len(todo) * config.num_epochs * steps_per_epoch, desc="ib")
    writer = _common.JsonlWriter(os.path.join(workdir, "metrics.jsonl"))
    t0 = time.perf_counter()
    try:
        for method in config.methods:
            if method not in todo:
                results["methods"][method] = previous[method]
                print(f"{method}: finished earlier, kept from {results_path}.")
                continue
            progress.set_description(f"ib {method}")
            progress.set_postfix()  # (the previous method's error goes)
            entry = run_method(
                config, method, dataset, validation, progress, writer, on_eval,
                workdir=workdir, mesh=mesh,
            )  # fmt: skip
            results["methods"][method] = {**entry, "complete": True}
            _common.write_json(results_path, results)
    finally:
        progress.close()
        writer.close()
    results["seconds"] = time.perf_counter() - t0
    _common.write_json(results_path, results)
    _common.write_csv(
        os.path.join(workdir, "results.csv"),
        [r for entry in results["methods"].values() for r in entry["selected"]],
    )
    plot(workdir, results)
    print(summary(results))
    return results


if __name__ == "__main__":
    _cli.run_experiment("ib", train_and_evaluate)
