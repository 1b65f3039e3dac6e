"""The FastAPI application's routes: the page, the JSON API, the progress stream and the job files. What the
server accepts lives in `limits`, how a form becomes a stored job in `submit`.

    app = create_app(data_dir="nst-jax-data", weights=weights_lib.load_vgg19("random"))

API (schema at /openapi.json, interactive docs at /docs): `POST /api/jobs` (multipart: `content` image or
`video` clip, `style` images (repeated) + options) -> job; `GET /api/jobs` (this browser's jobs);
`GET /api/jobs/{id}`; `GET /api/jobs/{id}/events` (server-sent events); `GET /api/jobs/{id}/preview`,
`/result`, `/input/{content|style|style2...}`; `POST /api/jobs/{id}/cancel`; `DELETE /api/jobs/{id}`.

Each browser gets a random token in an HttpOnly, SameSite=Strict cookie (API clients may send it in the
`X-NST-Client` header instead); jobs are stored under a hash of it and other browsers get 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import secrets
import threading
import time
from typing import Annotated, Literal

from fastapi import FastAPI, HTTPException, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from nst_jax import __version__, cost, optimize, settings, tiles
from nst_jax.errors import NstJaxError
from nst_jax.configs import presets
from nst_jax.server import limits as limits_lib, submit as submit_lib
from nst_jax.server.jobs import ACTIVE, TERMINAL, JobStore, progress_figures, valid_job_id
from nst_jax.server.limits import DEFAULT_MAX_PIXELS, BodyLimit, Limits, RateLimiter
from nst_jax.server.submit import DEFAULT_VIDEO_STEPS, SubmitError, page_defaults
from nst_jax.server import worker as worker_lib
from nst_jax.server.worker import VIDEO_RESULT, Worker

STATIC_DIR = os.path.join(os.path.dirname(__file__), "static")
COOKIE = "nst_client"
HEADER = "X-NST-Client"
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
ACCELERATOR_MAX_BATCH = 4  # Jobs per vmapped step with a GPU or TPU (1 on a CPU: `default_max_batch`).
# media-src: the chosen clip plays from a blob: URL before upload, the result video from this server.
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
                               "style-src 'self'; script-src 'self'; connect-src 'self'; object-src 'none'; "
                               "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


class JobView(BaseModel):
  """A job as the API returns it."""
  id: str
  status: Literal["queued", "running", "done", "failed", "cancelled"]
  kind: Literal["image", "video"]
  label: str
  created: float
  started: float | None
  finished: float | None
  step: int
  steps: int
  width: int
  height: int
  options: dict
  error: str | None
  batch_size: int
  checkpoint_step: int
  resumed_from: int
  queue_position: int | None
  progress: float  # The share of the whole job done, 0-1 (a clip: over all its frames and passes); only grows.
  eta_seconds: float | None  # From the rate measured over this run (None until it is known, and when done).
  steps_per_second: float | None
  preview_version: int
  preview_url: str | None
  result_url: str | None
  download_url: str | None
  content_url: str
  style_url: str
  style2_url: str | None  # Deprecated with the style2 field: style_urls[1].
  style_urls: list[str]  # Each painting as the job uses it, in order.
  frames: int  # A video: frames to stylise over all passes (0 for a picture).
  frame: int  # A video: frames finished so far (over all passes).
  temporal_error: float | None  # A finished video's flicker: mean of flow.temporal_error over its frames.
  warnings: list[str] = []  # The submission's notes (e.g. a deprecated field name); in POST /api/jobs only.


def default_max_batch() -> int:
  """`max_batch` when none is given: 1 when JAX sees only CPUs (a vmapped batch is no faster per job there and
  makes every job of it wait for the longest, docs/web.md), 4 with an accelerator (GPU or TPU)."""
  import jax
  return 1 if all(device.platform == "cpu" for device in jax.devices()) else ACCELERATOR_MAX_BATCH


def create_app(*, data_dir: str, weights, max_upload_mb: float = 20, max_pixels: int = DEFAULT_MAX_PIXELS,
               rate_limit: int = 10, max_size: int = 1024, max_steps: int = 2000, max_batch: int | None = None,
               checkpoint_every: float | None = 30.0, preview_every: float = 2.0, batch_wait: float = 0.5,
               event_interval: float = 0.5, start_worker: bool = True,
               max_video_seconds: float = limits_lib.DEFAULT_MAX_VIDEO_SECONDS,
               max_video_frames: int = limits_lib.DEFAULT_MAX_VIDEO_FRAMES,
               max_video_pixels: int = limits_lib.DEFAULT_MAX_VIDEO_PIXELS) -> FastAPI:
  """Builds the web app and its worker (started and stopped with the app's lifespan).

  Args:
    data_dir: folder for the job database and files (created if missing).
    weights: `vgg.VGGWeights` (e.g. `weights.load_vgg19(source)`).
    max_upload_mb: request body limit (413 above it).
    max_pixels: decoded-pixel limit per uploaded image (413 above it).
    rate_limit: job submissions per client address per minute (429 above it; 0 = unlimited).
    max_size, max_steps: the largest output size (longest side, px) and step count a job may ask for.
    max_batch: how many compatible jobs run together in one vmapped step (1 = no batching; None:
      `default_max_batch()`).
    checkpoint_every, preview_every: seconds between checkpoints / preview images of running jobs.
    max_video_seconds, max_video_frames, max_video_pixels: what a clip may hold (413 above): its length,
      frames and decoded pixels per frame (the upload limit applies to its file too).
  """
  store = JobStore(data_dir)
  max_batch = default_max_batch() if max_batch is None else max_batch
  worker = Worker(store, weights, max_batch=max_batch, checkpoint_every=checkpoint_every,
                  preview_every=preview_every, batch_wait=batch_wait)

  @contextlib.asynccontextmanager
  async def lifespan(app):
    if start_worker:
      worker.start()
    yield
    if start_worker:
      await run_in_threadpool(worker.stop)

  app = FastAPI(title="nst-jax", version=__version__, lifespan=lifespan,
                description="Neural style transfer jobs: upload a content photo and a style painting, follow "
                            "the progress, download the result. See docs/web.md.")
  app.state.store = store
  app.state.worker = worker
  _add_client_tokens(app)
  app.add_middleware(BodyLimit, max_bytes=int(max_upload_mb * 1e6))
  limits = Limits(max_size=max_size, max_steps=max_steps, max_pixels=max_pixels,
                  max_video_seconds=max_video_seconds, max_video_frames=max_video_frames,
                  max_video_pixels=max_video_pixels)
  _add_page_routes(app, limits, max_upload_mb)
  _add_job_routes(app, store, worker, limits, RateLimiter(rate_limit), event_interval)
  return app


def _add_client_tokens(app: FastAPI) -> None:
  """Each browser's random token (cookie or header) -> `request.state.owner`; security headers."""

  @app.middleware("http")
  async def client_token(request: Request, call_next):
    token = request.headers.get(HEADER) or request.cookies.get(COOKIE)
    new_token = None
    if not token or not _TOKEN_RE.match(token):
      token = new_token = secrets.token_urlsafe(24)
    request.state.owner = hashlib.sha256(token.encode()).hexdigest()
    response = await call_next(request)
    if new_token is not None:
      response.set_cookie(COOKIE, new_token, max_age=365 * 86400, httponly=True, samesite="strict",
                          secure=request.url.scheme == "https")
    for key, value in _SECURITY_HEADERS.items():
      response.headers.setdefault(key, value)
    return response


def _add_page_routes(app: FastAPI, limits: Limits, max_upload_mb: float) -> None:

  @app.get("/", include_in_schema=False)
  def index():
    return FileResponse(os.path.join(STATIC_DIR, "index.html"), media_type="text/html",
                        headers={"Cache-Control": "no-cache"})

  app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

  @app.get("/api/config", summary="Presets, settings, limits and defaults for the page")
  def get_config():
    # A preset whose own step count is over this server's limit (the report's 10,000 steps) is no page card.
    fits = lambda name: presets.get_preset(name).get("steps", 0) <= limits.max_steps
    size, steps = page_defaults(limits)
    return {"presets": {name: {"description": presets.PRESET_DESCRIPTIONS.get(name, ""), **presets.get_preset(name)}
                        for name in presets.ALL_PRESETS if fits(name)},
            "default_preset": presets.DEFAULT_PRESET, "default_size": size,
            "default_steps": steps, "max_size": limits.max_size,
            "max_steps": limits.max_steps, "optimizers": list(optimize.OPTIMIZERS),
            "max_upload_mb": max_upload_mb, "max_pixels": limits.max_pixels, "settings": list(settings.NAMES),
            "preserve_colors": list(settings.BY_NAME["preserve_colors"].choices), "keep_colors": True,
            "max_styles": None, "style_fields": list(submit_lib.REPEATED_FIELDS),
            "region_fields": list(submit_lib.REGION_FIELDS),
            "default_video_steps": min(DEFAULT_VIDEO_STEPS, limits.max_steps),
            "max_video_seconds": limits.max_video_seconds, "max_video_frames": limits.max_video_frames,
            "max_video_pixels": limits.max_video_pixels,
            "video_modes": list(settings.BY_NAME["video_mode"].choices)}


def _add_job_routes(app: FastAPI, store: JobStore, worker: Worker, limits: Limits, limiter: RateLimiter,
                    event_interval: float) -> None:
  owned = lambda request, job_id: _owned(store, request, job_id)
  view = lambda job: _view(store, job)

  @app.get("/api/stats", summary="Queue length and worker counters (no user data)")
  def stats():
    return {"jobs": store.counts(), "batches_run": worker.batches_run,
            "compiled_steps": worker.compiled_steps()}

  @app.post("/api/jobs", status_code=201, response_model=JobView, summary="Submit a style-transfer job",
            description=_SUBMIT_DESCRIPTION, openapi_extra=_SUBMIT_SCHEMA,
            responses={413: {"description": "upload, image or clip too large"},
                       415: {"description": "not an image (or not a clip)"},
                       422: {"description": "unknown field or bad setting"}, 429: {"description": "rate limit"}})
  async def submit(request: Request):
    client = request.client.host if request.client else "unknown"
    retry = limiter.retry_after(client)
    if retry is not None:
      raise HTTPException(429, f"too many jobs submitted: try again in {retry:.0f} s",
                          headers={"Retry-After": str(max(1, round(retry)))})
    try:
      job, warnings = await submit_lib.create_job(request, store, limits)
    except SubmitError as e:
      raise HTTPException(e.status, str(e)) from None
    worker.wake()
    return {**view(job), "warnings": warnings}

  @app.post("/api/estimate", summary="The cost of a job before it is queued (nothing is stored)",
            description="The same multipart form as `POST /api/jobs`. Returns the step's estimated peak memory, "
                        "the free memory, the largest max_size that fits, and the time per step and for the run "
                        "(analytic, or this machine's recorded step times; no compile; docs/tiles-and-cost.md).")
  async def estimate(request: Request):
    try:
      job = await submit_lib.estimate_job(request, limits)
    except SubmitError as e:
      raise HTTPException(e.status, str(e)) from None
    try:
      return await run_in_threadpool(_estimate, job)
    except NstJaxError as e:
      raise HTTPException(422, str(e)) from None

  _add_job_views(app, store, worker, owned, view, event_interval)


def _estimate(job) -> dict:
  """`cost.estimate` for the page: analytic (no compile, no step), so it never competes with the worker."""
  return cost.estimate(job.config, job.content.shape[:2]).as_dict()


_SUBMIT_DESCRIPTION = (
    "Multipart form: files `content` (a photo) or `video` (a short clip: mp4, webm, mov, gif...; the "
    "result is an mp4 at its frame rate, with its sound), `style` (repeat it for more paintings, blended in "
    "order by `style_blend_weights`, as the command's repeated --style), optional greyscale masks "
    "`style_region` (repeated in the same order: where each painting applies, one per painting or none; "
    "photos only) and `style_region_source` (which part of each painting to take the style from; an empty "
    "field keeps that painting whole) (docs/spatial-control.md), and any setting by its name "
    "(docs/settings.md), e.g. `preset` (" + " | ".join(presets.ALL_PRESETS) + "), `max_size`, `steps`, "
    "`preserve_colors` (none | luminance | histogram), `style_weight`, `scales`. Empty fields keep the "
    "preset's or default value; an unknown field or a bad value is a 422 naming it. Deprecated: `style2`, "
    "`style2_region`, `style2_region_source` (the second painting and its masks; accepted for one release "
    "with a note in the response's `warnings`).")
_BINARY = {"type": "string", "format": "binary"}
_SUBMIT_SCHEMA = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["style"],
    "properties": {
        "content": _BINARY, "video": _BINARY,
        **{name: {"type": "array", "items": _BINARY, "description": "one per painting, in order"}
           for name in submit_lib.REPEATED_FIELDS},
        **{name: {**_BINARY, "deprecated": True, "description": f"the second {field}: give {field} twice"}
           for name, field in submit_lib.ALIASES.items()},
        **{name: {"type": "string", "description": settings.BY_NAME[name].help} for name in settings.NAMES},
        **{name: {"type": "string", "description": text} for name, text in settings.SHORTHANDS.items()},
    }}}}}}


