"""Stylise photos instantly with a net trained by `nst-jax train_fast` (any size, alpha kept).

    nst-jax fast --model models/p --content photo.jpg --output out.png
    nst-jax fast --model models/p --content a.jpg b.png c.jpg --out_dir out/

Each output is written atomically; an existing file is replaced only with --overwrite. With --out_dir each
photo gives `<out_dir>/<its name>.png`. Every input is read and checked before the first output is written.
See docs/fast.md.
"""

from __future__ import annotations

import os
import time

from absl import flags

from nst_jax import alpha, image_io, settings
from nst_jax.commands import common
from nst_jax.errors import NstJaxError
from nst_jax.fast import apply, cli

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "Model folder of `nst-jax train_fast` (or its model.nstfast file).")
flags.DEFINE_multi_string("content", None, "Photo(s) to stylise (files or skimage:NAME); more may follow as "
                          "arguments: --content a.jpg b.jpg.")
flags.DEFINE_string("output", None, "Output image path for a single photo (.png, .jpg, ...).")
flags.DEFINE_string("out_dir", None, "Output folder for any number of photos: <out_dir>/<photo name>.png.")
flags.DEFINE_integer("max_size", None, "Resize each photo so its longest side is this many pixels first "
                     f"({image_io.MIN_SIZE}-{image_io.MAX_SIZE}). Default: the photo's own size.")
flags.DEFINE_boolean("overwrite", False, "Replace existing output files.")
flags.DEFINE_boolean("compilation_cache", True, "Keep compiled programs in the cache dir between runs.")
cli.define_setting_flags(("preserve_colors",), __name__)


def output_paths(contents: list[str]) -> list[str]:
  """Where each photo's picture goes (--output, or --out_dir/<name>.png), checked to be writable."""
  if bool(FLAGS.output) == bool(FLAGS.out_dir):
    raise NstJaxError("give either --output (one photo) or --out_dir (see --help)")
  if FLAGS.output:
    if len(contents) != 1:
      raise NstJaxError(f"--output takes one photo, got {len(contents)}; use --out_dir for several")
    paths = [FLAGS.output]
  else:
    if not os.path.isdir(FLAGS.out_dir):
      raise NstJaxError(f"output folder does not exist: {FLAGS.out_dir}")
    names = [os.path.splitext(os.path.basename(c.split(":", 1)[1] if c.startswith("skimage:") else c))[0]
             for c in contents]
    if len(set(names)) != len(names):
      raise NstJaxError("two photos have the same name; --out_dir would write one over the other")
    paths = [os.path.join(FLAGS.out_dir, f"{name}.png") for name in names]
  for path in paths:
    image_io.check_writable(path, overwrite=FLAGS.overwrite)
  return paths


def load_photo(path: str):
  image = image_io.open_image_keep_alpha(path)
  if FLAGS.max_size is not None:
    image = image_io.resize_longest(image, image_io.check_size(FLAGS.max_size, "max_size"))
  height, width = image.shape[:2]
  if min(height, width) < image_io.MIN_SIZE:
    raise NstJaxError(f"{path} is {width}x{height} pixels; its short side must be at least {image_io.MIN_SIZE} px")
  alpha.split(image, path)
  return image


def main(argv):
  contents = list(FLAGS.content or []) + list(argv[1:])
  if not FLAGS.model:
    raise NstJaxError("--model is required (see --help)")
  if not contents:
    raise NstJaxError("--content is required (see --help)")
  preserve = settings.parse("preserve_colors", FLAGS.preserve_colors or "none")
  outputs = output_paths(contents)
  photos = [load_photo(path) for path in contents]  # Every input checked before any output is written.
  for photo, output in zip(photos, outputs):
    if alpha.has_alpha(photo):
      image_io.check_alpha_output(output)
  common.enable_compilation_cache(FLAGS.compilation_cache)
  net = apply.FastNet.load(FLAGS.model)
  for photo, output in zip(photos, outputs):
    begin = time.perf_counter()
    picture = net.stylize(photo, preserve_colors=preserve)
    image_io.save_image(output, picture)
    print(f"wrote {output} ({photo.shape[1]}x{photo.shape[0]}, {1000 * (time.perf_counter() - begin):.0f} ms)")


def run(argv=None):
  common.run(main, argv)


if __name__ == "__main__":
  run()
