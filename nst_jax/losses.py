"""Neural style transfer losses (Gatys, Ecker & Bethge 2016), pure functions on one image.

Batching is done with `jax.vmap` by the caller, never by hand here.

Spatial control (guided Gram matrices, Gatys et al. 2017): a region mask `[H, W]` in [0, 1] is brought to
a layer's resolution by `downsample_mask` (2x2 average pooling once per VGG pooling before the layer, odd
edges dropped as the network's pooling drops them), and `guided_gram_matrix` weights each position by it.

References:
  L. A. Gatys, A. S. Ecker, M. Bethge. Image Style Transfer Using Convolutional Neural Networks. CVPR 2016.
  L. A. Gatys, A. S. Ecker, M. Bethge, A. Hertzmann, E. Shechtman. Controlling Perceptual Factors in Neural
  Style Transfer. CVPR 2017.
"""

from __future__ import annotations

import re
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


def _check_mask(mask: jax.Array, features: jax.Array) -> None:
  if mask.shape != features.shape[:2]:
    raise ValueError(f"mask {mask.shape} does not fit features {features.shape} (expected [H, W])")


def mask_area(mask: jax.Array) -> jax.Array:
  """`sum(mask)`, kept away from 0 so that a region that vanished at a coarse layer gives a zero term."""
  return jnp.maximum(jnp.sum(mask), 1e-12)


def guided_gram_matrix(features: jax.Array, mask: jax.Array) -> jax.Array:
  """Guided Gram matrix `F^T diag(m) F * M / sum(m)` of `[H, W, N]` features under a mask `m: [H, W]`.

  Each position's outer product is weighted by the mask (soft edges allowed) and the sum is normalised by
  the mask's area instead of the number of positions M = H*W, then scaled to M positions: the result is on
  the scale of `gram_matrix` (an all-ones mask gives exactly `gram_matrix(features)`), so a region's Gram
  compares with a target Gram from any other region or image size.

  Returns:
    `[N, N]`.
  """
  _check_features(features, "features")
  _check_mask(mask, features)
  flat = features.reshape(-1, features.shape[-1])  # [M, N]
  weighted = flat * mask.reshape(-1, 1)  # [M, N]
  gram = jnp.einsum("mi,mj->ij", weighted, flat, precision=jax.lax.Precision.HIGHEST)
  return gram * (flat.shape[0] / mask_area(mask))


def downsample_mask(mask: jax.typing.ArrayLike, layer: str) -> jax.Array:
  """A mask `[H, W]` at the image's resolution -> `[h, w]` at VGG19 layer `layer`'s resolution.

  2x2 stride-2 average pooling once per pooling layer before `layer` (none for block 1, four for block 5),
  dropping an odd last row or column as the network's pooling does, so the shapes match the features.
  Average pooling keeps soft edges and a mask's mean.
  """
  mask = jnp.asarray(mask)
  if mask.ndim != 2:
    raise ValueError(f"mask must be [H, W], got shape {mask.shape}")
  match = re.fullmatch(r"(?:conv|relu|pool)(\d)(?:_\d)?", layer)
  if match is None:
    raise ValueError(f"unknown VGG19 layer {layer!r}")
  pools = int(match.group(1)) - (0 if layer.startswith("pool") else 1)
  for _ in range(pools):
    h, w = mask.shape[0] // 2, mask.shape[1] // 2
    mask = mask[:2 * h, :2 * w].reshape(h, 2, w, 2).mean(axis=(1, 3))
  return mask


def content_loss(*, features: jax.Array, target: jax.Array, weight: jax.Array | None = None) -> jax.Array:
  """`0.5 * sum(W * (F - P)^2)` for generated features F and content features P, both `[H, W, C]`.

  `weight`: an optional per-position weight map `[H, W]` at the layer's resolution (None = 1 everywhere).
  """
  _check_features(features, "features")
  if features.shape != target.shape:
    raise ValueError(f"content features {features.shape} and target {target.shape} differ in shape")
  if weight is None:
    return 0.5 * jnp.sum(jnp.square(features - target))
  _check_mask(weight, features)
  return 0.5 * jnp.sum(weight[:, :, None] * jnp.square(features - target))


