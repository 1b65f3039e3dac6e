"""End-to-end test of the issue-4 flags of the stylize command (preset, coarse-to-fine, colours, blending)."""

import json
import os

import numpy as np
import pytest
from absl import flags
from PIL import Image
from skimage import data

from nst_jax import color, image_io
from nst_jax.commands import stylize


def _write(path, array, size):
  Image.fromarray(image_io.to_uint8(image_io.resize(array.astype(np.float32) / 255.0, size))).save(path)
  return str(path)


def _main(args):
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["stylize"] + args)
  try:
    stylize.main(["stylize"])
  finally:
    flags.FLAGS.unparse_flags()


def test_config_from_flags_applies_preset_unless_flag_given():
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["stylize", "--preset=quality", "--scale_steps=3", "--style_blend_weights=1,2", "--style=a.png",
               "--style=b.png"])
  try:
    config = stylize.config_from_flags()
  finally:
    flags.FLAGS.unparse_flags()
  assert config.optimizer == "lbfgs" and config.init == "recolored_content"
  assert config.scale_steps == 3
  assert config.style_blend_weights == (1.0, 2.0)


def _config(args):
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["stylize", *args])
  try:
    return stylize.config_from_flags()
  finally:
    flags.FLAGS.unparse_flags()


def test_scales_flag_sets_the_schedule_and_beats_the_preset():
  config = _config(["--preset=quality", "--scales=128,1.5,7"])
  assert (config.scale_start, config.scale_factor, config.scale_steps) == (128, 1.5, 7)
  assert config.optimizer == "lbfgs"  # The rest of the preset still applies.


@pytest.mark.parametrize("args, message", [
    (["--scales=128,1.4"], "START,FACTOR,STEPS"),
    (["--scales=128,x,40"], "START,FACTOR,STEPS"),
    (["--scales=128,1.0,40"], "FACTOR > 1"),
    (["--scales=-5,1.5,40"], ">= 0"),
    (["--scales=128,1.5,40", "--scale_steps=3"], "either scales"),
])
def test_bad_scales_flag_is_a_one_line_error(args, message):
  from nst_jax.errors import NstJaxError
  with pytest.raises(NstJaxError, match=message):
    _config(args)


@pytest.mark.slow
def test_cli_coarse_to_fine_luminance_blend(tmp_path):
  content = _write(tmp_path / "c.png", 0.2 * 255 + 0.6 * data.chelsea(), (32, 32))
  style_a = _write(tmp_path / "a.png", data.coffee(), (40, 40))
  style_b = _write(tmp_path / "b.png", data.astronaut(), (40, 40))
  out = str(tmp_path / "out.png")
  _main([f"--content={content}", f"--style={style_a}", f"--style={style_b}", "--style_blend_weights=3,1",
         f"--output={out}", "--preset=quality", "--scales=16,2,2",
         "--steps=2", "--max_size=32", "--weights=random", "--preserve_colors=luminance", "--init=noise",
         "--progress=false", "--compilation_cache=false", "--style_scale=0.75"])
  image = image_io.open_image(out)
  assert image.shape == (32, 32, 3)
  photo = image_io.open_image(content)
  ok = np.all((image > 0.01) & (image < 0.99), axis=-1)
  chroma_error = np.abs(color.rgb_to_yiq(image)[ok][:, 1:] - color.rgb_to_yiq(photo)[ok][:, 1:])
  assert chroma_error.mean() < 0.01  # 8-bit rounding only.
  records = [json.loads(line) for line in open(os.path.splitext(out)[0] + ".metrics.jsonl")]
  assert sorted({(r["scale"], r["height"], r["width"]) for r in records}) == [(0, 16, 16), (1, 32, 32)]
