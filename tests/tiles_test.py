"""Seamless tiles: circular VGG vs torch `padding_mode='circular'`, its gradient vs finite differences in
float64, the wrapped TV vs numpy, the shift test of issue 16, the mosaic, and the setting in every path."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import nst_jax
import numpy as np
import pytest
from PIL import Image

from benchmarks.torch_reference import VGG19_CFG, layer_names
from conftest import make_image, make_style
from nst_jax import engine, image_io, losses, manifest, optimize, settings, tiles, vgg
from nst_jax.errors import NstJaxError

SHALLOW = {"content_layers": ("relu2_1",), "style_layers": ("relu1_1", "relu2_1")}


def rel_error(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def tileable_image(size: int, seed: int = 0) -> np.ndarray:
  """A periodic `[size, size, 3]` picture in [0, 1]: a few random Fourier modes (it wraps without a seam)."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:size, 0:size].astype(np.float64) * 2 * np.pi / size
  image = np.zeros((size, size, 3))
  for c in range(3):
    for _ in range(6):
      fy, fx = rng.integers(-4, 5, 2)
      image[..., c] += rng.normal() * np.cos(fy * y + fx * x + rng.uniform(0, 2 * np.pi))
  image = 0.5 + 0.15 * image / np.abs(image).max()
  return image.astype(np.float32)


# ---- the network -------------------------------------------------------------------------------------------


def torch_circular_features(weights: vgg.VGGWeights, image: np.ndarray, pooling: str) -> dict:
  """Every named activation (float64, `[B, h, w, C]`) of an independent torch VGG19 with circular padding."""
  torch = pytest.importorskip("torch")
  layers, cin, convs = [], 3, iter(vgg.CONV_LAYERS)
  for item in VGG19_CFG:
    if item == "M":
      layers.append(torch.nn.MaxPool2d(2, 2) if pooling == "max" else torch.nn.AvgPool2d(2, 2))
      continue
    conv = torch.nn.Conv2d(cin, item, 3, padding=1, padding_mode="circular").double()
    params = weights.params[next(convs)]
    with torch.no_grad():
      conv.weight.copy_(torch.from_numpy(np.asarray(params["kernel"], np.float64).transpose(3, 2, 0, 1)))
      conv.bias.copy_(torch.from_numpy(np.asarray(params["bias"], np.float64)))
    layers += [conv, torch.nn.ReLU()]
    cin = item
  x = torch.from_numpy(image.astype(np.float64)).permute(0, 3, 1, 2)
  bgr_mean = torch.tensor([103.939, 116.779, 123.68], dtype=torch.float64).view(1, 3, 1, 1)
  x = x.flip(1) * 255.0 - bgr_mean  # Caffe preprocessing, as `vgg.random_weights`.
  out = {}
  with torch.no_grad():
    for name, module in zip(layer_names(), layers):
      x = module(x)
      out[name] = x.permute(0, 2, 3, 1).numpy().copy()
  return out


@pytest.mark.parametrize("pooling", ["max", "avg"])
@pytest.mark.parametrize("shape", [(32, 48), (40, 44)])
def test_circular_vgg_equals_torch_circular_padding(random_weights, pooling, shape):
  image = make_image(*shape, seed=3)[None]
  ours = jax.jit(vgg.extract_features, static_argnames=("layers", "pooling", "circular"))(
      random_weights, image, layers=vgg.LAYER_NAMES[:27], pooling=pooling, circular=True)  # Up to pool4.
  reference = torch_circular_features(random_weights, image, pooling)
  for name in vgg.LAYER_NAMES[:27]:
    assert ours[name].shape == reference[name].shape, name
    assert rel_error(ours[name], reference[name]) < 1e-4, name
  zero_padded = vgg.extract_features(random_weights, image, ["conv1_1"])["conv1_1"]
  assert rel_error(zero_padded, reference["conv1_1"]) > 1e-2  # The padding mode really differs.


@pytest.fixture
def float64():
  previous = jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", True)
  yield
  jax.config.update("jax_enable_x64", previous)


def directional_check(value_fn, x, grad, *, eps=1e-5, tries=4, tol=1e-6):
  rng = np.random.default_rng(0)
  for _ in range(tries):
    direction = jnp.asarray(rng.standard_normal(x.shape))
    direction = direction / jnp.linalg.norm(direction)
    numeric = (value_fn(x + eps * direction) - value_fn(x - eps * direction)) / (2 * eps)
    analytic = jnp.vdot(grad, direction)
    assert abs(float(analytic) - float(numeric)) <= tol * max(abs(float(numeric)), 1e-30), (analytic, numeric)


