"""Hooks of the run engine: progress bars, metrics logs, snapshots and stops, shared by every front end.

A hook is any object with some of these methods (the engine calls the ones it has, in list order):

    on_job_start(run)        a job starts or resumes (`run.restored_step` says from where)
    on_step(event)           after each step of a job; `event.metrics` at its logging steps, else None
    on_stage_end(run)        a stage (scale) of a job is complete
    on_job_end(run)          a job is done
    on_job_stopped(run)      a job was stopped by `should_stop` (its checkpoint, if any, is saved)
    should_stop(run) -> bool stop this job after the current step (signals, the server's cancel)

`run` is an `engine.JobRun` (job, config, stages, step, total_steps), `event` an `engine.StepEvent`.

Stops (`StopOnSignals`, `guarded_std_streams`): SIGINT, SIGTERM, SIGHUP and a broken pipe (stdout or stderr
lost its reader, e.g. `nst-jax ... 2>&1 | tee log` and Ctrl-C, which kills tee too) all stop a run after its
current step, with its checkpoint saved; the exit code is 128 + the signal's number (SIGPIPE for a broken
pipe: 141), as a shell reports a program the signal killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import stat
import sys
import threading
from typing import Callable

import numpy as np

from nst_jax import image_io
from nst_jax.errors import NstJaxError

LOSS_NAMES = ("total", "content", "style", "tv")
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
SIGPIPE = getattr(signal, "SIGPIPE", 13)  # The stop reason recorded for a broken pipe.


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
    # The total stays: an interrupted run's bar ends at the step it stopped at, not at 100 %.
    if self.bar.disable:
      return
    desc = self.bar.desc.rstrip(": ")
    if not desc.endswith("(stopped)"):
      self.bar.set_description(f"{desc} (stopped)", refresh=False)
    self.bar.refresh()

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()


class MetricsLog:
  """Appends one JSON object per logged step to a file, closed after each record, so a crash loses nothing.

  Records: `step` (global over all stages), the losses, `seconds`, `steps_per_second`, and for
  coarse-to-fine jobs `scale`, `height`, `width`; `extra(run, event)` may add fields (e.g. `lr`).
  `path_for(run)` names each job's file, or a list of files (batch rows that share a job), or None (that job is
  not logged). A resumed job's file is cut back to its restored step, so records are never duplicated. No file
  stays open between records (a batch of a thousand rows holds no thousand files).
  """

  def __init__(self, path_for: Callable, *, extra: Callable | None = None):
    self.path_for, self.extra = path_for, extra
    self.paths: dict[int, list[str]] = {}

  def on_job_start(self, run) -> None:
    from nst_jax import rundir
    paths = self.path_for(run)
    paths = [] if paths is None else [paths] if isinstance(paths, str) else list(paths)
    restored = run.restored_step
    for path in paths:
      rundir.truncate_metrics(path, restored if restored is not None else -1)
      self._append(path, "")  # Unwritable: one error line before the first step.
    self.paths[id(run)] = paths

  @staticmethod
  def _append(path: str, text: str) -> None:
    try:
      with open(path, "a", encoding="utf-8") as f:
        f.write(text)
    except OSError as e:
      raise NstJaxError(f"cannot write the metrics log {path}: {e.strerror}") from None

  def on_step(self, event) -> None:
    run = event.run
    paths = self.paths.get(id(run))
    if event.metrics is None or not paths:
      return
    record = {"step": event.step}
    if run.stage.count > 1:
      record.update(scale=run.stage.index, height=run.stage.shape[0], width=run.stage.shape[1])
    record.update({k: event.metrics[k] for k in (*LOSS_NAMES, "seconds", "steps_per_second")})
    if self.extra is not None:
      record.update(self.extra(run, event))
    for path in paths:
      self._append(path, json.dumps(record) + "\n")

  def on_job_end(self, run) -> None:
    self.paths.pop(id(run), None)

  on_job_stopped = on_job_end


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


def stop_cause(signum: int) -> str:
  """A stop's reason in messages: `SIGTERM`, ..., or `a broken pipe (SIGPIPE)`."""
  return "a broken pipe (SIGPIPE)" if signum == SIGPIPE else signal.Signals(signum).name


class _Streams:
  """The process's record of broken standard streams and of the `StopOnSignals` blocks in force."""

  def __init__(self):
    self.broken: set[int] = set()  # Descriptors (1, 2) whose pipe lost its reader; now /dev/null.
    self.listeners: list["StopOnSignals"] = []
    self.stopping = False  # A stop was caught: later broken writes are only silenced, never raised.


