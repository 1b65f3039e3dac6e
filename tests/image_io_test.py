"""Image loading (EXIF, modes, bad files, decompression bombs) and atomic saving."""

from __future__ import annotations

import os
import stat
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from nst_jax import image_io
from nst_jax.errors import NstJaxError


def rgb_uint8(height=12, width=20):
  y, x = np.mgrid[0:height, 0:width]
  return np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1),
                   np.full_like(x, 100)], axis=-1).astype(np.uint8)


def test_png_round_trip(tmp_path):
  array = rgb_uint8()
  Image.fromarray(array).save(tmp_path / "a.png")
  image = image_io.open_image(str(tmp_path / "a.png"))
  assert image.dtype == np.float32 and image.shape == (12, 20, 3)
  np.testing.assert_allclose(image, array / 255.0, atol=1e-6)
  image_io.save_image(str(tmp_path / "b.png"), image)
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "b.png")), array)


@pytest.mark.parametrize("orientation, transform", [
    (3, lambda a: a[::-1, ::-1]), (6, lambda a: np.rot90(a, -1)), (8, lambda a: np.rot90(a, 1)),
    (2, lambda a: a[:, ::-1])])
def test_exif_orientation_applied(tmp_path, orientation, transform):
  array = rgb_uint8(8, 14)
  exif = Image.Exif()
  exif[0x0112] = orientation
  Image.fromarray(array).save(tmp_path / "o.png", exif=exif)
  image = image_io.open_image(str(tmp_path / "o.png"))
  np.testing.assert_allclose(image, transform(array) / 255.0, atol=1e-6)


def test_modes_converted_to_rgb(tmp_path):
  gray = np.arange(0, 240, 2, dtype=np.uint8).reshape(10, 12)
  Image.fromarray(gray, "L").save(tmp_path / "gray.png")
  out = image_io.open_image(str(tmp_path / "gray.png"))
  assert out.shape == (10, 12, 3)
  np.testing.assert_allclose(out[..., 1], gray / 255.0, atol=1e-6)

  gray16 = (np.arange(120, dtype=np.uint16).reshape(10, 12) * 500).astype(np.uint16)
  Image.fromarray(gray16).save(tmp_path / "gray16.png")
  assert Image.open(tmp_path / "gray16.png").mode.startswith("I")
  out = image_io.open_image(str(tmp_path / "gray16.png"))
  np.testing.assert_allclose(out[..., 0], gray16 / 65535.0, atol=1e-4)

  rgba = np.zeros((4, 4, 4), np.uint8)
  rgba[..., 0] = 255
  rgba[:2, ..., 3] = 255  # Top half opaque red, bottom half transparent (shown white).
  Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
  out = image_io.open_image(str(tmp_path / "rgba.png"))
  np.testing.assert_allclose(out[0, 0], [1, 0, 0])
  np.testing.assert_allclose(out[3, 3], [1, 1, 1])

  Image.fromarray(rgb_uint8()).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
  out = image_io.open_image(str(tmp_path / "cmyk.jpg"))
  assert out.shape == (12, 20, 3)
  np.testing.assert_allclose(out, rgb_uint8() / 255.0, atol=0.08)

  palette = Image.fromarray(rgb_uint8()).quantize(16)
  palette.save(tmp_path / "p.png")
  out = image_io.open_image(str(tmp_path / "p.png"))
  np.testing.assert_allclose(out, np.asarray(palette.convert("RGB")) / 255.0, atol=1e-6)

  Image.fromarray(rgb_uint8()).save(tmp_path / "a.bmp")
  Image.fromarray(rgb_uint8()).save(tmp_path / "a.webp", lossless=True)
  for name in ("a.bmp", "a.webp"):
    np.testing.assert_allclose(image_io.open_image(str(tmp_path / name)), rgb_uint8() / 255.0, atol=1e-6)


