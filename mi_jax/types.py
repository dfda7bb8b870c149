"""Type aliases shared across mi_jax."""

from typing import Any

import jax

Array = jax.Array
ArrayLike = jax.typing.ArrayLike
PRNGKey = jax.Array
PyTree = Any
