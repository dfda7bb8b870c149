"""Argument checks that raise clear errors naming the offending argument.

Shape and dtype checks are static, so they also run (for free) under `jax.jit`. Value checks
(NaN/inf) need concrete arrays and are only used at host-level entry points such as
`estimate_mi`.
"""

import contextlib
import difflib
import inspect
import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def check_scores(scores, name: str = "scores") -> None:
    """Checks that `scores` is a square float matrix with at least two rows."""
    check_not_a_list(scores, name)
    shape = jnp.shape(scores)
    if len(shape) != 2:
        raise ValueError(
            f"`{name}` must be a [batch, batch] score matrix, got an array of rank {len(shape)} "
            f"with shape {shape}."
        )
    if shape[0] != shape[1]:
        raise ValueError(
            f"`{name}` must be square ([batch, batch], diagonal = joint pairs), got shape {shape}."
        )
    if shape[0] < 2:
        raise ValueError(
            f"`{name}` has batch size {shape[0]}; MI bounds need at least 2 samples so that "
            "off-diagonal entries (product of marginals) exist."
        )
    check_float(scores, name)


def is_int(value) -> bool:
    """An integer (Python or numpy), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_ints(owner: str = "", least: int = 1, **values) -> None:
    """Raises a ValueError naming the first of ``values`` that is not an integer ``>= least``,
    prefixed by ``owner`` (a module's name) if given. Widths and counts: a width of 0 would
    otherwise surface as a ``ZeroDivisionError`` in a weight initializer, and a tuple for a
    count (``critic_hidden=(16, 16)``) as a shape error deep in Flax, naming nothing. Fields
    that hold a sequence of integers: `check_int_sequences`."""
    for name, value in values.items():
        if not (is_int(value) and value >= least):
            _raise_not_ints(owner, name, value, least, "be an integer")


def _raise_not_ints(owner: str, name: str, value, least: int, what: str):
    prefix = f"{owner}: " if owner else ""
    raise ValueError(f"{prefix}`{name}` must {what} >= {least}, got {value!r}.")


def check_bools(owner: str = "", **values) -> None:
    """Raises a ValueError naming the first of ``values`` that is not a bool (``"False"`` from a
    config line is a true string: it built the term it meant to turn off)."""
    for name, value in values.items():
        if not isinstance(value, bool | np.bool_):
            prefix = f"{owner}: " if owner else ""
            raise ValueError(f"{prefix}`{name}` must be True or False, got {value!r}.")


def check_int_sequences(owner: str = "", least: int = 1, **values) -> None:
    """`check_ints` for fields that hold a sequence of integers (layer widths), where a bare
    integer is refused too: ``hidden=64`` for ``(64,)`` failed inside Flax as "'int' object is
    not iterable", naming nothing."""
    for name, value in values.items():
        if not isinstance(value, Sequence) or isinstance(value, str):
            prefix = f"{owner}: " if owner else ""
            raise ValueError(
                f"{prefix}`{name}` must be a sequence of integers >= {least} (e.g. ({value!r},)), "
                f"got {value!r}."
            )
        if not all(is_int(v) and v >= least for v in value):
            _raise_not_ints(owner, name, value, least, "hold integers")


def check_weight(value, name: str) -> None:
    """Raises a ValueError naming ``name`` unless ``value`` is a finite real number ``>= 0``
    (a loss weight). Arrays pass unchecked: traced under `jax.jit` they hold no value, and
    reading a device array would cost a host sync in a training step; sweeps check their
    weights once, in the config."""
    if isinstance(value, jax.Array | np.ndarray):
        return
    if not (is_real(value) and value >= 0 and math.isfinite(value)):  # NaN fails `>= 0` too
        raise ValueError(f"`{name}` must be finite and >= 0, got {value!r}.")


def is_real(value) -> bool:
    """A real number (Python or numpy), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def host_float(value) -> float:
    """``float(value)`` of an `is_number`, on the host (inside a trace, a comparison of a
    concrete array would be traced); an integer beyond float's range (10**400) is +-inf."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def is_positive_finite(value) -> bool:
    """`is_number` in ``(0, inf)`` (NaN is not), compared as a `host_float`."""
    return is_number(value) and 0 < host_float(value) < math.inf


def is_number(value) -> bool:
    """`is_real`, or a concrete 0-d integer or float array (numpy or JAX; not traced, so its
    value can be compared on the host): a hyperparameter given as ``jnp.asarray(0.1)``."""
    if is_real(value):
        return True
    dtype = getattr(value, "dtype", None)
    return (
        dtype is not None
        and not isinstance(value, jax.core.Tracer)
        and (jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating))
        and np.ndim(value) == 0
    )