def test_circular_conv_gradient_matches_finite_differences_float64(float64):
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((2, 6, 5, 3)))
  kernel = jnp.asarray(rng.standard_normal((3, 3, 3, 4)))
  cotangent = jnp.asarray(rng.standard_normal((2, 6, 5, 4)))
  value_fn = jax.jit(lambda x: jnp.sum(jnp.tanh(vgg.conv3x3(x, kernel, True)) * cotangent))
  grad = jax.jit(jax.grad(value_fn))(x)
  assert grad.dtype == jnp.float64
  directional_check(value_fn, x, grad)
  # Inside a loop (where the custom rule matters) and for the kernel, it equals plain autodiff of the conv.
  plain = lambda x, k: vgg._conv(x, k, True)
  loop = lambda conv: lambda x: jax.lax.fori_loop(0, 2, lambda i, h: jnp.tanh(conv(h, kernel[..., :3])), x).sum()
  assert rel_error(jax.grad(loop(lambda h, k: vgg.conv3x3(h, k, True)))(x), jax.grad(loop(plain))(x)) < 1e-10
  kgrad = lambda conv: jax.grad(lambda k: jnp.sum(conv(x, k) * cotangent))(kernel)
  assert rel_error(kgrad(lambda h, k: vgg.conv3x3(h, k, True)), kgrad(plain)) < 1e-10


def test_tiled_loss_gradient_matches_finite_differences_float64(float64):
  weights = vgg.random_weights(1, dtype=jnp.float64)
  config = settings.resolve({"tile": True, "tv_weight": 1e-2, "style_weight": 1e3,
                             "content_layers": "relu2_2", "style_layers": "relu1_1,relu2_1,relu3_1"})
  spec = optimize.loss_spec_from_config(config)
  assert spec.tile
  targets = optimize.targets_from_config(weights, config, make_image(16, 16, seed=5).astype(np.float64),
                                         [make_style(16, 16, seed=6).astype(np.float64)])
  loss_fn = optimize.make_loss_fn(spec)
  value_fn = jax.jit(lambda x: loss_fn(x, targets, weights)[0])
  image = jnp.asarray(make_image(16, 16, seed=7), jnp.float64)
  directional_check(value_fn, image, jax.jit(jax.grad(value_fn))(image))


def np_wrapped_tv(image, kind):
  image = np.asarray(image, np.float64)
  h, w, _ = image.shape
  total = 0.0
  for y in range(h):
    for x in range(w):
      for ny, nx in ((y + 1) % h, x), (y, (x + 1) % w):
        d = image[ny, nx] - image[y, x]
        total += np.sum(d ** 2) if kind == "l2" else np.sum(np.abs(d))
  return total


@pytest.mark.parametrize("kind", ["l2", "l1"])
def test_wrapped_total_variation(kind):
  image = np.random.default_rng(2).random((7, 9, 3)).astype(np.float32)
  got = jax.jit(lambda x: losses.total_variation_loss(x, kind=kind, wrap=True))(image)
  np.testing.assert_allclose(got, np_wrapped_tv(image, kind), rtol=1e-5)
  assert float(losses.total_variation_loss(image, kind=kind, wrap=True)) > float(
      losses.total_variation_loss(image, kind=kind))  # The seam's differences are counted too.


# ---- the shift test of issue 16 ----------------------------------------------------------------------------


def shift_errors(random_weights, tile: bool, extra: dict, shift: int = 16, size: int = 64) -> np.ndarray:
  """|roll(result(photo), shift) - result(roll(photo, shift))| per pixel after 10 Adam steps from the photo."""
  # gatys: SMOOTH_ADAM's eps is set against its gradient scale (~1e8; the invariant default's are ~1e-3).
  config = settings.resolve({**SHALLOW, "tile": tile, "max_size": size, "steps": 10, "log_every": 10,
                             "loss_normalization": "gatys", **extra})
  photo, style = tileable_image(size, seed=0), make_style(48, 48)
  first = nst_jax.stylize(photo, style, config, weights=random_weights)
  second = nst_jax.stylize(np.roll(photo, (shift, shift), (0, 1)), style, config, weights=random_weights)
  assert np.abs(first - photo).mean() > 1e-2  # It did stylise.
  return np.abs(np.roll(first, (shift, shift), (0, 1)) - second)


# Adam in its smooth regime (eps above the gradients' scale, ~1e8 here): the update is linear in the gradient.
SMOOTH_ADAM = {"adam_eps": 1e10, "lr": 2.0}


