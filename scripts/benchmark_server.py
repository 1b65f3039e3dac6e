"""Benchmarks the web app end to end (HTTP on localhost, the real worker): latency and throughput.

    python scripts/benchmark_server.py                         # 256 px, default preset, 8 jobs
    python scripts/benchmark_server.py --weights random --max_size 32 --steps 5 --jobs 4   # quick check

1. Latency: seconds from `POST /api/jobs` to the result being downloadable, for one job at --max_size with
   the default preset (--steps 300, the web app's default step count when these figures were measured).
   Form fields are settings by name (docs/settings.md): --max_size is the API's `max_size`.
2. Throughput: --jobs compatible jobs submitted at once, run one at a time (max_batch 1) vs batched into
   one vmapped step (max_batch = --jobs); jobs per hour from first submit to last result, with the number
   of compiled step programs. With --mixed_steps (default) job i asks for steps x 1, 1.5, 2 in turn (the
   engine's per-job budgets let them share a batch). Compilation is included (as a fresh server would pay it); pass
   --compilation_cache to let the persistent cache remove most of it.
"""

from __future__ import annotations

import io
import json
import tempfile
import time

import httpx
from absl import flags
from PIL import Image

from nst_jax import weights as weights_lib
from nst_jax.commands import common
from nst_jax.server import app as app_lib

FLAGS = flags.FLAGS
flags.DEFINE_string("weights", None, "VGG19 weights (default: cached Keras weights; 'random' for a smoke run).")
flags.DEFINE_integer("max_size", 256, "Output size (longest side, px): the API's max_size field.")
flags.DEFINE_integer("steps", 300, "Steps per job.")
flags.DEFINE_integer("jobs", 8, "Queued jobs for the throughput part.")
flags.DEFINE_boolean("mixed_steps", True, "Job i asks for --steps x 1, 1.5, 2 in turn (else all --steps).")
flags.DEFINE_boolean("compilation_cache", False, "Use the persistent XLA compilation cache.")
flags.DEFINE_string("output", None, "Also write the figures as JSON here.")


def _image_bytes(seed: int, size: int) -> bytes:
  """Bundled scikit-image pictures (no network), varied per job."""
  from skimage import data
  pictures = [data.chelsea, data.coffee, data.astronaut, data.rocket, data.immunohistochemistry]
  array = pictures[seed % len(pictures)]()
  img = Image.fromarray(array).convert("RGB")
  img.thumbnail((size * 2, size * 2))
  buffer = io.BytesIO()
  img.save(buffer, format="PNG")
  return buffer.getvalue()


def job_steps(i: int) -> int:
  return FLAGS.steps * (2 + i % 3) // 2 if FLAGS.mixed_steps else FLAGS.steps


def _run_jobs(weights, n: int, max_batch: int) -> dict:
  """Submits `n` jobs at once to a fresh server; returns timings and worker counters."""
  with tempfile.TemporaryDirectory() as data_dir:
    web = app_lib.create_app(data_dir=data_dir, weights=weights, rate_limit=0, max_batch=max_batch,
                             batch_wait=1.0, max_size=max(FLAGS.max_size, 16), max_steps=max(2 * FLAGS.steps, 1))
    content = _image_bytes(0, FLAGS.max_size)
    with app_lib.serve_in_thread(web) as base, httpx.Client(base_url=base, timeout=120) as client:
      start = time.perf_counter()
      ids = []
      for i in range(n):
        r = client.post("/api/jobs", files={"content": ("content.png", content),
                                            "style": ("style.png", _image_bytes(i + 1, FLAGS.max_size))},
                        data={"max_size": FLAGS.max_size, "steps": job_steps(i) if n > 1 else FLAGS.steps})
        r.raise_for_status()
        ids.append(r.json()["id"])
      done = {}
      while len(done) < n:
        for job_id in ids:
          if job_id in done:
            continue
          job = client.get(f"/api/jobs/{job_id}").json()
          if job["status"] in ("failed", "cancelled"):
            raise RuntimeError(f"job {job_id} {job['status']}: {job['error']}")
          if job["status"] == "done":
            client.get(job["result_url"]).raise_for_status()
            done[job_id] = time.perf_counter() - start
        time.sleep(0.2)
      stats = client.get("/api/stats").json()
  total = max(done.values())
  return {"jobs": n, "max_batch": max_batch, "seconds": total, "jobs_per_hour": 3600.0 * n / total,
          "first_result_s": min(done.values()), "compiled_steps": stats["compiled_steps"],
          "batches": stats["batches_run"]}


def main(argv):
  del argv
  common.enable_compilation_cache(FLAGS.compilation_cache)
  weights = weights_lib.load_vgg19(FLAGS.weights)
  print(f"web app benchmark: {FLAGS.max_size} px, {FLAGS.steps} steps, weights {weights.source}", flush=True)
  single = _run_jobs(weights, 1, 1)
  print(f"latency, submit -> result (1 job, default preset): {single['seconds']:.1f} s "
        f"({single['seconds'] / FLAGS.steps:.3f} s/step incl. compile)", flush=True)
  rows = {}
  for name, max_batch in (("one at a time", 1), ("batched", FLAGS.jobs)):
    rows[name] = r = _run_jobs(weights, FLAGS.jobs, max_batch)
    print(f"{FLAGS.jobs} queued jobs, {name:13s}: {r['seconds']:8.1f} s  {r['jobs_per_hour']:8.1f} jobs/h  "
          f"first result {r['first_result_s']:.1f} s  batches {r['batches']}  compiled steps "
          f"{r['compiled_steps']}", flush=True)
  ratio = rows["batched"]["jobs_per_hour"] / rows["one at a time"]["jobs_per_hour"]
  print(f"batched / one at a time throughput: {ratio:.2f}x")
  if FLAGS.output:
    with open(FLAGS.output, "w") as f:
      json.dump({"max_size": FLAGS.max_size, "steps": FLAGS.steps, "latency": single, **rows, "ratio": ratio}, f,
                indent=1)


if __name__ == "__main__":
  common.run(main)
