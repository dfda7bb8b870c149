"""Smoke and behaviour tests of `experiments.staircase`."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import staircase as staircase_config
from experiments import _common, _matmul_floor, staircase
from mi_jax import tasks, training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny(**overrides):
    config = staircase_config.get_config("quick")
    with config.unlocked():
        config.steps_per_level = 20
        config.levels = (1.0, 2.0)
        config.chunk_steps = 20
        config.log_every = 10
        config.batch_size = 16
        config.critic_hparams.separable.hidden = (32,)
        config.critic_hparams.concat.hidden = (16, 16)
        config.aux_hidden = (16,)
        for k, v in overrides.items():
            setattr(config, k, v)
    return config


def test_quick_preset_shape():
    config = staircase_config.get_config("quick")
    assert config.steps_per_level * len(config.levels) == 1000
    assert set(config.bounds) == set(staircase_config.BOUNDS)
    full = staircase_config.get_config()
    assert (full.dim, full.batch_size, full.learning_rate, full.steps_per_level) == (
        20,
        64,
        5e-4,
        4000,
    )
    with pytest.raises(ValueError, match="preset"):
        staircase_config.get_config("quik")


def test_train_and_evaluate_writes_everything(tmp_path):
    config = _tiny(
        critics=("separable", "concat"),
        tasks=("gaussian", "cubic"),
        bounds=("nwj", "interpolated", "flo"),
    )
    results = staircase.train_and_evaluate(config, str(tmp_path))
    files = set(os.listdir(tmp_path))
    assert {"config.json", "metrics.jsonl", "results.json", "results.csv"} <= files
    for task in ("gaussian", "cubic"):
        for critic in ("separable", "concat"):
            assert f"staircase_{task}_{critic}.png" in files
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 4 * 4  # 4 runs x 40 steps / 10
    stats = json.loads((tmp_path / "results.json").read_text())["statistics"]
    assert len(stats) == 4 * len(config.bounds) * 2
    assert len(results["runs"]) == 4 and all(r["steps_per_s"] > 0 for r in results["runs"])
    # Every step's estimate is kept: the statistics are recomputed from it exactly (before,
    # only the means over `log_every` steps were in the workdir).
    saved = np.load(tmp_path / "estimates_cubic_concat.npz")
    assert saved["estimates"].shape == (1, 40, 3) and saved["true_mi"].shape == (40,)
    assert list(saved["bounds"]) == list(config.bounds)
    again = staircase.level_statistics(saved["estimates"], config)
    want = [r for r in stats if (r["task"], r["critic"]) == ("cubic", "concat")]
    keys = ("bound", "true_mi", "mean", "bias", "variance", "mse")
    assert [_common.to_builtin({k: r[k] for k in keys}) for r in again] == [
        {k: r[k] for k in keys} for r in want
    ]


def test_seeds_are_vmapped_and_pooled(tmp_path):
    config = _tiny(num_seeds=2, bounds=("nwj", "infonce"))
    staircase.train_and_evaluate(config, str(tmp_path))
    estimates = np.load(tmp_path / "estimates_gaussian_separable.npz")["estimates"]
    assert estimates.shape == (2, 40, 2) and np.all(np.isfinite(estimates))
    assert not np.allclose(estimates[0], estimates[1])  # each seed its own samples and init
    # A metrics row is the mean over both seeds and the row's `log_every` steps.
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20, 30, 40]
    for row in rows:
        window = estimates[:, row["step"] - 10 : row["step"]]
        np.testing.assert_allclose(row["mi/infonce"], window[..., 1].mean(), rtol=1e-6)
    stats = json.loads((tmp_path / "results.json").read_text())["statistics"]
    assert all(r["seed_std"] > 0 for r in stats)


def test_runs_under_x64(tmp_path):
    # The compiled chunk took its start step as a Python 0, an int64 under x64, and refused
    # the int32 every chunk passes ("compiled with int64[] and called with int32[]").
    with jax.enable_x64(True):
        results = staircase.train_and_evaluate(_tiny(bounds=("nwj", "infonce")), str(tmp_path))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(results["runs"]) == 1 and len(rows) == 4  # 40 steps, a row every 10
    # The samples are float64 there, and so are the critics' matmuls (the summary said float32).
    assert results["runs"][0]["matmul_dtype"] == "float64"
    assert "float64 matmuls" in staircase.summary(results, _tiny())
    # ... and the estimates stay float64 on the host (cast to float32, a finite value past
    # float32's range read as inf and stopped the run as diverged).
    estimates = np.load(tmp_path / "estimates_gaussian_separable.npz")["estimates"]
    assert estimates.dtype == np.float64


def test_quick_preset_runs(tmp_path):
    """The `:quick` preset as shipped, from the command line: all nine bounds, 1000 steps,
    finite and sensible. In a subprocess without the suite's LLVM -O0 (tests/conftest.py),
    which would run its steps three times slower (29 s in all against 47 s)."""
    fast = ("--xla_backend_optimization_level", "--xla_llvm_disable_expensive_passes")
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(fast)]
    command = ["-m", "experiments.staircase", "--config", f"{ROOT}/configs/staircase.py:quick"]
    result = subprocess.run(
        [sys.executable, *command, f"--workdir={tmp_path}"],
        cwd=ROOT,
        env=dict(os.environ, XLA_FLAGS=" ".join(flags)),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    config = staircase_config.get_config("quick")
    results = json.loads((tmp_path / "results.json").read_text())
    stats = {(r["bound"], r["true_mi"]): r["mean"] for r in results["statistics"]}
    assert all(np.isfinite(r["mean"]) for r in results["statistics"])
    for level in config.levels:
        assert stats[("infonce", level)] <= np.log(config.batch_size) + 1e-4
    # Bounds that track the staircase rise with it even after 200 steps per level.
    for name in ("infonce", "smile", "dv", "interpolated"):
        assert stats[(name, 10.0)] > stats[(name, 2.0)] + 1.0, name
    assert (tmp_path / "staircase_gaussian_separable.png").stat().st_size > 10_000


def test_level_statistics_against_hand_computation():
    config = _tiny(bounds=("nwj", "dv"), levels=(1.0, 3.0))
    with config.unlocked():
        config.steps_per_level = 4
        config.stats_fraction = 0.5
    values = np.zeros((1, 8, 2))
    values[0, :, 0] = [9, 9, 0.5, 1.5, 9, 9, 2.0, 4.0]
    values[0, :, 1] = 1.0
    rows = staircase.level_statistics(values, config)
    nwj_level1 = rows[0]
    assert nwj_level1["bound"] == "nwj" and nwj_level1["true_mi"] == 1.0
    assert nwj_level1["mean"] == pytest.approx(1.0) and nwj_level1["variance"] == pytest.approx(
        0.25
    )
    nwj_level2 = rows[1]
    assert nwj_level2["bias"] == pytest.approx(0.0) and nwj_level2["mse"] == pytest.approx(1.0)
    assert rows[3]["bias"] == pytest.approx(-2.0)
    assert np.isnan(nwj_level1["seed_std"])  # one seed: not measured (was 0.0)
    # Two seeds: pooled statistics over both, seed_std over the seeds' window means (1 and 3).
    two = np.concatenate([values, values + np.array([2.0, 0.0])], axis=0)
    rows = staircase.level_statistics(two, config)
    assert rows[0]["mean"] == pytest.approx(2.0) and rows[0]["seed_std"] == pytest.approx(1.0)
    assert rows[0]["variance"] == pytest.approx(0.25 + 1.0)
    assert rows[2]["seed_std"] == 0.0  # dv: the same constant for both seeds


@pytest.mark.parametrize(
    "field, value, error, match",
    [
        ("bounds", ("nwj", "smiel"), KeyError, "smile"),
        ("critics", ("seperable",), KeyError, "separable"),
        ("tasks", ("gausian",), KeyError, "gaussian"),
        ("chunk_steps", 7, ValueError, "chunk_steps"),
        ("batch_size", 1, ValueError, "batch_size"),
        ("compute_dtype", "float16", KeyError, "bfloat16"),
        ("bound_groups", -1, ValueError, "bound_groups"),
        ("parallel", "model", ValueError, "config.parallel"),
        ("num_seeds", 0, ValueError, "num_seeds"),
        ("levels", (), ValueError, "config.levels is empty"),
        ("levels", (2.0, -1.0), ValueError, "config.levels must be positive"),
        ("tasks", (), ValueError, "config.tasks is empty"),
        ("bounds", ("smile", "smile"), ValueError, "`config.bounds` names an entry twice"),
        ("stats_fraction", 2.0, ValueError, "stats_fraction"),
        ("log_every", 8, ValueError, "log_every .8. must divide config.chunk_steps .20."),
        ("steps_per_level", 0, ValueError, "steps_per_level"),
        ("aux_hidden", (0,), ValueError, "`config.aux_hidden` must hold integers"),  # was late
        # A critic's width: checked when the critic is first applied, after the first results.
        (
            "critic_hparams",
            {"separable": {"hidden": (0,)}, "concat": {"hidden": (8,)}},
            ValueError,
            "SeparableCritic: `hidden` must hold integers",
        ),
        ("levels", ("a", "b"), ValueError, "config.levels must be positive"),
        ("learning_rate", -1.0, ValueError, "`config.learning_rate` must be a positive number"),
        ("learning_rate", 0.0, ValueError, "`config.learning_rate` must be a positive number"),
        ("plot_smoothing", 1.5, ValueError, r"config.plot_smoothing .* must lie in \[0, 1\)"),
        ("dim", 0, ValueError, "`dim` must be an integer >= 1"),
    ],
)
def test_bad_config_is_rejected_before_running(tmp_path, field, value, error, match):
    config = _tiny(**{field: value})
    with pytest.raises(error, match=match):
        staircase.train_and_evaluate(config, str(tmp_path))
    assert not (tmp_path / "metrics.jsonl").exists()


def test_a_log_window_across_two_levels_is_refused(tmp_path):
    # Steps 9-12 of 10-step levels: a row would average both levels' estimates under the
    # second's true MI.
    config = _tiny(steps_per_level=10, log_every=4)
    with pytest.raises(ValueError, match=r"log_every .4. must divide config.steps_per_level"):
        staircase.train_and_evaluate(config, str(tmp_path))
    assert not (tmp_path / "metrics.jsonl").exists()


def test_every_task_bound_and_critic_is_built_before_running(tmp_path):
    # Before: a spiral task at dim 1 failed after the Gaussian task's results were written; a
    # Student-t level below the family's least MI ran at that least MI, recorded as the level;
    # typos in hyperparameters of critics or bounds the run does not use went unnoticed.
    cases = [
        (dict(tasks=("gaussian", "spiral"), dim=1), ValueError, "spiral task needs `dim` >= 2"),
        (dict(tasks=("student_t",), levels=(1.0, 0.3)), ValueError, "config.levels: .*student_t"),
        # Traced in the scan, a level beyond float32's reach sampled y == x unchecked.
        (dict(dim=2, levels=(1.0, 30.0)), ValueError, "config.levels: 30.0 nats is more than"),
        (dict(critic_hparams={"seperable": {"hidden": (8,)}}), KeyError, "separable"),
        (dict(bound_hparams={"smile": {"clp": 5.0}}), ValueError, "bound_hparams.smile`: .*clp"),
        (
            dict(bound_hparams={"smile": {"clip": -1.0}}),
            ValueError,
            "bound_hparams.smile`: .*`clip` must",
        ),
        (dict(bound_hparams={"smiel": {"clip": 5.0}}), KeyError, "smile"),
        (dict(bound_hparams={"smile": 5}), ValueError, "`config.bound_hparams.smile` must map"),
        (dict(critic_hparams={"concat": {"hiden": (8,)}}), TypeError, "hiden"),
        (dict(task_hparams={"studnet_t": {"df": 3.0}}), KeyError, "student_t"),
        (dict(task_hparams={"student_t": {"dof": 3.0}}), TypeError, r"known: \['df'\]"),
        (dict(task_hparams={"student_t": 3.0}), ValueError, "`config.task_hparams.student_t`"),
        (dict(task_hparams={"gaussian": {"dim": 3}}), ValueError, "sets `dim`: every task's"),
        (  # the factory's own check, named with the setting
            dict(tasks=("student_t",), task_hparams={"student_t": {"df": -1.0}}),
            ValueError,
            r"`config.task_hparams.student_t` \{'df': -1.0\}: task 'student_t': `df` must be",
        ),
    ]
    for overrides, error, match in cases:
        config = _tiny()
        with config.unlocked():
            for key, value in overrides.items():
                config[key] = ml_collections.ConfigDict(value) if isinstance(value, dict) else value
        with pytest.raises(error, match=match):
            staircase.train_and_evaluate(config, str(tmp_path))
        assert not (tmp_path / "config.json").exists()


def test_task_hyperparameters_reach_the_sampler():
    # Before: tasks took `dim` alone; a Student-t of another df needed a registered partial.
    config = _tiny(tasks=("student_t",))
    with config.unlocked():
        config.task_hparams = ml_collections.ConfigDict({"student_t": {"df": 3.0}})
    staircase.validate_config(config)
    key = jax.random.key(0)
    got = staircase._task(config, "student_t").sample(key, 2.0, 16)  # noqa: SLF001
    want = tasks.get_task("student_t", dim=config.dim, df=3.0).sample(key, 2.0, 16)
    default = tasks.get_task("student_t", dim=config.dim).sample(key, 2.0, 16)
    np.testing.assert_array_equal(got[1], want[1])
    assert not np.array_equal(got[1], default[1])


def test_config_typo_is_an_error():
    config = staircase_config.get_config("quick")
    with pytest.raises(AttributeError):
        config.steps_per_levle = 3


def test_a_command_line_override_of_a_missing_field_is_named(tmp_path):
    # Before: a raw ml_collections traceback ending in `AttributeError: "'bound'"`.
    args = ["--config", "configs/staircase.py:quick", f"--workdir={tmp_path / 'run'}"]
    for typo, named in (("--config.bound=infonc", "'bound'"), ("--config.levls=(1.0,)", "'levls'")):
        out = subprocess.run(
            [sys.executable, "-m", "experiments.staircase", *args, typo],
            capture_output=True,
            text=True,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
        assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
        assert f"staircase: the config has no field {named}" in out.stderr
        assert not (tmp_path / "run").exists()


def test_nan_stops_with_bound_and_step_and_keeps_results(tmp_path):
    # A huge learning rate overflows the critic's weights (NWJ's soft exp keeps any finite score
    # finite, so it takes inf weights to make the bound non-finite).
    config = _tiny(bounds=("nwj",), learning_rate=1e15, tasks=("gaussian",))
    with config.unlocked():
        config.critics = ("separable", "concat")
        config.steps_per_level = 200
        config.chunk_steps = 20
    with pytest.raises(training.NonFiniteError, match=r"bound 'nwj \(gaussian, separable\)'.*step"):
        staircase.train_and_evaluate(config, str(tmp_path))
    assert (tmp_path / "config.json").exists()
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) >= 2


def test_an_interrupted_rerun_keeps_the_earlier_results(tmp_path, monkeypatch):
    # A run of two critics, then a rerun of the same config whose second critic diverges: the
    # rerun's first results replace the earlier ones, the earlier second ones stay.
    config = _tiny(bounds=("nwj",), tasks=("gaussian",))
    with config.unlocked():
        config.critics = ("separable", "concat")
    first = staircase.train_and_evaluate(config, str(tmp_path))
    real_run_one = staircase.run_one

    def diverging_concat(config, task_name, critic_name, *args):
        if critic_name == "concat":
            config = ml_collections.ConfigDict(config.to_dict())
            config.learning_rate = 1e15  # the NWJ critic diverges
        return real_run_one(config, task_name, critic_name, *args)

    monkeypatch.setattr(staircase, "run_one", diverging_concat)
    with pytest.raises(training.NonFiniteError, match=r"bound 'nwj \(gaussian, concat\)'"):
        staircase.train_and_evaluate(config, str(tmp_path))
    kept = _common.read_json(str(tmp_path / "results.json"))
    assert [(r["task"], r["critic"]) for r in kept["runs"]] == [
        ("gaussian", "separable"),
        ("gaussian", "concat"),
    ]
    assert kept["runs"][1]["run_s"] == first["runs"][1]["run_s"]  # the first run's concat
    assert kept["runs"][0]["run_s"] != first["runs"][0]["run_s"]  # the rerun's separable
    assert len(kept["statistics"]) == len(first["statistics"])
    assert kept["wall_s"] == first["wall_s"]  # the earlier run's, until the rerun completes
    csv_rows = (tmp_path / "results.csv").read_text().splitlines()
    assert len(csv_rows) == 1 + len(first["statistics"])


def test_bound_groups_partition_the_bounds_by_cost():
    config = staircase_config.get_config()
    groups = staircase.bound_groups(config, 2)
    assert sorted(i for g in groups for i in g) == list(range(len(config.bounds)))
    names = [[config.bounds[i] for i in g] for g in groups]
    # FLO (with its u network) and TUBA (with its baseline) are the costly ones: split up.
    assert not any({"flo", "tuba"} <= set(g) for g in names)
    assert abs(len(groups[0]) - len(groups[1])) <= 1
    assert sorted(staircase.bound_groups(config, 20)) == [[i] for i in range(len(config.bounds))]


def test_split_into_groups_gives_the_same_estimates(tmp_path):
    """Groups are separate programs (here on one device): the estimates must not change, and
    each bound's values must land in its own column."""
    bounds = ("nwj", "dv", "flo", "smile", "tuba")
    one = staircase.train_and_evaluate(_tiny(bounds=bounds, bound_groups=1), str(tmp_path / "one"))
    three = staircase.train_and_evaluate(
        _tiny(bounds=bounds, bound_groups=3), str(tmp_path / "three")
    )
    assert len(three["runs"][0]["bound_groups"]) == 3
    assert three["runs"][0]["bound_groups"] != [list(bounds)]
    means = [np.array([r["mean"] for r in res["statistics"]]) for res in (one, three)]
    np.testing.assert_allclose(means[0], means[1], rtol=1e-3, atol=1e-4)


