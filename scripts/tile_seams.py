"""How seamless is a `--tile` result? Mean absolute difference across the wrap-around seam vs between
neighbouring columns (rows) inside, on a real photo, with and without `tile`.

    python scripts/tile_seams.py --content ../shared/data/content/chelsea.png \
        --style ../shared/data/styles/starry_night.jpg --max_size 96 --steps 60 [--init noise] [--weights random]

Prints one row per run: the seam's difference (last column vs first, last row vs first) and the mean and
95th percentile of the differences between neighbouring columns (rows) inside the picture.
"""

from __future__ import annotations

import os
import time

import nst_jax
import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
SHARED_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")
flags.DEFINE_string("content", os.path.join(SHARED_DATA, "content/chelsea.png"), "Photo.")
flags.DEFINE_string("style", os.path.join(SHARED_DATA, "styles/starry_night.jpg"), "Painting.")
flags.DEFINE_integer("max_size", 128, "Output longest side.")
flags.DEFINE_integer("steps", 100, "Adam steps.")
flags.DEFINE_string("weights", "random", "VGG19 weights (a file, or 'random').")
flags.DEFINE_string("init", "content", "Starting image (the photo keeps its own seam where the content loss holds "
                    "it; noise shows what the loss alone does).")


def seam_figures(image: np.ndarray) -> dict:
  """Seam vs inside differences (mean abs over pixels and channels), across columns and across rows."""
  out = {}
  for axis, name in ((1, "columns"), (0, "rows")):
    inside = np.abs(np.diff(image, axis=axis)).mean(axis=tuple(a for a in (0, 1, 2) if a != axis))
    first, last = np.take(image, 0, axis=axis), np.take(image, -1, axis=axis)
    out[name] = (float(np.abs(first - last).mean()), float(inside.mean()), float(np.percentile(inside, 95)))
  return out


def main(argv):
  del argv
  from nst_jax import image_io, inputs, settings, weights as weights_lib
  weights = weights_lib.load_vgg19(FLAGS.weights)
  print(f"photo {os.path.basename(FLAGS.content)}, style {os.path.basename(FLAGS.style)}, max_size "
        f"{FLAGS.max_size}, {FLAGS.steps} Adam steps from {FLAGS.init}, weights {weights.source}; "
        f"load {os.getloadavg()[0]:.1f}")
  photo = image_io.load_image(FLAGS.content, FLAGS.max_size)
  print(f"{'run':<10} {'axis':<8} {'seam':>8} {'inside':>8} {'inside p95':>10}")
  for name, figures in (("photo", seam_figures(photo)),):
    for axis, (seam, inside, p95) in figures.items():
      print(f"{name:<10} {axis:<8} {seam:8.4f} {inside:8.4f} {p95:10.4f}")
  for tile in (False, True):
    config = settings.resolve({"max_size": FLAGS.max_size, "steps": FLAGS.steps, "tile": tile, "init": FLAGS.init})
    job, _ = inputs.load_job(FLAGS.content, [FLAGS.style], config)
    begin = time.perf_counter()
    image = nst_jax.stylize(job.content, job.styles, config, weights=weights)
    name = "tile" if tile else "no tile"
    for axis, (seam, inside, p95) in seam_figures(image).items():
      print(f"{name:<10} {axis:<8} {seam:8.4f} {inside:8.4f} {p95:10.4f}   ({time.perf_counter() - begin:.0f} s)")


if __name__ == "__main__":
  app.run(main)
