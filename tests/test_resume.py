"""Fault tolerance: a run killed with SIGKILL resumes from its last checkpoint and ends with the
results of an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 30
ARGS = [
    "--config",
    os.path.join(ROOT, "configs", "infomax.py:quick"),
    f"--config.num_steps={NUM_STEPS}",
    "--config.log_every=2",
    "--config.checkpoint_every=2",
    f"--config.eval_every={NUM_STEPS}",
    "--config.max_examples=300",
    # The linear probe of the global vector reads the trained encoder; more probes would only
    # add compilation to each of the three runs.
    "--config.probe.kinds=('linear',)",
    "--config.probe.representations=('global',)",
    "--config.probe.periodic_representations=('global',)",
]


def _command(workdir):
    return [sys.executable, "-m", "experiments.infomax", *ARGS, f"--workdir={workdir}"]


def _env():
    # The runs inherit the suite's fast-compile flags (tests/conftest.py): at this size they
    # compile more than they train (one run: 24 s with them, 32 s with optimized code).
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


def _stop_mid_training(workdir, sig, log):
    """Starts the run in ``workdir``, sends ``sig`` once it has a checkpoint at step 4 or later;
    returns its exit status."""
    with open(log, "w") as err:
        proc = subprocess.Popen(
            _command(workdir), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=err
        )
        deadline = time.time() + 300
        while not [s for s in _finished_steps(workdir) if s >= 4] and time.time() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.05)
        proc.send_signal(sig)
        return proc.wait()


def _rerun_equals_an_uninterrupted_run(workdir, clean):
    """Reruns the stopped run in ``workdir`` and an uninterrupted one in ``clean``: the resumed
    run's probes are the uninterrupted run's."""
    steps = _finished_steps(workdir)
    assert steps and max(steps) < NUM_STEPS, steps  # stopped mid-training, checkpoint on disk
    for path in (workdir, clean):
        subprocess.run(_command(path), cwd=ROOT, env=_env(), check=True, capture_output=True)
    uninterrupted, clean_probes = _probes(clean)
    assert uninterrupted["resumed_from"] == 0
    resumed, resumed_probes = _probes(workdir)
    assert resumed["resumed_from"] >= 4
    assert resumed_probes == clean_probes


def test_sigkill_mid_training_then_rerun_equals_an_uninterrupted_run(tmp_path):
    killed = str(tmp_path / "killed")
    assert _stop_mid_training(killed, signal.SIGKILL, tmp_path / "killed.log") == -signal.SIGKILL
    _rerun_equals_an_uninterrupted_run(killed, str(tmp_path / "clean"))


# The default run checks SIGTERM in short commands (tests/test_common.py: a checkpoint's save
# waited for, exit status 143 with one line); this is a whole training run's, stopped and
# resumed (three runs of the command: 60-95 s on a 2-core AVX2 host).
@pytest.mark.slow
def test_sigterm_mid_training_then_rerun_equals_an_uninterrupted_run(tmp_path):
    stopped = str(tmp_path / "stopped")
    # SIGTERM (a scheduler's preemption) stops the run as Ctrl-C does, with one line. Before: it
    # ended the process where it was, a checkpoint being saved left half written.
    log = tmp_path / "stopped.log"
    assert _stop_mid_training(stopped, signal.SIGTERM, log) == 143, log.read_text()[-3000:]
    assert f"infomax: stopped by SIGTERM; what it wrote, if anything, stays in {stopped}" in (
        log.read_text()
    )
    assert "Traceback" not in log.read_text()
    assert sorted(os.listdir(stopped)) == [
        "checkpoints",
        "config.json",
        "metrics.jsonl",
        "runs.jsonl",
    ]
    assert all(d.isdigit() for d in os.listdir(os.path.join(stopped, "checkpoints")))
    _rerun_equals_an_uninterrupted_run(stopped, str(tmp_path / "clean"))


# Saves a 4 MB state at every step, forever, with the experiments' checkpoint manager, starting
# after the latest checkpoint in the workdir (as a resumed run does); "ready" once its first save
# has finished (printed before it, a kill 0.3 s later on a loaded machine found no checkpoint).
_SAVER = r"""
import os
import sys
import numpy as np
import orbax.checkpoint as ocp
from experiments import _common

manager = _common.checkpoint_manager(os.path.join(sys.argv[1], "checkpoints"), keep=2)
first = step = (manager.latest_step() or 0) + 1
while True:
    state = {"w": np.full((1024, 1024), step, np.float32), "step": np.array(step, np.int32)}
    manager.save(step, args=ocp.args.StandardSave(state))
    if step == first:
        manager.wait_until_finished()
        print("ready", flush=True)
    step += 1
"""


def test_sigkill_during_checkpoint_saves_never_leaves_an_unloadable_checkpoint(tmp_path):
    import numpy as np
    import orbax.checkpoint as ocp

    from experiments import _common

    workdir = str(tmp_path)
    latest = []
    for delay in (0.3, 0.8, 1.3):  # kills land at different points of a save
        with subprocess.Popen(
            [sys.executable, "-c", _SAVER, workdir],
            cwd=ROOT,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        ) as proc:
            assert proc.stdout.readline().strip() == "ready"
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        manager = _common.checkpoint_manager(os.path.join(workdir, "checkpoints"), keep=2)
        step = manager.latest_step()
        assert step is not None
        target = {"w": np.zeros((1024, 1024), np.float32), "step": np.array(0, np.int32)}
        restored = manager.restore(step, args=ocp.args.StandardRestore(target))
        assert int(restored["step"]) == step
        assert np.all(restored["w"] == step)
        latest.append(step)
        manager.close()
    assert latest == sorted(latest) and latest[-1] > latest[0]  # each rerun saved more