def test_bfloat16_staircase_runs_and_is_recorded(tmp_path):
    results = staircase.train_and_evaluate(
        _tiny(bounds=("infonce", "flo"), compute_dtype="bfloat16"), str(tmp_path)
    )
    assert results["runs"][0]["compute_dtype"] == "bfloat16"
    assert all(np.isfinite(r["mean"]) for r in results["statistics"])
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["compute_dtype"] == "bfloat16"


def test_critics_without_a_compute_dtype_run_in_float32_and_refuse_bfloat16(tmp_path):
    # The bilinear and inner-product critics (and a user's) have no `compute_dtype` field: the
    # staircase used to pass it to every critic ("unknown hyperparameters ['compute_dtype']").
    config = _tiny(bounds=("infonce",), critics=("bilinear", "inner_product"), levels=(1.0,))
    results = staircase.train_and_evaluate(config, str(tmp_path))
    assert {r["critic"] for r in results["statistics"]} == {"bilinear", "inner_product"}
    assert all(np.isfinite(r["mean"]) for r in results["statistics"])
    with pytest.raises(ValueError, match=r"config.compute_dtype .*'bilinear' has no"):
        staircase.validate_config(_tiny(critics=("bilinear",), compute_dtype="bfloat16"))


def _separable_matmul_flops(config) -> int:
    """FLOPs of one training step's matmuls for one separable critic (one hidden layer,
    embedding 32), by hand: forward, weight and hidden-input gradients, scores."""
    b, d, (h,), e = config.batch_size, config.dim, config.critic_hparams.separable.hidden, 32
    per_net = b * (d * h + h * e)  # multiply-adds of one MLP's forward pass
    forward = 2 * per_net + b * b * e  # g, h and the [B, B] score matrix
    backward = 2 * per_net + 2 * b * h * e + 2 * b * b * e  # weights, hidden inputs, scores
    return 2 * (forward + backward)


