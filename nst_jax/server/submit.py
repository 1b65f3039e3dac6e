"""A job submission (`POST /api/jobs`): form fields -> validated options, uploads -> the job's input files.

Form fields are settings by their one name (docs/settings.md): every name of `settings.NAMES` plus the
shorthands (`preset`, `scales`, `epochs`, `steps_per_epoch`). Files: `content` (a photo) or `video` (a short
clip: a video job, `nst-jax video`), `style` and an optional second painting `style2` (blended with
`style_blend_weights`); spatial control (docs/spatial-control.md, photos only): optional masks
`style_region` and `style2_region` (where each painting applies: one per painting, or none) and
`style_region_source`, `style2_region_source` (which part of each painting to take the style from). Video
settings (temporal_weight, video_mode, ...) are accepted with a clip only. An unknown field or an invalid
value is a 422 naming it; nothing is ever dropped silently. Server defaults where a field is empty:
`max_size` 256, and `steps` 300 (a clip: 100 per frame) unless the preset sets its own (the quality preset
runs its 100 iterations).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import tempfile
from typing import Any

import numpy as np
from PIL import Image

from nst_jax import alpha, engine, image_io, inputs, regions, settings, video_io
from nst_jax.configs import presets
from nst_jax.errors import NstJaxError
from nst_jax.server.worker import (AUDIO_FILE, CLIP_FILE, FRAMES_DIR, REGION_FILES, SOURCE_FILES, STYLE_FILES,
                                   job_config)

IMAGE_FIELDS = ("content", "style", "style2")
REGION_FIELDS = ("style_region", "style2_region")
SOURCE_FIELDS = ("style_region_source", "style2_region_source")
FILE_FIELDS = IMAGE_FIELDS + ("video",) + REGION_FIELDS + SOURCE_FIELDS
OPTIONAL_FILES = ("style2",) + REGION_FIELDS + SOURCE_FIELDS
SETTING_FIELDS = settings.NAMES + tuple(settings.SHORTHANDS)
DEFAULT_VIDEO_STEPS = 100  # Per frame (a clip's later frames start from the warped previous result).
# Clip limits of the web server (`create_app` arguments; docs/web.md): a short clip, not a film.
DEFAULT_MAX_VIDEO_SECONDS = 10.0
DEFAULT_MAX_VIDEO_FRAMES = 250
DEFAULT_MAX_VIDEO_PIXELS = 3840 * 2160  # Per decoded frame (4K UHD); frames are stored at most max_size.


class SubmitError(Exception):
  """A bad submission: HTTP `status` and a message naming the field or file."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status


@dataclasses.dataclass
class Limits:
  """What the server accepts (see `create_app`)."""
  max_size: int
  max_steps: int
  max_pixels: int
  max_video_seconds: float = DEFAULT_MAX_VIDEO_SECONDS
  max_video_frames: int = DEFAULT_MAX_VIDEO_FRAMES
  max_video_pixels: int = DEFAULT_MAX_VIDEO_PIXELS


def split_form(items: list[tuple[str, Any]]) -> tuple[dict[str, Any], dict[str, str]]:
  """The multipart form's `(key, value)` pairs -> `(files, fields)`: the uploads by file field name (content
  or video, and style required; style2 optional) and the text fields. A field given twice, a file where
  text is expected or text where a file is expected is a 422 naming it."""
  seen: set[str] = set()
  files, fields = {}, {}
  for key, value in items:
    if key in seen:
      hint = " (a second painting goes in style2)" if key == "style" else ""
      raise SubmitError(422, f"{key}: given more than once{hint}")
    seen.add(key)
    is_file = not isinstance(value, str)
    if key in FILE_FIELDS:
      if not is_file:
        if key in OPTIONAL_FILES and value.strip() == "":
          continue  # An empty field keeps the default: no second painting, no region.
        kind = "a video file" if key == "video" else "an image file"
        raise SubmitError(422, f"{key}: {kind} is expected, not text")
      files[key] = value
    elif is_file:
      raise SubmitError(422, f"unknown file field {key!r}: the files are {', '.join(FILE_FIELDS)}")
    else:
      fields[key] = value
  if "content" in files and "video" in files:
    raise SubmitError(422, "give either content (a photo) or video (a clip), not both")
  if "content" not in files and "video" not in files:
    raise SubmitError(422, "content: an image file is required (or a clip in video)")
  if "style" not in files:
    raise SubmitError(422, "style: an image file is required")
  return files, fields


def page_defaults(limits: Limits) -> tuple[int, int]:
  """`(max_size, steps)` of a picture job that gives neither: this machine's defaults (`settings.resolve`: 256
  px x 100 steps without an accelerator, 512 x 500 with one, as in every other path), within the limits."""
  config = settings.resolve({})
  return min(int(config.max_size), limits.max_size), min(int(config.steps), limits.max_steps)


