"""The cost estimator (nst_jax/cost.py): the analytic estimate every run prints (no compile, no step) and the
per-machine cache of step times that refines it; the measured one of --dry_run (XLA's memory figures, timed
steps); the refusal under an artificially small free memory (a parameter and `NST_JAX_FREE_MEMORY`), the size
that would fit; the estimate line in every path that starts work."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import make_image, make_style
from nst_jax import cost, engine, image_io, settings
from nst_jax.errors import NstJaxError

SHALLOW = {"content_layers": ("relu2_1",), "style_layers": ("relu1_1", "relu2_1")}


@pytest.fixture(scope="module")
def estimated(random_weights):
  """One measured estimate (--dry_run's) of a 64 px job (probes at 64 and 32 px), shared by the tests."""
  eng = engine.Engine(random_weights)
  job = engine.Job(make_image(64, 64), [make_style(48, 48)],
                   settings.resolve({**SHALLOW, "max_size": 64, "steps": 30, "scales": "32,2,10"}), name="cat")
  return eng, job, cost.measure(eng, job, free_bytes=2 ** 40)


def test_measure_reads_xla_memory_analysis_at_two_sizes(estimated):
  eng, job, found = estimated
  full, half = found.probes
  assert (full.shape, half.shape) == ((64, 64), (32, 32))
  for probe in (full, half):
    assert probe.argument_bytes > 0 and probe.temp_bytes > 0
    assert probe.peak_bytes == probe.argument_bytes + probe.temp_bytes + probe.output_bytes - probe.alias_bytes
    assert probe.step_seconds > 0
  assert full.argument_bytes > half.argument_bytes  # Bigger state and content targets.
  assert full.peak_bytes > half.peak_bytes
  assert found.peak_bytes == full.peak_bytes and found.fits
  assert found.stage_steps == [((32, 32), 10), ((64, 64), 30)]
  # The 32 px stage's time is the half-size probe's (the fitted line passes through it).
  np.testing.assert_allclose(found.stage_seconds(), [10 * half.step_seconds, 30 * full.step_seconds], rtol=1e-6)
  assert found.run_seconds == pytest.approx(sum(found.stage_seconds()) + 2 * full.compile_seconds)
  text = "\n".join(found.lines())
  assert "XLA memory analysis" in text and "largest max_size" in text and "s per step" in text
  assert found.lines()[0].startswith("estimate: cat: about ") and "from 2 timed steps (--dry_run)" in text


def _compiles():
  """A counter of JAX traces, lowerings and compiles (jax.monitoring's /jax/core/compile/ events)."""
  import jax
  events = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda name, *_, **__: events.append(name) if name.startswith("/jax/core/compile/") else None)
  return events


def test_estimate_makes_no_compile_and_no_step(random_weights, monkeypatch):
  """The estimate every run prints is analytic: no trace, no compile, no step, no probe."""
  eng = engine.Engine(random_weights)
  job = engine.Job(make_image(64, 96), [make_style(48, 48)], settings.resolve({"max_size": 96, "steps": 30}))
  events = _compiles()
  monkeypatch.setattr(cost, "probe", lambda *a, **k: pytest.fail("probe without --dry_run"))
  (found,) = cost.preflight(eng, [job], free_bytes=2 ** 40, log=lambda line: None)
  assert events == [] and eng.compiled_steps() == 0
  assert found.probes == [] and found.step_seconds > 0 and found.peak_bytes > 0 and found.fits
  assert found.stage_steps == [((64, 96), 30)] and found.run_seconds > 30 * found.step_seconds
  line = found.lines()[0]
  assert line.startswith("estimate: about ") and "(30 steps at 96x64, ~" in line and " s/step, from " in line
  assert len(events) == 0


