"""Paintings are resized once, from the file, by the engine's one size rule."""

from __future__ import annotations

import numpy as np
from PIL import Image

from conftest import make_image, make_style
from nst_jax import engine, image_io, inputs, settings


def _write(path, image):
  Image.fromarray(image_io.to_uint8(image)).save(path)
  return str(path)


def test_a_long_painting_is_resized_once_from_the_file_to_the_engines_size(tmp_path):
  # 1000x100: at max_size 64, style_scale 1 the rule gives 160x16 (short side MIN_SIZE); reading it at 64x6 first
  # and stretching that to 160x16 (the old two rules) blurs it.
  photo = _write(tmp_path / "photo.png", make_image(48, 64))
  long_painting = make_style(100, 1000)
  painting = _write(tmp_path / "long.png", long_painting)
  config = settings.resolve({"max_size": 64})
  job, _ = inputs.load_job(photo, [painting], config)
  (loaded,) = job.styles
  source = image_io.open_image(painting)
  assert loaded.shape == (16, 160, 3)
  np.testing.assert_allclose(loaded, image_io.resize(source, (16, 160)), atol=1e-6)
  # The engine's output stage uses it as it is.
  assert engine.resize_style(loaded, job.content.shape, float(config.style_scale)).shape == loaded.shape


def test_the_size_rule_scales_with_style_scale_and_keeps_the_short_side():
  assert engine.style_longest_side((100, 1000), (48, 64), 1.0) == 160
  assert engine.style_longest_side((300, 400), (48, 64), 1.0) == 64
  assert engine.style_longest_side((300, 400), (48, 64), 2.0) == 128
  config = settings.resolve({"max_size": 64, "style_scale": 2.0})
  assert inputs.prepare_painting(make_style(30, 40), config).shape == (96, 128, 3)
