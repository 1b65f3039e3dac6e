"""`nst-jax`: stylise by default; `nst-jax COMMAND ...` runs a sub-command."""

from __future__ import annotations

import importlib
import sys

# Sub-command name -> module with a `run(argv)` function.
SUBCOMMANDS = {
    "stylize": "nst_jax.commands.stylize",
    "convert_weights": "nst_jax.commands.convert_weights",
    "report": "nst_jax.commands.report",
    "serve": "nst_jax.commands.serve",
    "batch": "nst_jax.commands.batch",
    "experiments": "nst_jax.commands.experiments",
    "normalize_vgg": "nst_jax.commands.normalize_vgg",
}


def run() -> None:
  argv = list(sys.argv)
  if len(argv) > 1 and argv[1] in SUBCOMMANDS:
    module = importlib.import_module(SUBCOMMANDS[argv[1]])
    module.run([f"{argv[0]} {argv[1]}"] + argv[2:])
  else:
    importlib.import_module(SUBCOMMANDS["stylize"]).run(argv)


if __name__ == "__main__":
  run()
