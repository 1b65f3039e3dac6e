"""Reading, downloading, verifying and converting VGG19 weights: the only weight IO in the package.

Sources `load_vgg19` accepts:
  * the Keras file `vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5` (groups `block{b}_conv{i}`, datasets
    `block{b}_conv{i}_W_1:0` HWIO and `block{b}_conv{i}_b_1:0`), Caffe preprocessing;
  * a torchvision VGG19 state_dict `.pth` (keys `features.{0,2,5,...,34}.weight|bias`, OIHW; classifier keys
    ignored), torchvision preprocessing. Read without torch (a restricted unpickler) for the zip format
    torch has written since 1.6; the older format needs torch installed;
  * this project's converted `.npz` (written by `save_npz` / `scripts/convert_weights.py`);
  * `"random"` or `"random:SEED"`: He-initialised weights for offline smoke runs (not artistic).
With no source, the cached converted Keras weights are used, downloaded and converted on first use.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import pickle
import re
import urllib.error
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass

import numpy as np

from nst_jax import vgg
from nst_jax.errors import NstJaxError

# Torchvision `features.N` index of each conv layer.
TORCHVISION_INDEX = dict(zip(vgg.CONV_LAYERS, (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)))
NPZ_FORMAT_VERSION = 1


@dataclass(frozen=True)
class RemoteFile:
  """A published weight file: where it lives and how to check it."""
  name: str
  url: str
  size: int
  md5: str
  preprocessing: str


KERAS_VGG19_NOTOP = RemoteFile(
    name="vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
    url="https://storage.googleapis.com/tensorflow/keras-applications/vgg19/"
        "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
    size=80_134_624,
    md5="253f8cb515780f3b799900260a226db6",
    preprocessing="caffe",
)
CONVERTED_NAME = "vgg19_keras.npz"


def cache_dir() -> str:
  """`$NST_JAX_HOME`, else `~/.cache/nst_jax`."""
  return os.environ.get("NST_JAX_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "nst_jax")


def file_digest(path: str, algorithm: str = "sha256") -> str:
  digest = hashlib.new(algorithm)
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _check_shapes(params: dict, source: str) -> dict:
  expected_in = 3
  for name in vgg.CONV_LAYERS:
    cout = vgg.CONV_CHANNELS[name]
    kernel, bias = params[name]["kernel"], params[name]["bias"]
    if kernel.shape != (3, 3, expected_in, cout) or bias.shape != (cout,):
      raise NstJaxError(f"{source}: {name} has kernel {kernel.shape} and bias {bias.shape}, expected "
                        f"{(3, 3, expected_in, cout)} and {(cout,)}; is this a VGG19 weight file?")
    expected_in = cout
  return {name: {k: np.asarray(v, np.float32) for k, v in p.items()} for name, p in params.items()}


# ---- Keras HDF5 -------------------------------------------------------------------------------------------


def _keras_layer_arrays(group) -> list[np.ndarray]:
  """The datasets of one Keras layer group, in the order of its `weight_names` attribute."""
  names = group.attrs.get("weight_names")
  if names is not None and len(names):
    return [np.asarray(group[n.decode() if isinstance(n, bytes) else n]) for n in names]
  arrays = []
  group.visititems(lambda name, obj: arrays.append((name, np.asarray(obj))) if hasattr(obj, "shape") else None)
  # Kernel ('_W_' or 'kernel') before bias ('_b_' or 'bias').
  arrays.sort(key=lambda item: 0 if re.search(r"(_W_|kernel)", item[0]) else 1)
  return [a for _, a in arrays]


def read_keras_h5(path: str) -> dict:
  """Reads Keras VGG19 (notop or full) HDF5 weights into `{conv: {'kernel': HWIO, 'bias'}}`."""
  import h5py  # Imported lazily: only this reader needs it.
  try:
    with h5py.File(path, "r") as f:
      root = f["model_weights"] if "model_weights" in f else f
      params = {}
      for name in vgg.CONV_LAYERS:
        block, conv = name[4:].split("_")
        group_name = f"block{block}_conv{conv}"
        if group_name not in root:
          raise NstJaxError(f"{path}: no group {group_name!r}; not a Keras VGG19 weight file")
        arrays = _keras_layer_arrays(root[group_name])
        if len(arrays) != 2:
          raise NstJaxError(f"{path}: group {group_name!r} holds {len(arrays)} arrays, expected kernel and bias")
        params[name] = {"kernel": arrays[0], "bias": arrays[1]}
  except OSError as e:
    raise NstJaxError(f"{path}: not a readable HDF5 file ({e})") from None
  return _check_shapes(params, path)


# ---- torchvision .pth ------------------------------------------------------------------------------------

_TORCH_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": None, "LongStorage": np.int64, "IntStorage": np.int32, "ByteStorage": np.uint8,
}


def _rebuild_tensor(storage, offset, size, stride, *_unused):
  itemsize = storage.dtype.itemsize
  view = np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size),
                                         strides=tuple(s * itemsize for s in stride))
  return view.copy()


class _RestrictedTorchUnpickler(pickle.Unpickler):
  """Reads a torch zip checkpoint's `data.pkl` into numpy arrays; refuses any other object (no code runs)."""

  def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
    super().__init__(file)
    self._archive, self._prefix = archive, prefix

  def find_class(self, module, name):
    if (module, name) == ("collections", "OrderedDict"):
      return collections.OrderedDict
    if module == "torch._utils" and name == "_rebuild_tensor_v2":
      return _rebuild_tensor
    if module == "torch._utils" and name == "_rebuild_parameter":
      return lambda data, requires_grad, backward_hooks, *rest: data
    if module == "torch" and name in _TORCH_STORAGE_DTYPES:
      return name
    raise pickle.UnpicklingError(f"unsupported object {module}.{name} in a .pth file")

  def persistent_load(self, pid):
    kind, storage_type, key, _location, _numel = pid
    if kind != "storage" or _TORCH_STORAGE_DTYPES.get(storage_type) is None:
      raise pickle.UnpicklingError(f"unsupported storage {pid[:2]} in a .pth file")
    raw = self._archive.read(f"{self._prefix}data/{key}")
    return np.frombuffer(raw, dtype=_TORCH_STORAGE_DTYPES[storage_type])


