"""Re-run the report's experiments (combinations, optimizers, ratios, presets): `nst-jax experiments`.

    python scripts/experiments.py --out_dir runs/report --max_size 256 --steps 300
    python scripts/experiments.py --experiment optimizers --out_dir runs/opt --steps 200
"""

from nst_jax.commands import experiments

if __name__ == "__main__":
  experiments.run()
