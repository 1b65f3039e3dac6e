"""Stylise every row of a manifest CSV on the run engine, batched by bucket and sharded over all devices.

    nst-jax batch --manifest pairs.csv --weights random --max_size 256 --steps 300

The manifest has columns content, style, output and any setting by its name (docs/settings.md); every
`nst-jax` setting flag (--steps, --preset, --preserve_colors, --scales, --style_blend_weights, ...) is the
default for rows that leave a cell empty, and is checked per row against that row's paintings.

Each output gets its losses beside it in `<output stem>.metrics.jsonl`, as with `nst-jax`. Rows whose
output exists are skipped (unless --overwrite). Each row checkpoints every --checkpoint_every steps into
--workdir (default: `.<manifest stem>.nst-jax/` beside the manifest), so running the same command again
resumes an interrupted row from its last checkpoint; Ctrl-C, SIGTERM, SIGHUP or a closed stdout/stderr pipe
stop every row with its checkpoint saved (exit 130, 143, 129, 141). A bad row is reported by its number and
skipped, the others still run, and the exit status is 1 if any row failed. See docs/batching.md.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

import jax
from absl import flags

from nst_jax import batch, cost, engine, hooks, manifest, settings
from nst_jax.commands import common
from nst_jax.commands import stylize  # Defines the setting flags every row starts from.
from nst_jax.errors import NstJaxError

FLAGS = flags.FLAGS
flags.DEFINE_string("manifest", None, "CSV with columns content,style,output and any setting name "
                    "(docs/settings.md).")
flags.DEFINE_integer("batch_size", None, "Most pictures per compiled batch (default: a whole bucket). "
                     "Rounded up to a multiple of the device count.")
flags.DEFINE_string("coordinator_address", None, "Multi-host: host:port of process 0 "
                    "(jax.distributed.initialize); 'auto' on TPU pods / SLURM.")
flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-host: this process's index (0 writes the outputs).")
flags.DEFINE_boolean("shard", True, "Shard the batch over all devices (a Mesh with axis 'batch').")


def summary_table(rows: list[manifest.Row]) -> str:
  """A fixed-width table: row, status, size, steps, final loss, seconds, output or error."""
  lines = [f"{'row':>4}  {'status':<7}  {'size':>9}  {'steps':>5}  {'loss':>10}  {'sec':>6}  output / error"]
  for row in rows:
    size = steps = loss = sec = ""
    if row.job is not None:
      size = "x".join(map(str, row.job.content.shape[1::-1]))
    result = row.result
    if row.error is not None:
      status = "FAILED"
    elif row.skipped:
      status = "exists"
    elif result is None:
      status = "-"
    else:
      status = "done" if result.status == "done" else "stopped"
      steps = str(result.total_steps) if result.status == "done" else f"{result.step}/{result.total_steps}"
      loss = f"{result.metrics['total']:.4g}" if "total" in result.metrics else ""
      sec = f"{result.seconds:.1f}"
    detail = row.output if row.error is None else f"{row.output or '-'}: {row.error}"
    lines.append(f"{row.number:>4}  {status:<7}  {size:>9}  {steps:>5}  {loss:>10}  {sec:>6}  {detail}")
  return "\n".join(lines)


def _check_flags() -> dict:
  """The command line's settings; a bad value fails here once (style counts are checked per row)."""
  for name in ("content", "style", "output"):
    if FLAGS[name].present:
      raise NstJaxError(f"--{name} does not apply to batch jobs: put it in the manifest")
  if FLAGS.batch_size is not None and FLAGS.batch_size < 1:
    raise NstJaxError(f"--batch_size must be >= 1, got {FLAGS.batch_size}")
  if FLAGS.checkpoint_every < 0 or FLAGS.keep_checkpoints < 1:
    raise NstJaxError("--checkpoint_every must be >= 0 and --keep_checkpoints >= 1")
  flag_settings = stylize.settings_from_flags()
  settings.resolve(flag_settings, machine={})  # Validation only: the backend starts after init_distributed.
  return flag_settings


