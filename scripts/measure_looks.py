"""What a look means under each loss normalisation: final relative residuals across paintings, sizes and VGGs.

Residuals (`optimize.relative_residuals`, whatever the run's normalisation): content ||F - P||^2 / ||P||^2,
style sum_l w_l ||G_l - A_l||^2 / ||A_l||^2. Jobs of one photo run as one engine batch.

  # Ratio sweep (how the looks of nst_jax/configs/presets.py were chosen):
  python scripts/measure_looks.py --measure sweep --normalization invariant --style_weights 1,3,10,30,100,300
  # The old gatys looks, for comparison:
  python scripts/measure_looks.py --measure sweep --normalization gatys --style_weights 500,1e4,2e5 \
      --tv_weight 1e-3
  # Spread of each look's residuals across every pair (max / min), gatys vs invariant:
  python scripts/measure_looks.py --measure consistency
  # Preview vs render: the same job at --sizes 256,512; the render downscaled to the preview's size:
  python scripts/measure_looks.py --measure sizes --sizes 256,512 --contents tubingen --styles starry_night
  # The invariant weights that equal given gatys weights at the start (the photo), per pair:
  python scripts/measure_looks.py --measure convert --max_size 512
  # A VGG19 whose conv layers are rescaled by factors in [0.1, 10]: same picture under invariant?
  python scripts/measure_looks.py --measure invariance --max_size 256

Pairs: every photo x painting of --data (or --contents / --styles by file stem). Random VGG19 weights unless
--weights. Prints one table per measure, with `uptime`'s load.
"""

from __future__ import annotations

import glob
import os
import subprocess

import numpy as np
from absl import app, flags

from nst_jax import engine, image_io, inputs, optimize, settings, vgg_normalize, weights as weights_lib
from nst_jax.configs import presets

FLAGS = flags.FLAGS
SHARED_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")
flags.DEFINE_enum("measure", "sweep", ["sweep", "consistency", "sizes", "invariance", "convert"],
                  "What to measure.")
flags.DEFINE_string("data", SHARED_DATA, "Folder with content/ and styles/.")
flags.DEFINE_list("contents", [], "Photo file stems (empty = all).")
flags.DEFINE_list("styles", [], "Painting file stems (empty = all).")
flags.DEFINE_list("normalization", ["gatys", "invariant"], "Loss normalisations to compare.")
flags.DEFINE_list("looks", list(presets.PRESETS), "Looks (consistency, sizes, invariance).")
flags.DEFINE_list("style_weights", ["1", "10", "100"], "sweep: style weights (content weight 1).")
flags.DEFINE_float("tv_weight", None, "sweep: TV weight (default: the default config's).")
flags.DEFINE_integer("max_size", 128, "Output size (longest side).")
flags.DEFINE_list("sizes", ["256", "512"], "sizes: preview and render sizes.")
flags.DEFINE_integer("steps", 200, "Adam steps per picture.")
flags.DEFINE_string("weights", "random", "VGG19 weights (random = seed 0).")
flags.DEFINE_boolean("control", False, "invariance: also a rounding-sized rescaling (1 + 2^-20 per layer).")


def _load():
  return uptime(), weights_lib.load_vgg19(FLAGS.weights)


def uptime() -> str:
  return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def pairs() -> list[tuple[str, str]]:
  def files(kind, stems):
    paths = sorted(glob.glob(os.path.join(FLAGS.data, kind, "*")))
    return [p for p in paths if not stems or os.path.splitext(os.path.basename(p))[0] in stems]
  return [(c, s) for c in files("content", FLAGS.contents) for s in files("styles", FLAGS.styles)]


def stem(path: str) -> str:
  return os.path.splitext(os.path.basename(path))[0]


def look_settings(look: str, normalization: str) -> dict:
  """The look's weights under `normalization` (gatys: the old looks, as `settings.resolve` gives them)."""
  return {"preset": look, "loss_normalization": normalization}


