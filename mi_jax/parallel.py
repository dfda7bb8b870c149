"""Data parallelism over every device with `jax.sharding`: one mesh axis, sharded batches.

The recipe every experiment follows:

  mesh = parallel.data_mesh()                      # all devices, one axis named "data"
  state = parallel.replicate(state, mesh)          # parameters and optimizer state everywhere
  images = parallel.replicate(images, mesh)        # the uint8 dataset on every device
  ...inside the jitted step:
  batch = parallel.shard_batch(images[idx], mesh)  # [B, ...] split along B across devices

`jax.jit` then partitions the step (SPMD): each device runs the encoder forward and backward on
its slice of the batch, and where the computation couples samples — the ``[B, B]`` score
matrix of a contrastive bound, a batch mean — the compiler inserts the collectives, so every
bound sees the negatives of the *global* batch, exactly as on one device. Gradients of the
replicated parameters come back all-reduced; `replicate_like` pins the new state to the same
(replicated) layout so donated buffers line up from step to step. No `pmap`, no per-device code.

Numbers: a sharded step computes the same function as the unsharded one; only the order of
floating-point reductions over the batch changes (per-device partial sums, then an
all-reduce), so metrics agree with a one-device run to float32 rounding (the tests compare at
relative 1e-4 after several steps, measured differences ~1e-6).

Multi-host: `initialize_distributed` calls `jax.distributed.initialize` when the usual
environment is present (a coordinator address, an `srun` step or Open MPI with several tasks,
a Cloud TPU pod); `data_mesh` then spans every process's devices, and `replicate` builds global
arrays from each process's (identical) host copy.
"""

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mi_jax import _checks

DATA_AXIS = "data"


def _multi_process_env() -> bool:
    """Whether the environment describes a job of several processes."""
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):  # the variable jax.distributed reads
        return True
    if "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""):  # a TPU pod slice; one host: no comma
        return True
    # SLURM: the tasks of a job step (set by `srun`), not the allocation's SLURM_NTASKS, which a
    # batch script also sees when it runs as one process (initialize would wait for the others).
    names = ("SLURM_STEP_NUM_TASKS", "OMPI_COMM_WORLD_SIZE")
    return any(int(os.environ.get(n) or 1) > 1 for n in names)


def initialize_distributed() -> bool:
    """Starts multi-host JAX when the environment describes a multi-process job.

    Returns whether `jax.distributed.initialize` was called. Must run before any other JAX call
    (`experiments._cli.run_experiment` calls it before training). A single process does nothing.
    """
    if not _multi_process_env():
        return False
    jax.distributed.initialize()
    return True


def data_mesh(devices=None) -> Mesh:
    """A one-axis `Mesh` named ``"data"`` over ``devices`` (default: all, of every process)."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("`devices` is empty: give at least one device (None: all of them).")
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def checked_mesh(mesh=None) -> Mesh:
    """``mesh`` after `check_mesh`, or a `data_mesh` over every device when it is None: the
    mesh argument of every experiment."""
    if mesh is None:
        return data_mesh()
    check_mesh(mesh)
    return mesh


def data_mesh_for(batch_size: int, devices=None) -> Mesh:
    """A `data_mesh` that a batch of ``batch_size`` splits evenly over: the first ``n`` of
    ``devices`` (default: all) for the largest ``n`` dividing ``batch_size`` (batch 128 on 3
    devices: 2; on 6: 4). The default mesh of a library call whose batch size the user picked.

    With several processes every device stays (each process must hold a share of the batch);
    `check_batch_size` then names a batch that does not split.
    """
    _checks.check_ints(batch_size=batch_size)
    devices = jax.devices() if devices is None else list(devices)
    if jax.process_count() == 1:
        n = max(k for k in range(1, len(devices) + 1) if batch_size % k == 0)
        devices = devices[:n]
    return data_mesh(devices)


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding that puts a whole copy of an array on every device of ``mesh``."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    """Shards the leading (batch) axis over ``"data"``; the other ``ndim - 1`` axes whole."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS, *([None] * (ndim - 1))))


def check_mesh(mesh) -> None:
    """Raises unless ``mesh`` is a `Mesh` with the one axis ``"data"`` (`data_mesh`'s): batches
    are split along that axis by name (another name failed in compilation, naming neither)."""
    if not isinstance(mesh, Mesh):
        raise ValueError(f"`mesh` must be a jax.sharding.Mesh (`data_mesh`), got {mesh!r}.")
    if mesh.axis_names != (DATA_AXIS,):
        raise ValueError(
            f"`mesh` must have the one axis {DATA_AXIS!r} (`mi_jax.parallel.data_mesh`), got "
            f"axes {mesh.axis_names}."
        )
    ids = [d.id for d in mesh.devices.flat]
    if len(set(ids)) < len(ids):  # XLA's own error: "INTERNAL: Device 0 not unique"
        raise ValueError(f"`mesh` lists a device more than once: device ids {ids}.")


def check_batch_size(batch_size: int, mesh: Mesh, name: str = "batch_size") -> None:
    """Raises unless ``batch_size`` (an integer >= 1) splits evenly over the mesh's devices."""
    _checks.check_ints(**{name: batch_size})
    n = mesh.devices.size
    if batch_size % n:
        raise ValueError(
            f"`{name}` ({batch_size}) must be a multiple of the number of devices ({n}) for "
            f"data parallelism; use a multiple of {n}, or fewer devices (a run resumed on "
            "another machine keeps its batch size): CUDA_VISIBLE_DEVICES on GPUs, "
            "TPU_VISIBLE_CHIPS on TPUs, --xla_force_host_platform_device_count in XLA_FLAGS on "
            "the CPU."
        )


def replicate(tree, mesh: Mesh):
    """Every leaf (host or device array) as a global array replicated over ``mesh``.

    Works across processes: each process supplies its own copy, which must be identical (same
    seed, same data), as in every experiment here.
    """
    sharding = replicated(mesh)

    def put(leaf):
        if isinstance(leaf, jax.Array) and jax.process_count() == 1:
            return jax.device_put(leaf, sharding)
        return _global_array(leaf, sharding)

    return jax.tree.map(put, tree)


def _global_array(host, sharding: NamedSharding) -> jax.Array:
    """A global array laid out as ``sharding`` from a host copy that every process holds (a
    typed PRNG key array too: its key data, wrapped again)."""
    if isinstance(host, jax.Array) and jax.dtypes.issubdtype(host.dtype, jax.dtypes.prng_key):
        data = _global_array(jax.random.key_data(host), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(host))
    host = np.asarray(host)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def put_batch(host: np.ndarray, mesh: Mesh) -> jax.Array:
    """A host batch ``[B, ...]`` as a global array split along ``B`` over ``"data"`` (each
    process supplies the whole, identical batch)."""
    return _global_array(host, batch_sharding(mesh, np.ndim(host)))


def shard_batch(tree, mesh: Mesh):
    """Inside a jitted function: constrains every leaf's leading axis to be split over
    ``"data"`` (a batch gathered from a replicated dataset, say)."""
    return jax.tree.map(
        lambda a: jax.lax.with_sharding_constraint(a, batch_sharding(mesh, a.ndim)), tree
    )


def replicate_like(tree, mesh: Mesh):
    """Inside a jitted function: constrains every leaf to be replicated (the new train state,
    so that its buffers have the layout of the donated old ones)."""
    return jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, replicated(mesh)), tree)
