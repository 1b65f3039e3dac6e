"""Re-run the report's experiments: each writes images, results.csv and report.html into --out_dir/NAME.

    nst-jax experiments --experiment combinations,ratios --out_dir runs/report --max_size 256 --steps 300

Inputs: every image in --content_dir and --style_dir (default ../shared/data/content and
../shared/data/styles beside the project checkout when present, else scikit-image's bundled pictures);
the single-pair experiments use --content/--style (repeat --style to blend paintings, weighted by
--style_blend_weights), or the first image of each folder. Every `nst-jax` setting flag (--steps, --max_size,
--style_weight, --preserve_colors, --scales, --style_scale, --preset, ...) sets the base settings of every
picture (docs/settings.md); the pictures run on the engine, batched by bucket.
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np

from absl import flags

from nst_jax import experiments, image_io, inputs, settings
from nst_jax.commands import common
from nst_jax.commands import stylize  # Defines the setting flags.
from nst_jax.errors import NstJaxError

_SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                       "..", "shared", "data")

FLAGS = flags.FLAGS
flags.DEFINE_list("experiment", list(experiments.EXPERIMENTS),
                  f"Experiments to run: {', '.join(experiments.EXPERIMENTS)}.")
flags.DEFINE_string("out_dir", None, "Output folder; each experiment writes into a subfolder.")
flags.DEFINE_string("content_dir", None, "Folder of content photos (default ../shared/data/content, "
                    "else scikit-image's astronaut, chelsea, coffee).")
flags.DEFINE_string("style_dir", None, "Folder of style paintings (default ../shared/data/styles, "
                    "else scikit-image pictures as stand-ins).")
flags.DEFINE_integer("max_images", 4, "Use at most this many contents and styles from each folder.")
flags.DEFINE_integer("exp_batch_size", None, "Most pictures per compiled batch (default: all at once).")
flags.DEFINE_list("optimizers", list(experiments.optimize.OPTIMIZERS), "Optimizers for 'optimizers'.")
flags.DEFINE_list("ratios", ["1:20", "1:1", "20:1"], "Content:style weight multipliers for 'ratios'.")

_BUILTIN_CONTENT = ("astronaut", "chelsea", "coffee")
_BUILTIN_STYLE = ("hubble_deep_field", "immunohistochemistry", "rocket")


def _load(path: str, prepare: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
  """The file, decoded once and prepared once (`prepare`), refusing a transparent picture: experiments' grids and
  sheets are RGB."""
  image = image_io.open_image_keep_alpha(path)
  if image.shape[-1] == 4:
    raise NstJaxError(f"{path} is transparent: experiments do not keep alpha; use nst-jax or nst-jax batch "
                      f"(docs/transparency.md)")
  return prepare(image)


def _folder_images(folder: str, prepare: Callable, limit: int) -> dict:
  names = sorted(n for n in os.listdir(folder) if os.path.splitext(n)[1].lower() in
                 (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"))
  if not names:
    raise NstJaxError(f"no images in {folder}")
  return {os.path.splitext(n)[0]: _load(os.path.join(folder, n), prepare) for n in names[:limit]}


def _builtin_images(names, prepare: Callable) -> dict:
  from skimage import data
  images = {}
  for name in names:
    image = getattr(data, name)()
    image = image.astype("float32") / (255.0 if image.dtype.kind == "u" else 1.0)
    images[name] = prepare(image[..., :3])
  return images


def load_inputs(flag_dir: str | None, kind: str, builtins, prepare: Callable, limit: int) -> dict:
  """`{name: [H, W, 3]}` from the flag's folder, the shared data folder, or scikit-image, each `prepare`d."""
  folder = flag_dir or os.path.join(_SHARED, "content" if kind == "content" else "styles")
  if flag_dir or os.path.isdir(folder):
    if not os.path.isdir(folder):
      raise NstJaxError(f"--{kind}_dir is not a folder: {folder}")
    return _folder_images(folder, prepare, limit)
  return _builtin_images(builtins[:limit], prepare)


