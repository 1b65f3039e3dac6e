"""Video clips <-> lists of float32 `[H, W, 3]` frames in [0, 1]. The only video IO in the package.

Reading takes a video file (mp4, mov, webm, mkv, gif... anything FFmpeg decodes) through PyAV, whose wheels
ship FFmpeg, or a folder of numbered frames. Writing encodes H.264 (mp4, mov) or VP9 (webm), yuv420p, at the
input's frame rate, with the input's audio re-encoded (AAC or Opus) when there is some. Both refuse bad
input with a one-line `NstJaxError`, and a failed write leaves no file behind.
"""

from __future__ import annotations

import dataclasses
import fractions
import math
import os
import re
import tempfile
from typing import Sequence

import numpy as np
from PIL import Image

from nst_jax import image_io
from nst_jax.errors import NstJaxError

# Limits for inputs ("absurd" clips fail before anything is decoded where the header tells):
MAX_FRAMES = 10_000  # Frames of one clip (~5.5 min at 30 fps); style transfer costs seconds per frame.
MAX_SECONDS = 600.0  # Duration of one clip (10 minutes).
MAX_FRAME_PIXELS = 36_000_000  # Decoded pixels per frame: a little over 8K UHD (7680 x 4320 = 33.2 M).
DEFAULT_FPS = 25.0  # For a folder of frames, and a file that does not say its rate.

# Output containers: extension -> (muxer, video codec, pixel format, audio codec).
# yuv420p (what every player decodes) stores colour at half resolution, so odd sizes are padded by one
# row or column repeating the edge (no stylised pixel is lost; the player shows the extra line).
FORMATS = {
    ".mp4": ("mp4", "libx264", "yuv420p", "aac"),
    ".mov": ("mov", "libx264", "yuv420p", "aac"),
    ".webm": ("webm", "libvpx-vp9", "yuv420p", "libopus"),
}
# Encoder quality: constant-quality modes (lower is better; x264's 18 is close to visually lossless).
_ENCODER_OPTIONS = {"libx264": {"crf": "18", "preset": "medium"}, "libvpx-vp9": {"crf": "24", "b": "0"}}
_OPUS_RATE = 48_000  # Opus encodes at 48 kHz only.


class ClipTooLarge(NstJaxError):
  """A clip over a limit (frames, seconds or pixels per frame): the web server answers 413, not 415."""


@dataclasses.dataclass
class Clip:
  """A decoded clip.

  Attributes:
    frames: float32 `[H, W, 3]` in [0, 1], all one size, in display order.
    fps: frames per second (a folder of frames: `Selection.fps`, else `DEFAULT_FPS`).
    source: the path read.
    has_audio: whether the file has an audio stream (`write_video(audio_from=source, audio_start=start)`
      keeps it).
    start: seconds of the source before the first frame kept (`Selection.start`).
    total: frames of the whole source (before a selection).
  """
  frames: list[np.ndarray]
  fps: float
  source: str
  has_audio: bool
  start: float = 0.0
  total: int = 0


@dataclasses.dataclass(frozen=True)
class Selection:
  """The part of a clip to stylise (the video settings `start`, `duration`, `frames`, `fps`).

  Frame i of the source is at i / fps seconds; the part is the frames from `start` on, `frames` of them or
  those within `duration` seconds (None: to the end). `fps` gives a folder of frames its rate (a video file
  has its own: giving it one is refused)."""
  start: float = 0.0
  duration: float | None = None
  frames: int | None = None
  fps: float | None = None

  @classmethod
  def from_config(cls, config) -> Selection:
    """The selection of a resolved video config (`settings.resolve(..., scope="video")`)."""
    duration, frames, fps = config.get("duration"), config.get("frames"), config.get("fps")
    return cls(start=float(config.get("start") or 0.0), duration=None if duration is None else float(duration),
               frames=None if frames is None else int(frames), fps=None if fps is None else float(fps))

  def first(self, fps: float) -> int:
    """Index of the first frame kept at `fps`."""
    return math.ceil(self.start * fps - 1e-6)

  def stop(self, fps: float) -> int | None:
    """Index after the last frame kept at `fps` (None: to the end)."""
    if self.frames is not None:
      return self.first(fps) + self.frames
    if self.duration is not None:
      return self.first(fps) + max(1, round(self.duration * fps))
    return None


