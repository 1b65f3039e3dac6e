"""Weight loaders on synthetic files in the public layouts, our npz format, and the download/cache logic."""

from __future__ import annotations

import hashlib
import http.server
import os
import pickle
import threading
import zipfile

import h5py
import numpy as np
import pytest

import weight_files
from nst_jax import vgg
from nst_jax import weights as weights_lib
from nst_jax.errors import NstJaxError


def assert_params_equal(params, expected):
  assert set(params) == set(vgg.CONV_LAYERS)
  for name in vgg.CONV_LAYERS:
    for key in ("kernel", "bias"):
      assert params[name][key].dtype == np.float32
      np.testing.assert_array_equal(np.asarray(params[name][key]), expected[name][key])


# ---- readers -----------------------------------------------------------------------------------------------


def test_keras_h5_layout_and_reader(keras_h5, numpy_params):
  with h5py.File(keras_h5, "r") as f:  # The synthetic file really has the public layout.
    assert [n.decode() for n in f.attrs["layer_names"]][:4] == ["input_1", "block1_conv1", "block1_conv2",
                                                                 "block1_pool"]
    assert list(f["block3_conv4"].attrs["weight_names"]) == [b"block3_conv4_W_1:0", b"block3_conv4_b_1:0"]
    assert f["block3_conv4"]["block3_conv4_W_1:0"].shape == (3, 3, 256, 256)
    assert len(f["block5_pool"].attrs["weight_names"]) == 0
  weights = weights_lib.load_vgg19(keras_h5)
  assert_params_equal(weights.params, numpy_params)
  assert weights.preprocessing == "caffe"
  assert weights.sha256 == hashlib.sha256(open(keras_h5, "rb").read()).hexdigest()


def test_keras_h5_full_model_layout(tmp_path, numpy_params):
  """Keras full-model files nest the layer groups under `model_weights`."""
  flat = weight_files.write_keras_h5(tmp_path / "flat.h5", numpy_params)
  nested = tmp_path / "nested.h5"
  with h5py.File(flat, "r") as src, h5py.File(nested, "w") as dst:
    group = dst.create_group("model_weights")
    for name in src:
      src.copy(src[name], group, name=name)
  assert_params_equal(weights_lib.load_vgg19(str(nested)).params, numpy_params)


def test_torchvision_pth_read_without_torch(torchvision_pth, numpy_params, monkeypatch):
  import sys
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails: the zip reader needs none.
  weights = weights_lib.load_vgg19(torchvision_pth)
  assert_params_equal(weights.params, numpy_params)
  assert weights.preprocessing == "torch"


def test_torchvision_pth_with_noncontiguous_and_wrapped_state(tmp_path, numpy_params):
  torch = pytest.importorskip("torch")
  state = weight_files.torchvision_state_dict(numpy_params)
  # A transposed-then-transposed-back view: non-trivial strides in the saved storage.
  state["features.0.weight"] = state["features.0.weight"].permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3)
  path = tmp_path / "wrapped.pth"
  torch.save({"state_dict": state}, str(path))
  assert_params_equal(weights_lib.load_vgg19(str(path)).params, numpy_params)


class _Evil:
  def __reduce__(self):
    return (os.system, ("echo pwned > /dev/null",))


def test_pth_with_malicious_global_is_refused(tmp_path, torchvision_pth):
  path = tmp_path / "evil.pth"
  with zipfile.ZipFile(torchvision_pth) as src, zipfile.ZipFile(path, "w") as dst:
    for item in src.infolist():
      data = src.read(item.filename)
      if item.filename.endswith("data.pkl"):
        data = pickle.dumps({"features.0.weight": _Evil()}, protocol=2)
      dst.writestr(item, data)
  with pytest.raises(NstJaxError, match="posix.system|os.system|unsupported"):
    weights_lib.load_vgg19(str(path))


def test_npz_round_trip_keeps_preprocessing_and_source(tmp_path, torchvision_pth, numpy_params):
  original = weights_lib.load_vgg19(torchvision_pth)
  path = str(tmp_path / "converted.npz")
  weights_lib.save_npz(path, original)
  assert [p for p in os.listdir(tmp_path) if p.startswith(".tmp")] == []
  loaded = weights_lib.load_vgg19(path)
  assert_params_equal(loaded.params, numpy_params)
  assert loaded.preprocessing == "torch"
  assert loaded.source == original.source == "vgg19.pth"
  assert loaded.sha256 == original.sha256