def check_not_a_list(x, name: str) -> None:
    if isinstance(x, list | tuple):  # jnp.result_type: "Cannot determine dtype of [[0.0, ...]]"
        raise TypeError(f"`{name}` must be an array, got a {type(x).__name__}; `jnp.asarray` it.")


def check_float(x, name: str) -> None:
    check_not_a_list(x, name)
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise TypeError(
            f"`{name}` must have a floating dtype, got {jnp.result_type(x)}; "
            f"convert it first, e.g. `{name}.astype(jnp.float32)`."
        )


def trace_settings() -> tuple[tuple[str, Any], ...]:
    """``((name, value), ...)``: the global JAX settings that change a program's numbers
    without changing its inputs (matmul precision, the PRNG and how it splits), for a cache of
    results to key on beside the inputs."""
    names = ("jax_default_matmul_precision", "jax_default_prng_impl", "jax_threefry_partitionable")
    return tuple((name, getattr(jax.config, name)) for name in names)


def at_least_float32(x):
    """``x`` (a floating array) in float32 if it is in half precision (float16, bfloat16), else
    as it is (a weakly typed scalar stays weak: under x64 a float64 one would promote the
    result). Sums, exponentials and distances of half-precision values overflow (float16 past
    65504) or cancel (bfloat16's 8 bits): the library computes them in float32 at least."""
    return x if jnp.finfo(x.dtype).bits >= 32 else x.astype(jnp.float32)


def check_finite_if_concrete(x, name: str) -> None:
    """Raises if a concrete (non-traced) array holds NaN or inf; a no-op under tracing."""
    if isinstance(x, jax.core.Tracer):
        return
    a = np.asarray(x)
    if not np.all(np.isfinite(a)):
        bad = int(np.sum(~np.isfinite(a)))
        raise ValueError(f"`{name}` contains {bad} NaN or infinite values.")


def check_key(key, name: str = "key") -> None:
    """Checks that ``key`` is one PRNG key: a typed key (``jax.random.key``) or a raw uint32
    one (``jax.random.PRNGKey``: ``[2]``, or ``[4]`` with ``impl="rbg"``); static, so traced
    keys are checked too. An integer seed otherwise failed deep in `jax.random` ("invalid PRNG
    key data")."""
    dtype = getattr(key, "dtype", None)
    if dtype is None:
        raise TypeError(
            f"`{name}` must be one PRNG key, e.g. `jax.random.key(seed)`, got {key!r:.80}."
        )
    shape = jnp.shape(key)
    typed = jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
    # Raw keys: [2] of threefry (the default), [4] of the rbg implementations.
    if (typed and shape == ()) or (dtype == np.uint32 and shape in ((2,), (4,))):
        return
    raise TypeError(
        f"`{name}` must be one PRNG key, e.g. `jax.random.key(seed)`, got an array of dtype "
        f"{dtype} and shape {shape}."
    )


def check_vector(v, batch: int, name: str) -> None:
    """Checks that `v` is a scalar or a [batch] vector of floats."""
    check_not_a_list(v, name)
    shape = jnp.shape(v)
    if shape not in ((), (batch,)):
        raise ValueError(f"`{name}` must be a scalar or have shape [{batch}], got shape {shape}.")
    check_float(v, name)


def check_samples(x, y, *, min_samples: int = 2, finite: bool = True) -> tuple[np.ndarray, ...]:
    """Checks paired samples `x` [N, dx] and `y` [N, dy] (1-d inputs are treated as dx = 1)."""
    arrays = []
    for name, a in (("x", x), ("y", y)):
        try:
            a = np.asarray(a)
        except ValueError as e:  # ragged nested sequences
            raise ValueError(f"`{name}` must be a rectangular array of numbers ({e})") from e
        if a.ndim == 1:
            a = a[:, None]
        if a.ndim != 2 or a.shape[1] == 0:
            raise ValueError(
                f"`{name}` must have shape [num_samples, dim] with dim >= 1, got shape {a.shape}."
            )
        if a.dtype == np.bool_:  # binary data: 0 and 1
            a = a.astype(np.uint8)
        elif jnp.issubdtype(a.dtype, jnp.floating) and not np.issubdtype(a.dtype, np.floating):
            a = a.astype(np.float32)  # bfloat16 and other ml_dtypes floats: exact in float32
        if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
            raise TypeError(f"`{name}` must be numeric, got dtype {a.dtype}.")
        if finite and not np.all(np.isfinite(a)):
            bad = int(np.sum(~np.isfinite(a)))
            raise ValueError(f"`{name}` contains {bad} NaN or infinite values; remove them first.")
        arrays.append(a)
    x, y = arrays
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"`x` and `y` must hold the same number of paired samples, got {x.shape[0]} and "
            f"{y.shape[0]}."
        )
    if x.shape[0] < min_samples:
        raise ValueError(f"need at least {min_samples} paired samples, got {x.shape[0]}.")
    return x, y


