"""A repository, not a lab notebook (issue 38 item 5): benchmarks/results holds only what a
document cites. A result no document names goes to benchmarks/out/ (ignored) or out of the
tree, listed in benchmarks/results/ARCHIVE.md with the commit to fetch it from.

Cited: the file's name appears in a Markdown file of the repository outside benchmarks/results
(README.md, docs/, benchmarks/README.md, models/README.md, ...), or a glob there matches it
("learning_curves_local64_1000*.json")."""
from __future__ import annotations

import fnmatch
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join("benchmarks", "results")
SKIP_DIRS = {".git", ".venv", "runs", "node_modules", "__pycache__"}


def _documents(repo):
    for root, dirs, files in os.walk(repo):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.startswith(".venv")]
        if os.path.relpath(root, repo) == RESULTS:
            continue  # ARCHIVE.md lists what left; a result cannot cite itself
        for name in files:
            if name.endswith(".md"):
                with open(os.path.join(root, name), encoding="utf-8") as f:
                    yield f.read()


def uncited(repo=REPO):
    folder = os.path.join(repo, RESULTS)
    if not os.path.isdir(folder):
        return []
    text = "\n".join(_documents(repo))
    globs = {os.path.basename(g) for g in re.findall(r"[\w./-]*\*[\w.*-]*", text) if g.strip("*")}
    return sorted(name for name in os.listdir(folder)
                  if name not in text and not any(fnmatch.fnmatch(name, g) for g in globs))


def test_benchmarks_results_holds_only_cited_files():
    assert len(os.listdir(os.path.join(REPO, RESULTS))) > 10  # the walk found the folder
    assert uncited() == []


def test_the_check_sees_an_uncited_result(tmp_path):
    results = tmp_path / RESULTS
    results.mkdir(parents=True)
    for name in ("cited.json", "curve_a_1000.json", "scratch.patch", "only_archived.json"):
        (results / name).write_text("{}")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "x.md").write_text("see `cited.json` and `curve_a_*.json`\n")
    (results / "ARCHIVE.md").write_text("only_archived.json left at abc123\n")
    assert uncited(str(tmp_path)) == ["ARCHIVE.md", "only_archived.json", "scratch.patch"]
