"""Preconditioned L-BFGS: equals optax's L-BFGS for M = I and optax's L-BFGS in z for x = A z, M = A A'."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nst_jax import lbfgs

N = 24


def _problem(seed=0):
  """A smooth, strictly convex, non-quadratic f: sum(log cosh(Bx - c)) + 0.05 |x|^2."""
  rng = np.random.default_rng(seed)
  b = jnp.asarray(rng.standard_normal((40, N)), jnp.float32)
  c = jnp.asarray(rng.standard_normal(40), jnp.float32)
  return lambda x: jnp.sum(jnp.log(jnp.cosh(b @ x - c))) + 0.05 * jnp.sum(x * x)


def _linesearch():
  return optax.scale_by_zoom_linesearch(max_linesearch_steps=20, initial_guess_strategy="one")


def _iterates(optimizer, f, x0, steps):
  """Runs `steps` line-searched iterations and returns the iterates (value/grad reused from the state)."""

  @jax.jit
  def step(x, state):
    value, grad = optax.value_and_grad_from_state(f)(x, state=state)
    updates, state = optimizer.update(grad, state, x, value=value, grad=grad, value_fn=f)
    return optax.apply_updates(x, updates), state

  state, xs = optimizer.init(x0), []
  for _ in range(steps):
    x0, state = step(x0, state)
    xs.append(np.asarray(x0))
  return np.stack(xs)


@pytest.mark.parametrize("memory_size", [3, 10])
def test_identity_preconditioner_matches_optax_lbfgs(memory_size):
  f = _problem()
  x0 = jnp.asarray(np.random.default_rng(1).standard_normal(N), jnp.float32)
  ours = _iterates(lbfgs.preconditioned_lbfgs(memory_size=memory_size, linesearch=_linesearch()), f, x0, 12)
  stock = _iterates(optax.lbfgs(memory_size=memory_size, linesearch=_linesearch()), f, x0, 12)
  np.testing.assert_allclose(ours, stock, rtol=1e-4, atol=1e-5)
  values = [float(f(x)) for x in ours]
  assert values[-1] < 0.9 * float(f(x0)) and values[-1] <= min(values) + 1e-4  # It descends.


def test_preconditioner_equals_lbfgs_on_transformed_variables():
  """L-BFGS on x with H0 = gamma * A A' takes the same steps as optax's L-BFGS on z with x = A z."""
  rng = np.random.default_rng(2)
  q, _ = np.linalg.qr(rng.standard_normal((N, N)))
  a = jnp.asarray(q @ np.diag(np.geomspace(0.1, 3.0, N)) @ q.T, jnp.float32)  # Symmetric positive definite.
  m = a @ a.T
  f = _problem(3)
  x0 = jnp.asarray(rng.standard_normal(N), jnp.float32)
  ours = _iterates(lbfgs.preconditioned_lbfgs(memory_size=5, precondition=lambda v: m @ v,
                                              linesearch=_linesearch()), f, x0, 10)
  z0 = jnp.linalg.solve(a, x0)
  in_z = _iterates(optax.lbfgs(memory_size=5, linesearch=_linesearch()), lambda z: f(a @ z), z0, 10)
  np.testing.assert_allclose(ours, np.asarray(in_z @ a.T), rtol=2e-3, atol=2e-4)
  plain = _iterates(optax.lbfgs(memory_size=5, linesearch=_linesearch()), f, x0, 10)
  assert np.abs(ours[2] - plain[2]).max() > 1e-2  # The preconditioner really changed the path.


def test_skips_pairs_without_positive_curvature():
  transform = lbfgs.scale_by_preconditioned_lbfgs(memory_size=4)
  x = jnp.zeros(3)
  state = transform.init(x)
  _, state = transform.update(jnp.array([1.0, 0.0, 0.0]), state, x)
  # A step along +x where the gradient grew in -x: s'y < 0, a concave pair.
  direction, state = transform.update(jnp.array([-1.0, 0.0, 0.0]), state, jnp.array([1.0, 0.0, 0.0]))
  assert float(jnp.sum(state.rho)) == 0.0 and np.all(np.asarray(state.diff_params) == 0)
  assert float(jnp.vdot(direction, jnp.array([-1.0, 0.0, 0.0]))) > 0  # Still a descent direction.


def test_fourier_preconditioner_is_symmetric_positive_and_damps_high_frequencies():
  rng = np.random.default_rng(4)
  precondition = jax.jit(lbfgs.fourier_preconditioner(0.5))
  u, v = (jnp.asarray(rng.standard_normal((12, 17, 3)), jnp.float32) for _ in range(2))
  np.testing.assert_allclose(jnp.vdot(u, precondition(v)), jnp.vdot(v, precondition(u)), rtol=1e-4)
  assert float(jnp.vdot(u, precondition(u))) > 0
  y, x = np.mgrid[0:12, 0:17]
  smooth = jnp.asarray(np.cos(2 * np.pi * x / 17)[..., None] * np.ones(3), jnp.float32)
  checker = jnp.asarray(((-1.0) ** (x + y))[..., None] * np.ones(3), jnp.float32)
  gain = lambda w: float(jnp.vdot(w, precondition(w)) / jnp.vdot(w, w))
  assert gain(smooth) > 3 * gain(checker)
  np.testing.assert_array_equal(lbfgs.fourier_preconditioner(0.0)(u), u)


def test_state_is_a_pytree_of_arrays_that_vmaps():
  transform = lbfgs.scale_by_preconditioned_lbfgs(3, lbfgs.fourier_preconditioner(0.5))
  images = jnp.asarray(np.random.default_rng(5).uniform(size=(2, 8, 6, 3)), jnp.float32)
  states = jax.vmap(transform.init)(images)
  directions, states = jax.vmap(transform.update)(images - 0.5, states, images)
  single, _ = transform.update(images[1] - 0.5, transform.init(images[1]), images[1])
  np.testing.assert_allclose(directions[1], single, rtol=1e-5, atol=1e-7)
  assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(states))
