"""Temporally consistent style transfer of a clip: frames become engine jobs with a temporal loss term.

    result = run_video(clip.frames, [style], settings.resolve({...}, scope="video"), weights=weights)

Ruder, Dosovitskiy & Brox 2016 ("Artistic style transfer for videos"): frame t is pulled towards the
earlier outputs warped into it by the optical flow, where the flow is reliable (`losses.temporal_loss`,
masks made disjoint nearer-first by `losses.closest_first`), and starts from the warped previous output.
No run loop lives here: each frame (sequential) or each pass (multipass) is a list of `engine.Job`s that
carry the temporal targets (`Job.extra_targets`) and the starting image (`Job.init_image`).

- `video_mode sequential`: frame by frame; frame 0 starts from `config.init` (with its coarse-to-fine
  schedule, if any), frame t from the warped output of frame t - min(temporal_frames) where that flow is
  reliable and from its own init elsewhere (`sequential_start`), at the output size only, pulled towards
  the outputs of frames t - d for d in `temporal_frames`.
- `video_mode multipass`: `passes` passes, `steps` split over them; each pass is one batch of every frame
  (vmapped, sharded over the devices by the engine). Pass 1 stylises each frame on its own; later passes
  alternate direction (forwards, backwards, ...): frame t starts from its previous-pass result blended
  with the previous-pass result of its neighbour t -/+ 1 warped into it (artistic-videos' blendWeight 1,
  weighted by the neighbour's reliability mask) and is pulled towards the previous-pass outputs of
  t -/+ d. As the frames of a pass run in parallel, a pass propagates information one frame along.
- With a `workdir`: the flow is cached in `workdir/flow`, each frame's job has its own checkpoints
  (`workdir/checkpoints/passNN/frame_NNNNN`), finished frames are kept losslessly as float32 `.npy`
  (`workdir/frames`), and the same call after an interruption (even `kill -9`) resumes and produces the
  uninterrupted result exactly: later frames are warped from the same float arrays either way.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from typing import Any, Callable, Iterable, Sequence

import jax
import ml_collections
import numpy as np

from nst_jax import batch as mesh_lib, color, engine, image_io, inputs, losses, optimize, rundir, settings, vgg
from nst_jax.errors import NstJaxError

BLEND_WEIGHT = 1.0  # Multipass start: weight of the warped neighbour where reliable (artistic-videos' blendWeight).
DEFAULT_MAX_BATCH = 8  # Most frames stepped together in a multipass batch (memory grows with it).
IDENTITY = "video.json"
METRICS = "metrics.jsonl"
REPORT = "report.md"
PROGRESS = "progress.png"


@dataclasses.dataclass
class VideoResult:
  """What `run_video` produced.

  Attributes:
    frames: the stylised frames, float32 `[H, W, 3]` in [0, 1], in clip order (those finished, when stopped).
    temporal_error: `[T - 1]` flicker per frame pair (`flow.temporal_error`): mean squared difference of
      output t and output t-1 warped into it, over reliable pixels (empty when stopped).
    seconds: wall time of this call.
    per_frame: one dict per frame: frame (1-based), pass, steps, seconds, final losses, temporal_error
      (None for frame 1).
    status: 'done', or 'stopped' (a hook stopped a frame; with a workdir, the same call resumes).
  """
  frames: list[np.ndarray]
  temporal_error: np.ndarray
  seconds: float
  per_frame: list[dict]
  status: str = "done"


def split_steps(steps: int, passes: int) -> list[int]:
  """`steps` split over `passes` as evenly as possible (earlier passes get the remainder)."""
  base, extra = divmod(int(steps), int(passes))
  return [base + (1 if i < extra else 0) for i in range(int(passes))]


def pass_plan(config: ml_collections.ConfigDict) -> list[tuple[int, int]]:
  """`[(direction, steps)]` per pass: direction 0 (each frame on its own), +1 (from earlier frames) or -1."""
  if config.video_mode == "sequential":
    return [(1, int(config.steps))]
  passes = int(config.passes)
  if int(config.steps) < passes:
    raise NstJaxError(f"multipass needs steps >= passes, got steps {config.steps} and passes {passes}")
  return [(0 if p == 0 else (1 if p % 2 else -1), s) for p, s in enumerate(split_steps(config.steps, passes))]


def check_frames(frames: Sequence[np.ndarray]) -> list[np.ndarray]:
  """The frames as float32 `[H, W, 3]` arrays of one size, or a one-line `NstJaxError`."""
  if len(frames) == 0:
    raise NstJaxError("the clip has no frames")
  arrays = [np.asarray(f, np.float32) for f in frames]
  shape = arrays[0].shape
  if len(shape) != 3 or shape[-1] != 3:
    raise NstJaxError(f"frames must be [H, W, 3], got shape {shape}")
  for i, a in enumerate(arrays):
    if a.shape != shape:
      raise NstJaxError(f"frame {i + 1} is {a.shape[1]}x{a.shape[0]} but frame 1 is {shape[1]}x{shape[0]}")
  return arrays


def prepare_frames(frames: Sequence[np.ndarray], max_size: int) -> tuple[list[np.ndarray], list[str]]:
  """The frames at the video's size (`video_io.even_size`: longest side `max_size`, both sides even, so the
  size stylised is the size written), and notes; a one-line `NstJaxError` for frames too small.
  The command and the web worker both prepare a clip this way."""
  from nst_jax import video_io
  frames = check_frames(frames)
  _, notes = inputs.prepare_content(frames[0], int(max_size), "frame 1")  # Checks the size, notes an upscale.
  size = video_io.even_size(*frames[0].shape[:2], int(max_size))
  return [image_io.resize(f, size) for f in frames], notes


def temporal_targets(frames: Sequence[np.ndarray], t: int, sources: Sequence[int | None],
                     outputs: Any, cache: Any, weight: float) -> dict:
  """`Job.extra_targets` of frame t: the outputs of frames `sources` (None: none) warped into frame t by the
  flow t -> s, their reliability masks made disjoint nearer-first, and the temporal weight.

  `sources` are nearest first; K = len(sources) whether or not each exists, so every frame of a clip
  compiles to the same program (a missing source has mask 0: it adds exactly nothing to the loss)."""
  from nst_jax import flow
  height, width, _ = frames[t].shape
  warped = np.zeros((len(sources), height, width, 3), np.float32)
  masks = np.zeros((len(sources), height, width), np.float32)
  for k, s in enumerate(sources):
    if s is None:
      continue
    flow_ts, mask = cache.pair(frames, t, s)
    warped[k] = np.clip(flow.warp(outputs[s], flow_ts), 0.0, 1.0)
    masks[k] = mask
  masks = np.asarray(losses.closest_first(masks), np.float32)
  return {"temporal_images": warped, "temporal_masks": masks, "temporal_weight": np.float32(weight)}


def sequential_start(frame: np.ndarray, styles: Sequence[np.ndarray], config: ml_collections.ConfigDict,
                     extras: dict, sources: Sequence[int | None]) -> np.ndarray | None:
  """Sequential start of a frame: the nearest earlier output warped into it where the flow is reliable, and
  the frame's own start (`config.init`, e.g. the photo) where it is not (disoccluded, out of frame, motion
  boundaries). Copying the warped image there too drags the edge's colours in as streaks that a few steps
  per frame do not repaint (issue 21). None for the first frame."""
  k = next((k for k, s in enumerate(sources) if s is not None), None)
  if k is None:
    return None
  content, prepared = color.prepare(frame, styles, config.preserve_colors)
  own = optimize.init_image(config.init, content, prepared, seed=int(config.seed),
                            style_blend_weights=config.style_blend_weights)
  mask = np.asarray(extras["temporal_masks"][k], np.float32)[..., None]  # The nearest: closest_first keeps it.
  return (mask * extras["temporal_images"][k] + (1.0 - mask) * own).astype(np.float32)


def _blend_start(frames, t: int, neighbour: int | None, outputs: Any, cache: Any) -> np.ndarray:
  """Multipass start of frame t: its previous-pass output blended with the neighbour's warped into it."""
  from nst_jax import flow
  own = np.asarray(outputs[t], np.float32)
  if neighbour is None:
    return own
  flow_ts, mask = cache.pair(frames, t, neighbour)
  weight = BLEND_WEIGHT * np.asarray(mask, np.float32)[..., None]
  warped = np.clip(flow.warp(outputs[neighbour], flow_ts), 0.0, 1.0)
  return ((own + weight * warped) / (1.0 + weight)).astype(np.float32)


