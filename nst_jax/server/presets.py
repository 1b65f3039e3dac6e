"""Presets for the web page: small overrides of `nst_jax.configs.default.get_config()`.

They change only per-item loss weights (content, style, TV), so jobs with different presets but the same
size, steps and optimizer still share one compiled, batched step. To use another preset table, replace
`PRESETS` (or point `preset_overrides` at it); nothing else depends on its contents.
"""

from __future__ import annotations

from nst_jax.errors import NstJaxError

PRESETS: dict[str, dict] = {
    # Keeps the photo recognisable: a light touch of the painting's texture.
    "faithful": {"content_weight": 1.0, "style_weight": 1e3, "tv_weight": 1e-3},
    # The library defaults (Gatys et al. 2016 style/content ratio of about 1e4).
    "balanced": {"content_weight": 1.0, "style_weight": 1e4, "tv_weight": 1e-3},
    # Strong brush strokes; more smoothing to keep the result clean.
    "painterly": {"content_weight": 1.0, "style_weight": 1e5, "tv_weight": 1e-2},
}
DEFAULT_PRESET = "balanced"
PRESET_DESCRIPTIONS = {
    "faithful": "Keeps the photo recognisable, a light touch of the painting.",
    "balanced": "An even mix of photo and painting.",
    "painterly": "Strong brush strokes and colours of the painting.",
}


def preset_overrides(name: str) -> dict:
  """The config overrides of preset `name`."""
  if name not in PRESETS:
    raise NstJaxError(f"unknown preset {name!r}; expected one of {tuple(PRESETS)}")
  return dict(PRESETS[name])
