r"""One table from InfoMax and AMDIM runs: test accuracy per estimator, representation and probe.

  python -m experiments.infomax_table /tmp/infomax/js /tmp/infomax/infonce ...

Each argument is the workdir of a finished `experiments.infomax` or `experiments.amdim` run
(its ``results.json``; the ``experiment`` column says which). A row per run: the trained
encoder's probe test accuracies, then the same probes on the randomly initialized encoder and
on raw pixels (the baselines the run also measured), and the run's wall time (compilation,
training over every segment of a resumed run, and the probes, periodic and final).
A run with ``num_seeds > 1`` shows each accuracy as "mean +- std" over its seeds (`rows_from`
keeps the means as numbers and the spreads under ``COLUMN std``); its raw-pixel probes, fitted
once, show one number. Settings in which the runs differ besides their estimator (a probe's L2,
the augmentation, the data) are listed under the table (`differing_settings`): such rows do
not compare estimators alone.
"""

import json
import os
import sys

from experiments import _cli, _common, infomax

# What a row reads from a run's results.json.
REQUIRED = ("dataset", "estimator", "num_steps", "probes", "train_total_s", "eval_s")
# Config fields that may differ between runs compared side by side: what the table compares,
# and the bookkeeping that leaves the results alone (where to read data, how often to log).
COMPARED = ("estimator", "estimator_hparams", "score_estimator", "score_hparams", "mige_locations")
BOOKKEEPING = (
    "data_dir", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints",
    "probe.cache_dir",
)  # fmt: skip


def _flat(config: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def differing_settings(configs: list[dict]) -> dict[str, list]:
    """``{field: [value per run]}`` for the config fields (dotted, e.g. ``probe.l2``) whose
    values differ between the runs, besides what the table compares (`COMPARED`) and
    bookkeeping (`BOOKKEEPING`); a field a run lacks reads None for it."""
    flat = [_flat(c) for c in configs]
    fields = dict.fromkeys(k for f in flat for k in f)  # (in first-seen order)
    ignored = COMPARED + BOOKKEEPING
    return {
        k: [f.get(k) for f in flat]
        for k in fields
        if k not in ignored
        and k.split(".")[0] not in ignored
        and any(f.get(k) != flat[0].get(k) for f in flat)
    }


def read_results(workdir: str) -> dict:
    """A finished run's ``results.json`` (else a clear error naming the workdir), its
    ``"config"`` read from the workdir's ``config.json`` where results.json lacks it (runs of
    code before 2026-12-04); neither: no ``"config"``."""
    path = os.path.join(workdir, "results.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: is {workdir!r} a finished run?")
    with open(path) as f:
        results = json.load(f)
    if missing := [k for k in REQUIRED if k not in results]:
        raise ValueError(
            f"{path} lacks {missing}: {workdir!r} is not a finished InfoMax or AMDIM run."
        )
    config_path = os.path.join(workdir, "config.json")
    if "config" not in results and os.path.exists(config_path):
        with open(config_path) as f:
            results["config"] = json.load(f)
    return results


def rows_from(workdirs: list[str]) -> tuple[list[dict], list[str]]:
    """Table rows (one per workdir) and their column names."""
    rows, probe_columns = [], []
    for workdir in workdirs:
        results = read_results(workdir)
        row = {
            # AMDIM shares InfoMax's trainer and results; its config alone has `views`.
            "experiment": "amdim" if "views" in results.get("config", {}) else "infomax",
            "dataset": results["dataset"],
            "estimator": results["estimator"],
            "steps": results["num_steps"],
            "seeds": results.get("num_seeds", 1),
        }
        for probe in results["probes"]:
            column = f"{probe['encoder']}:{probe['representation']}:{probe['probe']}"
            row[column] = probe["test_accuracy"]
            if probe.get("num_seeds", 1) > 1:  # raw pixels are fitted once: no spread
                row[f"{column} std"] = probe["test_accuracy_std"]
            if column not in probe_columns:
                probe_columns.append(column)
        probes_s = results.get("periodic_eval_s", 0.0) + results["eval_s"]  # (earlier runs: 0)
        row["minutes"] = (results["train_total_s"] + probes_s) / 60
        rows.append(row)
    for row in rows:  # runs probed on different representations: blank cells
        for column in probe_columns:
            row.setdefault(column, "-")
    return rows, ["experiment", "dataset", "estimator", "steps", "seeds", *probe_columns, "minutes"]


def main(argv: list[str]) -> None:
    if argv[:1] in (["-h"], ["--help"], ["--helpshort"], ["--helpfull"]):
        print(__doc__)
        return
    if not argv:
        raise SystemExit(__doc__)
    try:
        rows, columns = rows_from(argv)
        runs = [read_results(w) for w in argv]
    except (OSError, ValueError) as e:  # a workdir that is not a finished run: named
        raise SystemExit(f"error: {e}") from e
    # A run whose settings are recorded nowhere is left out of the comparison, and named.
    differ = differing_settings([r["config"] for r in runs if "config" in r])
    unknown = [w for w, r in zip(argv, runs, strict=True) if "config" not in r]
    for row in rows:  # "mean +- std" where a run had several seeds
        for column in columns:
            if f"{column} std" in row:
                row[column] = f"{row[column]:.3f} +- {row[f'{column} std']:.3f}"
    print(_common.format_table(rows, columns))
    # A later run of a sweep read its baselines from the cache: its minutes are not a fitting
    # run's.
    counts = {w: infomax.cached_fits(r) for w, r in zip(argv, runs, strict=True)}
    if cached := [f"{w}: {k} of {n}" for w, (k, n) in counts.items() if k]:
        print(
            "Probe fits read from probe.cache_dir, fitted by an earlier run (these runs' "
            "minutes are below those of a run that fits them): " + ", ".join(cached)
        )
    if differ:
        print("The runs differ besides the estimator (the rows compare more than estimators):")
        # A field only some runs have (AMDIM's views beside InfoMax, a version's new setting),
        # the same in all of those: named on one line, so that the values that differ stand out.
        flat = [_flat(r["config"]) for r in runs if "config" in r]
        partial = [
            k
            for k in differ
            if not all(k in f for f in flat)  # (and the same wherever it is set)
            and len({json.dumps(f[k], sort_keys=True) for f in flat if k in f}) == 1
        ]
        for field, values in differ.items():
            if field not in partial:
                print(f"  {field}: {' / '.join(map(str, values))}")
        if partial:
            print(f"  set in some of the runs only: {', '.join(partial)}")
    if unknown:
        print(
            "Settings unknown (neither results.json nor config.json records them), not "
            "compared: " + ", ".join(unknown)
        )


if __name__ == "__main__":
    _cli.quiet_when_output_closed()
    main(sys.argv[1:])
