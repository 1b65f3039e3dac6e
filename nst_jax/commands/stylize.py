"""Stylise a content photo with a style painting (Gatys et al. 2016).

    nst-jax --content photo.jpg --style painting.jpg --output out.png

Writes the output image (atomically; an existing file is replaced only with --overwrite) and a metrics
log of the losses (`<output stem>.metrics.jsonl` beside it, or `metrics.jsonl` in --workdir).

With --workdir the run is resumable (see docs/long-runs.md): checkpoints, snapshots, config.json,
metrics.jsonl, final.png, progress.png and losses.png go into the folder; the same command run again
continues from the latest checkpoint; Ctrl-C / SIGTERM save a checkpoint and exit 130 / 143.

    nst-jax --content photo.jpg --style painting.jpg --workdir runs/cat --steps 10000
"""

from __future__ import annotations

import os
import sys
import time

from absl import flags

from nst_jax import image_io, optimize, rundir, run as run_lib, weights as weights_lib
from nst_jax.commands import common
from nst_jax.configs import default, presets
from nst_jax.errors import NstJaxError

_DEFAULTS = default.get_config()

FLAGS = flags.FLAGS
flags.DEFINE_string("content", None, "Content photo (any format Pillow reads), or skimage:NAME for an example "
                    "image shipped with scikit-image (e.g. skimage:chelsea).")
flags.DEFINE_multi_string("style", None, "Style painting (file or skimage:NAME). Repeat the flag to blend "
                          "several styles.")
flags.DEFINE_string("output", None, "Output image path (.png, .jpg, ...).")
flags.DEFINE_string("workdir", None, "Run folder (created if missing): checkpoints, snapshots, metrics.jsonl, "
                    "config.json, final.png, progress.png, losses.png. Running the same command again "
                    "resumes from its latest checkpoint; --output is then optional.")
flags.DEFINE_boolean("overwrite", False, "Replace an existing output file; with --workdir, also discard a "
                     "previous run there whose settings differ (changing only --steps extends it instead).")
flags.DEFINE_integer("checkpoint_every", run_lib.DEFAULT_CHECKPOINT_EVERY,
                     "With --workdir: save a checkpoint every N steps (and at the end); 0 = only at the end.")
flags.DEFINE_integer("keep_checkpoints", run_lib.DEFAULT_KEEP_CHECKPOINTS,
                     "With --workdir: how many recent checkpoints to keep.")
flags.DEFINE_boolean("async_checkpoints", False,
                     "With --workdir: keep optimising while a checkpoint is written (faster when steps are "
                     "very short, e.g. on a GPU; a kill -9 may then lose the steps of one write as well).")
flags.DEFINE_integer("snapshot_every", run_lib.DEFAULT_SNAPSHOT_EVERY,
                     "With --workdir: save snapshots/step_NNNNNN.png every N steps; 0 = start and end only.")
flags.DEFINE_integer("max_size", _DEFAULTS.max_size, "Output size: longest side in pixels (16-8192).")
flags.DEFINE_integer("steps", _DEFAULTS.steps, "Optimisation steps.")
flags.DEFINE_integer("epochs", None, "Report-style budget: steps = epochs * steps_per_epoch.")
flags.DEFINE_integer("steps_per_epoch", None, "Steps per epoch (with --epochs).")
flags.DEFINE_enum("optimizer", _DEFAULTS.optimizer, optimize.OPTIMIZERS, "Optimizer.")
flags.DEFINE_float("lr", None, "Learning rate (default per optimizer: " +
                   ", ".join(f"{k} {v:g}" for k, v in optimize.DEFAULT_LR.items()) + ").")
