"""Rebuild progress.png and losses.png of a run folder: the same program as `nst-jax report`.

    python scripts/report.py runs/cat
"""

from nst_jax.commands import report

if __name__ == "__main__":
  report.run()
