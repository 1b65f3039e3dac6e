"""Named content/style balances for `--preset`: small overrides on top of `default.get_config()`.

    nst-jax --content photo.jpg --style painting.jpg --output out.png --preset painterly

Explicit flags win over the preset (`--preset painterly --style_weight 3e4` uses 3e4). The three presets
are points of the report's weight-ratio sweep (alpha/beta = 20x, 1x and 1/20x the default 1 : 1e4; see
`scripts/experiments.py --experiment ratios`); `scripts/experiments.py --experiment presets` renders them.
"""

from __future__ import annotations

import ml_collections

from nst_jax.errors import NstJaxError

PRESETS: dict[str, dict] = {
    # Keeps the photo recognisable: style at 1/20 of the default strength, a little more smoothing.
    "faithful": {"content_weight": 1.0, "style_weight": 5e2, "tv_weight": 1e-3},
    # The default balance.
    "balanced": {"content_weight": 1.0, "style_weight": 1e4, "tv_weight": 1e-3},
    # Lets the painting take over: style at 20x the default strength.
    "painterly": {"content_weight": 1.0, "style_weight": 2e5, "tv_weight": 1e-3},
}

DEFAULT_PRESET = "balanced"


def _recipes() -> dict[str, dict]:
  from nst_jax.configs import quality
  return {"quality": dict(quality.OVERRIDES)}


# Optimisation recipes: how to get there (optimizer, scales, steps), independent of the look.
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
}


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
