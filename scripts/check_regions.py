"""The checks of spatial control (docs/spatial-control.md), printed as figures, and the docs figure.

    python scripts/check_regions.py --weights random --max_size 128 --preset quality \
        --figure docs/images/spatial-control.jpg
    python scripts/check_regions.py --max_size 256 --checks 1 --noplain --optimizer lbfgs

1. One painting, region = left half: the mean absolute change from the photo right of the middle (8 px
   away from the middle and the edges) over the same left of it; target <= 1/4. The left half is compared
   with the run without regions (its change, and how far the two results differ there; `--noplain` skips
   that run), and its last 8 columns before the middle (the seam) with its interior.
2. Two paintings, one per half: each half's Gram distance (VGG features of that half alone) to its own
   painting over its distance to the other painting; target <= 1/2.

Each run is one engine job with the default settings, or `--preset` and `--optimizer`. Prints `uptime`
with the figures (the machine is shared).
"""

from __future__ import annotations

import os
import subprocess
import time

import jax.numpy as jnp
import numpy as np
from absl import app, flags
from PIL import Image, ImageDraw

from nst_jax import engine, image_io, losses, settings, vgg, weights as weights_lib
from nst_jax.commands import common

_SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
flags.DEFINE_string("content", os.path.join(_SHARED, "content", "tubingen.jpg"), "Photo.")
flags.DEFINE_string("style", os.path.join(_SHARED, "styles", "starry_night.jpg"), "Painting (left half).")
flags.DEFINE_string("style2", os.path.join(_SHARED, "styles", "the_scream.jpg"), "Second painting (right half).")
flags.DEFINE_string("weights", "random", "VGG19 weights.")
flags.DEFINE_integer("max_size", 128, "Output size (longest side).")
flags.DEFINE_string("preset", None, "Preset of every run (default: none, the default settings).")
flags.DEFINE_string("optimizer", None, "Optimizer of every run (default: the preset's or the default).")
flags.DEFINE_integer("steps", None, "Steps (default: the preset's).")
flags.DEFINE_list("checks", ["1", "2"], "Which checks to run.")
flags.DEFINE_bool("plain", True, "Check 1 also runs without regions (the left half's change without them).")
flags.DEFINE_list("outside_content_weight", ["10", "1"], "Check 1 with each of these values (the figure uses "
                  "the first).")
flags.DEFINE_string("figure", None, "Write the docs figure (photo, masks, results) here.")
FLAGS = flags.FLAGS
MARGIN = 8


def _config(**values):
  given = {"preset": FLAGS.preset, "optimizer": FLAGS.optimizer, "max_size": FLAGS.max_size, "steps": FLAGS.steps,
           **values}
  return settings.resolve({k: v for k, v in given.items() if v is not None})


def _run(eng, job) -> np.ndarray:
  begin = time.perf_counter()
  (result,) = eng.run([job])
  print(f"  ran {job.name}: {result.step} steps, {time.perf_counter() - begin:.1f} s")
  return result.image


