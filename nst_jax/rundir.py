"""The run directory of a long run (`--workdir DIR`): its files, the run record and the report pictures.

    DIR/config.json        every setting, inputs, weights source and SHA-256, package versions, config hash
    DIR/metrics.jsonl      one JSON line per logged step: step, total, content, style, tv, lr, seconds, steps/s
    DIR/checkpoints/       orbax steps (the last K), see `nst_jax.checkpoint`
    DIR/snapshots/step_000500.png   the image every --snapshot_every steps (and at the start and the end)
    DIR/final.png          the result
    DIR/progress.png       the snapshots tiled in a grid with step labels
    DIR/losses.png         weighted content, style, tv and total loss vs step (log scale)

`write_report(DIR)` (the `nst-jax report DIR` command) rebuilds the two pictures from the files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
from typing import Any, Sequence

import numpy as np

from nst_jax import image_io
from nst_jax.errors import NstJaxError

CONFIG = "config.json"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
SNAPSHOTS = "snapshots"
FINAL = "final.png"
PROGRESS = "progress.png"
LOSSES = "losses.png"
# Settings that may change between runs in one workdir without changing the result of a step:
# the step budget (to extend a finished run), how often losses are logged, and the tile mosaic written.
MUTABLE_SETTINGS = ("steps", "log_every", "tile_preview")
_SNAPSHOT_RE = re.compile(r"step_(\d+)\.png$")


class RunDir:
  """Paths inside one run directory."""

  def __init__(self, path: str):
    self.path = os.path.abspath(os.fspath(path))
    self.config = os.path.join(self.path, CONFIG)
    self.metrics = os.path.join(self.path, METRICS)
    self.checkpoints = os.path.join(self.path, CHECKPOINTS)
    self.snapshots = os.path.join(self.path, SNAPSHOTS)
    self.final = os.path.join(self.path, FINAL)
    self.progress = os.path.join(self.path, PROGRESS)
    self.losses = os.path.join(self.path, LOSSES)

  def snapshot(self, step: int) -> str:
    return os.path.join(self.snapshots, f"step_{int(step):06d}.png")

  def create(self) -> None:
    if os.path.exists(self.path) and not os.path.isdir(self.path):
      raise NstJaxError(f"--workdir is not a folder: {self.path}")
    try:
      os.makedirs(self.snapshots, exist_ok=True)
    except OSError as e:
      raise NstJaxError(f"cannot create the run folder {self.path}: {e.strerror}") from None

  def has_run(self) -> bool:
    return os.path.exists(self.config)

  def clear(self) -> None:
    """Removes the files of a previous run (only the ones this module names; other files stay)."""
    for name in (CONFIG, METRICS, FINAL, PROGRESS, LOSSES):
      with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(self.path, name))
    for name in (CHECKPOINTS, CHECKPOINTS + "_corrupt", SNAPSHOTS):
      shutil.rmtree(os.path.join(self.path, name), ignore_errors=True)


# ---- the run record (config.json) --------------------------------------------------------------------------


def array_digest(array: np.ndarray) -> str:
  array = np.ascontiguousarray(array)
  return hashlib.sha256(f"{array.dtype.str}{array.shape}".encode() + array.tobytes()).hexdigest()


def _jsonable(value: Any) -> Any:
  if isinstance(value, dict):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, np.generic):
    return value.item()
  return value


def identity(config, *, weights_source: str, weights_sha256: str, content: np.ndarray,
             styles: Sequence[np.ndarray], style_blend_weights: Sequence[float] | None = None) -> dict:
  """Everything that decides the image at a given step: settings (less `MUTABLE_SETTINGS`), weights, inputs.

  Input images enter by the SHA-256 of their loaded (resized) pixels, so a moved or re-encoded but
  identical file still matches.
  """
  settings = {k: v for k, v in _jsonable(config.to_dict()).items() if k not in MUTABLE_SETTINGS}
  return {
      "settings": settings,
      # The weights' content decides the result; random weights have no file hash, so their source does.
      "weights": weights_sha256 or weights_source,
      "content": array_digest(content),
      "styles": [array_digest(s) for s in styles],
      "style_blend_weights": None if style_blend_weights is None else [float(w) for w in style_blend_weights],
  }


def config_hash(ident: dict) -> str:
  return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def differences(old: dict, new: dict, prefix: str = "") -> list[str]:
  """Names of the entries that differ between two identity dicts (nested names joined by '.')."""
  names = []
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key), new.get(key)
    if isinstance(a, dict) and isinstance(b, dict):
      names += differences(a, b, f"{prefix}{key}.")
    elif a != b:
      names.append(prefix + key)
  return names


def write_json(path: str, record: dict) -> None:
  with image_io.atomic_write(path, "w") as f:
    json.dump(_jsonable(record), f, indent=2, sort_keys=True)
    f.write("\n")


def read_json(path: str) -> dict:
  """A run file's JSON object; an unreadable file, or one that holds no object, is an `NstJaxError`."""
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except (OSError, ValueError) as e:
    raise NstJaxError(f"cannot read {path}: {e}") from None
  if not isinstance(data, dict):
    raise NstJaxError(f"cannot read {path}: it holds a JSON {type(data).__name__}, not an object (not an nst-jax "
                      f"run file)")
  return data


