"""Fault tolerance: a run killed with SIGKILL resumes from its last checkpoint and ends with the
results of an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = [
    "--config",
    os.path.join(ROOT, "configs", "infomax.py:quick"),
    "--config.num_steps=60",
    "--config.log_every=2",
    "--config.checkpoint_every=2",
    "--config.eval_every=60",
    "--config.max_examples=300",
]


def _command(workdir):
    return [sys.executable, "-m", "experiments.infomax", *ARGS, f"--workdir={workdir}"]


def _env():
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)


def _finished_steps(workdir):
    path = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(path):
        return []
    return sorted(int(d) for d in os.listdir(path) if d.isdigit())


def _probes(workdir):
    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
    keys = ("encoder", "representation", "probe", "test_accuracy", "train_accuracy")
    return results, [{k: r[k] for k in keys} for r in results["probes"]]


def test_sigkill_mid_training_then_rerun_equals_an_uninterrupted_run(tmp_path):
    killed, clean = str(tmp_path / "killed"), str(tmp_path / "clean")
    log = tmp_path / "killed.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            _command(killed), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=err
        )
        deadline = time.time() + 300
        while not [s for s in _finished_steps(killed) if s >= 4] and time.time() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    steps = _finished_steps(killed)
    assert steps and max(steps) < 60, steps  # killed mid-training, with a checkpoint on disk
    assert not os.path.exists(os.path.join(killed, "results.json"))

    for workdir in (killed, clean):
        subprocess.run(_command(workdir), cwd=ROOT, env=_env(), check=True, capture_output=True)
    resumed, resumed_probes = _probes(killed)
    uninterrupted, clean_probes = _probes(clean)
    assert resumed["resumed_from"] >= 4 and uninterrupted["resumed_from"] == 0
    assert resumed_probes == clean_probes
