"""Quality preset: coarse-to-fine with tuned L-BFGS (the fastest way to a finished picture on a CPU).

    nst-jax --preset quality --content photo.jpg --style painting.jpg --output out.png

Sizes 128, 181, 256, 362, 512 (factor sqrt(2), as in crowsonkb/style-transfer-pytorch); 40 L-BFGS
iterations on each coarser scale and 80 at the final size, with the Fourier-preconditioned L-BFGS direction
(nst_jax/lbfgs.py, power 0.3: 10-20% fewer iterations to a given loss on the benchmark pairs). A 512 px
picture takes about 3 minutes on 2 CPU cores (docs/performance.md).
Flags given on the command line override these fields. See docs/quality-and-speed.md for when to use Adam
instead (the report's recipe, batches, GPUs).
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
    "scale_start": 128,
    "scale_factor": 2 ** 0.5,
    "scale_steps": 40,
    "steps": 80,
}


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.update(OVERRIDES)
  return config
