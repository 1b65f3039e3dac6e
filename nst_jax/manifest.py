"""Manifest jobs: a CSV of (content, style, output) rows, each with any settings -> engine `Job`s -> images.

    content,style,output,style_weight,steps,style_blend_weights
    photos/a.jpg,paintings/starry.jpg,out/a_starry.png,,,
    photos/b.jpg,paintings/starry.jpg;paintings/scream.jpg,out/b_blend.png,30,300,3;1

Columns: `content`, `style`, `output`, and any setting by its name (`settings.NAMES`, the same names as the
`nst-jax` flags, see docs/settings.md) or shorthand (`preset`, `scales`, ...). A row's settings are the
command line's (`flag_settings`) overridden by the row's non-empty cells, resolved by `settings.resolve`
against the row's number of paintings; an empty cell keeps the command line's value, the preset's or the
default. Relative paths are resolved against the manifest's folder. Several paintings in one cell are
separated by `;` and blended by `style_blend_weights` (`3;1`, or a quoted `"3,1"`). Optional columns
`style_region` and `style_region_source` hold one mask per painting, `;`-separated in the same order
(spatial control, docs/spatial-control.md).

Rows are numbered from 1 (the first row after the header) in every message. A bad row gets `error` and is
skipped; `run_rows` runs the others through the engine, each with its checkpoints in
`<run folder>/<job digest>/`, so an interrupted batch resumes every row from its last checkpoint.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import os
import shutil
from typing import Any, Iterable, Mapping

from nst_jax import alpha, engine, image_io, inputs, settings, tiles
from nst_jax.errors import NstJaxError

REQUIRED_COLUMNS = ("content", "style", "output")
# Optional file columns: region masks, one per painting of the row's style cell (`;`-separated, same order).
MASK_COLUMNS = ("style_region", "style_region_source")
FILE_COLUMNS = REQUIRED_COLUMNS + MASK_COLUMNS
SETTING_COLUMNS = settings.NAMES + tuple(settings.SHORTHANDS)
_EXTRA = None  # csv.DictReader's key for the cells beyond the header.
_SCALE_FIELDS = ("scale_start", "scale_factor", "scale_steps")
_EPOCH_FIELDS = ("epochs", "steps_per_epoch")


@dataclasses.dataclass
class Row:
  """One manifest row: its number (1 = first data row), output path, and its job or its error.

  `skipped`: its output exists (done before). `notes`: what loading did that a user might not expect.
  `result`: the engine's result once run ('done' or 'stopped').
  """
  number: int
  output: str
  job: engine.Job | None = None
  error: str | None = None
  skipped: bool = False
  notes: list[str] = dataclasses.field(default_factory=list)
  result: engine.Result | None = None
  tile_preview: int = 0  # The row's own (rows that differ only in it share one job).


def run_folder(manifest_path: str, workdir: str | None = None) -> str:
  """Where a batch keeps its rows' checkpoints: `workdir`, else `<manifest dir>/.<manifest stem>.nst-jax`."""
  if workdir:
    return os.path.abspath(workdir)
  folder, name = os.path.split(os.path.abspath(manifest_path))
  return os.path.join(folder, f".{os.path.splitext(name)[0]}.nst-jax")


def _check_header(path: str, header: list[str]) -> None:
  missing = [name for name in REQUIRED_COLUMNS if name not in header]
  if missing:
    raise NstJaxError(f"manifest {path} lacks column(s) {', '.join(missing)} (header: {','.join(header)})")
  for name in header:
    if name not in FILE_COLUMNS and name not in SETTING_COLUMNS:
      close = difflib.get_close_matches(name, SETTING_COLUMNS, n=1)
      hint = f" (did you mean {close[0]!r}?)" if close else ""
      raise NstJaxError(f"manifest {path}: unknown column {name!r}{hint}; columns are content, style, output "
                        f"style_region, style_region_source and any setting name (see docs/settings.md)")


def read_rows(path: str) -> list[dict]:
  """The CSV's data rows as `{column: text}` (header required; blank lines ignored).

  A row with more cells than the header keeps the extra cells under the key None (`load_rows` reports it).
  """
  try:
    with open(path, newline="", encoding="utf-8-sig") as f:
      reader = csv.DictReader(f)
      header = [(name or "").strip() for name in reader.fieldnames or []]
      rows = []
      for raw in reader:
        extra = raw.pop(_EXTRA, None)
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
        if any(row.values()) or extra:
          rows.append({**row, _EXTRA: extra} if extra else row)
  except FileNotFoundError:
    raise NstJaxError(f"manifest not found: {path}") from None
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise NstJaxError(f"cannot read manifest {path}: {e}") from None
  _check_header(path, header)
  return rows


