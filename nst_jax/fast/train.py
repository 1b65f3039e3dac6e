"""Training the fast net with the engine's own loss: the same targets, normalisation, layers and weights.

    result = train.train(weights, config, styles, images, "models/p", TrainOptions(steps=2000))

The loss of one training crop is `optimize.make_loss_fn(spec)` (the picture command's loss) of the net's
output, with the crop's own VGG features as the content target and the painting's Gram matrices (made once
by `optimize.targets_from_config` at the crop size, resized by `style_scale` as the engine does) as the
style target. A batch of crops is one `jax.vmap` of that loss; the optax Adam step is jitted once.

The model folder holds:

    model.nstfast        the net (`model_file`), rewritten at every checkpoint and at the end
    train.json           what decides the training (settings, inputs, options): a resumed run must match it
    checkpoints/         orbax checkpoints (parameters, Adam state, step); the newest is resumed exactly
    metrics.jsonl        one line per step: total, content, style, tv (batch means), seconds
    losses.png           the losses vs step
    snapshots/           the net's picture of a fixed validation photo, `step_NNNNNN.png`

Crops are a function of `(seed, step)` (`data.random_crops`), and a checkpoint holds the whole optimiser
state, so a run stopped (SIGINT, SIGTERM, SIGHUP: a checkpoint is saved first) or killed (kill -9: the
steps since the last checkpoint are redone) and resumed ends with the parameters of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import shutil
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct

from nst_jax import checkpoint, engine, image_io, optimize, rundir, vgg
from nst_jax import run as run_lib
from nst_jax.errors import NstJaxError
from nst_jax.fast import data, model, model_file

PyTree = Any
# The settings (`nst_jax.settings` names) that decide the training loss; the model file records them.
LOSS_SETTINGS = ("content_weight", "style_weight", "tv_weight", "tv_kind", "loss_normalization", "content_layers",
                 "style_layers", "style_layer_weights", "pooling", "style_scale", "style_blend_weights")
TRAIN_JSON, METRICS, LOSSES, CHECKPOINTS, SNAPSHOTS = ("train.json", "metrics.jsonl", "losses.png", "checkpoints",
                                                       "snapshots")
METRIC_NAMES = ("total", "content", "style", "tv")


@dataclasses.dataclass(frozen=True)
class TrainOptions:
  """How to train (not what the net learns: that is the loss settings of the config)."""
  steps: int = 2000
  batch_size: int = 4
  crop: int = 256
  lr: float = 1e-3
  width: float = 1.0
  seed: int = 0
  checkpoint_every: int = 100  # 0 = only at the end (and when stopped).
  snapshot_every: int = 100  # 0 = first and last only.
  keep_checkpoints: int = 2

  def check(self) -> None:
    if self.steps < 0:
      raise NstJaxError(f"steps must be >= 0, got {self.steps}")
    if self.batch_size < 1:
      raise NstJaxError(f"batch_size must be >= 1, got {self.batch_size}")
    if not 32 <= self.crop <= image_io.MAX_SIZE:
      raise NstJaxError(f"crop must be between 32 and {image_io.MAX_SIZE} pixels, got {self.crop}")
    if not (np.isfinite(self.lr) and self.lr > 0):
      raise NstJaxError(f"lr must be positive, got {self.lr}")
    if not 0 < self.width <= 4:
      raise NstJaxError(f"width must be in (0, 4], got {self.width}")
    if self.checkpoint_every < 0 or self.snapshot_every < 0 or self.keep_checkpoints < 1:
      raise NstJaxError("checkpoint_every and snapshot_every must be >= 0 and keep_checkpoints >= 1")


@struct.dataclass
class TrainState:
  """Everything that changes during training (checkpointed as a whole)."""
  params: PyTree
  opt_state: PyTree
  step: jax.Array  # int32 scalar


def style_targets(weights: vgg.VGGWeights, config: ml_collections.ConfigDict, styles: Sequence[np.ndarray],
                  crop: int) -> tuple[optimize.LossSpec, optimize.Targets]:
  """The loss spec and the style half of the targets for `crop` x `crop` outputs, made as the engine makes a
  picture's (paintings resized by `style_scale`, blended by `style_blend_weights`); the content features
  are placeholders that `make_loss_fn` replaces by each crop's own."""
  spec = optimize.loss_spec_from_config(config)
  resized = [engine.resize_style(s, (crop, crop), float(config.style_scale)) for s in engine.as_style_list(styles)]
  placeholder = np.zeros((crop, crop, 3), np.float32)
  targets = optimize.targets_from_config(weights, config, placeholder, resized, config.style_blend_weights)
  return spec, targets


