"""Strict settings for the whole suite (as in the Flax examples)."""

import os

# Keep XLA on the CPU and quiet about missing accelerators before jax is imported.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
