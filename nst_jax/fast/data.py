"""Training images for the fast net and their augmented random crops, reproducible from (seed, step).

    images = data.load_images("photos/")                        # or "skimage:astronaut,coffee"
    batch = data.random_crops(images, step=7, seed=0, batch_size=4, crop=256)   # [4, 256, 256, 3]

Offline there are few photos, so every crop is augmented: a random square region of a random image, whose
side is a random fraction of the image's short side (scale), resized to `crop`, and flipped left-right half
of the time. The crops of a step depend only on `(seed, step)`, so a resumed run sees exactly the crops of
an uninterrupted one.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from PIL import Image

from nst_jax import image_io
from nst_jax.errors import NstJaxError

# The region's side is uniform in [MIN_SCALE, 1] x the image's short side (then resized to the crop).
MIN_SCALE = 0.5
# Images are kept with their short side at most this many crops (larger ones are shrunk when loaded).
MAX_SHORT_SIDE_IN_CROPS = 2.0


def image_files(folder: str) -> list[str]:
  """The image files (by extension Pillow knows) directly in `folder` and its subfolders, sorted."""
  if not os.path.isdir(folder):
    raise NstJaxError(f"image folder not found: {folder}")
  known = set(Image.registered_extensions())
  found = []
  for root, _, names in os.walk(folder):
    found += [os.path.join(root, n) for n in names if os.path.splitext(n)[1].lower() in known
              and not n.startswith(".")]
  if not found:
    raise NstJaxError(f"no images in {folder} (expected .jpg, .png, ... files)")
  return sorted(found)


def sources(spec: str) -> list[str]:
  """`DIR` or `skimage:NAME[,NAME...]` -> the sources `image_io.open_image` reads."""
  if spec.startswith("skimage:"):
    names = [n.strip() for n in spec.split(":", 1)[1].split(",") if n.strip()]
    if not names:
      raise NstJaxError(f"no example names in {spec!r} (e.g. skimage:astronaut,coffee)")
    return [f"skimage:{n}" for n in names]
  return image_files(spec)


def load_images(specs: str | Sequence[str], crop: int) -> tuple[list[np.ndarray], list[str]]:
  """The training images of one or more specs (`sources`), RGB float32, shrunk to a short side of at most
  `MAX_SHORT_SIDE_IN_CROPS * crop`; returns `(images, their sources)`.

  Raises:
    NstJaxError: no images, an unreadable file, or an image whose short side is under `crop / 2` (a crop of
      it would be mostly upsampling blur) or under `image_io.MIN_SIZE`.
  """
  specs = [specs] if isinstance(specs, str) else list(specs)
  paths = [path for spec in specs for path in sources(spec)]
  minimum = max(image_io.MIN_SIZE, int(np.ceil(crop * MIN_SCALE)))
  images = []
  for path in paths:
    image = image_io.open_image(path)
    short = min(image.shape[:2])
    if short < minimum:
      raise NstJaxError(f"{path} is {image.shape[1]}x{image.shape[0]} pixels; a training image's short side must "
                        f"be at least {minimum} px for --crop {crop}")
    limit = int(MAX_SHORT_SIDE_IN_CROPS * crop)
    if short > limit:
      image = image_io.resize(image, (round(image.shape[0] * limit / short), round(image.shape[1] * limit / short)))
    images.append(image)
  return images, paths


def random_crop(image: np.ndarray, rng: np.random.Generator, crop: int) -> np.ndarray:
  """One augmented `[crop, crop, 3]` crop of `image`: random region (scale), resized, random flip."""
  height, width = image.shape[:2]
  short = min(height, width)
  side = max(1, int(round(rng.uniform(MIN_SCALE, 1.0) * short)))
  top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
  region = image_io.resize(image[top:top + side, left:left + side], (crop, crop))
  return region[:, ::-1] if rng.random() < 0.5 else region


def random_crops(images: Sequence[np.ndarray], *, step: int, seed: int, batch_size: int, crop: int) -> np.ndarray:
  """The batch `[batch_size, crop, crop, 3]` of training step `step` (a function of `seed` and `step` only)."""
  rng = np.random.default_rng([int(seed), int(step)])
  picks = rng.integers(0, len(images), batch_size)
  return np.stack([random_crop(images[i], rng, crop) for i in picks]).astype(np.float32)
