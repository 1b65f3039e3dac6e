"""Tests for manifest jobs (nst_jax.manifest and `nst-jax batch`): any setting as a column, blends of
paintings of any shapes, bad rows reported and skipped, output folders created, resume from checkpoints."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image
from skimage import data

from nst_jax import engine, image_io, inputs, manifest, settings, vgg
from nst_jax.configs import default, presets
from nst_jax.errors import NstJaxError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHALLOW = {"content_layers": "relu2_1", "style_layers": "relu1_1,relu2_1"}
FLAGS = {"max_size": 32, "steps": 4, "log_every": 100, **SHALLOW}  # What a command line would give.


@pytest.fixture(scope="module")
def weights():
  return vgg.random_weights(0)


def write_inputs(folder):
  Image.fromarray(data.chelsea()).save(os.path.join(folder, "cat.jpg"))
  Image.fromarray(data.coffee()).save(os.path.join(folder, "coffee.png"))
  Image.fromarray(data.astronaut()[:160]).save(os.path.join(folder, "wide.png"))  # Another aspect ratio.


def write_manifest(folder, lines, name="pairs.csv"):
  path = os.path.join(folder, name)
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  return path


def reference(folder, content, styles, values, weights):
  """The row's picture made directly: the files loaded as `nst-jax` does, one engine job."""
  config = settings.resolve(values, num_styles=len(styles))
  job, _ = inputs.load_job(os.path.join(folder, content), [os.path.join(folder, s) for s in styles], config)
  (result,) = engine.Engine(weights).run([job])
  return result.image


def as_png(image):
  return image_io.to_uint8(image).astype(int)


def read_png(path):
  return np.asarray(Image.open(path).convert("RGB")).astype(int)


def test_rows_take_flags_as_defaults_and_report_bad_values(tmp_path):
  write_inputs(tmp_path)
  path = write_manifest(tmp_path, [
      "content,style,output,style_weight,steps",
      "cat.jpg,coffee.png,a.png,1e5,7",
      "cat.jpg,coffee.png,b.png,-1,",
      "cat.jpg,coffee.png,c.png,,2.5",
      "cat.jpg,nowhere.png,d.png,,",
      "cat.jpg,coffee.png,a.png,,",
      "cat.jpg,coffee.png,e.png,,",
  ])
  rows = manifest.load_rows(path, FLAGS)
  assert [r.number for r in rows] == [1, 2, 3, 4, 5, 6]
  assert rows[0].error is None and rows[0].job.config.style_weight == 1e5 and rows[0].job.config.steps == 7
  assert rows[0].job.content.shape == (21, 32, 3) and rows[0].output == str(tmp_path / "a.png")
  assert "style_weight" in rows[1].error
  assert "steps" in rows[2].error and "integer" in rows[2].error
  assert "nowhere.png" in rows[3].error
  assert "row 1" in rows[4].error  # The same output twice.
  # Empty cells: the flags, then the defaults.
  assert rows[5].job.config.steps == 4 and rows[5].job.config.style_weight == default.get_config().style_weight


def test_any_setting_name_is_a_column_and_unknown_columns_are_named(tmp_path):
  write_inputs(tmp_path)
  path = write_manifest(tmp_path, [
      "content,style,output,preserve_colors,scales,style_scale,preset,init",
      "cat.jpg,coffee.png,a.png,luminance,16;1.5;3,0.8,painterly,noise",
      "cat.jpg,coffee.png,b.png,,,,,",
  ])
  rows = manifest.load_rows(path, {**FLAGS, "preserve_colors": "histogram", "style_scale": 1.5})
  config = rows[0].job.config
  assert (config.preserve_colors, config.scale_start, config.scale_factor, config.scale_steps) == \
      ("luminance", 16, 1.5, 3)
  assert (config.style_scale, config.style_weight, config.init) == (0.8, presets.PRESETS["painterly"]["style_weight"],
                                                                   "noise")
  assert (rows[1].job.config.preserve_colors, rows[1].job.config.style_scale) == ("histogram", 1.5)
  with pytest.raises(NstJaxError, match="lacks column"):
    manifest.load_rows(write_manifest(tmp_path, ["content,output", "a,b"]))
  with pytest.raises(NstJaxError) as info:
    manifest.load_rows(write_manifest(tmp_path, ["content,style,output,colour", "a,b,c,d"]))
  message = str(info.value)
  assert "'colour'" in message and "any setting name" in message and "docs/settings.md" in message
  assert "\n" not in message


