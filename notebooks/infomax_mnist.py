# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # Deep InfoMax on MNIST, from the library's parts
#
# The first cell installs the library where it is missing (Colab): set `MI_JAX_SOURCE` there.
# This notebook is a simplified version of the `mnist` preset of `experiments.infomax` (without
# its checkpoints, plots, fc features and MLP probes): a conv encoder trained with DIM's global
# and local InfoNCE terms and a uniform prior, then linear probes on its frozen features
# against the same encoder untrained and raw pixels (README, one run: conv map 0.987 trained,
# 0.980 untrained; global vector 0.967; pixels 0.926). With several devices (a TPU) each batch
# is split over them.
#
# Data: set `DATA_DIR` to a folder holding the four MNIST IDX `.gz` files (on Colab, upload
# or download them there first; by default it is read from the environment variable
# `MNIST_DIR`). Left empty, `mi_jax.data` reads a tensorflow-datasets copy
# prepared beforehand (`tfds build mnist --file_format=array_record`, a command that needs
# TensorFlow installed; nothing is downloaded here), or names what is missing. Or use
# `DATASET = "digits"` (scikit-learn's 8x8 digits, bundled). `TINY = True` (or
# `MI_JAX_NOTEBOOK_TINY=1`) runs a few steps on digits. On 2 CPU cores a step takes about 0.15 s:
# about 8 minutes for the 3,000 steps, then about 5 minutes of probes (the two 6,272-feature
# conv-map probes ~2 minutes each); the probes' features peak near 9 GB of memory, within
# Colab's standard 12.7 GB.

# %%
import importlib.util
import subprocess
import sys

MI_JAX_SOURCE = ""  # where pip finds this repository: "git+https://..." or a local path
# (No origin: a folder named mi_jax, such as the repository cloned into the working folder,
# found as a namespace package: not the library.)
if getattr(importlib.util.find_spec("mi_jax"), "origin", None) is None:
    if not MI_JAX_SOURCE:
        raise RuntimeError(
            "mi_jax is not importable (not installed, or hidden by a folder named mi_jax in the "
            "working folder): set MI_JAX_SOURCE to this repository."
        )
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", MI_JAX_SOURCE], check=True)
    importlib.invalidate_caches()
    sys.modules.pop("mi_jax", None)  # a namespace package imported before

# %%
import functools
import os
import time

import jax
import jax.numpy as jnp
import optax

from mi_jax import data, dim, encoders, parallel, probes, training

TINY = os.environ.get("MI_JAX_NOTEBOOK_TINY") == "1"  # or True here
DATASET = "digits" if TINY else "mnist"
DATA_DIR = "" if TINY else os.environ.get("MNIST_DIR", "")  # or the folder with the IDX files
NUM_STEPS = 20 if TINY else 3000
BATCH = 32 if TINY else 128

dataset = data.load_dataset(DATASET, data_dir=DATA_DIR or None, max_examples=500 if TINY else None)
print(dataset.name, dataset.train_images.shape, dataset.test_images.shape, jax.devices())

# %% [markdown]
# ## The objective
# `dim.DIMObjective` holds the encoder, the critics and the three terms: global MI (feature map
# vs. the global vector Y), local MI (every feature-map location vs. Y, averaged) and prior
# matching. The estimator is any registered bound by name, or `"mige"`.

# %%
encoder = encoders.get_encoder("conv", latent_dim=64, channels=(64, 128), fc_width=1024)
objective = dim.DIMObjective(encoder=encoder, estimator="infonce", alpha=0.5, beta=1.0, gamma=0.1)
init_key, train_key = jax.random.split(jax.random.key(0))
sample = data.to_float(dataset.train_images[:BATCH])
params, bound_states = jax.jit(objective.init)(init_key, sample)
# Every device that the batch splits over (a TPU v2-8: 8); the bounds still see the whole batch.
mesh = parallel.data_mesh_for(BATCH)
print(f"training on {mesh.devices.size} of {jax.device_count()} devices")
# The untrained encoder, the probes' baseline (a copy: training donates the state's arrays).
untrained = parallel.replicate(jax.tree.map(jnp.copy, params["encoder"]), mesh)
state = training.TrainState.create(
    apply_fn=encoder.apply, params=params, tx=optax.adam(1e-4), bound_states=bound_states
)
state = parallel.replicate(state, mesh)


@functools.partial(jax.jit, donate_argnums=0)
def train_step(state, images, step):
    aug_key, loss_key = jax.random.split(jax.random.fold_in(train_key, step))
    images = parallel.shard_batch(images, mesh)
    batch = data.augment_batch(aug_key, data.to_float(images), crop_padding=2)
    grad_fn = jax.value_and_grad(objective.loss, has_aux=True)
    (loss, (metrics, states)), grads = grad_fn(state.params, state.bound_states, batch, loss_key)
    return state.apply_gradients(grads=grads, bound_states=states), metrics


# %% [markdown]
# ## Training
# Resumable batch order (`data.batch_indices`), one jitted step per batch.

# %%
indices = data.batch_indices(
    len(dataset.train_images), BATCH, seed=0, start_step=0, num_steps=NUM_STEPS
)
t0 = time.perf_counter()
for step in range(NUM_STEPS):
    state, metrics = train_step(state, dataset.train_images[indices[step]], step)
    if step % max(1, NUM_STEPS // 10) == 0 or step == NUM_STEPS - 1:
        print(
            f"step {step:5d}  loss {float(metrics['loss']):8.3f}  local MI (the estimator's) "
            f"{float(metrics['mi_local']):.3f} nats  ({time.perf_counter() - t0:.0f} s)"
        )

# %% [markdown]
# ## Linear probes on the frozen encoder


# %%
def features(params, images):
    out = objective.representations(params, data.to_float(images))
    return out["local"], out["global"]


labels = (dataset.train_labels, dataset.test_labels)


def encode(params):
    return [
        probes.extract_features(features, params, images, mesh=mesh)
        for images in (dataset.train_images, dataset.test_images)
    ]


(train_map, train_y), (test_map, test_y) = encode(state.params["encoder"])
(untrained_train, _), (untrained_test, _) = encode(untrained)
flat = lambda a: a.reshape(len(a), -1) / 255.0  # noqa: E731
candidates = {
    "conv feature map": (train_map, test_map),
    "global vector Y": (train_y, test_y),
    "untrained conv map": (untrained_train, untrained_test),
    "raw pixels": (flat(dataset.train_images), flat(dataset.test_images)),
}
for name, (tr, te) in candidates.items():
    result = probes.fit_probe(
        tr, labels[0], te, labels[1], kind="linear", max_iter=50 if TINY else 300
    )  # the preset's settings; its tolerance, 1e-6, is fit_probe's default
    print(f"{name:18s} linear-probe test accuracy {result.test_accuracy:.4f}")
