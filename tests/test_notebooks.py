"""The notebooks: paired .ipynb files are up to date, and each one runs at tiny size."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# infomax_mnist runs the InfoMax experiment that tests/test_infomax.py tests in process (~23 s
# on a 2-core AVX2 host): in the slow tier.
NOTEBOOKS = (
    "quickstart",
    "mige_gradients",
    pytest.param("infomax_mnist", marks=pytest.mark.slow),
)


def test_ipynb_files_match_their_percent_scripts():
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "notebooks", "sync.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_at_tiny_size(name, tmp_path):
    env = dict(os.environ, MI_JAX_NOTEBOOK_TINY="1", MPLBACKEND="Agg", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = ROOT  # this checkout's mi_jax, not another installed one
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "notebooks", f"{name}.py")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
