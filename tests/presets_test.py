"""Tests for nst_jax.configs.presets and `--preset` in stylize (explicit flags beat the preset)."""

import pytest
from absl import flags

from nst_jax.commands import stylize
from nst_jax.configs import default, presets
from nst_jax.errors import NstJaxError


def test_presets_are_small_overrides_ordered_by_style_strength():
  base = default.get_config()
  ratios = {}
  for name in ("faithful", "balanced", "painterly"):
    overrides = presets.get_preset(name)
    assert set(overrides) <= set(base.keys())
    config = presets.get_config(name)
    ratios[name] = config.style_weight / config.content_weight
  assert ratios["faithful"] < ratios["balanced"] < ratios["painterly"]
  with pytest.raises(NstJaxError, match="unknown preset"):
    presets.get_preset("loud")


def test_apply_preset_keeps_named_fields():
  config = default.get_config()
  config.style_weight = 7.0
  presets.apply_preset(config, "painterly", keep=["style_weight"])
  assert config.style_weight == 7.0 and config.tv_weight == presets.PRESETS["painterly"]["tv_weight"]


@pytest.mark.parametrize("args, expected_style_weight", [
    (["--preset=painterly"], presets.PRESETS["painterly"]["style_weight"]),
    (["--preset=painterly", "--style_weight=123"], 123.0),
    ([], default.get_config().style_weight),
])
def test_stylize_flags_apply_preset_before_explicit_flags(args, expected_style_weight):
  flags.FLAGS.unparse_flags()
  try:
    flags.FLAGS(["stylize", *args])
    config = stylize.config_from_flags()
  finally:
    flags.FLAGS.unparse_flags()
  assert config.style_weight == expected_style_weight
