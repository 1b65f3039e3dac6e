"""Stylise a content photo with a style painting (Gatys et al. 2016).

    nst-jax --content photo.jpg --style painting.jpg --output out.png

Writes the output image (atomically; an existing file is replaced only with --overwrite) and a metrics
log of the losses (`<output stem>.metrics.jsonl` beside it, or `metrics.jsonl` in --workdir).

With --workdir the run is resumable (see docs/long-runs.md): checkpoints, snapshots, config.json,
metrics.jsonl, final.png, progress.png and losses.png go into the folder; the same command run again
continues from the latest checkpoint; Ctrl-C, SIGTERM, SIGHUP or a closed stdout/stderr pipe save a checkpoint
and exit 130, 143, 129 or 141 (docs/long-runs.md). Without --workdir they stop the run and write nothing.

    nst-jax --content photo.jpg --style painting.jpg --workdir runs/cat --steps 10000
"""

from __future__ import annotations

import os
import sys
import time

from absl import flags

from nst_jax import alpha, cost, engine, hooks, image_io, inputs, rundir, run as run_lib, settings, tiles
from nst_jax import weights as weights_lib
from nst_jax.commands import common
from nst_jax.configs import default
from nst_jax.errors import NstJaxError

_DEFAULTS = default.get_config()
FLAGS = flags.FLAGS
flags.DEFINE_string("content", None, "Content photo (any format Pillow reads), or skimage:NAME for an example "
                    "image shipped with scikit-image (e.g. skimage:chelsea).")
flags.DEFINE_multi_string("style", None, "Style painting (file or skimage:NAME). Repeat the flag to blend "
                          "several styles.")
flags.DEFINE_multi_string("style_region", None, "Spatial control: a greyscale mask per --style (same order), "
                          "white = where that painting applies, of the photo's aspect ratio; pixels no region "
                          "covers keep the photo (docs/spatial-control.md).")
flags.DEFINE_multi_string("style_region_source", None, "Spatial control: a mask per --style (same order, of "
                          "that painting's aspect ratio): which part of the painting to take its style from.")
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
flags.DEFINE_string("weights", None, "VGG19 weights: a Keras .h5, torchvision .pth or nst-jax .npz file, or "
                    "'random' (offline smoke runs, not artistic). Default: cached Keras weights, downloaded "
                    "once into $NST_JAX_HOME or ~/.cache/nst_jax.")
flags.DEFINE_boolean("dry_run", False, "Measure the cost of the job as configured and exit without writing "
                     "anything: compiles the step at the output size and at half of it (XLA's peak memory, the "
                     "largest max_size that fits the free memory) and times a few steps (the time per step and "
                     "for the run); takes about 10 s at 128 px to 1-2 min at 512 px on 2 CPU cores. Every run "
                     "prints a quick estimate without it (docs/tiles-and-cost.md).")
flags.DEFINE_boolean("force", False, "Run even when the estimated peak memory exceeds the free memory.")
flags.DEFINE_boolean("progress", True, "Show a progress bar.")
flags.DEFINE_boolean("compilation_cache", True, "Keep compiled programs in the cache dir between runs.")


def _flag_help(setting: settings.Setting) -> str:
  choices = f" ({' | '.join(setting.choices)})" if setting.choices else ""
  value = _DEFAULTS[setting.name]
  shown = "(empty)" if value is None else ",".join(map(str, value)) if isinstance(value, tuple) else value
  return f"{setting.help[0].upper()}{setting.help[1:]}{choices}. Default: {shown}."


def define_setting_flags(scope: str = "all") -> None:
  """One flag per setting of `nst_jax.settings` (the same name everywhere) of `scope` ("all": the picture
  settings, plus the shorthands; "video": the video-only ones, which `nst-jax video` adds)."""
  define = {"int": flags.DEFINE_integer, "float": flags.DEFINE_float, "str": flags.DEFINE_string,
            "bool": flags.DEFINE_boolean, "floats": flags.DEFINE_list, "names": flags.DEFINE_list}
  for setting in settings.SETTINGS:
    if setting.scope == scope:
      define[setting.kind](setting.name, None, _flag_help(setting))
  if scope != "all":
    return
  flags.DEFINE_string("preset", None, settings.SHORTHANDS["preset"] + " (docs/settings.md).")
  flags.DEFINE_list("scales", None, settings.SHORTHANDS["scales"] + " (e.g. 128,1.414,40).")
  flags.DEFINE_integer("epochs", None, settings.SHORTHANDS["epochs"] + ".")
  flags.DEFINE_integer("steps_per_epoch", None, settings.SHORTHANDS["steps_per_epoch"] + ".")


