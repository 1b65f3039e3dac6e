"""A job submission (`POST /api/jobs`, `POST /api/estimate`): the multipart form -> validated options and the
job's prepared inputs, stored for the worker.

Form fields are settings by their one name (docs/settings.md): every name of `settings.NAMES` plus the
shorthands (`preset`, `scales`, `epochs`, `steps_per_epoch`). Files: `content` (a photo) or `video` (a short
clip: a video job, `nst-jax video`), and `style`, repeated for more paintings (in order, blended with
`style_blend_weights`: the command's repeated `--style`, the manifest's `a;b`). Spatial control
(docs/spatial-control.md, photos only): `style_region` repeated in the same order (one mask per painting, or
none) and `style_region_source` (which part of each painting to take the style from; an empty field keeps a
painting whole, missing trailing ones too). `style2`, `style2_region`, `style2_region_source` are the old
names of a second painting and its masks: accepted for one release, with a note in the response's
`warnings`. Video settings (temporal_weight, video_mode, ...) are accepted with a clip only. An unknown field
or an invalid value is a 422 naming it; nothing is ever dropped silently. Where `max_size` or `steps` is
empty: this machine's defaults (`page_defaults`, as in every path), within the limits; a clip's steps are
`DEFAULT_VIDEO_STEPS` per frame; a preset's own steps win (the quality preset runs its 100 iterations).

Each upload is decoded once and prepared once by the command's functions (`inputs.prepare_job`); the worker
runs from those float32 arrays (`worker.input_name`), so a web job is the command's job for the same files.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import shutil
import tempfile
from typing import Any

import numpy as np
from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from PIL import Image

from nst_jax import engine, image_io, inputs, settings, video_io
from nst_jax.configs import presets
from nst_jax.errors import NstJaxError
from nst_jax.server.jobs import JobStore, new_job_id
from nst_jax.server.limits import Limits
from nst_jax.server.worker import AUDIO_FILE, CLIP_FILE, FRAMES_DIR, input_name, job_config

REPEATED_FIELDS = ("style", "style_region", "style_region_source")  # One per painting, in painting order.
# The old names of a second painting and its masks -> the repeated field they are the second of.
ALIASES = {"style2": "style", "style2_region": "style_region", "style2_region_source": "style_region_source"}
FILE_FIELDS = ("content", "video") + REPEATED_FIELDS + tuple(ALIASES)
OPTIONAL_FILES = ("style_region", "style_region_source") + tuple(ALIASES)
REGION_FIELDS = ("style_region",)
SETTING_FIELDS = settings.NAMES + tuple(settings.SHORTHANDS)
DEFAULT_VIDEO_STEPS = 100  # Per frame (a clip's later frames start from the warped previous result).


class SubmitError(Exception):
  """A bad submission: HTTP `status` and a message naming the field or file."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status


@dataclasses.dataclass
class Form:
  """A submission's form: the uploads (paintings and masks in painting order; a None mask: none for that
  painting), the text fields, and notes about deprecated field names."""
  fields: dict[str, str]
  styles: list
  content: Any = None
  video: Any = None
  regions: list | None = None
  sources: list | None = None
  warnings: list[str] = dataclasses.field(default_factory=list)


def split_form(items: list[tuple[str, Any]]) -> Form:
  """The multipart form's `(key, value)` pairs -> a `Form`. `style`, `style_region` and `style_region_source`
  may repeat (an empty `style_region_source` keeps that painting whole); other fields given twice, a file
  where text is expected or text where a file is expected are a 422 naming the field."""
  single, repeated, fields = {}, {name: [] for name in REPEATED_FIELDS}, {}
  for key, value in items:
    is_file = not isinstance(value, str)
    if key in FILE_FIELDS:
      if not is_file and (key not in OPTIONAL_FILES or value.strip() != ""):
        kind = "a video file" if key == "video" else "an image file"
        raise SubmitError(422, f"{key}: {kind} is expected, not text")
      value = value if is_file else None  # An empty optional field: none (a placeholder when repeated).
    elif is_file:
      raise SubmitError(422, f"unknown file field {key!r}: the files are {', '.join(FILE_FIELDS[:5])}")
    if key in repeated:
      repeated[key].append(value)
    elif key in single or key in fields:
      raise SubmitError(422, f"{key}: given more than once")
    elif key in FILE_FIELDS:
      single[key] = value
    else:
      fields[key] = value
  form = Form(fields=fields, styles=repeated["style"], content=single.get("content"), video=single.get("video"),
              regions=repeated["style_region"] or None, sources=repeated["style_region_source"] or None)
  _apply_aliases(form, single)
  if form.content is not None and form.video is not None:
    raise SubmitError(422, "give either content (a photo) or video (a clip), not both")
  if form.content is None and form.video is None:
    raise SubmitError(422, "content: an image file is required (or a clip in video)")
  if not form.styles:
    raise SubmitError(422, "style: an image file is required")
  return form


