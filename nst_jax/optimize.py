"""The optimisation engine: targets, state, optax optimizers, one jit-compiled step and the run loop.

Data flow: content/style images -> `make_targets` (VGG features, Gram matrices, loss weights) ->
`step(state, targets, weights)` repeated -> image. `step` is a pure function; `Stylizer` applies
`jax.jit` once (one compilation per image shape) and `jax.vmap` for batches of pairs. The VGG weights stay
outside the state and are passed, not closed over, so they are not baked into the compiled program.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct

from nst_jax import color, image_io, lbfgs, losses, vgg
from nst_jax.errors import NstJaxError

PyTree = Any
OPTIMIZERS = ("adam", "adagrad", "rmsprop", "sgd", "lbfgs")
INIT_KINDS = ("content", "recolored_content", "noise", "style", "style_stats")
DEFAULT_LR = {"adam": 0.02, "adagrad": 0.05, "rmsprop": 0.005, "sgd": 1e-9, "lbfgs": 1.0}
METRIC_NAMES = ("total", "content", "style", "tv")


@struct.dataclass
class LossSpec:
  """The static (compile-time) part of the loss: which layers, how weighted, which pooling and TV."""
  content_layers: tuple[str, ...] = struct.field(pytree_node=False)
  style_layer_weights: tuple[tuple[str, float], ...] = struct.field(pytree_node=False)
  tv_kind: str = struct.field(pytree_node=False, default="l2")
  pooling: str = struct.field(pytree_node=False, default="max")
  remat: bool = struct.field(pytree_node=False, default=False)
  tile: bool = struct.field(pytree_node=False, default=False)  # Circular padding and wrapped TV.
  loss_normalization: str = struct.field(pytree_node=False, default="gatys")
  # Earlier frames the temporal loss pulls towards (video); 0 = no temporal term, the image loss exactly.
  temporal_frames: int = struct.field(pytree_node=False, default=0)

  @property
  def style_layers(self) -> tuple[str, ...]:
    return tuple(name for name, _ in self.style_layer_weights)

  @property
  def all_layers(self) -> tuple[str, ...]:
    return tuple(dict.fromkeys(self.content_layers + self.style_layers))


@struct.dataclass
class Targets:
  """What one picture is optimised towards; every leaf can carry a leading batch axis for `vmap`.

  Attributes:
    content_features: `{layer: [h, w, C]}` of the content image.
    style_grams: `{layer: [C, C]}` style Gram matrices, rescaled to the output's number of positions.
    content_weight, style_weight, tv_weight: scalars alpha, beta, theta (per item, so sweeps batch).
    style_masks: spatial control (None: none): `{layer: [R, h, w]}` each painting's region at the layer's
      resolution; `style_grams` are then `{layer: [R, C, C]}`, one guided Gram per region.
    region_weights: `[R]` weight of each region's style term (None without regions).
    content_masks: `{layer: [h, w]}` per-position content weight (None: 1 everywhere).
    coverage, photo: with regions (None otherwise): the regions' coverage `[H, W]` (their sum clipped to 1)
      and the photo `[H, W, 3]`. The picture is then `picture(image, coverage, photo)`: the optimised image
      shows only where the regions cover it, so uncovered pixels are the photo whatever the optimizer.
    temporal_images, temporal_masks, temporal_weight: video only (None otherwise): earlier outputs warped
      into this frame `[K, H, W, 3]`, their reliability masks `[K, H, W]` (disjoint, nearer first) and the
      scalar weight of `losses.temporal_loss`; K = `LossSpec.temporal_frames`.
  The number of regions and K are part of the tree's shapes: only jobs with equal R and K share a batch.
  """
  content_features: dict
  style_grams: dict
  content_weight: jax.Array
  style_weight: jax.Array
  tv_weight: jax.Array
  style_masks: dict | None = None
  region_weights: jax.Array | None = None
  content_masks: dict | None = None
  coverage: jax.Array | None = None
  photo: jax.Array | None = None
  temporal_images: jax.Array | None = None
  temporal_masks: jax.Array | None = None
  temporal_weight: jax.Array | None = None


@struct.dataclass
class StylizeState:
  """Everything that changes during a run (checkpointed as a whole). With regions `image` is what the
  optimizer moves, not the picture: `picture(image, targets.coverage, targets.photo)` is."""
  image: jax.Array  # [H, W, 3] in [0, 1]
  opt_state: PyTree
  step: jax.Array  # int32 scalar


def _positive(value: float, name: str, *, allow_zero: bool = True) -> float:
  value = float(value)
  if not np.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
    raise NstJaxError(f"{name} must be {'non-negative' if allow_zero else 'positive'}, got {value}")
  return value


def loss_spec_from_config(config: ml_collections.ConfigDict, *, temporal_frames: int = 0) -> LossSpec:
  """Validates the loss settings of `config` and returns the static `LossSpec` (`temporal_frames`: K of
  the jobs' temporal targets, 0 for pictures)."""
  try:
    content_layers = vgg.validate_layers(config.content_layers)
    style_layers = vgg.validate_layers(config.style_layers)
  except ValueError as e:
    raise NstJaxError(str(e)) from None
  layer_weights = config.style_layer_weights
  if layer_weights is None or len(layer_weights) == 0:
    layer_weights = (1.0 / len(style_layers),) * len(style_layers)
  if len(layer_weights) != len(style_layers):
    raise NstJaxError(f"{len(layer_weights)} style layer weights for {len(style_layers)} style layers")
  layer_weights = tuple(_positive(w, "style layer weight") for w in layer_weights)
  if config.tv_kind not in losses.TV_KINDS:
    raise NstJaxError(f"unknown tv_kind {config.tv_kind!r}; expected one of {losses.TV_KINDS}")
  if config.pooling not in vgg.POOLING_KINDS:
    raise NstJaxError(f"unknown pooling {config.pooling!r}; expected one of {vgg.POOLING_KINDS}")
  if config.loss_normalization not in losses.NORMALIZATIONS:
    raise NstJaxError(f"unknown loss_normalization {config.loss_normalization!r}; expected one of "
                      f"{losses.NORMALIZATIONS}")
  return LossSpec(content_layers=content_layers, style_layer_weights=tuple(zip(style_layers, layer_weights)),
                  tv_kind=config.tv_kind, pooling=config.pooling, remat=bool(config.get("remat", False)),
                  tile=bool(config.get("tile", False)),
                  loss_normalization=config.loss_normalization, temporal_frames=int(temporal_frames))


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises NstJaxError naming the first bad setting."""
  loss_spec_from_config(config)
  for name in ("content_weight", "style_weight", "tv_weight"):
    _positive(config[name], name)
  if config.optimizer not in OPTIMIZERS:
    raise NstJaxError(f"unknown optimizer {config.optimizer!r}; expected one of {OPTIMIZERS}")
  if config.lr is not None:
    _positive(config.lr, "lr", allow_zero=False)
  if config.optimizer == "lbfgs":
    make_optimizer(config)  # Checks the L-BFGS settings (preconditioner, learning rate).
  if config.init not in INIT_KINDS:
    raise NstJaxError(f"unknown init {config.init!r}; expected one of {INIT_KINDS}")
  if int(config.steps) < 0:
    raise NstJaxError(f"steps must be >= 0, got {config.steps}")
  image_io.check_size(int(config.max_size), "max_size")


# ---- features and targets ----------------------------------------------------------------------------------

_features = jax.jit(vgg.extract_features, static_argnames=("layers", "pooling", "remat", "circular"))


def make_targets(weights: vgg.VGGWeights, spec: LossSpec, content: jax.typing.ArrayLike,
                 styles: Sequence[jax.typing.ArrayLike], *, content_weight: float, style_weight: float,
                 tv_weight: float, style_blend_weights: Sequence[float] | None = None,
                 regions: Sequence[jax.typing.ArrayLike] | None = None,
                 region_sources: Sequence[jax.typing.ArrayLike | None] | None = None,
                 outside_content_weight: float = 10.0, alpha: np.ndarray | None = None) -> Targets:
  """Content features and (blended) style Gram matrices for an output the size of `content`.

  A style image of another size than the output gives a Gram matrix summed over a different number of
  positions; each is divided by its own M and multiplied by the output's M, so the style target does not
  depend on the style image's resolution. Several styles are blended with `style_blend_weights`
  (normalised to sum to 1; equal by default).

  With `regions` (one mask `[H, W]` in [0, 1] per style, at the output's size) see `make_region_targets`;
  `alpha` (`[H, W]`, needs `regions`): the content's transparency, multiplying every region and the content
  weight map (docs/transparency.md).
  """
  content = jnp.asarray(content, jnp.float32)
  content_features = _features(weights, content, layers=spec.all_layers, pooling=spec.pooling, circular=spec.tile)
  blend = np.ones(len(styles)) if style_blend_weights is None else np.asarray(style_blend_weights, np.float64)
  if len(blend) != len(styles) or np.any(blend < 0) or blend.sum() <= 0:
    raise NstJaxError(f"style blend weights {list(blend)} do not fit {len(styles)} style image(s)")
  blend = blend / blend.sum()
  if regions is not None:
    if any(np.shape(r) != content.shape[:2] for r in regions):
      raise NstJaxError(f"style regions {[np.shape(r) for r in regions]} do not fit the output {content.shape[:2]}")
    return make_region_targets(weights, spec, content_features, styles, regions, region_sources, photo=content,
                               region_weights=blend * len(styles), content_weight=content_weight,
                               style_weight=style_weight, tv_weight=tv_weight,
                               outside_content_weight=outside_content_weight, alpha=alpha)
  grams = {}
  for style, share in zip(styles, blend):
    style_features = _features(weights, jnp.asarray(style, jnp.float32), layers=spec.style_layers,
                               pooling=spec.pooling, circular=spec.tile)
    for name in spec.style_layers:
      f = style_features[name]
      out_positions = content_features[name].shape[0] * content_features[name].shape[1]
      gram = losses.gram_matrix(f) * (out_positions / (f.shape[0] * f.shape[1]))
      grams[name] = grams.get(name, 0.0) + float(share) * gram
  return Targets(
      content_features={name: content_features[name] for name in spec.content_layers},
      style_grams=grams,
      content_weight=jnp.float32(content_weight),
      style_weight=jnp.float32(style_weight),
      tv_weight=jnp.float32(tv_weight))


def region_coverage(regions: Sequence[np.ndarray]) -> np.ndarray:
  """`[H, W]` how much the regions `[R, H, W]` cover each pixel: their sum clipped to 1."""
  return np.clip(np.sum(np.asarray(regions, np.float32), axis=0), 0.0, 1.0)


def content_weight_map(regions: Sequence[np.ndarray], outside_content_weight: float) -> np.ndarray:
  """`[H, W]` content weight: 1 where the regions cover the picture, `outside_content_weight` where none does
  (linear in between in the coverage, `region_coverage`)."""
  coverage = region_coverage(regions)
  return (coverage + float(outside_content_weight) * (1.0 - coverage)).astype(np.float32)


def picture(image, coverage, photo):
  """The picture of an optimised `image` `[..., H, W, 3]` under regions: `(1 - c) * photo + c * image`.

  c = the regions' `coverage` `[..., H, W]` (None: no regions, `image` itself). Uncovered pixels are the
  photo exactly and get no gradient, so no optimizer can move them: Adam normalises each pixel's gradient,
  so a small content gradient there would still get a full step, and a loss weight alone cannot hold them
  (docs/spatial-control.md). A soft edge shows a share c of the change. Works on numpy and jax arrays.
  """
  if coverage is None:
    return image
  coverage = coverage[..., None]
  return (1.0 - coverage) * photo + coverage * image


def make_region_targets(weights: vgg.VGGWeights, spec: LossSpec, content_features: dict,
                        styles: Sequence[jax.typing.ArrayLike], regions: Sequence[jax.typing.ArrayLike],
                        region_sources: Sequence[jax.typing.ArrayLike | None] | None, *, photo: jax.typing.ArrayLike,
                        region_weights, content_weight: float, style_weight: float, tv_weight: float,
                        outside_content_weight: float, alpha: np.ndarray | None = None) -> Targets:
  """Targets with spatial control (Gatys et al. 2017): style i applies inside `regions[i]`.

  Style i's target at each layer is the guided Gram matrix of its features under `region_sources[i]` (a
  mask at the painting's size; None = the whole painting), scaled to the output's positions as in
  `make_targets`. The output's regions are pooled to each layer (`losses.downsample_mask`); the content
  loss is weighted per position by `content_weight_map`. `photo` `[H, W, 3]` and the regions' coverage are
  what `picture` shows where no region covers the image. `alpha` (None: opaque) multiplies the regions and
  the weight map: transparent pixels take part in neither loss.
  """
  if len(regions) != len(styles):
    raise NstJaxError(f"{len(regions)} style region(s) for {len(styles)} style image(s)")
  sources = [None] * len(styles) if region_sources is None else list(region_sources)
  if len(sources) != len(styles):
    raise NstJaxError(f"{len(sources)} style region source(s) for {len(styles)} style image(s)")
  grams = {name: [] for name in spec.style_layers}
  for style, source in zip(styles, sources):
    style = jnp.asarray(style, jnp.float32)
    if source is not None and np.shape(source) != style.shape[:2]:
      raise NstJaxError(f"a region source mask {np.shape(source)} does not fit its painting {style.shape[:2]}")
    style_features = _features(weights, style, layers=spec.style_layers, pooling=spec.pooling,
                               circular=spec.tile)
    for name in spec.style_layers:
      f = style_features[name]
      out_positions = content_features[name].shape[0] * content_features[name].shape[1]
      mask = jnp.ones(f.shape[:2]) if source is None else losses.downsample_mask(jnp.asarray(source), name)
      grams[name].append(losses.guided_gram_matrix(f, mask) * (out_positions / (f.shape[0] * f.shape[1])))
  regions = np.asarray(regions, np.float32)  # [R, H, W]
  coverage = region_coverage(regions)
  weight_map = content_weight_map(regions, outside_content_weight)
  content_scale = {}
  if alpha is not None:
    regions, weight_map = regions * alpha, weight_map * alpha
    visible = _visible_scales(spec, np.asarray(alpha, np.float32), content_features)
    content_scale, region_weights = visible["content"], np.asarray(region_weights) * visible["style"]
    content_weight, tv_weight = content_weight * visible["content_weight"], tv_weight * visible["tv"]
  masks = {name: jnp.stack([losses.downsample_mask(r, name) for r in regions]) for name in spec.style_layers}
  return Targets(
      content_features={name: content_features[name] for name in spec.content_layers},
      style_grams={name: jnp.stack(g) for name, g in grams.items()},
      content_weight=jnp.float32(content_weight),
      style_weight=jnp.float32(style_weight),
      tv_weight=jnp.float32(tv_weight),
      style_masks=masks,
      region_weights=jnp.asarray(region_weights, jnp.float32),
      content_masks={name: losses.downsample_mask(weight_map, name) * content_scale.get(name, 1.0)
                     for name in spec.content_layers},
      coverage=jnp.asarray(coverage), photo=jnp.asarray(photo, jnp.float32))


def _visible_scales(spec: LossSpec, alpha: np.ndarray, content_features: dict) -> dict:
  """Factors that make a transparent picture's loss that of its visible part alone (docs/transparency.md).

  With k = M / sum(alpha) (all positions over visible ones), a term averaged over the M positions is
  multiplied by k, so that each visible pixel feels the pressure it would in a picture of the visible size:
  the style terms (their Gram matrices average over the positions: their weight `sum(m) / M` becomes
  `sum(m) / sum(alpha)`), the content term under `mean` and TV under `invariant`; under `invariant` the
  content term's denominator `||P||^2` is taken over the visible pixels (a factor per content layer).
  """
  k = alpha.size / max(float(alpha.sum()), 1e-6)
  norm = spec.loss_normalization
  content = {}
  if norm == "invariant":
    for name in spec.content_layers:
      p = np.square(np.asarray(content_features[name], np.float64)).sum(axis=-1)
      seen = float((np.asarray(losses.downsample_mask(jnp.asarray(alpha), name), np.float64) * p).sum())
      content[name] = float(p.sum()) / max(seen, 1e-30)
  return {"content": content, "style": k, "content_weight": k if norm == "mean" else 1.0,
          "tv": k if norm == "invariant" else 1.0}


def targets_from_config(weights: vgg.VGGWeights, config: ml_collections.ConfigDict, content, styles,
                        style_blend_weights=None, regions=None, region_sources=None, alpha=None) -> Targets:
  return make_targets(weights, loss_spec_from_config(config), content, styles,
                      content_weight=config.content_weight, style_weight=config.style_weight,
                      tv_weight=config.tv_weight, style_blend_weights=style_blend_weights, regions=regions,
                      region_sources=region_sources, alpha=alpha,
                      outside_content_weight=float(config.get("outside_content_weight", 10.0)))


def relative_residuals(weights: vgg.VGGWeights, config: ml_collections.ConfigDict, content, styles, image,
                       style_blend_weights=None) -> dict[str, float]:
  """How far `image` is from its targets, whatever the run's normalisation: content `||F - P||^2 / ||P||^2`
  (averaged over content layers) and style `sum_l w_l ||G_l - A_l||^2 / ||A_l||^2` (the invariant terms).

  `content`, `styles` and `image` at the output's scale (styles as the engine resizes them); a measure for
  comparing looks across paintings, sizes and normalisations (scripts/sweep_looks.py, measure_consistency.py).
  """
  spec = dataclasses.replace(loss_spec_from_config(config), loss_normalization="invariant")
  targets = make_targets(weights, spec, content, styles, content_weight=1.0, style_weight=1.0, tv_weight=0.0,
                         style_blend_weights=style_blend_weights)
  metrics = _evaluate(spec)(jnp.asarray(image, jnp.float32), targets, weights)
  return {"content": float(metrics["content"]), "style": float(metrics["style"])}


_EVALUATE: dict = {}


def _evaluate(spec: LossSpec):
  if spec not in _EVALUATE:
    loss_fn = make_loss_fn(spec)
    _EVALUATE[spec] = jax.jit(lambda image, targets, weights: loss_fn(image, targets, weights)[1])
  return _EVALUATE[spec]


# ---- loss, optimizer, step ---------------------------------------------------------------------------------


def make_loss_fn(spec: LossSpec) -> Callable[..., tuple[jax.Array, dict]]:
  """`loss_fn(image [H, W, 3], targets, weights) -> (total, {'total', 'content', 'style', 'tv'})`, plus
  'temporal' when `spec.temporal_frames` > 0."""

  def loss_fn(image, targets: Targets, weights: vgg.VGGWeights):
    norm = spec.loss_normalization
    image = picture(image, targets.coverage, targets.photo)
    features = vgg.extract_features(weights, image, spec.all_layers, pooling=spec.pooling, remat=spec.remat,
                                    circular=spec.tile)
    content_masks = targets.content_masks or {}
    content = sum(losses.content_loss(features=features[name], target=targets.content_features[name],
                                      weight=content_masks.get(name), normalization=norm)
                  for name in spec.content_layers)
    if norm != "gatys":
      content = content / len(spec.content_layers)  # Averaged over content layers (losses.content_layers_loss).
    if targets.style_masks is None:
      style = losses.style_loss(features=features, target_grams=targets.style_grams,
                                layer_weights=dict(spec.style_layer_weights), normalization=norm)
    else:
      style = losses.region_style_loss(features=features, target_grams=targets.style_grams,
                                       masks=targets.style_masks, region_weights=targets.region_weights,
                                       layer_weights=dict(spec.style_layer_weights), normalization=norm)
    tv = losses.total_variation_loss(image, kind=spec.tv_kind, wrap=spec.tile, normalization=norm)
    total = losses.total_loss(content=content, style=style, tv=tv, content_weight=targets.content_weight,
                              style_weight=targets.style_weight, tv_weight=targets.tv_weight)
    metrics = {"content": content, "style": style, "tv": tv}
    if spec.temporal_frames:
      if targets.temporal_masks is None or targets.temporal_masks.shape[0] != spec.temporal_frames:
        raise ValueError(f"the loss expects temporal targets of {spec.temporal_frames} frame(s)")
      temporal = losses.temporal_loss(image=image, warped=targets.temporal_images, masks=targets.temporal_masks)
      total = total + targets.temporal_weight * temporal
      metrics["temporal"] = temporal
    return total, {"total": total, **metrics}

  return loss_fn


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """The optax transformation named by `config.optimizer` (lr None = that optimizer's default)."""
  name = config.optimizer
  lr = DEFAULT_LR[name] if config.lr is None else float(config.lr)
  if name == "adam":
    return optax.adam(lr, b1=config.adam_b1, eps=config.adam_eps)
  if name == "adagrad":
    return optax.adagrad(lr)
  if name == "rmsprop":
    return optax.rmsprop(lr)
  if name == "sgd":
    return optax.sgd(lr, momentum=config.sgd_momentum or None)
  if name == "lbfgs":
    linesearch = optax.scale_by_zoom_linesearch(
        max_linesearch_steps=int(config.get("lbfgs_linesearch_steps", 20)),
        initial_guess_strategy=config.get("lbfgs_initial_guess", "one"))
    power = _positive(config.get("lbfgs_precondition", 0.0), "lbfgs_precondition")
    if power == 0:
      return optax.lbfgs(learning_rate=None if lr == 1.0 else lr, memory_size=int(config.lbfgs_memory),
                         linesearch=linesearch)
    if lr != 1.0:
      raise NstJaxError("lbfgs_precondition needs the default L-BFGS learning rate (the line search sets it)")
    return lbfgs.preconditioned_lbfgs(memory_size=int(config.lbfgs_memory),
                                      precondition=lbfgs.fourier_preconditioner(power), linesearch=linesearch)
  raise NstJaxError(f"unknown optimizer {name!r}; expected one of {OPTIMIZERS}")


def uses_linesearch(config: ml_collections.ConfigDict) -> bool:
  return config.optimizer == "lbfgs"


def make_step(spec: LossSpec, optimizer: optax.GradientTransformation, *, linesearch: bool):
  """`step(state, targets, weights) -> (state, total_loss)`: one optimizer update, image kept in [0, 1].

  With a line search (L-BFGS) the loss and gradient at the current image come from the optimizer state
  (`optax.value_and_grad_from_state`), so an iteration costs one gradient evaluation when the first trial
  step is accepted. Clipping to [0, 1] after the update leaves that cache describing the unclipped point;
  the difference is confined to saturated pixels and is corrected by the next line search. With regions,
  pixels that no region covers are reset to the photo (the loss does not see them: `picture`), so the
  optimised image is the picture there whatever the optimizer (a preconditioner spreads its steps).
  """
  loss_fn = make_loss_fn(spec)

  def step(state: StylizeState, targets: Targets, weights: vgg.VGGWeights):
    value_fn = lambda image: loss_fn(image, targets, weights)[0]
    if linesearch:
      value, grad = optax.value_and_grad_from_state(value_fn)(state.image, state=state.opt_state)
      updates, opt_state = optimizer.update(grad, state.opt_state, state.image, value=value, grad=grad,
                                            value_fn=value_fn)
    else:
      value, grad = jax.value_and_grad(value_fn)(state.image)
      updates, opt_state = optimizer.update(grad, state.opt_state, state.image)
    image = jnp.clip(optax.apply_updates(state.image, updates), 0.0, 1.0)
    if targets.coverage is not None:
      image = jnp.where(targets.coverage[..., None] > 0, image, targets.photo)
    return StylizeState(image=image, opt_state=opt_state, step=state.step + 1), value

  return step


def init_image(kind: str, content: np.ndarray, style: np.ndarray | Sequence[np.ndarray] | None = None, *,
               seed: int = 0, style_blend_weights: Sequence[float] | None = None) -> np.ndarray:
  """The starting image `[H, W, 3]`.

  Kinds: `content` (the photo), `recolored_content` (the photo with the colour mean and covariance of the
  style, or of the blend of styles: it starts with the style's palette and the photo's structure, which
  cuts the L-BFGS iterations to a given loss by 5-20% on the benchmark pairs), `noise` (uniform),
  `style` (the first style resized to the output), `style_stats` (noise with the first style's per-channel
  mean and standard deviation). `style` is one image or a list (blended with `style_blend_weights`).
  """
  styles = [] if style is None else [style] if isinstance(style, np.ndarray) else list(style)
  if kind == "content":
    return np.asarray(content, np.float32)
  if kind == "noise":
    return np.random.default_rng(seed).uniform(0.0, 1.0, np.shape(content)).astype(np.float32)
  if kind in ("style", "style_stats", "recolored_content") and not styles:
    raise NstJaxError(f"init {kind!r} needs a style image")
  if kind == "recolored_content":
    mean, cov = color.mixture_color_stats(styles, style_blend_weights)
    return color.match_color_stats(content, mean, cov)
  if kind == "style":
    return image_io.resize(np.asarray(styles[0], np.float32), np.shape(content)[:2])
  if kind == "style_stats":
    return style_stats_noise(np.shape(content), styles[0], seed=seed)
  raise NstJaxError(f"unknown init {kind!r}; expected one of {INIT_KINDS}")


def region_init_image(kind: str, content: np.ndarray, styles: Sequence[np.ndarray], regions: Sequence[np.ndarray],
                      *, seed: int = 0) -> np.ndarray:
  """The starting optimised image with spatial control: `init_image` of each painting inside its region, the
  photo where no region covers it; its `picture` (the photo outside, a soft edge's share inside) is the
  first picture.

  Regions that overlap share a pixel in proportion to their masks. Kinds that do not depend on the
  painting (`content`, `noise`) are `init_image`'s inside the regions.
  """
  masks = np.asarray(regions, np.float32)[..., None]  # [R, H, W, 1]
  total = masks.sum(axis=0)
  if kind in ("content", "noise"):  # The same for every painting.
    inits = [init_image(kind, content, styles, seed=seed)] * len(styles)
  else:
    inits = [init_image(kind, content, [style], seed=seed) for style in styles]
  mixed = sum(m * x for m, x in zip(masks, inits)) / np.maximum(total, 1e-12)
  start = np.where(total > 0, mixed, np.asarray(content, np.float32))
  return np.clip(start, 0.0, 1.0).astype(np.float32)


def style_stats_noise(shape: Sequence[int], style: np.ndarray, *, seed: int = 0) -> np.ndarray:
  """Gaussian noise `[H, W, 3]` with the style image's per-channel mean and standard deviation, clipped."""
  style = np.asarray(style, np.float32).reshape(-1, 3)
  noise = np.random.default_rng(seed).standard_normal(tuple(shape)).astype(np.float32)
  return np.clip(noise * style.std(0) + style.mean(0), 0.0, 1.0).astype(np.float32)


def init_state(image: jax.typing.ArrayLike, optimizer: optax.GradientTransformation) -> StylizeState:
  image = jnp.asarray(image, jnp.float32)
  # Strong dtypes: optax's line-search info starts weakly typed, which would make the first step's output
  # state differ in type from its input and the jitted step compile twice for one image shape.
  opt_state = jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype=jnp.result_type(x)), optimizer.init(image))
  return StylizeState(image=image, opt_state=opt_state, step=jnp.int32(0))


# ---- the compiled program ----------------------------------------------------------------------------------


def make_budgeted_step(step):
  """`step` with a per-item budget: an item whose `state.step >= budget` keeps its state unchanged.

  Items with different step counts or resume points then share one batch (`nst_jax.engine`); the kept
  state is selected with `jnp.where`, so an active item's update is exactly the plain step's.
  """

  def budgeted(state: StylizeState, targets: Targets, weights: vgg.VGGWeights, budget: jax.Array):
    new_state, value = step(state, targets, weights)
    active = state.step < budget
    new_state = jax.tree.map(lambda new, old: jnp.where(active, new, old), new_state, state)
    return new_state, value

  return budgeted


def _batched(fn: Callable, in_axes: tuple) -> Callable:
  """`jax.vmap(fn, in_axes)`, except that a batch of one calls `fn` on the item itself.

  Under `vmap` the line search's `lax.while_loop` and conditionals become batched selects, which made one
  L-BFGS iteration on XLA:CPU about 2.5x slower for a single picture (scripts/benchmark.py); a single
  picture, the common case, keeps the plain program. The choice is made at trace time from the shapes.
  """
  vmapped = jax.vmap(fn, in_axes=in_axes)

  def call(*args):
    batch = [jax.tree.leaves(a)[0].shape[0] for a, axis in zip(args, in_axes) if axis == 0][0]
    if batch != 1:
      return vmapped(*args)
    items = [jax.tree.map(lambda x: x[0], a) if axis == 0 else a for a, axis in zip(args, in_axes)]
    return jax.tree.map(lambda x: x[None], fn(*items))

  return call


class Stylizer:
  """The compiled, vmapped program of one static config: `jax.jit` once, one compilation per shape.

  Every function takes a leading batch axis on the state, targets and budget (B = 1 is a single picture)
  and broadcasts the weights (`vmap` with `in_axes=None`):
    step(state [B], targets [B], weights, budget [B]) -> (state [B], loss [B])
    evaluate(image [B, H, W, 3], targets [B], weights) -> {'total', 'content', 'style', 'tv'} of [B]
    init_state(image [B, H, W, 3]) -> state [B]
  The run loop lives in `nst_jax.engine`.
  """

  def __init__(self, config: ml_collections.ConfigDict, *, temporal_frames: int = 0):
    validate_config(config)
    self.config = config
    self.spec = loss_spec_from_config(config, temporal_frames=temporal_frames)
    self.optimizer = make_optimizer(config)
    self.linesearch = uses_linesearch(config)
    step = make_budgeted_step(make_step(self.spec, self.optimizer, linesearch=self.linesearch))
    loss_fn = make_loss_fn(self.spec)
    evaluate = lambda image, targets, weights: loss_fn(image, targets, weights)[1]
    init = lambda image: init_state(image, self.optimizer)
    # optax's L-BFGS state cannot be donated (it aliases buffers); the first-order states can.
    self.step = jax.jit(_batched(step, in_axes=(0, 0, None, 0)), donate_argnums=() if self.linesearch else (0,))
    self.evaluate = jax.jit(jax.vmap(evaluate, in_axes=(0, 0, None)))
    self.init_state = jax.jit(jax.vmap(init))

  def compiled_count(self) -> int:
    """How many step programs XLA compiled for this config (one per shape and batch size)."""
    return getattr(self.step, "_cache_size", lambda: 0)()

