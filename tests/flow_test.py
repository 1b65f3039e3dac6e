"""Tests for nst_jax.flow: flow on known motion, warping, the reliability mask, the cache, the flicker metric."""

import os

import cv2
import numpy as np
import pytest

from nst_jax import flow
from nst_jax.errors import NstJaxError

H, W = 64, 96
MARGIN = 8  # "away from borders": flow is extrapolated where content enters or leaves the frame.


def texture(height, width, seed, sigma=1.5):
  """Smooth random colours in [0, 1]: texture everywhere, so the flow is well defined."""
  noise = np.random.default_rng(seed).random((height, width, 3)).astype(np.float32)
  blurred = cv2.GaussianBlur(noise, (0, 0), sigma)
  return (blurred - blurred.min()) / (blurred.max() - blurred.min())


def shifted_pair(dx, dy, seed=0):
  """(src, dst) crops of one texture with dst(x + (dx, dy)) = src(x) exactly (integer shifts)."""
  big = texture(H + 20, W + 20, seed)
  src = big[10:10 + H, 10:10 + W]
  dst = big[10 - dy:10 - dy + H, 10 - dx:10 - dx + W]
  return src, dst


def interior(array):
  return array[MARGIN:-MARGIN, MARGIN:-MARGIN]


def bilinear_reference(image, flow_field):
  """Independent numpy bilinear sampling at x + flow(x), edge pixels repeated outside."""
  height, width = image.shape[:2]
  rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
  x = np.clip(cols + flow_field[..., 0], 0, width - 1)
  y = np.clip(rows + flow_field[..., 1], 0, height - 1)
  x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
  x1, y1 = np.minimum(x0 + 1, width - 1), np.minimum(y0 + 1, height - 1)
  ax, ay = (x - x0)[..., None], (y - y0)[..., None]
  top = (1 - ax) * image[y0, x0] + ax * image[y0, x1]
  bottom = (1 - ax) * image[y1, x0] + ax * image[y1, x1]
  return (1 - ay) * top + ay * bottom


@pytest.mark.parametrize("method", flow.METHODS)
@pytest.mark.parametrize("dx,dy", [(2, -1), (3, 2), (0, 4)])
def test_flow_recovers_a_known_translation(method, dx, dy):
  src, dst = shifted_pair(dx, dy)
  estimated = flow.compute_flow(src, dst, method)
  assert estimated.shape == (H, W, 2) and estimated.dtype == np.float32
  error = np.abs(interior(estimated) - np.array([dx, dy], np.float32))
  assert error.max() < 0.5, (method, error.max())


@pytest.mark.parametrize("method", flow.METHODS)
def test_warp_with_the_flow_brings_dst_back_to_src(method):
  src, dst = shifted_pair(3, -2, seed=1)
  warped = flow.warp(dst, flow.compute_flow(src, dst, method))
  assert warped.shape == src.shape
  assert np.abs(interior(warped - src)).mean() < 0.01
  assert np.abs(interior(dst - src)).mean() > 0.05  # The shift itself is not small.


def test_warp_matches_numpy_bilinear_sampling():
  image = texture(20, 30, seed=2)
  rng = np.random.default_rng(3)
  flow_field = rng.uniform(-4, 4, size=(20, 30, 2)).astype(np.float32)
  np.testing.assert_allclose(flow.warp(image, flow_field), bilinear_reference(image, flow_field), atol=2e-3)


def test_mask_of_exact_flows_keeps_all_but_the_entering_band():
  flow_bw = np.zeros((H, W, 2), np.float32)
  flow_bw[..., 0] = -3.0  # Frame t's pixel x came from x - 3 in frame t-1: content moved right by 3 px.
  mask = flow.reliable_mask(-flow_bw, flow_bw)
  assert mask.dtype == np.float32 and mask.shape == (H, W)
  np.testing.assert_array_equal(mask[:, :3], 0.0)  # Its sample point lies left of frame t-1.
  np.testing.assert_array_equal(mask[:, 3:], 1.0)


