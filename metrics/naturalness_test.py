"""NIQE: each step against a literal, loop-by-loop transcription of the MATLAB release
(niqe_release: computequality.m, computefeature.m, estimateaggdparam.m, imresize's
contributions()), the shipped pristine data, hand-derived resize weights, and monotonicity.

Published MATLAB values reproduced (one-off, images not shipped here; see metrics/README.md):
pyiqa's ResultsCalibra I04.bmp 3.65492152353770 (|diff| 1.7e-13) and BasicSR's baboon.png Y
channel 5.72957338 (|diff| 5e-7).
"""
import math

import numpy as np
import pytest
from skimage import data, filters, img_as_float, img_as_ubyte, util

from metrics import naturalness as nq


# ---------------------------------------------------------------- literal MATLAB transcriptions
def bf_window():
    w = [[math.exp(-(x * x + y * y) / (2 * (7 / 6) ** 2)) for x in range(-3, 4)]
         for y in range(-3, 4)]
    s = sum(map(sum, w))
    return np.array([[v / s for v in row] for row in w])


def bf_mscn(img):
    """imfilter(., window, 'replicate') per pixel with clamped indices."""
    win = bf_window()
    h, w = img.shape
    out = np.empty_like(img)
    for i in range(h):
        rows = [min(max(i + d, 0), h - 1) for d in range(-3, 4)]
        for j in range(w):
            cols = [min(max(j + d, 0), w - 1) for d in range(-3, 4)]
            patch = img[np.ix_(rows, cols)]
            mu = float((patch * win).sum())
            mu2 = float((patch * patch * win).sum())
            out[i, j] = (img[i, j] - mu) / (math.sqrt(abs(mu2 - mu * mu)) + 1)
    return out


def bf_cubic(x):
    ax = abs(x)
    if ax <= 1:
        return 1.5 * ax ** 3 - 2.5 * ax ** 2 + 1
    if ax <= 2:
        return -0.5 * ax ** 3 + 2.5 * ax ** 2 - 4 * ax + 2
    return 0.0


def bf_contributions(in_len, out_len, scale=0.5):
    """imresize.m contributions() for bicubic + antialiasing, 1-based indices."""
    width = 4 / scale
    aux = list(range(1, in_len + 1)) + list(range(in_len, 0, -1))
    out = []
    for x in range(1, out_len + 1):
        u = x / scale + 0.5 * (1 - 1 / scale)
        left = math.floor(u - width / 2)
        idx = [left + k for k in range(math.ceil(width) + 2)]
        wts = [scale * bf_cubic(scale * (u - i)) for i in idx]
        s = sum(wts)
        out.append(([aux[(i - 1) % len(aux)] for i in idx], [v / s for v in wts]))
    return out


def bf_imresize_half(img):
    h, w = img.shape
    oh, ow = math.ceil(h / 2), math.ceil(w / 2)
    tmp = np.zeros((oh, w))
    for r, (idx, wts) in enumerate(bf_contributions(h, oh)):   # dimension 1 first
        for i, wt in zip(idx, wts):
            tmp[r, :] += wt * img[i - 1, :]
    out = np.zeros((oh, ow))
    for c, (idx, wts) in enumerate(bf_contributions(w, ow)):
        for i, wt in zip(idx, wts):
            out[:, c] += wt * tmp[:, i - 1]
    return out


_BF_GAM = [0.2 + k * 0.001 for k in range(9801)]
_BF_RGAM = [math.gamma(2 / g) ** 2 / (math.gamma(1 / g) * math.gamma(3 / g)) for g in _BF_GAM]


def bf_aggd(vec):
    neg = [v for v in vec if v < 0]
    pos = [v for v in vec if v > 0]
    n = len(vec)
    left = math.sqrt(sum(v * v for v in neg) / len(neg))
    right = math.sqrt(sum(v * v for v in pos) / len(pos))
    gh = left / right
    rhat = (sum(abs(v) for v in vec) / n) ** 2 / (sum(v * v for v in vec) / n)
    rn = rhat * (gh ** 3 + 1) * (gh + 1) / (gh ** 2 + 1) ** 2
    best = min(range(len(_BF_GAM)), key=lambda k: ((_BF_RGAM[k] - rn) ** 2, k))
    a = _BF_GAM[best]
    r = math.sqrt(math.gamma(1 / a) / math.gamma(3 / a))
    return a, left * r, right * r


def bf_block_features(b):
    n, m = b.shape
    flat = b.reshape(-1).tolist()
    a, bl, br = bf_aggd(flat)
    feat = [a, (bl + br) / 2]
    for s0, s1 in ((0, 1), (1, 0), (1, 1), (1, -1)):   # circshift(b, [s0 s1])
        pair = [b[i, j] * b[(i - s0) % n, (j - s1) % m] for i in range(n) for j in range(m)]
        a, bl, br = bf_aggd(pair)
        feat += [a, (br - bl) * math.gamma(2 / a) / math.gamma(1 / a), bl, br]
    return feat


