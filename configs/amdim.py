r"""AMDIM (Bachman et al. 2019): two augmented views, predictions across scales, then probes.

  python -m experiments.amdim --config configs/amdim.py --workdir /tmp/amdim

Default: scikit-learn's 8x8 digits (bundled, offline), `mi_jax.amdim.MultiScaleEncoder`,
InfoNCE on the 1->5, 1->7 and 5->5 predictions in both directions, random resized crops, 1500
steps. Expect about 8 minutes on 2 CPU cores and linear-probe test accuracies of 0.997 on the
5x5 map and 0.989 on the global vector (random encoder 0.986 and 0.969; raw pixels 0.958).

  python -m experiments.amdim --config configs/amdim.py:mnist \
    --config.data_dir=../shared/data/mnist --workdir /tmp/amdim_mnist

MNIST, 3000 steps. Expect about 23 minutes on 2 CPU cores and linear-probe test accuracies of
0.990 on the 5x5 map and 0.978 on the global vector (random encoder 0.977 and 0.912; raw
pixels 0.926). Results: README, "AMDIM".

Other presets: `:cifar10`, `:stl10` (tfds; crops, flips, colour jitter and greyscale; not run
on the real data here), `:quick` (a few steps, smoke runs). Change the bound with
`--config.estimator=flo` (any bound of `mi_jax.bounds`), any other field likewise.
"""

import ml_collections

from configs import infomax as infomax_config

# The presets `get_config` takes (``--config configs/amdim.py:PRESET``); none: the default.
PRESETS = ("mnist", "cifar10", "stl10", "quick")


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
    # The trainer, data, logging and probe fields are InfoMax's (`configs/infomax.py`); the
    # objective's are replaced by AMDIM's.
    base = infomax_config.get_config()
    config = ml_collections.ConfigDict()
    for field in (
        "seed", "num_seeds", "dataset", "data_dir", "max_examples", "batch_size", "num_steps",
        "learning_rate", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints",
        "probe",
    ):  # fmt: skip
        config[field] = base[field]
    config.encoder_hparams = ml_collections.ConfigDict(
        {"stem_width": 32, "widths": (128, 128, 256)}
    )
    # Objective (`mi_jax.amdim`).
    config.estimator = "infonce"
    config.estimator_hparams = ml_collections.ConfigDict()
    config.predictions = ("1-5", "1-7", "5-5")
    config.critic_hidden = 256
    config.embed_dim = 128
    config.critic_clip = 20.0  # soft clipping c tanh(s / c) of the scores; 0: off
    config.penalty = 0.05  # weight of the mean squared (scaled, unclipped) score
    # The two views (`mi_jax.amdim.augment_view`).
    config.views = ml_collections.ConfigDict(
        {
            "crop_scale": (0.35, 1.0),
            "crop_ratio": (3 / 4, 4 / 3),
            "flip": False,
            "brightness": 0.0,
            "contrast": 0.0,
            "saturation": 0.0,
            "grayscale": 0.0,
        }
    )
    config.learning_rate = 2e-4
    config.num_steps = 1500
    config.probe.representations = ("global", "map5", "map7")
    config.probe.periodic_representations = ("global",)

    if preset == "mnist":
        config.dataset = "mnist"
        config.num_steps = 3000
        config.eval_every = 1500
        # The 7x7 map's linear probe (6272 features x 60,000 images) would take most of the
        # time budget; the 5x5 map and the global vector are probed.
        config.probe.representations = ("global", "map5")
        config.probe.epochs = 20
        config.probe.batch_size = 256
    elif preset in ("cifar10", "stl10"):
        config.dataset = preset
        config.num_steps = 20000
        config.eval_every = 5000
        config.checkpoint_every = 1000
        config.views.crop_scale = (0.3, 1.0)
        config.views.flip = True
        config.views.brightness = 0.4
        config.views.contrast = 0.4
        config.views.saturation = 0.4
        config.views.grayscale = 0.25
        config.probe.epochs = 30
        config.probe.batch_size = 256
    elif preset == "quick":
        quick = infomax_config.get_config("quick")
        for field in ("num_steps", "batch_size", "log_every", "eval_every", "checkpoint_every"):
            config[field] = quick[field]
        config.probe = quick.probe
        config.probe.representations = ("global", "map5")
        config.probe.periodic_representations = ("global",)
    elif preset not in (None, ""):
        raise ValueError(
            f"unknown preset {preset!r} for configs/amdim.py; use {', '.join(PRESETS)}."
        )
    config.lock()
    return config