def _apply_aliases(form: Form, single: dict) -> None:
  """`style2`, `style2_region`, `style2_region_source` -> the second entry of their repeated field, with a
  deprecation note in `form.warnings`."""
  for alias, field in ALIASES.items():
    if alias not in single:
      continue
    upload, attribute = single[alias], {"style": "styles", "style_region": "regions"}.get(field, "sources")
    form.warnings.append(f"{alias} is deprecated and will be removed in the next release: give the second "
                         f"{'painting' if field == 'style' else 'mask'} as a second {field} field")
    if upload is None:
      continue
    given = getattr(form, attribute) or []
    if field == "style" and not given:
      raise SubmitError(422, "style: an image file is required (style2 is a second painting)")
    if field != "style" and len(form.styles) < 2:
      raise SubmitError(422, f"{alias}: there is no second painting (style2) for it")
    if len(given) > 1:
      raise SubmitError(422, f"{alias}: give the paintings and masks as repeated {field} fields, not both")
    setattr(form, attribute, (given or [None]) + [upload])


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
                           f"(docs/settings.md) and the files content (or video), style (repeated for more paintings)")
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


def _decode_all(datas: list[bytes | None] | None, what: str, max_pixels: int, keep_alpha: bool
                ) -> list | None:
  """`decode_upload` of each upload (`what 1`, `what 2`...; a None entry stays None); None when all are."""
  if not datas or all(data is None for data in datas):
    return None
  return [None if data is None else decode_upload(data, f"{what} {i}", max_pixels, keep_alpha)
          for i, data in enumerate(datas, start=1)]


def prepare_picture(data: dict, config, max_pixels: int) -> engine.Job:
  """The uploads' bytes (`content`, and lists `styles`, `regions`, `sources` in painting order) -> the engine
  job the command makes of the same files: each decoded once and prepared by `inputs.prepare_job`."""
  photo = decode_upload(data["content"], "content image", max_pixels)
  paintings = _decode_all(data["styles"], "style image", max_pixels, keep_alpha=True)
  masks = _decode_all(data["regions"], "style_region", max_pixels, keep_alpha=False)
  missing = [i for i, mask in enumerate(masks or [], start=1) if mask is None]
  if missing:
    raise SubmitError(422, f"style_region {missing[0]}: no mask given: give one style_region per painting, in "
                           f"the same order, or none")
  sources = _decode_all(data["sources"], "style_region_source", max_pixels, keep_alpha=False)
  if sources is not None and len(sources) < len(paintings):
    sources += [None] * (len(paintings) - len(sources))  # Paintings without a source mask are taken whole.
  try:
    return inputs.prepare_job(photo, paintings, config, style_regions=masks, style_region_sources=sources)[0]
  except NstJaxError as e:
    raise SubmitError(422, str(e)) from None


def check_steps(config, shape, limits: Limits) -> int:
  """The job's steps over all its scales (`engine.plan`); a 422 over the server's limit."""
  steps = sum(stage.steps for stage in engine.plan(config, shape))
  if steps > limits.max_steps:
    raise SubmitError(422, f"{steps} steps over all scales is over the limit of {limits.max_steps}")
  return steps


def _save_array(folder: str, field: str, index: int, image: np.ndarray, display: bool) -> None:
  """An input as the job runs from it (`.npy`, float32) and, for the page, as an 8-bit PNG."""
  np.save(os.path.join(folder, input_name(field, index)), np.asarray(image, np.float32), allow_pickle=False)
  if display:
    image_io.save_image(os.path.join(folder, input_name(field, index, ".png")), image)


def write_inputs(folder: str, job: engine.Job, limits: Limits) -> dict:
  """Stores a prepared picture job's inputs in its new folder (`worker.input_name`: the float32 arrays the
  worker runs from, lossless, and PNG copies for the page); returns its size fields."""
  steps = check_steps(job.config, job.content.shape, limits)
  os.makedirs(folder)
  try:
    _save_array(folder, "content", 1, job.content, display=True)
    for i, painting in enumerate(job.styles, start=1):
      _save_array(folder, "style", i, painting, display=True)
    for field, masks in (("style_region", job.regions), ("style_region_source", job.region_sources)):
      for i, mask in enumerate(masks or [], start=1):
        if mask is not None:
          _save_array(folder, field, i, mask, display=False)
  except Exception:
    shutil.rmtree(folder, ignore_errors=True)
    raise
  return {"height": job.content.shape[0], "width": job.content.shape[1], "steps": steps}


def label(*names: str | None) -> str:
  """A display label from the uploaded file names (shown as text only; never used as a path)."""
  clean = [re.sub(r"[\x00-\x1f\x7f]", "", os.path.basename(n or "image"))[:100] for n in names]
  return " + ".join(clean)


async def read_form(request: Request) -> Form:
  """The multipart form as a `Form`, or a 422."""
  try:
    form = await request.form()
  except Exception:
    raise SubmitError(422, "expected a multipart form with the files content and style") from None
  return split_form(form.multi_items())


async def _read_all(uploads: list | None) -> list | None:
  return None if uploads is None else [None if u is None else await u.read() for u in uploads]