def _parse_ratios(values) -> list[tuple[float, float]]:
  try:
    pairs = [tuple(float(x) for x in v.split(":")) for v in values]
  except ValueError:
    pairs = []
  if not pairs or any(len(p) != 2 or min(p) < 0 for p in pairs):
    raise NstJaxError(f"--ratios must look like 1:20,1:1,20:1, got {','.join(values)}")
  return pairs


def _check_flags() -> None:
  if not FLAGS.out_dir:
    raise NstJaxError("--out_dir is required (see --help)")
  unknown = [e for e in FLAGS.experiment if e not in experiments.EXPERIMENTS]
  if unknown:
    raise NstJaxError(f"unknown experiment(s) {', '.join(unknown)}; expected {', '.join(experiments.EXPERIMENTS)}")
  bad = [o for o in FLAGS.optimizers if o not in experiments.optimize.OPTIMIZERS]
  if bad:
    raise NstJaxError(f"unknown optimizer(s) {', '.join(bad)}; expected {', '.join(experiments.optimize.OPTIMIZERS)}")
  for name in FLAGS.experiment:
    folder = os.path.join(FLAGS.out_dir, name)
    if os.path.isdir(folder) and os.listdir(folder) and not FLAGS.overwrite:
      raise NstJaxError(f"{folder} is not empty (pass --overwrite to replace its files)")


def _load_images(config) -> tuple[dict, dict, object, list]:
  """`(contents, styles, content, style)`: the folders' pictures and the single-pair experiments' photo and
  painting(s). Photos are loaded at max_size, paintings by `inputs.prepare_painting` (style_scale x max_size)."""
  photo = lambda image: image_io.resize_longest(image, image_io.check_size(int(config.max_size), "max_size"))
  painting = lambda image: inputs.prepare_painting(image, config)  # The one size rule of every path.
  contents = load_inputs(FLAGS.content_dir, "content", _BUILTIN_CONTENT, photo, FLAGS.max_images)
  styles = load_inputs(FLAGS.style_dir, "style", _BUILTIN_STYLE, painting, FLAGS.max_images)
  content = _load(FLAGS.content, photo) if FLAGS.content else next(iter(contents.values()))
  style = [_load(path, painting) for path in FLAGS.style] if FLAGS.style else [next(iter(styles.values()))]
  return contents, styles, content, style


def main(argv):
  if len(argv) > 1:
    raise NstJaxError(f"unexpected arguments: {' '.join(argv[1:])}")
  _check_flags()
  config = settings.resolve(stylize.settings_from_flags())
  stylize.print_machine_note(config)  # As every command: say when this machine's defaults sized the pictures.
  ratios = _parse_ratios(FLAGS.ratios)
  contents, styles, content, style = _load_images(config)
  if any(name != "combinations" for name in FLAGS.experiment):
    settings.validate(config, len(style))  # The blend weights against the single pair's paintings.
  experiments.SHOW_PROGRESS = FLAGS.progress
  weights = stylize.load_weights()
  for name in FLAGS.experiment:
    folder = os.path.join(FLAGS.out_dir, name)
    print(f"experiment {name} -> {folder}")
    if name == "combinations":
      rows = experiments.combinations(contents, styles, config, weights, folder, batch_size=FLAGS.exp_batch_size)
    elif name == "optimizers":
      rows = experiments.optimizers(content, style, config, weights, folder, names=FLAGS.optimizers)
    elif name == "ratios":
      rows = experiments.ratios(content, style, config, weights, folder, multipliers=ratios,
                                batch_size=FLAGS.exp_batch_size)
    else:
      rows = experiments.presets(content, style, config, weights, folder, batch_size=FLAGS.exp_batch_size)
    print(f"  {len(rows)} picture(s); report: {os.path.join(folder, 'report.html')}")
  return 0


def run(argv=None):
  common.run(main, argv)


if __name__ == "__main__":
  run()