def test_random_sources():
  with pytest.warns(UserWarning, match="not artistic"):
    default = weights_lib.load_vgg19("random")
  with pytest.warns(UserWarning):
    seeded = weights_lib.load_vgg19("random:3")
  reference = vgg.random_weights(3)
  np.testing.assert_array_equal(seeded.params["conv2_1"]["kernel"], reference.params["conv2_1"]["kernel"])
  assert not np.array_equal(default.params["conv2_1"]["kernel"], seeded.params["conv2_1"]["kernel"])
  assert default.sha256 == ""


# ---- bad files ---------------------------------------------------------------------------------------------


def _truncate(src, dst, fraction=0.5):
  data = open(src, "rb").read()
  open(dst, "wb").write(data[: int(len(data) * fraction)])
  return str(dst)


def test_bad_files_give_nst_jax_error(tmp_path, keras_h5, torchvision_pth, numpy_params):
  cases = {
      "missing": str(tmp_path / "nope.h5"),
      "truncated h5": _truncate(keras_h5, tmp_path / "cut.h5"),
      "truncated pth": _truncate(torchvision_pth, tmp_path / "cut.pth"),
      "garbage pth": str(tmp_path / "junk.pth"),
      "garbage npz": str(tmp_path / "junk.npz"),
      "text": str(tmp_path / "weights.txt"),
  }
  open(cases["garbage pth"], "wb").write(b"not a checkpoint at all" * 10)
  open(cases["garbage npz"], "wb").write(b"PK\x03\x04 broken")
  open(cases["text"], "w").write("hello")
  wrong_shape = {name: dict(p) for name, p in numpy_params.items()}
  wrong_shape["conv3_2"] = {"kernel": np.zeros((3, 3, 256, 128), np.float32), "bias": np.zeros(128, np.float32)}
  cases["wrong shape h5"] = weight_files.write_keras_h5(tmp_path / "shape.h5", wrong_shape)
  missing_layer = {name: p for name, p in numpy_params.items() if name != "conv5_4"}
  with h5py.File(tmp_path / "partial.h5", "w") as f:
    for name in missing_layer:
      block, conv = name[4:].split("_")
      g = f.create_group(f"block{block}_conv{conv}")
      g.attrs["weight_names"] = [f"block{block}_conv{conv}_W_1:0".encode(), f"block{block}_conv{conv}_b_1:0".encode()]
      g[f"block{block}_conv{conv}_W_1:0"] = missing_layer[name]["kernel"]
      g[f"block{block}_conv{conv}_b_1:0"] = missing_layer[name]["bias"]
  cases["missing layer h5"] = str(tmp_path / "partial.h5")
  torch = pytest.importorskip("torch")
  state = weight_files.torchvision_state_dict(wrong_shape)
  cases["wrong shape pth"] = str(tmp_path / "shape.pth")
  torch.save(state, cases["wrong shape pth"])
  del state["features.34.bias"]
  cases["missing key pth"] = str(tmp_path / "missing.pth")
  torch.save(state, cases["missing key pth"])
  np.savez(tmp_path / "foreign.npz", a=np.zeros(3))
  cases["foreign npz"] = str(tmp_path / "foreign.npz")
  for what, path in cases.items():
    with pytest.raises(NstJaxError) as info:
      weights_lib.load_vgg19(path)
    message = str(info.value)
    assert "\n" not in message, what
    assert os.path.basename(path) in message or "not found" in message, (what, message)


# ---- download ----------------------------------------------------------------------------------------------

PAYLOAD = bytes(range(256)) * 400  # 102,400 bytes.


class _RangeHandler(http.server.BaseHTTPRequestHandler):
  """Serves PAYLOAD at any path, honouring `Range: bytes=N-` with 206 (416 past the end) unless
  `honour_range` is False; records the ranges asked for."""
  ranges: list = []
  honour_range = True

  def do_GET(self):
    header = self.headers.get("Range") if self.honour_range else None
    type(self).ranges.append(self.headers.get("Range"))
    start = int(header.split("=")[1].rstrip("-")) if header else 0
    if start >= len(PAYLOAD):
      self.send_error(416)
      return
    body = PAYLOAD[start:]
    self.send_response(206 if header else 200)
    if header:
      self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    self.wfile.write(body)

  def log_message(self, *args):
    pass


@pytest.fixture
def server():
  _RangeHandler.ranges, _RangeHandler.honour_range = [], True
  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  yield f"http://127.0.0.1:{httpd.server_address[1]}"
  httpd.shutdown()
  httpd.server_close()


