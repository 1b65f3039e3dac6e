"""A resumable run in a run directory: checkpoints, snapshots, metrics, report, and clean interruption.

    image = run_in_workdir(config, "runs/cat", content, [style], weights)

Running it again with the same directory and settings continues from the latest checkpoint and ends with
the same image as an uninterrupted run (the saved state holds everything a step reads). Only
`rundir.MUTABLE_SETTINGS` (`steps`, `log_every`) may change between runs, so raising `steps` extends a
finished run; any other difference raises `NstJaxError` unless `overwrite=True`, which discards the old
run's files. SIGINT/SIGTERM set a flag; the run loop stops after the current step, saves a checkpoint and
raises `RunInterrupted` (the command exits 130/143).
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
import warnings
from typing import Callable, Iterable, Sequence

import jax
import ml_collections
import numpy as np
import optax

import nst_jax
from nst_jax import checkpoint, image_io, optimize, rundir, vgg
from nst_jax.errors import NstJaxError

DEFAULT_CHECKPOINT_EVERY = 100
DEFAULT_KEEP_CHECKPOINTS = 3
DEFAULT_SNAPSHOT_EVERY = 500


class RunInterrupted(Exception):
  """The run stopped on a signal after saving a checkpoint at `step`."""

  def __init__(self, signum: int, step: int, workdir: str):
    self.signum, self.step, self.workdir = signum, step, workdir
    super().__init__(f"interrupted by {signal.Signals(signum).name} at step {step}; checkpoint saved in "
                     f"{workdir} (run the same command again to resume)")

  @property
  def exit_code(self) -> int:
    return 128 + self.signum  # 130 for SIGINT, 143 for SIGTERM, as a shell reports them.


class _Stop(Exception):
  """Raised from a run-loop callback to leave `Stylizer.run` after a step."""


@contextlib.contextmanager
def stop_on_signals(signums=(signal.SIGINT, signal.SIGTERM)):
  """Yields a list that receives the number of the first signal caught; restores the old handlers after.

  Outside the main thread (where Python cannot install handlers) nothing is installed.
  """
  caught: list[int] = []
  if threading.current_thread() is not threading.main_thread():
    yield caught
    return

  def handler(signum, frame):
    if not caught:
      caught.append(signum)

  previous = {s: signal.signal(s, handler) for s in signums}
  try:
    yield caught
  finally:
    for s, old in previous.items():
      signal.signal(s, old)


def _learning_rate(config: ml_collections.ConfigDict, opt_state) -> float:
  """The step size in use: L-BFGS's last line-search step, else the configured (constant) lr."""
  if config.optimizer == "lbfgs":
    with contextlib.suppress(Exception):
      return float(jax.device_get(optax.tree_utils.tree_get(opt_state, "learning_rate")))
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