define_setting_flags()


def settings_from_flags() -> dict:
  """The settings and shorthands given on the command line (the others keep their defaults or preset)."""
  return {name: FLAGS[name].value for name in settings.NAMES + tuple(settings.SHORTHANDS)
          if name in FLAGS and FLAGS[name].present}


def config_from_flags(machine: dict | None = None):
  """`settings.resolve` of the command line (blend weights checked against the --style count, if any);
  `machine`: the machine-sized defaults to use instead of this machine's (a resumed --workdir run's)."""
  return settings.resolve(settings_from_flags(), num_styles=len(FLAGS.style) if FLAGS.style else None,
                          machine=machine)


def print_machine_note(config) -> None:
  """`note: no accelerator: max_size 256, steps 100 (...)` on stderr when this machine's defaults sized the run."""
  note = settings.machine_note(settings_from_flags(), config)
  if note:
    print(f"note: {note}", file=sys.stderr)


def metrics_path(output: str) -> str:
  """Where a run without --workdir logs its losses: `<output stem>.metrics.jsonl`."""
  return os.path.splitext(output)[0] + ".metrics.jsonl"


def load_weights():
  common.enable_compilation_cache(FLAGS.compilation_cache)
  weights = weights_lib.load_vgg19(FLAGS.weights)
  if weights.sha256 == "":
    print("warning: random VGG19 weights: the pipeline runs, but the result is not artistic", file=sys.stderr)
  return weights


def load_job_and_weights(config, **kwargs) -> tuple[engine.Job, object]:
  """The job of --content and --style and the VGG19 weights; then prints the job's notes (an upscaled
  photo, a schedule that is off), so that a bad input or missing weights are one `error:` line alone."""
  job, notes = inputs.load_job(FLAGS.content, FLAGS.style, config, style_regions=FLAGS.style_region,
                               style_region_sources=FLAGS.style_region_source, **kwargs)
  if alpha.has_alpha(job.content) and FLAGS.output and not FLAGS.dry_run:
    image_io.check_alpha_output(FLAGS.output)  # Before any work: the output must keep the photo's alpha.
  weights = load_weights()
  for note in notes + engine.plan_notes(config, job.content.shape):
    print(f"note: {note}", file=sys.stderr)
  return job, weights


def main(argv):
  if len(argv) > 1:
    raise NstJaxError(f"unexpected arguments: {' '.join(argv[1:])} (flags look like --content=photo.jpg; "
                      f"commands: nst-jax help)")
  for name in ("content", "style", "output"):
    if not FLAGS[name].value and not (name == "output" and (FLAGS.workdir or FLAGS.dry_run)):
      raise NstJaxError(f"--{name} is required (see --help)")
  config = config_from_flags()
  if FLAGS.dry_run:
    return dry_run(config)
  if FLAGS.workdir:
    return main_workdir(config)
  image_io.check_writable(FLAGS.output, overwrite=FLAGS.overwrite)
  job, weights = load_job_and_weights(config, name=FLAGS.output)
  print_machine_note(config)
  eng = engine.Engine(weights)
  cost.preflight(eng, [job], force=FLAGS.force, log=lambda line: print(line, file=sys.stderr))
  progress = hooks.ProgressBar(disable=not FLAGS.progress)
  log = hooks.MetricsLog(lambda run: metrics_path(FLAGS.output))
  start = time.perf_counter()
  with hooks.StopOnSignals() as stop, hooks.closing_all(progress):
    (result,) = eng.run([job], hooks=[log, progress, stop, cost.StepTimes()])
  if result.status == "stopped":
    common.stop_exit(f"interrupted by {hooks.stop_cause(stop.caught[0])} at step {result.step} of "
                     f"{result.total_steps}: {FLAGS.output} not written (use --workdir for a run that can resume)",
                     128 + stop.caught[0])
  image_io.save_image(FLAGS.output, result.image)
  tiles.write_preview(FLAGS.output, result.image, int(config.tile_preview))
  if len(result.stages) > 1:
    for s in result.stages:
      print(f"  scale {s['stage'] + 1}/{len(result.stages)} {s['width']}x{s['height']}: {s['steps']} steps, "
            f"{s['seconds']:.1f} s, loss {s['total']:.4g}" + (" (remat)" if s["remat"] else ""))
  print(f"wrote {FLAGS.output} ({job.content.shape[1]}x{job.content.shape[0]}, {result.total_steps} steps, "
        f"{time.perf_counter() - start:.1f} s)")


