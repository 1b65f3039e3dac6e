"""`nst-jax`: stylise by default; `nst-jax COMMAND ...` runs a sub-command; `nst-jax help` lists them."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys

# Sub-command name -> module with a `run(argv)` function.
SUBCOMMANDS = {
    "stylize": "nst_jax.commands.stylize",
    "video": "nst_jax.commands.video",
    "batch": "nst_jax.commands.batch",
    "experiments": "nst_jax.commands.experiments",
    "serve": "nst_jax.commands.serve",
    "train_fast": "nst_jax.commands.train_fast",
    "fast": "nst_jax.commands.fast",
    "report": "nst_jax.commands.report",
    "convert_weights": "nst_jax.commands.convert_weights",
    "normalize_vgg": "nst_jax.commands.normalize_vgg",
}
_HELP = ("help", "--help", "-h", "-help", "--helpshort", "-?")


def summary(module: str) -> str:
  """The first line of a command module's docstring, read without importing it (no flags defined)."""
  spec = importlib.util.find_spec(module)
  with open(spec.origin, encoding="utf-8") as f:
    doc = ast.get_docstring(ast.parse(f.read())) or ""
  return doc.strip().splitlines()[0] if doc.strip() else ""


def commands_help() -> str:
  lines = ["usage: nst-jax [COMMAND] [--flag=value ...]", "",
           "Neural style transfer (Gatys et al. 2016) in JAX. Without COMMAND, nst-jax stylizes one picture:",
           "    nst-jax --content photo.jpg --style painting.jpg --output out.png", "", "commands:"]
  lines += [f"  {name:<16} {summary(module)}" for name, module in SUBCOMMANDS.items()]
  lines += ["", "`nst-jax COMMAND --help` lists a command's flags; every setting has the same name as a flag, a",
            "manifest column and a web API field (docs/settings.md)."]
  return "\n".join(lines)


def run() -> None:
  argv = list(sys.argv)
  if len(argv) > 1 and argv[1] in SUBCOMMANDS:
    module = importlib.import_module(SUBCOMMANDS[argv[1]])
    module.run([f"{argv[0]} {argv[1]}"] + argv[2:])
  elif len(argv) == 2 and argv[1] == "help" or len(argv) == 1:
    print(commands_help())
  elif len(argv) == 3 and argv[1] == "help" and argv[2] in SUBCOMMANDS:
    importlib.import_module(SUBCOMMANDS[argv[2]]).run([f"{argv[0]} {argv[2]}", "--help"])
  elif len(argv) > 1 and not argv[1].startswith("-"):
    print(f"error: unknown command {argv[1]!r}; commands: {', '.join(SUBCOMMANDS)} (nst-jax help)",
          file=sys.stderr)
    sys.exit(2)
  else:
    if any(arg in _HELP for arg in argv[1:]):
      print(commands_help() + "\n\nflags of the default command (stylize):\n")
    importlib.import_module(SUBCOMMANDS["stylize"]).run(argv)


if __name__ == "__main__":
  run()