def test_tile_result_shifts_with_the_photo(random_weights):
  """With `tile` the loss is shift-invariant, so the result shifts with the photo to float tolerance.

  With the default Adam (eps 0.1, far below the gradients) each update is about lr * sign(gradient): the
  ~1e-7 relative rounding differences of a shifted sum flip the sign where a gradient is near 0, so a few
  pixels differ by some steps of lr; the smooth regime has no such flips.
  """
  tiled, plain = shift_errors(random_weights, True, SMOOTH_ADAM), shift_errors(random_weights, False, SMOOTH_ADAM)
  print(f"\nsmooth Adam: max abs shift error tile {tiled.max():.2e}, no tile {plain.max():.2e}")
  assert tiled.max() < 1e-5
  assert plain.max() > 1e-2
  tiled, plain = shift_errors(random_weights, True, {}), shift_errors(random_weights, False, {})
  print(f"default Adam: mean abs shift error tile {tiled.mean():.2e}, no tile {plain.mean():.2e}; pixels off by "
        f"> 1e-3: tile {(tiled > 1e-3).mean():.2%}, no tile {(plain > 1e-3).mean():.2%}")
  assert tiled.mean() < 1e-3 and (tiled > 1e-3).mean() < 0.02
  assert plain.mean() > 100 * tiled.mean() and (plain > 1e-3).mean() > 0.3


def test_tiled_gradient_shifts_with_the_image(random_weights):
  config = settings.resolve({**SHALLOW, "tile": True})
  photo, style = tileable_image(64, seed=0), make_style(48, 48)
  roll = lambda x: np.roll(x, (16, 16), (0, 1))
  loss_fn = optimize.make_loss_fn(optimize.loss_spec_from_config(config))
  grads = [jax.grad(lambda x, t=t: loss_fn(x, t, random_weights)[0])(jnp.asarray(image))
           for t, image in ((optimize.targets_from_config(random_weights, config, photo, [style]), photo + 0.05),
                            (optimize.targets_from_config(random_weights, config, roll(photo), [style]),
                             roll(photo) + 0.05))]
  assert rel_error(roll(grads[0]), grads[1]) < 1e-6


# ---- mosaic, resize, settings, paths -----------------------------------------------------------------------


def test_mosaic_and_preview_path(tmp_path):
  image = make_image(5, 7)
  big = tiles.mosaic(image, 3)
  assert big.shape == (15, 21, 3)
  np.testing.assert_array_equal(big[5:10, 14:21], image)
  assert tiles.preview_path("out/wall.png", 3) == "out/wall.tile3x3.png"
  path = tiles.write_preview(str(tmp_path / "wall.png"), image, 2)
  assert path.endswith("wall.tile2x2.png") and Image.open(path).size == (14, 10)
  assert tiles.write_preview(str(tmp_path / "none.png"), image, 0) is None
  assert not (tmp_path / "none.tile0x0.png").exists()


def test_resize_wrapped_keeps_a_tile_periodic():
  image = tileable_image(32, seed=4)
  up = tiles.resize_wrapped(image, (64, 64))
  shifted = tiles.resize_wrapped(np.roll(image, 8, axis=1), (64, 64))
  np.testing.assert_allclose(np.roll(up, 16, axis=1), shifted, atol=1e-5)
  plain = image_io.resize(image, (64, 64))
  seam = lambda x: np.abs(x[:, 0] - x[:, -1]).mean()
  assert seam(up) < seam(plain)


@pytest.mark.parametrize("values, message", [
    ({"tile_preview": 9}, "tile_preview must be between 0"),
    ({"tile_preview": -1}, "tile_preview must be between 0"),
    ({"tile": "maybe"}, "tile must be true or false")])
def test_bad_tile_settings_are_one_line(values, message):
  with pytest.raises(NstJaxError, match=message) as caught:
    settings.resolve(values)
  assert "\n" not in str(caught.value)


def test_tile_is_compiled_and_only_tile_preview_may_change_on_resume(random_weights):
  assert "tile" in settings.STATIC and "tile_preview" not in settings.STATIC
  content, style = make_image(32, 32), make_style(32, 32)
  jobs = [engine.Job(content, [style], settings.resolve({**SHALLOW, **values}))
          for values in ({}, {"tile": True}, {"tile": True, "tile_preview": 3})]
  eng = engine.Engine(random_weights)
  keys = [eng.job_bucket_key(job) for job in jobs]
  assert keys[0] != keys[1] and keys[1] == keys[2]
  digests = [engine.job_digest(job, random_weights)[1] for job in jobs]
  assert digests[0] != digests[1] and digests[1] == digests[2]


