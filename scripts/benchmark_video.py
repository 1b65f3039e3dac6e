"""Video figures of issue 13: flicker (temporal error) per mode, warm start, and speed.

    python scripts/benchmark_video.py --what error,warm --size 48 --frames 5 --steps 30
    python scripts/benchmark_video.py --what speed --size 256 --frames 8 --steps 4

- error: temporal error E (`flow.temporal_error`: mean over t of the mean squared difference between output
  frame t and output t-1 warped by the flow, over the pixels the occlusion mask keeps) of per-frame
  stylisation (each frame on its own from the photo: what `nst-jax` does for one picture), `video`
  sequential and `video` multipass, at the same steps per frame, on (a) a synthetic clip (a picture panned
  2 px per frame plus a square moving the other way) and (b) a clip cut from a photo of ../shared/data
  (pan and zoom). Target: sequential and multipass E <= 1/4 of per-frame.
- warm: in a sequential run, the steps a later frame needs to reach the first frame's final loss (content +
  style + tv, the temporal term left out), as a share of the steps per frame. Target <= 50%.
- speed: seconds per frame of each mode at --size, and multipass frames per second with batches of
  --batches frames (a second run of each, so compiles come from the persistent cache; the machine's load
  is printed with each figure).

Synthetic (random) VGG19 weights by default: this machine has no pretrained ones, so the pictures are not
artistic; the figures compare the modes under one loss. The default temporal_weight is tuned here.
"""

from __future__ import annotations

import os
import time

import numpy as np
from absl import app, flags, logging

from nst_jax import engine, flow, image_io, settings, video, weights as weights_lib
from nst_jax.commands import common

SHARED_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")
flags.DEFINE_list("what", ["error", "warm", "speed"], "Figures to measure: error, warm, speed.")
flags.DEFINE_integer("size", 48, "Longest side of the frames (error, warm).")
flags.DEFINE_integer("speed_size", 256, "Longest side of the frames for the speed figures.")
flags.DEFINE_integer("frames", 5, "Frames per clip.")
flags.DEFINE_integer("steps", 30, "Steps per frame (multipass: over all its passes).")
flags.DEFINE_integer("speed_steps", 4, "Steps per frame for the speed figures.")
flags.DEFINE_integer("speed_frames", 8, "Frames for the speed figures.")
flags.DEFINE_list("batches", ["1", "4", "8"], "Multipass batch sizes for frames per second.")
flags.DEFINE_list("speed_parts", ["modes", "batches"], "Speed figures: modes (s per frame), batches (frames/s).")
flags.DEFINE_list("clips", ["synthetic", "photo"], "Clips: synthetic, photo.")
flags.DEFINE_string("photo", os.path.join(SHARED_DATA, "content/tubingen.jpg"),
                    "Photo the pan-and-zoom clip is cut from.")
flags.DEFINE_string("style", os.path.join(SHARED_DATA, "styles/starry_night.jpg"), "Style painting.")
flags.DEFINE_list("settings", [], "More settings as NAME=VALUE (e.g. temporal_weight=1e9,passes=4).")
flags.DEFINE_string("weights", "random", "VGG19 weights (see nst-jax --help).")
FLAGS = flags.FLAGS


def load() -> str:
  return f"load {os.getloadavg()[0]:.1f}"


