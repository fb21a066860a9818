"""Aliases, promotion, rollback, history and model refs, on a local folder and on gs://
(fake-gcs-server on loopback), unmocked; races with real processes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from components.registry import aliases as A
from components.registry import registry as R
from components.registry.registry_test import BUCKET, make_source
from deblur import cli
from tests.gcs_emulator import bucket_fixture

REPO = Path(__file__).resolve().parents[2]
MOVERS = 6

# One mover process: warms up, waits for "go", then moves ALIAS to its VERSION: once with
# expect=EXPECT (the version all movers read before the race), or, with EXPECT "retry", until
# its move lands (each retry re-reads the alias), printing every conflict it met.
MOVER = r"""
import json, os, sys, time
from components.registry.registry import Registry
from components.registry import aliases as A

uri, alias, version, expect, started, go = sys.argv[1:7]
reg = Registry(uri)
al = A.Aliases(reg)
al.current()
open(started, "w").close()
while not os.path.exists(go):
    time.sleep(0.002)
conflicts = []
while True:
    try:
        kw = {} if expect == "retry" else {"expect": int(expect)}
        move = al.move(alias, int(version), action="promote", reason=f"mover {version}", **kw)
        print(json.dumps({"moved": move.rev, "conflicts": conflicts}))
        break
    except A.AliasConflict as e:
        conflicts.append(str(e))
        if expect != "retry":
            print(json.dumps({"conflict": str(e)}))
            break
