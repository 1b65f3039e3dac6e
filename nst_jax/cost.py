"""The cost of a run known before it starts: peak memory from XLA, the largest size that fits, time per step.

    estimate = cost.estimate(eng, job)        # compiles the job's step, times a few steps
    print("\n".join(estimate.lines()))
    cost.check(estimate, force=False)         # NstJaxError naming the --max_size that fits

Memory is XLA's own analysis of the compiled step program (`jit(...).lower(...).compile().memory_analysis()`)
at the job's output size: arguments (VGG weights, state, targets) + temporaries + outputs - aliased
(donated) buffers. XLA:CPU reports those four figures (its `peak_memory_in_bytes` is only the arguments,
so it is not used). The step is also compiled at half the output's longest side, and peak memory and step
time are fitted as `a + b * pixels` through the two points: the largest size that fits the free memory and
the time of coarser coarse-to-fine scales come from that line (extrapolated, not compiled at that size).
The compile at the output size is the one the run then uses (jax caches it), so only the half-size probe
and the timed steps are extra work.

Free memory: `NST_JAX_FREE_MEMORY` (bytes, or with K/M/G, e.g. `300M`) when set (tests, or a budget of
your own), else the device's free memory (`memory_stats()` on a GPU/TPU), else the host's `MemAvailable`.
Every front end (the command with or without `--workdir`, `batch`, the web server's `/api/estimate`) uses
this module; see docs/tiles-and-cost.md.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from typing import Sequence

import jax
import ml_collections
import numpy as np

from nst_jax import batch as mesh_lib, engine, image_io, settings
from nst_jax.errors import NstJaxError

FREE_MEMORY_ENV = "NST_JAX_FREE_MEMORY"
TIMED_STEPS = 2  # Steps timed per probe size (after one untimed step).
_UNITS = {"": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}


@dataclasses.dataclass
class Probe:
  """The compiled step at one image shape: XLA's memory figures and the measured time per step."""
  shape: tuple[int, int]
  batch: int
  argument_bytes: int
  temp_bytes: int
  output_bytes: int
  alias_bytes: int
  compile_seconds: float
  step_seconds: float

  @property
  def pixels(self) -> int:
    return self.shape[0] * self.shape[1]

  @property
  def peak_bytes(self) -> int:
    """What the step needs at once: its inputs, scratch space and the outputs not written in place."""
    return self.argument_bytes + self.temp_bytes + self.output_bytes - self.alias_bytes

  @property
  def working_bytes(self) -> int:
    """What a step allocates beyond its inputs (compare with the RSS growth of one step)."""
    return self.temp_bytes + self.output_bytes - self.alias_bytes


