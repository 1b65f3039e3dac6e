"""A plain torch CPU reference of the same Gatys style transfer, for `scripts/benchmark.py`.

Deliberately independent of `nst_jax` (importing it would load JAX into the process and spoil the memory
figure): it reads the weights from an nst-jax `.npz` file with numpy, builds VGG19's feature stack as an
`nn.Sequential`, and runs the same losses as `nst_jax.losses` (content `0.5 sum (F-P)^2`, per-layer style
`sum (G-A)^2 / (4 N^2 M^2)` with weights 1/L, squared-difference TV) with `torch.optim.Adam` or `LBFGS`.
"""

from __future__ import annotations

import json

import numpy as np

# VGG19's feature stack in torchvision's order: channel counts, "M" = 2x2 pooling.
VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


def make_pair(size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """A smooth content picture and a stripy style picture, float32 `[size, size, 3]` in [0, 1]."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
  content = np.stack([x, y, 0.5 + 0.5 * np.sin(6 * x * y)], -1) + 0.05 * rng.standard_normal((size, size, 3))
  style = np.stack([0.5 + 0.5 * np.sin(40 * x), 0.5 + 0.5 * np.cos(25 * (x + y)), 0.5 + 0.5 * np.sin(30 * y)], -1)
  return (np.clip(content, 0, 1).astype(np.float32), np.clip(style, 0, 1).astype(np.float32))


def layer_names() -> list[str]:
  """Our layer name for each module of the VGG19 feature stack (conv1_1, relu1_1, ..., pool5)."""
  names, block, conv = [], 1, 1
  for item in VGG19_CFG:
    if item == "M":
      names.append(f"pool{block}")
      block, conv = block + 1, 1
    else:
      names += [f"conv{block}_{conv}", f"relu{block}_{conv}"]
      conv += 1
  return names


class Features:
  """VGG19 features up to the deepest requested layer, with Caffe preprocessing (the npz's params)."""

  def __init__(self, npz_path: str, layers: list[str], channels_last: bool = False):
    import torch
    data = np.load(npz_path)
    meta = json.loads(str(data["__meta__"]))
    if meta["preprocessing"] != "caffe":
      raise ValueError("the reference implements Caffe preprocessing only")
    modules, cin, conv_index = [], 3, 0
    names = layer_names()
    last = max(names.index(name) for name in layers)
    for item in VGG19_CFG:
      if item == "M":
        modules.append(torch.nn.MaxPool2d(2, 2))
        continue
      conv = torch.nn.Conv2d(cin, item, 3, padding=1)
      name = [n for n in names if n.startswith("conv")][conv_index]
      conv.weight.data = torch.from_numpy(np.ascontiguousarray(data[f"{name}/kernel"].transpose(3, 2, 0, 1)))
      conv.bias.data = torch.from_numpy(data[f"{name}/bias"].copy())
      modules += [conv, torch.nn.ReLU(inplace=False)]
      conv_index, cin = conv_index + 1, item
    self.model = torch.nn.Sequential(*modules[: last + 1]).eval()
    for p in self.model.parameters():
      p.requires_grad_(False)
    self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
    self.model = self.model.to(memory_format=self.memory_format)
    self.layers, self.names = layers, names[: last + 1]
    self.mean = torch.tensor(CAFFE_BGR_MEAN).view(1, 3, 1, 1)

  def __call__(self, image):
    """`image`: `[1, 3, H, W]` RGB in [0, 1] -> `{layer: [1, C, h, w]}`."""
    x = (image.flip(1) * 255.0 - self.mean).contiguous(memory_format=self.memory_format)
    out = {}
    for name, module in zip(self.names, self.model):
      x = module(x)
      if name in self.layers:
        out[name] = x
    return out


def gram(f):
  flat = f.reshape(f.shape[1], -1)  # [N, M]
  return flat @ flat.T


def run(npz_path: str, size: int, steps: int, optimizer: str, *, content_layers=("relu4_2",),
        style_layers=("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"), content_weight=1.0,
        style_weight=1e4, tv_weight=1e-3, lr=None, seed=0, channels_last=False) -> dict:
  """Times `steps` optimisation steps after one warm-up step; returns seconds, the final loss."""
  import time

  import torch
  content, style = make_pair(size, seed)
  to_tensor = lambda a: torch.from_numpy(a).permute(2, 0, 1)[None].contiguous()
  features = Features(npz_path, list(dict.fromkeys(content_layers + style_layers)), channels_last)
  with torch.no_grad():
    content_targets = {k: v for k, v in features(to_tensor(content)).items() if k in content_layers}
    style_targets = {k: gram(v) for k, v in features(to_tensor(style)).items() if k in style_layers}
  layer_weight = 1.0 / len(style_layers)

  def loss_fn(image):
    f = features(image)
    content_loss = sum(0.5 * torch.sum((f[k] - content_targets[k]) ** 2) for k in content_layers)
    style_loss = 0.0
    for k in style_layers:
      n, m = f[k].shape[1], f[k].shape[2] * f[k].shape[3]
      style_loss = style_loss + layer_weight * torch.sum((gram(f[k]) - style_targets[k]) ** 2) / (4.0 * n**2 * m**2)
    tv = (torch.sum((image[:, :, 1:] - image[:, :, :-1]) ** 2)
          + torch.sum((image[:, :, :, 1:] - image[:, :, :, :-1]) ** 2))
    return content_weight * content_loss + style_weight * style_loss + tv_weight * tv

  image = to_tensor(content).clone().requires_grad_(True)
  if optimizer == "adam":
    opt = torch.optim.Adam([image], lr=lr or 0.02, betas=(0.99, 0.999), eps=0.1)
  elif optimizer == "lbfgs":
    opt = torch.optim.LBFGS([image], lr=lr or 1.0, max_iter=1, history_size=10, line_search_fn="strong_wolfe")
  else:
    raise ValueError(f"unknown optimizer {optimizer!r}")

  evaluations = [0]

  def closure():
    evaluations[0] += 1
    opt.zero_grad()
    loss = loss_fn(image)
    loss.backward()
    return loss

  def step():
    opt.step(closure)
    with torch.no_grad():
      image.clamp_(0.0, 1.0)

  start = time.perf_counter()
  step()
  first_step = time.perf_counter() - start
  times = []
  evaluations[0] = 0
  for _ in range(steps):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  evals_per_step = evaluations[0] / steps
  with torch.no_grad():
    final = float(loss_fn(image))
  # LBFGS(max_iter=1) per step evaluates the loss at the current point again (its first closure call) and at
  # least once in the line search: >= 2 evaluations per step, where optax reuses the last line search's.
  return {"first_step_s": first_step, "step_s": float(np.mean(times)), "step_min_s": float(np.min(times)),
          "evals_per_step": evals_per_step, "eval_s": float(np.sum(times)) / max(evaluations[0], 1),
          "final_loss": final, "threads": torch.get_num_threads()}
