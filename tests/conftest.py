"""Shared fixtures: tiny images made in code, synthetic VGG19 weights and weight files in public layouts."""

from __future__ import annotations

import os
import sys
import tempfile

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))  # So tests can `import weight_files`.
sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))  # And `benchmarks.torch_reference`.

# One persistent compilation cache for the whole run, shared by the xdist workers and the commands the
# tests start in subprocesses (they compile the same small programs again and again).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "nst_jax_test_jax_cache"))
# Commands run in the tests record their step times in the cache dir (`cost.StepTimes`): a home of the run's own,
# so that tiny test runs never skew the estimates of the developer's real runs (tests that need a home set one).
os.environ.setdefault("NST_JAX_HOME", tempfile.mkdtemp(prefix="nst_jax_test_home_"))

import weight_files  # noqa: E402

from nst_jax import vgg  # noqa: E402


def make_image(height: int, width: int, seed: int = 0) -> np.ndarray:
  """A smooth float32 `[H, W, 3]` test picture in [0, 1]: gradients, a disc and a little noise."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:height, 0:width].astype(np.float32)
  y, x = y / max(height - 1, 1), x / max(width - 1, 1)
  disc = ((x - 0.4 - 0.2 * rng.random()) ** 2 + (y - 0.5) ** 2 < 0.08).astype(np.float32)
  image = np.stack([x, y, 0.5 * disc + 0.25 * (1 - x)], axis=-1)
  image += 0.1 * rng.standard_normal(image.shape).astype(np.float32)
  return np.clip(image, 0.0, 1.0).astype(np.float32)


def make_style(height: int, width: int, seed: int = 1) -> np.ndarray:
  """A stripy, colourful float32 `[H, W, 3]` "painting" in [0, 1]."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:height, 0:width].astype(np.float32)
  period = max(height, width) / 6.0
  image = np.stack([0.5 + 0.5 * np.sin(x / period * 2 * np.pi),
                    0.5 + 0.5 * np.cos((x + y) / period * np.pi),
                    0.5 + 0.5 * np.sin(y / period * 3 * np.pi)], axis=-1)
  image += 0.05 * rng.standard_normal(image.shape).astype(np.float32)
  return np.clip(image, 0.0, 1.0).astype(np.float32)


@pytest.fixture(scope="session")
def random_weights() -> vgg.VGGWeights:
  """Synthetic He-initialised VGG19 weights (Caffe preprocessing), seed 0."""
  return vgg.random_weights(0)


@pytest.fixture(scope="session")
def numpy_params(random_weights) -> dict:
  return weight_files.numpy_params(random_weights.params)


@pytest.fixture(scope="session")
def keras_h5(tmp_path_factory, numpy_params) -> str:
  """A synthetic `vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5` holding `random_weights`."""
  path = tmp_path_factory.mktemp("keras") / "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
  return weight_files.write_keras_h5(path, numpy_params)


@pytest.fixture(scope="session")
def torchvision_pth(tmp_path_factory, numpy_params) -> str:
  """A synthetic torchvision `vgg19-dcbb9e9d.pth`-style state_dict holding `random_weights`."""
  pytest.importorskip("torch")
  path = tmp_path_factory.mktemp("torchvision") / "vgg19.pth"
  return weight_files.write_torchvision_pth(path, numpy_params)


@pytest.fixture
def content_image() -> np.ndarray:
  return make_image(32, 40, seed=0)


@pytest.fixture
def style_image() -> np.ndarray:
  return make_style(36, 36, seed=1)
