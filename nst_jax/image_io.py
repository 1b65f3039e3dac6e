"""Image files <-> float32 `[H, W, 3]` RGB arrays in [0, 1] on the host. The only image IO in the package.

Loading applies the EXIF orientation, converts any mode Pillow reads (grayscale, palette, RGBA, CMYK,
16-bit) to 8-bit-equivalent RGB, and refuses decompression bombs. `open_image_keep_alpha` /
`load_image_keep_alpha` keep a transparent image's alpha instead (`[H, W, 4]`, docs/transparency.md);
`save_image` writes RGBA to formats that store alpha. Saving is atomic: a temporary file in the
destination folder is renamed over the target, so an existing file is never left half-written.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from nst_jax.errors import NstJaxError

# Decoded-pixel limit for inputs (decompression bombs): 64 megapixels, e.g. 8000 x 8000.
MAX_INPUT_PIXELS = 64_000_000
# Output sizes we accept (longest side, pixels). VGG19's fifth block needs at least 16 px.
MIN_SIZE, MAX_SIZE = 16, 8192


def _to_rgb_float(img: Image.Image) -> np.ndarray:
  """Any Pillow image -> float32 `[H, W, 3]` in [0, 1]."""
  if img.mode in ("I;16", "I;16B", "I;16L", "I"):
    array = np.asarray(img, dtype=np.float64)
    maximum = 65535.0 if img.mode.startswith("I;16") or array.max() > 255 else 255.0
    gray = np.clip(array / maximum, 0.0, 1.0).astype(np.float32)
    return np.repeat(gray[..., None], 3, axis=-1)
  if img.mode == "F":
    gray = np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)
    return np.repeat(gray[..., None], 3, axis=-1)
  if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
    # Composite transparent pixels over white, as viewers show them.
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    img = Image.alpha_composite(background, rgba)
  return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def _to_float_keep_alpha(img: Image.Image) -> np.ndarray:
  """A Pillow image -> float32 `[H, W, 4]` (straight alpha, colours as stored) if it has transparency that
  is not fully opaque, else `[H, W, 3]` as `_to_rgb_float`."""
  if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
    rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
    if rgba[..., 3].min() < 1.0:
      return rgba
  return _to_rgb_float(img)


# Example images shipped inside scikit-image's wheel, usable offline as `skimage:NAME`.
SKIMAGE_EXAMPLES = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
                    "retina", "camera", "cat")


def _skimage_example(name: str) -> np.ndarray:
  if name not in SKIMAGE_EXAMPLES:
    raise NstJaxError(f"unknown example image skimage:{name}; choose from {', '.join(SKIMAGE_EXAMPLES)}")
  from skimage import data
  return _to_rgb_float(Image.fromarray(np.asarray(getattr(data, name)())))


def open_image(source, *, max_pixels: int | None = None) -> np.ndarray:
  """Decodes an image file (path or file object) into float32 `[H, W, 3]` RGB in [0, 1].

  `skimage:NAME` (e.g. `skimage:chelsea`) loads an example image that ships with scikit-image. A
  transparent image is composited over white (see `open_image_keep_alpha` to keep its alpha).

  Raises:
    NstJaxError: missing file, not an image, truncated or corrupt data, zero size, or more than
      `max_pixels` decoded pixels.
  """
  return _open(source, max_pixels, _to_rgb_float)


def open_image_keep_alpha(source, *, max_pixels: int | None = None) -> np.ndarray:
  """`open_image`, but a transparent image comes as float32 `[H, W, 4]` RGBA (colours not composited);
  an image without alpha, or whose alpha is fully opaque, comes as `[H, W, 3]`."""
  return _open(source, max_pixels, _to_float_keep_alpha)


def _open(source, max_pixels, convert) -> np.ndarray:
  if isinstance(source, str) and source.startswith("skimage:"):
    return _skimage_example(source.split(":", 1)[1])
  name = source if isinstance(source, (str, os.PathLike)) else getattr(source, "name", "upload")
  max_pixels = MAX_INPUT_PIXELS if max_pixels is None else max_pixels  # Read at call time (patchable).
  if isinstance(source, (str, os.PathLike)):
    if not os.path.exists(source):
      raise NstJaxError(f"image file not found: {source}")
    if os.path.isdir(source):
      raise NstJaxError(f"expected an image file but got a directory: {source}")
  previous_limit = Image.MAX_IMAGE_PIXELS
  try:
    Image.MAX_IMAGE_PIXELS = max_pixels
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      with Image.open(source) as img:
        width, height = img.size
        if width * height > max_pixels:
          raise NstJaxError(f"{name}: {width}x{height} pixels is over the limit of {max_pixels:,} pixels")
        if width == 0 or height == 0:
          raise NstJaxError(f"{name}: image has zero size ({width}x{height})")
        img.load()
        img = ImageOps.exif_transpose(img)
        return convert(img)
  except NstJaxError:
    raise
  except (Image.DecompressionBombError, Image.DecompressionBombWarning):
    raise NstJaxError(f"{name}: image is too large to decode safely (limit {max_pixels:,} pixels)") from None
  except UnidentifiedImageError:
    raise NstJaxError(f"{name}: not an image file Pillow can read") from None
  except PermissionError:
    raise NstJaxError(f"{name}: permission denied") from None
  except (OSError, SyntaxError, ValueError) as e:  # Truncated or corrupt data.
    raise NstJaxError(f"{name}: corrupt or truncated image ({e})") from None
  finally:
    Image.MAX_IMAGE_PIXELS = previous_limit


def check_size(size: int, what: str = "size") -> int:
  if not MIN_SIZE <= size <= MAX_SIZE:
    raise NstJaxError(f"{what} must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {size}")
  return size


def fit_size(height: int, width: int, longest_side: int) -> tuple[int, int]:
  """`(h, w)` with the aspect ratio of `(height, width)` and the longest side equal to `longest_side`."""
  scale = longest_side / max(height, width)
  return max(1, round(height * scale)), max(1, round(width * scale))


def resize(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
  """Resizes float `[H, W, 3]` in [0, 1] to `shape = (h, w)` with Lanczos filtering (float precision)."""
  if image.shape[:2] == tuple(shape):
    return image.astype(np.float32)
  channels = [Image.fromarray(image[..., c].astype(np.float32), mode="F").resize(
      (shape[1], shape[0]), Image.Resampling.LANCZOS) for c in range(image.shape[-1])]
  return np.clip(np.stack([np.asarray(c) for c in channels], axis=-1), 0.0, 1.0).astype(np.float32)


def resize_longest(image: np.ndarray, longest_side: int) -> np.ndarray:
  """Resizes so that the longest side is `longest_side` pixels, keeping the aspect ratio."""
  return resize(image, fit_size(image.shape[0], image.shape[1], longest_side))


def load_image(path, max_size: int | None = None) -> np.ndarray:
  """`open_image`, then resize so the longest side is `max_size` (if given)."""
  image = open_image(path)
  if max_size is not None:
    image = resize_longest(image, check_size(max_size, "max_size"))
  return image


def load_image_keep_alpha(path, max_size: int | None = None) -> np.ndarray:
  """`open_image_keep_alpha`, then resize (alpha too) so the longest side is `max_size` (if given)."""
  image = open_image_keep_alpha(path)
  if max_size is not None:
    image = resize_longest(image, check_size(max_size, "max_size"))
  return image


def to_uint8(image) -> np.ndarray:
  return np.round(np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def check_writable(path: str, *, overwrite: bool = False) -> None:
  """Fails early if `path` cannot be written (folder missing or read-only, unknown format, exists)."""
  path = os.fspath(path)
  folder = os.path.dirname(os.path.abspath(path))
  if os.path.isdir(path):
    raise NstJaxError(f"output path is a directory: {path}")
  if os.path.exists(path) and not overwrite:
    raise NstJaxError(f"output file already exists: {path} (pass --overwrite to replace it)")
  extension = os.path.splitext(path)[1].lower()
  if extension not in Image.registered_extensions():
    raise NstJaxError(f"unknown image format for output {path!r}; use e.g. .png or .jpg")
  if not os.path.isdir(folder):
    raise NstJaxError(f"output folder does not exist: {folder}")
  try:  # os.access says yes to root even where nothing can be created (e.g. /proc): try it.
    fd, probe = tempfile.mkstemp(dir=folder, prefix=".tmp-probe-")
    os.close(fd)
    os.remove(probe)
  except OSError as e:
    raise NstJaxError(f"output folder is not writable: {folder} ({e.strerror})") from None


def _file_mode() -> int:
  """Permissions of a newly created file under the process umask (what `open(path, 'w')` would give)."""
  umask = os.umask(0)
  os.umask(umask)
  return 0o666 & ~umask


# Read once at import: os.umask can only be read by setting it, which must not race with other threads.
_NEW_FILE_MODE = _file_mode()


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "wb") -> Iterator:
  """Opens a temporary file beside `path`; on success renames it over `path`, else deletes it.

  The file gets the usual permissions (0666 minus the umask), not mkstemp's private 0600.
  """
  folder = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.splitext(path)[1])
  try:
    os.fchmod(fd, _NEW_FILE_MODE)
    with os.fdopen(fd, mode) as f:
      yield f
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise


# Pillow formats that store an alpha channel; any other output of a transparent picture is refused.
ALPHA_FORMATS = ("PNG", "WEBP", "TIFF")


def check_alpha_output(path: str) -> None:
  """Raises unless `path`'s format keeps an alpha channel (for the output of a transparent picture)."""
  image_format = Image.registered_extensions().get(os.path.splitext(os.fspath(path))[1].lower())
  if image_format not in ALPHA_FORMATS:
    raise NstJaxError(f"{path}: the content image is transparent and {image_format or 'this format'} cannot "
                      f"store alpha; use .png, .webp or .tiff")


def save_image(path: str, image) -> None:
  """Writes float `[H, W, 3]` in [0, 1] as 8-bit RGB (`[H, W, 4]`: RGBA), atomically, format from the
  extension. RGBA to a format without alpha (JPEG...) is an error naming the formats that keep it."""
  extension = os.path.splitext(path)[1].lower()
  image_format = Image.registered_extensions().get(extension)
  if image_format is None:
    raise NstJaxError(f"unknown image format for output {path!r}; use e.g. .png or .jpg")
  if np.shape(image)[-1] == 4:
    check_alpha_output(path)
  try:
    with atomic_write(path) as f:
      Image.fromarray(to_uint8(image)).save(f, format=image_format)
  except OSError as e:
    raise NstJaxError(f"cannot write {path}: {e.strerror or e}") from None