def test_flop_count_matches_the_separable_critics_matmuls(tmp_path):
    """The reported FLOPs per step: at least the critic's matmuls counted by hand, and not
    much more (Adam, sampling, the bound); read off the lowered chunk of 20 steps, whose loop
    body XLA's cost analysis counts once (were it counted per step, 20 times the count)."""
    config = _tiny(bounds=("nwj",))
    results = staircase.train_and_evaluate(config, str(tmp_path))
    matmul_flops = _separable_matmul_flops(config)
    run = results["runs"][0]
    counted = run["gflop_per_step"] * 1e9
    assert matmul_flops <= counted <= 1.6 * matmul_flops, (counted, matmul_flops)
    assert run["gflop_per_s"] == pytest.approx(counted * run["steps_per_s"] / 1e9, rel=1e-6)


def test_dot_calls_count_forward_backward_and_scan_matmuls():
    x, w1, w2 = jnp.ones((8, 3)), jnp.ones((3, 5)), jnp.ones((5, 2))

    def step(w1, w2):
        grads = jax.grad(lambda ws: jnp.sum(jnp.tanh(x @ ws[0]) @ ws[1]))((w1, w2))
        looped = jax.lax.scan(lambda c, _: (c @ w1 @ w1.T, None), x, None, length=3)[0]
        return grads, looped

    calls = _matmul_floor.dot_calls(jax.make_jaxpr(step)(w1, w2).jaxpr)
    # forward x @ w1, h @ w2; backward dw2, dh, dw1 (no dx); the scan body's two, three times
    assert len(calls) == 5 + 2 * 3
    shapes = sorted((lhs.shape, rhs.shape) for lhs, rhs, _, _ in calls)
    assert shapes.count(((8, 3), (3, 5))) == 1 + 3  # forward first layer, scan body
    # The matmul-only program runs exactly these matmuls, `steps` times, and nothing else.
    program = _matmul_floor.matmul_only_program(calls, steps=4)
    operands = _matmul_floor.random_operands(calls, jax.random.key(0))
    again = _matmul_floor.dot_calls(jax.make_jaxpr(program)(operands).jaxpr)

    def signature(call):
        return call[0].shape, call[1].shape, str(call[2])

    assert sorted(map(signature, again)) == sorted(map(signature, calls * 4))
    # forward 8x3x5 and 8x5x2, backward dw2 5x8x2, dh 8x2x5, dw1 3x8x5, the scan 3 x (8x3x5,
    # 8x5x3): 2 FLOPs per multiply-add
    assert _matmul_floor.dot_flops(calls) == 2 * (120 + 80 + 80 + 80 + 120 + 3 * (120 + 120))
    assert np.isfinite(float(jax.jit(program)(operands)))