def test_analytic_figures_follow_the_network(monkeypatch):
  """Time and memory grow with the pixels and the depth of the loss layers; L-BFGS keeps more state."""
  full = settings.resolve({"max_size": 256, "steps": 10})
  shallow = settings.resolve({**SHALLOW, "max_size": 256, "steps": 10})
  # VGG19 to conv5_1 at 224 px, convolution by convolution: (side, C_in, C_out) multiply-adds x 9 x 2.
  convs = [(224, 3, 64), (224, 64, 64), (112, 64, 128), (112, 128, 128), (56, 128, 256)] + [(56, 256, 256)] * 3 + [
      (28, 256, 512)] + [(28, 512, 512)] * 3 + [(14, 512, 512)]
  net = cost.network((224, 224), ("relu5_1",))
  assert net.gflops == pytest.approx(sum(2 * 9 * side * side * a * b for side, a, b in convs) / 1e9, rel=1e-9)
  assert net.weight_bytes == 4 * sum(9 * a * b + b for _, a, b in convs)
  big, small, thin = (cost.estimate(c, s, free_bytes=2 ** 40, entries={}) for c, s in
                      ((full, (256, 256)), (full, (128, 128)), (shallow, (256, 256))))
  assert big.step_seconds > small.step_seconds > 0 and big.step_seconds > thin.step_seconds
  assert big.peak_bytes > small.peak_bytes and big.peak_bytes > thin.peak_bytes
  lbfgs = cost.estimate(settings.resolve({"max_size": 256, "optimizer": "lbfgs"}), (256, 256), free_bytes=2 ** 40,
                        entries={})
  assert lbfgs.peak_bytes > big.peak_bytes and "built-in table for cpu" in big.source
  pair = cost.estimate(full, (256, 256), batch=2, free_bytes=2 ** 40, entries={})
  assert pair.peak_bytes < 2 * big.peak_bytes and pair.step_seconds > 1.9 * big.step_seconds - 0.1


def test_a_run_records_its_step_time_and_the_next_estimate_uses_it(random_weights, tmp_path):
  path = str(tmp_path / "step_times.json")
  config = settings.resolve({**SHALLOW, "max_size": 32, "steps": 8, "log_every": 2})
  job = engine.Job(make_image(32, 32), [make_style(32, 32)], config)
  before = cost.estimate(config, (32, 32), free_bytes=2 ** 40, entries=cost.read_cache(path))
  assert cost.read_cache(path) == {} and "built-in table" in before.source
  engine.Engine(random_weights).run([job], hooks=[cost.StepTimes(path)])
  entries = cost.read_cache(path)
  (records,) = entries.values()
  layers = SHALLOW["style_layers"] + SHALLOW["content_layers"]
  assert len(records) == 1 and records[0]["gflops"] == pytest.approx(cost.network((32, 32), layers).gflops, rel=1e-3)
  after = cost.estimate(config, (32, 32), free_bytes=2 ** 40, entries=entries)
  assert after.source.startswith("this machine's run at ")
  assert after.step_seconds == pytest.approx(records[0]["step_seconds"], rel=1e-3)  # (records are rounded)
  assert after.stage_seconds_each == pytest.approx(records[0]["stage_seconds"])
  # A second run of the same size replaces the record; a damaged file reads as empty.
  engine.Engine(random_weights).run([job], hooks=[cost.StepTimes(path)])
  assert len(next(iter(cost.read_cache(path).values()))) == 1
  (tmp_path / "step_times.json").write_text("{not json")
  assert cost.read_cache(path) == {}


