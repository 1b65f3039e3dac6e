"""The report's experiments as library functions: each writes images, a results table and a report page.

- `combinations`: every content x every style in one batch -> a labelled grid (report Figures 13-15).
- `optimizers`: adam, adagrad, rmsprop, sgd, lbfgs on one pair -> images side by side and one loss-curve
  plot (Figures 10, 17-18).
- `ratios`: a grid of content/style weight multipliers relative to the config, e.g. (1, 20), (1, 1),
  (20, 1), in one batch (Figures 19-21).
- `presets`: the named presets of `nst_jax/configs/presets.py` on one pair, in one batch.

Each function takes float32 `[H, W, 3]` images already at the output size, a base config and VGG weights,
writes into `out_dir` (images, `figure*.png`, `results.csv`, `report.html`, `report.md`) and returns the
table rows. Figures use matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import csv
import html
import os
from typing import Sequence

import ml_collections
import numpy as np

from nst_jax import batch, image_io, optimize, vgg
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
  return {k: config[k] for k in ("max_size", "steps", "optimizer", "lr", "content_weight", "style_weight",
                                 "tv_weight", "init")}


# Progress bars per batch (the command turns them off with --noprogress).
SHOW_PROGRESS = True


def _run(items, weights, batch_size):
  """Runs `items` batched by bucket, with a progress bar per compiled batch."""
  from tqdm import tqdm

  def callbacks_for(chunk):
    first = items[chunk[0]]
    h, w = first.content.shape[:2]
    bar = tqdm(total=int(first.config.steps), desc=f"{len(chunk)} x {w}x{h} {first.config.optimizer}",
               unit="step", leave=False, disable=not SHOW_PROGRESS, dynamic_ncols=True)

    def callback(step, state, metrics):
      bar.update(step - bar.n)
      if bar.n >= bar.total:
        bar.close()

    return [callback]

  return batch.BatchStylizer(weights, batch_size=batch_size).run(items, callbacks_for=callbacks_for)


def combinations(contents: dict[str, np.ndarray], styles: dict[str, np.ndarray],
                 config: ml_collections.ConfigDict, weights: vgg.VGGWeights, out_dir: str, *,
                 batch_size: int | None = None) -> list[dict]:
  """Every content x every style (one batch per output shape) -> `combinations.png` grid + table."""
  os.makedirs(out_dir, exist_ok=True)
  pairs = [(c, s) for c in contents for s in styles]
  items = [batch.item_from_config(contents[c], styles[s], config, name=f"{c} x {s}") for c, s in pairs]
  results = _run(items, weights, batch_size)
  table, by_pair = [], {}
  for (c, s), result in zip(pairs, results):
    filename = f"{c}__{s}.png"
    image_io.save_image(os.path.join(out_dir, filename), result.image)
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


def _losses(result: batch.Result) -> dict:
  return {f"{k}_loss": result.metrics[k] for k in ("total", "content", "style", "tv")}


def optimizers(content: np.ndarray, style: np.ndarray, config: ml_collections.ConfigDict,
               weights: vgg.VGGWeights, out_dir: str, *,
               names: Sequence[str] = optimize.OPTIMIZERS) -> list[dict]:
  """Each optimizer (its default lr) on one pair -> `optimizers.png`, `loss_curves.png` + table."""
  os.makedirs(out_dir, exist_ok=True)
  plt = _plt()
  table, images, curves = [], [], {}
  for name in names:
    item = batch.item_from_config(content, style, config, name=name, optimizer=name, lr=None)
    result = _run([item], weights, None)[0]
    filename = f"{name}.png"
    image_io.save_image(os.path.join(out_dir, filename), result.image)
    images.append(result.image)
    curves[name] = result.losses
    lr = optimize.DEFAULT_LR[name]
    table.append({"optimizer": name, "lr": lr, "image": filename, **_losses(result), "seconds": result.seconds})
  image_grid(os.path.join(out_dir, "optimizers.png"), [[content, style] + images], [""],
             ["content", "style"] + list(names))
  fig, ax = plt.subplots(figsize=(6, 4))
  for name, curve in curves.items():
    ax.plot(np.arange(1, len(curve) + 1), curve, label=name)
  ax.set_yscale("log")
  ax.set_xlabel("step")
  ax.set_ylabel("total loss (before the step)")
  ax.legend()
  ax.grid(True, alpha=0.3)
  save_figure(fig, os.path.join(out_dir, "loss_curves.png"))
  write_table(os.path.join(out_dir, "results.csv"), table)
  report = Report(out_dir, "Optimizers on one pair", _settings(config))
  report.figure("optimizers.png", "Content, style, then the result of each optimizer at its default lr.")
  report.figure("loss_curves.png", "Total loss per step (log scale).")
  report.table(table, "Final losses")
  report.write()
  return table


def _weight_sweep(content, style, config, weights, out_dir, *, settings: list[tuple[str, dict]], title: str,
                  figure: str, caption: str, batch_size: int | None) -> list[dict]:
  """One batch of the same pair with different config overrides -> a row of images + table + report."""
  os.makedirs(out_dir, exist_ok=True)
  items = [batch.item_from_config(content, style, config, name=label, **overrides)
           for label, overrides in settings]
  results = _run(items, weights, batch_size)
  table, images = [], []
  for (label, _), item, result in zip(settings, items, results):
    filename = f"{label.replace(' ', '_').replace(':', '-').replace('/', '-')}.png"
    image_io.save_image(os.path.join(out_dir, filename), result.image)
    images.append(result.image)
    table.append({"setting": label, "content_weight": float(item.config.content_weight),
                  "style_weight": float(item.config.style_weight), "tv_weight": float(item.config.tv_weight),
                  "image": filename, **_losses(result)})
  image_grid(os.path.join(out_dir, figure), [[content, style] + images], [""],
             ["content", "style"] + [label for label, _ in settings])
  write_table(os.path.join(out_dir, "results.csv"), table)
  report = Report(out_dir, title, _settings(config))
  report.figure(figure, caption)
  report.table(table, "Weights and final losses")
  report.write()
  return table


def ratios(content: np.ndarray, style: np.ndarray, config: ml_collections.ConfigDict, weights: vgg.VGGWeights,
           out_dir: str, *, multipliers: Sequence[tuple[float, float]] = DEFAULT_RATIOS,
           batch_size: int | None = None) -> list[dict]:
  """Content/style weights `(a * content_weight, b * style_weight)` for each `(a, b)`, in one batch."""
  settings = [(f"{a:g}:{b:g}", {"content_weight": a * config.content_weight,
                                "style_weight": b * config.style_weight}) for a, b in multipliers]
  return _weight_sweep(content, style, config, weights, out_dir, settings=settings,
                       title="Content/style weight ratios", figure="ratios.png", batch_size=batch_size,
                       caption="Multipliers a:b of the content and style weights relative to the settings.")


def presets(content: np.ndarray, style: np.ndarray, config: ml_collections.ConfigDict, weights: vgg.VGGWeights,
            out_dir: str, *, names: Sequence[str] = tuple(presets_lib.PRESETS),
            batch_size: int | None = None) -> list[dict]:
  """Each named preset (`--preset NAME`) on one pair, in one batch."""
  settings = [(name, presets_lib.get_preset(name)) for name in names]
  return _weight_sweep(content, style, config, weights, out_dir, settings=settings, title="Presets",
                       figure="presets.png", batch_size=batch_size,
                       caption="The presets of nst_jax/configs/presets.py (nst-jax --preset NAME).")