def test_matmul_floor_is_reported(tmp_path):
    """The floor program's matmuls are the step's: for two bounds' critics (NWJ and InfoNCE,
    the same separable critic each), twice the FLOPs counted by hand, exactly."""
    config = _tiny(bounds=("nwj", "infonce"), matmul_floor_steps=10)
    results = staircase.train_and_evaluate(config, str(tmp_path))
    run = results["runs"][0]
    expected = 2 * _separable_matmul_flops(config)
    assert run["matmul_gflop_per_step"] * 1e9 == pytest.approx(expected, rel=1e-9)
    assert 0 < run["matmul_floor_s"] < 10 * run["run_s"]
    assert "matmuls alone" in staircase.summary(results, config)
    with pytest.raises(ValueError, match="matmul_floor_steps"):
        staircase.validate_config(_tiny(matmul_floor_steps=-1))


def test_a_cpu_split_jax_cannot_take_any_more_is_refused_or_said(tmp_path, capsys, monkeypatch):
    # Before: after JAX's first computation, `split_cpu_into_devices` set XLA_FLAGS (left in the
    # environment for every subprocess) and changed nothing, and `train_and_evaluate` called from
    # Python ran `config.cpu_devices = 2` on one device without a word.
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    monkeypatch.setenv("XLA_FLAGS", " ".join(flags))
    have = len(jax.devices("cpu"))  # (JAX has started in this process)
    with pytest.raises(RuntimeError, match=f"cannot split the CPU into {have + 1} devices"):
        _common.split_cpu_into_devices(have + 1)
    assert os.environ["XLA_FLAGS"] == " ".join(flags)
    staircase.train_and_evaluate(_tiny(bounds=("infonce",), cpu_devices=have + 1), str(tmp_path))
    out = capsys.readouterr().out
    assert f"config.cpu_devices = {have + 1}, but JAX runs on {have} CPU device(s)" in out
    staircase.train_and_evaluate(_tiny(bounds=("infonce",), cpu_devices=have), str(tmp_path / "b"))
    assert "config.cpu_devices" not in capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# Reported statistics by hand (a mutation check: each caught a change the tests above missed).


