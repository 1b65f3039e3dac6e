"""Tests for nst_jax.video_io: clips written here with PyAV / Pillow are read back; every bad input is one line."""

import os

import av
import numpy as np
import pytest
from PIL import Image

from nst_jax import video_io
from nst_jax.errors import NstJaxError

H, W, T, FPS = 32, 48, 8, 12


def clip_frames(num_frames=T, height=H, width=W):
  """uint8 frames: smooth colour ramps that move 2 px per frame (codec friendly), distinct per frame."""
  rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
  frames = []
  for t in range(num_frames):
    red = 0.5 + 0.4 * np.sin((cols + 2 * t) / 6.0)
    green = 0.5 + 0.4 * np.cos(rows / 5.0)
    blue = np.full_like(red, t / max(num_frames - 1, 1))
    frames.append(np.round(np.stack([red, green, blue], -1) * 255).astype(np.uint8))
  return frames


def tone(seconds, rate=44_100):
  samples = (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * rate)) / rate)).astype(np.float32)
  frame = av.AudioFrame.from_ndarray(samples[None], format="flt", layout="mono")
  frame.sample_rate, frame.pts = rate, 0
  return frame


def encode_clip(path, frames, fps=FPS, codec="libx264", audio_codec=None, audio_seconds=None):
  """Writes `frames` (uint8) with PyAV directly (independent of video_io.write_video)."""
  with av.open(str(path), "w") as container:
    stream = container.add_stream(codec, rate=fps)
    if frames:
      stream.height, stream.width = frames[0].shape[:2]
    else:
      stream.height, stream.width = H, W
    stream.pix_fmt = "yuv420p"
    audio = container.add_stream(audio_codec, rate=48_000 if audio_codec == "libopus" else 44_100) \
        if audio_codec else None
    for frame in frames:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    container.mux(stream.encode(None))
    if audio is not None:
      seconds = audio_seconds if audio_seconds is not None else len(frames) / fps
      container.mux(audio.encode(tone(seconds, audio.codec_context.sample_rate)))
      container.mux(audio.encode(None))
  return str(path)


def as_float(frames):
  return [frame.astype(np.float32) / 255.0 for frame in frames]


def assert_close_to(clip_frames_read, frames, tolerance=0.03):
  assert len(clip_frames_read) == len(frames)
  for got, want in zip(clip_frames_read, as_float(frames)):
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.abs(got - want).mean() < tolerance  # Lossy codecs, 4:2:0 colour.


def streams_of(path):
  with av.open(path) as container:
    video = container.streams.video[0]
    audio = container.streams.audio[0] if container.streams.audio else None
    decoded = sum(1 for _ in container.decode(video=0))
    audio_seconds = None
    if audio is not None:
      audio_seconds = float(audio.duration * audio.time_base) if audio.duration else container.duration / 1e6
    return dict(frames=decoded, fps=float(video.average_rate), width=video.codec_context.width,
                height=video.codec_context.height, video_codec=video.codec_context.name,
                audio_codec=audio.codec_context.name if audio else None, audio_seconds=audio_seconds)


@pytest.mark.parametrize("extension,codec", [(".mp4", "libx264"), (".webm", "libvpx-vp9"), (".mov", "libx264"),
                                             (".mkv", "libx264")])
def test_read_a_video_file(tmp_path, extension, codec):
  frames = clip_frames()
  clip = video_io.read_clip(encode_clip(tmp_path / f"clip{extension}", frames, codec=codec))
  assert clip.fps == FPS and not clip.has_audio and clip.source.endswith(extension)
  assert_close_to(clip.frames, frames)


def test_read_a_gif(tmp_path):
  frames = clip_frames()
  path = str(tmp_path / "clip.gif")
  pictures = [Image.fromarray(frame) for frame in frames]
  pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=100, loop=0)  # 100 ms: 10 fps.
  clip = video_io.read_clip(path)
  assert clip.fps == 10 and len(clip.frames) == T
  assert_close_to(clip.frames, frames, tolerance=0.06)  # A 256-colour palette.


