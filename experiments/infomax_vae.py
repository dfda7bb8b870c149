r"""InfoMax-VAE against a plain VAE and a beta-VAE (`mi_jax.vae`), trained side by side.

  python -m experiments.infomax_vae --config configs/infomax_vae.py --workdir /tmp/infomax_vae

Every model of ``config.models`` (a ``beta`` on the KL and a ``gamma`` on the MI bound each) is
one setting of a single vmapped program: same initialization, batches and noise. Each model
has its own critic, always trained to maximize the bound, so each reports an estimate of
``I(X; Z)``; only the InfoMax-VAE's encoder is pushed by it (``gamma > 0``). ``num_seeds = K``
adds a seed axis (K independent runs of every model); ``table`` then holds the mean and std
over seeds and ``table_per_seed`` each seed's rows; ``table_num_epochs`` the training they
describe (a longer rerun keeps the earlier run's table until its own probes replace it).

Evaluation on the test split (every ``eval_every_epochs``): the ELBO (KL weight 1, one code per
image; a bound on ``log p(x)`` with ``config.binarize``, on grey levels the objective only),
reconstruction log-likelihood, the rate ``KL(q(z|x) || N(0, I))`` (an upper bound on
``I(X; Z)``), the critic's bound on test batches (a lower bound, for the critic's model); at the
end, the linear-probe test accuracy of the posterior mean, next to raw pixels. The bounds need
equal batches, so these metrics see the test images in full batches of ``batch_size`` only (a
remainder is left out: 300 of digits' 360 at batch 100; ``results.json`` records the count
as ``eval_test_images`` of ``test_images``); the probes see every test image.

Writes to the workdir: ``config.json``; ``metrics.jsonl``; ``results.json`` (rewritten after
every evaluation); ``results.csv``; ``samples.png`` (per model: test images, reconstructions,
samples from the prior); ``curves.png``; ``checkpoints/`` (Orbax; a rerun resumes). A NaN loss
stops the run naming the model and step; what was written stays.
"""

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm import tqdm

from experiments import _cli, _common
from mi_jax import _checks, parallel, probes, training, vae
from mi_jax import data as data_lib


def build(config: ml_collections.ConfigDict, image_shape) -> vae.InfoMaxVAE:
    """The model ``config`` describes; unknown names and bad sizes raise here."""
    return vae.InfoMaxVAE(
        image_shape=tuple(image_shape),
        latent_dim=config.latent_dim,
        encoder_hparams=_common.hashable_hparams(config.encoder_hparams.to_dict()),
        decoder_hidden=tuple(config.decoder_hidden),
        bound=config.bound,
        bound_hparams=_common.hashable_hparams(config.bound_hparams.to_dict()),
        critic=config.critic,
        critic_hparams=_common.hashable_hparams(config.critic_hparams.to_dict()),
        critic_clip=config.critic_clip or None,
    )


def settings_of(config: ml_collections.ConfigDict) -> tuple[list[str], dict[str, np.ndarray]]:
    """Model names and ``{"beta": [S], "gamma": [S]}``; bad entries raise, naming the field."""
    names = list(config.models)
    if not names:
        raise ValueError("`config.models` is empty: give at least one {beta, gamma} model.")
    values = {"beta": [], "gamma": []}
    for name in names:
        entry = config.models[name]
        if not _common.is_map(entry):
            raise ValueError(
                f"`config.models.{name}` must be a dict of beta and gamma, got {entry!r}."
            )
        unknown = set(entry) - set(values)
        if unknown:
            raise ValueError(
                f"unknown fields {sorted(unknown)} in `config.models.{name}`; known: beta, gamma."
            )
        for key in values:
            v = entry.get(key, 1.0 if key == "beta" else 0.0)
            _checks.check_weight(v, f"config.models.{name}.{key}")  # "4" and True were taken
            values[key].append(float(v))
    return names, {k: np.asarray(v, np.float32) for k, v in values.items()}


# What a rerun in the same workdir may change (`_common.check_same_run`): the checkpoint resumes
# under a longer schedule, another evaluation cadence or data path, and the probes (fitted after
# training, on every run) may take other settings.
RESUMABLE = ("num_epochs", "eval_every_epochs", "data_dir", "probe")
# Settings added after runs were written, with the value those runs had.
ADDED = {"binarize": False}

