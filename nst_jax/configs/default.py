"""Default settings for one style-transfer run.

    nst-jax --content photo.jpg --style painting.jpg --output out.png

Every field can be overridden from the command line (`--steps 1000`) or in code
(`config = get_config(); config.steps = 1000`).
"""

import ml_collections

STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
CONTENT_LAYERS = ("relu4_2",)


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # Output size: the longest side in pixels (the content image is resized to it), and the steps: the full look.
  # Without an accelerator `settings.resolve` makes them 256 and 100 (settings.MACHINE_DEFAULTS: a run that
  # finishes in about a minute on 2 CPU cores); a config made here directly keeps these.
  config.max_size = 512
  config.steps = 500
  # Optimizer: adam | adagrad | rmsprop | sgd | lbfgs. lr None = the optimizer's default (adam 0.02 as in
  # the report's Table 1; lbfgs 1.0 with a zoom line search; sgd 1e-9: plain SGD steps scale with the
  # loss, which is large (about 1e10 at the start), so tune it with --lr).
  config.optimizer = "adam"
  config.lr = ml_collections.FieldReference(None, field_type=float)
  config.adam_b1 = 0.99
  # 1e-8 (optax's): far below the invariant losses' gradients (rms ~7e-4 per pixel at 128 px for the balanced
  # look, ~5e-5 at 512 px, ~3e-6 at 2048 px), so Adam steps alike at every size and loss scale, as it did
  # under gatys (gradients ~1e7 vs eps 0.1); the report's 0.1 (`--preset report`) would stall it here.
  config.adam_eps = 1e-8
  config.sgd_momentum = 0.0
  config.lbfgs_memory = 10
  # L-BFGS zoom line search: most evaluations per iteration, first trial step ('one' or 'keep').
  config.lbfgs_linesearch_steps = 20
  config.lbfgs_initial_guess = "one"
  # L-BFGS initial inverse Hessian gamma * M with M damping spatial frequency f by |f|^-p (nst_jax/lbfgs.py);
  # 0 = optax's stock L-BFGS (M = I). The quality preset uses 0.3.
  config.lbfgs_precondition = 0.0
  # Loss = content_weight * content + style_weight * style + tv_weight * tv (Gatys et al. 2016).
  # The `balanced` look (configs/presets.py) under loss_normalization 'invariant'; `--loss_normalization gatys`
  # alone gives the old defaults 1, 1e4, 1e-3 (settings.resolve).
  config.content_weight = 1.0
  config.style_weight = 3.0
  config.tv_weight = 1e-3
  # Spatial control (--style_region): content weight multiplier where no region covers the picture. Those
  # pixels are the photo whatever it is (optimize.picture); it weighs the photo's features there, whose
  # receptive fields reach into a region's edge: 10 gives a gradual edge, 1 paints up to it
  # (docs/spatial-control.md). No effect without regions.
  config.outside_content_weight = 10.0
  config.tv_kind = "l2"
  # How each loss term is normalised (nst_jax/losses.py): gatys (Gatys et al. 2016) | mean (the TensorFlow
  # tutorial's, the report's Table 1) | invariant (each term divided by its target's squared norm, TV a mean:
  # the weights mean the same for every painting, size and set of VGG weights).
  config.loss_normalization = "invariant"
  config.content_layers = CONTENT_LAYERS
  config.style_layers = STYLE_LAYERS
  # Per style layer weights w_l; None = equal weights 1/L.
  config.style_layer_weights = ml_collections.FieldReference(None, field_type=tuple)
  config.pooling = "max"
  # Seamless tiles: circular padding in every VGG conv and a wrapped TV term (the picture is a torus);
  # tile_preview N > 0 also writes an N x N mosaic of the result next to each output (docs/tiles-and-cost.md).
  config.tile = False
  config.tile_preview = 0
  config.remat = False
  # Rematerialise VGG blocks automatically for scales with more pixels than this (0 = never). Off by
  # default: on XLA:CPU block remat did not lower peak memory (+20% in XLA's own analysis; see
  # docs/quality-and-speed.md), so it is left for accelerators to try.
  config.remat_above_pixels = 0
  # Coarse-to-fine (nst_jax/engine.py stages): scale_start 0 = one scale at max_size. Otherwise sizes
  # scale_start, scale_start * scale_factor, ... up to max_size; each coarser scale runs scale_steps steps,
  # the final scale runs `steps`, and each starts from the upsampled previous result.
  config.scale_start = 0
  config.scale_factor = 2 ** 0.5
  config.scale_steps = 100
  # Colour: none | luminance (style on luminance, photo's chroma) | histogram (style colours -> photo's).
  config.preserve_colors = "none"
  # Style image longest side = style_scale * output longest side (per scale).
  config.style_scale = 1.0
  # Blend weights for several style images (None = equal); normalised to sum to 1.
  config.style_blend_weights = ml_collections.FieldReference(None, field_type=tuple)
  # Starting image: content | recolored_content (the photo with the style's colour mean and covariance) |
  # noise | style | style_stats (noise with the style's colour mean/std).
  config.init = "content"
  config.seed = 0
  config.log_every = 10
  # Video only (`nst-jax video`, nst_jax/video.py; image jobs refuse them): weight of the temporal loss
  # (Ruder et al. 2016), sequential (frame by frame) or multipass (all frames of a pass in one batch, passes
  # alternating direction, `steps` split over the passes), the earlier frames each frame is pulled towards
  # ("1,2,4": t-1, t-2 and t-4, nearer first) and the optical flow (OpenCV DIS or Farneback). The temporal
  # loss is a mean over pixels, like every term under the default invariant loss normalisation, so its weight
  # does not follow the frame size: 100 meets the flicker target (E <= 1/4 of per-frame) at 48 and 96 px with
  # random VGG weights (scripts/benchmark_video.py; under --loss_normalization gatys it needs about 1e12).
  config.temporal_weight = 100.0
  config.video_mode = "sequential"
  config.temporal_frames = "1"
  config.passes = 6
  config.flow_method = "dis"
  # The part of the clip stylised (video only, nst_jax/video_io.py `Selection`): from `start` seconds, for
  # `duration` seconds or `frames` frames (None: to the end); `fps` is a folder of frames' rate (None: 25).
  config.start = 0.0
  config.duration = None
  config.frames = None
  config.fps = None
  return config