class _Store:
  """Finished frames (float32 `.npy` of the optimised image + a `.json` record) and checkpoint folders in a
  workdir; in memory without one."""

  def __init__(self, workdir: str | None):
    self.workdir = workdir
    self.memory: dict[tuple[int, int], tuple[np.ndarray, dict]] = {}
    if workdir:
      os.makedirs(os.path.join(workdir, "frames"), exist_ok=True)

  def _path(self, p: int, t: int, ext: str) -> str:
    return os.path.join(self.workdir, "frames", f"pass{p + 1:02d}_{t + 1:05d}{ext}")

  def checkpoint_dir(self, p: int, t: int) -> str | None:
    if not self.workdir:
      return None
    return os.path.join(self.workdir, "checkpoints", f"pass{p + 1:02d}", f"frame_{t + 1:05d}")

  def load(self, p: int, t: int) -> tuple[np.ndarray, dict] | None:
    if not self.workdir:
      return self.memory.get((p, t))
    path = self._path(p, t, ".json")
    if not os.path.exists(path):
      return None
    with open(path, encoding="utf-8") as f:
      record = json.load(f)
    return np.load(self._path(p, t, ".npy")), record

  def save(self, p: int, t: int, raw: np.ndarray, record: dict) -> None:
    if not self.workdir:
      self.memory[(p, t)] = (raw, record)
      return
    with image_io.atomic_write(self._path(p, t, ".npy"), "wb") as f:
      np.save(f, np.asarray(raw, np.float32))
    rundir.write_json(self._path(p, t, ".json"), record)  # Written last: it marks the frame as finished.
    shutil.rmtree(self.checkpoint_dir(p, t), ignore_errors=True)