def make_loss_fn(spec: optimize.LossSpec) -> Callable:
  """`loss_fn(outputs [B, H, W, 3], photos [B, H, W, 3], targets, weights) -> (mean total, mean metrics)`:
  the picture command's loss of each output against its own photo, vmapped over the batch."""
  image_loss = optimize.make_loss_fn(spec)

  def item_loss(output, photo, targets: optimize.Targets, weights):
    features = vgg.extract_features(weights, photo, spec.content_layers, pooling=spec.pooling, circular=spec.tile)
    content = {name: jax.lax.stop_gradient(features[name]) for name in spec.content_layers}
    return image_loss(output, targets.replace(content_features=content), weights)

  batched = jax.vmap(item_loss, in_axes=(0, 0, None, None))

  def loss_fn(outputs, photos, targets, weights):
    totals, metrics = batched(outputs, photos, targets, weights)
    return jnp.mean(totals), {name: jnp.mean(metrics[name]) for name in METRIC_NAMES}

  return loss_fn


def make_train_step(spec: optimize.LossSpec, optimizer: optax.GradientTransformation, width: float) -> Callable:
  """`step(state, photos [B, H, W, 3], targets, weights) -> (state, metrics)`, jitted, state donated."""
  loss_fn = make_loss_fn(spec)

  def objective(params, photos, targets, weights):
    return loss_fn(model.apply(params, photos, width=width), photos, targets, weights)

  def step(state: TrainState, photos, targets, weights):
    (_, metrics), grads = jax.value_and_grad(objective, has_aux=True)(state.params, photos, targets, weights)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    return TrainState(optax.apply_updates(state.params, updates), opt_state, state.step + 1), metrics

  return jax.jit(step, donate_argnums=0)


@functools.lru_cache(maxsize=8)
def _programs(spec: optimize.LossSpec, lr: float, width: float) -> tuple:
  """`(optimizer, jitted train step, jitted net)`, kept so that another training of the same shapes in this
  process (a resume, a test) does not compile again."""
  optimizer = optax.adam(lr)
  apply_fn = jax.jit(lambda params, x: model.apply(params, x, width=width))
  return optimizer, make_train_step(spec, optimizer, width), apply_fn


def init_state(options: TrainOptions, optimizer: optax.GradientTransformation) -> TrainState:
  params = model.init_params(options.width, options.seed)
  return TrainState(params=params, opt_state=optimizer.init(params), step=jnp.int32(0))


def identity(config: ml_collections.ConfigDict, options: TrainOptions, weights: vgg.VGGWeights,
             styles: Sequence[np.ndarray], images: Sequence[np.ndarray]) -> dict:
  """Everything that decides the parameters at a given step (the steps budget aside): a resumed run must
  have the same; a new one starts afresh."""
  return {"settings": {name: config[name] for name in LOSS_SETTINGS},
          "options": {k: v for k, v in dataclasses.asdict(options).items()
                      if k not in ("steps", "checkpoint_every", "snapshot_every", "keep_checkpoints")},
          "weights": {"source": weights.source, "sha256": weights.sha256},
          "styles": [rundir.array_digest(np.asarray(s, np.float32)) for s in styles],
          "images": [rundir.array_digest(np.asarray(i, np.float32)) for i in images]}


def model_meta(ident: dict, step: int, style_names: Sequence[str], image_names: Sequence[str]) -> dict:
  """The model file's header: the net's width, the settings it was trained with, and where it came from."""
  return {"width": ident["options"]["width"], "settings": ident["settings"], "steps": int(step),
          "crop": ident["options"]["crop"], "styles": list(style_names), "images": list(image_names),
          "weights": ident["weights"], "nst_jax_version": _version()}


