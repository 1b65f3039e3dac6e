"""Peak memory (RSS) of one optimisation step at several output sizes, each in a fresh subprocess.

    python scripts/benchmark_memory.py --sizes 512,1024,2048 [--optimizer lbfgs] [--remat auto|on|off]
    python scripts/benchmark_memory.py --sizes 512,1024,2048 --recipe quality   # the quality preset's step
    python scripts/benchmark_memory.py --sizes 256,512,1024 --optimizer adam --estimate --run_steps 20
    python scripts/benchmark_memory.py --calibrate --sizes 128,256   # the rows of nst_jax.cost.RATES

Each child loads a square content and style image of the size, builds the targets, compiles and runs one
step, and reports `ru_maxrss` (peak resident memory, compilation included) and its wall time. The step is the
engine's compiled program (`optimize.Stylizer.step`) with a batch of one. With `--remat auto`
rematerialisation follows the config's `remat_above_pixels` (default 0: off), as in `engine.plan`.

`--estimate` checks `nst_jax.cost` (docs/tiles-and-cost.md): the child compiles the step first, then
resets the kernel's peak-RSS mark (`/proc/self/clear_refs`) and runs one step, so `step_rss_growth` is the
peak RSS growth of the step alone (its inputs already allocated, compilation excluded); it is compared with
XLA's figure for what a step allocates beyond its inputs (`cost.Probe.working_bytes`), and the estimated
peak (inputs included) is printed next to it. `--run_steps N` then compares the estimated run time with a
real engine run of N steps in a fresh engine: both the analytic estimate every run prints (`cost.estimate`
from the built-in table, no compile) and the compiled and timed one of `--dry_run` (`cost.measure`, which
compiles at the output size and at half of it and times a few steps).

`--calibrate` measures the rows of `nst_jax.cost.RATES` on this machine, for each optimizer family: the step
compiled and timed (`cost.probe`, `--timed_steps` steps) at the first two `--sizes`, the time per step fitted
as `overhead + seconds_per_gflop * GFLOPs` through the two points, the compile time, and the memory factor
(XLA's peak at the larger size minus twice the weights and the optimizer state, per byte of activations).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("sizes", ["512", "1024", "2048"], "Square output sizes (pixels).")
flags.DEFINE_enum("optimizer", "lbfgs", ("lbfgs", "adam"), "Optimizer of the step (--recipe default).")
flags.DEFINE_enum("recipe", "default", ("default", "quality"), "Settings: the default config with --optimizer, "
                  "or the quality preset (preconditioned L-BFGS from the recoloured photo; --optimizer unused).")
flags.DEFINE_enum("remat", "auto", ("auto", "on", "off"), "Rematerialisation of VGG blocks.")
flags.DEFINE_string("weights", "random", "VGG19 weights (memory does not depend on their values).")
flags.DEFINE_boolean("estimate", False, "Compare nst_jax.cost's XLA memory figures with the step's RSS growth.")
flags.DEFINE_integer("run_steps", 0, "With --estimate: also compare the estimated and measured time of a run of "
                     "N steps (0 = skip).")
flags.DEFINE_boolean("calibrate", False, "Measure the rows of nst_jax.cost.RATES (see the module docstring).")
flags.DEFINE_integer("timed_steps", 5, "With --calibrate: steps timed per size.")
flags.DEFINE_integer("child", 0, "Internal: run one measurement at this size.")


def _status_kib(field: str) -> int:
  with open("/proc/self/status", encoding="utf-8") as f:
    return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def child_estimate(size: int) -> None:
  """The step's RSS growth vs XLA's analysis; then the estimated vs measured time of a short run."""
  import jax
  import numpy as np
  from skimage import data
  from nst_jax import cost, engine, image_io, settings, weights as weights_lib
  config = settings.resolve({"max_size": size, "steps": max(FLAGS.run_steps, 1), "optimizer": FLAGS.optimizer,
                             "remat": FLAGS.remat == "on"})
  weights = weights_lib.load_vgg19(FLAGS.weights)
  content = image_io.resize(data.chelsea().astype(np.float32) / 255.0, (size, size))
  style = image_io.resize(data.coffee().astype(np.float32) / 255.0, (size, size))
  job = engine.Job(content, [style], config)
  eng = engine.Engine(weights)
  run = engine.JobRun(0, job, weights)
  eng._enter_stage(run, 0, None)
  stylizer = eng.stylizer(config, run.stage.remat)
  state = jax.tree.map(lambda x: jax.numpy.asarray(x)[None], run.state)
  targets = jax.tree.map(lambda x: jax.numpy.asarray(x)[None], run.targets)
  budget = np.array([1], np.int32)
  compiled = stylizer.step.lower(state, targets, eng.weights, budget).compile()
  memory = compiled.memory_analysis()
  probe = cost.Probe(shape=(size, size), batch=1, argument_bytes=memory.argument_size_in_bytes,
                     temp_bytes=memory.temp_size_in_bytes, output_bytes=memory.output_size_in_bytes,
                     alias_bytes=memory.alias_size_in_bytes, compile_seconds=0.0, step_seconds=0.0)
  jax.block_until_ready((state, targets))
  before = _status_kib("VmRSS")
  with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
    f.write("5")  # Peak RSS mark := current RSS.
  state, _ = compiled(state, targets, eng.weights, budget)
  jax.block_until_ready(state)
  growth = (_status_kib("VmHWM") - before) * 1024
  record = {"size": size, "optimizer": config.optimizer, "xla_working_mib": round(probe.working_bytes / 2 ** 20, 1),
            "step_rss_growth_mib": round(growth / 2 ** 20, 1),
            "working_vs_growth": round(probe.working_bytes / max(growth, 1), 3),
            "xla_peak_mib": round(probe.peak_bytes / 2 ** 20, 1)}
  if FLAGS.run_steps:
    begin = time.perf_counter()
    quick = cost.estimate(config, (size, size), free_bytes=2 ** 50, entries={})  # The built-in table alone.
    quick_seconds = time.perf_counter() - begin
    estimate = cost.measure(engine.Engine(weights), job, free_bytes=2 ** 50)
    fresh = engine.Engine(weights)  # The measured run compiles afresh, as the estimate assumes.
    jax.clear_caches()
    begin = time.perf_counter()
    fresh.run([job])
    measured = time.perf_counter() - begin
    record.update({"steps": FLAGS.run_steps, "analytic_s": round(quick_seconds, 4),
                   "analytic_peak_mib": round(quick.peak_bytes / 2 ** 20, 1),
                   "analytic_step_s": round(quick.step_seconds, 3), "analytic_run_s": round(quick.run_seconds, 1),
                   "est_step_s": round(estimate.step_seconds, 3), "est_run_s": round(estimate.run_seconds, 1),
                   "run_s": round(measured, 1), "analytic_vs_run": round(quick.run_seconds / measured, 3),
                   "est_vs_run": round(estimate.run_seconds / measured, 3)})
  record["load"] = round(__import__("os").getloadavg()[0], 1)
  print(json.dumps(record))


def child(size: int) -> None:
  import jax
  import numpy as np
  from skimage import data
  from nst_jax import image_io, optimize, weights as weights_lib
  from nst_jax.configs import default, quality
  if FLAGS.recipe == "quality":
    config = quality.get_config()
  else:
    config = default.get_config()
    config.optimizer = FLAGS.optimizer
  config.max_size, config.steps = size, 1
  threshold = int(config.remat_above_pixels)
  config.remat = {"on": True, "off": False, "auto": 0 < threshold < size * size}[FLAGS.remat]
  weights = weights_lib.load_vgg19(FLAGS.weights)
  content = image_io.resize(data.chelsea().astype(np.float32) / 255.0, (size, size))
  style = image_io.resize(data.coffee().astype(np.float32) / 255.0, (size, size))
  begin = time.perf_counter()
  stylizer = optimize.Stylizer(config)
  targets = jax.tree.map(lambda x: x[None], optimize.targets_from_config(weights, config, content, [style]))
  state = stylizer.init_state(optimize.init_image(config.init, content, style)[None])
  state, loss = stylizer.step(state, targets, weights, np.array([1], np.int32))
  jax.block_until_ready(state.image)
  seconds = time.perf_counter() - begin
  peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # Linux: KiB.
  print(json.dumps({"size": size, "recipe": FLAGS.recipe, "optimizer": config.optimizer,
                    "lbfgs_precondition": config.lbfgs_precondition, "remat": config.remat,
                    "peak_rss_gib": round(peak_gib, 3), "seconds": round(seconds, 1), "loss": float(loss[0])}))


def calibrate(sizes: list[int]) -> None:
  """Prints a `cost.RATES` row per optimizer family of this machine (see the module docstring)."""
  import jax
  import numpy as np
  from skimage import data
  from nst_jax import cost, engine, image_io, settings, weights as weights_lib
  weights = weights_lib.load_vgg19(FLAGS.weights)
  small, large = sizes[:2]
  content = image_io.resize(data.chelsea().astype(np.float32) / 255.0, (large, large))
  style = image_io.resize(data.coffee().astype(np.float32) / 255.0, (large, large))
  for optimizer in ("adam", "lbfgs"):
    config = settings.resolve({"max_size": large, "steps": 10, "optimizer": optimizer})
    job = engine.Job(content, [style], config)
    eng = engine.Engine(weights)
    probes = [cost.probe(eng, job, (s, s), remat=False, timed_steps=FLAGS.timed_steps) for s in (small, large)]
    nets = [cost.network(p.shape, cost._loss_layers(config)) for p in probes]
    per_gflop = (probes[1].step_seconds - probes[0].step_seconds) / (nets[1].gflops - nets[0].gflops)
    overhead = max(probes[0].step_seconds - per_gflop * nets[0].gflops, 0.0)
    rest = probes[1].peak_bytes - 2 * nets[1].weight_bytes - cost.state_bytes(config, probes[1].pixels)
    print(json.dumps({"platform": jax.default_backend(), "family": cost.family(optimizer),
                      "seconds_per_gflop": round(per_gflop, 5), "step_overhead": round(overhead, 4),
                      "stage_seconds": round(probes[1].compile_seconds, 1),
                      "memory_factor": round(rest / nets[1].activation_bytes, 2),
                      "steps_s": [round(p.step_seconds, 3) for p in probes],
                      "gflops": [round(n.gflops, 2) for n in nets],
                      "load": round(__import__("os").getloadavg()[0], 1)}), flush=True)


def main(argv):
  del argv
  if FLAGS.calibrate:
    return calibrate([int(s) for s in FLAGS.sizes])
  if FLAGS.child:
    return child_estimate(FLAGS.child) if FLAGS.estimate else child(FLAGS.child)
  for size in FLAGS.sizes:
    command = [sys.executable, __file__, f"--child={int(size)}", f"--optimizer={FLAGS.optimizer}",
               f"--remat={FLAGS.remat}", f"--weights={FLAGS.weights}", f"--recipe={FLAGS.recipe}",
               f"--estimate={FLAGS.estimate}", f"--run_steps={FLAGS.run_steps}"]
    result = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    print(lines[-1] if result.returncode == 0 and lines else
          f"size {size}: failed (exit {result.returncode}): {result.stderr.strip().splitlines()[-1:]}", flush=True)


if __name__ == "__main__":
  app.run(main)
