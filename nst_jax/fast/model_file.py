"""The model file of a trained net: one msgpack file with a format version, the settings and the parameters.

    model_file.save(path, params, meta)          # atomic: a temporary file renamed over `path`
    params, meta = model_file.load(path)         # NstJaxError for another version or a damaged file

`meta` is JSON: the net's `width`, the loss settings it was trained with (`settings.resolve` names), the
painting(s), the VGG weights' source and digest, the training steps. A SHA-256 of the parameters' bytes is
stored beside them, so a file damaged after it was written is refused rather than giving a wrong picture.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import jax
import numpy as np
from flax import serialization

from nst_jax import image_io
from nst_jax.errors import NstJaxError

PyTree = Any
FORMAT = "nst-jax-fast"
VERSION = 1
FILENAME = "model.nstfast"


def path_of(model: str) -> str:
  """The model file of `model`: the file itself, or `<model>/model.nstfast` for a model folder."""
  return os.path.join(model, FILENAME) if os.path.isdir(model) else model


def params_digest(params: PyTree) -> str:
  """SHA-256 over every leaf's path, dtype, shape and bytes (in a fixed order)."""
  digest = hashlib.sha256()
  for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(params)[0], key=lambda item: str(item[0])):
    leaf = np.ascontiguousarray(np.asarray(leaf))
    digest.update(f"{jax.tree_util.keystr(path)}{leaf.dtype.str}{leaf.shape}".encode())
    digest.update(leaf.tobytes())
  return digest.hexdigest()


def save(path: str, params: PyTree, meta: dict) -> None:
  """Writes the model file atomically (an existing file is replaced only when the new one is complete)."""
  host = jax.tree.map(lambda x: np.asarray(x, np.float32), jax.device_get(params))
  record = {"format": FORMAT, "version": VERSION, "meta": json.dumps(meta, sort_keys=True),
            "digest": params_digest(host), "params": serialization.to_state_dict(host)}
  try:
    with image_io.atomic_write(path) as f:
      f.write(serialization.msgpack_serialize(record))
  except OSError as e:
    raise NstJaxError(f"cannot write the model file {path}: {e.strerror or e}") from None


def load(model: str) -> tuple[PyTree, dict]:
  """`(params, meta)` of a model file or folder.

  Raises:
    NstJaxError: no such file, not a model file, another format version, or damaged (does not decode, or
      its parameters do not match their digest).
  """
  path = path_of(model)
  if not os.path.exists(path):
    raise NstJaxError(f"model not found: {path} (train one with nst-jax train_fast)")
  try:
    with open(path, "rb") as f:
      record = serialization.msgpack_restore(f.read())
  except OSError as e:
    raise NstJaxError(f"cannot read the model file {path}: {e.strerror or e}") from None
  except Exception:  # msgpack raises several types for truncated or foreign bytes.
    raise NstJaxError(f"{path} is not an nst-jax fast model file or is damaged") from None
  if not isinstance(record, dict) or record.get("format") != FORMAT:
    raise NstJaxError(f"{path} is not an nst-jax fast model file")
  if record.get("version") != VERSION:
    raise NstJaxError(f"{path} is a fast model of format version {record.get('version')}; this nst-jax reads "
                      f"version {VERSION} (train it again with nst-jax train_fast)")
  try:
    meta = json.loads(record["meta"])
    params = jax.tree.map(np.asarray, record["params"])
  except (KeyError, TypeError, ValueError):
    raise NstJaxError(f"{path} is damaged (its header does not decode)") from None
  if params_digest(params) != record.get("digest"):
    raise NstJaxError(f"{path} is damaged (its parameters do not match their digest)")
  return params, meta
