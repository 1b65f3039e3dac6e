"""L-BFGS with a preconditioned initial inverse Hessian, and a Fourier preconditioner for images.

optax's `scale_by_lbfgs` starts its two-loop recursion from `gamma * I`. Here it starts from `gamma * M`
for a symmetric positive definite operator `M` (Nocedal & Wright, 2006, section 7.2), with
`gamma = s'y / y'My`. That is the same algorithm as optax's L-BFGS run on `z` with `x = A z`, `A A' = M`
(tested), without changing what the optimizer state holds: the image stays the parameter, so checkpoints,
batches and coarse-to-fine runs work as with the stock optimizer.

For style transfer `M` damps high spatial frequencies: `M = F^-1 diag(|f|^-p) F` per channel. The loss is
much stiffer along high frequencies (TV, first VGG layers) than along low ones, so with `gamma * I` the
smooth, large-scale changes move slowly. p = 0.5 cut the iterations to a given loss by 10-20% on the
benchmark pairs (docs/quality-and-speed.md).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

Preconditioner = Callable[[jax.Array], jax.Array]


class PreconditionedLBFGSState(NamedTuple):
  """Memory of the last `memory_size` steps (`diff_params[i]`, `diff_grads[i]`, `rho[i] = 1 / s'y`)."""
  count: jax.Array
  params: jax.Array
  last_grad: jax.Array  # Not named `grad`: optax.value_and_grad_from_state looks that name up in the state.
  diff_params: jax.Array
  diff_grads: jax.Array
  rho: jax.Array
  gamma: jax.Array  # Scale of the initial inverse Hessian; 0 until the first pair.


def identity(v: jax.Array) -> jax.Array:
  return v


def fourier_preconditioner(power: float, *, min_frequency: float = 0.01) -> Preconditioner:
  """`v [H, W, C] -> F^-1(|f|^-power * F(v))`, normalised to mean 1 over frequencies (symmetric, PD).

  `|f|` is the spatial frequency in cycles per pixel, floored at `min_frequency`, so the gain stays finite
  at f = 0. `power = 0` is the identity.
  """
  if power == 0:
    return identity

  def precondition(v: jax.Array) -> jax.Array:
    height, width = v.shape[0], v.shape[1]
    frequency = np.hypot(np.fft.fftfreq(height)[:, None], np.fft.rfftfreq(width)[None, :])
    gain = np.maximum(frequency, min_frequency) ** -float(power)
    gain = (gain / gain.mean()).astype(np.float32).reshape(gain.shape + (1,) * (v.ndim - 2))
    spectrum = jnp.fft.rfft2(v, axes=(0, 1)) * gain
    return jnp.fft.irfft2(spectrum, s=(height, width), axes=(0, 1)).astype(v.dtype)

  return precondition


def scale_by_preconditioned_lbfgs(memory_size: int = 10,
                                  precondition: Preconditioner = identity) -> optax.GradientTransformation:
  """The L-BFGS direction `H_k g` with `H_k^0 = gamma_k * M` (`precondition(v) = M v`), for one array.

  Like optax's `scale_by_lbfgs`, it returns the positive direction (chain `optax.scale(-1)` and a line
  search) and stores a pair only after the step was taken. Pairs with `s'y <= 0` (no positive curvature)
  are skipped, which keeps `H_k` positive definite. The first step is scaled to length 1 in the `M` norm.
  """
  if memory_size < 1:
    raise ValueError(f"memory_size must be >= 1, got {memory_size}")

  def init(params: jax.Array) -> PreconditionedLBFGSState:
    zeros = jnp.zeros_like(params)
    history = jnp.zeros((memory_size,) + params.shape, params.dtype)
    return PreconditionedLBFGSState(count=jnp.zeros([], jnp.int32), params=zeros, last_grad=zeros,
                                    diff_params=history, diff_grads=history,
                                    rho=jnp.zeros([memory_size], params.dtype),
                                    gamma=jnp.zeros([], params.dtype))

  def update(grad, state: PreconditionedLBFGSState, params=None):
    if params is None:
      raise ValueError("scale_by_preconditioned_lbfgs needs the params")
    count = state.count
    s, y = params - state.params, grad - state.last_grad
    sy = jnp.vdot(s, y)
    keep = (count > 0) & (sy > 0)
    # The newest pair goes into the oldest slot; a skipped pair leaves an empty slot (rho = 0: a no-op).
    slot = (count - 1) % memory_size
    diff_params = state.diff_params.at[slot].set(jnp.where(keep, s, 0.0))
    diff_grads = state.diff_grads.at[slot].set(jnp.where(keep, y, 0.0))
    rho = state.rho.at[slot].set(jnp.where(keep, 1.0 / jnp.where(keep, sy, 1.0), 0.0))

    # gamma = s'y / y'My from the newest pair; kept from before when that pair is skipped. The first step
    # has length 1 in the M norm (optax: in the 2-norm; the two agree for M = I).
    y_m_y = jnp.vdot(y, precondition(y))
    gamma = jnp.where(keep & (y_m_y > 0), sy / jnp.where(y_m_y > 0, y_m_y, 1.0), state.gamma)
    m_grad_norm = jnp.sqrt(jnp.maximum(jnp.vdot(grad, precondition(grad)), 1e-30))
    scale = jnp.where(gamma > 0, gamma, jnp.minimum(1.0, 1.0 / m_grad_norm))

    # Two-loop recursion: newest pair first, then oldest first.
    order = (count + jnp.arange(memory_size)) % memory_size  # oldest .. newest once the memory is full

    def newest_first(q, i):
      alpha = rho[i] * jnp.vdot(diff_params[i], q)
      return q - alpha * diff_grads[i], alpha

    q, alphas = jax.lax.scan(newest_first, grad, order, reverse=True)
    r = scale * precondition(q)

    def oldest_first(r, i_alpha):
      i, alpha = i_alpha
      beta = rho[i] * jnp.vdot(diff_grads[i], r)
      return r + (alpha - beta) * diff_params[i], None

    r, _ = jax.lax.scan(oldest_first, r, (order, alphas))
    return r.astype(grad.dtype), PreconditionedLBFGSState(count=count + 1, params=params, last_grad=grad,
                                                          diff_params=diff_params, diff_grads=diff_grads,
                                                          rho=rho, gamma=gamma)

  return optax.GradientTransformation(init, update)


def preconditioned_lbfgs(*, memory_size: int = 10, precondition: Preconditioner = identity,
                         linesearch: optax.GradientTransformationExtraArgs | None = None,
                         ) -> optax.GradientTransformationExtraArgs:
  """`optax.lbfgs` with `scale_by_preconditioned_lbfgs` (use with `optax.value_and_grad_from_state`)."""
  if linesearch is None:
    linesearch = optax.scale_by_zoom_linesearch(max_linesearch_steps=20, initial_guess_strategy="one")
  return optax.chain(scale_by_preconditioned_lbfgs(memory_size, precondition), optax.scale(-1.0), linesearch)
