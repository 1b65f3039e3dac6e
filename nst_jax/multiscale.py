"""Coarse-to-fine style transfer, colour preservation, style scale and blending around the core engine.

The schedule (`scale_sizes`) starts at `config.scale_start` pixels (longest side) and grows by
`config.scale_factor` up to `config.max_size` (crowsonkb/style-transfer-pytorch uses 128 and sqrt(2)).
Each coarser scale runs `config.scale_steps` steps and the final scale `config.steps`; each scale starts
from the previous result upsampled with `image_io.resize`, with content and style targets recomputed at
that scale. Every scale has its own image shape and so its own compilation (the persistent compilation
cache makes repeated runs cheap).

Optimizer state across scales (`carry_opt_state`): first-order states (Adam's moments, RMSProp's and
Adagrad's accumulators, SGD momentum) are per-pixel arrays shaped like the image, so they are resized like
the image (bilinear, which keeps second moments non-negative) and their step counts kept. L-BFGS keeps
curvature pairs (s, y) measured on the previous scale's problem: resized, they would not satisfy the secant
condition of the new one, so its state is re-initialised at each scale.

`run` also applies `--preserve_colors` (`nst_jax.color`), `--style_scale` (style longest side =
style_scale * output longest side, at every scale), `--style_blend_weights`, and turns on
rematerialisation (`jax.checkpoint` per VGG block) for scales above `config.remat_above_pixels`.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable, NamedTuple, Sequence

import jax
import ml_collections
import numpy as np

from nst_jax import color, image_io, optimize, vgg
from nst_jax.errors import NstJaxError


class Scale(NamedTuple):
  """One stage of the schedule."""
  index: int  # 0-based.
  count: int  # Number of scales.
  shape: tuple[int, int]  # (H, W) of the image at this scale.
  steps: int
  remat: bool


def scale_sizes(max_size: int, *, start: int = 0, factor: float = 2 ** 0.5) -> list[int]:
  """Longest sides of the schedule: `start, start*factor, ...` (rounded, increasing), ending at `max_size`.

  `start <= 0` or `start >= max_size` gives the single scale `[max_size]`.
  """
  if start <= 0 or start >= max_size:
    return [int(max_size)]
  if factor <= 1.0:
    raise NstJaxError(f"scale_factor must be > 1, got {factor}")
  image_io.check_size(int(start), "scale_start")
  sizes, size = [], float(start)
  while round(size) < max_size:
    if not sizes or round(size) > sizes[-1]:
      sizes.append(int(round(size)))
    size *= factor
  # Drop a last coarse scale within 5% of the target: it would cost a compile for nearly nothing.
  if len(sizes) > 1 and sizes[-1] > 0.95 * max_size:
    sizes.pop()
  return sizes + [int(max_size)]


def schedule(config: ml_collections.ConfigDict, content_shape: tuple[int, int]) -> list[Scale]:
  """The scales for an output of `content_shape` (H, W) whose longest side is the final size."""
  height, width = content_shape[:2]
  sizes = scale_sizes(max(height, width), start=int(config.scale_start), factor=float(config.scale_factor))
  threshold = int(config.get("remat_above_pixels", 0) or 0)
  scales = []
  for i, size in enumerate(sizes):
    shape = (height, width) if i == len(sizes) - 1 else image_io.fit_size(height, width, size)
    steps = int(config.steps) if i == len(sizes) - 1 else int(config.scale_steps)
    remat = bool(config.remat) or (threshold > 0 and shape[0] * shape[1] > threshold)
    scales.append(Scale(index=i, count=len(sizes), shape=tuple(shape), steps=steps, remat=remat))
  return scales


def carry_opt_state(old: optimize.PyTree, new: optimize.PyTree, old_shape: tuple, new_shape: tuple):
  """Moves a first-order optimizer state to a new image shape: image-shaped leaves are resized
  (bilinear), other leaves (step counts) are kept from `old`. Both states must come from the same optimizer.
  """

  def move(old_leaf, new_leaf):
    old_leaf, new_leaf = jax.numpy.asarray(old_leaf), jax.numpy.asarray(new_leaf)
    if old_leaf.shape == tuple(old_shape) and new_leaf.shape == tuple(new_shape):
      return jax.image.resize(old_leaf, new_shape, "linear").astype(new_leaf.dtype)
    if old_leaf.shape == new_leaf.shape:
      return old_leaf
    return new_leaf

  return jax.tree.map(move, old, new)


def resize_style(style: np.ndarray, output_shape: tuple[int, int], style_scale: float) -> np.ndarray:
  """The style image with its longest side `style_scale` times the output's longest side (its short side at
  least `image_io.MIN_SIZE`)."""
  if not np.isfinite(style_scale) or style_scale <= 0:
    raise NstJaxError(f"style_scale must be positive, got {style_scale}")
  longest = int(round(style_scale * max(output_shape)))
  # VGG19's fifth block needs at least MIN_SIZE pixels on the short side too.
  floor = int(np.ceil(image_io.MIN_SIZE * max(style.shape[:2]) / min(style.shape[:2])))
  return image_io.resize_longest(np.asarray(style, np.float32), max(longest, floor))


def validate(config: ml_collections.ConfigDict, num_styles: int) -> None:
  """Raises NstJaxError for bad feature settings (the core settings are checked by the Stylizer)."""
  if config.preserve_colors not in color.PRESERVE_COLORS:
    raise NstJaxError(f"unknown preserve_colors {config.preserve_colors!r}; expected one of "
                      f"{color.PRESERVE_COLORS}")
  if int(config.scale_start) < 0 or int(config.scale_steps) < 0:
    raise NstJaxError("scale_start and scale_steps must be >= 0")
  if int(config.scale_start) > 0 and float(config.scale_factor) <= 1.0:
    raise NstJaxError(f"scale_factor must be > 1, got {config.scale_factor}")
  if not float(config.style_scale) > 0:
    raise NstJaxError(f"style_scale must be positive, got {config.style_scale}")
  blend = config.style_blend_weights
  if blend is not None and len(blend) != num_styles:
    raise NstJaxError(f"{len(blend)} style blend weights for {num_styles} style image(s)")


def run(content: np.ndarray, styles: Sequence[np.ndarray], config: ml_collections.ConfigDict,
        weights: vgg.VGGWeights, *,
        callbacks_for: Callable[[Scale], Iterable[optimize.Callback]] | None = None
        ) -> tuple[np.ndarray, list[dict]]:
  """Stylises `content` through the coarse-to-fine schedule of `config`.

  Args:
    content: the photo `[H, W, 3]` in [0, 1] at the output size.
    styles: style images `[h, w, 3]` in [0, 1], any size (resized per scale with `config.style_scale`).
    config: `configs/default.py` fields, including the schedule and colour fields.
    weights: VGG19 weights.
    callbacks_for: `fn(scale) -> callbacks` for that scale's run loop (progress, metrics logs).

  Returns:
    `(image [H, W, 3], per_scale)` with one dict per scale: `scale`, `height`, `width`, `steps`, `remat`,
    `seconds` (wall time of that scale, compile and targets included) and its final losses.
  """
  if isinstance(styles, np.ndarray) and styles.ndim == 3:
    styles = [styles]
  styles = [np.asarray(s, np.float32) for s in styles]
  if not styles:
    raise NstJaxError("at least one style image is needed")
  validate(config, len(styles))
  photo = np.asarray(content, np.float32)
  content, styles = color.prepare(photo, styles, config.preserve_colors)
  stylizers: dict[bool, optimize.Stylizer] = {}
  per_scale, image, state, old_shape = [], None, None, None
  for scale in schedule(config, content.shape[:2]):
    begin = time.perf_counter()
    if scale.remat not in stylizers:
      scale_config = config.copy_and_resolve_references()
      scale_config.remat = scale.remat
      stylizers[scale.remat] = optimize.Stylizer(scale_config)
    stylizer = stylizers[scale.remat]
    content_s = image_io.resize(content, scale.shape)
    styles_s = [resize_style(s, scale.shape, float(config.style_scale)) for s in styles]
    targets = optimize.targets_from_config(weights, config, content_s, styles_s, config.style_blend_weights)
    if image is None:
      start_image = optimize.init_image(config.init, content_s, styles_s, seed=int(config.seed),
                                        style_blend_weights=config.style_blend_weights)
    else:
      start_image = image_io.resize(image, scale.shape)
    new_state = stylizer.init_state(start_image)
    if state is not None and not stylizer.linesearch and config.get("scale_carry_state", True):
      new_state = new_state.replace(opt_state=carry_opt_state(
          state.opt_state, new_state.opt_state, old_shape, start_image.shape))
    callbacks = list(callbacks_for(scale)) if callbacks_for else []
    state = stylizer.run(new_state, targets, weights, scale.steps, callbacks=callbacks)
    image = np.asarray(jax.device_get(state.image))
    old_shape = image.shape
    metrics = {k: float(v) for k, v in jax.device_get(stylizer.evaluate(state.image, targets, weights)).items()}
    per_scale.append({"scale": scale.index, "height": scale.shape[0], "width": scale.shape[1],
                      "steps": scale.steps, "remat": scale.remat,
                      "seconds": time.perf_counter() - begin, **metrics})
  return color.finish(image, photo, config.preserve_colors), per_scale