def _version() -> str:
  try:
    from importlib.metadata import version
    return version("nst-jax")
  except Exception:  # Not installed (a source checkout on PYTHONPATH).
    return "unknown"


# A stop on a signal raises `run.RunInterrupted` (the message and exit status of `nst-jax --workdir`'s).
TrainInterrupted = run_lib.RunInterrupted


def prepare_model_dir(model_dir: str, ident: dict, *, overwrite: bool) -> bool:
  """Creates `model_dir` or checks that it holds this training (`train.json`); returns True to resume.

  Raises:
    NstJaxError: the folder holds another training (its settings or inputs differ) and not `overwrite`.
  """
  os.makedirs(model_dir, exist_ok=True)
  path = os.path.join(model_dir, TRAIN_JSON)
  ident = json.loads(json.dumps(ident))  # Tuples as lists, as read back.
  if os.path.exists(path):
    changed = rundir.differences(rundir.read_json(path), ident)
    if not changed:
      return True
    if not overwrite:
      raise NstJaxError(f"{model_dir} holds another training ({', '.join(changed[:4])} differ); use another "
                        f"--model_dir, or --overwrite to start afresh there")
    for name in (CHECKPOINTS, SNAPSHOTS):  # Only the files of the training recorded there.
      shutil.rmtree(os.path.join(model_dir, name), ignore_errors=True)
    for name in (METRICS, LOSSES, model_file.FILENAME):
      with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(model_dir, name))
  rundir.write_json(path, ident)
  return False


@dataclasses.dataclass
class TrainResult:
  params: PyTree
  step: int
  metrics: dict  # The last step's batch-mean losses (empty when no step ran in this call).
  seconds: float  # Training time over every run of this model folder.
  resumed_from: int | None  # The checkpoint step this call started from (None: a fresh start).


class _Files:
  """The model folder's files written during training: metrics log, snapshots, loss plot, model file."""

  def __init__(self, model_dir: str, apply_fn: Callable, validation: np.ndarray | None, meta_fn: Callable):
    self.dir, self.apply_fn, self.validation, self.meta_fn = model_dir, apply_fn, validation, meta_fn
    self.metrics_path = os.path.join(model_dir, METRICS)
    self.metrics = None

  def open_metrics(self, step: int) -> None:
    rundir.truncate_metrics(self.metrics_path, step)  # A killed run's records after its checkpoint go.
    self.metrics = open(self.metrics_path, "a", encoding="utf-8")

  def log(self, record: dict) -> None:
    self.metrics.write(json.dumps(record) + "\n")
    self.metrics.flush()

  def snapshot(self, params: PyTree, step: int) -> None:
    if self.validation is None:
      return
    os.makedirs(os.path.join(self.dir, SNAPSHOTS), exist_ok=True)
    image = np.asarray(self.apply_fn(params, self.validation[None]))[0]
    image_io.save_image(os.path.join(self.dir, SNAPSHOTS, f"step_{int(step):06d}.png"), image)

  def publish(self, params: PyTree, step: int) -> None:
    """The model file and the loss plot at `step`."""
    model_file.save(os.path.join(self.dir, model_file.FILENAME), params, self.meta_fn(step))
    records = rundir.read_metrics(self.metrics_path)
    if records:
      rundir.loss_plot(records, os.path.join(self.dir, LOSSES), title=f"{os.path.basename(self.dir)}: training")

  def close(self) -> None:
    if self.metrics is not None:
      self.metrics.close()


