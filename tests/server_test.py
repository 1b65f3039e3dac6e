"""Tests of the web app (nst_jax/server): API with FastAPI's TestClient, restart and load on a live server."""

from __future__ import annotations

import concurrent.futures
import io
import json
import os
import signal
import subprocess
import sys
import time

import httpx
import nst_jax
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from nst_jax import engine, inputs, settings, vgg
from nst_jax.server.app import create_app
from web_helpers import free_port, live_server, png_bytes, wait_for

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WEIGHTS = vgg.random_weights(0)
# Shallow layers (form fields, as any setting): small programs that compile fast.
SHALLOW = {"content_layers": "relu2_1", "style_layers": "relu1_1,relu2_1"}
PNG_TOLERANCE = 1.0 / 255 + 1e-6


def _files(content=None, style=None, name="photo.png"):
  return {"content": (name, content or png_bytes(0), "image/png"),
          "style": ("painting.png", style or png_bytes(1), "image/png")}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
  app = create_app(data_dir=str(tmp_path_factory.mktemp("data")), weights=WEIGHTS, rate_limit=0, max_batch=4,
                   checkpoint_every=0.3, preview_every=0.3, batch_wait=0.2, event_interval=0.1)
  with TestClient(app) as c:
    yield c


def _get(client, job_id):
  return lambda: client.get(f"/api/jobs/{job_id}").json()


def test_submit_progress_result(client):
  r = client.post("/api/jobs", files=_files(), data={"max_size": 32, "steps": 12, "preset": "painterly",
                                                          **SHALLOW})
  assert r.status_code == 201, r.text
  job = r.json()
  assert job["status"] == "queued" and (job["width"], job["height"]) == (32, 26)
  assert job["options"]["preset"] == "painterly"
  events, losses = [], []
  with client.stream("GET", f"/api/jobs/{job['id']}/events") as stream:
    assert stream.headers["content-type"].startswith("text/event-stream")
    kind = None
    for line in stream.iter_lines():
      if line.startswith("event: "):
        kind = line[len("event: "):]
      elif line.startswith("data: "):
        data = json.loads(line[len("data: "):])
        events.append((kind, data))
        losses += data.get("losses", [])
  assert events[-1][0] == "end" and events[-1][1]["status"] == "done"
  steps = [d["step"] for k, d in events if k == "progress"]
  assert steps == sorted(steps) and steps[-1] == 12
  assert [p["step"] for p in losses] == list(range(1, 13))  # log_every 1 at 12 steps: every loss, once.
  assert all(np.isfinite(p["total"]) for p in losses)
  done = client.get(f"/api/jobs/{job['id']}").json()
  assert done["status"] == "done" and done["step"] == 12 and done["eta_seconds"] is None
  result = client.get(done["result_url"])
  assert result.headers["content-type"] == "image/png"
  assert np.asarray(Image.open(io.BytesIO(result.content))).shape == (26, 32, 3)
  download = client.get(done["download_url"])
  assert download.headers["content-disposition"].startswith("attachment")
  assert download.content == result.content
  assert client.get(done["preview_url"]).headers["content-type"] == "image/jpeg"
  content = Image.open(io.BytesIO(client.get(done["content_url"]).content))
  assert content.size == (32, 26)  # As the job uses it (prepared once at submission, as the command does).
  assert job["id"] in [j["id"] for j in client.get("/api/jobs").json()]
  assert len(client.get(f"/api/jobs/{job['id']}/losses").json()) == 12


def test_other_browser_gets_404(client):
  job = client.post("/api/jobs", files=_files(), data={"max_size": 32, "steps": 3, **SHALLOW}).json()
  wait_for(_get(client, job["id"]))
  other = TestClient(client.app)  # No cookie: a different browser.
  base = f"/api/jobs/{job['id']}"
  for path in (base, f"{base}/events", f"{base}/result", f"{base}/preview", f"{base}/input/content",
               f"{base}/losses"):
    assert other.get(path).status_code == 404, path
  assert other.post(f"{base}/cancel").status_code == 404
  assert other.delete(base).status_code == 404
  assert other.get("/api/jobs").json() == []
  assert client.get(base).status_code == 200
  # The token can also come in a header (API clients); it is separate from the cookie's.
  api_client = TestClient(client.app, headers={"X-NST-Client": "x" * 32})
  assert api_client.get(base).status_code == 404
  mine = api_client.post("/api/jobs", files=_files(), data={"max_size": 32, "steps": 2, **SHALLOW}).json()
  assert [j["id"] for j in api_client.get("/api/jobs").json()] == [mine["id"]]
  assert client.get(f"/api/jobs/{mine['id']}").status_code == 404
  wait_for(lambda: api_client.get(f"/api/jobs/{mine['id']}").json())


def test_job_ids_unguessable_and_not_paths(idle_app):
  client = TestClient(idle_app)
  ids = {client.post("/api/jobs", files=_files(), data={"max_size": 32, "steps": 1}).json()["id"] for _ in range(3)}
  assert len(ids) == 3 and all(len(i) >= 26 for i in ids)
  for bad in ("..%2F..%2Fjobs.sqlite3", "..", "abc", "%2Fetc%2Fpasswd", "..%2F" + next(iter(ids))):
    assert client.get(f"/api/jobs/{bad}").status_code == 404
    assert client.get(f"/api/jobs/{bad}/result").status_code == 404
  # Uploaded names are never paths: the job folder holds only fixed names.
  folder = idle_app.state.store.job_dir(next(iter(ids)))
  assert sorted(os.listdir(folder)) == ["content.npy", "content.png", "style.npy", "style.png"]


