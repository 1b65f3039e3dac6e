"""Rebuild the report pictures of run folders: `progress.png` (snapshot grid) and `losses.png`.

Usage: `nst-jax report DIR [DIR ...]`, each DIR a `--workdir` of the stylize command.

    nst-jax report runs/cat
    python scripts/report.py runs/cat
"""

from __future__ import annotations

from nst_jax import rundir
from nst_jax.commands import common
from nst_jax.errors import NstJaxError


def main(argv):
  folders = list(argv[1:])
  if not folders:
    raise NstJaxError("give the run folder: nst-jax report DIR")
  for folder in folders:
    for path in rundir.write_report(folder):
      print(f"wrote {path}")


def run(argv=None):
  common.run(main, argv)


if __name__ == "__main__":
  run()
