"""Data parallelism (`mi_jax.parallel`): 8 simulated CPU devices give one device's numbers."""

import fcntl
import json
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from mi_jax import parallel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs in a fresh process with 8 host devices: each experiment on a 1-device mesh and on the
# 8-device mesh, same seed; prints the metrics of both as JSON.
_SCRIPT = r"""
import json, sys, tempfile
import jax
from mi_jax import bounds, critics, parallel
from configs import ib as ib_config
from configs import infomax_vae as vae_config
from experiments import ib, infomax, infomax_vae
from tests.test_infomax import tiny_config

assert jax.device_count() == 8, jax.devices()
# The parts to run (argv[1]): the suite's default run takes the cheaper ones, `-m slow` the rest.
PARTS = set(sys.argv[1].split(","))
meshes = {"1": parallel.data_mesh(jax.devices()[:1]), "8": parallel.data_mesh()}

def rows(workdir, kind="train"):
    with open(f"{workdir}/metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    drop = ("seconds", "steps_per_s", "compile_s")
    rows = [r for r in rows if r.get("kind", "") == kind]
    return [{k: v for k, v in r.items() if k not in drop} for r in rows]

def quick(module, **overrides):
    config = module.get_config("quick")
    config.update_from_flattened_dict(overrides)
    return config

# The leading sizes each run hands `shard_batch` and `put_batch` on the 8-device mesh: a batch
# left whole on every device gives the same numbers (each device computing all of it), so
# only these show that the work is split.
split_sizes, current = {}, {"run": None}

def spying(name, fn):
    def spy(tree, mesh):
        if mesh.devices.size == 8:
            seen = split_sizes.setdefault(current["run"], {}).setdefault(name, set())
            seen.update(int(a.shape[0]) for a in jax.tree.leaves(tree))
        return fn(tree, mesh)
    return spy

unspied = {"shard_batch": parallel.shard_batch, "put_batch": parallel.put_batch}
for name, fn in unspied.items():
    setattr(parallel, name, spying(name, fn))

out = {}
for n, mesh in meshes.items():
    run = {}
    with tempfile.TemporaryDirectory() as d:
        if "infomax" in PARTS:
            # tests/test_infomax.py's tiny programs (batch 16: 2 rows per device), 4 steps,
            # two seeds vmapped (each seed's batch sharded inside the seed vmap).
            config = tiny_config(
                num_steps=4, num_seeds=2, estimator="infonce", **{"probe.kinds": ("linear",)}
            )
            current["run"] = "infomax"
            res = infomax.train_and_evaluate(config, f"{d}/infomax", mesh=mesh)
            run["infomax"] = rows(f"{d}/infomax")
            run["infomax_probes"] = [r["test_accuracy"] for r in res["probes"]]
            run["infomax_devices"] = res["devices"]
        small = dict(batch_size=40, max_examples=240, num_epochs=1, validation_examples=40)
        if "ib" in PARTS:
            # MINE-IB: a critic on (x, z) and a bound on the global batch, in the sweep
            # trainer that the InfoMax-VAE experiment shares.
            current["run"] = "ib"
            config = quick(ib_config, methods=("mine",), **small)
            ib.train_and_evaluate(config, f"{d}/ib", mesh=mesh)
            run["ib"] = rows(f"{d}/ib")
            run["ib_eval"] = rows(f"{d}/ib", "eval")  # the test split, each chunk sharded
        if "infomax_vae" in PARTS:
            # InfoMax-VAE: rows hold training means and the sharded test evaluation.
            vae_small = dict(batch_size=40, max_examples=240, num_epochs=1)
            current["run"] = "vae"
            res = infomax_vae.train_and_evaluate(
                quick(vae_config, **vae_small), f"{d}/vae", mesh=mesh
            )
            run["infomax_vae"] = rows(f"{d}/vae", "")
            run["vae_probes"] = [r["probe_test_accuracy"] for r in res["table"]]
        if "halves" in PARTS:
            # Halves: two seeds vmapped, each batch and the evaluation's images sharded.
            from experiments import halves
            from tests.test_halves import tiny_config as halves_tiny

            current["run"] = "halves"
            halves.train_and_evaluate(halves_tiny(encoders=("mlp",)), f"{d}/halves", mesh=mesh)
            with open(f"{d}/halves/metrics.jsonl") as f:
                run["halves"] = [
                    {f"{k}[{i}]": v for k in ("accuracy", "mi_test") for i, v in enumerate(r[k])}
                    for r in map(json.loads, f)
                ]
    out[n] = run

if "core" in PARTS:
    # The staircase with every batch split over the 8 devices against one group on one device.
    from experiments import staircase
    from tests.test_staircase import _tiny
    out["staircase"] = {}
    current["run"] = "staircase"
    for mode in ("bounds", "data"):
        with tempfile.TemporaryDirectory() as d:
            config = _tiny(parallel=mode, bound_groups=1, bounds=("nwj", "infonce", "flo"))
            res = staircase.train_and_evaluate(config, d)
        out["staircase"][mode] = {
            "means": [r["mean"] for r in res["statistics"]], "devices": res["runs"][0]["devices"]
        }

    # estimate_mi: each minibatch and the held-out split sharded, two seeds vmapped (1000
    # samples: a held-out split of 200, a multiple of 8, so both meshes see the same samples).
    import numpy as np
    from mi_jax import estimate_mi, tasks
    x, y = tasks.get_task("gaussian", dim=5).sample(jax.random.key(0), 1.0, 1000)
    x, y = np.asarray(x), np.asarray(y)
    kw = dict(max_steps=200, eval_every=100, batch_size=64, seeds=2)
    out["estimate"] = {}
    current["run"] = "estimate_mi"
    for n, mesh in meshes.items():
        est = estimate_mi(x, y, mesh=mesh, **kw)
        out["estimate"][n] = [*est.mi.tolist(), *est.train_curve.ravel().tolist()]
    try:  # an explicit mesh the batch does not split over
        estimate_mi(x, y, batch_size=60, mesh=meshes["8"])
    except ValueError as e:
        out["estimate_error"] = str(e)
    # The default mesh: the most devices the batch splits over (60 on 8 devices: 6).
    out["default_mesh"] = {b: parallel.data_mesh_for(b).devices.size for b in (60, 64, 7, 9, 2)}
    est = estimate_mi(x, y, batch_size=60, max_steps=20, eval_every=20)
    out["estimate_60"] = float(est.mi)

if "mige_toy" in PARTS:
    # The MIGE toy: its (rho, seed) cases split over the devices (7 cases: one device gets
    # padding); SSGE (an eigendecomposition per case, in each device's loop) and one trained
    # bound.
    from experiments import mige_toy
    from tests.test_mige_toy import _tiny as toy_tiny
    config = toy_tiny(num_rhos=7, num_seeds=1, bounds=("nwj",))
    with config.unlocked():
        del config.estimators["mige_stein"]
    out["mige_toy"] = {}
    current["run"] = "mige_toy"
    for n, mesh in meshes.items():
        with tempfile.TemporaryDirectory() as d:
            res = mige_toy.train_and_evaluate(config, d, mesh=mesh)
        out["mige_toy"][n] = {r["estimator"]: [r["rel_rmse"], r["rel_bias"]] for r in res["rows"]}
out["split_sizes"] = {r: {k: sorted(v) for k, v in s.items()} for r, s in split_sizes.items()}
for name, fn in unspied.items():
    setattr(parallel, name, fn)

if "core" in PARTS:
    # The sharded batch really is split: each device holds B / 8 rows of the gathered batch.
    mesh = meshes["8"]
    images = parallel.replicate(jax.numpy.zeros((64, 3)), mesh)
    batch = jax.jit(lambda a: parallel.shard_batch(a[:32], mesh))(images)
    out["shard_rows"] = sorted({s.data.shape[0] for s in batch.addressable_shards})
    out["spec"] = list(batch.sharding.spec)

    # InfoNCE on a batch sharded over 8 devices sees all 64 negatives: the one-device value,
    # not the mean of 8 per-device 8 x 8 blocks.
    critic = critics.SeparableCritic(hidden=(16,), embed_dim=8)
    kx, ky, kp = jax.random.split(jax.random.key(1), 3)
    x = jax.random.normal(kx, (64, 4))
    y = x + 0.3 * jax.random.normal(ky, (64, 4))
    params = critic.init(kp, x, y)
    value = lambda p, x, y: bounds.infonce(critic.apply(p, x, y))
    sharded = jax.jit(lambda p, x, y: value(p, *parallel.shard_batch((x, y), mesh)))
    out["infonce_sharded"] = float(sharded(parallel.replicate(params, mesh), x, y))
    out["infonce_one"] = float(jax.jit(value)(params, x, y))
    blocks = [value(params, x[i : i + 8], y[i : i + 8]) for i in range(0, 64, 8)]
    out["infonce_local_blocks"] = float(sum(blocks) / 8)

    # A host batch put split over the devices; a value computed from it, replicated on request.
    batch = parallel.put_batch(np.zeros((16, 3), np.float32), mesh)
    out["put_rows"] = sorted({s.data.shape[0] for s in batch.addressable_shards})
    doubled = jax.jit(lambda a: parallel.replicate_like(2 * a, mesh))(batch)
    out["replicate_like"] = doubled.sharding.is_fully_replicated
    # Experiments name a batch size the devices do not split, before they train.
    def refusal(run):
        try:
            with tempfile.TemporaryDirectory() as d:
                run(d)
        except ValueError as e:
            return str(e)

    out["batch_errors"] = [
        refusal(lambda d: infomax.train_and_evaluate(tiny_config(batch_size=6), d, mesh=mesh)),
        refusal(lambda d: staircase.train_and_evaluate(_tiny(parallel="data", batch_size=6), d)),
    ]
    # With several processes every device stays in the default mesh (each process holds a
    # share).
    jax.process_count = lambda: 2
    out["multi_process_mesh"] = {b: parallel.data_mesh_for(b).devices.size for b in (6, 3)}
print("RESULT " + json.dumps(out))
"""