def dry_run(config) -> None:
  """--dry_run: the job's cost on stdout, compiled and timed (`nst_jax.cost.measure`); nothing is written."""
  job, weights = load_job_and_weights(config, name="")
  print_machine_note(config)
  (estimate,) = cost.preflight(engine.Engine(weights), [job], force=True, log=print, timed=True)
  if not estimate.fits:
    fit = estimate.max_size()
    print(f"dry run: does not fit the free memory; {f'--max_size {fit} would' if fit else 'no size would'}")
  else:
    print("dry run: fits the free memory")


def _recorded_output(workdir: str) -> str | None:
  """The --output of the run already in `workdir` (which a resumed run may replace), if any."""
  path = os.path.join(workdir, rundir.CONFIG)
  if not os.path.exists(path):
    return None
  output = rundir.read_json(path).get("inputs", {}).get("output")
  return os.path.abspath(output) if output else None


def _recorded_machine_defaults(workdir: str) -> dict | None:
  """The machine-sized settings (`settings.MACHINE_DEFAULTS`) the run already in `workdir` used, if any: a
  resume resolves them the same way, on this machine or another."""
  path = os.path.join(workdir, rundir.CONFIG)
  if not os.path.exists(path):
    return None
  recorded = rundir.read_json(path).get("config", {})
  names = {name for sized in settings.MACHINE_DEFAULTS.values() for name in sized}
  return {name: recorded[name] for name in names if name in recorded} or None


def main_workdir(config):
  """The resumable run in --workdir (nst_jax.run.run_in_workdir): every setting applies."""
  if FLAGS.checkpoint_every < 0 or FLAGS.snapshot_every < 0 or FLAGS.keep_checkpoints < 1:
    raise NstJaxError("--checkpoint_every and --snapshot_every must be >= 0 and --keep_checkpoints >= 1")
  recorded = None if FLAGS.overwrite else _recorded_machine_defaults(FLAGS.workdir)
  if recorded is not None:
    config = config_from_flags(machine=recorded)
  output = os.path.abspath(FLAGS.output) if FLAGS.output else None
  if output:
    image_io.check_writable(output, overwrite=FLAGS.overwrite or output == _recorded_output(FLAGS.workdir))
  job, weights = load_job_and_weights(config, name=FLAGS.workdir)
  if recorded is None:
    print_machine_note(config)
  described = {"content": os.path.abspath(FLAGS.content), "styles": [os.path.abspath(p) for p in FLAGS.style],
               "output": output, "weights_flag": FLAGS.weights}
  for name in ("style_region", "style_region_source"):
    if FLAGS[name].value:
      described[name] = [os.path.abspath(p) for p in FLAGS[name].value]
  progress = hooks.ProgressBar(disable=not FLAGS.progress)
  begin = time.perf_counter()
  try:
    with hooks.closing_all(progress):
      image = run_lib.run_in_workdir(
          job, FLAGS.workdir, weights, inputs=described, checkpoint_every=FLAGS.checkpoint_every,
          keep_checkpoints=FLAGS.keep_checkpoints, snapshot_every=FLAGS.snapshot_every,
          overwrite=FLAGS.overwrite, async_save=FLAGS.async_checkpoints, hooks=[progress, cost.StepTimes()],
          log=lambda line: print(line, file=sys.stderr), estimate_cost=True, force=FLAGS.force)
  except run_lib.RunInterrupted as e:
    common.stop_exit(str(e), e.exit_code)
  if output:
    image_io.save_image(output, image)
    tiles.write_preview(output, image, int(config.tile_preview))
  print(f"wrote {output or os.path.join(FLAGS.workdir, rundir.FINAL)} and the run files in {FLAGS.workdir} "
        f"({job.content.shape[1]}x{job.content.shape[0]}, {config.steps} steps, {time.perf_counter() - begin:.1f} s)")


def run(argv=None):
  common.run(main, argv)


if __name__ == "__main__":
  run()