def test_mask_drops_inconsistent_flow_and_motion_boundaries():
  flow_bw = np.zeros((H, W, 2), np.float32)
  flow_bw[..., 0] = -3.0
  # Backward flow that the forward flow does not undo: the round trip misses by 3 px (9 >= 0.09 + 0.5).
  assert flow.reliable_mask(np.zeros_like(flow_bw), flow_bw)[:, 3:].max() == 0.0
  # Shear: the top half slides 2 px right, the bottom half stays. Nothing is occluded and the round trip is
  # exact, but the step in the flow is a motion boundary (central differences see rows H/2 - 1 and H/2).
  shear_bw = np.zeros((H, W, 2), np.float32)
  shear_bw[:H // 2, :, 0] = -2.0
  mask = flow.reliable_mask(-shear_bw, shear_bw)
  np.testing.assert_array_equal(mask[H // 2 - 1:H // 2 + 1], 0.0)
  np.testing.assert_array_equal(mask[:H // 2 - 1, 2:], 1.0)
  np.testing.assert_array_equal(mask[H // 2 + 1:], 1.0)


def test_mask_marks_the_band_a_moving_square_uncovers():
  background, square = texture(H, W, seed=4), texture(24, 24, seed=5)

  def frame(left):
    picture = background.copy()
    picture[20:44, left:left + 24] = square
    return picture

  frames = [frame(30), frame(34)]  # The square moves 4 px right over a still background.
  flow_10, mask = flow.FlowCache(None, "dis").pair(frames, 1, 0)
  uncovered = mask[22:42, 30:34]  # Background in frame 1 that the square hid in frame 0.
  assert uncovered.mean() < 0.2, uncovered.mean()
  far = np.ones((H, W), bool)
  far[12:52, 22:66] = False
  far[:2], far[-2:], far[:, :2], far[:, -2:] = False, False, False, False
  assert mask[far].mean() > 0.95
  assert np.abs(np.median(flow_10[24:40, 40:54].reshape(-1, 2), axis=0) - [-4, 0]).max() < 0.5


@pytest.mark.parametrize("method", flow.METHODS)
def test_mask_marks_the_band_a_pan_brings_in(method):
  big = texture(H, W + 10, seed=6)
  frames = [big[:, 5:5 + W], big[:, 2:2 + W]]  # Content moves 3 px right; 3 new columns enter on the left.
  _, mask = flow.FlowCache(None, method).pair(frames, 1, 0)
  np.testing.assert_array_equal(mask[:, :3], 0.0)
  assert mask[:, 5:].mean() > 0.95


def test_flow_cache_computes_each_flow_once_and_reads_it_back(tmp_path, monkeypatch):
  calls = []
  real = flow.compute_flow

  def counting(src, dst, method="dis"):
    calls.append(method)
    return real(src, dst, method)

  monkeypatch.setattr(flow, "compute_flow", counting)
  frames = list(shifted_pair(2, 1, seed=7))
  cache = flow.FlowCache(str(tmp_path), "dis")
  flow_10, mask = cache.pair(frames, 1, 0)
  assert len(calls) == 2 and cache.computed == 2  # 1 -> 0 and 0 -> 1 (the check needs both).
  assert len([name for name in os.listdir(tmp_path) if name.endswith(".npy")]) == 2
  again = cache.pair(frames, 0, 1)  # The reverse pair reuses both flows.
  assert len(calls) == 2
  np.testing.assert_array_equal(again[0], cache.flow(frames[0], frames[1]))

  fresh = flow.FlowCache(str(tmp_path), "dis")  # A later run on the same folder reads the files.
  flow_read, mask_read = fresh.pair(frames, 1, 0)
  assert len(calls) == 2 and fresh.computed == 0
  np.testing.assert_array_equal(flow_read, flow_10)
  np.testing.assert_array_equal(mask_read, mask)

  changed = [frames[0], np.clip(frames[1] + 0.05, 0, 1)]  # An edited frame gets new flow, never stale.
  fresh.pair(changed, 1, 0)
  assert len(calls) == 4 and fresh.computed == 2
  flow.FlowCache(str(tmp_path), "farneback").pair(frames, 1, 0)  # So does another method.
  assert calls[-2:] == ["farneback", "farneback"]


def test_flow_cache_in_memory_writes_nothing(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  frames = list(shifted_pair(1, 1, seed=8))
  cache = flow.FlowCache(None)
  cache.pair(frames, 1, 0)
  cache.pair(frames, 1, 0)
  assert cache.computed == 2 and os.listdir(tmp_path) == []


def pan_clip(num_frames, seed, step=2):
  """A texture panned `step` px right per frame: frame t = big[:, off - step * t : ...]."""
  big = texture(H, W + step * num_frames + 4, seed)
  start = step * num_frames
  return [big[:, start - step * t:start - step * t + W] for t in range(num_frames)]


def test_temporal_error_is_zero_for_warped_outputs_and_large_for_flicker():
  frames_in = pan_clip(5, seed=9)
  cache = flow.FlowCache(None)
  outputs = [texture(H, W, seed=10)]
  for t in range(1, len(frames_in)):  # Each output is exactly its predecessor moved along the flow.
    outputs.append(flow.warp(outputs[-1], cache.pair(frames_in, t, t - 1)[0]))
  steady = flow.temporal_error(outputs, frames_in, cache=cache)
  assert steady.shape == (4,)
  np.testing.assert_allclose(steady, 0.0, atol=1e-10)

  moved = pan_clip(5, seed=11)  # Another picture panned the same way: ~0 up to interpolation.
  assert flow.temporal_error(moved, frames_in).max() < 1e-3
  rng = np.random.default_rng(12)
  flicker = [np.clip(frame + rng.normal(0, 0.1, frame.shape), 0, 1).astype(np.float32) for frame in moved]
  flickering = flow.temporal_error(flicker, frames_in, cache=cache)
  assert flickering.min() > 10 * flow.temporal_error(moved, frames_in).max()
  assert flickering.min() > 0.01  # ~2 * 0.1^2, less the clipping.


def test_temporal_error_of_a_pair_without_reliable_pixels_is_nan(monkeypatch):
  frames_in = pan_clip(3, seed=13)
  monkeypatch.setattr(flow, "reliable_mask", lambda flow_fw, flow_bw: np.zeros(flow_bw.shape[:2], np.float32))
  assert np.isnan(flow.temporal_error(frames_in, frames_in)).all()  # E.g. a scene cut: nothing to compare.


def test_unknown_method_is_one_line_error():
  with pytest.raises(NstJaxError, match="unknown flow_method 'raft'"):
    flow.compute_flow(np.zeros((8, 8, 3), np.float32), np.zeros((8, 8, 3), np.float32), "raft")
  with pytest.raises(NstJaxError):
    flow.FlowCache(None, "raft")
