"""One vocabulary: every setting of a run, its one name, its parser and its validation.

A setting has the same name as a `nst-jax` flag, a config field (`configs/default.py`), a manifest column,
a web/API form field and a preset key. Every front end hands what the user gave (typed values, or text from
a CSV cell or a form field) to `resolve`, which is the only place that applies presets and shorthands,
parses, and validates:

    config = settings.resolve({"preset": "quality", "style_weight": "30", "scales": "128,1.414,40"})

Empty values (`None`, `""`) keep the default or the preset's value, so an empty manifest cell or form field
means "not given". An unknown name or a bad value raises `NstJaxError` naming it.

`STATIC` lists the settings compiled into the step program (jobs must agree on them to share a batch);
every other setting is per item: a traced array (loss weights, blend weights), the image shape, the
initial image, or the item's own step budget and stages.

`python -m nst_jax.settings` prints the settings tables of docs/settings.md; `--write` updates them in place.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Mapping

import ml_collections

from nst_jax import color, image_io, losses, optimize, tiles, vgg
from nst_jax.configs import default, presets
from nst_jax.errors import NstJaxError


@dataclasses.dataclass(frozen=True)
class Setting:
  """One setting: its name, value kind (`int`, `float`, `str`, `bool`, `floats`, `names`), help text, and
  its scope: "all" (pictures and videos) or "video" (only `nst-jax video`; image jobs refuse it)."""
  name: str
  kind: str
  help: str
  choices: tuple[str, ...] | None = None
  scope: str = "all"


VIDEO_MODES = ("sequential", "multipass")
FLOW_METHODS = ("dis", "farneback")
MAX_TEMPORAL_OFFSET = 16


def _lr_help() -> str:
  return "learning rate; empty = the optimizer's default (" + ", ".join(
      f"{k} {v:g}" for k, v in optimize.DEFAULT_LR.items()) + ")"


# Defaults sized to the machine (`machine_defaults`): without an accelerator the full look (512 px x 500 Adam
# steps) takes over an hour on 2 CPU cores, so a CPU run defaults to a picture that finishes in about a minute
# there (README's quick start). Settings given explicitly, and presets that set them, win.
MACHINE_DEFAULTS: dict[str, dict[str, int]] = {"cpu": {"max_size": 256, "steps": 100}}


def _machine_help(name: str) -> str:
  return f"; {MACHINE_DEFAULTS['cpu'][name]} without an accelerator (a CPU)"


SETTINGS: tuple[Setting, ...] = (
    Setting("max_size", "int", f"output size: longest side in pixels ({image_io.MIN_SIZE}-{image_io.MAX_SIZE}); "
            "the photo is resized to it" + _machine_help("max_size")),
    Setting("steps", "int", "optimisation steps at the output size (each coarser scale runs scale_steps)"
            + _machine_help("steps")),
    Setting("optimizer", "str", "optax optimizer", optimize.OPTIMIZERS),
    Setting("lr", "float", _lr_help()),
    Setting("adam_b1", "float", "Adam's first-moment decay"),
    Setting("adam_eps", "float", "Adam's epsilon"),
    Setting("sgd_momentum", "float", "SGD momentum (0 = none)"),
    Setting("lbfgs_memory", "int", "L-BFGS history size"),
    Setting("lbfgs_linesearch_steps", "int", "L-BFGS: most function evaluations per line search"),
    Setting("lbfgs_initial_guess", "str", "L-BFGS: first trial step of the line search", ("one", "keep")),
    Setting("lbfgs_precondition", "float", "L-BFGS: damp spatial frequency f by f^-p in the initial inverse "
            "Hessian (0 = optax's stock L-BFGS)"),
    Setting("content_weight", "float", "alpha: weight of the content loss"),
    Setting("style_weight", "float", "beta: weight of the style loss"),
    Setting("tv_weight", "float", "theta: weight of the total-variation loss"),
    Setting("outside_content_weight", "float", "with style regions: content weight multiplier where no region "
            "covers the photo; those pixels stay the photo anyway, this keeps its features at a region's edge "
            "(docs/spatial-control.md)"),
    Setting("tv_kind", "str", "total variation: squared (l2) or absolute (l1) neighbour differences",
            losses.TV_KINDS),
    Setting("loss_normalization", "str", "how each loss term is scaled: Gatys et al.'s formulas, the TensorFlow "
            "tutorial's means (the report's), or each term relative to its target (the same weights mean the "
            "same for every painting, size and VGG)", losses.NORMALIZATIONS),
    Setting("content_layers", "names", "VGG19 layers of the content loss"),
    Setting("style_layers", "names", "VGG19 layers of the style loss"),
    Setting("style_layer_weights", "floats", "weight per style layer; empty = equal (1/L)"),
    Setting("pooling", "str", "VGG19 pooling", vgg.POOLING_KINDS),
    Setting("tile", "bool", "seamless tile: circular padding in every VGG conv and a wrap-around TV term, so "
            "the output repeats without a seam"),
    Setting("tile_preview", "int", f"also write an N x N mosaic of the result next to each output "
            f"(<output>.tileNxN.png; 0 = none, at most {tiles.MAX_PREVIEW})"),
    Setting("remat", "bool", "recompute VGG block activations in the backward pass (jax.checkpoint)"),
    Setting("remat_above_pixels", "int", "turn remat on for scales with more pixels than this (0 = never)"),
    Setting("scale_start", "int", "coarse-to-fine: longest side of the first scale (0 = one scale)"),
    Setting("scale_factor", "float", "coarse-to-fine: size ratio between scales (> 1)"),
    Setting("scale_steps", "int", "coarse-to-fine: steps at each coarser scale"),
    Setting("preserve_colors", "str", "keep the photo's colours: style on luminance only (luminance), or the "
            "painting recoloured to the photo's colour statistics (histogram)", color.PRESERVE_COLORS),
    Setting("style_scale", "float", "style image's longest side relative to the output's (larger = larger "
            "brush strokes)"),
    Setting("style_blend_weights", "floats", "weight per style image (blends several paintings; normalised; "
                                             "empty = equal)"),
    Setting("init", "str", "starting image: the photo, the photo with the painting's colours, noise, the "
            "painting, or noise with the painting's colour statistics", optimize.INIT_KINDS),
    Setting("seed", "int", "random seed (noise inits)"),
    Setting("log_every", "int", "evaluate and log the losses every N steps"),
    Setting("temporal_weight", "float", "video: weight of the temporal loss pulling a frame towards the earlier "
            "outputs warped by the optical flow", scope="video"),
    Setting("video_mode", "str", "video: frame by frame, or all frames of a pass in one batch with passes "
            "alternating direction (steps split over the passes)", VIDEO_MODES, scope="video"),
    Setting("temporal_frames", "str", "video: earlier frames each frame is pulled towards, e.g. 1,2,4 (t-1, "
            "t-2, t-4; nearer frames take precedence)", scope="video"),
    Setting("passes", "int", "video, multipass: number of passes over the clip", scope="video"),
    Setting("flow_method", "str", "video: optical flow (OpenCV)", FLOW_METHODS, scope="video"),
    Setting("start", "float", "video: seconds of the clip skipped before the part stylised", scope="video"),
    Setting("duration", "float", "video: seconds stylised from `start`; empty = to the end (or `frames`)",
            scope="video"),
    Setting("frames", "int", "video: frames stylised from `start`; empty = to the end (or `duration`)",
            scope="video"),
    Setting("fps", "float", "video: frame rate of a folder of frames (empty = 25); a video file has its own",
            scope="video"),
)
BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
VIDEO_ONLY: tuple[str, ...] = tuple(s.name for s in SETTINGS if s.scope == "video")
NAMES: tuple[str, ...] = tuple(BY_NAME)

# Compiled into the step program: jobs share a batch only when these agree (and the image shape).
STATIC = ("optimizer", "lr", "adam_b1", "adam_eps", "sgd_momentum", "lbfgs_memory", "lbfgs_linesearch_steps",
          "lbfgs_initial_guess", "lbfgs_precondition", "tv_kind", "loss_normalization", "content_layers",
          "style_layers", "style_layer_weights", "pooling", "tile")

# Inputs that are not settings but that every front end may give next to them.
SHORTHANDS = {
    "preset": "named settings (" + ", ".join(presets.ALL_PRESETS) + "); given settings override it",
    "scales": "coarse-to-fine in one value START,FACTOR,STEPS = scale_start,scale_factor,scale_steps",
    "epochs": "the report's budget: steps = epochs x steps_per_epoch (with steps_per_epoch)",
    "steps_per_epoch": "steps per epoch (with epochs)",
}


def _empty(value: Any) -> bool:
  return value is None or (isinstance(value, str) and value.strip() == "") or (
      isinstance(value, (list, tuple)) and len(value) == 0)


def _unknown(name: str) -> NstJaxError:
  close = difflib.get_close_matches(name, NAMES + tuple(SHORTHANDS), n=1)
  hint = f"; did you mean {close[0]!r}?" if close else " (see docs/settings.md)"
  return NstJaxError(f"unknown setting {name!r}{hint}")


def video_only_error(name: str, *, flag: bool = False) -> NstJaxError:
  """The error for a video setting (`VIDEO_ONLY`) given to a picture: by name, or as the flag `--NAME`."""
  shown = f"--{name}" if flag else name
  return NstJaxError(f"{shown} is a setting of `nst-jax video`, not of a picture (docs/video.md)")


def _split(value: Any) -> list:
  if isinstance(value, str):
    return [v.strip() for v in value.replace(";", ",").split(",") if v.strip()]
  return list(value)


def _number(name: str, value: Any, kind: type):
  try:
    if isinstance(value, bool):
      raise ValueError
    number = float(value)
    if kind is int:
      if not number.is_integer():
        raise ValueError
      return int(number)
    return number
  except (TypeError, ValueError, OverflowError):
    what = "an integer" if kind is int else "a number"
    raise NstJaxError(f"{name} must be {what}, got {value!r}") from None


def parse(name: str, value: Any) -> Any:
  """`value` (typed, or text from a flag, CSV cell or form field) as setting `name`'s type."""
  setting = BY_NAME.get(name)
  if setting is None:
    raise _unknown(name)
  kind = setting.kind
  if kind == "int":
    return _number(name, value, int)
  if kind == "float":
    return _number(name, value, float)
  if kind == "bool":
    if isinstance(value, bool):
      return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
      return True
    if text in ("0", "false", "no", "off"):
      return False
    raise NstJaxError(f"{name} must be true or false, got {value!r}")
  if kind == "floats":
    return tuple(_number(name, v, float) for v in _split(value))
  if kind == "names":
    return tuple(str(v) for v in _split(value))
  value = str(value).strip()
  if setting.choices is not None and value not in setting.choices:
    raise NstJaxError(f"unknown {name} {value!r}; expected one of {', '.join(setting.choices)}")
  return value


