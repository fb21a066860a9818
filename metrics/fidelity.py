"""PSNR and SSIM on RGB uint8 images, the GoPro/HIDE protocol (SPEC section 6), in TensorFlow.

Convention (stated exactly, as the reference tables are computed):

* Inputs are uint8 images, [H, W, C] or batched [B, H, W, C] (C = 3 for RGB), compared at full
  size: no border crop, no conversion to Y, no rounding beyond the uint8 inputs.
* PSNR = 10 log10(255^2 / MSE), the MSE taken over all pixels and channels of one image, in
  float64. This is `skimage.metrics.peak_signal_noise_ratio(ref, out)` for uint8 inputs
  (data_range 255). Identical images have MSE 0 and PSNR = +inf (returned as inf, not clipped).
* SSIM (Wang et al. 2004) with an 11 x 11 Gaussian window, sigma 1.5 (the separable 1-D
  Gaussian truncated at 3.5 sigma = radius 5, normalised to sum 1), K1 = 0.01, K2 = 0.03,
  data range L = 255, population (not sample) covariances; the SSIM map is evaluated only
  where the window lies inside the image ("valid" positions), averaged over those positions
  for each channel, then averaged over the channels. This equals
  `skimage.metrics.structural_similarity(a, b, channel_axis=-1, gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=255)` (skimage filters with reflect
  padding and then crops the 5-pixel border, which leaves exactly the valid positions).
  Computed in float64 because E[x^2] - E[x]^2 at a 255 scale loses ~1e-4 of SSIM in float32.

Both functions return a float64 tf.Tensor: shape [] for one image, [B] for a batch.
"""
from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5  # skimage / scipy.ndimage: radius = int(3.5 * 1.5 + 0.5) = 5 -> 11 taps
SSIM_K1 = 0.01
SSIM_K2 = 0.03
DATA_RANGE = 255.0


def _gaussian_taps(sigma: float = SSIM_SIGMA, truncate: float = SSIM_TRUNCATE) -> np.ndarray:
    """The 1-D kernel of scipy.ndimage.gaussian_filter: exp(-x^2 / 2 sigma^2), |x| <= radius,
    normalised to sum 1 (the 2-D window is its outer product)."""
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-0.5 * (x / sigma) ** 2)
    return g / g.sum()


def _as_uint8_pair(a, b, name: str):
    """Validates two uint8 images of one shape; returns float64 tensors [B, H, W, C] and
    whether the input was a single image."""
    ta, tb = tf.convert_to_tensor(a), tf.convert_to_tensor(b)
    for t, which in ((ta, "first"), (tb, "second")):
        if t.dtype != tf.uint8:
            raise ValueError(f"{name}: the {which} image must be uint8, got {t.dtype.name}")
        if t.shape.rank not in (3, 4):
            raise ValueError(f"{name}: expected [H, W, C] or [B, H, W, C], got shape "
                             f"{t.shape.as_list()} for the {which} image")
    if ta.shape.rank != tb.shape.rank or (ta.shape.is_fully_defined() and tb.shape.is_fully_defined()
                                          and ta.shape != tb.shape):
        raise ValueError(f"{name}: the images differ in shape: {ta.shape.as_list()} vs "
                         f"{tb.shape.as_list()}")
    single = ta.shape.rank == 3
    if single:
        ta, tb = ta[None], tb[None]
    return tf.cast(ta, tf.float64), tf.cast(tb, tf.float64), single


def psnr(a, b) -> tf.Tensor:
    """Peak signal-to-noise ratio in dB of uint8 images a and b (symmetric), data range 255.

    [H, W, C] -> scalar, [B, H, W, C] -> [B]. Identical images give +inf.
    """
    x, y, single = _as_uint8_pair(a, b, "psnr")
    mse = tf.reduce_mean(tf.math.squared_difference(x, y), axis=[1, 2, 3])
    # 10 log10(L^2 / mse); mse = 0 -> L^2 / 0 = inf -> inf.
    value = 10.0 * tf.math.log(tf.constant(DATA_RANGE ** 2, tf.float64) / mse) / math.log(10.0)
    return value[0] if single else value


def _filter_valid(x: tf.Tensor, taps: np.ndarray) -> tf.Tensor:
    """Separable Gaussian filter of every channel of [B, H, W, K] at the valid positions only
    (two depthwise convolutions: one op per direction for all channels and signals)."""
    k, n = taps.shape[0], x.shape[-1]
    column = tf.constant(np.tile(taps.reshape(k, 1, 1, 1), (1, 1, n, 1)))
    row = tf.constant(np.tile(taps.reshape(1, k, 1, 1), (1, 1, n, 1)))
    x = tf.nn.depthwise_conv2d(x, column, strides=[1, 1, 1, 1], padding="VALID")
    return tf.nn.depthwise_conv2d(x, row, strides=[1, 1, 1, 1], padding="VALID")


def ssim(a, b) -> tf.Tensor:
    """Mean structural similarity of uint8 images a and b (the convention in the module
    docstring: 11x11 Gaussian sigma 1.5, K1 0.01, K2 0.03, L 255, per channel then averaged).

    [H, W, C] -> scalar, [B, H, W, C] -> [B]. H and W must be at least 11.
    """
    x, y, single = _as_uint8_pair(a, b, "ssim")
    taps_np = _gaussian_taps()
    win = taps_np.shape[0]
    h, w = x.shape[1], x.shape[2]
    if h is not None and w is not None and (h < win or w < win):
        raise ValueError(f"ssim: images must be at least {win}x{win} (the Gaussian window), "
                         f"got {h}x{w}")
    if x.shape[-1] is None:
        raise ValueError("ssim: the number of channels must be known statically")
    # Eq. (13) of Wang et al. 2004 with Gaussian-weighted local statistics: filter the five
    # signals x, y, x^2, y^2, xy of every channel in one pass.
    stats = _filter_valid(tf.concat([x, y, x * x, y * y, x * y], axis=-1), taps_np)
    mu_x, mu_y, e_xx, e_yy, e_xy = tf.split(stats, 5, axis=-1)
    var_x = e_xx - mu_x * mu_x
    var_y = e_yy - mu_y * mu_y
    cov_xy = e_xy - mu_x * mu_y
    c1 = (SSIM_K1 * DATA_RANGE) ** 2
    c2 = (SSIM_K2 * DATA_RANGE) ** 2
    ssim_map = ((2.0 * mu_x * mu_y + c1) * (2.0 * cov_xy + c2)) / (
        (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2))
    per_channel = tf.reduce_mean(ssim_map, axis=[1, 2])         # [B, C]
    value = tf.reduce_mean(per_channel, axis=1)
    return value[0] if single else value
