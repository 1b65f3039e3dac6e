"""Training the fast net (`nst_jax.fast.train`, `data`): exact resume, a net that learns the look, bad inputs."""

from __future__ import annotations

import json
import os
import signal

import jax
import numpy as np
import pytest
from PIL import Image

from conftest import make_image, make_style
from nst_jax import engine, optimize, settings
from nst_jax.errors import NstJaxError
from nst_jax.fast import apply, data, model, model_file, train

STYLE = make_style(64, 64, seed=1)
IMAGES = [make_image(64, 80, seed=s) for s in range(4)]
UNSEEN = [make_image(48, 48, seed=10 + s) for s in range(2)]


def tiny_options(**changes) -> train.TrainOptions:
  base = dict(steps=4, batch_size=2, crop=32, width=0.125, lr=1e-2, checkpoint_every=0, snapshot_every=2)
  return train.TrainOptions(**{**base, **changes})


class StopAfter:
  """Like `hooks.StopOnSignals` after a SIGINT that arrives during step `n` (the loop reads `caught` once
  per step)."""

  def __init__(self, n: int):
    self.n, self.reads = n, 0

  @property
  def caught(self) -> list[int]:
    self.reads += 1
    return [signal.SIGINT] if self.reads >= self.n else []


def max_difference(a, b) -> float:
  return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(x - y))), a, b)))


def test_resume_after_a_stop_equals_an_uninterrupted_run(tmp_path, random_weights):
  config = settings.resolve({})
  whole = train.train(random_weights, config, [STYLE], IMAGES, str(tmp_path / "whole"), tiny_options())
  folder = str(tmp_path / "stopped")
  with pytest.raises(train.TrainInterrupted, match="interrupted by SIGINT at step 2") as stopped:
    train.train(random_weights, config, [STYLE], IMAGES, folder, tiny_options(), stop=StopAfter(2))
  assert stopped.value.exit_code == 130
  assert "checkpoint saved in" in str(stopped.value)
  _, meta = model_file.load(folder)  # The model file of the stop is there, usable.
  assert meta["steps"] == 2
  notices = []
  resumed = train.train(random_weights, config, [STYLE], IMAGES, folder, tiny_options(), log=notices.append)
  assert resumed.resumed_from == 2 and resumed.step == 4
  assert notices == [f"resuming the training in {folder} from step 2"]
  assert max_difference(whole.params, resumed.params) <= 1e-6
  params, meta = model_file.load(folder)
  assert max_difference(params, resumed.params) == 0.0 and meta["steps"] == 4 and meta["width"] == 0.125
  records = [json.loads(line) for line in open(os.path.join(folder, train.METRICS))]
  assert [r["step"] for r in records] == [1, 2, 3, 4]
  assert set(records[0]) == {"step", "total", "content", "style", "tv", "seconds"}
  assert os.path.exists(os.path.join(folder, train.LOSSES))


def test_another_training_in_the_folder_is_refused(tmp_path, random_weights):
  config = settings.resolve({})
  folder = str(tmp_path / "m")
  train.train(random_weights, config, [STYLE], IMAGES, folder, tiny_options(steps=1))
  with pytest.raises(NstJaxError, match="holds another training.*settings.style_weight"):
    train.train(random_weights, settings.resolve({"style_weight": 10}), [STYLE], IMAGES, folder,
                tiny_options(steps=1))
  with pytest.raises(NstJaxError, match="already at step 1, past --steps 0"):
    train.train(random_weights, config, [STYLE], IMAGES, folder, tiny_options(steps=0))


def test_crops_depend_only_on_seed_and_step():
  a = data.random_crops(IMAGES, step=3, seed=0, batch_size=3, crop=32)
  b = data.random_crops(IMAGES, step=3, seed=0, batch_size=3, crop=32)
  c = data.random_crops(IMAGES, step=4, seed=0, batch_size=3, crop=32)
  assert a.shape == (3, 32, 32, 3) and a.dtype == np.float32
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_bad_training_images(tmp_path):
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "notes.txt").write_text("no pictures here")
  with pytest.raises(NstJaxError, match="no images in"):
    data.load_images(str(tmp_path / "empty"), crop=64)
  (tmp_path / "small").mkdir()
  Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "small" / "tiny.png")
  with pytest.raises(NstJaxError, match=r"tiny.png is 30x20 pixels; .* at least 32 px for --crop 64"):
    data.load_images(str(tmp_path / "small"), crop=64)
  with pytest.raises(NstJaxError, match="image folder not found"):
    data.load_images(str(tmp_path / "missing"), crop=64)


def style_ratio(weights, config, picture_fn) -> list[float]:
  """Per unseen photo: the style residual of `picture_fn(photo)` over the photo's own (the same objective,
  `optimize.relative_residuals`, at the photo's size)."""
  ratios = []
  for photo in UNSEEN:
    style = [engine.resize_style(STYLE, photo.shape[:2], float(config.style_scale))]
    own = optimize.relative_residuals(weights, config, photo, style, photo)["style"]
    ratios.append(optimize.relative_residuals(weights, config, photo, style, picture_fn(photo))["style"] / own)
  return ratios


@pytest.mark.slow
def test_a_trained_net_lowers_the_style_loss_of_unseen_photos(tmp_path, random_weights):
  """60 steps of a tiny net on random VGG weights: the unseen photos' style residual falls to about a third
  of the photo's own (measured 0.34-0.36); an untrained net's pictures are further from the style than the
  photo (measured 1.63-1.72)."""
  config = settings.resolve({})
  options = tiny_options(steps=60, snapshot_every=0)
  untrained = model.init_params(options.width, options.seed)
  before = style_ratio(random_weights, config, lambda p: np.asarray(model.apply(untrained, p[None], width=0.125))[0])
  result = train.train(random_weights, config, [STYLE], IMAGES, str(tmp_path / "m"), options)
  net = apply.FastNet.load(str(tmp_path / "m"))
  after = style_ratio(random_weights, config, net.stylize)
  assert min(before) > 1.0, before
  assert max(after) < 0.6, after
  assert result.step == 60
