"""deblur predict's input/output planning and image reading: nothing is overwritten, nothing is
silently mangled, and the checks run before any model is loaded."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from deblur import cli
from deblur.predict import plan, read_rgb


def _png(path, seed=0, size=(8, 8)):
    rgb = np.random.default_rng(seed).integers(0, 256, size + (3,), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return rgb


def test_an_output_is_never_an_input(tmp_path, capsys):
    a = tmp_path / "a.png"
    original = _png(a)
    with pytest.raises(ValueError, match="is the input image"):
        plan(str(a), str(a))
    # through the CLI: one line, exit 2, before loading any model (there is none here)
    for argv in (["predict", str(a), str(a), "--model", str(tmp_path / "no-model")],
                 ["predict", str(tmp_path), str(tmp_path), "--model", str(tmp_path / "no-model")]):
        assert cli.main(argv) == cli.EXIT_USAGE
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and ("input image" in err or "input folder" in err), err
    assert np.array_equal(np.asarray(Image.open(a)), original)


def test_folder_outputs_never_collide(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    _png(src / "x.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src / "x.jpg")
    with pytest.raises(ValueError, match="x.jpg and x.png .* would both be written to x.png"):
        plan(str(src), str(tmp_path / "out"))
    os.remove(src / "x.jpg")
    _png(src / "y.jpeg")
    assert plan(str(src), str(tmp_path / "out")) == [
        (str(src / "x.png"), str(tmp_path / "out" / "x.png")),
        (str(src / "y.jpeg"), str(tmp_path / "out" / "y.png"))]


def test_single_image_into_a_folder_and_bad_names(tmp_path, capsys):
    a = tmp_path / "a.jpg"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(a)
    (tmp_path / "outdir").mkdir()
    assert plan(str(a), str(tmp_path / "outdir")) == [(str(a), str(tmp_path / "outdir" / "a.png"))]
    with pytest.raises(ValueError, match="no image file extension"):
        plan(str(a), str(tmp_path / "result.txt"))
    assert cli.main(["predict", str(tmp_path / "missing.png"), str(tmp_path / "o.png"),
                     "--model", str(tmp_path / "no-model")]) == cli.EXIT_USAGE
    assert capsys.readouterr().err == f"deblur: error: {tmp_path / 'missing.png'} does not exist\n"


def test_sixteen_bit_greyscale_is_scaled_not_clipped(tmp_path):
    rng = np.random.default_rng(1)
    eight = rng.integers(0, 256, (9, 7), dtype=np.uint8)
    sixteen = eight.astype(np.uint16) * 257  # the 16-bit rendition of the same picture
    Image.fromarray(sixteen).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")  # Pillow reads it as 16-bit
    got = read_rgb(str(tmp_path / "g16.png"))
    assert got.dtype == np.uint8 and got.shape == (9, 7, 3)
    assert np.array_equal(got, np.repeat(eight[..., None], 3, axis=-1))
    Image.fromarray(np.ones((4, 4), np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(ValueError, match="mode F"):
        read_rgb(str(tmp_path / "f.tif"))


def test_a_damaged_model_folder_is_one_line(tmp_path, capsys):
    """A damaged registry version given as a plain path (REGISTRY/deblur-icdpm/2) printed 32
    lines of TensorFlow traceback; it is checked against its manifest first (a same-size bit
    flip too), and a SavedModel that does not load is named in one line."""
    from components.registry.registry import Registry
    from components.registry.registry_test import make_source

    a = tmp_path / "a.png"
    _png(a)
    uri = str(tmp_path / "registry")
    reg = Registry(uri)
    for i in (1, 2):
        reg.push(str(make_source(tmp_path / f"src{i}", seed=i, kib=1)), {})
    data = tmp_path / "registry" / "deblur-icdpm" / "2" / "variables" / "variables.data-00000-of-00001"
    content = data.read_bytes()
    data.write_bytes(bytes([content[0] ^ 1]) + content[1:])
    version = f"{uri}/deblur-icdpm/2"
    assert cli.main(["predict", str(a), str(tmp_path / "o.png"), "--model", version]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"deblur: error: {version} (version 2 of 'deblur-icdpm') is damaged: "
                          "variables/variables.data-00000-of-00001 has sha256 "), err
    assert not (tmp_path / "o.png").exists()
    # a folder with a saved_model.pb that TensorFlow cannot read, and no manifest
    bad = make_source(tmp_path / "bad", seed=3, kib=1)
    assert cli.main(["predict", str(a), str(tmp_path / "o.png"), "--model", str(bad)]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("deblur: error:")]
    assert "Traceback" not in err and err.splitlines()[-1] == errors[-1] and len(errors) == 1, err
    assert errors[0].startswith(f"deblur: error: SavedModel {bad} does not load (OSError: "), err