"""


def _registry(uri: str, tmp: Path, n: int = MOVERS + 1, unblessed=(), client=None) -> R.Registry:
    reg = R.Registry(uri, client=client, cache_dir=str(tmp / "cache"))
    for i in range(n):
        reg.push(str(make_source(tmp / f"src{i}", seed=i, kib=1)),
                 {"blessing": {"blessed": i + 1 not in unblessed},
                  "metrics": {"out": {"lpips": 0.2}}})
    return reg


def _race(uri: str, tmp: Path, expect: str, versions) -> list:
    go = tmp / "go"
    procs, started = [], []
    for v in versions:
        started.append(tmp / f"started{v}")
        procs.append(subprocess.Popen(
            [sys.executable, "-c", MOVER, uri, "production", str(v), expect, str(started[-1]),
             str(go)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(REPO), R.CACHE_ENV: str(tmp / "cache")}))
    try:
        deadline = time.monotonic() + 120
        while not all(s.exists() for s in started):
            assert all(p.poll() is None for p in procs), [p.stderr.read() for p in procs]
            assert time.monotonic() < deadline
            time.sleep(0.01)
        go.touch()
        outs = []
        for p in procs:
            out, err = p.communicate(timeout=180)
            assert p.returncode == 0, err
            outs.append(json.loads(out.strip().splitlines()[-1]))
        return outs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def _check_chain(history) -> None:
    """Each move starts where the one before it ended: no move was lost or applied twice."""
    by_alias = {}
    for m in history:
        by_alias.setdefault(m.alias, []).append(m)
    for moves in by_alias.values():
        moves.sort(key=lambda m: m.rev)
        assert [m.rev for m in moves] == list(range(1, len(moves) + 1))
        for before, after in zip(moves, moves[1:]):
            assert after.from_version == before.version


def races(uri: str, tmp: Path) -> None:
    """Of movers that all read version 1 and move at once, exactly one wins and every other
    is told, in one line, which version won; then movers that retry all land, in a chain."""
    reg = R.Registry(uri, cache_dir=str(tmp / "cache"))
    al = A.Aliases(reg)
    al.move("production", 1)
    outs = _race(uri, tmp, "1", range(2, MOVERS + 2))
    winners = [o for o in outs if "moved" in o]
    assert len(winners) == 1, outs
    won = al.get("production")
    assert won != 1 and winners[0]["moved"] == 2
    for o in outs:
        if "conflict" in o:
            assert f"names version {won} (moved by " in o["conflict"]
            assert "\n" not in o["conflict"]
    history = al.history("production")
    assert [(m.from_version, m.version) for m in history] == [(None, 1), (1, won)]

    (tmp / "go").unlink()
    outs = _race(uri, tmp, "retry", range(2, MOVERS + 2))
    assert all("moved" in o for o in outs)
    history = al.history("production")
    assert len(history) == 2 + MOVERS  # every landed move is in the history, once
    _check_chain(history)
    assert sorted(m.version for m in history[2:]) == list(range(2, MOVERS + 2))
    assert al.get("production") == max(history, key=lambda m: m.rev).version


# -------------------------------------------------------------------------------- local
def test_promote_rollback_history_and_refusals(tmp_path, capsys):
    uri = str(tmp_path / "registry")
    reg = _registry(uri, tmp_path, n=4, unblessed={2})
    run = ["--registry", uri]
    assert cli.main(["registry", "promote", "1", "--to", "production", "--reason", "first", *run]) == 0
    assert capsys.readouterr().out == (f"deblur-icdpm@production: unset -> version 1 "
                                       f"({uri}/deblur-icdpm/1)\n")
    assert cli.main(["registry", "promote", "3", *run]) == 0  # --to defaults to production
    assert cli.main(["registry", "alias", "set", "staging", "4", *run]) == 0
    capsys.readouterr()
    assert cli.main(["registry", "rollback", "production", "--reason", "bad outputs", *run]) == 0
    assert capsys.readouterr().out.startswith("deblur-icdpm@production: version 3 -> version 1")
    al = A.Aliases(reg)
    assert {a: m.version for a, m in al.current().items()} == {"production": 1, "staging": 4}

    assert cli.main(["registry", "history", "--json", *run]) == 0
    hist = json.loads(capsys.readouterr().out)
    assert [(h["alias"], h["from"], h["version"], h["action"], h["reason"]) for h in hist] == [
        ("production", None, 1, "promote", "first"), ("production", 1, 3, "promote", None),
        ("staging", None, 4, "set", None), ("production", 3, 1, "rollback", "bad outputs")]
    assert all(h["user"] and h["host"] and h["time"] for h in hist)
    assert cli.main(["registry", "history", "staging", *run]) == 0
    assert capsys.readouterr().out.count("\n") == 1

    assert cli.main(["registry", "list", "--json", *run]) == 0
    assert [r["aliases"] for r in json.loads(capsys.readouterr().out)] == [
        ["production"], [], [], ["staging"]]
    assert cli.main(["registry", "show", "@staging", *run]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == 4
    assert cli.main(["registry", "show", "deblur-icdpm@production", *run]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == 1
    assert cli.main(["registry", "show", "deblur-icdpm/3", *run]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == 3

    # refused in one line each, and nothing moves
    v4 = Path(uri) / "deblur-icdpm" / "4" / "variables" / "variables.data-00000-of-00001"
    data = v4.read_bytes()
    v4.write_bytes(bytes([data[0] ^ 1]) + data[1:])  # same size, other bytes
    (Path(uri) / "deblur-icdpm" / "7").mkdir()  # a numbered folder without manifest
    cases = {
        ("promote", "2"): "version 2: its manifest records no blessing",
        ("promote", "9"): "version 9 of 'deblur-icdpm': it does not exist",
        ("promote", "4"): "version 4 is damaged: variables/variables.data-00000-of-00001 has sha256",
        ("promote", "7"): "version 7 is INCOMPLETE (no manifest.json; not pushed by the registry",
        ("promote", "x"): "version must be an integer, got 'x'",
        ("alias", "set", "3", "1"): "alias '3' must be a word",
        ("alias", "set", "latest", "1"): "'latest' is not an alias one can move",
        ("rollback", "nightly"): "alias 'nightly' of 'deblur-icdpm' was never set",
        ("show", "@nightly"): "alias 'nightly' of 'deblur-icdpm' is not set",
        ("show", "@staging"): "deblur-icdpm@staging names version 4, which is not servable: "
                              "cannot point an alias at version 4 is damaged",
    }
    for args, message in cases.items():
        assert cli.main(["registry", *args, *run]) == cli.EXIT_USAGE, args
        err = capsys.readouterr().err
        assert err.startswith("deblur: error: ") and err.count("\n") == 1, err
        assert message in err, (args, err)
    assert {a: m.version for a, m in al.current().items()} == {"production": 1, "staging": 4}
    assert len(al.history()) == 4
    # the staging alias now names a damaged version: list says so beside it
    assert cli.main(["registry", "list", *run]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "@staging  DAMAGED (version 4 is damaged" in lines[5]
    assert lines[6].split()[0] == "7" and "INCOMPLETE (version 7 is INCOMPLETE" in lines[6]


def test_a_move_that_loses_the_race_names_the_winner(tmp_path, monkeypatch):
    """Another person promotes (a real `deblur registry promote` process) while this move is
    checking its target: this move writes nothing and says which version won."""
    uri = str(tmp_path / "registry")
    reg = _registry(uri, tmp_path, n=3)
    al = A.Aliases(reg)
    al.move("production", 1)
    check = A.Aliases.check_target

    def racing_check(self, version):
        subprocess.run([os.path.join(os.path.dirname(sys.executable), "deblur"), "registry",
                        "promote", "3", "--registry", uri], check=True, cwd=REPO,
                       capture_output=True)
        return check(self, version)

    monkeypatch.setattr(A.Aliases, "check_target", racing_check)
    with pytest.raises(A.AliasConflict, match=r"^alias 'production' was moved by someone else "
                       r"while this move was checked: it names version 3 \(moved by .*\); "
                       r"version 2 was not set"):
        al.move("production", 2)
    monkeypatch.setattr(A.Aliases, "check_target", check)
    assert [(m.from_version, m.version) for m in al.history()] == [(None, 1), (1, 3)]


def test_local_races(tmp_path):
    uri = str(tmp_path / "registry")
    _registry(uri, tmp_path)
    races(uri, tmp_path)
    folder = Path(uri) / "deblur-icdpm" / ".aliases" / "production"
    assert sorted(p.name for p in folder.iterdir()) == [f"{r:08d}.json" for r in
                                                       range(1, MOVERS + 3)]  # no temp left


def test_refs_parse():
    P = A.parse_ref
    assert P("deblur-icdpm@production") == A.ModelRef("deblur-icdpm", "production")
    assert P("@staging", "m") == A.ModelRef("m", "staging")
    assert P("m@latest") == A.ModelRef("m", "latest")
    assert P("m/12") == A.ModelRef("m", None, 12)
    assert P("m") == A.ModelRef("m")
    assert P("gs://b/reg/m@production") == A.ModelRef("m", "production", None, "gs://b/reg")
    assert P("runs/local/registry/m/3") == A.ModelRef("m", None, 3, "runs/local/registry")
    for bad, message in (("m@Prod", "must be a word"), ("m/03", "without leading zeros"),
                         ("", "empty model reference"), ("m@1", "must be a word")):
        with pytest.raises(R.RegistryError, match=message):
            P(bad)


def test_tf_serving_config_parses_with_tensorflow_serving(tmp_path, capsys):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    uri = str(tmp_path / "registry")
    reg = _registry(uri, tmp_path, n=3)
    out = tmp_path / "models.config"
    # no alias yet: the newest intact version, unlabelled
    assert cli.main(["registry", "export-tf-serving-config", "--registry", uri,
                     "--out", str(out)]) == 0
    assert capsys.readouterr().out == f"wrote {out}\n"
    config = text_format.Parse(out.read_text(), model_server_config_pb2.ModelServerConfig())
    (model,) = config.model_config_list.config
    assert list(model.model_version_policy.specific.versions) == [3]
    assert dict(model.version_labels) == {}
    A.Aliases(reg).move("production", 1)
    A.Aliases(reg).move("staging", 2)
    (Path(uri) / "deblur-icdpm" / "9").mkdir()  # stray numbered folder: never served
    assert cli.main(["registry", "export-tf-serving-config", "--registry", uri,
                     "--base-path", "/models/deblur-icdpm"]) == 0
    config = text_format.Parse(capsys.readouterr().out,
                               model_server_config_pb2.ModelServerConfig())
    (model,) = config.model_config_list.config
    assert (model.name, model.base_path, model.model_platform) == (
        "deblur-icdpm", "/models/deblur-icdpm", "tensorflow")
    assert list(model.model_version_policy.specific.versions) == [1, 2]
    assert dict(model.version_labels) == {"production": 1, "staging": 2}


# -------------------------------------------------------------------------------- gs://
gcs = bucket_fixture(BUCKET)


def test_gcs_aliases_races_and_refusals(gcs, tmp_path):
    uri = f"gs://{BUCKET}/aliases"
    reg = _registry(uri, tmp_path, n=MOVERS + 2, unblessed={MOVERS + 2})
    races(uri, tmp_path)
    al = A.Aliases(reg)
    with pytest.raises(R.RegistryError, match="records no blessing"):
        al.move("staging", MOVERS + 2)
    names = sorted(b.name for b in gcs.client.list_blobs(BUCKET, prefix="aliases/deblur-icdpm/.aliases/"))
    assert names == [f"aliases/deblur-icdpm/.aliases/production/{r:08d}.json"
                     for r in range(1, MOVERS + 3)]
    before = al.get("production")
    previous = al.history("production")[-1].from_version
    assert al.rollback("production").version == previous != before
    resolved = A.resolve_ref(uri, "deblur-icdpm@production",
                             cache_dir=str(tmp_path / "cache"))
    assert resolved.version == previous and resolved.alias == "production"
    assert os.path.isfile(os.path.join(resolved.registry.local_path(previous), "saved_model.pb"))
