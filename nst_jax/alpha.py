"""Transparency: an image's alpha channel as the engine's regions (docs/transparency.md).

An image may come as float32 `[H, W, 4]` RGBA (straight, not premultiplied). The content's alpha weighs
every pixel's part in the loss (content and style) and is put back, unchanged, on the output; a
painting's alpha says which of its pixels count in its Gram matrices. Both reuse the spatial-control maths
(`nst_jax.regions`, `losses.guided_gram_matrix`): no second masked loss.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from nst_jax.errors import NstJaxError
from nst_jax.regions import BLACK

def split(image, what: str = "content image") -> tuple[np.ndarray, np.ndarray | None]:
  """`[H, W, 3|4]` -> (RGB float32, alpha `[H, W]` or None when there is none or it is fully opaque).

  Raises:
    NstJaxError: a fully transparent image (nothing to stylise or to take a style from).
  """
  image = np.asarray(image, np.float32)
  if image.ndim != 3 or image.shape[-1] not in (3, 4):
    raise NstJaxError(f"{what} must be [H, W, 3] (RGB) or [H, W, 4] (RGBA), got shape {image.shape}")
  if image.shape[-1] == 3:
    return image, None
  alpha = np.clip(image[..., 3], 0.0, 1.0)
  if alpha.max() < BLACK:
    raise NstJaxError(f"{what} is fully transparent: there is no visible pixel to use")
  return image[..., :3], (None if alpha.min() >= 1.0 else alpha)


def has_alpha(image) -> bool:
  """Whether `image` is RGBA with at least one pixel that is not fully opaque."""
  image = np.asarray(image)
  return image.ndim == 3 and image.shape[-1] == 4 and bool(image[..., 3].min() < 1.0)


def attach(rgb: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
  """RGB `[H, W, 3]` plus alpha `[H, W]` -> RGBA (RGB unchanged when alpha is None)."""
  if alpha is None:
    return rgb
  return np.concatenate([np.asarray(rgb, np.float32), np.asarray(alpha, np.float32)[..., None]], axis=-1)


def combine_sources(sources: Sequence | None, alphas: Sequence, num: int) -> list | None:
  """Each painting's source mask times its alpha (either may be None); None when all are None."""
  sources = [None] * num if sources is None else list(sources)
  out = [a if s is None else (s if a is None else np.asarray(s, np.float32) * a) for s, a in zip(sources, alphas)]
  return None if all(m is None for m in out) else out
