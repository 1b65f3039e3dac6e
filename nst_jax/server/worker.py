"""The one worker thread that owns the accelerator: takes queued jobs, batches compatible ones, runs them.

Jobs are compatible when everything compiled into the step agrees (output shape, steps, optimizer and its
settings, layers, pooling, TV kind, and the step they resume from); per-item loss weights, seeds and
images may differ. Up to `max_batch` compatible jobs are stacked (`jax.tree.map(jnp.stack)` of their
`Targets` and `StylizeState`s) and run as one vmapped step (`optimize.Stylizer(config, batched=True)`).
`compiled_steps()` counts the step programs XLA compiled (one per batch size and shape).

Every `checkpoint_every` seconds each job's state is saved (see `checkpoints.py`); a stop request or a
cancel interrupts the run at the next step, checkpoints the other jobs of the batch and puts them back in
the queue, so nothing submitted is lost on a restart.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import image_io, optimize
from nst_jax.configs import default, presets
from nst_jax.errors import NstJaxError
from nst_jax.server import checkpoints
from nst_jax.server.jobs import JobStore

log = logging.getLogger("nst_jax.server")

# Config fields compiled into the step (jobs must agree on them to share a batch).
_STATIC_FIELDS = ("optimizer", "lr", "adam_b1", "adam_eps", "sgd_momentum", "lbfgs_memory",
                  "lbfgs_linesearch_steps", "lbfgs_precondition", "tv_kind",
                  "content_layers", "style_layers", "style_layer_weights", "pooling", "remat")


def job_config(options: dict):
  """The run config of a job: defaults, then the preset, then the job's own options (validated)."""
  config = default.get_config()
  for key, value in presets.get_preset(options.get("preset", presets.DEFAULT_PRESET)).items():
    config[key] = value
  for key in ("steps", "optimizer", "lr", "content_weight", "style_weight", "tv_weight", "seed", "init"):
    if options.get(key) is not None:
      config[key] = options[key]
  if options.get("size") is not None:
    config.max_size = int(options["size"])
  config.log_every = max(1, int(config.steps) // 60)
  optimize.validate_config(config)
  return config


def static_key(config) -> str:
  return json.dumps({k: _jsonable(config.get(k)) for k in _STATIC_FIELDS}, sort_keys=True)


def batch_key(job: dict) -> tuple:
  return (job["height"], job["width"], job["steps"], job["checkpoint_step"], static_key(job_config(job["options"])))


def _jsonable(value):
  return list(value) if isinstance(value, tuple) else value


class _Interrupt(Exception):
  """Raised from the run-loop callback to stop a batch (cancel or shutdown) with its current state."""

  def __init__(self, state):
    super().__init__("interrupted")
    self.state = state


def _stack(trees):
  return jax.tree.map(lambda *x: jnp.stack(x), *trees)


class Worker:
  """Runs queued jobs of `store` one batch at a time on a background thread."""

  def __init__(self, store: JobStore, weights, *, max_batch: int = 4, checkpoint_every: float = 30.0,
               preview_every: float = 2.0, batch_wait: float = 0.5, poll: float = 0.5):
    self.store = store
    self.weights = weights
    self.max_batch = max(1, int(max_batch))
    self.checkpoint_every = checkpoint_every
    self.preview_every = preview_every
    self.batch_wait = batch_wait
    self.poll = poll
    self.batches_run = 0
    self._stylizers: dict[str, optimize.Stylizer] = {}
    self._cancel: set[str] = set()
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
    """Interrupts the running batch at its next step, checkpoints it and returns its jobs to the queue."""
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
    """How many step programs have been compiled (one per shape and batch size)."""
    # `_cache_size` is the jitted function's count of compiled entries (jax has had it since 0.4).
    return sum(getattr(s.step, "_cache_size", lambda: 0)() for s in self._stylizers.values())

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

  def _next_batch(self) -> list[dict]:
    queued = self.store.queued()
    if not queued:
      return []
    wait = queued[-1]["created"] + self.batch_wait - time.time()
    if wait > 0:  # Give simultaneous submissions a moment to arrive and share the batch.
      self._stop.wait(min(wait, self.batch_wait))
      queued = self.store.queued()
      if not queued or self._stop.is_set():
        return []
    keys = {}
    for job in queued:
      try:
        keys[job["id"]] = batch_key(job)
      except NstJaxError as e:
        self.store.finish(job["id"], "failed", str(e))
    if not keys:
      return []
    first = next(j for j in queued if j["id"] in keys)
    group = [j for j in queued if keys.get(j["id"]) == keys[first["id"]]][:self.max_batch]
    claimed = set(self.store.claim([j["id"] for j in group], len(group)))
    return [self.store.get(j["id"]) for j in group if j["id"] in claimed]

  def _stylizer(self, config) -> optimize.Stylizer:
    key = static_key(config)
    if key not in self._stylizers:
      self._stylizers[key] = optimize.Stylizer(config, batched=True)
    return self._stylizers[key]

  def _prepare(self, job: dict, stylizer: optimize.Stylizer):
    """Per-item targets and state (fresh, or restored from the job's checkpoint)."""
    config = job_config(job["options"])
    content = image_io.open_image(self.store.path(job["id"], "content.png"))
    style = image_io.open_image(self.store.path(job["id"], "style.png"))
    targets = optimize.targets_from_config(self.weights, config, content, [style])
    state = optimize.init_state(optimize.init_image(config.init, content, style, seed=config.seed),
                                stylizer.optimizer)
    if job["checkpoint_step"] > 0:
      state = checkpoints.restore_state(self.store.checkpoint_dir(job["id"]), job["checkpoint_step"], state)
    return config, targets, state

  def _run_batch(self, jobs: list[dict]) -> None:
    ids = [j["id"] for j in jobs]
    try:
      config = job_config(jobs[0]["options"])
      stylizer = self._stylizer(config)
      prepared = [self._prepare(job, stylizer) for job in jobs]
    except Exception as e:
      self._fail(ids, e)
      return
    targets = _stack([p[1] for p in prepared])
    state = _stack([p[2] for p in prepared])
    self.batches_run += 1
    log.info("running %d job(s) at %dx%d from step %d", len(ids), jobs[0]["width"], jobs[0]["height"],
             jobs[0]["checkpoint_step"])
    last_preview = last_checkpoint = time.monotonic()

    def callback(step, state, metrics):
      nonlocal last_preview, last_checkpoint
      if self._stop.is_set() or self._cancel.intersection(ids):
        raise _Interrupt(state)
      now = time.monotonic()
      if metrics is not None:
        for i, job_id in enumerate(ids):
          self.store.add_losses(job_id, step, {k: metrics[k][i] for k in optimize.METRIC_NAMES})
      preview = now - last_preview >= self.preview_every
      if preview:
        self._write_previews(ids, state)
        last_preview = now
      if preview or metrics is not None:
        rate = metrics["steps_per_second"] if metrics is not None else None
        for job_id in ids:
          self.store.update_progress(job_id, step, rate, new_preview=preview)
      if self.checkpoint_every is not None and now - last_checkpoint >= self.checkpoint_every:
        self._checkpoint(ids, state)
        last_checkpoint = time.monotonic()

    try:
      state = stylizer.run(state, targets, self.weights, int(config.steps), log_every=config.log_every,
                           callbacks=[callback])
    except _Interrupt as interrupt:
      self._interrupted(ids, interrupt.state)
      return
    except Exception as e:
      self._fail(ids, e)
      return
    images = np.asarray(jax.device_get(state.image))
    for i, job_id in enumerate(ids):
      image_io.save_image(self.store.path(job_id, "result.png"), images[i])
      image_io.save_image(self.store.path(job_id, "preview.jpg"), images[i])
      self.store.update_progress(job_id, int(config.steps), new_preview=True)
      self.store.finish(job_id, "done")
      self.store.remove_checkpoints(job_id)

  def _write_previews(self, ids, state) -> None:
    images = np.asarray(jax.device_get(state.image))
    for i, job_id in enumerate(ids):
      image_io.save_image(self.store.path(job_id, "preview.jpg"), images[i])

  def _checkpoint(self, ids, state) -> None:
    host = jax.device_get(state)
    for i, job_id in enumerate(ids):
      item = jax.tree.map(lambda x: x[i], host)
      step = int(item.step)
      checkpoints.save_state(self.store.checkpoint_dir(job_id), item)
      self.store.set_checkpoint(job_id, step)

  def _interrupted(self, ids, state) -> None:
    cancelled = [j for j in ids if j in self._cancel]
    keep = [j for j in ids if j not in self._cancel]
    for job_id in cancelled:
      self.store.finish(job_id, "cancelled")
      self.store.remove_checkpoints(job_id)
      self._cancel.discard(job_id)
    if keep:
      self._checkpoint(ids, state)  # Indices follow `ids`; the cancelled items' files are removed below.
      for job_id in cancelled:
        self.store.remove_checkpoints(job_id)
      for job_id in keep:
        self.store.requeue(job_id)
    log.info("batch interrupted: %d cancelled, %d back in the queue", len(cancelled), len(keep))

  def _fail(self, ids, error: Exception) -> None:
    message = str(error) if isinstance(error, NstJaxError) else f"internal error ({type(error).__name__})"
    if not isinstance(error, NstJaxError):
      log.error("job batch failed:\n%s", traceback.format_exc())
    for job_id in ids:
      self.store.finish(job_id, "failed", message)
      self._cancel.discard(job_id)