def parse_options(fields: dict[str, str], limits: Limits, num_styles: int, kind: str = "image"
                  ) -> tuple[dict, object]:
  """Form fields -> `(options, config)`: the given settings (empty ones dropped) plus the server defaults.
  `kind` 'video': the video settings are allowed and `steps` are per frame."""
  unknown = sorted(set(fields) - set(SETTING_FIELDS))
  if unknown:
    raise SubmitError(422, f"unknown field(s) {', '.join(unknown)}: the fields are settings by name "
                           f"(docs/settings.md) and the files content (or video), style, style2")
  options = {k: v.strip() for k, v in fields.items() if v.strip() != ""}
  size, steps = page_defaults(limits)
  options.setdefault("max_size", str(size))
  try:
    preset = presets.get_preset(options.get("preset", presets.DEFAULT_PRESET))
    if "steps" not in options and "steps" not in preset and "epochs" not in options:
      options["steps"] = str(min(DEFAULT_VIDEO_STEPS, limits.max_steps) if kind == "video" else steps)
    config = job_config(options, num_styles, kind)
  except NstJaxError as e:
    raise SubmitError(422, str(e)) from None
  if not image_io.MIN_SIZE <= config.max_size <= limits.max_size:
    raise SubmitError(422, f"max_size must be between {image_io.MIN_SIZE} and {limits.max_size} pixels")
  if not 1 <= config.steps <= limits.max_steps:
    raise SubmitError(422, f"steps must be between 1 and {limits.max_steps}")
  return options, config


def decode_upload(data: bytes, what: str, max_pixels: int, keep_alpha: bool = True) -> np.ndarray:
  """Upload bytes -> float32 `[H, W, 3]` (`[H, W, 4]` if transparent and `keep_alpha`: `nst_jax.alpha`);
  `SubmitError` 413 (too many pixels) or 415 (not an image)."""
  if not data:
    raise SubmitError(415, f"{what}: the file is empty")
  try:
    with Image.open(io.BytesIO(data)) as img:
      width, height = img.size
  except Image.DecompressionBombError:
    raise SubmitError(413, f"{what}: image is too large to decode safely (limit {max_pixels:,} pixels)")
  except Exception:
    raise SubmitError(415, f"{what}: not an image file (use JPEG, PNG, WebP, GIF, BMP or TIFF)")
  if width * height > max_pixels:
    raise SubmitError(413, f"{what}: {width}x{height} pixels is over the limit of {max_pixels:,} pixels")
  source = io.BytesIO(data)
  source.name = what
  try:
    if keep_alpha:  # A transparent photo or painting stays RGBA; masks are greyscale pictures.
      return image_io.open_image_keep_alpha(source, max_pixels=max_pixels)
    return image_io.open_image(source, max_pixels=max_pixels)
  except NstJaxError as e:
    raise SubmitError(415, str(e)) from None


def _capped(image: np.ndarray, longest: int) -> np.ndarray:
  """The upload as decoded, or resized to `longest` when larger (the engine resizes it again per job)."""
  return image if max(image.shape[:2]) <= longest else image_io.resize_longest(image, longest)


def region_masks(masks: dict[str, np.ndarray], num_styles: int) -> tuple[list | None, list | None]:
  """The decoded mask uploads by field -> `(regions, sources)` lists in painting order (None when absent);
  a region or source for a painting that was not given is a 422."""
  lists = []
  for fields in (REGION_FIELDS, SOURCE_FIELDS):
    given = [name for name in fields if name in masks]
    extra = [name for name in given if fields.index(name) >= num_styles]
    if extra:
      raise SubmitError(422, f"{extra[0]}: there is no second painting (style2) for it")
    if not given:
      lists.append(None)
    elif len(given) != num_styles and fields is REGION_FIELDS:
      raise SubmitError(422, f"{len(given)} style region(s) for {num_styles} paintings: give "
                             f"{' and '.join(fields[:num_styles])}, or none")
    else:
      lists.append([masks.get(name) for name in fields[:num_styles]])
  return lists[0], lists[1]


