"""The report's experiments as library functions: each writes images, a results table and a report page.

- `combinations`: every content x every style, batched by bucket -> a labelled grid (report Figures 13-15).
- `optimizers`: adam, adagrad, rmsprop, sgd, lbfgs on one pair -> images side by side and one loss-curve
  plot (Figures 10, 17-18).
- `ratios`: a grid of content/style weight multipliers relative to the config, e.g. (1, 20), (1, 1),
  (20, 1), in one batch (Figures 19-21).
- `presets`: the named presets of `nst_jax/configs/presets.py` on one pair, in one batch.

Each function takes the photo(s) as float32 `[H, W, 3]` at the output size, the painting(s) (a list is
blended by `style_blend_weights`), a base config (`settings.resolve(...)`) and VGG weights; it runs `Job`s
through `nst_jax.engine`, so every setting of the config applies (colours, coarse-to-fine scales, style
scale, blends, ...), writes into `out_dir` (images, `figure*.png`, `results.csv`, `report.html`,
`report.md`) and returns the table rows. Figures use matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import csv
import html
import os
from typing import Sequence

import ml_collections
import numpy as np

from nst_jax import engine, hooks as hooks_lib, image_io, optimize, settings as settings_lib, tiles, vgg
from nst_jax.configs import presets as presets_lib

EXPERIMENTS = ("combinations", "optimizers", "ratios", "presets")
DEFAULT_RATIOS = ((1.0, 20.0), (1.0, 1.0), (20.0, 1.0))


def _plt():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


class Report:
  """Collects figures and tables; writes `report.html` and `report.md` into `out_dir`."""

  def __init__(self, out_dir: str, title: str, settings: dict):
    self.out_dir, self.title, self.settings = out_dir, title, settings
    self.sections: list[tuple[str, str, str]] = []  # (kind, caption, payload)

  def figure(self, filename: str, caption: str) -> None:
    self.sections.append(("figure", caption, filename))

  def table(self, rows: list[dict], caption: str) -> None:
    self.sections.append(("table", caption, rows))

  def write(self) -> str:
    settings = ", ".join(f"{k}={v}" for k, v in self.settings.items())
    md = [f"# {self.title}", "", f"Settings: {settings}", ""]
    page = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(self.title)}</title>",
            f"<h1>{html.escape(self.title)}</h1>", f"<p>Settings: {html.escape(settings)}</p>"]
    for kind, caption, payload in self.sections:
      if kind == "figure":
        md += [f"![{caption}]({payload})", "", f"*{caption}*", ""]
        page.append(f"<figure><img src='{html.escape(payload)}' style='max-width:100%'>"
                    f"<figcaption>{html.escape(caption)}</figcaption></figure>")
      else:
        columns = list(payload[0]) if payload else []
        md += [f"**{caption}**", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        md += ["| " + " | ".join(_fmt(row[c]) for c in columns) + " |" for row in payload] + [""]
        page.append(f"<h3>{html.escape(caption)}</h3><table border='1' cellpadding='4'><tr>"
                    + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr>"
                    + "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(row[c]))}</td>" for c in columns)
                              + "</tr>" for row in payload) + "</table>")
    for name, text in (("report.md", "\n".join(md)), ("report.html", "\n".join(page))):
      with image_io.atomic_write(os.path.join(self.out_dir, name), "w") as f:
        f.write(text + "\n")
    return os.path.join(self.out_dir, "report.html")


def _fmt(value) -> str:
  return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_table(path: str, rows: list[dict]) -> None:
  with image_io.atomic_write(path, "w") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)


def save_figure(fig, path: str) -> None:
  with image_io.atomic_write(path) as f:
    fig.savefig(f, format="png", dpi=100, bbox_inches="tight")
  _plt().close(fig)


def image_grid(path: str, images: Sequence[Sequence[np.ndarray | None]], row_labels: Sequence[str],
               col_labels: Sequence[str], title: str = "") -> None:
  """A labelled grid figure of `[H, W, 3]` images (None leaves a cell blank)."""
  plt = _plt()
  rows, cols = len(images), len(images[0])
  fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.2 * rows), squeeze=False)
  for r in range(rows):
    for c in range(cols):
      ax = axes[r][c]
      if images[r][c] is not None:
        ax.imshow(np.clip(images[r][c], 0, 1))
      ax.set_xticks([])
      ax.set_yticks([])
      for side in ax.spines.values():
        side.set_visible(images[r][c] is not None)
      if r == 0:
        ax.set_title(col_labels[c], fontsize=9)
      if c == 0:
        ax.set_ylabel(row_labels[r], fontsize=9)
  if title:
    fig.suptitle(title, fontsize=10)
  save_figure(fig, path)


def _settings(config: ml_collections.ConfigDict) -> dict:
  """The report's settings line: size, steps and every setting that differs from the defaults."""
  return {"max_size": config.max_size, "steps": config.steps, **settings_lib.given_settings(config)}


