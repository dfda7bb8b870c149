"""Probes: how linearly (or nearly linearly) decodable are the labels from a frozen representation?

The standard evaluation of self-supervised representations (Hjelm et al. 2019; Tschannen et al.
2020): freeze the encoder, extract features, and train a classifier on top. Here a multinomial
logistic regression (``"linear"``, full-batch L-BFGS to convergence, like scikit-learn's) and a
one-hidden-layer MLP (``"mlp"``, AdamW on minibatches), each one compiled program (a
`lax.while_loop` until ``tol``, a `lax.scan` over the epochs), on
standardized features (train-set mean and standard deviation). Accuracy is reported on the
train and test splits.
"""

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mi_jax import _checks, parallel
from mi_jax.types import Array

PROBES = ("linear", "mlp")


class ProbeResult(NamedTuple):
    """A fitted probe's accuracies (fractions in ``[0, 1]``) and how its training ended.

    ``iterations``: L-BFGS iterations (linear) or optimizer steps (MLP). ``converged``: for the
    linear probe whether the largest gradient entry went below ``tol`` before ``max_iter``
    (False: the accuracies are those of an unfinished fit; raise ``max_iter``); None for the
    MLP, which trains a fixed number of epochs.
    """

    train_accuracy: float
    test_accuracy: float
    iterations: int | None = None
    converged: bool | None = None


class _Probe(nn.Module):
    num_classes: int
    hidden: int = 0  # 0: linear

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if self.hidden:
            x = nn.relu(nn.Dense(self.hidden)(x))
        return nn.Dense(self.num_classes)(x)


@functools.partial(
    jax.jit,
    static_argnames=("num_classes", "hidden", "epochs", "batch_size", "lr", "weight_decay"),
)
def _fit(
    train_x,
    train_y,
    test_x,
    test_y,
    key,
    *,
    num_classes,
    hidden,
    epochs,
    batch_size,
    lr,
    weight_decay,
):
    model = _Probe(num_classes, hidden)
    n = train_x.shape[0]
    steps_per_epoch = max(n // batch_size, 1)
    size = min(batch_size, n)
    init_key, perm_key = jax.random.split(key)
    params = model.init(init_key, train_x[:1])
    schedule = optax.cosine_decay_schedule(lr, epochs * steps_per_epoch)
    tx = optax.adamw(schedule, weight_decay=weight_decay)
    opt_state = tx.init(params)

    def loss_fn(params, x, y):
        logits = model.apply(params, x)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

    def step(carry, idx):
        params, opt_state = carry
        grads = jax.grad(loss_fn)(params, train_x[idx], train_y[idx])
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    def epoch(carry, e):
        perm = jax.random.permutation(jax.random.fold_in(perm_key, e), n)
        batches = perm[: steps_per_epoch * size].reshape(steps_per_epoch, size)
        return jax.lax.scan(step, carry, batches)[0], None

    (params, _), _ = jax.lax.scan(epoch, (params, opt_state), jnp.arange(epochs))

    def accuracy(x, y):
        return jnp.mean(jnp.argmax(model.apply(params, x), axis=-1) == y)

    return accuracy(train_x, train_y), accuracy(test_x, test_y), epochs * steps_per_epoch


@functools.partial(jax.jit, static_argnames=("num_classes", "max_iter", "l2", "tol"))
def _fit_linear_lbfgs(train_x, train_y, test_x, test_y, *, num_classes, max_iter, l2, tol):
    # Full-batch L-BFGS on the mean cross-entropy plus (l2 / 2) |W|^2: the convex problem is
    # solved to convergence (stop when the largest gradient entry is below `tol`, or after
    # `max_iter` iterations), so the probe measures the representation, not the probe's
    # optimizer. At scikit-learn's default tol of 1e-4 it is not: on digits' pixels (l2 1e-4)
    # it stops after 28 iterations, test accuracy 0.961 against the optimum's 0.958 at 1e-6
    # (102 iterations; 2026-12-06; on the code of 2026-12-01, 0.970 against 0.975): where
    # it stops moves the accuracy either way, by as much as two estimators differ.
    params = {
        "w": jnp.zeros((train_x.shape[1], num_classes)),
        "b": jnp.zeros((num_classes,)),
    }

    def objective(params):
        logits = train_x @ params["w"] + params["b"][None, :]
        ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, train_y))
        return ce + 0.5 * l2 * jnp.sum(params["w"] ** 2)

    tx = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(objective)

    def not_converged(carry):
        _, _, iteration, grad_max = carry
        return (iteration < max_iter) & (grad_max > tol)

    def step(carry):
        params, state, iteration, _ = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = tx.update(grad, state, params, value=value, grad=grad, value_fn=objective)
        # The line search stores the gradient at the accepted point: the new iterate's.
        new_grad = optax.tree_utils.tree_get(state, "grad")
        grad_max = jnp.max(jnp.stack([jnp.max(jnp.abs(g)) for g in jax.tree.leaves(new_grad)]))
        return optax.apply_updates(params, updates), state, iteration + 1, grad_max

    init = (params, tx.init(params), jnp.asarray(0), jnp.asarray(jnp.inf))
    params, _, iterations, grad_max = jax.lax.while_loop(not_converged, step, init)

    def accuracy(x, y):
        return jnp.mean(jnp.argmax(x @ params["w"] + params["b"][None, :], axis=-1) == y)

    return accuracy(train_x, train_y), accuracy(test_x, test_y), iterations, grad_max <= tol


