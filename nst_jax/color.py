"""Keeping the photo's colours (Gatys, Bethge, Hertzmann & Shechtman 2017, "Controlling perceptual factors
in neural style transfer", section 5).

Two methods, both host-side numpy on float32 `[H, W, 3]` RGB in [0, 1]:
- `luminance`: style transfer on the luminance channel only. Content and style are converted to YIQ; the
  style's luminance is matched to the content's luminance mean and standard deviation; the optimisation
  runs on luminance images replicated to three channels; the result's luminance is recombined with the
  photo's chroma (I, Q) (`prepare` / `finish`).
- `histogram`: the style image's colours are moved to the photo's before the transfer by a linear map
  matching mean and covariance (`match_color`, Cholesky or PCA/symmetric-root variant).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from nst_jax.errors import NstJaxError

PRESERVE_COLORS = ("none", "luminance", "histogram")
MATCH_METHODS = ("cholesky", "pca")

# NTSC RGB -> YIQ (rows: Y, I, Q).
RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114],
                       [0.595716, -0.274453, -0.321263],
                       [0.211456, -0.522591, 0.311135]], np.float64)
YIQ_TO_RGB = np.linalg.inv(RGB_TO_YIQ)


def rgb_to_yiq(image: np.ndarray) -> np.ndarray:
  """`[..., 3]` RGB -> `[..., 3]` YIQ (Y in [0, 1] for RGB in [0, 1])."""
  return (np.asarray(image, np.float64) @ RGB_TO_YIQ.T).astype(np.float32)


def yiq_to_rgb(image: np.ndarray) -> np.ndarray:
  """`[..., 3]` YIQ -> `[..., 3]` RGB (not clipped)."""
  return (np.asarray(image, np.float64) @ YIQ_TO_RGB.T).astype(np.float32)


def luminance(image: np.ndarray) -> np.ndarray:
  """`[H, W, 3]` RGB -> `[H, W]` luminance Y."""
  return rgb_to_yiq(image)[..., 0]


def gray3(lum: np.ndarray) -> np.ndarray:
  """`[H, W]` luminance -> `[H, W, 3]` image with Y in every channel, clipped to [0, 1]."""
  return np.repeat(np.clip(lum, 0.0, 1.0)[..., None], 3, axis=-1).astype(np.float32)


def match_luminance(style_lum: np.ndarray, content_lum: np.ndarray) -> np.ndarray:
  """Affine map of the style's luminance onto the content's mean and standard deviation (Gatys 2017, eq. 5)."""
  s_mean, s_std = float(style_lum.mean()), float(style_lum.std())
  c_mean, c_std = float(content_lum.mean()), float(content_lum.std())
  return ((style_lum - s_mean) * (c_std / max(s_std, 1e-6)) + c_mean).astype(np.float32)


def _matrix_sqrt(cov: np.ndarray, inverse: bool = False) -> np.ndarray:
  values, vectors = np.linalg.eigh(cov)
  values = np.maximum(values, 1e-12) ** (-0.5 if inverse else 0.5)
  return (vectors * values) @ vectors.T


def color_stats(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean `[3]` and covariance `[3, 3]` of the pixels of `[H, W, 3]`."""
  pixels = np.asarray(image, np.float64).reshape(-1, 3)
  return pixels.mean(0), np.cov(pixels, rowvar=False, bias=True)


def match_color(source: np.ndarray, reference: np.ndarray, *, method: str = "cholesky", clip: bool = True,
                eps: float = 1e-5) -> np.ndarray:
  """Linear colour transfer: `source` `[H, W, 3]` with the mean and covariance of `reference` `[h, w, 3]`.

  `x' = A (x - mu_s) + mu_r` with `A Sigma_s A^T = Sigma_r`: `A = L_r L_s^-1` (Cholesky factors) or
  `A = Sigma_r^1/2 Sigma_s^-1/2` (PCA / symmetric square roots). `eps` regularises flat images.
  References: Gatys et al. 2017, "Controlling perceptual factors in neural style transfer", section 5.2.
  """
  return match_color_stats(source, *color_stats(reference), method=method, clip=clip, eps=eps)


def mixture_color_stats(images: Sequence[np.ndarray], shares: Sequence[float] | None = None
                        ) -> tuple[np.ndarray, np.ndarray]:
  """Mean `[3]` and covariance `[3, 3]` of the pixels of several images mixed in proportions `shares`
  (equal when None): the colour statistics of a blend of styles."""
  shares = np.ones(len(images)) if shares is None else np.asarray(shares, np.float64)
  shares = shares / shares.sum()
  stats = [color_stats(image) for image in images]
  mean = sum(share * mu for share, (mu, _) in zip(shares, stats))
  second = sum(share * (cov + np.outer(mu, mu)) for share, (mu, cov) in zip(shares, stats))
  return mean, second - np.outer(mean, mean)


def match_color_stats(source: np.ndarray, mean: np.ndarray, cov: np.ndarray, *, method: str = "cholesky",
                      clip: bool = True, eps: float = 1e-5) -> np.ndarray:
  """`match_color` towards given colour statistics (`mean` `[3]`, covariance `[3, 3]`)."""
  if method not in MATCH_METHODS:
    raise NstJaxError(f"unknown colour matching method {method!r}; expected one of {MATCH_METHODS}")
  source = np.asarray(source, np.float64)
  mu_s, cov_s = color_stats(source)
  cov_s = cov_s + eps * np.eye(3)
  cov_r = np.asarray(cov, np.float64) + eps * np.eye(3)
  if method == "cholesky":
    transform = np.linalg.cholesky(cov_r) @ np.linalg.inv(np.linalg.cholesky(cov_s))
  else:
    transform = _matrix_sqrt(cov_r) @ _matrix_sqrt(cov_s, inverse=True)
  out = (source.reshape(-1, 3) - mu_s) @ transform.T + np.asarray(mean, np.float64)
  out = out.reshape(source.shape)
  return (np.clip(out, 0.0, 1.0) if clip else out).astype(np.float32)


def prepare(content: np.ndarray, styles: Sequence[np.ndarray], mode: str) -> tuple[np.ndarray, list]:
  """The images the optimisation sees for `--preserve_colors mode`: `(content, styles)`."""
  if mode not in PRESERVE_COLORS:
    raise NstJaxError(f"unknown preserve_colors {mode!r}; expected one of {PRESERVE_COLORS}")
  if mode == "none":
    return content, list(styles)
  if mode == "histogram":
    return content, [match_color(style, content) for style in styles]
  content_lum = luminance(content)
  return gray3(content_lum), [gray3(match_luminance(luminance(style), content_lum)) for style in styles]


def finish(result: np.ndarray, content: np.ndarray, mode: str) -> np.ndarray:
  """The output image: for `luminance`, the result's luminance with the photo's chroma (I, Q)."""
  if mode != "luminance":
    return result
  if result.shape != content.shape:
    raise NstJaxError(f"result {result.shape} and photo {content.shape} differ in size")
  yiq = rgb_to_yiq(content)
  yiq[..., 0] = luminance(result)
  return np.clip(yiq_to_rgb(yiq), 0.0, 1.0).astype(np.float32)