def _scales(value: Any) -> dict:
  """`scales` START,FACTOR,STEPS -> `scale_start`, `scale_factor`, `scale_steps`."""
  parts = _split(value)
  message = f"scales takes START,FACTOR,STEPS (e.g. 128,1.414,40), got {value!r}"
  if len(parts) != 3:
    raise NstJaxError(message)
  try:
    start, factor, steps = _number("scales", parts[0], int), float(parts[1]), _number("scales", parts[2], int)
  except (NstJaxError, ValueError):
    raise NstJaxError(message) from None
  if start < 0 or steps < 0 or not factor > 1.0:
    raise NstJaxError(f"{message}: START and STEPS must be >= 0 and FACTOR > 1")
  return {"scale_start": start, "scale_factor": factor, "scale_steps": steps}


def machine_defaults(backend: str | None = None) -> dict[str, int]:
  """The defaults of this machine that differ from `configs/default.py`: `MACHINE_DEFAULTS[backend]` (the
  default JAX backend when None; initialises it), e.g. `{"max_size": 256, "steps": 100}` on a CPU, `{}` on
  a GPU or TPU."""
  if backend is None:
    import jax
    backend = jax.default_backend()
  return dict(MACHINE_DEFAULTS.get(backend, {}))


def machine_note(values: Mapping[str, Any] | None, config: ml_collections.ConfigDict) -> str | None:
  """A `note:` for the front ends when the machine's defaults sized the run (None when they did not)."""
  given = {k for k, v in dict(values or {}).items() if not _empty(v)}
  preset = presets.get_preset(str(dict(values or {})["preset"]).strip()) if "preset" in given else {}
  full = default.get_config()
  given |= {"steps"} if "epochs" in given else set()
  sized = [name for name in ("max_size", "steps") if name not in given and name not in preset
           and config[name] != full[name]]
  if not sized:
    return None
  now = ", ".join(f"{name} {config[name]}" for name in sized)
  look = " ".join(f"--{name} {full[name]}" for name in sized)
  return (f"no accelerator: {now} (defaults sized to finish in about a minute on a CPU; {look} for the full "
          f"look, the default on a GPU)")


