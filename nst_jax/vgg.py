"""VGG19 feature extractor (Simonyan & Zisserman 2015) as a Flax module.

The 16 convolution layers of VGG19 (3x3, stride 1, ReLU) with 2x2 pooling (max or average), returning a
dict of named activations: `conv1_1`, `relu1_1`, ..., `relu5_4`, `pool1` ... `pool5`. Nothing past the
deepest requested layer is computed. No IO here: weights come from `nst_jax.weights`.

Speed note (see PERF_NOTES.md): on XLA:CPU the backward convolutions take a slow kernel-layout path when
they sit inside `lax.while_loop`/`lax.cond` (as in L-BFGS's line search). `conv3x3` therefore has a custom
VJP that computes the input gradient as an explicit convolution with the flipped, transposed kernel,
fenced with `lax.optimization_barrier` so XLA cannot fold it back. Gradients are unchanged.

Seamless tiles (`circular=True`): every conv pads its input circularly (wrap-around) instead of with zeros,
so the network sees the picture as a torus; on sides that are multiples of 16 (the total stride before
block 5) a circular shift by a multiple of 16 px shifts every feature map accordingly.
"""

from __future__ import annotations

import functools
from typing import Any, Iterable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax import lax

PyTree = Any

# (block, number of convs, output channels) of VGG19's feature stack.
_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 4, 256), (4, 4, 512), (5, 4, 512))

CONV_LAYERS: tuple[str, ...] = tuple(
    f"conv{b}_{i}" for b, n, _ in _BLOCKS for i in range(1, n + 1))
CONV_CHANNELS: dict[str, int] = {
    f"conv{b}_{i}": c for b, n, c in _BLOCKS for i in range(1, n + 1)}


def _layer_sequence() -> tuple[str, ...]:
  names = []
  for b, n, _ in _BLOCKS:
    for i in range(1, n + 1):
      names += [f"conv{b}_{i}", f"relu{b}_{i}"]
    names.append(f"pool{b}")
  return tuple(names)


# Every layer name `extract_features` accepts, in network order.
LAYER_NAMES: tuple[str, ...] = _layer_sequence()
POOLING_KINDS = ("max", "avg")

# Preprocessing belongs to the weights (see `VGGWeights.preprocessing`).
CAFFE_BGR_MEAN = np.array([103.939, 116.779, 123.68], np.float32)  # Keras/Caffe: BGR, 0-255.
TORCH_RGB_MEAN = np.array([0.485, 0.456, 0.406], np.float32)  # torchvision: RGB, [0, 1].
TORCH_RGB_STD = np.array([0.229, 0.224, 0.225], np.float32)
PREPROCESSING_KINDS = ("caffe", "torch")


@struct.dataclass
class VGGWeights:
  """VGG19 conv weights plus the input preprocessing they were trained with.

  Attributes:
    params: `{'conv1_1': {'kernel': [3, 3, Cin, Cout], 'bias': [Cout]}, ...}` (HWIO, float32).
    preprocessing: 'caffe' (BGR, 0-255, mean-subtracted) or 'torch' (RGB, mean/std normalised).
    source: a short human-readable description of where the weights came from.
    sha256: hash of the file the weights were read from ('' for random weights).
  """
  params: PyTree
  preprocessing: str = struct.field(pytree_node=False, default="caffe")
  source: str = struct.field(pytree_node=False, default="")
  sha256: str = struct.field(pytree_node=False, default="")


def validate_layers(layers: Iterable[str]) -> tuple[str, ...]:
  """Returns `layers` as a tuple, raising ValueError that names any unknown layer."""
  layers = tuple(layers)
  unknown = [name for name in layers if name not in LAYER_NAMES]
  if unknown:
    raise ValueError(
        f"unknown VGG19 layer name(s) {', '.join(unknown)}; valid names look like conv1_1, relu4_2, "
        f"pool3 (blocks 1-2 have 2 convs, blocks 3-5 have 4)")
  if not layers:
    raise ValueError("no VGG19 layers requested")
  return layers


def preprocess(image: jax.Array, kind: str) -> jax.Array:
  """Maps an RGB image in [0, 1], `[..., 3]`, to the input the weights expect."""
  if kind == "caffe":
    return image[..., ::-1] * 255.0 - CAFFE_BGR_MEAN
  if kind == "torch":
    return (image - TORCH_RGB_MEAN) / TORCH_RGB_STD
  raise ValueError(f"unknown preprocessing {kind!r}; expected one of {PREPROCESSING_KINDS}")


def _conv(x: jax.Array, kernel: jax.Array, circular: bool = False) -> jax.Array:
  if circular:  # Wrap-around padding by one pixel on each side, then a 'VALID' convolution.
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="wrap")
  return lax.conv_general_dilated(
      x, kernel, window_strides=(1, 1), padding="VALID" if circular else "SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC"))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv3x3(x: jax.Array, kernel: jax.Array, circular: bool = False) -> jax.Array:
  """3x3 stride-1 convolution, `[B, H, W, Cin] x [3, 3, Cin, Cout] -> [B, H, W, Cout]`, zero ('SAME') or
  circular (wrap-around) padding."""
  return _conv(x, kernel, circular)


