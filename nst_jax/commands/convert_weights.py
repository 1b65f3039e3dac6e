"""Convert VGG19 weights (Keras .h5 or torchvision .pth) into nst-jax's .npz format, or fetch the default.

    nst-jax convert_weights --input vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5 --output vgg19.npz
    nst-jax convert_weights --download      # fetch + verify the Keras file into the cache and convert it

The .npz records the preprocessing the weights expect, where they came from and the source file's sha256.
"""

from __future__ import annotations

import os

from absl import flags

from nst_jax import weights as weights_lib
from nst_jax.commands import common
from nst_jax.errors import NstJaxError

FLAGS = flags.FLAGS
flags.DEFINE_string("input", None, "Keras .h5 or torchvision .pth VGG19 weight file.")
flags.DEFINE_string("output", None, "Where to write the converted .npz.")
flags.DEFINE_boolean("download", False, "Download the default Keras weights into the cache and convert them.")
flags.DEFINE_boolean("overwrite", False, "Replace an existing output file.")


def main(argv):
  if len(argv) > 1:
    raise NstJaxError(f"unexpected arguments: {' '.join(argv[1:])}")
  if FLAGS.download:
    weights = weights_lib.default_weights()
    print(f"cached converted weights in {os.path.join(weights_lib.cache_dir(), weights_lib.CONVERTED_NAME)} "
          f"(source {weights.source}, sha256 {weights.sha256 or 'n/a'})")
    return
  if not FLAGS.input or not FLAGS.output:
    raise NstJaxError("--input and --output are required (or --download); see --help")
  weights_lib.check_npz_output(FLAGS.output, overwrite=FLAGS.overwrite)
  weights = weights_lib.load_vgg19(FLAGS.input)
  weights_lib.save_npz(FLAGS.output, weights)
  print(f"wrote {FLAGS.output} ({weights.preprocessing} preprocessing, source sha256 {weights.sha256})")


def run(argv=None):
  common.run(main, argv)


if __name__ == "__main__":
  run()
