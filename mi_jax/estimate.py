"""`estimate_mi`: MI between two sample arrays, in one call.

Standardize, hold out a test split, train a critic with a bound on minibatches, evaluate the
bound on the held-out split every ``eval_every`` steps, and stop when it has not improved for
``patience`` evaluations. Everything after the host-side checks is one compiled program: rounds
of training run in a `lax.while_loop` that ends when every seed has stopped, and ``seeds=K``
trains K critics (different initializations and minibatch orders) vmapped side by side.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mi_jax import _checks, training
from mi_jax.types import ArrayLike


@dataclasses.dataclass(frozen=True)
class MIEstimate:
    """The result of `estimate_mi`.

    Attributes:
      mi: the estimate in nats: the held-out bound at the best evaluation (a float), or ``[K]``
        estimates when ``seeds=K``.
      best_step: training step of that evaluation (``[K]`` with seeds).
      steps: ``[rounds]`` the training step of each evaluation.
      test_curve: ``[rounds]`` (or ``[K, rounds]``) held-out bound values; NaN after stopping.
      train_curve: ``[rounds]`` (or ``[K, rounds]``) mean training bound over each round.
      bound: the bound's name.
      critic: the critic's name.
    """

    mi: Any
    best_step: Any
    steps: np.ndarray
    test_curve: np.ndarray
    train_curve: np.ndarray
    bound: str
    critic: str


DEFAULTS = dict(
    bound="smile",
    critic="separable",
    critic_hparams={"hidden": (256, 256), "embed_dim": 32},
    batch_size=256,
    learning_rate=1e-3,
    max_steps=3000,
    eval_every=100,
    patience=5,
    test_fraction=0.2,
    max_test=2048,
)


def estimate_mi(
    x: ArrayLike,
    y: ArrayLike,
    *,
    bound: str = DEFAULTS["bound"],
    bound_hparams: dict[str, Any] | None = None,
    critic: str = DEFAULTS["critic"],
    critic_hparams: dict[str, Any] | None = None,
    batch_size: int = DEFAULTS["batch_size"],
    learning_rate: float = DEFAULTS["learning_rate"],
    max_steps: int = DEFAULTS["max_steps"],
    eval_every: int = DEFAULTS["eval_every"],
    patience: int = DEFAULTS["patience"],
    test_fraction: float = DEFAULTS["test_fraction"],
    max_test: int = DEFAULTS["max_test"],
    standardize: bool = True,
    seed: int = 0,
    seeds: int | None = None,
) -> MIEstimate:
    """Estimates I(X; Y) in nats from paired samples.

    Defaults (chosen on correlated Gaussians and their cubic transforms, dimensions 1-50, MI up
    to 10 nats): SMILE (tau = 5) trained with the JS gradient, a separable critic
    ``g(x)^T h(y)`` with two hidden layers of 256 and a 32-d embedding, Adam at 1e-3, batch 256,
    at most 3000 steps, evaluation every 100 steps on a 20 % held-out split (at most 2048
    samples), early stopping after 5 evaluations without improvement.

    Args:
      x: ``[N, dim_x]`` samples (``[N]`` is read as one dimension).
      y: ``[N, dim_y]`` samples paired with ``x``.
      bound: a registered bound name (`mi_jax.bounds.available_bounds`).
      bound_hparams: keyword hyperparameters of the bound, e.g. ``{"clip": 5.0}``.
      critic: a registered critic name (`mi_jax.critics.available_critics`).
      critic_hparams: keyword hyperparameters of the critic.
      batch_size: training minibatch size (capped at the training split's size).
      learning_rate: Adam's learning rate.
      max_steps: upper limit on training steps.
      eval_every: training steps between held-out evaluations.
      patience: evaluations without improvement before stopping.
      test_fraction: fraction of samples held out.
      max_test: cap on held-out samples used per evaluation (the score matrix is square).
      standardize: scale each column to zero mean and unit variance (train-split statistics).
      seed: seed for the split, the initialization and the minibatches.
      seeds: if set, train this many critics vmapped in one program and return all estimates.

    Returns:
      An `MIEstimate`.
    """
    x, y = _checks.check_samples(x, y, min_samples=8)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"`test_fraction` must lie in (0, 1), got {test_fraction}.")
    for name, value in (("batch_size", batch_size), ("max_steps", max_steps),
                        ("eval_every", eval_every), ("patience", patience)):
        if not (isinstance(value, int | np.integer) and value >= 1):
            raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    if seeds is not None and not (isinstance(seeds, int) and seeds >= 1):
        raise ValueError(f"`seeds` must be a positive integer or None, got {seeds!r}.")

    rng = np.random.default_rng(seed)
    n = x.shape[0]
    order = rng.permutation(n)
    n_test = max(2, int(round(test_fraction * n)))
    test_idx, train_idx = order[:n_test][:max_test], order[n_test:]
    if len(train_idx) < 2:
        raise ValueError(f"{n} samples leave fewer than 2 for training; pass more samples.")
    x = x.astype(np.float32)
    y = y.astype(np.float32)
    if standardize:
        x = _standardize(x, train_idx, "x")
        y = _standardize(y, train_idx, "y")
    x_train, y_train = jnp.asarray(x[train_idx]), jnp.asarray(y[train_idx])
    x_test, y_test = jnp.asarray(x[test_idx]), jnp.asarray(y[test_idx])
    batch = min(batch_size, len(train_idx))

    ensemble = training.make_ensemble([(bound, bound_hparams or {})], critic, critic_hparams)
    optimizer = optax.adam(learning_rate)
    rounds = -(-max_steps // eval_every)
    num_seeds = 1 if seeds is None else seeds
    run = _compiled_fit(ensemble, optimizer, batch, eval_every, rounds, patience)
    keys = jax.random.split(jax.random.key(seed), num_seeds)
    out = jax.device_get(run(keys, x_train, y_train, x_test, y_test))
    test_curve, train_curve, best_value, best_round = out
    if not np.all(np.isfinite(best_value)):
        raise training.NonFiniteError(
            f"bound {bound!r} gave a non-finite held-out value ({best_value}); try a lower "
            "`learning_rate` or another bound."
        )
    steps = (np.arange(rounds) + 1) * eval_every
    best_step = steps[best_round]
    if seeds is None:
        return MIEstimate(float(best_value[0]), int(best_step[0]), steps, test_curve[0],
                          train_curve[0], bound, critic)
    return MIEstimate(best_value, best_step, steps, test_curve, train_curve, bound, critic)


def _standardize(a: np.ndarray, train_idx: np.ndarray, name: str) -> np.ndarray:
    mean = a[train_idx].mean(axis=0)
    std = a[train_idx].std(axis=0)
    if np.any(std == 0):
        cols = np.flatnonzero(std == 0).tolist()
        raise ValueError(f"`{name}` has constant columns {cols}: they carry no information.")
    return (a - mean) / std


def _compiled_fit(ensemble, optimizer, batch, eval_every, rounds, patience):
    train_step = training.make_train_step(ensemble)

    def fit_one(key, x_train, y_train, x_test, y_test):
        init_key, data_key = jax.random.split(key)
        state = training.create_train_state(
            ensemble, optimizer, init_key, x_train[:batch], y_train[:batch]
        )
        n_train = x_train.shape[0]

        def train_round(state, round_index):
            def body(state, step):
                k = jax.random.fold_in(data_key, step)
                idx = jax.random.choice(k, n_train, (batch,), replace=False)
                state, metrics = train_step(state, (x_train[idx], y_train[idx]), k)
                return state, metrics["mi"][0]

            steps = round_index * eval_every + jnp.arange(eval_every)
            state, values = jax.lax.scan(body, state, steps)
            test_value, _ = ensemble.apply(state.params, state.bound_states, x_test, y_test)
            return state, test_value[0], jnp.mean(values)

        return state, train_round

    def run(keys, x_train, y_train, x_test, y_test):
        def init(key):
            state, _ = fit_one(key, x_train, y_train, x_test, y_test)
            return state

        states = jax.vmap(init)(keys)
        num = keys.shape[0]
        carry = dict(
            states=states,
            round=jnp.array(0),
            best=jnp.full((num,), -jnp.inf),
            best_round=jnp.zeros((num,), jnp.int32),
            since_best=jnp.zeros((num,), jnp.int32),
            test_curve=jnp.full((num, rounds), jnp.nan),
            train_curve=jnp.full((num, rounds), jnp.nan),
        )

        def one_seed(key, state, round_index, active):
            _, train_round = fit_one(key, x_train, y_train, x_test, y_test)
            new_state, test_value, train_value = train_round(state, round_index)
            # A stopped seed keeps its state (the while loop runs until all seeds stop).
            new_state = jax.tree.map(lambda a, b: jnp.where(active, a, b), new_state, state)
            return new_state, test_value, train_value

        def cond(c):
            return (c["round"] < rounds) & jnp.any(c["since_best"] < patience)

        def body(c):
            active = c["since_best"] < patience
            states, test_value, train_value = jax.vmap(one_seed, in_axes=(0, 0, None, 0))(
                keys, c["states"], c["round"], active
            )
            improved = active & (test_value > c["best"])
            r = c["round"]
            return dict(
                states=states,
                round=r + 1,
                best=jnp.where(improved, test_value, c["best"]),
                best_round=jnp.where(improved, r, c["best_round"]),
                since_best=jnp.where(improved, 0, c["since_best"] + active.astype(jnp.int32)),
                test_curve=c["test_curve"].at[:, r].set(jnp.where(active, test_value, jnp.nan)),
                train_curve=c["train_curve"].at[:, r].set(jnp.where(active, train_value, jnp.nan)),
            )

        c = jax.lax.while_loop(cond, body, carry)
        return c["test_curve"], c["train_curve"], c["best"], c["best_round"]

    return jax.jit(run)
