"""The one run engine: jobs -> stages -> buckets -> one jitted, vmapped step with per-item budgets -> hooks.

    results = Engine(weights).run([Job(content, [style], settings.resolve({...}))], hooks=[...])

Every front end (the `nst_jax.stylize` library call, the command with or without `--workdir`, `batch`,
`experiments`, the web server) builds `Job`s from `settings.resolve(...)` and runs them here; none owns a
loop. What a job's settings mean is decided here only:

- **Stages** (`plan`): the coarse-to-fine schedule of `config.scale_*` (one stage when off). Each stage
  has its own shape and step count; the first starts from `config.init`, the next ones from the previous
  result upsampled, with first-order optimizer moments carried over (`carry_opt_state`).
- **Colours, blends, style scale** are part of the job: `preserve_colors` prepares the images before the
  targets and finishes the result after the last stage (`nst_jax.color`); the styles, of any shapes, are
  resized by `style_scale` at every stage and blended by `style_blend_weights` into one Gram target.
- **Regions** (spatial control, `nst_jax.regions`): a job may give one mask per painting (where it applies)
  and one per painting (which part of it to take the style from); they are resized to every stage's shape
  and painting, enter the targets as guided Gram matrices and are part of the job's digest. The number of
  regions is part of the bucket key (it shapes the targets).
- **Buckets**: items (a job at one of its stages) whose compiled program is the same (`settings.STATIC`,
  the image shape, remat) run together in one vmapped step, sharded over the mesh, at most `max_batch` at a
  time. Each item has its own step budget: the step keeps an item's state once `state.step >= budget`
  (`optimize.make_budgeted_step`), so jobs with different step counts or resume points share a batch.
  B = 1 is a single picture, not a separate code path.
- **Checkpoints** (a job with `checkpoint_dir`): orbax, one format everywhere (`nst_jax.checkpoint`). A
  checkpoint holds the item's state at its stage, the stage index and the job's digest; a job restores
  its newest one and continues exactly (the stage transition is recomputed from the saved state).
- **Hooks** (`nst_jax.hooks`): progress, metrics, previews, snapshots, checkpoints' notices and stops
  (signals, the server's cancel) are objects called at job start, every step, stage end and job end.

Steps are counted per job over all its stages ("global" steps): stage k starts at the sum of the steps
of the stages before it.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from typing import Any, Iterable, NamedTuple, Sequence

import jax
import ml_collections
import numpy as np

from nst_jax import batch as mesh_lib, checkpoint, color, image_io, optimize, rundir, settings, tiles, vgg
from nst_jax import alpha as alpha_lib
from nst_jax import regions as regions_lib
from nst_jax.errors import NstJaxError

PyTree = Any
CHECKPOINT_VERSION = 2
TILE_STRIDE = 16  # VGG19's total stride before block 5: a tile's sides wrap exactly at every layer above it.


class Stage(NamedTuple):
  """One stage of a job: a scale of the coarse-to-fine schedule (or the only one)."""
  index: int  # 0-based.
  count: int  # Number of stages.
  shape: tuple[int, int]  # (H, W) of the image at this stage.
  steps: int
  remat: bool


def scale_sizes(max_size: int, *, start: int = 0, factor: float = 2 ** 0.5) -> list[int]:
  """Longest sides of the schedule: `start, start*factor, ...` (rounded, increasing), ending at `max_size`.

  `start <= 0` or `start >= max_size` gives the single scale `[max_size]`.
  """
  if start <= 0 or start >= max_size:
    return [int(max_size)]
  if factor <= 1.0:
    raise NstJaxError(f"scale_factor must be > 1, got {factor}")
  image_io.check_size(int(start), "scale_start")
  sizes, size = [], float(start)
  while round(size) < max_size:
    if not sizes or round(size) > sizes[-1]:
      sizes.append(int(round(size)))
    size *= factor
  # Drop a last coarse scale within 5% of the target: it would cost a compile for nearly nothing.
  if len(sizes) > 1 and sizes[-1] > 0.95 * max_size:
    sizes.pop()
  return sizes + [int(max_size)]


def plan(config: ml_collections.ConfigDict, content_shape: Sequence[int]) -> list[Stage]:
  """The stages of a job whose output has `content_shape` (H, W): its longest side is the final size."""
  height, width = content_shape[:2]
  sizes = scale_sizes(max(height, width), start=int(config.scale_start), factor=float(config.scale_factor))
  threshold = int(config.get("remat_above_pixels", 0) or 0)
  stages = []
  for i, size in enumerate(sizes):
    shape = (height, width) if i == len(sizes) - 1 else image_io.fit_size(height, width, size)
    steps = int(config.steps) if i == len(sizes) - 1 else int(config.scale_steps)
    remat = bool(config.remat) or (threshold > 0 and shape[0] * shape[1] > threshold)
    stages.append(Stage(index=i, count=len(sizes), shape=tuple(shape), steps=steps, remat=remat))
  return stages


def plan_notes(config: ml_collections.ConfigDict, content_shape: Sequence[int]) -> list[str]:
  """What the plan does that a user might not expect (front ends print these as `note:` lines)."""
  notes = []
  longest = max(content_shape[:2])
  if 0 < int(config.scale_start) >= longest:
    notes.append(f"scale_start {config.scale_start} is not below the output's longest side {longest}: one "
                 f"scale (coarse-to-fine off)")
  height, width = content_shape[:2]
  if config.get("tile") and (height % TILE_STRIDE or width % TILE_STRIDE):
    notes.append(f"tile: {width}x{height} is not a multiple of {TILE_STRIDE} px on both sides; the output "
                 f"still wraps around, but VGG pooling drops an edge row or column in deep layers there "
                 f"(see docs/tiles-and-cost.md)")
  return notes


def carry_opt_state(old: PyTree, new: PyTree, old_shape: tuple, new_shape: tuple, *,
                    wrap: bool = False) -> PyTree:
  """Moves a first-order optimizer state to a new image shape: image-shaped leaves are resized
  (bilinear, which keeps second moments non-negative), other leaves (step counts) are kept from `old`.
  `wrap`: the leaves are periodic (a seamless tile), so the filter wraps around their borders.

  L-BFGS is not carried: its curvature pairs (s, y) were measured on the previous scale's problem and
  would not satisfy the secant condition of the new one, so it starts afresh at each stage.
  """

  def move(old_leaf, new_leaf):
    old_leaf, new_leaf = jax.numpy.asarray(old_leaf), jax.numpy.asarray(new_leaf)
    if old_leaf.shape == tuple(old_shape) and new_leaf.shape == tuple(new_shape):
      if wrap:  # The middle of a 3 x 3 mosaic, as `tiles.resize_wrapped`.
        (h, w), rest = new_shape[:2], tuple(new_shape[2:])
        big = jax.numpy.tile(old_leaf, (3, 3) + (1,) * len(rest))
        return jax.image.resize(big, (3 * h, 3 * w) + rest, "linear")[h:2 * h, w:2 * w].astype(new_leaf.dtype)
      return jax.image.resize(old_leaf, new_shape, "linear").astype(new_leaf.dtype)
    if old_leaf.shape == new_leaf.shape:
      return old_leaf
    return new_leaf

  return jax.tree.map(move, old, new)


def style_longest_side(style_shape: Sequence[int], output_shape: Sequence[int], style_scale: float) -> int:
  """The one size rule for paintings: the longest side a painting of `style_shape` gets for an output of
  `output_shape`, `style_scale` times the output's longest side, raised so that the painting's short side is at
  least `image_io.MIN_SIZE` (VGG19's fifth block needs it)."""
  if not np.isfinite(style_scale) or style_scale <= 0:
    raise NstJaxError(f"style_scale must be positive, got {style_scale}")
  longest = int(round(style_scale * max(output_shape[:2])))
  floor = int(np.ceil(image_io.MIN_SIZE * max(style_shape[:2]) / min(style_shape[:2])))
  return max(longest, floor)


def resize_style(style: np.ndarray, output_shape: Sequence[int], style_scale: float) -> np.ndarray:
  """The painting at `style_longest_side` for an output of `output_shape` (one resize from `style`)."""
  style = np.asarray(style, np.float32)
  return image_io.resize_longest(style, style_longest_side(style.shape, output_shape, style_scale))


def as_style_list(style: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
  """One painting or a list of paintings (any shapes) -> a list of float32 `[h, w, 3]` arrays."""
  styles = [style] if isinstance(style, np.ndarray) else list(style)
  return [np.asarray(s, np.float32) for s in styles]


# ---- jobs --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Job:
  """One picture to make.

  Attributes:
    content: the photo, float32 `[H, W, 3]` in [0, 1], at the output size.
    styles: one or more paintings, float32 `[h, w, 3]`, any sizes (blended by `style_blend_weights`).
    config: the settings (`settings.resolve`); validated again by the engine.
    name: a label for progress and logs (e.g. the output path).
    checkpoint_dir: where the job's checkpoints live (None: none); the job resumes from the newest one.
    regions: spatial control (None: off): one mask per style, float `[H, W]` in [0, 1] (or an RGB image,
      converted to grey) of the photo's aspect ratio, any size; white = where that painting applies.
    region_sources: None, or one mask per style (None entries allowed) of that painting's aspect ratio:
      which part of the painting its style is taken from (None = all of it). Needs `regions`.
    init_image: the first stage's starting image `[H, W, 3]` at the output size (resized to the stage) in
      place of `config.init`, in the space the optimisation sees (`color.prepare`); e.g. a video frame
      starts from the warped previous output.
    extra_targets: more `optimize.Targets` fields for this job, e.g. the temporal loss's
      `temporal_images [K, H, W, 3]`, `temporal_masks [K, H, W]`, `temporal_weight` (a scalar). Arrays
      whose axes 1 and 2 are the output's (H, W) are resized to each stage; K decides the compiled loss.
  `content` and `styles` may be RGBA `[H, W, 4]` (`nst_jax.alpha`, docs/transparency.md): the content's alpha
  weighs its pixels in the loss and is put back on the result; a painting's alpha selects its pixels.
  """
  content: np.ndarray
  styles: Sequence[np.ndarray]
  config: ml_collections.ConfigDict
  name: str = ""
  checkpoint_dir: str | None = None
  regions: Sequence[np.ndarray] | None = None
  region_sources: Sequence[np.ndarray | None] | None = None
  init_image: np.ndarray | None = None
  extra_targets: dict | None = None

  @property
  def num_regions(self) -> int:
    """Regions of the targets: the given ones, or one per painting when an image is transparent."""
    if self.regions is not None:
      return len(self.regions)
    transparent = alpha_lib.has_alpha(self.content) or any(alpha_lib.has_alpha(s) for s in self.styles)
    return len(self.styles) if transparent else 0


@dataclasses.dataclass
class Result:
  """What a job produced.

  `status` is 'done' (then `image` is the output) or 'stopped' (a hook stopped it; its checkpoint, if it
  has a checkpoint_dir, is saved and `image` is the current one, colours not finished).
  """
  image: np.ndarray
  status: str
  step: int  # Global step reached.
  total_steps: int
  metrics: dict  # Final losses (of the last stage run).
  stages: list[dict]  # Per stage: index, height, width, steps, remat, seconds, losses.
  seconds: float
  raw_image: np.ndarray | None = None  # The optimised image before `color.finish` (what a video warps).


def job_digest(job: Job, weights: vgg.VGGWeights) -> tuple[dict, str]:
  """`(identity, hash)`: everything that decides the job's image at a given step (`rundir.identity`)."""
  ident = rundir.identity(job.config, weights_source=weights.source, weights_sha256=weights.sha256,
                          content=job.content, styles=list(job.styles))
  if job.regions is not None:  # Only with regions, so that the digests of other jobs stay what they were.
    ident["regions"] = [rundir.array_digest(np.asarray(r, np.float32)) for r in job.regions]
    ident["region_sources"] = None if job.region_sources is None else [
        None if r is None else rundir.array_digest(np.asarray(r, np.float32)) for r in job.region_sources]
  # Video-only settings act through `init_image` and `extra_targets` (below); pictures' digests ignore them.
  ident["settings"] = {k: v for k, v in ident["settings"].items() if k not in settings.VIDEO_ONLY}
  if job.init_image is not None:
    ident["init_image"] = rundir.array_digest(np.asarray(job.init_image, np.float32))
  if job.extra_targets:
    ident["extra_targets"] = {name: rundir.array_digest(np.asarray(value, np.float32))
                              for name, value in sorted(job.extra_targets.items())}
  return ident, rundir.config_hash(ident)


def loss_extras(job: Job) -> tuple:
  """The compile-time switches a job's `extra_targets` add to its loss: `(("temporal_frames", K),)` or ()."""
  masks = (job.extra_targets or {}).get("temporal_masks")
  return () if masks is None else (("temporal_frames", int(np.shape(masks)[0])),)


def _check_extras(job: Job, shape: Sequence[int]) -> None:
  known = {f.name for f in dataclasses.fields(optimize.Targets)}
  for name, value in (job.extra_targets or {}).items():
    if name not in known:
      raise NstJaxError(f"{job.name or 'job'}: unknown target {name!r}")
  if job.init_image is not None and np.shape(job.init_image) != tuple(shape):
    raise NstJaxError(f"{job.name or 'job'}: init_image {np.shape(job.init_image)} is not the photo's {shape}")


def _resize_extra(value: Any, full: Sequence[int], shape: Sequence[int]) -> np.ndarray:
  """A `[K, H, W, ...]` extra target at the output size (H, W) = `full`, resized to the stage `shape`."""
  value = np.asarray(value, np.float32)
  if value.ndim < 3 or tuple(value.shape[1:3]) != tuple(full[:2]) or tuple(full[:2]) == tuple(shape):
    return value
  return np.stack([image_io.resize(v, shape) if v.ndim == 3 else image_io.resize(v[..., None], shape)[..., 0]
                   for v in value])


class JobRun:
  """A job in progress: its stages, prepared images, current stage and state (what hooks see)."""

  def __init__(self, index: int, job: Job, weights: vgg.VGGWeights):
    self.index, self.job, self.config = index, job, job.config
    settings.validate(job.config, len(job.styles))
    if not len(job.styles):
      raise NstJaxError("at least one style image is needed")
    self.photo, self.alpha = alpha_lib.split(job.content, "content image")
    styles, self.style_alphas = [], []
    for i, style in enumerate(as_style_list(job.styles), start=1):
      rgb, alpha = alpha_lib.split(style, f"style image {i}")
      styles.append(rgb)
      self.style_alphas.append(alpha)
    self.content, self.styles = color.prepare(self.photo, styles, job.config.preserve_colors)
    _check_extras(job, self.photo.shape)
    self.loss_extras = loss_extras(job)
    self.regions, self.region_sources = regions_lib.check(job.regions, job.region_sources, self.photo.shape,
                                                          [s.shape for s in self.styles])
    self.stages = plan(job.config, self.photo.shape)
    self.offsets = np.concatenate([[0], np.cumsum([s.steps for s in self.stages])]).astype(int).tolist()
    self.total_steps = self.offsets[-1]
    self.identity, self.digest = job_digest(job, weights)
    self.stage_index = 0
    self.state: optimize.StylizeState | None = None  # Unbatched, at the current stage.
    self.targets: optimize.Targets | None = None
    self.status = "pending"  # pending -> running -> done | stopped
    self.restored_step: int | None = None  # The global step it resumed from (None: a fresh start).
    self.saved_step: int | None = None  # The global step of its newest checkpoint.
    self.notices: list[str] = []  # Messages for the user (e.g. a damaged checkpoint was skipped).
    self.stage_records: list[dict] = []
    self.metrics: dict = {}  # The latest logged losses.
    self.metrics_step = -1  # The local step they were logged at.
    self.local_step = 0  # Step within the current stage.
    self.seconds = 0.0  # Wall time of the steps so far, over all sessions (restored from checkpoints).
    self.clock: float | None = None  # perf_counter() when the current bucket started (None outside one).
    self.stage_begin = 0.0

  @property
  def stage(self) -> Stage:
    return self.stages[self.stage_index]

  def elapsed(self) -> float:
    """Wall time of the job's steps so far, this bucket included."""
    return self.seconds + (0.0 if self.clock is None else time.perf_counter() - self.clock)

  @property
  def step(self) -> int:
    """The job's global step (over all stages)."""
    return self.offsets[self.stage_index] + self.local_step

  def image(self) -> np.ndarray:
    """The current picture `[h, w, 3]` at the current stage (colours not finished; with regions the photo
    where they do not cover it, `optimize.picture`)."""
    image, coverage, photo = jax.device_get((self.state.image, self.targets.coverage, self.targets.photo))
    return np.asarray(optimize.picture(np.asarray(image), coverage, photo), np.float32)

  def final_image(self) -> np.ndarray:
    """The result: colours finished, and the content's alpha put back unchanged (RGBA) if it has one."""
    return alpha_lib.attach(color.finish(self.image(), self.photo, self.config.preserve_colors), self.alpha)


@dataclasses.dataclass
class CheckpointPolicy:
  """When the jobs that have a `checkpoint_dir` save: every `every_steps` global steps and/or every
  `every_seconds` seconds (0 = never), at each stage end, when stopped, and at the end. `keep` is how many
  checkpoints stay; `async_save` lets steps go on while a checkpoint is written."""
  every_steps: int = 100
  every_seconds: float = 0.0
  keep: int = 3
  async_save: bool = False


class Engine:
  """Runs `Job`s: compiled programs are cached per static settings, so repeated runs compile nothing.

  Args:
    weights: VGG19 weights (replicated on every device of the mesh).
    mesh: a `batch.make_mesh()` mesh to shard batches over, or None for plain single-device arrays.
    max_batch: most items per compiled batch (None = every compatible item at once).
    checkpoints: when jobs with a `checkpoint_dir` save.
    min_batch: pad every batch to at least this many items (at most `max_batch`): a resumed run whose
      batch has fewer unfinished jobs then runs the same compiled program as the uninterrupted one, so its
      numbers are bitwise the same (a batch of one runs the plain, unvmapped step).
  """

  def __init__(self, weights: vgg.VGGWeights, *, mesh=None, max_batch: int | None = None,
               checkpoints: CheckpointPolicy | None = None, min_batch: int = 1):
    self.raw_weights = weights
    self.mesh = mesh
    self.weights = mesh_lib.replicate(weights, mesh)
    self.max_batch = max_batch
    self.min_batch = max(1, min(int(min_batch), max_batch or int(min_batch)))
    self.policy = checkpoints or CheckpointPolicy()
    self._stylizers: dict[tuple, optimize.Stylizer] = {}
    self._batch_sizes: dict[tuple, list[int]] = {}

  @property
  def num_devices(self) -> int:
    return 1 if self.mesh is None else self.mesh.size

  def compiled_steps(self) -> int:
    """How many step programs have been compiled (one per static config, shape and batch size)."""
    return sum(s.compiled_count() for s in self._stylizers.values())

  def stylizer(self, config: ml_collections.ConfigDict, remat: bool, extras: tuple = ()) -> optimize.Stylizer:
    """The compiled program of a static config, remat and the jobs' `loss_extras`."""
    key = (settings.static_key(config), remat, extras)
    if key not in self._stylizers:
      stage_config = ml_collections.ConfigDict(config.to_dict())
      stage_config.remat = remat
      self._stylizers[key] = optimize.Stylizer(stage_config, **dict(extras))
    return self._stylizers[key]

  def _stylizer_of(self, run: JobRun) -> optimize.Stylizer:
    return self.stylizer(run.config, run.stage.remat, run.loss_extras)

  @staticmethod
  def bucket_key(run: JobRun) -> tuple:
    """Items with equal keys share one compiled program: stage shape, static settings, remat, regions,
    loss extras."""
    return (run.stage.shape, settings.static_key(run.config), run.stage.remat,
            run.job.num_regions) + run.loss_extras

  def job_bucket_key(self, job: Job) -> tuple:
    """The bucket of a job's first stage (how the server groups queued jobs before running them)."""
    stages = plan(job.config, np.shape(job.content))
    return (stages[0].shape, settings.static_key(job.config), stages[0].remat,
            job.num_regions) + loss_extras(job)

  # ---- running -----------------------------------------------------------------------------------------------

  def run(self, jobs: Sequence[Job], hooks: Iterable[Any] = ()) -> list[Result]:
    """Runs every job to its end (or until a hook stops it); `Result`s in the order of `jobs`.

    Raises:
      NstJaxError: a bad setting or input, or a checkpoint that belongs to another job.
    """
    hooks = list(hooks)
    runs = [JobRun(i, job, self.raw_weights) for i, job in enumerate(jobs)]
    with _CheckpointStores(runs, self.policy) as stores:
      for run in runs:
        self._start(run, stores, hooks)
      pending = [run for run in runs if run.status == "running"]
      while pending:
        key = self.bucket_key(pending[0])
        matching = [run for run in pending if self.bucket_key(run) == key]
        group = matching[:self.max_batch or None]
        size = self._batch_size(key, len(group))
        group = [run for run in group if not self._stop_before_start(run, stores, hooks)]
        if group:
          self._run_bucket(group, stores, hooks, size)
        for run in group:
          if run.status == "running" and run.local_step >= run.stage.steps:
            self._end_stage(run, stores, hooks)
        pending = [run for run in runs if run.status == "running"]
    return [self._result(run) for run in runs]

  def _batch_size(self, key: tuple, count: int) -> int:
    """The padded batch size for `count` items of bucket `key`: a size this bucket already compiled for when
    one fits (so the shorter last chunk of a bucket reuses the program), else `count` rounded up to a
    multiple of the device count."""
    sizes = self._batch_sizes.setdefault(key, [])
    count = max(count, self.min_batch)
    fitting = [s for s in sizes if s >= count]
    if fitting:
      return min(fitting)
    size = -(-count // self.num_devices) * self.num_devices
    sizes.append(size)
    return size

  def _stop_before_start(self, run: JobRun, stores: "_CheckpointStores", hooks: list) -> bool:
    """A job that a hook already wants stopped does not start another bucket (no compile, no step)."""
    if not _any(hooks, "should_stop", run):
      return False
    run.status = "stopped"
    stores.save(run)
    _call(hooks, "on_job_stopped", run)
    return True

  def _enter_stage(self, run: JobRun, index: int, previous: optimize.StylizeState | None) -> None:
    """Targets and starting state of stage `index` (from `config.init`, or the previous stage's result)."""
    run.stage_index = index
    stage = run.stage
    config = run.config
    stylizer = self._stylizer_of(run)
    resize = tiles.resize_wrapped if config.tile else image_io.resize  # A tile's filters wrap around.
    content = resize(run.content, stage.shape)
    styles = [resize_style(s, stage.shape, float(config.style_scale)) for s in run.styles]
    regions = sources = None
    if run.regions is not None:
      regions = [regions_lib.resize_mask(r, stage.shape) for r in run.regions]
      if run.region_sources is not None:
        sources = [None if r is None else regions_lib.resize_mask(r, s.shape[:2])
                   for r, s in zip(run.region_sources, styles)]
    alpha, loss_regions = None, regions
    if run.alpha is not None or any(a is not None for a in run.style_alphas):  # Transparency: as regions.
      alpha = None if run.alpha is None else regions_lib.resize_mask(run.alpha, stage.shape)
      # Without regions, n paintings each cover 1/n of every pixel: the sum of their region terms has the
      # gradient of the blended Gram's term (sum_i w_i |G - A_i|^2 = |G - sum_i w_i A_i|^2 + constant).
      loss_regions = regions or [np.full(stage.shape, 1.0 / len(styles), np.float32)] * len(styles)
      sources = alpha_lib.combine_sources(sources, [None if a is None else regions_lib.resize_mask(a, s.shape[:2])
                                                    for a, s in zip(run.style_alphas, styles)], len(styles))
    run.targets = optimize.targets_from_config(self.raw_weights, config, content, styles,
                                               config.style_blend_weights, regions=loss_regions,
                                               region_sources=sources, alpha=alpha)
    if run.job.extra_targets:
      run.targets = run.targets.replace(**{name: _resize_extra(value, run.photo.shape, stage.shape)
                                           for name, value in run.job.extra_targets.items()})
    if previous is None and run.job.init_image is not None:
      start = resize(np.asarray(run.job.init_image, np.float32), stage.shape)
    elif previous is None and regions is not None:
      start = optimize.region_init_image(config.init, content, styles, regions, seed=int(config.seed))
    elif previous is None:
      start = optimize.init_image(config.init, content, styles, seed=int(config.seed),
                                  style_blend_weights=config.style_blend_weights)
    else:
      start = resize(np.asarray(jax.device_get(previous.image)), stage.shape)
    state = optimize.init_state(start, stylizer.optimizer)
    if previous is not None and not stylizer.linesearch:
      state = state.replace(opt_state=carry_opt_state(previous.opt_state, state.opt_state,
                                                      np.shape(previous.image), start.shape,
                                                      wrap=bool(config.tile)))
    run.state = state
    run.local_step = 0
    run.stage_begin = time.perf_counter()

  def _abstract_state(self, run: JobRun, stage_index: int) -> optimize.StylizeState:
    stage = run.stages[stage_index]
    optimizer = self.stylizer(run.config, stage.remat, run.loss_extras).optimizer
    image = jax.ShapeDtypeStruct((*stage.shape, 3), np.float32)
    return jax.eval_shape(lambda x: optimize.init_state(x, optimizer), image)

  def _start(self, run: JobRun, stores: "_CheckpointStores", hooks: list) -> None:
    """Restores the job's newest checkpoint (if any) or enters its first stage; calls `on_job_start`."""
    found = stores.restore(run, lambda meta: {"state": self._abstract_state(run, _stage_of(run, meta))})
    if found is None:
      self._enter_stage(run, 0, None)
    else:
      meta, tree = found
      stage_index = _stage_of(run, meta)
      self._enter_stage(run, stage_index, None)  # Targets of that stage; the state is replaced below.
      run.state = jax.tree.map(jax.numpy.asarray, tree["state"])
      run.local_step = int(np.asarray(run.state.step))
      run.seconds = float(meta.get("seconds", 0.0))
      run.restored_step = run.saved_step = run.step
      if run.step > run.total_steps:
        raise NstJaxError(f"{run.job.name or 'the job'} is already at step {run.step}, past its {run.total_steps} "
                          f"steps; raise steps (or start afresh)")
    run.status = "running"
    _call(hooks, "on_job_start", run)
    # A restored stage that is already complete moves on (or finishes) without a step.
    while run.status == "running" and run.local_step >= run.stage.steps:
      self._end_stage(run, stores, hooks)

  def _end_stage(self, run: JobRun, stores: "_CheckpointStores", hooks: list) -> None:
    if run.metrics_step != run.local_step:  # Logged at the stage's last step, unless restored there.
      stylizer = self._stylizer_of(run)
      losses = jax.device_get(stylizer.evaluate(run.state.image[None], _batch1(run.targets), self.raw_weights))
      run.metrics = {k: float(v[0]) for k, v in losses.items()}
    stage = run.stage
    run.stage_records.append({"stage": stage.index, "height": stage.shape[0], "width": stage.shape[1],
                              "steps": stage.steps, "remat": stage.remat,
                              "seconds": time.perf_counter() - run.stage_begin, **run.metrics})
    stores.save(run)
    _call(hooks, "on_stage_end", run)
    if stage.index + 1 < len(run.stages):
      self._enter_stage(run, stage.index + 1, run.state)
    else:
      run.status = "done"
      _call(hooks, "on_job_end", run)

  def _run_bucket(self, runs: list[JobRun], stores: "_CheckpointStores", hooks: list, size: int) -> None:
    """Steps one bucket of items (padded to `size` with frozen copies) until each reaches its stage budget
    or is stopped."""
    stylizer = self._stylizer_of(runs[0])
    padded = runs + [runs[-1]] * (size - len(runs))
    budgets = np.array([run.stage.steps for run in runs] + [0] * (size - len(runs)), np.int32)
    starts = np.array([run.local_step for run in runs], np.int64)
    state = mesh_lib.shard_batch(mesh_lib.stack([run.state for run in padded]), self.mesh)
    targets = mesh_lib.shard_batch(mesh_lib.stack([run.targets for run in padded]), self.mesh)
    budget = mesh_lib.shard_batch(budgets, self.mesh)
    view = BatchView(state, targets)
    begin = last_log = time.perf_counter()
    for run in runs:
      run.clock = begin
    last_log_steps = starts.copy()
    for t in range(1, int(np.max(budgets[:len(runs)] - starts)) + 1):
      active = [i for i in range(len(runs)) if starts[i] + t <= budgets[i]]
      if not active:
        break  # Every item reached its budget or was stopped.
      state, _ = stylizer.step(state, targets, self.weights, budget)
      if self.mesh is not None:  # Keep every leaf split over the mesh: XLA may return some replicated,
        state = mesh_lib.reshard(state, self.mesh)  # and another input sharding would compile again.
      view.update(state)
      now = time.perf_counter()
      logging = [i for i in active if (starts[i] + t) % int(runs[i].config.log_every) == 0
                 or starts[i] + t == budgets[i]]
      losses = None
      if logging:
        losses = mesh_lib.to_host(stylizer.evaluate(state.image, targets, self.weights))
      for i in active:
        run = runs[i]
        run.local_step = int(starts[i]) + t
        metrics = None
        if i in logging:
          metrics = {k: float(np.asarray(v)[i]) for k, v in losses.items()}
          run.metrics, run.metrics_step = dict(metrics), run.local_step
          metrics["seconds"] = run.elapsed()
          metrics["steps_per_second"] = (run.local_step - last_log_steps[i]) / max(now - last_log, 1e-9)
          last_log_steps[i] = run.local_step
        event = StepEvent(run=run, step=run.step, local_step=run.local_step, metrics=metrics, view=view, item=i)
        stores.maybe_save(event)  # First, so that hooks see this step's checkpoint in `run.saved_step`.
        _call(hooks, "on_step", event)
      if logging:
        last_log = now
      for i in active:  # A job at the end of its last stage is finished now, not when its batch ends.
        run = runs[i]
        if run.local_step == budgets[i] and run.stage.index + 1 == len(run.stages):
          run.state, run.seconds, run.clock = view.item_state(i), run.elapsed(), None
          self._end_stage(run, stores, hooks)
      stopping = [i for i in active if runs[i].status == "running" and _any(hooks, "should_stop", runs[i])]
      if stopping:
        for i in stopping:
          budgets[i] = starts[i] + t  # Frozen from now on; the others go on.
          run = runs[i]
          run.state, run.seconds, run.clock, run.status = view.item_state(i), run.elapsed(), None, "stopped"
          stores.save(run)
          _call(hooks, "on_job_stopped", run)
        budget = mesh_lib.shard_batch(budgets, self.mesh)
    for i, run in enumerate(runs):
      if run.status == "running":
        run.state, run.seconds, run.clock = view.item_state(i), run.elapsed(), None

  def _result(self, run: JobRun) -> Result:
    done = run.status == "done"
    return Result(image=run.final_image() if done else run.image(), status=run.status, step=run.step,
                  total_steps=run.total_steps, metrics=dict(run.metrics), stages=list(run.stage_records),
                  seconds=run.seconds, raw_image=run.image())


@dataclasses.dataclass
class StepEvent:
  """What `on_step` hooks get after each step of a job (`metrics` only at its logging steps)."""
  run: JobRun
  step: int  # Global step of the job after this step.
  local_step: int  # Step within the current stage.
  metrics: dict | None
  view: "BatchView"
  item: int

  def image(self) -> np.ndarray:
    """This job's current image `[h, w, 3]` (one device-to-host copy per batch step, shared by hooks)."""
    return self.view.host_images()[self.item]

  def state(self) -> optimize.StylizeState:
    return self.view.item_state(self.item)


class BatchView:
  """The batched state of a bucket, copied to the host at most once per step and sliced per item; its
  pictures are `optimize.picture` of the images under the batch's `targets` (regions)."""

  def __init__(self, state: optimize.StylizeState, targets: optimize.Targets | None = None):
    self._regions = None
    if targets is not None and targets.coverage is not None:
      self._regions = mesh_lib.to_host((targets.coverage, targets.photo))
    self.update(state)

  def update(self, state: optimize.StylizeState) -> None:
    self.state, self._images, self._host = state, None, None

  def host_images(self) -> np.ndarray:
    """The pictures `[B, h, w, 3]`."""
    if self._images is None:
      images = np.asarray(mesh_lib.to_host(self.state.image))
      self._images = images if self._regions is None else optimize.picture(images, *self._regions)
    return self._images

  def item_state(self, i: int) -> optimize.StylizeState:
    if self._host is None:
      self._host = mesh_lib.to_host(self.state)
    return jax.tree.map(lambda x: np.array(x[i], copy=True), self._host)


def _batch1(tree: PyTree) -> PyTree:
  return jax.tree.map(lambda x: jax.numpy.asarray(x)[None], tree)


def _call(hooks: list, name: str, *args) -> None:
  for hook in hooks:
    method = getattr(hook, name, None)
    if method is not None:
      method(*args)


def _any(hooks: list, name: str, *args) -> bool:
  return any(bool(getattr(hook, name)(*args)) for hook in hooks if hasattr(hook, name))


def _stage_of(run: JobRun, meta: dict) -> int:
  stage = int(meta.get("stage", 0))
  if not 0 <= stage < len(run.stages):
    raise NstJaxError(f"checkpoint stage {stage} does not fit the job's {len(run.stages)} stage(s)")
  return stage


class _CheckpointStores:
  """The orbax `checkpoint.Checkpoints` of every job that has a `checkpoint_dir`, opened and closed together."""

  def __init__(self, runs: list[JobRun], policy: CheckpointPolicy):
    self.policy = policy
    self.stores: dict[int, checkpoint.Checkpoints] = {}
    self.last_saved: dict[int, float] = {}
    self.runs = runs

  def __enter__(self) -> "_CheckpointStores":
    for run in self.runs:
      if run.job.checkpoint_dir is not None:
        self.stores[run.index] = checkpoint.Checkpoints(run.job.checkpoint_dir, max_to_keep=self.policy.keep,
                                                        async_save=self.policy.async_save)
    return self

  def __exit__(self, *exc) -> None:
    for store in self.stores.values():
      store.close()

  def restore(self, run: JobRun, abstract_fn) -> tuple[dict, PyTree] | None:
    """The job's newest valid checkpoint `(meta, tree)`, or None; damaged ones are skipped with a notice."""
    store = self.stores.get(run.index)
    if store is None:
      return None
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always", checkpoint.CheckpointWarning)
      found = store.restore_latest(abstract_fn)
    run.notices += [f"warning: {w.message}" for w in caught]
    if found is None:
      return None
    step, tree, meta = found
    if meta.get("config_hash") != run.digest:
      raise NstJaxError(f"{run.job.name or 'job'}: checkpoint {step} in {store.directory} belongs to another "
                        f"run (settings or inputs changed); use another folder, or remove it to start afresh")
    self.last_saved[run.index] = time.monotonic()
    return meta, tree

  def save(self, run: JobRun, state: optimize.StylizeState | None = None) -> None:
    """Saves the job's state at its current step (a no-op without a checkpoint_dir or when saved already)."""
    store = self.stores.get(run.index)
    if store is None:
      return
    state = run.state if state is None else state
    local_step = int(np.asarray(jax.device_get(state.step)))
    meta = {"config_hash": run.digest, "stage": run.stage_index, "local_step": local_step,
            "version": CHECKPOINT_VERSION, "seconds": run.elapsed()}
    global_step = run.offsets[run.stage_index] + local_step
    if store.save(global_step, {"state": state}, meta) and not self.policy.async_save:
      store.wait_until_finished()
    self.last_saved[run.index] = time.monotonic()
    run.saved_step = global_step

  def maybe_save(self, event: StepEvent) -> None:
    run = event.run
    if run.index not in self.stores:
      return
    policy = self.policy
    due = bool(policy.every_steps) and event.step % policy.every_steps == 0
    due = due or (policy.every_seconds > 0 and
                  time.monotonic() - self.last_saved.get(run.index, 0.0) >= policy.every_seconds)
    if due:
      self.save(run, state=event.state())
