"""Spatial control's inputs: region masks (which painting goes where) checked, converted and resized.

A region mask is a greyscale picture, white = where its painting applies, soft edges allowed; one per style
image (`style_region`), plus optionally one per painting saying which part of it to take the style from
(`style_region_source`). The maths (guided Gram matrices) is in `nst_jax.losses`; this module only turns
what users give into float32 `[H, W]` arrays in [0, 1] at the right size.

Aspect-ratio policy: a mask must have the aspect ratio of the picture it belongs to (the photo for a
region, its painting for a source), up to the rounding of resizing; another aspect ratio is an error (a
mask stretched to fit would put the regions where the user did not draw them). A mask of the right aspect
ratio and any size is resized (bilinear) to the output at every coarse-to-fine stage.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

from nst_jax import image_io
from nst_jax.errors import NstJaxError

# Coarser than this (on the 0..1 scale), a mask counts as black: less than one 8-bit level.
BLACK = 0.5 / 255
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601, as Pillow's convert("L").


def as_mask(array, what: str = "mask") -> np.ndarray:
  """An array `[H, W]`, `[H, W, 1]` or `[H, W, 3]` (converted to grey: its luminance) -> float32 `[H, W]`."""
  mask = np.asarray(array, np.float32)
  if mask.ndim == 3 and mask.shape[-1] == 1:
    mask = mask[..., 0]
  elif mask.ndim == 3 and mask.shape[-1] in (3, 4):
    mask = mask[..., :3] @ _LUMA
  if mask.ndim != 2 or 0 in mask.shape:
    raise NstJaxError(f"{what} must be a greyscale image [H, W], got shape {np.shape(array)}")
  if not np.all(np.isfinite(mask)):
    raise NstJaxError(f"{what} holds values that are not finite")
  return np.clip(mask, 0.0, 1.0)


def is_colour(image: np.ndarray) -> bool:
  """Whether an `[H, W, 3]` image has pixels whose channels differ (a mask that will be converted)."""
  return image.ndim == 3 and image.shape[-1] >= 3 and bool(np.ptp(image[..., :3], axis=-1).max() > BLACK)


def check_aspect(mask_shape: Sequence[int], image_shape: Sequence[int], what: str, of: str) -> None:
  """Raises unless a `mask_shape` mask has the aspect ratio of `image_shape`, up to one pixel of rounding."""
  (mh, mw), (h, w) = mask_shape[:2], image_shape[:2]
  # Resizing either picture moves its aspect ratio by up to one pixel on its short side.
  tolerance = 0.01 + 1.0 / min(mh, mw) + 1.0 / min(h, w)
  if abs(np.log((mh / mw) / (h / w))) > tolerance:
    raise NstJaxError(f"{what} is {mw}x{mh} but {of} is {w}x{h}: a mask must have the aspect ratio of {of}")


def resize_mask(mask: np.ndarray, shape: Sequence[int]) -> np.ndarray:
  """A float `[H, W]` mask resized to `shape = (h, w)` (bilinear, antialiased when shrinking)."""
  if mask.shape == tuple(shape):
    return mask.astype(np.float32)
  resized = Image.fromarray(mask.astype(np.float32), mode="F").resize((shape[1], shape[0]),
                                                                      Image.Resampling.BILINEAR)
  return np.clip(np.asarray(resized, np.float32), 0.0, 1.0)


def check(regions: Sequence | None, sources: Sequence | None, content_shape: Sequence[int],
          style_shapes: Sequence[Sequence[int]]) -> tuple[list[np.ndarray] | None, list[np.ndarray | None] | None]:
  """Validates a job's masks; returns them as float32 `[H, W]` (`(None, None)` without regions).

  Raises:
    NstJaxError: one line: a count that differs from the style count, a source without regions, a mask of
      another aspect ratio, an all-black mask.
  """
  num = len(style_shapes)
  if sources is not None and regions is None:
    raise NstJaxError("style_region_source needs style_region (one region per style image)")
  if regions is None:
    return None, None
  if len(regions) != num:
    raise NstJaxError(f"{len(regions)} style_region mask(s) for {num} style image(s): give one per --style, "
                      f"in the same order")
  masks = []
  for i, region in enumerate(regions, start=1):
    what = f"style_region {i}"
    mask = as_mask(region, what)
    check_aspect(mask.shape, content_shape, what, "the photo")
    if resize_mask(mask, content_shape[:2]).max() < BLACK:
      raise NstJaxError(f"{what} is all black: it covers no pixel of the photo")
    masks.append(mask)
  if sources is None:
    return masks, None
  if len(sources) != num:
    raise NstJaxError(f"{len(sources)} style_region_source mask(s) for {num} style image(s): give one per "
                      f"--style, in the same order")
  checked = []
  for i, (source, shape) in enumerate(zip(sources, style_shapes), start=1):
    if source is None:
      checked.append(None)
      continue
    what = f"style_region_source {i}"
    mask = as_mask(source, what)
    check_aspect(mask.shape, shape, what, f"style image {i}")
    if mask.max() < BLACK:
      raise NstJaxError(f"{what} is all black: it selects nothing of the painting")
    checked.append(mask)
  return masks, checked


def open_mask(path: str, what: str) -> np.ndarray:
  """Decodes a mask file (RGB float32, as `image_io.open_image`); errors name the mask (`what`)."""
  try:
    return image_io.open_image(path)
  except NstJaxError as e:
    raise NstJaxError(f"{what}: {e}") from None


def prepare_mask(image: np.ndarray, what: str, max_size: int | None = None, name: str = ""
                 ) -> tuple[np.ndarray, list[str]]:
  """A decoded mask -> float32 `[H, W]` (longest side at most `max_size`) and notes (a colour mask converted;
  `name`, its path or upload field, names it there)."""
  named = f"{what} {name}" if name else what
  notes = [f"{named} is in colour: converted to greyscale (luminance)"] if is_colour(image) else []
  if max_size is not None and max(image.shape[:2]) > max_size:
    image = image_io.resize_longest(image, max_size)
  return as_mask(image, what), notes

