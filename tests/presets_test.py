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


def test_report_preset_is_the_reports_table_1():
  from nst_jax import run, settings
  config = settings.resolve({"preset": "report"})
  want = {"loss_normalization": "mean", "content_weight": 0.5, "style_weight": 0.5, "tv_weight": 1.0,
          "tv_kind": "l2", "optimizer": "adam", "lr": 0.02, "adam_b1": 0.99, "adam_eps": 0.1, "init": "content",
          "scale_start": 0, "steps": 10000}
  assert {k: config[k] for k in want} == want
  assert run.DEFAULT_SNAPSHOT_EVERY == 500  # --workdir: 20 snapshots, the report's Figure 9.
  assert settings.resolve({"preset": "report", "steps": 50}).steps == 50
  assert settings.resolve({"preset": "report", "epochs": 2, "steps_per_epoch": 500}).steps == 1000


def test_gatys_normalization_alone_restores_the_old_looks_and_explicit_weights_win():
  from nst_jax import settings
  assert settings.resolve({}).loss_normalization == "invariant"
  for look in presets.PRESETS:
    config = settings.resolve({"preset": look, "loss_normalization": "gatys"})
    assert {k: config[k] for k in presets.GATYS_LOOKS[look]} == presets.GATYS_LOOKS[look]
  config = settings.resolve({"loss_normalization": "gatys"})  # No preset: the default look, balanced.
  assert config.style_weight == presets.GATYS_LOOKS["balanced"]["style_weight"] == 1e4
  config = settings.resolve({"loss_normalization": "gatys", "style_weight": 3.0})
  assert config.style_weight == 3.0 and config.tv_weight == presets.GATYS_LOOKS["balanced"]["tv_weight"]
  base = settings.resolve({"loss_normalization": "gatys"})  # A batch's base, then a row back to invariant.
  assert settings.resolve({"loss_normalization": "invariant"}, base=base).style_weight == \
      presets.PRESETS["balanced"]["style_weight"]
  assert settings.resolve({"preset": "report", "loss_normalization": "gatys"}).style_weight == 0.5