def _flat(rows):
    # A multi-seed run's rows also hold {"per_seed": {name: [K values]}}.
    rows = [
        {
            **r,
            **{f"{k}[{i}]": v for k, vs in r.get("per_seed", {}).items() for i, v in enumerate(vs)},
        }
        for r in rows
    ]
    keys = sorted({k for r in rows for k in r if isinstance(r[k], int | float)} - {"step"})
    return keys, np.array([[float(r.get(k, np.nan)) for k in keys] for r in rows])


# The script's parts. The default run takes the library's own entry points (`estimate_mi`, the
# staircase, the sharding helpers) and the cheapest experiment, halves (32 s alone, against 107 s
# for the whole script on a 2-core AVX2 host); `-m slow` adds the other experiments.
DEFAULT_PARTS = ("core", "halves")
SLOW_PARTS = ("infomax", "ib", "infomax_vae", "mige_toy")


def _shared_run(parts: tuple[str, ...]) -> dict:
    """The script's result for ``parts``, computed once per test session: xdist workers share
    the session's cache directory (`tests/conftest.py`), where the first one to arrive runs the
    subprocess under a file lock and the others read what it wrote."""
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if not cache:
        return _run_eight_devices(parts)
    os.makedirs(cache, exist_ok=True)
    name = f"eight_device_run-{'-'.join(parts)}-{os.environ['MI_JAX_TEST_SESSION']}.json"
    path = os.path.join(cache, name)
    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not os.path.exists(path):
            result = _run_eight_devices(parts)
            with open(path + ".tmp", "w") as f:
                json.dump(result, f)
            os.replace(path + ".tmp", path)
        with open(path) as f:
            return json.load(f)