flags.DEFINE_float("content_weight", _DEFAULTS.content_weight, "alpha: weight of the content loss.")
flags.DEFINE_float("style_weight", _DEFAULTS.style_weight, "beta: weight of the style loss.")
flags.DEFINE_float("tv_weight", _DEFAULTS.tv_weight, "theta: weight of the total-variation loss.")
flags.DEFINE_enum("tv_kind", _DEFAULTS.tv_kind, ("l2", "l1"), "Total variation: l2 (squared) or l1.")
flags.DEFINE_list("content_layers", list(_DEFAULTS.content_layers), "VGG19 layers for the content loss.")
flags.DEFINE_list("style_layers", list(_DEFAULTS.style_layers), "VGG19 layers for the style loss.")
flags.DEFINE_list("style_layer_weights", None, "Weight per style layer (default equal, 1/L).")
flags.DEFINE_enum("init", _DEFAULTS.init, optimize.INIT_KINDS, "Starting image.")
flags.DEFINE_integer("seed", _DEFAULTS.seed, "Random seed (noise init).")
flags.DEFINE_string("weights", None, "VGG19 weights: a Keras .h5, torchvision .pth or nst-jax .npz file, or "
                    "'random' (offline smoke runs, not artistic). Default: cached Keras weights, downloaded "
                    "once into $NST_JAX_HOME or ~/.cache/nst_jax.")
flags.DEFINE_enum("pooling", _DEFAULTS.pooling, ("max", "avg"), "VGG pooling.")
flags.DEFINE_integer("log_every", _DEFAULTS.log_every, "Log losses every N steps.")
flags.DEFINE_boolean("progress", True, "Show a progress bar.")
flags.DEFINE_enum("preset", None, list(presets.PRESETS), "Named content/style balance "
                  "(nst_jax/configs/presets.py); explicit weight flags override it.")
flags.DEFINE_boolean("compilation_cache", True, "Keep compiled programs in the cache dir between runs.")


def _floats(values, name):
  try:
    return tuple(float(v) for v in values)
  except ValueError:
    raise NstJaxError(f"--{name} must be a list of numbers, got {','.join(values)}") from None


def config_from_flags():
  """The default config overridden by the command-line flags (validated)."""
  config = default.get_config()
  for name in ("max_size", "steps", "optimizer", "lr", "content_weight", "style_weight", "tv_weight",
               "tv_kind", "init", "seed", "pooling", "log_every"):
    config[name] = FLAGS[name].value
  if FLAGS.preset:
    explicit = [name for name in config.keys() if name in FLAGS and FLAGS[name].present]
    presets.apply_preset(config, FLAGS.preset, keep=explicit)
  config.content_layers = tuple(FLAGS.content_layers)
  config.style_layers = tuple(FLAGS.style_layers)
  if FLAGS.style_layer_weights:
    config.style_layer_weights = _floats(FLAGS.style_layer_weights, "style_layer_weights")
  if (FLAGS.epochs is None) != (FLAGS.steps_per_epoch is None):
    raise NstJaxError("--epochs and --steps_per_epoch go together")
  if FLAGS.epochs is not None:
    if FLAGS.epochs < 0 or FLAGS.steps_per_epoch < 0:
      raise NstJaxError("--epochs and --steps_per_epoch must be >= 0")
    config.steps = FLAGS.epochs * FLAGS.steps_per_epoch
  if config.log_every < 1:
    raise NstJaxError(f"--log_every must be >= 1, got {config.log_every}")
  optimize.validate_config(config)
  return config


def metrics_path(output: str, workdir: str | None) -> str:
  if workdir:
    return os.path.join(workdir, "metrics.jsonl")
  return os.path.splitext(output)[0] + ".metrics.jsonl"