def test_cancel_queued_running_and_batched(client):
  """Two compatible jobs (other step counts and looks) share a batch; cancelling one leaves the other running
  in the same batch to its end, without an interruption."""
  first = client.post("/api/jobs", files=_files(), data={"max_size": 32, "steps": 30, **SHALLOW}).json()
  second = client.post("/api/jobs", files=_files(png_bytes(2)), data={"max_size": 32, "steps": 40,
                                                                       "preset": "faithful", **SHALLOW}).json()
  other_shape = client.post("/api/jobs", files=_files(), data={"max_size": 24, "steps": 30, **SHALLOW}).json()
  running = wait_for(_get(client, first["id"]), condition=lambda j: j["step"] >= 2)
  assert running["status"] == "running" and running["batch_size"] == 2
  queued = client.get(f"/api/jobs/{other_shape['id']}").json()
  assert queued["status"] == "queued" and queued["queue_position"] == 1
  cancelled = client.delete(f"/api/jobs/{other_shape['id']}").json()  # DELETE of an active job cancels.
  assert cancelled["status"] == "cancelled"
  client.post(f"/api/jobs/{first['id']}/cancel")
  assert wait_for(_get(client, first["id"]))["status"] == "cancelled"
  survivor = wait_for(_get(client, second["id"]))
  assert survivor["status"] == "done" and survivor["step"] == 40 and survivor["resumed_from"] == 0
  assert survivor["batch_size"] == 2
  assert client.get(f"/api/jobs/{first['id']}/result").status_code == 409
  assert client.delete(f"/api/jobs/{first['id']}").status_code == 204
  assert client.get(f"/api/jobs/{first['id']}").status_code == 404


@pytest.mark.parametrize("data, words", [
    ({"steps": 0}, ["steps"]), ({"max_size": 100000}, ["max_size"]), ({"optimizer": "magic"}, ["optimizer"]),
    ({"preset": "nope"}, ["preset"]), ({"style_weight": -1}, ["style_weight"]),
    ({"size": 32}, ["unknown field", "size"]), ({"colour": "yes"}, ["unknown field", "colour"]),
    ({"style_layers": "relu9_9"}, ["relu9_9"]), ({"preserve_colors": "sepia"}, ["preserve_colors"]),
    ({"scales": "16,1,3"}, ["scales"]), ({"style_blend_weights": "3,1"}, ["style_blend_weights", "1 style"]),
    ({"steps": ["3", "4"]}, ["steps", "more than once"]), ({"style2": "second.png"}, ["style2", "file"]),
    ({"content_layers": "relu2_1,conv9_1"}, ["conv9_1"]), ({"preset": "quality", "steps": 5000}, ["steps", "2000"]),
])
def test_bad_options_422_name_the_field(idle_app, data, words):
  r = TestClient(idle_app).post("/api/jobs", files=_files(), data={"max_size": 32, **data})
  assert r.status_code == 422, (data, r.text)
  for word in words:
    assert word in r.json()["detail"], (word, r.json()["detail"])


