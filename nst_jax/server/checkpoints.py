"""Saving and restoring one job's `StylizeState` with the project's orbax checkpoints (`nst_jax.checkpoint`).

Each job keeps its checkpoints in `<job dir>/checkpoints/` (orbax step folders, the newest one kept), written
synchronously so that the step recorded in the job database always exists on disk. A damaged checkpoint is
detected by its digest; the job then starts again from step 0 rather than failing.
"""

from __future__ import annotations

import jax

from nst_jax import checkpoint
from nst_jax.errors import NstJaxError


def save_state(directory: str, state) -> None:
  """Writes `state` (one job's `StylizeState`, host or device arrays) as checkpoint `state.step`."""
  with checkpoint.Checkpoints(directory, max_to_keep=1, async_save=False) as ckpt:
    ckpt.save(int(state.step), state)


def restore_state(directory: str, step: int, template):
  """Reads checkpoint `step`; `template` (a fresh state of the same job) gives structure, shapes and dtypes.

  Raises:
    NstJaxError: the checkpoint is missing, unreadable or damaged.
  """
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), template)
  with checkpoint.Checkpoints(directory, max_to_keep=1, async_save=False) as ckpt:
    tree, _ = ckpt.restore(step, abstract)
  for leaf, ref in zip(jax.tree.leaves(tree), jax.tree.leaves(abstract)):
    if leaf.shape != ref.shape:
      raise NstJaxError(f"checkpoint {step} in {directory} does not match the job "
                        f"(shape {leaf.shape} vs {ref.shape})")
  return jax.tree.map(jax.numpy.asarray, tree)
