"""The version of this code, in one place: the package's version and the git commit.

    package_version()   "0.1.0" (installed metadata, else pyproject.toml)
    git_commit()        ("<40-hex sha>", dirty?) of the checkout; in an image without .git,
                        $DEBLUR_GIT_SHA (infra/Dockerfile sets it from --build-arg GIT_COMMIT)
    code_version()      both, as the registry's manifest records them

The Kubeflow client names pipeline versions from it (pipelines/kubeflow/client.py), the pusher
records it in each registered version's manifest (components/registry/pusher.py).
"""
from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
from typing import Any, Dict, Optional, Tuple

PACKAGE = "deblur-pipeline"
GIT_SHA_ENV = "DEBLUR_GIT_SHA"  # set at image build time, where there is no .git
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def package_version() -> Optional[str]:
    """The installed package's version, else pyproject.toml's; None when neither says."""
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        with open(os.path.join(REPO_ROOT, "pyproject.toml")) as f:
            m = re.search(r'^version\s*=\s*"([^"]+)"', f.read(), re.M)
        return m.group(1) if m else None
    except OSError:
        return None


def git_commit(repo: str = REPO_ROOT) -> Tuple[Optional[str], Optional[bool]]:
    """(full commit, work tree has uncommitted changes) of the checkout at `repo`; in an image
    without .git, ($DEBLUR_GIT_SHA, None); (None, None) when neither is known."""
    run = dict(cwd=repo, capture_output=True, text=True, timeout=20)
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], **run)
        if r.returncode == 0 and r.stdout.strip():
            st = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], **run)
            return r.stdout.strip(), (bool(st.stdout.strip()) if st.returncode == 0 else None)
    except (OSError, subprocess.SubprocessError):
        pass
    return os.environ.get(GIT_SHA_ENV) or None, None


def code_version() -> Dict[str, Any]:
    """The package, its version and the git commit of this code (the manifest's `code`)."""
    sha, dirty = git_commit()
    return {"package": PACKAGE, "package_version": package_version(), "git_sha": sha,
            "git_dirty": dirty}
