"""Deterministic synthetic paired blurry/sharp data sets (a GoPro-like and a RealBlur-like one).

``generate(out_dir, ...)`` writes two small data sets whose *layouts* are those of the real
benchmarks the paper uses (trained on GoPro, evaluated out-of-domain on RealBlur-J), so the
ingest/train/evaluate pipeline can run end to end without downloading anything:

``OUT/gopro_synth`` (in-domain, imitates GoPro, Nah et al. CVPR 2017)
    ``GOPRO_Large/{train,test}/GOPR<NNNN>_synth/{blur,sharp}/<NNNNNN>.png``, 2-4 frames per
    sequence. A sharp scene (a random crop of an offline sample photograph or a procedural
    scene) moves along a smooth random camera trajectory (translation with constant
    acceleration, small in-plane rotation; blur length ~2-25 px at 256 px, scaled with the
    image size); 7-13 sub-frames are rendered by cubic-spline warping in *linear* light
    (inverse gamma 2.2, GoPro's CRF approximation), averaged, re-gamma'd and quantised to 8
    bits. The sharp image is the middle sub-frame, as in GoPro.

``OUT/realblur_synth`` (out-of-domain, imitates RealBlur-J, Rim et al. ECCV 2020)
    ``RealBlur-J_ECC_IMCORR_centroid_itensity_ref/scene<NNN>/{gt,blur}/{gt,blur}_<k>.png`` and
    ``RealBlur_J_{train,test}_list.txt`` with lines ``"<gt> <blur>"`` relative to the root.
    Low-light scenes: the linear (sRGB-decoded) crop is metered to a mean of 0.18 (gain
    limited to 1/4..4), scaled by an exposure of 0.03-0.3, and point light sources / lit
    windows whose linear intensity is far above 1 are added. The blur is a camera-shake PSF
    (a random-walk trajectory with inertia and abrupt shakes after Boracchi & Foi, TIP 2012,
    rasterised into a kernel of 9-31 px at 256 px (scaled with the image size, at least 9)
    whose centroid is at its centre, like RealBlur's centroid alignment), convolved in linear
    light on a padded crop; then
    Poisson-Gaussian sensor noise, clipping (light streaks saturate), sRGB encoding, 8-bit
    quantisation and a JPEG round trip (quality 60-90) stored as PNG. The gt is the same dark
    scene, sharp, noise-free, clipped, sRGB-encoded PNG (no JPEG).

Sources (both domains): random crops (scale 0.5-1.5, random flips) of the sample photographs
that ship with scikit-image and matplotlib, or procedural sharp-edged scenes (shapes, lines,
stripes, checkerboards, glyphs); crops that are too flat (or, in-domain, too dark) are
re-drawn. Crops include margins for the motion, so no border effects reach the output.

Test content is never training content: the photographs are split into two disjoint pools,
TRAIN_PHOTOS (the train splits of both domains; RealBlur-like's train list, which the pipeline
ingests as its out-of-domain validation split, too) and TEST_PHOTOS (the test splits of both
domains), whatever the seed; procedural scenes come from random streams keyed by the split
([seed, domain, split, group]), so no test scene is drawn from a training stream. `generate`
writes where every pair came from to OUT/synth_sources.json (split, pair, source).

Everything is a function of ``seed`` (child generators ``numpy.random.default_rng([seed,
domain, split, group, frame])``), the images ship with scikit-image / matplotlib, and the PNG
files carry no varying metadata, so the same seed gives byte-identical files. Existing
``gopro_synth`` / ``realblur_synth`` directories under ``out_dir`` are replaced.
"""
from __future__ import annotations

import functools
import io
import json
import math
import numbers
import os
import shutil
from typing import Callable, List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import fft as sfft
from scipy import ndimage

IN_ROOT = "gopro_synth"
OUT_ROOT = "realblur_synth"
REALBLUR_DIR = "RealBlur-J_ECC_IMCORR_centroid_itensity_ref"
REALBLUR_LISTS = {"train": "RealBlur_J_train_list.txt", "test": "RealBlur_J_test_list.txt"}
SOURCES_FILE = "synth_sources.json"  # OUT/synth_sources.json: the source of every pair

# Disjoint photograph pools: train splits draw only TRAIN_PHOTOS, test splits only TEST_PHOTOS
# (grayscale ones are used as neutral RGB). Until 2026-12-07 every split drew from one pool of
# the first nine colour photographs, so test scenes were crops of training photographs.
TRAIN_PHOTOS = ("astronaut", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
                "retina", "brick", "grass", "gravel", "coins", "moon", "clock")
