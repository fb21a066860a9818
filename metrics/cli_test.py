"""`deblur metrics A B` end to end on image files written from skimage images."""
import json

import numpy as np
import pytest
from PIL import Image
from skimage import data, filters, img_as_float, img_as_ubyte
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from deblur.cli import main
from metrics.api import default_lpips, image_metrics
from metrics.naturalness import niqe


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A = the Gaussian-blurred astronaut crop of the LPIPS reference (8-bit), B = the sharp crop."""
    d = tmp_path_factory.mktemp("img")
    img = img_as_float(data.astronaut())
    blur = filters.gaussian(img, sigma=2, channel_axis=-1)
    a, b = img_as_ubyte(blur[128:384, 128:384]), img_as_ubyte(img[128:384, 128:384])
    Image.fromarray(a).save(d / "a.png")
    Image.fromarray(b).save(d / "b.png")
    Image.fromarray(b[:200]).save(d / "small.png")
    return str(d / "a.png"), str(d / "b.png"), str(d / "small.png"), a, b


def test_json(files, capsys):
    pa, pb, _, a, b = files
    assert main(["metrics", pa, pb, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert sorted(out) == ["lpips", "niqe", "psnr", "ssim"]
    assert out["psnr"] == pytest.approx(peak_signal_noise_ratio(b, a), abs=1e-3)
    assert out["ssim"] == pytest.approx(structural_similarity(
        a, b, channel_axis=-1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        data_range=255), abs=1e-4)
    # LPIPS-alex reference 0.33531 is on float images; 8-bit files move it by ~2e-3.
    assert out["lpips"] == pytest.approx(0.33531, abs=5e-3)
    assert out["lpips"] == pytest.approx(float(default_lpips("alex").from_uint8(a, b)), abs=1e-6)
    assert out["niqe"] == pytest.approx(niqe(a), abs=1e-12)
    assert out == pytest.approx(image_metrics(a, b))


def test_text_and_vgg(files, capsys):
    pa, pb, *_ = files
    assert main(["metrics", pa, pb, "--net", "vgg"]) == 0
    text = capsys.readouterr().out
    for word in ("PSNR", "SSIM", "LPIPS", "(vgg, v0.1)", "NIQE"):
        assert word in text


def test_identical_images_give_null_psnr(files, capsys):
    _, pb, *_ = files
    assert main(["metrics", pb, pb, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["psnr"] is None and out["ssim"] == pytest.approx(1.0) and out["lpips"] < 1e-6


def test_errors_are_one_line(files, capsys, tmp_path):
    pa, _, small, *_ = files
    assert main(["metrics", pa, small]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("deblur: error: ") and "same size" in err and "\n" not in err
    assert main(["metrics", pa, str(tmp_path / "missing.png")]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "junk.png").write_text("not an image")
    assert main(["metrics", pa, str(tmp_path / "junk.png")]) == 2
    assert "not an image" in capsys.readouterr().err