def test_settings_by_name_are_stored_and_the_quality_preset_keeps_its_steps(tmp_path):
  app = create_app(data_dir=str(tmp_path), weights=WEIGHTS, start_worker=False, rate_limit=0)
  client = TestClient(app)
  files = [*_files().items(), ("style", ("other.png", png_bytes(3), "image/png"))]
  r = client.post("/api/jobs", files=files, data={"max_size": 32, "preset": "quality", "scales": "16,2,5",
                                                  "preserve_colors": "histogram", "style_blend_weights": "3,1"})
  assert r.status_code == 201, r.text
  job = r.json()
  assert job["options"]["preset"] == "quality" and job["options"]["preserve_colors"] == "histogram"
  assert job["steps"] == 105 and job["style2_url"]  # 5 steps at 16 px, the preset's 100 at 32 px.
  assert job["warnings"] == [] and len(job["style_urls"]) == 2
  folder = app.state.store.job_dir(job["id"])
  assert sorted(os.listdir(folder)) == ["content.npy", "content.png", "style.npy", "style.png", "style2.npy",
                                        "style2.png"]
  default = client.post("/api/jobs", files=_files(), data={"max_size": 32}).json()["steps"]
  assert default == settings.resolve({}).steps == client.get("/api/config").json()["default_steps"]  # The machine's.
  quality = client.post("/api/jobs", files=_files(), data={"max_size": 32, "preset": "quality"}).json()
  assert quality["steps"] == 100  # The preset's own iterations (the server used to force 300).
  assert client.post("/api/jobs", files=_files(), data={"max_size": 32, "preset": "quality",
                                                        "steps": 7}).json()["steps"] == 7
  schema = client.get("/openapi.json").json()["paths"]["/api/jobs"]["post"]
  assert "quality" in schema["description"]
  fields = schema["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
  assert set(settings.NAMES) | {"preset", "scales", "style2"} <= set(fields)
  assert fields["style"]["type"] == "array" and fields["style_region"]["type"] == "array"
  assert fields["style2"]["deprecated"] and fields["style2_region"]["deprecated"]


def _library_result(tmp_path, content: bytes, styles: list[bytes], data: dict) -> np.ndarray:
  """The library call on the same files with the same resolved settings: float32 `[H, W, 3]`."""
  paths = []
  for i, image in enumerate([content, *styles]):
    paths.append(tmp_path / f"input{i}.png")
    paths[-1].write_bytes(image)
  config = settings.resolve(data, num_styles=len(styles))
  job, _ = inputs.load_job(str(paths[0]), [str(p) for p in paths[1:]], config)
  return nst_jax.stylize(job.content, job.styles, config, weights=WEIGHTS)


def _result_image(client, job: dict) -> np.ndarray:
  return np.asarray(Image.open(io.BytesIO(client.get(job["result_url"]).content)), np.float32) / 255.0


def test_two_paintings_and_kept_colours_equal_the_library_call(tmp_path):
  """A second painting, its blend weights and kept colours are honoured: the same picture as the library."""
  app = create_app(data_dir=str(tmp_path / "data"), weights=WEIGHTS, rate_limit=0, batch_wait=0,
                   checkpoint_every=None, preview_every=0.2)
  content, style, style2 = png_bytes(0), png_bytes(1), png_bytes(3, 30, 50)  # Paintings of other shapes.
  data = {"max_size": 32, "steps": 8, "style_blend_weights": "3,1", "preserve_colors": "histogram",
          "style_weight": 1e3, **SHALLOW}
  with TestClient(app) as client:
    r = client.post("/api/jobs", data=data, files=[("content", ("c.png", content)), ("style", ("a.png", style)),
                                                   ("style", ("b.png", style2))])
    assert r.status_code == 201, r.text
    job = wait_for(_get(client, r.json()["id"]))
    assert job["status"] == "done", job
    result = _result_image(client, job)
  expected = _library_result(tmp_path, content, [style, style2], data)
  assert result.shape == expected.shape == (26, 32, 3)
  assert np.max(np.abs(result - expected)) <= PNG_TOLERANCE
  one_style = _library_result(tmp_path, content, [style], {k: v for k, v in data.items()
                                                           if k != "style_blend_weights"})
  assert np.max(np.abs(result - one_style)) > 0.02  # The second painting made a difference.


def _mask_bytes(left: bool, width: int = 40, height: int = 32) -> bytes:
  mask = np.zeros((height, width), np.uint8)
  mask[:, :width // 2] = 255
  buffer = io.BytesIO()
  Image.fromarray(mask if left else 255 - mask).save(buffer, format="PNG")
  return buffer.getvalue()


def test_style_repeats_for_any_number_of_paintings_with_regions_in_the_same_order(tmp_path):
  """Three paintings as three `style` fields (the command's repeated --style) and their regions as repeated
  `style_region`: the stored job is the one the command makes of the same files."""
  from nst_jax.server import worker as worker_lib
  app = create_app(data_dir=str(tmp_path / "data"), weights=WEIGHTS, start_worker=False, rate_limit=0)
  paintings = [png_bytes(1), png_bytes(3, 30, 50), png_bytes(4, 24, 24)]
  masks = [_mask_bytes(True), _mask_bytes(False), _mask_bytes(False)]
  files = [("content", ("c.png", png_bytes(0)))] + [("style", (f"s{i}.png", b)) for i, b in enumerate(paintings)]
  files += [("style_region", (f"r{i}.png", b)) for i, b in enumerate(masks)]
  data = {"max_size": 32, "style_blend_weights": "1,2,3"}
  client = TestClient(app)
  r = client.post("/api/jobs", files=files, data=data)
  assert r.status_code == 201, r.text
  job = r.json()
  assert job["warnings"] == [] and [u.rsplit("/", 1)[1] for u in job["style_urls"]] == ["style", "style2", "style3"]
  third = client.get(job["style_urls"][2])
  assert third.status_code == 200 and third.headers["content-type"] == "image/png"
  assert client.get(job["style_urls"][2] + "x").status_code == 422  # Only content, style, style2... are files.
  stored = worker_lib.load_job(app.state.store, app.state.store.get(job["id"]))
  paths = []
  for i, image in enumerate([png_bytes(0), *paintings, *masks]):
    paths.append(str(tmp_path / f"input{i}.png"))
    open(paths[-1], "wb").write(image)
  expected, _ = inputs.load_job(paths[0], paths[1:4], settings.resolve(data, num_styles=3), style_regions=paths[4:])
  for got, want in zip([stored.content, *stored.styles, *stored.regions],
                       [expected.content, *expected.styles, *expected.regions]):
    assert got.shape == want.shape and np.abs(got - want).max() <= 1e-6
  assert stored.region_sources is None
  bad = client.post("/api/jobs", files=files[:4] + files[5:], data=data)  # Regions 2 and 3 of three.
  assert bad.status_code == 422 and "style_region" in bad.json()["detail"], bad.text


def test_style2_is_an_alias_for_a_second_style_with_a_deprecation_warning(tmp_path):
  app = create_app(data_dir=str(tmp_path / "data"), weights=WEIGHTS, start_worker=False, rate_limit=0)
  client = TestClient(app)
  old = {**_files(), "style2": ("b.png", png_bytes(3)), "style_region": ("r.png", _mask_bytes(True)),
         "style2_region": ("r2.png", _mask_bytes(False)), "style2_region_source": ("s.png", png_bytes(7))}
  r = client.post("/api/jobs", files=old, data={"max_size": 32})
  assert r.status_code == 201, r.text
  warnings = r.json()["warnings"]
  assert len(warnings) == 3 and all("deprecated" in w for w in warnings)
  assert any(w.startswith("style2 ") and "second style field" in w for w in warnings)
  stored = worker_lib_load(app, r.json()["id"])
  assert len(stored.styles) == 2 and len(stored.regions) == 2 and stored.region_sources[0] is None
  assert stored.region_sources[1] is not None
  both = [*_files().items(), ("style", ("b.png", png_bytes(3))), ("style2", ("c.png", png_bytes(4)))]
  r = client.post("/api/jobs", files=both, data={"max_size": 32})
  assert r.status_code == 422 and "style2" in r.json()["detail"] and "repeated style" in r.json()["detail"]
  alone = {"content": _files()["content"], "style2": ("b.png", png_bytes(3))}
  r = client.post("/api/jobs", files=alone, data={"max_size": 32})
  assert r.status_code == 422 and r.json()["detail"].startswith("style: an image file is required"), r.text


def worker_lib_load(app, job_id: str):
  from nst_jax.server import worker as worker_lib
  return worker_lib.load_job(app.state.store, app.state.store.get(job_id))


def test_an_upload_over_the_size_limit_is_prepared_once_as_the_command_prepares_it(tmp_path):
  """A photo and a long painting larger than the server's max_size: the job runs from the command's arrays
  (never re-encoded to 8 bits, never resized twice), so the picture is the command's."""
  app = create_app(data_dir=str(tmp_path / "data"), weights=WEIGHTS, rate_limit=0, batch_wait=0, max_size=32,
                   checkpoint_every=None, preview_every=100.0)
  content, style = png_bytes(0, 150, 120), png_bytes(1, 400, 40)  # Over the limit; a 10:1 painting.
  data = {"steps": 6, "style_weight": 1e3, **SHALLOW}
  with TestClient(app) as client:
    r = client.post("/api/jobs", data=data, files=_files(content, style))
    assert r.status_code == 201, r.text
    stored = worker_lib_load(app, r.json()["id"])
    job = wait_for(_get(client, r.json()["id"]))
    assert job["status"] == "done", job
    result = _result_image(client, job)
  paths = [tmp_path / "c.png", tmp_path / "s.png"]
  paths[0].write_bytes(content)
  paths[1].write_bytes(style)
  config = settings.resolve({"max_size": 32, **data}, num_styles=1)
  expected_job, _ = inputs.load_job(str(paths[0]), [str(paths[1])], config)
  assert np.abs(stored.content - expected_job.content).max() <= 1e-6  # Not an 8-bit copy.
  assert stored.styles[0].shape == expected_job.styles[0].shape
  assert np.abs(stored.styles[0] - expected_job.styles[0]).max() <= 1e-6
  expected = nst_jax.stylize(expected_job.content, expected_job.styles, config, weights=WEIGHTS)
  assert result.shape == expected.shape and np.abs(result - expected).mean() <= 1.0 / 255


def test_a_web_job_decodes_each_upload_once(tmp_path, monkeypatch):
  """Submission and run together: the photo and the painting are each decoded once."""
  from nst_jax import image_io
  decoded = []
  real_open = image_io._open
  monkeypatch.setattr(image_io, "_open", lambda source, *a: decoded.append(source) or real_open(source, *a))
  app = create_app(data_dir=str(tmp_path / "data"), weights=WEIGHTS, rate_limit=0, batch_wait=0,
                   checkpoint_every=None, preview_every=100.0)
  with TestClient(app) as client:
    r = client.post("/api/jobs", data={"max_size": 32, "steps": 2, **SHALLOW}, files=_files())
    assert r.status_code == 201, r.text
    assert wait_for(_get(client, r.json()["id"]))["status"] == "done"
  assert len(decoded) == 2, decoded


def test_jobs_with_other_step_counts_share_a_batch_and_equal_their_single_runs(tmp_path):
  """Other step counts, looks, colours and photo sizes (one output shape): one batch, one compiled program."""
  app = create_app(data_dir=str(tmp_path / "data"), weights=WEIGHTS, rate_limit=0, batch_wait=0, max_batch=4,
                   checkpoint_every=None, preview_every=0.2, start_worker=False)
  asks = [{"max_size": 32, "steps": 6, **SHALLOW},
          {"max_size": 32, "steps": 11, "preset": "painterly", "preserve_colors": "luminance", **SHALLOW},
          {"max_size": 32, "steps": 3, "style_weight": 3e3, **SHALLOW}]
  photos = [png_bytes(0), png_bytes(5), png_bytes(6, 80, 64)]  # The last one is larger: 32x26 too.
  styles = [png_bytes(1), png_bytes(2), png_bytes(4, 24, 24)]
  with TestClient(app) as client:
    ids = [client.post("/api/jobs", data=data, files=_files(photo, style)).json()["id"]
           for data, photo, style in zip(asks, photos, styles)]
    app.state.worker.start()  # All three are queued before the worker looks.
    try:
      jobs = [wait_for(_get(client, job_id)) for job_id in ids]
      results = [_result_image(client, job) for job in jobs]
      stats = client.get("/api/stats").json()
    finally:
      app.state.worker.stop()
  assert [j["status"] for j in jobs] == ["done"] * 3 and [j["steps"] for j in jobs] == [6, 11, 3]
  assert [j["batch_size"] for j in jobs] == [3, 3, 3] and stats["batches_run"] == 1
  assert stats["compiled_steps"] == 1
  for data, photo, style, result in zip(asks, photos, styles, results):
    expected = _library_result(tmp_path, photo, [style], data)
    assert np.max(np.abs(result - expected)) <= PNG_TOLERANCE, data


def test_one_bad_job_does_not_fail_its_batch(tmp_path):
  """A job whose checkpoint belongs to another run fails alone, naming the problem; its batch-mate finishes."""
  app = create_app(data_dir=str(tmp_path / "data"), weights=WEIGHTS, rate_limit=0, batch_wait=0, max_batch=4,
                   checkpoint_every=None, start_worker=False)
  store = app.state.store
  with TestClient(app) as client:
    good, bad = (client.post("/api/jobs", files=_files(), data={"max_size": 32, "steps": 3, **SHALLOW}).json()
                 for _ in range(2))
    other = engine.Job(content=np.full((26, 32, 3), 0.5, np.float32), styles=[np.ones((32, 32, 3), np.float32)],
                       config=settings.resolve({"max_size": 32, "steps": 1, **SHALLOW}),
                       checkpoint_dir=store.checkpoint_dir(bad["id"]))
    engine.Engine(WEIGHTS).run([other])  # Leaves another run's checkpoint in the job's folder.
    app.state.worker.start()
    try:
      done, failed = (wait_for(_get(client, job["id"])) for job in (good, bad))
    finally:
      app.state.worker.stop()
  assert done["status"] == "done" and done["step"] == 3
  assert failed["status"] == "failed" and "belongs to another run" in failed["error"]


def test_cancelling_a_requeued_job_removes_its_checkpoints(tmp_path):
  app = create_app(data_dir=str(tmp_path), weights=WEIGHTS, start_worker=False, rate_limit=0)
  client, store = TestClient(app), app.state.store
  job = client.post("/api/jobs", files=_files(), data={"max_size": 32, "steps": 5}).json()
  os.makedirs(os.path.join(store.checkpoint_dir(job["id"]), "3"))  # As a stopped run leaves them.
  assert client.post(f"/api/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
  assert not os.path.exists(store.checkpoint_dir(job["id"]))
  assert sorted(os.listdir(store.job_dir(job["id"]))) == ["content.npy", "content.png", "style.npy", "style.png"]


@pytest.fixture
def idle_app(tmp_path):
  """An app with small limits and no worker (nothing is run)."""
  return create_app(data_dir=str(tmp_path), weights=WEIGHTS, max_upload_mb=0.2, max_pixels=200_000,
                    rate_limit=3, start_worker=False)


def test_upload_too_large_413(idle_app):
  c = TestClient(idle_app)
  big = os.urandom(300_000)
  r = c.post("/api/jobs", files={"content": ("a.png", big), "style": ("b.png", png_bytes(1))})
  assert r.status_code == 413 and "too large" in r.json()["detail"]
  # Without Content-Length (chunked), the limit applies while the body streams in.
  boundary = "nstboundary"
  head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"content\"; filename=\"a.png\"\r\n"
          "Content-Type: image/png\r\n\r\n").encode()
  chunks = lambda: iter([head] + [b"x" * 50_000] * 6 + [f"\r\n--{boundary}--\r\n".encode()])
  r = c.post("/api/jobs", content=chunks(), headers={"content-type": f"multipart/form-data; boundary={boundary}"})
  assert r.status_code == 413 and "too large" in r.json()["detail"]


def test_decompression_bomb_413(idle_app):
  c = TestClient(idle_app)
  # 1000 x 1000 decoded pixels (over this app's 200,000 limit) in a few kilobytes of PNG.
  buffer = io.BytesIO()
  Image.new("L", (1000, 1000)).save(buffer, format="PNG")
  assert len(buffer.getvalue()) < 20_000
  r = c.post("/api/jobs", files={"content": ("bomb.png", buffer.getvalue()), "style": ("b.png", png_bytes(1))})
  assert r.status_code == 413 and "limit" in r.json()["detail"]


def test_non_images_415(idle_app):
  c = TestClient(idle_app)
  for name, data in (("notes.png", b"this is not an image"), ("cut.png", png_bytes(3)[:60]), ("empty.png", b"")):
    r = c.post("/api/jobs", files={"content": (name, data), "style": ("b.png", png_bytes(1))})
    assert r.status_code == 415, (name, r.text)
    assert "content image" in r.json()["detail"]
  assert c.get("/api/jobs").json() == []


def test_rate_limit_429(idle_app):
  c = TestClient(idle_app)
  codes = [c.post("/api/jobs", files=_files(), data={"max_size": 32, "steps": 1}).status_code for _ in range(4)]
  assert codes == [201, 201, 201, 429]
  r = c.post("/api/jobs", files=_files(), data={"max_size": 32, "steps": 1})
  assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1


def test_page_cookie_and_headers(idle_app):
  c = TestClient(idle_app)
  r = c.get("/")
  assert r.status_code == 200 and 'id="job-form"' in r.text
  cookie = r.headers["set-cookie"]
  assert "nst_client=" in cookie and "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
  assert "script-src 'self'" in r.headers["content-security-policy"]
  assert "media-src 'self' blob:" in r.headers["content-security-policy"]  # The chosen clip and the result video.
  assert c.get("/static/app.js").status_code == 200
  # The page never puts user text into HTML: no innerHTML / insertAdjacentHTML / document.write.
  script = c.get("/static/app.js").text
  assert "innerHTML" not in script and "insertAdjacentHTML" not in script and "document.write" not in script
  cards = c.get("/api/config").json()["presets"]
  assert "quality" in cards and "report" not in cards  # 10,000 steps: over the default 2,000-step limit.


def test_openapi_schema(idle_app):
  schema = TestClient(idle_app).get("/openapi.json").json()
  paths = schema["paths"]
  for path in ("/api/jobs", "/api/jobs/{job_id}", "/api/jobs/{job_id}/events", "/api/jobs/{job_id}/result",
               "/api/jobs/{job_id}/preview", "/api/jobs/{job_id}/cancel"):
    assert path in paths, path
  assert {"get", "post"} <= set(paths["/api/jobs"])
  assert "delete" in paths["/api/jobs/{job_id}"]
  assert "JobView" in schema["components"]["schemas"]


def test_jobs_of_one_bucket_may_differ_in_steps_weights_and_colours(tmp_path):
  app = create_app(data_dir=str(tmp_path), weights=WEIGHTS, start_worker=False, rate_limit=0, max_batch=4)
  store, worker = app.state.store, app.state.worker
  client = TestClient(app)
  submit = lambda **data: client.post("/api/jobs", files=_files(), data={"max_size": 32, **data}).json()
  jobs = [submit(steps=5), submit(steps=9, preset="painterly", preserve_colors="luminance"),
          submit(steps=5, optimizer="rmsprop"), submit(steps=5, max_size=24)]
  worker.batch_wait = 0
  batch = worker._next_batch()
  assert [job["id"] for job, _ in batch] == [jobs[0]["id"], jobs[1]["id"]]
  assert {store.get(j["id"])["status"] for j in jobs[2:]} == {"queued"}


@pytest.mark.slow
def test_graceful_stop_checkpoints_and_requeues(tmp_path):
  """Stopping the app (Ctrl-C / SIGTERM path) checkpoints the running job; the next app finishes it."""
  make = lambda: create_app(data_dir=str(tmp_path), weights=WEIGHTS, rate_limit=0, batch_wait=0,
                            checkpoint_every=None)  # Only the stop itself checkpoints.
  with TestClient(make(), headers={"X-NST-Client": "graceful-stop-token-0001"}) as c:
    # Enough steps that the job cannot finish while the app stops (25 did, once, on a loaded machine).
    job = c.post("/api/jobs", files=_files(), data={"max_size": 32, "steps": 400, **SHALLOW}).json()
    wait_for(_get(c, job["id"]), condition=lambda j: j["step"] >= 2)
  app = make()
  stopped = app.state.store.get(job["id"])
  assert stopped["status"] == "queued" and 2 <= stopped["checkpoint_step"] < 400
  assert os.path.isdir(os.path.join(app.state.store.checkpoint_dir(job["id"]), str(stopped["checkpoint_step"])))
  with TestClient(app, headers={"X-NST-Client": "graceful-stop-token-0001"}) as c:
    done = wait_for(_get(c, job["id"]))
  assert done["status"] == "done" and done["resumed_from"] == stopped["checkpoint_step"]
  assert not [n for n in os.listdir(app.state.store.job_dir(job["id"])) if n.startswith("checkpoint")]


@pytest.mark.slow
def test_restart_resumes_running_job(tmp_path):
  """Submit, kill the server (SIGKILL) after a checkpoint, start it again: the job finishes from there."""
  port = free_port()
  base = f"http://127.0.0.1:{port}"
  command = [sys.executable, "-m", "nst_jax.commands.serve", "--port", str(port), "--data_dir",
             str(tmp_path / "data"), "--weights", "random", "--checkpoint_every", "0.3", "--rate_limit", "0",
             "--batch_wait", "0", "--log_level", "warning"]
  # A private compilation cache: the restarted server reuses the first one's compiled programs.
  env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
         "JAX_PLATFORMS": "cpu", "NST_JAX_HOME": str(tmp_path / "home")}

  def start():
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline:
      try:
        httpx.get(base + "/api/config", timeout=1)
        return proc
      except httpx.TransportError:
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.2)
    raise AssertionError("server did not start")

  proc = start()
  http = httpx.Client(base_url=base, headers={"X-NST-Client": "restart-test-token-0123456789"}, timeout=10)
  try:
    job = http.post("/api/jobs", files=_files(), data={"max_size": 32, "steps": 30, **SHALLOW}).json()
    get = lambda: http.get(f"/api/jobs/{job['id']}").json()
    before = wait_for(get, condition=lambda j: j["checkpoint_step"] > 0, timeout=90)
    assert before["status"] == "running" and before["step"] < 30
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    proc = start()
    after = wait_for(get, timeout=120)
    assert after["status"] == "done" and after["step"] == 30
    assert after["resumed_from"] >= before["checkpoint_step"] > 0
    image = Image.open(io.BytesIO(http.get(after["result_url"]).content))
    assert image.size == (32, 26)
    losses = http.get(f"/api/jobs/{job['id']}/losses").json()
    assert losses[-1]["step"] == 30
  finally:
    proc.send_signal(signal.SIGTERM)
    try:
      proc.wait(20)
    except subprocess.TimeoutExpired:
      proc.kill()


