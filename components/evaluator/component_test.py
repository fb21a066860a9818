"""The DeblurEvaluator's baseline (component.py): a damaged blessed model, in ML Metadata or in
the registry, is skipped with a warning and the newest blessed version that loads is used,
instead of a traceback after training on every later run."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil

import pytest
import tensorflow as tf

from components.evaluator import component as comp
from components.evaluator import evaluate_test
from components.evaluator.evaluate_test import GRID, NO_FID, examples_dir  # noqa: F401 (fixture)
from components.registry.registry import Registry

SETTING = {"sampler": "ddpm", "steps": 2, "max_noise": 0.1, "samples": 1}


class Checker(evaluate_test.Checker):
    """evaluate_test's Checker with its strength in a variable, and a larger one beside it, so
    that the SavedModel has a variables file worth truncating."""

    def __init__(self, strength):
        tf.Module.__init__(self)
        self.strength = tf.Variable(strength, dtype=tf.float32)
        self.padding = tf.Variable(tf.zeros([4096]))


DATA = os.path.join("variables", "variables.data-00000-of-00001")


def _truncate(saved_model_dir: str) -> str:
    """Cuts the variables file to half its size (what a full disk or a killed copy leaves):
    tf.saved_model.load raised IndexError ("Read less bytes than requested")."""
    path = os.path.join(saved_model_dir, DATA)
    with open(path, "rb") as f:
        content = f.read()
    with open(path, "wb") as f:
        f.write(content[:len(content) // 2])
    return path


def _rewrite_manifest(version_dir: str) -> None:
    """The manifest made to match the damaged files (a hand "repair"): the registry's own size
    and SHA-256 checks pass, only TensorFlow finds the damage."""
    manifest_path = os.path.join(version_dir, "manifest.json")
    with open(manifest_path) as f:
        manifest = json.load(f)
    with open(os.path.join(version_dir, DATA), "rb") as f:
        content = f.read()
    manifest["files"][DATA.replace(os.sep, "/")] = {
        **manifest["files"][DATA.replace(os.sep, "/")], "bytes": len(content),
        "sha256": hashlib.sha256(content).hexdigest()}
    with open(manifest_path, "w") as f:
        json.dump(manifest, f)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A registry of two blessed versions; version 2's variables file is truncated and its
    manifest rewritten to match. Returns (uri, version 1's strength)."""
    root = tmp_path_factory.mktemp("models")
    uri = str(tmp_path_factory.mktemp("registry"))
    reg = Registry(uri, "m")
    for version, strength in ((1, 0.02), (2, 0.05)):
        tf.saved_model.save(Checker(strength), str(root / str(version)))
        assert reg.push(str(root / str(version)),
                        {"sampling": {**SETTING, "max_noise": 0.1 * version}}) == version
    _truncate(os.path.join(uri, "m", "2"))
    _rewrite_manifest(os.path.join(uri, "m", "2"))
    assert reg.verify(2, hashes=True) is None  # the registry cannot tell
    return uri, root


def _run_component(tmp_path, examples, model_dir, **kwargs):
    """The DeblurEvaluator's own function, as TFX's executor calls it, on real artifacts."""
    from tfx.types import standard_artifacts

    from components import run_page

    def artifact(cls, name, uri=None, id_=0):
        a = cls()
        a.uri = uri or str(tmp_path / name)
        if issubclass(cls, run_page._Text):  # a value artifact: a file at its uri
            os.makedirs(os.path.dirname(a.uri), exist_ok=True)
        else:
            os.makedirs(a.uri, exist_ok=True)
        if id_:
            a.id = id_
        return a

    model_root = artifact(standard_artifacts.Model, "model", id_=11)
    shutil.copytree(model_dir, os.path.join(model_root.uri, "Format-Serving"))
    outputs = {"evaluation": artifact(standard_artifacts.ModelEvaluation, "evaluation"),
               "blessing": artifact(standard_artifacts.ModelBlessing, "blessing"),
               "verdict": artifact(run_page.Markdown, "verdict"),
               "report": artifact(run_page.HTML, "report"),
               "metrics": artifact(run_page.Metrics, "metrics"),
               "input_metrics": artifact(run_page.Metrics, "input_metrics")}
    baseline = kwargs.pop("baseline_model_dir", None)
    if baseline:
        base = artifact(standard_artifacts.Model, "baseline", id_=7)
        shutil.copytree(baseline, os.path.join(base.uri, "Format-Serving"))
        kwargs["baseline_model"] = base
    fn = comp.DeblurEvaluator.EXECUTOR_SPEC.executor_class._FUNCTION
    fn(examples=artifact(standard_artifacts.Examples, "examples", uri=examples),
       model=model_root, eval_config=json.dumps({"grid": GRID[:1], **NO_FID}),
       gate_config=json.dumps({"ood_lpips_max": 1.0}), **outputs, **kwargs)
    with open(os.path.join(outputs["evaluation"].uri, "evaluation.json")) as f:
        return json.load(f), outputs["blessing"]


