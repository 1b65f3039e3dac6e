"""Tests for nst_jax.batch: batched == single runs, sharded == unsharded, one compilation per bucket."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from skimage import data

from nst_jax import batch, image_io, optimize, vgg
from nst_jax.configs import default

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny(image, size=32):
  return image_io.resize_longest(image.astype(np.float32) / 255.0, size)


def tiny_config(**overrides):
  config = default.get_config()
  config.max_size, config.steps, config.log_every = 32, 3, 100
  # A shallow VGG keeps compile times short; batching does not depend on the depth.
  config.content_layers, config.style_layers = ("relu2_1",), ("relu1_1", "relu2_1")
  for key, value in overrides.items():
    config[key] = value
  return config


def single_runs(items, weights):
  """Each item alone through the plain (un-vmapped) Stylizer: the reference."""
  stylizer = optimize.Stylizer(items[0].config)
  images = []
  for item in items:
    targets = optimize.targets_from_config(weights, item.config, item.content, item.styles)
    state = stylizer.init_state(optimize.init_image(item.config.init, item.content, item.styles[0],
                                                    seed=item.config.seed))
    state = stylizer.run(state, targets, weights, int(item.config.steps))
    images.append(np.asarray(state.image))
  return images


def test_stack_unstack_pad():
  trees = [{"a": np.full((2,), i), "b": np.float32(i)} for i in range(3)]
  stacked = batch.stack(batch.pad_to(trees, 4))
  assert stacked["a"].shape == (4, 2) and stacked["b"].tolist() == [0, 1, 2, 2]
  back = batch.unstack(stacked, 3)
  assert [int(t["b"]) for t in back] == [0, 1, 2]
  np.testing.assert_array_equal(back[1]["a"], [1, 1])


def test_plan_buckets_groups_by_shape_and_static_settings():
  cat, coffee = tiny(data.chelsea()), tiny(data.coffee())
  square = tiny(data.astronaut())
  config = tiny_config()
  items = [batch.item_from_config(cat, coffee, config),
           batch.item_from_config(square, coffee, config),
           batch.item_from_config(cat, coffee, config, style_weight=1e6, seed=4),  # Per-item: same bucket.
           batch.item_from_config(cat, coffee, config, steps=5),  # Other step count: own bucket.
           batch.item_from_config(cat, coffee, config, optimizer="sgd")]
  assert batch.plan_buckets(items) == [[0, 2], [1], [3], [4]]
  # resize_to: one common shape, so the two shapes share a bucket (planning never touches the weights).
  runner = batch.BatchStylizer({}, resize_to=(32, 32), batch_size=2)
  assert runner.plan(items[:3]) == [([0, 1], 2), ([2], 2)]


def test_batched_equals_single_and_compiles_once_per_bucket():
  weights = vgg.random_weights(0)
  cat, coffee, square = tiny(data.chelsea()), tiny(data.coffee()), tiny(data.astronaut())
  config = tiny_config()
  items = [batch.item_from_config(cat, coffee, config),
           batch.item_from_config(cat, coffee, config, style_weight=1e5, content_weight=2.0),
           batch.item_from_config(cat, square, config, tv_weight=1.0, seed=3),
           batch.item_from_config(square, coffee, config)]
  # A mesh of one device: the sharded code path must work unchanged on a single device.
  runner = batch.BatchStylizer(weights, mesh=batch.make_mesh(jax.devices()[:1]), batch_size=2)
  # Bucket 32x48 has 3 items -> chunks of 2 and 1 (padded to 2); bucket 32x32 one chunk.
  assert runner.plan(items) == [([0, 1], 2), ([2], 2), ([3], 1)]
  results = runner.run(items)
  stylizer = runner.stylizer(config)
  assert stylizer.step._cache_size() == 2  # One compilation per bucket shape, not per chunk.
  references = single_runs(items, weights)
  for result, reference, item in zip(results, references, items):
    assert result.image.shape == item.content.shape
    assert np.max(np.abs(result.image - reference)) <= 1e-5
    assert len(result.losses) == 3 and result.losses[-1] < result.losses[0]
  assert not np.allclose(results[0].image, results[1].image)  # Per-item weights were used.


@pytest.mark.slow
def test_lbfgs_batched_equals_single():
  # Under vmap the zoom line search is a batched while loop: items that finish early are held fixed
  # while the others take more trial steps, so every item still matches its own single run.
  weights = vgg.random_weights(1)
  cat, coffee = tiny(data.chelsea(), 24), tiny(data.coffee(), 24)
  config = tiny_config(optimizer="lbfgs", max_size=24)
  items = [batch.item_from_config(cat, coffee, config),
           batch.item_from_config(cat, coffee, config, style_weight=1e6, init="noise")]
  results = batch.BatchStylizer(weights).run(items)
  for result, reference in zip(results, single_runs(items, weights)):
    assert np.max(np.abs(result.image - reference)) <= 1e-5


# Three 32 px items (a style-weight sweep) shared by the subprocess scripts below.
_ITEMS_SETUP = r"""
from skimage import data
from nst_jax.configs import default
config = default.get_config()
config.max_size, config.steps, config.log_every = 32, 2, 100
config.content_layers, config.style_layers = ("relu2_1",), ("relu1_1", "relu2_1")
cat = image_io.resize_longest(data.chelsea().astype(np.float32) / 255, 32)
coffee = image_io.resize_longest(data.coffee().astype(np.float32) / 255, 32)
items = [batch.item_from_config(cat, coffee, config, style_weight=w) for w in (1e3, 1e4, 1e5)]
weights = vgg.random_weights(0)
"""

_SHARDED_SCRIPT = r"""
import json, numpy as np, jax
from nst_jax import batch, image_io, vgg
""" + _ITEMS_SETUP + r"""
mesh = batch.make_mesh()
runner = batch.BatchStylizer(weights, mesh=mesh)
sharded = runner.run(items)
plain = batch.BatchStylizer(weights).run(items)
state_devices = None
def spy(step, state, metrics):
  global state_devices
  state_devices = len(state.image.sharding.device_set)
