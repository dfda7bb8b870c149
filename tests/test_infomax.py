"""The InfoMax experiment: smoke runs per estimator, outputs, resume, NaN stop, bad configs."""

import json
import os
import shutil
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import infomax as infomax_config
from experiments import _common, infomax, infomax_table
from mi_jax import bounds, probes, training


def tiny_config(**overrides):
    config = infomax_config.get_config("quick")
    config.unlock()
    config.max_examples = 48
    config.batch_size = 16
    config.encoder_hparams = {"channels": (4, 8), "fc_width": 16}
    config.latent_dim = 8
    config.critic_hidden = 16
    config.embed_dim = 8
    config.num_steps = 2
    config.log_every = 1
    config.eval_every = 2
    config.checkpoint_every = 1
    config.probe.epochs = 1
    config.probe.max_iter = 5
    config.probe.representations = ("global",)  # each feature shape compiles its own probes
    config.probe.periodic_representations = ("global",)
    config.probe.mlp_hidden = 8
    config.mige_locations = 2
    config.update_from_flattened_dict(overrides)
    config.lock()
    return config


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("estimator", ["js", "infonce", "dv", "nwj", "flo", "mige"])
def test_every_estimator_runs_and_writes_everything(tmp_path, estimator):
    reps = ("global", "features", "local") if estimator == "js" else ("global",)
    config = tiny_config(estimator=estimator, **{"probe.representations": reps})
    results = infomax.train_and_evaluate(config, str(tmp_path))
    for name in ("config.json", "metrics.jsonl", "results.json", "curves.png", "probes.png"):
        assert os.path.getsize(tmp_path / name) > 0, name
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2"]
    table = {(r["encoder"], r["representation"], r["probe"]) for r in results["probes"]}
    assert ("trained", "global", "linear") in table and ("none", "pixels", "mlp") in table
    assert len(table) == 2 * (2 * len(reps) + 1)  # (trained, random) x reps + pixels, 2 probes
    assert all(0.0 <= r["test_accuracy"] <= 1.0 for r in results["probes"])
    (row,), columns = infomax_table.rows_from([str(tmp_path)])
    assert row["estimator"] == estimator and len(columns) == 5 + len(table) + 1
    assert row["experiment"] == "infomax"
    assert row["trained:global:linear"] == next(
        r["test_accuracy"]
        for r in results["probes"]
        if r["encoder"] == "trained" and r["representation"] == "global" and r["probe"] == "linear"
    )
    rows = _rows(tmp_path / "metrics.jsonl")
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train_rows] == [1, 2]
    assert all(np.isfinite(r["loss"]) for r in train_rows)
    assert json.loads((tmp_path / "config.json").read_text())["estimator"] == estimator


def test_resume_continues_at_the_saved_step_and_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    initial = []  # each run's randomly initialized encoder, as its final probes get it
    real_evaluate = infomax.evaluate

    def evaluate(config, objective, trained, initial_params, *args, **kwargs):
        initial.append(jax.device_get(initial_params))
        return real_evaluate(config, objective, trained, initial_params, *args, **kwargs)

    monkeypatch.setattr(infomax, "evaluate", evaluate)
    full = tmp_path / "full"
    infomax.train_and_evaluate(tiny_config(num_steps=4, eval_every=4), str(full))
    parts = tmp_path / "parts"
    first = infomax.train_and_evaluate(tiny_config(num_steps=2, eval_every=2), str(parts))
    assert first["resumed_from"] == 0
    second = infomax.train_and_evaluate(tiny_config(num_steps=4, eval_every=4), str(parts))
    assert second["resumed_from"] == 2
    # The table's minutes count both segments (this one's compile_s + train_s only the second).
    (row,), _ = infomax_table.rows_from([str(parts)])
    both = first["compile_s"] + first["train_s"] + second["compile_s"] + second["train_s"]
    assert row["minutes"] == pytest.approx((both + second["eval_s"]) / 60, rel=1e-6)
    # The summary says so too (it read "train 0.0 s" for a finished run repeated).
    assert f"(training over every run in the workdir: {both:.1f} s)" in infomax.summary(second)
    assert "over every run" not in infomax.summary(first)
    # Each segment's versions and devices (before: nothing said which jax made which part).
    runs = _rows(parts / "runs.jsonl")
    assert len(runs) == 2 and runs[0]["started"] <= runs[1]["started"]
    assert runs[1]["versions"]["jax"] == jax.__version__ and runs[1]["visible_devices"] >= 1

    def losses(path):
        rows = _rows(path / "metrics.jsonl")
        return {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}

    a, b = losses(full), losses(parts)
    assert sorted(b) == [1, 2, 3, 4]
    np.testing.assert_allclose([b[s] for s in range(1, 5)], [a[s] for s in range(1, 5)], rtol=1e-5)
    np.testing.assert_allclose(
        [r["test_accuracy"] for r in second["probes"]],
        [r["test_accuracy"] for r in json.loads((full / "results.json").read_text())["probes"]],
        atol=1e-6,
    )
    # The resumed run's "random" encoder is the initialization, not the restored encoder.
    # Catches: the initial encoder copied after the restore (its probes read step 2's
    # encoder; at this size their accuracies above can still agree).
    assert len(initial) == 3
    chex.assert_trees_all_close(initial[2], initial[0], rtol=0, atol=0)