@pytest.fixture(scope="session")
def eight_device_run():
    return _shared_run(DEFAULT_PARTS)


@pytest.fixture(scope="session")
def eight_device_experiments():
    return _shared_run(SLOW_PARTS)


def _run_eight_devices(parts: tuple[str, ...]) -> dict:
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        PYTHONPATH=ROOT,
        XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8",
    )
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, ",".join(parts)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


_SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    "experiment",
    [
        "halves",
        pytest.param("infomax", marks=_SLOW),
        pytest.param("ib", marks=_SLOW),
        pytest.param("ib_eval", marks=_SLOW),
        pytest.param("infomax_vae", marks=_SLOW),
    ],
)
def test_eight_devices_give_the_one_device_metrics(request, experiment):
    fixture = "eight_device_run" if experiment == "halves" else "eight_device_experiments"
    result = request.getfixturevalue(fixture)
    one, eight = result["1"][experiment], result["8"][experiment]
    assert len(one) == len(eight) > 0
    keys, a = _flat(one)
    keys8, b = _flat(eight)
    expected = {
        "infomax": "loss[1]",
        "ib": "loss",
        "ib_eval": "error_mean",
        "infomax_vae": "elbo",
        "halves": "mi_test[1]",
    }
    assert keys == keys8 and expected[experiment] in keys
    # Same function, other reduction order (per-device partial sums, then an all-reduce):
    # float32 rounding, compounded over the steps (measured: relative differences ~1e-6).
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5, err_msg=str(keys))


