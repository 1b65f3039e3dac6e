"""Tests for nst_jax.settings: one name per setting everywhere, one place that parses and validates."""

import json
import os
import subprocess
import sys

import pytest

from nst_jax import settings
from nst_jax.commands import stylize
from nst_jax.configs import default, presets
from nst_jax.errors import NstJaxError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_config_field_is_a_setting_and_a_flag():
  assert set(settings.NAMES) == set(default.get_config().keys())
  # The picture command's flags, in a fresh process: a test that imports `nst_jax.commands.video` in this one adds
  # the video flags to absl's global FLAGS.
  script = ("import json; from absl import flags; from nst_jax.commands import stylize; "
            "print(json.dumps([name for name in flags.FLAGS]))")
  picture_flags = set(json.loads(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                                check=True, cwd=ROOT).stdout))
  for name in settings.NAMES + tuple(settings.SHORTHANDS):
    # Video-only settings are flags of `nst-jax video` (tests/video_test.py), unknown to stylize.
    video_only = settings.BY_NAME.get(name, settings.Setting(name, "", "")).scope == "video"
    assert (name in picture_flags) == (not video_only), name
  for preset in presets.ALL_PRESETS:
    assert set(presets.get_preset(preset)) <= set(settings.NAMES), preset
  assert set(settings.STATIC) <= set(settings.NAMES)


def test_text_values_parse_like_typed_ones():
  typed = settings.resolve({"style_weight": 3e4, "steps": 7, "content_layers": ("relu2_1",), "remat": True,
                            "style_blend_weights": (3.0, 1.0)})
  text = settings.resolve({"style_weight": "3e4", "steps": "7", "content_layers": "relu2_1", "remat": "true",
                           "style_blend_weights": "3;1"})
  assert typed.to_dict() == text.to_dict()
  assert text.style_blend_weights == (3.0, 1.0) and text.steps == 7 and text.remat is True


def test_empty_values_keep_the_preset_and_given_values_beat_it():
  config = settings.resolve({"preset": "quality", "steps": "", "style_weight": None, "lr": "",
                             "optimizer": ""})
  assert (config.optimizer, config.steps) == ("lbfgs", 100)
  config = settings.resolve({"preset": "quality", "steps": 7, "init": "noise"})
  assert (config.optimizer, config.steps, config.init) == ("lbfgs", 7, "noise")


def test_shorthands():
  config = settings.resolve({"scales": "128,1.5,7", "epochs": 3, "steps_per_epoch": 5})
  assert (config.scale_start, config.scale_factor, config.scale_steps, config.steps) == (128, 1.5, 7, 15)


@pytest.mark.parametrize("values, message", [
    ({"stlye_weight": 1}, "unknown setting 'stlye_weight'; did you mean 'style_weight'"),
    ({"size": 256}, "unknown setting 'size'"),
    ({"style_layers": "relu9_9"}, "relu9_9"),
    ({"steps": "ten"}, "steps must be an integer"),
    ({"steps": 2.5}, "steps must be an integer"),
    ({"style_weight": -1}, "style_weight must be non-negative"),
    ({"optimizer": "adamw"}, "unknown optimizer 'adamw'"),
    ({"preserve_colors": "yes"}, "unknown preserve_colors"),
    ({"remat": "maybe"}, "remat must be true or false"),
    ({"scales": "128,1.4"}, "START,FACTOR,STEPS"),
    ({"scales": "128,1.0,40"}, "FACTOR > 1"),
    ({"scales": "128,1.5,40", "scale_steps": 3}, "either scales or scale_steps"),
    ({"epochs": 3}, "go together"),
    ({"epochs": 3, "steps_per_epoch": 2, "steps": 5}, "either steps or epochs"),
    ({"style_scale": 0}, "style_scale must be positive"),
    ({"style_scale": 20, "max_size": 1024}, "over the 8192 px limit"),
    ({"preset": "loud"}, "unknown preset"),
    ({"log_every": 0}, "log_every must be >= 1"),
    ({"style_blend_weights": "0,0"}, "not all 0"),
])
def test_bad_values_are_errors_that_name_the_setting(values, message):
  with pytest.raises(NstJaxError, match=message):
    settings.resolve(values)


