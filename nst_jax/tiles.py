"""Seamless tiles: the mosaic preview and the wrap-around resize of a periodic picture.

With the `tile` setting the loss sees the picture as a torus (circular padding in every VGG conv,
`vgg.conv3x3`, and a wrapped total variation, `losses.total_variation_loss`), so the output repeats without
a seam. `tile_preview N` writes `mosaic(result, N)` next to each output, at `preview_path(output, N)`:

    from nst_jax import tiles
    image = nst_jax.stylize(photo, painting, config)   # config.tile = True
    image_io.save_image("wall.tile3x3.png", tiles.mosaic(image, 3))
"""

from __future__ import annotations

import os

import numpy as np

from nst_jax import image_io
from nst_jax.errors import NstJaxError

MAX_PREVIEW = 8  # Most copies per side of the mosaic.


def check_preview(count: int) -> int:
  """`count` as the mosaic's copies per side (0 = no preview); NstJaxError when out of range."""
  count = int(count)
  if not 0 <= count <= MAX_PREVIEW:
    raise NstJaxError(f"tile_preview must be between 0 (none) and {MAX_PREVIEW}, got {count}")
  return count


def mosaic(image: np.ndarray, count: int) -> np.ndarray:
  """`count` x `count` copies of `[H, W, C]` side by side: `[count * H, count * W, C]`."""
  if check_preview(count) < 1:
    raise NstJaxError("a mosaic needs at least 1 copy per side")
  return np.tile(np.asarray(image), (count, count, 1))


def preview_path(output: str, count: int) -> str:
  """Where the mosaic of `output` goes: `out.png` -> `out.tile3x3.png` (same folder and format)."""
  stem, extension = os.path.splitext(output)
  return f"{stem}.tile{count}x{count}{extension}"


def write_preview(output: str, image: np.ndarray, count: int) -> str | None:
  """Writes the `count` x `count` mosaic of `image` next to `output` (nothing when `count` is 0)."""
  if not count:
    return None
  path = preview_path(output, count)
  image_io.save_image(path, mosaic(image, count))
  return path


def resize_wrapped(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
  """`image_io.resize` of a periodic picture: the filter wraps around the borders instead of clamping.

  The picture is resized as the middle of a 3 x 3 mosaic, so pixels near an edge are filtered with the
  opposite edge's pixels, and an upsampled seamless tile stays seamless (coarse-to-fine with `tile`).
  """
  height, width = shape
  if image.shape[:2] == (height, width):
    return np.asarray(image, np.float32)
  big = image_io.resize(np.tile(np.asarray(image, np.float32), (3, 3, 1)), (3 * height, 3 * width))
  return big[height:2 * height, width:2 * width]
