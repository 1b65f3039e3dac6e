"""Makes the README's figure: content | style | result, side by side, from ../shared/data images.

    python scripts/make_readme_figure.py --weights random --output docs/images/example.jpg

The result uses the `quality` recipe (preconditioned L-BFGS from the recoloured photo) with the `balanced`
look at 512 px.

With pretrained weights (the default) the result is the familiar painterly look; with `--weights random`
(all that a machine without network can use) the style statistics still transfer, much less faithfully.
"""

import os

import numpy as np
from absl import app, flags
from PIL import Image, ImageDraw

from nst_jax import engine, image_io, weights as weights_lib
from nst_jax.commands import common
from nst_jax.configs import presets, quality

_SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
flags.DEFINE_string("content", os.path.join(_SHARED, "content", "tubingen.jpg"), "Content photo.")
flags.DEFINE_string("style", os.path.join(_SHARED, "styles", "starry_night.jpg"), "Style painting.")
flags.DEFINE_string("output", "docs/images/example.jpg", "Figure path.")
flags.DEFINE_string("weights", None, "VGG19 weights (default: cached pretrained).")
flags.DEFINE_integer("max_size", 512, "Output size (longest side).")
flags.DEFINE_string("look", "balanced", "Look preset (faithful, balanced, painterly).")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  common.enable_compilation_cache()
  content = image_io.load_image(FLAGS.content, FLAGS.max_size)
  style = image_io.load_image(FLAGS.style, FLAGS.max_size)
  config = presets.apply_preset(quality.get_config(), FLAGS.look)
  config.max_size = FLAGS.max_size
  job = engine.Job(content, [style], config)
  (done,) = engine.Engine(weights_lib.load_vgg19(FLAGS.weights)).run([job])
  result = done.image
  for s in done.stages:
    print(f"scale {s['width']}x{s['height']}: {s['steps']} steps, {s['seconds']:.1f} s, loss {s['total']:.4g}")
  height = content.shape[0]
  panels = [image_io.resize(p, (height, round(p.shape[1] * height / p.shape[0])))
            for p in (content, style, result)]
  gap = np.ones((height, 8, 3), np.float32)
  row = np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1)
  image = Image.fromarray(image_io.to_uint8(row))
  ImageDraw.Draw(image).text((4, 4), f"weights: {FLAGS.weights or 'pretrained'}", fill=(255, 255, 255))
  with image_io.atomic_write(FLAGS.output) as f:
    image.save(f, format="JPEG", quality=90)
  print(f"wrote {FLAGS.output}")


if __name__ == "__main__":
  app.run(main)