runner.run_chunk(items, callbacks=[spy])
print(json.dumps({"devices": jax.device_count(), "mesh": mesh.size, "state_devices": state_devices,
                  "diff": max(float(np.max(np.abs(a.image - b.image))) for a, b in zip(sharded, plain)),
                  "n": len(sharded)}))
"""


@pytest.mark.slow
def test_sharded_equals_unsharded_on_four_cpu_devices():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
             PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  out = subprocess.run([sys.executable, "-c", _SHARDED_SCRIPT], env=env, capture_output=True, text=True,
                       timeout=600, cwd=ROOT)
  assert out.returncode == 0, out.stderr[-3000:]
  report = json.loads(out.stdout.strip().splitlines()[-1])
  assert report["devices"] == 4 and report["mesh"] == 4
  assert report["state_devices"] == 4  # 3 items padded to 4, one per device.
  assert report["n"] == 3
  assert report["diff"] <= 1e-5


_MULTIHOST_SCRIPT = r"""
import json, sys, numpy as np, jax
from nst_jax import batch, image_io, vgg
batch.init_distributed(sys.argv[1], 2, int(sys.argv[2]))
""" + _ITEMS_SETUP + r"""
sharded = batch.BatchStylizer(weights, mesh=batch.make_mesh()).run(items)
plain = batch.BatchStylizer(weights).run(items)  # This process alone, one device.
print(json.dumps({"processes": jax.process_count(), "devices": jax.device_count(),
                  "diff": max(float(np.max(np.abs(a.image - b.image))) for a, b in zip(sharded, plain))}))
"""


@pytest.mark.slow
def test_two_processes_with_two_devices_each_match_unsharded():
  import socket
  with socket.socket() as s:
    s.bind(("localhost", 0))
    address = f"localhost:{s.getsockname()[1]}"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
             PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  procs = [subprocess.Popen([sys.executable, "-c", _MULTIHOST_SCRIPT, address, str(i)], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outputs = []
  try:
    for proc in procs:
      out, err = proc.communicate(timeout=600)
      assert proc.returncode == 0, err[-3000:]
      outputs.append(json.loads(out.strip().splitlines()[-1]))
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
  for report in outputs:
    assert report["processes"] == 2 and report["devices"] == 4
    assert report["diff"] <= 1e-5
