"""Temporally consistent style transfer of a clip: frames become engine jobs with a temporal loss term.

    result = run_video(clip.frames, [style], settings.resolve({...}), weights=vgg.random_weights(...))

Ruder, Dosovitskiy & Brox 2016 ("Artistic style transfer for videos"): frame t is pulled towards the
earlier outputs warped into it by the optical flow, where the flow is reliable, and starts from the warped
previous output. `video_mode sequential` runs frame by frame; `multipass` runs every frame of a pass as one
vmapped batch and alternates the direction of the passes. No run loop lives here: each frame (or each pass)
is a list of `engine.Job`s run by `engine.Engine.run`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Sequence

import ml_collections
import numpy as np

from nst_jax import vgg


@dataclasses.dataclass
class VideoResult:
  """What `run_video` produced.

  Attributes:
    frames: the stylised frames, float32 `[H, W, 3]` in [0, 1], in clip order.
    temporal_error: `[T - 1]` flicker per frame pair (`flow.temporal_error`): mean squared difference of
      output t and output t-1 warped into it, over reliable pixels.
    seconds: wall time of the whole run (this session).
    per_frame: one dict per frame: frame, steps, seconds, final losses, temporal_error (None for frame 0).
  """
  frames: list[np.ndarray]
  temporal_error: np.ndarray
  seconds: float
  per_frame: list[dict]


def run_video(frames: Sequence[np.ndarray], styles: Sequence[np.ndarray], config: ml_collections.ConfigDict, *,
              weights: vgg.VGGWeights, workdir: str | None = None, hooks: Iterable[Any] = (),
              flow_cache: Any = None, progress: Callable[[dict], None] | None = None) -> VideoResult:
  """Stylises `frames` (float32 `[H, W, 3]`, all one size) with the settings in `config`.

  Args:
    frames: the clip's frames in order (e.g. `video_io.read_clip(...).frames`).
    styles: one or more paintings (blended by `style_blend_weights`).
    config: `settings.resolve(...)`, including the video settings (temporal_weight, video_mode,
      temporal_frames, passes, flow_method).
    weights: VGG19 weights.
    workdir: a run folder: flow cache, per-frame checkpoints and finished frames (float .npy, lossless), so
      the same call after an interruption resumes and gives the uninterrupted result. None: in memory.
    hooks: engine hooks (`nst_jax.hooks`), called for every frame's job.
    flow_cache: a `flow.FlowCache` (default: one in `workdir/flow`, or in memory).
    progress: called after each finished frame (sequential) or pass (multipass) with a dict: frame(s) done,
      total, pass, seconds.

  Returns:
    A `VideoResult`.

  Raises:
    NstJaxError: a bad setting or input (one line).
  """
  raise NotImplementedError("run_video: work in progress (issue 13)")