def select(clip: Clip, selection: Selection) -> Clip:
  """The part of `clip` (all of it, as read) that `selection` keeps, or a one-line `NstJaxError` when it
  starts past the end. A part longer than what is left is cut at the end."""
  first, stop = selection.first(clip.fps), selection.stop(clip.fps)
  total = clip.total or len(clip.frames)
  if first >= total:
    raise NstJaxError(f"start {selection.start:g} s is past the end of {clip.source} ({total} frames, "
                      f"{total / clip.fps:.2f} s at {clip.fps:g} fps)")
  frames = clip.frames[first:stop]
  return dataclasses.replace(clip, frames=frames, start=first / clip.fps, total=total)


def even_size(height: int, width: int, max_size: int) -> tuple[int, int]:
  """The frame size of a video job: the longest side `max_size` (aspect kept), then each side rounded down
  to even, since yuv420p video (what every player decodes) stores colour at half resolution: what is
  stylised is what the mp4 holds."""
  out_h, out_w = image_io.fit_size(height, width, max_size)
  return max(2, out_h - out_h % 2), max(2, out_w - out_w % 2)


def _av():
  """PyAV, imported on first use (commands that never touch video stay fast to start)."""
  try:
    import av
  except ImportError:
    raise NstJaxError("video needs PyAV: pip install av") from None
  return av


def _one_line(error: Exception) -> str:
  return " ".join(str(error).split()) or type(error).__name__


def _resized(frame: np.ndarray, max_size: int | None) -> np.ndarray:
  """`frame` at `even_size` for `max_size` (as read when None)."""
  return frame if max_size is None else image_io.resize(frame, even_size(*frame.shape[:2], max_size))


def read_clip(path: str, max_size: int | None = None, *, max_frames: int = MAX_FRAMES,
              max_seconds: float = MAX_SECONDS, max_pixels: int | None = None,
              selection: Selection | None = None) -> Clip:
  """Reads a video file or a folder of numbered frames, frames resized to `max_size` (longest side; both
  sides even: `even_size`).

  `selection` keeps a part (`select`; a file is decoded only up to its end) and gives a folder its rate.

  Raises:
    NstJaxError: missing path, not a video, no video stream, no frames, frames of differing sizes in a
      folder, a stream FFmpeg cannot decode, a selection past the end, `fps` for a video file;
      `ClipTooLarge` (a subclass): more than `max_frames` frames, `max_seconds` seconds or `max_pixels`
      pixels per frame (default `MAX_FRAME_PIXELS`).
  """
  max_pixels = MAX_FRAME_PIXELS if max_pixels is None else max_pixels  # Read at call time (patchable).
  path = os.fspath(path)
  if max_size is not None:
    image_io.check_size(int(max_size), "max_size")
  selection = selection or Selection()
  if not os.path.exists(path):
    raise NstJaxError(f"clip not found: {path}")
  if os.path.isdir(path):
    fps = float(selection.fps) if selection.fps is not None else DEFAULT_FPS
    frames = _read_folder(path, max_size, max_frames, max_pixels)
    clip = Clip(frames=frames, fps=fps, source=path, has_audio=False, total=len(frames))
  else:
    if selection.fps is not None:
      raise NstJaxError(f"fps is for a folder of frames; {path} is a video file with its own frame rate")
    clip = _read_file(path, max_size, max_frames, max_seconds, max_pixels, selection)
  return select(clip, selection)


def _numbered_frames(folder: str) -> list[str]:
  """Image files of `folder` sorted by the last number in their names (frame_2 before frame_10)."""
  image_extensions = set(Image.registered_extensions())
  numbered = {}
  for name in os.listdir(folder):
    stem, extension = os.path.splitext(name)
    if name.startswith(".") or extension.lower() not in image_extensions:
      continue  # Hidden files, notes, audio: not frames.
    digits = re.findall(r"\d+", stem)
    if not digits:
      raise NstJaxError(f"{folder}: {name} has no frame number (name frames like frame_00001.png)")
    number = int(digits[-1])
    if number in numbered:
      raise NstJaxError(f"{folder}: {numbered[number]} and {name} have the same frame number {number}")
    numbered[number] = name
  return [os.path.join(folder, numbered[n]) for n in sorted(numbered)]


