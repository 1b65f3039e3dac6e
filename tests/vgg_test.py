"""VGG19 features vs an independent torch CPU implementation, loaded through synthetic public weight files."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from benchmarks.torch_reference import VGG19_CFG, layer_names
from conftest import make_image
from nst_jax import vgg
from nst_jax import weights as weights_lib

torch = pytest.importorskip("torch")


def torch_vgg19_features(pooling: str) -> "torch.nn.Sequential":
  """An nn.Sequential mirroring torchvision's `vgg19().features` (conv at 0, 2, 5, ...; ReLU; pools)."""
  layers, cin = [], 3
  for item in VGG19_CFG:
    if item == "M":
      layers.append(torch.nn.MaxPool2d(2, 2) if pooling == "max" else torch.nn.AvgPool2d(2, 2))
    else:
      layers += [torch.nn.Conv2d(cin, item, 3, padding=1), torch.nn.ReLU(inplace=False)]
      cin = item
  return torch.nn.Sequential(*layers)


def load_torch_model(state_dict: dict, pooling: str) -> "torch.nn.Sequential":
  model = torch_vgg19_features(pooling)
  model.load_state_dict({k[len("features."):]: v for k, v in state_dict.items() if k.startswith("features.")})
  return model.eval().double()


def torch_preprocess(image: np.ndarray, kind: str) -> "torch.Tensor":
  """`[B, H, W, 3]` RGB in [0, 1] -> NCHW float64 network input, as each weight source was trained."""
  x = torch.from_numpy(image.astype(np.float64)).permute(0, 3, 1, 2)
  if kind == "caffe":
    bgr_mean = torch.tensor([103.939, 116.779, 123.68], dtype=torch.float64).view(1, 3, 1, 1)
    return x.flip(1) * 255.0 - bgr_mean
  mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(1, 3, 1, 1)
  std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(1, 3, 1, 1)
  return (x - mean) / std


def torch_features(model, image: np.ndarray, kind: str) -> dict[str, np.ndarray]:
  """Every named activation `[B, h, w, C]` (float64) of the torch model."""
  out, x = {}, torch_preprocess(image, kind)
  with torch.no_grad():
    for name, module in zip(layer_names(), model):
      x = module(x)
      out[name] = x.permute(0, 2, 3, 1).numpy().copy()
  return out


def rel_error(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


@pytest.fixture(scope="module")
def torch_state_dict(numpy_params):
  import weight_files
  return weight_files.torchvision_state_dict(numpy_params)


def test_torch_layer_names_cover_every_vgg_layer():
  assert tuple(layer_names()) == vgg.LAYER_NAMES


@pytest.mark.parametrize("pooling", ["max", "avg"])
@pytest.mark.parametrize("file_kind", ["keras_h5", "torchvision_pth"])
def test_features_match_independent_torch(request, torch_state_dict, file_kind, pooling):
  path = request.getfixturevalue(file_kind)
  weights = weights_lib.load_vgg19(path)
  expected_kind = "caffe" if file_kind == "keras_h5" else "torch"
  assert weights.preprocessing == expected_kind
  image = make_image(40, 48, seed=3)[None]
  ours = jax.jit(vgg.extract_features, static_argnames=("layers", "pooling"))(
      weights, image, layers=vgg.LAYER_NAMES, pooling=pooling)
  reference = torch_features(load_torch_model(torch_state_dict, pooling), image, expected_kind)
  assert set(ours) == set(vgg.LAYER_NAMES)
  for name in vgg.LAYER_NAMES:
    assert ours[name].shape == reference[name].shape, name
    assert rel_error(ours[name], reference[name]) < 1e-4, name


def test_preprocessing_differs_between_sources(keras_h5, torchvision_pth):
  """The same params give different features under Caffe and torchvision preprocessing."""
  keras, torchvision = weights_lib.load_vgg19(keras_h5), weights_lib.load_vgg19(torchvision_pth)
  for name in vgg.CONV_LAYERS:
    np.testing.assert_array_equal(keras.params[name]["kernel"], torchvision.params[name]["kernel"])
  image = make_image(16, 16)
  a = vgg.extract_features(keras, image, ["conv1_1"])["conv1_1"]
  b = vgg.extract_features(torchvision, image, ["conv1_1"])["conv1_1"]
  assert rel_error(a, b) > 1e-2


def test_batched_equals_per_image(random_weights):
  images = np.stack([make_image(32, 32, seed=s) for s in range(3)])
  layers = ("relu1_1", "pool2", "relu3_1", "conv4_2")
  batched = vgg.extract_features(random_weights, images, layers)
  for i in range(3):
    single = vgg.extract_features(random_weights, images[i], layers)
    for name in layers:
      assert batched[name].shape[0] == 3
      assert single[name].shape == batched[name].shape[1:]
      np.testing.assert_allclose(batched[name][i], single[name], rtol=1e-5, atol=1e-5 * np.abs(single[name]).max())


def test_returns_only_requested_layers(random_weights):
  out = vgg.extract_features(random_weights, make_image(32, 32), ["relu2_1", "conv1_2"])
  assert set(out) == {"relu2_1", "conv1_2"}
  assert out["relu2_1"].shape == (16, 16, 128)
  assert out["conv1_2"].shape == (32, 32, 64)


def _count_convs(jaxpr) -> int:
  """Convolutions in a jaxpr, looking inside sub-jaxprs (custom_vjp calls, checkpoints, loops)."""
  count = 0
  for eqn in jaxpr.eqns:
    count += eqn.primitive.name == "conv_general_dilated"
    for value in eqn.params.values():
      inner = getattr(value, "jaxpr", value)  # ClosedJaxpr -> Jaxpr.
      if hasattr(inner, "eqns"):
        count += _count_convs(inner)
  return count


@pytest.mark.parametrize("layers, expected_convs", [
    (("conv1_1",), 1), (("relu1_2",), 2), (("pool1",), 2), (("relu2_1", "conv1_1"), 3),
    (("relu3_1",), 5), (("relu4_2",), 10), (("relu5_4",), 16), (("pool5",), 16)])
def test_computes_nothing_past_deepest_layer(random_weights, layers, expected_convs):
  image = jnp.zeros((32, 32, 3))
  jaxpr = jax.make_jaxpr(lambda w, x: vgg.extract_features(w, x, layers))(random_weights, image)
  assert _count_convs(jaxpr.jaxpr) == expected_convs


def test_shallow_layers_need_no_deep_params(random_weights):
  """Deeper params may be garbage (NaN, wrong shape): shallow features do not touch them."""
  params = dict(random_weights.params)
  for name in vgg.CONV_LAYERS[2:]:
    params[name] = {"kernel": jnp.full((1,), jnp.nan), "bias": jnp.full((1,), jnp.nan)}
  out = vgg.vgg19_forward(params, jnp.ones((1, 16, 16, 3)), ("relu1_2", "pool1"))
  assert np.isfinite(np.asarray(out["pool1"])).all()
  assert out["pool1"].shape == (1, 8, 8, 64)


def test_remat_gives_the_same_features_and_gradient(random_weights):
  image = make_image(32, 32)
  f = lambda x, remat: jnp.sum(vgg.extract_features(random_weights, x, ("relu3_1",), remat=remat)["relu3_1"] ** 2)
  grad = jax.jit(jax.grad(f), static_argnums=1)
  np.testing.assert_allclose(f(image, True), f(image, False), rtol=1e-6)
  np.testing.assert_allclose(grad(image, True), grad(image, False), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 8, 8, 3), (2, 12, 10, 16)])
