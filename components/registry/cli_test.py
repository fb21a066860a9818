"""`deblur registry {list,show,latest}` on a local registry: output, JSON and one-line errors."""
from __future__ import annotations

import json

from components.registry.registry import Registry
from components.registry.registry_test import make_source
from deblur import cli

SETTING = {"sampler": "ddpm", "steps": 20, "max_noise": 0.1, "samples": 4}


def _registry(tmp_path) -> str:
    uri = str(tmp_path / "registry")
    reg = Registry(uri)  # the default model name, deblur-icdpm
    for i, lpips in enumerate((0.21, 0.18)):
        reg.push(str(make_source(tmp_path / f"src{i}", seed=i, kib=1)),
                 {"metrics": {"in": {"psnr": 27.0 + i, "lpips": 0.1},
                              "out": {"psnr": 25.0, "LPIPS": lpips}},
                  "sampling": SETTING if i else None})
    return uri


def test_list_show_latest(tmp_path, capsys):
    uri = _registry(tmp_path)
    assert cli.main(["registry", "list", "--registry", uri, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["version"], r["out_lpips"], r["in_psnr"], r["sampling"]) for r in rows] == [
        (1, 0.21, 27.0, None), (2, 0.18, 28.0, SETTING)]
    assert rows[1]["uri"] == f"{uri}/deblur-icdpm/2" and rows[1]["created"].endswith("+00:00")

    assert cli.main(["registry", "list", "--registry", uri]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{uri}/deblur-icdpm"
    assert lines[1].split() == ["version", "created", "(UTC)", "LPIPS", "out", "PSNR", "in",
                                "setting"]
    assert lines[2].split()[2:] == ["0.2100", "27.00", "-"]
    assert lines[3].split()[2:] == ["0.1800", "28.00", "ddpm", "T=20", "max_noise=0.1", "K=4"]

    assert cli.main(["registry", "show", "--registry", uri]) == 0  # default: the newest
    assert json.loads(capsys.readouterr().out)["version"] == 2
    assert cli.main(["registry", "show", "--registry", uri, "--version", "1", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown == Registry(uri).show(1) and shown["metrics"]["out"]["LPIPS"] == 0.21

    assert cli.main(["registry", "latest", "--registry", uri]) == 0
    assert capsys.readouterr().out == f"2\t{uri}/deblur-icdpm/2\n"
    assert cli.main(["registry", "latest", "--registry", uri, "--json", "--fetch"]) == 0
    latest = json.loads(capsys.readouterr().out)
    assert latest["version"] == 2 and latest["local_path"] == f"{uri}/deblur-icdpm/2"


def test_errors_are_one_line(tmp_path, capsys):
    empty = str(tmp_path / "empty")
    for action in ("list", "show", "latest"):
        assert cli.main(["registry", action, "--registry", empty]) == cli.EXIT_USAGE
        err = capsys.readouterr().err
        assert err == (f"deblur: error: registry {empty} holds no complete version of model "
                       "'deblur-icdpm'\n")
    uri = _registry(tmp_path)
    assert cli.main(["registry", "show", "--registry", uri, "--version", "9"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("deblur: error: model 'deblur-icdpm'") and "(versions: 1-2)" in err
    assert err.count("\n") == 1
    assert cli.main(["registry", "list", "--registry", uri, "--model", "other"]) == cli.EXIT_USAGE
    assert "holds no complete version of model 'other'" in capsys.readouterr().err
    assert cli.main(["registry", "list", "--registry", uri, "--model", "42"]) == cli.EXIT_USAGE
    assert "model name '42'" in capsys.readouterr().err


def test_the_default_registry_is_the_configs(tmp_path, capsys, monkeypatch):
    """Without --registry: the config's registry, as for deblur predict (runs/local/registry
    under the working folder by default; --config and --set name another)."""
    monkeypatch.chdir(tmp_path)
    default = _registry(tmp_path / "runs" / "local")  # where make run-local registers
    assert default == str(tmp_path / "runs" / "local" / "registry")
    assert cli.main(["registry", "latest", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["uri"] == f"{default}/deblur-icdpm/2"
    assert cli.main(["registry", "list"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"{default}/deblur-icdpm"

    other = _registry(tmp_path / "elsewhere")
    assert cli.main(["registry", "show", "--set", f"registry.uri={other}"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == 2
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"runner": {"work_dir": str(tmp_path / "nowhere")}}))
    assert cli.main(["registry", "latest", "--config", str(config)]) == cli.EXIT_USAGE
    assert capsys.readouterr().err == (
        f"deblur: error: registry {tmp_path / 'nowhere' / 'registry'} holds no complete "
        "version of model 'deblur-icdpm'\n")
    assert cli.main(["registry", "list", "--set", "registry.nope=1"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("deblur: error: ") and err.count("\n") == 1 and "nope" in err


def test_a_damaged_version_is_named_and_skipped(tmp_path, capsys, caplog):
    """The local registry trusted its files: a corrupt manifest failed every listing with a
    bare JSON error, a deleted or altered file left a version 'healthy'. Now each is reported
    by version and file, and latest (CLI, load_latest, predict) falls back to the newest whole
    version, with a warning."""
    uri = _registry(tmp_path)  # versions 1 and 2
    v2 = tmp_path / "registry" / "deblur-icdpm" / "2"
    manifest = (v2 / "manifest.json").read_text()
    # 1. a truncated manifest
    (v2 / "manifest.json").write_text(manifest[: len(manifest) // 2])
    assert cli.main(["registry", "list", "--registry", uri]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].split()[0] == "1" and "DAMAGED" not in lines[2]
    assert lines[3].split()[0] == "2" and "DAMAGED (version 2 is damaged: " in lines[3]
    assert f"{uri}/deblur-icdpm/2/manifest.json is not JSON" in lines[3]
    assert cli.main(["registry", "show", "--registry", uri, "--version", "2"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "version 2 is damaged" in err and "manifest.json" in err
    with caplog.at_level("WARNING"):
        assert cli.main(["registry", "latest", "--registry", uri, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == 1
    assert "skipping version 2 is damaged" in caplog.text
    # 2. the manifest whole again, the variables deleted
    (v2 / "manifest.json").write_text(manifest)
    data = v2 / "variables" / "variables.data-00000-of-00001"
    content = data.read_bytes()
    data.unlink()
    reg = Registry(uri)
    assert reg.verify(2) == "version 2 is damaged: variables/variables.data-00000-of-00001 is missing"
    assert reg.latest()[0] == 1
    assert cli.main(["registry", "list", "--registry", uri, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["status"] for r in rows] == ["ok", f"damaged: {reg.verify(2)}"]
    # 3. same size, other bytes: only the hashes tell; loading refuses it, latest(hashes) skips
    data.write_bytes(bytes([content[0] ^ 1]) + content[1:])
    assert reg.verify(2) is None and "has sha256" in reg.verify(2, hashes=True)
    assert reg.latest(hashes=True)[0] == 1
    # `list` showed it healthy while predict refused it: it checks the same digests now, and
    # says what it checked; `latest` skips it as predict does
    assert cli.main(["registry", "list", "--registry", uri]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "DAMAGED" not in lines[2]
    assert ("DAMAGED (version 2 is damaged: variables/variables.data-00000-of-00001 has sha256 "
            in lines[3]), lines[3]
    assert lines[-1] == "checked: every file's size and SHA-256 against the version's manifest"
    assert cli.main(["registry", "list", "--registry", uri, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["status"] for r in rows] == ["ok", f"damaged: {reg.verify(2, hashes=True)}"]
    assert cli.main(["registry", "latest", "--registry", uri]) == 0
    assert capsys.readouterr().out == f"1\t{uri}/deblur-icdpm/1\n"
    import pytest

    from components.registry.registry import RegistryError

    with pytest.raises(RegistryError, match="version 2 is damaged: variables/variables.data"):
        reg.local_path(2)


def test_incomplete_folders_and_manifests_of_the_wrong_shape(tmp_path, capsys, caplog):
    """A numbered folder without manifest.json was invisible to `list` while TF Serving would
    serve it, and `latest` fell back without a word; a manifest that is valid JSON of the wrong
    shape gave an AttributeError in list/latest/predict. Now: INCOMPLETE and DAMAGED rows, a
    warning from latest, and the rest of the registry keeps working."""
    import shutil

    uri = _registry(tmp_path)  # versions 1 and 2
    model = tmp_path / "registry" / "deblur-icdpm"
    shutil.copytree(model / "2", model / "3")  # a copy by hand ...
    (model / "3" / "manifest.json").unlink()  # ... without the registry's manifest
    with caplog.at_level("WARNING"):
        assert cli.main(["registry", "latest", "--registry", uri]) == 0
    assert capsys.readouterr().out == f"2\t{uri}/deblur-icdpm/2\n"
    assert ("skipping version 3 is INCOMPLETE (no manifest.json; not pushed by the registry"
            in caplog.text) and "TF Serving polling" in caplog.text
    (model / "2" / "manifest.json").rename(model / "2.manifest")  # a registry push's, removed
    assert cli.main(["registry", "list", "--registry", uri]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[3].split()[0] == "2" and ("INCOMPLETE (version 2 is INCOMPLETE (no manifest.json; "
                                           "published by ") in lines[3]
    assert "its manifest.json was removed since" in lines[3]
    assert lines[4].split()[0] == "3" and "not pushed by the registry" in lines[4]
    (model / "2.manifest").rename(model / "2" / "manifest.json")

    manifest = json.loads((model / "2" / "manifest.json").read_text())
    for change, problem in (
            ({"metrics": {"out": {"LPIPS": "0.18"}}}, "has metrics.out.LPIPS = '0.18', not a number"),
            ({"files": ["saved_model.pb"]}, "has no file list"),
            ({"files": {"saved_model.pb": {"bytes": "2048", "sha256": "x"}}},
             "lists 'saved_model.pb' without an integer 'bytes'"),
            ({"sampling": "ddpm"}, "has a 'sampling' of type str"),
            ({"blessing": True}, "has a 'blessing' of type bool")):
        (model / "2" / "manifest.json").write_text(json.dumps({**manifest, **change}))
        assert cli.main(["registry", "list", "--registry", uri]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[2].split()[0] == "1" and "DAMAGED" not in lines[2]
        assert f"DAMAGED (version 2 is damaged: {uri}/deblur-icdpm/2/manifest.json {problem}" in \
            lines[3], (change, lines[3])
        assert cli.main(["registry", "latest", "--registry", uri]) == 0
        assert capsys.readouterr().out == f"1\t{uri}/deblur-icdpm/1\n"
        assert cli.main(["registry", "show", "--registry", uri, "--version", "2"]) == cli.EXIT_USAGE
        assert problem in capsys.readouterr().err
