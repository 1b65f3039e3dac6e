"""The library front end: one call from arrays to a stylised array, on the run engine.

    image = nst_jax.stylize(content, style, settings.resolve({"max_size": 256}), weights=weights.load_vgg19())

A module of its own so that the engine's lower layers (`optimize`, `settings`) never import the engine.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import ml_collections
import numpy as np

from nst_jax import engine, settings, vgg
from nst_jax import weights as weights_lib


def stylize(content: np.ndarray, style: np.ndarray | Sequence[np.ndarray],
            config: ml_collections.ConfigDict | None = None, *, weights: vgg.VGGWeights | None = None,
            style_blend_weights: Sequence[float] | None = None, hooks: Iterable[Any] = (),
            regions: Sequence[np.ndarray] | None = None,
            region_sources: Sequence[np.ndarray | None] | None = None) -> np.ndarray:
  """Stylises `content` with `style`: float32 `[H, W, 3]` arrays in [0, 1] -> image of the content's size.

  Transparency: `content` and any painting may be RGBA `[H, W, 4]` (straight alpha); an RGBA content gives
  an RGBA result whose alpha is the content's, unchanged (docs/transparency.md).

  The library front end of `nst_jax.engine`: every setting of `config` applies (coarse-to-fine, colours,
  blends, style scale, presets' fields...).

  Args:
    content: the photo, already at the output size (see `image_io.load_image`).
    style: one painting, or a list of paintings (any sizes) blended with `config.style_blend_weights`.
    config: settings (`settings.resolve()` when None: the defaults sized to this machine, as every path).
    weights: VGG19 weights (`nst_jax.weights.load_vgg19()` when None: cached, or downloaded once).
    style_blend_weights: shorthand for `config.style_blend_weights`.
    hooks: `nst_jax.hooks` objects (progress, metrics, previews, stop).
    regions, region_sources: spatial control, one mask per painting (`engine.Job`, docs/spatial-control.md).
  """
  config = ml_collections.ConfigDict((config or settings.resolve()).to_dict())
  if style_blend_weights is not None:
    config.style_blend_weights = tuple(float(w) for w in style_blend_weights)
  weights = weights or weights_lib.load_vgg19(None)
  job = engine.Job(content=content, styles=engine.as_style_list(style), config=config, regions=regions,
                   region_sources=region_sources)
  (result,) = engine.Engine(weights).run([job], hooks=hooks)
  return result.image