# The linear probe's settings (`mi_jax.probes.fit_probe`), all in `config.probe`.
PROBE_FIELDS = ("l2", "max_iter", "tol")


def _check_config(config: ml_collections.ConfigDict) -> None:
    _common.check_num_seeds(config, consecutive=True)  # seeds seed + k
    _common.check_learning_rate(config)
    _common.check_int_fields(config, "num_epochs", "eval_every_epochs", "latent_dim")
    _common.check_config_batch_size(config)  # the MI bound reads every batch
    settings_of(config)
    # Used after training: a misspelt or missing key must not cost the run.
    if unknown := sorted(set(config.probe) - {*PROBE_FIELDS, "cache_dir"}):
        raise ValueError(
            f"unknown fields {unknown} in `config.probe`; known: {[*PROBE_FIELDS, 'cache_dir']}."
        )
    if missing := [name for name in PROBE_FIELDS if name not in config.probe]:
        raise ValueError(f"`config.probe` lacks {missing} (it needs {PROBE_FIELDS}).")
    probes.check_hparams(
        prefix="config.probe.", **{name: config.probe[name] for name in PROBE_FIELDS}
    )
    _common.check_probe_cache_dir(config)


def make_eval_fn(model: vae.InfoMaxVAE, batch_size: int, seed_axis: bool = False, mesh=None):
    """``evaluate(params [S], bound_states [S], images [M, ...] uint8, key) -> {name: [S]}``
    (the test split in full batches of ``batch_size``; the bound needs equal batches).
    ``seed_axis``: params and states ``[K, S]``, keys ``[K]``, metrics ``[K, S]``. With a
    ``mesh`` each batch is split over its devices (the bound still sees the whole batch)."""

    def one(params, bound_states, images, key):
        m = images.shape[0] // batch_size * batch_size
        batches = images[:m].reshape(-1, batch_size, *images.shape[1:])

        def chunk(inputs):
            x, i = inputs
            x = data_lib.to_float(x)
            if mesh is not None:
                x = parallel.shard_batch(x, mesh)
            _, (metrics, _) = model.loss(
                params, bound_states, x, jax.random.fold_in(key, i), 1.0, 0.0
            )
            return {k: metrics[k] for k in ("elbo", "recon", "kl", "mi", "infonce")}

        out = jax.lax.map(chunk, (batches, jnp.arange(batches.shape[0])))
        return jax.tree.map(jnp.mean, out)

    every_model = jax.vmap(one, in_axes=(0, 0, None, None))
    if seed_axis:
        every_model = jax.vmap(every_model, in_axes=(0, 0, None, 0))
    return jax.jit(every_model)


@functools.lru_cache(maxsize=8)
def _posterior_mean_fn(encoder):
    """One function object per encoder: `probes.extract_features` jits it, and jit reuses a
    compilation only for the same function (a closure per call compiled again per seed)."""

    def apply(p, x):
        return (encoder.apply(p, data_lib.to_float(x))[0],)

    return apply


def probe_accuracies(
    config, model, params, dataset, names, pixels: bool = True, mesh=None
) -> list[dict]:
    """Linear probe on the posterior mean of every model, and on raw pixels (if ``pixels``);
    the features extracted over ``mesh``'s devices, if given."""
    apply = _posterior_mean_fn(model.encoder)
    rows = []
    labels = (dataset.train_labels, dataset.test_labels)
    # (`config.probe.cache_dir`: a fit made before on the same features is read back)
    cache_dir = _common.probe_cache_dir(config)
    settings = {name: config.probe[name] for name in PROBE_FIELDS}
    for i, name in enumerate(names):
        enc = _common.leaf_slice(params["encoder"], i)
        (train,) = probes.extract_features(apply, enc, dataset.train_images, mesh=mesh)
        (test,) = probes.extract_features(apply, enc, dataset.test_images, mesh=mesh)
        result, _ = _common.fit_probe_cached(
            cache_dir, train, labels[0], test, labels[1], kind="linear",
            num_classes=dataset.num_classes, **settings,
        )  # fmt: skip
        rows.append(
            {
                "model": name,
                "probe_test_accuracy": result.test_accuracy,
                "probe_converged": result.converged,  # (L-BFGS reached probe.tol)
            }
        )
    if not pixels:
        return rows
    flat = lambda a: a.reshape(len(a), -1) / 255.0  # noqa: E731
    result, _ = _common.fit_probe_cached(
        cache_dir, flat(dataset.train_images), labels[0], flat(dataset.test_images), labels[1],
        kind="linear", num_classes=dataset.num_classes, **settings,
    )  # fmt: skip
    rows.append(
        {
            "model": "raw pixels",
            "probe_test_accuracy": result.test_accuracy,
            "probe_converged": result.converged,
        }
    )
    return rows