async def _picture_job(form: Form, limits: Limits) -> tuple[dict, engine.Job]:
  """`(options, job)` of a photo's form: settings validated, uploads decoded and prepared (off the event loop)."""
  options, config = parse_options(form.fields, limits, num_styles=len(form.styles))
  data = {"content": await form.content.read(), "styles": await _read_all(form.styles),
          "regions": await _read_all(form.regions), "sources": await _read_all(form.sources)}
  return options, await run_in_threadpool(prepare_picture, data, config, limits.max_pixels)


async def estimate_job(request: Request, limits: Limits) -> engine.Job:
  """The engine job a submission would make, prepared as the worker runs it (nothing is stored)."""
  form = await read_form(request)
  if form.video is not None:
    raise SubmitError(422, "video: estimates are made for photos (a clip costs about its frame count times a "
                           "photo of the frame size)")
  return (await _picture_job(form, limits))[1]


async def create_job(request: Request, store: JobStore, limits: Limits) -> tuple[dict, list[str]]:
  """Validates a submission, prepares its inputs and stores a queued job; returns `(job, warnings)`."""
  form = await read_form(request)
  if form.video is not None:
    return await _create_video_job(request, store, limits, form), form.warnings
  options, job = await _picture_job(form, limits)
  job_id = new_job_id()
  sizes = await run_in_threadpool(write_inputs, store.job_dir(job_id), job, limits)
  return store.create(job_id=job_id, owner=request.state.owner, options=options,
                      label=label(form.content.filename, *(u.filename for u in form.styles)), **sizes), form.warnings


async def _create_video_job(request: Request, store: JobStore, limits: Limits, form: Form) -> dict:
  """A clip's job: settings (video ones allowed), the clip decoded within the limits, its frames stored."""
  from nst_jax import video
  if form.regions or form.sources:
    raise SubmitError(422, f"{'style_region' if form.regions else 'style_region_source'}: spatial control is "
                           f"for photos, not clips")
  options, config = parse_options(form.fields, limits, num_styles=len(form.styles), kind="video")
  clip, upload = await run_in_threadpool(read_video_upload, await form.video.read(), limits)
  try:
    datas = await _read_all(form.styles)
    paintings = await run_in_threadpool(_decode_all, datas, "style image", limits.max_pixels, False)
    job_id = new_job_id()
    try:
      sizes = await run_in_threadpool(write_video_inputs, store.job_dir(job_id), clip, upload, paintings, config,
                                      limits)
    except NstJaxError as e:
      raise SubmitError(422, str(e)) from None
  finally:
    os.remove(upload)
  sizes["frames"] *= len(video.pass_plan(config))
  return store.create(job_id=job_id, owner=request.state.owner, options=options, kind="video",
                      label=label(form.video.filename, *(u.filename for u in form.styles)), **sizes)


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


def _capped(image: np.ndarray, longest: int) -> np.ndarray:
  """A clip frame as decoded, or resized to `longest` when larger (the worker prepares it per job)."""
  return image if max(image.shape[:2]) <= longest else image_io.resize_longest(image, longest)


def write_video_inputs(folder: str, clip: video_io.Clip, upload: str, styles: list[np.ndarray], config,
                       limits: Limits) -> dict:
  """Writes a video job's inputs: `frames/frame_00001.png`... (as decoded, capped at the server's largest
  output), `content.png` (the first frame, for thumbnails), the prepared paintings, `clip.json` (frame rate)
  and `audio.m4a` (the clip's sound re-encoded, if any). Only the part of the clip that the settings `start`,
  `duration` or `frames` select is kept (`fps` is refused: an uploaded file has its own rate). Returns its
  size fields (steps: of the first frame; frames: of the part)."""
  clip = _selected(clip, config, upload)
  inputs.prepare_content(clip.frames[0], int(config.max_size), "video frame")  # Checks the size.
  height, width = video_io.even_size(*clip.frames[0].shape[:2], int(config.max_size))  # What is stylised.
  steps = check_steps(config, (height, width, 3), limits)
  os.makedirs(folder)
  try:
    frames = [_capped(frame, limits.max_size) for frame in clip.frames]
    video_io.write_frames(os.path.join(folder, FRAMES_DIR), frames)
    image_io.save_image(os.path.join(folder, "content.png"), frames[0])
    for i, style in enumerate(styles, start=1):  # Prepared once, as `nst-jax video` prepares a painting.
      _save_array(folder, "style", i, inputs.prepare_painting(style, config), display=True)
    if clip.has_audio:
      video_io.write_audio(os.path.join(folder, AUDIO_FILE), upload, len(clip.frames) / clip.fps, clip.start)
    with image_io.atomic_write(os.path.join(folder, CLIP_FILE), "w") as f:
      json.dump({"fps": clip.fps, "frames": len(clip.frames), "start": clip.start}, f)
  except Exception:
    shutil.rmtree(folder, ignore_errors=True)
    raise
  return {"height": height, "width": width, "steps": steps, "frames": len(clip.frames)}