def _empty(value: Any) -> bool:
  return value is None or (isinstance(value, str) and not value.strip()) or (
      isinstance(value, (list, tuple)) and not value)


def merge_settings(flag_settings: Mapping[str, Any], row_settings: Mapping[str, Any]) -> dict:
  """The command line's settings overridden by a row's non-empty ones (empty cells keep the flags').

  A row's long form replaces the command line's shorthand and the reverse: a row's `scale_start` with
  `--scales` on the command line keeps the other two of `--scales`; a row's `steps` replaces `--epochs`.
  """
  row = {k: v for k, v in row_settings.items() if not _empty(v)}
  merged = {k: v for k, v in flag_settings.items() if not _empty(v)}
  if "scales" in row:
    for name in _SCALE_FIELDS:
      merged.pop(name, None)
  elif "scales" in merged and any(name in row for name in _SCALE_FIELDS):
    scales = settings.resolve({"scales": merged.pop("scales")})
    merged.update({name: scales[name] for name in _SCALE_FIELDS})
  if "steps" in row:
    for name in _EPOCH_FIELDS:
      merged.pop(name, None)
  elif any(name in row for name in _EPOCH_FIELDS):
    merged.pop("steps", None)
  return {**merged, **row}


def _path(folder: str, text: str) -> str:
  if text.startswith("skimage:"):
    return text
  return os.path.normpath(os.path.join(folder, os.path.expanduser(text)))


def _make_folder(output: str) -> None:
  folder = os.path.dirname(output)
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as e:
    raise NstJaxError(f"cannot create the output folder {folder}: {e.strerror}") from None


def _load_row(row: Row, raw: dict, folder: str, flag_settings: Mapping[str, Any], *, overwrite: bool,
              skip_existing: bool) -> None:
  """Fills `row.job` (or `row.skipped`); raises NstJaxError with the row's problem."""
  if raw.get(_EXTRA):
    cells = len(raw) - 1 + len(raw[_EXTRA])
    raise NstJaxError(f"{cells} cells for {len(raw) - 1} columns: quote a cell that holds commas (\"3,1\") or "
                      f"separate its values with ';' (3;1)")
  for name in REQUIRED_COLUMNS:
    if not raw.get(name):
      raise NstJaxError(f"empty {name}")
  if os.path.exists(row.output) and not overwrite and skip_existing:
    row.skipped = True
    return
  styles = [_path(folder, p.strip()) for p in raw["style"].split(";") if p.strip()]
  if not styles:
    raise NstJaxError("empty style")
  masks = {name: [_path(folder, p.strip()) for p in (raw.get(name) or "").split(";") if p.strip()] or None
           for name in MASK_COLUMNS}
  row_settings = {k: v for k, v in raw.items() if k not in FILE_COLUMNS}
  config = settings.resolve(merge_settings(flag_settings, row_settings), num_styles=len(styles))
  job, notes = inputs.load_job(_path(folder, raw["content"]), styles, config, name=row.output,
                               style_regions=masks["style_region"],
                               style_region_sources=masks["style_region_source"])
  row.notes = notes + engine.plan_notes(config, job.content.shape)
  _make_folder(row.output)
  image_io.check_writable(row.output, overwrite=overwrite)
  if alpha.has_alpha(job.content):
    image_io.check_alpha_output(row.output)  # The row's output must keep the photo's alpha.
  row.job = job
  row.tile_preview = int(config.tile_preview)


def load_rows(path: str, flag_settings: Mapping[str, Any] | None = None, *, overwrite: bool = False,
              skip_existing: bool = True) -> list[Row]:
  """Parses, resolves and loads every row; a bad row gets `error`, a finished one `skipped`.

  Args:
    path: the manifest CSV.
    flag_settings: the command line's settings (name -> value, as `stylize.settings_from_flags()`), the
      defaults of every row.
    overwrite: recompute rows whose output exists.
    skip_existing: a row whose output exists is skipped (False: without `overwrite` it is an error).

  Raises:
    NstJaxError: the manifest cannot be read, or its header lacks a column or has an unknown one.
  """
  folder = os.path.dirname(os.path.abspath(path))
  rows, seen = [], {}
  for number, raw in enumerate(read_rows(path), start=1):
    row = Row(number=number, output=_path(folder, raw["output"]) if raw.get("output") else "")
    rows.append(row)
    try:
      if row.output in seen:
        raise NstJaxError(f"output {raw['output']} is also written by row {seen[row.output]}")
      if row.output:
        seen[row.output] = number
      _load_row(row, raw, folder, flag_settings or {}, overwrite=overwrite, skip_existing=skip_existing)
    except NstJaxError as e:
      row.error = str(e)
  return rows