def train(weights: vgg.VGGWeights, config: ml_collections.ConfigDict, styles: Sequence[np.ndarray],
          images: Sequence[np.ndarray], model_dir: str, options: TrainOptions, *,
          validation: np.ndarray | None = None, style_names: Sequence[str] = (), image_names: Sequence[str] = (),
          overwrite: bool = False, progress: bool = False, stop=None,
          log: Callable[[str], None] | None = None) -> TrainResult:
  """Trains (or resumes training) the net of `styles` on crops of `images` up to `options.steps` steps.

  Args:
    weights: the VGG19 of the loss.
    config: resolved settings (`settings.resolve`); its `LOSS_SETTINGS` decide the loss.
    styles: the painting(s), float32 `[h, w, 3]` (several are blended by `style_blend_weights`).
    images: training photos, float32 `[H, W, 3]` (short side at least half the crop: `data.load_images`).
    model_dir: the model folder (created; resumed when it holds this training).
    options: steps, batch, crop, learning rate, width, seed, checkpoint and snapshot intervals.
    validation: a photo `[H, W, 3]` whose picture by the net is saved as a snapshot (None: none).
    style_names, image_names: what the model file records as its sources.
    overwrite: a folder holding another training starts afresh instead of being an error.
    progress: draw a tqdm bar on stderr.
    stop: an object whose `caught` list, once not empty, stops training after a checkpoint
      (`hooks.StopOnSignals`).
    log: called with one-line notices (a resumed training).

  Raises:
    TrainInterrupted: after `stop` caught a signal (the checkpoint and the model file are saved).
    NstJaxError: bad options, another training in the folder, a checkpoint past `options.steps`.
  """
  options.check()
  if not images:
    raise NstJaxError("no training images")
  ident = identity(config, options, weights, styles, images)
  digest = rundir.config_hash(json.loads(json.dumps(ident)))
  resume = prepare_model_dir(model_dir, ident, overwrite=overwrite)
  spec, targets = style_targets(weights, config, styles, options.crop)
  optimizer, step_fn, apply_fn = _programs(spec, options.lr, options.width)
  state = init_state(options, optimizer)
  files = _Files(model_dir, apply_fn, validation,
                 lambda step: model_meta(ident, step, style_names, image_names))
  seconds, resumed_from, metrics = 0.0, None, {}
  with checkpoint.Checkpoints(os.path.join(model_dir, CHECKPOINTS), max_to_keep=options.keep_checkpoints,
                              async_save=False) as store, contextlib.closing(files):
    found = store.restore_latest({"state": state}) if resume else None
    if found is not None:
      step, tree, meta = found
      if meta.get("config_hash") != digest:
        raise NstJaxError(f"checkpoint {step} in {store.directory} belongs to another training")
      state, seconds, resumed_from = jax.tree.map(jnp.asarray, tree["state"]), float(meta["seconds"]), step
      if log is not None:
        log(f"resuming the training in {model_dir} from step {step}")
    start = int(state.step)
    if start > options.steps:
      raise NstJaxError(f"{model_dir} is already at step {start}, past --steps {options.steps}; raise --steps")
    files.open_metrics(start if resumed_from is not None else -1)

    def save(state: TrainState) -> None:
      step = int(state.step)
      store.save(step, {"state": state}, {"config_hash": digest, "seconds": seconds})
      store.wait_until_finished()
      files.publish(state.params, step)

    if start == 0:
      files.snapshot(state.params, 0)
    from tqdm import tqdm
    bar = tqdm(total=options.steps, initial=start, desc="training", unit="step", disable=not progress,
               dynamic_ncols=True)
    try:
      for t in range(start, options.steps):
        begin = time.perf_counter()
        photos = data.random_crops(images, step=t, seed=options.seed, batch_size=options.batch_size,
                                   crop=options.crop)
        state, step_metrics = step_fn(state, photos, targets, weights)
        metrics = {k: float(v) for k, v in step_metrics.items()}
        seconds += time.perf_counter() - begin
        files.log({"step": t + 1, **metrics, "seconds": seconds})
        bar.set_postfix({k: f"{metrics[k]:.3g}" for k in METRIC_NAMES}, refresh=False)
        bar.update(1)
        done = t + 1 == options.steps
        if options.snapshot_every and (t + 1) % options.snapshot_every == 0 and not done:
          files.snapshot(state.params, t + 1)
        if options.checkpoint_every and (t + 1) % options.checkpoint_every == 0 and not done:
          save(state)
        if stop is not None and stop.caught and not done:
          save(state)
          raise TrainInterrupted(stop.caught[0], t + 1, model_dir)
    finally:
      bar.close()
    if int(state.step) not in store.all_steps() or not os.path.exists(model_file.path_of(model_dir)):
      save(state)
    files.snapshot(state.params, int(state.step))
  params = jax.tree.map(np.asarray, jax.device_get(state.params))
  return TrainResult(params=params, step=int(state.step), metrics=metrics, seconds=seconds,
                     resumed_from=resumed_from)