def resolve(values: Mapping[str, Any] | None = None, *, num_styles: int | None = None,
            base: ml_collections.ConfigDict | None = None, scope: str = "image",
            machine: Mapping[str, Any] | None = None) -> ml_collections.ConfigDict:
  """The validated config of a run: defaults (or `base`), then the preset, then the given settings.

  The defaults are `configs/default.py`'s with this machine's (`machine_defaults`: a CPU gets a smaller size
  and fewer steps) on top, unless `base` is given.

  Args:
    values: setting name -> value (typed or text), plus the `SHORTHANDS` (preset, scales, epochs,
      steps_per_epoch). Empty values are skipped. Settings given here win over the preset.
    num_styles: the number of style images, to check `style_blend_weights` against (None: not checked).
    base: the config to start from (e.g. a batch's defaults); `default.get_config()` when None.
    scope: "image" (a picture: video-only settings are refused) or "video" (`nst-jax video`).
    machine: the machine's defaults to use instead of `machine_defaults()` (e.g. `{}`: the full look, or the
      values a `--workdir` run recorded, so that its resume resolves the same way on any machine).

  Raises:
    NstJaxError: an unknown name, a value of the wrong type, or an invalid combination, naming it.
  """
  given = {k: v for k, v in dict(values or {}).items() if not _empty(v)}
  for name in given:
    if name not in BY_NAME and name not in SHORTHANDS:
      raise _unknown(name)
    if name in BY_NAME and BY_NAME[name].scope == "video" and scope != "video":
      raise video_only_error(name)
  explicit = {name: parse(name, value) for name, value in given.items() if name in BY_NAME}
  if "scales" in given:
    both = {"scale_start", "scale_factor", "scale_steps"} & set(explicit)
    if both:
      raise NstJaxError(f"give either scales or {', '.join(sorted(both))}, not both")
    explicit.update(_scales(given["scales"]))
  if ("epochs" in given) != ("steps_per_epoch" in given):
    raise NstJaxError("epochs and steps_per_epoch go together")
  if "epochs" in given:
    epochs, per_epoch = _number("epochs", given["epochs"], int), _number("steps_per_epoch",
                                                                          given["steps_per_epoch"], int)
    if epochs < 0 or per_epoch < 0:
      raise NstJaxError("epochs and steps_per_epoch must be >= 0")
    if "steps" in explicit:
      raise NstJaxError("give either steps or epochs x steps_per_epoch, not both")
    explicit["steps"] = epochs * per_epoch
  config = ml_collections.ConfigDict((base or default.get_config()).to_dict())
  if base is None:
    config.update(machine_defaults() if machine is None else dict(machine))
  if "preset" in given:
    presets.apply_preset(config, str(given["preset"]).strip(), keep=tuple(explicit))
  look = presets.current_look(config)
  for name, value in explicit.items():
    config[name] = value
  presets.retarget_look(config, look, keep=tuple(explicit))  # A look's weights under the chosen normalisation.
  validate(config, num_styles)
  return config


