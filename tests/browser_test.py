"""A real-browser test of the web page: headless Debian Chromium driven by Playwright (no browser download).

Uploads two images, picks options, submits, waits for the finished picture, checks the page, and takes a
screenshot (saved in the test's tmp folder and copied to $NST_JAX_SCREENSHOT or
`<tempdir>/nst_jax_browser_test.png`). Skips only when Chromium or Playwright is missing and $CI is unset.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from nst_jax import vgg
from nst_jax.server.app import create_app
from web_helpers import live_server, png_bytes

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
HOSTILE_NAME = "<b>photo<img src=x onerror=alert(1)>.png"  # No "/": names are cut to their basename.


def _playwright():
  try:
    from playwright.sync_api import sync_playwright
  except ImportError:
    sync_playwright = None
  missing = [what for what, ok in (("playwright", sync_playwright is not None),
                                   (CHROMIUM, os.path.exists(CHROMIUM))) if not ok]
  if missing:
    if os.environ.get("CI"):
      pytest.fail(f"browser test needs {', '.join(missing)} in CI (.ci/run installs them)")
    pytest.skip(f"{', '.join(missing)} not available")
  return sync_playwright


def test_upload_submit_and_see_result(tmp_path):
  sync_playwright = _playwright()
  app = create_app(data_dir=str(tmp_path / "data"), weights=vgg.random_weights(0), rate_limit=0,
                   preview_every=0.5, checkpoint_every=10.0, batch_wait=0.1, event_interval=0.2)
  with live_server(app) as base, sync_playwright() as p:
    browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    try:
      # bypass_csp: the page forbids eval; Playwright needs it for its string predicates only.
      page = browser.new_page(viewport={"width": 1000, "height": 900}, bypass_csp=True)
      dialogs = []
      page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
      page.goto(base + "/")
      page.wait_for_selector("input[name=preset][value=painterly]", state="attached")

      # A non-image is refused with the server's message on the page.
      page.set_input_files("#content-input", files=[{"name": "notes.png", "mimeType": "image/png",
                                                     "buffer": b"not an image at all"}])
      page.set_input_files("#style-input", files=[{"name": "painting.png", "mimeType": "image/png",
                                                   "buffer": png_bytes(1, 48, 48)}])
      page.click("#submit")
      page.wait_for_function("document.getElementById('form-error').textContent.includes('not an image')")

      page.set_input_files("#content-input", files=[{"name": HOSTILE_NAME, "mimeType": "image/png",
                                                     "buffer": png_bytes(0, 40, 32)}])
      # Thumbnails appear once the browser has decoded the files (asynchronous: wait, don't poll once).
      page.wait_for_selector("#content-thumb", state="visible", timeout=30_000)
      page.wait_for_selector("#style-thumb", state="visible", timeout=30_000)
      assert page.text_content("#content-name") == HOSTILE_NAME
      # The page offers every preset (the quality recipe too), keep colours and a second painting.
      assert page.get_attribute("input[name=preset][value=quality]", "value") == "quality"
      assert page.eval_on_selector_all("#opt-preserve-colors option", "os => os.map(o => o.value)") == [
          "none", "luminance", "histogram"]
      assert page.is_disabled("#opt-blend")  # Until there is a second painting.
      page.set_input_files("#style2-input", files=[{"name": "second.png", "mimeType": "image/png",
                                                    "buffer": png_bytes(3, 30, 50)}])
      page.select_option("#opt-preserve-colors", "luminance")
      page.fill("#opt-blend", "25")
      page.check("input[name=preset][value=painterly]")
      page.click("#advanced summary")
      page.fill("#opt-size", "32")
      page.fill("#opt-steps", "15")
      page.click("#submit")
      # While the job runs, its history card says so (it used to keep the "queued" of submission time).
      page.wait_for_function("() => { const c = document.querySelector('#jobs li .job-status');"
                             " return c && c.textContent.startsWith('running'); }", timeout=120_000)
      page.wait_for_function(
          "() => { const img = document.getElementById('result-img');"
          " return !document.getElementById('result').hidden && img.complete && img.naturalWidth > 0; }",
          timeout=170_000)

      assert page.text_content("#job-status") == "done"
      assert page.text_content("#jobs li .job-status").startswith("done")
      options = page.evaluate("fetch('/api/jobs').then(r => r.json()).then(j => j[0].options)")
      assert options["preserve_colors"] == "luminance" and options["style_blend_weights"] == "75,25"
      assert options["max_size"] == "32" and options["preset"] == "painterly"
      assert page.text_content("#job-step") == "step 15 / 15"
      assert page.eval_on_selector("#result-img", "img => [img.naturalWidth, img.naturalHeight]") == [32, 26]
      assert "download=1" in page.get_attribute("#download-link", "href")
      # The loss curve was drawn: the canvas has purple pixels.
      purple = page.evaluate("""() => {
        const c = document.getElementById('loss-canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] > 100 && d[i + 2] > 130 && d[i + 1] < 90) n++;
        return n; }""")
      assert purple > 20
      # The hostile file name is shown as text, never parsed as HTML; no script ran.
      page.wait_for_selector("#jobs li")
      assert HOSTILE_NAME in page.text_content("#jobs li .job-name")
      assert page.eval_on_selector_all("#jobs b, #jobs img[src=x], #job-label b", "els => els.length") == 0
      assert dialogs == []
      stored = page.evaluate("JSON.parse(localStorage.getItem('nst-jax-jobs'))")
      assert len(stored) == 1 and page.get_attribute("#jobs li", "data-job-id") == stored[0]

      shot = tmp_path / "page.png"
      page.screenshot(path=str(shot), full_page=True)
      assert shot.stat().st_size > 10_000
      copy = os.environ.get("NST_JAX_SCREENSHOT") or os.path.join(tempfile.gettempdir(),
                                                                  "nst_jax_browser_test.png")
      shutil.copyfile(shot, copy)
    finally:
      browser.close()


def test_a_region_chosen_on_the_page_is_sent_as_masks_of_the_photo_aspect_ratio(tmp_path):
  """'Where the painting goes': the left half becomes the first style_region (white left) and, with more
  paintings, theirs the rest (repeated style and style_region fields, in order); a rectangle in percent too
  (docs/spatial-control.md)."""
  sync_playwright = _playwright()
  import numpy as np
  app = create_app(data_dir=str(tmp_path / "data"), weights=vgg.random_weights(0), rate_limit=0,
                   start_worker=False)
  store = app.state.store
  with live_server(app) as base, sync_playwright() as p:
    browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    try:
      page = browser.new_page(viewport={"width": 1000, "height": 900}, bypass_csp=True)
      page.goto(base + "/")
      page.wait_for_selector("input[name=preset][value=painterly]", state="attached")
      page.set_input_files("#content-input", files=[{"name": "photo.png", "mimeType": "image/png",
                                                     "buffer": png_bytes(0, 40, 32)}])
      page.set_input_files("#style-input", files=[{"name": "a.png", "mimeType": "image/png",
                                                   "buffer": png_bytes(1, 48, 48)}])
      page.set_input_files("#style2-input", files=[{"name": "b.png", "mimeType": "image/png",
                                                    "buffer": png_bytes(3, 30, 50)}])
      assert page.is_hidden("#region-rect")
      page.select_option("#opt-region", "left")
      page.click("#submit")
      page.wait_for_function("JSON.parse(localStorage.getItem('nst-jax-jobs') || '[]').length === 1")
      first = page.evaluate("JSON.parse(localStorage.getItem('nst-jax-jobs'))[0]")
      page.select_option("#opt-region", "rect")
      assert page.is_visible("#region-rect")
      page.click("#style2-clear")
      for field, value in (("#rect-x", "50"), ("#rect-y", "0"), ("#rect-w", "50"), ("#rect-h", "50")):
        page.fill(field, value)
      page.click("#submit")
      page.wait_for_function("JSON.parse(localStorage.getItem('nst-jax-jobs') || '[]').length === 2")
      second = page.evaluate("JSON.parse(localStorage.getItem('nst-jax-jobs'))[0]")
      # More than two paintings: the second box takes several; each is a `style` field with its region.
      page.set_input_files("#style2-input", files=[{"name": f"{name}.png", "mimeType": "image/png",
                                                    "buffer": png_bytes(seed, 30, 50)} for name, seed in
                                                   (("b", 3), ("c", 4))])
      page.click("#submit")
      page.wait_for_function("JSON.parse(localStorage.getItem('nst-jax-jobs') || '[]').length === 3")
      third = page.evaluate("JSON.parse(localStorage.getItem('nst-jax-jobs'))[0]")
      # The history (server lists newest first) keeps the newest job first in the browser's list too.
      page.evaluate("refreshHistory()")
      assert page.evaluate("JSON.parse(localStorage.getItem('nst-jax-jobs'))") == [third, second, first]
    finally:
      browser.close()
  mask = lambda job_id, name: np.load(store.path(job_id, name))  # The masks the job runs from.
  region, rest = mask(first, "style_region.npy"), mask(first, "style2_region.npy")
  assert region.shape == rest.shape == (32, 40)  # The photo's aspect ratio (40x32).
  assert region[:, :20].min() > 0.999 and region[:, 20:].max() < 1e-6
  np.testing.assert_allclose(rest, 1.0 - region, atol=1e-6)
  corner = mask(second, "style_region.npy")
  assert corner[:16, 20:].min() > 0.999 and corner[16:].max() < 1e-6 and corner[:, :20].max() < 1e-6
  assert not os.path.exists(store.path(second, "style2_region.npy"))
  assert os.path.exists(store.path(third, "style3.npy")) and store.get(third)["options"]["style_blend_weights"] == \
      "50,25,25"
  np.testing.assert_allclose(mask(third, "style3_region.npy"), 1.0 - mask(third, "style_region.npy"), atol=1e-6)


def test_a_chosen_clip_plays_in_its_box_under_the_pages_security_policy(tmp_path):
  """The page shows a chosen clip from a blob: URL before it is sent: the Content-Security-Policy must allow
  it (it had no media-src, so the box stayed blank). The page runs with its real policy here (no bypass_csp),
  and the browser reports no violation."""
  sync_playwright = _playwright()
  from server_video_test import clip_bytes
  app = create_app(data_dir=str(tmp_path / "data"), weights=vgg.random_weights(0), rate_limit=0,
                   start_worker=False)
  with live_server(app) as base, sync_playwright() as p:
    browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    try:
      page = browser.new_page(viewport={"width": 1000, "height": 900})
      console = []
      page.on("console", lambda message: console.append(message.text))
      page.goto(base + "/")
      page.wait_for_selector("input[name=preset][value=painterly]", state="attached")
      page.set_input_files("#content-input", files=[{"name": "clip.mp4", "mimeType": "video/mp4",
                                                     "buffer": clip_bytes(num_frames=3, audio=False)}])
      page.wait_for_selector("#content-clip", state="visible")
      # A function, not a string: the page's policy forbids the eval that string predicates need.
      page.wait_for_function("() => document.getElementById('content-clip').readyState >= 2", timeout=30_000)
      assert page.eval_on_selector("#content-clip", "v => [v.src.slice(0, 5), v.videoWidth, v.videoHeight]") == [
          "blob:", 40, 32]
    finally:
      browser.close()
  assert not [line for line in console if "Content Security Policy" in line], console