def _add_event_stream(app: FastAPI, store: JobStore, owned, view, event_interval: float) -> None:
  @app.get("/api/jobs/{job_id}/events", summary="Progress as server-sent events",
           description="`progress` events carry the job (as GET /api/jobs/{id}) plus `losses`, the loss "
                       "points since the previous event; a final `end` event follows when the job is done, "
                       "failed or cancelled.")
  async def events(request: Request, job_id: str):
    owned(request, job_id)

    async def stream():
      last_step, last_payload, last_sent = -1, None, 0.0
      while True:
        job = store.get(job_id)
        if job is None:
          yield "event: end\ndata: {\"status\": \"deleted\"}\n\n"
          return
        job_view = view(job)
        new_losses = store.losses(job_id, last_step)
        if new_losses:
          last_step = new_losses[-1]["step"]
        payload = json.dumps({**job_view, "losses": new_losses})
        if new_losses or payload != last_payload:
          yield f"event: progress\ndata: {payload}\n\n"
          last_payload, last_sent = payload, time.monotonic()
        elif time.monotonic() - last_sent > 15:
          yield ": keep-alive\n\n"
          last_sent = time.monotonic()
        if job["status"] in TERMINAL:
          yield f"event: end\ndata: {json.dumps(job_view)}\n\n"
          return
        if await request.is_disconnected():
          return
        await asyncio.sleep(event_interval)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _owned(store: JobStore, request: Request, job_id: str) -> dict:
  job = store.get(job_id) if valid_job_id(job_id) else None
  if job is None or job["owner"] != request.state.owner:
    raise HTTPException(404, "job not found")
  return job


