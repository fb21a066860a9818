"""PSNR / SSIM against scikit-image (the GoPro/HIDE convention stated in metrics/fidelity.py)."""
import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage
from skimage import data, filters, img_as_float, img_as_ubyte, util
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from metrics import fidelity
from metrics.fidelity import psnr, ssim


def sk_ssim(a, b):
    return structural_similarity(a, b, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, data_range=255)


def natural_pairs():
    """(sharp, degraded) uint8 pairs from skimage's colour images: blur, noise, both."""
    pairs = []
    for k, name in enumerate(("astronaut", "coffee", "chelsea")):
        sharp = img_as_float(getattr(data, name)())
        blur = filters.gaussian(sharp, sigma=1.0 + k, channel_axis=-1)
        noisy = util.random_noise(sharp, var=(8 / 255) ** 2, rng=k)
        both = util.random_noise(blur, var=(4 / 255) ** 2, rng=10 + k)
        for out in (blur, noisy, both):
            pairs.append((img_as_ubyte(sharp), img_as_ubyte(np.clip(out, 0, 1))))
    return pairs


def test_random_images_match_skimage():
    rng = np.random.default_rng(0)
    for h, w in ((11, 11), (37, 53), (64, 80)):
        a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        b = np.clip(a.astype(int) + rng.integers(-40, 41, a.shape), 0, 255).astype(np.uint8)
        assert abs(float(psnr(a, b)) - peak_signal_noise_ratio(a, b)) < 1e-3
        assert abs(float(ssim(a, b)) - sk_ssim(a, b)) < 1e-4
        c = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)  # unrelated images
        assert abs(float(ssim(a, c)) - sk_ssim(a, c)) < 1e-4


def test_natural_images_match_skimage_tightly():
    for sharp, out in natural_pairs():
        ref_p, ref_s = peak_signal_noise_ratio(sharp, out), sk_ssim(out, sharp)
        assert abs(float(psnr(out, sharp)) - ref_p) < 1e-3
        assert abs(float(ssim(out, sharp)) - ref_s) < 1e-4
        # float64 throughout: in practice the agreement is at round-off level.
        assert abs(float(ssim(out, sharp)) - ref_s) < 1e-9


def test_batched_equals_single():
    sharp, _ = natural_pairs()[0]
    crops = [sharp[i * 40:i * 40 + 96, i * 30:i * 30 + 128] for i in range(3)]
    outs = [img_as_ubyte(filters.gaussian(c, sigma=1 + i, channel_axis=-1)) for i, c in enumerate(crops)]
    p, s = psnr(np.stack(outs), np.stack(crops)), ssim(np.stack(outs), np.stack(crops))
    assert p.shape == (3,) and s.shape == (3,) and p.dtype == tf.float64
    for i in range(3):
        assert float(p[i]) == pytest.approx(peak_signal_noise_ratio(crops[i], outs[i]), abs=1e-9)
        assert float(s[i]) == pytest.approx(sk_ssim(outs[i], crops[i]), abs=1e-9)


def test_identical_images():
    a = data.astronaut()[:64, :64]
    assert float(psnr(a, a)) == float("inf")  # MSE 0: documented +inf, not clipped
    assert float(ssim(a, a)) == pytest.approx(1.0, abs=1e-12)


def test_window_is_skimage_gaussian_11x11():
    taps = fidelity._gaussian_taps()
    assert taps.shape == (11,)
    impulse = np.zeros(21)
    impulse[10] = 1.0
    np.testing.assert_allclose(taps, ndimage.gaussian_filter1d(impulse, 1.5, truncate=3.5)[5:16],
                               atol=1e-15)


def test_graph_mode_with_unknown_shapes():
    spec = tf.TensorSpec([None, None, None, 3], tf.uint8)
    f = tf.function(lambda a, b: (psnr(a, b), ssim(a, b)), input_signature=[spec, spec])
    sharp, out = natural_pairs()[1]
    p, s = f(out[None, :100, :120], sharp[None, :100, :120])
    assert float(s[0]) == pytest.approx(sk_ssim(out[:100, :120], sharp[:100, :120]), abs=1e-9)
    assert float(p[0]) == pytest.approx(
        peak_signal_noise_ratio(sharp[:100, :120], out[:100, :120]), abs=1e-9)


def test_bad_inputs():
    a = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="uint8"):
        psnr(a.astype(np.float32), a)
    with pytest.raises(ValueError, match="differ in shape"):
        ssim(a, np.zeros((32, 31, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\[H, W, C\]"):
        psnr(a[..., 0], a[..., 0])
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(a[:10], a[:10])
