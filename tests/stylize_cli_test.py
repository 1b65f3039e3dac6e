"""End-to-end `nst-jax` runs in a subprocess: a real 64 px run, and every bad input of the issue."""

from __future__ import annotations

import json
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
from nst_jax import settings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def nst_jax(*args, home, env=None, timeout=300):
  """Runs `python -m nst_jax.commands.main ARGS` with this checkout first on the path."""
  full_env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
                  NST_JAX_HOME=str(home), JAX_PLATFORMS="cpu", **(env or {}))
  return subprocess.run([sys.executable, "-m", "nst_jax.commands.main", *map(str, args)], capture_output=True,
                        text=True, env=full_env, timeout=timeout, cwd=str(home))


@pytest.fixture
def files(tmp_path):
  """Content and style PNGs, an output folder, and an empty cache dir."""
  Image.fromarray((make_image(60, 80, seed=0) * 255).astype(np.uint8)).save(tmp_path / "content.png")
  Image.fromarray((make_style(70, 70, seed=1) * 255).astype(np.uint8)).save(tmp_path / "style.png")
  (tmp_path / "home").mkdir()
  (tmp_path / "out").mkdir()
  return tmp_path


@pytest.mark.slow
def test_end_to_end_run_halves_the_loss(files, keras_h5):
  output = files / "out" / "result.png"
  result = nst_jax("--content", files / "content.png", "--style", files / "style.png", "--output", output,
                   "--weights", keras_h5, "--max_size", 64, "--optimizer", "lbfgs", "--steps", 20,
                   "--log_every", 1, "--init", "noise", "--noprogress", home=files / "home")
  assert result.returncode == 0, result.stderr
  assert "Traceback" not in result.stderr
  assert "wrote" in result.stdout
  with Image.open(output) as image:
    assert image.size == (64, 48) and image.mode == "RGB"
  records = [json.loads(line) for line in (files / "out" / "result.metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records] == list(range(1, 21))
  for record in records:
    assert set(record) >= {"step", "total", "content", "style", "tv", "seconds"}
    assert np.isfinite(record["total"])
  # The loss of the starting image (noise, seed 0), evaluated with the same settings in this process.
  from nst_jax import image_io, optimize, weights
  from nst_jax.configs import default
  config = default.get_config()
  config.max_size, config.optimizer, config.init = 64, "lbfgs", "noise"
  vgg_weights = weights.load_vgg19(keras_h5)
  content = image_io.load_image(str(files / "content.png"), 64)
  style = image_io.load_image(str(files / "style.png"), 64)
  targets = optimize.targets_from_config(vgg_weights, config, content, [style])
  stylizer = optimize.Stylizer(config)
  start_image = optimize.init_image("noise", content, seed=0)
  assert start_image.shape == (48, 64, 3)
  start = float(stylizer.evaluate(start_image[None], jax.tree.map(lambda x: x[None], targets),
                                  vgg_weights)["total"][0])
  assert records[-1]["total"] < 0.5 * start, (start, records[-1]["total"])
  assert records[-1]["total"] < records[0]["total"]


def test_help_lists_the_flags(files):
  result = nst_jax("--help", home=files / "home")
  assert result.returncode == 0
  for flag in ("--content", "--style", "--output", "--max_size", "--steps", "--optimizer", "--lr",
               "--content_weight", "--style_weight", "--tv_weight", "--tv_kind", "--content_layers",
               "--style_layers", "--style_layer_weights", "--init", "--seed", "--weights", "--pooling",
               "--epochs", "--steps_per_epoch", "--overwrite"):
    assert flag in result.stdout, flag


def _png_header(width: int, height: int) -> bytes:
  from image_io_test import _png_header as header
  return header(width, height)


def bad_cases(files, keras_h5):
  """`(name, args, extra_env, expected words in the message)` for each bad input."""
  content, style = files / "content.png", files / "style.png"
  (files / "notes.png").write_text("not an image")
  data = content.read_bytes()
  (files / "truncated.png").write_bytes(data[: len(data) // 2])
  (files / "zero.png").write_bytes(_png_header(0, 10))
  (files / "bomb.png").write_bytes(_png_header(50_000, 50_000))
  (files / "bad.h5").write_bytes(open(keras_h5, "rb").read()[:5000])
  (files / "a_file").write_text("")
  Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(files / "one_pixel.png")
  out = files / "out" / "x.png"
  good = ("--style", style, "--output", out, "--weights", keras_h5, "--steps", 1)
  offline = {"NST_JAX_WEIGHTS_URL": "http://127.0.0.1:1/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"}
  return [
      ("missing file", ("--content", files / "missing.jpg", *good), {}, ["not found", "missing.jpg"]),
      ("non-image", ("--content", files / "notes.png", *good), {}, ["notes.png", "not an image"]),
      ("truncated", ("--content", files / "truncated.png", *good), {}, ["truncated.png"]),
      ("zero size", ("--content", files / "zero.png", *good), {}, ["zero.png"]),
      ("bomb", ("--content", files / "bomb.png", *good), {}, ["bomb.png", "limit"]),
      ("max_size", ("--content", content, *good, "--max_size", 100000), {}, ["max_size"]),
      ("unknown layer", ("--content", content, *good, "--style_layers", "relu1_1,relu9_1"), {}, ["relu9_1"]),
      ("negative weight", ("--content", content, *good, "--style_weight", -1), {}, ["style_weight"]),
      ("negative layer weight", ("--content", content, *good, "--style_layer_weights", "1,1,-1,1,1"), {},
       ["style layer weight"]),
      ("negative lr", ("--content", content, *good, "--lr", -0.1), {}, ["lr"]),
      ("bad number", ("--content", content, *good, "--tv_weight", "lots"), {}, ["tv_weight"]),
      ("unwritable folder", ("--content", content, "--style", style, "--output", files / "nope" / "x.png",
                             "--weights", keras_h5), {}, ["does not exist"]),
      ("folder is a file", ("--content", content, "--style", style, "--output", files / "a_file" / "x.png",
                            "--weights", keras_h5), {}, ["a_file"]),
      ("missing --style", ("--content", content, "--output", out), {}, ["--style"]),
      ("1x1 content", ("--content", files / "one_pixel.png", *good), {}, ["1x1", "at least 16"]),
      ("unwritable output", ("--content", content, "--style", style, "--output", "/proc/x.png", "--weights",
                             keras_h5), {}, ["not writable", "/proc"]),
      ("bad weights file", ("--content", content, "--style", style, "--output", out, "--weights",
                            files / "bad.h5"), {}, ["bad.h5"]),
      ("no weights offline", ("--content", content, "--style", style, "--output", out), offline,
       ["--weights", "random", "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"]),
  ]


CASE_NAMES = ["missing file", "non-image", "truncated", "zero size", "bomb", "max_size", "unknown layer",
              "negative weight", "negative layer weight", "negative lr", "bad number", "unwritable folder",
              "folder is a file", "missing --style", "1x1 content", "unwritable output", "bad weights file",
              "no weights offline"]


def assert_one_line_error(result, words):
  assert result.returncode != 0
  assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr
  assert lines[0].startswith("error: "), lines[0]
  for word in words:
    assert word in lines[0], (word, lines[0])


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_gives_one_line_error_and_no_output(files, keras_h5, name):
  cases = {case[0]: case[1:] for case in bad_cases(files, keras_h5)}
  assert sorted(cases) == sorted(CASE_NAMES)
  args, env, words = cases[name]
  result = nst_jax(*args, home=files / "home", env=env, timeout=120)
  assert_one_line_error(result, words)
  assert os.listdir(files / "out") == []  # No output image, no metrics file, no temporary file.
  if name == "no weights offline":
    assert os.listdir(files / "home") in ([], ["jax_cache"])  # No partial or unverified weight file.


def test_existing_output_is_not_overwritten(files, keras_h5):
  output = files / "out" / "x.png"
  output.write_bytes(b"precious")
  result = nst_jax("--content", files / "content.png", "--style", files / "style.png", "--output", output,
                   "--weights", keras_h5, "--steps", 1, home=files / "home")
  assert_one_line_error(result, ["already exists", "--overwrite"])
  assert output.read_bytes() == b"precious"
  assert os.listdir(files / "out") == ["x.png"]


_VIDEO_FLAGS_SCRIPT = """
import contextlib, io, sys
from nst_jax import settings
from nst_jax.commands import common, stylize
for name in settings.VIDEO_ONLY:
  err = io.StringIO()
  with contextlib.redirect_stderr(err), contextlib.suppress(SystemExit):
    common._parse_flags(["nst-jax", "--content=a.png", f"--{name}=1"])
  print(name, "|", err.getvalue().strip().replace("\\n", " / "))
"""


def test_a_video_setting_on_the_picture_command_says_it_is_one(files):
  """--temporal_weight (and every video-only setting) names `nst-jax video`, never a look-alike (tv_weight)."""
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  result = subprocess.run([sys.executable, "-c", _VIDEO_FLAGS_SCRIPT], capture_output=True, text=True, env=env,
                          timeout=120, cwd=str(files))
  assert result.returncode == 0, result.stderr
  lines = dict(line.split(" | ", 1) for line in result.stdout.strip().splitlines())
  assert sorted(lines) == sorted(settings.VIDEO_ONLY)  # Every one, the clip's part (start, frames, ...) too.
  assert {"temporal_weight", "video_mode", "temporal_frames", "passes", "flow_method", "start", "fps"} <= set(lines)
  for name, message in lines.items():
    assert message == f"error: --{name} is a setting of `nst-jax video`, not of a picture (docs/video.md)"


def test_a_stop_without_workdir_says_so_and_writes_nothing(files):
  """SIGTERM (as SIGINT, SIGHUP, a closed pipe) on a run without --workdir: a message, 143, no output."""
  output = files / "out" / "x.png"
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
             NST_JAX_HOME=str(files / "home"), JAX_PLATFORMS="cpu")
  process = subprocess.Popen(
      [sys.executable, "-m", "nst_jax.commands.main", "--content", files / "content.png", "--style",
       files / "style.png", "--output", output, "--weights", "random", "--max_size", "32", "--steps", "100000",
       "--log_every", "1", "--content_layers", "relu2_1", "--style_layers", "relu1_1", "--noprogress"],
      env=env, cwd=str(files), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  metrics = files / "out" / "x.metrics.jsonl"
  deadline = time.time() + 240
  while time.time() < deadline and process.poll() is None and not (metrics.exists() and metrics.stat().st_size):
    time.sleep(0.02)  # Until the run logs its first step.
  process.send_signal(signal.SIGTERM)
  _, err = process.communicate(timeout=120)
  assert process.returncode == 143, err
  assert "Traceback" not in err
  assert "interrupted by SIGTERM at step" in err.strip().splitlines()[-1] and "not written" in err
  assert sorted(os.listdir(files / "out")) == ["x.metrics.jsonl"]  # No image, no temporary file.


def test_the_web_extra_installs_what_the_browser_test_needs():
  import configparser
  config = configparser.ConfigParser()
  config.read(os.path.join(REPO, "setup.cfg"))
  web = config["options.extras_require"]["web"].split()
  assert any(line.startswith("playwright") for line in web)


def test_help_names_every_command(files):
  for args in (("help",), ("--help",)):
    result = nst_jax(*args, home=files / "home")
    assert result.returncode == 0, result.stderr
    for command in ("batch", "serve", "report", "experiments", "convert_weights", "normalize_vgg"):
      assert command in result.stdout, (args, command)
  result = nst_jax("colorize", home=files / "home")
  assert_one_line_error(result, ["unknown command 'colorize'", "nst-jax help"])


def test_blend_of_paintings_of_other_shapes_and_notes(files):
  """The README's blend example with paintings of different aspect ratios, and what a user is told."""
  Image.fromarray((make_style(30, 90, seed=2) * 255).astype(np.uint8)).save(files / "wide.png")
  output = files / "out" / "blend.png"
  result = nst_jax("--content", files / "content.png", "--style", files / "style.png", "--style", files / "wide.png",
                   "--style_blend_weights", "3,1", "--output", output, "--weights", "random", "--steps", 1,
                   "--max_size", 100, "--scales", "256,1.4,5", "--content_layers", "relu2_1",
                   "--style_layers", "relu1_1", "--noprogress", home=files / "home")
  assert result.returncode == 0, result.stderr
  assert "Traceback" not in result.stderr
  assert "note: content image 80x60 upscaled to 100x75" in result.stderr
  assert "note: scale_start 256 is not below the output's longest side 100: one scale" in result.stderr
  with Image.open(output) as image:
    assert image.size == (100, 75)


def test_workdir_resume_keeps_the_recorded_machine_sized_defaults(files):
  """A --workdir run records its resolved size and steps (config.json); the same command without --max_size or
  --steps resumes with those, not with this machine's defaults (which would be another run)."""
  common = ["--content", files / "content.png", "--style", files / "style.png", "--workdir", files / "run",
            "--weights", "random", "--content_layers", "relu2_1", "--style_layers", "relu1_1", "--noprogress"]
  first = nst_jax(*common, "--max_size", 40, "--steps", 3, home=files / "home")
  assert first.returncode == 0, first.stderr
  assert "note: no accelerator" not in first.stderr and "estimate: " in first.stderr
  again = nst_jax(*common, home=files / "home")  # The defaults would be 256 px x 100 steps on this CPU.
  assert again.returncode == 0, again.stderr
  assert "40x30, 3 steps" in again.stdout and "note: no accelerator" not in again.stderr