def main(argv):
  if len(argv) > 1:
    raise NstJaxError(f"unexpected arguments: {' '.join(argv[1:])} (flags look like --content=photo.jpg)")
  for name in ("content", "style", "output"):
    if not FLAGS[name].value and not (name == "output" and FLAGS.workdir):
      raise NstJaxError(f"--{name} is required (see --help)")
  config = config_from_flags()
  if FLAGS.workdir:
    return main_workdir(config)
  image_io.check_writable(FLAGS.output, overwrite=FLAGS.overwrite)
  if FLAGS.workdir:
    os.makedirs(FLAGS.workdir, exist_ok=True)
  content = image_io.load_image(FLAGS.content, config.max_size)
  styles = [image_io.load_image(path, config.max_size) for path in FLAGS.style]
  common.enable_compilation_cache(FLAGS.compilation_cache)
  weights = weights_lib.load_vgg19(FLAGS.weights)
  if weights.sha256 == "":
    print("warning: random VGG19 weights: the pipeline runs, but the result is not artistic")

  stylizer = optimize.Stylizer(config)
  targets = optimize.targets_from_config(weights, config, content, styles)
  state = stylizer.init_state(optimize.init_image(config.init, content, styles[0], seed=config.seed))
  log = common.MetricsLog(metrics_path(FLAGS.output, FLAGS.workdir))
  progress, bar = common.progress_callback(config.steps, disable=not FLAGS.progress)

  def write_metrics(step, state, metrics):
    if metrics is not None:
      log.write({"step": step, **{k: metrics[k] for k in ("total", "content", "style", "tv", "seconds")}})

  start = time.perf_counter()
  try:
    state = stylizer.run(state, targets, weights, config.steps, callbacks=[progress, write_metrics])
  finally:
    bar.close()
    log.close()
  image_io.save_image(FLAGS.output, state.image)
  print(f"wrote {FLAGS.output} ({content.shape[1]}x{content.shape[0]}, {config.steps} steps, "
        f"{time.perf_counter() - start:.1f} s)")


def _recorded_output(workdir: str) -> str | None:
  """The --output of the run already in `workdir` (which a resumed run may replace), if any."""
  path = os.path.join(workdir, rundir.CONFIG)
  if not os.path.exists(path):
    return None
  output = rundir.read_json(path).get("inputs", {}).get("output")
  return os.path.abspath(output) if output else None


def main_workdir(config):
  """The resumable run in --workdir (nst_jax.run.run_in_workdir)."""
  if FLAGS.checkpoint_every < 0 or FLAGS.snapshot_every < 0 or FLAGS.keep_checkpoints < 1:
    raise NstJaxError("--checkpoint_every and --snapshot_every must be >= 0 and --keep_checkpoints >= 1")
  output = os.path.abspath(FLAGS.output) if FLAGS.output else None
  if output:
    image_io.check_writable(output, overwrite=FLAGS.overwrite or output == _recorded_output(FLAGS.workdir))
  content = image_io.load_image(FLAGS.content, config.max_size)
  styles = [image_io.load_image(path, config.max_size) for path in FLAGS.style]
  common.enable_compilation_cache(FLAGS.compilation_cache)
  weights = weights_lib.load_vgg19(FLAGS.weights)
  if weights.sha256 == "":
    print("warning: random VGG19 weights: the pipeline runs, but the result is not artistic")
  inputs = {"content": os.path.abspath(FLAGS.content), "styles": [os.path.abspath(p) for p in FLAGS.style],
            "output": output, "weights_flag": FLAGS.weights}
  bar = None

  def on_start(start):  # The progress bar starts at the restored step.
    nonlocal bar
    progress, bar = common.progress_callback(config.steps, start, disable=not FLAGS.progress)
    return [progress]

  begin = time.perf_counter()
  try:
    image = run_lib.run_in_workdir(
        config, FLAGS.workdir, content, styles, weights, inputs=inputs, checkpoint_every=FLAGS.checkpoint_every,
        keep_checkpoints=FLAGS.keep_checkpoints, snapshot_every=FLAGS.snapshot_every, overwrite=FLAGS.overwrite,
        async_save=FLAGS.async_checkpoints, on_start=on_start, log=lambda line: print(line, file=sys.stderr))
  except run_lib.RunInterrupted as e:
    print(str(e), file=sys.stderr)
    sys.exit(e.exit_code)
  finally:
    if bar is not None:
      bar.close()
  if output:
    image_io.save_image(output, image)
  print(f"wrote {output or os.path.join(FLAGS.workdir, rundir.FINAL)} and the run files in {FLAGS.workdir} "
        f"({content.shape[1]}x{content.shape[0]}, {config.steps} steps, {time.perf_counter() - begin:.1f} s)")


def run(argv=None):
  common.run(main, argv)


if __name__ == "__main__":
  run()