def test_level_statistics_on_an_asymmetric_window():
    """Catches: window of 1 - stats_fraction, mse = variance, median for the mean.
    The existing hand test uses stats_fraction 0.5 (symmetric) and windows symmetric around
    their mean, with bias 0 where mse is checked."""
    config = ml_collections.ConfigDict(
        dict(bounds=("nwj",), levels=(1.0,), steps_per_level=4, stats_fraction=0.75)
    )
    values = np.array([9.0, 0.0, 1.0, 5.0]).reshape(1, 4, 1)  # window: the last 3 steps
    (row,) = staircase.level_statistics(values, config)
    assert row["mean"] == pytest.approx(2.0, abs=1e-12)
    assert row["bias"] == pytest.approx(1.0, abs=1e-12)
    assert row["variance"] == pytest.approx(14 / 3, abs=1e-12)
    assert row["mse"] == pytest.approx(17 / 3, abs=1e-12)  # = bias^2 + variance
    assert row["mse"] == pytest.approx(row["bias"] ** 2 + row["variance"], abs=1e-12)


def test_plot_ema_is_the_standard_recursion_started_at_the_first_value():
    """Catches: decay and 1 - decay swapped, started at 0: a curve pulled to 0 at the start."""
    np.testing.assert_allclose(
        staircase._ema(np.array([2.0, 0.0, 0.0]), 0.9), [2.0, 1.8, 1.62], rtol=1e-12
    )


