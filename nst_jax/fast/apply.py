"""A trained fast net on photos: any size and aspect ratio, alpha kept, colours optionally the photo's.

    net = apply.FastNet.load("models/p")
    picture = net.stylize(photo)        # float32 [H, W, 3|4] in [0, 1] -> the same shape

The net runs on the RGB channels; a transparent photo's alpha (`nst_jax.alpha`) is put back unchanged.
`preserve_colors` (the setting of the picture command) acts after the net: `luminance` keeps the net's
luminance with the photo's chroma, `histogram` gives the net's picture the photo's colour mean and
covariance (`nst_jax.color`). One program is compiled per image shape.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np

from nst_jax import alpha as alpha_lib
from nst_jax import color, image_io
from nst_jax.errors import NstJaxError
from nst_jax.fast import model, model_file

PyTree = Any


def finish_colors(picture: np.ndarray, photo: np.ndarray, mode: str) -> np.ndarray:
  """The net's RGB `picture` with `--preserve_colors mode` applied against the RGB `photo`."""
  if mode not in color.PRESERVE_COLORS:
    raise NstJaxError(f"unknown preserve_colors {mode!r}; expected one of {', '.join(color.PRESERVE_COLORS)}")
  if mode == "histogram":
    return color.match_color(picture, photo)
  return color.finish(picture, photo, mode)  # luminance: the photo's chroma; none: unchanged.


@dataclasses.dataclass
class FastNet:
  """A loaded model: its parameters, header (`model_file`) and the jitted net."""
  params: PyTree
  meta: dict
  apply_fn: Callable = None

  def __post_init__(self):
    width = float(self.meta.get("width", 1.0))
    if self.apply_fn is None:
      self.apply_fn = jax.jit(lambda params, x: model.apply(params, x, width=width))

  @classmethod
  def load(cls, path: str) -> "FastNet":
    params, meta = model_file.load(path)
    try:
      model.TransformerNet(width=float(meta["width"])).apply({"params": params}, np.zeros((1, 8, 8, 3), np.float32))
    except Exception:  # Shapes or names of the parameters do not fit the net of that width.
      raise NstJaxError(f"{model_file.path_of(path)} is damaged (its parameters do not fit the net)") from None
    return cls(params=params, meta=meta)

  def stylize(self, image: np.ndarray, *, preserve_colors: str = "none") -> np.ndarray:
    """`[H, W, 3]` or RGBA `[H, W, 4]` float32 in [0, 1] -> the net's picture of the same shape.

    Raises:
      NstJaxError: an image whose short side is under `image_io.MIN_SIZE` pixels.
    """
    rgb, alpha = alpha_lib.split(image, "content image")
    height, width = rgb.shape[:2]
    if min(height, width) < image_io.MIN_SIZE:
      raise NstJaxError(f"content image is {width}x{height} pixels; its short side must be at least "
                        f"{image_io.MIN_SIZE} px")
    picture = np.asarray(self.apply_fn(self.params, rgb[None]))[0]  # [H, W, 3]
    return alpha_lib.attach(finish_colors(picture, rgb, preserve_colors), alpha)