@pytest.mark.slow
def test_load_twenty_concurrent_jobs_batched(tmp_path):
  """20 browsers submit at once: all jobs finish, none lost, fewer compiled steps than jobs."""
  app = create_app(data_dir=str(tmp_path), weights=WEIGHTS, rate_limit=0, max_batch=8, batch_wait=1.0,
                   checkpoint_every=5.0)
  with live_server(app) as base:
    clients = [httpx.Client(base_url=base, timeout=60) for _ in range(20)]

    def submit(i):
      r = clients[i].post("/api/jobs", files=_files(png_bytes(i)), data={"max_size": 32, "steps": 4,
                                                                                        **SHALLOW})
      assert r.status_code == 201, r.text
      return r.json()["id"]

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
      ids = list(pool.map(submit, range(20)))
    assert len(set(ids)) == 20
    for c, job_id in zip(clients, ids):
      job = wait_for(lambda: c.get(f"/api/jobs/{job_id}").json(), timeout=170)
      assert job["status"] == "done", job
      assert [j["id"] for j in c.get("/api/jobs").json()] == [job_id]
      assert Image.open(io.BytesIO(c.get(job["result_url"]).content)).size == (32, 26)
    stats = clients[0].get("/api/stats").json()
    for c in clients:
      c.close()
  assert stats["jobs"] == {"done": 20}
  assert 1 <= stats["compiled_steps"] < 20 and stats["batches_run"] < 20


