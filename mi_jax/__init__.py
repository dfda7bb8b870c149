"""mi_jax: mutual information estimation, MI gradients and InfoMax learning in JAX/Flax."""

from mi_jax import (
    bounds,
    critics,
    data,
    dim,
    encoders,
    ib,
    mige,
    probes,
    score,
    score_nets,
    tasks,
    training,
    vae,
)
from mi_jax.bounds import (
    Bound,
    MineState,
    StatefulBound,
    available_bounds,
    dv,
    flo,
    get_bound,
    infonce,
    interpolated,
    js,
    js_fgan,
    mine,
    nwj,
    register_bound,
    smile,
    tuba,
)
from mi_jax.critics import available_critics, get_critic, register_critic
from mi_jax.data import available_datasets, load_dataset, register_dataset
from mi_jax.dim import DIMObjective
from mi_jax.encoders import available_encoders, get_encoder, register_encoder
from mi_jax.estimate import MIEstimate, estimate_mi
from mi_jax.probes import fit_probe
from mi_jax.score import available_score_estimators, get_score_estimator, register_score_estimator
from mi_jax.tasks import Task, available_tasks, get_task

__version__ = "0.1.0"

__all__ = [
    "Bound",
    "DIMObjective",
    "MIEstimate",
    "MineState",
    "StatefulBound",
    "Task",
    "available_bounds",
    "available_critics",
    "available_datasets",
    "available_encoders",
    "available_score_estimators",
    "available_tasks",
    "bounds",
    "critics",
    "data",
    "dim",
    "dv",
    "encoders",
    "estimate_mi",
    "fit_probe",
    "flo",
    "get_bound",
    "get_critic",
    "get_encoder",
    "get_score_estimator",
    "get_task",
    "ib",
    "infonce",
    "interpolated",
    "js",
    "js_fgan",
    "load_dataset",
    "mige",
    "mine",
    "nwj",
    "probes",
    "register_bound",
    "register_critic",
    "register_dataset",
    "register_encoder",
    "register_score_estimator",
    "score",
    "score_nets",
    "smile",
    "tasks",
    "training",
    "tuba",
    "vae",
]