TEST_PHOTOS = ("chelsea", "stereo_motorcycle", "grace_hopper", "camera")
_NATURAL_SOURCES = TRAIN_PHOTOS + TEST_PHOTOS
_PROCEDURAL = "procedural"
_DOM_IN, _DOM_OUT = 1, 2
_SPLITS = {"train": 0, "test": 1}
_GAMMA = 2.2  # GoPro's CRF approximation

# in-domain motion (at 256 px; scaled by sqrt(H*W)/256)
_BLUR_MIN, _BLUR_MAX_256 = 2.0, 25.0
_ROT_MAX = math.radians(1.0)
_ROT_FRACTION = 0.4  # rotation displaces a corner by at most this fraction of the blur length
_WARP_ORDER = 3  # sub-frame interpolation: 3 cubic spline (1 = bilinear, ~25% faster)
# out-of-domain PSF sizes (at 256 px)
_KMIN, _KMAX_256 = 9, 31


# --------------------------------------------------------------------------------------------
# tone curves
# --------------------------------------------------------------------------------------------
_U8 = np.arange(256, dtype=np.float64) / 255.0
_GAMMA_LUT = _U8 ** _GAMMA
_SRGB_LUT = np.where(_U8 <= 0.04045, _U8 / 12.92, ((_U8 + 0.055) / 1.055) ** 2.4)


def _quantise(x: np.ndarray) -> np.ndarray:
    return np.floor(np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _gamma_encode(lin: np.ndarray) -> np.ndarray:
    return _quantise(np.clip(lin, 0.0, 1.0) ** (1.0 / _GAMMA))


def _srgb_encode(lin: np.ndarray) -> np.ndarray:
    x = np.clip(lin, 0.0, 1.0)
    return _quantise(np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055))


# --------------------------------------------------------------------------------------------
# sharp sources
# --------------------------------------------------------------------------------------------
def _load_natural(name: str) -> np.ndarray:
    if name == "grace_hopper":
        import matplotlib.cbook

        path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
    else:
        import skimage.data

        arr = getattr(skimage.data, name)()
        if isinstance(arr, tuple):  # stereo_motorcycle -> (left, right, disparity)
            arr = arr[0]
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] < 3:
        raise ValueError(f"unexpected sample image {name}: {arr.shape} {arr.dtype}")
    return np.ascontiguousarray(arr[..., :3])


@functools.lru_cache(maxsize=None)
def _natural_image(name: str) -> Image.Image:
    return Image.fromarray(_load_natural(name), "RGB")


@functools.lru_cache(maxsize=None)
def available_sources(split: str | None = None) -> Tuple[str, ...]:
    """The sample photographs of a split's pool (None: both pools) that load offline here (any
    that does not is skipped)."""
    if split is None:
        pool = _NATURAL_SOURCES
    elif split in _SPLITS:
        pool = TEST_PHOTOS if split == "test" else TRAIN_PHOTOS
    else:
        raise ValueError(f"split must be one of {sorted(_SPLITS)}, got {split!r}")
    ok = []
    for name in pool:
        try:
            _natural_image(name)
        except Exception:  # missing optional data file, no network, ...
            continue
        ok.append(name)
    return tuple(ok)


def _pick_source(rng: np.random.Generator, p_procedural: float, split: str) -> str:
    names = available_sources(split)
    if not names or rng.random() < p_procedural:
        return _PROCEDURAL
    return names[int(rng.integers(len(names)))]


def _crop_natural(rng: np.random.Generator, name: str, h: int, w: int) -> np.ndarray:
    """A random h x w crop at a random scale 0.5-1.5 (raised if the source is too small)."""
    img = _natural_image(name)
    sw, sh = img.size
    s = max(rng.uniform(0.5, 1.5), h / sh * 1.0001, w / sw * 1.0001)
    bh, bw = h / s, w / s
    y0 = rng.uniform(0.0, sh - bh)
    x0 = rng.uniform(0.0, sw - bw)
    out = np.asarray(img.resize((w, h), Image.Resampling.BICUBIC, box=(x0, y0, x0 + bw, y0 + bh)))
    if rng.random() < 0.5:
        out = out[:, ::-1]
    if rng.random() < 0.25:
        out = out[::-1]
    return np.ascontiguousarray(out)


