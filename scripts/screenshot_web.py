"""Takes a screenshot of the web page after one finished job (for docs/screenshot.png).

    python scripts/screenshot_web.py --content ../shared/data/content/tubingen.jpg \
        --style ../shared/data/styles/starry_night.jpg --output docs/screenshot.png --max_size 192 --steps 100

Starts the app on a free localhost port, drives Debian's Chromium (/usr/bin/chromium) with Playwright:
picks the files (optionally a second painting, --style2, blended by --blend), the preset and how to keep the
photo's colours, submits, waits for the result, saves a PNG screenshot (quantised to keep it small).
--max_size, --steps, --preset and --preserve_colors are the settings of the same names (docs/settings.md).
"""

from __future__ import annotations

import os
import tempfile

from absl import flags
from PIL import Image

from nst_jax import color, weights as weights_lib
from nst_jax.commands import common
from nst_jax.errors import NstJaxError
from nst_jax.server import app as app_lib

FLAGS = flags.FLAGS
flags.DEFINE_string("content", None, "Content photo.", required=True)
flags.DEFINE_string("style", None, "Style painting.", required=True)
flags.DEFINE_string("output", "docs/screenshot.png", "Where to write the screenshot (PNG).")
flags.DEFINE_string("style2", None, "Optional second painting, blended in.")
flags.DEFINE_integer("blend", 50, "Share of the second painting in percent (the page's field).")
flags.DEFINE_enum("preserve_colors", "none", color.PRESERVE_COLORS, "Keep the photo's colours.")
flags.DEFINE_integer("max_size", 192, "Output size of the job (longest side, px).")
flags.DEFINE_integer("steps", 100, "Steps of the job.")
flags.DEFINE_string("preset", "balanced", "Preset.")
flags.DEFINE_string("weights", None, "VGG19 weights ('random' for a smoke run).")
flags.DEFINE_integer("width", 1000, "Browser window width.")

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main(argv):
  del argv
  from playwright.sync_api import sync_playwright
  if not os.path.exists(CHROMIUM):
    raise NstJaxError(f"{CHROMIUM} not found (apt-get install chromium)")
  common.enable_compilation_cache(True)
  weights = weights_lib.load_vgg19(FLAGS.weights)
  with tempfile.TemporaryDirectory() as data_dir:
    web = app_lib.create_app(data_dir=data_dir, weights=weights, rate_limit=0, preview_every=1.0)
    with app_lib.serve_in_thread(web) as base, sync_playwright() as p:
      browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
      page = browser.new_page(viewport={"width": FLAGS.width, "height": 900}, bypass_csp=True)
      page.goto(base + "/")
      page.wait_for_selector(f"input[name=preset][value={FLAGS.preset}]", state="attached")
      page.set_input_files("#content-input", FLAGS.content)
      page.set_input_files("#style-input", FLAGS.style)
      if FLAGS.style2:
        page.set_input_files("#style2-input", FLAGS.style2)
        page.fill("#opt-blend", str(FLAGS.blend))
      page.select_option("#opt-preserve-colors", FLAGS.preserve_colors)
      page.check(f"input[name=preset][value={FLAGS.preset}]")
      page.click("#advanced summary")
      page.fill("#opt-size", str(FLAGS.max_size))
      page.fill("#opt-steps", str(FLAGS.steps))
      page.click("#submit")
      page.wait_for_function("() => { const i = document.getElementById('result-img');"
                             " return !document.getElementById('result').hidden && i.complete && i.naturalWidth > 0; }",
                             timeout=3_600_000)
      page.click("#advanced summary")  # Fold the options again.
      shot = os.path.join(data_dir, "shot.png")
      page.screenshot(path=shot, full_page=True)
      browser.close()
    image = Image.open(shot).convert("RGB")
    image.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(FLAGS.output, optimize=True)
  print(f"wrote {FLAGS.output} ({os.path.getsize(FLAGS.output) / 1e3:.0f} kB)")


if __name__ == "__main__":
  common.run(main)
