"""The fast net (`nst_jax.fast.model`): any size, the width multiplier, no checkerboard; its model file."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization

from conftest import make_image
from nst_jax.errors import NstJaxError
from nst_jax.fast import model, model_file

WIDTH = 0.125


@pytest.fixture(scope="module")
def params():
  return model.init_params(WIDTH, seed=0)


@pytest.mark.parametrize("shape", [(17, 23), (64, 31), (16, 16)])
def test_any_size_gives_the_same_size(params, shape):
  image = make_image(*shape, seed=1)
  out = np.asarray(model.apply(params, image[None], width=WIDTH))
  assert out.shape == (1, *shape, 3)
  assert np.all(np.isfinite(out)) and out.min() >= 0.0 and out.max() <= 1.0


def test_padding_is_by_reflection_and_cropped_back(params):
  """An odd-sized photo gives the top-left crop of the net's picture of its reflection-padded version."""
  image = make_image(29, 38, seed=2)[None]
  padded = jnp.pad(image, ((0, 0), (0, 3), (0, 2), (0, 0)), mode="reflect")  # To 32 x 40.
  whole = model.TransformerNet(width=WIDTH).apply({"params": params}, padded)
  np.testing.assert_allclose(model.apply(params, image, width=WIDTH), whole[:, :29, :38], atol=1e-6)


def test_width_scales_the_channels():
  assert model.channels(1.0) == (32, 64, 128)
  assert model.channels(0.25) == (8, 16, 32)
  assert model.parameter_count(model.parameter_shapes(1.0)) == 1_679_235  # Johnson et al.'s: about 1.68 M.
  assert model.parameter_count(model.parameter_shapes(0.25)) < 120_000


def checkerboard_peak(picture: np.ndarray) -> float:
  """The largest ratio, over the frequencies of periods 2 and 4 (the upsamplings'), of the power spectrum
  to the median power of its neighbours: about 1 without a peak."""
  x = np.asarray(picture, np.float64)
  x = x - x.mean(axis=(0, 1))
  power = (np.abs(np.fft.fft2(x, axes=(0, 1))) ** 2).sum(-1)
  n = power.shape[0]
  ratios = []
  for ky, kx in ((n // 2, 0), (0, n // 2), (n // 2, n // 2), (n // 4, 0), (0, n // 4), (n // 4, n // 4)):
    around = [power[(ky + dy) % n, (kx + dx) % n] for dy in range(-2, 3) for dx in range(-2, 3) if dy or dx]
    ratios.append(power[ky, kx] / np.median(around))
  return float(max(ratios))


def mean_peak(transposed: bool, seeds=(0, 1, 2)) -> float:
  """The median `checkerboard_peak` of untrained nets of several seeds, each on its own photo."""
  net = model.TransformerNet(width=0.25, transposed_upsampling=transposed)
  init, apply = jax.jit(net.init), jax.jit(net.apply)  # One compilation for every seed.
  peaks = []
  for seed in seeds:
    photo = jnp.asarray(make_image(64, 64, seed=seed))[None]
    peaks.append(checkerboard_peak(np.asarray(apply(init(jax.random.PRNGKey(seed), photo), photo))[0]))
  return float(np.median(peaks))


def test_no_checkerboard_unlike_transposed_convolutions():
  """Nearest upsampling + conv has no spectral peak at the upsampling periods; the transposed-conv control
  (same net otherwise) has a strong one, so the measure can fail."""
  ours, control = mean_peak(False), mean_peak(True)
  assert control > 30.0, control
  assert ours < 10.0, ours
  assert control > 5 * ours


def test_model_file_round_trip(tmp_path, params):
  path = str(tmp_path / model_file.FILENAME)
  model_file.save(path, params, {"width": WIDTH, "settings": {"style_weight": 3.0}})
  for where in (path, str(tmp_path)):  # The file, or its folder.
    loaded, meta = model_file.load(where)
    assert meta == {"width": WIDTH, "settings": {"style_weight": 3.0}}
    jax.tree.map(np.testing.assert_array_equal, loaded, jax.tree.map(np.asarray, params))


def _rewrite(path, **changes):
  with open(path, "rb") as f:
    record = serialization.msgpack_restore(f.read())
  record.update(changes)
  with open(path, "wb") as f:
    f.write(serialization.msgpack_serialize(record))


def test_model_file_refuses_other_versions_and_damage(tmp_path, params):
  path = str(tmp_path / "m.nstfast")
  model_file.save(path, params, {"width": WIDTH})
  good = open(path, "rb").read()
  _rewrite(path, version=model_file.VERSION + 1)
  with pytest.raises(NstJaxError, match="format version 2; this nst-jax reads version 1"):
    model_file.load(path)
  open(path, "wb").write(good[: len(good) // 2])  # Truncated.
  with pytest.raises(NstJaxError, match="damaged"):
    model_file.load(path)
  damaged = bytearray(good)
  kernel = np.asarray(jax.tree.leaves(params)[-1]).tobytes()
  damaged[good.index(kernel) + 5] ^= 0xFF  # One flipped byte in the parameters.
  open(path, "wb").write(bytes(damaged))
  with pytest.raises(NstJaxError, match="do not match their digest"):
    model_file.load(path)
  open(path, "wb").write(b"\x89PNG not a model")
  with pytest.raises(NstJaxError, match="not an nst-jax fast model"):
    model_file.load(path)
  with pytest.raises(NstJaxError, match="model not found"):
    model_file.load(str(tmp_path / "missing"))
