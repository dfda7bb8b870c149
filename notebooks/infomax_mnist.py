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
# On Colab, install the library first: `!pip install -q "mi_jax @ git+URL"`. This notebook
# builds what `python -m experiments.infomax --config configs/infomax.py:mnist` runs (without
# its checkpoints and plots): a conv encoder trained with DIM's global and local InfoNCE terms
# and a uniform prior, then a linear probe on its frozen features against raw pixels.
#
# Data: set `DATA_DIR` to a folder holding the four MNIST IDX `.gz` files (on Colab, upload
# or download them there first). Left empty, `mi_jax.data` reads a tensorflow-datasets copy
# prepared beforehand (`tfds build mnist --file_format=array_record`; nothing is downloaded
# here), or names what is missing. Or use `DATASET = "digits"` (scikit-learn's 8x8 digits,
# bundled). `MI_JAX_NOTEBOOK_TINY=1` runs a few steps on digits.

# %%
import functools
import os
import time

import jax
import optax

from mi_jax import data, dim, encoders, probes, training

TINY = os.environ.get("MI_JAX_NOTEBOOK_TINY") == "1"
DATASET = "digits" if TINY else "mnist"
DATA_DIR = os.environ.get("MNIST_DIR", "")  # e.g. the folder with train-images-idx3-ubyte.gz
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
state = training.TrainState.create(
    apply_fn=encoder.apply, params=params, tx=optax.adam(1e-4), bound_states=bound_states
)


@functools.partial(jax.jit, donate_argnums=0)
def train_step(state, images, step):
    aug_key, loss_key = jax.random.split(jax.random.fold_in(train_key, step))
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
            f"step {step:5d}  loss {float(metrics['loss']):8.3f}  local InfoNCE "
            f"{float(metrics['infonce_local']):.3f}  ({time.perf_counter() - t0:.0f} s)"
        )

# %% [markdown]
# ## Linear probes on the frozen encoder


# %%
def features(params, images):
    out = objective.representations(params, data.to_float(images))
    return out["local"], out["global"]


labels = (dataset.train_labels, dataset.test_labels)
train_feats = probes.extract_features(features, state.params["encoder"], dataset.train_images)
test_feats = probes.extract_features(features, state.params["encoder"], dataset.test_images)
flat = lambda a: a.reshape(len(a), -1) / 255.0  # noqa: E731
candidates = {
    "conv feature map": (train_feats[0], test_feats[0]),
    "global vector Y": (train_feats[1], test_feats[1]),
    "raw pixels": (flat(dataset.train_images), flat(dataset.test_images)),
}
for name, (tr, te) in candidates.items():
    result = probes.fit_probe(
        tr, labels[0], te, labels[1], kind="linear", max_iter=50 if TINY else 300, tol=1e-6
    )  # the preset's tolerance: 1e-4 stopped the conv-map probe short (README)
    print(f"{name:18s} linear-probe test accuracy {result.test_accuracy:.4f}")
