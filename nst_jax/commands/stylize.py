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

from nst_jax import color, image_io, multiscale, optimize, rundir, run as run_lib, weights as weights_lib
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
flags.DEFINE_enum("init", _DEFAULTS.init, optimize.INIT_KINDS,
                  "Starting image: the photo (content), the photo recoloured to the style's colour mean and "
                  "covariance (recolored_content: fewer L-BFGS iterations), uniform noise, the style image, or "
                  "noise with the style's colour statistics (style_stats).")
flags.DEFINE_integer("seed", _DEFAULTS.seed, "Random seed (noise init).")
flags.DEFINE_string("weights", None, "VGG19 weights: a Keras .h5, torchvision .pth or nst-jax .npz file, or "
                    "'random' (offline smoke runs, not artistic). Default: cached Keras weights, downloaded "
                    "once into $NST_JAX_HOME or ~/.cache/nst_jax.")
flags.DEFINE_enum("pooling", _DEFAULTS.pooling, ("max", "avg"), "VGG pooling.")
flags.DEFINE_integer("log_every", _DEFAULTS.log_every, "Log losses every N steps.")
flags.DEFINE_boolean("progress", True, "Show a progress bar.")
flags.DEFINE_boolean("compilation_cache", True, "Keep compiled programs in the cache dir between runs.")
flags.DEFINE_enum("preset", None, presets.ALL_PRESETS, "Named settings (nst_jax/configs/presets.py): "
                  "the looks faithful | balanced | painterly (content/style balance), or quality "
                  "(preconditioned L-BFGS from the recoloured photo, docs/quality-and-speed.md). Flags given "
                  "explicitly override it.")
flags.DEFINE_list("scales", None, "Coarse-to-fine schedule in one flag, START,FACTOR,STEPS: e.g. 128,1.414,40 "
                  "= sizes 128, 181, 256, ... up to --max_size, 40 steps on each coarser scale (the same as "
                  "--scale_start 128 --scale_factor 1.414 --scale_steps 40).")
flags.DEFINE_integer("scale_start", _DEFAULTS.scale_start, "Coarse-to-fine: first scale's longest side in "
                     "pixels (0 = one scale at --max_size).")
flags.DEFINE_float("scale_factor", _DEFAULTS.scale_factor, "Coarse-to-fine: size ratio between scales (> 1).")
flags.DEFINE_integer("scale_steps", _DEFAULTS.scale_steps, "Coarse-to-fine: steps at each coarser scale "
                     "(the final scale runs --steps).")
flags.DEFINE_enum("preserve_colors", _DEFAULTS.preserve_colors, color.PRESERVE_COLORS,
                  "Keep the photo's colours: 'luminance' (style on luminance only, chroma from the photo) or "
                  "'histogram' (style image's colours matched to the photo's mean and covariance).")
flags.DEFINE_list("style_blend_weights", None, "Weight per --style image (default equal; normalised).")
flags.DEFINE_float("style_scale", _DEFAULTS.style_scale, "Style image longest side relative to the output's "
                   "(1 = same; larger values give larger brush strokes).")
flags.DEFINE_boolean("remat", _DEFAULTS.remat, "Recompute VGG block activations in the backward pass "
                     "(jax.checkpoint; meant to save memory, but on XLA:CPU it did not: see "
                     "docs/quality-and-speed.md).")
flags.DEFINE_integer("remat_above_pixels", _DEFAULTS.remat_above_pixels, "Turn on --remat for scales with "
                     "more pixels than this (0 = never).")
flags.DEFINE_integer("lbfgs_memory", _DEFAULTS.lbfgs_memory, "L-BFGS history size.")
flags.DEFINE_integer("lbfgs_linesearch_steps", _DEFAULTS.lbfgs_linesearch_steps,
                     "L-BFGS: most function evaluations per line search.")
flags.DEFINE_float("lbfgs_precondition", _DEFAULTS.lbfgs_precondition, "L-BFGS: damp spatial frequency f "
                   "by |f|^-p in the initial inverse Hessian (0 = stock L-BFGS; the quality preset uses 0.3).")
FEATURE_FLAGS = ("scale_start", "scale_factor", "scale_steps", "preserve_colors", "style_scale", "remat",
                 "remat_above_pixels", "lbfgs_memory", "lbfgs_linesearch_steps", "lbfgs_precondition")


def _floats(values, name):
  try:
    return tuple(float(v) for v in values)
  except ValueError:
    raise NstJaxError(f"--{name} must be a list of numbers, got {','.join(values)}") from None


def _schedule_from_scales_flag(values) -> dict:
  """`--scales START,FACTOR,STEPS` -> the config fields `scale_start`, `scale_factor`, `scale_steps`."""
  message = f"--scales takes START,FACTOR,STEPS (e.g. 128,1.414,40), got {','.join(values)}"
  if len(values) != 3:
    raise NstJaxError(message)
  try:
    start, factor, steps = int(values[0]), float(values[1]), int(values[2])
  except ValueError:
    raise NstJaxError(message) from None
  if start < 0 or steps < 0 or not factor > 1.0:
    raise NstJaxError(f"{message}: START and STEPS must be >= 0 and FACTOR > 1")
  return {"scale_start": start, "scale_factor": factor, "scale_steps": steps}


