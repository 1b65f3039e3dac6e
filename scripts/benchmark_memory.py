"""Peak memory (RSS) of one optimisation step at several output sizes, each in a fresh subprocess.

    python scripts/benchmark_memory.py --sizes 512,1024,2048 [--optimizer lbfgs] [--remat auto|on|off]
    python scripts/benchmark_memory.py --sizes 512,1024,2048 --recipe quality   # the quality preset's step

Each child loads a square content and style image of the size, builds the targets, compiles and runs one
step, and reports `ru_maxrss` (peak resident memory, compilation included) and its wall time. The step is the
engine's compiled program (`optimize.Stylizer.step`) with a batch of one. With `--remat auto`
rematerialisation follows the config's `remat_above_pixels` (default 0: off), as in `engine.plan`.
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
flags.DEFINE_integer("child", 0, "Internal: run one measurement at this size.")


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


def main(argv):
  del argv
  if FLAGS.child:
    return child(FLAGS.child)
  for size in FLAGS.sizes:
    command = [sys.executable, __file__, f"--child={int(size)}", f"--optimizer={FLAGS.optimizer}",
               f"--remat={FLAGS.remat}", f"--weights={FLAGS.weights}", f"--recipe={FLAGS.recipe}"]
    result = subprocess.run(command, capture_output=True, text=True)
    lines = [l for l in result.stdout.splitlines() if l.startswith("{")]
    print(lines[-1] if result.returncode == 0 and lines else
          f"size {size}: failed (exit {result.returncode}): {result.stderr.strip().splitlines()[-1:]}", flush=True)


if __name__ == "__main__":
  app.run(main)
