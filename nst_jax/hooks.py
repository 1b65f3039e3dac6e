"""Hooks of the run engine: progress bars, metrics logs, snapshots and stops, shared by every front end.

A hook is any object with some of these methods (the engine calls the ones it has, in list order):

    on_job_start(run)        a job starts or resumes (`run.restored_step` says from where)
    on_step(event)           after each step of a job; `event.metrics` at its logging steps, else None
    on_stage_end(run)        a stage (scale) of a job is complete
    on_job_end(run)          a job is done
    on_job_stopped(run)      a job was stopped by `should_stop` (its checkpoint, if any, is saved)
    should_stop(run) -> bool stop this job after the current step (signals, the server's cancel)

`run` is an `engine.JobRun` (job, config, stages, step, total_steps), `event` an `engine.StepEvent`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from typing import Callable

import numpy as np

from nst_jax import image_io
from nst_jax.errors import NstJaxError

LOSS_NAMES = ("total", "content", "style", "tv")


class ProgressBar:
  """One tqdm bar over the steps of every job of a run, with the latest losses and the current stage."""

  def __init__(self, *, desc: str = "stylizing", disable: bool = False):
    self.desc, self.disable = desc, disable
    self.bar = None
    self.jobs = 0

  def on_job_start(self, run) -> None:
    from tqdm import tqdm
    self.jobs += 1
    if self.bar is None:
      self.bar = tqdm(total=run.total_steps, initial=run.step, desc=self.desc, unit="step",
                      disable=self.disable, dynamic_ncols=True)
      return
    self.bar.total += run.total_steps
    self.bar.update(run.step)
    self.bar.refresh()

  def on_step(self, event) -> None:
    run = event.run
    if self.jobs == 1 and run.stage.count > 1:
      stage = run.stage
      self.bar.set_description(f"scale {stage.index + 1}/{stage.count} {stage.shape[1]}x{stage.shape[0]}",
                               refresh=False)
    if event.metrics is not None:
      self.bar.set_postfix({k: f"{event.metrics[k]:.3g}" for k in LOSS_NAMES}, refresh=False)
    self.bar.update(1)

  def on_job_stopped(self, run) -> None:
    self.bar.total -= run.total_steps - run.step
    self.bar.refresh()

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()


class MetricsLog:
  """Writes one JSON object per logged step to a file, flushed, so a crash loses nothing.

  Records: `step` (global over all stages), the losses, `seconds`, `steps_per_second`, and for
  coarse-to-fine jobs `scale`, `height`, `width`; `extra(run, event)` may add fields (e.g. `lr`).
  `path_for(run)` names each job's file (None: that job is not logged). A resumed job's file is cut back
  to its restored step, so records are never duplicated.
  """

  def __init__(self, path_for: Callable, *, extra: Callable | None = None):
    self.path_for, self.extra = path_for, extra
    self.files: dict[int, object] = {}

  def on_job_start(self, run) -> None:
    path = self.path_for(run)
    if path is None:
      return
    from nst_jax import rundir
    restored = run.restored_step
    rundir.truncate_metrics(path, restored if restored is not None else -1)
    try:
      self.files[run.index] = open(path, "a", encoding="utf-8")
    except OSError as e:
      raise NstJaxError(f"cannot write the metrics log {path}: {e.strerror}") from None

  def on_step(self, event) -> None:
    f = self.files.get(event.run.index)
    if f is None or event.metrics is None:
      return
    run = event.run
    record = {"step": event.step}
    if run.stage.count > 1:
      record.update(scale=run.stage.index, height=run.stage.shape[0], width=run.stage.shape[1])
    record.update({k: event.metrics[k] for k in (*LOSS_NAMES, "seconds", "steps_per_second")})
    if self.extra is not None:
      record.update(self.extra(run, event))
    f.write(json.dumps(record) + "\n")
    f.flush()

  def close(self) -> None:
    for f in self.files.values():
      f.close()
    self.files.clear()


class Snapshots:
  """Saves `<folder_for(run)>/step_NNNNNN.png` at the start, every `every` global steps and at the end."""

  def __init__(self, folder_for: Callable, every: int):
    self.folder_for, self.every = folder_for, int(every)

  def _save(self, run, step: int, image: np.ndarray) -> None:
    folder = self.folder_for(run)
    if folder is not None:
      image_io.save_image(os.path.join(folder, f"step_{int(step):06d}.png"), image)

  def on_job_start(self, run) -> None:
    if run.restored_step is None:
      self._save(run, 0, run.image())

  def on_step(self, event) -> None:
    if self.every and event.step % self.every == 0:
      self._save(event.run, event.step, event.image())

  def on_job_end(self, run) -> None:
    self._save(run, run.step, run.final_image())


class StopOnSignals:
  """A context manager and hook: after SIGINT/SIGTERM every job stops at its next step (its checkpoint is
  saved by the engine). `caught` holds the signal number. Outside the main thread nothing is installed."""

  def __init__(self, signums=(signal.SIGINT, signal.SIGTERM)):
    self.signums = signums
    self.caught: list[int] = []
    self._previous: dict = {}

  def __enter__(self) -> "StopOnSignals":
    if threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._handler) for s in self.signums}
    return self

  def __exit__(self, *exc) -> None:
    for s, old in self._previous.items():
      signal.signal(s, old)
    self._previous = {}

  def _handler(self, signum, frame) -> None:
    if not self.caught:
      self.caught.append(signum)

  def should_stop(self, run) -> bool:
    # At the last step, finishing is quicker than stopping.
    return bool(self.caught) and run.step < run.total_steps


class Callback:
  """Adapts a plain function `fn(event)` to an `on_step` hook."""

  def __init__(self, fn: Callable):
    self.fn = fn

  def on_step(self, event) -> None:
    self.fn(event)


@contextlib.contextmanager
def closing_all(*hooks):
  """Closes every hook that has a `close` method when the block ends."""
  try:
    yield hooks
  finally:
    for hook in hooks:
      close = getattr(hook, "close", None)
      if close is not None:
        close()
