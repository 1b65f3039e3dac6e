"""Tests for nst_jax.run and nst_jax.rundir: exact resume, interruption by signals, run folder and report."""

import json
import os
import signal

import jax
import numpy as np
import pytest
from PIL import Image
from skimage import data

from nst_jax import checkpoint, engine, hooks, image_io, rundir, run, vgg
from nst_jax.commands import report
from nst_jax.configs import default, quality
from nst_jax.errors import NstJaxError

SIZE = 32


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
  """Compiled steps are reused between the runs of this module (each run jits a new Stylizer)."""
  old = jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs
  jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  yield
  jax.config.update("jax_compilation_cache_dir", old[0])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])


@pytest.fixture(scope="module")
def images():
  content = image_io.resize_longest(data.chelsea().astype(np.float32) / 255.0, SIZE)
  style = image_io.resize_longest(data.coffee().astype(np.float32) / 255.0, SIZE)
  return content, [style]


@pytest.fixture(scope="module")
def weights():
  return vgg.random_weights(0)


def small_config(optimizer="adam", steps=6):
  """Shallow layers keep compilation short; resuming does not depend on which layers are used.

  `optimizer='quality'`: the quality preset (preconditioned L-BFGS from the recoloured photo).
  """
  config = default.get_config()
  if optimizer == "quality":
    config.update(quality.OVERRIDES)
  else:
    config.optimizer = optimizer
  config.max_size = SIZE
  config.steps = steps
  config.log_every = 1
  config.content_layers = ("relu2_1",)
  config.style_layers = ("relu1_1", "relu2_1")
  return config


class _Starts:
  """Records the step each run starts from (0, or the restored step)."""

  def __init__(self, out):
    self.out = out

  def on_job_start(self, run):
    self.out.append(run.restored_step or 0)


def run_dir(tmp_path, name, config, images, weights, callbacks=(), on_start=None, **kwargs):
  kwargs = {"checkpoint_every": 2, "snapshot_every": 2, "log": lambda line: None, **kwargs}
  run_hooks = [hooks.Callback(c) for c in callbacks] + ([_Starts(on_start)] if on_start is not None else [])
  job = engine.Job(images[0], images[1], config)
  return run.run_in_workdir(job, str(tmp_path / name), weights, hooks=run_hooks, **kwargs)


def signal_at(step, signum):
  def callback(event):
    if event.step == step:
      os.kill(os.getpid(), signum)
  return callback


# adam's step donates its input state: the async variant checks that saves copy the arrays first.
@pytest.mark.parametrize("optimizer, async_save", [("adam", False), ("adam", True), ("lbfgs", False),
                                                   ("quality", False)])
def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path, images, weights, optimizer, async_save):
  config = small_config(optimizer, steps=6)
  full = run_dir(tmp_path, "full", config, images, weights)
  # A real SIGTERM at step 3 (between checkpoints at 2 and 4): checkpoint at 3, RunInterrupted(143).
  with pytest.raises(run.RunInterrupted) as info:
    run_dir(tmp_path, "resumed", config, images, weights, callbacks=[signal_at(3, signal.SIGTERM)],
            async_save=async_save)
  assert info.value.exit_code == 143 and info.value.step == 3
  starts = []
  resumed = run_dir(tmp_path, "resumed", config, images, weights, on_start=starts,
                    async_save=async_save)
  assert starts == [3]
  assert np.max(np.abs(resumed - full)) <= 1e-6
  assert np.max(np.abs(resumed - images[0])) > 1e-3  # The run did change the image.
  # The metrics: every step once, in order, the same losses as the uninterrupted run.
  records = rundir.read_metrics(str(tmp_path / "resumed" / rundir.METRICS))
  full_records = rundir.read_metrics(str(tmp_path / "full" / rundir.METRICS))
  assert [r["step"] for r in records] == list(range(1, 7)) == [r["step"] for r in full_records]
  for a, b in zip(records, full_records):
    assert a["total"] == b["total"] and a["style"] == b["style"] and a["lr"] == b["lr"]
    assert set(a) == {"step", "total", "content", "style", "tv", "lr", "seconds", "steps_per_second"}
  assert all(b["seconds"] >= a["seconds"] for a, b in zip(records, records[1:]))


def test_extending_a_finished_run_equals_one_long_run(tmp_path, images, weights):
  config = small_config("adam", steps=6)
  full = run_dir(tmp_path, "full", config, images, weights)
  config.steps = 3
  run_dir(tmp_path, "extended", config, images, weights)
  config.steps = 6
  extended = run_dir(tmp_path, "extended", config, images, weights)
  assert np.max(np.abs(extended - full)) <= 1e-6
  steps = [r["step"] for r in rundir.read_metrics(str(tmp_path / "extended" / rundir.METRICS))]
  assert steps == sorted(set(steps)) == list(range(1, 7))
  assert json.load(open(tmp_path / "extended" / rundir.CONFIG))["config"]["steps"] == 6


def test_sigint_saves_and_exits_130_and_metrics_after_the_checkpoint_are_dropped(tmp_path, images, weights):
  config = small_config("adam", steps=5)
  handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
  with pytest.raises(run.RunInterrupted) as info:
    run_dir(tmp_path, "w", config, images, weights, checkpoint_every=100,
            callbacks=[signal_at(2, signal.SIGINT)])
  assert info.value.exit_code == 130
  workdir = tmp_path / "w"
  with checkpoint.Checkpoints(str(workdir / rundir.CHECKPOINTS)) as ckpt:
    assert ckpt.all_steps() == [2]
  # As after kill -9: records logged past the last checkpoint (and a torn line) are in the file.
  with open(workdir / rundir.METRICS, "a") as f:
    f.write(json.dumps({"step": 3, "total": 1.0}) + "\n" + '{"step": 4, "tot')
  run_dir(tmp_path, "w", config, images, weights)
  assert [r["step"] for r in rundir.read_metrics(str(workdir / rundir.METRICS))] == [1, 2, 3, 4, 5]
  assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # Restored.