def test_mige_seeds_run_one_after_another_and_match_single_runs(tmp_path):
    # MIGE's score estimators decompose matrices; under a seed vmap that batched eigh hung
    # XLA:CPU, so its seeds are separate copies of the step: seed 1 of two must still be the
    # one-seed run.
    small = dict(estimator="mige", num_steps=2, eval_every=2, **{"probe.kinds": ("linear",)})
    pair = infomax.train_and_evaluate(tiny_config(num_seeds=2, **small), str(tmp_path / "pair"))
    alone = infomax.train_and_evaluate(tiny_config(seed=1, **small), str(tmp_path / "alone"))
    rows = [r for r in _rows(tmp_path / "pair" / "metrics.jsonl") if r["kind"] == "train"]
    single = [r for r in _rows(tmp_path / "alone" / "metrics.jsonl") if r["kind"] == "train"]
    np.testing.assert_allclose(
        [r["per_seed"]["loss"][1] for r in rows], [r["loss"] for r in single], rtol=1e-5
    )
    seed_one = {r["encoder"]: r["test_accuracy"] for r in pair["probes_per_seed"] if r["seed"]}
    alone_rows = [r for r in alone["probes"] if r["encoder"] != "none"]  # pixels: fitted once
    assert seed_one == {r["encoder"]: r["test_accuracy"] for r in alone_rows}


