r"""InfoMax-VAE (Rezaabad & Vishwanath) against a VAE and a beta-VAE.

  python -m experiments.infomax_vae --config configs/infomax_vae.py --workdir /tmp/infomax_vae

Default: scikit-learn's 8x8 digits (bundled, offline), MLP encoder and Bernoulli decoder, a
16-d code, the three models vmapped in one program; about 45 s on 2 CPU cores. Expect test
ELBOs of -24.0 (VAE), -27.2 (beta-VAE), -24.8 (InfoMax-VAE) nats and linear probes of 0.969,
0.739, 0.972 (README, "InfoMax-VAE"); the MNIST preset takes about 7 minutes.

  python -m experiments.infomax_vae --config configs/infomax_vae.py:mnist \
    --config.data_dir=../shared/data/mnist --workdir /tmp/infomax_vae_mnist

``:quick``: a few steps, smoke runs. Every model's weights can be changed from the command line,
e.g. ``--config.models.infomax_vae.gamma=5``.
"""

import ml_collections

# The presets `get_config` takes (``--config configs/infomax_vae.py:PRESET``); none: the default.
PRESETS = ("mnist", "quick")


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    # K > 1: seeds seed, seed + 1, ... trained side by side (vmapped in one program);
    # results.json reports their mean and standard deviation.
    config.num_seeds = 1
    config.dataset = "digits"
    config.data_dir = ""
    config.max_examples = 0
    # True: every pixel drawn once as black or white (`mi_jax.data.binarize`, the same draw for
    # every run and seed), so the Bernoulli decoder's ELBO is a bound on log p(x) (on grey levels
    # it bounds nothing; the default keeps grey levels, README "InfoMax-VAE").
    config.binarize = False
    # Each model: beta on the KL, gamma on the MI bound (the InfoMax-VAE has gamma > 0).
    config.models = ml_collections.ConfigDict(
        {
            "vae": {"beta": 1.0, "gamma": 0.0},
            "beta_vae": {"beta": 4.0, "gamma": 0.0},
            "infomax_vae": {"beta": 1.0, "gamma": 1.0},
        }
    )
    config.latent_dim = 16
    config.encoder_hparams = ml_collections.ConfigDict({"hidden": (512, 512)})
    config.decoder_hidden = (512, 512)
    config.bound = "nwj"
    config.bound_hparams = ml_collections.ConfigDict()
    config.critic = "separable"
    config.critic_hparams = ml_collections.ConfigDict({"hidden": (256,), "embed_dim": 64})
    config.critic_clip = 10.0  # soft clipping c tanh(s / c) of the critic's scores; 0: off
    config.batch_size = 100
    config.num_epochs = 100
    config.learning_rate = 1e-3
    config.eval_every_epochs = 20
    # `cache_dir`: a folder where probe fits are kept and found again ("": none), as in
    # `configs/infomax.py` (the raw-pixel probe of every run with these data and settings).
    config.probe = ml_collections.ConfigDict(
        {"l2": 1e-4, "max_iter": 500, "tol": 1e-5, "cache_dir": ""}
    )
    if preset == "mnist":
        config.dataset = "mnist"
        config.latent_dim = 32
        config.num_epochs = 20
        config.eval_every_epochs = 4
    elif preset == "quick":
        config.num_epochs = 2
        config.eval_every_epochs = 1
        config.latent_dim = 4
        config.encoder_hparams.hidden = (32,)
        config.decoder_hidden = (32,)
        config.critic_hparams.hidden = (16,)
        config.critic_hparams.embed_dim = 8
        config.probe.max_iter = 20
    elif preset not in (None, ""):
        raise ValueError(
            f"unknown preset {preset!r} for configs/infomax_vae.py; use {', '.join(PRESETS)}."
        )
    config.lock()
    return config