def test_read_a_folder_in_numeric_order_and_resize(tmp_path):
  frames = clip_frames(num_frames=11)
  for index, frame in enumerate(frames):  # frame_2 must come before frame_10: numeric, not text order.
    Image.fromarray(frame).save(tmp_path / f"frame_{index + 1}.png")
  (tmp_path / "notes.txt").write_text("not a frame")
  clip = video_io.read_clip(str(tmp_path))
  assert clip.fps == video_io.DEFAULT_FPS and not clip.has_audio
  for got, want in zip(clip.frames, as_float(frames)):
    np.testing.assert_allclose(got, want, atol=1e-6)  # PNG is lossless.
  small = video_io.read_clip(str(tmp_path), 24)
  assert small.frames[0].shape == (16, 24, 3)


def test_max_size_resizes_file_frames(tmp_path):
  clip = video_io.read_clip(encode_clip(tmp_path / "clip.mp4", clip_frames()), 24)
  assert [frame.shape for frame in clip.frames] == [(16, 24, 3)] * T


def test_clip_with_audio_is_written_back_with_its_audio_and_rate(tmp_path):
  source = encode_clip(tmp_path / "in.mp4", clip_frames(), fps=FPS, audio_codec="aac")
  clip = video_io.read_clip(source)
  assert clip.has_audio and clip.fps == FPS
  for extension, audio_codec in ((".mp4", "aac"), (".webm", "opus")):
    output = str(tmp_path / f"out{extension}")
    video_io.write_video(output, clip.frames, clip.fps, audio_from=source)
    info = streams_of(output)
    assert info["frames"] == T and info["fps"] == FPS and (info["width"], info["height"]) == (W, H)
    assert info["audio_codec"] == audio_codec
    assert abs(info["audio_seconds"] - T / FPS) < 0.1, info
    assert_close_to(video_io.read_clip(output).frames, clip_frames(), tolerance=0.04)


def test_audio_longer_than_the_video_is_cut_and_silent_source_gives_silent_video(tmp_path):
  source = encode_clip(tmp_path / "in.mkv", clip_frames(), audio_codec="aac", audio_seconds=3.0)
  output = str(tmp_path / "out.mp4")
  video_io.write_video(output, as_float(clip_frames())[:4], FPS, audio_from=source)
  info = streams_of(output)
  assert info["frames"] == 4 and abs(info["audio_seconds"] - 4 / FPS) < 0.1, info
  silent = encode_clip(tmp_path / "silent.mp4", clip_frames())
  video_io.write_video(str(tmp_path / "out2.mp4"), as_float(clip_frames()), FPS, audio_from=silent)
  assert streams_of(str(tmp_path / "out2.mp4"))["audio_codec"] is None


def test_write_video_keeps_rate_and_pads_odd_sizes(tmp_path):
  frames = [frame[:31, :47] for frame in clip_frames()]
  output = str(tmp_path / "odd.mp4")
  video_io.write_video(output, as_float(frames), 30000 / 1001)  # NTSC's 29.97 as read_clip gives it.
  info = streams_of(output)
  assert (info["width"], info["height"]) == (48, 32) and info["video_codec"] == "h264"
  assert abs(info["fps"] - 30000 / 1001) < 1e-6
  clip = video_io.read_clip(output)
  assert_close_to([frame[:31, :47] for frame in clip.frames], frames, tolerance=0.04)
  assert not [name for name in os.listdir(tmp_path) if name.startswith(".tmp")]


def test_write_frames(tmp_path):
  frames = as_float(clip_frames(num_frames=3))
  paths = video_io.write_frames(str(tmp_path / "frames"), frames)
  assert [os.path.basename(path) for path in paths] == ["frame_00001.png", "frame_00002.png", "frame_00003.png"]
  clip = video_io.read_clip(str(tmp_path / "frames"))
  for got, want in zip(clip.frames, frames):
    np.testing.assert_allclose(got, want, atol=1e-6)


