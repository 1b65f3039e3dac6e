"""Train a feed-forward net for one painting's look with the picture command's own loss (Johnson et al. 2016).

    nst-jax train_fast --style painting.jpg --images skimage:astronaut,coffee,chelsea --model_dir models/p

The loss settings (content/style/tv weights, loss_normalization, layers, style_scale, --preset looks) are
the picture command's, so a look means the same. The model folder gets model.nstfast (what `nst-jax fast`
reads), checkpoints, metrics.jsonl, losses.png and snapshots of a validation photo; running the same command
again continues from the newest checkpoint (Ctrl-C, SIGTERM and SIGHUP save one first). See docs/fast.md.
"""

from __future__ import annotations

import os
import signal
import sys
import time

from absl import flags

from nst_jax import hooks, image_io, settings
from nst_jax import weights as weights_lib
from nst_jax.commands import common
from nst_jax.errors import NstJaxError
from nst_jax.fast import cli, data, train

FLAGS = flags.FLAGS
_OPTIONS = train.TrainOptions()
SETTING_NAMES = train.LOSS_SETTINGS + ("seed",)
flags.DEFINE_multi_string("style", None, "Style painting (file or skimage:NAME); repeat to blend several "
                          "(style_blend_weights).")
flags.DEFINE_multi_string("images", None, "Training photos: a folder (searched recursively) or "
                          "skimage:NAME[,NAME...]; repeat to combine.")
flags.DEFINE_string("model_dir", None, "Model folder (created if missing): model.nstfast, checkpoints, "
                    "metrics.jsonl, losses.png, snapshots/. Running again resumes there.")
flags.DEFINE_integer("steps", _OPTIONS.steps, "Training steps (batches); raising it extends a finished training.")
flags.DEFINE_integer("batch_size", _OPTIONS.batch_size, "Crops per step (one vmapped loss).")
flags.DEFINE_integer("crop", _OPTIONS.crop, "Side of the square training crops in pixels.")
flags.DEFINE_float("lr", _OPTIONS.lr, "Adam's learning rate for the net's parameters.")
flags.DEFINE_float("width", _OPTIONS.width, "Channel multiplier of the net (1 = Johnson et al.'s 32/64/128).")
flags.DEFINE_string("validation", "skimage:chelsea", "Photo whose picture by the net is saved in snapshots/ "
                    "(longest side = --crop); empty = none.")
flags.DEFINE_integer("checkpoint_every", _OPTIONS.checkpoint_every, "Save a checkpoint (and model.nstfast, "
                     "losses.png) every N steps; 0 = only at the end or when stopped.")
flags.DEFINE_integer("snapshot_every", _OPTIONS.snapshot_every, "Save snapshots/step_NNNNNN.png every N steps.")
flags.DEFINE_integer("keep_checkpoints", _OPTIONS.keep_checkpoints, "How many recent checkpoints to keep.")
flags.DEFINE_string("weights", None, "VGG19 weights of the loss: a Keras .h5, torchvision .pth or nst-jax .npz "
                    "file, or 'random' (offline smoke runs). Default: the cached Keras weights.")
flags.DEFINE_boolean("overwrite", False, "Start afresh in a --model_dir that holds another training.")
flags.DEFINE_boolean("progress", True, "Show a progress bar.")
flags.DEFINE_boolean("compilation_cache", True, "Keep compiled programs in the cache dir between runs.")
flags.DEFINE_string("preset", None, settings.SHORTHANDS["preset"] + "; only its loss settings apply.")
cli.define_setting_flags(SETTING_NAMES, __name__)


def options_from_flags(seed: int) -> train.TrainOptions:
  return train.TrainOptions(steps=FLAGS.steps, batch_size=FLAGS.batch_size, crop=FLAGS.crop, lr=FLAGS.lr,
                            width=FLAGS.width, seed=seed, checkpoint_every=FLAGS.checkpoint_every,
                            snapshot_every=FLAGS.snapshot_every, keep_checkpoints=FLAGS.keep_checkpoints)


def main(argv):
  if len(argv) > 1:
    raise NstJaxError(f"unexpected arguments: {' '.join(argv[1:])} (see --help)")
  for name in ("style", "images", "model_dir"):
    if not FLAGS[name].value:
      raise NstJaxError(f"--{name} is required (see --help)")
  config = settings.resolve(cli.given_settings(SETTING_NAMES + ("preset",)), num_styles=len(FLAGS.style))
  options = options_from_flags(int(config.seed))
  options.check()
  images, image_names = data.load_images(FLAGS.images, options.crop)
  styles = [image_io.load_image(path, image_io.check_size(
      max(image_io.MIN_SIZE, round(float(config.style_scale) * options.crop)), "style_scale x crop"))
            for path in FLAGS.style]
  validation = image_io.load_image(FLAGS.validation, options.crop) if FLAGS.validation else None
  common.enable_compilation_cache(FLAGS.compilation_cache)
  weights = weights_lib.load_vgg19(FLAGS.weights)
  if weights.sha256 == "":
    print("warning: random VGG19 weights: the pipeline runs, but the net's pictures are not artistic",
          file=sys.stderr)
  begin = time.perf_counter()
  with hooks.StopOnSignals((signal.SIGINT, signal.SIGTERM, signal.SIGHUP)) as stop:
    try:
      result = train.train(weights, config, styles, images, FLAGS.model_dir, options, validation=validation,
                           style_names=FLAGS.style, image_names=image_names, overwrite=FLAGS.overwrite,
                           progress=FLAGS.progress, stop=stop, log=lambda line: print(line, file=sys.stderr))
    except train.TrainInterrupted as e:
      common.stop_exit(str(e), e.exit_code)  # The one stop exit: its message survives a closed stderr.
  losses = ", ".join(f"{k} {v:.4g}" for k, v in result.metrics.items())
  print(f"wrote {os.path.join(FLAGS.model_dir, 'model.nstfast')} ({result.step} steps, "
        f"{time.perf_counter() - begin:.1f} s{'; ' + losses if losses else ''})")


def run(argv=None):
  common.run(main, argv)


if __name__ == "__main__":
  run()
