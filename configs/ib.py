r"""Deep Information Bottleneck classification (VIB, MINE-IB, MIGE-IB, deterministic baseline).

  python -m experiments.ib --config configs/ib.py --workdir /tmp/ib

Default: scikit-learn's 8x8 digits (bundled, offline), the MLP encoder of the permutation-
invariant protocol (input-1024-1024-2K, K = 256), a linear softmax decoder, each method's betas
vmapped. Results: README, "Deep Information Bottleneck".

  python -m experiments.ib --config configs/ib.py:mnist \
    --config.data_dir=../shared/data/mnist --workdir /tmp/ib_mnist

Permutation-invariant MNIST after Alemi et al. (2017): batch 100, Adam (b1 0.5), weight
averaging 0.999; published test error: VIB 1.13 % (beta 1e-3), deterministic 1.38 %. The paper
trains 200 epochs at 1e-4 decayed by 0.97 every 2 epochs; this preset trains 15 at 1e-3
decayed by 0.85 per epoch (2 CPU cores), holds out 5000 training images and reports, per beta,
the epoch with the lowest validation error. Expect 30 minutes on 2 CPU cores and test errors
of 1.23 % (VIB, beta 1e-4, selected epoch; 1.22 % at the last), 1.44 % deterministic (1.41 %
at the last epoch), MINE-IB 1.25-1.50 %, MIGE-IB 1.44-1.66 % (README, "Deep Information
Bottleneck").
Over three seeds (``--config.num_seeds=3``), VIB with beta 3e-4 (``--config.betas.vib``):
1.20 +- 0.05 % on seeds 0-2 but 1.32 +- 0.08 % on fresh seeds 3-7 (1.275 % over the eight),
the deterministic baseline 1.38 +- 0.08 % (README); with 12 training codes per
image (``--config.train_samples=12``) 1.21 +- 0.05 %; retrained on all 60,000 images
(``:mnist_final``, five seeds) 1.24 +- 0.01 % against the baseline's 1.37 +- 0.04 % on the
code of 2026-12-01, 1.28 +- 0.04 % against 1.30 +- 0.08 % rerun on the code of 2026-12-05.
``:mnist_final``: that choice (VIB, beta 3e-4, 15 epochs) and the deterministic baseline
retrained on all 60,000 training images, the last epoch reported.
``:mnist_paper``: the paper's protocol for VIB alone, set up as the authors' released code
(200 epochs at 1e-4, beta 1e-3, all 60,000 training images, Glorot-uniform weights, pixels in
[-1, 1]; the last epoch reported): test error 1.10 % on seed 0, 1.23 % on seed 1 (mean 1.165 %;
published 1.13 %), about an hour each on 2 CPU cores (README). With the 15-epoch preset's data
handling (a validation split, LeCun-normal weights, pixels in [0, 1]) the same schedule read
1.42 % at the last epoch.
``:quick``: a few steps, smoke runs.
"""

import ml_collections