def _view(store: JobStore, job: dict) -> dict:
  base = f"/api/jobs/{job['id']}"
  progress, eta = progress_figures(job)
  styles = _painting_names(store, job["id"])
  return JobView(
      id=job["id"], status=job["status"], kind=job["kind"], label=job["label"], created=job["created"],
      started=job["started"], finished=job["finished"], step=job["step"], steps=job["steps"], width=job["width"],
      height=job["height"], options=job["options"], error=job["error"], batch_size=job["batch_size"],
      checkpoint_step=job["checkpoint_step"], resumed_from=job["resumed_from"],
      queue_position=store.queue_position(job), progress=progress, eta_seconds=eta,
      steps_per_second=job["steps_per_second"], preview_version=job["preview_version"],
      preview_url=f"{base}/preview?v={job['preview_version']}" if job["preview_version"] else None,
      result_url=f"{base}/result" if job["status"] == "done" else None,
      download_url=f"{base}/result?download=1" if job["status"] == "done" else None,
      content_url=f"{base}/input/content", style_url=f"{base}/input/style",
      style2_url=f"{base}/input/style2" if len(styles) > 1 else None,
      style_urls=[f"{base}/input/{name}" for name in styles], frames=job["frames"], frame=job["frame"],
      temporal_error=job["temporal_error"]).model_dump()


