"""Each experiment at tiny size (32 px, 2 steps, random weights) writes its images, figures and report."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from skimage import data

from nst_jax import engine, experiments, image_io, settings, vgg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny(image, size=32):
  return image_io.resize_longest(image.astype(np.float32) / 255.0, size)


SETTINGS = {"max_size": 32, "steps": 2, "log_every": 100, "content_layers": "relu2_1",
            "style_layers": "relu1_1,relu2_1"}


@pytest.fixture(scope="module")
def setup():
  return settings.resolve(SETTINGS), vgg.random_weights(0)


def read_png(path):
  return np.asarray(Image.open(path).convert("RGB")).astype(int)


def check_outputs(folder, figures, rows):
  for name in figures + ["report.html", "report.md", "results.csv"]:
    assert os.path.getsize(os.path.join(folder, name)) > 0, name
  for name in figures:
    assert Image.open(os.path.join(folder, name)).size[0] > 50
  with open(os.path.join(folder, "results.csv")) as f:
    table = list(csv.DictReader(f))
  assert len(table) == len(rows)
  with open(os.path.join(folder, "report.html")) as f:
    page = f.read()
  for name in figures:
    assert f"src='{name}'" in page
  for row in table:  # Every result image exists and is linked from the table.
    assert os.path.exists(os.path.join(folder, row["image"]))
    assert float(row["total_loss"]) > 0


def test_combinations(tmp_path, setup):
  config, weights = setup
  square = {"astronaut": tiny(data.astronaut()), "coffee": tiny(data.coffee()[:400, :400])}
  styles = {"hubble": tiny(data.hubble_deep_field()), "rocket": tiny(data.rocket())}
  rows = experiments.combinations(square, styles, config, weights, str(tmp_path))
  assert [(r["content"], r["style"]) for r in rows] == [(c, s) for c in square for s in styles]
  check_outputs(str(tmp_path), ["combinations.png"], rows)


def test_optimizers(tmp_path, setup):
  config, weights = setup
  rows = experiments.optimizers(tiny(data.chelsea()), tiny(data.coffee()), config, weights, str(tmp_path),
                                names=("adam", "sgd"))
  assert [r["optimizer"] for r in rows] == ["adam", "sgd"]
  check_outputs(str(tmp_path), ["optimizers.png", "loss_curves.png"], rows)


def test_optimizers_collect_a_loss_curve_per_step(tmp_path, setup, monkeypatch):
  config, weights = setup
  curves = []
  real_plot = experiments._plot_curves
  monkeypatch.setattr(experiments, "_plot_curves", lambda path, c: (curves.append(c), real_plot(path, c)))
  config = settings.resolve({**SETTINGS, "steps": 5})
  experiments.optimizers(tiny(data.chelsea()), tiny(data.coffee()), config, weights, str(tmp_path), names=("adam",))
  steps, losses = curves[0]["adam"]
  assert steps == [1, 2, 3, 4, 5] and len(losses) == 5 and losses[-1] < losses[0]


def test_experiments_honour_every_setting_of_the_config(tmp_path, setup):
  # Colours, coarse-to-fine, style scale and a blend of two paintings of different shapes: the picture of a
  # sweep point equals the engine's single run of the same settings.
  _, weights = setup
  content, styles = tiny(data.chelsea()), [tiny(data.coffee()), tiny(data.astronaut()[:160])]
  config = settings.resolve({**SETTINGS, "preserve_colors": "luminance", "scales": "16,1.5,2",
                             "style_scale": "0.8", "style_blend_weights": "3,1"}, num_styles=2)
  experiments.ratios(content, styles, config, weights, str(tmp_path), multipliers=[(1.0, 1.0)])
  (expected,) = engine.Engine(weights).run([engine.Job(content, styles, config)])
  np.testing.assert_array_equal(read_png(tmp_path / "1-1.png"), image_io.to_uint8(expected.image).astype(int))


@pytest.mark.parametrize("name", ["ratios", "presets"])
def test_weight_sweeps(tmp_path, setup, name):
  config, weights = setup
  rows = getattr(experiments, name)(tiny(data.chelsea()), tiny(data.coffee()), config, weights, str(tmp_path))
  assert len(rows) == 3
  if name == "ratios":
    ratio = config.style_weight / config.content_weight
    assert [r["style_weight"] / r["content_weight"] for r in rows] == pytest.approx([20 * ratio, ratio, ratio / 20])
  check_outputs(str(tmp_path), [f"{name}.png"], rows)


@pytest.mark.slow
def test_experiments_command_with_all_optimizers_honours_the_setting_flags(tmp_path, setup):
  _, weights = setup
  for kind, image in (("content", data.chelsea()), ("style", data.coffee())):
    os.makedirs(tmp_path / kind)
    Image.fromarray(image).save(tmp_path / kind / f"{kind}.png")
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  out = subprocess.run([sys.executable, "scripts/experiments.py", "--experiment=optimizers",
                        f"--out_dir={tmp_path / 'out'}", f"--content_dir={tmp_path / 'content'}",
                        f"--style_dir={tmp_path / 'style'}", "--max_size=32", "--steps=2", "--weights=random",
                        "--content_layers=relu2_1", "--style_layers=relu1_1,relu2_1", "--progress=false",
                        "--preserve_colors=luminance", "--compilation_cache=false"], env=env, capture_output=True,
                       text=True, timeout=600, cwd=ROOT)
  assert out.returncode == 0, out.stderr[-3000:]
  folder = tmp_path / "out" / "optimizers"
  for name in ("adam", "adagrad", "rmsprop", "sgd", "lbfgs"):
    assert (folder / f"{name}.png").exists()
  assert (folder / "loss_curves.png").exists() and (folder / "report.html").exists()
  # --preserve_colors applies: adam's picture is the engine's run of the same settings.
  config = settings.resolve({**SETTINGS, "preserve_colors": "luminance"})
  content = image_io.load_image(str(tmp_path / "content" / "content.png"), 32)
  style = image_io.load_image(str(tmp_path / "style" / "style.png"), 32)
  (expected,) = engine.Engine(weights).run([engine.Job(content, [style], config)])
  np.testing.assert_array_equal(read_png(folder / "adam.png"), image_io.to_uint8(expected.image).astype(int))
  again = subprocess.run(out.args, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert again.returncode == 2 and "--overwrite" in again.stderr  # Never silently overwritten.


def test_experiments_command_says_when_the_machine_sized_the_pictures(tmp_path):
  """As every command: on a CPU the machine's defaults (256 px, 100 steps) come with a `note:` on stderr."""
  for kind, image in (("content", data.chelsea()), ("style", data.coffee())):
    os.makedirs(tmp_path / kind)
    Image.fromarray(image[::8, ::8]).save(tmp_path / kind / f"{kind}.png")
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu")
  # Two blend weights for one painting: refused after the settings are resolved, before any work.
  args = ["--experiment=ratios", f"--out_dir={tmp_path / 'out'}", f"--content_dir={tmp_path / 'content'}",
          f"--style_dir={tmp_path / 'style'}", "--style_blend_weights=1,1", "--weights=random",
          "--compilation_cache=false"]
  out = subprocess.run([sys.executable, "scripts/experiments.py", *args], env=env, capture_output=True, text=True,
                       timeout=300, cwd=ROOT)
  assert out.returncode == 2 and "error: 2 style_blend_weights for 1 style image(s)" in out.stderr, out.stderr[-2000:]
  assert "note: no accelerator: max_size 256, steps 100" in out.stderr
