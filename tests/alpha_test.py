"""Transparency (docs/transparency.md): the content's alpha is kept exactly and weighs the loss, a painting's
alpha leaves its transparent pixels out of its Gram matrices, and bad outputs/inputs are one-line errors."""

from __future__ import annotations

import nst_jax
import numpy as np
import pytest
from PIL import Image

from conftest import make_image, make_style
from nst_jax import alpha, engine, image_io, inputs, optimize, settings, vgg
from nst_jax.errors import NstJaxError

LAYERS = {"content_layers": "relu2_1", "style_layers": "relu1_1,relu2_1"}
SETTINGS = {"steps": 20, "optimizer": "adam", "style_weight": 1e3, **LAYERS}


def half_transparent(height=48, width=64, seed=0) -> np.ndarray:
  """RGBA: the left half opaque, the right half fully transparent (its colours left as they are)."""
  rgba = np.concatenate([make_image(height, width, seed=seed), np.ones((height, width, 1), np.float32)], -1)
  rgba[:, width // 2:, 3] = 0.0
  return rgba


def test_keep_alpha_loading_and_rgba_saving(tmp_path):
  rgba = half_transparent()
  rgba[:8, :8, 3] = 0.5  # A soft patch.
  path = str(tmp_path / "in.png")
  Image.fromarray(image_io.to_uint8(rgba)).save(path)
  loaded = image_io.open_image_keep_alpha(path)
  assert loaded.shape == (48, 64, 4)
  assert np.array_equal(image_io.to_uint8(loaded), image_io.to_uint8(rgba))
  assert image_io.open_image(path).shape == (48, 64, 3)  # The RGB loader is unchanged.
  for ext in ("png", "webp", "tiff"):
    out = str(tmp_path / f"out.{ext}")
    image_io.save_image(out, loaded)
    kept = image_io.open_image_keep_alpha(out)[..., 3]
    assert np.array_equal(image_io.to_uint8(kept), image_io.to_uint8(rgba[..., 3]))
  with pytest.raises(NstJaxError, match=r"cannot store alpha; use \.png, \.webp or \.tiff"):
    image_io.save_image(str(tmp_path / "out.jpg"), loaded)
  opaque = rgba.copy()
  opaque[..., 3] = 1.0
  Image.fromarray(image_io.to_uint8(opaque)).save(path)
  assert image_io.open_image_keep_alpha(path).shape == (48, 64, 3)  # Fully opaque alpha: plain RGB.


def test_split_refuses_a_fully_transparent_image():
  rgba = half_transparent()
  rgba[..., 3] = 0.0
  with pytest.raises(NstJaxError, match="content image is fully transparent"):
    alpha.split(rgba)
  rgb, a = alpha.split(half_transparent())
  assert rgb.shape == (48, 64, 3) and a.shape == (48, 64)


def test_style_alpha_leaves_transparent_pixels_out_of_the_gram():
  config = settings.resolve({"max_size": 32, "style_scale": 1.5, **SETTINGS}, num_styles=1)
  style = np.concatenate([make_style(48, 48), np.ones((48, 48, 1), np.float32)], -1)
  style[:, 20:, 3] = 0.0  # Only the 20 left columns count.
  weights = vgg.random_weights(0)
  eng = engine.Engine(weights)
  run = engine.JobRun(0, engine.Job(content=make_image(32, 32), styles=[style], config=config), weights)
  eng._enter_stage(run, 0, None)
  assert run.styles[0].shape == (48, 48, 3)
  features = np.asarray(vgg.extract_features(weights, style[..., :3], layers=("relu1_1",))["relu1_1"], np.float64)
  opaque = features[:, :20].reshape(-1, features.shape[-1])
  expected = opaque.T @ opaque / len(opaque) * (32 * 32)  # Mean over opaque pixels, at the output's positions.
  got = np.asarray(run.targets.style_grams["relu1_1"][0], np.float64)
  np.testing.assert_allclose(got, expected, rtol=2e-4, atol=1e-6 * np.abs(expected).max())
  full = features.reshape(-1, features.shape[-1])
  assert np.abs(full.T @ full / len(full) * 1024 - expected).max() > 0.05 * np.abs(expected).max()


def test_content_alpha_is_kept_and_the_opaque_half_is_styled_as_if_alone():
  weights = vgg.random_weights(0)
  content = half_transparent()
  painting = make_style(48, 48)
  # The painting is 48 px in both runs: style_scale x the output's longest side.
  full = nst_jax.stylize(content, painting, settings.resolve({"max_size": 64, "style_scale": 0.75, **SETTINGS},
                                                              num_styles=1), weights=weights)
  alone = nst_jax.stylize(content[:, :32, :3], painting,
                           settings.resolve({"max_size": 48, "style_scale": 1.0, **SETTINGS}, num_styles=1),
                           weights=weights)
  assert full.shape == (48, 64, 4) and np.array_equal(full[..., 3], content[..., 3])
  opaque = full[:, :32, :3]
  difference = np.abs(opaque - alone).mean()
  changed = np.abs(alone - content[:, :32, :3]).mean()
  print(f"opaque half vs alone: mean abs {difference:.4f}; the styling changed it by {changed:.4f}")
  assert changed > 0.02  # The style did something...
  assert difference < 0.25 * changed  # ...and the same thing as on the half alone.
  interior = np.abs(opaque[:, :24] - alone[:, :24]).mean()  # Away from the edge the network sees across.
  assert interior <= difference + 1e-6


def test_an_opaque_rgba_image_behaves_exactly_as_rgb(tmp_path):
  config = settings.resolve({"max_size": 32, "steps": 3, "optimizer": "adam", **LAYERS}, num_styles=1)
  weights = vgg.random_weights(0)
  rgb, painting = make_image(32, 32), make_style(32, 32)
  opaque = np.concatenate([rgb, np.ones((32, 32, 1), np.float32)], -1)
  plain = nst_jax.stylize(rgb, painting, config, weights=weights)
  assert np.array_equal(nst_jax.stylize(opaque, painting, config, weights=weights), plain)
  path = str(tmp_path / "opaque.png")
  Image.fromarray(image_io.to_uint8(opaque)).save(path)
  job, _ = inputs.load_job(path, [path], config)
  assert job.content.shape == (32, 32, 3) and job.num_regions == 0


def test_blended_paintings_with_alpha_keep_the_blend_gradient():
  """Without regions, n paintings under an alpha are n regions of 1/n: with an all-ones alpha the gradient
  is the blended Gram's under gatys (exactly) and close to it under invariant (a sum of relative terms)."""
  for norm, tolerance in (("gatys", 1e-3), ("invariant", 3e-2)):
    _check_blend_gradient(norm, tolerance)


def _check_blend_gradient(norm, tolerance):
  import jax
  config = settings.resolve({"max_size": 32, "loss_normalization": norm, **SETTINGS}, num_styles=2)
  spec = optimize.loss_spec_from_config(config)
  weights = vgg.random_weights(0)
  content, styles = make_image(32, 32), [make_style(32, 32, seed=1), make_style(24, 40, seed=2)]
  common = dict(content_weight=1.0, style_weight=1e3, tv_weight=0.0, style_blend_weights=(3.0, 1.0))
  plain = optimize.make_targets(weights, spec, content, styles, **common)
  halves = [np.full((32, 32), 0.5, np.float32)] * 2
  with_alpha = optimize.make_targets(weights, spec, content, styles, regions=halves,
                                     alpha=np.ones((32, 32), np.float32), **common)
  loss_fn = optimize.make_loss_fn(spec)
  image = make_image(32, 32, seed=5)
  grad = lambda t: np.asarray(jax.grad(lambda x: loss_fn(x, t, weights)[0])(image))
  expected = grad(plain)
  np.testing.assert_allclose(grad(with_alpha), expected, rtol=tolerance, atol=tolerance * np.abs(expected).max())