def _video_job(store, frames: int) -> str:
  """A running clip job in `store` (no files: the progress hooks only write the database)."""
  from nst_jax.server import jobs
  job_id = jobs.new_job_id()
  store.create(job_id=job_id, owner="x", options={}, label="clip.mp4", height=26, width=32, steps=4, kind="video",
               frames=frames)
  store.claim([job_id], 1)
  return job_id


@pytest.mark.parametrize("mode", ["sequential", "multipass"])
def test_a_clips_progress_only_grows_and_its_eta_never_drops_to_zero_between_frames(tmp_path, monkeypatch, mode):
  """The calls `run_video` makes into the worker's video hooks, in its order (sequential: one frame per engine
  call; multipass with max_batch 1: both frames of a pass started, then stepped one after the other): the
  page's bar (`progress`) never goes back, and while frames are left the ETA is a positive figure, also
  between frames (it used to drop to 0 s there, and the bar went back when the next frame started)."""
  import itertools
  import types

  from nst_jax.server import app as app_lib, jobs, worker as worker_lib
  clock = itertools.count(1000.0, 0.5)  # Every progress write takes half a second of this clock.
  monkeypatch.setattr(jobs, "time", types.SimpleNamespace(time=lambda: next(clock)))
  store = jobs.JobStore(str(tmp_path))
  # Engine calls, each a list of frame jobs: three frames one by one, or two frames twice (two passes).
  calls = [["frame 1"], ["frame 2"], ["frame 3"]] if mode == "sequential" else [["f1 pass 1", "f2 pass 1"],
                                                                                ["f1 pass 2", "f2 pass 2"]]
  total = sum(len(group) for group in calls)
  job_id = _video_job(store, total)
  worker = types.SimpleNamespace(store=store, preview_every=1e9, _stop=None, _cancel=set())
  hooks = worker_lib._VideoHooks(worker, job_id)
  seen = []

  def look(where: str) -> None:
    view = app_lib._view(store, store.get(job_id))
    seen.append((where, view["progress"], view["eta_seconds"], view["frame"], view["step"]))

  done = 0
  hooks.progress({"done": 0, "total": total})
  for group in calls:
    runs = [types.SimpleNamespace(job=types.SimpleNamespace(name=name), step=0, total_steps=4) for name in group]
    for run in runs:  # The engine starts every job of a call before its first step.
      hooks.on_job_start(run)
      look(f"start {run.job.name}")
    for run in runs:  # max_batch 1: one bucket after the other.
      for step in range(1, 5):
        hooks.on_step(types.SimpleNamespace(run=run, step=step, metrics={"steps_per_second": 8.0}, image=None))
        look(f"{run.job.name} step {step}")
      hooks.on_job_end(run)
      look(f"end {run.job.name}")
    done += len(group)
    hooks.progress({"done": done, "total": total})
    look(f"between frames ({done} done)")
  progress = [p for _, p, _, _, _ in seen]
  assert progress == sorted(progress), seen
  assert progress[-1] == 1.0 and [f for *_, f, _ in seen] == sorted(f for *_, f, _ in seen)
  assert seen[-1][3] == total
  second_step = next(i for i, s in enumerate(seen) if s[0].endswith("step 2"))
  measured = [s for s in seen[second_step:] if s[1] < 1.0]  # After the first two steps the rate is known.
  assert measured and all(eta is not None and eta > 0 for _, _, eta, _, _ in measured), seen
  # Between frames the ETA is what is left of the clip at the measured rate, not 0 s.
  gaps = [(p, eta) for where, p, eta, _, _ in seen if where.startswith("between") and p < 1.0]
  assert gaps and all(eta >= 1.0 for _, eta in gaps), gaps


