"""The file contract is spelled once: no module outside core/artifacts.py writes one of its
file names as a string literal; each takes the constant (SUMMARY_FILE, SAVED_MODEL_DIR, ...).

The names are the str values of core/artifacts.py's module-level UPPER_CASE constants, read
with `ast` (so a name added there is checked at once). A literal spells a name when it is the
name, or when one of its '/'-separated parts is the name ("/quarantine.jsonl" in an f-string,
"a/checkpoints"); SPLIT_PREFIX ("Split-") is spelled by a part that starts with it
("Split-train"). A name with a dot (a file: "deblur.json", "saved_model.pb") is also spelled
inside any text ("no saved_model.pb there", a regular expression's "quarantine\\.jsonl").
Not uses: docstrings (documentation; comments are not in the syntax tree), and a bare word
("quarantine", "checkpoints") as a key of a record (a dict key, x["..."], x.get("...")): the
unit record's "quarantine" is not the folder.

Scanned: every .py under the product's packages and benchmarks/, except test modules
(*_test.py, test_*.py, tests/), which may spell a name where the literal is the behaviour under
test (the on-disk layout)."""
from __future__ import annotations

import ast
import os
import re
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONTRACT = os.path.join("core", "artifacts.py")
SCANNED = ("components", "core", "deblur", "pipelines", "trainer", "metrics", "benchmarks")

# "path:CONSTANT" -> why the literal assigned to CONSTANT there is not a file name. Keep it
# short: anything else takes its name from core/artifacts.py.
ALLOWED = {
    "components/ingest/beam_ingest.py:QUARANTINE":
        "ProcessPairFn's Beam output tag for quarantined pairs, not the quarantine folder",
    "components/ingest/component.py:COUNTS_KEY":
        "the DeblurIngest component's output key (a TFX channel name), not the counts folder",
}


def contract_names(path=None):
    """{value: constant name} for each module-level UPPER_CASE str constant of the contract."""
    with open(path or os.path.join(REPO, CONTRACT)) as f:
        tree = ast.parse(f.read())
    names = {}
    for node in tree.body:
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)):
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id.isupper():
                    names.setdefault(node.value.value, target.id)
    return names


