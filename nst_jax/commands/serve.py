"""Serve the web app: upload a photo (or a short clip) and a painting, watch it being painted, download it.

    nst-jax serve                      # http://127.0.0.1:8080/ (localhost only)
    nst-jax serve --port 9000 --data_dir /srv/nst-jax --weights random

Binds to localhost by default; to expose it, put a reverse proxy with TLS in front (see docs/web.md).
Stopping the server (Ctrl-C) checkpoints running jobs; they continue when it starts again.
"""

from __future__ import annotations

import logging as py_logging
import sys

from absl import flags

from nst_jax import weights as weights_lib
from nst_jax.commands import common
from nst_jax.errors import NstJaxError

FLAGS = flags.FLAGS
flags.DEFINE_string("host", "127.0.0.1", "Address to bind. The default serves this machine only; use a reverse "
                    "proxy to expose it (docs/web.md).")
flags.DEFINE_integer("port", 8080, "Port to listen on.")
flags.DEFINE_string("data_dir", "nst-jax-data", "Folder for the job database, uploads, previews, results and "
                    "checkpoints (created if missing).")
flags.DEFINE_string("weights", None, "VGG19 weights: a Keras .h5, torchvision .pth or nst-jax .npz file, or "
                    "'random' (testing only, not artistic). Default: cached Keras weights, downloaded once.")
flags.DEFINE_float("max_upload_mb", 20, "Largest request body in MB (larger uploads get 413).")
flags.DEFINE_integer("max_pixels", 40_000_000, "Largest decoded image in pixels (decompression bombs get 413).")
flags.DEFINE_integer("rate_limit", 10, "Job submissions per client address per minute (429 above; 0 = no limit).")
flags.DEFINE_integer("max_size", 1024, "Largest output size a job may ask for (longest side, pixels).")
flags.DEFINE_integer("max_steps", 2000, "Most optimisation steps a job may ask for.")
flags.DEFINE_integer("max_batch", None, "Compatible queued jobs run together in one vmapped step (1 = one at a "
                     "time). Default: 1 when JAX sees only CPUs (batching is no faster there), 4 with a GPU or TPU.")
# Clip limits (413 above); the defaults are server.limits.DEFAULT_MAX_VIDEO_* (not imported: fastapi is optional).
flags.DEFINE_float("max_video_seconds", 10.0, "Longest clip a video job may upload, in seconds.")
flags.DEFINE_integer("max_video_frames", 250, "Most frames a clip may have.")
flags.DEFINE_integer("max_video_pixels", 3840 * 2160, "Largest decoded clip frame in pixels (frames are then "
                     "stored at most --max_size).")
flags.DEFINE_float("checkpoint_every", 30.0, "Seconds between checkpoints of running jobs.")
flags.DEFINE_float("preview_every", 2.0, "Seconds between preview images of running jobs.")
flags.DEFINE_float("batch_wait", 0.5, "Seconds to wait for simultaneous submissions before starting a batch.")
flags.DEFINE_boolean("compilation_cache", True, "Keep compiled programs in the cache dir between runs.")
flags.DEFINE_enum("log_level", "info", ("debug", "info", "warning", "error"), "Server log level.")


def main(argv):
  if len(argv) > 1:
    raise NstJaxError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    import uvicorn
    from nst_jax.server import app as app_lib
  except ImportError as e:
    raise NstJaxError(f"the web app needs its extra dependencies ({e.name} is missing): "
                      "pip install 'nst-jax[web]'") from None
  if not 1 <= FLAGS.port <= 65535:
    raise NstJaxError(f"--port must be between 1 and 65535, got {FLAGS.port}")
  if FLAGS.max_upload_mb <= 0 or FLAGS.max_pixels <= 0 or (FLAGS.max_batch is not None and FLAGS.max_batch < 1):
    raise NstJaxError("--max_upload_mb, --max_pixels and --max_batch must be positive")
  if FLAGS.max_video_seconds <= 0 or FLAGS.max_video_frames < 1 or FLAGS.max_video_pixels <= 0:
    raise NstJaxError("--max_video_seconds, --max_video_frames and --max_video_pixels must be positive")
  log_to_stderr(FLAGS.log_level)  # Before the app exists: it logs one line per job status from the start.
  common.enable_compilation_cache(FLAGS.compilation_cache)
  weights = weights_lib.load_vgg19(FLAGS.weights)
  try:
    app = app_lib.create_app(
        data_dir=FLAGS.data_dir, weights=weights, max_upload_mb=FLAGS.max_upload_mb,
        max_pixels=FLAGS.max_pixels, rate_limit=FLAGS.rate_limit, max_size=FLAGS.max_size,
        max_steps=FLAGS.max_steps, max_batch=FLAGS.max_batch, checkpoint_every=FLAGS.checkpoint_every,
        preview_every=FLAGS.preview_every, batch_wait=FLAGS.batch_wait, max_video_seconds=FLAGS.max_video_seconds,
        max_video_frames=FLAGS.max_video_frames, max_video_pixels=FLAGS.max_video_pixels)
  except OSError as e:
    raise NstJaxError(f"cannot use --data_dir {FLAGS.data_dir}: {e}") from None
  print(f"nst-jax serve: http://{FLAGS.host}:{FLAGS.port}/  (data in {app.state.store.data_dir}; max_batch "
        f"{app.state.worker.max_batch}; Ctrl-C stops)", flush=True)
  try:
    uvicorn.run(app, host=FLAGS.host, port=FLAGS.port, log_level=FLAGS.log_level,
                timeout_graceful_shutdown=5)
  except OSError as e:
    raise NstJaxError(f"cannot listen on {FLAGS.host}:{FLAGS.port}: {e}") from None


def log_to_stderr(level: str) -> None:
  """The server's own log (`nst_jax.server`: one line per job queued, started, stopped, done, failed or
  cancelled; worker errors) on stderr at `level`, whatever handler absl put on the root logger."""
  server_log = py_logging.getLogger("nst_jax.server")
  if not any(getattr(h, "nst_jax_serve", False) for h in server_log.handlers):
    handler = py_logging.StreamHandler(sys.stderr)
    handler.setFormatter(py_logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    handler.nst_jax_serve = True
    server_log.addHandler(handler)
  server_log.setLevel(level.upper())
  server_log.propagate = False


def run(argv=None):
  argv = list(sys.argv if argv is None else argv)
  if any(arg in ("-h", "--help", "--helpshort", "-?") for arg in argv[1:]):
    # Also under `nst-jax serve`, where absl's own help would describe the dispatcher instead.
    print(__doc__)
    print(FLAGS.module_help(sys.modules[__name__]))
    sys.exit(0)
  common.run(main, argv)


if __name__ == "__main__":
  run()