def unknown_name_error(kind: str, name: str, known: Iterable[str]) -> KeyError:
    """A KeyError for an unregistered name, with close matches suggested."""
    known = sorted(known)
    if not isinstance(name, str):
        return KeyError(f"a {kind} name must be a string, got {name!r}. Known: {', '.join(known)}.")
    by_lower = {k.lower(): k for k in known}  # "infoNCE" -> "infonce"
    hint = difflib.get_close_matches(name.lower(), list(by_lower), n=1)
    did_you_mean = f" Did you mean {by_lower[hint[0]]!r}?" if hint else ""
    return KeyError(f"unknown {kind} {name!r}.{did_you_mean} Known: {', '.join(known)}.")


def is_known(name: Any, registry: Iterable[str]) -> bool:
    """Whether ``name`` is a registered name: a string in ``registry`` (its keys, or a tuple of
    names; a list or dict, say from a config, is not one, rather than an "unhashable type"
    TypeError)."""
    return isinstance(name, str) and name in registry


def register(
    kind: str,
    name: Any,
    factory: Any,
    registry: dict[str, Any],
    base: type | None = None,
    override: bool = False,
) -> None:
    """``registry[name] = factory``: a non-empty string ``name``, not taken unless
    ``override`` (a notebook cell run again), and a callable ``factory`` (with ``base``: a
    subclass of it, e.g. a Flax module class)."""
    check_bools(override=override)
    if not (isinstance(name, str) and name):
        raise TypeError(f"the name of a new {kind} must be a non-empty string, got {name!r}.")
    if name in registry and not override and registry[name] is not factory:  # (again: no-op)
        raise ValueError(
            f"the {kind} name {name!r} is already registered (`override=True` replaces it)."
        )
    if not callable(factory):
        raise TypeError(f"{kind} {name!r} must be registered with a callable, got {factory!r}.")
    if base is not None and not (isinstance(factory, type) and issubclass(factory, base)):
        raise TypeError(f"{kind} {name!r} must be a {base.__name__} class, got {factory!r}.")
    registry[name] = factory


def check_hparam_names(
    kind: str,
    name: str,
    fn: Callable[..., Any],
    hparams,
    *,
    positional: int = 0,
    exclude=(),
    follow_wrapped: bool = True,
) -> None:
    """The `HparamsError` of `unknown_hparams_error` for names in ``hparams`` that ``fn`` does
    not take: its keyword parameters less its first ``positional`` (given by position: a
    bound's scores, a task's dim) and ``exclude``. Nothing where ``fn`` takes any keyword
    (``**kwargs``) or Python cannot read its signature (the call itself will say)."""
    try:
        signature = inspect.signature(fn, follow_wrapped=follow_wrapped)
    except (TypeError, ValueError):
        return
    parameters = list(signature.parameters.values())
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return
    by_keyword = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    known = {p.name for p in parameters[positional:] if p.kind in by_keyword} - set(exclude)
    if unknown := set(hparams) - known:
        raise unknown_hparams_error(kind, name, unknown, known)


def check_call(
    kind: str, name: str, fn: Callable[..., Any], args, hparams, *, exclude=(), follow_wrapped=True
) -> None:
    """Before ``fn(*args, **hparams)``: `check_hparam_names` (``args`` given by position),
    then a TypeError naming ``kind`` and ``name`` where the call still does not bind (a
    required hyperparameter missing). Nothing where Python cannot read the signature."""
    check_hparam_names(
        kind, name, fn, hparams, positional=len(args), exclude=exclude,
        follow_wrapped=follow_wrapped,
    )  # fmt: skip
    try:
        signature = inspect.signature(fn, follow_wrapped=follow_wrapped)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(*args, **hparams)
    except TypeError as e:
        raise TypeError(
            f"bad hyperparameters {sorted(hparams)} for {kind} {name!r}: {e}."
        ) from None


