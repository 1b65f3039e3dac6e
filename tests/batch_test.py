"""Tests for batching on the engine: per-item budgets, batched == single runs, sharded == unsharded.

nst_jax.batch keeps the device helpers (mesh, sharding, stacking); the engine (nst_jax.engine) batches.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from skimage import data

from nst_jax import batch, engine, image_io, settings, vgg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A shallow VGG keeps compile times short; batching does not depend on the depth.
SHALLOW = {"content_layers": "relu2_1", "style_layers": "relu1_1,relu2_1"}


def tiny(image, size=32):
  return image_io.resize_longest(image.astype(np.float32) / 255.0, size)


def tiny_config(**values):
  return settings.resolve({"max_size": 32, "steps": 3, "log_every": 100, **SHALLOW, **values})


def job(content, style, **values):
  return engine.Job(content=content, styles=engine.as_style_list(style), config=tiny_config(**values))


def single_runs(jobs, weights):
  """Each job alone through the engine (B = 1): the reference."""
  runner = engine.Engine(weights)
  return [runner.run([j])[0].image for j in jobs]


def test_stack_unstack_pad():
  trees = [{"a": np.full((2,), i), "b": np.float32(i)} for i in range(3)]
  stacked = batch.stack(batch.pad_to(trees, 4))
  assert stacked["a"].shape == (4, 2) and stacked["b"].tolist() == [0, 1, 2, 2]
  back = batch.unstack(stacked, 3)
  assert [int(t["b"]) for t in back] == [0, 1, 2]
  np.testing.assert_array_equal(back[1]["a"], [1, 1])


def test_jobs_with_different_step_counts_share_a_batch_and_equal_single_runs():
  weights = vgg.random_weights(0)
  cat, coffee = tiny(data.chelsea()), tiny(data.coffee())
  jobs = [job(cat, coffee, steps=10), job(cat, coffee, steps=20, style_weight=1e5),
          job(cat, coffee, steps=30, seed=3, init="noise")]
  runner = engine.Engine(weights)
  results = runner.run(jobs)
  assert runner.compiled_steps() == 1  # One bucket: per-item budgets, not one batch per step count.
  assert [r.step for r in results] == [10, 20, 30] and {r.status for r in results} == {"done"}
  for result, reference in zip(results, single_runs(jobs, weights)):
    assert np.max(np.abs(result.image - reference)) <= 1e-5


def test_batched_equals_single_on_a_mesh_in_chunks():
  weights = vgg.random_weights(0)
  cat, coffee, square = tiny(data.chelsea()), tiny(data.coffee()), tiny(data.astronaut())
  jobs = [job(cat, coffee),
          job(cat, coffee, style_weight=1e5, content_weight=2.0),
          job(cat, [coffee, square], tv_weight=1.0, seed=3, style_blend_weights="3;1"),  # Paintings of two shapes.
          job(square, coffee)]
  # A mesh of one device: the sharded code path must work unchanged on a single device. Bucket 21x32 has
  # 3 items -> chunks of 2 and 1; bucket 32x32 one chunk.
  runner = engine.Engine(weights, mesh=batch.make_mesh(jax.devices()[:1]), max_batch=2)
  assert len({runner.job_bucket_key(j) for j in jobs}) == 2
  results = runner.run(jobs)
  for result, reference, j in zip(results, single_runs(jobs, weights), jobs):
    assert result.image.shape == j.content.shape
    assert np.max(np.abs(result.image - reference)) <= 1e-5
  assert not np.allclose(results[0].image, results[1].image)  # Per-item weights were used.
  # Two buckets (two shapes), each compiled once: the state stays split over the mesh between steps.
  assert runner.compiled_steps() == 2


def test_chunks_of_a_bucket_compile_once():
  # The last, shorter chunk is padded to the size the bucket already compiled for.
  weights = vgg.random_weights(0)
  cat, coffee = tiny(data.chelsea()), tiny(data.coffee())
  runner = engine.Engine(weights, max_batch=2)
  runner.run([job(cat, coffee, style_weight=w) for w in (1e3, 1e4, 1e5)])
  assert runner.compiled_steps() == 1


@pytest.mark.slow
def test_lbfgs_batched_equals_single():
  # Under vmap the zoom line search is a batched while loop: items that finish early are held fixed
  # while the others take more trial steps, so every item still matches its own single run.
  weights = vgg.random_weights(1)
  cat, coffee = tiny(data.chelsea(), 24), tiny(data.coffee(), 24)
  jobs = [job(cat, coffee, optimizer="lbfgs", max_size=24),
          job(cat, coffee, optimizer="lbfgs", max_size=24, style_weight=1e6, init="noise", steps=2)]
  results = engine.Engine(weights).run(jobs)
  for result, reference in zip(results, single_runs(jobs, weights)):
    assert np.max(np.abs(result.image - reference)) <= 1e-5


# Three 32 px jobs (a style-weight sweep, two step counts) shared by the subprocess scripts below.
_ITEMS_SETUP = r"""
from skimage import data
from nst_jax import engine, settings
cat = image_io.resize_longest(data.chelsea().astype(np.float32) / 255, 32)
coffee = image_io.resize_longest(data.coffee().astype(np.float32) / 255, 32)
config = lambda **v: settings.resolve({"max_size": 32, "steps": 2, "log_every": 100, "content_layers": "relu2_1",
                                       "style_layers": "relu1_1,relu2_1", **v})
jobs = [engine.Job(cat, [coffee], config(style_weight=w, steps=s)) for w, s in ((1e3, 2), (1e4, 3), (1e5, 2))]
weights = vgg.random_weights(0)
"""

_SHARDED_SCRIPT = r"""
import json, numpy as np, jax
from nst_jax import batch, image_io, vgg
""" + _ITEMS_SETUP + r"""
mesh = batch.make_mesh()
state_devices = set()
class Spy:
  def on_step(self, event):
    state_devices.add(len(event.view.state.image.sharding.device_set))
sharded = engine.Engine(weights, mesh=mesh).run(jobs, hooks=[Spy()])
plain = engine.Engine(weights).run(jobs)
print(json.dumps({"devices": jax.device_count(), "mesh": mesh.size, "state_devices": sorted(state_devices),
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
  assert report["state_devices"] == [4]  # 3 items padded to 4, one per device.
  assert report["n"] == 3
  assert report["diff"] <= 1e-5


_MULTIHOST_SCRIPT = r"""
import json, sys, numpy as np, jax
from nst_jax import batch, image_io, vgg
batch.init_distributed(sys.argv[1], 2, int(sys.argv[2]))
""" + _ITEMS_SETUP + r"""
sharded = engine.Engine(weights, mesh=batch.make_mesh()).run(jobs)
plain = engine.Engine(weights).run(jobs)  # This process alone, one device.
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
