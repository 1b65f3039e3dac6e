"""What a look means under each loss normalisation: final relative residuals across paintings, sizes and VGGs.

Residuals (`optimize.relative_residuals`, whatever the run's normalisation): content ||F - P||^2 / ||P||^2,
style sum_l w_l ||G_l - A_l||^2 / ||A_l||^2. Jobs of one photo run as one engine batch.

  # Ratio sweep (how the looks of nst_jax/configs/presets.py were chosen):
  python scripts/measure_looks.py --measure sweep --normalization invariant --style_weights 1,3,10,30,100,300
  # The old gatys looks, for comparison:
  python scripts/measure_looks.py --measure sweep --normalization gatys --style_weights 500,1e4,2e5 \
      --tv_weight 1e-3
  # Spread of each look's residuals across every pair (max / min), gatys vs invariant; gatys_matched is gatys
  # with the weights that equal the invariant look on the median pair (the old looks' 1e4 was tuned elsewhere):
  python scripts/measure_looks.py --measure consistency --normalization gatys,gatys_matched,invariant
  # The style residual at the photo, per pair (the spread before any weight acts):
  python scripts/measure_looks.py --measure start
  # Preview vs render: the same job at --sizes 256,512,1024; each render downscaled to the preview's size:
  python scripts/measure_looks.py --measure sizes --sizes 256,512,1024 --contents tubingen --styles starry_night
  # Pictures of each look (--normalization's first) on --contents x --styles, a grid saved to --figure:
  python scripts/measure_looks.py --measure figure --normalization invariant --max_size 256 --steps 150 \
      --pairs tubingen+starry_night,chelsea+the_scream --figure docs/images/looks.jpg
  # The invariant weights that equal given gatys weights at the start (the photo), per pair:
  python scripts/measure_looks.py --measure convert --max_size 512
  # A VGG19 whose conv layers are rescaled by factors in [0.1, 10]: same picture under invariant? --x64 runs
  # in float64, where rounding no longer moves Adam's path (--control shows how far it moves in float32):
  python scripts/measure_looks.py --measure invariance --max_size 128 --x64

Pairs: every photo x painting of --data (or --contents / --styles by file stem). Random VGG19 weights unless
--weights. `--set key=value,...` overrides settings of every run (e.g. `--set optimizer=lbfgs`). Prints one
table per measure, with `uptime`'s load.
"""

from __future__ import annotations

import glob
import os
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from nst_jax import engine, image_io, inputs, optimize, settings, vgg_normalize, weights as weights_lib
from nst_jax.configs import presets

FLAGS = flags.FLAGS
SHARED_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")
flags.DEFINE_enum("measure", "sweep", ["sweep", "consistency", "start", "sizes", "invariance", "convert", "figure"],
                  "What to measure.")
flags.DEFINE_string("data", SHARED_DATA, "Folder with content/ and styles/.")
flags.DEFINE_list("contents", [], "Photo file stems (empty = all).")
flags.DEFINE_list("styles", [], "Painting file stems (empty = all).")
flags.DEFINE_list("pairs", [], "Only these pairs, photo+painting file stems (e.g. tubingen+starry_night).")
flags.DEFINE_list("normalization", ["gatys", "invariant"],
                  "Loss normalisations to compare; gatys_matched: gatys with the weights equal to the invariant "
                  "look's on the median pair at --max_size (consistency, sizes).")
flags.DEFINE_list("looks", list(presets.PRESETS), "Looks (consistency, sizes, invariance).")
flags.DEFINE_list("style_weights", ["1", "10", "100"], "sweep: style weights (content weight 1).")
flags.DEFINE_float("tv_weight", None, "sweep: TV weight (default: the default config's).")
flags.DEFINE_integer("max_size", 128, "Output size (longest side).")
flags.DEFINE_list("sizes", ["256", "512"], "sizes: the preview size, then render sizes.")
flags.DEFINE_integer("steps", 200, "Steps per picture.")
flags.DEFINE_list("set", [], "Settings for every run, key=value (e.g. optimizer=lbfgs).")
flags.DEFINE_boolean("x64", False, "VGG and losses in float64 (the picture and Adam stay float32).")
flags.DEFINE_string("figure", "looks.jpg", "figure: output JPEG.")
flags.DEFINE_string("weights", "random", "VGG19 weights (random = seed 0).")
flags.DEFINE_boolean("control", False, "invariance: also a rounding-sized rescaling (1 + 2^-20 per layer).")


