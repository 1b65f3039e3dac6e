"""Tests for nst_jax.rundir: metrics truncation, snapshot grid, loss plot and report, identity."""

import json

import numpy as np
import pytest
from PIL import Image

from nst_jax import image_io, rundir
from nst_jax.configs import default
from nst_jax.errors import NstJaxError


def test_report_of_a_folder_without_a_run_is_an_error(tmp_path):
  with pytest.raises(NstJaxError, match="no snapshots and no metrics"):
    rundir.write_report(str(tmp_path))
  with pytest.raises(NstJaxError, match="not found"):
    rundir.write_report(str(tmp_path / "missing"))


def test_truncate_metrics_keeps_first_records_up_to_step(tmp_path):
  path = str(tmp_path / "m.jsonl")
  with open(path, "w") as f:
    for step in (1, 2, 2, 3, 4):
      f.write(json.dumps({"step": step, "total": float(step)}) + "\n")
    f.write("not json\n")
  kept = rundir.truncate_metrics(path, 3)
  assert [r["step"] for r in kept] == [1, 2, 3]
  assert [r["step"] for r in rundir.read_metrics(path)] == [1, 2, 3]


def test_progress_grid_picks_first_and_last_when_there_are_many(tmp_path):
  snapshots = []
  for step in range(0, 50):
    path = str(tmp_path / f"step_{step:06d}.png")
    image_io.save_image(path, np.full((10, 20, 3), step / 50, np.float32))
    snapshots.append((step, path))
  size = rundir.progress_grid(snapshots, str(tmp_path / "grid.png"), max_tiles=9)
  assert size == rundir.grid_layout(9, (20, 10))[2:]
  assert rundir.list_snapshots(str(tmp_path))[-1][0] == 49


def test_loss_plot_is_800_by_500_and_survives_zero_losses(tmp_path):
  records = [{"step": s, "total": 10.0 / s, "content": 0.0, "style": 1.0 / s, "tv": 0.5} for s in range(1, 20)]
  path = str(tmp_path / "losses.png")
  rundir.loss_plot(records, path, weights={"content_weight": 1.0, "style_weight": 1e4, "tv_weight": 1e-3})
  with Image.open(path) as img:
    img.load()
    assert img.size == (800, 500)


def test_identity_ignores_steps_and_log_every_but_not_other_settings():
  content = np.zeros((4, 4, 3), np.float32)
  def ident(**changes):
    config = default.get_config()
    for k, v in changes.items():
      config[k] = v
    return rundir.identity(config, weights_source="random(seed=0)", weights_sha256="", content=content,
                           styles=[content])
  base = rundir.config_hash(ident())
  assert rundir.config_hash(ident(steps=9999, log_every=3)) == base
  assert rundir.config_hash(ident(lr=0.5)) != base
  assert rundir.differences(ident(), ident(tv_weight=2.0)) == ["settings.tv_weight"]
  json.dumps(ident())  # The record is plain JSON.


def test_a_run_file_that_holds_no_json_object_is_one_error(tmp_path):
  path = tmp_path / "config.json"
  path.write_text("[1, 2]")
  with pytest.raises(NstJaxError, match="holds a JSON list, not an object"):
    rundir.read_json(str(path))
  path.write_text('{"config": {}}')
  assert rundir.read_json(str(path)) == {"config": {}}


def test_the_command_on_a_workdir_with_a_damaged_config_says_so_in_one_line(tmp_path):
  import subprocess
  import sys
  workdir = tmp_path / "wd"
  workdir.mkdir()
  (workdir / rundir.CONFIG).write_text('"a string"')
  out = subprocess.run([sys.executable, "-m", "nst_jax.commands.main", "--content", "skimage:chelsea", "--style",
                        "skimage:rocket", "--workdir", str(workdir), "--weights", "random", "--max_size", "32",
                        "--steps", "2"], capture_output=True, text=True, timeout=300)
  assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
  assert "holds a JSON str, not an object" in out.stderr.strip().splitlines()[-1]