def style_layer_loss(*, features: jax.Array, target_gram: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """`E_l = sum((G - A)^2) / (4 N^2 M^2)`: generated features `[H, W, N]` vs the style Gram `A: [N, N]`.

  With a region `mask` `[H, W]` (at the layer's resolution), G is the guided Gram matrix over the region and
  the term is weighted by the region's share of the positions, `sum(mask) / M`: each pixel of a region then
  feels the same style pressure as without regions, and an all-ones mask gives the plain `E_l`.
  """
  _check_features(features, "features")
  num_positions = features.shape[0] * features.shape[1]  # M
  num_channels = features.shape[2]  # N
  if target_gram.shape != (num_channels, num_channels):
    raise ValueError(f"target Gram {target_gram.shape} does not fit features with {num_channels} channels")
  gram = gram_matrix(features) if mask is None else guided_gram_matrix(features, mask)
  loss = jnp.sum(jnp.square(gram - target_gram)) / (4.0 * num_channels**2 * num_positions**2)
  return loss if mask is None else loss * (jnp.sum(mask) / num_positions)


def style_loss(*, features: Mapping[str, jax.Array], target_grams: Mapping[str, jax.Array],
               layer_weights: Mapping[str, float | jax.Array]) -> jax.Array:
  """`sum_l w_l E_l` over the style layers named in `layer_weights`."""
  return sum(layer_weights[name] * style_layer_loss(features=features[name], target_gram=target_grams[name])
             for name in layer_weights)


def region_style_loss(*, features: Mapping[str, jax.Array], target_grams: Mapping[str, jax.Array],
                      masks: Mapping[str, jax.Array], region_weights: jax.Array,
                      layer_weights: Mapping[str, float | jax.Array]) -> jax.Array:
  """`sum_l w_l sum_r v_r E_l(region r)`: the style loss with R regions, each with its own target Gram.

  Args:
    features: `{layer: [H, W, N]}` of the generated image.
    target_grams: `{layer: [R, N, N]}` guided Gram matrices of each region's painting.
    masks: `{layer: [R, H, W]}` the regions at each layer's resolution (`downsample_mask`).
    region_weights: `[R]` weight v_r of each region's term.
    layer_weights: `{layer: w_l}`.
  """
  total = 0.0
  for name in layer_weights:
    per_region = jax.vmap(lambda gram, mask: style_layer_loss(features=features[name], target_gram=gram,
                                                                mask=mask))(target_grams[name], masks[name])
    total = total + layer_weights[name] * jnp.sum(region_weights * per_region)
  return total


def total_variation_loss(image: jax.Array, *, kind: str = "l2", wrap: bool = False) -> jax.Array:
  """Total variation of an `[H, W, C]` image over horizontally and vertically adjacent pixels.

  kind='l2': sum of squared differences (our reference report's formula); kind='l1': sum of absolute
  differences (as `tf.image.total_variation`, used by the TensorFlow style-transfer tutorial).
  wrap=True: the last row and column also neighbour the first (a seamless tile: the picture is a torus).
  """
  _check_features(image, "image")
  if wrap:
    dy = jnp.roll(image, -1, axis=0) - image
    dx = jnp.roll(image, -1, axis=1) - image
  else:
    dy = image[1:, :, :] - image[:-1, :, :]
    dx = image[:, 1:, :] - image[:, :-1, :]
  if kind == "l2":
    return jnp.sum(jnp.square(dy)) + jnp.sum(jnp.square(dx))
  if kind == "l1":
    return jnp.sum(jnp.abs(dy)) + jnp.sum(jnp.abs(dx))
  raise ValueError(f"unknown total-variation kind {kind!r}; expected one of {TV_KINDS}")


def total_loss(*, content: jax.Array, style: jax.Array, tv: jax.Array, content_weight: jax.Array,
               style_weight: jax.Array, tv_weight: jax.Array) -> jax.Array:
  """`alpha * content + beta * style + theta * tv`."""
  return content_weight * content + style_weight * style + tv_weight * tv
