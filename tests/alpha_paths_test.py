"""A transparent photo and painting through every front end give the same RGBA image (alpha kept exactly):
the library, the command, `--workdir` stopped and resumed, a one-row manifest and the web API; a JPEG
output or a fully transparent photo is one line."""

from __future__ import annotations

import nst_jax
import numpy as np
import pytest
from PIL import Image

from conftest import make_image, make_style
from cross_path_test import run, run_manifest
from nst_jax import image_io, inputs, manifest, rundir, settings, vgg

SETTINGS = {"max_size": 48, "steps": 6, "optimizer": "adam", "style_weight": 1e3, "log_every": 1,
            "content_layers": "relu2_1", "style_layers": "relu1_1,relu2_1"}


def _save_rgba(path, rgb, a):
  Image.fromarray(image_io.to_uint8(np.concatenate([rgb, a[..., None]], -1))).save(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  folder = tmp_path_factory.mktemp("alpha")
  paths = {name: str(folder / f"{name}.png") for name in ("content", "style", "clear")}
  x = np.mgrid[0:48, 0:64][1] / 63.0
  _save_rgba(paths["content"], make_image(48, 64), np.clip((0.7 - x) * 4, 0, 1))  # Soft edge, then clear.
  style_alpha = np.ones((40, 40), np.float32)
  style_alpha[:, 25:] = 0.0
  _save_rgba(paths["style"], make_style(40, 40), style_alpha)
  _save_rgba(paths["clear"], make_image(48, 64), np.zeros((48, 64), np.float32))
  return folder, paths


@pytest.fixture(scope="module")
def reference(files):
  _, paths = files
  config = settings.resolve(SETTINGS, num_styles=1)
  job, _ = inputs.load_job(paths["content"], [paths["style"]], config)
  assert job.content.shape == (36, 48, 4) and job.styles[0].shape[-1] == 4
  image = nst_jax.stylize(job.content, job.styles, config, weights=vgg.random_weights(0))
  assert image.shape == (36, 48, 4) and np.array_equal(image[..., 3], job.content[..., 3])
  return image


def assert_rgba_matches(path, reference):
  image = image_io.open_image_keep_alpha(str(path))
  assert image.shape == reference.shape
  assert np.array_equal(image_io.to_uint8(image[..., 3]), image_io.to_uint8(reference[..., 3]))
  assert np.abs(image - reference).max() <= 1.0 / 255 + 1e-6, np.abs(image - reference).max()


def _flags(paths):
  return [f"--content={paths['content']}", f"--style={paths['style']}", "--weights=random", "--noprogress",
          *[f"--{k}={v}" for k, v in SETTINGS.items()]]


@pytest.mark.slow
def test_the_command_and_a_resumed_workdir_equal_the_library(files, reference):
  folder, paths = files
  result = run(*_flags(paths), f"--output={folder / 'command.webp'}", cwd=folder)
  assert result.returncode == 0, result.stderr
  image = image_io.open_image_keep_alpha(str(folder / "command.webp"))  # Lossy colours, exact alpha.
  assert np.array_equal(image_io.to_uint8(image[..., 3]), image_io.to_uint8(reference[..., 3]))
  result = run(*_flags(paths), f"--output={folder / 'command.png'}", cwd=folder)
  assert result.returncode == 0, result.stderr
  assert_rgba_matches(folder / "command.png", reference)
  workdir = folder / "run"
  first = run(*_flags(paths), f"--workdir={workdir}", "--checkpoint_every=2", "--steps=2", cwd=folder)
  assert first.returncode == 0, first.stderr
  resumed = run(*_flags(paths), f"--workdir={workdir}", f"--output={folder / 'workdir.png'}", cwd=folder)
  assert resumed.returncode == 0, resumed.stderr
  assert "resuming" in resumed.stderr
  assert_rgba_matches(workdir / rundir.FINAL, reference)
  assert_rgba_matches(folder / "workdir.png", reference)
  opaque = folder / "opaque.png"
  Image.open(paths["content"]).convert("RGB").save(opaque)  # Same colours, no alpha: another run.
  moved = run(*[f.replace(paths["content"], str(opaque)) for f in _flags(paths)], f"--workdir={workdir}", cwd=folder)
  assert moved.returncode != 0 and "error:" in moved.stderr


@pytest.mark.slow
def test_a_one_row_manifest_equals_the_library(files, reference):
  folder, paths = files
  row = {"content": paths["content"], "style": paths["style"], "output": str(folder / "batch" / "row.png"),
         **SETTINGS}
  run_manifest(folder, row)
  assert_rgba_matches(folder / "batch" / "row.png", reference)


@pytest.mark.slow
def test_the_web_api_equals_the_library(files, reference, tmp_path):
  pytest.importorskip("fastapi")
  from fastapi.testclient import TestClient
  from nst_jax.server.app import create_app
  from web_helpers import api_result
  _, paths = files
  app = create_app(data_dir=str(tmp_path / "data"), weights=vgg.random_weights(0), rate_limit=0,
                   checkpoint_every=None, preview_every=1000.0, batch_wait=0.0)
  uploads = {field: (f"{field}.png", open(paths[field], "rb").read()) for field in ("content", "style")}
  with TestClient(app) as client:
    clear = client.post("/api/jobs", files={**uploads, "content": ("c.png", open(paths["clear"], "rb").read())},
                        data={k: str(v) for k, v in SETTINGS.items()})
    assert clear.status_code == 422 and "fully transparent" in clear.json()["detail"], clear.text
    image = api_result(client, uploads, SETTINGS)
  assert image.shape == reference.shape
  assert np.array_equal(image_io.to_uint8(image[..., 3]), image_io.to_uint8(reference[..., 3]))
  assert np.abs(image - reference).max() <= 1.0 / 255 + 1e-6


def test_a_jpeg_output_or_a_fully_transparent_photo_is_one_line(files):
  folder, paths = files
  cases = [(paths["content"], "out.jpg", "cannot store alpha; use .png, .webp or .tiff"),
           (paths["clear"], "out.png", "content image is fully transparent")]
  for content, output, words in cases:
    result = run(f"--content={content}", f"--style={paths['style']}", f"--output={folder / output}",
                 "--weights=random", "--max_size=32", cwd=folder)
    assert result.returncode != 0 and words in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and result.stderr.strip().count("\n") <= 1, result.stderr
    assert not (folder / output).exists()
  result = run("experiments", "--experiment=optimizers", f"--content={paths['content']}",
               f"--style={paths['style']}", f"--out_dir={folder / 'exp'}", "--weights=random", cwd=folder)
  assert result.returncode != 0 and "experiments do not keep alpha" in result.stderr, result.stderr
  assert "Traceback" not in result.stderr and result.stderr.strip().count("\n") <= 1, result.stderr
  path = folder / "bad.csv"
  path.write_text(f"content,style,output\n{paths['content']},{paths['style']},{folder / 'row.jpg'}\n")
  (row,) = manifest.load_rows(str(path))
  assert row.job is None and ".png, .webp or .tiff" in row.error