@dataclasses.dataclass
class Estimate:
  """The cost of one job (or one batch of `batch` like jobs) as configured."""
  name: str
  shape: tuple[int, int]  # The output (last stage).
  batch: int
  probes: list[Probe]  # At the output size, then at half its longest side.
  stage_steps: list[tuple[tuple[int, int], int]]  # (shape, steps) per stage.
  free_bytes: int
  free_source: str

  def _line(self, values: Sequence[Probe], pixels: float, field: str) -> float:
    """`a + b * pixels` through the probes' (pixels, field) points (proportional with one point)."""
    xs = np.array([p.pixels for p in values], float)
    ys = np.array([getattr(p, field) for p in values], float)
    if len(values) < 2 or xs[0] == xs[1]:
      return float(ys[0] * pixels / xs[0])
    slope = (ys[0] - ys[1]) / (xs[0] - xs[1])
    return float(ys[0] + slope * (pixels - xs[0]))

  @property
  def peak_bytes(self) -> int:
    return self.probes[0].peak_bytes

  @property
  def fits(self) -> bool:
    return self.peak_bytes <= self.free_bytes

  @property
  def step_seconds(self) -> float:
    return self.probes[0].step_seconds

  def stage_seconds(self) -> list[float]:
    """Expected time of each stage's steps (coarser stages from the fitted line)."""
    return [steps * max(self._line(self.probes, shape[0] * shape[1], "step_seconds"), 0.0)
            if shape != self.shape else steps * self.step_seconds for shape, steps in self.stage_steps]

  @property
  def run_seconds(self) -> float:
    """Steps of every stage plus one compile per stage (the compile time measured at the output size)."""
    return sum(self.stage_seconds()) + len(self.stage_steps) * self.probes[0].compile_seconds

  def max_size(self) -> int:
    """The largest longest side (same aspect ratio, `image_io.MAX_SIZE` at most) whose peak fits the free
    memory, from the fitted line; 0 when none does."""
    height, width = self.shape
    aspect = min(height, width) / max(height, width)  # pixels = aspect * longest^2
    lo, hi = 0, image_io.MAX_SIZE
    while lo < hi:  # The line is increasing in pixels: binary search on the longest side.
      mid = (lo + hi + 1) // 2
      if self._line(self.probes, aspect * mid * mid, "peak_bytes") <= self.free_bytes:
        lo = mid
      else:
        hi = mid - 1
    return lo if lo >= image_io.MIN_SIZE else 0

  def lines(self) -> list[str]:
    """The figures, one per line (the top of every run's log, and `--dry_run`)."""
    full = self.probes[0]
    what = f"{self.name + ': ' if self.name else ''}{self.shape[1]}x{self.shape[0]}" + (
        f", batch of {self.batch}" if self.batch > 1 else "")
    fit = self.max_size()
    lines = [
        f"cost: {what}: step peak memory {_gib(full.peak_bytes)} (XLA memory analysis: arguments "
        f"{_gib(full.argument_bytes)} + temporaries {_gib(full.temp_bytes)} + outputs {_gib(full.output_bytes)}"
        f" - donated {_gib(full.alias_bytes)}); free {_gib(self.free_bytes)} ({self.free_source})",
        f"cost: largest max_size that fits: {fit if fit else 'none'} (peak fitted linear in pixels through the "
        f"compiled {full.shape[1]}x{full.shape[0]} and {self.probes[-1].shape[1]}x{self.probes[-1].shape[0]} steps)",
        f"cost: {full.step_seconds:.3g} s per step (mean of {TIMED_STEPS} timed steps), compile "
        f"{full.compile_seconds:.1f} s; whole run about {_duration(self.run_seconds)} "
        f"({sum(s for _, s in self.stage_steps)} steps in {len(self.stage_steps)} stage(s))",
    ]
    return lines

  def as_dict(self) -> dict:
    """The figures as JSON (the web API)."""
    return {"width": self.shape[1], "height": self.shape[0], "batch": self.batch,
            "peak_bytes": self.peak_bytes, "free_bytes": self.free_bytes, "free_source": self.free_source,
            "fits": self.fits, "max_size": self.max_size(), "step_seconds": self.step_seconds,
            "compile_seconds": self.probes[0].compile_seconds, "run_seconds": self.run_seconds,
            "lines": self.lines()}


def _gib(value: float) -> str:
  if value >= 2 ** 30:
    return f"{value / 2 ** 30:.2f} GiB"
  return f"{value / 2 ** 20:.{0 if value >= 10 * 2 ** 20 else 1}f} MiB"


def _duration(seconds: float) -> str:
  return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def parse_bytes(text: str) -> int:
  """`'300M'` -> 314572800 (K, M, G, T are powers of 1024; a plain number is bytes)."""
  match = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?)i?B?\s*", str(text), re.IGNORECASE)
  if not match:
    raise NstJaxError(f"{FREE_MEMORY_ENV} must be a number of bytes like 300M or 2G, got {text!r}")
  return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def free_memory() -> tuple[int, str]:
  """`(bytes, where the figure comes from)`: the env override, else the device's, else the host's."""
  if os.environ.get(FREE_MEMORY_ENV):
    return parse_bytes(os.environ[FREE_MEMORY_ENV]), FREE_MEMORY_ENV
  device = jax.devices()[0]
  if device.platform != "cpu":
    stats = device.memory_stats() or {}
    if "bytes_limit" in stats:
      return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0)), f"{device.platform} memory free"
  with open("/proc/meminfo", encoding="utf-8") as f:
    for line in f:
      if line.startswith("MemAvailable:"):
        return int(line.split()[1]) * 1024, "host MemAvailable"
  raise NstJaxError("cannot tell the free memory; set " + FREE_MEMORY_ENV)


def _probe_job(job: engine.Job, shape: tuple[int, int], remat: bool) -> engine.Job:
  """The job as one stage at `shape` (its content resized), with the remat of the stage it stands for."""
  config = ml_collections.ConfigDict(job.config.to_dict())
  config.scale_start, config.remat, config.remat_above_pixels = 0, remat, 0
  # Regions (spatial control) come along: the engine resizes them per stage, and they shape the targets.
  return dataclasses.replace(job, content=image_io.resize(np.asarray(job.content, np.float32), shape),
                             config=config, name="", checkpoint_dir=None)