def video_identity(frames, styles, config, weights: vgg.VGGWeights) -> dict:
  """Everything that decides the video: settings, weights, every frame and painting."""
  return rundir.identity(config, weights_source=weights.source, weights_sha256=weights.sha256,
                         content=np.stack(frames), styles=list(styles))


def _claim_workdir(workdir: str, ident: dict) -> None:
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, IDENTITY)
  if os.path.exists(path):
    old = rundir.read_json(path).get("identity", {})
    if rundir.config_hash(old) != rundir.config_hash(ident):
      changed = rundir.differences(old, ident) or ["unknown"]
      raise NstJaxError(f"{workdir} holds another video run (changed: {', '.join(changed)}); use another "
                        f"--workdir or remove it")
  rundir.write_json(path, {"identity": ident, "config_hash": rundir.config_hash(ident)})


def progress_strip(frames: Sequence[np.ndarray], *, count: int = 8, height: int = 96) -> np.ndarray:
  """Up to `count` evenly spaced frames side by side, each `height` px high: what progress.png shows."""
  picks = np.unique(np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int))
  tiles = []
  for i in picks:
    h, w, _ = frames[i].shape
    tiles.append(image_io.resize(np.asarray(frames[i], np.float32), (height, max(1, round(w * height / h)))))
  return np.concatenate(tiles, axis=1)


