"""The cost of a run known before it starts: time, peak memory, the largest size that fits.

    found = cost.estimate(job.config, job.content.shape[:2])   # within milliseconds: no compile, no step
    print("\n".join(found.lines()))     # estimate: about 1.2 min (100 steps at 256x170, ~0.7 s/step, from ...)
    cost.check(found, force=False)      # NstJaxError naming the --max_size that fits

Every run starts with `estimate`, an analytic figure: the VGG19 forward pass to the deepest loss layer costs
`network(shape, layers).gflops` (2 x 9 x C_in x C_out per pixel of each 3x3 convolution, at its scale), and a
step costs `overhead + seconds_per_gflop x GFLOPs x batch`, with the two rates per device platform and
optimizer family from `RATES` (measured by `python scripts/benchmark_memory.py --calibrate`, which prints
that table). Each finished run (the command, `--workdir`, `batch`, `video`) records its own measured step
time in a per-machine cache (`step_times.json` in `weights.cache_dir()`, `StepTimes` hook), and the next
estimate uses the recorded rate of the nearest job size instead: the second estimate on a machine is that
machine's. Memory is analytic too: the VGG weights the loss needs plus, per picture of the batch, its
activations times a factor per optimizer family (`RATES`, fitted to XLA's memory analysis) plus the
optimizer's state (image-sized buffers).

`measure` (`--dry_run`) does the slow, exact thing instead: it compiles the step at the output size and at
half its longest side, reads XLA's memory analysis of both programs (arguments + temporaries + outputs -
aliased (donated) buffers; XLA:CPU's `peak_memory_in_bytes` is only the arguments, so it is not used) and
times a few steps; peak memory and step time are fitted as `a + b * pixels` through the two points.

Free memory: `NST_JAX_FREE_MEMORY` (bytes, or with K/M/G, e.g. `300M`) when set (tests, or a budget of
your own), else the device's free memory (`memory_stats()` on a GPU/TPU), else the host's `MemAvailable`.
Every front end (the command with or without `--workdir`, `batch`, `video`, the web server's
`/api/estimate`) uses this module; see docs/tiles-and-cost.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import tempfile
import time
from typing import NamedTuple, Sequence

import jax
import ml_collections
import numpy as np

from nst_jax import batch as mesh_lib, engine, image_io, settings, vgg
from nst_jax.errors import NstJaxError

FREE_MEMORY_ENV = "NST_JAX_FREE_MEMORY"
TIMED_STEPS = 2  # Steps timed per probe size (after one untimed step), with `measure` (--dry_run).
CACHE_FILE = "step_times.json"
CACHE_VERSION = 1
CACHE_KEEP = 16  # Recorded job sizes kept per device and optimizer family.
_UNITS = {"": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}


class Rate(NamedTuple):
  """What a step costs on one kind of device with one optimizer family (see `RATES`)."""
  seconds_per_gflop: float  # Per GFLOP of the VGG forward pass to the deepest loss layer.
  step_overhead: float  # Seconds per step that do not grow with the picture (dispatch, optimizer update).
  stage_seconds: float  # Per stage: targets, a compile (persistent cache cold) and first-call allocations.
  memory_factor: float  # Peak bytes per byte of forward activations (backward pass, XLA temporaries).
  measured: bool  # False: a guess (no machine of that kind was measured); a run on it replaces it.


# CPU rows: `python scripts/benchmark_memory.py --calibrate --sizes 128,256` prints them (random weights,
# default layers, jax 0.10.2). On the 2 shared AVX2 cores it ran on, under load 7-9, it gave 0.061 s/GFLOP for
# Adam and 0.068 for L-BFGS (3x the idle machine), so the rows use the idle Adam figures of PERF_NOTES.md
# (0.25-0.40, 0.86-1.21, 3.30-4.19 s per step at 128, 256, 512 px: 0.020 s/GFLOP), L-BFGS 1.1x that as
# measured, and the memory factors measured (XLA's analysis at 256 px; Adam checked against the XLA peaks of
# docs/tiles-and-cost.md, 253, 706 and 2525 MiB at 256, 512, 1024 px: the formula gives 250, 705, 2525).
# Accelerators: no machine was measured; the row is a guess from an H100/H200's float32 throughput, and the
# first finished run on such a machine replaces it (the per-machine cache).
RATES: dict[tuple[str, str], Rate] = {
    ("cpu", "first_order"): Rate(0.020, 0.01, 3.0, 2.05, True),
    ("cpu", "lbfgs"): Rate(0.022, 0.05, 8.0, 2.39, True),
    ("gpu", "first_order"): Rate(0.00005, 0.003, 8.0, 2.05, False),
    ("gpu", "lbfgs"): Rate(0.00006, 0.005, 10.0, 2.39, False),
}
RATES[("tpu", "first_order")], RATES[("tpu", "lbfgs")] = RATES[("gpu", "first_order")], RATES[("gpu", "lbfgs")]


def family(optimizer: str) -> str:
  """`lbfgs` (line searches: evaluations per step vary) or `first_order` (one gradient per step)."""
  return "lbfgs" if optimizer == "lbfgs" else "first_order"


def platform() -> str:
  """The default JAX backend: cpu, gpu or tpu (what `RATES` and the machine defaults are keyed by)."""
  return jax.default_backend()


class Network(NamedTuple):
  """The VGG19 forward pass a loss needs at one image shape."""
  gflops: float  # Multiply-adds x 2 of every 3x3 convolution up to the deepest layer.
  activation_bytes: int  # float32 outputs of those convolutions.
  weight_bytes: int  # Their kernels and biases.


def network(shape: Sequence[int], layers: Sequence[str]) -> Network:
  """The size of the VGG19 forward pass to the deepest of `layers` on an `[H, W]` image (pools halve it)."""
  deepest = max(vgg.LAYER_NAMES.index(name) for name in layers)
  height, width = int(shape[0]), int(shape[1])
  flops = activations = params = 0
  channels = 3
  for name in vgg.LAYER_NAMES[:deepest + 1]:
    if name.startswith("conv"):
      out = vgg.CONV_CHANNELS[name]
      flops += 2 * 9 * channels * out * height * width
      activations += out * height * width
      params += 9 * channels * out + out
      channels = out
    elif name.startswith("pool"):
      height, width = height // 2, width // 2
  return Network(gflops=flops / 1e9, activation_bytes=4 * activations, weight_bytes=4 * params)


def _loss_layers(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  return tuple(config.content_layers) + tuple(config.style_layers)


def state_bytes(config: ml_collections.ConfigDict, pixels: int) -> int:
  """The optimizer state of one picture: image-sized float32 buffers (image, photo, Adam's two moments, or
  L-BFGS's history of steps and gradient differences and its line search)."""
  images = 2 * int(config.lbfgs_memory) + 6 if config.optimizer == "lbfgs" else 4
  return 12 * pixels * images


def analytic_peak(config: ml_collections.ConfigDict, shape: Sequence[int], batch: int, rate: Rate) -> float:
  """Peak bytes of a step: the weights twice (the backward convolutions' flipped kernels are a copy), then
  per picture its activations x the factor and its optimizer state."""
  net = network(shape, _loss_layers(config))
  pixels = int(shape[0]) * int(shape[1])
  return 2 * net.weight_bytes + batch * (rate.memory_factor * net.activation_bytes + state_bytes(config, pixels))


# ---- the per-machine cache of measured step times --------------------------------------------------------


def cache_path() -> str:
  """`step_times.json` in the cache dir (`$NST_JAX_HOME` or `~/.cache/nst_jax`)."""
  from nst_jax import weights as weights_lib
  return os.path.join(weights_lib.cache_dir(), CACHE_FILE)


def device_key(optimizer: str) -> str:
  """The cache's key: this machine's device kind and the optimizer family."""
  device = jax.devices()[0]
  return f"{device.platform}/{device.device_kind}/{family(optimizer)}"


def read_cache(path: str | None = None) -> dict:
  """`{key: [record, ...]}` of the cache file; empty when it is missing, damaged or of another version."""
  try:
    with open(path or cache_path(), encoding="utf-8") as f:
      data = json.load(f)
  except (OSError, ValueError):
    return {}
  if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
    return {}
  entries = data.get("entries")
  return entries if isinstance(entries, dict) else {}


def record_step_time(optimizer: str, gflops: float, step_seconds: float, stage_seconds: float | None = None, *,
                     path: str | None = None) -> None:
  """Adds one measurement (a batch step of `gflops` took `step_seconds`) to the cache; the record of the
  same size (within 10%) is replaced, the oldest dropped beyond `CACHE_KEEP`. Written atomically; a
  read-only home only loses the record."""
  if not gflops > 0 or not step_seconds > 0:
    return
  path = path or cache_path()
  entries = read_cache(path)
  key = device_key(optimizer)
  records = [r for r in entries.get(key, []) if isinstance(r, dict) and r.get("gflops", 0) > 0
             and abs(math.log(r["gflops"] / gflops)) > math.log(1.1)]
  record = {"gflops": round(gflops, 4), "step_seconds": round(step_seconds, 5), "when": int(time.time())}
  if stage_seconds is not None and stage_seconds >= 0:
    record["stage_seconds"] = round(stage_seconds, 3)
  entries[key] = (records + [record])[-CACHE_KEEP:]
  with contextlib.suppress(OSError):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".step_times.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      json.dump({"version": CACHE_VERSION, "entries": entries}, f, indent=1)
    os.replace(tmp, path)


class Timing(NamedTuple):
  """Step time at any job size, and where the figures come from."""
  seconds_per_gflop: float
  step_overhead: float
  stage_seconds: float
  source: str

  def step_seconds(self, gflops: float) -> float:
    return self.step_overhead + self.seconds_per_gflop * gflops


def timing(optimizer: str, gflops: float, *, entries: dict | None = None) -> Timing:
  """The rate for a step of `gflops`: `RATES`' curve, scaled through this machine's recorded run nearest in
  size (log scale) when there is one."""
  rate = rate_for(optimizer)
  records = [r for r in (read_cache() if entries is None else entries).get(device_key(optimizer), [])
             if isinstance(r, dict) and r.get("gflops", 0) > 0 and r.get("step_seconds", 0) > 0]
  if not records:
    what = "the built-in table" if rate.measured else "a guess (no machine of this kind measured yet)"
    return Timing(rate.seconds_per_gflop, rate.step_overhead, rate.stage_seconds,
                  f"{what} for {platform()}, {family(optimizer).replace('_', '-')} optimizers")
  nearest = min(records, key=lambda r: abs(math.log(r["gflops"] / max(gflops, 1e-9))))
  # The table's curve scaled through the recorded point: exact at the recorded size, its shape elsewhere.
  scale = nearest["step_seconds"] / (rate.step_overhead + rate.seconds_per_gflop * nearest["gflops"])
  stages = [r["stage_seconds"] for r in records if "stage_seconds" in r]
  return Timing(scale * rate.seconds_per_gflop, scale * rate.step_overhead,
                float(np.median(stages)) if stages else rate.stage_seconds,
                f"this machine's run at {nearest['gflops']:.3g} GFLOP/step ({len(records)} recorded, {CACHE_FILE})")


def rate_for(optimizer: str) -> Rate:
  """`RATES`' row for this machine's platform and `optimizer`'s family (an unknown platform: the GPU guess)."""
  return RATES.get((platform(), family(optimizer)), RATES[("gpu", family(optimizer))])


class StepTimes:
  """Engine hook: records each stage's step time in the per-machine cache when the stage ends or the job
  stops, so the next estimate is this machine's.

  Steps are dispatched asynchronously, so they are timed between the steps that wait for their result (the
  logging steps, which read the losses): the median seconds per step over those segments, the first one
  (which compiles the loss evaluation) left out when there are others; the time before the first step
  (targets, compile) is recorded as the stage's start."""

  MIN_STEPS = 3  # Stages with fewer timed steps are not recorded.

  def __init__(self, path: str | None = None):
    self.path, self.stages = path, {}

  def on_job_start(self, run) -> None:
    self.stages[run.index] = {"stage": run.stage.index, "begin": time.perf_counter(), "marks": [], "batch": 1}

  def on_step(self, event) -> None:
    run, now = event.run, time.perf_counter()
    stage = self.stages.get(run.index)
    if stage is None or stage["stage"] != run.stage.index:
      stage = self.stages[run.index] = {"stage": run.stage.index, "begin": now, "marks": [], "batch": 1}
    if not stage["marks"]:
      stage["first"] = now - stage["begin"]  # Targets, compile, one dispatch.
      stage["batch"] = int(np.shape(event.view.state.image)[0])
      stage["marks"].append((now, event.local_step))
    elif event.metrics is not None:  # The losses were read: every step so far has finished.
      stage["marks"].append((now, event.local_step))

  def _flush(self, run) -> None:
    stage = self.stages.pop(run.index, None)
    if stage is None or len(stage["marks"]) < 2 or stage["marks"][-1][1] - stage["marks"][0][1] < self.MIN_STEPS:
      return
    marks = stage["marks"]
    rates = [(t1 - t0) / (s1 - s0) for (t0, s0), (t1, s1) in zip(marks, marks[1:]) if s1 > s0]
    step = float(np.median(rates[1:] if len(rates) > 1 else rates))
    net = network(run.stage.shape, _loss_layers(run.config))
    record_step_time(run.config.optimizer, net.gflops * stage["batch"], step, stage["first"], path=self.path)

  def on_stage_end(self, run) -> None:
    self._flush(run)
    self.stages[run.index] = {"stage": run.stage.index + 1, "begin": time.perf_counter(), "marks": [], "batch": 1}

  def on_job_stopped(self, run) -> None:
    self._flush(run)


# ---- estimates --------------------------------------------------------------------------------------------


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
class Point:
  """The analytic cost of a step at one image shape (what a `Probe` measures)."""
  shape: tuple[int, int]
  peak_bytes: float
  step_seconds: float

  @property
  def pixels(self) -> int:
    return self.shape[0] * self.shape[1]


@dataclasses.dataclass
class Estimate:
  """The cost of one job (or one batch of `batch` like jobs) as configured."""
  name: str
  shape: tuple[int, int]  # The output (last stage).
  batch: int
  points: list  # `Point`s or `Probe`s: at the output size, then at half its longest side.
  stage_steps: list[tuple[tuple[int, int], int]]  # (shape, steps) per stage.
  free_bytes: int
  free_source: str
  stage_seconds_each: float  # Per stage: targets, compile, first call.
  source: str  # Where the time per step comes from.

  @property
  def probes(self) -> list[Probe]:
    """The compiled programs' figures (`measure`, --dry_run); empty for an analytic estimate."""
    return [p for p in self.points if isinstance(p, Probe)]

  def _line(self, pixels: float, field: str) -> float:
    """`a + b * pixels` through the points' (pixels, field) values (proportional with one point)."""
    xs = np.array([p.pixels for p in self.points], float)
    ys = np.array([getattr(p, field) for p in self.points], float)
    if len(self.points) < 2 or xs[0] == xs[1]:
      return float(ys[0] * pixels / xs[0])
    slope = (ys[0] - ys[1]) / (xs[0] - xs[1])
    return float(ys[0] + slope * (pixels - xs[0]))

  @property
  def peak_bytes(self) -> int:
    return int(self.points[0].peak_bytes)

  @property
  def fits(self) -> bool:
    return self.peak_bytes <= self.free_bytes

  @property
  def step_seconds(self) -> float:
    return self.points[0].step_seconds

  @property
  def steps(self) -> int:
    return sum(steps for _, steps in self.stage_steps)

  def stage_seconds(self) -> list[float]:
    """Expected time of each stage's steps (coarser stages from the fitted line)."""
    return [steps * max(self._line(shape[0] * shape[1], "step_seconds"), 0.0)
            if shape != self.shape else steps * self.step_seconds for shape, steps in self.stage_steps]

  @property
  def run_seconds(self) -> float:
    """Steps of every stage plus each stage's start (targets, compile)."""
    return sum(self.stage_seconds()) + len(self.stage_steps) * self.stage_seconds_each

  def max_size(self) -> int:
    """The largest longest side (same aspect ratio, `image_io.MAX_SIZE` at most) whose peak fits the free
    memory, from the fitted line; 0 when none does."""
    height, width = self.shape
    aspect = min(height, width) / max(height, width)  # pixels = aspect * longest^2
    lo, hi = 0, image_io.MAX_SIZE
    while lo < hi:  # The line is increasing in pixels: binary search on the longest side.
      mid = (lo + hi + 1) // 2
      if self._line(aspect * mid * mid, "peak_bytes") <= self.free_bytes:
        lo = mid
      else:
        hi = mid - 1
    return lo if lo >= image_io.MIN_SIZE else 0

  def summary(self) -> str:
    """The one line every run prints before its first step."""
    what = f"{self.shape[1]}x{self.shape[0]}" + (f", batch of {self.batch}" if self.batch > 1 else "")
    stages = len(self.stage_steps)
    steps = f"{self.steps} steps" + (f" in {stages} scales up to {what}" if stages > 1 else f" at {what}")
    return (f"estimate: {self.name + ': ' if self.name else ''}about {duration(self.run_seconds)} ({steps}, "
            f"~{self.step_seconds:.2g} s/step, from {self.source})")

  def lines(self) -> list[str]:
    """The figures, one per line (the top of every run's log; `--dry_run` adds XLA's figures)."""
    fit = self.max_size()
    lines = [self.summary()]
    if not self.probes:
      lines.append(f"estimate: peak memory about {_gib(self.peak_bytes)} (VGG weights + activations x a factor "
                   f"fitted to XLA's analysis + optimizer state), {_gib(self.free_bytes)} free ({self.free_source}); "
                   f"largest max_size that fits: {fit if fit else 'none'}")
      return lines
    full, half = self.points[0], self.points[-1]
    lines += [
        f"cost: step peak memory {_gib(full.peak_bytes)} (XLA memory analysis: arguments "
        f"{_gib(full.argument_bytes)} + temporaries {_gib(full.temp_bytes)} + outputs {_gib(full.output_bytes)}"
        f" - donated {_gib(full.alias_bytes)}); free {_gib(self.free_bytes)} ({self.free_source})",
        f"cost: largest max_size that fits: {fit if fit else 'none'} (peak fitted linear in pixels through the "
        f"compiled {full.shape[1]}x{full.shape[0]} and {half.shape[1]}x{half.shape[0]} steps)",
        f"cost: {full.step_seconds:.3g} s per step (mean of {TIMED_STEPS} timed steps), compile "
        f"{full.compile_seconds:.1f} s; whole run about {duration(self.run_seconds)} "
        f"({self.steps} steps in {len(self.stage_steps)} stage(s))",
    ]
    return lines

  def as_dict(self) -> dict:
    """The figures as JSON (the web API)."""
    return {"width": self.shape[1], "height": self.shape[0], "batch": self.batch,
            "peak_bytes": self.peak_bytes, "free_bytes": self.free_bytes, "free_source": self.free_source,
            "fits": self.fits, "max_size": self.max_size(), "step_seconds": self.step_seconds,
            "stage_seconds": self.stage_seconds_each, "run_seconds": self.run_seconds, "source": self.source,
            "measured": bool(self.probes), "lines": self.lines()}


def _gib(value: float) -> str:
  if value >= 2 ** 30:
    return f"{value / 2 ** 30:.2f} GiB"
  return f"{value / 2 ** 20:.{0 if value >= 10 * 2 ** 20 else 1}f} MiB"


def duration(seconds: float) -> str:
  """`45 s`, `1.2 min`, `72 min`, `3.1 h`: how long a run takes, as a person would say it."""
  if seconds < 60:
    return f"{max(seconds, 1):.0f} s"
  if seconds < 600:
    return f"{seconds / 60:.1f} min"
  return f"{seconds / 60:.0f} min" if seconds < 6 * 3600 else f"{seconds / 3600:.1f} h"


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


def _free(free_bytes: int | None) -> tuple[int, str]:
  return free_memory() if free_bytes is None else (int(free_bytes), "given")


def _half(shape: Sequence[int]) -> tuple[int, int] | None:
  """The shape at half the longest side (the second point of the fitted lines), or None when too small."""
  height, width = shape
  half = tuple(image_io.fit_size(height, width, max(image_io.MIN_SIZE, max(height, width) // 2)))
  return half if half != tuple(shape) and min(half) >= image_io.MIN_SIZE else None


def estimate(config: ml_collections.ConfigDict, shape: Sequence[int], *, name: str = "", batch: int = 1,
             free_bytes: int | None = None, entries: dict | None = None) -> Estimate:
  """The analytic cost of a job of `config` whose output is `shape` (H, W), `batch` at a time: no compile,
  no step (milliseconds). `entries`: the per-machine cache (read from its file when None)."""
  stages = engine.plan(config, tuple(shape[:2]))
  last = tuple(stages[-1].shape)
  rate = rate_for(config.optimizer)
  net = network(last, _loss_layers(config))
  found = timing(config.optimizer, net.gflops * batch, entries=entries)
  points = []
  for at in [last] + ([_half(last)] if _half(last) else []):
    gflops = network(at, _loss_layers(config)).gflops * batch
    points.append(Point(shape=at, peak_bytes=analytic_peak(config, at, batch, rate),
                        step_seconds=found.step_seconds(gflops)))
  free, source = _free(free_bytes)
  return Estimate(name=name, shape=last, batch=batch, points=points,
                  stage_steps=[(s.shape, s.steps) for s in stages], free_bytes=free, free_source=source,
                  stage_seconds_each=found.stage_seconds, source=found.source)


def video_estimate(config: ml_collections.ConfigDict, shape: Sequence[int], frames: int, *,
                   max_batch: int | None = None) -> tuple[float, str]:
  """`(seconds, line)` for `nst-jax video`: frames x steps per frame x s/step from `estimate` (multipass:
  each pass steps batches of up to `max_batch` frames together), plus one compile and each frame's start."""
  from nst_jax import video
  plan = video.pass_plan(config)
  per_pass = 1 if config.video_mode == "sequential" else min(frames, max_batch or frames)
  found = estimate(config, shape, batch=per_pass, free_bytes=2 ** 62)
  batches = -(-frames // per_pass)
  steps = sum(s for _, s in plan)
  # One compile for the clip (every frame has the same shape); each frame's start (targets, flow) is about
  # two steps' worth.
  starts = len(plan) * batches
  seconds = found.stage_seconds_each + 2 * starts * found.step_seconds + batches * steps * found.step_seconds
  passes = f" in {len(plan)} passes of {per_pass}-frame batches" if len(plan) > 1 else ""
  line = (f"estimate: about {duration(seconds)} ({frames} frames x {steps} steps at {found.shape[1]}x"
          f"{found.shape[0]}{passes}, ~{found.step_seconds:.2g} s/step, from {found.source})")
  return seconds, line


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


def measure(eng: engine.Engine, job: engine.Job, *, batch: int = 1, free_bytes: int | None = None,
            timed_steps: int = TIMED_STEPS) -> Estimate:
  """The measured cost of `job` (`--dry_run`): compiles and times the step at the output size and at half."""
  stages = engine.plan(job.config, np.shape(job.content))
  last = stages[-1]
  points = [probe(eng, job, last.shape, remat=last.remat, batch=batch, timed_steps=timed_steps)]
  half = _half(last.shape)
  if half:
    points.append(probe(eng, job, half, remat=last.remat, batch=batch, timed_steps=timed_steps))
  free, source = _free(free_bytes)
  return Estimate(name=job.name, shape=tuple(last.shape), batch=batch, points=points,
                  stage_steps=[(s.shape, s.steps) for s in stages], free_bytes=free, free_source=source,
                  stage_seconds_each=points[0].compile_seconds,
                  source=f"{timed_steps} timed steps (--dry_run)")


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
              free_bytes: int | None = None, timed: bool = False) -> list[Estimate]:
  """Estimates every group of jobs that would share a compiled batch at their output size (one estimate per
  group, at the batch size the engine would use), logs the figures, then refuses (`check`) when one does
  not fit. What the command, `--workdir` runs and `batch` do before they start: analytic (no compile, no
  step), or compiled and timed (`measure`) when `timed` (--dry_run)."""
  groups: dict[tuple, list[engine.Job]] = {}
  for job in jobs:
    last = engine.plan(job.config, np.shape(job.content))[-1]
    key = (last.shape, last.remat, settings.static_key(job.config), job.num_regions)
    groups.setdefault(key, []).append(job)
  entries = None if timed else read_cache()
  estimates = []
  for group in groups.values():
    size = min(len(group), eng.max_batch or len(group))
    size = -(-size // eng.num_devices) * eng.num_devices
    job = group[0]
    if timed:
      found = measure(eng, job, batch=size, free_bytes=free_bytes)
    else:
      found = estimate(job.config, np.shape(job.content)[:2], name=job.name, batch=size, free_bytes=free_bytes,
                       entries=entries)
    for line in found.lines():
      log(line)
    estimates.append(found)
  for found in estimates:
    check(found, force=force)
  return estimates