# Bad input: one line each, nothing half-written.

def assert_one_line_error(match, function, *args, **kwargs):
  with pytest.raises(NstJaxError, match=match) as info:
    function(*args, **kwargs)
  assert "\n" not in str(info.value)
  return str(info.value)


def test_bad_clips_are_one_line_errors(tmp_path):
  assert_one_line_error("clip not found", video_io.read_clip, str(tmp_path / "missing.mp4"))
  text = tmp_path / "notes.mp4"
  text.write_text("this is not a video\n" * 20)
  assert_one_line_error("not a video file", video_io.read_clip, str(text))
  (tmp_path / "empty.mp4").write_bytes(b"")
  assert_one_line_error("not a video file", video_io.read_clip, str(tmp_path / "empty.mp4"))
  picture = tmp_path / "still.png"  # A still picture: FFmpeg reads it as one frame, which is a clip.
  Image.fromarray(clip_frames(1)[0]).save(picture)
  assert len(video_io.read_clip(str(picture)).frames) == 1


def test_audio_only_and_frameless_clips_are_refused(tmp_path):
  with av.open(str(tmp_path / "song.m4a"), "w") as container:
    audio = container.add_stream("aac", rate=44_100)
    container.mux(audio.encode(tone(0.5)))
    container.mux(audio.encode(None))
  assert_one_line_error("no video stream", video_io.read_clip, str(tmp_path / "song.m4a"))
  # A video stream with no frames at all (the audio makes the muxer write the file).
  no_frames = encode_clip(tmp_path / "no_frames.mkv", [], audio_codec="aac", audio_seconds=0.5)
  assert_one_line_error("has no frames", video_io.read_clip, no_frames)
  os.mkdir(tmp_path / "empty")
  assert_one_line_error("no frames", video_io.read_clip, str(tmp_path / "empty"))


def test_folder_problems_are_refused(tmp_path):
  frames = clip_frames(num_frames=3)
  folder = tmp_path / "sizes"
  os.mkdir(folder)
  for index, frame in enumerate(frames):
    Image.fromarray(frame if index != 2 else frame[:, :40]).save(folder / f"f{index:03d}.png")
  message = assert_one_line_error("one size", video_io.read_clip, str(folder))
  assert "f002.png is 40x32" in message and "48x32" in message
  unnumbered = tmp_path / "unnumbered"
  os.mkdir(unnumbered)
  Image.fromarray(frames[0]).save(unnumbered / "cover.png")
  assert_one_line_error("no frame number", video_io.read_clip, str(unnumbered))
  twice = tmp_path / "twice"
  os.mkdir(twice)
  Image.fromarray(frames[0]).save(twice / "frame_1.png")
  Image.fromarray(frames[1]).save(twice / "frame_001.png")
  assert_one_line_error("same frame number 1", video_io.read_clip, str(twice))
  bad = tmp_path / "bad"
  os.mkdir(bad)
  Image.fromarray(frames[0]).save(bad / "frame_1.png")
  (bad / "frame_2.png").write_bytes(b"not a png")
  assert_one_line_error("frame_2.png", video_io.read_clip, str(bad))


def test_absurd_clips_are_refused(tmp_path, monkeypatch):
  path = encode_clip(tmp_path / "clip.mp4", clip_frames())
  assert_one_line_error("over the limit of 4", video_io.read_clip, path, max_frames=4)
  assert_one_line_error("over the limit of 0.25 s", video_io.read_clip, path, max_seconds=0.25)
  monkeypatch.setattr(video_io, "MAX_FRAME_PIXELS", 40 * 30)  # Stands in for a 100-megapixel clip.
  assert_one_line_error("48x32 frames are over the limit", video_io.read_clip, path)
  folder = tmp_path / "frames"
  os.mkdir(folder)
  for index, frame in enumerate(clip_frames(num_frames=5)):
    Image.fromarray(frame).save(folder / f"frame_{index}.png")
  assert_one_line_error("limit 1,200 pixels", video_io.read_clip, str(folder))  # Pixels per frame.
  monkeypatch.setattr(video_io, "MAX_FRAME_PIXELS", 10_000)
  assert_one_line_error("5 frames is over the limit of 4", video_io.read_clip, str(folder), max_frames=4)
  assert_one_line_error("max_size must be between", video_io.read_clip, path, 100_000)