def probe(eng: engine.Engine, job: engine.Job, shape: tuple[int, int], *, remat: bool, batch: int = 1,
          timed_steps: int = TIMED_STEPS) -> Probe:
  """Compiles `job`'s step at `shape` for a batch of `batch`, reads XLA's memory analysis, times steps."""
  run = engine.JobRun(0, _probe_job(job, shape, remat), eng.raw_weights)
  eng._enter_stage(run, 0, None)
  stylizer = eng.stylizer(run.config, remat)
  state = mesh_lib.shard_batch(mesh_lib.stack([run.state] * batch), eng.mesh)
  targets = mesh_lib.shard_batch(mesh_lib.stack([run.targets] * batch), eng.mesh)
  budget = mesh_lib.shard_batch(np.full(batch, 1 + 2 * timed_steps, np.int32), eng.mesh)
  begin = time.perf_counter()
  compiled = stylizer.step.lower(state, targets, eng.weights, budget).compile()
  compile_seconds = time.perf_counter() - begin
  memory = compiled.memory_analysis()
  state, _ = compiled(state, targets, eng.weights, budget)  # Untimed: first-call allocations.
  jax.block_until_ready(state)
  begin = time.perf_counter()
  for _ in range(timed_steps):
    state, _ = compiled(state, targets, eng.weights, budget)
  jax.block_until_ready(state)
  step_seconds = (time.perf_counter() - begin) / max(timed_steps, 1)
  return Probe(shape=tuple(shape), batch=batch, argument_bytes=int(memory.argument_size_in_bytes),
               temp_bytes=int(memory.temp_size_in_bytes), output_bytes=int(memory.output_size_in_bytes),
               alias_bytes=int(memory.alias_size_in_bytes), compile_seconds=compile_seconds,
               step_seconds=step_seconds)


def estimate(eng: engine.Engine, job: engine.Job, *, batch: int = 1, free_bytes: int | None = None,
             timed_steps: int = TIMED_STEPS) -> Estimate:
  """The cost of `job` (run `batch` at a time) on `eng`: probes at the output size and at half of it."""
  stages = engine.plan(job.config, np.shape(job.content))
  last = stages[-1]
  height, width = last.shape
  half = image_io.fit_size(height, width, max(image_io.MIN_SIZE, max(height, width) // 2))
  probes = [probe(eng, job, last.shape, remat=last.remat, batch=batch, timed_steps=timed_steps)]
  if tuple(half) != tuple(last.shape) and min(half) >= image_io.MIN_SIZE:
    probes.append(probe(eng, job, half, remat=last.remat, batch=batch, timed_steps=timed_steps))
  if free_bytes is None:
    free_bytes, source = free_memory()
  else:
    source = "given"
  return Estimate(name=job.name, shape=tuple(last.shape), batch=batch, probes=probes,
                  stage_steps=[(s.shape, s.steps) for s in stages], free_bytes=int(free_bytes),
                  free_source=source)


def check(estimate_: Estimate, *, force: bool = False) -> None:
  """Raises NstJaxError (one line naming the `--max_size` that fits) when the peak exceeds free memory."""
  if estimate_.fits or force:
    return
  fit = estimate_.max_size()
  advice = f"--max_size {fit} would fit" if fit else "no size fits"
  what = f"{estimate_.name}: " if estimate_.name else ""
  raise NstJaxError(f"{what}the step needs about {_gib(estimate_.peak_bytes)} at {estimate_.shape[1]}x"
                    f"{estimate_.shape[0]} but {_gib(estimate_.free_bytes)} is free; {advice} (or --force to "
                    f"run anyway)")


def preflight(eng: engine.Engine, jobs: Sequence[engine.Job], *, force: bool = False, log=print,
              free_bytes: int | None = None) -> list[Estimate]:
  """Estimates every group of jobs that would share a compiled batch at their output size (one probe per
  group, at the batch size the engine would use), logs the figures, then refuses (`check`) when one does
  not fit. What the command, `--workdir` runs and `batch` do before they start."""
  groups: dict[tuple, list[engine.Job]] = {}
  for job in jobs:
    last = engine.plan(job.config, np.shape(job.content))[-1]
    key = (last.shape, last.remat, settings.static_key(job.config), job.num_regions)
    groups.setdefault(key, []).append(job)
  estimates = []
  for group in groups.values():
    size = min(len(group), eng.max_batch or len(group))
    size = -(-size // eng.num_devices) * eng.num_devices
    found = estimate(eng, group[0], batch=size, free_bytes=free_bytes)
    for line in found.lines():
      log(line)
    estimates.append(found)
  for found in estimates:
    check(found, force=force)
  return estimates