def _read_folder(folder: str, max_size: int | None, max_frames: int, max_pixels: int) -> list[np.ndarray]:
  paths = _numbered_frames(folder)
  if not paths:
    raise NstJaxError(f"{folder}: no frames (expected numbered images such as frame_00001.png)")
  if len(paths) > max_frames:
    raise ClipTooLarge(f"{folder}: {len(paths)} frames is over the limit of {max_frames}")
  frames, first_shape = [], None
  for path in paths:
    frame = image_io.open_image(path, max_pixels=max_pixels)
    if first_shape is None:
      first_shape = frame.shape
    elif frame.shape != first_shape:
      raise NstJaxError(f"{folder}: {os.path.basename(path)} is {frame.shape[1]}x{frame.shape[0]} but "
                        f"{os.path.basename(paths[0])} is {first_shape[1]}x{first_shape[0]}; frames must be one size")
    frames.append(_resized(frame, max_size))
  return frames


def _stream_fps(stream) -> float:
  for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
    if rate and math.isfinite(float(rate)) and float(rate) > 0:
      return float(rate)
  return DEFAULT_FPS


def _read_file(path: str, max_size: int | None, max_frames: int, max_seconds: float, max_pixels: int,
               selection: Selection) -> Clip:
  av = _av()
  try:
    container = av.open(path)
  except (av.error.FFmpegError, OSError, ValueError) as e:
    raise NstJaxError(f"{path}: not a video file FFmpeg can read ({_one_line(e)})") from None
  with container:
    if not container.streams.video:
      raise NstJaxError(f"{path}: no video stream (audio only?)")
    stream = container.streams.video[0]
    width, height = stream.codec_context.width, stream.codec_context.height
    if width * height > max_pixels:
      raise ClipTooLarge(f"{path}: {width}x{height} frames are over the limit of {max_pixels:,} pixels")
    seconds = container.duration / av.time_base if container.duration else 0.0
    if seconds > max_seconds:
      raise ClipTooLarge(f"{path}: {seconds:.1f} s is over the limit of {max_seconds:g} s")
    if stream.frames > max_frames:
      raise ClipTooLarge(f"{path}: {stream.frames} frames is over the limit of {max_frames}")
    fps = _stream_fps(stream)
    first, stop = selection.first(fps), selection.stop(fps)
    frames, first_shape = [], None
    try:
      for index, frame in enumerate(container.decode(stream)):
        if stop is not None and index >= stop:  # The selection ends here: the rest is not decoded.
          break
        if len(frames) == max_frames:
          raise ClipTooLarge(f"{path}: more than {max_frames} frames (the limit)")
        if frame.time is not None and frame.time > max_seconds:
          raise ClipTooLarge(f"{path}: longer than the limit of {max_seconds:g} s")
        if frame.width * frame.height > max_pixels:
          raise ClipTooLarge(f"{path}: a {frame.width}x{frame.height} frame is over the limit of "
                             f"{max_pixels:,} pixels")
        if index < first:  # Before the selection: counted, not kept.
          frames.append(None)
          continue
        rgb = frame.to_ndarray(format="rgb24").astype(np.float32) / 255.0
        first_shape = first_shape or rgb.shape[:2]
        if rgb.shape[:2] != first_shape:
          rgb = image_io.resize(rgb, first_shape)  # A stream that changes size mid-way: keep the first.
        frames.append(_resized(rgb, max_size))
    except (av.error.FFmpegError, OSError, ValueError) as e:
      raise NstJaxError(f"{path}: cannot decode its video ({_one_line(e)})") from None
    if not frames:
      raise NstJaxError(f"{path}: the video stream has no frames")
    return Clip(frames=frames, fps=fps, source=path, has_audio=bool(container.streams.audio),
                total=max(len(frames), int(stream.frames or 0)))  # The header's count when decoding stopped early.


def _output_format(path: str) -> tuple[str, str, str, str]:
  extension = os.path.splitext(path)[1].lower()
  if extension not in FORMATS:
    raise NstJaxError(f"unsupported video format {extension or '(none)'!r} for {path}; use one of "
                      f"{', '.join(FORMATS)}")
  muxer, video_codec, pixel_format, audio_codec = FORMATS[extension]
  av = _av()
  for codec in (video_codec, audio_codec):
    try:
      av.codec.Codec(codec, "w")
    except (av.codec.codec.UnknownCodecError, ValueError):
      raise NstJaxError(f"cannot write {extension} video: this PyAV build has no {codec} encoder") from None
  return muxer, video_codec, pixel_format, audio_codec


