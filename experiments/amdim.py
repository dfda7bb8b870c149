r"""AMDIM (Bachman et al. 2019): multi-view, multi-scale InfoMax, then probes.

  python -m experiments.amdim --config configs/amdim.py --workdir /tmp/amdim

Trains `mi_jax.amdim.MultiScaleEncoder` by maximizing the bound named in the config between
features of two augmented views of each image (predictions 1->5, 1->7 and 5->5, both
directions; `mi_jax.amdim`), then freezes it and fits linear and MLP probes on its global
vector and 5x5 / 7x7 maps, next to the same probes on raw pixels and on the randomly initialized
encoder.

The trainer is `experiments.infomax`'s (same workdir: ``config.json``, ``metrics.jsonl``,
``results.json``, ``curves.png``, ``probes.png``, Orbax checkpoints with automatic resume, a
progress bar, a NaN stops the run naming the step); only the objective differs.
"""

import ml_collections

from experiments import _cli, _common, infomax
from mi_jax import _checks, amdim


def build(config: ml_collections.ConfigDict, image_shape: tuple[int, ...]) -> amdim.AMDIMObjective:
    """The AMDIM objective (encoder included) that ``config`` describes; bad names and
    unknown or out-of-range view parameters raise here (image sizes under 7x7 at init)."""
    views = config.views.to_dict()
    # The encoder checks image sizes when initialized; the views' colour, the channels here.
    amdim.check_view_params(views, channels=image_shape[-1])
    # Every field of the encoder (a key it lacks was silently ignored); its own checks named.
    hparams = {k: tuple(v) if isinstance(v, list) else v for k, v in config.encoder_hparams.items()}
    known = sorted(_checks.fields_of(amdim.MultiScaleEncoder))
    if unknown := sorted(set(hparams) - set(known)):
        raise ValueError(f"unknown fields {unknown} in `config.encoder_hparams`; known: {known}.")
    try:
        encoder = amdim.MultiScaleEncoder(**hparams)
    except ValueError as e:
        raise ValueError(f"`config.encoder_hparams`: {e}") from None
    return amdim.AMDIMObjective(
        encoder=encoder,
        estimator=config.estimator,
        estimator_hparams=_common.hashable_hparams(config.estimator_hparams.to_dict()),
        predictions=tuple(config.predictions),
        critic_hidden=config.critic_hidden,
        embed_dim=config.embed_dim,
        critic_clip=config.critic_clip or None,
        penalty=config.penalty,
        views=_common.hashable_hparams(views),
    )


@_cli.locks_workdir
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, mesh=None) -> dict:
    """Trains (or resumes), evaluates, writes everything into ``workdir``; returns the results.
    Data-parallel over ``mesh`` (default: all devices), as `experiments.infomax`."""
    return infomax.train_and_evaluate(config, workdir, build_fn=build, name="amdim", mesh=mesh)


if __name__ == "__main__":
    _cli.run_experiment("amdim", train_and_evaluate)
