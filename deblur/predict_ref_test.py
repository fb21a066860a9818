"""`deblur predict --model NAME@ALIAS`: the version an alias names, with its registered setting,
checked like any alias target; the shipped base model (models/local) stands in for a
registered one."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from components.registry.aliases import Aliases
from components.registry.registry import Registry
from deblur import cli

REPO = Path(__file__).resolve().parents[1]
SETTINGS = ({"sampler": "ddim", "steps": 2, "max_noise": 0.5, "samples": 1},
            {"sampler": "ddim", "steps": 3, "max_noise": 0.2, "samples": 1})


def test_predict_follows_an_alias_with_the_registered_setting(tmp_path, capsys):
    src = tmp_path / "model"
    shutil.copytree(REPO / "models" / "local", src)
    (src / "manifest.json").unlink(missing_ok=True)
    uri = str(tmp_path / "registry")
    reg = Registry(uri)
    for setting in SETTINGS:
        reg.push(str(src), {"blessing": {"blessed": True}, "sampling": setting})
    reg.push(str(src), {"blessing": {"blessed": False}, "sampling": SETTINGS[0]})
    Aliases(reg).move("production", 1)
    rgb = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "in.png")
    where = ["--set", f"registry.uri={uri}"]

    outputs = {}
    for ref, version in (("deblur-icdpm@production", 1), ("@production", 1),
                         (f"{uri}/deblur-icdpm@production", 1), ("deblur-icdpm@latest", 2)):
        out = tmp_path / f"out{len(outputs)}.png"
        assert cli.main(["predict", str(tmp_path / "in.png"), str(out), "--model", ref,
                         "--seed", "3", *where]) == 0, ref
        err = capsys.readouterr().err
        setting = SETTINGS[version - 1]
        key = f"{setting['sampler']}-T{setting['steps']}-n{setting['max_noise']:g}-K1"
        assert f"deblur-icdpm/{version} (" in err and f"version {version})" in err, err
        assert f"sampling {key}" in err, err
        outputs[ref] = np.asarray(Image.open(out))
    # the alias gives what the version folder itself gives, at the same setting and seed
    direct = tmp_path / "direct.png"
    assert cli.main(["predict", str(tmp_path / "in.png"), str(direct), "--model",
                     os.path.join(uri, "deblur-icdpm", "1"), "--sampler", "ddim", "--steps", "2",
                     "--max-noise", "0.5", "--samples", "1", "--seed", "3"]) == 0
    capsys.readouterr()
    assert np.array_equal(np.asarray(Image.open(direct)), outputs["@production"])
    assert np.array_equal(outputs["@production"], outputs["deblur-icdpm@production"])

    for ref, message in (("@staging", "alias 'staging' of 'deblur-icdpm' is not set"),
                         ("@Prod", "alias 'Prod' must be a word")):
        assert cli.main(["predict", str(tmp_path / "in.png"), str(tmp_path / "x.png"),
                         "--model", ref, *where]) == cli.EXIT_USAGE
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "x.png").exists()