@functools.lru_cache(maxsize=None)
def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except Exception:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _rand_colour(rng: np.random.Generator) -> Tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, 3))


def _procedural(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Sharp-edged shapes, lines, stripes, checkerboards and glyphs (drawn at 2x, box-reduced)."""
    ss = 2
    H, W = h * ss, w * ss
    c0, c1 = np.array(_rand_colour(rng), float), np.array(_rand_colour(rng), float)
    ang = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:H, 0:W]
    ramp = (np.cos(ang) * xx / W + np.sin(ang) * yy / H)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    bg = c0 + (c1 - c0) * ramp[..., None]
    canvas = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(canvas)
    n = int(rng.integers(16, 36) * max(1.0, min(4.0, h * w / 65536.0)))
    glyphs = "ABCDEFGHJKLMNPQRSTUVWXYZabdefghkmnqrstwxyz0123456789#%&@"
    for _ in range(n):
        kind = rng.choice(["rect", "ellipse", "line", "polygon", "stripes", "checker", "text"],
                          p=[0.18, 0.16, 0.16, 0.12, 0.12, 0.1, 0.16])
        cx, cy = rng.uniform(0, W), rng.uniform(0, H)
        rw = rng.uniform(0.03, 0.3) * W
        rh = rng.uniform(0.03, 0.3) * H
        box = [int(cx - rw / 2), int(cy - rh / 2), int(cx + rw / 2) + 1, int(cy + rh / 2) + 1]
        col = _rand_colour(rng)
        if kind == "rect":
            draw.rectangle(box, fill=col)
        elif kind == "ellipse":
            draw.ellipse(box, fill=col)
        elif kind == "line":
            pts = [(float(cx), float(cy))]
            for _ in range(int(rng.integers(1, 4))):
                pts.append((float(rng.uniform(0, W)), float(rng.uniform(0, H))))
            draw.line(pts, fill=col, width=int(rng.integers(1, 4) * ss))
        elif kind == "polygon":
            k = int(rng.integers(3, 7))
            a = np.sort(rng.uniform(0, 2 * np.pi, k))
            r = rng.uniform(0.4, 1.0, k)
            draw.polygon([(float(cx + rw * ri * np.cos(ai)), float(cy + rh * ri * np.sin(ai)))
                          for ai, ri in zip(a, r)], fill=col)
        elif kind in ("stripes", "checker"):
            ph, pw = box[3] - box[1], box[2] - box[0]
            py, px = np.mgrid[0:ph, 0:pw]
            period = rng.uniform(3, 16) * ss
            if kind == "stripes":
                t = rng.uniform(0, np.pi)
                m = (np.floor((np.cos(t) * px + np.sin(t) * py) / period) % 2).astype(bool)
            else:
                m = ((np.floor(px / period) + np.floor(py / period)) % 2).astype(bool)
            patch = np.where(m[..., None], np.array(col, np.uint8),
                             np.array(_rand_colour(rng), np.uint8)).astype(np.uint8)
            canvas.paste(Image.fromarray(patch, "RGB"), (box[0], box[1]))
        else:
            size = int(rng.integers(6, 28)) * ss
            text = "".join(rng.choice(list(glyphs), int(rng.integers(2, 10))))
            draw.text((float(box[0]), float(box[1])), text, fill=col, font=_font(size))
    return np.asarray(canvas.reduce(ss))


def _structure(img: np.ndarray) -> Tuple[float, float]:
    """(mean luma, mean absolute luma gradient) of a uint8 RGB image, in 8-bit units."""
    g = img.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    grad = 0.5 * (np.abs(np.diff(g, axis=0)).mean() + np.abs(np.diff(g, axis=1)).mean())
    return float(g.mean()), float(grad)


def _scene(rng: np.random.Generator, h: int, w: int, p_procedural: float, split: str,
           min_luma: float = 0.0, min_grad: float = 2.0,
           tries: int = 6) -> Tuple[np.ndarray, str]:
    """A random sharp scene of the split's pool and its source's name; crops that are too flat
    (or too dark) are re-drawn a few times."""
    best, best_key = None, None
    for _ in range(tries):
        name = _pick_source(rng, p_procedural, split)
        img = _procedural(rng, h, w) if name == _PROCEDURAL else _crop_natural(rng, name, h, w)
        luma, grad = _structure(img)
        if luma >= min_luma and grad >= min_grad:
            return img, name
        key = min(luma / max(min_luma, 1e-6), grad / min_grad)
        if best is None or key > best_key:
            best, best_key = (img, name), key
    return best


# --------------------------------------------------------------------------------------------
# in-domain: GoPro-like averaged sub-frames
# --------------------------------------------------------------------------------------------
def _size_factor(h: int, w: int) -> float:
    return math.sqrt(h * w) / 256.0


def _camera_path(rng, n_sub: int, length: float, direction: float, half_diag: float):
    """Sub-frame displacements (n, 2) [rows, cols] and rotations (n,), zero at the middle."""
    t = np.linspace(0.0, 1.0, n_sub)
    v = np.array([np.sin(direction), np.cos(direction)])
    a_ang = rng.uniform(0, 2 * np.pi)
    a = rng.uniform(0.0, 3.0) * np.array([np.sin(a_ang), np.cos(a_ang)])
    p = t[:, None] * v + 0.5 * t[:, None] ** 2 * a
    seg = float(np.sum(np.linalg.norm(np.diff(p, axis=0), axis=1)))
    if seg < 1e-6:
        p, seg = t[:, None] * v, 1.0
    p *= length / seg
    mid = n_sub // 2
    p -= p[mid]
    span = rng.uniform(-1.0, 1.0) * min(_ROT_MAX, _ROT_FRACTION * length / max(half_diag, 1.0))
    theta = span * (t - t[mid])
    return p, theta


def _gopro_sequence(rng: np.random.Generator, n_frames: int, h: int, w: int,
                    frame_rng: Callable[[int], np.random.Generator], split: str,
                    source: List[str]):
    """Yields (blur, sharp) uint8 pairs for the frames of one sequence (one moving scene of the
    split's pool; its source's name is appended to `source`)."""
    sf = _size_factor(h, w)
    lmax = max(4.0, _BLUR_MAX_256 * sf)
    margin = int(math.ceil((1.0 + _ROT_FRACTION) * lmax)) + 3
    drift = max(1, int(round(0.03 * max(h, w))))
    ch, cw = h + 2 * (margin + drift), w + 2 * (margin + drift)
    canvas, name = _scene(rng, ch, cw, p_procedural=0.3, split=split, min_luma=40.0)
    source.append(name)
    lin = _GAMMA_LUT[canvas]
    if _WARP_ORDER > 1:
        coef = [ndimage.spline_filter(lin[..., c], order=_WARP_ORDER, mode="mirror")
                for c in range(3)]
    else:
        coef = [np.ascontiguousarray(lin[..., c]) for c in range(3)]
    base_len = rng.uniform(_BLUR_MIN, lmax)
    base_dir = rng.uniform(0, 2 * np.pi)
    half = max(1.0, (n_frames - 1) / 2.0)
    step = rng.uniform(-drift / half, drift / half, 2)
    c = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    half_diag = 0.5 * math.hypot(h, w)
    for f in range(n_frames):
        frng = frame_rng(f)
        off = margin + drift + np.round(step * (f - (n_frames - 1) / 2.0)).astype(int)
        length = float(np.clip(base_len * np.exp(frng.normal(0, 0.3)), _BLUR_MIN, lmax))
        direction = base_dir + frng.normal(0, 0.5)
        n_sub = int(frng.integers(7, 14))
        p, theta = _camera_path(frng, n_sub, length, direction, half_diag)
        sharp_lin = lin[off[0]:off[0] + h, off[1]:off[1] + w]
        acc = np.zeros((h, w, 3))
        for k in range(n_sub):
            if k == n_sub // 2:  # the middle sub-frame is the un-warped sharp frame
                acc += sharp_lin
                continue
            cs, sn = math.cos(theta[k]), math.sin(theta[k])
            rot = np.array([[cs, -sn], [sn, cs]])
            offset = c + off + p[k] - rot @ c
            for ch_i in range(3):
                acc[..., ch_i] += ndimage.affine_transform(
                    coef[ch_i], rot, offset=offset, output_shape=(h, w), order=_WARP_ORDER,
                    mode="mirror", prefilter=False)
        blur = _gamma_encode(acc / n_sub)
        sharp = np.ascontiguousarray(canvas[off[0]:off[0] + h, off[1]:off[1] + w])
        yield blur, sharp


# --------------------------------------------------------------------------------------------
# out-of-domain: RealBlur-like low light, camera-shake PSF, noise, JPEG
# --------------------------------------------------------------------------------------------
def shake_psf(rng: np.random.Generator, size: int, n_steps: int = 400) -> np.ndarray:
    """A size x size camera-shake PSF (sum 1, centroid at the centre).

    Trajectory: random walk with inertia, centripetal pull and rare abrupt shakes, after
    Boracchi & Foi (2012), "Modeling the performance of image restoration from motion blur".
    """
    anxiety = 0.1 * rng.random() + 0.005
    centripetal = 0.7 * rng.random()
    gaussian_term = 10.0 * rng.random() + 0.5
    freq_big = 0.2 * rng.random()
    step = 1.0
    u = rng.random(n_steps)
    jump = rng.random(n_steps)
    g = rng.standard_normal((n_steps, 2))
    x = np.zeros(n_steps, complex)
    v = np.exp(1j * rng.uniform(0, 2 * np.pi)) * step
    for t in range(n_steps - 1):
        nxt = 2 * v * np.exp(1j * (np.pi + (jump[t] - 0.5))) if u[t] < freq_big * anxiety else 0
        dv = nxt + anxiety * (gaussian_term * (g[t, 0] + 1j * g[t, 1]) - centripetal * x[t]) * step
        v = v + dv
        v = v / max(abs(v), 1e-12) * step
        x[t + 1] = x[t] + v
    pts = np.stack([x.imag, x.real], axis=1)
    pts -= pts.mean(axis=0)  # kernel centroid (mean of bilinear splats) -> kernel centre
    r = (size - 1) / 2.0
    ext = float(np.abs(pts).max())
    pts *= rng.uniform(0.6, 1.0) * (r - 1.0) / max(ext, 1e-6)
    pts += r
    k = np.zeros((size, size))
    i0 = np.floor(pts).astype(int)
    fr = pts - i0
    for dy in (0, 1):
        for dx in (0, 1):
            wgt = (fr[:, 0] if dy else 1 - fr[:, 0]) * (fr[:, 1] if dx else 1 - fr[:, 1])
            np.add.at(k, (i0[:, 0] + dy, i0[:, 1] + dx), wgt)
    return k / k.sum()


def _convolve_valid(img: np.ndarray, psf: np.ndarray) -> np.ndarray:
    """'valid' 2-D convolution of each channel of img (H, W, C) with psf (K, K), via the FFT.

    (scipy.signal.fftconvolve does the same, but importing scipy.signal costs seconds.) With an
    FFT length >= the input, the circular wrap-around only reaches the first K-1 rows/columns,
    which 'valid' discards.
    """
    k = psf.shape[0]
    shape = tuple(sfft.next_fast_len(n, real=True) for n in img.shape[:2])
    f = sfft.rfft2(img, s=shape, axes=(0, 1)) * sfft.rfft2(psf, s=shape)[..., None]
    full = sfft.irfft2(f, s=shape, axes=(0, 1))
    return full[k - 1:img.shape[0], k - 1:img.shape[1]]


def _add_lights(rng, lin: np.ndarray, region: Tuple[int, int, int, int], sf: float) -> None:
    """Point light sources and lit windows (linear intensity >> 1), added in place."""
    y0, x0, y1, x1 = region
    hh, ww = lin.shape[:2]
    colours = np.array([[1.0, 0.95, 0.85], [1.0, 0.6, 0.25], [1.0, 0.85, 0.5],
                        [0.7, 0.85, 1.0], [1.0, 0.3, 0.2], [0.5, 1.0, 0.6]])
    n = max(2, int(round(rng.integers(3, 10) * max(0.25, (y1 - y0) * (x1 - x0) / 65536.0))))
    for i in range(n):
        if i < 2:  # at least two well inside the visible area
            cy = rng.uniform(y0 + 0.1 * (y1 - y0), y1 - 0.1 * (y1 - y0))
            cx = rng.uniform(x0 + 0.1 * (x1 - x0), x1 - 0.1 * (x1 - x0))
        else:
            cy, cx = rng.uniform(0, hh), rng.uniform(0, ww)
        sigma = rng.uniform(0.6, 2.0) * max(1.0, math.sqrt(sf))
        peak = math.exp(rng.uniform(math.log(10.0), math.log(200.0)))
        col = colours[int(rng.integers(len(colours)))]
        rad = int(math.ceil(4 * sigma))
        ya, yb = max(0, int(cy) - rad), min(hh, int(cy) + rad + 2)
        xa, xb = max(0, int(cx) - rad), min(ww, int(cx) + rad + 2)
        if ya >= yb or xa >= xb:
            continue
        yy, xx = np.mgrid[ya:yb, xa:xb]
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma ** 2))
        lin[ya:yb, xa:xb] += peak * blob[..., None] * col
    for _ in range(int(rng.integers(0, 3))):
        bh = int(rng.uniform(0.03, 0.1) * hh) + 1
        bw = int(rng.uniform(0.03, 0.1) * ww) + 1
        ya, xa = int(rng.integers(0, hh - bh)), int(rng.integers(0, ww - bw))
        lin[ya:ya + bh, xa:xa + bw] += rng.uniform(1.0, 3.0) * colours[int(rng.integers(3))]


def _realblur_scene(rng: np.random.Generator, n_frames: int, h: int, w: int,
                    frame_rng: Callable[[int], np.random.Generator], split: str,
                    source: List[str]):
    """Yields (blur, gt) uint8 pairs of one static dark scene (of the split's pool; its
    source's name is appended to `source`) with different camera shakes."""
    sf = _size_factor(h, w)
    kmax = max(_KMIN, int(round(_KMAX_256 * sf)) | 1)
    pad = kmax // 2 + 1
    jit = max(1, int(round(3 * sf)))
    m = pad + jit
    ch, cw = h + 2 * m, w + 2 * m
    canvas, name = _scene(rng, ch, cw, p_procedural=0.2, split=split)
    source.append(name)
    lin = _SRGB_LUT[canvas]
    # meter the scene (mean linear level 0.18, gain limited to 1/4..4), then under-expose it
    gain = float(np.clip(0.18 / max(float(lin.mean()), 1e-6), 0.25, 4.0))
    exposure = math.exp(rng.uniform(math.log(0.03), math.log(0.3)))
    lin *= gain * exposure
    _add_lights(rng, lin, (m, m, m + h, m + w), sf)
    for f in range(n_frames):
        frng = frame_rng(f)
        dy, dx = (int(v) for v in frng.integers(-jit, jit + 1, 2))
        y0, x0 = m + dy, m + dx
        ksize = int(frng.integers(_KMIN // 2, kmax // 2 + 1)) * 2 + 1
        psf = shake_psf(frng, ksize)
        r = ksize // 2
        src = lin[y0 - r:y0 + h + r, x0 - r:x0 + w + r]
        blurred = _convolve_valid(src, psf)
        blurred = np.maximum(blurred, 0.0)
        photons = math.exp(frng.uniform(math.log(60.0), math.log(600.0)))
        read = math.exp(frng.uniform(math.log(1e-3), math.log(5e-3)))
        noisy = frng.poisson(blurred * photons) / photons + frng.normal(0.0, read, blurred.shape)
        blur = _srgb_encode(noisy)
        buf = io.BytesIO()
        Image.fromarray(blur, "RGB").save(buf, format="JPEG", quality=int(frng.integers(60, 91)))
        buf.seek(0)
        with Image.open(buf) as im:
            blur = np.asarray(im.convert("RGB"))
        gt = _srgb_encode(lin[y0:y0 + h, x0:x0 + w])
        yield blur, gt


# --------------------------------------------------------------------------------------------
# layout
# --------------------------------------------------------------------------------------------
def _groups(rng: np.random.Generator, n: int) -> List[int]:
    """Splits n frames into groups of 2-4 (a single group of 1 only when n == 1)."""
    out, left = [], n
    while left > 0:
        k = min(int(rng.integers(2, 5)), left)
        if left - k == 1:
            k = left if left <= 4 else k - 1
        out.append(k)
        left -= k
    return out


def _save_png(arr: np.ndarray, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8), "RGB").save(path, format="PNG")


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def generate(out_dir: str, pairs: int = 8, size: tuple[int, int] = (256, 256), seed: int = 0,
             test_pairs: int | None = None, progress: bool = False) -> dict:
    """Writes OUT/gopro_synth (in-domain, GoPro layout) and OUT/realblur_synth (out-of-domain,
    RealBlur layout). Returns a summary dict: {"in_domain": {"root": ..., "train": n, "test": n},
    "out_of_domain": {"root": ..., "test": n, "train": n}, "seed": seed, "size": [H, W],
    "sources": the path of OUT/synth_sources.json}."""
    pairs = _check_int("pairs", pairs, 1)
    seed = _check_int("seed", seed, 0)
    if test_pairs is None:
        test_pairs = max(2, pairs // 2)
    test_pairs = _check_int("test_pairs", test_pairs, 1)
    if isinstance(size, (str, bytes)) or not isinstance(size, Sequence) or len(size) != 2:
        raise ValueError(f"size must be (H, W), got {size!r}")
    h = _check_int("size[0] (H)", size[0], 16)
    w = _check_int("size[1] (W)", size[1], 16)

    in_root = os.path.abspath(os.path.join(out_dir, IN_ROOT))
    out_root = os.path.abspath(os.path.join(out_dir, OUT_ROOT))
    for root in (in_root, out_root):
        if os.path.isdir(root):
            shutil.rmtree(root)
        os.makedirs(root)

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=pairs + 3 * test_pairs, desc="synth pairs", unit="pair")

    def tick():
        if bar is not None:
            bar.update(1)

    def child(dom: int, split: int, g: int) -> Tuple[np.random.Generator, Callable]:
        return (np.random.default_rng([seed, dom, split, g]),
                lambda f: np.random.default_rng([seed, dom, split, g, f + 1000]))

    provenance: List[dict] = []  # where every pair's sharp scene came from
    try:
        # in-domain, GoPro layout
        seq_no = 0
        for split, n in (("train", pairs), ("test", test_pairs)):
            sp = _SPLITS[split]
            for g, n_frames in enumerate(_groups(np.random.default_rng([seed, _DOM_IN, sp]), n)):
                seq_no += 1
                seq_dir = os.path.join(in_root, "GOPRO_Large", split, f"GOPR{seq_no:04d}_synth")
                rng, frng = child(_DOM_IN, sp, g)
                name: List[str] = []
                for f, (blur, sharp) in enumerate(
                        _gopro_sequence(rng, n_frames, h, w, frng, split, name)):
                    rel = f"GOPRO_Large/{split}/GOPR{seq_no:04d}_synth/blur/{f + 1:06d}.png"
                    _save_png(blur, os.path.join(in_root, *rel.split("/")))
                    _save_png(sharp, os.path.join(seq_dir, "sharp", f"{f + 1:06d}.png"))
                    provenance.append({"domain": "in", "split": split, "blurry": rel,
                                       "source": name[0]})
                    tick()

        # out-of-domain, RealBlur-J layout
        scene_no = 0
        for split, n in (("train", test_pairs), ("test", test_pairs)):
            sp = _SPLITS[split]
            lines = []
            for g, n_frames in enumerate(_groups(np.random.default_rng([seed, _DOM_OUT, sp]), n)):
                scene_no += 1
                scene_rel = f"{REALBLUR_DIR}/scene{scene_no:03d}"
                rng, frng = child(_DOM_OUT, sp, g)
                name = []
                for f, (blur, gt) in enumerate(
                        _realblur_scene(rng, n_frames, h, w, frng, split, name)):
                    gt_rel = f"{scene_rel}/gt/gt_{f + 1}.png"
                    blur_rel = f"{scene_rel}/blur/blur_{f + 1}.png"
                    _save_png(gt, os.path.join(out_root, *gt_rel.split("/")))
                    _save_png(blur, os.path.join(out_root, *blur_rel.split("/")))
                    lines.append(f"{gt_rel} {blur_rel}\n")
                    provenance.append({"domain": "out", "split": split, "blurry": blur_rel,
                                       "source": name[0]})
                    tick()
            with open(os.path.join(out_root, REALBLUR_LISTS[split]), "w", newline="\n") as fh:
                fh.writelines(lines)
    finally:
        if bar is not None:
            bar.close()

    sources_path = os.path.join(os.path.abspath(out_dir), SOURCES_FILE)
    with open(sources_path, "w", newline="\n") as fh:
        json.dump({"seed": seed, "train_photos": list(available_sources("train")),
                   "test_photos": list(available_sources("test")), "pairs": provenance},
                  fh, indent=1, sort_keys=True)
    return {
        "sources": sources_path,
        "in_domain": {"root": in_root, "train": pairs, "test": test_pairs},
        "out_of_domain": {"root": out_root, "test": test_pairs, "train": test_pairs},
        "seed": seed,
        "size": [h, w],
    }
