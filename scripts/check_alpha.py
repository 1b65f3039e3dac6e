"""The transparency check (docs/transparency.md) on a real photo, printed as figures.

    python scripts/check_alpha.py --weights random --max_size 128 --steps 100

The photo's right half is made fully transparent; the result of that RGBA photo is compared with a run on
the opaque left half alone (same painting size, same settings). Its alpha must come back exactly, and its
opaque half should be stylised as if the transparent half were absent. For scale, the left half of a run on
the whole opaque photo and a run on the half alone nudged by less than half an 8-bit level (the noise floor
of the optimisation) are compared with the half-alone run too. Prints mean absolute differences (over the
opaque half, in the 16 px band next to the transparent half, and away from it), how much the stylisation
changed the photo, and `uptime` (the machine is shared).
"""

from __future__ import annotations

import os
import subprocess
import time

import numpy as np
from absl import app, flags

from nst_jax import engine, image_io, settings, weights as weights_lib

_SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
flags.DEFINE_string("content", os.path.join(_SHARED, "content", "chelsea.png"), "Photo.")
flags.DEFINE_string("style", os.path.join(_SHARED, "styles", "starry_night.jpg"), "Painting.")
flags.DEFINE_string("weights", "random", "VGG19 weights.")
flags.DEFINE_integer("max_size", 128, "Output size (longest side) of the RGBA photo.")
flags.DEFINE_integer("steps", 100, "Steps of each run.")
flags.DEFINE_string("preset", "balanced", "Preset of both runs.")
flags.DEFINE_string("optimizer", "adam", "Optimizer of both runs.")
flags.DEFINE_list("style_layers", None, "Style layers (default: the preset's).")
flags.DEFINE_list("content_layers", None, "Content layers (default: the preset's).")
FLAGS = flags.FLAGS


def main(_):
  weights = weights_lib.load_vgg19(FLAGS.weights)
  photo = image_io.load_image(FLAGS.content, FLAGS.max_size)
  height, width = photo.shape[:2]
  half = width // 2
  rgba = np.concatenate([photo, np.ones((height, width, 1), np.float32)], -1)
  rgba[:, half:, 3] = 0.0
  base = {"preset": FLAGS.preset, "steps": FLAGS.steps, "optimizer": FLAGS.optimizer,
          "style_layers": ",".join(FLAGS.style_layers or []), "content_layers": ",".join(FLAGS.content_layers or [])}
  painting = image_io.load_image(FLAGS.style, max(height, width))  # Same painting size in both runs.
  full_config = settings.resolve({**base, "max_size": max(height, width)}, num_styles=1)
  alone_config = settings.resolve({**base, "max_size": max(height, half),
                                   "style_scale": max(height, width) / max(height, half)}, num_styles=1)
  start = time.perf_counter()
  # The noise floor: the half alone with its pixels nudged by less than one 8-bit level.
  nudged = np.clip(photo[:, :half] + np.random.default_rng(0).uniform(-0.4, 0.4, photo[:, :half].shape) / 255,
                   0, 1).astype(np.float32)
  full, alone, opaque_run, floor = (r.image for r in engine.Engine(weights).run([
      engine.Job(content=rgba, styles=[painting], config=full_config, name="rgba"),
      engine.Job(content=photo[:, :half], styles=[painting], config=alone_config, name="half alone"),
      engine.Job(content=photo, styles=[painting], config=full_config, name="opaque photo"),
      engine.Job(content=nudged, styles=[painting], config=alone_config, name="half alone, nudged")]))
  seconds = time.perf_counter() - start
  assert np.array_equal(image_io.to_uint8(full[..., 3]), image_io.to_uint8(rgba[..., 3])), "alpha changed"
  opaque, original = full[:, :half, :3], photo[:, :half]
  diff = np.abs(opaque - alone)
  print(f"{width}x{height} {os.path.basename(FLAGS.content)} right half transparent, "
        f"{os.path.basename(FLAGS.style)}, {FLAGS.preset} {FLAGS.optimizer} {FLAGS.steps} steps, "
        f"weights {FLAGS.weights}: {seconds:.0f} s")
  print("alpha: identical")
  print(f"opaque half vs the half alone: mean abs {diff.mean():.4f} (band of 16 px next to the transparent "
        f"half {diff[:, -16:].mean():.4f}, the rest {diff[:, :-16].mean():.4f})")
  print(f"for scale: the left half of the whole opaque photo's run vs the half alone: mean abs "
        f"{np.abs(opaque_run[:, :half] - alone).mean():.4f}")
  print(f"noise floor: the half alone vs the half alone nudged by < 1/2 of an 8-bit level: mean abs "
        f"{np.abs(floor - alone).mean():.4f}; the RGBA run's opaque half vs the opaque photo's run: "
        f"{np.abs(opaque - opaque_run[:, :half]).mean():.4f}")
  print(f"change from the photo: RGBA run {np.abs(opaque - original).mean():.4f}, half alone "
        f"{np.abs(alone - original).mean():.4f}")
  print(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
  app.run(main)
