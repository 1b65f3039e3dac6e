"""A resumable run in a run directory: checkpoints, snapshots, metrics, report, and clean interruption.

    job = engine.Job(content, [style], settings.resolve({...}))
    image = run_in_workdir(job, "runs/cat", weights)

Every setting works here as in any other path (coarse-to-fine, colours, blends, style scale): the engine
runs the job with its checkpoints in `runs/cat/checkpoints` (stage and step are saved, so a run stopped
mid-stage or at a stage boundary resumes exactly).

Running it again with the same directory and settings continues from the latest checkpoint and ends with
the same image as an uninterrupted run (the saved state holds everything a step reads). Only
`rundir.MUTABLE_SETTINGS` (`steps`, `log_every`, `tile_preview`) may change between runs, so raising `steps`
extends a finished run; any other difference raises `NstJaxError` unless `overwrite=True`, which discards the old
run's files. SIGINT, SIGTERM, SIGHUP and a broken pipe (stdout or stderr lost its reader) set a flag
(`hooks.StopOnSignals`); the run loop stops after the current step, saves a checkpoint and raises
`RunInterrupted` (the command exits 128 + the signal's number: 130, 143, 129; 141 for a broken pipe).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from typing import Callable, Iterable

import jax
import ml_collections
import numpy as np
import optax

import nst_jax
from nst_jax import cost, engine, hooks as hooks_lib, image_io, optimize, rundir, settings, tiles, vgg
from nst_jax.errors import NstJaxError

DEFAULT_CHECKPOINT_EVERY = 100
DEFAULT_KEEP_CHECKPOINTS = 3
DEFAULT_SNAPSHOT_EVERY = 500


class RunInterrupted(Exception):
  """The run stopped on a signal (SIGPIPE: a broken pipe) after saving a checkpoint at `step`."""

  def __init__(self, signum: int, step: int, workdir: str):
    self.signum, self.step, self.workdir = signum, step, workdir
    super().__init__(f"interrupted by {hooks_lib.stop_cause(signum)} at step {step}; checkpoint saved in "
                     f"{workdir} (run the same command again to resume)")

  @property
  def exit_code(self) -> int:
    return 128 + self.signum  # 130 SIGINT, 143 SIGTERM, 129 SIGHUP, 141 SIGPIPE, as a shell reports them.


def _learning_rate(config: ml_collections.ConfigDict, event) -> float:
  """The step size in use: L-BFGS's last line-search step, else the configured (constant) lr."""
  if config.optimizer == "lbfgs":
    with contextlib.suppress(Exception):
      return float(optax.tree_utils.tree_get(event.state().opt_state, "learning_rate"))
  return float(optimize.DEFAULT_LR[config.optimizer] if config.lr is None else config.lr)


def run_record(config, ident: dict, *, weights: vgg.VGGWeights, inputs: dict | None,
               workdir_settings: dict) -> dict:
  """The contents of config.json."""
  import flax
  import orbax.checkpoint
  return {
      "config": rundir._jsonable(config.to_dict()),
      "config_hash": rundir.config_hash(ident),
      "identity": ident,
      "weights": {"source": weights.source, "sha256": weights.sha256,
                  "preprocessing": str(getattr(weights, "preprocessing", ""))},
      "inputs": inputs or {},
      "workdir_settings": workdir_settings,
      "versions": {"nst_jax": nst_jax.__version__, "jax": jax.__version__, "flax": flax.__version__,
                   "optax": optax.__version__, "orbax_checkpoint": orbax.checkpoint.__version__,
                   "numpy": np.__version__},
      "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
  }


