"""deblur/common.py: the config every command loads, its orchestrator sections checked."""
from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from deblur.common import load_config
from pipelines import config as config_lib
from pipelines.config import REPO_ROOT, ConfigError


def _args(path, *sets):
    return argparse.Namespace(config=str(path), set=list(sets))


def test_a_typo_in_the_kubeflow_section_fails_every_command(tmp_path):
    """The pipeline config keeps `kubeflow:` as plain data (pipelines/config.py knows no
    orchestrator); the command line still refuses a typo there in one line, as before."""
    path = tmp_path / "c.yaml"
    path.write_text("kubeflow:\n  imagee: x\n")
    assert config_lib.load(str(path)).kubeflow == {"imagee": "x"}  # the data, untyped
    with pytest.raises(ConfigError, match=r"^kubeflow: unknown key\(s\) imagee; known: image, "):
        load_config(_args(path))
    path.write_text("kubeflow:\n  dataflow: {runner: DataflowRunner, max_workerz: 4}\n")
    with pytest.raises(ConfigError, match=r"^kubeflow\.dataflow: unknown key\(s\) max_workerz"):
        load_config(_args(path))
    with pytest.raises(ConfigError, match=r"^kubeflow\.trainer_max_retries: expected int, got "
                                          r"str 'three'"):
        load_config(_args(path, "kubeflow.dataflow={}", "kubeflow.trainer_max_retries=three"))
    cfg = load_config(_args(path, "kubeflow.dataflow={}", "kubeflow.region=europe-west4"))
    assert cfg.kubeflow["region"] == "europe-west4"


def test_loading_the_config_imports_no_orchestrator():
    out = subprocess.run(
        [sys.executable, "-c", "import sys, pipelines.config as c; c.load(None); "
                               "print(sorted(m for m in sys.modules if m.startswith('pipelines')))"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    assert "pipelines.config" in out and "kubeflow" not in out