def _read_state_dict(path: str) -> dict:
  if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as archive:
      pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
      if not pickles:
        raise NstJaxError(f"{path}: zip file without data.pkl; not a PyTorch checkpoint")
      prefix = pickles[0][: -len("data.pkl")]
      with archive.open(pickles[0]) as f:
        try:
          return _RestrictedTorchUnpickler(f, archive, prefix).load()
        except (pickle.UnpicklingError, ValueError, KeyError, TypeError) as e:
          raise NstJaxError(f"{path}: cannot read this PyTorch checkpoint ({e})") from None
  try:
    import torch  # The pre-1.6 (non-zip) format needs torch's own loader.
  except ImportError:
    raise NstJaxError(f"{path}: PyTorch's legacy (pre-1.6) file format; install torch to read it, or convert "
                      "it once with scripts/convert_weights.py on a machine that has torch") from None
  try:
    state = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises many types for bad files.
    first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]  # torch's messages run to pages.
    raise NstJaxError(f"{path}: not a readable PyTorch checkpoint ({first_line})") from None
  return {k: v.numpy() for k, v in state.items()}


def read_torchvision_pth(path: str) -> dict:
  """Reads a torchvision VGG19 state_dict into `{conv: {'kernel': HWIO, 'bias'}}` (OIHW -> HWIO)."""
  state = _read_state_dict(path)
  if not isinstance(state, dict):
    raise NstJaxError(f"{path}: expected a state_dict (a dict of tensors), got {type(state).__name__}")
  if "state_dict" in state and isinstance(state["state_dict"], dict):
    state = state["state_dict"]
  params = {}
  for name, index in TORCHVISION_INDEX.items():
    weight_key, bias_key = f"features.{index}.weight", f"features.{index}.bias"
    if weight_key not in state or bias_key not in state:
      raise NstJaxError(f"{path}: no key {weight_key!r}; not a torchvision VGG19 state_dict")
    params[name] = {"kernel": np.transpose(state[weight_key], (2, 3, 1, 0)), "bias": state[bias_key]}
  return _check_shapes(params, path)


