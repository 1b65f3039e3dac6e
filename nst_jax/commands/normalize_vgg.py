"""Write normalised VGG19 weights: each filter's mean activation over calibration images is 1 (Gatys et al.).

    python scripts/normalize_vgg.py --weights vgg19.h5 --output vgg19_normalized.npz
    nst-jax --weights vgg19_normalized.npz --content photo.jpg --style painting.jpg --output out.png

Without --images, scikit-image's bundled photographs are the calibration set. The output is the project's
.npz format with the input's preprocessing, loadable with `--weights`.
"""

from __future__ import annotations

import glob
import os

import numpy as np
from absl import flags

from nst_jax import image_io, vgg, vgg_normalize, weights as weights_lib
from nst_jax.commands import common
from nst_jax.errors import NstJaxError

FLAGS = flags.FLAGS
flags.DEFINE_string("weights", None, "VGG19 weights to normalise (.h5, .pth, .npz, 'random'; default: cached).")
flags.DEFINE_string("output", None, "Output .npz file.")
flags.DEFINE_list("images", None, "Calibration images or glob patterns (default: scikit-image's photos).")
flags.DEFINE_integer("size", 256, "Calibration images are resized to this longest side.")
flags.DEFINE_enum("pooling", "max", vgg.POOLING_KINDS, "Pooling used while measuring activations.")
flags.DEFINE_boolean("overwrite", False, "Replace an existing output file.")

SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
                  "retina", "cat")


def calibration_images(patterns, size):
  """Yields float32 `[H, W, 3]` images with longest side `size`."""
  if patterns:
    paths = sorted({p for pattern in patterns for p in (glob.glob(os.path.expanduser(pattern)) or [pattern])})
    for path in paths:
      yield image_io.load_image(path, size)
    return
  from skimage import data
  for name in SKIMAGE_PHOTOS:
    if hasattr(data, name):
      array = getattr(data, name)()
      if array.ndim == 3 and array.shape[-1] == 3:
        yield image_io.resize_longest(array.astype(np.float32) / 255.0, size)


def main(argv):
  if len(argv) > 1:
    raise NstJaxError(f"unexpected arguments: {' '.join(argv[1:])}")
  weights_lib.check_npz_output(FLAGS.output, overwrite=FLAGS.overwrite)
  image_io.check_size(FLAGS.size, "size")
  weights = weights_lib.load_vgg19(FLAGS.weights)
  images = list(calibration_images(FLAGS.images, FLAGS.size))
  if not images:
    raise NstJaxError("no calibration images found")
  print(f"measuring mean activations on {len(images)} image(s) at {FLAGS.size} px ...")
  normalized, means = vgg_normalize.normalize(weights, images, pooling=FLAGS.pooling)
  for conv in vgg.CONV_LAYERS:
    m = means[conv]
    print(f"  {conv}: mean activation {m.mean():.4g} (min {m.min():.3g}, max {m.max():.3g}, "
          f"{int((m <= 1e-8).sum())} silent)")
  weights_lib.save_npz(FLAGS.output, normalized)
  print(f"wrote {FLAGS.output} (preprocessing {normalized.preprocessing})")


def run(argv=None):
  common.run(main, argv)


if __name__ == "__main__":
  run()
