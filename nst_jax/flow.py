"""Optical flow between video frames, its reliability mask, a per-pair cache and the flicker metric.

Numpy in, numpy out (host side, no JAX): frames are float32 `[H, W, 3]` in [0, 1], flows float32 `[H, W, 2]`
as (dx, dy) in pixels. Convention: for a pixel x of `src`, `src(x) ~ dst(x + flow(x))` with
`flow = compute_flow(src, dst)`, so `warp(dst, flow) ~ src` (an earlier output is warped into frame t with
the flow t -> t-1). OpenCV's DIS (Kroeger et al. 2016) or Farneback (2003) compute it: no learned weights.

References: Ruder, Dosovitskiy & Brox 2016, "Artistic style transfer for videos" (temporal loss, reliability
masks); Sundaram, Brox & Keutzer 2010, "Dense point trajectories by GPU-accelerated large displacement
optical flow" (forward-backward check and motion boundaries).
"""

from __future__ import annotations

import hashlib
import os
from typing import Sequence

import cv2
import numpy as np

from nst_jax.errors import NstJaxError
from nst_jax.image_io import atomic_write

METHODS = ("dis", "farneback")

# Reliability thresholds, as in artistic-videos' consistencyChecker (Ruder et al. 2016, eq. 5 and 6, after
# Sundaram et al. 2010); w = the flow t -> t-k at x, w^ = the flow t-k -> t at x + w(x):
# inconsistent where |w + w^|^2 >= CONSISTENCY_RELATIVE * (|w|^2 + |w^|^2) + CONSISTENCY_ABSOLUTE (px^2):
# a round trip that does not come back is an occlusion (or a wrong flow);
CONSISTENCY_RELATIVE = 0.01
CONSISTENCY_ABSOLUTE = 0.5
# motion boundary where |grad u|^2 + |grad v|^2 > BOUNDARY_RELATIVE * |w|^2 + BOUNDARY_ABSOLUTE (central
# differences [-1/2, 0, 1/2] of w); the flow is blurred across object edges, so it is not trusted there.
BOUNDARY_RELATIVE = 0.01
BOUNDARY_ABSOLUTE = 0.002
# The reference then blurs its 0/255 mask (Gaussian, sigma 0.8) into soft weights; ours stays binary ({0, 1})
# so that `losses.closest_first` splits pixels between earlier frames cleanly (the blur moves few pixels
# across 1/2).


def _gray8(image: np.ndarray) -> np.ndarray:
  """float `[H, W, 3]` in [0, 1] -> uint8 `[H, W]` luminance (what both OpenCV methods take)."""
  image = np.asarray(image, np.float32)
  if image.ndim != 3 or image.shape[2] != 3:
    raise ValueError(f"expected a frame [H, W, 3], got shape {image.shape}")
  return cv2.cvtColor(np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8), cv2.COLOR_RGB2GRAY)


def _check_method(method: str) -> str:
  if method not in METHODS:
    raise NstJaxError(f"unknown flow_method {method!r}; choose one of {', '.join(METHODS)}")
  return method


def compute_flow(src: np.ndarray, dst: np.ndarray, method: str = "dis") -> np.ndarray:
  """Dense optical flow `[H, W, 2]` (dx, dy) with `src(x) ~ dst(x + flow(x))`.

  Args:
    src, dst: frames float32 `[H, W, 3]` in [0, 1], one size.
    method: "dis" (DIS, preset MEDIUM: patches with variational refinement; sub-pixel on textures) or
      "farneback" (polynomial expansion; smoother, slower on large frames).
  """
  _check_method(method)
  if np.shape(src) != np.shape(dst):
    raise ValueError(f"frames differ in shape: {np.shape(src)} vs {np.shape(dst)}")
  a, b = _gray8(src), _gray8(dst)
  if method == "dis":
    flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM).calc(a, b, None)
  else:
    flow = cv2.calcOpticalFlowFarneback(a, b, None, pyr_scale=0.5, levels=3, winsize=15, iterations=3,
                                        poly_n=5, poly_sigma=1.2, flags=0)
  return np.asarray(flow, np.float32)  # [H, W, 2]


