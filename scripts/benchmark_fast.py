"""Figures of the fast net (docs/fast.md): milliseconds per picture, and its loss against the optimiser's.

    python scripts/benchmark_fast.py --ms --sizes 256,512,1024
    python scripts/benchmark_fast.py --quality --model models/p --style painting.jpg \
        --photos tubingen.jpg,skimage:rocket --size 256 --optimizer_steps 100,500 --weights random

--ms: the net (`--width`, 1 = Johnson et al.'s; untrained parameters: the time does not depend on their
values) on one square picture per size, in JAX on this machine's devices; the compile is excluded, the
median of `--repeats` runs is printed.

--quality: on photos not used in training, at `--size` px, the picture command's loss (the model's own loss
settings, `settings.resolve`; the same VGG weights as its training: `--weights`) of the photo itself, the
net's picture, and the optimiser's pictures after each of `--optimizer_steps` (the engine with the default
optimizer, started from the photo), with the seconds each took. Totals are comparable within a photo.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from nst_jax import engine, image_io, optimize, settings
from nst_jax import weights as weights_lib
from nst_jax.fast import apply, model

flags.DEFINE_boolean("ms", False, "Time the net per picture at --sizes.")
flags.DEFINE_list("sizes", ["256", "512", "1024"], "Square picture sizes for --ms.")
flags.DEFINE_float("width", 1.0, "Net width for --ms.")
flags.DEFINE_integer("repeats", 5, "Timed runs per size (median).")
flags.DEFINE_boolean("quality", False, "Compare the net's loss with the optimiser's on --photos.")
flags.DEFINE_string("model", None, "Model folder (--quality).")
flags.DEFINE_string("style", None, "The painting the model was trained for (--quality).")
flags.DEFINE_list("photos", ["/work/shared/data/content/tubingen.jpg", "skimage:rocket"],
                  "Photos not used in training (--quality).")
flags.DEFINE_integer("size", 256, "Longest side of the photos for --quality.")
flags.DEFINE_list("optimizer_steps", ["100", "500"], "Optimiser step counts to compare with (--quality).")
flags.DEFINE_string("weights", "random", "VGG19 weights of the loss (those the model was trained with).")
FLAGS = flags.FLAGS


def time_net(size: int, width: float, repeats: int) -> tuple[float, float]:
  """Median milliseconds of the jitted net on one `size` x `size` picture (compile excluded), and the GFLOP
  of its compiled program (XLA's cost analysis: what the time would be on an idle machine of known speed)."""
  params = model.init_params(width)
  run = jax.jit(lambda p, x: model.apply(p, x, width=width))
  photo = jnp.asarray(np.random.default_rng(0).random((1, size, size, 3), np.float32))
  cost = run.lower(params, photo).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  gflop = float(cost.get("flops", float("nan"))) / 1e9
  run(params, photo).block_until_ready()
  times = []
  for _ in range(repeats):
    begin = time.perf_counter()
    run(params, photo).block_until_ready()
    times.append(1000 * (time.perf_counter() - begin))
  return statistics.median(times), gflop


def picture_loss(weights, config, photo: np.ndarray, style: np.ndarray, picture: np.ndarray) -> dict:
  """The picture command's losses of `picture` as the output for `photo` (targets made as the engine does)."""
  spec = optimize.loss_spec_from_config(config)
  targets = optimize.targets_from_config(weights, config, photo,
                                         [engine.resize_style(style, photo.shape[:2], float(config.style_scale))])
  loss_fn = optimize.make_loss_fn(spec)
  _, metrics = jax.jit(loss_fn)(jnp.asarray(picture), targets, weights)
  return {k: float(v) for k, v in metrics.items()}


def quality() -> None:
  net = apply.FastNet.load(FLAGS.model)
  config = settings.resolve({k: v for k, v in net.meta["settings"].items()})
  weights = weights_lib.load_vgg19(FLAGS.weights)
  style = image_io.load_image(FLAGS.style, max(image_io.MIN_SIZE, round(float(config.style_scale) * FLAGS.size)))
  print(f"model {FLAGS.model}: {net.meta['steps']} steps, width {net.meta['width']}; {FLAGS.size} px; "
        f"weights {weights.source}")
  print("| photo | picture | total | content | style | tv | seconds |")
  print("|---|---|---|---|---|---|---|")
  for path in FLAGS.photos:
    photo = image_io.load_image(path, FLAGS.size)
    rows = [("photo itself", photo, 0.0)]
    net.stylize(photo)  # Compile.
    begin = time.perf_counter()
    rows.append(("fast net", net.stylize(photo), time.perf_counter() - begin))
    for steps in map(int, FLAGS.optimizer_steps):
      run_config = settings.resolve({**net.meta["settings"], "max_size": FLAGS.size, "steps": steps})
      begin = time.perf_counter()
      picture = optimize.stylize(photo, style, run_config, weights=weights)
      rows.append((f"optimiser {steps} steps", picture, time.perf_counter() - begin))
    for name, picture, seconds in rows:
      loss = picture_loss(weights, config, photo, style, picture)
      print(f"| {path} | {name} | {loss['total']:.4g} | {loss['content']:.4g} | {loss['style']:.4g} | "
            f"{loss['tv']:.4g} | {seconds:.2f} |", flush=True)


def main(argv):
  del argv
  if FLAGS.ms:
    print(f"net width {FLAGS.width} on {jax.devices()[0].platform}: ms per picture (median of {FLAGS.repeats})")
    for size in map(int, FLAGS.sizes):
      ms, gflop = time_net(size, FLAGS.width, FLAGS.repeats)
      print(f"  {size} x {size}: {ms:.0f} ms, {gflop:.1f} GFLOP", flush=True)
  if FLAGS.quality:
    quality()


if __name__ == "__main__":
  app.run(main)