def make_job(content: str, style: str, values: dict, size: int) -> engine.Job:
  config = settings.resolve({"max_size": size, "steps": FLAGS.steps, "log_every": FLAGS.steps, **values})
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
    print(f"\n{norm}: content weight 1, style weight w, {FLAGS.max_size} px, {FLAGS.steps} Adam steps, "
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
        jobs = [make_job(content, s, look_settings(look, norm), FLAGS.max_size) for c, s in pairs() if c == content]
        for job, image in zip(jobs, run(jobs, weights)):
          r = residuals(job, image, weights)
          values["content"].append(r["content"])
          values["style"].append(r["style"])
      for term, v in values.items():
        print(f"{look:9s} {norm:9s} {term:7s} ({len(v)} pairs): {spread(v)}", flush=True)


def sizes(weights) -> None:
  small, large = (int(s) for s in FLAGS.sizes)
  for content, style in pairs():
    for look in FLAGS.looks:
      for norm in FLAGS.normalization:
        values = look_settings(look, norm)
        preview_job, render_job = (make_job(content, style, values, size) for size in (small, large))
        preview, render = run([preview_job], weights)[0], run([render_job], weights)[0]
        down = image_io.resize(render, preview.shape[:2])
        r_small, r_large = residuals(preview_job, preview, weights), residuals(render_job, render, weights)
        print(f"{stem(content)}+{stem(style)} {look} {norm}: mean |preview - render downscaled| "
              f"{np.mean(np.abs(preview - down)) * 255:.2f}/255; style residual {small} px "
              f"{r_small['style']:.3g}, {large} px {r_large['style']:.3g} (ratio "
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
        job = make_job(content, style, look_settings(look, norm), FLAGS.max_size)
        a = run([job], weights)[0]
        for name, net in nets.items():
          d = np.abs(a - run([job], net)[0])
          print(f"{stem(content)}+{stem(style)} {look} {norm}: max |original - {name}| {d.max() * 255:.3g}/255, "
                f"mean {d.mean() * 255:.3g}/255", flush=True)


def convert(weights) -> None:
  """Gatys terms / invariant terms at the photo: 0.5 ||P||^2 for content, sum_l w_l E_l ratio for style (at the
  photo, where the content term is 0) and the TV sum / mean; so gatys (1, beta, theta) ~ invariant (1, beta *
  k_s / k_c, theta * k_tv / k_c)."""
  gatys = {k: float(v) for k, v in presets.GATYS_LOOKS[presets.DEFAULT_PRESET].items()}
  rows = []
  for content, style in pairs():
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
    k_s = float(terms["gatys"]["style"]) / float(terms["invariant"]["style"])
    k_tv = float(terms["gatys"]["tv"]) / float(terms["invariant"]["tv"])
    beta = gatys["style_weight"] / gatys["content_weight"] * k_s / k_c
    theta = gatys["tv_weight"] / gatys["content_weight"] * k_tv / k_c
    rows.append((beta, theta))
    print(f"{stem(content)}+{stem(style)}: k_c {k_c:.3g} k_s {k_s:.3g} k_tv {k_tv:.3g}; gatys {gatys} = "
          f"invariant style_weight {beta:.3g}, tv_weight {theta:.3g} (content 1)", flush=True)
  rows = np.asarray(rows)
  print(f"equivalent invariant style_weight: {spread(rows[:, 0])}\nequivalent tv_weight: {spread(rows[:, 1])}")


def main(argv):
  del argv
  load, weights = _load()
  print(f"{FLAGS.measure}: {FLAGS.max_size} px, {FLAGS.steps} Adam steps, weights {weights.source}; {load}")
  {"sweep": sweep, "consistency": consistency, "sizes": sizes, "invariance": invariance,
   "convert": convert}[FLAGS.measure](weights)
  print(f"done; {uptime()}")


if __name__ == "__main__":
  app.run(main)