# ---- our own format ---------------------------------------------------------------------------------------


def check_npz_output(path: str | None, *, overwrite: bool = False) -> None:
  """Fails early, before any work, if `path` is not a `.npz` that `save_npz` may write."""
  if not path or not path.endswith(".npz"):
    raise NstJaxError(f"--output must end in .npz, got {path or 'nothing'}")
  if os.path.exists(path) and not overwrite:
    raise NstJaxError(f"output file already exists: {path} (pass --overwrite to replace it)")


def save_npz(path: str, weights: vgg.VGGWeights) -> None:
  """Writes weights in the project's format (atomically): one array per `conv/kernel|bias` + metadata."""
  from nst_jax.image_io import atomic_write
  arrays = {f"{name}/{k}": np.asarray(v, np.float32) for name, p in weights.params.items() for k, v in p.items()}
  meta = {"format": "nst_jax.vgg19", "version": NPZ_FORMAT_VERSION, "preprocessing": weights.preprocessing,
          "source": weights.source, "source_sha256": weights.sha256}
  with atomic_write(path) as f:
    np.savez(f, __meta__=np.array(json.dumps(meta)), **arrays)


def read_npz(path: str) -> tuple[dict, dict]:
  """Reads the project's format: `(params, metadata)`."""
  try:
    with np.load(path, allow_pickle=False) as data:
      meta = json.loads(str(data["__meta__"]))
      params = {name: {"kernel": data[f"{name}/kernel"], "bias": data[f"{name}/bias"]} for name in vgg.CONV_LAYERS}
  except (KeyError, ValueError, OSError, zipfile.BadZipFile) as e:
    raise NstJaxError(f"{path}: not an nst-jax weight file ({e})") from None
  if meta.get("format") != "nst_jax.vgg19" or meta.get("preprocessing") not in vgg.PREPROCESSING_KINDS:
    raise NstJaxError(f"{path}: not an nst-jax VGG19 weight file (metadata {meta})")
  return _check_shapes(params, path), meta


# ---- download ---------------------------------------------------------------------------------------------


def _offline_help(remote: RemoteFile, reason: str) -> str:
  target = os.path.join(cache_dir(), remote.name)
  return (f"could not get the pretrained VGG19 weights: {reason}. Download {remote.url} "
          f"({remote.size:,} bytes, md5 {remote.md5}) and put it at {target}, or pass --weights PATH "
          f"(Keras .h5, torchvision .pth or nst-jax .npz), or --weights random to run the pipeline without "
          f"pretrained features (results are not artistic)")


def verify_file(path: str, remote: RemoteFile) -> None:
  size = os.path.getsize(path)
  if size != remote.size:
    raise NstJaxError(f"{path} has {size:,} bytes, expected {remote.size:,}")
  md5 = file_digest(path, "md5")
  if md5 != remote.md5:
    raise NstJaxError(f"{path} has md5 {md5}, expected {remote.md5} (corrupt or a different file)")


def _fetch(remote: RemoteFile, partial: str, have: int, *, progress: bool, timeout: float) -> None:
  """Appends `remote`'s bytes from offset `have` to `partial` (from 0 if the server ignores the range)."""
  request = urllib.request.Request(remote.url, headers={"Range": f"bytes={have}-"} if have else {})
  try:
    with urllib.request.urlopen(request, timeout=timeout) as response:
      if have and response.status != 206:  # Server ignored the range: start again.
        have = 0
      from tqdm import tqdm
      with open(partial, "ab" if have else "wb") as out, tqdm(
          total=remote.size, initial=have, unit="B", unit_scale=True, disable=not progress,
          desc=f"downloading {remote.name}") as bar:
        for chunk in iter(lambda: response.read(1 << 20), b""):
          out.write(chunk)
          bar.update(len(chunk))
  except (urllib.error.URLError, OSError, TimeoutError) as e:
    reason = getattr(e, "reason", None) or e
    raise NstJaxError(_offline_help(remote, f"download failed ({reason})")) from None


