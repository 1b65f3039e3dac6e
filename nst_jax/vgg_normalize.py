"""Normalised VGG19 (Gatys et al. 2016, section 2): rescale each conv filter so that its mean ReLU activation
over a set of images and positions is 1, without changing what the network computes up to those scales.

With `m_l[c]` the mean activation of filter c of conv layer l in the original network (over all calibration
images and positions), layer l's kernel and bias for output channel c are divided by `m_l[c]` and its
kernel for input channel i is multiplied by `m_{l-1}[i]` (`m_0 = 1` for the image). ReLU and max/avg
pooling commute with positive per-channel scales, so every activation of the new network is the original
one divided by `m_l[c]`: the mean of each filter is exactly 1, and correlation-normalised Gram matrices
`G_ij / sqrt(G_ii G_jj)` are unchanged. Processing the layers in order with the original means is the
layer-by-layer procedure in closed form. Filters that never fire on the calibration set keep scale 1.
"""

from __future__ import annotations

from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import vgg

RELU_LAYERS = tuple(name.replace("conv", "relu") for name in vgg.CONV_LAYERS)


def mean_activations(weights: vgg.VGGWeights, images: Iterable[np.ndarray], *,
                     pooling: str = "max") -> dict[str, np.ndarray]:
  """`{conv name: [C]}` mean ReLU activation of each filter over all images and positions."""
  extract = jax.jit(vgg.extract_features, static_argnames=("layers", "pooling", "remat"))
  sums, counts = {}, {}
  for image in images:
    features = extract(weights, jnp.asarray(image, jnp.float32), layers=RELU_LAYERS, pooling=pooling)
    for conv, relu in zip(vgg.CONV_LAYERS, RELU_LAYERS):
      f = np.asarray(features[relu], np.float64)
      sums[conv] = sums.get(conv, 0.0) + f.sum(axis=(0, 1))
      counts[conv] = counts.get(conv, 0) + f.shape[0] * f.shape[1]
  if not sums:
    raise ValueError("no calibration images")
  return {conv: sums[conv] / counts[conv] for conv in vgg.CONV_LAYERS}


def normalize(weights: vgg.VGGWeights, images: Iterable[np.ndarray], *, pooling: str = "max",
              eps: float = 1e-8) -> tuple[vgg.VGGWeights, dict[str, np.ndarray]]:
  """Weights whose filters have mean activation 1 on `images`; returns `(weights, original means)`."""
  means = mean_activations(weights, images, pooling=pooling)
  params, previous = {}, np.ones(3)
  for conv in vgg.CONV_LAYERS:
    scale = np.where(means[conv] > eps, means[conv], 1.0)
    kernel = np.asarray(weights.params[conv]["kernel"], np.float64)
    bias = np.asarray(weights.params[conv]["bias"], np.float64)
    dtype = weights.params[conv]["kernel"].dtype
    params[conv] = {
        "kernel": jnp.asarray(kernel * previous[None, None, :, None] / scale[None, None, None, :], dtype),
        "bias": jnp.asarray(bias / scale, dtype),
    }
    previous = scale
  source = f"normalized({weights.source})"
  return vgg.VGGWeights(params=params, preprocessing=weights.preprocessing, source=source,
                        sha256=weights.sha256), means


def rescale_layers(weights: vgg.VGGWeights, factors: dict[str, float]) -> vgg.VGGWeights:
  """Weights whose conv layer l has kernel `factors[l] * K_l` and bias `c_l * b_l`, c_l the product of the
  factors up to l (missing ones are 1), so that every activation of layer l is exactly c_l times the
  original (ReLU and pooling commute with positive scales). The network computes the same thing at other
  activation scales: what `loss_normalization='invariant'` must not notice (tests/losses_test.py)."""
  params, cumulative = {}, 1.0
  for conv in vgg.CONV_LAYERS:
    factor = float(factors.get(conv, 1.0))
    if not factor > 0:
      raise ValueError(f"factor of {conv} must be positive, got {factor}")
    cumulative *= factor
    kernel, bias = weights.params[conv]["kernel"], weights.params[conv]["bias"]
    params[conv] = {"kernel": jnp.asarray(np.asarray(kernel, np.float64) * factor, kernel.dtype),
                    "bias": jnp.asarray(np.asarray(bias, np.float64) * cumulative, bias.dtype)}
  return vgg.VGGWeights(params=params, preprocessing=weights.preprocessing, source=f"rescaled({weights.source})",
                        sha256=weights.sha256)


def random_factors(seed: int = 0, low: float = 0.1, high: float = 10.0) -> dict[str, float]:
  """A log-uniform factor in [low, high] per conv layer (the invariance check's rescaling)."""
  rng = np.random.default_rng(seed)
  return {conv: float(np.exp(rng.uniform(np.log(low), np.log(high)))) for conv in vgg.CONV_LAYERS}
