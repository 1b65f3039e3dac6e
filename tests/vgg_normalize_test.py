"""Tests for nst_jax.vgg_normalize and the normalize_vgg command: mean activation 1 per filter, same
correlation-normalised Gram matrices, saved in the project's format with the preprocessing kept."""

import jax.numpy as jnp
import numpy as np
import pytest
from skimage import data

from conftest import make_image
from nst_jax import image_io, losses, vgg, vgg_normalize, weights as weights_lib

LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


@pytest.fixture(scope="module")
def calibration():
  return [image_io.resize(data.chelsea().astype(np.float32) / 255.0, (32, 32)),
          image_io.resize(data.coffee().astype(np.float32) / 255.0, (32, 48))]


@pytest.fixture(scope="module")
def normalized(calibration):
  return vgg_normalize.normalize(vgg.random_weights(0, preprocessing="torch"), calibration)


def test_mean_activation_is_one_per_filter(normalized, calibration):
  new_weights, old_means = normalized
  assert new_weights.preprocessing == "torch"
  new_means = vgg_normalize.mean_activations(new_weights, calibration)
  for conv in vgg.CONV_LAYERS:
    alive = old_means[conv] > 1e-6
    assert alive.mean() > 0.5
    # float32 rounding: a filter that barely fires is known less precisely.
    np.testing.assert_allclose(new_means[conv][alive], 1.0, rtol=1e-2)
    assert np.median(np.abs(new_means[conv][alive] - 1.0)) < 1e-4
  # The original random network is far from normalised.
  assert max(abs(np.log(old_means[c][old_means[c] > 1e-6])).max() for c in vgg.CONV_LAYERS) > 1.0


def _correlations(gram):
  d = np.sqrt(np.maximum(np.diag(gram), 1e-20))
  return gram / d[:, None] / d[None, :]


def test_correlation_normalised_grams_are_unchanged(normalized, calibration):
  new_weights, old_means = normalized
  image = jnp.asarray(calibration[0])
  old = vgg.extract_features(vgg.random_weights(0, preprocessing="torch"), image, LAYERS)
  new = vgg.extract_features(new_weights, image, LAYERS)
  for name in LAYERS:
    conv = name.replace("relu", "conv")
    alive = old_means[conv] > 1e-6
    g_old = np.asarray(losses.gram_matrix(old[name]), np.float64)[np.ix_(alive, alive)]
    g_new = np.asarray(losses.gram_matrix(new[name]), np.float64)[np.ix_(alive, alive)]
    np.testing.assert_allclose(_correlations(g_new), _correlations(g_old), atol=1e-4)
    # Features are the originals divided by the mean activation.
    np.testing.assert_allclose(np.asarray(new[name])[..., alive] * old_means[conv][alive],
                               np.asarray(old[name])[..., alive], rtol=1e-3, atol=1e-3 * float(old[name].max()))


def test_normalized_weights_round_trip_through_npz(normalized, tmp_path):
  new_weights, _ = normalized
  path = str(tmp_path / "normalized.npz")
  weights_lib.save_npz(path, new_weights)
  loaded = weights_lib.load_vgg19(path)
  assert loaded.preprocessing == "torch"
  np.testing.assert_array_equal(loaded.params["conv3_2"]["kernel"], new_weights.params["conv3_2"]["kernel"])


def test_rescaled_layers_multiply_each_activation_by_the_product_of_the_factors(random_weights):
  factors = vgg_normalize.random_factors(0)
  image = jnp.asarray(make_image(16, 16))
  layers = ("relu1_1", "relu1_2", "relu2_1", "conv2_2")
  old = vgg.extract_features(random_weights, image, layers)
  new = vgg.extract_features(vgg_normalize.rescale_layers(random_weights, factors), image, layers)
  cumulative = np.cumprod([factors[c] for c in vgg.CONV_LAYERS])
  for name in layers:
    c = cumulative[vgg.CONV_LAYERS.index("conv" + name[4:])]
    want = c * np.asarray(old[name], np.float64)
    assert np.max(np.abs(np.asarray(new[name]) - want)) <= 1e-5 * np.max(np.abs(want)), name
