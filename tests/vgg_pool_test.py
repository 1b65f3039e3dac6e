"""Tests for vgg.max_pool_2x2: the memory-lean max pooling gives flax's values and gradients exactly."""

import jax
import numpy as np
import pytest

from nst_jax import vgg


@pytest.mark.parametrize("shape", [(2, 8, 10, 3), (1, 7, 9, 4)])
def test_max_pool_2x2_matches_flax_values_and_gradients(shape):
  from flax import linen as nn
  x = jax.random.normal(jax.random.key(0), shape)
  x = x.at[0, 0, 0, 0].set(x[0, 0, 1, 0])  # A tie: the gradient goes to the first element, as in XLA.
  g = jax.random.normal(jax.random.key(1), (shape[0], shape[1] // 2, shape[2] // 2, shape[3]))
  y_ref, vjp_ref = jax.vjp(lambda x: nn.max_pool(x, (2, 2), strides=(2, 2)), x)
  y, vjp = jax.vjp(vgg.max_pool_2x2, x)
  np.testing.assert_array_equal(y, y_ref)
  np.testing.assert_array_equal(vjp(g)[0], vjp_ref(g)[0])
