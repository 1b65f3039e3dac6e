"""Tests for nst_jax.engine: stages (coarse-to-fine schedule, state carry-over), colours, blends, style scale,
per-item budgets and exact resume; also the style-statistics init and rematerialisation."""

import dataclasses

import jax
import jax.numpy as jnp
import nst_jax
import numpy as np
import optax
import pytest
from skimage import data

from conftest import make_image, make_style
from nst_jax import color, engine, hooks, image_io, optimize, settings, vgg
from nst_jax.configs import default, quality
from nst_jax.errors import NstJaxError


@pytest.fixture(scope="module")
def weights():
  return vgg.random_weights(0)


def _image(array, shape):
  return image_io.resize(array.astype(np.float32) / 255.0, shape)


def _config(**overrides):
  config = default.get_config()
  config.update(dict(steps=2, scale_steps=2, style_weight=1e3, log_every=1))
  # Three VGG blocks keep compiles short; stages, colours, blends and remat do not depend on the depth.
  config.update(dict(content_layers=("relu3_1",), style_layers=("relu1_1", "relu2_1", "relu3_1")))
  config.update(overrides)
  return config


def test_scale_sizes_follow_start_and_factor_and_end_at_max_size():
  assert engine.scale_sizes(512, start=128, factor=2 ** 0.5) == [128, 181, 256, 362, 512]
  assert engine.scale_sizes(512, start=128, factor=2) == [128, 256, 512]
  assert engine.scale_sizes(300, start=128, factor=2) == [128, 256, 300]
  assert engine.scale_sizes(512, start=0) == [512]
  assert engine.scale_sizes(100, start=128) == [100]
  with pytest.raises(NstJaxError, match="scale_factor"):
    engine.scale_sizes(512, start=128, factor=1.0)


def test_schedule_keeps_aspect_steps_and_turns_on_remat_above_threshold():
  config = _config(scale_start=128, scale_factor=2.0, scale_steps=7, steps=11, remat_above_pixels=300 * 400)
  scales = engine.plan(config, (384, 512))
  assert [s.shape for s in scales] == [(96, 128), (192, 256), (384, 512)]
  assert [s.steps for s in scales] == [7, 7, 11]
  assert [s.remat for s in scales] == [False, False, True]


def test_run_produces_the_requested_sizes_and_starts_from_the_previous_scale(weights):
  content = _image(data.chelsea(), (32, 32))
  style = _image(data.coffee(), (40, 60))
  config = _config(scale_start=16, scale_factor=2.0)
  seen = []
  record = lambda e: seen.append((e.run.stage.index, e.image().shape, e.local_step, e.step))
  (result,) = engine.Engine(weights).run([engine.Job(content, [style], config)], hooks=[hooks.Callback(record)])
  assert result.image.shape == (32, 32, 3)
  assert [(s["height"], s["width"], s["steps"]) for s in result.stages] == [(16, 16, 2), (32, 32, 2)]
  assert seen == [(0, (16, 16, 3), 1, 1), (0, (16, 16, 3), 2, 2), (1, (32, 32, 3), 1, 3), (1, (32, 32, 3), 2, 4)]
  assert all(np.isfinite(s["total"]) for s in result.stages)


def test_carry_opt_state_resizes_adam_moments_and_keeps_the_count():
  adam = optax.adam(0.1)
  old = adam.init(jnp.zeros((4, 4, 3)))
  old = jax.tree.map(lambda x: x, old)
  mu = jnp.ones((4, 4, 3)) * 2.0
  old = (old[0]._replace(count=jnp.int32(5), mu=mu, nu=mu * 3.0),) + tuple(old[1:])
  new = adam.init(jnp.zeros((8, 8, 3)))
  carried = engine.carry_opt_state(old, new, (4, 4, 3), (8, 8, 3))
  assert carried[0].mu.shape == (8, 8, 3)
  np.testing.assert_allclose(carried[0].mu, 2.0, rtol=1e-6)
  np.testing.assert_allclose(carried[0].nu, 6.0, rtol=1e-6)
  assert int(carried[0].count) == 5


