"""A spatial-control job (two paintings, each in its own region, one with a source mask) through every front
end gives the same image: the library call, the command, `--workdir` stopped and resumed, a one-row manifest
and the web API; and each front end refuses bad masks with one line."""

from __future__ import annotations

import nst_jax
import numpy as np
import pytest
from PIL import Image

from conftest import make_image, make_style
from cross_path_test import assert_png_matches, run, run_manifest
from nst_jax import image_io, inputs, manifest, rundir, settings, vgg

SETTINGS = {"max_size": 64, "steps": 6, "optimizer": "adam", "scales": "32,2,3", "style_weight": 1e3,
            "log_every": 1, "outside_content_weight": 2.0, "content_layers": "relu2_1",
            "style_layers": "relu1_1,relu2_1"}


def _save(path, array):
  Image.fromarray(np.asarray(np.round(np.clip(array, 0, 1) * 255), np.uint8)).save(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  folder = tmp_path_factory.mktemp("regions")
  paths = {name: str(folder / f"{name}.png") for name in ("content", "style_a", "style_b", "left", "right",
                                                          "source_b", "square", "black")}
  Image.fromarray(image_io.to_uint8(make_image(48, 64, seed=0))).save(paths["content"])
  Image.fromarray(image_io.to_uint8(make_style(40, 40, seed=1))).save(paths["style_a"])
  Image.fromarray(image_io.to_uint8(make_style(30, 80, seed=2))).save(paths["style_b"])
  y, x = np.mgrid[0:96, 0:128] / np.array([96.0, 128.0])[:, None, None]
  soft_left = np.clip((0.6 - x) * 5, 0, 1)  # Soft edge, at twice the photo's size.
  _save(paths["left"], soft_left)
  right = np.zeros((96, 128, 3))
  right[..., 0] = 1.0 - soft_left  # A colour mask (red): converted to grey.
  _save(paths["right"], right)
  _save(paths["source_b"], (np.mgrid[0:30, 0:80][1] < 40).astype(float))
  _save(paths["square"], np.ones((64, 64)))
  _save(paths["black"], np.zeros((48, 64)))
  return folder, paths


def region_flags(paths):
  return [f"--content={paths['content']}", f"--style={paths['style_a']}", f"--style={paths['style_b']}",
          f"--style_region={paths['left']}", f"--style_region={paths['right']}",
          f"--style_region_source={paths['square']}", f"--style_region_source={paths['source_b']}"]


@pytest.fixture(scope="module")
def reference(files):
  _, paths = files
  config = settings.resolve(SETTINGS, num_styles=2)
  job, notes = inputs.load_job(paths["content"], [paths["style_a"], paths["style_b"]], config,
                               style_regions=[paths["left"], paths["right"]],
                               style_region_sources=[None, paths["source_b"]])
  assert any("converted to greyscale" in note for note in notes)
  image = nst_jax.stylize(job.content, job.styles, config, weights=vgg.random_weights(0), regions=job.regions,
                           region_sources=job.region_sources)
  plain = nst_jax.stylize(job.content, job.styles, config, weights=vgg.random_weights(0))
  assert np.abs(image - plain).max() > 0.01  # The regions made a difference.
  return image


def _flag_list(values):
  return [f"--{k}={v}" for k, v in values.items()]


def _source_flags(paths):
  """The command's flags: a full-painting source for style a is a white mask of its aspect ratio."""
  white = paths["content"].replace("content.png", "white_a.png")
  _save(white, np.ones((40, 40)))
  return [f.replace(paths["square"], white) for f in region_flags(paths)]


@pytest.mark.slow
def test_the_command_and_a_resumed_workdir_equal_the_library(files, reference):
  folder, paths = files
  common = [*_source_flags(paths), "--weights=random", "--noprogress", *_flag_list(SETTINGS)]
  result = run(*common, f"--output={folder / 'command.png'}", cwd=folder)
  assert result.returncode == 0, result.stderr
  assert "converted to greyscale" in result.stderr
  assert_png_matches(folder / "command.png", reference)
  workdir = folder / "run"
  first = run(*common, f"--workdir={workdir}", "--checkpoint_every=2", "--steps=2", cwd=folder)
  assert first.returncode == 0, first.stderr  # 5 of the 9 steps (3 + 2): a shorter run, then extended.
  resumed = run(*common, f"--workdir={workdir}", cwd=folder)
  assert resumed.returncode == 0, resumed.stderr
  assert "resuming" in resumed.stderr
  assert_png_matches(workdir / rundir.FINAL, reference)
  record = rundir.read_json(str(workdir / rundir.CONFIG))
  assert len(record["inputs"]["style_region"]) == 2 and len(record["identity"]["regions"]) == 2
  moved = run(*[f.replace(paths["left"], paths["content"]) for f in common], f"--workdir={workdir}", cwd=folder)
  assert moved.returncode != 0 and "regions" in moved.stderr  # Another mask: not this run.


@pytest.mark.slow
def test_a_one_row_manifest_equals_the_library(files, reference):
  folder, paths = files
  white = paths["content"].replace("content.png", "white_a.png")
  _save(white, np.ones((40, 40)))
  row = {"content": paths["content"], "style": f"{paths['style_a']};{paths['style_b']}",
         "style_region": f"{paths['left']};{paths['right']}", "style_region_source": f"{white};{paths['source_b']}",
         "output": str(folder / "batch" / "row.png"), **SETTINGS}
  run_manifest(folder, row)
  assert_png_matches(folder / "batch" / "row.png", reference)


@pytest.mark.slow
def test_the_web_api_equals_the_library(files, reference, tmp_path):
  pytest.importorskip("fastapi")
  from fastapi.testclient import TestClient
  from nst_jax.server.app import create_app
  from web_helpers import api_result
  _, paths = files
  app = create_app(data_dir=str(tmp_path / "data"), weights=vgg.random_weights(0), rate_limit=0,
                   checkpoint_every=None, preview_every=1000.0, batch_wait=0.0)
  names = {"content": "content", "style": "style_a", "style2": "style_b", "style_region": "left",
           "style2_region": "right", "style2_region_source": "source_b"}
  uploads = {field: (f"{name}.png", open(paths[name], "rb").read()) for field, name in names.items()}
  with TestClient(app) as client:
    image = api_result(client, uploads, SETTINGS)
  assert np.abs(image - reference).max() <= 1.0 / 255 + 1e-6


def test_the_api_refuses_bad_masks_with_a_422_naming_them(files, tmp_path):
  pytest.importorskip("fastapi")
  from fastapi.testclient import TestClient
  from nst_jax.server.app import create_app
  _, paths = files
  client = TestClient(create_app(data_dir=str(tmp_path), weights=vgg.random_weights(0), rate_limit=0,
                                 start_worker=False))
  read = lambda name: (f"{name}.png", open(paths[name], "rb").read())
  base = {"content": read("content"), "style": read("style_a")}
  cases = [({"style_region": read("black")}, "all black"),
           ({"style_region": read("square")}, "aspect ratio"),
           ({"style2_region": read("left")}, "no second painting"),
           ({"style2": read("style_b"), "style_region": read("left")}, "1 style_region mask(s) for 2"),
           ({"style_region": ("x.png", b"not an image")}, "style_region"),
           ({"style_region_source": read("left")}, "needs style_region")]
  for extra, words in cases:
    r = client.post("/api/jobs", files={**base, **extra}, data={"max_size": "32"})
    assert r.status_code in (415, 422) and words in r.json()["detail"], (extra.keys(), r.text)
  ok = client.post("/api/jobs", files={**base, "style_region": read("left")}, data={"max_size": "32"})
  assert ok.status_code == 201, ok.text
  assert "style_region" in client.get("/api/config").json()["region_fields"]


def test_the_command_and_manifest_refuse_bad_masks_with_one_line(files):
  folder, paths = files
  cases = [([f"--style_region={paths['left']}"], "1 style_region mask(s) for 2 style image(s)"),
           ([f"--style_region={paths['black']}"] * 2, "all black"),
           ([f"--style_region={paths['square']}"] * 2, "aspect ratio of the photo"),
           ([f"--style_region={folder / 'missing.png'}"] * 2, "style_region 1: image file not found")]
  for masks, words in cases:
    result = run(f"--content={paths['content']}", f"--style={paths['style_a']}", f"--style={paths['style_b']}",
                 *masks, f"--output={folder / 'bad.png'}", "--weights=random", "--max_size=32", cwd=folder)
    assert result.returncode != 0 and words in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and result.stderr.strip().count("\n") <= 1, result.stderr
  path = folder / "bad.csv"
  path.write_text(f"content,style,style_region,output\n{paths['content']},{paths['style_a']};{paths['style_b']},"
                  f"{paths['left']},{folder / 'x.png'}\n")
  (row,) = manifest.load_rows(str(path))
  assert row.job is None and "1 style_region mask(s) for 2" in row.error