def check_writable(path: str, *, overwrite: bool = False) -> None:
  """Fails early (before hours of stylising) if `write_video(path, ...)` could not write its file.

  Checks the format and its encoders, that `path` is not a folder (nor an existing file unless
  `overwrite`), and that its folder exists and takes new files.
  """
  path = os.fspath(path)
  if os.path.isdir(path):
    raise NstJaxError(f"output path is a directory: {path}")
  _output_format(path)
  if os.path.exists(path) and not overwrite:
    raise NstJaxError(f"output file already exists: {path} (pass --overwrite to replace it)")
  folder = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(folder):
    raise NstJaxError(f"output folder does not exist: {folder}")
  try:  # os.access says yes to root even where nothing can be created: try it.
    fd, probe = tempfile.mkstemp(dir=folder, prefix=".tmp-probe-")
    os.close(fd)
    os.remove(probe)
  except OSError as e:
    raise NstJaxError(f"output folder is not writable: {folder} ({e.strerror})") from None


def _even(frame: np.ndarray) -> np.ndarray:
  """uint8 `[H, W, 3]` padded to even height and width by repeating the last row / column."""
  pad_rows, pad_cols = frame.shape[0] % 2, frame.shape[1] % 2
  if pad_rows or pad_cols:
    frame = np.pad(frame, ((0, pad_rows), (0, pad_cols), (0, 0)), mode="edge")
  return frame


def _rate(fps: float) -> fractions.Fraction:
  if not (isinstance(fps, (int, float, fractions.Fraction)) and math.isfinite(fps) and 0 < fps <= 1000):
    raise NstJaxError(f"frame rate must be between 0 and 1000 frames per second, got {fps!r}")
  return fractions.Fraction(fps).limit_denominator(1001)  # 29.97... -> 30000/1001.


def _add_audio(container, audio_codec: str, source: str):
  """(input container, its audio stream, the output stream) to re-encode `source`'s audio, or None."""
  av = _av()
  try:
    source_container = av.open(source)
  except (av.error.FFmpegError, OSError, ValueError) as e:
    raise NstJaxError(f"{source}: cannot read its audio ({_one_line(e)})") from None
  if not source_container.streams.audio:
    source_container.close()
    return None
  audio_in = source_container.streams.audio[0]
  rate = _OPUS_RATE if audio_codec == "libopus" else (audio_in.codec_context.sample_rate or 44_100)
  audio_out = container.add_stream(audio_codec, rate=rate)
  audio_out.layout = "mono" if audio_in.codec_context.layout.nb_channels == 1 else "stereo"
  return source_container, audio_in, audio_out


def _copy_audio(container, audio, seconds: float, start: float = 0.0) -> None:
  """Decodes the source's audio and encodes it into `container`, from `start` s on, cut at the video's
  length."""
  av = _av()
  source_container, audio_in, audio_out = audio
  context = audio_out.codec_context
  resampler = av.AudioResampler(format=context.format.name, layout=context.layout.name, rate=context.sample_rate)
  samples_left = int(round(seconds * context.sample_rate))
  skip = int(round(start * context.sample_rate))  # Before the selected part (`Clip.start`).
  for frame in source_container.decode(audio_in):
    frame.pts = None
    for chunk in resampler.resample(frame):
      if samples_left <= 0:
        break
      if skip >= chunk.samples:
        skip -= chunk.samples
        continue
      if skip:
        chunk = _audio_tail(chunk, skip, context.sample_rate)
        skip = 0
      if chunk.samples > samples_left:  # The clip's video ends here: cut the audio with it.
        keep = samples_left if chunk.format.is_planar else samples_left * chunk.layout.nb_channels  # Interleaved.
        chunk = av.AudioFrame.from_ndarray(chunk.to_ndarray()[:, :keep], format=chunk.format.name,
                                           layout=chunk.layout.name)
        chunk.sample_rate = context.sample_rate
      samples_left -= chunk.samples
      container.mux(audio_out.encode(chunk))
    if samples_left <= 0:
      break
  container.mux(audio_out.encode(None))


def _audio_tail(chunk, skip: int, sample_rate: int):
  """An audio frame without its first `skip` samples."""
  av = _av()
  keep_from = skip if chunk.format.is_planar else skip * chunk.layout.nb_channels  # Interleaved.
  tail = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk.to_ndarray()[:, keep_from:]),
                                    format=chunk.format.name, layout=chunk.layout.name)
  tail.sample_rate = sample_rate
  return tail