def test_num_seeds_trains_each_seed_as_its_own_run_and_reports_mean_and_std(tmp_path):
    # Seed 0 + k of a 2-seed run is the one-seed run with seed k (same init, batches, keys),
    # also across a resume of the seed-stacked state.
    small = dict(estimator="infonce", num_steps=4, eval_every=2, **{"probe.kinds": ("linear",)})
    both = tmp_path / "both"
    infomax.train_and_evaluate(tiny_config(num_seeds=2, **{**small, "num_steps": 2}), str(both))
    pair = infomax.train_and_evaluate(tiny_config(num_seeds=2, **small), str(both))
    assert pair["resumed_from"] == 2 and pair["num_seeds"] == 2 and pair["seeds"] == [0, 1]
    alone = infomax.train_and_evaluate(tiny_config(seed=1, **small), str(tmp_path / "alone"))

    def train_rows(path):
        return {r["step"]: r for r in _rows(path / "metrics.jsonl") if r["kind"] == "train"}

    rows, single = train_rows(both), train_rows(tmp_path / "alone")
    np.testing.assert_allclose(
        [rows[s]["per_seed"]["loss"][1] for s in range(1, 5)],
        [single[s]["loss"] for s in range(1, 5)],
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        [rows[s]["loss"] for s in range(1, 5)],
        [np.mean(rows[s]["per_seed"]["loss"]) for s in range(1, 5)],
        rtol=1e-6,
    )
    assert rows[1]["per_seed"]["loss"][0] != rows[1]["per_seed"]["loss"][1]

    def key(r):
        return r["encoder"], r["representation"], r["probe"]

    # The probes see seed 1's features from a batched (vmapped) program and from a plain one,
    # equal to float32 round-off; a probe may then flip one of the 48 test images, no more.
    seed_one = {key(r): r["test_accuracy"] for r in pair["probes_per_seed"] if r["seed"] == 1}
    alone_rows = [r for r in alone["probes"] if r["encoder"] != "none"]  # pixels: fitted once
    alone_acc = {key(r): r["test_accuracy"] for r in alone_rows}
    assert seed_one.keys() == alone_acc.keys()
    for k, accuracy in seed_one.items():
        assert accuracy == pytest.approx(alone_acc[k], abs=1.01 / 48), k
    for row in pair["probes"]:
        values = [r["test_accuracy"] for r in pair["probes_per_seed"] if key(r) == key(row)]
        assert row["num_seeds"] == len(values) == (1 if row["encoder"] == "none" else 2)
        assert row["test_accuracy"] == pytest.approx(np.mean(values))
        assert row["test_accuracy_std"] == pytest.approx(np.std(values))
        flags = [r["converged"] for r in pair["probes_per_seed"] if key(r) == key(row)]
        assert row["converged"] == (all(flags) if row["probe"] == "linear" else None)
    # A linear probe cut off at max_iter is named under the table (the tiny config's are).
    done = {**pair, "probes": [{**r, "converged": True} for r in pair["probes"]]}
    assert "stopped at config.probe.max_iter" not in infomax.summary(done)
    done["probes"][0]["converged"] = False
    first = f"{pair['probes'][0]['encoder']}/{pair['probes'][0]['representation']}"
    assert f"before config.probe.tol: ['{first}']" in infomax.summary(done)
    saved = json.loads((both / "results.json").read_text())
    assert saved["probes"] == pair["probes"]
    # A one-seed rerun in this workdir: refused, naming the setting, before anything is written.
    kept = sorted(os.listdir(both / "checkpoints"))
    written = {p: (both / p).read_bytes() for p in ("config.json", "results.json", "metrics.jsonl")}
    with pytest.raises(ValueError, match=r"another config \(num_seeds: 2 -> 1\)"):
        infomax.train_and_evaluate(tiny_config(**{**small, "num_steps": 6}), str(both))
    assert {p: (both / p).read_bytes() for p in written} == written
    # Without the config.json, the config results.json records refuses it (before: a rerun
    # with another estimator resumed the checkpoint and labelled its results with that name).
    (both / "config.json").unlink()
    with pytest.raises(ValueError, match=r"another config \(num_seeds: 2 -> 1\).*results.json"):
        infomax.train_and_evaluate(tiny_config(**{**small, "num_steps": 6}), str(both))
    assert sorted(os.listdir(both / "checkpoints")) == kept == ["2", "3", "4"]
    (row,), _ = infomax_table.rows_from([str(both)])
    # Raw pixels are fitted once: one number, not "± 0.000", in the table and the summary.
    assert "none:pixels:linear" in row and "none:pixels:linear std" not in row
    table = infomax.summary(pair).split("\nlinear probes stopped")[0]  # (the note below it)
    (pixels,) = [line for line in table.splitlines() if "pixels" in line]
    assert pixels.split()[-1] == "-"
    assert row["seeds"] == 2 and row["trained:global:linear std"] == pytest.approx(
        next(
            r["test_accuracy_std"]
            for r in pair["probes"]
            if key(r) == ("trained", "global", "linear")
        )
    )