def run_video(frames: Sequence[np.ndarray], styles: Sequence[np.ndarray], config: ml_collections.ConfigDict, *,
              weights: vgg.VGGWeights, workdir: str | None = None, hooks: Iterable[Any] = (),
              flow_cache: Any = None, progress: Callable[[dict], None] | None = None,
              max_batch: int | None = DEFAULT_MAX_BATCH, checkpoint_every: int = 50) -> VideoResult:
  """Stylises `frames` (float32 `[H, W, 3]`, all one size) with the settings in `config`.

  Args:
    frames: the clip's frames in order (e.g. `video_io.read_clip(...).frames`).
    styles: one or more paintings (blended by `style_blend_weights`).
    config: `settings.resolve(..., scope="video")`: every picture setting applies to each frame, plus the
      video settings (temporal_weight, video_mode, temporal_frames, passes, flow_method).
    weights: VGG19 weights.
    workdir: a run folder: flow cache, per-frame checkpoints, finished frames (float32 .npy, lossless),
      metrics.jsonl, report.md, progress.png; the same call after an interruption resumes and gives the
      uninterrupted result. None: everything in memory.
    hooks: engine hooks (`nst_jax.hooks`), called for every frame's job (e.g. `StopOnSignals`).
    flow_cache: a `flow.FlowCache` (default: one in `workdir/flow`, or in memory).
    progress: called after each finished batch of frames with a dict: done, total (frames x passes),
      pass, passes, frames (1-based numbers just finished), seconds (of this call).
    max_batch: most frames in one multipass batch (None: all).
    checkpoint_every: with a workdir, save a frame's checkpoint every N steps (and at its end).

  Returns:
    A `VideoResult`.

  Raises:
    NstJaxError: a bad setting or input (one line), or a workdir that holds another run.
  """
  from nst_jax import flow
  begin = time.perf_counter()
  frames = check_frames(frames)
  styles = engine.as_style_list(styles)
  settings.validate(config, len(styles))
  if int(config.tile_preview):  # A mosaic of a clip is not written anywhere: say so rather than ignore it.
    raise NstJaxError("tile_preview is a setting of pictures; nst-jax video does not write mosaics")
  offsets = settings.temporal_offsets(config)
  plan = pass_plan(config)
  if workdir:
    _claim_workdir(workdir, video_identity(frames, styles, config, weights))
  cache = flow_cache if flow_cache is not None else flow.FlowCache(
      os.path.join(workdir, "flow") if workdir else None, config.flow_method)
  store = _Store(workdir)
  mesh = mesh_lib.make_mesh() if jax.device_count() > 1 else None
  # Multipass batches are padded to their full size, so that a resumed pass with fewer frames left runs the
  # same compiled program, and gives the same numbers, as the uninterrupted one.
  full = 1 if config.video_mode == "sequential" else min(len(frames), max_batch or len(frames))
  runner = engine.Engine(weights, mesh=mesh, max_batch=max_batch, min_batch=full,
                         checkpoints=engine.CheckpointPolicy(every_steps=int(checkpoint_every)))
  hooks = list(hooks)
  count, total = len(frames), len(frames) * len(plan)
  previous: list[np.ndarray] | None = None  # Optimised images of the previous pass.
  records: list[dict | None] = [None] * count
  done = 0

  def report(p: int, numbers: list[int]) -> None:
    if progress is not None:
      progress({"done": done, "total": total, "pass": p + 1, "passes": len(plan), "frames": numbers,
                "seconds": time.perf_counter() - begin})

  for p, (direction, steps) in enumerate(plan):
    current: list[np.ndarray | None] = [None] * count
    for t in range(count):
      found = store.load(p, t)
      if found is not None:
        current[t], records[t] = found
        done += 1
    report(p, [])
    sequential = config.video_mode == "sequential"
    todo = [t for t in range(count) if current[t] is None]
    groups = [[t] for t in todo] if sequential else [todo] if todo else []
    for group in groups:
      jobs = []
      for t in group:
        if sequential:
          sources = [t - d if t - d >= 0 else None for d in offsets]
          extras = temporal_targets(frames, t, sources, current, cache, config.temporal_weight)
          start = sequential_start(frames[t], styles, config, extras, sources)
        elif direction == 0:
          sources = [None] * len(offsets)
          extras = temporal_targets(frames, t, sources, previous, cache, config.temporal_weight)
          start = None
        else:
          sources = [t - direction * d if 0 <= t - direction * d < count else None for d in offsets]
          extras = temporal_targets(frames, t, sources, previous, cache, config.temporal_weight)
          neighbour = t - direction if 0 <= t - direction < count else None
          start = _blend_start(frames, t, neighbour, previous, cache)
        job_config = ml_collections.ConfigDict(config.to_dict())
        job_config.steps = steps
        if start is not None:
          job_config.scale_start = 0  # Warm starts run at the output size only.
        jobs.append(engine.Job(content=frames[t], styles=styles, config=job_config,
                               name=f"frame {t + 1}/{count}" + (f" pass {p + 1}" if len(plan) > 1 else ""),
                               checkpoint_dir=store.checkpoint_dir(p, t), init_image=start, extra_targets=extras))
      results = runner.run(jobs, hooks=hooks)
      finished = []
      for t, result in zip(group, results):
        if result.status != "done":
          continue
        earlier = records[t] if p > 0 and records[t] is not None else {"steps": 0, "seconds": 0.0}
        record = {"frame": t + 1, "pass": p + 1, "steps": earlier["steps"] + result.total_steps,
                  "seconds": earlier["seconds"] + result.seconds, **result.metrics}  # Over all passes so far.
        store.save(p, t, result.raw_image, record)
        current[t], records[t] = result.raw_image, record
        finished.append(t + 1)
        done += 1
      if workdir and finished:
        shown = [color.finish(current[t], frames[t], config.preserve_colors) for t in range(count)
                 if current[t] is not None]
        image_io.save_image(os.path.join(workdir, PROGRESS), progress_strip(shown))
      report(p, finished)
      if len(finished) < len(group):
        outputs = [color.finish(x, f, config.preserve_colors) for x, f in zip(current, frames) if x is not None]
        return VideoResult(frames=outputs, temporal_error=np.zeros(0, np.float32),
                           seconds=time.perf_counter() - begin, per_frame=[r for r in records if r], status="stopped")
    previous = current
  outputs = [color.finish(x, f, config.preserve_colors) for x, f in zip(previous, frames)]
  errors = np.asarray(flow.temporal_error(outputs, frames, method=config.flow_method, cache=cache), np.float32)
  # NaN (no reliable pixel, e.g. a scene cut) is recorded as None.
  per_frame = [dict(r, temporal_error=None if t == 0 or not np.isfinite(errors[t - 1]) else float(errors[t - 1]))
               for t, r in enumerate(records)]
  result = VideoResult(frames=outputs, temporal_error=errors, seconds=time.perf_counter() - begin,
                       per_frame=per_frame)
  if workdir:
    write_report(workdir, result, config)
  return result