# ---- metrics.jsonl -----------------------------------------------------------------------------------------


def read_metrics(path: str) -> list[dict]:
  """The records of a metrics file; a torn last line (process killed mid-write) is skipped."""
  records = []
  if not os.path.exists(path):
    return records
  with open(path, encoding="utf-8") as f:
    for line in f:
      with contextlib.suppress(ValueError):
        record = json.loads(line)
        if isinstance(record, dict) and "step" in record:
          records.append(record)
  return records


def truncate_metrics(path: str, step: int) -> list[dict]:
  """Keeps the records with `record['step'] <= step` (first of any duplicate), atomically; returns them.

  A resumed run restarts from its checkpoint's step, so later records (logged after the last checkpoint by
  a killed run) would be written again; dropping them keeps the file free of gaps and duplicates.
  """
  kept, seen = [], set()
  for record in read_metrics(path):
    if record["step"] <= step and record["step"] not in seen:
      kept.append(record)
      seen.add(record["step"])
  if os.path.exists(path) or kept:
    with image_io.atomic_write(path, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in kept)
  return kept


# ---- snapshots, progress grid and loss plot ----------------------------------------------------------------


def list_snapshots(snapshot_dir: str) -> list[tuple[int, str]]:
  """`[(step, path)]` of `step_NNNNNN.png` files, sorted by step."""
  if not os.path.isdir(snapshot_dir):
    return []
  found = []
  for name in os.listdir(snapshot_dir):
    match = _SNAPSHOT_RE.fullmatch(name)
    if match:
      found.append((int(match.group(1)), os.path.join(snapshot_dir, name)))
  return sorted(found)


def _pick(items: list, limit: int) -> list:
  """At most `limit` items spread evenly, always keeping the first and the last."""
  if len(items) <= limit:
    return items
  indices = sorted({round(i * (len(items) - 1) / (limit - 1)) for i in range(limit)})
  return [items[i] for i in indices]


def grid_layout(count: int, tile_size: tuple[int, int], *, columns: int | None = None,
                label_height: int = 18) -> tuple[int, int, int, int]:
  """`(rows, cols, width, height)` of the progress grid for `count` tiles of `tile_size = (w, h)`."""
  cols = columns or min(count, max(1, math.ceil(math.sqrt(count))))
  rows = math.ceil(count / cols)
  return rows, cols, cols * tile_size[0], rows * (tile_size[1] + label_height)