def validate(config: ml_collections.ConfigDict, num_styles: int | None = None) -> None:
  """Raises NstJaxError naming the first bad setting of `config` (every check of every setting)."""
  optimize.validate_config(config)
  if int(config.log_every) < 1:
    raise NstJaxError(f"log_every must be >= 1, got {config.log_every}")
  if config.preserve_colors not in color.PRESERVE_COLORS:
    raise NstJaxError(f"unknown preserve_colors {config.preserve_colors!r}; expected one of "
                      f"{', '.join(color.PRESERVE_COLORS)}")
  if int(config.scale_start) < 0 or int(config.scale_steps) < 0:
    raise NstJaxError("scale_start and scale_steps must be >= 0")
  if int(config.scale_start) > 0 and not float(config.scale_factor) > 1.0:
    raise NstJaxError(f"scale_factor must be > 1, got {config.scale_factor}")
  tiles.check_preview(config.tile_preview)
  if int(config.remat_above_pixels) < 0:
    raise NstJaxError(f"remat_above_pixels must be >= 0, got {config.remat_above_pixels}")
  if not float(config.outside_content_weight) >= 0 or not float(config.outside_content_weight) < float("inf"):
    raise NstJaxError(f"outside_content_weight must be >= 0, got {config.outside_content_weight}")
  if not float(config.style_scale) > 0:
    raise NstJaxError(f"style_scale must be positive, got {config.style_scale}")
  if float(config.style_scale) * int(config.max_size) > image_io.MAX_SIZE:
    raise NstJaxError(f"style_scale {config.style_scale:g} x max_size {config.max_size} is over the "
                      f"{image_io.MAX_SIZE} px limit for the style image")
  temporal_offsets(config)
  _positive_setting(config, "temporal_weight")
  if config.video_mode not in VIDEO_MODES:
    raise NstJaxError(f"unknown video_mode {config.video_mode!r}; expected one of {', '.join(VIDEO_MODES)}")
  if config.flow_method not in FLOW_METHODS:
    raise NstJaxError(f"unknown flow_method {config.flow_method!r}; expected one of {', '.join(FLOW_METHODS)}")
  if not 1 <= int(config.passes) <= 100:
    raise NstJaxError(f"passes must be 1-100, got {config.passes}")
  _check_selection(config)
  blend = config.style_blend_weights
  if blend is not None:
    if any(not w >= 0 for w in blend) or sum(blend) <= 0:
      raise NstJaxError(f"style_blend_weights must be >= 0 and not all 0, got {list(blend)}")
    if num_styles is not None and len(blend) != num_styles:
      raise NstJaxError(f"{len(blend)} style_blend_weights for {num_styles} style image(s)")


