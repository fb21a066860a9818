"""LPIPS v0.1 with the real weights: published-implementation reference values and properties."""
import numpy as np
import pytest
from skimage import data, filters, img_as_float

from metrics.lpips import LPIPS

# Reference: richzhang/PerceptualSimilarity lpips.LPIPS(net=..., version='0.1') on this pair.
REFERENCE = {"alex": 0.33531, "vgg": 0.29331}


@pytest.fixture(scope="module")
def pair():
    img = img_as_float(data.astronaut())
    blur = filters.gaussian(img, sigma=2, channel_axis=-1)
    crop = (slice(128, 384), slice(128, 384))
    return ((img[crop] * 2 - 1).astype(np.float32), (blur[crop] * 2 - 1).astype(np.float32))


@pytest.fixture(scope="module")
def alex():
    return LPIPS("alex")


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_reference_values(pair, alex, net):
    model = alex if net == "alex" else LPIPS(net)
    assert float(model(*pair)) == pytest.approx(REFERENCE[net], abs=1e-4)


def test_identity_and_symmetry(pair, alex):
    a, b = pair
    assert abs(float(alex(a, a))) < 1e-6
    assert float(alex(a, b)) == pytest.approx(float(alex(b, a)), abs=1e-6)


def test_batch_and_sizes_share_one_trace(pair, alex):
    a, b = pair
    batch = alex(np.stack([a, b]), np.stack([b, b]))
    assert batch.shape == (2,)
    assert float(batch[0]) == pytest.approx(float(alex(a, b)), abs=1e-6)
    assert abs(float(batch[1])) < 1e-6
    alex(a[:64, :96], b[:64, :96])
    alex(a[:31, :200], b[:31, :200])
    assert alex._distance.experimental_get_tracing_count() == 1


def test_uint8_entry_point(pair, alex):
    a, b = pair
    ua = np.round((a + 1) * 127.5).astype(np.uint8)
    ub = np.round((b + 1) * 127.5).astype(np.uint8)
    ref = float(alex(ua.astype(np.float32) / 127.5 - 1, ub.astype(np.float32) / 127.5 - 1))
    assert float(alex.from_uint8(ua, ub)) == pytest.approx(ref, abs=1e-6)
    # 8-bit quantisation moves the reference by ~2e-3 only.
    assert float(alex.from_uint8(ua, ub)) == pytest.approx(REFERENCE["alex"], abs=5e-3)


def test_bad_inputs(pair, alex):
    a, b = pair
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        alex(a * 3, b)
    with pytest.raises(ValueError, match="from_uint8"):
        alex(np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="at least 31x31"):
        alex(a[:30], b[:30])
    with pytest.raises(ValueError, match="differ in shape"):
        alex(a, b[:100])
    with pytest.raises(ValueError, match="'alex' or 'vgg'"):
        LPIPS("squeeze")
