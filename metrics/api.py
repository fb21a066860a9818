"""`image_metrics`: every metric of one output image against its sharp reference."""
from __future__ import annotations

import math
from typing import Dict, Optional

import numpy as np

from metrics.naturalness import BLOCK, niqe

_DEFAULT_LPIPS: Dict[str, object] = {}


def default_lpips(net: str = "alex"):
    """One LPIPS network per backbone for the process (built on first use)."""
    from metrics.lpips import LPIPS

    if net not in _DEFAULT_LPIPS:
        _DEFAULT_LPIPS[net] = LPIPS(net)
    return _DEFAULT_LPIPS[net]


def image_metrics(output_uint8, reference_uint8, lpips_model=None) -> Dict[str, float]:
    """PSNR (dB), SSIM, LPIPS of `output_uint8` against `reference_uint8`, and NIQE of the output.

    Both images uint8 RGB [H, W, 3] of one size. lpips_model: an LPIPS instance (default the
    process-wide AlexNet one). PSNR is inf for identical images; NIQE is nan when the image is
    smaller than one 96 x 96 NIQE block (or featureless); the other metrics are always defined.
    """
    from metrics.fidelity import psnr, ssim

    out = np.asarray(output_uint8)
    ref = np.asarray(reference_uint8)
    for img, name in ((out, "output"), (ref, "reference")):
        if img.dtype != np.uint8:
            raise ValueError(f"image_metrics: the {name} must be uint8, got {img.dtype}")
        if img.ndim != 3 or img.shape[-1] != 3:
            raise ValueError(f"image_metrics: the {name} must be [H, W, 3] RGB, got {img.shape}")
    if out.shape != ref.shape:
        raise ValueError(f"image_metrics: output {out.shape} and reference {ref.shape} differ "
                         f"in size")
    model = lpips_model if lpips_model is not None else default_lpips("alex")
    small = min(out.shape[0], out.shape[1]) < BLOCK
    return {
        "psnr": float(psnr(out, ref)),
        "ssim": float(ssim(out, ref)),
        "lpips": float(model.from_uint8(out, ref)),
        "niqe": math.nan if small else niqe(out),
    }