@pytest.mark.slow  # a resume corner; the resume itself is tested above
def test_a_resume_from_an_odd_step_keeps_the_schedule_and_a_shorter_run_is_refused(tmp_path):
    small = dict(
        num_steps=3, log_every=2, eval_every=2, checkpoint_every=2, keep_checkpoints=10,
        **{"probe.kinds": ("linear",)},
    )  # fmt: skip
    infomax.train_and_evaluate(tiny_config(**small), str(tmp_path))  # ends at step 3
    infomax.train_and_evaluate(tiny_config(**{**small, "num_steps": 7}), str(tmp_path))
    # Chunks again end on multiples of log_every: evaluations and checkpoints every 2 steps,
    # as in an uninterrupted run, besides each run's last step (before: 2, 3, 7 only).
    assert sorted(int(s) for s in os.listdir(tmp_path / "checkpoints")) == [2, 3, 4, 6, 7]
    rows = _rows(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [2, 3, 4, 6, 7]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [2, 3, 4, 6, 7]
    # Fewer steps than the checkpoints hold: the probes would see the longer-trained encoder.
    config_json = (tmp_path / "config.json").read_bytes()
    with pytest.raises(ValueError, match=r"at step 7, past this config's 5 steps .*num_steps >= 7"):
        infomax.train_and_evaluate(tiny_config(**{**small, "num_steps": 5}), str(tmp_path))
    assert (tmp_path / "config.json").read_bytes() == config_json  # refused before writing


@pytest.mark.slow  # a resume corner; the resume itself is tested above
def test_a_resume_evaluates_a_checkpoint_step_left_unevaluated_and_drops_stale_rows(tmp_path):
    small = dict(num_steps=4, log_every=1, eval_every=2, checkpoint_every=2, keep_checkpoints=10)
    full, cut = tmp_path / "full", tmp_path / "cut"
    infomax.train_and_evaluate(tiny_config(**small), str(full))
    # A run killed while probing at step 2, after its checkpoint there: no eval row at 2, no
    # checkpoint at 4, but its train rows at 3 and 4 (as a cut-short last line shows, written).
    infomax.train_and_evaluate(tiny_config(**small), str(cut))
    rows = _rows(cut / "metrics.jsonl")
    kept = [r for r in rows if r["kind"] == "train"]
    (cut / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept) + '{"ste')
    shutil.rmtree(cut / "checkpoints" / "4")
    # Resumed with chunks of 2 steps: the stale row of step 3 is not rewritten by it.
    resumed = infomax.train_and_evaluate(tiny_config(**{**small, "log_every": 2}), str(cut))
    train, evals = infomax.read_metrics(str(cut / "metrics.jsonl"))
    assert [r["step"] for r in train] == [1, 2, 4]
    assert [r["run"] for r in train] == [1, 1, 2]
    # Catches: the training time summed over every train row in the file (the stale step 3's).
    total = sum(r["seconds"] + r.get("compile_s", 0.0) for r in train)
    assert resumed["train_total_s"] == pytest.approx(total, rel=1e-9)
    # Steps 3-4 as one chunk train as two chunks of one step do: each step's keys come from
    # its global step. Catches: a chunk's steps numbered from 0 (each chunk's first step reuses
    # one key).
    full_train, reference = infomax.read_metrics(str(full / "metrics.jsonl"))
    assert [r["step"] for r in full_train] == [1, 2, 3, 4]
    want = np.mean([r["loss"] for r in full_train[2:]])
    np.testing.assert_allclose(train[2]["loss"], want, rtol=1e-5)
    assert [(r["step"], r["run"]) for r in evals] == [(2, 2), (4, 2)]
    assert evals[0]["linear_global"] == pytest.approx(reference[0]["linear_global"], abs=1e-6)
    # Nothing an earlier run wrote is removed from the file.
    rows = [json.loads(x) for x in (cut / "metrics.jsonl").read_text().splitlines()[:4]]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    # An earlier, shorter run's final probes at the checkpoint's step are no periodic
    # evaluation: a longer rerun evaluates there (before, it was skipped).
    longer = tmp_path / "longer"
    infomax.train_and_evaluate(tiny_config(**{**small, "num_steps": 2}), str(longer))
    infomax.train_and_evaluate(tiny_config(**small), str(longer))
    evals = [r for r in _rows(longer / "metrics.jsonl") if r["kind"] == "eval"]
    assert [(r["step"], r["run"], "final" in r) for r in evals] == [
        (2, 1, True), (2, 2, False), (4, 2, True)
    ]  # fmt: skip


_POISONED = [False]  # read when the bound is traced: a rerun of the same config turns NaN


def _poisonable_bound():
    def value(scores, state):
        return jnp.mean(scores) * (jnp.nan if _POISONED[0] else 1.0), state

    return bounds.Bound("poisonable", lambda: (), value)


def test_a_nan_stops_the_run_naming_the_step_and_keeps_the_checkpoints(tmp_path):
    if "poisonable" not in bounds.available_bounds():
        bounds.register_bound("poisonable", _poisonable_bound)
    infomax.train_and_evaluate(tiny_config(num_steps=2, estimator="poisonable"), str(tmp_path))
    _POISONED[0] = True
    try:
        with pytest.raises(training.NonFiniteError, match="step 3"):
            infomax.train_and_evaluate(
                tiny_config(num_steps=4, estimator="poisonable"), str(tmp_path)
            )
    finally:
        _POISONED[0] = False
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2"]