def test_non_square_and_odd_sizes_work_with_a_note(random_weights):
  config = settings.resolve({**SHALLOW, "tile": True, "max_size": 40, "steps": 2})
  assert engine.plan_notes(config, (30, 40)) and "multiple of 16" in engine.plan_notes(config, (30, 40))[0]
  assert engine.plan_notes(config, (32, 48)) == []
  out = nst_jax.stylize(make_image(30, 40), make_style(32, 32), config, weights=random_weights)
  assert out.shape == (30, 40, 3) and np.isfinite(out).all()


@pytest.mark.slow
def test_coarse_to_fine_colours_blends_and_batches_with_tile(random_weights):
  """Coarse-to-fine, preserved colours and a blend of two styles, batched with a plain job: the tiled
  result wraps around smoothly (its seam is no rougher than its roughest inside column pair), the plain one
  does not."""
  values = {**SHALLOW, "max_size": 48, "steps": 15, "scales": "24,2,10", "preserve_colors": "luminance",
            "style_blend_weights": "2,1", "tv_weight": 1.0}
  photo, styles = tileable_image(48, seed=1), [make_style(40, 40, seed=1), make_style(36, 44, seed=2)]
  jobs = [engine.Job(photo, styles, settings.resolve({**values, "tile": tile})) for tile in (True, False)]
  results = engine.Engine(random_weights, max_batch=2).run(jobs)
  assert [r.status for r in results] == ["done", "done"]
  assert [s["width"] for s in results[0].stages] == [24, 48]
  for result, tile in zip(results, (True, False)):
    columns = np.abs(np.diff(result.image, axis=1)).mean(axis=(0, 2))  # Per pair of neighbouring columns.
    seam = np.abs(result.image[:, 0] - result.image[:, -1]).mean()
    print(f"tile {tile}: seam {seam:.4f}, inside {columns.mean():.4f} (max {columns.max():.4f})")
    if tile:
      assert seam <= columns.max()
    else:
      assert seam > columns.max()


def test_manifest_rows_write_their_own_mosaics(tmp_path, random_weights):
  Image.fromarray(image_io.to_uint8(tileable_image(32))).save(tmp_path / "c.png")
  Image.fromarray(image_io.to_uint8(make_style(32, 32))).save(tmp_path / "s.png")
  (tmp_path / "m.csv").write_text("content,style,output,tile_preview\nc.png,s.png,a.png,2\nc.png,s.png,b.png,\n")
  flags = {**SHALLOW, "tile": True, "max_size": 32, "steps": 2}
  rows = manifest.load_rows(str(tmp_path / "m.csv"), flags)
  manifest.run_rows(rows, engine.Engine(random_weights), log=lambda line: None)
  assert [row.error for row in rows] == [None, None]
  assert rows[0].job is rows[1].job  # They differ only in tile_preview: one job.
  assert Image.open(tmp_path / "a.tile2x2.png").size == (64, 64)
  assert (tmp_path / "b.png").exists() and not list(tmp_path.glob("b.tile*"))


def test_command_and_workdir_write_the_mosaic(tmp_path):
  from stylize_cli_test import nst_jax
  Image.fromarray(image_io.to_uint8(tileable_image(32))).save(tmp_path / "c.png")
  Image.fromarray(image_io.to_uint8(make_style(32, 32))).save(tmp_path / "s.png")
  (tmp_path / "home").mkdir()
  common = ["--content", tmp_path / "c.png", "--style", tmp_path / "s.png", "--weights", "random", "--max_size", 32,
            "--steps", 2, "--content_layers", "relu2_1", "--style_layers", "relu1_1,relu2_1", "--tile",
            "--tile_preview", 3, "--noprogress"]
  result = nst_jax(*common, "--output", tmp_path / "out.png", home=tmp_path / "home")
  assert result.returncode == 0, result.stderr
  assert Image.open(tmp_path / "out.tile3x3.png").size == (96, 96)
  result = nst_jax(*common, "--output", tmp_path / "w.png", "--workdir", tmp_path / "run", home=tmp_path / "home")
  assert result.returncode == 0, result.stderr
  assert Image.open(tmp_path / "w.tile3x3.png").size == (96, 96)
  assert Image.open(tmp_path / "run" / "final.tile3x3.png").size == (96, 96)
  result = nst_jax(*common[:-3], "--tile_preview", 12, "--output", tmp_path / "bad.png", home=tmp_path / "home")
  assert result.returncode == 2 and result.stderr.strip().splitlines() == [
      "error: tile_preview must be between 0 (none) and 8, got 12"]
