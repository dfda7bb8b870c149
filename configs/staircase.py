r"""The MI staircase of Poole et al. (2019), Fig. 2: every bound tracking a rising true MI.

  python -m experiments.staircase --config configs/staircase.py --workdir /tmp/staircase
  python -m experiments.staircase --config configs/staircase.py:quick --workdir /tmp/quick

Expected (separable critic, Gaussian): InfoNCE saturates at log 64 = 4.16 nats; SMILE (tau = 5)
follows the steps closely (10.9 at 10 nats) and I_alpha lags (7.3); DV follows with a variance
that grows like e^I; MINE, NWJ and TUBA stall at 4-5.5 nats, the JS read-out blows up at 8-10
nats and FLO may diverge from 6 on (run to run); see the README's results table. Presets:
`quick` (200 steps per level, Gaussian, separable: under a minute on 2 CPU cores), `separable`
(the full protocol with the separable critic only, the README's table: on a 2-core AVX-512
machine, 2026-12-05, 102 s in all per task in float32 and 83-90 s (six runs) with
`--config.compute_dtype=bfloat16`, the speed target of 90 s).
"""

import ml_collections

BOUNDS = ("dv", "mine", "nwj", "tuba", "infonce", "js", "interpolated", "smile", "flo")


# The presets `get_config` takes (``--config configs/staircase.py:PRESET``); none: the default.
PRESETS = ("quick", "separable")


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.num_seeds = 1  # vmapped; split from `seed`'s key (not the runs of seeds seed + k)
    # Protocol of Poole et al. (2019): d = 20, batch 64, Adam 5e-4, 4000 steps per level.
    config.dim = 20
    config.batch_size = 64
    config.learning_rate = 5e-4
    config.levels = (2.0, 4.0, 6.0, 8.0, 10.0)
    config.steps_per_level = 4000
    config.tasks = ("gaussian", "cubic")
    # Per task, keyword arguments of its factory (`mi_jax.tasks.get_task`), e.g.
    # {"student_t": {"df": 3.0}}; a task not named here takes its defaults.
    config.task_hparams = ml_collections.ConfigDict()
    config.critics = ("separable", "concat")
    config.bounds = BOUNDS
    config.bound_hparams = ml_collections.ConfigDict(
        {"smile": {"clip": 5.0}, "interpolated": {"alpha": 0.01}, "mine": {"decay": 0.99}}
    )
    # Weights start as in the published code (Keras Dense: Glorot uniform, zero biases), not
    # Flax's LeCun normal: at 2 nats after 4000 steps InfoNCE reads ~0.04 and DV ~0.08 nats
    # more (three seeds each; README). FLO's u and TUBA's baseline take the critic's.
    config.critic_hparams = ml_collections.ConfigDict(
        {
            "separable": {
                "hidden": (256, 256),
                "embed_dim": 32,
                "activation": "relu",
                "kernel_init": "glorot_uniform",
            },
            "concat": {"hidden": (256, 256), "activation": "relu", "kernel_init": "glorot_uniform"},
        }
    )
    # FLO's u network, and the baseline a(y) of TUBA and I_alpha (which takes the first width
    # only: one hidden layer).
    config.aux_hidden = (256, 256)
    # "float32" (the protocol) or "bfloat16": mixed-precision matmuls, float32 everything else
    # (as TPUs run float32 matmuls by default); about 1.2x faster on a CPU with AVX512-BF16.
    # Only critics with a `compute_dtype` field (the MLP critics) take bfloat16.
    config.compute_dtype = "float32"
    # Speed: the bounds are split into groups, each one program on its own device, run side by
    # side. 0 = one group per local device. `cpu_devices` splits a CPU-only host into that many
    # XLA devices (read by the command line entry point before JAX starts; set it to the
    # number of cores).
    config.bound_groups = 0
    config.cpu_devices = 2
    # "bounds": the groups above, one per device (best for the protocol's batch of 64);
    # "data": all bounds in one program, each batch split over every device (`mi_jax.parallel`;
    # the batch size must be a multiple of the device count), for large batches on accelerators.
    config.parallel = "bounds"
    # Steps per compiled chunk: the host sees metrics (and the progress bar moves) once a chunk.
    config.chunk_steps = 1000
    # > 0: after each run, time this many steps of the step's matmuls alone (same shapes and
    # dtypes, on random operands, groups side by side) and report the floor they set for
    # the whole run (its compilation and timing count in the total wall time); 0: off.
    config.matmul_floor_steps = 0
    config.log_every = 50  # metrics.jsonl rows: means over this many steps
    config.stats_fraction = 0.5  # per-level statistics over the last half of each level
    config.plot_smoothing = 0.99  # EMA decay smoothing the plotted curves

    if preset == "quick":
        config.steps_per_level = 200
        config.chunk_steps = 500
        # A horizon of ~20 steps, a tenth of a level (0.99's 100 lagged half a level behind).
        config.plot_smoothing = 0.95
        config.tasks = ("gaussian",)
        config.critics = ("separable",)
    elif preset == "separable":
        config.critics = ("separable",)
    elif preset not in (None, ""):
        raise ValueError(
            f"unknown preset {preset!r} for configs/staircase.py; use {', '.join(PRESETS)}."
        )
    config.lock()
    return config