def test_the_eta_is_the_work_left_at_the_rate_measured_since_the_first_step():
  from nst_jax.server.jobs import progress_figures
  job = {"status": "running", "progress": 0.5, "rate_since": 100.0, "rate_progress0": 0.1, "progress_at": 108.0}
  assert progress_figures(job) == (0.5, pytest.approx(10.0))  # 0.4 of the job took 8 s: 0.5 left is 10 s.
  assert progress_figures({**job, "progress_at": 100.0, "progress": 0.1}) == (0.1, None)  # Not measured yet.
  assert progress_figures({**job, "status": "queued"}) == (0.5, None)
  assert progress_figures({**job, "status": "done"}) == (1.0, None)


def test_max_batch_is_one_on_a_cpu_and_four_with_an_accelerator(tmp_path, monkeypatch):
  """docs/web.md advises --max_batch 1 on a CPU: that is the default there; an accelerator keeps 4."""
  import types

  import jax

  from nst_jax.server import app as app_lib
  if {d.platform for d in jax.devices()} != {"cpu"}:
    pytest.skip("this check needs a CPU-only JAX")
  assert create_app(data_dir=str(tmp_path), weights=WEIGHTS, start_worker=False).state.worker.max_batch == 1
  assert create_app(data_dir=str(tmp_path), weights=WEIGHTS, start_worker=False,
                    max_batch=3).state.worker.max_batch == 3
  monkeypatch.setattr(jax, "devices", lambda *a: [types.SimpleNamespace(platform="gpu")])
  assert app_lib.default_max_batch() == 4
  monkeypatch.undo()
  done = subprocess.run([sys.executable, "-m", "nst_jax.commands.serve", "--help"], capture_output=True, text=True,
                        timeout=120, env={**os.environ, "PYTHONPATH": REPO}, check=False)
  assert done.returncode == 0, done.stderr
  text = " ".join(done.stdout.split())
  assert "Default: 1 when JAX sees only CPUs" in text and "4 with a GPU or TPU" in text, text