def run_in_workdir(config: ml_collections.ConfigDict, workdir: str, content: np.ndarray,
                   styles: Sequence[np.ndarray], weights: vgg.VGGWeights, *,
                   style_blend_weights: Sequence[float] | None = None, inputs: dict | None = None,
                   checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
                   keep_checkpoints: int = DEFAULT_KEEP_CHECKPOINTS,
                   snapshot_every: int = DEFAULT_SNAPSHOT_EVERY, overwrite: bool = False,
                   handle_signals: bool = True, report: bool = True, async_save: bool = False,
                   callbacks: Iterable[optimize.Callback] = (),
                   on_start: Callable[[int], Iterable[optimize.Callback] | None] | None = None,
                   log: Callable[[str], None] = print) -> np.ndarray:
  """Stylises `content` with `styles` in run directory `workdir`, resuming from its latest checkpoint.

  Args:
    config: the settings (validated here); `config.steps` is the total step budget.
    workdir: the run directory (created if missing), see `nst_jax.rundir`.
    content, styles: float32 `[H, W, 3]` in [0, 1], the content already at the output size.
    weights: VGG19 weights (their SHA-256 is part of the run's identity).
    inputs: free-form description of the inputs for config.json (e.g. file paths).
    checkpoint_every, keep_checkpoints, snapshot_every: checkpoint and snapshot intervals (0 = never,
      except the final checkpoint and snapshot, which are always written).
    overwrite: discard an incompatible run already in `workdir` instead of raising.
    handle_signals: on SIGINT/SIGTERM save a checkpoint and raise `RunInterrupted` (main thread only).
    async_save: let the run continue while a checkpoint is written. Off (the default), the loop waits
      until each checkpoint is committed, so a `kill -9` loses at most `checkpoint_every` steps; on, it
      can lose the steps run during one write as well (cheaper when steps are very fast, e.g. on a GPU).
    callbacks: extra run-loop callbacks `fn(step, state, metrics_or_None)`.
    on_start: called with the step the run starts from (0, or the restored step) before the first step;
      it may return more callbacks (e.g. a progress bar that starts at that step).

  Returns:
    The final image, float32 `[H, W, 3]`.

  Raises:
    NstJaxError: bad settings, an incompatible run in `workdir`, or a checkpoint beyond `config.steps`.
    RunInterrupted: a signal stopped the run (after a checkpoint was saved).
  """
  optimize.validate_config(config)
  for name, value in (("checkpoint_every", checkpoint_every), ("snapshot_every", snapshot_every)):
    if value < 0:
      raise NstJaxError(f"{name} must be >= 0, got {value}")
  run_dir = rundir.RunDir(workdir)
  run_dir.create()
  ident = rundir.identity(config, weights_source=weights.source, weights_sha256=weights.sha256,
                          content=content, styles=styles, style_blend_weights=style_blend_weights)
  config_hash = rundir.config_hash(ident)
  if run_dir.has_run():
    old = rundir.read_json(run_dir.config)
    if old.get("config_hash") != config_hash:
      if not overwrite:
        changed = rundir.differences(old.get("identity", {}), ident) or ["unknown"]
        raise NstJaxError(
            f"{run_dir.path} holds a run with other settings (changed: {', '.join(changed)}); only --steps "
            f"may change to extend it. Use another --workdir, or --overwrite to discard that run")
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

  num_steps = int(config.steps)
  stylizer = optimize.Stylizer(config)
  targets = optimize.targets_from_config(weights, config, content, styles, style_blend_weights)
  initial_image = optimize.init_image(config.init, content, styles, seed=config.seed,
                                     style_blend_weights=style_blend_weights)
  abstract = {"state": jax.eval_shape(stylizer.init_state, initial_image),
              "seed": jax.ShapeDtypeStruct((), np.int32)}

  with checkpoint.Checkpoints(run_dir.checkpoints, max_to_keep=keep_checkpoints) as ckpt:
    with warnings.catch_warnings(record=True) as caught_warnings:
      warnings.simplefilter("always", checkpoint.CheckpointWarning)
      found = ckpt.restore_latest(abstract)
    for w in caught_warnings:
      if issubclass(w.category, checkpoint.CheckpointWarning):
        log(f"warning: {w.message}")
      else:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if found is None:
      start, elapsed = 0, 0.0
      state = stylizer.init_state(initial_image)
      rundir.truncate_metrics(run_dir.metrics, 0)
      image_io.save_image(run_dir.snapshot(0), initial_image)
    else:
      start, tree, meta = found
      if meta.get("config_hash") != config_hash:
        raise NstJaxError(f"checkpoint {start} in {run_dir.checkpoints} belongs to another run "
                          f"(config hash {meta.get('config_hash')} != {config_hash}); use --overwrite")
      state, elapsed = tree["state"], float(meta.get("seconds", 0.0))
      rundir.truncate_metrics(run_dir.metrics, start)
      log(f"resuming {run_dir.path} from step {start} of {num_steps}")
    if start > num_steps:
      raise NstJaxError(f"{run_dir.path} is already at step {start}, past --steps {num_steps}; raise --steps "
                        f"(or use another --workdir)")
    callbacks = list(callbacks)
    if on_start is not None:
      callbacks += list(on_start(start) or ())

    begin = time.perf_counter()
    last = {"state": state, "step": start, "saved": start if found is not None else None}

    def save(step, state):
      meta = {"config_hash": config_hash, "seconds": elapsed + time.perf_counter() - begin,
              "seed": int(config.seed)}
      if ckpt.save(step, {"state": state, "seed": np.int32(config.seed)}, meta):
        last["saved"] = step
        if not async_save:
          ckpt.wait_until_finished()

    def write_metrics(step, state, metrics):
      if metrics is not None:
        record = {"step": step, **{k: metrics[k] for k in optimize.METRIC_NAMES},
                  "lr": _learning_rate(config, state.opt_state), "seconds": elapsed + metrics["seconds"],
                  "steps_per_second": metrics["steps_per_second"]}
        metrics_file.write(json.dumps(record) + "\n")
        metrics_file.flush()

    def snapshot_and_checkpoint(step, state, metrics):
      last["state"], last["step"] = state, step
      if (snapshot_every and step % snapshot_every == 0) or step == num_steps:
        image_io.save_image(run_dir.snapshot(step), jax.device_get(state.image))
      if (checkpoint_every and step % checkpoint_every == 0) or step == num_steps:
        save(step, state)

    def check_signal(step, state, metrics):
      if caught_signals and step < num_steps:  # At the last step, finishing is quicker than stopping.
        raise _Stop()

    # Order matters: a checkpoint at step s follows the metrics of step s, so a resume never loses them.
    run_callbacks = [write_metrics, snapshot_and_checkpoint, *callbacks, check_signal]
    signals_cm = stop_on_signals() if handle_signals else contextlib.nullcontext([])
    with open(run_dir.metrics, "a", encoding="utf-8") as metrics_file, signals_cm as caught_signals:
      try:
        state = stylizer.run(state, targets, weights, num_steps, callbacks=run_callbacks)
      except _Stop:
        if last["saved"] != last["step"]:
          save(last["step"], last["state"])
        ckpt.wait_until_finished()
        raise RunInterrupted(caught_signals[0], last["step"], run_dir.path) from None
      if num_steps == start and last["saved"] is None:
        save(start, state)  # A zero-step run still leaves a checkpoint.
      ckpt.wait_until_finished()

  image = np.asarray(jax.device_get(state.image))
  image_io.save_image(run_dir.final, image)
  if num_steps == start:
    image_io.save_image(run_dir.snapshot(start), image)
  if report:
    rundir.write_report(run_dir.path)
  return image
