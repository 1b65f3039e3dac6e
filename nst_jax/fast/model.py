"""The transformer net of Johnson et al. 2016, in Flax: any input size and aspect ratio.

conv 9x9 -> two stride-2 convs (downsampling) -> 5 residual blocks -> two (2x nearest upsample + conv 3x3) ->
conv 9x9, with instance norm (Ulyanov et al. 2016) after every conv but the last and reflection padding
everywhere. Upsampling is nearest-neighbour followed by a convolution, not a transposed convolution, which
avoids checkerboard artefacts (Odena et al. 2016, "Deconvolution and Checkerboard Artifacts").

`width` scales every channel count (1.0 = the paper's 32/64/128), so that tests can use a tiny net. An
input whose sides are not multiples of 4 is padded by reflection to the next multiple and cropped back.

References: Johnson, Alahi, Fei-Fei 2016, "Perceptual Losses for Real-Time Style Transfer and
Super-Resolution", supplementary Table 1.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

PyTree = Any
STRIDE = 4  # Total downsampling of the net: input sides are padded to a multiple of it.
NUM_RESIDUAL = 5
BASE_CHANNELS = (32, 64, 128)


def channels(width: float) -> tuple[int, int, int]:
  """Channel counts of the three resolutions for the `width` multiplier (at least 4 each)."""
  return tuple(max(4, int(round(c * float(width)))) for c in BASE_CHANNELS)


def reflect_pad(x: jax.Array, pad: int) -> jax.Array:
  """`[N, H, W, C]` padded by `pad` pixels on each side of H and W by reflection (no edge repeated)."""
  return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect") if pad else x


class ConvLayer(nn.Module):
  """Reflection padding, a convolution (`stride` 1 or 2), then instance norm and ReLU unless `last`."""
  features: int
  kernel: int
  stride: int = 1
  last: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = reflect_pad(x, self.kernel // 2)
    x = nn.Conv(self.features, (self.kernel, self.kernel), strides=(self.stride, self.stride), padding="VALID")(x)
    if self.last:
      return x
    return nn.relu(nn.InstanceNorm()(x))


class ResidualBlock(nn.Module):
  """x + IN(conv3x3(ReLU(IN(conv3x3(x))))) (Johnson et al.'s supplementary Figure 1, without cropping)."""
  features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = ConvLayer(self.features, 3)(x)
    y = reflect_pad(y, 1)
    y = nn.Conv(self.features, (3, 3), padding="VALID")(y)
    return x + nn.InstanceNorm()(y)


class UpsampleConv(nn.Module):
  """2x nearest-neighbour upsampling, then a 3x3 convolution with instance norm and ReLU.

  `transposed=True` is the control that shows what this avoids: a stride-2 3x3 transposed convolution (its
  kernel overlaps unevenly, giving a checkerboard of period 2); tests and docs/fast.md compare the two.
  """
  features: int
  transposed: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.transposed:
      x = nn.ConvTranspose(self.features, (3, 3), strides=(2, 2), padding="SAME")(x)  # [N, 2H, 2W, C]
      return nn.relu(nn.InstanceNorm()(x))
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # [N, 2H, 2W, C]
    return ConvLayer(self.features, 3)(x)


class TransformerNet(nn.Module):
  """Photo `[N, H, W, 3]` in [0, 1] (H, W multiples of 4) -> stylised `[N, H, W, 3]` in [0, 1].

  `transposed_upsampling` swaps in the transposed-convolution control (`UpsampleConv`); models use False.
  """
  width: float = 1.0
  transposed_upsampling: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c1, c2, c3 = channels(self.width)
    y = ConvLayer(c1, 9)(x)  # [N, H, W, c1]
    y = ConvLayer(c2, 3, stride=2)(y)  # [N, H/2, W/2, c2]
    y = ConvLayer(c3, 3, stride=2)(y)  # [N, H/4, W/4, c3]
    for _ in range(NUM_RESIDUAL):
      y = ResidualBlock(c3)(y)
    y = UpsampleConv(c2, transposed=self.transposed_upsampling)(y)  # [N, H/2, W/2, c2]
    y = UpsampleConv(c1, transposed=self.transposed_upsampling)(y)  # [N, H, W, c1]
    y = ConvLayer(3, 9, last=True)(y)  # [N, H, W, 3]
    return nn.sigmoid(y)


def init_params(width: float, seed: int = 0, size: int = 32) -> PyTree:
  """The net's parameters for `width`, initialised from `seed` (they do not depend on the image size)."""
  net = TransformerNet(width=width)
  return jax.jit(net.init)(jax.random.PRNGKey(seed), jnp.zeros((1, size, size, 3), jnp.float32))["params"]


def pad_to_multiple(images: jax.Array, multiple: int = STRIDE) -> tuple[jax.Array, tuple[int, int]]:
  """`[N, H, W, C]` padded at the bottom and right by reflection to sides that are multiples of `multiple`;
  returns the padded batch and the original `(H, W)`."""
  height, width = images.shape[1:3]
  pad_h, pad_w = -height % multiple, -width % multiple
  if pad_h or pad_w:
    images = jnp.pad(images, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="reflect")
  return images, (height, width)


def apply(params: PyTree, images: jax.typing.ArrayLike, *, width: float) -> jax.Array:
  """The net on a batch `[N, H, W, 3]` of any H, W (>= 3): padded to multiples of 4, run, cropped back."""
  images = jnp.asarray(images, jnp.float32)
  padded, (height, width_px) = pad_to_multiple(images)
  out = TransformerNet(width=width).apply({"params": params}, padded)
  return out[:, :height, :width_px]  # [N, H, W, 3]


def parameter_count(params: PyTree) -> int:
  return int(sum(x.size for x in jax.tree.leaves(params)))


def parameter_shapes(width: float) -> PyTree:
  """The net's parameters as `jax.ShapeDtypeStruct`s (nothing computed)."""
  return jax.eval_shape(lambda: init_params(width))
