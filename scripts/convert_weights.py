"""Convert VGG19 weights to nst-jax's .npz format: the same program as `nst-jax convert_weights`."""

from nst_jax.commands import convert_weights

if __name__ == "__main__":
  convert_weights.run()