# Progress bars (the command turns them off with --noprogress).
SHOW_PROGRESS = True


def make_job(content: np.ndarray, style: np.ndarray | Sequence[np.ndarray], config: ml_collections.ConfigDict,
             name: str = "", **overrides) -> engine.Job:
  """An engine `Job` whose config is a copy of `config` with `overrides` (e.g. style_weight=30) set as
  given (`lr=None` resets the learning rate to the optimizer's default); the engine validates it."""
  config = ml_collections.ConfigDict(config.to_dict())
  for key, value in overrides.items():
    config[key] = value
  return engine.Job(content=np.asarray(content, np.float32), styles=engine.as_style_list(style), config=config,
                    name=name)


def _run(jobs: list[engine.Job], weights: vgg.VGGWeights, batch_size: int | None, desc: str,
         hooks: Sequence = ()) -> list[engine.Result]:
  """Runs `jobs` on the engine (batched by bucket), with one progress bar."""
  progress = hooks_lib.ProgressBar(desc=desc, disable=not SHOW_PROGRESS)
  with hooks_lib.closing_all(progress):
    return engine.Engine(weights, max_batch=batch_size).run(jobs, hooks=[*hooks, progress])


def combinations(contents: dict[str, np.ndarray], styles: dict[str, np.ndarray],
                 config: ml_collections.ConfigDict, weights: vgg.VGGWeights, out_dir: str, *,
                 batch_size: int | None = None) -> list[dict]:
  """Every content x every style (batched by bucket) -> `combinations.png` grid + table.

  Each cell has one painting, so `style_blend_weights` does not apply here.
  """
  os.makedirs(out_dir, exist_ok=True)
  pairs = [(c, s) for c in contents for s in styles]
  jobs = [make_job(contents[c], styles[s], config, name=f"{c} x {s}", style_blend_weights=None)
          for c, s in pairs]
  results = _run(jobs, weights, batch_size, "combinations")
  table, by_pair = [], {}
  for (c, s), result in zip(pairs, results):
    filename = f"{c}__{s}.png"
    image_io.save_image(os.path.join(out_dir, filename), result.image)
    tiles.write_preview(os.path.join(out_dir, filename), result.image, int(config.tile_preview))
    by_pair[c, s] = result.image
    table.append({"content": c, "style": s, "image": filename, **_losses(result), "seconds": result.seconds})
  grid = [[None] + [styles[s] for s in styles]]
  grid += [[contents[c]] + [by_pair[c, s] for s in styles] for c in contents]
  image_grid(os.path.join(out_dir, "combinations.png"), grid, [""] + list(contents),
             ["content \\ style"] + list(styles))
  write_table(os.path.join(out_dir, "results.csv"), table)
  report = Report(out_dir, "Combinations: every content with every style", _settings(config))
  report.figure("combinations.png", "Rows: content photos; columns: style paintings (top row).")
  report.table(table, "Final losses")
  report.write()
  return table


def _losses(result: engine.Result) -> dict:
  return {f"{k}_loss": result.metrics[k] for k in ("total", "content", "style", "tv")}


