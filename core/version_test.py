"""core/version.py: the commit is the checkout's (git itself is the reference), and an image
without .git reports $DEBLUR_GIT_SHA."""
import subprocess

from core import version


def test_git_commit_is_the_checkouts_head():
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=version.REPO_ROOT,
                          capture_output=True, text=True, check=True).stdout.strip()
    sha, dirty = version.git_commit()
    assert sha == head and dirty in (True, False)


def test_without_git_the_image_build_arg_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv(version.GIT_SHA_ENV, "f" * 40)
    assert version.git_commit(str(tmp_path)) == ("f" * 40, None)  # tmp_path: no repository
    monkeypatch.delenv(version.GIT_SHA_ENV)
    assert version.git_commit(str(tmp_path)) == (None, None)


def test_code_version_names_the_package_and_its_version():
    v = version.code_version()
    assert v["package"] == "deblur-pipeline" and v["package_version"]
    with open(f"{version.REPO_ROOT}/pyproject.toml") as f:
        assert f'version = "{v["package_version"]}"' in f.read()