def test_row_settings_override_the_command_line_shorthands_included():
  merge = manifest.merge_settings
  assert merge({"steps": 5, "style_weight": 1e3}, {"steps": "", "style_weight": "2e3"}) == \
      {"steps": 5, "style_weight": "2e3"}
  assert merge({"scales": ["64", "2", "10"]}, {"scale_steps": "7"}) == \
      {"scale_start": 64, "scale_factor": 2.0, "scale_steps": "7"}
  assert merge({"scale_start": 64}, {"scales": "32,2,5"}) == {"scales": "32,2,5"}
  assert merge({"epochs": 2, "steps_per_epoch": 10}, {"steps": "30"}) == {"steps": "30"}
  assert merge({"steps": 5}, {"epochs": "2", "steps_per_epoch": "10"}) == {"epochs": "2", "steps_per_epoch": "10"}


def test_blend_of_paintings_of_two_shapes_from_a_column_or_the_flags(tmp_path, weights):
  write_inputs(tmp_path)
  path = write_manifest(tmp_path, [
      "content,style,output,style_blend_weights",
      'cat.jpg,coffee.png;wide.png,a.png,"3,1"',
      "cat.jpg,coffee.png;wide.png,b.png,3;1",
      "cat.jpg,coffee.png;wide.png,c.png,3,1",
      "cat.jpg,coffee.png,d.png,",
      "cat.jpg,coffee.png;wide.png,e.png,",
  ])
  rows = manifest.load_rows(path, {**FLAGS, "style_blend_weights": ["1", "2"]})
  assert rows[0].error is None and rows[0].job.config.style_blend_weights == (3.0, 1.0)
  assert rows[0].job.styles[0].shape != rows[0].job.styles[1].shape  # Two aspect ratios, not resized alike.
  assert rows[1].job.config.style_blend_weights == (3.0, 1.0)
  assert "quote" in rows[2].error and "3;1" in rows[2].error  # An unquoted 3,1 spills into another cell.
  assert rows[3].error == "2 style_blend_weights for 1 style image(s)"  # The flags', checked per row.
  assert rows[4].job.config.style_blend_weights == (1.0, 2.0)
  manifest.run_rows(rows, engine.Engine(weights), folder=str(tmp_path / "runs"), log=lambda line: None)
  expected = reference(tmp_path, "cat.jpg", ["coffee.png", "wide.png"],
                       {**FLAGS, "style_blend_weights": "3,1"}, weights)
  np.testing.assert_array_equal(read_png(tmp_path / "a.png"), as_png(expected))
  np.testing.assert_array_equal(read_png(tmp_path / "b.png"), as_png(expected))  # The same job, run once.
  assert (tmp_path / "e.png").exists() and os.listdir(tmp_path / "runs") == []  # Checkpoints removed.


def test_output_folder_is_created_and_a_bad_row_keeps_its_real_message(tmp_path):
  write_inputs(tmp_path)
  path = write_manifest(tmp_path, [
      "content,style,output",
      "cat.jpg,coffee.png,new/deep/a.png",
      "missing.jpg,coffee.png,other/b.png",
  ])
  rows = manifest.load_rows(path, FLAGS)
  assert rows[0].error is None and (tmp_path / "new" / "deep").is_dir()
  assert rows[1].error.startswith("image file not found") and "missing.jpg" in rows[1].error


class StopAt:
  """Stops every job once it reaches global step `step` (as SIGINT does via hooks.StopOnSignals)."""

  def __init__(self, step):
    self.step = step

  def should_stop(self, run):
    return run.step >= self.step


class Starts:
  def __init__(self):
    self.restored = []

  def on_job_start(self, run):
    self.restored.append(run.restored_step)


