"""Throughput of batched stylisation on the engine: pictures per hour and the speed-up over one by one.

    python scripts/benchmark_batch.py --size 256 --batch_sizes 1,2,4,8 --weights random

For each batch size B, B jobs (one content/style pair, each with its own style weight, as in a weight sweep)
run through `engine.Engine` as one bucket: one vmapped, jit-compiled step sharded over all local devices.
A first run of `--warmup` steps compiles; then runs of `--warmup` and `--warmup + --steps` steps are
timed, and their difference divided by `--steps` is the time of one step (targets, initial images and the
final evaluation cancel out). Pictures/hour assumes `--steps_per_picture` steps per picture.
Speed-up = throughput(B) / throughput(1).
"""

from __future__ import annotations

import time

import jax
import numpy as np
from absl import app, flags

from nst_jax import batch, engine, image_io, settings, weights as weights_lib

FLAGS = flags.FLAGS
flags.DEFINE_integer("size", 256, "Longest side of the pictures in pixels.")
flags.DEFINE_list("batch_sizes", ["1", "2", "4", "8"], "Batch sizes to measure.")
flags.DEFINE_integer("steps", 5, "Timed steps per batch size.")
flags.DEFINE_integer("warmup", 1, "Steps of the untimed first run (compilation) and of the short timed run.")
flags.DEFINE_integer("steps_per_picture", 500, "Steps one picture needs (for pictures/hour).")
flags.DEFINE_enum("optimizer", "adam", ("adam", "adagrad", "rmsprop", "sgd", "lbfgs"), "Optimizer.")
flags.DEFINE_string("weights", "random", "VGG19 weights (speed does not depend on their values).")
flags.DEFINE_boolean("shard", True, "Shard the batch over all local devices.")


def sweep(content: np.ndarray, style: np.ndarray, size: int, steps: int) -> list[engine.Job]:
  """`size` jobs of `steps` steps: the pair at style weights 1x, 2x, ... the default."""
  jobs = []
  for i in range(size):
    config = settings.resolve({"max_size": FLAGS.size, "optimizer": FLAGS.optimizer, "steps": steps,
                               "log_every": 10 ** 9})
    config.style_weight *= 1 + i
    jobs.append(engine.Job(content=content, styles=[style], config=config))
  return jobs


def measure(runner: engine.Engine, content: np.ndarray, style: np.ndarray, size: int) -> tuple[float, float]:
  """`(compile_and_warmup_seconds, seconds_per_step)` for one batch of `size` pictures."""
  timed = []
  for steps in (FLAGS.warmup, FLAGS.warmup, FLAGS.warmup + FLAGS.steps):
    jobs = sweep(content, style, size, steps)
    start = time.perf_counter()
    results = runner.run(jobs)
    jax.block_until_ready([r.image for r in results])
    timed.append(time.perf_counter() - start)
  return timed[0], (timed[2] - timed[1]) / FLAGS.steps


def main(argv):
  del argv
  from skimage import data
  content = image_io.resize_longest(data.chelsea().astype(np.float32) / 255, FLAGS.size)
  style = image_io.resize_longest(data.coffee().astype(np.float32) / 255, FLAGS.size)
  weights = weights_lib.load_vgg19(FLAGS.weights)
  mesh = batch.make_mesh() if FLAGS.shard else None
  runner = engine.Engine(weights, mesh=mesh)
  print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}; {content.shape[1]}x{content.shape[0]} "
        f"px, {FLAGS.optimizer}, {FLAGS.steps} timed steps, {FLAGS.steps_per_picture} steps per picture")
  print(f"{'batch':>5}  {'compile s':>9}  {'s/step':>8}  {'s/step/pic':>10}  {'pics/hour':>10}  {'speed-up':>8}")
  base = None
  for size in [int(b) for b in FLAGS.batch_sizes]:
    warm, per_step = measure(runner, content, style, size)
    per_picture = per_step / size
    pictures_per_hour = 3600.0 / (per_picture * FLAGS.steps_per_picture)
    base = base or pictures_per_hour
    print(f"{size:>5}  {warm:>9.2f}  {per_step:>8.3f}  {per_picture:>10.3f}  {pictures_per_hour:>10.1f}  "
          f"{pictures_per_hour / base:>7.2f}x", flush=True)


if __name__ == "__main__":
  app.run(main)
