"""Tests for nst_jax.color: luminance-only transfer keeps the photo's chroma; linear colour transfer."""

import numpy as np
import pytest
from skimage import data

from nst_jax import color, image_io


def _photo(size=48):
  return image_io.resize_longest(data.chelsea().astype(np.float32) / 255.0, size)


def _painting(size=40):
  return image_io.resize_longest(data.coffee().astype(np.float32) / 255.0, size)


def test_yiq_round_trip_and_luma():
  rgb = np.random.default_rng(0).uniform(size=(5, 7, 3)).astype(np.float32)
  np.testing.assert_allclose(color.yiq_to_rgb(color.rgb_to_yiq(rgb)), rgb, atol=1e-6)
  np.testing.assert_allclose(color.luminance(rgb), rgb @ np.array([0.299, 0.587, 0.114]), atol=1e-6)


def test_finish_luminance_keeps_photo_chroma_and_result_luma():
  photo = 0.2 + 0.6 * _photo()  # Away from 0 and 1 so recombining does not clip.
  result = np.random.default_rng(1).uniform(0.3, 0.7, photo.shape).astype(np.float32)
  out = color.finish(result, photo, "luminance")
  out_yiq, photo_yiq = color.rgb_to_yiq(out), color.rgb_to_yiq(photo)
  np.testing.assert_allclose(out_yiq[..., 1:], photo_yiq[..., 1:], atol=1e-5)
  np.testing.assert_allclose(out_yiq[..., 0], color.luminance(result), atol=1e-5)
  assert color.finish(result, photo, "none") is result


def test_prepare_luminance_gives_gray_images_with_matched_luma():
  photo, painting = _photo(), _painting()
  content, styles = color.prepare(photo, [painting], "luminance")
  for image in (content, styles[0]):
    np.testing.assert_allclose(image[..., 0], image[..., 1])
    np.testing.assert_allclose(image[..., 0], image[..., 2])
  np.testing.assert_allclose(content[..., 0], color.luminance(photo), atol=1e-6)
  # The style's luminance takes the photo's mean and spread (up to clipping).
  assert abs(styles[0][..., 0].mean() - color.luminance(photo).mean()) < 0.02
  assert abs(styles[0][..., 0].std() - color.luminance(photo).std()) < 0.02


@pytest.mark.parametrize("method", color.MATCH_METHODS)
def test_match_color_moves_mean_and_covariance_to_the_photo(method):
  photo, painting = _photo(), _painting()
  matched = color.match_color(painting, photo, method=method, clip=False, eps=1e-9)
  mu_m, cov_m = color.color_stats(matched)
  mu_p, cov_p = color.color_stats(photo)
  np.testing.assert_allclose(mu_m, mu_p, atol=1e-5)
  np.testing.assert_allclose(cov_m, cov_p, atol=1e-6)
  # Before matching the painting's statistics were far from the photo's.
  mu_s, cov_s = color.color_stats(painting)
  assert np.abs(mu_s - mu_p).max() > 0.05 or np.abs(cov_s - cov_p).max() > 0.005


def test_mixture_color_stats_are_the_stats_of_the_pooled_pixels():
  photo, painting = _photo(48), _painting(48)
  # Equal-size images in equal shares: the mixture is the concatenation of their pixels.
  painting = image_io.resize(painting, photo.shape[:2])
  mean, cov = color.mixture_color_stats([photo, painting])
  pooled_mean, pooled_cov = color.color_stats(np.concatenate([photo, painting], axis=0))
  np.testing.assert_allclose(mean, pooled_mean, atol=1e-6)
  np.testing.assert_allclose(cov, pooled_cov, atol=1e-6)
  # Shares (3, 1): the photo's pixels counted three times.
  mean, cov = color.mixture_color_stats([photo, painting], [3.0, 1.0])
  pooled_mean, pooled_cov = color.color_stats(np.concatenate([photo, photo, photo, painting], axis=0))
  np.testing.assert_allclose(mean, pooled_mean, atol=1e-6)
  np.testing.assert_allclose(cov, pooled_cov, atol=1e-6)
  # One image with any share: its own statistics.
  for got, want in zip(color.mixture_color_stats([painting], [0.3]), color.color_stats(painting)):
    np.testing.assert_allclose(got, want, atol=1e-9)


def test_prepare_histogram_clipped_stays_close_to_photo_stats():
  photo, painting = _photo(), _painting()
  content, (style,) = color.prepare(photo, [painting], "histogram")
  assert content is photo
  assert style.min() >= 0 and style.max() <= 1
  mu_m, cov_m = color.color_stats(style)
  mu_p, cov_p = color.color_stats(photo)
  mu_s, cov_s = color.color_stats(painting)
  assert np.abs(mu_m - mu_p).max() < 0.02
  assert np.abs(cov_m - cov_p).sum() < 0.2 * np.abs(cov_s - cov_p).sum()


def test_unknown_mode_is_a_clear_error():
  from nst_jax.errors import NstJaxError
  with pytest.raises(NstJaxError, match="preserve_colors"):
    color.prepare(_photo(), [_painting()], "sepia")