class _Progress:
    def update(self, n):
        pass


class _Writer:
    def __init__(self):
        self.rows = []

    def write(self, row):
        self.rows.append(row)


def test_staircase_throughput_excludes_compile_time_and_sums_groups(monkeypatch):
    """steps/s is steps over the run time only (compile time reported apart), GFLOP/s is
    GFLOP per step x steps / run time, compile time is the sum over the bound groups.

    Catches: a metrics row's true MI read at the step after its window (the next level's at a
    boundary), compilation inside steps/s, the slowest group's compile time for the sum,
    GFLOP/s without the steps."""
    made = []
    real = staircase._GroupRun

    class Spy(real):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append(self)

    monkeypatch.setattr(staircase, "_GroupRun", Spy)
    config = _tiny(bounds=("nwj", "infonce"), bound_groups=2, num_seeds=2)
    writer = _Writer()
    out = staircase.run_one(config, "gaussian", "separable", writer, _Progress())
    assert len(made) == 2
    # metrics.jsonl rows: the true MI of the level their window lies in, the window's mean
    # over steps and seeds of each bound's own column.
    assert [r["step"] for r in writer.rows] == [10, 20, 30, 40]
    assert [r["true_mi"] for r in writer.rows] == [1.0, 1.0, 2.0, 2.0]
    for r in writer.rows:
        window = out["values"][:, r["step"] - 10 : r["step"]]
        assert r["mi/nwj"] == pytest.approx(float(window[..., 0].mean()), rel=1e-6)
        assert r["mi/infonce"] == pytest.approx(float(window[..., 1].mean()), rel=1e-6)
    assert out["compile_s"] == pytest.approx(sum(r.compile_s for r in made), rel=1e-12)
    assert out["steps"] == 40
    assert out["steps_per_s"] == pytest.approx(out["steps"] / out["run_s"], rel=1e-9)
    assert out["gflop_per_s"] == pytest.approx(
        out["gflop_per_step"] * out["steps"] / out["run_s"], rel=1e-9
    )