# The presets `get_config` takes (``--config configs/ib.py:PRESET``); none: the default.
PRESETS = ("mnist", "mnist_final", "mnist_paper", "quick")


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    # K > 1: seeds seed, seed + 1, ... trained side by side (vmapped in one program);
    # results.json reports their mean and standard deviation. The validation split (below)
    # is drawn from `seed` alone: the same for every member.
    config.num_seeds = 1
    config.dataset = "digits"
    config.data_dir = ""
    config.max_examples = 0
    config.methods = ("deterministic", "vib", "mine", "mige")
    # One sweep per method, vmapped in one program (the deterministic baseline has none).
    config.betas = ml_collections.ConfigDict(
        {"vib": (1e-3, 1e-2), "mine": (1e-3, 1e-2), "mige": (1e-3, 1e-2)}
    )
    config.encoder = "mlp"
    config.encoder_hparams = ml_collections.ConfigDict({"hidden": (1024, 1024)})
    config.latent_dim = 256
    config.std_offset = 5.0  # sigma = softplus(raw - 5), as in Alemi et al.
    config.centered_inputs = False  # True: pixels in [-1, 1] (2 x - 1, Alemi et al.'s code)
    # Initializer of the encoder's and the decoder's weights. "glorot_uniform" is Alemi et al.'s
    # (TensorFlow's default). On PI-MNIST, VIB beta 3e-4, seeds 0-7, code of 2026-12-04: Glorot
    # 1.235 +- 0.048 %, LeCun normal 1.275 +- 0.088 % (paired difference 0.04 +- 0.04 points, the
    # same mean validation error, 1.217 %; README), so the tables' LeCun normal stays.
    config.kernel_init = "lecun_normal"
    config.mine = ml_collections.ConfigDict(
        {
            "bound": "mine",
            "bound_hparams": {},
            "critic": "separable",
            "critic_hparams": {"hidden": (512,), "embed_dim": 128},
            "critic_clip": 10.0,  # soft clipping c tanh(s / c) of the scores; 0: off
        }
    )
    config.mige = ml_collections.ConfigDict({"score_estimator": "ssge", "score_hparams": {}})
    config.train_samples = 1
    config.test_samples = 12
    config.batch_size = 100
    config.num_epochs = 60
    config.learning_rate = 1e-3
    config.adam_b1 = 0.5
    config.lr_decay = 0.97
    config.lr_decay_epochs = 2
    config.ema_decay = 0.99
    config.eval_every_epochs = 10
    config.eval_batch_size = 1000
    # Training images held out (seeded) to choose the reported evaluation per beta: the one
    # with the lowest validation error. 0: no split; the last evaluation is reported.
    config.validation_examples = 237  # digits: 1200 left for training
    if preset in ("mnist", "mnist_paper", "mnist_final"):
        config.dataset = "mnist"
        config.validation_examples = 5000
        # 15 epochs instead of the paper's 200 (2 CPU cores): Adam 1e-3 decayed by 0.85 per
        # epoch (to 9e-5) replaces 1e-4 decayed by 0.97 every 2 epochs. Betas of one method are
        # vmapped (nearly free on the MLP); MIGE-IB's run one after another.
        config.num_epochs = 15
        config.learning_rate = 1e-3
        config.lr_decay = 0.85
        config.lr_decay_epochs = 1
        config.ema_decay = 0.999
        config.eval_every_epochs = 1
        config.betas.vib = (1e-4, 1e-3, 1e-2)
        config.betas.mine = (1e-4, 1e-3, 1e-2)
        config.betas.mige = (1e-4, 1e-3)
    if preset == "mnist_paper":
        # Alemi et al.'s own schedule and beta, VIB only, set up as their released code (the
        # vib_demo notebook): 200 epochs of Adam at 1e-4 decayed by 0.97 every 2 epochs, beta =
        # 1e-3 (chosen in the paper, not here), all 60,000 training images (no validation
        # split: the last epoch is reported), Glorot-uniform weights (TensorFlow's default),
        # pixels in [-1, 1]. Evaluated every 5 epochs.
        config.methods = ("vib",)
        config.validation_examples = 0
        config.kernel_init = "glorot_uniform"
        config.centered_inputs = True
        config.betas.vib = (1e-3,)
        config.num_epochs = 200
        config.learning_rate = 1e-4
        config.lr_decay = 0.97
        config.lr_decay_epochs = 2
        config.eval_every_epochs = 5
    elif preset == "mnist_final":
        # The `mnist` schedule with what its validation split chose (README): VIB at beta 3e-4
        # (the lowest mean validation error over three seeds, at the selected and at the last
        # epoch) beside the deterministic baseline, both retrained on all 60,000 training
        # images; with no validation split the last epoch (15) is reported.
        config.methods = ("deterministic", "vib")
        config.betas.vib = (3e-4,)
        config.validation_examples = 0
        config.eval_every_epochs = 5
    elif preset == "quick":
        config.num_epochs = 2
        config.eval_every_epochs = 1
        config.encoder_hparams.hidden = (32,)
        config.latent_dim = 4
        config.mine.critic_hparams.hidden = (16,)
        config.mine.critic_hparams.embed_dim = 8
        config.test_samples = 3
        config.validation_examples = 100
    elif preset not in (None, "", "mnist"):
        raise ValueError(f"unknown preset {preset!r} for configs/ib.py; use {', '.join(PRESETS)}.")
    config.lock()
    return config