def check_hparams(*, prefix: str = "", **hparams) -> None:
    """A `ValueError` naming the first of `fit_probe`'s hyperparameters out of range (integers
    ``>= 1``, ``l2`` and ``weight_decay >= 0``, ``tol`` and ``learning_rate > 0``, all finite);
    ``prefix`` goes before the name (``"config.probe."``)."""
    integers = ("max_iter", "hidden", "epochs", "batch_size")
    known = (*integers, "l2", "weight_decay", "tol", "learning_rate")
    if unknown := sorted(set(hparams) - set(known)):
        raise ValueError(f"unknown probe hyperparameters {unknown}; known: {list(known)}.")
    for name, value in hparams.items():
        if name in integers:
            ok = _checks.is_int(value) and value >= 1
        elif not _checks.is_real(value):  # "0.1" failed in the comparison, naming nothing
            ok = False
        else:
            low_ok = value >= 0 if name in ("l2", "weight_decay") else value > 0
            ok = low_ok and value < np.inf
        if not ok:
            raise ValueError(f"`{prefix}{name}` is out of range: {value!r}.")


def fit_probe(
    train_features,
    train_labels,
    test_features,
    test_labels,
    *,
    kind: str = "linear",
    num_classes: int | None = None,
    l2: float = 1e-4,
    max_iter: int = 300,
    tol: float = 1e-6,
    hidden: int = 256,
    epochs: int = 30,
    batch_size: int = 256,
    learning_rate: float = 1e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> ProbeResult:
    """Trains a probe on frozen features and returns its train and test accuracy.

    Args:
      train_features: ``[N, F]`` (any trailing shape is flattened).
      train_labels: ``[N]`` integer labels in ``[0, num_classes)``.
      test_features: ``[M, F]``.
      test_labels: ``[M]``.
      kind: ``"linear"`` (multinomial logistic regression, full-batch L-BFGS until the largest
        gradient entry is below ``tol`` or for ``max_iter`` iterations, L2 penalty
        ``l2 / 2 |W|^2`` on the mean cross-entropy: scikit-learn's ``LogisticRegression`` at
        ``C = 1 / (l2 N)`` on features standardized with the training split's statistics, or
        ``C = 2 / (l2 N)`` for two classes, where it fits one weight vector) or ``"mlp"`` (one
        hidden layer of ``hidden``, AdamW with a cosine decay: ``epochs``, ``batch_size``,
        ``learning_rate``, ``weight_decay``; its training is counted in epochs, so a small set
        trains few steps: the defaults are 150 steps on digits' 1,437 training images, which
        read 0.964 on the pixels (/ 255; train 0.973) against 0.981 (train 1.0) at 100
        epochs of batch 128, the InfoMax digits preset's setting: give small sets more).
      num_classes: defaults to ``max(label) + 1``. The linear probe fits the classes present
        in ``train_labels`` alone (the others' optimal biases are -inf).
      seed: the MLP's initialization and shuffling (the linear probe starts at zero and
        trains full-batch: it does not use it).

    Returns:
      A `ProbeResult`: the train and test accuracies, floats in ``[0, 1]``, the iterations
      trained and (linear) whether the fit converged.
    """
    if not _checks.is_known(kind, PROBES):
        raise _checks.unknown_name_error("probe", kind, PROBES)
    if num_classes is not None:
        _checks.check_ints("fit_probe", num_classes=num_classes)
    for name, x in (("train_features", train_features), ("test_features", test_features)):
        if np.iscomplexobj(x):  # the float32 cast drops the imaginary part with a warning only
            raise TypeError(f"`{name}` must be real, got {np.result_type(x)}.")
    if min(len(train_features), len(test_features)) == 0:
        raise ValueError(
            f"empty split: {len(train_features)} training and {len(test_features)} test examples."
        )
    with np.errstate(over="ignore"):  # values past float32's range: the error below names them
        train_x = np.asarray(train_features, np.float32).reshape(len(train_features), -1)
        test_x = np.asarray(test_features, np.float32).reshape(len(test_features), -1)
    # Boolean labels are the classes 0 and 1 (they were a TypeError, "must be integers").
    train_y, test_y = (
        y.astype(np.int32) if y.dtype == bool else y
        for y in (np.asarray(train_labels), np.asarray(test_labels))
    )
    for name, y in (("train_labels", train_y), ("test_labels", test_y)):
        if y.ndim != 1:
            raise ValueError(f"`{name}` must have shape [N] (class indices), got {y.shape}.")
    if train_x.shape[0] != train_y.shape[0] or test_x.shape[0] != test_y.shape[0]:
        raise ValueError(
            f"features and labels disagree in length: train {train_x.shape[0]} vs "
            f"{train_y.shape[0]}, test {test_x.shape[0]} vs {test_y.shape[0]}."
        )
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(
            f"`train_features` and `test_features` have different widths: {train_x.shape[1]} "
            f"vs {test_x.shape[1]}."
        )
    # Standardized on the device, in one program (on the host, single-threaded, it was 5 s of
    # a 15000 x 6272 probe, and twice for the two probe kinds).
    train_x, test_x, finite = _standardize(train_x, test_x)
    for name, ok in zip(("train_features", "test_features"), np.asarray(finite), strict=True):
        if not ok:
            raise ValueError(
                f"`{name}` contains NaN or infinite values (or values beyond float32's range, "
                "3.4e38: the probe fits in float32)."
            )
    if num_classes is None:
        num_classes = int(max(train_y.max(), test_y.max())) + 1
    for name, y in (("train_labels", train_y), ("test_labels", test_y)):
        if not np.issubdtype(y.dtype, np.integer):
            raise TypeError(f"`{name}` must be integers, got {y.dtype}.")
        if y.min() < 0 or y.max() >= num_classes:  # the cross-entropy would be NaN
            raise ValueError(
                f"`{name}` must lie in [0, num_classes = {num_classes}), got [{y.min()}, "
                f"{y.max()}]."
            )
    check_hparams(
        l2=l2, max_iter=max_iter, tol=tol, hidden=hidden, epochs=epochs, batch_size=batch_size,
        learning_rate=learning_rate, weight_decay=weight_decay,
    )  # fmt: skip
    if not _checks.is_int(seed):  # (a float failed in `jax.random.key`, naming nothing)
        raise ValueError(f"`seed` must be an integer, got {seed!r}.")
    if kind == "linear":
        # Only the classes the training split holds: an absent class's optimal bias is -inf,
        # which L-BFGS chases (digits' pixels, 1200 training images, num_classes = 20: 286
        # iterations against 99, the same accuracy; past `max_iter` on other splits, "not
        # converged"). Test labels of an absent class (-1 here) are wrong either way.
        present = np.unique(train_y)
        lookup = np.full(num_classes, -1)
        lookup[present] = np.arange(len(present))
        train_acc, test_acc, iterations, converged = _fit_linear_lbfgs(
            train_x,
            jnp.asarray(lookup[train_y], jnp.int32),
            test_x,
            jnp.asarray(lookup[test_y], jnp.int32),
            num_classes=len(present),
            max_iter=max_iter,
            l2=l2,
            tol=tol,
        )
        return ProbeResult(float(train_acc), float(test_acc), int(iterations), bool(converged))
    train_acc, test_acc, steps = _fit(
        train_x,
        jnp.asarray(train_y, jnp.int32),
        test_x,
        jnp.asarray(test_y, jnp.int32),
        jax.random.key(seed),
        num_classes=num_classes,
        hidden=hidden if kind == "mlp" else 0,
        epochs=epochs,
        batch_size=batch_size,
        lr=learning_rate,
        weight_decay=weight_decay,
    )
    return ProbeResult(float(train_acc), float(test_acc), int(steps))


@jax.jit
def _standardize(train_x: Array, test_x: Array) -> tuple[Array, Array, Array]:
    """Both splits standardized with the training split's statistics, and ``[2]`` whether
    each split is finite.

    Each column is first divided by the power of two nearest below its largest training
    magnitude (exact: the z-scores are unchanged), so its variance neither overflows (features
    of ~1e18 and more read 0, the probe chance) nor underflows (~1e-20; subnormal features,
    below ~1e-38, the CPU reads as 0). A feature with one value on the training set is 0 in
    both splits: it carries nothing a probe can learn, and its test values, left in, reached
    the MLP probe through first-layer weights its training never moved (a unit dead on the
    training images only). One whose std lies below 1e-6 of its mean's magnitude (some 8
    float32 epsilons, as scikit-learn's StandardScaler takes 10 of its float's) is centred,
    not scaled: divided by ~0, its test values were outliers the MLP probe never saw. (A
    feature that varies by less, ``1000 + 1e-3 x`` say, is centred too: rescale it first.)
    """
    peak = jnp.max(jnp.abs(train_x), 0, keepdims=True)
    _, exponent = jnp.frexp(jnp.where(peak > 0, peak, 1.0))  # peak = m 2^e, m in [0.5, 1)
    # (`exp2` is not exact on XLA:CPU.) At most 2^126: XLA:CPU divides by multiplying with the
    # reciprocal, and 2^-127 is subnormal, flushed to 0 (columns peaking at 2^127 or more,
    # ~1.7e38, read 0: dropped).
    scale = jnp.ldexp(jnp.ones_like(peak), jnp.minimum(exponent - 1, 126))
    train_x, test_x = train_x / scale, test_x / scale
    mean, std = jnp.mean(train_x, 0, keepdims=True), jnp.std(train_x, 0, keepdims=True)
    std = jnp.where(std > 1e-6 * jnp.abs(mean), std, 1.0 / scale)  # (centred: its own units)
    one_value = jnp.max(train_x, 0, keepdims=True) == jnp.min(train_x, 0, keepdims=True)
    finite = jnp.stack([jnp.all(jnp.isfinite(train_x)), jnp.all(jnp.isfinite(test_x))])
    return tuple(jnp.where(one_value, 0.0, (a - mean) / std) for a in (train_x, test_x)) + (finite,)


def extract_features(
    apply_fn: Callable[[Any, Array], tuple[Array, ...]],
    params: Any,
    images: np.ndarray,
    *,
    batch_size: int = 500,
    mesh=None,
) -> tuple[np.ndarray, ...]:
    """Runs ``apply_fn(params, images [b, ...]) -> tuple of [b, ...] arrays`` over all
    ``images`` in fixed-size chunks (the last one padded, so one compilation) and writes the
    outputs into arrays on the host. With a ``mesh`` (`mi_jax.parallel.data_mesh`; ``params``
    replicated on it) each chunk is split over the devices (its size rounded up to a multiple
    of their count) and the outputs are gathered."""
    _checks.check_ints("extract_features", batch_size=batch_size)
    if len(np.shape(images)) < 1 or np.shape(images)[0] < 1:
        raise ValueError(f"`images` must be a non-empty batch [N, ...], got {np.shape(images)}.")
    if not hasattr(images, "shape"):  # (a list: indexed in chunks below)
        images = np.asarray(images)
    n = images.shape[0]
    size = min(batch_size, n)
    if mesh is None:
        jitted, put = jax.jit(apply_fn), jnp.asarray
    else:
        size = -(-size // mesh.devices.size) * mesh.devices.size
        jitted = jax.jit(apply_fn, out_shardings=parallel.replicated(mesh))
        put = functools.partial(parallel.put_batch, mesh=mesh)
    features = None  # filled chunk by chunk (concatenated at the end, the peak was twice them)
    for start in range(0, n, size):
        part = images[start : start + size]
        pad = size - part.shape[0]
        if pad:
            part = np.concatenate([part, np.repeat(part[-1:], pad, axis=0)])
        outs = jitted(params, put(part))
        if not isinstance(outs, tuple | list):  # an array is iterated row by row, silently
            raise TypeError(
                "`apply_fn` must return a tuple of arrays [b, ...] (e.g. `(features,)`), got "
                f"{type(outs).__name__}."
            )
        outs = [np.asarray(o) for o in outs]
        if features is None:
            features = tuple(np.empty((n, *o.shape[1:]), o.dtype) for o in outs)
        for out, o in zip(features, outs, strict=True):
            out[start : start + size - pad] = o[: size - pad]
    return features
