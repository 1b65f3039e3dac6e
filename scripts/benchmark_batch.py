"""Throughput of batched stylisation: pictures per hour and the speed-up over running pictures one by one.

    python scripts/benchmark_batch.py --size 256 --batch_sizes 1,2,4,8 --weights random

For each batch size B, B items (one content/style pair, each with its own style weight, as in a weight
sweep) run as one vmapped, jit-compiled step sharded over all local devices. After `--warmup` untimed steps
(compilation), `--steps` steps are timed; pictures/hour assumes `--steps_per_picture` steps per picture.
Speed-up = throughput(B) / throughput(1).
"""

from __future__ import annotations

import time

import jax
import numpy as np
from absl import app, flags

from nst_jax import batch, image_io, weights as weights_lib
from nst_jax.configs import default

FLAGS = flags.FLAGS
flags.DEFINE_integer("size", 256, "Longest side of the pictures in pixels.")
flags.DEFINE_list("batch_sizes", ["1", "2", "4", "8"], "Batch sizes to measure.")
flags.DEFINE_integer("steps", 5, "Timed steps per batch size.")
flags.DEFINE_integer("warmup", 1, "Untimed steps first (compilation).")
flags.DEFINE_integer("steps_per_picture", 500, "Steps one picture needs (for pictures/hour).")
flags.DEFINE_enum("optimizer", "adam", ("adam", "adagrad", "rmsprop", "sgd", "lbfgs"), "Optimizer.")
flags.DEFINE_string("weights", "random", "VGG19 weights (speed does not depend on their values).")
flags.DEFINE_boolean("shard", True, "Shard the batch over all local devices.")


def measure(runner: batch.BatchStylizer, items: list[batch.Item]) -> tuple[float, float]:
  """`(compile_and_warmup_seconds, seconds_per_step)` for one batch of `items`."""
  stylizer, state, targets = runner.prepare(items)
  start = time.perf_counter()
  for _ in range(FLAGS.warmup):
    state, loss = stylizer.step(state, targets, runner.weights)
  jax.block_until_ready(loss)
  warm = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(FLAGS.steps):
    state, loss = stylizer.step(state, targets, runner.weights)
  jax.block_until_ready((state.image, loss))
  return warm, (time.perf_counter() - start) / FLAGS.steps


def main(argv):
  del argv
  from skimage import data
  content = image_io.resize_longest(data.chelsea().astype(np.float32) / 255, FLAGS.size)
  style = image_io.resize_longest(data.coffee().astype(np.float32) / 255, FLAGS.size)
  config = default.get_config()
  config.max_size, config.optimizer = FLAGS.size, FLAGS.optimizer
  weights = weights_lib.load_vgg19(FLAGS.weights)
  mesh = batch.make_mesh() if FLAGS.shard else None
  runner = batch.BatchStylizer(weights, mesh=mesh)
  print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}; {content.shape[1]}x{content.shape[0]} "
        f"px, {FLAGS.optimizer}, {FLAGS.steps} timed steps, {FLAGS.steps_per_picture} steps per picture")
  print(f"{'batch':>5}  {'compile s':>9}  {'s/step':>8}  {'s/step/pic':>10}  {'pics/hour':>10}  {'speed-up':>8}")
  base = None
  for size in [int(b) for b in FLAGS.batch_sizes]:
    items = [batch.item_from_config(content, style, config, style_weight=config.style_weight * (1 + i))
             for i in range(size)]
    warm, per_step = measure(runner, items)
    per_picture = per_step / size
    pictures_per_hour = 3600.0 / (per_picture * FLAGS.steps_per_picture)
    base = base or pictures_per_hour
    print(f"{size:>5}  {warm:>9.2f}  {per_step:>8.3f}  {per_picture:>10.3f}  {pictures_per_hour:>10.1f}  "
          f"{pictures_per_hour / base:>7.2f}x", flush=True)


if __name__ == "__main__":
  app.run(main)