def run_in_workdir(job: engine.Job, workdir: str, weights: vgg.VGGWeights, *, inputs: dict | None = None,
                   checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
                   keep_checkpoints: int = DEFAULT_KEEP_CHECKPOINTS,
                   snapshot_every: int = DEFAULT_SNAPSHOT_EVERY, overwrite: bool = False,
                   handle_signals: bool = True, report: bool = True, async_save: bool = False,
                   hooks: Iterable = (), log: Callable[[str], None] = print, estimate_cost: bool = False,
                   force: bool = False) -> np.ndarray:
  """Runs `job` in run directory `workdir` through the engine, resuming from its latest checkpoint.

  Args:
    job: the engine job (its `checkpoint_dir` is set to the run directory's).
    workdir: the run directory (created if missing), see `nst_jax.rundir`.
    weights: VGG19 weights (their SHA-256 is part of the run's identity).
    inputs: free-form description of the inputs for config.json (e.g. file paths).
    checkpoint_every, keep_checkpoints, snapshot_every: checkpoint and snapshot intervals in steps (0 =
      never, except the checkpoints at stage ends and the final checkpoint and snapshot, always written).
    overwrite: discard an incompatible run already in `workdir` instead of raising.
    handle_signals: on SIGINT, SIGTERM, SIGHUP or a broken stdout/stderr pipe save a checkpoint and raise
      `RunInterrupted` (signal handlers only in the main thread).
    async_save: let the run continue while a checkpoint is written. Off (the default), the loop waits
      until each checkpoint is committed, so a `kill -9` loses at most `checkpoint_every` steps; on, it
      can lose the steps run during one write as well (cheaper when steps are very fast, e.g. on a GPU).
    hooks: more engine hooks (e.g. a progress bar).
    estimate_cost: log the job's cost first (`nst_jax.cost`) and refuse, before any file is written, a job
      whose estimated peak memory exceeds the free memory, unless `force`.

  Returns:
    The final image, float32 `[H, W, 3]`.

  Raises:
    NstJaxError: bad settings, an incompatible run in `workdir`, or a checkpoint beyond the job's steps.
    RunInterrupted: a signal stopped the run (after a checkpoint was saved).
  """
  for name, value in (("checkpoint_every", checkpoint_every), ("snapshot_every", snapshot_every)):
    if value < 0:
      raise NstJaxError(f"{name} must be >= 0, got {value}")
  config = job.config
  settings.validate(config, len(job.styles))
  policy = engine.CheckpointPolicy(every_steps=checkpoint_every, keep=keep_checkpoints, async_save=async_save)
  eng = engine.Engine(weights, checkpoints=policy)
  if estimate_cost:
    cost.preflight(eng, [job], force=force, log=log)
  run_dir = rundir.RunDir(workdir)
  run_dir.create()
  ident, config_hash = engine.job_digest(job, weights)
  if run_dir.has_run():
    old = rundir.read_json(run_dir.config)
    if old.get("config_hash") != config_hash:
      if not overwrite:
        changed = rundir.differences(old.get("identity", {}), ident) or ["unknown"]
        raise NstJaxError(
            f"{run_dir.path} holds a run with other settings (changed: {', '.join(changed)}); only "
            f"{', '.join(rundir.MUTABLE_SETTINGS)} may change. Use another --workdir, or --overwrite to discard "
            f"that run")
      log(f"discarding the previous run in {run_dir.path} (--overwrite)")
      run_dir.clear()
      run_dir.create()
  elif overwrite:
    run_dir.clear()
    run_dir.create()
  workdir_settings = {"checkpoint_every": checkpoint_every, "keep_checkpoints": keep_checkpoints,
                      "snapshot_every": snapshot_every}
  rundir.write_json(run_dir.config, run_record(config, ident, weights=weights, inputs=inputs,
                                               workdir_settings=workdir_settings))
  job = dataclasses.replace(job, checkpoint_dir=run_dir.checkpoints)
  notices = _Notices(log)
  metrics = hooks_lib.MetricsLog(lambda run: run_dir.metrics,
                                 extra=lambda run, event: {"lr": _learning_rate(run.config, event)})
  snapshots = hooks_lib.Snapshots(lambda run: run_dir.snapshots, snapshot_every)
  stop = hooks_lib.StopOnSignals() if handle_signals else contextlib.nullcontext(None)
  with stop as stopper:
    run_hooks = [notices, metrics, snapshots, *hooks] + ([stopper] if stopper is not None else [])
    (result,) = eng.run([job], hooks=run_hooks)
  if result.status == "stopped":
    raise RunInterrupted(stopper.caught[0], result.step, run_dir.path)
  image_io.save_image(run_dir.final, result.image)
  tiles.write_preview(run_dir.final, result.image, int(config.tile_preview))
  if report:
    rundir.write_report(run_dir.path)
  return result.image


class _Notices:
  """Prints what the engine noticed (skipped damaged checkpoints) and where a run resumes."""

  def __init__(self, log: Callable[[str], None]):
    self.log = log

  def on_job_start(self, run) -> None:
    for notice in run.notices:
      self.log(notice)
    if run.restored_step is not None:
      self.log(f"resuming {os.path.dirname(run.job.checkpoint_dir)} from step {run.restored_step} of "
               f"{run.total_steps}")
