"""Writers of SYNTHETIC VGG19 weight files in the exact public layouts (tests only, never in the package).

* `write_keras_h5`: Keras `vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5` (h5py): root attrs
  `layer_names`, `backend`, `keras_version`; one group per layer; conv groups carry `weight_names`
  `[b'block1_conv1_W_1:0', b'block1_conv1_b_1:0']` and datasets of those names (kernel HWIO, bias).
* `write_torchvision_pth`: a torchvision VGG19 `state_dict` saved with `torch.save` (keys
  `features.{0,2,5,...,34}.weight|bias` OIHW, plus small classifier keys the loader must ignore).
"""

from __future__ import annotations

import collections

import numpy as np

from nst_jax import vgg

# Torchvision `features.N` index of each conv layer, written out independently of nst_jax.weights.
TORCHVISION_FEATURE_INDEX = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)
_KERAS_BLOCKS = ((1, 2), (2, 2), (3, 4), (4, 4), (5, 4))


def keras_layer_names() -> list[str]:
  names = ["input_1"]
  for block, num_convs in _KERAS_BLOCKS:
    names += [f"block{block}_conv{i}" for i in range(1, num_convs + 1)]
    names.append(f"block{block}_pool")
  return names


def numpy_params(params: dict) -> dict:
  """`{'conv1_1': {'kernel': HWIO, 'bias'}}` with numpy float32 leaves."""
  return {name: {k: np.asarray(v, np.float32) for k, v in p.items()} for name, p in params.items()}


def write_keras_h5(path, params: dict) -> str:
  """Writes `params` (HWIO kernels) in the Keras notop HDF5 layout; returns the path."""
  import h5py
  params = numpy_params(params)
  with h5py.File(path, "w") as f:
    f.attrs["layer_names"] = np.array([n.encode() for n in keras_layer_names()])
    f.attrs["backend"] = b"tensorflow"
    f.attrs["keras_version"] = b"2.2.4"
    for layer in keras_layer_names():
      group = f.create_group(layer)
      if "_conv" not in layer:
        group.attrs["weight_names"] = np.array([], dtype="S1")
        continue
      block, conv = layer[len("block"):].split("_conv")
      ours = f"conv{block}_{conv}"
      kernel_name, bias_name = f"{layer}_W_1:0", f"{layer}_b_1:0"
      group.attrs["weight_names"] = np.array([kernel_name.encode(), bias_name.encode()])
      group.create_dataset(kernel_name, data=params[ours]["kernel"])
      group.create_dataset(bias_name, data=params[ours]["bias"])
  return str(path)


def torchvision_state_dict(params: dict) -> "collections.OrderedDict":
  """A torchvision-layout VGG19 state_dict of torch tensors (OIHW) with small classifier entries."""
  import torch
  params = numpy_params(params)
  state = collections.OrderedDict()
  for name, index in zip(vgg.CONV_LAYERS, TORCHVISION_FEATURE_INDEX):
    state[f"features.{index}.weight"] = torch.from_numpy(
        np.ascontiguousarray(params[name]["kernel"].transpose(3, 2, 0, 1)))
    state[f"features.{index}.bias"] = torch.from_numpy(params[name]["bias"].copy())
  rng = np.random.default_rng(0)
  for index, (out_dim, in_dim) in zip((0, 3, 6), ((8, 12), (8, 8), (5, 8))):
    state[f"classifier.{index}.weight"] = torch.from_numpy(rng.normal(size=(out_dim, in_dim)).astype(np.float32))
    state[f"classifier.{index}.bias"] = torch.from_numpy(rng.normal(size=(out_dim,)).astype(np.float32))
  return state


def write_torchvision_pth(path, params: dict) -> str:
  """Writes `params` as a torchvision VGG19 state_dict with `torch.save` (zip format); returns the path."""
  import torch
  torch.save(torchvision_state_dict(params), str(path))
  return str(path)
