"""Video (issue 13): frames as engine jobs with a temporal loss, both modes end to end, resume equals an
uninterrupted run (a stop hook, and kill -9 of the command), the command's bad-input errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import make_image, make_style
from nst_jax import engine, image_io, settings, video
from nst_jax import flow as flow_lib
from nst_jax.errors import NstJaxError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = {"max_size": 32, "steps": 6, "content_layers": "relu2_1", "style_layers": "relu1_1,relu2_1",
         "log_every": 1}


def pan_clip(count: int = 4, size: int = 32, shift: int = 2) -> list[np.ndarray]:
  """A picture panned `shift` px per frame, plus a square moving the other way."""
  base = make_image(size, size + shift * count, seed=3)
  frames = []
  for t in range(count):
    frame = np.array(base[:, shift * t:shift * t + size])
    frame[8:14, 20 - 2 * t:26 - 2 * t] = (1.0, 0.2, 0.1)
    frames.append(frame)
  return frames


def config(**values):
  return settings.resolve({**SMALL, **values}, scope="video")


@pytest.fixture(scope="module")
def clip():
  return pan_clip()


@pytest.fixture(scope="module")
def style():
  return make_style(32, 32, seed=1)


def test_pass_plan_splits_steps_and_alternates_direction():
  assert video.pass_plan(config(steps=6)) == [(1, 6)]
  assert video.pass_plan(config(video_mode="multipass", passes=3, steps=7)) == [(0, 3), (1, 2), (-1, 2)]
  with pytest.raises(NstJaxError, match="steps >= passes"):
    video.pass_plan(config(video_mode="multipass", passes=4, steps=3))
  assert settings.temporal_offsets(config(temporal_frames="4,1,2")) == (1, 2, 4)
  with pytest.raises(NstJaxError, match="temporal_frames"):
    config(temporal_frames="0,1")


def test_video_settings_are_refused_for_pictures():
  with pytest.raises(NstJaxError, match="temporal_weight is a setting of `nst-jax video`"):
    settings.resolve({"temporal_weight": 5})
  with pytest.raises(NstJaxError, match="video_mode is a setting of `nst-jax video`"):
    settings.resolve({"video_mode": "multipass"})
  assert config(video_mode="multipass").video_mode == "multipass"


def test_job_init_image_and_extra_targets(random_weights, style):
  """The engine's general extension: a starting image in place of config.init, extra Targets fields
  (resized to every stage) that change the loss and the job's digest."""
  photo = make_image(32, 32, seed=4)
  start = make_image(32, 32, seed=5)
  cfg = config(steps=0)
  (result,) = engine.Engine(random_weights).run([engine.Job(photo, [style], cfg, init_image=start)])
  np.testing.assert_array_equal(result.image, start)
  extras = {"temporal_images": start[None], "temporal_masks": np.ones((1, 32, 32), np.float32),
            "temporal_weight": np.float32(1e14)}
  plain = engine.Job(photo, [style], config(steps=20), init_image=start)
  pulled = engine.Job(photo, [style], config(steps=20), init_image=start, extra_targets=extras)
  staged = engine.Job(photo, [style], config(steps=2, scales="16,2,2"), init_image=start, extra_targets=extras)
  assert engine.job_digest(plain, random_weights)[1] != engine.job_digest(pulled, random_weights)[1]
  assert engine.loss_extras(pulled) == (("temporal_frames", 1),) and engine.loss_extras(plain) == ()
  a, b, c = engine.Engine(random_weights).run([plain, pulled, staged])
  assert "temporal" in b.metrics and "temporal" not in a.metrics
  assert [s["height"] for s in c.stages] == [16, 32] and np.isfinite(c.metrics["temporal"])
  # Both start from `start`; a huge temporal weight keeps the result there, while without it the picture goes
  # its own way.
  assert np.abs(b.image - start).mean() < 0.3 * np.abs(a.image - start).mean(), (
      np.abs(b.image - start).mean(), np.abs(a.image - start).mean())
  with pytest.raises(NstJaxError, match="unknown target"):
    engine.Engine(random_weights).run([engine.Job(photo, [style], cfg, extra_targets={"bogus": start})])


