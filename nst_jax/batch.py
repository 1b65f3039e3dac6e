"""Batched stylisation: many content/style pairs (or weight settings) in one compiled, sharded step.

Data flow: `Item`s (one picture each: content, style(s), its own loss weights, init seed) ->
`plan_buckets` groups them by everything that must be equal inside one compiled program (output shape,
step count and the static config: optimizer, lr, layers...) -> each bucket is cut into chunks of at most
`batch_size` items, padded to a fixed chunk size (a multiple of the device count, so every chunk of a bucket
reuses one compilation) -> per-item `Targets` and `StylizeState`s are stacked on a leading batch axis and
placed on a `jax.sharding.Mesh` with `NamedSharding(mesh, P('batch'))`; the VGG weights are replicated ->
`Stylizer(config, batched=True)` runs the steps -> results are unstacked, padding dropped.

Bucketing policy: items are grouped by the output shape they get after `image_io.load_image(path,
max_size)` (the longest side resized to `max_size`, aspect ratio kept). Nothing is cropped or padded, so
each item's result equals the single-item run; pictures with the same aspect ratio and max_size share a
bucket. `resize_to` (optional) resizes every content to one common `(h, w)` instead, so everything shares
one bucket at the cost of distorting the aspect ratio.

Multi-host: call `init_distributed(...)` first (a wrapper of `jax.distributed.initialize`); every process
then builds the same list of items, the mesh spans all devices of all processes, each process feeds its
addressable shards (`jax.make_array_from_callback`), and `to_host` gathers results on every process.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from nst_jax import image_io, optimize, vgg
from nst_jax.errors import NstJaxError

PyTree = Any
BATCH_AXIS = "batch"
# Config fields that may differ between items of one batch (they live in `Targets` or the initial image;
# max_size only decides the content's shape, which is part of the bucket key itself).
PER_ITEM_FIELDS = ("content_weight", "style_weight", "tv_weight", "seed", "max_size")


@dataclasses.dataclass
class Item:
  """One picture to make.

  Attributes:
    content: float32 `[H, W, 3]` in [0, 1], already at the output size.
    styles: one or more float32 `[h, w, 3]` style images (blended with `style_blend_weights`).
    config: the full config for this item (weights, steps, optimizer, init, seed, ...).
    name: a label for progress bars and tables (e.g. the output path).
  """
  content: np.ndarray
  styles: Sequence[np.ndarray]
  config: ml_collections.ConfigDict
  name: str = ""
  style_blend_weights: Sequence[float] | None = None


@dataclasses.dataclass
class Result:
  """What one item produced: the image `[H, W, 3]`, its final losses and the loss after every step."""
  image: np.ndarray
  metrics: dict
  losses: list[float]
  seconds: float


# ---- devices -----------------------------------------------------------------------------------------------


def init_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None) -> None:
  """Joins a multi-host run (`jax.distributed.initialize`); a no-op when no setting is given.

  On a TPU pod slice or a SLURM/Open MPI cluster JAX detects all three settings itself: pass
  `coordinator_address="auto"` to let it.
  """
  if coordinator_address is None and num_processes is None and process_id is None:
    return
  if coordinator_address == "auto":
    jax.distributed.initialize()
  else:
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A one-axis mesh named 'batch' over `devices` (default: every device of every process)."""
  devices = list(jax.devices() if devices is None else devices)
  return Mesh(np.asarray(devices), (BATCH_AXIS,))


def _place(tree: PyTree, mesh: Mesh | None, spec: P) -> PyTree:
  """Host arrays -> global arrays laid out by `NamedSharding(mesh, spec)` (each process feeds its shards)."""
  if mesh is None:
    return jax.tree.map(jnp.asarray, tree)
  sharding = NamedSharding(mesh, spec)

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(put, tree)


def shard_batch(tree: PyTree, mesh: Mesh | None) -> PyTree:
  """Splits the leading (batch) axis of every leaf over the mesh's 'batch' axis."""
  return _place(tree, mesh, P(BATCH_AXIS))


def replicate(tree: PyTree, mesh: Mesh | None) -> PyTree:
  """A full copy of every leaf on every device (the VGG weights)."""
  return _place(tree, mesh, P())


