"""The one worker thread that owns the accelerator: takes queued jobs, batches compatible ones, runs them on
the engine (`nst_jax.engine`), which owns the step loop.

Bucket policy: the first queued job and up to `max_batch - 1` more queued jobs whose first stage has the
same image shape and the same compiled settings (`settings.STATIC`: optimizer and its settings, layers,
pooling, TV kind) run as one vmapped batch. Step counts, resume points, loss weights, seeds, blends and
colours may differ: each job has its own step budget in the batch. `compiled_steps()` counts the step
programs XLA compiled (one per shape, static settings and batch size). A batch that fails runs its
unfinished jobs again one by one, so one job's problem (e.g. a checkpoint of another run) fails that job only.

Checkpoints are the engine's (orbax, one format everywhere) in each job's `checkpoints/` folder, every
`checkpoint_every` seconds and at stops. A cancel stops only that job (the others of its batch go on); a
server stop checkpoints every running job and puts it back in the queue, so nothing is lost on a restart.

A video job runs alone, through `nst_jax.video.run_video` (the command's entry point) with the job's `run/`
folder as its workdir: per-frame progress goes to the store, a stop or restart resumes from the finished
frames and the frame checkpoints, and the result is `result.mp4` at the clip's frame rate with its sound.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import traceback

import ml_collections
import numpy as np

from nst_jax import color, cost, engine, image_io, settings, tiles
from nst_jax.errors import NstJaxError
from nst_jax.server.jobs import JobStore

log = logging.getLogger("nst_jax.server")

FRAMES_DIR, CLIP_FILE, AUDIO_FILE, VIDEO_RESULT = "frames", "clip.json", "audio.m4a", "result.mp4"
TILE_PREVIEW_BASE = "tile.png"  # A job's mosaic (tile_preview N) is tile.tileNxN.png in its folder.
LOG_POINTS = 60  # Loss points per job when the job does not set log_every.
VIDEO_CHECKPOINT_STEPS = 50  # A video frame's checkpoint every this many steps (and at its end and at stops).


def job_config(options: dict, num_styles: int | None = None, kind: str = "image") -> ml_collections.ConfigDict:
  """The run config of a job: `settings.resolve` of its options (the API's form fields, by setting name);
  video settings are accepted for video jobs only."""
  config = settings.resolve(options, num_styles=num_styles, scope="video" if kind == "video" else "image")
  if not options.get("log_every"):
    config.log_every = max(1, int(config.steps) // LOG_POINTS)
  return config


def input_name(field: str, index: int = 1, ext: str = ".npy") -> str:
  """A job's input file: `content.npy`, `style.npy`, `style2.npy`..., `style_region.npy`, `style2_region.npy`,
  `style2_region_source.npy`... (painting `index`, from 1). `.npy`: the float32 arrays the job runs from, as
  `inputs.prepare_job` made them at submission (lossless: never re-encoded, never resized again); `.png`: the
  8-bit copies the page shows (`/api/jobs/{id}/input/...`)."""
  head, _, tail = field.partition("_")
  return f"{head}{index if index > 1 else ''}{'_' + tail if tail else ''}{ext}"


def input_arrays(folder: str, field: str, count: int | None = None) -> list[np.ndarray | None]:
  """The stored arrays of `field` in painting order: all there are, or `count` of them with None where one
  is missing."""
  found, index = [], 1
  while count is None or index <= count:
    path = os.path.join(folder, input_name(field, index))
    if not os.path.exists(path):
      if count is None:
        break
      found.append(None)
    else:
      found.append(np.load(path, allow_pickle=False))
    index += 1
  return found


def load_job(store: JobStore, job: dict) -> engine.Job:
  """The engine job of a stored job: the photo, paintings and masks `submit` prepared and stored (no decoding,
  no resizing: they are the arrays the command would make of the same files)."""
  folder = store.job_dir(job["id"])
  if not os.path.exists(os.path.join(folder, input_name("content"))):
    raise NstJaxError("this job's inputs were stored by an older version of the server: submit it again")
  styles = input_arrays(folder, "style")
  config = job_config(job["options"], len(styles))
  masks = {}
  for name, field in (("regions", "style_region"), ("region_sources", "style_region_source")):
    arrays = input_arrays(folder, field, len(styles))
    masks[name] = arrays if any(a is not None for a in arrays) else None
  return engine.Job(content=np.load(os.path.join(folder, input_name("content")), allow_pickle=False), styles=styles,
                    config=config, name=job["id"], checkpoint_dir=store.checkpoint_dir(job["id"]), **masks)


def load_video(store: JobStore, job: dict) -> tuple[list[np.ndarray], list[np.ndarray], ml_collections.ConfigDict,
                                                     float]:
  """`(frames, styles, config, fps)` of a stored video job, prepared as `nst-jax video` prepares a clip."""
  from nst_jax import video, video_io
  styles = input_arrays(store.job_dir(job["id"]), "style")  # Prepared at submission (`submit`).
  config = job_config(job["options"], len(styles), kind="video")
  with open(store.path(job["id"], CLIP_FILE), encoding="utf-8") as f:
    fps = float(json.load(f)["fps"])
  # The stored frames are the part of the clip selected at submission (`submit.write_video_inputs`).
  clip = video_io.read_clip(store.path(job["id"], FRAMES_DIR), int(config.max_size),
                            selection=video_io.Selection(fps=fps))
  frames, _ = video.prepare_frames(clip.frames, int(config.max_size))
  return frames, styles, config, fps


class Worker:
  """Runs queued jobs of `store` one batch at a time on a background thread."""

  def __init__(self, store: JobStore, weights, *, max_batch: int = 4, checkpoint_every: float | None = 30.0,
               preview_every: float = 2.0, batch_wait: float = 0.5, poll: float = 0.5):
    self.store = store
    self.weights = weights
    self.max_batch = max(1, int(max_batch))
    self.preview_every = preview_every
    self.batch_wait = batch_wait
    self.poll = poll
    self.batches_run = 0
    policy = engine.CheckpointPolicy(every_steps=0, every_seconds=float(checkpoint_every or 0.0), keep=1)
    self.engine = engine.Engine(weights, max_batch=self.max_batch, checkpoints=policy)
    self._cancel: set[str] = set()
    self._keys: dict[str, tuple] = {}  # Queued job id -> its bucket key (engine.job_bucket_key).
    self._stop = threading.Event()
    self._wake = threading.Event()
    self._thread: threading.Thread | None = None

  # ---- control (called from the web handlers) ----------------------------------------------------------------

  def start(self) -> None:
    self.store.requeue_running()
    self._stop.clear()
    self._thread = threading.Thread(target=self._loop, name="nst-jax-worker", daemon=True)
    self._thread.start()

  def stop(self, timeout: float = 30.0) -> None:
    """Stops the running jobs at their next step, checkpoints them and returns them to the queue."""
    self._stop.set()
    self._wake.set()
    if self._thread is not None:
      self._thread.join(timeout)

  def wake(self) -> None:
    self._wake.set()

  def cancel(self, job_id: str) -> None:
    self._cancel.add(job_id)
    self._wake.set()

  def compiled_steps(self) -> int:
    """How many step programs have been compiled (one per shape, static settings and batch size)."""
    return self.engine.compiled_steps()

  # ---- the loop ------------------------------------------------------------------------------------------------

  def _loop(self) -> None:
    while not self._stop.is_set():
      try:
        batch = self._next_batch()
        if batch:
          self._run_batch(batch)
          continue
      except Exception:  # Never let the worker die; the failing jobs were marked failed.
        log.error("worker error:\n%s", traceback.format_exc())
      self._wake.wait(self.poll)
      self._wake.clear()

  def _next_batch(self) -> list[tuple[dict, engine.Job]]:
    """Claims the first queued job and the queued jobs of its bucket (at most `max_batch`)."""
    queued = self.store.queued()
    if not queued:
      return []
    wait = queued[-1]["created"] + self.batch_wait - time.time()
    if wait > 0:  # Give simultaneous submissions a moment to arrive and share the batch.
      self._stop.wait(min(wait, self.batch_wait))
      queued = self.store.queued()
      if not queued or self._stop.is_set():
        return []
    self._keys = {job["id"]: self._keys[job["id"]] for job in queued if job["id"] in self._keys}
    first_key, group = None, []
    for job in queued:
      if job["kind"] == "video":  # A video runs alone (its frames are the batch), in queue order.
        if first_key is None and not group:
          claimed = self.store.claim([job["id"]], 1)
          return [(self.store.get(job["id"]), None)] if claimed else []
        continue
      try:
        loaded = None
        if job["id"] not in self._keys:  # Inputs are read once per queued job, not once per batch.
          loaded = load_job(self.store, job)
          self._keys[job["id"]] = self.engine.job_bucket_key(loaded)
        key = self._keys[job["id"]]
        first_key = key if first_key is None else first_key
        if key == first_key:
          group.append((job, loaded or load_job(self.store, job)))
      except NstJaxError as e:
        self.store.finish(job["id"], "failed", str(e))
        continue
      if len(group) >= self.max_batch:
        break
    claimed = set(self.store.claim([job["id"] for job, _ in group], len(group))) if group else set()
    return [(self.store.get(job["id"]), loaded) for job, loaded in group if job["id"] in claimed]

  def _run_batch(self, batch: list[tuple[dict, engine.Job]]) -> None:
    if batch[0][0]["kind"] == "video":
      self._run_video(batch[0][0])
      return
    ids = [job["id"] for job, _ in batch]
    self.batches_run += 1
    log.info("running %d job(s) at %dx%d", len(ids), batch[0][0]["width"], batch[0][0]["height"])
    try:
      # StepTimes: the page's estimates (`POST /api/estimate`) learn this machine's step times, as the commands'.
      self.engine.run([job for _, job in batch], hooks=[_JobHooks(self), cost.StepTimes()])
    except Exception as e:
      left = [(job, loaded) for job, loaded in batch if self.store.get(job["id"])["status"] == "running"]
      if len(batch) > 1 and left and not self._stop.is_set():
        log.warning("a batch of %d failed (%s); running its %d unfinished job(s) one by one", len(batch), e,
                    len(left))
        for one in left:  # One job's problem (e.g. its checkpoint) must not fail the others.
          self._run_batch([one])
        return
      self._fail([job["id"] for job, _ in left], e)

  def _run_video(self, job: dict) -> None:
    """Runs one video job to its end, a stop (requeued; resumes from `run/`) or a cancel."""
    from nst_jax import video, video_io
    job_id = job["id"]
    self.batches_run += 1
    try:
      frames, styles, config, fps = load_video(self.store, job)
      log.info("running video %s: %d frames at %dx%d", job_id, len(frames), frames[0].shape[1], frames[0].shape[0])
      hooks = _VideoHooks(self, job_id)
      result = video.run_video(frames, styles, config, weights=self.weights, workdir=self.store.run_dir(job_id),
                               hooks=[hooks, cost.StepTimes()], progress=hooks.progress, max_batch=self.max_batch,
                               checkpoint_every=VIDEO_CHECKPOINT_STEPS)
      if result.status != "done":
        if job_id in self._cancel:
          self.store.remove_checkpoints(job_id)  # Before the status: a cancelled job has no run left.
          self.store.finish(job_id, "cancelled")
          self._cancel.discard(job_id)
        else:
          self.store.requeue(job_id)
        return
      audio = self.store.path(job_id, AUDIO_FILE)
      video_io.write_video(self.store.path(job_id, VIDEO_RESULT), result.frames, fps,
                           audio_from=audio if os.path.exists(audio) else None)
      image_io.save_image(self.store.path(job_id, "preview.jpg"), result.frames[len(result.frames) // 2])
      errors = np.asarray(result.temporal_error, np.float64)
      flicker = float(np.nanmean(errors)) if len(errors) and np.isfinite(errors).any() else None
      self.store.set_temporal_error(job_id, flicker)
      self.store.update_progress(job_id, self.store.get(job_id)["steps"], new_preview=True)
      self.store.finish(job_id, "done")
      self.store.remove_checkpoints(job_id)
      self._cancel.discard(job_id)
    except Exception as e:
      self._fail([job_id], e)

  def _fail(self, ids, error: Exception) -> None:
    message = str(error) if isinstance(error, NstJaxError) else f"internal error ({type(error).__name__})"
    if not isinstance(error, NstJaxError):
      log.error("job batch failed:\n%s", traceback.format_exc())
    for job_id in ids:
      self.store.finish(job_id, "failed", message)
      self._cancel.discard(job_id)


class _JobHooks:
  """Engine hooks of one batch: losses, progress, previews and checkpoints into the job store; stops."""

  def __init__(self, worker: Worker):
    self.worker, self.store = worker, worker.store
    self.last_preview: dict[str, float] = {}
    self.checkpoint_step: dict[str, int | None] = {}

  def on_job_start(self, run) -> None:
    job_id = run.job.name
    self.last_preview[job_id] = time.monotonic()
    self.checkpoint_step[job_id] = run.saved_step
    for notice in run.notices:  # E.g. a damaged checkpoint was skipped.
      log.warning("job %s: %s", job_id, notice)
    # Where the engine really restored from (the database may lag its newest checkpoint after a crash).
    self.store.set_started(job_id, run.step, run.restored_step or 0)

  def on_step(self, event) -> None:
    job_id = event.run.job.name
    if event.metrics is not None:
      self.store.add_losses(job_id, event.step, event.metrics)
    now = time.monotonic()
    preview = now - self.last_preview[job_id] >= self.worker.preview_every
    if preview:
      self._write_preview(job_id, event.run, event.image())
      self.last_preview[job_id] = now
    if preview or event.metrics is not None:
      rate = event.metrics["steps_per_second"] if event.metrics is not None else None
      self.store.update_progress(job_id, event.step, rate, new_preview=preview)
    self._note_checkpoint(event.run)

  def on_stage_end(self, run) -> None:
    self._note_checkpoint(run)  # The engine checkpoints every finished scale of a coarse-to-fine job.

  def should_stop(self, run) -> bool:
    return self.worker._stop.is_set() or run.job.name in self.worker._cancel

  def on_job_end(self, run) -> None:
    job_id = run.job.name
    image = run.final_image()
    image_io.save_image(self.store.path(job_id, "result.png"), image)
    tiles.write_preview(self.store.path(job_id, TILE_PREVIEW_BASE), image, int(run.config.tile_preview))
    image_io.save_image(self.store.path(job_id, "preview.jpg"), image[..., :3])  # JPEG: no alpha.
    self.store.update_progress(job_id, run.step, new_preview=True)
    self.store.finish(job_id, "done")
    self.store.remove_checkpoints(job_id)
    self.worker._cancel.discard(job_id)  # A cancel that came too late to stop it.

  def on_job_stopped(self, run) -> None:
    job_id = run.job.name
    if job_id in self.worker._cancel:
      self.store.remove_checkpoints(job_id)  # Before the status: a cancelled job has no run left.
      self.store.finish(job_id, "cancelled")
      self.worker._cancel.discard(job_id)
    else:
      self._note_checkpoint(run)
      self.store.requeue(job_id)

  def _note_checkpoint(self, run) -> None:
    if run.saved_step is not None and run.saved_step != self.checkpoint_step.get(run.job.name):
      self.checkpoint_step[run.job.name] = run.saved_step
      self.store.set_checkpoint(run.job.name, run.saved_step)

  def _write_preview(self, job_id: str, run, image: np.ndarray) -> None:
    _write_preview(self.store, job_id, run, image)


def _write_preview(store: JobStore, job_id: str, run, image: np.ndarray) -> None:
  if run.config.preserve_colors == "luminance" and image.shape == run.photo.shape:
    image = color.finish(image, run.photo, "luminance")  # Show colours, not the luminance being optimised.
  image_io.save_image(store.path(job_id, "preview.jpg"), image)


class _VideoHooks:
  """Engine hooks and the progress callback of one video job: frames done, the share of the whole clip done
  (finished frames plus the running frames' shares of their steps, so it only grows, also between frames and
  across the engine's batches), the shown frame's steps and rate, a preview of it; stops on a cancel or a
  server stop."""

  def __init__(self, worker: Worker, job_id: str):
    self.worker, self.store, self.job_id = worker, worker.store, job_id
    self.done, self.total = 0, max(1, int(self.store.get(job_id)["frames"]))
    self.steps: dict[str, tuple[int, int]] = {}  # The frame jobs of the running engine call -> (step, steps).
    self.ended: set[str] = set()  # Those of them that are finished.
    self.last_preview = time.monotonic()

  def _progress(self) -> tuple[int, float]:
    """(finished frames, share of the clip done), counting the frames that ended in this engine call."""
    shares = sum(1.0 if name in self.ended else step / max(steps, 1) for name, (step, steps) in self.steps.items())
    return self.done + len(self.ended), min(1.0, (self.done + shares) / self.total)

  def _shown(self) -> str | None:
    """The frame job whose steps are shown: the first of this engine call that has not ended."""
    return next((name for name in self.steps if name not in self.ended), None)

  def _report(self, step_of: str | None = None, **kwargs) -> None:
    step, steps = self.steps[step_of] if step_of else (None, None)
    self.store.set_frame_progress(self.job_id, *self._progress(), step=step, steps=steps, **kwargs)

  def progress(self, info: dict) -> None:
    """`run_video`'s callback after each batch of frames: done of total frames (over all passes)."""
    self.done, self.total = int(info["done"]), max(1, int(info["total"]))
    self.steps, self.ended = {}, set()
    self._report()

  def on_job_start(self, run) -> None:
    self.steps[run.job.name] = (run.step, run.total_steps)
    self._report(run.job.name if self._shown() == run.job.name else None, batch_size=len(self.steps))

  def on_step(self, event) -> None:
    name = event.run.job.name
    self.steps[name] = (event.step, event.run.total_steps)
    if name != self._shown():
      return  # The frames of a batch step together: one report per batch step.
    now = time.monotonic()
    preview = now - self.last_preview >= self.worker.preview_every
    if preview:
      _write_preview(self.store, self.job_id, event.run, event.image())
      self.last_preview = now
    if preview or event.metrics is not None:
      rate = event.metrics["steps_per_second"] if event.metrics is not None else None
      self.store.update_progress(self.job_id, event.step, rate, new_preview=preview, progress=self._progress()[1])

  def on_job_end(self, run) -> None:
    self.ended.add(run.job.name)
    self._report(self._shown())  # The next frame of this engine call, if any, is shown from its own step.

  def should_stop(self, run) -> bool:
    return self.worker._stop.is_set() or self.job_id in self.worker._cancel