def test_eight_device_layout(eight_device_run):
    assert eight_device_run["shard_rows"] == [4]  # 32 rows over 8 devices
    assert eight_device_run["spec"][0] == "data"


@pytest.mark.slow
def test_eight_device_probes(eight_device_experiments):
    one, eight = eight_device_experiments["1"], eight_device_experiments["8"]
    assert (one["infomax_devices"], eight["infomax_devices"]) == (1, 8)
    np.testing.assert_allclose(eight["infomax_probes"], one["infomax_probes"], atol=1e-6)
    np.testing.assert_allclose(eight["vae_probes"], one["vae_probes"], atol=1e-6)


def test_staircase_split_over_eight_devices_gives_the_one_device_estimates(eight_device_run):
    bounds, data = eight_device_run["staircase"]["bounds"], eight_device_run["staircase"]["data"]
    assert len(bounds["devices"]) == 1 and len(data["devices"]) == 8
    np.testing.assert_allclose(data["means"], bounds["means"], rtol=1e-4, atol=1e-5)


def test_estimate_mi_over_eight_devices_gives_the_one_device_estimates(eight_device_run):
    one, eight = eight_device_run["estimate"]["1"], eight_device_run["estimate"]["8"]
    assert len(one) == len(eight) == 2 + 2 * 2  # two estimates, two seeds x two rounds
    np.testing.assert_allclose(eight, one, rtol=1e-4, atol=1e-5)
    assert "`batch_size` (60)" in eight_device_run["estimate_error"]


def test_estimate_mi_default_mesh_takes_the_devices_the_batch_splits_over(eight_device_run):
    sizes = eight_device_run["default_mesh"]
    assert sizes == {"60": 6, "64": 8, "7": 7, "9": 3, "2": 2}
    assert np.isfinite(eight_device_run["estimate_60"])  # batch 60 on 8 devices runs (on 6)


@pytest.mark.slow
def test_mige_toy_cases_split_over_eight_devices(eight_device_experiments):
    one, eight = (
        eight_device_experiments["mige_toy"]["1"],
        eight_device_experiments["mige_toy"]["8"],
    )
    assert one.keys() == eight.keys() and len(one) > 1
    for name in one:  # each case is the same computation wherever it runs
        np.testing.assert_allclose(eight[name], one[name], rtol=1e-5, atol=1e-6, err_msg=name)


# Catches (a mutation check): a batch computed whole on every device, which gives the one-device
# numbers: estimate_mi's minibatches (64) or held-out split (200), halves' training (16) or test
# batches (put: 16 and 64), IB's evaluation chunks (240 and 1000; its training batches 40), the
# MIGE toy's cases (7, padded to 8), the probes' feature chunks (put: InfoMax 48, InfoMax-VAE
# 240), InfoMax's, InfoMax-VAE's and the staircase's (data mode) batches.
def test_each_run_splits_its_batches_over_the_eight_devices(eight_device_run):
    assert eight_device_run["split_sizes"] == {
        "halves": {"shard_batch": [16], "put_batch": [16, 64]},
        "staircase": {"shard_batch": [16]},
        "estimate_mi": {"shard_batch": [64, 200]},
    }
    r = eight_device_run
    assert r["put_rows"] == [2] and r["replicate_like"]  # 16 rows: 2 per device; gathered