@pytest.mark.parametrize(
    "overrides, error, match",
    [
        (dict(dataset="digitz"), KeyError, "digits"),
        (dict(estimator="infonse"), KeyError, "infonce"),
        (dict(encoder="resnett"), KeyError, "resnet"),
        (dict(eval_every=3, log_every=2), ValueError, "eval_every"),
        (dict(**{"probe.representations": ("globl",)}), KeyError, "Did you mean 'global'"),
        (dict(**{"probe.kinds": ("svm",)}), KeyError, r"probe \(config.probe.kinds\) 'svm'"),
        (dict(**{"probe.periodic_representations": ("fc",)}), KeyError, "periodic_repr"),
        (dict(batch_size=64), ValueError, "batch_size"),
        (dict(num_seeds=0), ValueError, "num_seeds"),
        (dict(keep_checkpoints=0), ValueError, "keep_checkpoints"),
        (dict(**{"probe.batch_size": 0}), ValueError, "probe.batch_size"),
        (dict(**{"probe.learning_rate": float("nan")}), ValueError, "probe.learning_rate"),
        (dict(encoder_hparams={"channels": (4, 8, 8, 8)}), ValueError, "images"),
        # Widths of 0: named, not a ZeroDivisionError from a weight initializer.
        (dict(latent_dim=0), ValueError, "`latent_dim` must be an integer >= 1"),
        (dict(embed_dim=0), ValueError, "`embed_dim` must be an integer >= 1"),
        (dict(critic_hidden=0), ValueError, "`critic_hidden` must be an integer >= 1"),
        (dict(encoder_hparams={"channels": (4, 8), "fc_width": 0}), ValueError, "`fc_width`"),
        (dict(beta=float("nan")), ValueError, "`beta` must be finite"),
        # Before: found at the first compiled step, naming `padding` / `brightness`.
        (dict(**{"augment.crop_padding": -1}), ValueError, "`config.augment.crop_padding`"),
        (dict(**{"augment.brightness": -0.5}), ValueError, "`config.augment.brightness`"),
        (dict(learning_rate=-1e-4), ValueError, "`config.learning_rate` must be a positive"),
        # Before: found tracing the first step (batch 1: "`scores` has batch size 1"; seed -1:
        # "`seed` must be ...") or not at all (no probe of the trained encoder in the table).
        (dict(batch_size=1), ValueError, "`config.batch_size` must be an integer >= 2"),
        (dict(seed=-1), ValueError, "`config.seed` must be an integer >= 0"),
        (dict(**{"probe.representations": ()}), ValueError, "`config.probe.representations`"),
        (dict(**{"probe.kinds": ()}), ValueError, "`config.probe.kinds` is empty"),
    ],
)
def test_bad_configs_are_named(tmp_path, overrides, error, match):
    with pytest.raises(error, match=match):
        infomax.train_and_evaluate(tiny_config(**overrides), str(tmp_path))
    assert not os.listdir(tmp_path)  # refused before anything is written


def test_a_checkpoint_of_another_model_is_refused_before_config_json_is_written(tmp_path):
    infomax.train_and_evaluate(tiny_config(), str(tmp_path))
    for name in ("config.json", "results.json"):  # nothing left to compare a rerun's settings
        (tmp_path / name).unlink()
    # The checkpoints' stored shapes still refuse it: a clear error before Orbax reads anything.
    with pytest.raises(ValueError, match="does not fit.*shapes differ"):
        infomax.train_and_evaluate(tiny_config(latent_dim=16), str(tmp_path))
    # Before: the refused config was written, and the run's own config then refused.
    assert not (tmp_path / "config.json").exists()
    infomax.train_and_evaluate(tiny_config(), str(tmp_path))


def test_missing_mnist_files_are_named(tmp_path):
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte.gz"):
        infomax.train_and_evaluate(
            tiny_config(dataset="mnist", data_dir=str(tmp_path)), str(tmp_path / "run")
        )


def test_a_tfds_dataset_trains_through_mock_data(tmp_path, tfds):
    config = tiny_config(
        dataset="cifar10",
        encoder="resnet",
        encoder_hparams={"widths": (8, 8, 8), "stem_width": 8},
        **{"augment.crop_padding": 2, "augment.flip": True, "augment.brightness": 0.2},
        **{"probe.kinds": ("linear",), "probe.representations": ("global",)},
    )
    with tfds.testing.mock_data(num_examples=40):
        results = infomax.train_and_evaluate(config, str(tmp_path))
    assert results["dataset"] == "cifar10"
    assert {r["encoder"] for r in results["probes"]} == {"trained", "random", "none"}


