"""Devices and meshes for the run engine: one-axis meshes, sharded batches, replicated weights, gathers.

`nst_jax.engine` imports this module as `mesh_lib`: it stacks the items of one bucket on a leading batch
axis (`stack`), places them with `NamedSharding(mesh, P('batch'))` (`shard_batch`, item i on one device),
replicates the VGG weights (`replicate`, `P()`) and copies results back (`to_host`). Items are
independent, so XLA's SPMD partitioner runs each device's slice with no communication. Batching itself
(buckets, per-item budgets, chunks of `max_batch`) is the engine's job; see docs/batching.md.

Multi-host: call `init_distributed(...)` first (a wrapper of `jax.distributed.initialize`); every process
then builds the same list of jobs, the mesh spans all devices of all processes, each process feeds its
addressable shards (`jax.make_array_from_callback`), and `to_host` gathers results on every process.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

PyTree = Any
BATCH_AXIS = "batch"


# ---- devices -----------------------------------------------------------------------------------------------


def init_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None) -> None:
  """Joins a multi-host run (`jax.distributed.initialize`); a no-op when no setting is given.

  On a TPU pod slice or a SLURM/Open MPI cluster JAX detects all three settings itself: pass
  `coordinator_address="auto"` to let it.
  """
  if coordinator_address is None and num_processes is None and process_id is None:
    return
  if coordinator_address == "auto":
    jax.distributed.initialize()
  else:
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A one-axis mesh named 'batch' over `devices` (default: every device of every process)."""
  devices = list(jax.devices() if devices is None else devices)
  return Mesh(np.asarray(devices), (BATCH_AXIS,))


def _place(tree: PyTree, mesh: Mesh | None, spec: P) -> PyTree:
  """Host arrays -> global arrays laid out by `NamedSharding(mesh, spec)` (each process feeds its shards)."""
  if mesh is None:
    return jax.tree.map(jnp.asarray, tree)
  sharding = NamedSharding(mesh, spec)

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(put, tree)


def shard_batch(tree: PyTree, mesh: Mesh | None) -> PyTree:
  """Splits the leading (batch) axis of every leaf over the mesh's 'batch' axis."""
  return _place(tree, mesh, P(BATCH_AXIS))


def reshard(tree: PyTree, mesh: Mesh) -> PyTree:
  """Device arrays already on the mesh -> the same arrays split over 'batch' (a no-op for leaves that are)."""
  sharding = NamedSharding(mesh, P(BATCH_AXIS))
  return jax.tree.map(lambda x: x if x.sharding == sharding else jax.device_put(x, sharding), tree)


def replicate(tree: PyTree, mesh: Mesh | None) -> PyTree:
  """A full copy of every leaf on every device (the VGG weights)."""
  return _place(tree, mesh, P())


def to_host(tree: PyTree) -> PyTree:
  """Device arrays -> numpy; on several processes, gathers the shards other processes hold."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils
  return multihost_utils.process_allgather(tree, tiled=True)


# ---- stacking ----------------------------------------------------------------------------------------------


def stack(trees: Sequence[PyTree]) -> PyTree:
  """`[tree_0, ..., tree_{B-1}]` with equal structure -> one tree whose leaves have a leading axis B."""
  return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def unstack(tree: PyTree, size: int) -> list[PyTree]:
  """Inverse of `stack`: the first `size` items along the leading axis."""
  return [jax.tree.map(lambda x, i=i: x[i], tree) for i in range(size)]


def pad_to(items: list, size: int) -> list:
  """Repeats the last item until there are `size` (padding is computed and thrown away)."""
  return items + [items[-1]] * (size - len(items))