def _png_header(width: int, height: int) -> bytes:
  """A PNG whose IHDR claims `width x height` (8-bit RGB) followed by a tiny IDAT and IEND."""
  def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
  ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
  return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def test_bad_files(tmp_path, monkeypatch):
  Image.fromarray(rgb_uint8(64, 64)).save(tmp_path / "good.png")
  data = (tmp_path / "good.png").read_bytes()
  (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
  Image.fromarray(rgb_uint8(64, 64)).save(tmp_path / "good.jpg")
  jpeg = (tmp_path / "good.jpg").read_bytes()
  (tmp_path / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
  (tmp_path / "text.png").write_text("definitely not a picture")
  (tmp_path / "empty.png").write_bytes(b"")
  (tmp_path / "bomb.png").write_bytes(_png_header(100_000, 100_000))
  (tmp_path / "zero.png").write_bytes(_png_header(0, 10))
  cases = {
      "missing.png": "not found", "truncated.png": "truncated", "truncated.jpg": "truncated",
      "text.png": "not an image", "empty.png": "not an image", "bomb.png": "limit",
      "zero.png": "zero size|not an image", ".": "directory"}
  for name, message in cases.items():
    with pytest.raises(NstJaxError, match=message) as info:
      image_io.open_image(str(tmp_path / name))
    assert "\n" not in str(info.value)
  # A lowered limit catches an ordinary picture too (the bomb limit is a parameter and a module constant).
  with pytest.raises(NstJaxError, match="limit"):
    image_io.open_image(str(tmp_path / "good.png"), max_pixels=1000)
  monkeypatch.setattr(image_io, "MAX_INPUT_PIXELS", 1000)
  with pytest.raises(NstJaxError, match="limit"):
    image_io.load_image(str(tmp_path / "good.png"), 32)
  monkeypatch.undo()
  assert image_io.load_image(str(tmp_path / "good.png"), 32).shape == (32, 32, 3)


def test_limit_is_restored_after_a_bomb(tmp_path):
  before = Image.MAX_IMAGE_PIXELS
  (tmp_path / "bomb.png").write_bytes(_png_header(100_000, 100_000))
  with pytest.raises(NstJaxError):
    image_io.open_image(str(tmp_path / "bomb.png"))
  assert Image.MAX_IMAGE_PIXELS == before


def test_resize_longest():
  image = np.random.default_rng(0).random((30, 60, 3)).astype(np.float32)
  out = image_io.resize_longest(image, 20)
  assert out.shape == (10, 20, 3) and out.dtype == np.float32
  assert 0.0 <= out.min() and out.max() <= 1.0
  tall = image_io.resize_longest(image.transpose(1, 0, 2), 40)
  assert tall.shape == (40, 20, 3)
  flat = np.full((30, 60, 3), 0.25, np.float32)
  np.testing.assert_allclose(image_io.resize_longest(flat, 16), 0.25, atol=1e-5)
  with pytest.raises(NstJaxError):
    image_io.load_image("whatever.png", 100_000)


def test_check_writable(tmp_path):
  image_io.check_writable(str(tmp_path / "out.png"))
  (tmp_path / "exists.png").write_bytes(b"old")
  with pytest.raises(NstJaxError, match="--overwrite"):
    image_io.check_writable(str(tmp_path / "exists.png"))
  image_io.check_writable(str(tmp_path / "exists.png"), overwrite=True)
  for path, message in [(tmp_path / "no" / "out.png", "does not exist"), (tmp_path, "directory"),
                        (tmp_path / "out.xyz", "format")]:
    with pytest.raises(NstJaxError, match=message):
      image_io.check_writable(str(path))
  locked = tmp_path / "locked"
  locked.mkdir()
  locked.chmod(0o500)
  try:
    if not os.access(locked, os.W_OK):  # Root can write anywhere.
      with pytest.raises(NstJaxError, match="not writable"):
        image_io.check_writable(str(locked / "out.png"))
  finally:
    locked.chmod(0o700)


def test_saved_files_get_the_usual_permissions_not_mkstemps_0600(tmp_path):
  old = os.umask(0o022)
  try:
    assert image_io._file_mode() == 0o644
  finally:
    os.umask(old)
  image_io.save_image(str(tmp_path / "out.png"), np.zeros((4, 4, 3), np.float32))
  # The process umask (read at import) decides, as for any file the user's tools create.
  assert stat.S_IMODE(os.stat(tmp_path / "out.png").st_mode) == image_io._NEW_FILE_MODE == image_io._file_mode()


def test_atomic_save_never_leaves_half_written_files(tmp_path, monkeypatch):
  target = tmp_path / "out.png"
  image_io.save_image(str(target), np.zeros((8, 8, 3), np.float32))
  original = target.read_bytes()

  real_save = Image.Image.save

  def failing_save(self, fp, *args, **kwargs):
    fp.write(b"\x89PNG partial garbage")  # Some bytes reach the temporary file...
    raise OSError("disk full")  # ...then the write fails.

  monkeypatch.setattr(Image.Image, "save", failing_save)
  with pytest.raises(NstJaxError, match="cannot write .*out.png: disk full"):  # One line, no traceback.
    image_io.save_image(str(target), np.ones((8, 8, 3), np.float32))
  monkeypatch.setattr(Image.Image, "save", real_save)
  assert target.read_bytes() == original  # The old file is untouched...
  assert sorted(os.listdir(tmp_path)) == ["out.png"]  # ...and no temporary file is left behind.

  with pytest.raises(KeyboardInterrupt):
    with image_io.atomic_write(str(tmp_path / "new.bin")) as f:
      f.write(b"half")
      raise KeyboardInterrupt
  assert sorted(os.listdir(tmp_path)) == ["out.png"]

  with image_io.atomic_write(str(tmp_path / "new.bin")) as f:
    f.write(b"whole")
  assert (tmp_path / "new.bin").read_bytes() == b"whole"
  assert sorted(os.listdir(tmp_path)) == ["new.bin", "out.png"]
  with pytest.raises(NstJaxError, match="format"):
    image_io.save_image(str(tmp_path / "x.unknown"), np.zeros((4, 4, 3)))