def test_blend_weights_one_zero_equal_the_single_style_result(weights):
  content = _image(data.chelsea(), (24, 24))
  style_a = _image(data.coffee(), (24, 24))
  style_b = _image(data.astronaut(), (24, 24))
  single = nst_jax.stylize(content, [style_a], _config(), weights=weights)
  blended = nst_jax.stylize(content, [style_a, style_b], _config(style_blend_weights=(1.0, 0.0)), weights=weights)
  np.testing.assert_allclose(blended, single, atol=1e-6)
  assert np.abs(single - content).max() > 1e-3  # The steps did something.
  # The other weight selects the other style's target.
  spec = optimize.loss_spec_from_config(_config())
  kwargs = dict(content_weight=1.0, style_weight=1.0, tv_weight=0.0)
  t01 = optimize.make_targets(weights, spec, content, [style_a, style_b], style_blend_weights=(0, 1), **kwargs)
  tb = optimize.make_targets(weights, spec, content, [style_b], **kwargs)
  for name in spec.style_layers:
    np.testing.assert_allclose(t01.style_grams[name], tb.style_grams[name], rtol=1e-6)
  with pytest.raises(NstJaxError, match="blend"):
    nst_jax.stylize(content, [style_a], _config(style_blend_weights=(1.0, 0.0)), weights=weights)


def test_luminance_only_run_keeps_the_photo_chroma(weights):
  photo = 0.2 + 0.6 * _image(data.chelsea(), (24, 24))
  style = _image(data.coffee(), (24, 24))
  config = _config(init="noise", preserve_colors="luminance")
  image = nst_jax.stylize(photo, [style], config, weights=weights)
  out, ref = color.rgb_to_yiq(image), color.rgb_to_yiq(photo)
  unclipped = np.all((image > 0.001) & (image < 0.999), axis=-1)
  assert unclipped.mean() > 0.5
  np.testing.assert_allclose(out[unclipped][:, 1:], ref[unclipped][:, 1:], atol=1e-4)
  # From noise, the luminance is the optimisation's, not the photo's.
  assert np.abs(out[..., 0] - ref[..., 0]).mean() > 0.02


def test_style_scale_resizes_the_style_relative_to_the_output():
  style = np.zeros((100, 200, 3), np.float32)
  assert engine.resize_style(style, (30, 40), 1.0).shape == (20, 40, 3)
  assert engine.resize_style(style, (30, 40), 2.0).shape == (40, 80, 3)
  assert engine.resize_style(style, (60, 80), 0.5).shape == (20, 40, 3)
  with pytest.raises(NstJaxError, match="style_scale"):
    engine.resize_style(style, (30, 40), 0.0)


def test_style_stats_init_matches_the_style_colour_statistics():
  style = _image(data.coffee(), (64, 96))
  image = optimize.init_image("style_stats", np.zeros((80, 80, 3), np.float32), style, seed=3)
  assert image.shape == (80, 80, 3)
  pixels, ref = image.reshape(-1, 3), style.reshape(-1, 3)
  np.testing.assert_allclose(pixels.mean(0), ref.mean(0), atol=0.02)
  np.testing.assert_allclose(pixels.std(0), ref.std(0), rtol=0.15)
  assert not np.allclose(image, optimize.init_image("style_stats", image, style, seed=4))


def test_remat_gives_the_same_loss_and_gradient(weights):
  config = _config()
  image = jnp.asarray(_image(data.chelsea(), (32, 32)))
  style = _image(data.coffee(), (32, 32))
  spec = optimize.loss_spec_from_config(config)
  targets = optimize.targets_from_config(weights, config, np.asarray(image) * 0.5, [style])
  grads = {}
  for remat in (False, True):
    loss_fn = optimize.make_loss_fn(spec.replace(remat=remat))
    grads[remat] = jax.jit(jax.value_and_grad(lambda x: loss_fn(x, targets, weights)[0]))(image)
  np.testing.assert_allclose(grads[True][0], grads[False][0], rtol=1e-6)
  np.testing.assert_allclose(grads[True][1], grads[False][1], rtol=1e-5, atol=1e-6 * np.abs(grads[False][1]).max())
  assert np.abs(grads[False][1]).max() > 0


def test_quality_preset_is_single_scale_preconditioned_lbfgs_from_the_recoloured_photo():
  config = quality.get_config()
  settings.validate(config, 1)
  assert config.optimizer == "lbfgs" and config.lbfgs_precondition > 0
  assert config.init == "recolored_content"
  assert engine.scale_sizes(512, start=config.scale_start, factor=config.scale_factor) == [512]
  # --scale_start 128 turns on the documented schedule (factor sqrt(2)).
  assert engine.scale_sizes(512, start=128, factor=config.scale_factor) == [128, 181, 256, 362, 512]



class StopAt:
  """A hook that stops the job after global step `step` (as a signal or the server's cancel would)."""

  def __init__(self, step):
    self.step, self.seen = step, 0

  def on_step(self, event):
    self.seen = event.step

  def should_stop(self, run):
    return self.seen == self.step