def progress_grid(snapshots: Sequence[tuple[int, str]], out_path: str, *, tile: int = 256,
                  max_tiles: int = 36, columns: int | None = None, label_height: int = 18) -> tuple[int, int]:
  """Tiles snapshot images (each scaled to fit `tile` px) with a "step N" label under each; returns (w, h)."""
  from PIL import Image, ImageDraw
  snapshots = _pick(list(snapshots), max_tiles)
  if not snapshots:
    raise NstJaxError("no snapshots to tile")
  images = []
  for step, path in snapshots:
    with Image.open(path) as img:
      img = img.convert("RGB")
      img.thumbnail((tile, tile), Image.Resampling.LANCZOS)
      images.append((step, img.copy()))
  tile_size = (max(img.width for _, img in images), max(img.height for _, img in images))
  rows, cols, width, height = grid_layout(len(images), tile_size, columns=columns, label_height=label_height)
  canvas = Image.new("RGB", (width, height), "white")
  draw = ImageDraw.Draw(canvas)
  for i, (step, img) in enumerate(images):
    x = (i % cols) * tile_size[0]
    y = (i // cols) * (tile_size[1] + label_height)
    canvas.paste(img, (x + (tile_size[0] - img.width) // 2, y))
    draw.text((x + 4, y + tile_size[1] + 3), f"step {step}", fill="black")
  with image_io.atomic_write(out_path) as f:
    canvas.save(f, format="PNG")
  return width, height


LOSS_FIGSIZE, LOSS_DPI = (8.0, 5.0), 100  # losses.png is 800 x 500 pixels.


def loss_plot(records: Sequence[dict], out_path: str, *, weights: dict | None = None,
              title: str | None = None) -> None:
  """Content, style, tv and total loss vs step on a log scale (weighted by `weights` when given)."""
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib.figure import Figure
  if not records:
    raise NstJaxError("no metrics to plot")
  weights = weights or {}
  steps = np.array([r["step"] for r in records])
  fig = Figure(figsize=LOSS_FIGSIZE, dpi=LOSS_DPI)
  ax = fig.add_subplot()
  for name, style in (("total", "k-"), ("content", "C0-"), ("style", "C1-"), ("tv", "C2-")):
    values = np.array([r.get(name, np.nan) for r in records], dtype=np.float64)
    weight = 1.0 if name == "total" else float(weights.get(f"{name}_weight", 1.0))
    values = values * weight
    values[~(values > 0)] = np.nan  # log scale: zero (e.g. content at a content init) is not drawn.
    label = name if name == "total" or not weights else f"{weight:g} x {name}"
    if np.any(np.isfinite(values)):
      ax.plot(steps, values, style, label=label, linewidth=1.5 if name == "total" else 1.0)
  ax.set_yscale("log")
  ax.set_xlabel("step")
  ax.set_ylabel("loss (weighted)" if weights else "loss")
  ax.set_title(title or "losses")
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(loc="best")
  fig.tight_layout()
  with image_io.atomic_write(out_path) as f:
    fig.savefig(f, format="png", dpi=LOSS_DPI)


def write_report(path: str) -> list[str]:
  """Rebuilds `progress.png` and `losses.png` of run directory `path`; returns the files written."""
  run_dir = RunDir(path)
  if not os.path.isdir(run_dir.path):
    raise NstJaxError(f"run folder not found: {path}")
  written = []
  weights, title = None, os.path.basename(run_dir.path)
  if os.path.exists(run_dir.config):
    settings = read_json(run_dir.config).get("config", {})
    weights = {k: settings[k] for k in ("content_weight", "style_weight", "tv_weight") if k in settings}
    title = f"{title}: {settings.get('optimizer', '')} {settings.get('max_size', '')} px"
  snapshots = list_snapshots(run_dir.snapshots)
  if snapshots:
    progress_grid(snapshots, run_dir.progress)
    written.append(run_dir.progress)
  records = read_metrics(run_dir.metrics)
  if records:
    loss_plot(records, run_dir.losses, weights=weights, title=title)
    written.append(run_dir.losses)
  if not written:
    raise NstJaxError(f"{path} has no snapshots and no metrics (is it a --workdir of nst-jax?)")
  return written
