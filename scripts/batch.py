"""Stylise every row of a manifest CSV in batches: the same program as `nst-jax batch`.

    python scripts/batch.py --manifest pairs.csv --max_size 256 --steps 300
"""

from nst_jax.commands import batch

if __name__ == "__main__":
  batch.run()