def call_factory(kind: str, name: str, factory: Callable[..., Any], *args, **hparams):
    """``factory(*args, **hparams)`` for a registered ``kind`` ``name``. Hyperparameters its
    signature does not take raise a TypeError naming them, and the ones it takes, before the
    call; an error inside the factory (a bug in a user's bound or task, or its own check of a
    value) goes on with its traceback, its ``component`` naming the factory (the experiments'
    command line prints the message alone, with that name)."""
    # (The factory's own signature: a registry entry wrapped to take other arguments is read
    # as the wrapper; a bound's or score estimator's function, as what it wraps.)
    check_call(kind, name, factory, args, hparams, follow_wrapped=False)
    try:
        return factory(*args, **hparams)
    except Exception as e:
        if not hasattr(e, "component"):  # (the innermost factory's name stands)
            with contextlib.suppress(AttributeError):  # (an exception without a __dict__)
                e.component = f"{kind} {name!r}"
        raise


def build_registered(kind: str, name: str, registry: Mapping[str, Callable[..., Any]], hparams):
    """``registry[name](**hparams)``, with errors that name what is wrong.

    Unknown ``name``: the KeyError of `unknown_name_error`. Hyperparameters the class does not
    declare (as dataclass fields, like every Flax module): a TypeError listing the known ones.
    Lists (as configs deliver them) become tuples, so the module stays hashable.
    """
    known = registered_fields(kind, name, registry)
    if unknown := set(hparams) - known:
        raise unknown_hparams_error(kind, name, unknown, known)
    return registry[name](**{k: tuple(v) if isinstance(v, list) else v for k, v in hparams.items()})


class HparamsError(TypeError):
    """Hyperparameters a registered component does not take, its message complete (it names
    the component): a registry's getter passes it on as it is."""


def unknown_hparams_error(kind: str, name: str, unknown: Iterable[str], known: Iterable[str]):
    """The `HparamsError` for hyperparameters a registered ``kind`` ``name`` does not take."""
    return HparamsError(
        f"unknown hyperparameters {sorted(unknown)} for {kind} {name!r}; known: {sorted(known)}."
    )


def registered_fields(kind: str, name: str, registry: Mapping[str, Callable[..., Any]]) -> set:
    """The hyperparameters of the class registered as ``name``: its dataclass fields (a Flax
    module's, without ``parent`` and ``name``); an unknown ``name`` raises."""
    if not is_known(name, registry):
        raise unknown_name_error(kind, name, registry)
    return fields_of(registry[name])


def fields_of(cls) -> set:
    """A class's hyperparameters: its dataclass fields (a Flax module's, less ``parent`` and
    ``name``)."""
    return set(getattr(cls, "__dataclass_fields__", {})) - {"parent", "name"}


def freeze_fields(obj: Any, hparams: Iterable[str] = (), sequences: Iterable[str] = ()) -> None:
    """Makes fields of a frozen dataclass hashable, as a static argument of `jax.jit` must be:
    each of ``hparams`` given as a dict (or pairs holding lists) becomes `hashable_hparams`'
    sorted pairs, each of ``sequences`` given as a list a tuple. (Before, a model built with
    ``trunk_hparams={"hidden": (64,)}`` worked eagerly and failed under jit, far from the cause.)"""
    for name in hparams:
        value = getattr(obj, name)
        if isinstance(value, Mapping) or (
            isinstance(value, tuple | list) and all(_is_pair(v) for v in value)
        ):
            object.__setattr__(obj, name, hashable_hparams(dict(value)))
    for name in sequences:
        if isinstance(value := getattr(obj, name), list | tuple):
            object.__setattr__(obj, name, _hashable(value))


def _is_pair(value: Any) -> bool:
    return isinstance(value, tuple | list) and len(value) == 2 and isinstance(value[0], str)


def hashable_hparams(hparams: Mapping[str, Any]) -> tuple:
    """``((name, value), ...)`` sorted, lists and numpy arrays as tuples of Python numbers:
    hyperparameters as a hashable key (for a frozen module's field, or a cache of compiled
    programs)."""
    return tuple(sorted((k, _hashable(v)) for k, v in dict(hparams).items()))


def _hashable(v: Any) -> Any:
    """Lists and numpy arrays as tuples (of Python numbers), nested ones too."""
    if isinstance(v, np.ndarray):
        v = v.tolist()
    return tuple(map(_hashable, v)) if isinstance(v, list | tuple) else v