@pytest.mark.slow
def test_each_experiment_splits_its_batches_over_the_eight_devices(eight_device_experiments):
    assert eight_device_experiments["split_sizes"] == {
        "infomax": {"shard_batch": [16], "put_batch": [48]},
        "ib": {"shard_batch": [40, 240, 1000]},
        "vae": {"shard_batch": [40], "put_batch": [240]},
        "mige_toy": {"put_batch": [8]},
    }


def test_experiments_name_a_batch_size_the_devices_do_not_split(eight_device_run):
    for error in eight_device_run["batch_errors"]:  # InfoMax, the staircase's data mode
        assert "`config.batch_size` (6) must be a multiple of the number of devices (8)" in (
            error or "no error"
        )


def test_several_processes_keep_every_device_in_the_default_mesh(eight_device_run):
    # data_mesh_for trims the devices to those a batch splits over in one process only.
    assert eight_device_run["multi_process_mesh"] == {"6": 8, "3": 8}


def test_batch_size_must_split_over_the_devices():
    mesh = parallel.data_mesh()
    parallel.check_batch_size(mesh.devices.size * 3, mesh)
    fake = type("FakeMesh", (), {"devices": np.empty(8)})()
    with pytest.raises(ValueError, match=r"^`batch_size` \(12\).*multiple of 8") as info:
        parallel.check_batch_size(12, fake)  # (before: "`config.batch_size`", no config there)
    # How to run on fewer (a resumed run cannot change its batch size; before: not said).
    assert "CUDA_VISIBLE_DEVICES" in str(info.value) and "XLA_FLAGS" in str(info.value)


def test_sharded_infonce_uses_the_global_batch(eight_device_run):
    r = eight_device_run
    np.testing.assert_allclose(r["infonce_sharded"], r["infonce_one"], rtol=1e-5)
    assert abs(r["infonce_local_blocks"] - r["infonce_one"]) > 0.1  # what local negatives give
    assert r["infonce_one"] <= np.log(64)


def test_replicate_keeps_values_and_places_on_the_mesh():
    mesh = parallel.data_mesh()
    tree = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": jnp.ones(4)}
    out = parallel.replicate(tree, mesh)
    np.testing.assert_array_equal(out["a"], tree["a"])
    assert out["b"].sharding.is_fully_replicated
    assert set(out["a"].sharding.device_set) == set(mesh.devices.flat)


def test_checked_mesh_names_a_bad_mesh():
    assert parallel.checked_mesh(None).axis_names == ("data",)  # None: every device
    device = jax.devices()[0]
    with pytest.raises(ValueError, match="`mesh` must be a jax.sharding.Mesh"):
        parallel.checked_mesh("cpu")
    with pytest.raises(ValueError, match="`mesh` must have the one axis 'data'"):
        parallel.checked_mesh(Mesh(np.array([device]), ("batch",)))
    with pytest.raises(ValueError, match="`mesh` must have the one axis 'data'"):
        parallel.checked_mesh(Mesh(np.array([[device]]), ("data", "model")))
    # XLA's own error named neither the mesh nor the device ("Device 0 not unique").
    with pytest.raises(ValueError, match=r"`mesh` lists a device more than once"):
        parallel.checked_mesh(Mesh(np.array([device, device]), ("data",)))


def test_no_cluster_environment_means_no_distributed_init(monkeypatch):
    for name in ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("SLURM_STEP_NUM_TASKS", raising=False)
    # A batch script in a 4-task allocation runs as one process until `srun` starts the tasks.
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "localhost")  # a single-host TPU VM
    assert parallel.initialize_distributed() is False
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "t0,t1")
    assert parallel._multi_process_env()
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "localhost")
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "4")  # inside `srun -n 4`
    assert parallel._multi_process_env()
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "1")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    assert parallel._multi_process_env()
    # A generic COORDINATOR_ADDRESS is not jax.distributed's variable: no multi-process job.
    monkeypatch.delenv("OMPI_COMM_WORLD_SIZE")
    monkeypatch.setenv("COORDINATOR_ADDRESS", "10.0.0.1:1234")
    assert not parallel._multi_process_env()


