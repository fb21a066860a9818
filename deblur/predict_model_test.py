"""deblur predict with a real SavedModel (a known function, not a network): an RGBA image keeps
its transparency (issue 35.8), --version with a SavedModel folder is refused, and a deblur.json
that is not JSON is named wherever it is read (issue 35, messages)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from deblur import cli


class _Invert(tf.Module):
    """out = 255 - in: every output pixel is known."""

    @tf.function(input_signature=[
        tf.TensorSpec([None, None, None, 3], tf.uint8), tf.TensorSpec([], tf.int32),
        tf.TensorSpec([], tf.float32), tf.TensorSpec([], tf.int32), tf.TensorSpec([2], tf.int64),
        tf.TensorSpec([], tf.bool)])
    def deblur_batch(self, images, steps, max_noise, samples, seed, deterministic):
        return 255 - images


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("invert") / "saved_model"
    tf.saved_model.save(_Invert(), str(path))
    with open(path / "deblur.json", "w") as f:
        json.dump({"default_sampling": {"sampler": "ddim", "steps": 1, "max_noise": 0.5,
                                        "samples": 1}}, f)
    return str(path)


def _rgba(path, h=12, w=16):
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
    rgba[0, 0, 3], rgba[0, 1, 3] = 0, 255  # fully transparent and fully opaque pixels too
    Image.fromarray(rgba, "RGBA").save(path)
    return rgba


def test_an_rgba_image_keeps_its_alpha(model, tmp_path, capsys):
    """It was converted to RGB and written without its transparency, without a word."""
    rgba = _rgba(tmp_path / "in.png")
    assert cli.main(["predict", str(tmp_path / "in.png"), str(tmp_path / "out.png"),
                     "--model", model]) == 0
    capsys.readouterr()
    with Image.open(tmp_path / "out.png") as im:
        assert im.mode == "RGBA"
        out = np.asarray(im)
    assert np.array_equal(out[..., 3], rgba[..., 3])  # the alpha, unchanged
    assert np.array_equal(out[..., :3], 255 - rgba[..., :3])  # the RGB, through the model
    # a palette image with a transparent colour too
    pal = Image.fromarray(rgba[..., :3]).convert("P", palette=Image.ADAPTIVE, colors=8)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "pal.png", transparency=0)
    want = np.asarray(Image.open(tmp_path / "pal.png").convert("RGBA"))[..., 3]
    assert cli.main(["predict", str(tmp_path / "pal.png"), str(tmp_path / "pal_out.png"),
                     "--model", model, "--json"]) == 0
    record = json.loads(capsys.readouterr().out)["images"][0]
    assert record["alpha"] == "kept" and 0 < (want == 0).sum() < want.size
    assert np.array_equal(np.asarray(Image.open(tmp_path / "pal_out.png"))[..., 3], want)


def test_an_alpha_a_jpeg_cannot_hold_is_said_in_one_line(model, tmp_path, capsys):
    _rgba(tmp_path / "in.png")
    assert cli.main(["predict", str(tmp_path / "in.png"), str(tmp_path / "out.jpg"),
                     "--model", model]) == 0
    err = capsys.readouterr().err
    assert (f"deblur: {tmp_path / 'in.png'}: its alpha channel was dropped: .jpg has no alpha "
            "channel (write .png, .tif, .tiff, .webp to keep it)\n") in err
    assert Image.open(tmp_path / "out.jpg").mode == "RGB"


def test_an_opaque_image_stays_rgb(model, tmp_path, capsys):
    rgb = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "in.png")
    assert cli.main(["predict", str(tmp_path / "in.png"), str(tmp_path / "out.png"),
                     "--model", model]) == 0
    assert "alpha" not in capsys.readouterr().err
    with Image.open(tmp_path / "out.png") as im:
        assert im.mode == "RGB" and np.array_equal(np.asarray(im), 255 - rgb)


def test_version_with_a_saved_model_folder_is_refused(model, tmp_path, capsys):
    """--version 3 was ignored: the folder's model was used, as if it were version 3."""
    _rgba(tmp_path / "in.png")
    assert cli.main(["predict", str(tmp_path / "in.png"), str(tmp_path / "out.png"),
                     "--model", model, "--version", "3"]) == cli.EXIT_USAGE
    assert capsys.readouterr().err == (
        f"deblur: error: --version 3 applies to a registry; {model} is a SavedModel folder: "
        "drop --version, or give the registry as --model\n")
    assert not (tmp_path / "out.png").exists()


def test_a_broken_deblur_json_is_named_wherever_it_is_read(model, tmp_path, capsys):
    """It was "Expecting value: line 2 column 1 (char 2)", naming no file."""
    broken = tmp_path / "broken"
    shutil.copytree(model, broken)
    (broken / "deblur.json").write_text("{\n")
    _rgba(tmp_path / "in.png")
    expected = f"the model's {broken / 'deblur.json'} is not valid JSON: "
    # deblur predict
    assert cli.main(["predict", str(tmp_path / "in.png"), str(tmp_path / "out.png"),
                     "--model", str(broken)]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith(f"deblur: error: {expected}") and err.count("\n") == 1, err
    # the warm start's parent, the registered copy's serving setting (export)
    from trainer import export, warm_start

    with pytest.raises(ValueError, match="^" + expected.replace("(", r"\(")):
        warm_start.model_info(str(broken))
    with pytest.raises(ValueError, match="^" + expected.replace("(", r"\(")):
        export.read_model_info(str(broken))  # what set_serving_setting reads it with
    # the pusher (components/registry/pusher.py reads it with core.artifacts.read_json)
    from components.registry import pusher

    blessing = tmp_path / "blessing"
    blessing.mkdir()
    (blessing / "blessing.json").write_text(json.dumps({"blessed": True, "rules": []}))
    with pytest.raises(ValueError, match=f"model info {broken / 'deblur.json'} is not valid JSON"):
        pusher.register_model(registry_uri=str(tmp_path / "registry"), model_name="m",
                              model_dir=str(broken), blessing_uri=str(blessing))