def synthetic_clip(size: int, count: int, shift: int = 2) -> list[np.ndarray]:
  """A smooth random picture panned `shift` px per frame, plus a square moving the other way."""
  rng = np.random.default_rng(0)
  width = size + shift * count
  y, x = np.mgrid[0:size, 0:width].astype(np.float32) / size
  base = np.stack([0.5 + 0.25 * np.sin(2 * np.pi * (f[0] * x + f[1] * y) + f[2]) +
                   0.2 * np.sin(2 * np.pi * (f[3] * x - f[4] * y)) for f in rng.uniform(1, 4, (3, 5))], -1)
  base = np.clip(base, 0, 1).astype(np.float32)
  side = max(4, size // 6)
  frames = []
  for t in range(count):
    frame = np.array(base[:, shift * (count - t):shift * (count - t) + size])  # Content moves right.
    left = size // 2 + shift * t
    frame[size // 3:size // 3 + side, max(0, left - side):left] = (0.9, 0.15, 0.1)
    frames.append(frame)
  return frames


def photo_clip(path: str, size: int, count: int) -> list[np.ndarray]:
  """A window panning 2% of the photo's width and zooming in 2% per frame, resized to `size`."""
  photo = image_io.open_image(path)
  height, width = photo.shape[:2]
  frames = []
  for t in range(count):
    scale = 0.7 * (1 - 0.02 * t)
    h, w = int(height * scale), int(width * scale)
    x0 = int(0.05 * width + 0.02 * width * t)
    y0 = (height - h) // 2
    frames.append(image_io.resize_longest(photo[y0:y0 + h, x0:x0 + w], size))
  return frames


def config(size: int, steps: int, **values):
  extra = dict(item.split("=", 1) for item in FLAGS.settings)
  return settings.resolve({"max_size": size, "steps": steps, "log_every": 1, **extra, **values}, scope="video")


def per_frame(frames, style, cfg, weights) -> list[np.ndarray]:
  """Each frame on its own from the photo, as `nst-jax` stylises one picture (one job per frame)."""
  picture = settings.resolve({k: v for k, v in settings.given_settings(cfg).items()
                              if k not in settings.VIDEO_ONLY})
  runner = engine.Engine(weights)
  return [runner.run([engine.Job(f, [style], picture)])[0].image for f in frames]


class LossCurves:
  """Per job name, the picture loss (content + style + tv, weighted) at every logged step."""

  def __init__(self):
    self.curves: dict[str, list[tuple[int, float]]] = {}

  def on_step(self, event) -> None:
    if event.metrics is None:
      return
    c, m = event.run.config, event.metrics
    loss = c.content_weight * m["content"] + c.style_weight * m["style"] + c.tv_weight * m["tv"]
    self.curves.setdefault(event.run.job.name, []).append((event.step, loss))


def measure_error(weights, style) -> None:
  print(f"temporal error E at {FLAGS.size} px, {FLAGS.frames} frames, {FLAGS.steps} steps per frame "
        f"(settings: {', '.join(FLAGS.settings) or 'defaults'}):")
  for name in FLAGS.clips:
    frames = synthetic_clip(FLAGS.size, FLAGS.frames) if name == "synthetic" else photo_clip(
        FLAGS.photo, FLAGS.size, FLAGS.frames)
    cfg = config(FLAGS.size, FLAGS.steps)
    cache = flow.FlowCache(None, cfg.flow_method)
    errors = {}
    begin = time.perf_counter()
    errors["per-frame"] = video.mean_error(flow.temporal_error(per_frame(frames, style, cfg, weights), frames,
                                                               cfg.flow_method, cache))
    for mode in ("sequential", "multipass"):
      result = video.run_video(frames, [style], config(FLAGS.size, FLAGS.steps, video_mode=mode), weights=weights,
                               flow_cache=cache)
      errors[mode] = video.mean_error(result.temporal_error)
    line = ", ".join(f"{k} {v:.5f}" for k, v in errors.items())
    ratios = ", ".join(f"{k}/per-frame {errors[k] / errors['per-frame']:.3f}" for k in ("sequential", "multipass"))
    print(f"  {name}: {line}; {ratios} (target <= 0.25; {time.perf_counter() - begin:.0f} s, {load()})")


def measure_warm(weights, style) -> None:
  curves = LossCurves()
  frames = synthetic_clip(FLAGS.size, FLAGS.frames)
  video.run_video(frames, [style], config(FLAGS.size, FLAGS.steps), weights=weights, hooks=[curves])
  names = sorted(curves.curves, key=lambda n: int(n.split()[1].split("/")[0]))
  first = curves.curves[names[0]][-1][1]
  shares = []
  for name in names[1:]:
    reached = [step for step, loss in curves.curves[name] if loss <= first]
    shares.append(reached[0] / FLAGS.steps if reached else float("inf"))
  text = ", ".join("not reached" if not np.isfinite(s) else f"{100 * s:.0f}%" for s in shares)
  print(f"warm start (sequential, synthetic clip, {FLAGS.size} px, {FLAGS.steps} steps): steps a later frame "
        f"needs to reach frame 1's final loss {first:.4g}, as a share: {text}; median "
        f"{100 * float(np.median(shares)):.0f}% (target <= 50%)")


def timed(fn) -> float:
  fn()  # Warm-up: compiles (then kept in the persistent cache) and flows.
  begin = time.perf_counter()
  fn()
  return time.perf_counter() - begin


def measure_speed(weights, style) -> None:
  size, steps, count = FLAGS.speed_size, FLAGS.speed_steps, FLAGS.speed_frames
  frames = photo_clip(FLAGS.photo, size, count)
  cache = flow.FlowCache(None, "dis")
  print(f"speed at {size} px, {count} frames, {steps} steps per frame ({load()} before):")
  if "modes" in FLAGS.speed_parts:
    seconds = timed(lambda: per_frame(frames, style, config(size, steps), weights))
    print(f"  per-frame: {seconds / count:.2f} s per frame ({load()})")
  for mode in ("sequential", "multipass") if "modes" in FLAGS.speed_parts else ():
    cfg = config(size, steps, video_mode=mode, passes=min(2, steps))
    seconds = timed(lambda: video.run_video(frames, [style], cfg, weights=weights, flow_cache=cache))
    print(f"  {mode}: {seconds / count:.2f} s per frame ({load()})")
  cfg = config(size, steps, video_mode="multipass", passes=1)
  for batch in (int(b) for b in FLAGS.batches) if "batches" in FLAGS.speed_parts else ():
    seconds = timed(lambda: video.run_video(frames, [style], cfg, weights=weights, flow_cache=cache, max_batch=batch))
    print(f"  multipass, batches of {batch}: {count / seconds:.3f} frames/s ({count * steps / seconds:.2f} "
          f"frame-steps/s, {load()})")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  common.enable_compilation_cache()
  weights = weights_lib.load_vgg19(FLAGS.weights)
  style = image_io.load_image(FLAGS.style, max(FLAGS.size, FLAGS.speed_size))
  print(f"weights: {weights.source}" + (" (random: figures compare modes, pictures are not artistic)"
                                         if not weights.sha256 else ""))
  for what in FLAGS.what:
    {"error": measure_error, "warm": measure_warm, "speed": measure_speed}[what](weights, style)


if __name__ == "__main__":
  app.run(main)
