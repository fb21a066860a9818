"""The file contract: names, path builders and read_json."""
import json

import pytest

from core import artifacts


def test_split_paths_and_names():
    assert artifacts.split_dir("gs://b/ex/", "train") == "gs://b/ex/Split-train"
    assert artifacts.split_names(["Split-test/", "summary.json", "Split-train", "x"]) == [
        "test", "train"]
    assert artifacts.model_info_path("/m/saved_model") == "/m/saved_model/deblur.json"


def test_image_extensions_are_the_command_lines():
    from deblur import predict
    from metrics import cli

    assert predict.IMAGE_EXTENSIONS is cli.IMAGE_EXTENSIONS is artifacts.IMAGE_EXTENSIONS
    assert artifacts.is_image_file("A.PPM") and not artifacts.is_image_file("a.txt")


def test_read_json(tmp_path):
    assert artifacts.read_json(str(tmp_path / "none.json")) is None
    with pytest.raises(ValueError, match="model info .* does not exist"):
        artifacts.read_json(str(tmp_path / "none.json"), what="model info", required=True)
    (tmp_path / "a.json").write_text(json.dumps({"a": 1}))
    assert artifacts.read_json(str(tmp_path / "a.json")) == {"a": 1}
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        artifacts.read_json(str(tmp_path / "bad.json"))


def test_text_reader_over_a_file_system_module(tmp_path):
    import os

    class Local:
        exists = staticmethod(os.path.exists)
        open = staticmethod(open)

    (tmp_path / "a.json").write_text("[1]")
    read = artifacts.text_reader(Local)
    assert read(str(tmp_path / "a.json")) == "[1]" and read(str(tmp_path / "b")) is None
