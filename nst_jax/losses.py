"""Neural style transfer losses (Gatys, Ecker & Bethge 2016), pure functions on one image.

Batching is done with `jax.vmap` by the caller, never by hand here.

Three normalisations (`normalization=`, the `loss_normalization` setting; docs/quality-and-speed.md):
  gatys:     content 0.5 ||F - P||^2, style layer ||G - A||^2 / (4 N^2 M^2), TV a sum over neighbours;
  mean:      the TensorFlow tutorial's: content ||F - P||^2 / (M N), style layer ||G - A||^2 / (N^2 M^2)
             (the mean squared error of Gram matrices divided by M), TV a sum over neighbours;
  invariant: content ||F - P||^2 / ||P||^2, style layer ||G - A||^2 / ||A||^2, TV a mean over neighbours.
(F, P: generated and content features `[M, N]`; G, A: generated and target Gram matrices `[N, N]`.) Under
`invariant` every term is dimensionless: multiplying a layer's activations by c > 0 leaves it unchanged, so
the same weights mean the same for every painting, output size and set of VGG weights. Several content
layers are summed under `gatys` and averaged otherwise (`content_layers_loss`).

Spatial control (guided Gram matrices, Gatys et al. 2017): a region mask `[H, W]` in [0, 1] is brought to
a layer's resolution by `downsample_mask` (2x2 average pooling once per VGG pooling before the layer, odd
edges dropped as the network's pooling drops them), and `guided_gram_matrix` weights each position by it.

References:
  L. A. Gatys, A. S. Ecker, M. Bethge. Image Style Transfer Using Convolutional Neural Networks. CVPR 2016.
  L. A. Gatys, A. S. Ecker, M. Bethge, A. Hertzmann, E. Shechtman. Controlling Perceptual Factors in Neural
  Style Transfer. CVPR 2017.
  M. Ruder, A. Dosovitskiy, T. Brox. Artistic Style Transfer for Videos. GCPR 2016 (temporal loss).
"""

from __future__ import annotations

import re
from typing import Mapping

import jax
import jax.numpy as jnp

TV_KINDS = ("l2", "l1")
NORMALIZATIONS = ("gatys", "mean", "invariant")
# Keeps a zero target (a dead layer, a blank painting) from dividing by zero under `invariant`.
_TINY = 1e-30


def _relative_squared_error(value: jax.Array, target: jax.Array, weight: jax.Array | None = None) -> jax.Array:
  """`sum(W (value - target)^2) / ||target||^2` (W: optional `[H, W]` weights), both divided by max|target|
  first so that the squares of large activations (a rescaled VGG, 0-255 inputs) stay within float32."""
  scale = jnp.maximum(jnp.max(jnp.abs(target)), _TINY)
  squared = jnp.square((value - target) / scale)
  if weight is not None:
    squared = weight[:, :, None] * squared
  return jnp.sum(squared) / jnp.maximum(jnp.sum(jnp.square(target / scale)), _TINY)


def _check_normalization(normalization: str) -> None:
  if normalization not in NORMALIZATIONS:
    raise ValueError(f"unknown loss normalization {normalization!r}; expected one of {NORMALIZATIONS}")


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


def content_loss(*, features: jax.Array, target: jax.Array, weight: jax.Array | None = None,
                 normalization: str = "gatys") -> jax.Array:
  """Content loss of generated features F vs content features P, both `[H, W, C]` (M = H*W, N = C).

  gatys `0.5 sum(W (F - P)^2)`; mean `sum(W (F - P)^2) / (M N)`; invariant `sum(W (F - P)^2) / ||P||^2`.
  `weight` W: an optional per-position weight map `[H, W]` at the layer's resolution (None = 1 everywhere).
  """
  _check_features(features, "features")
  _check_normalization(normalization)
  if features.shape != target.shape:
    raise ValueError(f"content features {features.shape} and target {target.shape} differ in shape")
  if weight is not None:
    _check_mask(weight, features)
  if normalization == "invariant":
    return _relative_squared_error(features, target, weight)
  squared = jnp.square(features - target)
  squared = jnp.sum(squared if weight is None else weight[:, :, None] * squared)
  return 0.5 * squared if normalization == "gatys" else squared / features.size


def content_layers_loss(*, features: Mapping[str, jax.Array], targets: Mapping[str, jax.Array],
                        normalization: str = "gatys") -> jax.Array:
  """The content loss over the layers of `targets`: summed under gatys, averaged under mean and invariant."""
  total = sum(content_loss(features=features[name], target=targets[name], normalization=normalization)
              for name in targets)
  return total if normalization == "gatys" else total / len(targets)


