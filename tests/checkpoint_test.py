"""Tests for nst_jax.checkpoint: exact round trips of every optimizer's state, damage detection, fallback."""

import glob
import json
import os

import jax
import numpy as np
import pytest

from nst_jax import checkpoint, optimize
from nst_jax.configs import default
from nst_jax.errors import NstJaxError


def _tree(value: float) -> dict:
  return {"image": np.full((8, 6, 3), value, np.float32),
          "opt": (np.arange(10, dtype=np.float32) * value, np.int32(value))}


def _abstract():
  return jax.eval_shape(lambda: jax.tree.map(jax.numpy.asarray, _tree(0.0)))


def _save_steps(path, steps=(1, 2, 3), keep=3):
  with checkpoint.Checkpoints(path, max_to_keep=keep) as ckpt:
    for step in steps:
      assert ckpt.save(step, _tree(float(step)), {"config_hash": "abc"})


def _files(path, step, sub="state"):
  return [f for f in glob.glob(os.path.join(path, str(step), sub, "**"), recursive=True) if os.path.isfile(f)]


@pytest.mark.parametrize("optimizer, precondition", [(name, 0.0) for name in optimize.OPTIMIZERS] + [("lbfgs", 0.3)])
def test_stylize_state_round_trip_is_exact(tmp_path, optimizer, precondition):
  config = default.get_config()
  config.optimizer, config.lbfgs_precondition = optimizer, precondition
  stylizer = optimize.Stylizer(config)
  image = np.random.default_rng(0).uniform(size=(12, 10, 3)).astype(np.float32)
  state = optimize.init_state(image, stylizer.optimizer)
  # Non-trivial optimizer state: perturb every float leaf.
  state = jax.tree.map(lambda x: x + 0.25 if jax.numpy.issubdtype(x.dtype, jax.numpy.floating) else x + 3, state)
  tree = {"state": state, "seed": np.int32(7)}
  with checkpoint.Checkpoints(str(tmp_path / "ck")) as ckpt:
    ckpt.save(5, tree, {"config_hash": "h"})
    ckpt.wait_until_finished()
    abstract = {"state": jax.eval_shape(lambda x: optimize.init_state(x, stylizer.optimizer), image),
                "seed": jax.ShapeDtypeStruct((), np.int32)}
    step, restored, meta = ckpt.restore_latest(abstract)
  assert step == 5 and meta["config_hash"] == "h" and meta["step"] == 5
  assert isinstance(restored["state"], optimize.StylizeState)
  assert jax.tree.structure(restored) == jax.tree.structure(tree)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(tree)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert np.asarray(a).dtype == np.asarray(b).dtype


def test_save_copies_the_tree_so_later_changes_do_not_leak(tmp_path):
  tree = _tree(1.0)
  with checkpoint.Checkpoints(str(tmp_path / "ck")) as ckpt:
    ckpt.save(1, tree)
    tree["image"][...] = 99.0  # Changed while the async save may still run.
    _, restored, _ = ckpt.restore_latest(_abstract())
  np.testing.assert_array_equal(np.asarray(restored["image"]), 1.0)


def test_keeps_the_last_k_and_skips_an_existing_step(tmp_path):
  path = str(tmp_path / "ck")
  _save_steps(path, steps=(1, 2, 3, 4), keep=2)
  with checkpoint.Checkpoints(path, max_to_keep=2) as ckpt:
    assert ckpt.all_steps() == [3, 4]
    assert not ckpt.save(4, _tree(0.0))
    _, restored, _ = ckpt.restore_latest(_abstract())
  np.testing.assert_array_equal(np.asarray(restored["image"]), 4.0)


def _truncate(path):
  for f in _files(path, 3):
    if f"{os.sep}d{os.sep}" in f:
      with open(f, "r+b") as fh:
        fh.truncate(os.path.getsize(f) // 2)


def _flip_bytes(path):
  for f in _files(path, 3):
    if f"{os.sep}d{os.sep}" in f:
      data = bytearray(open(f, "rb").read())
      data[len(data) // 2] ^= 0xFF
      open(f, "wb").write(bytes(data))


def _delete_metadata(path):
  os.remove(os.path.join(path, "3", "state", "_METADATA"))


def _wrong_digest(path):
  meta_file = os.path.join(path, "3", "meta", "metadata")
  meta = json.load(open(meta_file))
  meta["digest"] = "0" * 64
  json.dump(meta, open(meta_file, "w"))


@pytest.mark.parametrize("damage", [_truncate, _flip_bytes, _delete_metadata, _wrong_digest])
def test_damaged_latest_checkpoint_falls_back_with_a_warning(tmp_path, damage):
  path = str(tmp_path / "ck")
  _save_steps(path)
  damage(path)
  with checkpoint.Checkpoints(path) as ckpt:
    with pytest.warns(checkpoint.CheckpointWarning, match="checkpoint 3"):
      step, restored, meta = ckpt.restore_latest(_abstract())
    assert step == 2 and meta["step"] == 2
    np.testing.assert_array_equal(np.asarray(restored["image"]), 2.0)
    assert ckpt.all_steps() == [1, 2]
    # The damaged step is moved aside, not deleted, and a new step 3 can be saved.
    assert len(os.listdir(path + "_corrupt")) == 1
    assert ckpt.save(3, _tree(30.0))
    _, restored, _ = ckpt.restore_latest(_abstract())
  np.testing.assert_array_equal(np.asarray(restored["image"]), 30.0)


def test_no_usable_checkpoint_gives_none(tmp_path):
  path = str(tmp_path / "ck")
  with checkpoint.Checkpoints(path) as ckpt:
    assert ckpt.restore_latest(_abstract()) is None
  _save_steps(path, steps=(1,))
  os.remove(os.path.join(path, "1", "meta", "metadata"))
  with checkpoint.Checkpoints(path) as ckpt, pytest.warns(checkpoint.CheckpointWarning):
    assert ckpt.restore_latest(_abstract()) is None


def test_restore_of_a_damaged_step_raises_a_clear_error(tmp_path):
  path = str(tmp_path / "ck")
  _save_steps(path)
  _truncate(path)
  with checkpoint.Checkpoints(path) as ckpt, pytest.raises(NstJaxError, match="checkpoint 3 .* cannot be read"):
    ckpt.restore(3, _abstract())


def test_digest_depends_on_values_shapes_and_dtypes():
  base = checkpoint.tree_digest(_tree(1.0))
  assert base == checkpoint.tree_digest(_tree(1.0))
  assert base != checkpoint.tree_digest(_tree(2.0))
  assert checkpoint.tree_digest({"a": np.zeros(4, np.float32)}) != checkpoint.tree_digest({"a": np.zeros(4, np.int32)})
  assert checkpoint.tree_digest({"a": np.zeros((2, 2))}) != checkpoint.tree_digest({"a": np.zeros(4)})


def test_a_save_cut_off_half_way_is_ignored(tmp_path):
  """orbax writes into `<step>.orbax-checkpoint-tmp-*` and renames when done: a kill -9 leaves only that."""
  import shutil
  path = str(tmp_path / "ck")
  _save_steps(path, steps=(1,))
  partial = os.path.join(path, "2.orbax-checkpoint-tmp-1234")
  shutil.copytree(os.path.join(path, "1"), partial)
  os.remove(os.path.join(partial, "state", "_METADATA"))
  with checkpoint.Checkpoints(path) as ckpt:
    assert ckpt.all_steps() == [1]
    step, restored, _ = ckpt.restore_latest(_abstract())
    assert step == 1
    assert ckpt.save(2, _tree(2.0))
    assert ckpt.all_steps() == [1, 2]