@pytest.mark.parametrize("mode", ["sequential", "multipass"])
def test_video_runs_end_to_end(random_weights, clip, style, mode, tmp_path):
  cfg = config(video_mode=mode, passes=2, temporal_frames="1,2", temporal_weight=1e14)
  seen = []
  result = video.run_video(clip, [style], cfg, weights=random_weights, progress=seen.append,
                           workdir=str(tmp_path))
  assert result.status == "done" and len(result.frames) == 4
  assert all(f.shape == (32, 32, 3) and f.dtype == np.float32 for f in result.frames)
  assert result.temporal_error.shape == (3,) and np.all(np.isfinite(result.temporal_error))
  assert [r["frame"] for r in result.per_frame] == [1, 2, 3, 4]
  assert all(r["steps"] == cfg.steps for r in result.per_frame)  # Multipass: over its passes.
  assert result.per_frame[0]["temporal_error"] is None and result.per_frame[1]["temporal_error"] >= 0
  passes = 2 if mode == "multipass" else 1
  assert seen[-1]["done"] == seen[-1]["total"] == 4 * passes
  with open(tmp_path / video.METRICS) as f:
    lines = [json.loads(line) for line in f]
  assert [line["frame"] for line in lines] == [1, 2, 3, 4] and "temporal_error" in lines[2]
  assert "temporal error" in (tmp_path / video.REPORT).read_text()
  assert image_io.open_image(str(tmp_path / video.PROGRESS)).shape[0] == 96
  # The temporal term pulls later frames towards their warped predecessors: less flicker than frames
  # stylised on their own (from the content, same steps).
  alone = [engine.Engine(random_weights).run([engine.Job(f, [style], config())])[0].image for f in clip]
  from nst_jax import flow
  e_alone = flow.temporal_error(alone, clip, method=cfg.flow_method)
  assert result.temporal_error.mean() < e_alone.mean()


class StopAt:
  """Stops the job named `name` once it reaches `step` (a stand-in for Ctrl-C at an awkward moment)."""

  def __init__(self, name: str, step: int):
    self.name, self.step = name, step

  def should_stop(self, run) -> bool:
    return run.job.name == self.name and run.step >= self.step


@pytest.mark.parametrize("mode, stop", [("sequential", "frame 3/4"), ("multipass", "frame 2/4 pass 2")])
def test_interrupted_and_resumed_equals_uninterrupted(random_weights, clip, style, mode, stop, tmp_path):
  cfg = config(video_mode=mode, passes=2, steps=8, temporal_frames="1,2")
  whole = video.run_video(clip, [style], cfg, weights=random_weights)
  workdir = str(tmp_path / "run")
  first = video.run_video(clip, [style], cfg, weights=random_weights, workdir=workdir, hooks=[StopAt(stop, 2)],
                          checkpoint_every=1)
  assert first.status == "stopped"
  assert os.listdir(os.path.join(workdir, "checkpoints"))  # The stopped frame's checkpoint.
  again = video.run_video(clip, [style], cfg, weights=random_weights, workdir=workdir)
  assert again.status == "done"
  for a, b in zip(whole.frames, again.frames):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(whole.temporal_error, again.temporal_error)
  # The workdir is this run's: other settings are refused, not mixed in.
  with pytest.raises(NstJaxError, match="holds another video run"):
    video.run_video(clip, [style], config(video_mode=mode, passes=2, steps=8, temporal_weight=7),
                    weights=random_weights, workdir=workdir)


def test_bad_frames_are_one_line_errors(random_weights, clip, style):
  with pytest.raises(NstJaxError, match="no frames"):
    video.run_video([], [style], config(), weights=random_weights)
  with pytest.raises(NstJaxError, match="frame 2 is 40x32 but frame 1 is 32x32"):
    video.run_video([clip[0], make_image(32, 40)], [style], config(), weights=random_weights)


# ---- the command -------------------------------------------------------------------------------------------


def nst_jax(*args, env=None, **kwargs):
  return subprocess.run([sys.executable, "-m", "nst_jax.commands.main", "video", *args], cwd=ROOT,
                        capture_output=True, text=True, env=env or _env(), **kwargs)


def _env():
  return {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(
      os.pathsep) if p])}


def write_folder(folder, frames):
  os.makedirs(folder, exist_ok=True)
  for i, f in enumerate(frames):
    image_io.save_image(os.path.join(folder, f"{i + 1}.png"), f)
  return str(folder)


COMMON = ["--weights=random", "--max_size=32", "--steps=6", "--content_layers=relu2_1",
          "--style_layers=relu1_1,relu2_1", "--progress=false"]


@pytest.mark.slow
def test_command_writes_video_frames_and_metrics(clip, style, tmp_path):
  folder = write_folder(tmp_path / "clip", clip)
  image_io.save_image(str(tmp_path / "style.png"), style)
  out = tmp_path / "out.mp4"
  done = nst_jax("--input", folder, "--style", str(tmp_path / "style.png"), "--output", str(out),
                 "--frames_out", str(tmp_path / "frames"), "--video_mode=multipass", "--passes=2", *COMMON)
  assert done.returncode == 0, done.stderr
  assert "wrote" in done.stdout and "temporal error" in done.stdout
  assert out.stat().st_size > 0
  assert sorted(os.listdir(tmp_path / "frames")) == [f"frame_{i:05d}.png" for i in range(1, 5)]
  from nst_jax import video_io
  assert len(video_io.read_clip(str(out), 32).frames) == 4
  lines = (tmp_path / "out.metrics.jsonl").read_text().splitlines()
  assert len(lines) == 4 and json.loads(lines[3])["temporal_error"] >= 0


