"""What the web server accepts: request bodies, submissions per minute, decoded pixels, output sizes, clips.

`BodyLimit` (ASGI middleware: 413 over the body limit, also while a chunked body streams) and `RateLimiter`
(429) guard the HTTP layer; `Limits` holds the job limits that `submit` checks (413/422 above them). The
values are `create_app`'s arguments (`nst-jax serve` flags; docs/web.md).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import threading
import time

from fastapi import HTTPException

# Decoded-pixel limit for uploads (decompression bombs): 40 megapixels.
DEFAULT_MAX_PIXELS = 40_000_000
# Clip limits of the web server (`create_app` arguments; docs/web.md): a short clip, not a film.
DEFAULT_MAX_VIDEO_SECONDS = 10.0
DEFAULT_MAX_VIDEO_FRAMES = 250
DEFAULT_MAX_VIDEO_PIXELS = 3840 * 2160  # Per decoded frame (4K UHD); frames are stored at most max_size.


@dataclasses.dataclass
class Limits:
  """What a job may be (see `create_app`)."""
  max_size: int
  max_steps: int
  max_pixels: int
  max_video_seconds: float = DEFAULT_MAX_VIDEO_SECONDS
  max_video_frames: int = DEFAULT_MAX_VIDEO_FRAMES
  max_video_pixels: int = DEFAULT_MAX_VIDEO_PIXELS


class RateLimiter:
  """At most `per_minute` events per key in any 60 s window (0 = unlimited)."""

  def __init__(self, per_minute: int):
    self.per_minute = per_minute
    self._hits: dict[str, collections.deque] = collections.defaultdict(collections.deque)
    self._lock = threading.Lock()

  def retry_after(self, key: str) -> float | None:
    """Records a hit; returns the seconds to wait if it is over the limit (and then does not count it)."""
    if self.per_minute <= 0:
      return None
    now = time.monotonic()
    with self._lock:
      if len(self._hits) > 10_000:  # Forget idle clients.
        for stale in [k for k, v in self._hits.items() if not v or now - v[-1] >= 60.0]:
          del self._hits[stale]
      hits = self._hits[key]
      while hits and now - hits[0] >= 60.0:
        hits.popleft()
      if len(hits) >= self.per_minute:
        return 60.0 - (now - hits[0])
      hits.append(now)
    return None


class BodyLimit:
  """ASGI middleware: request bodies over `max_bytes` get 413 (by Content-Length, or while streaming)."""

  def __init__(self, app, max_bytes: int):
    self.app = app
    self.max_bytes = max_bytes

  async def __call__(self, scope, receive, send):
    if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
      return await self.app(scope, receive, send)
    headers = dict(scope["headers"])
    length = headers.get(b"content-length")
    if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
      return await _send_error(send, 413, f"upload too large: the limit is {self.max_bytes / 1e6:g} MB")
    received, too_large, replaced = 0, False, False
    message = f"upload too large: the limit is {self.max_bytes / 1e6:g} MB"

    async def limited_receive():
      nonlocal received, too_large
      event = await receive()
      if event["type"] == "http.request":
        received += len(event.get("body", b""))
        if received > self.max_bytes:  # A body without Content-Length (chunked) grew too large.
          too_large = True
          raise HTTPException(413, message)
      return event

    async def checked_send(event):
      # The form parser may turn the error above into a 400; the client gets the 413 instead.
      nonlocal replaced
      if too_large:
        if not replaced:
          replaced = True
          await _send_error(send, 413, message)
        return
      await send(event)

    await self.app(scope, limited_receive, checked_send)


async def _send_error(send, status: int, message: str) -> None:
  body = json.dumps({"detail": message}).encode()
  await send({"type": "http.response.start", "status": status,
              "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                          (b"connection", b"close")]})
  await send({"type": "http.response.body", "body": body})