_STREAMS = _Streams()


def _lost(fd: int | None) -> None:
  """Stream `fd` lost its reader: point it at /dev/null, so that later writes (a progress bar, a message, the
  interpreter's final flush) succeed silently, and tell the `StopOnSignals` in force."""
  if fd is not None and fd not in _STREAMS.broken:
    null = os.open(os.devnull, os.O_WRONLY)
    try:
      os.dup2(null, fd)
    finally:
      os.close(null)
    _STREAMS.broken.add(fd)
  for listener in list(_STREAMS.listeners):
    listener.catch(SIGPIPE)


def broken_pipes(fds=(1, 2)) -> bool:
  """Whether stdout or stderr lost its reader: found by an earlier write, or now a pipe whose reading end is
  closed (poll() reports POLLERR on the writing end; no write needed). Such a stream is silenced (`_lost`)."""
  for fd in fds:
    if fd in _STREAMS.broken or not hasattr(select, "poll"):
      continue
    try:
      if not stat.S_ISFIFO(os.fstat(fd).st_mode):
        continue
    except OSError:
      continue
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    if any(mask & select.POLLERR for _, mask in poller.poll(0)):
      _lost(fd)
  return bool(_STREAMS.broken.intersection(fds))


def mark_stopping() -> None:
  """The command is stopping (a message, then exit): a write to a broken stream is silenced, not raised."""
  _STREAMS.stopping = True


class _GuardedStream:
  """A text stream (sys.stdout or sys.stderr) whose write to a lost reader does not kill the run.

  Each write is flushed, so that a broken pipe shows at once. On BrokenPipeError the stream goes to /dev/null
  (`_lost`) and the `StopOnSignals` in force stops the run after its step, with its checkpoint; with none in
  force and no stop under way (e.g. before a run starts, when there is nothing to save) the error is raised.
  """

  def __init__(self, stream):
    self._stream = stream
    try:
      self._fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
      self._fd = None

  def _broken(self) -> bool:
    """Handles a BrokenPipeError; True: swallow it."""
    _lost(self._fd)
    return bool(_STREAMS.listeners) or _STREAMS.stopping

  def write(self, text: str) -> int:
    try:
      count = self._stream.write(text)
      self._stream.flush()
      return count
    except BrokenPipeError:
      if not self._broken():
        raise
      return len(text)

  def flush(self) -> None:
    try:
      self._stream.flush()
    except BrokenPipeError:
      if not self._broken():
        raise

  def __getattr__(self, name):
    return getattr(self._stream, name)


@contextlib.contextmanager
def guarded_std_streams():
  """Within the block sys.stdout and sys.stderr survive a lost reader (`_GuardedStream`): a command's prints and
  progress bar never kill its run before the checkpoint. The streams are flushed and restored at the end."""
  old = sys.stdout, sys.stderr
  sys.stdout, sys.stderr = (None if s is None else _GuardedStream(s) for s in old)
  try:
    yield
  finally:
    for stream in (sys.stdout, sys.stderr):
      try:
        if stream is not None:
          stream.flush()
      except BrokenPipeError:  # Undetected until now: silenced, no "Exception ignored" at exit.
        _lost(stream._fd)
    sys.stdout, sys.stderr = old


class StopOnSignals:
  """A context manager and hook: after SIGINT, SIGTERM or SIGHUP, or once stdout or stderr lost its reader
  (`watch_pipes`), every job stops at its next step (its checkpoint is saved by the engine). `caught` holds the
  reason (a signal number; SIGPIPE for a broken pipe). Outside the main thread no handler is installed."""

  def __init__(self, signums=STOP_SIGNALS, *, watch_pipes: bool = True):
    self.signums, self.watch_pipes = signums, watch_pipes
    self.caught: list[int] = []
    self._previous: dict = {}

  def __enter__(self) -> "StopOnSignals":
    if threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._handler) for s in self.signums}
    if self.watch_pipes:
      _STREAMS.listeners.append(self)
    return self

  def __exit__(self, *exc) -> None:
    for s, old in self._previous.items():
      signal.signal(s, old)
    self._previous = {}
    if self in _STREAMS.listeners:
      _STREAMS.listeners.remove(self)

  def _handler(self, signum, frame) -> None:
    self.catch(signum)

  def catch(self, signum: int) -> None:
    """Records a stop (the first reason wins)."""
    if not self.caught:
      self.caught.append(signum)
    _STREAMS.stopping = True

  def should_stop(self, run) -> bool:
    if self.watch_pipes and not self.caught and broken_pipes():
      self.catch(SIGPIPE)
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
