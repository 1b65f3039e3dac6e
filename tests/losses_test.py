"""Losses under each normalisation vs independent numpy code (through `jax.jit`), the full loss gradient vs
finite differences, and the invariance of `invariant` to rescaled VGG layers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import nst_jax
import numpy as np
import pytest

from conftest import make_image, make_style
from nst_jax import losses, optimize, settings, vgg, vgg_normalize
from nst_jax.configs import default, presets

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


def np_content_normalized(f, p, normalization):
  f, p = np.asarray(f, np.float64).ravel(), np.asarray(p, np.float64).ravel()
  squared = float(np.dot(f - p, f - p))
  return {"gatys": 0.5 * squared, "mean": squared / f.size, "invariant": squared / float(np.dot(p, p))}[
      normalization]


def np_style_normalized(f, a, normalization):
  h, w, n = np.shape(f)
  m = h * w
  g = np_gram(f)
  if normalization == "gatys":
    return np.sum((g - a) ** 2) / (4.0 * n**2 * m**2)
  if normalization == "mean":  # The TF tutorial: Gram / M, then the mean of squared differences.
    return np.mean((g / m - a / m) ** 2)
  return np.sum((g - a) ** 2) / np.sum(a**2)


def np_tv_normalized(image, kind, normalization):
  if normalization != "invariant":
    return np_tv(image, kind)
  image = np.asarray(image, np.float64)
  dy, dx = image[1:] - image[:-1], image[:, 1:] - image[:, :-1]
  d = (lambda x: x**2) if kind == "l2" else np.abs
  return d(dy).sum() / dy.size + d(dx).sum() / dx.size


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


@pytest.mark.parametrize("normalization", losses.NORMALIZATIONS)
def test_each_normalization_matches_numpy(normalization):
  f, p = RNG.standard_normal((2, 6, 5, 3)).astype(np.float32)
  got = jax.jit(lambda f, p: losses.content_loss(features=f, target=p, normalization=normalization))(f, p)
  assert rel(got, np_content_normalized(f, p, normalization)) < 1e-5
  f = RNG.standard_normal((6, 4, 8)).astype(np.float32)
  a = np_gram(RNG.standard_normal((6, 4, 8)))
  got = jax.jit(lambda f, a: losses.style_layer_loss(features=f, target_gram=a, normalization=normalization))(
      f, a.astype(np.float32))
  assert rel(got, np_style_normalized(f, a, normalization)) < 1e-5
  image = RNG.random((7, 9, 3)).astype(np.float32)
  for kind in losses.TV_KINDS:
    got = jax.jit(lambda x: losses.total_variation_loss(x, kind=kind, normalization=normalization))(image)
    assert rel(got, np_tv_normalized(image, kind, normalization)) < 1e-5
  targets = {"a": RNG.standard_normal((4, 4, 3)).astype(np.float32),
             "b": RNG.standard_normal((2, 2, 5)).astype(np.float32)}
  features = {k: RNG.standard_normal(v.shape).astype(np.float32) for k, v in targets.items()}
  got = losses.content_layers_loss(features=features, targets=targets, normalization=normalization)
  want = sum(np_content_normalized(features[k], targets[k], normalization) for k in targets)
  assert rel(got, want if normalization == "gatys" else want / 2) < 1e-5


def test_invariant_terms_ignore_the_activation_scale_and_the_others_do_not():
  f, p = RNG.standard_normal((2, 5, 4, 6)).astype(np.float32)
  a = np_gram(RNG.standard_normal((5, 4, 6))).astype(np.float32)
  for normalization in losses.NORMALIZATIONS:
    content = [float(losses.content_loss(features=c * f, target=c * p, normalization=normalization))
               for c in (1.0, 1e3)]
    style = [float(losses.style_layer_loss(features=c * f, target_gram=c * c * a, normalization=normalization))
             for c in (1.0, 1e3)]
    if normalization == "invariant":
      assert rel(content[1], content[0]) < 1e-5 and rel(style[1], style[0]) < 1e-5
    else:
      assert rel(content[1], 1e6 * content[0]) < 1e-5 and rel(style[1], 1e12 * style[0]) < 1e-4


def test_invariant_tv_does_not_grow_with_the_image_size():
  small = RNG.random((8, 8, 3)).astype(np.float32)
  large = np.kron(small, np.ones((4, 4, 1), np.float32))  # The same picture, 4x the size: 1/4 of the edges.
  sums = [float(losses.total_variation_loss(x, kind="l1")) for x in (small, large)]
  means = [float(losses.total_variation_loss(x, kind="l1", normalization="invariant")) for x in (small, large)]
  assert sums[1] > 3 * sums[0] and 0.2 < means[1] / means[0] < 0.3
  assert float(losses.total_variation_loss(jnp.zeros((1, 5, 3)), normalization="invariant")) == 0.0


def test_unknown_normalization_is_an_error():
  with pytest.raises(ValueError, match="normalization"):
    losses.content_loss(features=jnp.zeros((2, 2, 3)), target=jnp.zeros((2, 2, 3)), normalization="l2")
  with pytest.raises(Exception, match="loss_normalization"):
    settings.resolve({"loss_normalization": "sum"})


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


@pytest.mark.parametrize("pooling,normalization", [("max", "gatys"), ("avg", "gatys"), ("max", "mean"),
                                                    ("max", "invariant"), ("avg", "invariant")])
def test_full_loss_gradient_matches_finite_differences_float64(pooling, normalization):
  previous = jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", True)
  try:
    weights = vgg.random_weights(1, dtype=jnp.float64)
    config = default.get_config()
    config.pooling = pooling
    config.loss_normalization = normalization
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


def _stylize_small(weights, normalization, look, steps=5):
  config = settings.resolve({"preset": look, "loss_normalization": normalization, "max_size": 32, "steps": steps,
                             "content_layers": "relu2_1", "style_layers": "relu1_1,relu2_1", "log_every": steps})
  return nst_jax.stylize(make_image(32, 32, seed=3), make_style(32, 32, seed=4), config, weights=weights)


def test_invariant_gives_the_same_picture_with_rescaled_vgg_layers_and_gatys_does_not(random_weights):
  """Each conv layer multiplied by a factor in [0.1, 10] (activations by the product so far): the same loss and
  gradient, and the same picture within 1/255 under invariant, for each look; under gatys the loss terms move
  by orders of magnitude. (5 Adam steps: float32 rounding differences grow along Adam's path, for any change
  of the network, a rounding-sized one too: scripts/measure_looks.py --measure invariance --control.)"""
  rescaled = vgg_normalize.rescale_layers(random_weights, vgg_normalize.random_factors(0))
  photo = make_image(32, 32, seed=3)
  config = settings.resolve({"content_layers": "relu2_1", "style_layers": "relu1_1,relu2_1"})
  spec = optimize.loss_spec_from_config(config)
  image = jnp.asarray(make_image(32, 32, seed=9))
  values = []
  for weights in (random_weights, rescaled):
    targets = optimize.targets_from_config(weights, config, photo, [make_style(32, 32, seed=4)])
    value, grad = jax.value_and_grad(lambda x: optimize.make_loss_fn(spec)(x, targets, weights)[0])(image)
    values.append((float(value), np.asarray(grad)))
  assert rel(values[1][0], values[0][0]) < 1e-4
  assert np.max(np.abs(values[1][1] - values[0][1])) < 1e-3 * np.max(np.abs(values[0][1]))
  for look in presets.PRESETS:
    a, b = (_stylize_small(w, "invariant", look) for w in (random_weights, rescaled))
    assert np.max(np.abs(a - b)) <= 1 / 255, look
    assert np.mean(np.abs(a - photo)) > 5 / 255, look  # The picture did move.
  a, b = (_stylize_small(w, "gatys", presets.DEFAULT_PRESET) for w in (random_weights, rescaled))
  assert np.mean(np.abs(a - b)) > 5 / 255


def test_with_a_float64_vgg_the_whole_adam_path_ignores_rescaled_layers_under_invariant_only():
  """The VGG and the losses in float64 (the picture and Adam stay float32, the engine's), 40 Adam steps: the
  rescaled network's gradients round to the same float32 numbers, so the pictures are equal, for each look;
  under gatys the rescaling still moves the picture. This is why the float32 difference after many steps is
  rounding carried along Adam's path, not the normalisation (docs/quality-and-speed.md)."""
  previous = jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", True)
  try:
    weights = vgg.random_weights(0, dtype=jnp.float64)
    rescaled = vgg_normalize.rescale_layers(weights, vgg_normalize.random_factors(0))
    for look in presets.PRESETS:
      a, b = (_stylize_small(w, "invariant", look, steps=40) for w in (weights, rescaled))
      assert np.max(np.abs(a - b)) <= 1 / 255, look
      assert np.mean(np.abs(a - make_image(32, 32, seed=3))) > 5 / 255, look
    a, b = (_stylize_small(w, "gatys", presets.DEFAULT_PRESET, steps=40) for w in (weights, rescaled))
    assert np.mean(np.abs(a - b)) > 5 / 255
  finally:
    jax.config.update("jax_enable_x64", previous)