def _sample_points(flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """x + flow(x) as two float32 maps `[H, W]` (column, row)."""
  height, width = flow.shape[:2]
  cols, rows = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
  return cols + flow[..., 0], rows + flow[..., 1]


def warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
  """`image` sampled at x + flow(x), bilinear; outside the frame the nearest edge pixel (masked anyway).

  Args:
    image: float32 `[H, W, C]` (or `[H, W]`).
    flow: `[H, W, 2]` (dx, dy), e.g. `compute_flow(src, image)`, so that the result ~ src.
  """
  image = np.asarray(image, np.float32)
  if image.shape[:2] != flow.shape[:2]:
    raise ValueError(f"image {image.shape} and flow {flow.shape} differ in size")
  map_x, map_y = _sample_points(np.asarray(flow, np.float32))
  out = cv2.remap(image, map_x, map_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
  return out.reshape(image.shape)


def reliable_mask(flow_fw: np.ndarray, flow_bw: np.ndarray) -> np.ndarray:
  """Where frame t can trust the flow into frame t-k: float32 `[H, W]`, 1 reliable, 0 not.

  Zero where (a) x + w(x) falls outside frame t-k (the reference also drops points in the last row and
  column, whose bilinear cell it does not clamp; we keep them),
  (b) the forward-backward check fails (occluded or disoccluded, e.g. the background a moving object
  uncovers), (c) x lies on a motion boundary. Thresholds: the constants above.

  Args:
    flow_fw: the flow t-k -> t `[H, W, 2]` (on frame t-k's pixels).
    flow_bw: the flow t -> t-k `[H, W, 2]` (on frame t's pixels; the one that warps outputs into frame t).
  """
  flow_fw = np.asarray(flow_fw, np.float32)
  flow_bw = np.asarray(flow_bw, np.float32)
  if flow_fw.shape != flow_bw.shape or flow_fw.ndim != 3 or flow_fw.shape[2] != 2:
    raise ValueError(f"expected two flows [H, W, 2] of one size, got {flow_fw.shape} and {flow_bw.shape}")
  height, width = flow_bw.shape[:2]
  map_x, map_y = _sample_points(flow_bw)
  inside = (map_x >= 0) & (map_x <= width - 1) & (map_y >= 0) & (map_y <= height - 1)
  returned = cv2.remap(flow_fw, map_x, map_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
  w_sq = np.sum(np.square(flow_bw), axis=-1)  # [H, W]
  round_trip = np.sum(np.square(flow_bw + returned), axis=-1)
  returned_sq = np.sum(np.square(returned), axis=-1)
  consistent = round_trip < CONSISTENCY_RELATIVE * (w_sq + returned_sq) + CONSISTENCY_ABSOLUTE
  kernel = np.array([[-0.5, 0.0, 0.5]], np.float32)
  grad_x = cv2.filter2D(flow_bw, -1, kernel, borderType=cv2.BORDER_REPLICATE)
  grad_y = cv2.filter2D(flow_bw, -1, kernel.T, borderType=cv2.BORDER_REPLICATE)
  motion_edge = np.sum(np.square(grad_x) + np.square(grad_y), axis=-1)
  smooth = motion_edge <= BOUNDARY_RELATIVE * w_sq + BOUNDARY_ABSOLUTE
  return (inside & consistent & smooth).astype(np.float32)


def frame_key(frame: np.ndarray) -> str:
  """A content hash of one frame (shape, dtype and pixels): a changed clip never reuses stale flow."""
  frame = np.ascontiguousarray(frame, np.float32)
  digest = hashlib.sha256(repr(frame.shape).encode())
  digest.update(frame.tobytes())
  return digest.hexdigest()[:20]


class FlowCache:
  """Flow between frame pairs, computed once: in `directory` as `.npy` files (None: in memory only).

  A flow's file name holds both frames' content hashes and the method, so a changed clip or method never
  reads stale flow, and one folder can serve several clips. Masks are derived from the two cached flows.
  """

  def __init__(self, directory: str | None = None, method: str = "dis"):
    self.directory = directory
    self.method = _check_method(method)
    self._flows: dict[str, np.ndarray] = {}
    self.computed = 0  # flows computed (not read) by this cache: for tests and progress reports.
    if directory is not None:
      os.makedirs(directory, exist_ok=True)

  def flow(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """`compute_flow(src, dst, self.method)`, from the cache when it is there."""
    key = f"{self.method}-{frame_key(src)}-{frame_key(dst)}"
    if key in self._flows:
      return self._flows[key]
    path = None if self.directory is None else os.path.join(self.directory, key + ".npy")
    flow = None
    if path is not None and os.path.exists(path):
      try:
        flow = np.load(path)
      except (OSError, ValueError):  # A damaged file (the writes are atomic, so rare): computed again.
        flow = None
      if flow is not None and flow.shape != np.shape(src)[:2] + (2,):
        flow = None
    if flow is None:
      flow = compute_flow(src, dst, self.method)
      self.computed += 1
      if path is not None:
        with atomic_write(path) as f:
          np.save(f, flow)
    self._flows[key] = flow
    return flow

  def pair(self, frames: Sequence[np.ndarray], t: int, s: int) -> tuple[np.ndarray, np.ndarray]:
    """(flow t -> s `[H, W, 2]`, mask `[H, W]` of frame t's pixels whose flow into frame s is reliable).

    `warp(out_s, flow)` brings frame s's output into frame t; the mask says where to trust it.
    """
    flow_ts = self.flow(frames[t], frames[s])
    flow_st = self.flow(frames[s], frames[t])
    return flow_ts, reliable_mask(flow_st, flow_ts)


def temporal_error(frames_out: Sequence[np.ndarray], frames_in: Sequence[np.ndarray], method: str = "dis",
                   cache: FlowCache | None = None) -> np.ndarray:
  """Flicker per frame pair, `[T - 1]`: E_t = mean over reliable pixels (and channels) of
  (out_t - warp(out_{t-1}, flow t -> t-1))^2, the flow and mask taken on the input frames.

  0 when each output is its predecessor moved along the flow; NaN for a pair with no reliable pixel
  (e.g. a scene cut), which `np.nanmean` skips. A given `cache` computes with its own method (`method` is
  used only to make one when `cache` is None).
  """
  if len(frames_out) != len(frames_in):
    raise ValueError(f"{len(frames_out)} output frames for {len(frames_in)} input frames")
  cache = cache if cache is not None else FlowCache(None, method)
  errors = []
  for t in range(1, len(frames_in)):
    out_t = np.asarray(frames_out[t], np.float32)
    if out_t.shape != np.shape(frames_in[t]):
      raise ValueError(f"output frame {t} has shape {out_t.shape}, its input {np.shape(frames_in[t])}")
    flow, mask = cache.pair(frames_in, t, t - 1)
    kept = mask.sum()
    if kept == 0:
      errors.append(np.nan)
      continue
    squared = np.square(out_t - warp(frames_out[t - 1], flow)).mean(axis=-1)  # [H, W]
    errors.append(float((squared * mask).sum() / kept))
  return np.asarray(errors, np.float64)