def test_blend_weights_are_checked_against_the_style_count_only_when_it_is_known():
  assert settings.resolve({"style_blend_weights": "3,1"}).style_blend_weights == (3.0, 1.0)
  settings.resolve({"style_blend_weights": "3,1"}, num_styles=2)
  with pytest.raises(NstJaxError, match="2 style_blend_weights for 1 style image"):
    settings.resolve({"style_blend_weights": "3,1"}, num_styles=1)


def test_docs_settings_table_is_current():
  with open(os.path.join(ROOT, "docs", "settings.md"), encoding="utf-8") as f:
    text = f.read()
  assert settings.markdown_table() in text, "regenerate the table: python -m nst_jax.settings --write"
  assert text.count("| shorthand | meaning |") == 1  # Once (it once appeared twice).
  # The hand-written part of the page stays (a regeneration once replaced it by the generated table).
  assert "| where | how a setting is given | example |\n|---|---|---|\n| command line |" in text


def test_update_docs_replaces_only_the_generated_tables(tmp_path):
  page = tmp_path / "settings.md"
  table = settings.markdown_table().rstrip("\n")
  stale = table.replace("| `max_size` | 512 |", "| `max_size` | 1 |")
  page.write_text(f"# Settings\n\n| where | how |\n|---|---|\n| a | b |\n\nProse.\n\n{stale}\n\nAfter.\n")
  settings.update_docs(str(page))
  assert page.read_text() == f"# Settings\n\n| where | how |\n|---|---|\n| a | b |\n\nProse.\n\n{table}\n\nAfter.\n"
  # A page where the shorthands' table was left twice gets it once.
  shorthands = table[table.index("| shorthand"):]
  page.write_text(f"Prose.\n\n{stale}\n\n{shorthands}\n\nAfter.\n")
  settings.update_docs(str(page))
  assert page.read_text() == f"Prose.\n\n{table}\n\nAfter.\n"


def test_stylize_flags_are_the_settings(tmp_path):
  from absl import flags
  flags.FLAGS.unparse_flags()
  try:
    flags.FLAGS(["stylize", "--preset=painterly", "--style_layers=relu1_1,relu2_1", "--preserve_colors=histogram",
                 "--style=a.png", "--style=b.png", "--style_blend_weights=3,1"])
    config = stylize.config_from_flags()
  finally:
    flags.FLAGS.unparse_flags()
  assert config.to_dict() == settings.resolve({
      "preset": "painterly", "style_layers": "relu1_1,relu2_1", "preserve_colors": "histogram",
      "style_blend_weights": "3,1"}, num_styles=2).to_dict()


def test_defaults_are_sized_to_the_machine(monkeypatch):
  """Without an accelerator a run defaults to 256 px x 100 steps (about a minute on 2 CPU cores); on a GPU or
  TPU to configs/default.py's full look. Given settings and presets that set them win; `machine` overrides."""
  import jax
  full = default.get_config()
  for backend, expected in (("cpu", (256, 100)), ("gpu", (full.max_size, full.steps)),
                            ("tpu", (full.max_size, full.steps))):
    monkeypatch.setattr(jax, "default_backend", lambda backend=backend: backend)
    config = settings.resolve({})
    assert (config.max_size, config.steps) == expected, backend
    assert settings.resolve({"max_size": 300}).max_size == 300
    assert settings.resolve({"preset": "report"}).steps == 10000  # The preset's own budget.
    assert settings.resolve({"preset": "quality"}).max_size == expected[0]
    assert settings.resolve({"epochs": 2, "steps_per_epoch": 5}).steps == 10
    note = settings.machine_note({}, config)
    assert (note is not None) == (backend == "cpu")
  monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
  note = settings.machine_note({}, settings.resolve({}))
  assert note.startswith("no accelerator: max_size 256, steps 100") and "--max_size 512 --steps 500" in note
  note = settings.machine_note({"steps": 5}, settings.resolve({"steps": 5}))
  assert note.startswith("no accelerator: max_size 256 (")
  assert settings.machine_note({"max_size": 64, "steps": 5}, settings.resolve({"max_size": 64, "steps": 5})) is None
  # A recorded run's values (a --workdir resume), or the full look, instead of this machine's.
  assert settings.resolve({}, machine={"max_size": 512, "steps": 500}).max_size == 512
  assert settings.resolve({}, machine={}).steps == full.steps
  assert settings.resolve({}, base=full).max_size == full.max_size  # A given base is used as it is.
  assert "256 without an accelerator" in settings.markdown_table()
