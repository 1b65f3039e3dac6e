"""Seconds per optimisation step: our jitted JAX step vs a plain torch reference of the same losses.

    python scripts/benchmark.py --sizes 128,256,512 --steps 10 --optimizer adam

Both run the Gatys setup (`--loss_normalization gatys`, its default weights; VGG19 to relu5_1; content
relu4_2; five style layers; TV l2; max pooling; content init; Adam lr 0.02, b1 0.99, eps 0.1, or L-BFGS with
a line search) on the same random VGG19 weights and the same synthetic square images.

Steps are not evaluations: with L-BFGS, torch's `LBFGS(max_iter=1)` called once per step evaluates the loss
and gradient at the current point again and then at least once in its line search (>= 2 per step), while
optax reuses the last line search's value and gradient (one per accepted first trial). The table therefore
also gives evaluations per step and seconds per evaluation (the cost of the loss and gradient itself); the
final losses after the same number of steps say which reached further. Each (framework, size) runs in its
own subprocess so that the peak memory (`ru_maxrss`) of one does not mix with another's. Timing: one
warm-up step (JAX: after an explicit compile, timed separately), then the mean over `--steps` steps, each
waited for. The JAX side steps the program the engine runs (`optimize.Stylizer.step`, vmapped, with a
batch of one and a per-item budget that is never reached).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

from absl import app, flags, logging

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

FLAGS = flags.FLAGS
flags.DEFINE_list("sizes", ["128", "256", "512"], "Image sizes (square, pixels).")
flags.DEFINE_integer("steps", 10, "Timed steps per run (after one warm-up step).")
flags.DEFINE_enum("optimizer", "adam", ["adam", "lbfgs"], "Optimizer for both frameworks.")
flags.DEFINE_list("frameworks", ["jax", "torch"], "Which to run: jax, torch.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "JAX VGG weights/activations dtype (torch: float32).")
flags.DEFINE_boolean("remat", False, "JAX: recompute VGG blocks in the backward pass (less memory).")
flags.DEFINE_boolean("channels_last", False, "torch: channels_last memory format.")
flags.DEFINE_integer("torch_threads", 0, "torch intra-op threads (0 = torch's default, one per core). On a busy "
                     "machine torch's OpenMP threads spin and slow down badly; compare on an idle one.")
flags.DEFINE_integer("seed", 0, "Seed of the random VGG19 weights and images.")
flags.DEFINE_string("json", None, "Also write the results as JSON to this path.")
# Internal: a worker run (one framework, one size), printing one JSON line.
flags.DEFINE_string("worker", None, "Internal: run one framework in this process.")
flags.DEFINE_integer("worker_size", None, "Internal.")
flags.DEFINE_string("weights_npz", None, "Internal: the shared weights file.")


def peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB.


def run_jax(npz: str, size: int) -> dict:
  import jax
  import numpy as np
  import optax

  from benchmarks.torch_reference import make_pair
  from nst_jax import optimize, weights as weights_lib
  from nst_jax import settings
  config = settings.resolve({"loss_normalization": "gatys", "adam_eps": 0.1})  # The torch reference's losses.
  config.optimizer, config.max_size, config.remat = FLAGS.optimizer, size, FLAGS.remat
  weights = weights_lib.load_vgg19(npz)
  if FLAGS.dtype != "float32":
    weights = weights.replace(params=jax.tree_util.tree_map(lambda p: p.astype(FLAGS.dtype), weights.params))
  content, style = make_pair(size, FLAGS.seed)
  # The compiled program the engine runs, stepped directly with a batch of one (B = 1 is a single picture);
  # the budget is never reached, so every step updates the image.
  stylizer = optimize.Stylizer(config)
  targets = jax.tree.map(lambda x: x[None], optimize.targets_from_config(weights, config, content, [style]))
  state = stylizer.init_state(content[None])
  budget = np.array([FLAGS.steps + 1], np.int32)
  start = time.perf_counter()
  step = stylizer.step.lower(state, targets, weights, budget).compile()
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  state, loss = step(state, targets, weights, budget)
  jax.block_until_ready(loss)
  first_step = time.perf_counter() - start
  times, evaluations = [], 0
  for _ in range(FLAGS.steps):
    start = time.perf_counter()
    state, loss = step(state, targets, weights, budget)
    jax.block_until_ready(loss)
    times.append(time.perf_counter() - start)
    # Adam: one evaluation; L-BFGS: the line search's (the value at the current point comes from the state).
    evaluations += int(np.asarray(optax.tree_utils.tree_get(state.opt_state, "num_linesearch_steps"))[0]) if \
        stylizer.linesearch else 1
  final = float(stylizer.evaluate(state.image, targets, weights)["total"][0])
  return {"compile_s": compile_s, "first_step_s": first_step, "step_s": sum(times) / len(times),
          "step_min_s": min(times), "evals_per_step": evaluations / FLAGS.steps,
          "eval_s": sum(times) / max(evaluations, 1), "final_loss": final, "device": str(jax.devices()[0]),
          "jax": jax.__version__}


def run_torch(npz: str, size: int) -> dict:
  import torch

  from benchmarks import torch_reference
  if FLAGS.torch_threads:
    torch.set_num_threads(FLAGS.torch_threads)
  result = torch_reference.run(npz, size, FLAGS.steps, FLAGS.optimizer, seed=FLAGS.seed,
                               channels_last=FLAGS.channels_last)
  return {**result, "torch": torch.__version__}


def worker() -> None:
  run = {"jax": run_jax, "torch": run_torch}[FLAGS.worker]
  result = run(FLAGS.weights_npz, FLAGS.worker_size)
  result["peak_rss_mb"] = peak_rss_mb()
  print("RESULT " + json.dumps(result), flush=True)


def spawn(framework: str, size: int, npz: str) -> dict:
  """Runs one worker subprocess with the same settings; returns its result (or the error)."""
  args = [sys.executable, os.path.abspath(__file__), f"--worker={framework}", f"--worker_size={size}",
          f"--weights_npz={npz}", f"--steps={FLAGS.steps}", f"--optimizer={FLAGS.optimizer}",
          f"--dtype={FLAGS.dtype}", f"--seed={FLAGS.seed}", f"--{'' if FLAGS.remat else 'no'}remat",
          f"--{'' if FLAGS.channels_last else 'no'}channels_last", f"--torch_threads={FLAGS.torch_threads}"]
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.run(args, capture_output=True, text=True, env=env)
  for line in proc.stdout.splitlines():
    if line.startswith("RESULT "):
      return json.loads(line[len("RESULT "):])
  tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
  return {"error": f"exit {proc.returncode}: {tail}"}


def fmt(value, spec=".3f"):
  return "-" if value is None else format(value, spec)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  if FLAGS.worker:
    worker()
    return
  sizes = [int(s) for s in FLAGS.sizes]
  print(f"settings: sizes={sizes} steps={FLAGS.steps} optimizer={FLAGS.optimizer} dtype={FLAGS.dtype} "
        f"remat={FLAGS.remat} channels_last={FLAGS.channels_last} torch_threads={FLAGS.torch_threads} "
        f"frameworks={','.join(FLAGS.frameworks)} seed={FLAGS.seed}")
  print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"python {platform.python_version()}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, "
        f"load average {os.getloadavg()[0]:.1f} (timings are only comparable on an idle machine)")
  from nst_jax import vgg, weights as weights_lib
  results = []
  with tempfile.TemporaryDirectory() as tmp:
    npz = os.path.join(tmp, "weights.npz")
    weights_lib.save_npz(npz, vgg.random_weights(FLAGS.seed))
    for size in sizes:
      row = {"size": size}
      for framework in FLAGS.frameworks:
        print(f"running {framework} at {size} px ...", file=sys.stderr, flush=True)
        row[framework] = spawn(framework, size, npz)
      if "threads" in row[framework]:
        row["torch_threads_used"] = row[framework]["threads"]
      results.append(row)
  header = (f"{'size':>5} | {'jax s/step':>10} | {'torch s/step':>12} | {'jax/torch':>9} | {'evals/step j,t':>14} | "
            f"{'jax s/eval':>10} | {'torch s/eval':>12} | {'per eval j/t':>12} | {'jax compile s':>13} | "
            f"{'jax peak MB':>11} | {'torch peak MB':>13} | {'jax loss':>10} | {'torch loss':>10}")
  print(header)
  print("-" * len(header))
  ratio_of = lambda a, b, key: a[key] / b[key] if key in a and key in b else None
  for row in results:
    j, t = row.get("jax", {}), row.get("torch", {})
    evals = f"{fmt(j.get('evals_per_step'), '.2f')},{fmt(t.get('evals_per_step'), '.2f')}"
    print(f"{row['size']:>5} | {fmt(j.get('step_s')):>10} | {fmt(t.get('step_s')):>12} | "
          f"{fmt(ratio_of(j, t, 'step_s'), '.2f'):>9} | {evals:>14} | {fmt(j.get('eval_s')):>10} | "
          f"{fmt(t.get('eval_s')):>12} | {fmt(ratio_of(j, t, 'eval_s'), '.2f'):>12} | "
          f"{fmt(j.get('compile_s'), '.2f'):>13} | {fmt(j.get('peak_rss_mb'), '.0f'):>11} | "
          f"{fmt(t.get('peak_rss_mb'), '.0f'):>13} | {fmt(j.get('final_loss'), '.4g'):>10} | "
          f"{fmt(t.get('final_loss'), '.4g'):>10}")
    for framework in FLAGS.frameworks:
      if "error" in row.get(framework, {}):
        print(f"      {framework} failed: {row[framework]['error']}")
  devices = {row["jax"].get("device") for row in results if "jax" in row and "device" in row["jax"]}
  if devices:
    print(f"jax device: {', '.join(sorted(devices))}")
  threads = {row["torch_threads_used"] for row in results if "torch_threads_used" in row}
  if threads:
    print(f"torch threads: {', '.join(map(str, sorted(threads)))}")
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  app.run(main)