def _two_stage_job(optimizer, checkpoint_dir=None):
  content = _image(data.chelsea(), (32, 32))
  styles = [_image(data.coffee(), (24, 40)), _image(data.astronaut(), (30, 20))]  # Other aspect ratios.
  config = settings.resolve({"optimizer": optimizer, "scales": "16,2,2", "steps": 3, "style_weight": 1e3,
                             "style_blend_weights": "3,1", "preserve_colors": "luminance",
                             "content_layers": "relu2_1", "style_layers": "relu1_1,relu2_1"}, num_styles=2)
  return engine.Job(content, styles, config, checkpoint_dir=checkpoint_dir)


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_resume_mid_stage_and_at_every_stage_boundary_equals_the_uninterrupted_run(weights, tmp_path, optimizer):
  runner = engine.Engine(weights, checkpoints=engine.CheckpointPolicy(every_steps=0))
  (uninterrupted,) = runner.run([_two_stage_job(optimizer)])
  assert uninterrupted.status == "done" and uninterrupted.step == 5
  for stop in (1, 2, 3, 4):  # Mid stage 0, its end (the boundary), mid stage 1, one step before the end.
    folder = str(tmp_path / f"{optimizer}-{stop}")
    (stopped,) = runner.run([_two_stage_job(optimizer, folder)], hooks=[StopAt(stop)])
    assert (stopped.status, stopped.step) == ("stopped", stop)
    resumed_from = []
    (resumed,) = runner.run([_two_stage_job(optimizer, folder)],
                            hooks=[hooks.Callback(lambda e: None), _OnStart(resumed_from)])
    assert resumed_from == [stop] and resumed.status == "done"
    np.testing.assert_allclose(resumed.image, uninterrupted.image, atol=1e-6, err_msg=f"stopped at {stop}")
  # A finished job restores its final checkpoint and runs no step.
  (again,) = runner.run([_two_stage_job(optimizer, folder)], hooks=[StopAt(-1)])
  np.testing.assert_allclose(again.image, uninterrupted.image, atol=1e-6)


class _OnStart:
  def __init__(self, out):
    self.out = out

  def on_job_start(self, run):
    self.out.append(run.restored_step)


def test_a_checkpoint_of_other_settings_is_refused(weights, tmp_path):
  runner = engine.Engine(weights)
  job = _two_stage_job("adam", str(tmp_path / "run"))
  runner.run([job], hooks=[StopAt(1)])
  job.config.style_weight = 2e3
  with pytest.raises(NstJaxError, match="belongs to another run"):
    runner.run([job])


def test_jobs_with_other_steps_and_resume_points_share_one_batch(weights, tmp_path):
  content = _image(data.chelsea(), (32, 32))
  style = _image(data.coffee(), (32, 32))
  base = {"content_layers": "relu2_1", "style_layers": "relu1_1,relu2_1", "style_weight": 1e3}
  runner = engine.Engine(weights)
  jobs = [engine.Job(content, [style], settings.resolve({**base, "steps": n}), name=str(n)) for n in (2, 4)]
  jobs.append(engine.Job(content, [style], settings.resolve({**base, "steps": 4, "tv_weight": 1.0}),
                         checkpoint_dir=str(tmp_path / "c")))
  runner.run([jobs[2]], hooks=[StopAt(1)])  # Job 3 resumes from step 1.
  sizes = []
  batched = runner.run(jobs, hooks=[hooks.Callback(lambda e: sizes.append(len(e.view.host_images())))])
  assert set(sizes) == {3}  # One bucket: all three jobs in every step.
  for job, result in zip(jobs, batched):
    (single,) = engine.Engine(weights).run([dataclasses.replace(job, checkpoint_dir=None)])
    np.testing.assert_allclose(result.image, single.image, atol=1e-5)
    assert result.step == int(job.config.steps)


def test_the_library_call_without_a_config_gets_this_machines_defaults(weights, monkeypatch):
  """`nst_jax.stylize(content, style)` resolves its defaults as every path does (settings.resolve): on a CPU
  100 steps, not configs/default.py's 500 (docs/settings.md)."""
  monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
  seen = []

  class FirstStep:
    def on_job_start(self, run):
      seen.append(run.total_steps)

    def should_stop(self, run):
      return True

  nst_jax.stylize(make_image(32, 32), make_style(32, 32), weights=weights, hooks=[FirstStep()])
  assert seen == [settings.MACHINE_DEFAULTS["cpu"]["steps"]]
