"""The classical baselines against scikit-image called directly, and what each is for."""
from __future__ import annotations

import numpy as np
import pytest
from skimage import data, filters, restoration
from skimage.metrics import peak_signal_noise_ratio

from components.evaluator import classical
from components.evaluator.classical import DEFAULT_BASELINES, restore, run_baselines

CROP = data.astronaut()[100:196, 150:246]  # 96x96: face and helmet edges


def to_uint8(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)


def noisy(img: np.ndarray, sigma: float = 20.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(img + rng.normal(0, sigma, img.shape), 0, 255).round().astype(np.uint8)


def blurred(img: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    return to_uint8(filters.gaussian(img / 255.0, sigma=sigma, channel_axis=2))


def test_names_labels_and_defaults():
    assert DEFAULT_BASELINES == ("unsharp_r2_a0.5", "unsharp_r2_a1.0", "gaussian_s1", "nlmeans")
    for name in DEFAULT_BASELINES:
        method = classical.get(name)
        assert method.name == name and method.label and "\n" not in method.label
    assert classical.get("unsharp_r2_a1.0").label == "unsharp mask, radius 2, amount 1.0"


@pytest.mark.parametrize("amount", [0.5, 1.0])
def test_unsharp_equals_skimage_per_channel(amount):
    img = noisy(CROP, 5)
    f = img / 255.0
    # reference independent of channel_axis (broken at -1 in skimage 0.25.2): one 2-D call a channel
    ref = np.stack([filters.unsharp_mask(f[:, :, c], radius=2, amount=amount) for c in range(3)],
                   axis=2)
    direct = filters.unsharp_mask(f, radius=2, amount=amount, channel_axis=2)
    assert np.array_equal(ref, direct)
    np.testing.assert_array_equal(restore(f"unsharp_r2_a{amount}", img), to_uint8(ref))


def test_gaussian_equals_skimage():
    img = noisy(CROP)
    ref = filters.gaussian(img / 255.0, sigma=1, channel_axis=2)
    np.testing.assert_array_equal(restore("gaussian_s1", img), to_uint8(ref))


def test_nlmeans_equals_skimage():
    img = noisy(CROP)
    f = img / 255.0
    sigma = classical.estimate_sigma(f)  # checked against skimage's below
    ref = restoration.denoise_nl_means(f, h=0.8 * sigma, fast_mode=True, patch_size=5,
                                       patch_distance=6, channel_axis=2)
    np.testing.assert_array_equal(restore("nlmeans", img), to_uint8(ref))


@pytest.mark.parametrize("img", [CROP, data.chelsea()[:61, :77], noisy(CROP, 8, seed=3),
                                 np.random.default_rng(1).integers(0, 256, (7, 5, 3), np.uint8)],
                         ids=["astronaut", "chelsea-odd", "noisy", "tiny"])
def test_estimate_sigma_equals_skimage(img):
    pytest.importorskip("pywt")  # skimage's estimate_sigma needs PyWavelets, not a dependency
    f = img / 255.0
    assert classical.estimate_sigma(f) == restoration.estimate_sigma(f, channel_axis=2,
                                                                     average_sigmas=True)


@pytest.mark.parametrize("sigma", [0.02, 0.05, 0.1])
def test_estimate_sigma_recovers_known_noise(sigma):
    # independent of PyWavelets: Gaussian noise of known sigma on a smooth image
    rng = np.random.default_rng(0)
    smooth = filters.gaussian(data.astronaut()[:128, :128] / 255.0, sigma=4, channel_axis=2)
    est = classical.estimate_sigma(smooth + rng.normal(0, sigma, smooth.shape))
    assert est == pytest.approx(sigma, rel=0.1)


def test_flat_image_nlmeans_returns_it():
    flat = np.full((16, 16, 3), 100, np.uint8)
    assert classical.estimate_sigma(flat / 255.0) == 0.0
    np.testing.assert_array_equal(restore("nlmeans", flat), flat)


@pytest.mark.parametrize("name", DEFAULT_BASELINES)
@pytest.mark.parametrize("shape", [(96, 96, 3), (33, 50, 3)])
def test_shape_and_dtype(name, shape):
    img = noisy(np.zeros(shape) + 128)
    out = restore(name, img)
    assert out.shape == shape and out.dtype == np.uint8


def test_unknown_name_and_bad_input():
    with pytest.raises(ValueError,
                       match="unknown classical baseline 'wiener'.*unsharp_r2_a0.5.*nlmeans"):
        restore("wiener", CROP)
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        restore("gaussian_s1", CROP.astype(np.float32))
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        restore("gaussian_s1", CROP[:, :, 0])
    with pytest.raises(ValueError, match="'nope'"):
        run_baselines(["gaussian_s1", "nope"], [CROP])


def test_run_baselines():
    images = [CROP, noisy(CROP)]
    out = run_baselines(["gaussian_s1", "unsharp_r2_a0.5"], images)
    assert list(out) == ["gaussian_s1", "unsharp_r2_a0.5"]
    for name, outputs in out.items():
        assert len(outputs) == 2
        for image, output in zip(images, outputs):
            np.testing.assert_array_equal(output, restore(name, image))


@pytest.mark.parametrize("name", ["gaussian_s1", "nlmeans"])
def test_denoisers_raise_psnr_on_noise(name):
    # measured: noisy 22.6 dB -> gaussian_s1 27.5, nlmeans 29.0
    noisy_crop = noisy(CROP, 20)
    before = peak_signal_noise_ratio(CROP, noisy_crop)
    after = peak_signal_noise_ratio(CROP, restore(name, noisy_crop))
    assert after > before + 1.0, (name, before, after)


def mean_gradient(img: np.ndarray) -> float:
    """Mean gradient magnitude over pixels and channels (a sharpness measure)."""
    gy, gx = np.gradient(img / 255.0, axis=(0, 1))
    return float(np.mean(np.hypot(gx, gy)))


@pytest.mark.parametrize("name", ["unsharp_r2_a0.5", "unsharp_r2_a1.0"])
def test_unsharp_sharpens_blur(name):
    blurry = blurred(CROP)
    # measured: +9% (amount 0.5), +18% (1.0) on this sigma-2 blur
    assert mean_gradient(restore(name, blurry)) > 1.05 * mean_gradient(blurry)
    # and more amount, more sharpening
    assert mean_gradient(restore("unsharp_r2_a1.0", blurry)) > mean_gradient(
        restore("unsharp_r2_a0.5", blurry))
