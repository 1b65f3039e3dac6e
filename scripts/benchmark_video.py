"""Video figures of issues 13 and 21: flicker (temporal error) per mode, ghosting, warm start, and speed.

    python scripts/benchmark_video.py --what error,warm --size 48 --frames 5 --steps 30
    python scripts/benchmark_video.py --what ghosting --size 128 --frames 10 --steps 20
    python scripts/benchmark_video.py --what ghosting --input clip.mp4 --size 128 --frames 10 --steps 20
    python scripts/benchmark_video.py --what speed --size 256 --frames 8 --steps 4

- error: temporal error E (`flow.temporal_error`: mean over t of the mean squared difference between output
  frame t and output t-1 warped by the flow, over the pixels the occlusion mask keeps) of per-frame
  stylisation (each frame on its own from the photo: what `nst-jax` does for one picture), `video`
  sequential and `video` multipass, at the same steps per frame, on (a) a synthetic clip (a picture panned
  2 px per frame plus a square moving the other way) and (b) a clip cut from a photo of ../shared/data
  (pan and zoom). Target: sequential and multipass E <= 1/4 of per-frame.
- ghosting: flicker alone rewards copying the previous frame (an object that moves fades into the
  background, streaks grow from an edge). Beside the flicker ratio (video / per-frame E), the per-frame
  content and style residuals of the video's frames and of each frame stylised alone (the default losses'
  content and style terms, invariant: `||F - P||^2 / ||P||^2` and `||G - A||^2 / ||A||^2`), over the pixels
  where copying goes wrong: occluded or out of frame (the flow's forward-backward check and border,
  `flow.reliable_mask`) or moving against the camera (flow more than `--moving_px` from the frame's median
  flow); ghosting = (content_weight x content + style_weight x style) of the video / of per-frame, over
  frames 2..T. Targets: flicker <= 0.25 and ghosting <= 1.25. The clips (`--ghost_clips`) are a camera
  pan and zoom across a photo of ../shared/data/content with an object cut from another photo moving across
  it (`moving_clip`); `--input` measures a real clip instead.
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

from nst_jax import engine, flow, image_io, inputs, settings, video, weights as weights_lib
from nst_jax.commands import common

SHARED_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")
flags.DEFINE_list("what", ["error", "ghosting", "warm", "speed"], "Figures: error, ghosting, warm, speed.")
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
flags.DEFINE_list("ghost_clips", ["tubingen.jpg+chelsea.png", "coffee.png+astronaut.png"],
                  "Ghosting clips: BACKGROUND+OBJECT photos of ../shared/data/content (moving_clip).")
flags.DEFINE_string("input", None, "Ghosting: a real clip (video file or frames folder) instead of --ghost_clips.")
flags.DEFINE_string("save_frames", None, "Ghosting: save a strip (input / alone / video) per clip in DIR.")
flags.DEFINE_float("moving_px", 1.0, "Ghosting: a pixel moves when its flow is this far from the median flow.")
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


def moving_clip(background: str, thing: str, size: int, count: int) -> list[np.ndarray]:
  """A camera panning (2% of the photo's width per frame) and zooming in (1.5% per frame) across the photo
  `background`, and an ellipse cut from the photo `thing` (a third of the frame high) crossing the frame
  the other way, 4% of the frame's width per frame, and a little downwards."""
  photo, other = image_io.open_image(background), image_io.open_image(thing)
  height, width = photo.shape[:2]
  frames = []
  for t in range(count):
    scale = 0.7 * (1 - 0.015 * t)
    h, w = int(height * scale), int(width * scale)
    x0, y0 = int(0.05 * width + 0.02 * width * t), (height - h) // 2
    frames.append(image_io.resize_longest(photo[y0:y0 + h, x0:x0 + w], size))
  out_h, out_w = frames[0].shape[:2]
  side = out_h // 3
  cut = image_io.resize(other, (side, round(side * 1.3)))
  rows, cols = np.mgrid[0:cut.shape[0], 0:cut.shape[1]]
  inside = ((rows - cut.shape[0] / 2) / (cut.shape[0] / 2))**2 + ((cols - cut.shape[1] / 2) / (cut.shape[1] / 2))**2
  inside = inside <= 1.0
  for t, frame in enumerate(frames):
    left = int(out_w * (0.75 - 0.04 * t)) - cut.shape[1] // 2
    top = out_h // 3 + int(0.01 * out_h * t)
    for r, c in zip(*np.nonzero(inside)):
      if 0 <= top + r < out_h and 0 <= left + c < out_w:
        frame[top + r, left + c] = cut[r, c]
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


def ghost_mask(frames, t: int, cache, moving_px: float) -> np.ndarray:
  """Frame t's pixels where copying frame t-1 goes wrong: not reliable (occluded, out of frame, motion
  boundary) or moving against the camera (flow t -> t-1 more than `moving_px` from its median)."""
  flow_ts, reliable = cache.pair(frames, t, t - 1)
  median = np.median(flow_ts.reshape(-1, 2), axis=0)
  moving = np.linalg.norm(flow_ts - median, axis=-1) > moving_px
  return ((reliable < 0.5) | moving).astype(np.float32)


def masked_residuals(weights, cfg, frame, style, image, mask) -> tuple[float, float]:
  """(content, style) residuals of `image` against `frame` and the painting over `mask` `[H, W]`: the invariant
  content term weighted by the mask at each content layer, and the style term of the guided Gram matrix of
  the masked positions, weighted by their share (`losses.style_layer_loss` with a mask)."""
  import dataclasses

  import jax.numpy as jnp

  from nst_jax import losses, optimize, vgg
  spec = dataclasses.replace(optimize.loss_spec_from_config(cfg), loss_normalization="invariant")
  targets = optimize.make_targets(weights, spec, frame, [style], content_weight=1.0, style_weight=1.0,
                                  tv_weight=0.0)
  features = vgg.extract_features(weights, jnp.asarray(image, jnp.float32), spec.all_layers, pooling=spec.pooling)
  content = np.mean([float(losses.content_loss(
      features=features[n], target=targets.content_features[n], normalization="invariant",
      weight=losses.downsample_mask(mask, n))) for n in spec.content_layers])
  style_term = sum(w * float(losses.style_layer_loss(
      features=features[n], target_gram=targets.style_grams[n], normalization="invariant",
      mask=losses.downsample_mask(mask, n))) for n, w in spec.style_layer_weights)
  return float(content), float(style_term)


def ghosting(weights, cfg, frames, style, video_frames, alone_frames, cache) -> dict:
  """Content, style and weighted residuals over the ghost masks of frames 2..T, summed, video vs alone."""
  sums = {"video": np.zeros(2), "alone": np.zeros(2)}
  for t in range(1, len(frames)):
    mask = ghost_mask(frames, t, cache, FLAGS.moving_px)
    if mask.sum() == 0:
      continue
    for name, outputs in (("video", video_frames), ("alone", alone_frames)):
      sums[name] += masked_residuals(weights, cfg, frames[t], style, outputs[t], mask)
  weighted = {k: cfg.content_weight * v[0] + cfg.style_weight * v[1] for k, v in sums.items()}
  return {"content": sums["video"][0] / sums["alone"][0], "style": sums["video"][1] / sums["alone"][1],
          "ghosting": weighted["video"] / weighted["alone"],
          "masked": float(np.mean([ghost_mask(frames, t, cache, FLAGS.moving_px).mean()
                                   for t in range(1, len(frames))]))}


def ghost_clips() -> list[tuple[str, list[np.ndarray]]]:
  if FLAGS.input:
    from nst_jax import video_io
    clip = video_io.read_clip(FLAGS.input, FLAGS.size, selection=video_io.Selection(frames=FLAGS.frames))
    return [(FLAGS.input, clip.frames)]
  content = os.path.join(SHARED_DATA, "content")
  return [(name, moving_clip(*[os.path.join(content, p) for p in name.split("+")], FLAGS.size, FLAGS.frames))
          for name in FLAGS.ghost_clips]


def measure_ghosting(weights, style) -> None:
  print(f"flicker and ghosting at {FLAGS.size} px, {FLAGS.frames} frames, {FLAGS.steps} steps per frame, "
        f"sequential (settings: {', '.join(FLAGS.settings) or 'defaults'}):")
  for name, frames in ghost_clips():
    begin = time.perf_counter()
    cfg = config(FLAGS.size, FLAGS.steps, log_every=FLAGS.steps)
    style = image_io.load_image(FLAGS.style, inputs.style_size(cfg))  # As the command loads it.
    cache = flow.FlowCache(None, cfg.flow_method)
    alone = per_frame(frames, style, cfg, weights)
    result = video.run_video(frames, [style], cfg, weights=weights, flow_cache=cache)
    flicker = video.mean_error(result.temporal_error) / video.mean_error(
        flow.temporal_error(alone, frames, cfg.flow_method, cache))
    ghost = ghosting(weights, cfg, frames, style, result.frames, alone, cache)
    print(f"  {name}: flicker {flicker:.3f} of per-frame (target <= 0.25), ghosting {ghost['ghosting']:.3f} "
          f"(content {ghost['content']:.3f}, style {ghost['style']:.3f}; target <= 1.25) over "
          f"{100 * ghost['masked']:.0f}% of the pixels ({time.perf_counter() - begin:.0f} s, {load()})")
    if FLAGS.save_frames:
      os.makedirs(FLAGS.save_frames, exist_ok=True)
      strip = np.concatenate([np.concatenate(row, axis=1) for row in (frames, alone, result.frames)], axis=0)
      image_io.save_image(os.path.join(FLAGS.save_frames, name.replace("/", "_") + ".png"), strip)


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
    {"error": measure_error, "warm": measure_warm, "speed": measure_speed,
     "ghosting": measure_ghosting}[what](weights, style)


if __name__ == "__main__":
  app.run(main)
