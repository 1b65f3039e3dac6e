"""Shared helpers for the web tests: tiny images, a live uvicorn server in a thread, waiting for jobs."""

from __future__ import annotations

import io
import socket
import time

import numpy as np
from PIL import Image


def png_bytes(seed: int, width: int = 40, height: int = 32) -> bytes:
  """A small random-but-smooth RGB PNG."""
  rng = np.random.default_rng(seed)
  small = rng.integers(0, 255, (max(2, height // 8), max(2, width // 8), 3), dtype=np.uint8)
  img = Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)
  buffer = io.BytesIO()
  img.save(buffer, format="PNG")
  return buffer.getvalue()


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def live_server(app):
  """Runs `app` with uvicorn on a free localhost port in a thread; yields the base URL."""
  from nst_jax.server.app import serve_in_thread
  return serve_in_thread(app)


def wait_for(get_job, statuses=("done", "failed", "cancelled"), timeout: float = 150.0, condition=None) -> dict:
  """Polls `get_job()` until its status is in `statuses` (or `condition(job)` holds)."""
  deadline = time.time() + timeout
  while True:
    job = get_job()
    if (condition(job) if condition else job["status"] in statuses):
      return job
    if time.time() > deadline:
      raise AssertionError(f"timed out waiting; last state: {job}")
    time.sleep(0.1)


def api_result(client, files: dict, settings: dict, timeout: float = 150.0) -> np.ndarray:
  """Submits a job through `POST /api/jobs` (`settings` as form fields), waits until it is done and returns
  its result as float32 in [0, 1] (RGB, or RGBA for a transparent photo)."""
  response = client.post("/api/jobs", files=files, data={k: str(v) for k, v in settings.items()})
  assert response.status_code == 201, response.text
  job = wait_for(lambda: client.get(f"/api/jobs/{response.json()['id']}").json(), timeout=timeout)
  assert job["status"] == "done", job
  return np.asarray(Image.open(io.BytesIO(client.get(job["result_url"]).content)), np.float32) / 255.0