def test_staircase_bound_steps_count_every_seed(tmp_path):
    # Catches: bound-steps per second without the seeds.
    results = staircase.train_and_evaluate(
        _tiny(bounds=("nwj", "infonce", "dv"), num_seeds=2), str(tmp_path)
    )
    (run,) = results["runs"]
    assert run["bound_steps_per_s"] == pytest.approx(run["steps_per_s"] * 3 * 2, rel=1e-9)


def test_staircase_summary_cells_are_mean_and_variance_of_the_right_row():
    # Catches: the MSE shown in the variance's place.
    config = ml_collections.ConfigDict(
        dict(
            levels=(1.0, 2.0),
            num_seeds=1,
            stats_fraction=0.5,
            matmul_floor_steps=0,
            compute_dtype="float32",
        )
    )
    run = dict(
        task="gaussian",
        critic="separable",
        bounds=["nwj", "dv"],
        steps=40,
        bound_groups=[["nwj", "dv"]],
        devices=["cpu0"],
        compile_s=1.0,
        run_s=2.0,
        steps_per_s=20.0,
        bound_steps_per_s=40.0,
        gflop_per_step=0.001,
        gflop_per_s=0.02,
    )
    stats = []
    for name, base in (("nwj", 10.0), ("dv", 20.0)):
        for level in (1.0, 2.0):
            stats.append(
                dict(
                    task="gaussian",
                    critic="separable",
                    bound=name,
                    true_mi=level,
                    mean=base + level,
                    bias=base,
                    variance=0.5 + level,
                    mse=99.0,
                    seed_std=float("nan"),
                )
            )
    text = staircase.summary(dict(runs=[run], statistics=stats, wall_s=3.0), config)
    (nwj,) = [x for x in text.splitlines() if x.split()[:1] == ["nwj"]]
    (dv,) = [x for x in text.splitlines() if x.split()[:1] == ["dv"]]
    assert "11.00 (1.50)" in nwj and "12.00 (2.50)" in nwj
    assert "21.00 (1.50)" in dv and "22.00 (2.50)" in dv
    assert "99.00" not in text
    assert "20 steps/s" in text and "40 bound-steps/s" in text and "compile 1.0 s" in text


def test_staircase_plot_panels_show_each_bounds_raw_and_ema_series(tmp_path, figures):
    # Catches: every panel titled with the first bound.
    rng = np.random.default_rng(0)
    values = rng.normal(size=(2, 6, 3)) + np.arange(3)  # [seeds, steps, bounds]
    true_mi = np.array([1.0, 1.0, 1.0, 2.0, 2.0, 2.0])
    names = ("nwj", "dv", "flo")
    staircase.plot_staircase(str(tmp_path / "p.png"), values, true_mi, names, "t", 0.5)
    (fig,) = figures.values()
    axes = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in axes] == list(names)
    for b, ax in enumerate(axes):
        lines = [line.get_ydata() for line in ax.get_lines()]
        for s in range(2):
            raw, ema = np.asarray(lines[2 * s]), np.asarray(lines[2 * s + 1])
            np.testing.assert_allclose(raw, values[s, :, b])
            want = [values[s, 0, b]]
            for v in values[s, 1:, b]:
                want.append(0.5 * want[-1] + 0.5 * v)
            np.testing.assert_allclose(ema, want, rtol=1e-12)
        np.testing.assert_allclose(lines[-1], true_mi)