def mean_error(errors: np.ndarray) -> float:
  """Mean temporal error over the frame pairs that have reliable pixels (0 for a single frame)."""
  errors = np.asarray(errors, np.float64)
  return float(np.mean(errors[np.isfinite(errors)])) if np.isfinite(errors).any() else 0.0


def write_metrics(path: str, result: VideoResult) -> None:
  """One JSON line per frame (pass, steps, seconds, losses, temporal_error), written atomically."""
  with image_io.atomic_write(path, "w") as f:
    for record in result.per_frame:
      f.write(json.dumps(rundir._jsonable(record), sort_keys=True) + "\n")


def write_report(workdir: str, result: VideoResult, config: ml_collections.ConfigDict) -> None:
  """metrics.jsonl (one line per frame, with its temporal error) and report.md in `workdir`."""
  write_metrics(os.path.join(workdir, METRICS), result)
  errors = result.temporal_error
  finite = bool(np.isfinite(errors).any())
  lines = [f"# Video run: {len(result.frames)} frames, {config.video_mode}", "",
           f"Temporal error E (mean squared difference of frame t and frame t-1 warped by the flow, over reliable "
           f"pixels): mean {mean_error(errors):.6g}, max {float(np.nanmax(errors)) if finite else 0.0:.6g}.", "",
           "| frame | pass | steps | seconds | total loss | temporal error |", "|---|---|---|---|---|---|"]
  for r in result.per_frame:
    e = "-" if r.get("temporal_error") is None else f"{r['temporal_error']:.6g}"
    lines.append(f"| {r['frame']} | {r['pass']} | {r['steps']} | {r['seconds']:.1f} | {r.get('total', 0.0):.6g} "
                 f"| {e} |")
  with image_io.atomic_write(os.path.join(workdir, REPORT), "w") as f:
    f.write("\n".join(lines) + "\n")
