"""Manifest jobs: a CSV of (content, style, output) rows with optional per-row overrides -> batch `Item`s.

    content,style,output,style_weight,steps
    photos/a.jpg,paintings/starry.jpg,out/a_starry.png,,
    photos/b.jpg,paintings/starry.jpg;paintings/scream.jpg,out/b_blend.png,1e5,300

Relative paths are resolved against the manifest's folder. Several styles in one cell are separated by `;`
and blended equally. Rows are numbered from 1 (the first row after the header) in every message.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from typing import Any

import ml_collections

from nst_jax import batch, image_io, optimize
from nst_jax.errors import NstJaxError

REQUIRED_COLUMNS = ("content", "style", "output")
# Optional per-row overrides and how to parse them.
OVERRIDES: dict[str, Any] = {
    "content_weight": float, "style_weight": float, "tv_weight": float, "steps": int, "max_size": int,
    "optimizer": str, "lr": float, "init": str, "seed": int, "tv_kind": str, "pooling": str,
}


@dataclasses.dataclass
class Row:
  """One manifest row: its number (1 = first data row), output path, and the item or the error."""
  number: int
  output: str
  item: batch.Item | None = None
  error: str | None = None
  skipped: bool = False


def read_rows(path: str) -> list[dict]:
  """The CSV's data rows as dicts (header required; blank lines ignored)."""
  try:
    with open(path, newline="", encoding="utf-8-sig") as f:
      reader = csv.DictReader(f)
      header = [name.strip() for name in reader.fieldnames or []]
      rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader
              if any((v or "").strip() for v in row.values() if isinstance(v, str))]
  except FileNotFoundError:
    raise NstJaxError(f"manifest not found: {path}") from None
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise NstJaxError(f"cannot read manifest {path}: {e}") from None
  missing = [name for name in REQUIRED_COLUMNS if name not in header]
  if missing:
    raise NstJaxError(f"manifest {path} lacks column(s) {', '.join(missing)} (header: {','.join(header)})")
  unknown = [name for name in header if name not in REQUIRED_COLUMNS and name not in OVERRIDES]
  if unknown:
    raise NstJaxError(f"manifest {path}: unknown column(s) {', '.join(unknown)}; overridable: "
                      f"{', '.join(OVERRIDES)}")
  return rows


def _parse(name: str, text: str, kind):
  try:
    if kind is str:
      return text
    value = float(text)
    if kind is int:
      if not value.is_integer():
        raise ValueError
      return int(value)
    return value
  except (TypeError, ValueError, OverflowError):
    raise NstJaxError(f"{name} {text!r} is not a valid {'integer' if kind is int else 'number'}") from None


def row_config(base: ml_collections.ConfigDict, row: dict) -> ml_collections.ConfigDict:
  """`base` with the row's non-empty overrides applied and validated (NstJaxError names the bad value)."""
  config = ml_collections.ConfigDict(base.to_dict())
  for name, parse in OVERRIDES.items():
    text = row.get(name, "")
    if text == "":
      continue
    config[name] = _parse(name, text, parse)
  optimize.validate_config(config)
  return config


def load_rows(path: str, base: ml_collections.ConfigDict, *, overwrite: bool = False,
              skip_existing: bool = True) -> list[Row]:
  """Parses, validates and loads every row; a bad row gets `error`, a finished one `skipped`.

  A row whose output already exists is skipped (resume) unless `overwrite`; with `skip_existing=False`
  and no `overwrite` it is an error instead.
  """
  folder = os.path.dirname(os.path.abspath(path))
  resolve = lambda p: os.path.normpath(os.path.join(folder, os.path.expanduser(p)))
  rows, seen = [], {}
  for number, raw in enumerate(read_rows(path), start=1):
    output = resolve(raw["output"]) if raw.get("output") else ""
    row = Row(number=number, output=output)
    rows.append(row)
    try:
      for name in REQUIRED_COLUMNS:
        if not raw.get(name):
          raise NstJaxError(f"empty {name}")
      if output in seen:
        raise NstJaxError(f"output {raw['output']} is also written by row {seen[output]}")
      seen[output] = number
      if os.path.exists(output) and not overwrite and skip_existing:
        row.skipped = True
        continue
      config = row_config(base, raw)
      image_io.check_writable(output, overwrite=overwrite)
      content = image_io.load_image(resolve(raw["content"]), config.max_size)
      styles = [image_io.load_image(resolve(p.strip()), config.max_size) for p in raw["style"].split(";")
                if p.strip()]
      if not styles:
        raise NstJaxError("empty style")
      row.item = batch.Item(content=content, styles=styles, config=config, name=output)
    except NstJaxError as e:
      row.error = str(e)
  return rows
