"""Per-image statistics stored with every example so TFDV can see the domain gap.

The paper's failure cases are dark, saturated night scenes; these four numbers are cheap to
compute at ingest and separate such inputs from a GoPro-like training domain:

- mean_luma: mean BT.601 luma in [0, 1].
- saturated_fraction: share of pixels with at least one channel at 255 (clipped highlights).
- blur_laplacian_var: variance of the 3x3 Laplacian of the luma (in 8-bit units); low = blurry
  (Pech-Pacheco et al., 2000).
- noise_sigma: Immerkaer's fast noise estimate (CVIU 1996) of the luma in 8-bit units:
  sigma = sqrt(pi / 2) / (6 (W - 2) (H - 2)) * sum |Y * N|, N = [[1,-2,1],[-2,4,-2],[1,-2,1]].
"""
from __future__ import annotations

import math
from typing import Dict

import numpy as np

from core.example_format import luma


def _interior_filter(y: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """'valid' 3x3 correlation by shifted slices (no scipy, no padding)."""
    h, w = y.shape
    out = np.zeros((h - 2, w - 2), dtype=np.float64)
    for dy in range(3):
        for dx in range(3):
            k = kernel[dy, dx]
            if k:
                out += k * y[dy : dy + h - 2, dx : dx + w - 2]
    return out


_LAPLACIAN = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=np.float64)
_IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)


def image_stats(rgb: np.ndarray, y: np.ndarray | None = None) -> Dict[str, float]:
    """Statistics of one H x W x 3 uint8 image (H, W >= 3). `y` may pass a precomputed luma."""
    if y is None:
        y = luma(rgb)
    y255 = y * 255.0
    h, w = y.shape
    if h < 3 or w < 3:
        raise ValueError(f"image {h}x{w} is too small for image statistics")
    lap = _interior_filter(y255, _LAPLACIAN)
    noise = math.sqrt(math.pi / 2.0) * np.abs(_interior_filter(y255, _IMMERKAER)).sum() / (
        6.0 * (w - 2) * (h - 2)
    )
    return {
        "mean_luma": float(y.mean()),
        "saturated_fraction": float((rgb == 255).any(axis=-1).mean()),
        "blur_laplacian_var": float(lap.var()),
        "noise_sigma": float(noise),
    }
