"""Optical flow for video (nst_jax/flow.py): accuracy on known motion, reliability masks, seconds per pair.

    python scripts/benchmark_flow.py --photo ../shared/data/content/tubingen.jpg --size 256 --repeats 5

Clips cut from one photo (resized to --size, longest side) with known motion: a pan of (3, -2) px per frame,
a zoom of 2% per frame about the centre, and a textured square moving 4 px over the still photo. For DIS
and Farneback it prints the end-point error (mean and 95th percentile, px) against the true flow on pixels
away from the borders, the share of pixels the reliability mask keeps (with where the truth says they are
occluded), and seconds per flow (median of --repeats; FlowCache computes two per frame pair, both ways),
with the machine's load, since other work on the machine distorts timings.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from nst_jax import flow, image_io  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("photo", "skimage:astronaut", "Photo the clips are cut from (path or skimage:NAME).")
flags.DEFINE_integer("size", 256, "Frame size (longest side, pixels).")
flags.DEFINE_integer("repeats", 5, "Timed repeats per method (median reported).")
flags.DEFINE_list("methods", list(flow.METHODS), "Flow methods.")
MARGIN = 12  # Pixels near the border are left out of the errors: content enters and leaves there.


def _sample(image: np.ndarray, map_x: np.ndarray, map_y: np.ndarray) -> np.ndarray:
  import cv2
  return cv2.remap(image, map_x.astype(np.float32), map_y.astype(np.float32), cv2.INTER_LINEAR,
                   borderMode=cv2.BORDER_REFLECT)


def cases(photo: np.ndarray):
  """(name, src, dst, true flow src -> dst, true occlusion of src's pixels or None)."""
  height, width = photo.shape[:2]
  cols, rows = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
  dx, dy = 3.0, -2.0  # dst(x + d) = src(x): dst(x) = src(x - d).
  yield "pan (3, -2) px", photo, _sample(photo, cols - dx, rows - dy), np.stack(
      [np.full_like(cols, dx), np.full_like(rows, dy)], -1), None
  zoom, cx, cy = 1.02, (width - 1) / 2, (height - 1) / 2  # dst(c + z (x - c)) = src(x).
  dst = _sample(photo, cx + (cols - cx) / zoom, cy + (rows - cy) / zoom)
  yield "zoom 2%", photo, dst, np.stack([(zoom - 1) * (cols - cx), (zoom - 1) * (rows - cy)], -1), None
  side, left, top, step = height // 4, width // 3, height // 3, 4
  square = np.ascontiguousarray(photo[::-1, ::-1][top:top + side, left:left + side])
  src, dst = photo.copy(), photo.copy()
  src[top:top + side, left:left + side] = square
  dst[top:top + side, left + step:left + step + side] = square
  truth = np.zeros((height, width, 2), np.float32)
  truth[top:top + side, left:left + side, 0] = step
  occluded = np.zeros((height, width), bool)  # src's background that the square covers in dst.
  occluded[top:top + side, left + side:left + side + step] = True
  yield "square moving 4 px", src, dst, truth, occluded


def main(argv):
  del argv
  photo = image_io.resize_longest(image_io.open_image(FLAGS.photo), FLAGS.size)
  print(f"frames {photo.shape[1]}x{photo.shape[0]} from {FLAGS.photo}; load {os.getloadavg()[0]:.2f}")
  print(f"{'case':20s} {'method':10s} {'EPE mean':>9s} {'EPE p95':>8s} {'kept':>6s} {'occl. kept':>10s} "
        f"{'s/flow':>7s}")
  inner = (slice(MARGIN, -MARGIN), slice(MARGIN, -MARGIN))
  for name, src, dst, truth, occluded in cases(photo):
    for method in FLAGS.methods:
      seconds = []
      for _ in range(FLAGS.repeats):
        begin = time.perf_counter()
        forward = flow.compute_flow(src, dst, method)
        backward = flow.compute_flow(dst, src, method)
        seconds.append(time.perf_counter() - begin)
      # The mask of src's pixels w.r.t. dst: src plays frame t, dst frame t-k (flow_bw = src -> dst).
      mask = flow.reliable_mask(backward, forward)
      error = np.linalg.norm(forward - truth, axis=-1)[inner]
      occl = "-" if occluded is None else f"{mask[occluded].mean():.0%}"
      print(f"{name:20s} {method:10s} {error.mean():9.3f} {np.percentile(error, 95):8.3f} {mask.mean():6.0%} "
            f"{occl:>10s} {np.median(seconds) / 2:7.4f}")
  print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
  app.run(main)
