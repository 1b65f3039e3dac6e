"""Named content/style balances for `--preset`: small overrides on top of `default.get_config()`.

    nst-jax --content photo.jpg --style painting.jpg --output out.png --preset painterly

Explicit flags win over the preset (`--preset painterly --style_weight 100` uses 100). The three looks are
weights of the default `invariant` loss normalisation, where they mean the same for every painting, size
and set of VGG weights; under `--loss_normalization gatys` the same names give the old looks
(`GATYS_LOOKS`, `settings.resolve` picks them). `scripts/experiments.py --experiment presets` renders them.
"""

from __future__ import annotations

import ml_collections

from nst_jax.errors import NstJaxError

# The looks' weights for loss_normalization='gatys' (the looks before the invariant normalisation; chosen with
# random VGG19 weights, so their strength varies with the painting, size and weights).
GATYS_LOOKS: dict[str, dict] = {
    "faithful": {"content_weight": 1.0, "style_weight": 5e2, "tv_weight": 1e-3},
    "balanced": {"content_weight": 1.0, "style_weight": 1e4, "tv_weight": 1e-3},
    "painterly": {"content_weight": 1.0, "style_weight": 2e5, "tv_weight": 1e-3},
}

# The looks under loss_normalization='invariant' (the default), from the ratio sweep of
# scripts/measure_looks.py (docs/quality-and-speed.md): style weights 10x apart. TV 1e-3 of a mean is as
# light as the old looks' (their 1e-3 of a sum was about 1e-7 of a mean relative to the content term).
PRESETS: dict[str, dict] = {
    # Keeps the photo recognisable: a light touch of the painting.
    "faithful": {"content_weight": 1.0, "style_weight": 0.3, "tv_weight": 1e-3},
    # The default: the weighted content and style terms end about equal.
    "balanced": {"content_weight": 1.0, "style_weight": 3.0, "tv_weight": 1e-3},
    # Lets the painting take over: its style residual at the floor the steps allow.
    "painterly": {"content_weight": 1.0, "style_weight": 30.0, "tv_weight": 1e-3},
}

DEFAULT_PRESET = "balanced"


# The report's Table 1, exactly: its normalisation (the TensorFlow tutorial's means), weights and Adam recipe,
# 20 epochs x 500 steps from the photo at one scale. `--workdir` snapshots every 500 steps by default, so a
# run's progress.png and losses.png are the report's Figures 9 and 10 (docs/quality-and-speed.md).
REPORT = {
    "loss_normalization": "mean", "content_weight": 0.5, "style_weight": 0.5, "tv_weight": 1.0, "tv_kind": "l2",
    "optimizer": "adam", "lr": 0.02, "adam_b1": 0.99, "adam_eps": 0.1, "init": "content", "scale_start": 0,
    "steps": 20 * 500,
}


def _recipes() -> dict[str, dict]:
  from nst_jax.configs import quality
  return {"quality": dict(quality.OVERRIDES), "report": dict(REPORT)}


# Optimisation recipes: how to get there (optimizer, scales, steps); `report` also fixes the look (its weights).
RECIPES: dict[str, dict] = _recipes()
# Every name `--preset` accepts.
ALL_PRESETS: tuple[str, ...] = tuple(PRESETS) + tuple(RECIPES)
# One-line descriptions shown to users (the web page's preset cards).
PRESET_DESCRIPTIONS = {
    "faithful": "Keeps the photo recognisable, a light touch of the painting.",
    "balanced": "An even mix of photo and painting.",
    "painterly": "Strong brush strokes and colours of the painting.",
    "quality": "The quickest way to a finished picture: 100 L-BFGS iterations from the photo in the "
               "painting's colours.",
    "report": "The report's Table 1: its loss normalisation and weights, 20 x 500 Adam steps from the photo.",
}


def look_weights(look: str, normalization: str) -> dict | None:
  """The weights of look `look` under `normalization` (None for `mean`: no looks were chosen in it)."""
  return {"invariant": PRESETS, "gatys": GATYS_LOOKS}.get(normalization, {}).get(look)


def current_look(config: ml_collections.ConfigDict) -> str | None:
  """The look whose weights (under any normalisation) `config` has, if any."""
  weights = {k: config[k] for k in ("content_weight", "style_weight", "tv_weight")}
  for table in (PRESETS, GATYS_LOOKS):
    for name, values in table.items():
      if values == weights:
        return name
  return None


def retarget_look(config: ml_collections.ConfigDict, look: str | None, *, keep=()) -> None:
  """Gives `config` look `look`'s weights under its own `loss_normalization` (fields in `keep` stay), so that
  `--loss_normalization gatys` alone restores the old looks and defaults."""
  weights = look_weights(look, config.loss_normalization) if look else None
  for key, value in (weights or {}).items():
    if key not in keep:
      config[key] = value


def get_preset(name: str) -> dict:
  """The override dict of preset `name` (a copy)."""
  if name not in ALL_PRESETS:
    raise NstJaxError(f"unknown preset {name!r}; expected one of {', '.join(ALL_PRESETS)}")
  return dict(PRESETS.get(name) or RECIPES[name])


def apply_preset(config: ml_collections.ConfigDict, name: str, *, keep=()) -> ml_collections.ConfigDict:
  """Sets the preset's fields on `config` in place, except the fields named in `keep`."""
  for key, value in get_preset(name).items():
    if key not in keep:
      config[key] = value
  return config


def get_config(name: str = "balanced") -> ml_collections.ConfigDict:
  """The default config with preset `name` applied."""
  from nst_jax.configs import default
  return apply_preset(default.get_config(), name)
