"""Stylise every row of a manifest CSV, batched by bucket and sharded over all devices.

    nst-jax batch --manifest pairs.csv --weights random --max_size 256 --steps 300

The manifest has columns content, style, output and optional per-row overrides (content_weight,
style_weight, tv_weight, steps, max_size, optimizer, lr, init, seed, tv_kind, pooling); every other
`stylize` flag (--steps, --style_weight, --preset, ...) sets the default for rows that leave a cell empty.
Rows whose output exists are skipped (so re-running an interrupted job resumes it); a bad row is reported
by its number and skipped, the others still run, and the exit status is 1 if any row failed.
"""

from __future__ import annotations

import sys
import time

import jax
from absl import flags

from nst_jax import batch, image_io, manifest, weights as weights_lib
from nst_jax.commands import common
from nst_jax.commands import stylize  # Defines the config flags every row starts from.
from nst_jax.errors import NstJaxError

FLAGS = flags.FLAGS
flags.DEFINE_string("manifest", None, "CSV with columns content,style,output[,overrides...].")
flags.DEFINE_integer("batch_size", None, "Most pictures per compiled batch (default: a whole bucket). "
                     "Rounded up to a multiple of the device count.")
flags.DEFINE_string("coordinator_address", None, "Multi-host: host:port of process 0 "
                    "(jax.distributed.initialize); 'auto' on TPU pods / SLURM.")
flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-host: this process's index (0 writes the outputs).")
flags.DEFINE_boolean("shard", True, "Shard the batch over all devices (a Mesh with axis 'batch').")


def summary_table(rows: list[manifest.Row], results: dict[int, batch.Result]) -> str:
  """A fixed-width table: row, status, size, steps, final loss, seconds, output or error."""
  lines = [f"{'row':>4}  {'status':<7}  {'size':>9}  {'steps':>5}  {'loss':>10}  {'sec':>6}  output / error"]
  for row in rows:
    size = steps = loss = sec = ""
    if row.item is not None:
      size = "x".join(map(str, row.item.content.shape[1::-1]))
      steps = str(row.item.config.steps)
    if row.number in results:
      result = results[row.number]
      status, loss, sec = "done", f"{result.metrics['total']:.4g}", f"{result.seconds:.1f}"
    elif row.skipped:
      status = "exists"
    else:
      status = "FAILED"
    detail = row.output if row.error is None else f"{row.output or '-'}: {row.error}"
    lines.append(f"{row.number:>4}  {status:<7}  {size:>9}  {steps:>5}  {loss:>10}  {sec:>6}  {detail}")
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise NstJaxError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS.manifest:
    raise NstJaxError("--manifest is required (see --help)")
  for name in ("content", "style", "output"):
    if FLAGS[name].present:
      raise NstJaxError(f"--{name} does not apply to batch jobs: put it in the manifest")
  batch.init_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  writer = jax.process_index() == 0
  base = stylize.config_from_flags()
  rows = manifest.load_rows(FLAGS.manifest, base, overwrite=FLAGS.overwrite)
  for row in rows:
    if row.error is not None:
      print(f"row {row.number}: {row.error} (skipped)", file=sys.stderr)
  todo = [row for row in rows if row.item is not None]
  results: dict[int, batch.Result] = {}
  if todo:
    common.enable_compilation_cache(FLAGS.compilation_cache)
    weights = weights_lib.load_vgg19(FLAGS.weights)
    mesh = batch.make_mesh() if FLAGS.shard else None
    runner = batch.BatchStylizer(weights, mesh=mesh, batch_size=FLAGS.batch_size)
    items = [row.item for row in todo]
    chunks = runner.plan(items)
    print(f"{len(todo)} picture(s) in {len(chunks)} batch(es) on {runner.num_devices} device(s); "
          f"{sum(r.skipped for r in rows)} already done, {sum(r.error is not None for r in rows)} bad")
    start = time.perf_counter()
    for number, (chunk, padded) in enumerate(chunks):
      first = items[chunk[0]]
      h, w = first.content.shape[:2]
      desc = f"batch {number + 1}/{len(chunks)} ({len(chunk)} x {w}x{h})"
      progress, bar = common.progress_callback(int(first.config.steps), desc=desc, disable=not FLAGS.progress)

      def callback(step, state, metrics, progress=progress, n=len(chunk)):
        if metrics is not None:
          metrics = {k: float(metrics[k][:n].mean()) for k in ("total", "content", "style", "tv")}
        progress(step, state, metrics)

      try:
        chunk_results = runner.run_chunk([items[i] for i in chunk], callbacks=[callback], pad_size=padded)
      finally:
        bar.close()
      for index, result in zip(chunk, chunk_results):
        row = todo[index]
        if writer:
          try:
            image_io.save_image(row.output, result.image)
          except NstJaxError as e:
            row.error = str(e)
            continue
        results[row.number] = result
    print(f"{len(results)} picture(s) in {time.perf_counter() - start:.1f} s")
  if writer:
    print(summary_table(rows, results))
  failed = [row.number for row in rows if row.error is not None]
  if failed:
    print(f"error: {len(failed)} row(s) failed: {', '.join(map(str, failed))}", file=sys.stderr)
    return 1
  return 0


def run(argv=None):
  common.run(main, argv)


if __name__ == "__main__":
  run()