def _docstrings(tree):
    """The ids of the docstring nodes (module, class, function)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)):
                found.add(id(body[0].value))
    return found


def _spells(text: str, name: str) -> bool:
    parts = text.split("/")
    if name.endswith("-"):  # a prefix: Split-<split>
        return any(p.startswith(name) for p in parts)
    if name in parts:
        return True
    # a file name (with a dot) anywhere, not as part of a longer name ("saved_model.pbtxt");
    # "\\." is a dot in a regular expression
    return "." in name and re.search(
        rf"(?<![\w.-]){re.escape(name)}(?![\w-]|\.\w)", text.replace("\\.", ".")) is not None


def _record_keys(tree):
    """The ids of the str constants used as a key of a record: dict keys, x["key"],
    x.get/pop/setdefault("key")."""
    keys = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            keys.update(id(k) for k in node.keys if k is not None)
        elif isinstance(node, ast.Subscript):
            keys.add(id(node.slice))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in ("get", "pop", "setdefault") and node.args):
            keys.add(id(node.args[0]))
    return keys


def _allowed(tree, path):
    """The ids of the literals assigned to an ALLOWED constant of `path`."""
    names = {e.rsplit(":", 1)[1] for e in ALLOWED if e.rsplit(":", 1)[0] == path}
    return {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id in names for t in node.targets)}


def _modules():
    for package in SCANNED:
        for root, dirs, files in os.walk(os.path.join(REPO, package)):
            dirs[:] = [d for d in dirs if d not in ("tests", "__pycache__")]
            for name in sorted(files):
                path = os.path.relpath(os.path.join(root, name), REPO)
                if (name.endswith(".py") and not name.endswith("_test.py")
                        and not name.startswith("test_") and path != CONTRACT):
                    yield path


def _literals(path):
    """(node, is a record key) for every str constant of `path` that is not a docstring."""
    with open(os.path.join(REPO, path)) as f:
        tree = ast.parse(f.read(), path)
    skip, keys = _docstrings(tree), _record_keys(tree)
    return tree, [(node, id(node) in keys) for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and isinstance(node.value, str)
                  and id(node) not in skip]


def _is_use(value: str, is_key: bool, name: str) -> bool:
    bare = "." not in name and not name.endswith("-")
    return _spells(value, name) and not (is_key and bare)


def spelled_names():
    """["path:line spells 'literal' (CONSTANT)"] for every literal that spells a contract name,
    less the ALLOWED ones, sorted."""
    names = contract_names()
    found = []
    for path in _modules():
        tree, literals = _literals(path)
        allowed = _allowed(tree, path)
        for node, is_key in literals:
            for name, constant in names.items():
                if _is_use(node.value, is_key, name) and id(node) not in allowed:
                    found.append((path, node.lineno,
                                  f"{path}:{node.lineno} spells {node.value!r} ({constant})"))
    return [text for _, _, text in sorted(found)]


def test_no_module_spells_a_file_name_of_the_contract():
    assert len(contract_names()) > 15  # the contract was read
    assert spelled_names() == []


def test_the_allow_list_is_used():
    """Each ALLOWED entry still names a literal that would be reported without it, so the list
    stays the exceptions."""
    names = contract_names()
    stale = []
    for entry in ALLOWED:
        path = entry.rsplit(":", 1)[0]
        tree, literals = _literals(path)
        allowed = _allowed(tree, path)
        if not any(id(node) in allowed and _is_use(node.value, is_key, name)
                   for node, is_key in literals for name in names):
            stale.append(entry)
    assert stale == []


def test_the_check_sees_a_spelled_name(tmp_path, monkeypatch):
    """Not vacuous: planted literals (a whole name, a part of an f-string, a path, a split
    folder, a file name in a message and in a regular expression, a file name as a dict key)
    are reported; docstrings, longer names, a bare word as a record key, an ALLOWED constant,
    test modules and the contract itself are not."""
    (tmp_path / "core").mkdir()
    (tmp_path / "core" / "artifacts.py").write_text(
        'SPLIT_PREFIX = "Split-"\nSUMMARY_FILE = "summary.json"\nSAVED_MODEL_FILE = '
        '"saved_model.pb"\nCHECKPOINTS_DIR = "checkpoints"\nQUARANTINE_DIR = "quarantine"\n'
        'x = "not.json"\n')
    (tmp_path / "trainer").mkdir()
    (tmp_path / "trainer" / "bad.py").write_text(
        '"""Writes summary.json and checkpoints/."""\n'
        'import os\n'
        'TAG = "quarantine"\n'
        'def f(out, split, record):\n'
        '    """Reads out/Split-train."""\n'
        '    a = os.path.join(out, "checkpoints")\n'
        '    b = f"{out}/summary.json"\n'
        '    c = os.path.join(out, "Split-test")\n'
        '    d = f"no saved_model.pb in {out}"\n'
        '    e = ("saved_model.pbtxt", "not.json", "checkpoints.v2", "my_checkpoints")\n'
        '    g = record["quarantine"], record.get("checkpoints"), {"quarantine": 1}\n'
        '    h = {"saved_model.pb": 1}, r"(?:summary\\.json|x)"\n')
    (tmp_path / "trainer" / "bad_test.py").write_text('A = "summary.json"\n')
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "bench.py").write_text('P = "runs/checkpoints/ckpt-1"\n')
    monkeypatch.setattr(sys.modules[__name__], "REPO", str(tmp_path))
    monkeypatch.setattr(sys.modules[__name__], "ALLOWED", {"trainer/bad.py:TAG": "a Beam tag"})
    assert spelled_names() == [
        "benchmarks/bench.py:1 spells 'runs/checkpoints/ckpt-1' (CHECKPOINTS_DIR)",
        "trainer/bad.py:6 spells 'checkpoints' (CHECKPOINTS_DIR)",
        "trainer/bad.py:7 spells '/summary.json' (SUMMARY_FILE)",
        "trainer/bad.py:8 spells 'Split-test' (SPLIT_PREFIX)",
        "trainer/bad.py:9 spells 'no saved_model.pb in ' (SAVED_MODEL_FILE)",
        "trainer/bad.py:12 spells '(?:summary\\\\.json|x)' (SUMMARY_FILE)",
        "trainer/bad.py:12 spells 'saved_model.pb' (SAVED_MODEL_FILE)"]
    test_the_allow_list_is_used()  # TAG is still a literal the check would report
    monkeypatch.setattr(sys.modules[__name__], "ALLOWED", {"trainer/bad.py:NOTHING": "gone"})
    with pytest.raises(AssertionError):
        test_the_allow_list_is_used()
