"""Checkpoint cost of a long run: seconds per save at a given size and its share of run time.

    python scripts/benchmark_checkpoint.py --size 512 --optimizer adam,lbfgs

For each optimizer: seconds per optimisation step; per save the time until the checkpoint is committed
when the loop waits for it (the default of `nst-jax --workdir`), and, for `--async_checkpoints`, the time
the loop is blocked (host copy and dispatch) plus the slow-down of the steps that overlap the background
write; the restore time; the checkpoint size; and the share of run time at `--checkpoint_every`:

    share = seconds per save / (checkpoint_every * seconds per step)      (target <= 2%)

A save is what the engine does at a `checkpoint_every` step: copy the job's state out of the batched state to
the host (`engine.BatchView.item_state`) and hand it to `checkpoint.Checkpoints.save`. The steps are the
engine's compiled program (`optimize.Stylizer.step`) with a batch of one.

Synthetic VGG weights by default: the cost does not depend on their values.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time

import jax
import numpy as np
from absl import app, flags, logging

from nst_jax import checkpoint, engine, optimize, weights as weights_lib
from nst_jax.configs import default

flags.DEFINE_integer("size", 512, "Image size (square, pixels).")
flags.DEFINE_list("optimizer", ["adam", "lbfgs"], "Optimizers to measure.")
flags.DEFINE_integer("saves", 3, "Saves to time per optimizer.")
flags.DEFINE_integer("steps", 3, "Steps timed per measurement of s/step.")
flags.DEFINE_integer("checkpoint_every", 100, "Checkpoint interval the share is computed for.")
flags.DEFINE_string("weights", "random", "VGG19 weights (see nst-jax --help).")
flags.DEFINE_string("dir", None, "Folder for the checkpoints (default: a temporary folder on local disk).")
FLAGS = flags.FLAGS


# Per-item step budget of the compiled program: never reached here, so every step updates the image.
_BUDGET = np.array([np.iinfo(np.int32).max], np.int32)


def _time_steps(stylizer, state, targets, weights, count):
  begin = time.perf_counter()
  for _ in range(count):
    state, loss = stylizer.step(state, targets, weights, _BUDGET)
  jax.block_until_ready(state)
  return state, (time.perf_counter() - begin) / count


def _folder_bytes(path):
  return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)


def measure(optimizer, weights, folder):
  config = default.get_config()
  config.optimizer, config.max_size = optimizer, FLAGS.size
  rng = np.random.default_rng(0)
  content = rng.uniform(size=(FLAGS.size, FLAGS.size, 3)).astype(np.float32)
  style = rng.uniform(size=(FLAGS.size, FLAGS.size, 3)).astype(np.float32)
  stylizer = optimize.Stylizer(config)
  targets = jax.tree.map(lambda x: x[None], optimize.targets_from_config(weights, config, content, [style]))
  state = stylizer.init_state(content[None])
  begin = time.perf_counter()
  state, _ = _time_steps(stylizer, state, targets, weights, 1)
  compile_seconds = time.perf_counter() - begin
  state, step_seconds = _time_steps(stylizer, state, targets, weights, FLAGS.steps)
  blocked, full, overlap, restore = [], [], [], []
  # What the engine checkpoints: one job's unbatched state, with its metadata.
  abstract = {"state": jax.eval_shape(lambda image: optimize.init_state(image, stylizer.optimizer), content)}
  meta = {"config_hash": "bench", "stage": 0, "local_step": 0, "version": engine.CHECKPOINT_VERSION, "seconds": 0.0}

  def save(ckpt, step):
    ckpt.save(step, {"state": engine.BatchView(state).item_state(0)}, meta)

  path = os.path.join(folder, optimizer)
  with checkpoint.Checkpoints(path, max_to_keep=2) as ckpt:
    for i in range(FLAGS.saves):
      begin = time.perf_counter()
      save(ckpt, i + 1)
      blocked.append(time.perf_counter() - begin)
      # Steps overlapping the background write, vs the plain step time measured just before.
      state, with_write = _time_steps(stylizer, state, targets, weights, FLAGS.steps)
      overlap.append(max(0.0, with_write - step_seconds) * FLAGS.steps)
      ckpt.wait_until_finished()
      full.append(time.perf_counter() - begin)
    size = _folder_bytes(os.path.join(path, str(FLAGS.saves)))
    begin = time.perf_counter()
    ckpt.restore(FLAGS.saves, abstract)
    restore.append(time.perf_counter() - begin)
    syncs = []
    for i in range(FLAGS.saves):
      sync_begin = time.perf_counter()
      save(ckpt, FLAGS.saves + 1 + i)
      ckpt.wait_until_finished()
      syncs.append(time.perf_counter() - sync_begin)
    sync = statistics.median(syncs)
  cost = statistics.median(blocked) + statistics.median(overlap)
  interval = FLAGS.checkpoint_every * step_seconds
  print(f"{optimizer:>6} {FLAGS.size:>4}px: step {step_seconds:.3f} s (compile {compile_seconds:.1f} s); "
        f"checkpoint {size / 2**20:.1f} MiB, restore {restore[0]:.3f} s", flush=True)
  print(f"    waiting for each save (default): {sync:.3f} s per save = {100 * sync / interval:.2f}% of run time "
        f"at --checkpoint_every {FLAGS.checkpoint_every}", flush=True)
  print(f"    --async_checkpoints: blocked {statistics.median(blocked):.3f} s + overlap slow-down "
        f"{statistics.median(overlap):.3f} s = {100 * cost / interval:.2f}% (committed after "
        f"{statistics.median(full):.3f} s)", flush=True)

def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  weights = weights_lib.load_vgg19(FLAGS.weights)
  folder = FLAGS.dir or tempfile.mkdtemp(prefix="nst_ckpt_bench_")
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}; checkpoints in {folder}")
  try:
    for optimizer in FLAGS.optimizer:
      measure(optimizer, weights, folder)
  finally:
    if FLAGS.dir is None:
      shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
  app.run(main)