def style_layer_loss(*, features: jax.Array, target_gram: jax.Array, mask: jax.Array | None = None,
                     normalization: str = "gatys") -> jax.Array:
  """`E_l` of generated features `[H, W, N]` (M = H*W) vs the target Gram `A: [N, N]`, G = gram(features).

  gatys `||G - A||^2 / (4 N^2 M^2)`; mean `||G - A||^2 / (N^2 M^2)` (the mean squared difference of G/M and
  A/M); invariant `||G - A||^2 / ||A||^2`. A must be summed over the same M positions as G (as
  `optimize.make_targets` does).

  With a region `mask` `[H, W]` (at the layer's resolution), G is the guided Gram matrix over the region and
  the term is weighted by the region's share of the positions, `sum(mask) / M`: each pixel of a region then
  feels the same style pressure as without regions, and an all-ones mask gives the plain `E_l`.
  """
  _check_features(features, "features")
  _check_normalization(normalization)
  num_positions = features.shape[0] * features.shape[1]  # M
  num_channels = features.shape[2]  # N
  if target_gram.shape != (num_channels, num_channels):
    raise ValueError(f"target Gram {target_gram.shape} does not fit features with {num_channels} channels")
  gram = gram_matrix(features) if mask is None else guided_gram_matrix(features, mask)
  if normalization == "invariant":
    loss = _relative_squared_error(gram, target_gram)
  else:
    squared = jnp.sum(jnp.square(gram - target_gram))
    loss = squared / ((4.0 if normalization == "gatys" else 1.0) * float(num_channels)**2 * float(num_positions)**2)
  return loss if mask is None else loss * (jnp.sum(mask) / num_positions)


def style_loss(*, features: Mapping[str, jax.Array], target_grams: Mapping[str, jax.Array],
               layer_weights: Mapping[str, float | jax.Array], normalization: str = "gatys") -> jax.Array:
  """`sum_l w_l E_l` over the style layers named in `layer_weights` (w_l = 1/L by default: an average)."""
  return sum(layer_weights[name] * style_layer_loss(features=features[name], target_gram=target_grams[name],
                                                    normalization=normalization)
             for name in layer_weights)


def region_style_loss(*, features: Mapping[str, jax.Array], target_grams: Mapping[str, jax.Array],
                      masks: Mapping[str, jax.Array], region_weights: jax.Array,
                      layer_weights: Mapping[str, float | jax.Array], normalization: str = "gatys") -> jax.Array:
  """`sum_l w_l sum_r v_r E_l(region r)`: the style loss with R regions, each with its own target Gram.

  Args:
    features: `{layer: [H, W, N]}` of the generated image.
    target_grams: `{layer: [R, N, N]}` guided Gram matrices of each region's painting.
    masks: `{layer: [R, H, W]}` the regions at each layer's resolution (`downsample_mask`).
    region_weights: `[R]` weight v_r of each region's term.
    layer_weights: `{layer: w_l}`.
    normalization: as `style_layer_loss`.
  """
  total = 0.0
  for name in layer_weights:
    per_region = jax.vmap(lambda gram, mask: style_layer_loss(features=features[name], target_gram=gram,
                                                                mask=mask, normalization=normalization))(
        target_grams[name], masks[name])
    total = total + layer_weights[name] * jnp.sum(region_weights * per_region)
  return total


def total_variation_loss(image: jax.Array, *, kind: str = "l2", wrap: bool = False,
                         normalization: str = "gatys") -> jax.Array:
  """Total variation of an `[H, W, C]` image over vertically (dy) and horizontally (dx) adjacent pixels.

  kind='l2': squared differences (our reference report's formula); kind='l1': absolute differences (as
  `tf.image.total_variation`, used by the TensorFlow style-transfer tutorial). gatys and mean: the sum
  `sum(d(dy)) + sum(d(dx))`; invariant: the mean `mean(d(dy)) + mean(d(dx))`, the same for every image size.
  wrap=True: the last row and column also neighbour the first (a seamless tile: the picture is a torus).
  """
  _check_features(image, "image")
  _check_normalization(normalization)
  if wrap:
    dy = jnp.roll(image, -1, axis=0) - image
    dx = jnp.roll(image, -1, axis=1) - image
  else:
    dy = image[1:, :, :] - image[:-1, :, :]
    dx = image[:, 1:, :] - image[:, :-1, :]
  if kind == "l2":
    dy, dx = jnp.square(dy), jnp.square(dx)
  elif kind == "l1":
    dy, dx = jnp.abs(dy), jnp.abs(dx)
  else:
    raise ValueError(f"unknown total-variation kind {kind!r}; expected one of {TV_KINDS}")
  reduce = jnp.sum if normalization != "invariant" else lambda d: jnp.mean(d) if d.size else jnp.sum(d)
  return reduce(dy) + reduce(dx)


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