def write_video(path: str, frames: Sequence[np.ndarray], fps: float, *, audio_from: str | None = None,
                audio_start: float = 0.0) -> None:
  """Encodes float `[H, W, 3]` frames in [0, 1] at `fps` into `path` (format from its extension), atomically.

  Args:
    path: `.mp4` / `.mov` (H.264) or `.webm` (VP9); yuv420p, odd sizes padded to even (see `FORMATS`).
    frames: one size, at least one.
    fps: the frame rate (e.g. `Clip.fps`, so the output keeps the input's).
    audio_from: a video file whose first audio stream is re-encoded (AAC, or Opus in webm) and cut at the
      video's length; None, or a file without audio: a silent video.
    audio_start: seconds of `audio_from` skipped (a selected part of a clip: `Clip.start`).

  Raises:
    NstJaxError: no frames, frames of differing sizes, an unsupported format or missing encoder, an
      unwritable folder, an encoding error. No file (nor temporary file) is left behind.
  """
  path = os.fspath(path)
  muxer, video_codec, pixel_format, audio_codec = _output_format(path)
  rate = _rate(fps)
  if len(frames) == 0:
    raise NstJaxError(f"no frames to write to {path}")
  shape = np.shape(frames[0])
  if len(shape) != 3 or shape[2] != 3:
    raise NstJaxError(f"frames must be [H, W, 3], got {shape}")
  av = _av()
  audio = None
  try:
    with image_io.atomic_write(path) as f, av.open(f, "w", format=muxer) as container:
      stream = container.add_stream(video_codec, rate=rate)
      stream.height, stream.width = shape[0] + shape[0] % 2, shape[1] + shape[1] % 2
      stream.pix_fmt = pixel_format
      stream.options = dict(_ENCODER_OPTIONS.get(video_codec, {}))
      if audio_from is not None:
        audio = _add_audio(container, audio_codec, audio_from)
      for index, frame in enumerate(frames):
        if np.shape(frame) != shape:
          raise NstJaxError(f"frame {index + 1} is {np.shape(frame)}, frame 1 is {shape}; frames must be one size")
        video_frame = av.VideoFrame.from_ndarray(_even(image_io.to_uint8(frame)), format="rgb24")
        container.mux(stream.encode(video_frame))
      container.mux(stream.encode(None))
      if audio is not None:
        _copy_audio(container, audio, len(frames) / float(rate), audio_start)
  except NstJaxError:
    raise
  except (av.error.FFmpegError, OSError, ValueError) as e:
    raise NstJaxError(f"cannot write {path}: {_one_line(e)}") from None
  finally:
    if audio is not None:
      audio[0].close()


def write_audio(path: str, source: str, seconds: float, start: float = 0.0) -> bool:
  """Re-encodes `source`'s first audio stream (from `start` s, cut after `seconds`) into `path` (AAC in an
  mp4 container, e.g. `audio.m4a`), atomically; False (and no file) when it has no audio.
  `write_video(audio_from=path)` reads it.

  The web server keeps a clip's sound this way without storing the uploaded bytes.
  """
  av = _av()
  audio = None
  try:
    with image_io.atomic_write(path) as f, av.open(f, "w", format="mp4") as container:
      audio = _add_audio(container, "aac", source)
      if audio is None:
        raise _NoAudio()
      _copy_audio(container, audio, seconds, start)
  except _NoAudio:
    return False
  except (av.error.FFmpegError, OSError, ValueError) as e:
    raise NstJaxError(f"cannot write {path}: {_one_line(e)}") from None
  finally:
    if audio is not None:
      audio[0].close()
  return True


class _NoAudio(Exception):
  """Raised inside `write_audio` to drop the half-made file when the source has no audio."""


def frame_name(index: int) -> str:
  """`frame_00001.png` for index 0: the names `write_frames` gives (1-based, as ffmpeg's %05d)."""
  return f"frame_{index + 1:05d}.png"


def write_frames(directory: str, frames: Sequence[np.ndarray]) -> list[str]:
  """Writes `frame_00001.png`, ... into `directory` (made if missing), each file atomically; returns paths."""
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError as e:
    raise NstJaxError(f"cannot make the frames folder {directory}: {e.strerror or e}") from None
  paths = []
  for index, frame in enumerate(frames):
    paths.append(os.path.join(directory, frame_name(index)))
    image_io.save_image(paths[-1], frame)
  return paths