@pytest.mark.slow
def test_command_kill_9_then_resume_equals_uninterrupted(clip, style, tmp_path):
  frames = pan_clip(count=5)
  folder = write_folder(tmp_path / "clip", frames)
  image_io.save_image(str(tmp_path / "style.png"), style)
  args = ["--input", folder, "--style", str(tmp_path / "style.png"), "--temporal_frames=1,2", "--steps=30",
          "--checkpoint_every=5", *[a for a in COMMON if not a.startswith("--steps")]]
  whole = nst_jax(*args, "--output", str(tmp_path / "whole.mp4"), "--frames_out", str(tmp_path / "whole"))
  assert whole.returncode == 0, whole.stderr
  workdir = tmp_path / "run"
  resumed_args = [*args, "--output", str(tmp_path / "resumed.mp4"), "--frames_out", str(tmp_path / "resumed"),
                  "--workdir", str(workdir)]
  proc = subprocess.Popen([sys.executable, "-m", "nst_jax.commands.main", "video", *resumed_args], cwd=ROOT,
                          env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  # Kill once frame 1 is finished and frame 2 or 3 has a checkpoint mid-frame.
  while time.time() < deadline and proc.poll() is None:
    frames_dir = workdir / "frames"
    finished = [n for n in os.listdir(frames_dir) if n.endswith(".json")] if frames_dir.exists() else []
    ckpt = workdir / "checkpoints" / "pass01"
    if finished and ckpt.exists() and any(os.listdir(ckpt / d) for d in os.listdir(ckpt)):
      break
    time.sleep(0.05)
  assert proc.poll() is None, "the run ended before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (tmp_path / "resumed.mp4").exists()  # Nothing half-written.
  done = nst_jax(*resumed_args)
  assert done.returncode == 0, done.stderr
  assert f"resumed from {workdir}: " in done.stderr and "frames done, going on at frame" in done.stderr
  for name in sorted(os.listdir(tmp_path / "whole")):
    np.testing.assert_array_equal(image_io.open_image(str(tmp_path / "whole" / name)),
                                  image_io.open_image(str(tmp_path / "resumed" / name)))
  assert len(os.listdir(tmp_path / "resumed")) == 5


@pytest.mark.slow
def test_command_bad_inputs_are_one_line_errors(clip, style, tmp_path):
  image_io.save_image(str(tmp_path / "style.png"), style)
  text = tmp_path / "notes.mp4"
  text.write_text("not a video")
  os.makedirs(tmp_path / "empty")
  mixed = write_folder(tmp_path / "mixed", [clip[0], make_image(40, 40)])
  style_arg = ["--style", str(tmp_path / "style.png")]
  cases = [
      (["--input", str(text)], "error: "),
      (["--input", str(tmp_path / "empty")], "error: "),
      (["--input", mixed], "error: "),
      (["--input", str(tmp_path / "missing.mp4")], "error: "),
      (["--input", mixed, "--max_size=100000"], "error: max_size"),
      (["--input", mixed, "--temporal_frames=0"], "error: temporal_frames"),
      (["--input", mixed, "--content=x.png"], "error: --content is a flag of nst-jax (pictures)"),
      (["--input", mixed, "--style_region=x.png"], "error: --style_region is a flag of nst-jax (pictures)"),
      (["--input", mixed, "--dry_run"], "error: --dry_run is a flag of nst-jax (pictures)"),
      (["--input", write_folder(tmp_path / "good", clip), "--tile_preview=2"], "error: tile_preview is a setting"),
      (["--input", mixed, "--start=-1"], "error: start must be >= 0"),
      (["--input", mixed, "--frames=0"], "error: frames must be >= 1"),
      (["--input", mixed, "--fps=0"], "error: fps must be between"),
      (["--input", mixed, "--frames=2", "--duration=1"], "error: give either duration or frames"),
      (["--input", tmp_path / "good", "--start=100"], "error: start 100 s is past the end"),
  ]
  for extra, message in cases:
    out = tmp_path / "out.mp4"
    done = nst_jax(*style_arg, "--output", str(out), *extra, *COMMON[:1])
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0 and lines and lines[-1].startswith(message), (extra, done.stderr)
    assert "Traceback" not in done.stderr and not out.exists(), extra
  bad_output = nst_jax(*style_arg, "--input", mixed, "--output", str(tmp_path / "out.png"), *COMMON[:1])
  assert bad_output.returncode != 0 and "error: unsupported video format '.png'" in bad_output.stderr
  # A picture run refuses the video settings in one line (an unknown flag there).
  stylize = subprocess.run([sys.executable, "-m", "nst_jax.commands.main", "--content", str(tmp_path / "style.png"),
                            "--style", str(tmp_path / "style.png"), "--output", str(tmp_path / "o.png"),
                            "--temporal_weight=3"], cwd=ROOT, capture_output=True, text=True, env=_env())
  assert stylize.returncode != 0 and "temporal_weight" in stylize.stderr and "Traceback" not in stylize.stderr
  helped = nst_jax("--help")
  assert helped.returncode == 0 and "--temporal_frames" in helped.stdout and "--input" in helped.stdout


@pytest.mark.slow
def test_command_stylises_part_of_a_folder_at_its_fps_and_even_size_with_steps_shown(style, tmp_path):
  frames = [make_image(25, 33, seed=i) for i in range(5)]  # Odd sizes.
  folder = write_folder(tmp_path / "clip", frames)
  image_io.save_image(str(tmp_path / "style.png"), style)
  out = tmp_path / "out.mp4"
  done = nst_jax("--input", folder, "--style", str(tmp_path / "style.png"), "--output", str(out), "--fps=10",
                 "--start=0.1", "--frames=3", *[a for a in COMMON if a not in ("--progress=false", "--max_size=32")],
                 "--max_size=33")
  assert done.returncode == 0, done.stderr
  assert "3 frames (frames 2-4 of 5, from 0.10 s) 32x24 at 10 fps" in done.stderr
  assert "frame 1/3 step 3/6" in done.stderr  # The bar moves within a frame.
  assert "32x24" in done.stdout
  from nst_jax import video_io
  written = video_io.read_clip(str(out))
  assert len(written.frames) == 3 and written.fps == 10 and written.frames[0].shape == (24, 32, 3)


class _Run:
  def __init__(self, name, total):
    self.job, self.total_steps, self.restored_step = type("J", (), {"name": name})(), total, None


def test_bar_counts_frame_passes_and_moves_within_a_frame(capsys):
  from nst_jax.commands import video as command
  bar = command._FrameBar(disable=False, workdir="wd")
  bar.update({"done": 7, "total": 8, "pass": 2, "passes": 2, "frames": [], "seconds": 0.0})
  bar.on_job_start(_Run("frame 4/4 pass 2", 10))
  assert "resumed from wd: 7 of 8 frame-passes done, going on in pass 2 (3 of its 4 frames done)" in (
      capsys.readouterr().err)
  assert bar.bar.unit == "frame-pass"
  for step in (1, 2, 3, 4, 5):
    bar.on_step(type("E", (), {"run": _Run("frame 4/4 pass 2", 10), "step": step})())
  assert bar.bar.n == 7.5
  bar.update({"done": 8, "total": 8, "pass": 2, "passes": 2, "frames": [4], "seconds": 1.0})
  assert bar.bar.n == 8
  bar.close()
  single = command._FrameBar(disable=False)
  single.update({"done": 0, "total": 5, "pass": 1, "passes": 1, "frames": [], "seconds": 0.0})
  assert single.bar.unit == "frame"
  single.close()


class StartsOf:
  """Keeps each job's start image (`Job.init_image`) by name."""

  def __init__(self):
    self.starts = {}

  def on_job_start(self, run) -> None:
    self.starts[run.job.name] = run.job.init_image


def test_sequential_start_takes_the_frames_own_init_where_the_flow_is_unreliable(random_weights, clip, style):
  """Panned content enters at the right edge: there frame 2 starts from its photo (init content), not from
  frame 1's edge repeated into streaks; where the flow is reliable, from frame 1's output warped."""
  starts = StartsOf()
  cache = flow_lib.FlowCache()
  result = video.run_video(clip, [style], config(), weights=random_weights, hooks=[starts], flow_cache=cache)
  start = starts.starts["frame 2/4"]
  flow_ts, mask = cache.pair(clip, 1, 0)
  unreliable = mask < 0.5
  assert unreliable[:, -2:].all()  # The two columns that entered the frame.
  np.testing.assert_allclose(start[unreliable], clip[1][unreliable], atol=1e-6)
  warped = np.clip(flow_lib.warp(result.frames[0], flow_ts), 0, 1)
  np.testing.assert_allclose(start[~unreliable], warped[~unreliable], atol=1e-5)


def test_a_workdir_refuses_another_part_of_the_clip(random_weights, clip, style, tmp_path):
  video.run_video(clip[:2], [style], config(steps=2), weights=random_weights, workdir=str(tmp_path))
  with pytest.raises(NstJaxError, match=r"changed: .*settings\.start"):
    video.run_video(clip[:2], [style], config(steps=2, start=0.04), weights=random_weights, workdir=str(tmp_path))