def _load():
  if FLAGS.x64:
    jax.config.update("jax_enable_x64", True)
  weights = weights_lib.load_vgg19(FLAGS.weights)
  if FLAGS.x64:  # The VGG casts its input to its weights' dtype: features, losses and gradients in float64.
    weights = weights.replace(params=jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), weights.params))
  return uptime(), weights


def uptime() -> str:
  return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def pairs() -> list[tuple[str, str]]:
  def files(kind, stems):
    paths = sorted(glob.glob(os.path.join(FLAGS.data, kind, "*")))
    return [p for p in paths if not stems or os.path.splitext(os.path.basename(p))[0] in stems]
  return [(c, s) for c in files("content", FLAGS.contents) for s in files("styles", FLAGS.styles)
          if not FLAGS.pairs or f"{stem(c)}+{stem(s)}" in FLAGS.pairs]


def stem(path: str) -> str:
  return os.path.splitext(os.path.basename(path))[0]


def look_settings(look: str, normalization: str, weights=None) -> dict:
  """The look's weights under `normalization` (gatys: the old looks, as `settings.resolve` gives them;
  gatys_matched: gatys weights equal to the invariant look's on the median pair)."""
  if normalization == "gatys_matched":
    k_s, k_tv = matched_factors(weights)
    look_weights = presets.PRESETS[look]
    return {"loss_normalization": "gatys", "content_weight": 1.0,
            "style_weight": look_weights["style_weight"] / look_weights["content_weight"] * k_s,
            "tv_weight": look_weights["tv_weight"] / look_weights["content_weight"] * k_tv}
  return {"preset": look, "loss_normalization": normalization}


def overrides() -> dict:
  values = {}
  for item in FLAGS.set:
    key, sep, value = item.partition("=")
    if not sep:
      raise app.UsageError(f"--set takes key=value, got {item!r}")
    values[key.strip()] = value.strip()
  return values


def make_job(content: str, style: str, values: dict, size: int) -> engine.Job:
  config = settings.resolve({"max_size": size, "steps": FLAGS.steps, "log_every": FLAGS.steps, **overrides(),
                             **values})
  job, _ = inputs.load_job(content, [style], config, name=f"{stem(content)}+{stem(style)}")
  return job


def run(jobs: list[engine.Job], weights) -> list[np.ndarray]:
  return [r.image for r in engine.Engine(weights).run(jobs)]


def residuals(job: engine.Job, image: np.ndarray, weights) -> dict:
  styles = [engine.resize_style(s, job.content.shape, float(job.config.style_scale)) for s in job.styles]
  return optimize.relative_residuals(weights, job.config, job.content, styles, image)


def spread(values) -> str:
  values = np.asarray(values, np.float64)
  return f"median {np.median(values):.3g}  min {values.min():.3g}  max {values.max():.3g}  " \
         f"max/min {values.max() / values.min():.3g}"


def sweep(weights) -> None:
  for norm in FLAGS.normalization:
    rows = {}
    for content, style in pairs():
      base = {"loss_normalization": norm, "content_weight": 1.0}
      if FLAGS.tv_weight is not None:
        base["tv_weight"] = FLAGS.tv_weight
      jobs = [make_job(content, style, {**base, "style_weight": float(w)}, FLAGS.max_size)
              for w in FLAGS.style_weights]
      start = residuals(jobs[0], jobs[0].content, weights)["style"]
      for w, job, image in zip(FLAGS.style_weights, jobs, run(jobs, weights)):
        r = residuals(job, image, weights)
        rows.setdefault(w, []).append((r["content"], r["style"], r["style"] / start))
    print(f"\n{norm}: content weight 1, style weight w, {FLAGS.max_size} px, {FLAGS.steps} steps, "
          f"{len(pairs())} pairs; residuals at the end (median over pairs [min, max])")
    print("w | content | style | style / style at the photo")
    for w, values in rows.items():
      v = np.asarray(values)
      print(f"{w} | " + " | ".join(f"{np.median(v[:, i]):.3g} [{v[:, i].min():.3g}, {v[:, i].max():.3g}]"
                                    for i in range(3)))


