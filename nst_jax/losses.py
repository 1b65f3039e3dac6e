"""Neural style transfer losses (Gatys, Ecker & Bethge 2016), pure functions on one image.

Batching is done with `jax.vmap` by the caller, never by hand here.

References:
  L. A. Gatys, A. S. Ecker, M. Bethge. Image Style Transfer Using Convolutional Neural Networks. CVPR 2016.
  M. Ruder, A. Dosovitskiy, T. Brox. Artistic Style Transfer for Videos. GCPR 2016 (temporal loss).
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

TV_KINDS = ("l2", "l1")


def _check_features(features: jax.Array, name: str) -> None:
  if features.ndim != 3:
    raise ValueError(f"{name} must be one feature map [H, W, C], got shape {features.shape}")


def gram_matrix(features: jax.Array) -> jax.Array:
  """Unnormalised Gram matrix `G = F^T F` of `[H, W, N]` features reshaped to `F: [M, N]`, M = H*W.

  Returns:
    `[N, N]`.
  """
  _check_features(features, "features")
  flat = features.reshape(-1, features.shape[-1])  # [M, N]
  return jnp.einsum("mi,mj->ij", flat, flat, precision=jax.lax.Precision.HIGHEST)


def content_loss(*, features: jax.Array, target: jax.Array) -> jax.Array:
  """`0.5 * sum((F - P)^2)` for generated features F and content features P, both `[H, W, C]`."""
  _check_features(features, "features")
  if features.shape != target.shape:
    raise ValueError(f"content features {features.shape} and target {target.shape} differ in shape")
  return 0.5 * jnp.sum(jnp.square(features - target))


def style_layer_loss(*, features: jax.Array, target_gram: jax.Array) -> jax.Array:
  """`E_l = sum((G - A)^2) / (4 N^2 M^2)`: generated features `[H, W, N]` vs the style Gram `A: [N, N]`."""
  _check_features(features, "features")
  num_positions = features.shape[0] * features.shape[1]  # M
  num_channels = features.shape[2]  # N
  if target_gram.shape != (num_channels, num_channels):
    raise ValueError(f"target Gram {target_gram.shape} does not fit features with {num_channels} channels")
  gram = gram_matrix(features)
  return jnp.sum(jnp.square(gram - target_gram)) / (4.0 * num_channels**2 * num_positions**2)


def style_loss(*, features: Mapping[str, jax.Array], target_grams: Mapping[str, jax.Array],
               layer_weights: Mapping[str, float | jax.Array]) -> jax.Array:
  """`sum_l w_l E_l` over the style layers named in `layer_weights`."""
  return sum(layer_weights[name] * style_layer_loss(features=features[name], target_gram=target_grams[name])
             for name in layer_weights)


def total_variation_loss(image: jax.Array, *, kind: str = "l2") -> jax.Array:
  """Total variation of an `[H, W, C]` image over horizontally and vertically adjacent pixels.

  kind='l2': sum of squared differences (our reference report's formula); kind='l1': sum of absolute
  differences (as `tf.image.total_variation`, used by the TensorFlow style-transfer tutorial).
  """
  _check_features(image, "image")
  dy = image[1:, :, :] - image[:-1, :, :]
  dx = image[:, 1:, :] - image[:, :-1, :]
  if kind == "l2":
    return jnp.sum(jnp.square(dy)) + jnp.sum(jnp.square(dx))
  if kind == "l1":
    return jnp.sum(jnp.abs(dy)) + jnp.sum(jnp.abs(dx))
  raise ValueError(f"unknown total-variation kind {kind!r}; expected one of {TV_KINDS}")


def closest_first(masks: jax.typing.ArrayLike) -> jax.Array:
  """Long-term masks made disjoint, nearer frames first: `c_k = max(c_k - sum_{j<k} c_j, 0)`.

  `masks` `[K, H, W]` are ordered nearest earlier frame first; a pixel reliable in a nearer frame is then
  not pulled again towards a farther one (Ruder et al. 2016, eq. 8; artistic-videos' closestFirst).
  """
  masks = jnp.asarray(masks)
  nearer = jnp.cumsum(masks, axis=0) - masks  # [K, H, W]: sum over the nearer frames.
  return jnp.maximum(masks - nearer, 0.0)


def temporal_loss(*, image: jax.Array, warped: jax.Array, masks: jax.Array) -> jax.Array:
  """`sum_k sum(c_k * (x - w_k)^2) / D`, D = H * W * 3 (Ruder et al. 2016, eq. 7 and 9).

  Args:
    image: the frame being optimised, x `[H, W, 3]`.
    warped: earlier outputs warped into this frame by the optical flow, w_k `[K, H, W, 3]`.
    masks: per-pixel weights c_k `[K, H, W]` in [0, 1] (0 where the flow is unreliable; disjoint over k,
      see `closest_first`).
  """
  _check_features(image, "image")
  if warped.shape[1:] != image.shape or masks.shape != warped.shape[:3]:
    raise ValueError(f"temporal targets {warped.shape} / masks {masks.shape} do not fit image {image.shape}")
  return jnp.sum(masks[..., None] * jnp.square(image[None] - warped)) / image.size


def total_loss(*, content: jax.Array, style: jax.Array, tv: jax.Array, content_weight: jax.Array,
               style_weight: jax.Array, tv_weight: jax.Array) -> jax.Array:
  """`alpha * content + beta * style + theta * tv`."""
  return content_weight * content + style_weight * style + tv_weight * tv
