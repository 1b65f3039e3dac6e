"""End-to-end tests of `nst-jax --workdir`: real SIGTERM / SIGINT / SIGHUP / SIGKILL and closed pipes on the
command, then resume."""

import os
import re
import signal
import subprocess
import sys
import time

import jax
import nst_jax
import numpy as np
import pytest
from skimage import data

from nst_jax import checkpoint, image_io, optimize, rundir, vgg
from nst_jax.configs import default

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE, STEPS, CHECKPOINT_EVERY = 32, 600, 50
LAYERS = ["--content_layers", "relu2_1", "--style_layers", "relu1_1,relu2_1"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  folder = tmp_path_factory.mktemp("inputs")
  content, style = str(folder / "content.png"), str(folder / "style.png")
  image_io.save_image(content, image_io.resize_longest(data.chelsea().astype(np.float32) / 255.0, 48))
  image_io.save_image(style, image_io.resize_longest(data.coffee().astype(np.float32) / 255.0, 48))
  env = dict(os.environ, NST_JAX_HOME=str(tmp_path_factory.mktemp("home")), JAX_PLATFORMS="cpu",
             PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return content, style, env


@pytest.fixture(scope="module")
def reference(files):
  """The uninterrupted result, float32, computed in this process."""
  config = default.get_config()
  config.max_size, config.steps, config.log_every = SIZE, STEPS, 1
  config.content_layers, config.style_layers = ("relu2_1",), ("relu1_1", "relu2_1")
  content = image_io.load_image(files[0], SIZE)
  style = image_io.load_image(files[1], SIZE)
  stylizer = optimize.Stylizer(config)
  return nst_jax.stylize(content, style, config, weights=vgg.random_weights(0)), stylizer, content


def start(files, workdir, *extra, progress=False):
  content, style, env = files
  command = [sys.executable, "-m", "nst_jax.commands.main", "--content", content, "--style", style,
             "--workdir", workdir, "--weights", "random", "--max_size", str(SIZE), "--steps", str(STEPS),
             "--log_every", "1", "--checkpoint_every", str(CHECKPOINT_EVERY), f"--progress={progress}", *LAYERS,
             *extra]
  return subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_step(process, workdir, step, timeout=240.0):
  """Polls metrics.jsonl until it logs `step` (the command is then inside its run loop)."""
  path = os.path.join(workdir, rundir.METRICS)
  deadline = time.time() + timeout
  while time.time() < deadline and process.poll() is None:
    records = rundir.read_metrics(path)
    if records and records[-1]["step"] >= step:
      return records[-1]["step"]
    time.sleep(0.02)
  raise AssertionError(f"the command ended or stalled before step {step}: {process.communicate()}")


def final_image(workdir, reference):
  """The float image of the run's last checkpoint (exact, unlike the 8-bit final.png)."""
  _, stylizer, content = reference
  abstract = {"state": jax.eval_shape(lambda x: optimize.init_state(x, stylizer.optimizer), content)}
  with checkpoint.Checkpoints(os.path.join(workdir, rundir.CHECKPOINTS)) as ckpt:
    step, tree, _ = ckpt.restore_latest(abstract)
  assert step == STEPS
  return np.asarray(tree["state"].image)


def resume_and_check(files, workdir, reference, *, min_start):
  process = start(files, workdir)
  out, err = process.communicate(timeout=300)
  assert process.returncode == 0, err
  resumed_from = int(re.search(r"resuming .* from step (\d+) of", err).group(1))
  assert resumed_from >= min_start
  assert os.path.exists(os.path.join(workdir, rundir.FINAL))
  assert os.path.exists(os.path.join(workdir, rundir.PROGRESS)) and os.path.exists(os.path.join(workdir, rundir.LOSSES))
  steps = [r["step"] for r in rundir.read_metrics(os.path.join(workdir, rundir.METRICS))]
  assert steps == list(range(1, STEPS + 1))  # No gaps, no duplicates.
  assert np.max(np.abs(final_image(workdir, reference) - reference[0])) <= 1e-6
  return resumed_from


@pytest.mark.parametrize("signum, exit_code", [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129)])
def test_signal_saves_a_checkpoint_and_the_rerun_resumes_exactly(tmp_path, files, reference, signum, exit_code):
  workdir = str(tmp_path / "run")
  process = start(files, workdir)
  wait_for_step(process, workdir, 5)
  process.send_signal(signum)
  _, err = process.communicate(timeout=120)
  assert process.returncode == exit_code, err
  stopped = int(re.search(rf"interrupted by {signal.Signals(signum).name} at step (\d+)", err).group(1))
  assert stopped < STEPS and "Traceback" not in err
  with checkpoint.Checkpoints(os.path.join(workdir, rundir.CHECKPOINTS)) as ckpt:
    assert ckpt.latest_step() == stopped  # The checkpoint is at the step where it stopped.
  assert resume_and_check(files, workdir, reference, min_start=stopped) == stopped


# A closed pipe: the reader of stdout and stderr is gone (`nst-jax ... 2>&1 | tee log` and Ctrl-C kills tee too).
# "progress": the progress bar's next write meets it; "quiet": nothing is written, the run notices it by itself;
# "sigint": the Ctrl-C reaches the command as well, whose message then goes nowhere.
@pytest.mark.parametrize("case, exit_code", [("progress", 141), ("quiet", 141), ("sigint", 130)])
def test_a_closed_pipe_saves_a_checkpoint_and_the_rerun_resumes_exactly(tmp_path, files, reference, case, exit_code):
  workdir = str(tmp_path / "run")
  process = start(files, workdir, progress=case == "progress")
  wait_for_step(process, workdir, 5)
  if case == "sigint":
    process.send_signal(signal.SIGINT)
  process.stdout.close()
  process.stderr.close()
  assert process.wait(timeout=120) == exit_code
  stopped = rundir.read_metrics(os.path.join(workdir, rundir.METRICS))[-1]["step"]
  assert stopped < STEPS
  with checkpoint.Checkpoints(os.path.join(workdir, rundir.CHECKPOINTS)) as ckpt:
    assert ckpt.latest_step() == stopped  # Saved at the step where it stopped, not at the last checkpoint_every.
  assert resume_and_check(files, workdir, reference, min_start=stopped) == stopped


@pytest.mark.slow
def test_kill_9_loses_at_most_checkpoint_every_steps(tmp_path, files, reference):
  workdir = str(tmp_path / "run")
  process = start(files, workdir)
  logged = wait_for_step(process, workdir, 2 * CHECKPOINT_EVERY + 10)
  process.kill()
  process.communicate()
  assert process.returncode == -signal.SIGKILL
  resume_and_check(files, workdir, reference, min_start=logged - CHECKPOINT_EVERY)


def test_incompatible_workdir_is_a_one_line_error_and_output_is_optional(tmp_path, files):
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  rundir.write_json(os.path.join(workdir, rundir.CONFIG), {"config_hash": "0", "identity": {}})
  process = start(files, workdir, "--steps", "1")
  _, err = process.communicate(timeout=120)
  assert process.returncode == 2
  assert err.strip().splitlines()[-1].startswith("error: ") and "--overwrite" in err and "Traceback" not in err
