"""Quality preset: coarse-to-fine with tuned L-BFGS (the fastest way to a finished picture on a CPU).

    nst-jax --preset quality --content photo.jpg --style painting.jpg --output out.png

Sizes 128, 181, 256, 362, 512 (factor sqrt(2), as in crowsonkb/style-transfer-pytorch); 50 L-BFGS
iterations on each coarser scale and 100 at the final size. Flags given on the command line override these
fields. See docs/quality-and-speed.md for when to use Adam instead (the report's recipe, batches, GPUs).
"""

import ml_collections

from nst_jax.configs import default

# The fields this preset changes (the stylize command applies them unless a flag sets the same field).
OVERRIDES = {
    "optimizer": "lbfgs",
    "lbfgs_memory": 10,
    "lbfgs_linesearch_steps": 10,
    "lbfgs_initial_guess": "one",
    "scale_start": 128,
    "scale_factor": 2 ** 0.5,
    "scale_steps": 50,
    "steps": 100,
}


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.update(OVERRIDES)
  return config
