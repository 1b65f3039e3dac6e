"""Gatys losses vs independent numpy code (through `jax.jit`), and the full loss gradient vs finite differences."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import make_image, make_style
from nst_jax import losses, optimize, vgg
from nst_jax.configs import default

RNG = np.random.default_rng(42)


def np_gram(f):
  f = np.asarray(f, np.float64)
  h, w, n = f.shape
  g = np.zeros((n, n))
  for y in range(h):
    for x in range(w):
      g += np.outer(f[y, x], f[y, x])
  return g


def np_style_layer(f, a):
  h, w, n = f.shape
  m = h * w
  return np.sum((np_gram(f) - a) ** 2) / (4.0 * n**2 * m**2)


def np_tv(image, kind):
  image = np.asarray(image, np.float64)
  h, w, _ = image.shape
  total = 0.0
  for y in range(h):
    for x in range(w):
      for neighbour in ((y + 1, x), (y, x + 1)):
        if neighbour[0] < h and neighbour[1] < w:
          d = image[neighbour] - image[y, x]
          total += np.sum(d**2) if kind == "l2" else np.sum(np.abs(d))
  return total


def rel(a, b):
  return abs(float(a) - float(b)) / max(abs(float(b)), 1e-30)


def test_gram_matrix():
  f = RNG.standard_normal((5, 7, 4)).astype(np.float32)
  g = jax.jit(losses.gram_matrix)(f)
  assert g.shape == (4, 4)
  np.testing.assert_allclose(g, np_gram(f), rtol=1e-5, atol=1e-5)


def test_content_loss():
  f, p = RNG.standard_normal((2, 6, 5, 3)).astype(np.float32)
  got = jax.jit(lambda f, p: losses.content_loss(features=f, target=p))(f, p)
  want = 0.5 * sum((float(a) - float(b)) ** 2 for a, b in zip(f.ravel(), p.ravel()))
  assert rel(got, want) < 1e-5


def test_style_layer_loss_formula():
  f = RNG.standard_normal((6, 4, 8)).astype(np.float32)
  a = np_gram(RNG.standard_normal((3, 5, 8)))
  got = jax.jit(lambda f, a: losses.style_layer_loss(features=f, target_gram=a))(f, a.astype(np.float32))
  assert rel(got, np_style_layer(f, a)) < 1e-5


def test_style_loss_is_weighted_sum():
  features = {"a": RNG.standard_normal((4, 4, 3)).astype(np.float32),
              "b": RNG.standard_normal((2, 3, 5)).astype(np.float32),
              "unused": RNG.standard_normal((2, 2, 2)).astype(np.float32)}
  grams = {"a": np_gram(RNG.standard_normal((4, 4, 3))), "b": np_gram(RNG.standard_normal((2, 2, 5)))}
  weights = {"a": 0.3, "b": 2.5}
  got = jax.jit(lambda f, g: losses.style_loss(features=f, target_grams=g, layer_weights=weights))(
      features, {k: v.astype(np.float32) for k, v in grams.items()})
  want = 0.3 * np_style_layer(features["a"], grams["a"]) + 2.5 * np_style_layer(features["b"], grams["b"])
  assert rel(got, want) < 1e-5


@pytest.mark.parametrize("kind", ["l2", "l1"])
def test_total_variation(kind):
  image = RNG.random((7, 9, 3)).astype(np.float32)
  got = jax.jit(lambda x: losses.total_variation_loss(x, kind=kind))(image)
  assert rel(got, np_tv(image, kind)) < 1e-5


def test_total_variation_of_constant_image_is_zero():
  assert float(losses.total_variation_loss(jnp.full((5, 5, 3), 0.3))) == 0.0


def test_total_loss():
  got = jax.jit(lambda *a: losses.total_loss(content=a[0], style=a[1], tv=a[2], content_weight=a[3],
                                             style_weight=a[4], tv_weight=a[5]))(2.0, 3.0, 5.0, 0.5, 10.0, 0.1)
  assert rel(got, 0.5 * 2 + 10 * 3 + 0.1 * 5) < 1e-6


def test_shape_errors():
  with pytest.raises(ValueError, match="differ"):
    losses.content_loss(features=jnp.zeros((4, 4, 3)), target=jnp.zeros((4, 5, 3)))
  with pytest.raises(ValueError, match=r"\[H, W, C\]"):
    losses.content_loss(features=jnp.zeros((1, 4, 4, 3)), target=jnp.zeros((1, 4, 4, 3)))
  with pytest.raises(ValueError, match="Gram"):
    losses.style_layer_loss(features=jnp.zeros((4, 4, 3)), target_gram=jnp.zeros((4, 4)))
  with pytest.raises(ValueError):
    losses.gram_matrix(jnp.zeros((16, 3)))
  with pytest.raises(ValueError, match="kind"):
    losses.total_variation_loss(jnp.zeros((4, 4, 3)), kind="l3")
  with pytest.raises(ValueError, match="image"):
    losses.total_variation_loss(jnp.zeros((4, 4)))


@pytest.mark.parametrize("pooling", ["max", "avg"])
def test_full_loss_gradient_matches_finite_differences_float64(pooling):
  previous = jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", True)
  try:
    weights = vgg.random_weights(1, dtype=jnp.float64)
    config = default.get_config()
    config.pooling = pooling
    config.style_layers = ("relu1_1", "relu2_1", "relu3_1")
    config.content_layers = ("relu2_2",)
    config.style_weight = 1e3
    config.tv_weight = 1e-2
    spec = optimize.loss_spec_from_config(config)
    content = make_image(16, 16, seed=5).astype(np.float64)
    style = make_style(16, 16, seed=6).astype(np.float64)
    targets = optimize.targets_from_config(weights, config, content, [style])
    loss_fn = optimize.make_loss_fn(spec)
    value_fn = jax.jit(lambda x: loss_fn(x, targets, weights)[0])
    image = jnp.asarray(make_image(16, 16, seed=7), jnp.float64)
    grad = jax.jit(jax.grad(value_fn))(image)
    assert grad.dtype == jnp.float64
    rng = np.random.default_rng(0)
    eps = 1e-5
    for _ in range(4):
      direction = jnp.asarray(rng.standard_normal(image.shape))
      direction = direction / jnp.linalg.norm(direction)
      numeric = (value_fn(image + eps * direction) - value_fn(image - eps * direction)) / (2 * eps)
      analytic = jnp.vdot(grad, direction)
      assert rel(analytic, numeric) < 1e-6, (float(analytic), float(numeric))
  finally:
    jax.config.update("jax_enable_x64", previous)