def plot_samples(path, model, params, dataset, names, key, count: int = 10) -> None:
    """Per model: ``count`` test images (at most all of them), their reconstructions, as many
    prior samples."""
    count = min(count, len(dataset.test_images))
    originals = data_lib.to_float(jnp.asarray(dataset.test_images[:count]))
    rows = [("test images", np.asarray(originals))]
    # Compiled once for all models (op by op: 26 small compilations, 9 % of the digits run).
    reconstruct, generate = jax.jit(model.reconstruct), jax.jit(model.generate, static_argnums=2)
    for i, name in enumerate(names):
        p = _common.leaf_slice(params, i)
        rows.append((f"{name}: reconstructions", np.asarray(reconstruct(p, originals))))
        rows.append((f"{name}: samples", np.asarray(generate(p, key, count))))
    fig, axes = _common.subplots(
        len(rows), count, figsize=(count * 0.9 + 1, len(rows) * 1.0), squeeze=False
    )
    for r, (title, images) in enumerate(rows):
        for c in range(count):
            ax = axes[r, c]
            ax.imshow(images[c, ..., 0], cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(title, rotation=0, ha="right", va="center", fontsize=7)
    fig.tight_layout()
    _common.save_figure(fig, path, dpi=100)


def plot_curves(path, history: list[dict], names) -> None:
    fig, axes = _common.subplots(1, 3, figsize=(15, 4))
    for k, name in enumerate(names):  # one colour per model in every panel
        rows = [r for r in history if r["model"] == name]
        color = f"C{k % 10}"
        axes[0].plot(*_common.mean_curve(rows, "elbo"), "o-", color=color, label=name)
        kl, mi = _common.mean_curve(rows, "kl"), _common.mean_curve(rows, "mi")
        axes[1].plot(*kl, "o-", color=color, label=f"{name}: KL (upper)")
        axes[1].plot(*mi, "x--", color=color, label=f"{name}: bound (lower)")
        axes[2].plot(*_common.mean_curve(rows, "recon"), "o-", color=color, label=name)
    axes[0].set(xlabel="epoch", ylabel="nats", title="test ELBO")
    axes[1].set(xlabel="epoch", ylabel="nats", title="I(X; Z): rate (upper) and bound (lower)")
    axes[2].set(xlabel="epoch", ylabel="nats", title="test reconstruction log-likelihood")
    for ax in axes:
        ax.xaxis.set_major_locator(_common.integer_ticks())
        ax.legend(fontsize=7)
    fig.tight_layout()
    _common.save_figure(fig, path, dpi=100)


def summary(results: dict) -> str:
    cols = [
        "model", "beta", "gamma", "elbo", "recon", "kl", "mi", "infonce", "train_mi",
        "probe_test_accuracy",
    ]  # fmt: skip
    count = (
        f" ({results['eval_test_images']} of the {results['test_images']} test images: full "
        "batches)"
        if "eval_test_images" in results
        else ""
    )
    head = (
        f"\n{results['dataset']}, {results['num_epochs']} epochs; test ELBO, reconstruction, "
        f"rate KL, the {results['bound']} bound and InfoNCE on test batches{count} (train_mi: "
        "the bound's mean over the training batches since the previous evaluation) in nats; "
        "linear probe on the posterior mean\n"
    )
    if results.get("num_seeds", 1) > 1:
        cols += ["elbo_std", "probe_test_accuracy_std"]
        head = head[:-1] + f"; mean over {results['num_seeds']} seeds, *_std their spread\n"
    rows = [  # raw pixels are fitted once: no spread to show
        {c: "-" if c.endswith("_std") and r.get("num_seeds") == 1 else r.get(c, "") for c in cols}
        for r in results["table"]
    ]
    unfinished = [r["model"] for r in results["table"] if r.get("probe_converged") is False]
    return head + _common.format_table(rows, cols) + _common.unfinished_probes_note(unfinished)


@_cli.locks_workdir
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, mesh=None) -> dict:
    """Trains (or resumes) every model; writes everything into ``workdir``; returns results.

    ``mesh``: the devices to train data-parallel on (default: all, `mi_jax.parallel`).
    """
    with _common.config_checks():  # before anything is written
        _common.check_path_encoding(workdir)  # (its checkpoints')
        _check_config(config)
        mesh = parallel.checked_mesh(mesh)
        parallel.check_batch_size(config.batch_size, mesh, "config.batch_size")
        names, settings = settings_of(config)
        dataset = _common.load_config_dataset(config)
        if config.binarize:  # the data, not the training noise: one draw for every seed and run
            dataset = data_lib.binarize(dataset)
        model = build(config, dataset.image_shape)
        num_train, num_test = dataset.train_images.shape[0], dataset.test_images.shape[0]
        if config.batch_size > min(num_train, num_test):
            raise ValueError(
                f"`config.batch_size` ({config.batch_size}) exceeds the training or test images."
            )
        _common.check_same_run(workdir, config, RESUMABLE, ADDED)
        steps_per_epoch = num_train // config.batch_size
        num_steps = config.num_epochs * steps_per_epoch
        chunk_steps = config.eval_every_epochs * steps_per_epoch
        checkpoints = os.path.join(workdir, "checkpoints")
        start = _common.checkpoint_step_within(
            checkpoints, num_steps, "num_epochs", steps_per_epoch
        )
    seeds = _common.seed_values(config)
    batched = len(seeds) > 1  # one seed: no seed axis (the single-run program)
    init_key, train_key, eval_key = _common.seed_keys(seeds, 3)
    tx = optax.adam(config.learning_rate)
    sample = data_lib.to_float(jnp.asarray(dataset.train_images[: config.batch_size]))

    def init(key):
        params, bound_states = model.init(key, sample)
        return training.create_sweep_state(params, bound_states, tx, len(names))

    # (Restored checkpoints take this layout too.)
    state = parallel.replicate(_common.jit_init(init, batched)(init_key), mesh)
    # (A checkpoint of another model is refused before config.json is written.)
    manager, state = _common.resume(checkpoints, start, state)
    _common.write_config(workdir, config)

    def loss_fn(params, bound_states, x, labels, key, setting):
        del labels
        return model.loss(params, bound_states, x, key, setting["beta"], setting["gamma"])

    run = training.make_sweep_chunk(
        loss_fn, train_key, mesh=mesh, num_seeds=len(seeds) if batched else None
    )
    evaluate = make_eval_fn(model, config.batch_size, batched, mesh)
    images, labels, test_images = parallel.replicate(
        (dataset.train_images, dataset.train_labels, dataset.test_images), mesh
    )
    settings_dev = jax.tree.map(jnp.asarray, settings)
    results_path = os.path.join(workdir, "results.json")
    history, train_s, clock = [], 0.0, []  # clock: [step, train_s] at each evaluation
    earlier = {}
    if start and os.path.exists(results_path):
        earlier = _common.read_json(results_path)
        history = [r for r in earlier["history"] if r["step"] <= start]
        # The training time of the steps resumed from (`_common.train_time_until`).
        train_s, clock = _common.train_time_until(earlier, start)
    elif start:  # results.json gone: the evaluations are in metrics.jsonl too (a table of
        # blanks was written from an empty history); their training time is not
        history = _common.evaluations_from_metrics(workdir, start, ("model", "seed", "step"))
    writer = _common.JsonlWriter(os.path.join(workdir, "metrics.jsonl"))
    progress = tqdm(total=num_steps, initial=start, desc="infomax_vae")
    results = {
        "dataset": config.dataset,
        "num_epochs": config.num_epochs,
        "bound": config.bound,
        "devices": mesh.devices.size,
        "num_seeds": len(seeds),
        "config": _common.to_builtin(config.to_dict()),
        "models": {n: {k: float(v[i]) for k, v in settings.items()} for i, n in enumerate(names)},
        # The evaluation's full batches (`make_eval_fn`); the probes see all test images.
        "test_images": num_test,
        "eval_test_images": num_test // config.batch_size * config.batch_size,
    }
    if "table" in earlier:  # a finished shorter run's table stays until this run's replaces it
        results["table_num_epochs"] = earlier.get("table_num_epochs", earlier["num_epochs"])
        results.update({k: earlier[k] for k in ("table", "table_per_seed") if k in earlier})
    step = start
    try:
        while step < num_steps:
            n = min(chunk_steps, num_steps - step)
            state, metrics, seconds = _common.run_sweep_chunk(
                run, state, images, labels, settings_dev, seed=seeds if batched else seeds[0],
                batch_size=config.batch_size, step=step, num_steps=n,
                setting_names=[f"model {name!r}" for name in names],
            )  # fmt: skip
            train_s += seconds
            step += n
            evals = jax.device_get(
                evaluate(state.params, state.bound_states, test_images, eval_key)
            )
            if not batched:  # a seed axis of one
                metrics = {k: v[:, None] for k, v in metrics.items()}
                evals = {k: v[None] for k, v in evals.items()}
            for i, name in enumerate(names):
                for k, seed in enumerate(seeds):
                    row = {
                        "model": name,
                        **({"seed": seed} if batched else {}),
                        "step": step,
                        "epoch": step / steps_per_epoch,
                        **{key: float(v[k, i]) for key, v in evals.items()},
                        **{
                            f"train_{key}": float(np.mean(v[:, k, i])) for key, v in metrics.items()
                        },
                    }
                    writer.write(row)
                    history.append(row)
            # Results before the checkpoint: a run stopped between the two resumes at the
            # previous checkpoint and evaluates again (the other way round, a checkpoint at
            # the last step had no evaluation in results.json and an earlier one was used).
            clock.append([step, train_s])
            results.update(history=history, train_s=train_s, train_s_by_step=clock)
            _common.write_json(results_path, results)
            _common.save_checkpoint(manager, step, state, wait=True)
            progress.update(n)
            progress.set_postfix(
                elbo=" ".join(
                    f"{name} {np.mean(evals['elbo'][:, i]):.1f}" for i, name in enumerate(names)
                )
            )
    finally:
        manager.close()  # (after waiting for a save in flight)
        progress.close()
        writer.close()

    per_seed = []  # per seed: the last evaluation of every model with its probe
    final = {(r["model"], r.get("seed")): r for r in history[-len(names) * len(seeds) :]}
    for k, seed in enumerate(seeds):
        params = _common.leaf_slice(state.params, k) if batched else state.params
        for p in probe_accuracies(config, model, params, dataset, names, k == 0, mesh):
            key = (p["model"], seed if batched else None)
            per_seed.append({**results["models"].get(p["model"], {}), **final.get(key, {}), **p})
    results["table"], results["table_num_epochs"] = per_seed, config.num_epochs
    if batched:
        results["table_per_seed"] = per_seed
        results["table"] = _common.mean_over_seeds(per_seed, ("model", "beta", "gamma"))
    results.update(history=history, train_s=train_s, train_s_by_step=clock)
    _common.write_json(results_path, results)
    _common.write_csv(os.path.join(workdir, "results.csv"), results["table"])
    plot_samples(  # the first seed's models
        os.path.join(workdir, "samples.png"),
        model,
        _common.leaf_slice(state.params, 0) if batched else state.params,
        dataset,
        names,
        eval_key[0] if batched else eval_key,
    )
    plot_curves(os.path.join(workdir, "curves.png"), history, names)
    print(summary(results))
    return results


if __name__ == "__main__":
    _cli.run_experiment("infomax_vae", train_and_evaluate)