def test_mige_score_estimator_is_checked_whatever_the_estimator():
    config = infomax_config.get_config("quick")
    config.score_estimator = "nope"  # estimator "js": a typo here ran to the end unseen
    with pytest.raises(KeyError, match="unknown score estimator 'nope'"):
        infomax.build(config, (8, 8, 1))


def test_infomax_table_names_a_workdir_of_another_experiment(tmp_path):
    # Before: a raw KeyError: 'estimator' for an InfoMax-VAE workdir among InfoMax ones.
    (tmp_path / "results.json").write_text(json.dumps({"dataset": "digits", "table": []}))
    with pytest.raises(ValueError, match="lacks .*'estimator'.* not a finished InfoMax or AMDIM"):
        infomax_table.rows_from([str(tmp_path)])


def test_infomax_table_lists_the_settings_runs_differ_in_besides_the_estimator(tmp_path, capsys):
    # Before: runs with other probe settings sat side by side without a word (a probe's L2 of
    # 1 against 1e-4 read 0.842 against 0.939, as if the estimator made the difference).
    base = {"estimator": "js", "seed": 0, "log_every": 50, "probe": {"l2": 1e-4, "epochs": 2}}
    other = {**base, "estimator": "infonce", "log_every": 10, "estimator_hparams": {"t": 1.0}}
    other = {**other, "probe": {"l2": 1.0, "epochs": 2}, "augment": {"crop": 1}}
    assert infomax_table.differing_settings([base, other]) == {
        "probe.l2": [1e-4, 1.0],
        "augment.crop": [None, 1],
    }
    assert infomax_table.differing_settings([base, {**base, "estimator": "dv"}]) == {}
    for name, config in (("a", base), ("b", other)):
        (tmp_path / name).mkdir()
        results = {"dataset": "digits", "estimator": config["estimator"], "num_steps": 4}
        results |= {"probes": [], "train_total_s": 1.0, "eval_s": 1.0, "config": config}
        (tmp_path / name / "results.json").write_text(json.dumps(results))
    infomax_table.main([str(tmp_path / "a"), str(tmp_path / "b")])
    out = capsys.readouterr().out
    assert "differ besides the estimator" in out and "probe.l2: 0.0001 / 1.0" in out
    # A field one run lacks on a line of such fields (InfoMax beside AMDIM listed 31 lines,
    # most of them "views.flip: None / False"; the five that mattered among them).
    assert "set in some of the runs only: augment.crop" in out and "None" not in out
    # Unless its values differ where it is set: two AMDIM runs of other crops beside InfoMax.
    assert infomax_table.differing_settings([base, other, {**other, "augment": {"crop": 2}}])
    (tmp_path / "c").mkdir()
    results |= {"config": {**other, "augment": {"crop": 2}}}
    (tmp_path / "c" / "results.json").write_text(json.dumps(results))
    infomax_table.main([str(tmp_path / n) for n in "abc"])
    assert "augment.crop: None / 1 / 2" in capsys.readouterr().out
    # `--help` prints the usage, not an error about a workdir named "--help".
    infomax_table.main(["--help"])
    assert capsys.readouterr().out.startswith("One table from InfoMax and AMDIM runs")


def test_infomax_table_reads_the_settings_of_runs_before_results_recorded_them(tmp_path, capsys):
    # Runs of code before 2026-12-04 kept their config in config.json only. Before: an AMDIM
    # run among them read "infomax", and runs of different batch sizes were listed as not
    # differing (or, beside a newer run, every field as differing: "batch_size: None / 32").
    runs = {
        "old_amdim": ({"estimator": "infonce", "batch_size": 16, "views": {"crop": 1}}, False),
        "new_infomax": ({"estimator": "js", "batch_size": 32, "views": {"crop": 1}}, True),
        "lost": ({}, None),
    }
    for name, (config, in_results) in runs.items():
        (tmp_path / name).mkdir()
        results = {"dataset": "digits", "estimator": "js", "num_steps": 4, "probes": []}
        results |= {"train_total_s": 1.0, "eval_s": 1.0}
        if in_results:
            results["config"] = config
        elif in_results is False:
            (tmp_path / name / "config.json").write_text(json.dumps(config))
        (tmp_path / name / "results.json").write_text(json.dumps(results))
    rows, _ = infomax_table.rows_from([str(tmp_path / n) for n in runs])
    assert [r["experiment"] for r in rows] == ["amdim", "amdim", "infomax"]
    infomax_table.main([str(tmp_path / n) for n in runs])
    out = capsys.readouterr().out
    assert "batch_size: 16 / 32" in out and "views" not in out
    assert f"not compared: {tmp_path / 'lost'}" in out


