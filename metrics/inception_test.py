"""The FID Inception port against the features the TorchScript model computes under PyTorch
(metrics/testdata/fid: a copy of ../shared/reference/fid, whose README says how they were made),
and the reader's refusals (missing package, wrong file, foreign pickles, another architecture)."""
import os
import pickle
import zipfile

import numpy as np
import pytest
from PIL import Image

from metrics import inception as inc

REF_DIR = os.path.join(os.path.dirname(__file__), "testdata", "fid")
NAMES = ("astronaut", "chelsea", "coffee", "rocket")  # the rows of features.npy


@pytest.fixture(scope="module")
def images():
    return [np.asarray(Image.open(os.path.join(REF_DIR, f"{n}.png")).convert("RGB")) for n in NAMES]


@pytest.fixture(scope="module")
def net():
    return inc.default_inception()


def test_matches_the_torchscript_reference_features(net, images):
    ref = np.load(os.path.join(REF_DIR, "features.npy"))
    assert ref.shape == (4, 2048) and all(im.shape == (299, 299, 3) for im in images)
    ours = net(images)  # one batch of 4, uint8 -> x / 128 - 1 inside, no resize at 299
    assert ours.shape == (4, 2048) and ours.dtype == np.float32
    err = np.linalg.norm(ours - ref, axis=1) / np.linalg.norm(ref, axis=1)
    print("relative error per image:", dict(zip(NAMES, err.round(9).tolist())))
    assert np.all(err <= 1e-4), dict(zip(NAMES, err))
    # batching does not change a row (a batch of 4 vs a batch of 1, one trace)
    one = net.from_inputs(images[2][None].astype(np.float32))
    np.testing.assert_allclose(one[0], ours[2], rtol=0, atol=1e-5)
    assert net._fn.experimental_get_tracing_count() == 1


def test_resize_convention(images):
    a = images[0]
    assert inc.to_inception_input(a).dtype == np.float32
    np.testing.assert_array_equal(inc.to_inception_input(a), a.astype(np.float32))  # 299: as is
    grey = a[..., 1]
    np.testing.assert_array_equal(inc.to_inception_input(grey), np.repeat(
        grey[..., None], 3, -1).astype(np.float32))
    # other sizes: Pillow bicubic per channel in float, clipped to 0..255 (clean-fid)
    big = np.asarray(Image.fromarray(a).resize((640, 360), Image.NEAREST))
    got = inc.to_inception_input(big)
    want = np.asarray(Image.fromarray(big[..., 2].astype(np.float32)).resize(
        (299, 299), Image.BICUBIC)).clip(0, 255)
    assert got.shape == (299, 299, 3)
    np.testing.assert_array_equal(got[..., 2], want)
    assert got.min() >= 0 and got.max() <= 255
    with pytest.raises(ValueError, match="RGB"):
        inc.to_inception_input(np.zeros((8, 8, 4), np.uint8))


def test_wrong_file_is_refused(monkeypatch):
    monkeypatch.setattr(inc, "WEIGHTS_SHA1", "0" * 40)
    with pytest.raises(ValueError, match="SHA-1 a16e4d89"):
        inc.load_layers.__wrapped__(inc.weights_path())


def test_reader_refuses_foreign_globals(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("m/data.pkl", pickle.dumps(Evil(), protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="unexpected global"):
        inc.read_torchscript(str(path))
    with zipfile.ZipFile(tmp_path / "none.pt", "w") as z:
        z.writestr("m/other", b"")
    with pytest.raises(ValueError, match="not a TorchScript archive"):
        inc.read_torchscript(str(tmp_path / "none.pt"))


def test_architecture_check_names_the_difference():
    root = inc.read_torchscript(inc.weights_path())
    inc.check_architecture(root)  # the shipped file is the published Inception-v3
    bad = inc.read_torchscript(inc.weights_path())
    bad.children["net"].children["layers"].children["mixed_4"].children["tower"] \
        .children["conv_1"].attrs["padding"] = [3, 0]
    with pytest.raises(ValueError, match=r"mixed_4\.tower\.conv_1: stride 1 padding \[3, 0\]"):
        inc.check_architecture(bad)
    bad = inc.read_torchscript(inc.weights_path())
    layers = bad.children["net"].children["layers"]
    layers.children["conv"].tensors["weight"] = np.zeros((32, 3, 5, 5), np.float32)
    with pytest.raises(ValueError, match=r"conv: kernel \(32, 3, 5, 5\)"):
        inc.check_architecture(bad)