def test_limits_are_sane():
  assert video_io.MAX_SECONDS * 30 <= video_io.MAX_FRAMES * 2  # The frame limit is not far below 30 fps.
  assert 7680 * 4320 <= video_io.MAX_FRAME_PIXELS  # 8K UHD reads (and is resized to max_size).


def test_unwritable_outputs_and_missing_codecs_are_refused_and_leave_nothing(tmp_path, monkeypatch):
  frames = as_float(clip_frames())
  assert_one_line_error("unsupported video format '.avi'", video_io.write_video, str(tmp_path / "o.avi"), frames,
                        FPS)
  assert_one_line_error("unsupported video format", video_io.check_writable, str(tmp_path / "o.gif"))
  missing = str(tmp_path / "no" / "such" / "folder" / "o.mp4")
  assert_one_line_error("cannot write", video_io.write_video, missing, frames, FPS)
  assert_one_line_error("output folder does not exist", video_io.check_writable, missing)
  assert_one_line_error("is a directory", video_io.check_writable, str(tmp_path))
  (tmp_path / "exists.mp4").write_bytes(b"old")
  assert_one_line_error("already exists", video_io.check_writable, str(tmp_path / "exists.mp4"))
  video_io.check_writable(str(tmp_path / "exists.mp4"), overwrite=True)
  assert_one_line_error("frame rate", video_io.write_video, str(tmp_path / "o.mp4"), frames, 0)
  assert_one_line_error("no frames", video_io.write_video, str(tmp_path / "o.mp4"), [], FPS)
  monkeypatch.setitem(video_io.FORMATS, ".mp4", ("mp4", "libnotanencoder", "yuv420p", "aac"))
  assert_one_line_error("no libnotanencoder encoder", video_io.write_video, str(tmp_path / "o.mp4"), frames, FPS)
  assert_one_line_error("no libnotanencoder encoder", video_io.check_writable, str(tmp_path / "o.mp4"))
  assert sorted(os.listdir(tmp_path)) == ["exists.mp4"]


def test_a_failure_while_writing_leaves_no_file_and_keeps_an_old_one(tmp_path):
  frames = as_float(clip_frames())
  frames[5] = frames[5][:, :40]  # Found only when frame 6 is encoded: the file is half-written by then.
  output = tmp_path / "out.mp4"
  assert_one_line_error("frame 6 is", video_io.write_video, str(output), frames, FPS)
  assert os.listdir(tmp_path) == []
  output.write_bytes(b"previous result")
  assert_one_line_error("frame 6 is", video_io.write_video, str(output), frames, FPS)
  assert output.read_bytes() == b"previous result" and os.listdir(tmp_path) == ["out.mp4"]
  assert_one_line_error("cannot read its audio", video_io.write_video, str(tmp_path / "a.mp4"), frames[:5], FPS,
                        audio_from=str(tmp_path / "out.mp4"))
  assert sorted(os.listdir(tmp_path)) == ["out.mp4"]


def test_write_audio_keeps_the_sound_for_a_later_video(tmp_path):
  source = encode_clip(tmp_path / "in.webm", clip_frames(), codec="libvpx-vp9", audio_codec="libopus")
  audio = str(tmp_path / "audio.m4a")
  assert video_io.write_audio(audio, source, T / FPS)
  with av.open(audio) as container:
    assert not container.streams.video and container.streams.audio[0].codec_context.name == "aac"
  output = str(tmp_path / "out.mp4")
  video_io.write_video(output, as_float(clip_frames()), FPS, audio_from=audio)
  info = streams_of(output)
  assert info["audio_codec"] == "aac" and abs(info["audio_seconds"] - T / FPS) < 0.1
  silent = encode_clip(tmp_path / "silent.mp4", clip_frames())
  assert not video_io.write_audio(str(tmp_path / "none.m4a"), silent, 1.0)
  assert not os.path.exists(tmp_path / "none.m4a")
  assert not [name for name in os.listdir(tmp_path) if name.startswith(".tmp")]


