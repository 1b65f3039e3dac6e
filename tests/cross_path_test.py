"""One job through every front end gives the same image: the library call, the command, the command with
`--workdir` interrupted by SIGINT and run again, a one-row manifest (`nst-jax batch`) and the web API.

The job uses the features that used to be honoured by some paths only: two blended paintings (3:1) of
different aspect ratios, `preserve_colors luminance`, a two-scale coarse-to-fine schedule and Adam, plus
the later settings: `tile` (circular padding) and `loss_normalization mean` (not the default, so a path that
dropped it would give the `invariant` picture: 17/255 apart on average; the other path tests run the default).
Spatial control has its own test through every path (tests/regions_paths_test.py).
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import nst_jax
import numpy as np
import pytest
from PIL import Image

from conftest import make_image, make_style
from nst_jax import image_io, inputs, rundir, settings, vgg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = {"max_size": 64, "steps": 40, "optimizer": "adam", "style_blend_weights": "3,1",
            "preserve_colors": "luminance", "scales": "32,2,10", "style_weight": 1e3, "log_every": 1,
            "content_layers": "relu2_1", "style_layers": "relu1_1,relu2_1", "tile": True,
            "loss_normalization": "mean"}
PNG_TOLERANCE = 1.0 / 255 + 1e-6


def flags(values: dict) -> list[str]:
  return [f"--{name}={value}" for name, value in values.items()]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  folder = tmp_path_factory.mktemp("cross")
  paths = {"content": folder / "photo.png", "style_a": folder / "a.png", "style_b": folder / "b.png"}
  Image.fromarray(image_io.to_uint8(make_image(48, 64, seed=0))).save(paths["content"])
  Image.fromarray(image_io.to_uint8(make_style(40, 40, seed=1))).save(paths["style_a"])
  Image.fromarray(image_io.to_uint8(make_style(30, 80, seed=2))).save(paths["style_b"])  # Another shape.
  return folder, {k: str(v) for k, v in paths.items()}


@pytest.fixture(scope="module")
def reference(files):
  """The library call: float32 image of the job."""
  _, paths = files
  config = settings.resolve(SETTINGS, num_styles=2)
  job, _ = inputs.load_job(paths["content"], [paths["style_a"], paths["style_b"]], config)
  return nst_jax.stylize(job.content, job.styles, config, weights=vgg.random_weights(0))


def command(*args, cwd):
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu",
             NST_JAX_HOME=str(cwd))
  return [sys.executable, "-m", "nst_jax.commands.main", *args], env


def run(*args, cwd, timeout=600):
  argv, env = command(*args, cwd=cwd)
  return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def run_manifest(folder, row: dict):
  """Writes `row` as a one-row manifest `folder/jobs.csv` and runs `nst-jax batch` on it (must succeed)."""
  path = folder / "jobs.csv"
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(row))
    writer.writeheader()
    writer.writerow(row)
  result = run("batch", f"--manifest={path}", "--weights=random", "--noprogress", cwd=folder)
  assert result.returncode == 0, result.stderr


def inputs_flags(paths):
  return [f"--content={paths['content']}", f"--style={paths['style_a']}", f"--style={paths['style_b']}",
          "--weights=random", "--noprogress"]


def assert_png_matches(path, reference):
  image = image_io.open_image(str(path))
  assert image.shape == reference.shape
  assert np.abs(image - reference).max() <= PNG_TOLERANCE, np.abs(image - reference).max()


@pytest.mark.slow
def test_the_command_equals_the_library(files, reference):
  folder, paths = files
  out = folder / "command.png"
  result = run(*inputs_flags(paths), f"--output={out}", *flags(SETTINGS), cwd=folder)
  assert result.returncode == 0, result.stderr
  assert_png_matches(out, reference)


@pytest.mark.slow
def test_workdir_interrupted_by_sigint_and_resumed_equals_the_library(files, reference):
  folder, paths = files
  workdir = folder / "run"
  argv, env = command(*inputs_flags(paths), f"--workdir={workdir}", "--checkpoint_every=7", *flags(SETTINGS),
                      cwd=folder)
  process = subprocess.Popen(argv, env=env, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  metrics = str(workdir / rundir.METRICS)
  deadline = time.time() + 300
  while time.time() < deadline and process.poll() is None and not rundir.read_metrics(metrics):
    time.sleep(0.005)
  process.send_signal(signal.SIGINT)
  _, err = process.communicate(timeout=300)
  assert process.returncode == 130, err  # Stopped early in the first scale: the rest runs on resume.
  result = run(*inputs_flags(paths), f"--workdir={workdir}", *flags(SETTINGS), cwd=folder)
  assert result.returncode == 0, result.stderr
  assert "resuming" in result.stderr
  assert_png_matches(workdir / rundir.FINAL, reference)
  steps = [r["step"] for r in rundir.read_metrics(metrics)]
  assert steps == list(range(1, 51))  # 10 steps at 32 px, 40 at 64 px, each once.


@pytest.mark.slow
def test_a_one_row_manifest_equals_the_library(files, reference):
  folder, paths = files
  row = {"content": paths["content"], "style": f"{paths['style_a']};{paths['style_b']}",
         "output": str(folder / "batch" / "row.png"), **SETTINGS}
  run_manifest(folder, row)
  assert_png_matches(folder / "batch" / "row.png", reference)


@pytest.mark.slow
def test_the_web_api_equals_the_library(files, reference, tmp_path):
  pytest.importorskip("fastapi")
  import httpx
  from nst_jax.server.app import create_app, serve_in_thread
  from web_helpers import api_result
  _, paths = files
  app = create_app(data_dir=str(tmp_path / "data"), weights=vgg.random_weights(0), rate_limit=0,
                   checkpoint_every=1000.0, preview_every=1000.0, batch_wait=0.0)
  with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=60) as client:
    uploads = {field: open(paths[name], "rb").read() for field, name in
               (("content", "content"), ("style", "style_a"), ("style2", "style_b"))}
    image = api_result(client, {field: (f"{field}.png", data) for field, data in uploads.items()}, SETTINGS,
                       timeout=300)
  assert image.shape == reference.shape
  assert np.abs(image - reference).max() <= PNG_TOLERANCE, np.abs(image - reference).max()
