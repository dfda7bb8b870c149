"""Strict settings for the whole suite (as in the Flax examples)."""

import os
import shutil
import tempfile
import time

import pytest

# Keep XLA on the CPU and quiet about missing accelerators before jax is imported.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The suite tests the default float32 mode (dtypes, float32 limits such as `max_mi_per_dim`,
# tolerances); float64 behaviour has its own tests under `jax.enable_x64(True)`. A shell that
# exports JAX_ENABLE_X64=1 failed 25 of them; the setting is overridden here and in the
# subprocesses the tests start.
os.environ["JAX_ENABLE_X64"] = "false"

# One persistent compilation cache for the session and the subprocesses its tests start (they
# inherit these variables): many tests compile the same small programs (tiny experiment configs
# run again and again), and XLA compilation dominates their time (the InfoMax tests: 182 s ->
# 110 s). The cache starts empty every session and is removed at its end, unless the caller
# chose a cache directory.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="mi_jax_xla_cache_")
# One id per test session, inherited by the xdist workers: results they share through files
# (tests/test_parallel.py) are keyed by it, so a cache directory the caller keeps across
# sessions never serves an earlier session's result.
os.environ.setdefault("MI_JAX_TEST_SESSION", f"{os.getpid()}-{time.time_ns()}")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# The tests' programs are small and most run a few steps: LLVM's optimization passes cost more
# than they save (the suite: 820 s -> 642 s of wall time, CPU time -25 %), and at -O0 most of
# XLA:CPU's compile time is its fusion emitters, whose older loop emitters compile the same HLO
# in half the time (802 s -> 569 s, CPU time -30 %, on an AVX2 2-core machine). The flags of
# `mi_jax.training.run_once_compiler_options`; they change how the programs are compiled, not
# which. Subprocesses inherit them (tests/test_parallel.py adds its device count; the
# staircase's `:quick` preset, 1000 steps, drops the -O0 ones, tests/test_staircase.py).
_FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def _jaxlib_before(version: tuple[int, ...]) -> bool:
    """Whether the installed jaxlib is older than ``version`` (read without importing jax:
    XLA reads XLA_FLAGS once, when jax starts)."""
    import re
    from importlib.metadata import version as installed

    # (the release's numbers: "0.11.1rc1" and "0.11.1+cuda12" are 0.11.1)
    release = re.match(r"\d+(\.\d+)*", installed("jaxlib")).group()
    return tuple(int(p) for p in release.split(".")) < version


# The programs' source locations (MLIR debug information, for XLA's own error messages): the
# suite reads none, and building them from full tracebacks cost 3-5 % of the InfoMax-VAE tests'
# time on a 2-core AVX2 host. Subprocesses inherit the settings.
os.environ.setdefault("JAX_INCLUDE_FULL_TRACEBACKS_IN_LOCATIONS", "false")
os.environ.setdefault("JAX_TRACEBACK_IN_LOCATIONS_LIMIT", "0")

# jaxlib 0.11.1 removed the option (`mi_jax.training.compile_option_known`); an unknown flag
# in XLA_FLAGS aborts the process as jax starts.
if _jaxlib_before((0, 11, 1)):
    _FAST_COMPILE += " --xla_cpu_use_fusion_emitters=false"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FAST_COMPILE}".strip()

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


def pytest_unconfigure(config):
    if _OWN_CACHE:
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


@pytest.fixture
def figures(monkeypatch):
    """``{file name: figure}`` of the figures the code under test saves (not written)."""
    from experiments import _common

    caught = {}
    monkeypatch.setattr(_common, "save_figure", lambda fig, path, **_: caught.update({path: fig}))
    return caught


@pytest.fixture
def tfds(tmp_path_factory, monkeypatch):
    """tensorflow-datasets (the test is skipped without it), its scratch directories kept in
    pytest's temporary directory.

    A builder whose data is not prepared (every one under `tfds.testing.mock_data`) makes an
    empty ``tempfile.mkdtemp("tfds")`` (``DatasetInfo.initialize_from_bucket``) and never
    removes it; here it lands where pytest cleans up instead of piling up in /tmp.
    """
    module = pytest.importorskip("tensorflow_datasets")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path_factory.mktemp("tempfile")))
    return module
