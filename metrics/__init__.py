"""Image-quality metrics of the deblurring evaluation (SPEC section 6), usable on their own.

    from metrics import psnr, ssim, LPIPS, niqe, image_metrics

* psnr(a, b), ssim(a, b): uint8 RGB [H, W, 3] or [B, H, W, 3], GoPro/HIDE protocol
  (metrics/fidelity.py), float64 tf.Tensor.
* LPIPS(net='alex'|'vgg'): v0.1 with the real ImageNet weights; call on float images in
  [-1, 1] or .from_uint8(a, b) (metrics/lpips.py).
* niqe(image): uint8 RGB or gray, the MATLAB NIQE (metrics/naturalness.py), a float.
* image_metrics(output, reference, lpips_model=None): dict(psnr, ssim, lpips, niqe) of one
  uint8 pair (metrics/api.py).
* InceptionFeatures(): the FID Inception-v3 with its real weights, images -> [n, 2048]
  (metrics/inception.py); fid_kid(feats_a, feats_b): dict(fid, kid, n_a, n_b) (metrics/fid.py).

Names are resolved lazily so that importing the package (e.g. for the CLI's argument parser)
does not import TensorFlow.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "psnr": "metrics.fidelity",
    "ssim": "metrics.fidelity",
    "LPIPS": "metrics.lpips",
    "niqe": "metrics.naturalness",
    "image_metrics": "metrics.api",
    "InceptionFeatures": "metrics.inception",
    "fid_kid": "metrics.fid",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'metrics' has no attribute {name!r}")
