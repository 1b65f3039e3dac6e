"""Quality preset: tuned L-BFGS from the recoloured photo (the fastest way to a finished picture on a CPU).

    nst-jax --preset quality --content photo.jpg --style painting.jpg --output out.png

100 L-BFGS iterations at the output size with the Fourier-preconditioned direction (nst_jax/lbfgs.py,
power 0.3), starting from the photo recoloured to the style's colour mean and covariance
(`init='recolored_content'`). A 512 px picture takes about 2.5 minutes on 2 CPU cores
(docs/performance.md). Under the default `invariant` losses it reaches its 100-iteration picture 2-4x
sooner than Adam does, but flattens there: it does not reach the report recipe's 1,000-step loss, and neither
loss scaling, unclamped L-BFGS, Adam schedules nor coarse-to-fine changed that (docs/performance.md, "Time to
quality"); under `gatys` it reached that loss 10-12x sooner.

One scale, not coarse-to-fine: on the benchmark pairs (random VGG weights) the coarse scales 128, 181, ...
did not shorten the final scale's iterations to a given loss, so they only added time (docs/quality-and-
speed.md). `--scale_start 128` turns the schedule on (40 iterations per coarser scale, factor sqrt(2), as in
crowsonkb/style-transfer-pytorch). Flags given on the command line override these fields. See
docs/quality-and-speed.md for when to use Adam instead (the report's recipe, batches, GPUs).
"""

import ml_collections

from nst_jax.configs import default

# The fields this preset changes (the stylize command applies them unless a flag sets the same field).
OVERRIDES = {
    "optimizer": "lbfgs",
    "lbfgs_memory": 10,
    "lbfgs_linesearch_steps": 10,
    "lbfgs_initial_guess": "one",
    "lbfgs_precondition": 0.3,
    "init": "recolored_content",
    "scale_start": 0,
    "scale_factor": 2 ** 0.5,
    "scale_steps": 40,
    "steps": 100,
}


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.update(OVERRIDES)
  return config
