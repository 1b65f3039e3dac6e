"""Stylise a video clip, frame by frame or in passes, with a temporal loss against flicker (Ruder et al. 2016).

    nst-jax video --input clip.mp4 --style painting.jpg --output out.mp4

CLIP is a video file (mp4, webm, mov, gif) or a folder of numbered frames; the output keeps its frame rate
(and its audio, if any). Every setting of `nst-jax` (stylize) applies to each frame (presets, optimizer,
weights, colours, blends, --max_size for the frames, --steps per frame), plus the video settings
(--temporal_weight, --video_mode sequential|multipass, --temporal_frames 1,2,4, --passes, --flow_method).
See docs/video.md.

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
  clip = video_io.read_clip(FLAGS.input, int(config.max_size))
  shape = clip.frames[0].shape
  frames = [inputs.prepare_content(f, int(config.max_size), f"frame {i + 1}")[0] for i, f in enumerate(clip.frames)]
  styles = [inputs.load_painting(path, config, keep_alpha=False) for path in FLAGS.style]
  weights = stylize.load_weights()
  passes = len(video.pass_plan(config))
  print(f"{len(frames)} frames {shape[1]}x{shape[0]} at {clip.fps:g} fps, {config.video_mode}"
        + (f" ({passes} passes)" if passes > 1 else "") + f", {config.steps} steps per frame", file=sys.stderr)
  stylize.print_machine_note(config)
  print(cost.video_estimate(config, frames[0].shape[:2], len(frames), max_batch=FLAGS.max_batch)[1], file=sys.stderr)
  bar = _FrameBar(disable=not FLAGS.progress)
  with hooks.StopOnSignals() as stopper:
    try:
      result = video.run_video(frames, styles, config, weights=weights, workdir=FLAGS.workdir,
                               hooks=[stopper, cost.StepTimes()], progress=bar.update, max_batch=FLAGS.max_batch,
                               checkpoint_every=FLAGS.checkpoint_every)
    finally:
      bar.close()
  if result.status == "stopped":
    where = f"; run the same command to resume from {FLAGS.workdir}" if FLAGS.workdir else " (no --workdir: lost)"
    common.stop_exit(f"interrupted by {hooks.stop_cause(stopper.caught[0])} after {len(result.per_frame)} finished "
                     f"frame(s){where}", 128 + stopper.caught[0])
  video_io.write_video(output, result.frames, clip.fps, audio_from=FLAGS.input if clip.has_audio else None)
  if FLAGS.frames_out:
    os.makedirs(FLAGS.frames_out, exist_ok=True)
    video_io.write_frames(FLAGS.frames_out, result.frames)
  if not FLAGS.workdir:
    video.write_metrics(metrics_path(output), result)
  mean = video.mean_error(result.temporal_error)
  print(f"wrote {FLAGS.output} ({len(result.frames)} frames, temporal error {mean:.4g}, "
        f"{result.seconds:.1f} s)")


class _FrameBar:
  """A tqdm bar over frames (x passes) with an ETA, fed by `run_video`'s progress callback."""

  def __init__(self, disable: bool):
    self.disable, self.bar = disable, None

  def update(self, info: dict) -> None:
    from tqdm import tqdm
    if self.bar is None:
      self.bar = tqdm(total=info["total"], initial=info["done"], desc="frames", unit="frame", disable=self.disable,
                      dynamic_ncols=True)
    if info["passes"] > 1:
      self.bar.set_description(f"pass {info['pass']}/{info['passes']}", refresh=False)
    self.bar.update(info["done"] - self.bar.n)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()


def run(argv=None):
  argv = list(sys.argv if argv is None else argv)
  if any(arg in common._HELP_ARGS for arg in argv[1:]):
    print(_help())
    sys.exit(0)
  common.run(main, argv)


if __name__ == "__main__":
  run()