def test_a_damaged_registry_version_gives_way_to_the_newest_that_loads(
        registry, examples_dir, tmp_path, caplog):  # noqa: F811
    """gate.baseline: registry. The newest version's variables file is truncated (its manifest
    matching): IndexError in tf.saved_model.load broke the evaluation after training; now it
    is skipped with a warning naming it and version 1 is the baseline, at its own setting."""
    uri, models = registry
    caplog.set_level(logging.WARNING)
    result, blessing = _run_component(tmp_path, examples_dir, str(models / "1"),
                                      baseline_registry_uri=uri, baseline_model_name="m")
    assert result["baseline"]["model"] == os.path.join(uri, "m", "1")
    assert result["baseline"]["setting"]["max_noise"] == pytest.approx(0.1)
    assert blessing.get_string_custom_property("baseline_model") == os.path.join(uri, "m", "1")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                and r.name == comp.log.name]
    assert warnings[0].startswith(
        f"DeblurEvaluator: skipping the blessed registry version 2 as the baseline: "
        f"{os.path.join(uri, 'm', '2')} does not load (IndexError: "), warnings
    assert warnings[0].endswith("; trying the next older blessed version"), warnings
    assert warnings[1] == (f"DeblurEvaluator: baseline registry version 1 "
                           f"({os.path.join(uri, 'm', '1')}), the newest blessed model that loads")


def test_a_damaged_ml_metadata_baseline_falls_back_to_the_registry(
        registry, examples_dir, tmp_path, caplog):  # noqa: F811
    """gate.baseline: ml-metadata. The Resolver's latest blessed model (its Trainer output,
    truncated) broke every later run's evaluator; now the registry's newest version that loads
    serves (version 2 loads no better, so version 1), and with every version damaged the gate
    goes on without a baseline, saying so."""
    uri, models = registry
    damaged = str(tmp_path / "damaged")
    shutil.copytree(str(models / "2"), damaged)
    _truncate(damaged)
    caplog.set_level(logging.WARNING)
    result, blessing = _run_component(tmp_path / "a", examples_dir, str(models / "1"),
                                      baseline_model_dir=damaged,
                                      baseline_fallback_registry_uri=uri, baseline_model_name="m")
    assert result["baseline"]["model"] == os.path.join(uri, "m", "1")
    assert blessing.get_string_custom_property("baseline_model") == os.path.join(uri, "m", "1")
    names = [r.getMessage().split(" as the baseline")[0] for r in caplog.records
             if "skipping" in r.getMessage()]
    assert names == ["DeblurEvaluator: skipping the blessed ML Metadata model 7",
                     "DeblurEvaluator: skipping the blessed registry version 2"]
    # no intact blessed model anywhere: no baseline, one warning says so
    caplog.clear()
    none = comp.choose_baseline([(damaged, None, "ML Metadata model 7")])
    assert none is None
    assert caplog.records[-1].getMessage() == (
        "DeblurEvaluator: no blessed model loads (skipped ML Metadata model 7): no baseline, "
        "the gate's regression rule is skipped")
    # an intact Resolver baseline is used as it is, and named by its id
    caplog.clear()
    result, blessing = _run_component(tmp_path / "b", examples_dir, str(models / "1"),
                                      baseline_model_dir=str(models / "1"),
                                      baseline_fallback_registry_uri=uri, baseline_model_name="m")
    assert result["baseline"]["model"].endswith(os.path.join("baseline", "Format-Serving"))
    assert blessing.get_int_custom_property("baseline_model_id") == 7
    assert not [r for r in caplog.records if "skipping" in r.getMessage()]
