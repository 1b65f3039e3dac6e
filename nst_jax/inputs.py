"""Image files -> an engine `Job`: what every front end that reads files does with a photo and paintings.

    job, notes = inputs.load_job("photo.jpg", ["a.jpg", "b.jpg"], config, name="out.png")

The photo is resized so its longest side is `config.max_size`; each painting by the engine's one rule
(`engine.resize_style`: `config.style_scale * max_size`, its short side at least `image_io.MIN_SIZE`), once,
from the file; the engine's last stage then uses it as it is, and coarser stages resize it from this copy.
`notes` are one-line messages about what happened that a user might not expect (an upscaled photo).
"""

from __future__ import annotations

from typing import Sequence

import ml_collections
import numpy as np

from nst_jax import alpha, engine, image_io, regions
from nst_jax.errors import NstJaxError


def prepare_content(image: np.ndarray, max_size: int, what: str = "content image") -> tuple[np.ndarray, list[str]]:
  """The photo at the output size, and notes. A photo whose short side is under `image_io.MIN_SIZE`
  pixels is refused (it holds no picture to keep); one smaller than `max_size` is upscaled, with a note."""
  height, width = image.shape[:2]
  if min(height, width) < image_io.MIN_SIZE:
    raise NstJaxError(f"{what} is {width}x{height} pixels; its short side must be at least {image_io.MIN_SIZE} px")
  notes = []
  if max(height, width) < max_size:
    out_h, out_w = image_io.fit_size(height, width, max_size)
    notes.append(f"{what} {width}x{height} upscaled to {out_w}x{out_h} (max_size {max_size})")
  return image_io.resize_longest(image, image_io.check_size(int(max_size), "max_size")), notes


def style_size(config: ml_collections.ConfigDict) -> int:
  """`style_scale x max_size` (at least `image_io.MIN_SIZE`): the longest side of a painting of ordinary aspect
  ratio (`prepare_painting` raises it for a very long or tall one). Upload caps use it."""
  return max(image_io.MIN_SIZE, round(float(config.style_scale) * int(config.max_size)))


def prepare_painting(image: np.ndarray, config: ml_collections.ConfigDict) -> np.ndarray:
  """A painting (RGB or RGBA, any size) at the size the job's output stage uses: `engine.resize_style`."""
  size = int(config.max_size)
  return engine.resize_style(image, (size, size), float(config.style_scale))


def load_painting(path: str, config: ml_collections.ConfigDict, *, keep_alpha: bool = True) -> np.ndarray:
  """`prepare_painting` of a file (or `skimage:NAME`): decoded once, resized once."""
  image = image_io.open_image_keep_alpha(path) if keep_alpha else image_io.open_image(path)
  return prepare_painting(image, config)


def prepare_masks(images: Sequence[np.ndarray | None] | None, what: str, max_size: int, names: Sequence[str] = ()
                  ) -> tuple[list | None, list[str]]:
  """Decoded masks (one per style; a None entry stays None) -> float32 `[H, W]` arrays at most `max_size` on
  their longest side (`regions.prepare_mask`), and notes; `names[i]` (a path or field) names mask i in them."""
  if not images:
    return None, []
  masks, notes = [], []
  for i, image in enumerate(images, start=1):
    if image is None:
      masks.append(None)
      continue
    name = names[i - 1] if i <= len(names) else ""
    mask, mask_notes = regions.prepare_mask(image, f"{what} {i}", max_size, name)
    masks.append(mask)
    notes += mask_notes
  return masks, notes


def open_masks(paths: Sequence[str | None] | None, what: str) -> list | None:
  """Mask files (`style_region` or `style_region_source`, one per style; a None entry stays None), decoded
  once (`regions.open_mask`)."""
  if not paths:
    return None
  return [None if path is None else regions.open_mask(path, f"{what} {i}") for i, path in enumerate(paths, 1)]


def prepare_job(content: np.ndarray, styles: Sequence[np.ndarray], config: ml_collections.ConfigDict, *,
                name: str = "", checkpoint_dir: str | None = None, style_regions: Sequence | None = None,
                style_region_sources: Sequence | None = None, mask_names: tuple[Sequence[str], Sequence[str]] = ((), ())
                ) -> tuple[engine.Job, list[str]]:
  """Decoded images (a photo and paintings as `image_io.open_image_keep_alpha` returns them, any size; masks
  as `regions.open_mask` returns them, None entries allowed) -> `(job, notes)`: each resized once, by the
  command's rules, and checked (alpha, regions) before any work. `load_job` (files) and the web server
  (uploads) both prepare jobs here, so the same file gives the same job."""
  if not styles:
    raise NstJaxError("at least one style image is needed")
  photo, notes = prepare_content(content, int(config.max_size))
  alpha.split(photo)  # A fully transparent photo is an error before any work.
  paintings = [prepare_painting(style, config) for style in styles]
  for i, painting in enumerate(paintings, start=1):
    alpha.split(painting, f"style image {i}")
  masks, mask_notes = prepare_masks(style_regions, "style_region", int(config.max_size), mask_names[0])
  sources, source_notes = prepare_masks(style_region_sources, "style_region_source",
                                        max([max(p.shape[:2]) for p in paintings]), mask_names[1])
  regions.check(masks, sources, photo.shape, [p.shape for p in paintings])
  return engine.Job(content=photo, styles=paintings, config=config, name=name, checkpoint_dir=checkpoint_dir,
                    regions=masks, region_sources=sources), notes + mask_notes + source_notes


def load_job(content: str, styles: Sequence[str], config: ml_collections.ConfigDict, *, name: str = "",
             checkpoint_dir: str | None = None, style_regions: Sequence[str] | None = None,
             style_region_sources: Sequence[str] | None = None) -> tuple[engine.Job, list[str]]:
  """Reads the photo, paintings (paths or `skimage:NAME`) and region masks into a `Job`; returns `(job, notes)`.

  A transparent photo or painting (`nst_jax.alpha`) stays RGBA `[H, W, 4]` in the job; others are RGB.
  `style_regions` / `style_region_sources`: one mask file per painting, or None (see `nst_jax.regions`);
  masks are read at most at the photo's / painting's size and checked by the engine's rules here, so a bad
  mask is an error before any work. Each file is decoded once, then prepared by `prepare_job`.
  """
  return prepare_job(image_io.open_image_keep_alpha(content), [image_io.open_image_keep_alpha(p) for p in styles],
                     config, name=name, checkpoint_dir=checkpoint_dir,
                     style_regions=open_masks(style_regions, "style_region"),
                     style_region_sources=open_masks(style_region_sources, "style_region_source"),
                     mask_names=([p or "" for p in style_regions or ()], [p or "" for p in style_region_sources or ()]))