def bf_niqe(gray):
    h, w = gray.shape
    feats = [[], []]
    img = gray
    for scale in (1, 2):
        s = 96 // scale
        coeffs = bf_mscn(img)
        assert np.abs(coeffs).min() > nq.FLAT_TOL  # no flat residue: no snapping involved
        for r in range(0, h // scale, s):
            for c in range(0, w // scale, s):
                feats[scale - 1].append(bf_block_features(coeffs[r:r + s, c:c + s]))
        img = bf_imresize_half(img)
    f = np.array([a + b for a, b in zip(*feats)])
    mu = f.mean(axis=0)
    cov = sum(np.outer(row - mu, row - mu) for row in f) / (len(f) - 1)
    model = nq.pristine_model()
    d = model["mu"] - mu
    return f, math.sqrt(d @ np.linalg.pinv((model["cov"] + cov) / 2) @ d)


# ------------------------------------------------------------------------------------ tests
def noisy_astronaut(size=192):
    img = img_as_float(data.astronaut())[100:100 + size, 150:150 + size]
    return img_as_ubyte(util.random_noise(img, var=(3 / 255) ** 2, rng=0))


def test_against_brute_force_transcription():
    rgb = noisy_astronaut()
    gray = nq.to_gray(rgb)
    f_bf, q_bf = bf_niqe(gray)
    f = nq.niqe_features(gray)
    assert f.shape == (4, 36)
    # Block order differs (MATLAB's blkproc is column-major); compare as sets of rows.
    np.testing.assert_allclose(np.array(sorted(map(tuple, f))),
                               np.array(sorted(map(tuple, f_bf))), rtol=1e-9, atol=1e-11)
    assert nq.niqe(rgb) == pytest.approx(q_bf, rel=1e-9)


def test_mscn_and_resize_match_transcriptions():
    rng = np.random.default_rng(1)
    img = rng.uniform(0, 255, (23, 30))
    np.testing.assert_allclose(nq.mscn(img), bf_mscn(img), atol=1e-11)
    np.testing.assert_allclose(nq.imresize_half(img), bf_imresize_half(img), atol=1e-11)


def test_window_is_the_shipped_one():
    z = np.load(nq.params_path())
    np.testing.assert_allclose(nq.fspecial_gaussian(), z["gaussian_window"], atol=1e-15)
    np.testing.assert_allclose(nq.fspecial_gaussian(), bf_window(), atol=1e-15)


def test_resize_weights_by_hand():
    # Interior: output x (1-based) sits at u = 2x - 0.5, taps at distances +-0.5, +-1.5, +-2.5,
    # +-3.5 with weight cubic(d/2)/2; x = 6 -> u = 11.5 -> inputs 8..15 (0-based 7..14).
    k = np.array([-0.0234375, -0.0703125, 0.2265625, 0.8671875]) / 2
    m = nq.resize_matrix(40, 20, 0.5)
    np.testing.assert_allclose(m[5, 7:15], np.concatenate([k, k[::-1]]), atol=1e-15)
    assert np.count_nonzero(m[5]) == 8
    # First row: taps 1-based -2..5 fold onto 1..5 by the symmetric mirror [1..n, n..1].
    np.testing.assert_allclose(m[0, :5], [0.546875, 0.3984375, 0.1015625, -0.03515625,
                                          -0.01171875], atol=1e-15)
    np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-14)
    assert nq.imresize_half(np.full((50, 38), 77.0)) == pytest.approx(77.0, abs=1e-12)


def test_gray_is_matlab_rgb2gray():
    coef = np.linalg.inv([[1.0, 0.956, 0.621], [1.0, -0.272, -0.647], [1.0, -1.106, 1.703]])[0]
    np.testing.assert_allclose(coef, [0.2989, 0.5870, 0.1140], atol=5e-5)
    rgb = data.coffee()[:50, :60]
    by_pixel = np.array([[math.floor(0.298936021293775 * int(p[0]) + 0.587043074451121 * int(p[1])
                                     + 0.114020904255103 * int(p[2]) + 0.5) for p in row]
                         for row in rgb])
    np.testing.assert_array_equal(nq.rgb2gray_uint8(rgb), by_pixel)
    g = data.camera()
    assert nq.niqe(g) == nq.niqe(np.stack([g] * 3, axis=-1))


def test_blur_and_noise_raise_niqe():
    img = img_as_float(data.astronaut())
    def q(x):
        return nq.niqe(img_as_ubyte(np.clip(x, 0, 1)))
    blur = [q(filters.gaussian(img, sigma=s, channel_axis=-1)) for s in (1, 2, 4)]
    noise = [q(util.random_noise(img, var=(s / 255) ** 2, rng=0)) for s in (10, 25)]
    clean = q(img)
    assert 2.0 < clean < 4.5
    assert clean < blur[0] < blur[1] < blur[2]
    assert clean < noise[0] < noise[1]


def test_flat_regions_and_errors():
    assert math.isnan(nq.niqe(np.full((96, 96, 3), 128, np.uint8)))  # no AGGD fit, as MATLAB
    assert np.all(nq.mscn(np.full((20, 20), 200.0)) == 0.0)
    with pytest.raises(ValueError, match="at least 96x96"):
        nq.niqe(np.zeros((95, 200, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        nq.niqe(np.zeros((96, 96, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        nq.niqe(np.zeros((96, 96, 4), np.uint8))