def to_host(tree: PyTree) -> PyTree:
  """Device arrays -> numpy; on several processes, gathers the shards other processes hold."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils
  return multihost_utils.process_allgather(tree, tiled=True)


# ---- stacking ----------------------------------------------------------------------------------------------


def stack(trees: Sequence[PyTree]) -> PyTree:
  """`[tree_0, ..., tree_{B-1}]` with equal structure -> one tree whose leaves have a leading axis B."""
  return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def unstack(tree: PyTree, size: int) -> list[PyTree]:
  """Inverse of `stack`: the first `size` items along the leading axis."""
  return [jax.tree.map(lambda x, i=i: x[i], tree) for i in range(size)]


def pad_to(items: list, size: int) -> list:
  """Repeats the last item until there are `size` (padding is computed and thrown away)."""
  return items + [items[-1]] * (size - len(items))


# ---- buckets -----------------------------------------------------------------------------------------------


def static_key(config: ml_collections.ConfigDict, ignore: Sequence[str] = ()) -> str:
  """Everything in `config` that must be equal within one batch (all but PER_ITEM_FIELDS and `ignore`)."""
  fields = {k: v for k, v in config.to_dict().items() if k not in PER_ITEM_FIELDS and k not in ignore}
  return json.dumps(fields, sort_keys=True, default=str)


def bucket_key(item: Item) -> tuple:
  """Items with equal keys run in one batch: output shape, then the static config (incl. steps)."""
  return (tuple(item.content.shape), static_key(item.config))


def plan_buckets(items: Sequence[Item]) -> list[list[int]]:
  """Indices of `items` grouped by `bucket_key`, in order of first appearance."""
  buckets: dict[tuple, list[int]] = {}
  for index, item in enumerate(items):
    buckets.setdefault(bucket_key(item), []).append(index)
  return list(buckets.values())


# ---- running -----------------------------------------------------------------------------------------------


class BatchStylizer:
  """Runs lists of `Item`s: one `optimize.Stylizer(batched=True)` per static config, one compile per shape.

  Args:
    weights: VGG19 weights (replicated on every device).
    mesh: a `make_mesh()` mesh to shard the batch over, or None for plain single-device arrays.
    batch_size: most items per compiled call (None = a whole bucket at once).
    resize_to: optional common `(h, w)` for every content image (one bucket for all shapes).
  """

  def __init__(self, weights: vgg.VGGWeights, *, mesh: Mesh | None = None, batch_size: int | None = None,
               resize_to: tuple[int, int] | None = None):
    self.mesh = mesh
    self.weights = replicate(weights, mesh)
    self.batch_size = batch_size
    self.resize_to = resize_to
    self._stylizers: dict[str, optimize.Stylizer] = {}

  @property
  def num_devices(self) -> int:
    return 1 if self.mesh is None else self.mesh.size

  def stylizer(self, config: ml_collections.ConfigDict) -> optimize.Stylizer:
    """The batched Stylizer for this static config (created once, so compilations are reused).

    Buckets that differ only in their step count share one Stylizer and so one compiled step per shape.
    """
    key = static_key(config, ignore=("steps", "log_every"))
    if key not in self._stylizers:
      self._stylizers[key] = optimize.Stylizer(config, batched=True)
    return self._stylizers[key]

  def plan(self, items: Sequence[Item]) -> list[tuple[list[int], int]]:
    """Buckets cut into chunks: `(item indices, padded size)` per compiled call.

    Every chunk of a bucket gets the same padded size (its largest chunk, rounded up to a multiple of the
    device count), so a bucket compiles once.
    """
    chunks = []
    for bucket in plan_buckets(self._resized(items)):
      size = self.batch_size or len(bucket)
      padded = -(-min(size, len(bucket)) // self.num_devices) * self.num_devices
      chunks.extend((bucket[i:i + size], padded) for i in range(0, len(bucket), size))
    return chunks

  def _resized(self, items: Sequence[Item]) -> list[Item]:
    if self.resize_to is None:
      return list(items)
    return [dataclasses.replace(item, content=image_io.resize(item.content, self.resize_to)) for item in items]

  def prepare(self, items: Sequence[Item], *, pad_size: int | None = None):
    """`(stylizer, state, targets)` for one chunk: stacked `[B, ...]`, padded, sharded over the mesh."""
    items = self._resized(items)
    if len({bucket_key(item) for item in items}) != 1:
      raise NstJaxError("a batch needs items of one bucket (same shape and static settings)")
    stylizer = self.stylizer(items[0].config)
    size = max(pad_size or len(items), len(items))
    size = -(-size // self.num_devices) * self.num_devices
    padded = pad_to(list(items), size)
    targets = stack([optimize.targets_from_config(self.weights, item.config, item.content, item.styles,
                                                  item.style_blend_weights) for item in padded])
    images = stack([optimize.init_image(item.config.init, item.content, item.styles, seed=item.config.seed,
                                        style_blend_weights=item.style_blend_weights)
                    for item in padded])
    state = stylizer.init_state(shard_batch(images, self.mesh))
    return stylizer, state, shard_batch(targets, self.mesh)

  def run_chunk(self, items: Sequence[Item], *, pad_size: int | None = None,
                callbacks: Iterable[Callable[[int, optimize.StylizeState, Any], None]] = (),
                initial_state: optimize.StylizeState | None = None) -> list[Result]:
    """One compiled batch: items of one bucket -> their `Result`s (in order).

    `pad_size` pads the batch (repeating the last item) so every chunk of a bucket has one shape.
    `initial_state` (a stacked, padded state, e.g. restored from a checkpoint) continues from its step.
    Callbacks get `(step, state, metrics)` as `Stylizer.run`'s do; metrics (every `log_every` steps and at
    the end, else None) hold arrays `[B_padded]`, one loss per item.
    """
    stylizer, state, targets = self.prepare(items, pad_size=pad_size)
    size = state.image.shape[0]
    if initial_state is not None:
      state = initial_state
    config = items[0].config
    num_steps = int(config.steps)
    log_every = int(config.log_every)
    callbacks = list(callbacks)
    begin = time.perf_counter()
    start = int(np.max(to_host(state.step)))
    curve = []
    for step in range(start + 1, num_steps + 1):
      state, loss = stylizer.step(state, targets, self.weights)
      curve.append(loss)
      metrics = None
      if step % log_every == 0 or step == num_steps:
        metrics = {k: np.asarray(v) for k, v in to_host(stylizer.evaluate(state.image, targets,
                                                                          self.weights)).items()}
      for callback in callbacks:
        callback(step, state, metrics)
    final = to_host(stylizer.evaluate(state.image, targets, self.weights))
    images = np.asarray(to_host(state.image))
    curve = np.stack([np.asarray(to_host(c)) for c in curve], axis=1) if curve else np.zeros((size, 0))
    seconds = time.perf_counter() - begin
    return [Result(image=images[i], metrics={k: float(np.asarray(v)[i]) for k, v in final.items()},
                   losses=curve[i].tolist(), seconds=seconds) for i in range(len(items))]

  def run(self, items: Sequence[Item], *, callbacks_for: Callable[[list[int]], Iterable] | None = None
          ) -> list[Result]:
    """Every item, bucket by bucket: `Result`s in the order of `items`.

    `callbacks_for(indices)` gives the run-loop callbacks for one chunk (e.g. a progress bar per batch).
    """
    items = list(items)
    results: list[Result | None] = [None] * len(items)
    for chunk, padded in self.plan(items):
      callbacks = callbacks_for(chunk) if callbacks_for is not None else ()
      chunk_results = self.run_chunk([items[i] for i in chunk], pad_size=padded, callbacks=callbacks)
      for index, result in zip(chunk, chunk_results):
        results[index] = result
    return results


def stylize_batch(items: Sequence[Item], weights: vgg.VGGWeights, *, mesh: Mesh | None = None,
                  batch_size: int | None = None) -> list[np.ndarray]:
  """Stylises every item (batched by bucket, sharded over `mesh`): images `[H, W, 3]` in item order."""
  runner = BatchStylizer(weights, mesh=mesh, batch_size=batch_size)
  return [result.image for result in runner.run(items)]


def item_from_config(content: np.ndarray, style: np.ndarray | Sequence[np.ndarray],
                     config: ml_collections.ConfigDict, name: str = "", **overrides) -> Item:
  """An `Item` whose config is a copy of `config` with `overrides` (e.g. style_weight=1e5)."""
  config = ml_collections.ConfigDict(config.to_dict())
  for key, value in overrides.items():
    config[key] = value
  styles = [style] if isinstance(style, np.ndarray) and style.ndim == 3 else list(style)
  return Item(content=np.asarray(content, np.float32), styles=[np.asarray(s, np.float32) for s in styles],
              config=config, name=name)