def config_from_flags():
  """The default config overridden by the command-line flags (validated)."""
  config = default.get_config()
  for name in ("max_size", "steps", "optimizer", "lr", "content_weight", "style_weight", "tv_weight",
               "tv_kind", "init", "seed", "pooling", "log_every"):
    config[name] = FLAGS[name].value
  config.content_layers = tuple(FLAGS.content_layers)
  config.style_layers = tuple(FLAGS.style_layers)
  if FLAGS.style_layer_weights:
    config.style_layer_weights = _floats(FLAGS.style_layer_weights, "style_layer_weights")
  for name in FEATURE_FLAGS:
    config[name] = FLAGS[name].value
  if FLAGS.style_blend_weights:
    config.style_blend_weights = _floats(FLAGS.style_blend_weights, "style_blend_weights")
  explicit = [name for name in config.keys() if name in FLAGS and FLAGS[name].present]
  if FLAGS.scales:
    config.update(_schedule_from_scales_flag(FLAGS.scales))
    if {"scale_start", "scale_factor", "scale_steps"} & set(explicit):
      raise NstJaxError("give either --scales or --scale_start/--scale_factor/--scale_steps, not both")
    explicit += ["scale_start", "scale_factor", "scale_steps"]
  if FLAGS.preset:
    presets.apply_preset(config, FLAGS.preset, keep=explicit)
  if (FLAGS.epochs is None) != (FLAGS.steps_per_epoch is None):
    raise NstJaxError("--epochs and --steps_per_epoch go together")
  if FLAGS.epochs is not None:
    if FLAGS.epochs < 0 or FLAGS.steps_per_epoch < 0:
      raise NstJaxError("--epochs and --steps_per_epoch must be >= 0")
    config.steps = FLAGS.epochs * FLAGS.steps_per_epoch
  if config.log_every < 1:
    raise NstJaxError(f"--log_every must be >= 1, got {config.log_every}")
  optimize.validate_config(config)
  multiscale.validate(config, len(FLAGS.style or ()))
  if config.style_scale * config.max_size > image_io.MAX_SIZE:
    raise NstJaxError(f"--style_scale {config.style_scale:g} x --max_size {config.max_size} is over the "
                      f"{image_io.MAX_SIZE} px limit for the style image")
  return config


def metrics_path(output: str) -> str:
  """Where a run without --workdir logs its losses: `<output stem>.metrics.jsonl`."""
  return os.path.splitext(output)[0] + ".metrics.jsonl"


def load_inputs(config):
  """Content (at --max_size), styles (at --style_scale x --max_size) and the VGG19 weights."""
  content = image_io.load_image(FLAGS.content, config.max_size)
  style_size = max(image_io.MIN_SIZE, round(config.style_scale * config.max_size))
  styles = [image_io.load_image(path, style_size) for path in FLAGS.style]
  common.enable_compilation_cache(FLAGS.compilation_cache)
  weights = weights_lib.load_vgg19(FLAGS.weights)
  if weights.sha256 == "":
    print("warning: random VGG19 weights: the pipeline runs, but the result is not artistic")
  return content, styles, weights


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
  content, styles, weights = load_inputs(config)
  log = common.MetricsLog(metrics_path(FLAGS.output))
  bars = []

  def callbacks_for(scale):
    if bars:
      bars[-1].close()
    desc = "stylizing"
    if scale.count > 1:
      desc = f"scale {scale.index + 1}/{scale.count} {scale.shape[1]}x{scale.shape[0]}"
    progress, bar = common.progress_callback(scale.steps, desc=desc, disable=not FLAGS.progress)
    bars.append(bar)
    extra = {}
    if scale.count > 1:
      extra = {"scale": scale.index, "height": scale.shape[0], "width": scale.shape[1]}

    def write_metrics(step, state, metrics):
      if metrics is not None:
        log.write({"step": step, **extra,
                   **{k: metrics[k] for k in ("total", "content", "style", "tv", "seconds")}})

    return [progress, write_metrics]

  start = time.perf_counter()
  try:
    image, per_scale = multiscale.run(content, styles, config, weights, callbacks_for=callbacks_for)
  finally:
    for bar in bars:
      bar.close()
    log.close()
  image_io.save_image(FLAGS.output, image)
  if len(per_scale) > 1:
    for s in per_scale:
      print(f"  scale {s['scale'] + 1}/{len(per_scale)} {s['width']}x{s['height']}: {s['steps']} steps, "
            f"{s['seconds']:.1f} s, loss {s['total']:.4g}" + (" (remat)" if s["remat"] else ""))
  steps = sum(s["steps"] for s in per_scale)
  print(f"wrote {FLAGS.output} ({content.shape[1]}x{content.shape[0]}, {steps} steps, "
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
  if config.scale_start or config.preserve_colors != "none" or len(FLAGS.style) > 1:
    raise NstJaxError("--workdir (resumable runs) supports one style at one scale without colour preservation "
                      "for now; drop --workdir, or --scale_start/--preserve_colors/the extra --style")
  output = os.path.abspath(FLAGS.output) if FLAGS.output else None
  if output:
    image_io.check_writable(output, overwrite=FLAGS.overwrite or output == _recorded_output(FLAGS.workdir))
  content, styles, weights = load_inputs(config)
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
