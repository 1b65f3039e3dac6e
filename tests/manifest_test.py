"""Tests for manifest jobs (nst_jax.manifest and `nst-jax batch`): bad rows reported, others run, resume."""

import os
import subprocess
import sys

import pytest
from PIL import Image
from skimage import data

from nst_jax import manifest
from nst_jax.configs import default
from nst_jax.errors import NstJaxError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHALLOW = ["--content_layers=relu2_1", "--style_layers=relu1_1,relu2_1"]


def write_inputs(folder):
  Image.fromarray(data.chelsea()).save(os.path.join(folder, "cat.jpg"))
  Image.fromarray(data.coffee()).save(os.path.join(folder, "coffee.png"))


def write_manifest(folder, lines):
  path = os.path.join(folder, "pairs.csv")
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  return path


def run_batch(args):
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.run([sys.executable, "-m", "nst_jax.commands.main", "batch", "--weights=random",
                         "--max_size=32", "--steps=2", "--progress=false", "--compilation_cache=false", *SHALLOW,
                         *args], env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)


def test_rows_parse_overrides_and_report_bad_values(tmp_path):
  write_inputs(tmp_path)
  path = write_manifest(tmp_path, [
      "content,style,output,style_weight,steps",
      "cat.jpg,coffee.png,a.png,1e5,7",
      "cat.jpg,coffee.png,b.png,-1,",
      "cat.jpg,coffee.png,c.png,,2.5",
      "cat.jpg,nowhere.png,d.png,,",
      "cat.jpg,coffee.png,a.png,,",
  ])
  config = default.get_config()
  config.max_size = 32
  rows = manifest.load_rows(path, config)
  assert [r.number for r in rows] == [1, 2, 3, 4, 5]
  assert rows[0].error is None and rows[0].item.config.style_weight == 1e5 and rows[0].item.config.steps == 7
  assert rows[0].item.content.shape == (21, 32, 3) and rows[0].output == str(tmp_path / "a.png")
  assert "style_weight" in rows[1].error
  assert "steps" in rows[2].error and "integer" in rows[2].error
  assert "nowhere.png" in rows[3].error
  assert "row 1" in rows[4].error  # The same output twice.


def test_manifest_needs_known_columns(tmp_path):
  with pytest.raises(NstJaxError, match="lacks column"):
    manifest.load_rows(write_manifest(tmp_path, ["content,output", "a,b"]), default.get_config())
  with pytest.raises(NstJaxError, match="unknown column"):
    manifest.load_rows(write_manifest(tmp_path, ["content,style,output,colour", "a,b,c,d"]),
                       default.get_config())


@pytest.mark.slow
def test_batch_command_skips_bad_row_runs_others_and_resumes(tmp_path):
  write_inputs(tmp_path)
  os.makedirs(tmp_path / "out")
  path = write_manifest(tmp_path, [
      "content,style,output,content_weight",
      "cat.jpg,coffee.png,out/one.png,",
      "missing.jpg,coffee.png,out/two.png,",
      "cat.jpg,coffee.png,out/three.png,5",
  ])
  first = run_batch([f"--manifest={path}"])
  assert first.returncode == 1, first.stderr
  assert "row 2" in first.stderr and "missing.jpg" in first.stderr
  assert (tmp_path / "out/one.png").exists() and (tmp_path / "out/three.png").exists()
  assert not (tmp_path / "out/two.png").exists()
  assert "1 batch(es)" in first.stdout  # Rows 1 and 3 share a bucket: one compiled batch.
  assert "done" in first.stdout and "FAILED" in first.stdout
  stamp = os.path.getmtime(tmp_path / "out/one.png")
  # Resume: finished rows are skipped (nothing recomputed), the bad row still fails.
  second = run_batch([f"--manifest={path}"])
  assert second.returncode == 1
  assert "2 already done" in second.stdout or second.stdout.count("exists") == 2
  assert os.path.getmtime(tmp_path / "out/one.png") == stamp


def test_batch_command_rejects_missing_manifest(tmp_path):
  out = run_batch([f"--manifest={tmp_path / 'nope.csv'}"])
  assert out.returncode == 2 and "manifest not found" in out.stderr and "Traceback" not in out.stderr