# Two processes with two host devices each (a multi-host job in miniature; gloo collectives):
# each runs estimate_mi and the experiments whose multi-process paths differ from one process
# (global arrays from host copies, PRNG keys among them; outputs read back on every host; files
# written by the first process only), and prints what it computed.
_TWO_PROCESS_SCRIPT = r"""
import json, os, sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
pid, port, workdir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid)
assert (jax.process_count(), jax.device_count(), jax.local_device_count()) == (2, 4, 2)
import numpy as np
from mi_jax import estimate_mi, parallel, tasks
from configs import ib as ib_config
from experiments import halves, ib, mige_toy, staircase
from tests.test_halves import tiny_config as halves_tiny
from tests.test_mige_toy import _tiny as toy_tiny
from tests.test_staircase import _tiny as staircase_tiny

out = {}
x, y = tasks.get_task("gaussian", dim=5).sample(jax.random.key(0), 1.0, 1000)
kw = dict(max_steps=200, eval_every=100, batch_size=64, seeds=2)
est = estimate_mi(np.asarray(x), np.asarray(y), **kw)
out["estimate"] = [*est.mi.tolist(), *est.train_curve.ravel().tolist()]
config = ib_config.get_config("quick")
config.update_from_flattened_dict(
    dict(methods=("mine",), batch_size=40, max_examples=240, num_epochs=1, validation_examples=40)
)
res = ib.train_and_evaluate(config, f"{workdir}/ib")
out["ib"] = [r["error_mean"] for r in res["methods"]["mine"]["final"]]
res = halves.train_and_evaluate(halves_tiny(encoders=("mlp",)), f"{workdir}/halves")
out["halves"] = [run["accuracy"] for run in res["runs"]]
config = toy_tiny(num_rhos=3, num_seeds=1, bounds=("nwj",))
res = mige_toy.train_and_evaluate(config, f"{workdir}/mige")
out["mige_toy"] = [r["rel_rmse"] for r in res["rows"]]
config = staircase_tiny(parallel="data", bound_groups=1, bounds=("nwj", "infonce"))
res = staircase.train_and_evaluate(config, f"{workdir}/stair")
out["staircase"] = [r["mean"] for r in res["statistics"]]
# The default mode: groups of bounds, each on one of this process's own devices.
config = staircase_tiny(bounds=("nwj", "infonce", "flo"))
res = staircase.train_and_evaluate(config, f"{workdir}/stair_bounds")
out["staircase_bounds"] = [r["mean"] for r in res["statistics"]]
print("RESULT " + json.dumps(out, default=str))
"""


@pytest.mark.slow  # 90-110 s on a 2-core AVX2 host (two processes)
def test_two_processes_compute_the_same_and_the_first_writes_the_files(tmp_path):
    with socket.socket() as s:  # a free port for the coordinator
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        PYTHONPATH=ROOT,
        XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2",
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _TWO_PROCESS_SCRIPT, str(i), str(port), str(tmp_path)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-4000:]
        line = next(ln for ln in stdout.splitlines() if ln.startswith("RESULT "))
        results.append(json.loads(line[len("RESULT ") :]))
    first, second = results
    assert first == second  # one global computation, read back whole by each process
    assert len(first["estimate"]) == 2 + 2 * 2 and np.all(np.isfinite(first["estimate"]))
    assert np.all(np.isfinite(first["staircase_bounds"]))
    # Written once: the rows of one run (two writers appended each row twice, and raced on
    # results.json's temp file).
    for name in ("ib", "halves", "mige", "stair", "stair_bounds"):
        assert os.path.exists(tmp_path / name / "results.json"), name
    with open(tmp_path / "halves" / "metrics.jsonl") as f:
        steps = [json.loads(line)["step"] for line in f]
    assert len(steps) == len(set(steps)) > 0