def _painting_names(store: JobStore, job_id: str) -> list[str]:
  """`style`, `style2`, ...: the job's paintings as `/input/{name}` serves them."""
  names = []
  while os.path.exists(store.path(job_id, worker_lib.input_name("style", len(names) + 1, ".png"))):
    names.append(worker_lib.input_name("style", len(names) + 1, ""))
  return names


def _add_job_views(app: FastAPI, store: JobStore, worker: Worker, owned, view, event_interval: float) -> None:
  """Listing, following, files, cancel and delete of a browser's jobs."""
  _add_event_stream(app, store, owned, view, event_interval)

  @app.get("/api/jobs", response_model=list[JobView], summary="This browser's jobs, newest first")
  def list_jobs(request: Request, limit: int = 50):
    return [view(j) for j in store.list_owner(request.state.owner, max(1, min(limit, 200)))]

  @app.get("/api/jobs/{job_id}", response_model=JobView, summary="One job")
  def get_job(request: Request, job_id: str):
    return view(owned(request, job_id))

  @app.get("/api/jobs/{job_id}/losses", summary="The job's loss curve: [{step, total, content, style, tv}]")
  def get_losses(request: Request, job_id: str):
    owned(request, job_id)
    return store.losses(job_id)

  def _file(job_id: str, name: str, media_type: str, **kwargs):
    path = store.path(job_id, name)
    if not os.path.exists(path):
      raise HTTPException(404, f"no {name.split('.')[0]} yet")
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": "private, no-cache"}, **kwargs)

  @app.get("/api/jobs/{job_id}/preview", summary="The current image (JPEG), updated every few seconds")
  def preview(request: Request, job_id: str):
    owned(request, job_id)
    return _file(job_id, "preview.jpg", "image/jpeg")

  @app.get("/api/jobs/{job_id}/result", summary="The finished picture (PNG) or video (MP4, H.264)")
  def result(request: Request, job_id: str, download: bool = False):
    job = owned(request, job_id)
    if job["status"] != "done":
      raise HTTPException(409, f"job is {job['status']}, no result")
    disposition = "attachment" if download else "inline"
    if job["kind"] == "video":
      return _file(job_id, VIDEO_RESULT, "video/mp4", filename=f"nst-jax-{job_id[:8]}.mp4",
                   content_disposition_type=disposition)
    return _file(job_id, "result.png", "image/png", filename=f"nst-jax-{job_id[:8]}.png",
                 content_disposition_type=disposition)

  @app.get("/api/jobs/{job_id}/tile_preview", summary="The N x N mosaic of the result (PNG; with tile_preview N)")
  def tile_preview(request: Request, job_id: str):
    job = owned(request, job_id)
    count = int(worker_lib.job_config(job["options"]).tile_preview)
    if job["status"] != "done" or not count:
      raise HTTPException(409, "no tile preview: the job is not done or has no tile_preview")
    return _file(job_id, tiles.preview_path(worker_lib.TILE_PREVIEW_BASE, count), "image/png")

  @app.get("/api/jobs/{job_id}/input/{which}",
           summary="The job's photo (a clip's first frame) or painting (style, style2, style3...) as the job "
                   "uses it (PNG, at the job's size)")
  def job_input(request: Request, job_id: str, which: Annotated[str, Path(pattern=r"^(content|style[0-9]{0,3})$")]):
    owned(request, job_id)
    return _file(job_id, f"{which}.png", "image/png")

  @app.post("/api/jobs/{job_id}/cancel", response_model=JobView, summary="Cancel a queued or running job")
  def cancel(request: Request, job_id: str):
    job = owned(request, job_id)
    if job["status"] == "queued" and store.cancel_if_queued(job_id):
      return view(store.get(job_id))
    if job["status"] in ACTIVE:
      worker.cancel(job_id)
    return view(store.get(job_id))

  @app.delete("/api/jobs/{job_id}", summary="Cancel an active job, or delete a finished one and its files",
              responses={200: {"description": "the job (cancelling)"}, 204: {"description": "deleted"}})
  def delete(request: Request, job_id: str):
    job = owned(request, job_id)
    if job["status"] in ACTIVE:
      return cancel(request, job_id)
    store.delete(job_id)
    return Response(status_code=204)



@contextlib.contextmanager
def serve_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0):
  """Runs `app` with uvicorn in a background thread (tests, benchmarks); yields the base URL."""
  import socket

  import uvicorn
  if port == 0:
    with socket.socket() as s:
      s.bind((host, 0))
      port = s.getsockname()[1]
  server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                         timeout_graceful_shutdown=2))
  thread = threading.Thread(target=server.run, name="nst-jax-uvicorn", daemon=True)
  thread.start()
  deadline = time.time() + 30
  while not server.started:
    if time.time() > deadline or not thread.is_alive():
      raise RuntimeError("server did not start")
    time.sleep(0.05)
  try:
    yield f"http://{host}:{port}"
  finally:
    server.should_exit = True
    thread.join(30)