def _conv3x3_fwd(x, kernel, circular):
  return _conv(x, kernel, circular), (x, kernel)


def _conv3x3_bwd(circular, residuals, grad_out):
  x, kernel = residuals
  # dL/dx is the convolution of the output gradient with the spatially flipped kernel whose in/out
  # channels are swapped, padded as the forward was (the adjoint of a circular correlation is circular).
  # The barrier keeps XLA from rewriting it into its slow backward form.
  flipped = lax.optimization_barrier(jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2))
  grad_x = _conv(grad_out, flipped, circular)
  _, kernel_vjp = jax.vjp(lambda k: _conv(x, k, circular), kernel)  # Dead code unless kernels are trained.
  (grad_kernel,) = kernel_vjp(grad_out)
  return grad_x, grad_kernel


conv3x3.defvjp(_conv3x3_fwd, _conv3x3_bwd)


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 stride-2 max pooling, `[B, H, W, C] -> [B, H//2, W//2, C]` (odd edges dropped, like 'VALID').

  Same values and gradients as `nn.max_pool(x, (2, 2), strides=(2, 2))` (ties go to the first element in
  row-major window order, as XLA's select-and-scatter does), but the backward pass is a few fused
  elementwise ops: XLA:CPU's select-and-scatter needed about 6 extra full-resolution tensors of scratch
  memory (most of the peak at 2048 px).
  """
  return _max_pool_2x2_fwd(x)[0]


def _windows(x):
  b, h, w, c = x.shape
  x = x[:, :h // 2 * 2, :w // 2 * 2]
  return x.reshape(b, h // 2, 2, w // 2, 2, c)


def _max_pool_2x2_fwd(x):
  y = jnp.max(_windows(x), axis=(2, 4))
  return y, (x, y)


def _max_pool_2x2_bwd(residuals, grad_out):
  x, y = residuals
  windows = _windows(x)
  taken = jnp.zeros(y.shape, bool)
  grads = {}
  for i in range(2):
    for j in range(2):
      hit = (windows[:, :, i, :, j] == y) & ~taken
      taken = taken | hit
      grads[i, j] = jnp.where(hit, grad_out, 0).astype(grad_out.dtype)
  rows = [jnp.stack([grads[i, 0], grads[i, 1]], axis=3) for i in range(2)]  # [B, h, w, 2, C]
  grad = jnp.stack(rows, axis=2).reshape(windows.shape[0], windows.shape[1] * 2, windows.shape[3] * 2,
                                         windows.shape[5])
  pad = ((0, 0), (0, x.shape[1] - grad.shape[1]), (0, x.shape[2] - grad.shape[2]), (0, 0))
  return (jnp.pad(grad, pad),)


max_pool_2x2.defvjp(_max_pool_2x2_fwd, _max_pool_2x2_bwd)


def _pool(x: jax.Array, kind: str) -> jax.Array:
  if kind == "max":
    return max_pool_2x2(x)
  if kind == "avg":
    return nn.avg_pool(x, (2, 2), strides=(2, 2))
  raise ValueError(f"unknown pooling {kind!r}; expected one of {POOLING_KINDS}")


def _run_block(block_params: dict, x: jax.Array, block: int, num_convs: int, pooling: str,
               wanted: frozenset, stop_after: str, circular: bool = False) -> tuple[jax.Array, dict]:
  """Runs one VGG block on preprocessed `x`, collecting wanted activations; stops at `stop_after`."""
  out = {}
  for i in range(1, num_convs + 1):
    conv = f"conv{block}_{i}"
    x = conv3x3(x, block_params[conv]["kernel"], circular) + block_params[conv]["bias"]
    if conv in wanted:
      out[conv] = x
    if conv == stop_after:
      return x, out
    x = jax.nn.relu(x)
    if f"relu{block}_{i}" in wanted:
      out[f"relu{block}_{i}"] = x
    if f"relu{block}_{i}" == stop_after:
      return x, out
  x = _pool(x, pooling)
  if f"pool{block}" in wanted:
    out[f"pool{block}"] = x
  return x, out


def vgg19_forward(params: PyTree, x: jax.Array, layers: Sequence[str], *, pooling: str = "max",
                  remat: bool = False, circular: bool = False) -> dict[str, jax.Array]:
  """Pure VGG19 forward on a preprocessed `[B, H, W, 3]` batch; returns `{layer: [B, h, w, C]}`.

  With `circular=True` every conv pads circularly (seamless tiles), else with zeros.

  With `remat=True` each block is wrapped in `jax.checkpoint`, so its activations are recomputed in the
  backward pass instead of stored: less peak memory for large images, about one extra forward pass.
  """
  layers = validate_layers(layers)
  wanted = frozenset(layers)
  stop_after = max(layers, key=LAYER_NAMES.index)
  out = {}
  for block, num_convs, _ in _BLOCKS:
    block_params = {f"conv{block}_{i}": params[f"conv{block}_{i}"] for i in range(1, num_convs + 1)}
    run = lambda p, h, block=block, num_convs=num_convs: _run_block(
        p, h, block, num_convs, pooling, wanted, stop_after, circular)
    if remat:
      run = jax.checkpoint(run)
    x, block_out = run(block_params, x)
    out.update(block_out)
    if stop_after in block_out or stop_after == f"pool{block}":
      break
  return {name: out[name] for name in layers}


class VGG19(nn.Module):
  """VGG19's convolutional feature stack (ImageNet layout) returning named activations.

  Input: a preprocessed `[B, H, W, 3]` batch (see `preprocess`). Params are named `conv{b}_{i}` with
  `kernel` `[3, 3, Cin, Cout]` (HWIO) and `bias` `[Cout]`.
  """
  pooling: str = "max"
  remat: bool = False
  circular: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, layers: Sequence[str] = ("relu5_4",)) -> dict[str, jax.Array]:
    params = {}
    cin = x.shape[-1]
    for name in CONV_LAYERS:
      cout = CONV_CHANNELS[name]
      params[name] = {
          "kernel": self.param(f"{name}_kernel", nn.initializers.he_normal(), (3, 3, cin, cout)),
          "bias": self.param(f"{name}_bias", nn.initializers.zeros, (cout,)),
      }
      cin = cout
    return vgg19_forward(params, x, layers, pooling=self.pooling, remat=self.remat, circular=self.circular)


def params_from_flax(variables: PyTree) -> dict:
  """Converts `VGG19().init(...)` variables into the `{'conv1_1': {'kernel', 'bias'}}` layout."""
  flat = variables["params"]
  return {name: {"kernel": flat[f"{name}_kernel"], "bias": flat[f"{name}_bias"]}
          for name in CONV_LAYERS}


def params_to_flax(params: PyTree) -> dict:
  """Inverse of `params_from_flax`: the variables `VGG19().apply` takes."""
  flat = {}
  for name in CONV_LAYERS:
    flat[f"{name}_kernel"] = params[name]["kernel"]
    flat[f"{name}_bias"] = params[name]["bias"]
  return {"params": flat}


def extract_features(weights: VGGWeights, image: jax.typing.ArrayLike, layers: Sequence[str], *,
                     pooling: str = "max", remat: bool = False,
                     circular: bool = False) -> dict[str, jax.Array]:
  """Named VGG19 activations of an RGB image in [0, 1].

  Args:
    weights: VGG19 weights; their `preprocessing` decides how the image is normalised.
    image: `[H, W, 3]` or `[B, H, W, 3]` float RGB in [0, 1].
    layers: names from `LAYER_NAMES` (e.g. `('relu1_1', 'relu4_2')`).
    pooling: 'max' (as trained) or 'avg' (Gatys et al. found it gives smoother results).
    remat: recompute block activations in the backward pass to save memory.
    circular: pad every conv circularly (the picture seen as a torus, for seamless tiles).

  Returns:
    `{layer: [h, w, C]}` (or `[B, h, w, C]` for a batched input), only the requested layers.
  """
  image = jnp.asarray(image)
  if image.ndim not in (3, 4) or image.shape[-1] != 3:
    raise ValueError(f"expected an RGB image [H, W, 3] or [B, H, W, 3], got shape {image.shape}")
  batched = image.ndim == 4
  x = preprocess(image if batched else image[None], weights.preprocessing)
  x = x.astype(jax.tree_util.tree_leaves(weights.params)[0].dtype)
  model = VGG19(pooling=pooling, remat=remat, circular=circular)
  features = model.apply(params_to_flax(weights.params), x, tuple(layers))
  return features if batched else {name: f[0] for name, f in features.items()}


def random_weights(seed: int = 0, *, preprocessing: str = "caffe",
                   dtype: jnp.dtype = jnp.float32) -> VGGWeights:
  """He-initialised VGG19 weights, for tests and offline smoke runs (results are not artistic)."""
  key = jax.random.key(seed)
  params = {}
  cin = 3
  for name in CONV_LAYERS:
    key, sub_k, sub_b = jax.random.split(key, 3)
    cout = CONV_CHANNELS[name]
    std = np.sqrt(2.0 / (9 * cin))
    params[name] = {
        "kernel": (jax.random.normal(sub_k, (3, 3, cin, cout)) * std).astype(dtype),
        "bias": (jax.random.normal(sub_b, (cout,)) * 0.01).astype(dtype),
    }
    cin = cout
  return VGGWeights(params=params, preprocessing=preprocessing, source=f"random(seed={seed})")
