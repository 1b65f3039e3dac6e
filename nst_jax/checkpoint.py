"""Exact checkpoints of a run with orbax: save, verify, restore-or-fall-back, closed in `finally`.

A checkpoint at step `s` is one orbax step directory holding two items:

* `state`: the saved PyTree (`{'state': StylizeState, 'seed': int32}`: image, optimizer state (Adam
  moments, L-BFGS memory and line-search cache...), step, RNG seed), written with `StandardSave`;
* `meta`: JSON with the config hash, elapsed seconds and a SHA-256 digest of every saved array.

Saves are asynchronous (orbax writes in a background thread) from *host copies* of the arrays, so the
next jit step may donate and reuse the device buffers while the write is still going. Orbax writes each
step into a temporary folder and renames it when complete, so a process killed mid-save leaves no step
behind; a step whose files were damaged afterwards fails to restore or fails the digest check, and
`restore_latest` then moves it aside (`<dir>_corrupt/`, nothing is deleted) and falls back to the previous
step with a warning.

    with Checkpoints(path, max_to_keep=3) as ckpt:
      found = ckpt.restore_latest(abstract_tree)   # None, or (step, tree, meta)
      ckpt.save(step, tree, {"config_hash": ...})
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import threading
import time
import warnings
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from nst_jax.errors import NstJaxError

PyTree = Any


class CheckpointWarning(UserWarning):
  """A damaged checkpoint was skipped."""


def _ignore_late_tensorstore_callbacks(previous_hook):
  """An `sys.unraisablehook` that drops one known, harmless message and passes everything else on.

  When orbax fails to read a damaged checkpoint, its `asyncio.run` closes the event loop while tensorstore
  still has reads in flight; their completion callbacks, on tensorstore's own threads, then hit the closed
  loop and Python prints "Exception ignored ... RuntimeError: Event loop is closed". The restore has
  already failed cleanly (and we fall back to an older checkpoint), so that message is noise to users.
  """

  def hook(unraisable):
    if (unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == "Event loop is closed"
        and threading.current_thread() is not threading.main_thread()):
      return
    previous_hook(unraisable)

  return hook


sys.unraisablehook = _ignore_late_tensorstore_callbacks(sys.unraisablehook)


def host_copy(tree: PyTree) -> PyTree:
  """Every leaf as a fresh host numpy array (safe from buffer donation and later in-place updates)."""
  return jax.tree.map(lambda x: np.array(x, copy=True), jax.device_get(tree))


def tree_digest(tree: PyTree) -> str:
  """SHA-256 over every leaf's dtype, shape and bytes, in tree order (`jax.tree.leaves`)."""
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(jax.device_get(tree)):
    leaf = np.ascontiguousarray(leaf)
    digest.update(f"{leaf.dtype.str}{leaf.shape}".encode())
    digest.update(leaf.tobytes())
  return digest.hexdigest()


class Checkpoints:
  """An orbax `CheckpointManager` over `directory` that keeps the last `max_to_keep` steps."""

  def __init__(self, directory: str, *, max_to_keep: int = 3, async_save: bool = True):
    if max_to_keep < 1:
      raise NstJaxError(f"keep at least one checkpoint, got {max_to_keep}")
    self.directory = os.path.abspath(directory)
    self.corrupt_directory = self.directory.rstrip(os.sep) + "_corrupt"
    self._options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                                 enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(self.directory, options=self._options)
    self.save_seconds: list[float] = []  # Blocking time of each `save` call (host copy + dispatch).

  # -- context manager: always close (finishing async saves) --
  def __enter__(self) -> "Checkpoints":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, tree: PyTree, meta: dict | None = None) -> bool:
    """Starts an asynchronous save of `tree` (copied to host first). False if `step` is already saved."""
    step = int(step)
    if step in self._manager.all_steps():
      return False
    begin = time.perf_counter()
    tree = host_copy(tree)
    meta = dict(meta or {}, step=step, digest=tree_digest(tree))
    self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                                     meta=ocp.args.JsonSave(meta)))
    self.save_seconds.append(time.perf_counter() - begin)
    return True

  def read_meta(self, step: int) -> dict:
    """The JSON metadata of step `step` alone (e.g. to learn which shapes its arrays have)."""
    self._manager.wait_until_finished()
    try:
      return dict(self._manager.restore(int(step), args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])
    except Exception as e:  # orbax raises many types for damaged files.
      raise NstJaxError(f"checkpoint {step} in {self.directory} cannot be read ({type(e).__name__})") from e

  def restore(self, step: int, abstract_tree: PyTree) -> tuple[PyTree, dict]:
    """Restores step `step` into the structure of `abstract_tree` (e.g. from `jax.eval_shape`).

    `abstract_tree` may also be a function `meta -> abstract tree`, for checkpoints whose shapes depend on
    what they hold (a coarse-to-fine run's stage).

    Raises:
      NstJaxError: the step is missing, unreadable, or its arrays do not match the stored digest.
    """
    self._manager.wait_until_finished()
    if callable(abstract_tree):
      abstract_tree = abstract_tree(self.read_meta(step))
    try:
      restored = self._manager.restore(int(step), args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_tree), meta=ocp.args.JsonRestore()))
      tree, meta = restored["state"], dict(restored["meta"])
    except Exception as e:  # orbax/tensorstore raise many types for damaged files.
      reason = (str(e).splitlines() or [""])[0].split(" [tensorstore_spec")[0][:300]
      raise NstJaxError(f"checkpoint {step} in {self.directory} cannot be read ({type(e).__name__}: "
                        f"{reason})") from e
    if meta.get("digest") != tree_digest(tree):
      raise NstJaxError(f"checkpoint {step} in {self.directory} does not match its digest (damaged files)")
    return tree, meta

  def restore_latest(self, abstract_tree: PyTree) -> tuple[int, PyTree, dict] | None:
    """The newest step that restores and verifies: `(step, tree, meta)`, or None when there is none.

    `abstract_tree` is a tree or a function `meta -> tree`, as for `restore`.

    A damaged newer step is moved to `<directory>_corrupt/` with a `CheckpointWarning`, and the previous
    one is tried.
    """
    for step in reversed(self.all_steps()):
      try:
        tree, meta = self.restore(step, abstract_tree)
      except NstJaxError as e:
        moved = self._quarantine(step)
        warnings.warn(f"{e}; moved it to {moved} and falling back to the previous checkpoint",
                      CheckpointWarning, stacklevel=2)
        continue
      return step, tree, meta
    return None

  def _quarantine(self, step: int) -> str:
    """Moves step `step`'s folder out of orbax's sight (kept for inspection) and reloads the manager."""
    source = os.path.join(self.directory, str(step))
    os.makedirs(self.corrupt_directory, exist_ok=True)
    target = os.path.join(self.corrupt_directory, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
    while os.path.exists(target):
      target += "_"
    if os.path.exists(source):
      shutil.move(source, target)
    self._manager.reload()
    return target

  def wait_until_finished(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the manager (idempotent)."""
    if self._manager is not None:
      try:
        self._manager.wait_until_finished()
      finally:
        self._manager.close()
        self._manager = None