def consistency(weights) -> None:
  for look in FLAGS.looks:
    for norm in FLAGS.normalization:
      values = {"content": [], "style": []}
      for content in sorted({c for c, _ in pairs()}):
        jobs = [make_job(content, s, look_settings(look, norm, weights), FLAGS.max_size) for c, s in pairs()
                if c == content]
        for job, image in zip(jobs, run(jobs, weights)):
          r = residuals(job, image, weights)
          values["content"].append(r["content"])
          values["style"].append(r["style"])
      for term, v in values.items():
        print(f"{look:9s} {norm:9s} {term:7s} ({len(v)} pairs): {spread(v)}", flush=True)


def start(weights) -> None:
  """The style residual at the photo (where every run starts), per pair: how far apart the pairs are before
  any weight acts (the same under every normalisation)."""
  values = []
  for content, style in pairs():
    job = make_job(content, style, {}, FLAGS.max_size)
    values.append(residuals(job, job.content, weights)["style"])
    print(f"{stem(content)}+{stem(style)}: style residual at the photo {values[-1]:.3g}", flush=True)
  print(f"style residual at the photo ({len(values)} pairs): {spread(values)}")


def sizes(weights) -> None:
  preview_size, *render_sizes = (int(s) for s in FLAGS.sizes)
  for content, style in pairs():
    for look in FLAGS.looks:
      for norm in FLAGS.normalization:
        values = look_settings(look, norm, weights)
        preview_job = make_job(content, style, values, preview_size)
        preview = run([preview_job], weights)[0]
        r_small = residuals(preview_job, preview, weights)
        for size in render_sizes:
          render_job = make_job(content, style, values, size)
          render = run([render_job], weights)[0]
          down = image_io.resize(render, preview.shape[:2])
          r_large = residuals(render_job, render, weights)
          print(f"{stem(content)}+{stem(style)} {look} {norm}: mean |preview {preview_size} - render {size} "
                f"downscaled| {np.mean(np.abs(preview - down)) * 255:.2f}/255; style residual {preview_size} px "
                f"{r_small['style']:.3g}, {size} px {r_large['style']:.3g} (ratio "
                f"{r_large['style'] / r_small['style']:.3g}); content {r_small['content']:.3g}, "
                f"{r_large['content']:.3g}", flush=True)


def invariance(weights) -> None:
  """Original vs rescaled VGG (factors in [0.1, 10]); with --control, also vs a VGG whose every layer is
  multiplied by 1 + 2^-20 (a rounding-sized change): how far float32 rounding alone moves the path."""
  nets = {"rescaled": vgg_normalize.rescale_layers(weights, vgg_normalize.random_factors(0))}
  if FLAGS.control:
    nets["control (1 + 2^-20)"] = vgg_normalize.rescale_layers(
        weights, {conv: 1.0 + 2.0**-20 for conv in vgg_normalize.vgg.CONV_LAYERS})
  for content, style in pairs():
    for look in FLAGS.looks:
      for norm in FLAGS.normalization:
        job = make_job(content, style, look_settings(look, norm, weights), FLAGS.max_size)
        a = run([job], weights)[0]
        for name, net in nets.items():
          d = np.abs(a - run([job], net)[0])
          print(f"{stem(content)}+{stem(style)} {look} {norm}: max |original - {name}| {d.max() * 255:.3g}/255, "
                f"mean {d.mean() * 255:.3g}/255", flush=True)


def conversion(weights, content: str, style: str) -> tuple[float, float, float]:
  """(k_c, k_s, k_tv): gatys term / invariant term at the photo, for content (0.5 ||P||^2), style (at the
  photo, where the content term is 0) and TV; so gatys (1, beta, theta) ~ invariant (1, beta * k_s / k_c,
  theta * k_tv / k_c)."""
  job = make_job(content, style, {"loss_normalization": "gatys"}, FLAGS.max_size)
  styles = [engine.resize_style(s, job.content.shape, float(job.config.style_scale)) for s in job.styles]
  terms = {}
  for norm in ("gatys", "invariant"):
    job.config.loss_normalization = norm
    spec = optimize.loss_spec_from_config(job.config)
    targets = optimize.make_targets(weights, spec, job.content, styles, content_weight=1, style_weight=1,
                                    tv_weight=1)
    terms[norm] = optimize._evaluate(spec)(job.content, targets, weights)
  k_c = 0.5 * float(np.sum(np.square(next(iter(targets.content_features.values())))))  # One content layer.
  return (k_c, float(terms["gatys"]["style"]) / float(terms["invariant"]["style"]),
          float(terms["gatys"]["tv"]) / float(terms["invariant"]["tv"]))


