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


# ---- deblur fid ------------------------------------------------------------------------------
def _fid_kid_of_pairs(a, b):
    """FID and KID of two sets of two features in closed form: S = u u^T / 2 with u = f1 - f2,
    so tr sqrt(S_a S_b) = |u.v| / 2; the unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    u, v = a[0] - a[1], b[0] - b[1]
    mu = a.mean(0) - b.mean(0)
    fid = mu @ mu + u @ u / 2 + v @ v / 2 - abs(u @ v)
    k = lambda x, y: (x @ y / a.shape[1] + 1) ** 3  # noqa: E731
    kid = k(a[0], a[1]) + k(b[0], b[1]) - sum(k(x, y) for x in a for y in b) / 2
    return fid, kid


def test_fid_of_two_folders(tmp_path, capsys):
    import os
    import shutil

    ref = os.path.join(os.path.dirname(__file__), "testdata", "fid")
    feats = np.load(os.path.join(ref, "features.npy"))  # astronaut, chelsea, coffee, rocket
    for folder, names in (("a", ("astronaut", "chelsea")), ("b", ("coffee", "rocket"))):
        (tmp_path / folder).mkdir()
        for n in names:
            shutil.copy(os.path.join(ref, f"{n}.png"), tmp_path / folder / f"{n}.png")
    (tmp_path / "a" / "notes.txt").write_text("not an image: skipped")
    want_fid, want_kid = _fid_kid_of_pairs(feats[:2], feats[2:])
    assert main(["fid", str(tmp_path / "a"), str(tmp_path / "b"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert sorted(out) == ["fid", "kid", "n_a", "n_b"] and out["n_a"] == out["n_b"] == 2
    assert out["fid"] == pytest.approx(want_fid, rel=1e-4)
    assert out["kid"] == pytest.approx(want_kid, rel=1e-3, abs=1e-6)
    assert main(["fid", str(tmp_path / "b"), str(tmp_path / "a")]) == 0  # text, symmetric
    text = capsys.readouterr().out
    assert f"FID  {out['fid']:.4f}" in text and "(2 images)" in text
    os.remove(tmp_path / "b" / "rocket.png")
    assert main(["fid", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("deblur: error: ") and "holds 1 image(s)" in err and "\n" not in err
    assert main(["fid", str(tmp_path / "a"), str(tmp_path / "missing")]) == 2
    assert "not a folder" in capsys.readouterr().err