def test_largest_size_follows_the_fitted_line(estimated):
  _, _, found = estimated
  full, half = found.probes
  slope = (full.peak_bytes - half.peak_bytes) / (full.pixels - half.pixels)
  for free in (half.peak_bytes, (half.peak_bytes + full.peak_bytes) // 2, full.peak_bytes, 4 * full.peak_bytes):
    found.free_bytes = free
    size = found.max_size()
    predicted = lambda side: full.peak_bytes + slope * (side * side - full.pixels)
    assert predicted(size) <= free < predicted(size + 1)
  found.free_bytes = half.peak_bytes // 4
  assert found.max_size() == 0
  found.free_bytes = 2 ** 40


def test_refusal_names_the_size_that_fits(estimated, random_weights):
  eng, job, found = estimated
  full, half = found.probes
  free = (full.peak_bytes + half.peak_bytes) // 2
  with pytest.raises(NstJaxError) as caught:
    cost.preflight(eng, [job], free_bytes=free, log=lambda line: None, timed=True)
  message = str(caught.value)
  assert "\n" not in message and message.startswith("cat: the step needs about")
  size = int(message.split("--max_size ")[1].split()[0])
  assert 32 <= size < 64 and "--force" in message
  # The size it names does fit, by XLA's analysis of the program compiled at that size.
  smaller = engine.Job(image_io.resize(job.content, (size, size)), job.styles, job.config)
  assert cost.probe(eng, smaller, (size, size), remat=False).peak_bytes <= free * 1.02
  cost.preflight(eng, [job], free_bytes=free, force=True, log=lambda line: None)  # --force: no refusal.
  with pytest.raises(NstJaxError, match="no size fits"):
    cost.preflight(eng, [job], free_bytes=1024, log=lambda line: None)
  # The analytic estimate (every run's) refuses the same way, and the size it names is within 15% of XLA's.
  analytic = cost.estimate(job.config, (64, 64), free_bytes=free)
  assert analytic.peak_bytes == pytest.approx(full.peak_bytes, rel=0.35)
  with pytest.raises(NstJaxError, match="would fit"):
    cost.preflight(eng, [job], free_bytes=analytic.peak_bytes - 1, log=lambda line: None)


def test_free_memory_from_the_environment(monkeypatch):
  monkeypatch.setenv(cost.FREE_MEMORY_ENV, "300M")
  assert cost.free_memory() == (300 * 2 ** 20, cost.FREE_MEMORY_ENV)
  assert cost.parse_bytes("2G") == 2 ** 31 and cost.parse_bytes("1024") == 1024
  assert cost.parse_bytes("1.5KiB") == 1536
  monkeypatch.setenv(cost.FREE_MEMORY_ENV, "lots")
  with pytest.raises(NstJaxError, match="NST_JAX_FREE_MEMORY must be"):
    cost.free_memory()
  monkeypatch.delenv(cost.FREE_MEMORY_ENV)
  free, source = cost.free_memory()
  assert free > 0 and source


def test_batch_preflight_estimates_each_compiled_batch(random_weights):
  eng = engine.Engine(random_weights, max_batch=2)
  jobs = [engine.Job(make_image(32, 32, seed=i), [make_style(32, 32)],
                     settings.resolve({**SHALLOW, "max_size": 32, "steps": 3, "tile": i == 2})) for i in range(3)]
  lines = []
  found = cost.preflight(eng, jobs, free_bytes=2 ** 40, log=lines.append)
  assert [e.batch for e in found] == [2, 1]  # Two untiled jobs share a batch; the tiled one is alone.
  assert found[0].peak_bytes > found[1].peak_bytes and eng.compiled_steps() == 0
  assert sum(line.startswith("estimate: about") for line in lines) == 2
  assert "batch of 2" in lines[0]


def test_command_refuses_dry_runs_and_forces(tmp_path):
  from stylize_cli_test import nst_jax
  Image.fromarray(image_io.to_uint8(make_image(40, 40))).save(tmp_path / "c.png")
  Image.fromarray(image_io.to_uint8(make_style(40, 40))).save(tmp_path / "s.png")
  (tmp_path / "home").mkdir()
  common = ["--content", tmp_path / "c.png", "--style", tmp_path / "s.png", "--weights", "random", "--max_size", 40,
            "--steps", 2, "--content_layers", "relu2_1", "--style_layers", "relu1_1,relu2_1", "--noprogress"]
  small = {cost.FREE_MEMORY_ENV: "2M"}  # 40 px with shallow layers needs ~4 MiB.
  result = nst_jax(*common, "--output", tmp_path / "out.png", home=tmp_path / "home", env=small)
  assert result.returncode == 2, result.stderr
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "2.0 MiB is free" in errors[0] and "(or --force" in errors[0]
  assert "Traceback" not in result.stderr and not (tmp_path / "out.png").exists()
  assert "estimate: " in result.stderr  # The figures came first.
  result = nst_jax(*common, "--workdir", tmp_path / "run", home=tmp_path / "home", env=small)
  assert result.returncode == 2 and not (tmp_path / "run").exists()
  result = nst_jax(*common, "--dry_run", home=tmp_path / "home", env=small)
  assert result.returncode == 0, result.stderr
  assert result.stdout.count("cost:") == 3 and "dry run: does not fit" in result.stdout
  assert "from 2 timed steps (--dry_run)" in result.stdout
  assert not list(tmp_path.glob("*.png"))[2:]  # Only the two inputs.
  result = nst_jax(*common, "--output", tmp_path / "out.png", "--force", home=tmp_path / "home", env=small)
  assert result.returncode == 0, result.stderr
  assert (tmp_path / "out.png").exists()
  assert not (tmp_path / "home" / cost.CACHE_FILE).exists()  # 2 steps: too few to record.


def test_server_estimate_endpoint_and_tile_preview(tmp_path, random_weights):
  """The page's estimate before queueing (`POST /api/estimate`), and a tiled job's mosaic."""
  import io
  from fastapi.testclient import TestClient
  from nst_jax.server.app import create_app
  from web_helpers import png_bytes, wait_for
  app = create_app(data_dir=str(tmp_path / "data"), weights=random_weights, rate_limit=0, batch_wait=0.1)
  files = {"content": ("photo.png", png_bytes(0), "image/png"), "style": ("painting.png", png_bytes(1), "image/png")}
  fields = {"max_size": 32, "steps": 4, "content_layers": "relu2_1", "style_layers": "relu1_1,relu2_1"}
  with TestClient(app) as client:
    r = client.post("/api/estimate", files=files, data=fields)
    assert r.status_code == 200, r.text
    found = r.json()
    assert (found["width"], found["height"]) == (32, 26) and found["peak_bytes"] > 0 and found["fits"]
    assert found["step_seconds"] > 0 and found["max_size"] > 32 and len(found["lines"]) == 2
    assert found["lines"][0].startswith("estimate: about") and not found["measured"]
    assert client.get("/api/jobs").json() == []  # Nothing was queued.
    assert client.post("/api/estimate", files=files, data={"tile_preview": 99}).status_code == 422
    # A region mask is not an image of the job: the estimate counts the photo and its paintings only.
    masked = {**files, "style_region": ("mask.png", png_bytes(2), "image/png")}
    r = client.post("/api/estimate", files=masked, data=fields)
    assert r.status_code == 200 and (r.json()["width"], r.json()["height"]) == (32, 26), r.text
    r = client.post("/api/jobs", files=files, data={**fields, "tile": "true", "tile_preview": 2})
    job = wait_for(lambda: client.get(f"/api/jobs/{r.json()['id']}").json())
    assert job["status"] == "done", job
    mosaic = client.get(f"/api/jobs/{job['id']}/tile_preview")
    assert mosaic.status_code == 200 and Image.open(io.BytesIO(mosaic.content)).size == (64, 52)


def test_every_command_path_prints_the_estimate_first(tmp_path):
  """--workdir, batch and video each print the one-line estimate before their first step (the plain command:
  test_command_refuses_dry_runs_and_forces), and a finished run records its step time in the cache."""
  from stylize_cli_test import nst_jax
  for i, image in enumerate((make_image(32, 40), make_style(32, 32), make_image(32, 40, seed=2))):
    Image.fromarray(image_io.to_uint8(image)).save(tmp_path / f"{i}.png")
  (tmp_path / "clip").mkdir()
  for i in (0, 2):
    Image.fromarray(image_io.to_uint8(make_image(32, 40, seed=i))).save(tmp_path / "clip" / f"frame_{i + 1}.png")
  (tmp_path / "home").mkdir()
  small = ["--weights", "random", "--max_size", 32, "--content_layers", "relu2_1", "--style_layers",
           "relu1_1,relu2_1", "--noprogress", "--log_every", 2]
  (tmp_path / "pairs.csv").write_text(f"content,style,output\n{tmp_path / '0.png'},{tmp_path / '1.png'},"
                                      f"{tmp_path / 'b.png'}\n")
  runs = {
      "workdir": ["--content", tmp_path / "0.png", "--style", tmp_path / "1.png", "--workdir", tmp_path / "run",
                  "--steps", 6],
      "batch": ["batch", "--manifest", tmp_path / "pairs.csv", "--steps", 2],
      "video": ["video", "--input", tmp_path / "clip", "--style", tmp_path / "1.png", "--output",
                tmp_path / "v.mp4", "--steps", 2],
  }
  for path, args in runs.items():
    result = nst_jax(*args, *small, home=tmp_path / "home")
    assert result.returncode == 0, (path, result.stderr)
    lines = result.stderr.splitlines()
    estimate = [i for i, line in enumerate(lines) if line.startswith("estimate: ")]
    assert estimate and "about" in lines[estimate[0]] and "s/step, from " in lines[estimate[0]], (path, lines)
    if path == "video":
      assert "2 frames x 2 steps at 32x26" in lines[estimate[0]], lines
  # The --workdir run (6 steps, logging every 2) left this machine's step time for the next estimate.
  (records,) = cost.read_cache(str(tmp_path / "home" / cost.CACHE_FILE)).values()
  assert records and records[0]["step_seconds"] > 0


def test_video_estimate_counts_frames_steps_and_passes(tmp_path, monkeypatch):
  """`nst-jax video`'s line: frames x steps per frame x the step of `estimate` (multipass: batches of frames)."""
  # An empty cache of this machine's step times: the built-in table's start cost, whatever other tests recorded.
  monkeypatch.setenv("NST_JAX_HOME", str(tmp_path))
  sequential = settings.resolve({"max_size": 64, "steps": 20}, scope="video")
  seconds, line = cost.video_estimate(sequential, (48, 64), 10)
  step = cost.estimate(sequential, (48, 64), free_bytes=2 ** 40).step_seconds
  assert seconds > 10 * 20 * step and "(10 frames x 20 steps at 64x48, ~" in line and "passes" not in line
  multipass = settings.resolve({"max_size": 64, "steps": 20, "video_mode": "multipass", "passes": 4}, scope="video")
  seconds_mp, line = cost.video_estimate(multipass, (48, 64), 10, max_batch=5)
  batch_step = cost.estimate(multipass, (48, 64), batch=5, free_bytes=2 ** 40).step_seconds
  assert 2 * 20 * batch_step < seconds_mp < 2 * 20 * batch_step + 20 and "in 4 passes of 5-frame batches" in line