def test_custom_vjp_conv_gradient_equals_plain_conv(shape):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((3, 3, shape[-1], 5)), jnp.float32)
  cotangent = jnp.asarray(rng.standard_normal(shape[:-1] + (5,)), jnp.float32)
  plain = lambda x, k: lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  out_custom, vjp_custom = jax.vjp(vgg.conv3x3, x, kernel)
  out_plain, vjp_plain = jax.vjp(plain, x, kernel)
  np.testing.assert_allclose(out_custom, out_plain, rtol=1e-6, atol=1e-6)
  for got, want in zip(vjp_custom(cotangent), vjp_plain(cotangent)):
    assert rel_error(got, want) < 1e-5
  # Inside a loop (where the custom rule matters) the gradient is still the plain one.
  square = jnp.asarray(rng.standard_normal((3, 3, shape[-1], shape[-1])) * 0.3, jnp.float32)
  loop = lambda conv: lambda x: lax.fori_loop(0, 2, lambda i, h: jnp.tanh(conv(h, square)), x).sum()
  assert rel_error(jax.grad(loop(vgg.conv3x3))(x), jax.grad(loop(plain))(x)) < 1e-5
  # The kernel gradient (unused by style transfer, but defined) is the plain one too.
  kgrad = lambda conv: jax.grad(lambda k: jnp.sum(conv(x, k) * cotangent))(kernel)
  assert rel_error(kgrad(vgg.conv3x3), kgrad(plain)) < 1e-5


def test_unknown_layer_raises_value_error(random_weights):
  with pytest.raises(ValueError, match="relu9_9"):
    vgg.extract_features(random_weights, jnp.zeros((16, 16, 3)), ["relu1_1", "relu9_9"])
  with pytest.raises(ValueError):
    vgg.extract_features(random_weights, jnp.zeros((16, 16, 3)), [])
  with pytest.raises(ValueError, match="shape"):
    vgg.extract_features(random_weights, jnp.zeros((16, 16)), ["relu1_1"])
  with pytest.raises(ValueError, match="pooling"):
    vgg.extract_features(random_weights, jnp.zeros((16, 16, 3)), ["pool1"], pooling="median")


def test_flax_module_matches_pure_forward(random_weights):
  x = jnp.asarray(make_image(16, 16)[None])
  variables = vgg.params_to_flax(random_weights.params)
  out = vgg.VGG19().apply(variables, x, ("relu2_2",))
  ref = vgg.vgg19_forward(random_weights.params, x, ("relu2_2",))
  np.testing.assert_array_equal(out["relu2_2"], ref["relu2_2"])
  init = jax.eval_shape(lambda: vgg.VGG19().init(jax.random.key(0), x, ("conv1_1",)))  # Shapes only.
  params = vgg.params_from_flax(init)
  assert params["conv5_4"]["kernel"].shape == (3, 3, 512, 512)
  assert vgg.params_from_flax(variables)["conv3_1"]["kernel"].shape == (3, 3, 128, 256)