def test_an_interrupted_runs_progress_bar_ends_at_its_step_not_at_100_percent(tmp_path, images, weights):
  job = engine.Job(images[0], images[1], small_config("adam", steps=5))
  progress = hooks.ProgressBar()
  with pytest.raises(run.RunInterrupted), hooks.closing_all(progress):
    run.run_in_workdir(job, str(tmp_path / "w"), weights, hooks=[progress, hooks.Callback(signal_at(2, signal.SIGINT))],
                       log=lambda line: None)
  assert (progress.bar.n, progress.bar.total) == (2, 5)  # 40 %, as the run stopped.
  assert progress.bar.desc.startswith("stylizing (stopped)")


def test_damaged_latest_checkpoint_resumes_from_the_previous_one(tmp_path, images, weights):
  config = small_config("adam", steps=6)
  full = run_dir(tmp_path, "full", config, images, weights)
  config.steps = 4
  run_dir(tmp_path, "w", config, images, weights)
  workdir = tmp_path / "w"
  meta_file = workdir / rundir.CHECKPOINTS / "4" / "meta" / "metadata"
  meta_file.write_text(meta_file.read_text()[:20])  # Half-written.
  config.steps = 6
  logged, starts = [], []
  image = run_dir(tmp_path, "w", config, images, weights, log=logged.append, on_start=starts)
  assert starts == [2]
  assert any(line.startswith("warning: checkpoint 4") for line in logged)
  assert np.max(np.abs(image - full)) <= 1e-6
  assert len(os.listdir(workdir / (rundir.CHECKPOINTS + "_corrupt"))) == 1


def test_incompatible_settings_are_refused_unless_overwrite(tmp_path, images, weights):
  config = small_config("adam", steps=2)
  run_dir(tmp_path, "w", config, images, weights)
  other = small_config("adam", steps=2)
  other.style_weight = 123.0
  with pytest.raises(NstJaxError, match=r"other settings \(changed: settings.style_weight\).*--overwrite"):
    run_dir(tmp_path, "w", other, images, weights)
  other_norm = small_config("adam", steps=2)
  other_norm.loss_normalization = "mean" if config.loss_normalization != "mean" else "gatys"
  with pytest.raises(NstJaxError, match=r"changed: settings.loss_normalization\)"):
    run_dir(tmp_path, "w", other_norm, images, weights)
  with pytest.raises(NstJaxError, match="changed: styles"):
    run_dir(tmp_path, "w", config, (images[0], [images[0]]), weights)
  with pytest.raises(NstJaxError, match="changed: weights"):
    run_dir(tmp_path, "w", config, images, vgg.random_weights(1))
  starts = []
  run_dir(tmp_path, "w", other, images, weights, overwrite=True, on_start=starts)
  assert starts == [0]
  assert json.load(open(tmp_path / "w" / rundir.CONFIG))["config"]["style_weight"] == 123.0
  config.steps = 1  # Fewer steps than already done.
  other.steps = 1
  with pytest.raises(NstJaxError, match="already at step 2, past its 1 steps"):
    run_dir(tmp_path, "w", other, images, weights)


def test_run_folder_files_and_report(tmp_path, images, weights):
  config = small_config("adam", steps=5)
  image = run_dir(tmp_path, "w", config, images, weights, snapshot_every=2)
  workdir = tmp_path / "w"
  record = json.load(open(workdir / rundir.CONFIG))
  assert record["config"]["steps"] == 5 and record["config"]["style_layers"] == ["relu1_1", "relu2_1"]
  assert record["weights"]["source"] == weights.source and "sha256" in record["weights"]
  assert record["versions"]["nst_jax"] and record["config_hash"] == rundir.config_hash(record["identity"])
  snapshots = rundir.list_snapshots(str(workdir / rundir.SNAPSHOTS))
  assert [step for step, _ in snapshots] == [0, 2, 4, 5]
  final = image_io.open_image(str(workdir / rundir.FINAL))
  np.testing.assert_allclose(final, image, atol=0.5 / 255 + 1e-6)
  h, w = images[0].shape[:2]
  for name in (rundir.PROGRESS, rundir.LOSSES):
    os.remove(workdir / name)
  report.main(["report", str(workdir)])
  _, _, grid_w, grid_h = rundir.grid_layout(4, (w, h))
  with Image.open(workdir / rundir.PROGRESS) as img:
    img.load()
    assert img.size == (grid_w, grid_h) and img.mode == "RGB"
    # The first tile is the initial image (the content photo).
    tile = np.asarray(img, np.float32)[:h, :w] / 255.0
    np.testing.assert_allclose(tile, images[0], atol=1.0 / 255 + 1e-6)
  with Image.open(workdir / rundir.LOSSES) as img:
    img.load()
    assert img.size == (rundir.LOSS_FIGSIZE[0] * rundir.LOSS_DPI, rundir.LOSS_FIGSIZE[1] * rundir.LOSS_DPI)
    assert np.asarray(img.convert("L")).std() > 10  # Something is drawn.
