"""The temporal loss (Ruder et al. 2016): numpy reference, zero at the warped frame, float64 gradient, and
K = 0 leaving the picture loss exactly as it was."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import make_image, make_style
from nst_jax import losses, optimize, vgg
from nst_jax.configs import default

RNG = np.random.default_rng(7)


def np_closest_first(masks):
  masks = np.asarray(masks, np.float64)
  out = np.zeros_like(masks)
  for k in range(len(masks)):
    out[k] = np.maximum(masks[k] - masks[:k].sum(axis=0), 0.0)
  return out


def np_temporal(image, warped, masks):
  image, warped, masks = (np.asarray(a, np.float64) for a in (image, warped, masks))
  total = 0.0
  for k in range(len(warped)):
    for y in range(image.shape[0]):
      for x in range(image.shape[1]):
        total += masks[k, y, x] * np.sum((image[y, x] - warped[k, y, x]) ** 2)
  return total / image.size


def small_config():
  config = default.get_config()
  config.content_layers = ("relu2_1",)
  config.style_layers = ("relu1_1", "relu2_1")
  return config


def test_closest_first_makes_masks_disjoint_nearer_first():
  masks = (RNG.random((3, 5, 6)) > 0.4).astype(np.float32)
  got = np.asarray(jax.jit(losses.closest_first)(masks))
  np.testing.assert_array_equal(got, np_closest_first(masks))
  assert got.sum(axis=0).max() <= 1.0  # Each pixel is pulled towards one earlier frame at most.
  np.testing.assert_array_equal(got[0], masks[0])  # The nearest frame keeps its whole mask.


def test_temporal_loss_matches_numpy():
  image = RNG.random((6, 7, 3)).astype(np.float32)
  warped = RNG.random((2, 6, 7, 3)).astype(np.float32)
  masks = RNG.random((2, 6, 7)).astype(np.float32)
  got = jax.jit(lambda x, w, c: losses.temporal_loss(image=x, warped=w, masks=c))(image, warped, masks)
  np.testing.assert_allclose(float(got), np_temporal(image, warped, masks), rtol=1e-5)


def test_temporal_loss_is_zero_at_the_warped_frame_and_where_masked():
  image = RNG.random((8, 8, 3)).astype(np.float32)
  masks = np.ones((1, 8, 8), np.float32)
  assert float(losses.temporal_loss(image=image, warped=image[None], masks=masks)) == 0.0
  other = RNG.random((1, 8, 8, 3)).astype(np.float32)
  assert float(losses.temporal_loss(image=image, warped=other, masks=0 * masks)) == 0.0
  assert float(losses.temporal_loss(image=image, warped=other, masks=masks)) > 0.0


def test_temporal_loss_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match="do not fit"):
    losses.temporal_loss(image=np.zeros((4, 4, 3)), warped=np.zeros((1, 4, 5, 3)), masks=np.zeros((1, 4, 5)))


def temporal_targets(targets, warped, masks, weight):
  return targets.replace(temporal_images=jnp.asarray(warped), temporal_masks=jnp.asarray(masks),
                         temporal_weight=jnp.asarray(weight, warped.dtype))


def test_loss_with_temporal_term_gradient_matches_finite_differences_float64():
  previous = jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", True)
  try:
    weights = vgg.random_weights(1, dtype=jnp.float64)
    config = small_config()
    spec = optimize.loss_spec_from_config(config, temporal_frames=2)
    content = make_image(16, 16, seed=5).astype(np.float64)
    targets = optimize.targets_from_config(weights, config, content, [make_style(16, 16, seed=6).astype(np.float64)])
    rng = np.random.default_rng(3)
    warped = rng.random((2, 16, 16, 3))
    masks = np_closest_first(rng.random((2, 16, 16)) > 0.3)
    targets = temporal_targets(targets, warped, masks, 1e4)
    loss_fn = optimize.make_loss_fn(spec)
    value_fn = jax.jit(lambda x: loss_fn(x, targets, weights)[0])
    temporal_fn = jax.jit(lambda x: loss_fn(x, targets, weights)[1]["temporal"])
    image = jnp.asarray(make_image(16, 16, seed=7), jnp.float64)
    for fn in (value_fn, temporal_fn):
      grad = jax.jit(jax.grad(fn))(image)
      assert grad.dtype == jnp.float64
      eps = 1e-5
      for _ in range(3):
        direction = jnp.asarray(rng.standard_normal(image.shape))
        direction = direction / jnp.linalg.norm(direction)
        numeric = (fn(image + eps * direction) - fn(image - eps * direction)) / (2 * eps)
        analytic = jnp.vdot(grad, direction)
        assert abs(float(analytic) - float(numeric)) <= 1e-6 * max(abs(float(numeric)), 1e-12), (analytic, numeric)
    # The temporal part of the gradient is the closed form 2 c (x - w) / D.
    grad_t = np.asarray(jax.grad(temporal_fn)(image))
    want = 2 * np.sum(masks[..., None] * (np.asarray(image)[None] - warped), axis=0) / image.size
    np.testing.assert_allclose(grad_t, want, rtol=1e-10, atol=1e-14)
  finally:
    jax.config.update("jax_enable_x64", previous)


def test_no_temporal_frames_is_the_picture_loss_exactly(random_weights):
  config = small_config()
  content, style = make_image(24, 24, seed=1), make_style(24, 24, seed=2)
  targets = optimize.targets_from_config(random_weights, config, content, [style])
  image = jnp.asarray(make_image(24, 24, seed=3))
  plain = optimize.make_loss_fn(optimize.loss_spec_from_config(config))
  assert optimize.loss_spec_from_config(config).temporal_frames == 0
  total, metrics = jax.jit(lambda x: plain(x, targets, random_weights))(image)
  assert set(metrics) == {"total", "content", "style", "tv"}
  # With K = 1 and an all-zero mask the temporal term adds exactly nothing to the loss or its gradient.
  with_t = optimize.make_loss_fn(optimize.loss_spec_from_config(config, temporal_frames=1))
  zero = temporal_targets(targets, np.zeros((1, 24, 24, 3), np.float32), np.zeros((1, 24, 24), np.float32), 1e6)
  total_t, metrics_t = jax.jit(lambda x: with_t(x, zero, random_weights))(image)
  assert float(metrics_t["temporal"]) == 0.0 and float(total_t) == float(total)
  g = jax.jit(jax.grad(lambda x: plain(x, targets, random_weights)[0]))(image)
  g_t = jax.jit(jax.grad(lambda x: with_t(x, zero, random_weights)[0]))(image)
  np.testing.assert_array_equal(np.asarray(g), np.asarray(g_t))
  # A frame equal to its warped predecessor has no temporal loss.
  same = temporal_targets(targets, np.asarray(image)[None], np.ones((1, 24, 24), np.float32), 1e6)
  total_s, metrics_s = jax.jit(lambda x: with_t(x, same, random_weights))(image)
  assert float(metrics_s["temporal"]) == 0.0 and float(total_s) == float(total)
  # And a temporal spec without temporal targets is refused at trace time.
  with pytest.raises(ValueError, match="temporal targets"):
    with_t(image, targets, random_weights)
