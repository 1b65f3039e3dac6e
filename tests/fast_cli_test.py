"""`nst-jax train_fast` and `nst-jax fast` in subprocesses: a tiny end-to-end run, kill -9 and resume, and
every bad input of the issue (one `error:` line, exit 2, nothing written)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from PIL import Image

from conftest import make_image, make_style
from stylize_cli_test import REPO, nst_jax
from nst_jax import settings
from nst_jax.fast import data, model, model_file, train

TINY = ("--crop", 32, "--batch_size", 2, "--width", 0.125, "--lr", 0.01, "--weights", "random", "--noprogress")


def save(path, image) -> str:
  Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8)).save(path)
  return str(path)


@pytest.fixture
def files(tmp_path):
  """Two training photos in a folder, a painting, an output folder and an empty home."""
  (tmp_path / "photos").mkdir()
  for seed in range(2):
    save(tmp_path / "photos" / f"p{seed}.png", make_image(64, 80, seed=seed))
  save(tmp_path / "style.png", make_style(64, 64, seed=1))
  (tmp_path / "out").mkdir()
  (tmp_path / "home").mkdir()
  return tmp_path


def assert_one_error_line(result, text: str) -> None:
  assert result.returncode == 2, (result.returncode, result.stderr)
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], result.stderr


@pytest.mark.slow
def test_train_then_stylise_a_batch_keeping_alpha(files):
  model_dir = files / "model"
  trained = nst_jax("train_fast", "--style", files / "style.png", "--images", files / "photos", "--model_dir",
                    model_dir, "--steps", 2, "--validation", "skimage:coffee", *TINY, home=files / "home")
  assert trained.returncode == 0, trained.stderr
  assert sorted(os.listdir(model_dir)) == ["checkpoints", "losses.png", "metrics.jsonl", "model.nstfast",
                                           "snapshots", "train.json"]
  assert sorted(os.listdir(model_dir / "snapshots")) == ["step_000000.png", "step_000002.png"]
  _, meta = model_file.load(str(model_dir))
  assert meta["settings"]["style_weight"] == 3.0 and meta["steps"] == 2
  resumed = nst_jax("train_fast", "--style", files / "style.png", "--images", files / "photos", "--model_dir",
                    model_dir, "--steps", 3, "--validation", "skimage:coffee", *TINY, home=files / "home")
  assert resumed.returncode == 0 and f"resuming the training in {model_dir} from step 2" in resumed.stderr
  rgba = np.concatenate([make_image(29, 37, seed=5), np.linspace(0, 1, 29 * 37).reshape(29, 37, 1)], axis=-1)
  save(files / "sprite.png", rgba)
  save(files / "photo.jpg", make_image(40, 52, seed=6))
  out = nst_jax("fast", "--model", model_dir, "--content", files / "sprite.png", files / "photo.jpg", "--out_dir",
                files / "out", "--preserve_colors", "luminance", home=files / "home")
  assert out.returncode == 0, out.stderr
  with Image.open(files / "out" / "sprite.png") as image, Image.open(files / "sprite.png") as source:
    assert image.mode == "RGBA" and image.size == (37, 29)
    np.testing.assert_array_equal(np.asarray(image)[..., 3], np.asarray(source)[..., 3])
  with Image.open(files / "out" / "photo.png") as image:
    assert image.mode == "RGB" and image.size == (52, 40)


def test_bad_inputs_are_one_line_and_write_nothing(files):
  model_dir = files / "model"
  model_dir.mkdir()
  model_file.save(str(model_dir / model_file.FILENAME), model.init_params(0.125), {"width": 0.125})
  save(files / "tiny.png", make_image(10, 40))
  save(files / "photo.png", make_image(40, 40))
  result = nst_jax("fast", "--model", model_dir, "--content", files / "photo.png", files / "tiny.png",
                   "--out_dir", files / "out", home=files / "home")
  assert_one_error_line(result, "tiny.png is 40x10 pixels; its short side must be at least 16 px")
  assert os.listdir(files / "out") == []  # Not even the good photo's picture.
  with open(model_dir / model_file.FILENAME, "r+b") as f:
    f.truncate(1000)
  result = nst_jax("fast", "--model", model_dir, "--content", files / "photo.png", "--output",
                   files / "out" / "x.png", home=files / "home")
  assert_one_error_line(result, "is not an nst-jax fast model file or is damaged")
  assert os.listdir(files / "out") == []
  (files / "empty").mkdir()
  result = nst_jax("train_fast", "--style", files / "style.png", "--images", files / "empty", "--model_dir",
                   files / "new_model", *TINY, home=files / "home")
  assert_one_error_line(result, "no images in")
  assert not os.path.exists(files / "new_model")


@pytest.mark.slow
def test_kill_9_then_resume_equals_an_uninterrupted_training(files, random_weights):
  """A training killed with SIGKILL after a checkpoint, run again, ends with the parameters of one that was
  never interrupted (the steps after the last checkpoint are redone with the same crops)."""
  model_dir = files / "killed"
  args = ("train_fast", "--style", files / "style.png", "--images", files / "photos", "--model_dir", model_dir,
          "--checkpoint_every", 1, "--validation", "", *TINY)
  env = dict(os.environ, PYTHONPATH=REPO, NST_JAX_HOME=str(files / "home"), JAX_PLATFORMS="cpu")
  process = subprocess.Popen([sys.executable, "-m", "nst_jax.commands.main", *map(str, (*args, "--steps", 1000))],
                             env=env, cwd=str(files), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 600
    while not (model_dir / "checkpoints" / "2").exists() and time.time() < deadline and process.poll() is None:
      time.sleep(0.2)
  finally:
    process.send_signal(signal.SIGKILL)
    process.wait()
  steps = 8
  resumed = nst_jax(*args, "--steps", steps, home=files / "home")
  assert resumed.returncode == 0, resumed.stderr
  assert "resuming the training" in resumed.stderr
  params, _ = model_file.load(str(model_dir))
  images, _ = data.load_images(str(files / "photos"), 32)
  style = np.asarray(Image.open(files / "style.png"), np.float32) / 255.0
  whole = train.train(random_weights, settings.resolve({}), [style], images, str(files / "whole"),
                      train.TrainOptions(steps=steps, batch_size=2, crop=32, width=0.125, lr=0.01))
  difference = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), params, whole.params))
  assert max(difference) <= 1e-6