def test_an_interrupted_row_resumes_from_its_checkpoint(tmp_path, weights):
  write_inputs(tmp_path)
  rows_text = ["cat.jpg,coffee.png,{}.png,9,16;1.5;4", "cat.jpg,wide.png,{}.png,6,"]  # 3 scales; one scale.
  header = "content,style,output,steps,scales"
  path = write_manifest(tmp_path, [header] + [row.format(name) for row, name in zip(rows_text, "ab")])
  folder = manifest.run_folder(path)
  assert folder == str(tmp_path / ".pairs.nst-jax")
  runner = engine.Engine(weights, checkpoints=engine.CheckpointPolicy(every_steps=4))
  rows = manifest.run_rows(manifest.load_rows(path, FLAGS), runner, folder=folder, hooks=[StopAt(5)],
                           log=lambda line: None)
  assert [(r.result.status, r.result.step) for r in rows] == [("stopped", 5), ("stopped", 5)]
  assert not (tmp_path / "a.png").exists() and len(os.listdir(folder)) == 2
  assert rows[0].job.checkpoint_dir == os.path.join(folder, engine.job_digest(rows[0].job, weights)[1])
  starts, logged = Starts(), []
  rows = manifest.run_rows(manifest.load_rows(path, FLAGS), runner, folder=folder, hooks=[starts],
                           log=logged.append)
  assert starts.restored == [5, 5] and any(line.startswith("row 1: resuming from step 5 of") for line in logged)
  assert [r.result.status for r in rows] == ["done", "done"] and os.listdir(folder) == []
  assert (tmp_path / "a.png").exists() and (tmp_path / "b.png").exists()
  plain = write_manifest(tmp_path, [header] + [row.format(name) for row, name in zip(rows_text, "cd")], "plain.csv")
  plain = manifest.run_rows(manifest.load_rows(plain, FLAGS), runner, log=lambda line: None)
  for resumed, uninterrupted in zip(rows, plain):
    assert resumed.result.total_steps == uninterrupted.result.total_steps
    # The resumed rows ran as a batch, the plain ones too but from step 0: float32 rounding of two programs,
    # which Adam's normalised step carries a little further with the invariant losses (1.1e-6 seen).
    assert np.max(np.abs(resumed.result.image - uninterrupted.result.image)) <= 1e-5


# ---- the command ---------------------------------------------------------------------------------------------


def command(args, **kwargs):
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  argv = [sys.executable, "-m", "nst_jax.commands.main", "batch", "--weights=random", "--max_size=32",
          "--steps=2", "--progress=false", "--compilation_cache=false", "--content_layers=relu2_1",
          "--style_layers=relu1_1,relu2_1", *args]
  if kwargs.pop("background", False):
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
  return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)


@pytest.mark.slow
def test_batch_command_skips_bad_row_runs_others_and_resumes(tmp_path):
  write_inputs(tmp_path)
  path = write_manifest(tmp_path, [
      "content,style,output,content_weight,steps",
      "cat.jpg,coffee.png,out/one.png,,",
      "missing.jpg,coffee.png,out/two.png,,",
      "cat.jpg,coffee.png,out/three.png,5,3",
  ])
  first = command([f"--manifest={path}"])  # The folder out/ does not exist yet: it is created.
  assert first.returncode == 1, first.stderr
  assert "row 2: image file not found" in first.stderr and "missing.jpg" in first.stderr
  assert (tmp_path / "out/one.png").exists() and (tmp_path / "out/three.png").exists()
  assert not (tmp_path / "out/two.png").exists()
  assert "1 bucket(s)" in first.stdout  # Rows 1 and 3 share a bucket (2 and 3 steps): one compiled batch.
  assert "done" in first.stdout and "FAILED" in first.stdout
  assert not (tmp_path / ".pairs.nst-jax").exists()  # Checkpoints of finished rows are removed.
  stamp = os.path.getmtime(tmp_path / "out/one.png")
  # Again: finished rows are skipped (nothing recomputed), the bad row still fails.
  second = command([f"--manifest={path}"])
  assert second.returncode == 1
  assert "2 already done" in second.stdout and second.stdout.count("exists") == 2
  assert os.path.getmtime(tmp_path / "out/one.png") == stamp


@pytest.mark.slow
def test_batch_command_honours_every_setting_flag(tmp_path, weights):
  write_inputs(tmp_path)
  path = write_manifest(tmp_path, ["content,style,output,content_weight", "cat.jpg,coffee.png;wide.png,out.png,"])
  flags = {"preserve_colors": "luminance", "scales": "16,1.5,2", "style_scale": "0.8",
           "style_blend_weights": "3,1"}
  out = command([f"--manifest={path}", *[f"--{k}={v}" for k, v in flags.items()]])
  assert out.returncode == 0, out.stderr
  expected = reference(tmp_path, "cat.jpg", ["coffee.png", "wide.png"], {**FLAGS, "steps": 2, **flags}, weights)
  np.testing.assert_array_equal(read_png(tmp_path / "out.png"), as_png(expected))