def test_the_server_log_has_one_line_per_job_status(tmp_path, caplog):
  """Queued, started, done, cancelled (queued and running) and failed: one line each on the nst_jax.server
  log (which `nst-jax serve` writes to stderr), with the id, kind, size, steps and seconds."""
  import logging
  caplog.set_level(logging.INFO, logger="nst_jax.server")
  app = create_app(data_dir=str(tmp_path), weights=WEIGHTS, rate_limit=0, batch_wait=0, checkpoint_every=None)
  with TestClient(app) as client:
    submit = lambda steps: client.post("/api/jobs", files=_files(), data={"max_size": 32, "steps": steps,
                                                                            **SHALLOW}).json()["id"]
    done, long = submit(3), submit(2000)
    wait_for(_get(client, done))
    wait_for(_get(client, long), condition=lambda j: j["step"] >= 1)
    client.post(f"/api/jobs/{long}/cancel")
    wait_for(_get(client, long))
    app.state.worker.stop()
    queued = submit(3)  # Nothing runs it: cancelled while queued.
    client.post(f"/api/jobs/{queued}/cancel")
  app.state.store.finish(long, "failed", "out of memory")  # As the worker marks a failed job.
  lines = [r.getMessage() for r in caplog.records if r.name == "nst_jax.server" and r.getMessage().startswith("job")]
  mine = lambda job_id: [line for line in lines if line.startswith(f"job {job_id} ")]
  assert [line.split(":")[0] for line in mine(done)] == [f"job {done} {e}" for e in ("queued", "started", "done")]
  assert "image 32x26, 3 steps" in mine(done)[0] and "s since it started" in mine(done)[2]
  assert [line.split(":")[0].split()[-1] for line in mine(long)] == ["queued", "started", "cancelled", "failed"]
  assert "at step" in mine(long)[2] and "/2000" in mine(long)[2] and mine(long)[3].endswith("out of memory")
  assert mine(queued)[-1] == f"job {queued} cancelled: image 32x26, 3 steps, at step 0/3, while queued"


def test_a_web_job_records_this_machines_step_times_for_the_estimates(client, tmp_path, monkeypatch):
  """The worker times its steps into the per-machine cache as the commands do (`cost.StepTimes`), so that
  `POST /api/estimate` gives this machine's figures on a server that only ever ran web jobs."""
  from nst_jax import cost
  monkeypatch.setenv("NST_JAX_HOME", str(tmp_path))
  r = client.post("/api/jobs", files=_files(), data={"max_size": 32, "steps": 8, "log_every": 2, **SHALLOW})
  assert r.status_code == 201, r.text
  assert wait_for(_get(client, r.json()["id"]))["status"] == "done"
  records = [record for entries in cost.read_cache().values() for record in entries]
  assert records and all(record["step_seconds"] > 0 for record in records)
