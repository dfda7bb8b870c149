"""Type aliases shared across mi_jax."""

from collections.abc import Callable
from typing import Any

import jax

Array = jax.Array
ArrayLike = jax.typing.ArrayLike
PRNGKey = jax.Array
PyTree = Any
# A score estimator, its hyperparameters bound (`mi_jax.score.get_score_estimator`):
# ``score_fn(samples [M, d]) -> [M, d]`` estimates of grad log q at the samples (SSGE also
# takes ``points [P, d]`` -> ``[P, d]``).
ScoreFn = Callable[..., Array]