@pytest.mark.slow
def test_batch_command_stops_on_sigint_and_resumes_from_the_checkpoint(tmp_path, weights):
  write_inputs(tmp_path)
  path = write_manifest(tmp_path, ["content,style,output", "cat.jpg,coffee.png,out.png"])
  args = [f"--manifest={path}", "--steps=400", "--checkpoint_every=20"]
  proc = command(args, background=True)
  folder = tmp_path / ".pairs.nst-jax"
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if folder.is_dir() and any(name.isdigit() for sub in folder.iterdir() for name in os.listdir(sub)):
      break  # A first checkpoint is there: the row is running.
    time.sleep(0.02)
  proc.send_signal(signal.SIGINT)
  stdout, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 130, stderr
  assert "interrupted by SIGINT: 1 row(s) stopped" in stderr and "Traceback" not in stderr
  assert not (tmp_path / "out.png").exists()
  again = command(args)
  assert again.returncode == 0, again.stderr
  assert "row 1: resuming from step" in again.stderr
  expected = reference(tmp_path, "cat.jpg", ["coffee.png"], {**FLAGS, "steps": 400}, weights)
  assert np.max(np.abs(read_png(tmp_path / "out.png") - as_png(expected))) <= 1
  assert not folder.exists()


def _metrics_steps(path):
  from nst_jax import rundir
  return [r["step"] for r in rundir.read_metrics(str(path))]


def test_batch_command_writes_each_outputs_metrics_beside_it(tmp_path):
  write_inputs(tmp_path)
  # Rows 1 and 2 make the same picture (one shared job); row 3 another.
  path = write_manifest(tmp_path, ["content,style,output,steps", "cat.jpg,coffee.png,out/a.png,",
                                   "cat.jpg,coffee.png,out/b.png,", "cat.jpg,coffee.png,out/c.jpg,3"])
  out = command([f"--manifest={path}", "--log_every=1"])
  assert out.returncode == 0, out.stderr
  for name, steps in (("a", 2), ("b", 2), ("c", 3)):  # `<output stem>.metrics.jsonl`, as `nst-jax` writes it.
    assert _metrics_steps(tmp_path / "out" / f"{name}.metrics.jsonl") == list(range(1, steps + 1)), name


def test_batch_command_stops_on_a_closed_pipe_with_its_checkpoint_and_resumes(tmp_path):
  write_inputs(tmp_path)
  path = write_manifest(tmp_path, ["content,style,output", "cat.jpg,coffee.png,out.png"])
  args = [f"--manifest={path}", "--steps=600", "--checkpoint_every=50", "--log_every=1"]
  proc = command(args, background=True)
  metrics = tmp_path / "out.metrics.jsonl"
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None and len(_metrics_steps(metrics)) < 5:
    time.sleep(0.02)
  proc.stdout.close()  # The reader of stdout and stderr is gone (`| tee log`, then tee killed).
  proc.stderr.close()
  assert proc.wait(timeout=300) == 141
  stopped = _metrics_steps(metrics)[-1]
  assert 5 <= stopped < 600 and not (tmp_path / "out.png").exists()
  (folder,) = (tmp_path / ".pairs.nst-jax").iterdir()
  assert max(int(name) for name in os.listdir(folder) if name.isdigit()) == stopped  # Saved where it stopped.
  again = command(args)
  assert again.returncode == 0, again.stderr
  assert f"row 1: resuming from step {stopped} of 600" in again.stderr
  assert _metrics_steps(metrics) == list(range(1, 601)) and (tmp_path / "out.png").exists()


def test_batch_command_rejects_missing_manifest(tmp_path):
  out = command([f"--manifest={tmp_path / 'nope.csv'}"])
  assert out.returncode == 2 and "manifest not found" in out.stderr and "Traceback" not in out.stderr


def test_batch_command_checks_flag_blend_weights_per_row_not_at_parsing(tmp_path):
  write_inputs(tmp_path)
  path = write_manifest(tmp_path, ["content,style,output", "cat.jpg,coffee.png,out.png"])
  out = command([f"--manifest={path}", "--style_blend_weights=3,1", "--steps=1"])
  assert out.returncode == 1, out.stderr
  assert "row 1: 2 style_blend_weights for 1 style image(s) (skipped)" in out.stderr
  assert "0 style image" not in out.stderr