def _remote(url, *, md5=None, name="fake.h5"):
  return weights_lib.RemoteFile(name=name, url=f"{url}/{name}", size=len(PAYLOAD),
                                md5=md5 or hashlib.md5(PAYLOAD).hexdigest(), preprocessing="caffe")


def test_download_full(server, tmp_path):
  path = weights_lib.download(_remote(server), str(tmp_path), progress=False)
  assert open(path, "rb").read() == PAYLOAD
  assert sorted(os.listdir(tmp_path)) == ["fake.h5"]
  assert _RangeHandler.ranges == [None]


def test_download_resumes_partial_file(server, tmp_path):
  (tmp_path / "fake.h5.part").write_bytes(PAYLOAD[:40_000])
  path = weights_lib.download(_remote(server), str(tmp_path), progress=False)
  assert open(path, "rb").read() == PAYLOAD
  assert _RangeHandler.ranges == ["bytes=40000-"]
  assert not (tmp_path / "fake.h5.part").exists()


def test_download_restarts_when_the_server_ignores_the_range(server, tmp_path):
  _RangeHandler.honour_range = False
  (tmp_path / "fake.h5.part").write_bytes(b"x" * 30_000)
  path = weights_lib.download(_remote(server), str(tmp_path), progress=False)
  assert open(path, "rb").read() == PAYLOAD


def test_download_verifies_a_complete_part_file_without_fetching(server, tmp_path):
  (tmp_path / "fake.h5.part").write_bytes(PAYLOAD)  # Interrupted between the last byte and the rename.
  path = weights_lib.download(_remote(server), str(tmp_path), progress=False)
  assert open(path, "rb").read() == PAYLOAD
  assert _RangeHandler.ranges == []


def test_download_bad_md5_leaves_no_file(server, tmp_path):
  with pytest.raises(NstJaxError, match="md5") as info:
    weights_lib.download(_remote(server, md5="0" * 32), str(tmp_path), progress=False)
  assert "--weights" in str(info.value)
  assert os.listdir(tmp_path) == []


def test_download_unreachable_explains_offline_use(tmp_path):
  remote = weights_lib.RemoteFile(name="x.h5", url="http://127.0.0.1:1/x.h5", size=10, md5="0" * 32,
                                  preprocessing="caffe")
  with pytest.raises(NstJaxError) as info:
    weights_lib.download(remote, str(tmp_path), progress=False, timeout=5)
  message = str(info.value)
  assert "--weights" in message and "random" in message and "http://127.0.0.1:1/x.h5" in message
  assert not (tmp_path / "x.h5").exists()


def test_default_weights_converts_and_caches_a_placed_h5(tmp_path, monkeypatch, keras_h5, numpy_params):
  home = tmp_path / "home"
  home.mkdir()
  placed = home / weights_lib.KERAS_VGG19_NOTOP.name
  placed.write_bytes(open(keras_h5, "rb").read())
  data = placed.read_bytes()
  monkeypatch.setenv("NST_JAX_HOME", str(home))
  monkeypatch.setattr(weights_lib, "KERAS_VGG19_NOTOP", weights_lib.RemoteFile(
      name=placed.name, url="http://127.0.0.1:1/never", size=len(data), md5=hashlib.md5(data).hexdigest(),
      preprocessing="caffe"))
  weights = weights_lib.load_vgg19(None)
  assert_params_equal(weights.params, numpy_params)
  assert weights.preprocessing == "caffe"
  converted = home / weights_lib.CONVERTED_NAME
  assert converted.exists()
  placed.unlink()  # The second call uses the converted cache only.
  again = weights_lib.load_vgg19(None)
  assert_params_equal(again.params, numpy_params)
  assert again.sha256 == weights.sha256 == hashlib.sha256(data).hexdigest()


def test_default_weights_rejects_a_corrupt_cached_h5(tmp_path, monkeypatch):
  monkeypatch.setenv("NST_JAX_HOME", str(tmp_path))
  (tmp_path / weights_lib.KERAS_VGG19_NOTOP.name).write_bytes(b"\x89HDF\r\n\x1a\n" + b"0" * 100)
  with pytest.raises(NstJaxError, match="--weights") as info:
    weights_lib.load_vgg19(None)
  assert "random" in str(info.value)
  assert not (tmp_path / weights_lib.CONVERTED_NAME).exists()
