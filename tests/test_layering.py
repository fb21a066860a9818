"""Imports flow one way: no module of the product imports from a layer above its own.

    core        the example format, per-image statistics, synthetic data (foundations)
    metrics     PSNR, SSIM, LPIPS, NIQE, FID                  (library)
    trainer     model, diffusion, data, training, sampling    (library; its perceptual loss
                term is metrics' LPIPS network)
    components  the TFX components and their library functions
    pipelines   create_pipeline(config), runners, config, summary
    deblur      the command line (and predict, which it alone uses)

A module may import from its own package and from lower layers; metrics never imports
trainer. The library layers import no orchestrator: core,
metrics and trainer import no TFX and no KFP (the Trainer's TFX run_fn is
components/training.py), and core imports neither TensorFlow nor Beam. Every import statement counts, including those inside
functions (the CLI imports lazily). Test modules (*_test.py, test_*.py, tests/) and
benchmarks/ exercise the whole stack and are not part of the layering.
"""
from __future__ import annotations

import ast
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = {"core": 0, "metrics": 1, "trainer": 2, "components": 3, "pipelines": 4, "deblur": 5}


def _product_modules():
    for package in LAYERS:
        for root, _, files in os.walk(os.path.join(REPO, package)):
            for name in files:
                if name.endswith(".py") and not (name.endswith("_test.py")
                                                 or name.startswith("test_")):
                    path = os.path.join(root, name)
                    yield os.path.relpath(path, REPO)[:-3].replace(os.sep, "."), path


def _imported_packages(path: str):
    for line, name in _all_imports(path):
        top = name.split(".")[0]
        if top in LAYERS or top in ("tests", "benchmarks"):
            yield line, name


# third-party packages a layer must not import (lazily neither)
FORBIDDEN = {"core": ("tfx", "kfp", "tensorflow", "apache_beam", "keras"),
             "metrics": ("tfx", "kfp"), "trainer": ("tfx", "kfp"),
             # the serving code that runs in .venv-serve (kserve, TensorFlow 2.21), which has no
             # TFX, KFP or Beam (the servability check's TFX component beside it runs in .venv)
             **{f"components.serving.{m}": ("tfx", "kfp", "apache_beam")
                for m in ("server", "runtime", "client", "process")}}


def _all_imports(path: str):
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        else:
            continue
        for name in names:
            yield node.lineno, name


def forbidden_imports():
    """["module:line imports name (package)"] for every import a layer must not make."""
    found = []
    for module, path in _product_modules():
        banned = FORBIDDEN.get(module.split(".")[0], ()) + sum(
            (v for k, v in FORBIDDEN.items()
             if "." in k and (module == k or module.startswith(k + "."))), ())
        for line, name in _all_imports(path):
            if name.split(".")[0] in banned:
                found.append(f"{module}:{line} imports {name}")
    return found


def import_edges():
    """(module, line, imported module) for every import of a project package."""
    return [(module, line, name) for module, path in _product_modules()
            for line, name in _imported_packages(path)]


def upward_imports(edges):
    found = []
    for module, line, name in edges:
        mine, theirs = module.split(".")[0], name.split(".")[0]
        if theirs in ("tests", "benchmarks"):
            found.append(f"{module}:{line} imports {name} (test code)")
        elif theirs != mine and LAYERS[theirs] >= LAYERS[mine]:
            found.append(f"{module}:{line} imports {name} "
                         f"(layer {LAYERS[theirs]} from layer {LAYERS[mine]})")
    return found


def orchestrator_doors(edges):
    """["module:line imports name"] for each module of pipelines/ outside an orchestrator's
    folder (pipelines/<name>/, e.g. pipelines/kubeflow/) that imports from one: the pipeline,
    its config and the local runner know no orchestrator, so adding one is a new folder plus
    its line in the command line (deblur/common.py ORCHESTRATOR_SECTIONS)."""
    doors = {name for name in os.listdir(os.path.join(REPO, "pipelines"))
             if os.path.isfile(os.path.join(REPO, "pipelines", name, "__init__.py"))}
    found = []
    for module, line, name in edges:
        parts, theirs = module.split("."), name.split(".")
        if parts[0] != "pipelines" or theirs[0] != "pipelines" or len(theirs) < 2:
            continue
        mine = parts[1] if len(parts) > 2 else None  # the folder a module is in, if any
        if theirs[1] in doors and theirs[1] != mine:
            found.append(f"{module}:{line} imports {name}")
    return found


def test_no_module_imports_from_above():
    edges = import_edges()
    assert len(edges) > 50  # the walk found the project's imports
    assert upward_imports(edges) == []


def test_the_library_imports_no_orchestrator():
    """trainer/ imports no TFX (its run_fn lives in components/training.py), core/ no
    TensorFlow or Beam."""
    assert forbidden_imports() == []


def test_each_orchestrator_stays_behind_its_door():
    """issue 38 item 2: no pipelines/ module outside kubeflow/ imports it."""
    assert orchestrator_doors(import_edges()) == []


def test_the_door_check_sees_a_config_importing_an_orchestrator(tmp_path, monkeypatch):
    (tmp_path / "pipelines" / "kubeflow").mkdir(parents=True)
    (tmp_path / "pipelines" / "kubeflow" / "__init__.py").write_text("")
    (tmp_path / "pipelines" / "kubeflow" / "client.py").write_text(
        "from pipelines.config import PipelineConfig\nfrom pipelines.kubeflow import config\n")
    (tmp_path / "pipelines" / "config.py").write_text(
        "import os\nfrom pipelines.kubeflow.config import KubeflowConfig\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", str(tmp_path))
    assert orchestrator_doors(import_edges()) == [
        "pipelines.config:2 imports pipelines.kubeflow.config"]


def test_the_check_sees_a_forbidden_import(tmp_path, monkeypatch):
    (tmp_path / "trainer").mkdir()
    (tmp_path / "trainer" / "bad.py").write_text(
        "import os\ndef f():\n    from tfx.components.trainer import fn_args_utils\n")
    (tmp_path / "components" / "serving").mkdir(parents=True)
    (tmp_path / "components" / "serving" / "server.py").write_text("import tfx\n")
    (tmp_path / "components" / "serving" / "component.py").write_text("import tfx\n")  # may
    monkeypatch.setattr(sys.modules[__name__], "REPO", str(tmp_path))
    assert sorted(forbidden_imports()) == [
        "components.serving.server:1 imports tfx", "trainer.bad:3 imports tfx.components.trainer"]


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    """Not vacuous: planted upward imports (a lazy one; metrics importing trainer) are reported."""
    for package, text in (("core", "import numpy\ndef f():\n    from pipelines import config\n"),
                          ("metrics", "from core import synth\nimport trainer.model\n")):
        (tmp_path / package).mkdir()
        (tmp_path / package / "bad.py").write_text(text)
    monkeypatch.setattr(sys.modules[__name__], "REPO", str(tmp_path))
    assert upward_imports(import_edges()) == [
        "core.bad:3 imports pipelines (layer 4 from layer 0)",
        "metrics.bad:2 imports trainer.model (layer 2 from layer 1)"]