def test_limit_errors_are_clip_too_large(tmp_path):
  path = encode_clip(tmp_path / "clip.mp4", clip_frames())
  with pytest.raises(video_io.ClipTooLarge):
    video_io.read_clip(path, max_frames=4)
  with pytest.raises(video_io.ClipTooLarge):
    video_io.read_clip(path, max_pixels=100)
  text = tmp_path / "notes.mp4"
  text.write_text("not a video")
  with pytest.raises(NstJaxError) as info:
    video_io.read_clip(str(text))
  assert not isinstance(info.value, video_io.ClipTooLarge)


def test_selection_keeps_part_of_a_file_and_cuts_its_audio(tmp_path):
  frames = clip_frames()
  source = encode_clip(tmp_path / "in.mp4", frames, audio_codec="aac", audio_seconds=T / FPS)
  part = video_io.read_clip(source, selection=video_io.Selection(start=0.25, frames=3))  # 0.25 s = frame 3.
  assert len(part.frames) == 3 and part.start == 0.25 and part.total == T and part.fps == FPS
  assert_close_to(part.frames, frames[3:6])
  timed = video_io.read_clip(source, selection=video_io.Selection(start=0.5, duration=10.0))  # Cut at the end.
  assert len(timed.frames) == T - 6 and timed.start == 0.5
  assert len(video_io.read_clip(source, selection=video_io.Selection(duration=2 / FPS)).frames) == 2
  output = str(tmp_path / "part.mp4")
  video_io.write_video(output, part.frames, part.fps, audio_from=source, audio_start=part.start)
  info = streams_of(output)
  assert info["audio_codec"] == "aac" and abs(info["audio_seconds"] - 3 / FPS) < 0.05
  assert_one_line_error("past the end", video_io.read_clip, source, selection=video_io.Selection(start=1.0))
  assert_one_line_error("fps is for a folder", video_io.read_clip, source, selection=video_io.Selection(fps=10))


def test_a_folder_takes_its_rate_and_a_selection(tmp_path):
  for index, frame in enumerate(clip_frames(num_frames=5)):
    Image.fromarray(frame).save(tmp_path / f"frame_{index + 1}.png")
  clip = video_io.read_clip(str(tmp_path), selection=video_io.Selection(fps=10, start=0.1, frames=2))
  assert clip.fps == 10 and len(clip.frames) == 2 and clip.total == 5 and clip.start == 0.1
  np.testing.assert_allclose(clip.frames[0], as_float(clip_frames(num_frames=5))[1], atol=1e-6)
  assert_one_line_error("past the end", video_io.read_clip, str(tmp_path),
                        selection=video_io.Selection(start=0.5))  # 5 frames at 25 fps: 0.2 s.


def test_frames_are_read_at_even_sizes_so_the_mp4_holds_what_was_stylised(tmp_path):
  frames = [frame[:31, :47] for frame in clip_frames(num_frames=2)]
  for index, frame in enumerate(frames):
    Image.fromarray(frame).save(tmp_path / f"frame_{index + 1}.png")
  assert video_io.even_size(31, 47, 47) == (30, 46) and video_io.even_size(40, 30, 33) == (32, 24)
  clip = video_io.read_clip(str(tmp_path), 47)
  assert clip.frames[0].shape == (30, 46, 3)
  output = str(tmp_path / "even.mp4")
  video_io.write_video(output, clip.frames, 10)
  info = streams_of(output)
  assert (info["width"], info["height"]) == (46, 30)