# ---- running -----------------------------------------------------------------------------------------------


class _Rows:
  """Engine hook: says where each row resumes, and writes its output(s) as soon as its job is done."""

  def __init__(self, rows: list[Row], write: bool, log):
    self.by_job: dict[int, list[Row]] = {}
    for row in rows:
      self.by_job.setdefault(id(row.job), []).append(row)
    self.write, self.log = write, log

  def on_job_start(self, run) -> None:
    numbers = ", ".join(str(row.number) for row in self.by_job[id(run.job)])
    for notice in run.notices:
      self.log(f"row {numbers}: {notice}")
    if run.restored_step is not None:
      self.log(f"row {numbers}: resuming from step {run.restored_step} of {run.total_steps}")

  def on_job_end(self, run) -> None:
    if not self.write:
      return
    image = run.final_image()
    for row in self.by_job[id(run.job)]:
      try:
        image_io.save_image(row.output, image)
        tiles.write_preview(row.output, image, row.tile_preview)
      except NstJaxError as e:
        row.error = str(e)
      except OSError as e:
        row.error = f"cannot write {row.output}: {e.strerror or e}"


class _StopAfterOneStep:
  def should_stop(self, run) -> bool:
    return True


def _run_isolating(eng: engine.Engine, jobs: list[engine.Job], hooks: list) -> tuple[dict, dict]:
  """`eng.run(jobs, hooks)` -> `({id(job): Result}, {id(job): error})`.

  When the batch raises NstJaxError (a job that cannot start, e.g. its checkpoint is past its steps), each
  job is tried alone for one step (its checkpoint, if any, kept) to find the bad ones; the others then run.
  """
  try:
    return dict(zip(map(id, jobs), eng.run(jobs, hooks))), {}
  except NstJaxError as e:
    if len(jobs) == 1:
      return {}, {id(jobs[0]): str(e)}
  errors = {}
  for job in jobs:
    try:
      eng.run([job], hooks=[_StopAfterOneStep()])
    except NstJaxError as e:
      errors[id(job)] = str(e)
  good = [job for job in jobs if id(job) not in errors]
  return dict(zip(map(id, good), eng.run(good, hooks) if good else [])), errors


def run_rows(rows: list[Row], eng: engine.Engine, *, folder: str | None = None, hooks: Iterable[Any] = (),
             write: bool = True, log=print) -> list[Row]:
  """Runs every loaded row through `eng` (batched by bucket); fills `row.result` or `row.error`.

  Args:
    rows: from `load_rows` (rows without a job are left alone).
    eng: the engine (its `max_batch`, mesh and checkpoint policy apply).
    folder: the batch's run folder (`run_folder`): each row checkpoints in `folder/<job digest>/` and
      resumes from there; a changed row has another digest, so it never restores a foreign checkpoint.
      None: no checkpoints.
    hooks: more engine hooks (progress bar, `hooks.StopOnSignals`...).
    write: write each row's output when it is done (False on the other processes of a multi-host run);
      its checkpoint folder is then removed.
    log: prints one-line notices (where a row resumes, damaged checkpoints skipped).
  """
  todo = [row for row in rows if row.job is not None]
  jobs = _share_jobs(todo, eng.raw_weights, folder)
  if not jobs:
    return rows
  results, errors = _run_isolating(eng, jobs, [_Rows(todo, write, log), *hooks])
  for row in todo:
    row.result = results.get(id(row.job))
    row.error = errors.get(id(row.job), row.error)
  for job in jobs:
    finished = [row.result is not None and row.result.status == "done" and row.error is None
                for row in todo if row.job is job]
    if all(finished) and write and job.checkpoint_dir:
      shutil.rmtree(job.checkpoint_dir, ignore_errors=True)
  return rows


def _share_jobs(rows: list[Row], weights, folder: str | None) -> list[engine.Job]:
  """One job per distinct (digest, steps): rows that would make the same image share it; sets each row's
  `job` to the shared one. Its checkpoints go into `folder/<digest>` (`<digest>-<steps>` for a second job
  that differs only in its steps, which the digest leaves out so that raising steps extends a run)."""
  jobs: dict[tuple, engine.Job] = {}
  folders: set[str] = set()
  for row in rows:
    digest = engine.job_digest(row.job, weights)[1]
    key = (digest, int(row.job.config.steps))
    if key not in jobs:
      jobs[key] = row.job
      name = digest if digest not in folders else f"{digest}-{key[1]}"
      folders.add(name)
      if folder is not None:
        row.job.checkpoint_dir = os.path.join(folder, name)
    row.job = jobs[key]
  return list(jobs.values())