def _check_selection(config: ml_collections.ConfigDict) -> None:
  """The part of a clip (start, duration, frames) and a folder's fps: one line for a bad value."""
  if not 0 <= float(config.start) < float("inf"):
    raise NstJaxError(f"start must be >= 0 seconds, got {config.start}")
  if config.duration is not None and config.frames is not None:
    raise NstJaxError("give either duration or frames, not both")
  if config.duration is not None and not 0 < float(config.duration) < float("inf"):
    raise NstJaxError(f"duration must be > 0 seconds, got {config.duration}")
  if config.frames is not None and int(config.frames) < 1:
    raise NstJaxError(f"frames must be >= 1, got {config.frames}")
  if config.fps is not None and not 0 < float(config.fps) <= 1000:
    raise NstJaxError(f"fps must be between 0 and 1000 frames per second, got {config.fps}")


def _positive_setting(config: ml_collections.ConfigDict, name: str) -> None:
  value = float(config[name])
  if not value >= 0 or value == float("inf"):
    raise NstJaxError(f"{name} must be non-negative, got {config[name]}")


def temporal_offsets(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """`temporal_frames` "1,2,4" -> (1, 2, 4): distinct frame offsets 1-16, nearest first."""
  text = str(config.temporal_frames)
  message = f"temporal_frames takes frame offsets like 1,2,4 (1-{MAX_TEMPORAL_OFFSET}), got {text!r}"
  try:
    offsets = tuple(sorted({int(v) for v in _split(text)}))
  except ValueError:
    raise NstJaxError(message) from None
  if not offsets or offsets[0] < 1 or offsets[-1] > MAX_TEMPORAL_OFFSET:
    raise NstJaxError(message)
  return offsets


def given_settings(config: ml_collections.ConfigDict) -> dict:
  """The settings of `config` that differ from the defaults (what a job record or a log needs to show)."""
  defaults = default.get_config()
  return {name: config[name] for name in NAMES if config[name] != defaults[name]}


def static_key(config: ml_collections.ConfigDict) -> tuple:
  """The `STATIC` settings as a hashable key."""
  return tuple((name, config[name]) for name in STATIC)


# ---- the documentation table -------------------------------------------------------------------------------


def _show(value: Any) -> str:
  if value is None:
    return "(empty)"
  if isinstance(value, (tuple, list)):
    return ",".join(str(v) for v in value) or "(empty)"
  if isinstance(value, float):
    return f"{value:g}"
  return str(value)


def markdown_table() -> str:
  """docs/settings.md's table: name, default, meaning (with choices), presets that change it."""
  defaults = default.get_config()
  lines = ["| setting | default | meaning | changed by presets | compiled |", "|---|---|---|---|---|"]
  for s in SETTINGS:
    choices = " \\| ".join(s.choices or ())
    meaning = s.help + (f" ({choices})" if choices else "")
    changed = [f"{p} ({_show(presets.get_preset(p)[s.name])})" for p in presets.ALL_PRESETS
               if s.name in presets.get_preset(p) and presets.get_preset(p)[s.name] != defaults[s.name]]
    compiled = "yes" if s.name in STATIC else "-"
    meaning += " (`nst-jax video` only)" if s.scope == "video" else ""
    lines.append(f"| `{s.name}` | {_show(defaults[s.name])} | {meaning} | {', '.join(changed) or '-'} | {compiled} |")
  lines += ["", "| shorthand | meaning |", "|---|---|"]
  lines += [f"| `{name}` | {text} |" for name, text in SHORTHANDS.items()]
  return "\n".join(lines)


def update_docs(path: str) -> None:
  """Replaces the generated tables in `path` (docs/settings.md) by `markdown_table()`, keeping the text around
  them (the page's other tables and prose are written by hand)."""
  with open(path, encoding="utf-8") as f:
    lines = f.read().split("\n")
  start = next(i for i, line in enumerate(lines) if line.startswith("| setting | default |"))
  end = start
  while True:  # The settings table, then the shorthands' table after a blank line (every copy of it).
    while end < len(lines) and lines[end].startswith("|"):
      end += 1
    if not (end + 1 < len(lines) and lines[end] == "" and lines[end + 1].startswith("| shorthand")):
      break
    end += 1
  text = "\n".join(lines[:start] + markdown_table().rstrip("\n").split("\n") + lines[end:])
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)


if __name__ == "__main__":
  import sys
  if sys.argv[1:2] == ["--write"]:  # python -m nst_jax.settings --write docs/settings.md
    update_docs(sys.argv[2] if len(sys.argv) > 2 else "docs/settings.md")
  else:
    print(markdown_table())