@pytest.mark.slow  # the table's time bookkeeping
def test_the_table_minutes_count_the_periodic_probes(tmp_path):
    # Before: the periodic probes were timed nowhere; the table's "minutes" left them out (an
    # 8-step run read 6.4 s of the 22.5 s it took, 7 s of them a periodic probe).
    results = infomax.train_and_evaluate(tiny_config(num_steps=2, eval_every=1), str(tmp_path))
    (periodic,) = [
        r for r in _rows(tmp_path / "metrics.jsonl") if r["kind"] == "eval" and not r.get("final")
    ]
    assert periodic["step"] == 1 and results["periodic_eval_s"] == periodic["seconds"] > 0
    (row,), _ = infomax_table.rows_from([str(tmp_path)])
    total = results["train_total_s"] + results["periodic_eval_s"] + results["eval_s"]
    assert row["minutes"] == pytest.approx(total / 60, rel=1e-9)
    assert f"periodic probes {results['periodic_eval_s']:.1f} s" in infomax.summary(results)
    # Compilation timed apart (before: the whole first chunk counted as compile_s, so its
    # steps were missing from train_s and its row's steps_per_s counted the compilation).
    train = [r for r in _rows(tmp_path / "metrics.jsonl") if r["kind"] == "train"]
    assert [r.get("compile_s") for r in train] == [results["compile_s"], None]
    assert results["train_s"] == pytest.approx(sum(r["seconds"] for r in train), rel=1e-9)
    assert results["train_total_s"] == pytest.approx(results["train_s"] + results["compile_s"])


@pytest.mark.slow  # the probe cache; tests/test_halves.py's test of it stays
def test_a_probe_cache_serves_a_sweeps_baselines_to_its_later_runs(tmp_path, capsys):
    # Before: every run of a sweep refitted the random encoder's and raw pixels' probes, the
    # same fits in each (on MNIST ~280 s of a 17-minute InfoMax run, six times in the table).
    cache = str(tmp_path / "cache")
    first = infomax.train_and_evaluate(
        tiny_config(**{"probe.cache_dir": cache}), str(tmp_path / "js")
    )
    assert not any(r["cached"] for r in first["probes"])
    capsys.readouterr()
    second = infomax.train_and_evaluate(
        tiny_config(estimator="infonce", **{"probe.cache_dir": cache}), str(tmp_path / "nce")
    )
    by_key = {(r["encoder"], r["representation"], r["probe"]): r for r in first["probes"]}
    for row in second["probes"]:
        earlier = by_key[row["encoder"], row["representation"], row["probe"]]
        # The baselines are read back, to the bit; the trained encoder (another estimator's)
        # is fitted anew.
        assert row["cached"] == (row["encoder"] != "trained"), row
        if row["cached"]:
            for field in ("train_accuracy", "test_accuracy", "iterations", "converged"):
                assert row[field] == earlier[field], (row, field)
    assert "read from config.probe.cache_dir (made by an earlier run): 4 of 6" in (
        capsys.readouterr().out
    )
    # The table says which runs' minutes leave cached fits out.
    infomax_table.main([str(tmp_path / "js"), str(tmp_path / "nce")])
    out = capsys.readouterr().out
    assert f"fits them): {tmp_path / 'nce'}: 4 of 6" in out and "js:" not in out
    # Another setting of the probe misses.
    third = infomax.train_and_evaluate(
        tiny_config(**{"probe.cache_dir": cache, "probe.l2": 1e-2}), str(tmp_path / "l2")
    )
    assert not any(r["cached"] for r in third["probes"])
    # The table compares the runs as runs that differ in their estimator alone.
    assert (
        infomax_table.differing_settings(
            [
                first["config"],
                {**first["config"], "probe": {**first["config"]["probe"], "cache_dir": ""}},
            ]
        )
        == {}
    )


