"""Stylise a video clip, frame by frame or in passes, with a temporal loss against flicker (Ruder et al. 2016).

    nst-jax video --input clip.mp4 --style painting.jpg --output out.mp4

CLIP is a video file (mp4, webm, mov, gif) or a folder of numbered frames; the output keeps its frame rate
(and its audio, if any). Every setting of `nst-jax` (stylize) applies to each frame (presets, optimizer,
weights, colours, blends, --max_size for the frames, --steps per frame), plus the video settings
(--temporal_weight, --video_mode sequential|multipass, --temporal_frames 1,2,4, --passes, --flow_method) and
the part of the clip (--start seconds, then --duration seconds or --frames N; --fps for a folder of frames).
Frames are stylised and written at even sizes (yuv420p). See docs/video.md.

--frames_out DIR also writes frame_00001.png, ... With --workdir DIR the run is resumable: the optical flow
is cached there, each frame checkpoints, finished frames are kept losslessly, and the same command after
an interruption (Ctrl-C, SIGTERM, SIGHUP, a closed stdout/stderr pipe: exit 130, 143, 129, 141; or even
kill -9) resumes and produces the video an uninterrupted run would; metrics.jsonl and report.md give the
temporal error per frame, progress.png shows a strip of frames.
"""

from __future__ import annotations

import os
import sys

from absl import flags

from nst_jax import cost, hooks, inputs, video
from nst_jax.commands import common, stylize  # Stylize defines the setting flags: one vocabulary.
from nst_jax.errors import NstJaxError

stylize.define_setting_flags("video")
FLAGS = flags.FLAGS
flags.DEFINE_string("input", None, "The clip: a video file (mp4, webm, mov, gif) or a folder of numbered frames.")
flags.DEFINE_string("frames_out", None, "Also write each stylised frame as DIR/frame_00001.png, ...")
flags.DEFINE_integer("max_batch", video.DEFAULT_MAX_BATCH, "Multipass: most frames stepped together in one batch.")

# The flags of `nst-jax` (stylize) that this command uses too, and what they mean here.
_SHARED = {
    "style": "Style painting (file or skimage:NAME). Repeat the flag to blend several styles.",
    "output": "The stylised video (.mp4 or .mov: H.264; .webm: VP9), written when every frame is done.",
    "workdir": "Run folder: flow cache, per-frame checkpoints, finished frames, metrics.jsonl, report.md, "
               "progress.png. The same command run again resumes.",
    "overwrite": "Replace an existing --output (and files in --frames_out).",
    "checkpoint_every": "With --workdir: save a frame's checkpoint every N steps (and at its end).",
    "weights": None, "progress": None, "compilation_cache": None,
}
_PICTURE_ONLY = ("content", "keep_checkpoints", "async_checkpoints", "snapshot_every", "style_region",
                 "style_region_source", "dry_run", "force")


def _help() -> str:
  names = list(_SHARED) + ["input", "frames_out", "max_batch"]
  settings_names = [n for n in stylize.settings.NAMES + tuple(stylize.settings.SHORTHANDS) if n in FLAGS]
  lines = [(__doc__ or "").strip(), "", "flags:"]
  for name in names + ["--"] + settings_names:
    if name == "--":
      lines += ["", "settings (as in nst-jax; docs/settings.md):"]
      continue
    text = _SHARED.get(name) or FLAGS[name].help
    lines.append(f"  --{name}: {text}")
  return "\n".join(lines)


def metrics_path(output: str) -> str:
  return os.path.splitext(output)[0] + ".metrics.jsonl"


def main(argv):
  from nst_jax import video_io
  if len(argv) > 1:
    raise NstJaxError(f"unexpected arguments: {' '.join(argv[1:])} (flags look like --input=clip.mp4)")
  for name in _PICTURE_ONLY:
    if FLAGS[name].present:
      raise NstJaxError(f"--{name} is a flag of nst-jax (pictures), not of nst-jax video")
  for name in ("input", "style", "output"):
    if not FLAGS[name].value:
      raise NstJaxError(f"--{name} is required (see --help)")
  if FLAGS.checkpoint_every < 0 or (FLAGS.max_batch or 1) < 1:
    raise NstJaxError("--checkpoint_every must be >= 0 and --max_batch >= 1")
  config = stylize.settings.resolve(stylize.settings_from_flags(), num_styles=len(FLAGS.style), scope="video")
  output = os.path.abspath(FLAGS.output)
  video_io.check_writable(output, overwrite=FLAGS.overwrite)
  if FLAGS.frames_out and os.path.isdir(FLAGS.frames_out) and os.listdir(FLAGS.frames_out) and not FLAGS.overwrite:
    raise NstJaxError(f"--frames_out {FLAGS.frames_out} is not empty (use --overwrite to replace its frames)")
  clip = video_io.read_clip(FLAGS.input, int(config.max_size), selection=video_io.Selection.from_config(config))
  frames, notes = video.prepare_frames(clip.frames, int(config.max_size))
  styles = [inputs.load_painting(path, config, keep_alpha=False) for path in FLAGS.style]
  weights = stylize.load_weights()
  for note in notes:
    print(f"note: {note}", file=sys.stderr)
  print(describe(clip, frames, config), file=sys.stderr)
  stylize.print_machine_note(config)
  print(cost.video_estimate(config, frames[0].shape[:2], len(frames), max_batch=FLAGS.max_batch)[1], file=sys.stderr)
  bar = _FrameBar(disable=not FLAGS.progress, workdir=FLAGS.workdir)
  with hooks.StopOnSignals() as stopper:
    try:
      result = video.run_video(frames, styles, config, weights=weights, workdir=FLAGS.workdir,
                               hooks=[stopper, bar, cost.StepTimes()], progress=bar.update, max_batch=FLAGS.max_batch,
                               checkpoint_every=FLAGS.checkpoint_every)
    finally:
      bar.close()
  if result.status == "stopped":
    where = f"; run the same command to resume from {FLAGS.workdir}" if FLAGS.workdir else " (no --workdir: lost)"
    common.stop_exit(f"interrupted by {hooks.stop_cause(stopper.caught[0])} after {len(result.per_frame)} finished "
                     f"frame(s){where}", 128 + stopper.caught[0])
  video_io.write_video(output, result.frames, clip.fps, audio_from=FLAGS.input if clip.has_audio else None,
                       audio_start=clip.start)
  if FLAGS.frames_out:
    os.makedirs(FLAGS.frames_out, exist_ok=True)
    video_io.write_frames(FLAGS.frames_out, result.frames)
  if not FLAGS.workdir:
    video.write_metrics(metrics_path(output), result)
  mean = video.mean_error(result.temporal_error)
  height, width = result.frames[0].shape[:2]
  print(f"wrote {FLAGS.output} ({len(result.frames)} frames {width}x{height}, temporal error {mean:.4g}, "
        f"{result.seconds:.1f} s)")