def download(remote: RemoteFile, dest_dir: str | None = None, *, progress: bool = True,
             timeout: float = 30.0) -> str:
  """Downloads `remote` into the cache, resuming a partial `.part` file; verifies size and md5.

  The file appears under its final name only once complete and verified (rename of the `.part` file).
  Raises NstJaxError with instructions for offline use when the download or the check fails.
  """
  dest_dir = dest_dir or cache_dir()
  os.makedirs(dest_dir, exist_ok=True)
  final = os.path.join(dest_dir, remote.name)
  partial = final + ".part"
  have = os.path.getsize(partial) if os.path.exists(partial) else 0
  if have > remote.size:
    os.remove(partial)
    have = 0
  if have < remote.size:  # A complete `.part` (interrupted before the rename) is only verified.
    _fetch(remote, partial, have, progress=progress, timeout=timeout)
  try:
    verify_file(partial, remote)
  except NstJaxError as e:
    os.remove(partial)
    raise NstJaxError(_offline_help(remote, f"the downloaded file failed its check: {e}")) from None
  os.replace(partial, final)
  return final


def default_weights(*, progress: bool = True) -> vgg.VGGWeights:
  """Cached converted Keras weights; converts a cached .h5, or downloads it, on first use.

  `$NST_JAX_WEIGHTS_URL`, if set, replaces the download URL (a mirror); size and md5 are still checked.
  """
  converted = os.path.join(cache_dir(), CONVERTED_NAME)
  if os.path.exists(converted):
    return load_vgg19(converted)
  h5 = os.path.join(cache_dir(), KERAS_VGG19_NOTOP.name)
  if os.path.exists(h5):
    try:
      verify_file(h5, KERAS_VGG19_NOTOP)
    except NstJaxError as e:
      raise NstJaxError(_offline_help(KERAS_VGG19_NOTOP, f"the cached file failed its check: {e}")) from None
  else:
    remote = KERAS_VGG19_NOTOP
    if os.environ.get("NST_JAX_WEIGHTS_URL"):  # A mirror (or, in tests, an unreachable address).
      remote = dataclasses.replace(remote, url=os.environ["NST_JAX_WEIGHTS_URL"])
    h5 = download(remote, progress=progress)
  weights = load_vgg19(h5)
  save_npz(converted, weights)
  return weights


def load_vgg19(source: str | None = None, *, progress: bool = True) -> vgg.VGGWeights:
  """Loads VGG19 weights from `source` (see the module docstring); `None` means the cached default."""
  if source is None or source == "" or source == "default":
    return default_weights(progress=progress)
  match = re.fullmatch(r"random(?::(\d+))?", source)
  if match:
    warnings.warn("using random VGG19 weights: the pipeline runs, but results are not artistic", stacklevel=2)
    return vgg.random_weights(int(match.group(1) or 0))
  path = os.path.expanduser(source)
  if not os.path.isfile(path):
    raise NstJaxError(f"weights file not found: {source} (expected a Keras .h5, torchvision .pth, nst-jax "
                      ".npz, or 'random')")
  sha256 = file_digest(path)
  name = os.path.basename(path)
  with open(path, "rb") as f:
    magic = f.read(8)
  if magic.startswith(b"\x89HDF"):
    params, preprocessing = read_keras_h5(path), "caffe"
  elif path.endswith(".npz"):
    params, meta = read_npz(path)
    return vgg.VGGWeights(params=params, preprocessing=meta["preprocessing"],
                          source=meta.get("source") or name, sha256=meta.get("source_sha256") or sha256)
  elif path.endswith((".pth", ".pt")) or magic.startswith(b"PK"):
    params, preprocessing = read_torchvision_pth(path), "torch"
  else:
    raise NstJaxError(f"{source}: unknown weight format (expected a Keras .h5, torchvision .pth or nst-jax .npz)")
  return vgg.VGGWeights(params=params, preprocessing=preprocessing, source=name, sha256=sha256)