def test_an_unmakeable_probe_cache_dir_is_named_before_the_run(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    config = tiny_config(**{"probe.cache_dir": str(tmp_path / "file" / "cache")})
    with pytest.raises(ValueError, match="config.probe.cache_dir"):
        infomax.train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run" / "config.json").exists()
    # One that exists but cannot be written (before: a warning per fit, after training); as
    # the operating system answers for a read-only folder to a user other than root.
    (tmp_path / "read-only").mkdir()
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode: "read-only" not in str(p) and real_access(p, mode)
    )
    config = tiny_config(**{"probe.cache_dir": str(tmp_path / "read-only")})
    with pytest.raises(ValueError, match="config.probe.cache_dir.*not writable"):
        infomax.train_and_evaluate(config, str(tmp_path / "run"))


def test_the_reported_accuracies_are_the_test_splits_of_the_trained_encoder(tmp_path, monkeypatch):
    # Every probe fit returns its own accuracies, a train accuracy below 0.5 and a test one
    # above, so that each reported number shows which fit and which split it came from.
    # Catches: a train accuracy reported as the test one (results, the periodic curve, the
    # final metrics row), the random encoder's probe in the final metrics row, a periodic
    # value that is not the mean over the seeds.
    fits = iter(range(1000))

    def fit(cache_dir, *args, **settings):
        i = next(fits)
        return probes.ProbeResult(0.1 + 0.001 * i, 0.5 + 0.01 * i, 1, True), False

    monkeypatch.setattr(_common, "fit_probe_cached", fit)
    config = tiny_config(num_seeds=2, num_steps=2, eval_every=1, **{"probe.kinds": ("linear",)})
    results = infomax.train_and_evaluate(config, str(tmp_path))
    assert len(results["probes_per_seed"]) == 5  # trained and random per seed, raw pixels once
    assert all(r["test_accuracy"] >= 0.5 > r["train_accuracy"] for r in results["probes_per_seed"])
    evals = [r for r in _rows(tmp_path / "metrics.jsonl") if r["kind"] == "eval"]
    (periodic,), (final,) = (
        [r for r in evals if not r.get("final")],
        [r for r in evals if r.get("final")],
    )
    assert periodic["linear_global"] >= 0.5
    assert periodic["linear_global"] == pytest.approx(
        np.mean(periodic["per_seed"]["linear_global"])
    )
    (trained,) = [r for r in results["probes"] if r["encoder"] == "trained"]
    mine = [r["test_accuracy"] for r in results["probes_per_seed"] if r["encoder"] == "trained"]
    assert final["linear_global"] == trained["test_accuracy"] == pytest.approx(np.mean(mine))


def test_the_compilation_is_not_in_the_first_chunks_seconds(tmp_path, monkeypatch):
    # Catches: the first chunk timed from before its compilation (compile time then counted
    # in both `compile_s` and `seconds`, twice in `train_total_s`).
    real = infomax.make_chunk_fn

    def slow_to_compile(*args, **kwargs):
        run = real(*args, **kwargs)
        compile_chunk = run.compile
        run.compile = lambda *a: (compile_chunk(*a), time.sleep(2.0))[0]
        return run

    monkeypatch.setattr(infomax, "make_chunk_fn", slow_to_compile)
    results = infomax.train_and_evaluate(tiny_config(**{"probe.kinds": ("linear",)}), str(tmp_path))
    first = next(r for r in _rows(tmp_path / "metrics.jsonl") if r["kind"] == "train")
    assert results["compile_s"] >= 2.0 > first["seconds"]
    assert first["compile_s"] == results["compile_s"]


def test_summary_and_table_put_each_number_under_its_label(tmp_path, capsys):
    # Catches: compile and train times swapped in the summary; a table cell "std +- mean".
    probe = {"encoder": "trained", "representation": "global", "dim": 8, "probe": "linear",
             "train_accuracy": 0.95, "test_accuracy": 0.9, "test_accuracy_std": 0.01,
             "num_seeds": 2}  # fmt: skip
    results = {"dataset": "digits", "estimator": "js", "num_steps": 4, "num_seeds": 2,
               "compile_s": 1.0, "train_s": 2.0, "eval_s": 0.5, "train_total_s": 3.0,
               "probes": [probe], "config": {}}  # fmt: skip
    assert "compile 1.0 s, train 2.0 s, final probes 0.5 s" in infomax.summary(results)
    _common.write_json(str(tmp_path / "results.json"), results)
    infomax_table.main([str(tmp_path)])
    assert "0.900 +- 0.010" in capsys.readouterr().out
