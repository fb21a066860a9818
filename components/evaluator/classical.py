"""Classical restorations a practitioner tries before a diffusion model: the references a model
is compared with besides the blurry input itself (issue 37, item 3).

    out = restore("unsharp_r2_a1.0", blurry)          # uint8 HxWx3 -> uint8 HxWx3
    outs = run_baselines(DEFAULT_BASELINES, images)   # {name: [output per image]}

Every method is scikit-image's own implementation (0.25), run on the image as float in [0, 1];
its output is clipped to [0, 1] and rounded to uint8, same shape as the input. The names are
stable strings (reports and manifests carry them); each has a one-line label for reports.

  unsharp_r2_a0.5, unsharp_r2_a1.0   skimage.filters.unsharp_mask, radius 2 (sharpening)
  gaussian_s1                        skimage.filters.gaussian, sigma 1 (a plain denoiser: on the
                                     out-of-domain set, noisy low-light JPEG, it beat the model)
  nlmeans                            skimage.restoration.denoise_nl_means, fast mode, 5x5
                                     patches, distance 6, h = 0.8 * the noise sigma of
                                     estimate_sigma (skimage's, ported: it needs PyWavelets)

Not here: Richardson-Lucy and Wiener deconvolution need the blur kernel, and our examples carry
none (blind deconvolution is a method of its own, not a reference one tries first).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np

# scikit-image and scipy.stats are imported where they are used: the pipeline config names the
# baselines (EvalConfig checks them), and loading a config should not load the filters

# 2, not -1: in scikit-image 0.25.2 unsharp_mask(channel_axis=-1) loops over
# image.shape[-1] (3) but slices with utils.slice_at_axis(c, -1) == (c, ...): it sharpens the
# first 3 ROWS and leaves every other pixel of np.empty_like's result uninitialised (measured:
# max difference 1.07 against channel_axis=2, which equals per-channel calls exactly).
# gaussian, estimate_sigma and denoise_nl_means accept -1, but 2 is used throughout.
CHANNEL_AXIS = 2


def _unsharp(amount: float) -> Callable[[np.ndarray], np.ndarray]:
    def sharpen(img):
        from skimage import filters

        return filters.unsharp_mask(img, radius=2, amount=amount, channel_axis=CHANNEL_AXIS)

    return sharpen


def _gaussian(img: np.ndarray) -> np.ndarray:
    from skimage import filters

    return filters.gaussian(img, sigma=1, channel_axis=CHANNEL_AXIS)


# db2's decomposition high-pass filter (PyWavelets' Wavelet("db2").dec_hi).
_DB2_DEC_HI = np.array([-0.48296291314453416, 0.8365163037378079,
                        -0.2241438680420134, -0.12940952255126037])


def _dwt_detail(x: np.ndarray, axis: int) -> np.ndarray:
    """pywt.dwt(x, "db2", mode="symmetric", axis=axis)'s detail coefficients, bit for bit."""
    f = len(_DB2_DEC_HI)
    pad = [(0, 0)] * x.ndim
    pad[axis] = (f - 1, f - 1)
    xp = np.moveaxis(np.pad(x, pad, mode="symmetric"), axis, -1)
    n = xp.shape[-1] - f + 1  # the full convolution's N + F - 1 values
    full = np.zeros(xp.shape[:-1] + (n,))
    for j, h in enumerate(_DB2_DEC_HI):  # PyWavelets' summation order: exact zeros match
        full = full + h * xp[..., f - 1 - j:f - 1 - j + n]
    return np.moveaxis(full[..., 1::2], -1, axis)  # odd positions: floor((N + F - 1) / 2)


def estimate_sigma(img: np.ndarray) -> float:
    """skimage.restoration.estimate_sigma(img, channel_axis=2, average_sigmas=True), in numpy.

    The same estimator (Donoho's: median |finest diagonal db2 wavelet coefficient| / 0.6745
    per channel, exact zeros masked out, averaged over channels; a flat image: 0, not NaN),
    because skimage's calls PyWavelets, which is not a dependency of this project
    (requirements/*.lock). Equal to skimage's to the last bit on the images measured (axis 0
    then 1, PyWavelets' summation order); the test checks it where PyWavelets is importable.
    """
    import scipy.stats

    sigmas = []
    for c in range(img.shape[CHANNEL_AXIS]):
        dd = _dwt_detail(_dwt_detail(img[:, :, c], 0), 1)
        dd = dd[np.nonzero(dd)]
        sigmas.append(np.median(np.abs(dd)) / scipy.stats.norm.ppf(0.75) if dd.size else 0.0)
    return float(np.mean(sigmas))


def _nlmeans(img: np.ndarray) -> np.ndarray:
    sigma = estimate_sigma(img)
    if not sigma > 0:  # a flat image: nothing to denoise (h = 0 would divide by zero)
        return img
    # patch_distance 6: 66-85 ms per 256x256 image here (best of 5; unsharp ~6-9 ms, gaussian
    # ~4 ms), well under the 1 s that would call for a shorter distance
    from skimage import restoration

    return restoration.denoise_nl_means(img, h=0.8 * sigma, fast_mode=True, patch_size=5,
                                        patch_distance=6, channel_axis=CHANNEL_AXIS)


@dataclasses.dataclass(frozen=True)
class Classical:
    name: str   # stable: reports and manifests carry it
    label: str  # one line for reports
    fn: Callable[[np.ndarray], np.ndarray]  # float HxWx3 in [0, 1] -> float HxWx3


METHODS: Dict[str, Classical] = {m.name: m for m in (
    Classical("unsharp_r2_a0.5", "unsharp mask, radius 2, amount 0.5", _unsharp(0.5)),
    Classical("unsharp_r2_a1.0", "unsharp mask, radius 2, amount 1.0", _unsharp(1.0)),
    Classical("gaussian_s1", "Gaussian filter, sigma 1 (denoiser)", _gaussian),
    Classical("nlmeans", "non-local means, 5x5 patches, distance 6, h = 0.8 sigma (estimated)",
              _nlmeans),
)}
DEFAULT_BASELINES: Tuple[str, ...] = tuple(METHODS)


def get(name: str) -> Classical:
    if name not in METHODS:
        raise ValueError(f"unknown classical baseline {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name]


def restore(name: str, blurry_uint8_rgb: np.ndarray) -> np.ndarray:
    """The method `name` applied to an HxWx3 uint8 image: HxWx3 uint8."""
    method = get(name)
    img = np.asarray(blurry_uint8_rgb)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 image, got {img.dtype} {img.shape}")
    out = method.fn(img.astype(np.float64) / 255.0)
    return np.round(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)


def run_baselines(names: Sequence[str],
                  images: Sequence[np.ndarray]) -> Dict[str, List[np.ndarray]]:
    """{name: [restore(name, image) for image in images]}; unknown names fail before any work."""
    for name in names:
        get(name)
    return {name: [restore(name, image) for image in images] for name in names}
