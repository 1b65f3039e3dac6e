"""Saving and restoring one job's `StylizeState` (a small function pair, so it can be swapped for orbax).

The state's leaves (image, optimizer state, step) are flattened with `jax.tree_util` and written with
`np.savez` through `image_io.atomic_write` (temporary file + rename), so a crash mid-write leaves the
previous checkpoint intact. Restoring needs a template state of the same structure (a fresh `init_state`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import image_io
from nst_jax.errors import NstJaxError


def save_state(path: str, state) -> None:
  """Writes the leaves of `state` (a pytree of arrays, on host or device) to `path` atomically."""
  leaves = [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(jax.device_get(state))]
  with image_io.atomic_write(path) as f:
    np.savez(f, *leaves)


def restore_state(path: str, template):
  """Reads a state written by `save_state`; `template` gives the tree structure, shapes and dtypes."""
  template_leaves, treedef = jax.tree_util.tree_flatten(template)
  try:
    with np.load(path) as data:
      leaves = [data[f"arr_{i}"] for i in range(len(template_leaves))]
  except (OSError, KeyError, ValueError) as e:
    raise NstJaxError(f"unreadable checkpoint {path}: {e}") from None
  for leaf, ref in zip(leaves, template_leaves):
    if leaf.shape != np.shape(ref):
      raise NstJaxError(f"checkpoint {path} does not match the job (shape {leaf.shape} vs {np.shape(ref)})")
  return jax.tree_util.tree_unflatten(
      treedef, [jnp.asarray(leaf, dtype=jnp.asarray(ref).dtype) for leaf, ref in zip(leaves, template_leaves)])