def _first(style: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
  """The painting shown in a figure (the first of a blend)."""
  return engine.as_style_list(style)[0]


class LossCurves:
  """Engine hook: the total loss at every logged step of each job, `{job index: ([steps], [losses])}`."""

  def __init__(self):
    self.curves: dict[int, tuple[list[int], list[float]]] = {}

  def on_step(self, event) -> None:
    if event.metrics is not None:
      steps, values = self.curves.setdefault(event.run.index, ([], []))
      steps.append(event.step)
      values.append(event.metrics["total"])


def _plot_curves(path: str, curves: dict[str, tuple[list[int], list[float]]]) -> None:
  fig, ax = _plt().subplots(figsize=(6, 4))
  for name, (steps, values) in curves.items():
    ax.plot(steps, values, label=name)
  ax.set_yscale("log")
  ax.set_xlabel("step")
  ax.set_ylabel("total loss (after the step)")
  ax.legend()
  ax.grid(True, alpha=0.3)
  save_figure(fig, path)


def optimizers(content: np.ndarray, style: np.ndarray | Sequence[np.ndarray], config: ml_collections.ConfigDict,
               weights: vgg.VGGWeights, out_dir: str, *,
               names: Sequence[str] = optimize.OPTIMIZERS) -> list[dict]:
  """Each optimizer (its default lr) on one pair -> `optimizers.png`, `loss_curves.png` + table.

  The losses are evaluated after every step (`log_every=1`) for the curves.
  """
  os.makedirs(out_dir, exist_ok=True)
  jobs = [make_job(content, style, config, name=name, optimizer=name, lr=None, log_every=1) for name in names]
  curves = LossCurves()
  results = _run(jobs, weights, None, "optimizers", hooks=[curves])
  table, images = [], []
  for name, result in zip(names, results):
    filename = f"{name}.png"
    image_io.save_image(os.path.join(out_dir, filename), result.image)
    tiles.write_preview(os.path.join(out_dir, filename), result.image, int(config.tile_preview))
    images.append(result.image)
    table.append({"optimizer": name, "lr": optimize.DEFAULT_LR[name], "image": filename, **_losses(result),
                  "seconds": result.seconds})
  image_grid(os.path.join(out_dir, "optimizers.png"), [[content, _first(style)] + images], [""],
             ["content", "style"] + list(names))
  _plot_curves(os.path.join(out_dir, "loss_curves.png"),
               {name: curves.curves.get(i, ([], [])) for i, name in enumerate(names)})
  write_table(os.path.join(out_dir, "results.csv"), table)
  report = Report(out_dir, "Optimizers on one pair", _settings(config))
  report.figure("optimizers.png", "Content, style, then the result of each optimizer at its default lr.")
  report.figure("loss_curves.png", "Total loss per step (log scale).")
  report.table(table, "Final losses")
  report.write()
  return table


def _weight_sweep(content, style, config, weights, out_dir, *, settings: list[tuple[str, dict]], title: str,
                  figure: str, caption: str, batch_size: int | None) -> list[dict]:
  """The same pair with different config overrides, batched -> a row of images + table + report."""
  os.makedirs(out_dir, exist_ok=True)
  jobs = [make_job(content, style, config, name=label, **overrides) for label, overrides in settings]
  results = _run(jobs, weights, batch_size, title)
  table, images = [], []
  for (label, _), job, result in zip(settings, jobs, results):
    filename = f"{label.replace(' ', '_').replace(':', '-').replace('/', '-')}.png"
    image_io.save_image(os.path.join(out_dir, filename), result.image)
    tiles.write_preview(os.path.join(out_dir, filename), result.image, int(config.tile_preview))
    images.append(result.image)
    table.append({"setting": label, "content_weight": float(job.config.content_weight),
                  "style_weight": float(job.config.style_weight), "tv_weight": float(job.config.tv_weight),
                  "image": filename, **_losses(result)})
  image_grid(os.path.join(out_dir, figure), [[content, _first(style)] + images], [""],
             ["content", "style"] + [label for label, _ in settings])
  write_table(os.path.join(out_dir, "results.csv"), table)
  report = Report(out_dir, title, _settings(config))
  report.figure(figure, caption)
  report.table(table, "Weights and final losses")
  report.write()
  return table


def ratios(content: np.ndarray, style: np.ndarray | Sequence[np.ndarray], config: ml_collections.ConfigDict,
           weights: vgg.VGGWeights, out_dir: str, *, multipliers: Sequence[tuple[float, float]] = DEFAULT_RATIOS,
           batch_size: int | None = None) -> list[dict]:
  """Content/style weights `(a * content_weight, b * style_weight)` for each `(a, b)`, in one batch."""
  settings = [(f"{a:g}:{b:g}", {"content_weight": a * config.content_weight,
                                "style_weight": b * config.style_weight}) for a, b in multipliers]
  return _weight_sweep(content, style, config, weights, out_dir, settings=settings,
                       title="Content/style weight ratios", figure="ratios.png", batch_size=batch_size,
                       caption="Multipliers a:b of the content and style weights relative to the settings.")


def presets(content: np.ndarray, style: np.ndarray | Sequence[np.ndarray], config: ml_collections.ConfigDict,
            weights: vgg.VGGWeights, out_dir: str, *, names: Sequence[str] = tuple(presets_lib.PRESETS),
            batch_size: int | None = None) -> list[dict]:
  """Each named look (`--preset NAME`) on one pair, in one batch: its fields replace the config's."""
  settings = [(name, presets_lib.get_preset(name)) for name in names]
  return _weight_sweep(content, style, config, weights, out_dir, settings=settings, title="Presets",
                       figure="presets.png", batch_size=batch_size,
                       caption="The presets of nst_jax/configs/presets.py (nst-jax --preset NAME).")
