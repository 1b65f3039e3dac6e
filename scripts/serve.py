"""Serve the nst-jax web app: the same program as `nst-jax serve`.

    python scripts/serve.py --port 8080 --data_dir nst-jax-data
"""

from nst_jax.commands import serve

if __name__ == "__main__":
  serve.run()
