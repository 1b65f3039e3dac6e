"""Rescale VGG19 weights so each filter's mean activation over calibration images is 1 (Gatys et al. 2016).

    python scripts/normalize_vgg.py --weights vgg19.h5 --output vgg19_normalized.npz
"""

from nst_jax.commands import normalize_vgg

if __name__ == "__main__":
  normalize_vgg.run()