def _halves(shape):
  left = np.zeros(shape[:2], np.float32)
  left[:, : shape[1] // 2] = 1.0
  return left, 1.0 - left


def _side_change(image, photo):
  """Mean absolute change from the photo left and right of the middle, `MARGIN` px from it and the edges."""
  h, w = photo.shape[:2]
  change = np.abs(image - photo)[MARGIN:h - MARGIN]
  return change[:, MARGIN:w // 2 - MARGIN].mean(), change[:, w // 2 + MARGIN:w - MARGIN].mean()


def _grams(weights, image, layers):
  features = vgg.extract_features(weights, jnp.asarray(image), layers)
  return {n: losses.gram_matrix(f) / (f.shape[0] * f.shape[1]) for n, f in features.items()}


def _gram_distance(a, b):
  """Sum over layers of `||G_a - G_b||^2 / ||G_b||^2` (per-position Gram matrices)."""
  return float(sum(jnp.sum((a[n] - b[n]) ** 2) / jnp.sum(b[n] ** 2) for n in b))


def main(argv):
  del argv
  common.enable_compilation_cache()
  print(f"load: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
  weights = weights_lib.load_vgg19(FLAGS.weights)
  photo = image_io.load_image(FLAGS.content, FLAGS.max_size)
  paintings = [image_io.load_image(p, FLAGS.max_size) for p in (FLAGS.style, FLAGS.style2)]
  left, right = _halves(photo.shape)
  eng = engine.Engine(weights)
  one = _check_one(eng, photo, paintings, left) if "1" in FLAGS.checks else None
  both = _check_two(eng, weights, photo, paintings, left, right) if "2" in FLAGS.checks else None
  print(f"load: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
  if FLAGS.figure and one is not None and both is not None:
    _figure(photo, paintings, [left, right], one, both)


def _check_one(eng, photo, paintings, left) -> np.ndarray:
  """Check 1; returns the result with the first `outside_content_weight`."""
  print("check 1: one painting, region = left half")
  h, w = photo.shape[:2]
  plain = None
  if FLAGS.plain:
    plain = _run(eng, engine.Job(photo, paintings[:1], _config(), name="no regions"))
    plain_left, plain_right = _side_change(plain, photo)
    print(f"  without regions: change left {plain_left:.4f}, right {plain_right:.4f}")
  results = []
  for outside in FLAGS.outside_content_weight:
    config = _config(outside_content_weight=outside)
    image = _run(eng, engine.Job(photo, paintings[:1], config, regions=[left], name=f"left, outside {outside}"))
    results.append(image)
    change_left, change_right = _side_change(image, photo)
    # The seam: the painted side's last MARGIN columns before the middle, over its interior.
    seam = np.abs(image - photo)[MARGIN:h - MARGIN, w // 2 - MARGIN:w // 2].mean()
    versus = ""
    if plain is not None:
      gap = np.abs(image - plain)[MARGIN:h - MARGIN, MARGIN:w // 2 - MARGIN].mean()
      versus = f" ({change_left / plain_left:.2f}x without regions; mean |result - unregioned| there {gap:.4f})"
    print(f"  outside_content_weight {outside}: change left {change_left:.4f}{versus}, right {change_right:.4f}; "
          f"right/left {change_right / change_left:.3f} (target <= 0.25: "
          f"{'met' if change_right <= 0.25 * change_left else 'NOT met'}); seam {seam:.4f} "
          f"({seam / change_left:.2f}x the left)")
  return results[0]


def _check_two(eng, weights, photo, paintings, left, right) -> np.ndarray:
  """Check 2; returns the result."""
  print("check 2: two paintings, one per half")
  config = _config()
  both = _run(eng, engine.Job(photo, paintings, config, regions=[left, right], name="two halves"))
  layers = tuple(config.style_layers)
  painting_grams = [_grams(weights, engine.resize_style(p, photo.shape, float(config.style_scale)), layers)
                    for p in paintings]
  w = photo.shape[1]
  halves = {"left": both[:, :w // 2], "right": both[:, w // 2:]}
  for i, (name, half) in enumerate(halves.items()):
    grams = _grams(weights, half, layers)
    own, other = _gram_distance(grams, painting_grams[i]), _gram_distance(grams, painting_grams[1 - i])
    photo_own = _gram_distance(_grams(weights, photo[:, :w // 2] if i == 0 else photo[:, w // 2:], layers),
                               painting_grams[i])
    print(f"  {name} half: Gram distance to its painting {own:.4g} (the photo's {photo_own:.4g}), to the other "
          f"{other:.4g}; own/other {own / other:.3f} (target <= 0.5: {'met' if own <= 0.5 * other else 'NOT met'})")
  return both


def _figure(photo, paintings, masks, one, both) -> None:
  """photo | painting 1 | painting 2 | mask 1 | mask 2 | left-half result | two-painting result."""
  height = photo.shape[0]
  fit = lambda p: image_io.resize(p, (height, round(p.shape[1] * height / p.shape[0])))
  def grey(mask):  # With a grey frame, so that white reads as white next to the white gaps.
    framed = np.repeat(mask[..., None], 3, axis=-1)
    framed[[0, -1], :] = framed[:, [0, -1]] = 0.5
    return framed
  panels = [photo, fit(paintings[0]), fit(paintings[1]), grey(masks[0]), grey(masks[1]), one, both]
  captions = ["photo", "painting 1", "painting 2", "region 1", "region 2", "painting 1 left", "1 left, 2 right"]
  gap = np.ones((height, 6, 3), np.float32)
  row = np.concatenate([x for p in panels for x in (p, gap)][:-1], axis=1)
  strip = np.ones((14, row.shape[1], 3), np.float32)
  image = Image.fromarray(image_io.to_uint8(np.concatenate([row, strip], axis=0)))
  draw = ImageDraw.Draw(image)
  x = 0
  for panel, caption in zip(panels, captions):
    draw.text((x + 2, height + 1), caption, fill=(0, 0, 0))
    x += panel.shape[1] + gap.shape[1]
  draw.text((2, 2), f"weights: {FLAGS.weights}", fill=(255, 255, 255))
  with image_io.atomic_write(FLAGS.figure) as f:
    image.save(f, format="JPEG", quality=90)
  print(f"wrote {FLAGS.figure}")


if __name__ == "__main__":
  app.run(main)