_MATCHED = {}


def matched_factors(weights) -> tuple[float, float]:
  """Median over pairs of k_c / k_s and k_c / k_tv: invariant weights times these are the gatys weights that
  equal them on the median pair at --max_size."""
  if not _MATCHED:
    k = np.asarray([conversion(weights, c, s) for c, s in pairs()])
    _MATCHED["factors"] = (float(np.median(k[:, 0] / k[:, 1])), float(np.median(k[:, 0] / k[:, 2])))
    print(f"gatys_matched: gatys weights = invariant weights x ({_MATCHED['factors'][0]:.4g} style, "
          f"{_MATCHED['factors'][1]:.4g} TV), the median over {len(k)} pairs at {FLAGS.max_size} px", flush=True)
  return _MATCHED["factors"]


def convert(weights) -> None:
  """The invariant weights equal to the old balanced look (gatys) at the photo, per pair."""
  gatys = {k: float(v) for k, v in presets.GATYS_LOOKS[presets.DEFAULT_PRESET].items()}
  rows = []
  for content, style in pairs():
    k_c, k_s, k_tv = conversion(weights, content, style)
    beta = gatys["style_weight"] / gatys["content_weight"] * k_s / k_c
    theta = gatys["tv_weight"] / gatys["content_weight"] * k_tv / k_c
    rows.append((beta, theta))
    print(f"{stem(content)}+{stem(style)}: k_c {k_c:.3g} k_s {k_s:.3g} k_tv {k_tv:.3g}; gatys {gatys} = "
          f"invariant style_weight {beta:.3g}, tv_weight {theta:.3g} (content 1)", flush=True)
  rows = np.asarray(rows)
  print(f"equivalent invariant style_weight: {spread(rows[:, 0])}\nequivalent tv_weight: {spread(rows[:, 1])}")


def figure(weights) -> None:
  """Rows: pairs (photo, painting, then each look in one engine batch); saved as a JPEG grid."""
  import tempfile
  from PIL import Image
  from nst_jax import experiments
  norm, rows, labels = FLAGS.normalization[0], [], []
  for content, style in pairs():
    jobs = [make_job(content, style, look_settings(look, norm, weights), FLAGS.max_size) for look in FLAGS.looks]
    painting = image_io.resize(jobs[0].styles[0], jobs[0].content.shape[:2])
    rows.append([jobs[0].content, painting] + run(jobs, weights))
    labels.append(f"{stem(content)} + {stem(style)}")
    print(f"{labels[-1]}: done", flush=True)
  with tempfile.TemporaryDirectory() as tmp:
    png = os.path.join(tmp, "grid.png")
    experiments.image_grid(png, rows, labels, ["photo", "painting"] + list(FLAGS.looks),
                           title=f"looks ({norm}), {FLAGS.max_size} px, {FLAGS.steps} steps, {weights.source}")
    with image_io.atomic_write(FLAGS.figure) as f:
      Image.open(png).convert("RGB").save(f, format="JPEG", quality=85)
  print(f"wrote {FLAGS.figure}")


def main(argv):
  del argv
  load, weights = _load()
  print(f"{FLAGS.measure}: {FLAGS.max_size} px, {FLAGS.steps} steps, settings {overrides() or 'default'}, "
        f"weights {weights.source}{' in float64' if FLAGS.x64 else ''}; {load}")
  {"sweep": sweep, "consistency": consistency, "sizes": sizes, "invariance": invariance,
   "convert": convert, "figure": figure, "start": start}[FLAGS.measure](weights)
  print(f"done; {uptime()}")


if __name__ == "__main__":
  app.run(main)