def describe(clip, frames, config) -> str:
  """The console's first line: which frames of the clip, their size (the size written), the mode and steps."""
  height, width = frames[0].shape[:2]
  first = round(clip.start * clip.fps)
  part = "" if len(frames) == clip.total else (
      f" (frames {first + 1}-{first + len(frames)} of {clip.total}, from {clip.start:.2f} s)")
  rate = f"{clip.fps:g} fps" + (" (a folder's default; set --fps)" if os.path.isdir(clip.source)
                                and config.fps is None else "")
  passes = len(video.pass_plan(config))
  return (f"{len(frames)} frames{part} {width}x{height} at {rate}, {config.video_mode}"
          + (f" ({passes} passes)" if passes > 1 else "") + f", {config.steps} steps per frame")


class _FrameBar:
  """A tqdm bar over frames (multipass: frame-passes) that moves within a frame, step by step, with an ETA.

  Fed by `run_video`'s progress callback (finished frames) and, as an engine hook, by every step (the
  share done of each frame in flight). Says on stderr when a run resumes, and from where."""

  def __init__(self, disable: bool, workdir: str | None = None):
    self.disable, self.workdir, self.bar = disable, workdir, None
    self.done, self.partial = 0, {}  # Finished frame(-pass)es; job name -> share of its steps done.
    self.info, self.started = None, False

  def update(self, info: dict) -> None:
    from tqdm import tqdm
    self.info = info
    if self.bar is None:
      unit = "frame-pass" if info["passes"] > 1 else "frame"
      self.bar = tqdm(total=info["total"], initial=info["done"], desc="frames", unit=unit, disable=self.disable,
                      dynamic_ncols=True, bar_format="{l_bar}{bar}| {n:.1f}/{total} {unit} "
                      "[{elapsed}<{remaining}, {rate_fmt}{postfix}]")
    if info["passes"] > 1:
      self.bar.set_description(f"pass {info['pass']}/{info['passes']}", refresh=False)
    self.done = info["done"]
    for number in info["frames"]:
      self.partial = {k: v for k, v in self.partial.items() if not k.startswith(f"frame {number}/")}
    self._show()

  def on_job_start(self, run) -> None:
    if not self.started and self.workdir and self.info and self.info["done"]:  # The first frame run here.
      self._say(f"resumed from {self.workdir}: {resumed_text(self.info)}")
    self.started = True
    if run.restored_step:
      self._say(f"{run.job.name}: resumed at step {run.restored_step}/{run.total_steps} from its checkpoint")

  def on_step(self, event) -> None:
    run = event.run
    self.partial[run.job.name] = event.step / max(1, run.total_steps)
    if self.bar is not None:
      self.bar.set_postfix_str(f"{run.job.name} step {event.step}/{run.total_steps}", refresh=False)
    self._show()

  def _say(self, text: str) -> None:
    """A line on stderr, above the bar when there is one."""
    from tqdm import tqdm
    tqdm.write(text, file=sys.stderr)

  def _show(self) -> None:
    if self.bar is not None:
      self.bar.n = min(self.bar.total, self.done + sum(self.partial.values()))
      self.bar.refresh()

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()


def resumed_text(info: dict) -> str:
  """"3 of 10 frames done, going on at frame 4" (multipass: frame-passes and the pass)."""
  per_pass = info["total"] // info["passes"]
  if info["passes"] == 1:
    return f"{info['done']} of {info['total']} frames done, going on at frame {info['done'] + 1}"
  return (f"{info['done']} of {info['total']} frame-passes done, going on in pass {info['pass']} "
          f"({info['done'] - (info['pass'] - 1) * per_pass} of its {per_pass} frames done)")


def run(argv=None):
  argv = list(sys.argv if argv is None else argv)
  if any(arg in common._HELP_ARGS for arg in argv[1:]):
    print(_help())
    sys.exit(0)
  common.run(main, argv)


if __name__ == "__main__":
  run()