def _report_rows(rows: list[manifest.Row]) -> None:
  for row in rows:
    for note in row.notes:
      print(f"row {row.number}: note: {note}", file=sys.stderr)
    if row.error is not None:
      print(f"row {row.number}: {row.error} (skipped)", file=sys.stderr)


def _run(rows: list[manifest.Row], writer: bool) -> list[int]:
  """Runs the loaded rows on the engine; returns the signals that stopped them (empty if none)."""
  todo = [row for row in rows if row.job is not None]
  weights = stylize.load_weights()
  mesh = batch.make_mesh() if FLAGS.shard else None
  policy = engine.CheckpointPolicy(every_steps=FLAGS.checkpoint_every, keep=FLAGS.keep_checkpoints,
                                   async_save=FLAGS.async_checkpoints)
  runner = engine.Engine(weights, mesh=mesh, max_batch=FLAGS.batch_size, checkpoints=policy)
  buckets = len({runner.job_bucket_key(row.job) for row in todo})
  print(f"{len(todo)} picture(s) in {buckets} bucket(s) on {runner.num_devices} device(s)")
  jobs = list({id(row.job): row.job for row in todo}.values())
  estimates = cost.preflight(runner, jobs, force=FLAGS.force or FLAGS.dry_run, timed=FLAGS.dry_run,
                             log=lambda line: print(line, file=sys.stdout if FLAGS.dry_run else sys.stderr))
  if FLAGS.dry_run:
    print(f"dry run: {sum(e.fits for e in estimates)} of {len(estimates)} batch shape(s) fit the free memory")
    return []
  folder = manifest.run_folder(FLAGS.manifest, FLAGS.workdir)
  progress = hooks.ProgressBar(desc="batch", disable=not FLAGS.progress or not writer)
  # Each row's losses beside its output, as the picture command writes them (rows may share one job).
  metrics = hooks.MetricsLog(lambda run: [stylize.metrics_path(row.output) for row in todo if row.job is run.job]
                             if writer else None)
  start = time.perf_counter()
  with hooks.StopOnSignals() as stop, hooks.closing_all(progress):
    manifest.run_rows(rows, runner, folder=folder, hooks=[metrics, progress, stop, cost.StepTimes()], write=writer,
                      log=lambda line: print(line, file=sys.stderr))
  done = sum(row.result is not None and row.result.status == "done" and row.error is None for row in todo)
  print(f"{done} picture(s) in {time.perf_counter() - start:.1f} s")
  if not FLAGS.workdir and writer:
    with contextlib.suppress(OSError):
      os.rmdir(folder)  # The hidden run folder goes once no row has checkpoints left.
  return stop.caught


def main(argv):
  if len(argv) > 1:
    raise NstJaxError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS.manifest:
    raise NstJaxError("--manifest is required (see --help)")
  flag_settings = _check_flags()
  batch.init_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  writer = jax.process_index() == 0
  note = settings.machine_note(flag_settings, settings.resolve(flag_settings))
  if note and writer:
    print(f"note: {note} (rows that leave these cells empty)", file=sys.stderr)
  rows = manifest.load_rows(FLAGS.manifest, flag_settings, overwrite=FLAGS.overwrite)
  _report_rows(rows)
  print(f"{sum(row.job is not None for row in rows)} picture(s) to make, {sum(row.skipped for row in rows)} "
        f"already done, {sum(row.error is not None for row in rows)} bad")
  caught = _run(rows, writer) if any(row.job is not None for row in rows) else []
  if writer and not FLAGS.dry_run:
    print(summary_table(rows))
  failed = [row.number for row in rows if row.error is not None]
  if failed:
    print(f"error: {len(failed)} row(s) failed: {', '.join(map(str, failed))}", file=sys.stderr)
  if caught:
    stopped = sum(row.result is not None and row.result.status == "stopped" for row in rows)
    common.stop_exit(f"interrupted by {hooks.stop_cause(caught[0])}: {stopped} row(s) stopped with checkpoints in "
                     f"{manifest.run_folder(FLAGS.manifest, FLAGS.workdir)} (run the same command again to resume)",
                     128 + caught[0])
  return 1 if failed else 0


def run(argv=None):
  common.run(main, argv)


if __name__ == "__main__":
  run()