def write_inputs(folder: str, content: np.ndarray, styles: list[np.ndarray], config, limits: Limits,
                 masks: dict[str, np.ndarray] | None = None) -> dict:
  """Writes `content.png`, `style.png` (and `style2.png`, and the region masks) into the new job folder;
  returns its size fields.

  Inputs are kept as uploaded (8-bit, lossless) unless larger than the server's largest output, so a job
  prepares them exactly as the command prepares the same files (`inputs.load_job`).
  """
  photo, _ = inputs.prepare_content(content, int(config.max_size))  # Checks it; the job prepares it again.
  alpha.split(content)  # A fully transparent photo is refused before it is queued.
  for i, style in enumerate(styles, start=1):
    alpha.split(style, f"style image {i}")
  region_list, source_list = region_masks(masks or {}, len(styles))
  regions.check(region_list, source_list, content.shape, [s.shape for s in styles])
  stages = engine.plan(config, photo.shape)
  os.makedirs(folder)
  try:
    image_io.save_image(os.path.join(folder, "content.png"), _capped(content, limits.max_size))
    cap = max(limits.max_size, inputs.style_size(config))
    for name, style in zip(STYLE_FILES, styles):
      image_io.save_image(os.path.join(folder, name), _capped(style, cap))
    for files, masks_of in ((REGION_FILES, region_list), (SOURCE_FILES, source_list)):
      for name, mask in zip(files, masks_of or []):
        if mask is not None:  # As uploaded (a colour mask is converted when the job reads it, as the command).
          image_io.save_image(os.path.join(folder, name), _capped(mask, cap))
  except Exception:
    shutil.rmtree(folder, ignore_errors=True)
    raise
  return {"height": photo.shape[0], "width": photo.shape[1], "steps": sum(s.steps for s in stages)}


def read_video_upload(data: bytes, limits: Limits) -> tuple[video_io.Clip, str]:
  """Upload bytes -> `(clip, path of a temporary copy)` (the caller removes it once the inputs are written);
  `SubmitError` 413 (over a clip limit) or 415 (not a clip FFmpeg reads, no frames)."""
  if not data:
    raise SubmitError(415, "video: the file is empty")
  fd, path = tempfile.mkstemp(prefix="nst-jax-upload-")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    clip = video_io.read_clip(path, None, max_frames=limits.max_video_frames, max_seconds=limits.max_video_seconds,
                              max_pixels=limits.max_video_pixels)
  except video_io.ClipTooLarge as e:
    os.remove(path)
    raise SubmitError(413, _upload_message(str(e), path)) from None
  except NstJaxError as e:
    os.remove(path)
    raise SubmitError(415, _upload_message(str(e), path)) from None
  except BaseException:
    os.remove(path)
    raise
  return clip, path


def _upload_message(message: str, path: str) -> str:
  """A clip error with the server's temporary path replaced by the field name."""
  return message.replace(path, "video")


def _selected(clip: video_io.Clip, config, upload: str) -> video_io.Clip:
  """The part of an uploaded clip its settings select (`video_io.select`), errors naming the field."""
  selection = video_io.Selection.from_config(config)
  if selection.fps is not None:
    raise NstJaxError("fps is for a folder of frames; an uploaded video file has its own frame rate")
  try:
    return video_io.select(clip, selection)
  except NstJaxError as e:
    raise NstJaxError(_upload_message(str(e), upload)) from None


def write_video_inputs(folder: str, clip: video_io.Clip, upload: str, styles: list[np.ndarray], config,
                       limits: Limits) -> dict:
  """Writes a video job's inputs: `frames/frame_00001.png`... (as decoded, capped at the server's largest
  output), `content.png` (the first frame, for thumbnails), the paintings, `clip.json` (frame rate) and
  `audio.m4a` (the clip's sound re-encoded, if any). Only the part of the clip that the settings `start`,
  `duration` or `frames` select is kept (`fps` is refused: an uploaded file has its own rate). Returns its
  size fields (steps: of the first frame; frames: of the part)."""
  clip = _selected(clip, config, upload)
  inputs.prepare_content(clip.frames[0], int(config.max_size), "video frame")  # Checks the size.
  height, width = video_io.even_size(*clip.frames[0].shape[:2], int(config.max_size))  # What is stylised.
  stages = engine.plan(config, (height, width, 3))
  os.makedirs(folder)
  try:
    frames = [_capped(frame, limits.max_size) for frame in clip.frames]
    video_io.write_frames(os.path.join(folder, FRAMES_DIR), frames)
    image_io.save_image(os.path.join(folder, "content.png"), frames[0])
    for name, style in zip(STYLE_FILES, styles):
      cap = max(limits.max_size, inputs.style_size(config))
      image_io.save_image(os.path.join(folder, name), _capped(style, cap))
    if clip.has_audio:
      video_io.write_audio(os.path.join(folder, AUDIO_FILE), upload, len(clip.frames) / clip.fps, clip.start)
    with image_io.atomic_write(os.path.join(folder, CLIP_FILE), "w") as f:
      json.dump({"fps": clip.fps, "frames": len(clip.frames), "start": clip.start}, f)
  except Exception:
    shutil.rmtree(folder, ignore_errors=True)
    raise
  return {"height": height, "width": width, "steps": sum(s.steps for s in stages), "frames": len(clip.frames)}
