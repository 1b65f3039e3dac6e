"""Stylise a content photo with a style painting: the same program as the `nst-jax` command.

    python scripts/stylize.py --content photo.jpg --style painting.jpg --output out.png
"""

from nst_jax.commands import stylize

if __name__ == "__main__":
  stylize.run()
