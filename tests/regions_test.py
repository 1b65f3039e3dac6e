"""Tests of spatial control: guided Gram matrices and mask pooling (nst_jax.losses), region targets
(nst_jax.optimize), mask checks (nst_jax.regions) and region jobs in the engine (resume, batches, digest)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import make_image, make_style
from engine_test import StopAt
from nst_jax import engine, hooks, losses, optimize, regions, settings, vgg
from nst_jax.errors import NstJaxError

SHALLOW = {"content_layers": "relu2_1", "style_layers": "relu1_1,relu2_1", "style_weight": 1e3, "log_every": 1}


@pytest.fixture(scope="module")
def weights():
  return vgg.random_weights(0)


def halves(height, width):
  left = np.zeros((height, width), np.float32)
  left[:, : width // 2] = 1.0
  return left, 1.0 - left


def soft_mask(height, width, seed):
  rng = np.random.default_rng(seed)
  return np.clip(rng.uniform(-0.3, 1.3, (height, width)), 0.0, 1.0).astype(np.float32)


# ---- the maths ---------------------------------------------------------------------------------------------


def test_guided_gram_of_an_all_ones_mask_is_the_plain_gram():
  features = jnp.asarray(np.random.default_rng(0).standard_normal((7, 5, 6)), jnp.float32)
  np.testing.assert_allclose(losses.guided_gram_matrix(features, jnp.ones((7, 5))),
                             losses.gram_matrix(features), rtol=1e-6)


def test_guided_gram_matches_numpy_weighted_outer_products_normalised_by_the_area():
  rng = np.random.default_rng(1)
  features, mask = rng.standard_normal((6, 4, 3)), soft_mask(6, 4, 2)
  flat, weight = features.reshape(-1, 3), mask.reshape(-1)
  expected = sum(w * np.outer(f, f) for f, w in zip(flat, weight)) * (24 / weight.sum())
  got = jax.jit(losses.guided_gram_matrix)(jnp.asarray(features, jnp.float32), jnp.asarray(mask))
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  # A binary mask: the Gram of the selected positions, scaled from their count to all positions.
  binary = (mask > 0.5).astype(np.float32)
  chosen = flat[binary.reshape(-1) > 0]
  np.testing.assert_allclose(losses.guided_gram_matrix(jnp.asarray(features, jnp.float32), jnp.asarray(binary)),
                             chosen.T @ chosen * (24 / len(chosen)), rtol=1e-5)


@pytest.mark.parametrize("shape", [(32, 32), (29, 23)])
def test_downsample_mask_fits_every_layer_and_averages_2x2_blocks(weights, shape):
  layers = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "pool2", "relu5_1")
  features = vgg.extract_features(weights, jnp.zeros((*shape, 3)), layers)
  mask = soft_mask(*shape, 3)
  for name in layers:
    assert losses.downsample_mask(mask, name).shape == features[name].shape[:2], name
  h, w = shape[0] // 2, shape[1] // 2
  expected = mask[:2 * h, :2 * w].reshape(h, 2, w, 2).mean(axis=(1, 3))
  np.testing.assert_allclose(losses.downsample_mask(mask, "relu2_1"), expected, rtol=1e-6)
  np.testing.assert_array_equal(losses.downsample_mask(mask, "relu1_2"), mask)


def test_masked_terms_with_all_ones_equal_the_plain_terms():
  rng = np.random.default_rng(4)
  features = jnp.asarray(rng.standard_normal((6, 5, 4)), jnp.float32)
  target = jnp.asarray(rng.standard_normal((6, 5, 4)), jnp.float32)
  gram = losses.gram_matrix(target)
  ones = jnp.ones((6, 5))
  np.testing.assert_allclose(losses.style_layer_loss(features=features, target_gram=gram, mask=ones),
                             losses.style_layer_loss(features=features, target_gram=gram), rtol=1e-6)
  np.testing.assert_allclose(losses.content_loss(features=features, target=target, weight=ones),
                             losses.content_loss(features=features, target=target), rtol=1e-6)
  with pytest.raises(ValueError, match="mask"):
    losses.guided_gram_matrix(features, jnp.ones((5, 6)))


def test_region_style_loss_matches_numpy():
  rng = np.random.default_rng(5)
  features = rng.standard_normal((6, 4, 3))
  masks = np.stack([soft_mask(6, 4, 6), soft_mask(6, 4, 7)])
  grams = rng.standard_normal((2, 3, 3))
  region_weights = np.array([0.5, 1.5])
  flat, m = features.reshape(-1, 3), 24
  expected = 0.0
  for mask, gram, v in zip(masks, grams, region_weights):
    w = mask.reshape(-1)
    guided = (flat * w[:, None]).T @ flat * (m / w.sum())
    expected += v * (w.sum() / m) * np.sum((guided - gram) ** 2) / (4 * 9 * m ** 2)
  got = losses.region_style_loss(features={"a": jnp.asarray(features, jnp.float32)},
                                 target_grams={"a": jnp.asarray(grams, jnp.float32)},
                                 masks={"a": jnp.asarray(masks)}, region_weights=jnp.asarray(region_weights),
                                 layer_weights={"a": 2.0})
  np.testing.assert_allclose(got, 2.0 * expected, rtol=1e-5)


def _spec_and_config(**overrides):
  config = settings.resolve({**SHALLOW, **overrides})
  return optimize.loss_spec_from_config(config), config


def test_one_all_ones_region_gives_todays_targets_and_loss(weights):
  spec, config = _spec_and_config()
  content, style = make_image(24, 32, 0), make_style(20, 28, 1)
  plain = optimize.targets_from_config(weights, config, content, [style])
  assert plain.style_masks is None and plain.content_masks is None
  guided = optimize.targets_from_config(weights, config, content, [style], regions=[np.ones((24, 32))])
  loss_fn = jax.jit(optimize.make_loss_fn(spec))
  image = jnp.asarray(make_image(24, 32, 2))
  a, b = loss_fn(image, plain, weights)[1], loss_fn(image, guided, weights)[1]
  for name in optimize.METRIC_NAMES:
    np.testing.assert_allclose(a[name], b[name], rtol=2e-5, err_msg=name)


@pytest.fixture
def float64():
  previous = jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", True)
  yield
  jax.config.update("jax_enable_x64", previous)


def test_masked_loss_gradient_matches_finite_differences_float64(float64):
  weights = vgg.random_weights(1, dtype=jnp.float64)
  spec, config = _spec_and_config(tv_weight=1e-2, outside_content_weight=3.0)
  content = make_image(16, 16, seed=5).astype(np.float64)
  styles = [make_style(16, 16, seed=6).astype(np.float64), make_style(12, 20, seed=8).astype(np.float64)]
  left = soft_mask(16, 16, 9) * halves(16, 16)[0]  # Soft, partly uncovered: the weight map matters.
  targets = optimize.targets_from_config(weights, config, content, styles, regions=[left, soft_mask(16, 16, 10)],
                                         region_sources=[None, soft_mask(12, 20, 11)])
  loss_fn = optimize.make_loss_fn(spec)
  value_fn = jax.jit(lambda x: loss_fn(x, targets, weights)[0])
  image = jnp.asarray(make_image(16, 16, seed=7), jnp.float64)
  grad = jax.jit(jax.grad(value_fn))(image)
  assert grad.dtype == jnp.float64
  rng, eps = np.random.default_rng(0), 1e-5
  for _ in range(4):
    direction = jnp.asarray(rng.standard_normal(image.shape))
    direction = direction / jnp.linalg.norm(direction)
    numeric = (value_fn(image + eps * direction) - value_fn(image - eps * direction)) / (2 * eps)
    analytic = jnp.vdot(grad, direction)
    assert abs(analytic - numeric) / max(abs(numeric), 1e-12) < 1e-6, (float(analytic), float(numeric))


def test_content_weight_map_is_one_inside_and_the_setting_outside():
  left, _ = halves(4, 6)
  weight = optimize.content_weight_map([left * 0.5, left * 0.75], 10.0)
  np.testing.assert_allclose(weight[:, :3], 1.0)
  np.testing.assert_allclose(weight[:, 3:], 10.0)
  np.testing.assert_allclose(optimize.content_weight_map([left * 0.5], 3.0)[:, 0], 0.5 + 3.0 * 0.5)


def test_region_init_recolours_each_region_to_its_painting_and_keeps_the_photo_elsewhere():
  content, styles = make_image(16, 20, 0), [make_style(12, 12, 1), make_style(10, 14, 2)]
  left, right = halves(16, 20)
  half_left = left.copy()
  half_left[:8] = 0.0  # The lower left quarter is covered by no region.
  start = optimize.region_init_image("recolored_content", content, styles, [half_left, right])
  np.testing.assert_allclose(start[:8, :10], content[:8, :10])
  np.testing.assert_allclose(start[8:, :10], optimize.init_image("recolored_content", content, styles[:1])[8:, :10],
                             atol=1e-6)
  np.testing.assert_allclose(start[:, 10:], optimize.init_image("recolored_content", content, styles[1:])[:, 10:],
                             atol=1e-6)
  whole = optimize.region_init_image("recolored_content", content, styles[:1], [np.ones((16, 20))])
  np.testing.assert_allclose(whole, optimize.init_image("recolored_content", content, styles[:1]), atol=1e-6)
  # Soft, overlapping regions: the first picture is the photo plus each region's share of its painting's init.
  soft = [soft_mask(16, 20, 1), soft_mask(16, 20, 2)]
  total = np.sum(soft, axis=0)[..., None]
  expected = (1 - np.minimum(total, 1)) * content + sum(
      m[..., None] / np.maximum(total, 1) * optimize.init_image("recolored_content", content, [style])
      for m, style in zip(soft, styles))
  start = optimize.region_init_image("recolored_content", content, styles, soft)
  np.testing.assert_allclose(optimize.picture(start, optimize.region_coverage(soft), content), expected, atol=1e-5)


# ---- masks: conversion and bad input -----------------------------------------------------------------------


def test_colour_masks_are_converted_to_luminance():
  rgb = np.zeros((4, 6, 3), np.float32)
  rgb[:, :3] = (1.0, 0.0, 0.0)
  mask = regions.as_mask(rgb)
  assert mask.shape == (4, 6)
  np.testing.assert_allclose(mask[:, :3], 0.299, rtol=1e-6)
  assert regions.is_colour(rgb) and not regions.is_colour(np.repeat(mask[..., None], 3, -1))


@pytest.mark.parametrize("masks, sources, message", [
    ([np.ones((24, 32))] * 2, None, "2 style_region mask"),
    ([np.zeros((24, 32))], None, "all black"),
    ([np.ones((32, 32))], None, "aspect ratio of the photo"),
    (None, [np.ones((20, 28))], "needs style_region"),
    ([np.ones((24, 32))], [np.zeros((20, 28))], "selects nothing"),
    ([np.ones((24, 32))], [np.ones((28, 20))], "aspect ratio of style image 1"),
    ([np.ones((24, 32, 2))], None, "greyscale"),
])
def test_bad_masks_are_one_line_errors(masks, sources, message):
  with pytest.raises(NstJaxError, match=message) as caught:
    regions.check(masks, sources, (24, 32, 3), [(20, 28, 3)])
  assert "\n" not in str(caught.value)


def test_a_mask_of_the_photo_aspect_ratio_and_another_size_is_accepted():
  (mask,), _ = regions.check([np.ones((48, 64))], None, (24, 32, 3), [(20, 28, 3)])
  assert mask.shape == (48, 64)
  regions.check([np.ones((25, 32))], None, (24, 32, 3), [(20, 28, 3)])  # One pixel of rounding.


def test_outside_content_weight_is_a_setting_checked_like_the_others():
  assert settings.resolve({"outside_content_weight": "4"}).outside_content_weight == 4.0
  with pytest.raises(NstJaxError, match="outside_content_weight"):
    settings.resolve({"outside_content_weight": -1})


# ---- the engine --------------------------------------------------------------------------------------------


def _region_job(checkpoint_dir=None, **overrides):
  config = settings.resolve({**SHALLOW, "scales": "16,2,2", "steps": 3, "preserve_colors": "luminance",
                             "style_blend_weights": "3,1", **overrides}, num_styles=2)
  left, right = halves(48, 64)  # Masks at twice the photo's size: resized at every stage.
  return engine.Job(make_image(24, 32, 0), [make_style(20, 28, 1), make_style(30, 18, 2)], config,
                    regions=[left, right], region_sources=[None, soft_mask(30, 18, 3) + 0.1],
                    checkpoint_dir=checkpoint_dir)


def test_region_resume_mid_stage_and_at_a_stage_boundary_equals_the_uninterrupted_run(weights, tmp_path):
  runner = engine.Engine(weights, checkpoints=engine.CheckpointPolicy(every_steps=0))
  (uninterrupted,) = runner.run([_region_job()])
  assert uninterrupted.status == "done" and uninterrupted.step == 5
  for stop in (1, 2, 4):
    folder = str(tmp_path / f"stop{stop}")
    (stopped,) = runner.run([_region_job(folder)], hooks=[StopAt(stop)])
    assert (stopped.status, stopped.step) == ("stopped", stop)
    (resumed,) = runner.run([_region_job(folder)])
    np.testing.assert_allclose(resumed.image, uninterrupted.image, atol=1e-6, err_msg=f"stopped at {stop}")


def test_a_checkpoint_with_other_masks_is_refused(weights, tmp_path):
  runner = engine.Engine(weights)
  job = _region_job(str(tmp_path / "run"))
  runner.run([job], hooks=[StopAt(1)])
  moved = dataclasses.replace(job, regions=[np.roll(r, 4, axis=1) for r in job.regions])
  with pytest.raises(NstJaxError, match="belongs to another run"):
    runner.run([moved])
  unsourced = dataclasses.replace(job, region_sources=None)
  assert engine.job_digest(unsourced, weights)[1] != engine.job_digest(job, weights)[1]
  plain = engine.Job(job.content, job.styles, job.config)  # Without regions: today's digest keys only.
  assert "regions" not in engine.job_digest(plain, weights)[0]


def test_region_jobs_batch_with_their_own_kind_and_equal_single_runs(weights):
  content, style = make_image(24, 32, 4), make_style(24, 24, 5)
  left, right = halves(24, 32)
  config = lambda **o: settings.resolve({**SHALLOW, "steps": 3, **o})
  jobs = [engine.Job(content, [style], config(), regions=[left]),
          engine.Job(make_image(24, 32, 6), [style], config(outside_content_weight=5.0, style_weight=3e3),
                     regions=[right]),
          engine.Job(content, [style], config()),  # No regions: another bucket.
          engine.Job(content, [style, make_style(20, 20, 7)], config(), regions=[left, right])]  # R = 2.
  keys = [engine.Engine(weights).job_bucket_key(job) for job in jobs]
  assert keys[0] == keys[1] and len({keys[0], keys[2], keys[3]}) == 3
  sizes = []
  batched = engine.Engine(weights).run(jobs, hooks=[hooks.Callback(lambda e: sizes.append(len(e.view.host_images())))])
  assert sorted(set(sizes)) == [1, 2]  # The two one-region jobs shared a batch.
  for job, result in zip(jobs, batched):
    (single,) = engine.Engine(weights).run([job])
    np.testing.assert_allclose(result.image, single.image, atol=1e-5)


def test_an_all_ones_region_job_equals_the_job_without_regions(weights):
  config = settings.resolve({**SHALLOW, "steps": 3})
  content, style = make_image(24, 32, 4), make_style(24, 24, 5)
  plain, guided = engine.Engine(weights).run([engine.Job(content, [style], config),
                                              engine.Job(content, [style], config, regions=[np.ones((24, 32))])])
  np.testing.assert_allclose(plain.image, guided.image, atol=1e-5)


def edge_mask(height, width, ramp=4):
  """1 on the left, 0 on the right, a linear ramp of `ramp` columns in the middle (a soft edge)."""
  columns = np.clip((width // 2 + ramp / 2 - np.arange(width)) / ramp, 0.0, 1.0)
  return np.broadcast_to(columns, (height, width)).astype(np.float32)


@pytest.mark.parametrize("overrides", [
    {},  # The default: Adam, 500 steps.
    {"optimizer": "sgd", "lr": 30.0, "sgd_momentum": 0.9},
    {"optimizer": "lbfgs"},
    {"preset": "quality", "scales": "24,2,2"},  # Preconditioned L-BFGS from the recoloured photo, two scales.
], ids=["adam", "sgd", "lbfgs", "quality"])
def test_uncovered_pixels_are_the_photo_with_every_optimizer(weights, overrides):
  """Adam normalises each pixel's gradient, so a content weight alone let the uncovered half change 0.44-0.68
  as much as the painted half (issue 21); `optimize.picture` keeps it the photo whatever the optimizer."""
  content, style = make_image(32, 48, 4), make_style(32, 32, 5)
  mask = edge_mask(32, 48)
  config = settings.resolve({"max_size": 48, "steps": 4, "log_every": 2, **overrides})
  previews = []
  (result,) = engine.Engine(weights).run([engine.Job(content, [style], config, regions=[mask])],
                                         hooks=[hooks.Callback(lambda e: previews.append(e.image()))])
  change = np.abs(result.image - content).max(axis=-1)  # [H, W]
  uncovered, covered = mask == 0, mask == 1
  assert change[uncovered].max() <= 1e-6, change[uncovered].max()
  assert change[covered].mean() > 0.01, change[covered].mean()
  assert np.abs(previews[-1] - content).max(axis=-1)[uncovered].max() <= 1e-6  # Hooks see the picture too.
  # A soft edge shows a share of the change: no more than the covered side next to it.
  ramp = (mask > 0) & (mask < 1)
  assert change[ramp].mean() <= change[:, 20:22].mean() + 1e-6


def test_picture_shows_the_photo_where_nothing_covers_and_the_image_where_covered():
  image, photo = make_image(8, 10, 1), make_image(8, 10, 2)
  coverage = edge_mask(8, 10, ramp=2)
  got = optimize.picture(image, coverage, photo)
  np.testing.assert_array_equal(got[coverage == 0], photo[coverage == 0])
  np.testing.assert_array_equal(got[coverage == 1], image[coverage == 1])
  np.testing.assert_allclose(got, photo + coverage[..., None] * (image - photo), atol=1e-6)
  assert optimize.picture(image, None, photo) is image
