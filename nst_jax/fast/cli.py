"""Flags shared by `nst-jax train_fast` and `nst-jax fast`: a subset of the settings, with their one name.

Each command defines flags only for the settings that mean something to it (the rest are unknown flags);
their help text, parsing and validation are `nst_jax.settings`'s, so a setting reads the same everywhere.
"""

from __future__ import annotations

from typing import Sequence

from absl import flags

from nst_jax import settings
from nst_jax.configs import default

FLAGS = flags.FLAGS
_DEFINE = {"int": flags.DEFINE_integer, "float": flags.DEFINE_float, "str": flags.DEFINE_string,
           "bool": flags.DEFINE_boolean, "floats": flags.DEFINE_list, "names": flags.DEFINE_list}


def define_setting_flags(names: Sequence[str], module: str) -> None:
  """One flag per setting in `names` (empty by default: the config's default or the preset's value), listed
  under the command module `module` (its `--help`)."""
  config = default.get_config()
  for name in names:
    setting = settings.BY_NAME[name]
    choices = f" ({' | '.join(setting.choices)})" if setting.choices else ""
    value = config[name]
    shown = "(empty)" if value is None else ",".join(map(str, value)) if isinstance(value, tuple) else value
    _DEFINE[setting.kind](name, None, f"{setting.help[0].upper()}{setting.help[1:]}{choices}. Default: {shown}.",
                          module_name=module)


def given_settings(names: Sequence[str]) -> dict:
  """The settings (and `preset`) among `names` given on the command line."""
  return {name: FLAGS[name].value for name in names if name in FLAGS and FLAGS[name].present}
