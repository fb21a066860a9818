"""RegistryPusher's executor on hand-made artifacts in temporary folders (a real local registry)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import tensorflow as tf
from tfx.dsl.components.base import base_executor
from tfx.proto.orchestration import pipeline_pb2
from tfx.types import channel_utils, standard_artifacts

from components.registry import component as C
from components.registry import pusher
from components.registry.registry import Registry, RegistryError
from tests.gcs_emulator import bucket_fixture

SETTING = {"sampler": "ddpm", "steps": 20, "max_noise": 0.1, "samples": 1}
BLESSING_SETTING = {"sampler": "ddpm", "steps": 30, "max_noise": 0.2, "samples": 2}
BEST = {"in": {"psnr": 27.5, "ssim": 0.81, "lpips": 0.11},
        "out": {"psnr": 25.1, "ssim": 0.74, "lpips": 0.19}}
# as components/evaluator/gate.py writes them
RULES_OK = [{"rule": "finite", "verdict": "pass", "value": None, "threshold": None, "detail": ""},
            {"rule": "ood_lpips", "verdict": "pass", "value": 0.19, "threshold": 0.25,
             "detail": "out-domain LPIPS 0.1900 <= 0.25"},
            {"rule": "regression", "verdict": "skipped", "value": 0.19, "threshold": None,
             "detail": "no blessed model yet"}]
RULES_BAD = [{"rule": "finite", "verdict": "pass", "value": None, "threshold": None, "detail": ""},
             {"rule": "ood_lpips", "verdict": "fail", "value": 0.31, "threshold": 0.25,
              "detail": "out-domain LPIPS 0.3100 > 0.25"},
             {"rule": "regression", "verdict": "fail", "value": 0.31, "threshold": 0.21,
              "detail": ""},
             {"rule": "other", "verdict": "skipped", "value": None, "threshold": None}]


def _artifact(cls, uri: Path, id_: int):
    a = cls()
    a.uri = str(uri)
    a.id = id_
    uri.mkdir(parents=True, exist_ok=True)
    return a


class ServingStub(tf.Module):
    """The export's interface (trainer/export.py: default_* variables read by serving_default)
    around an identity 'model', so a push can set its serving setting in seconds."""

    def __init__(self):
        super().__init__()
        self.default_steps = tf.Variable(10, dtype=tf.int32, trainable=False)
        self.default_max_noise = tf.Variable(1.0, dtype=tf.float32, trainable=False)
        self.default_samples = tf.Variable(1, dtype=tf.int32, trainable=False)
        self.default_deterministic = tf.Variable(True, trainable=False)

    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([], tf.int32),
                                  tf.TensorSpec([], tf.float32), tf.TensorSpec([], tf.int32),
                                  tf.TensorSpec([2], tf.int64), tf.TensorSpec([], tf.bool)])
    def deblur(self, image, steps, max_noise, samples, seed, deterministic):
        return {"image": image}

    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
    def serve(self, image):
        return self.deblur(image, self.default_steps, self.default_max_noise,
                           self.default_samples, tf.constant([0, 0], tf.int64),
                           self.default_deterministic)


def make_inputs(tmp: Path, blessed: bool, with_eval=True, with_examples=True):
    model = _artifact(standard_artifacts.Model, tmp / "Trainer" / "model" / "7", 11)
    serving = Path(model.uri) / "Format-Serving"
    stub = ServingStub()
    tf.saved_model.save(stub, str(serving), signatures={"serving_default": stub.serve,
                                                        "deblur": stub.deblur})
    (serving / "deblur.json").write_text(json.dumps(
        {"default_sampling": {"sampler": "ddim", "steps": 10, "max_noise": 1.0, "samples": 1},
         "experiment": {"name": "tiny"}}))
    blessing = _artifact(standard_artifacts.ModelBlessing, tmp / "Evaluator" / "blessing" / "8", 12)
    blessing.set_int_custom_property("blessed", int(blessed))
    (Path(blessing.uri) / "blessing.json").write_text(json.dumps(
        {"blessed": blessed, "rules": RULES_OK if blessed else RULES_BAD, "reason": "r",
         "config": {"ood_lpips_max": 0.25}, "best_setting": BLESSING_SETTING, "best": BEST}))
    inputs = {C.MODEL_KEY: [model], C.BLESSING_KEY: [blessing]}
    if with_eval:
        ev = _artifact(standard_artifacts.ModelEvaluation, tmp / "Evaluator" / "evaluation" / "8", 13)
        (Path(ev.uri) / "evaluation.json").write_text(json.dumps(
            {"best_setting": SETTING, "best": BEST, "grid": []}))
        inputs[C.EVALUATION_KEY] = [ev]
    if with_examples:
        ex = _artifact(standard_artifacts.Examples, tmp / "DeblurIngest" / "examples" / "3", 14)
        (Path(ex.uri) / "Split-train").mkdir()
        (Path(ex.uri) / "Split-train" / "data_tfrecord-00000-of-00001.gz").write_bytes(b"x" * 100)
        (Path(ex.uri) / "summary.json").write_text(json.dumps(
            {"inputs": 5, "written": 4, "quarantined": 1, "splits": {"train": {"written": 4}}}))
        inputs[C.EXAMPLES_KEY] = [ex]
    return inputs


def run_executor(tmp: Path, inputs, registry: Path):
    out = _artifact(standard_artifacts.PushedModel, tmp / "RegistryPusher" / "pushed_model" / "9", 0)
    ctx = base_executor.BaseExecutor.Context(
        tmp_dir=str(tmp / "tmp"), unique_id="9",
        pipeline_info=pipeline_pb2.PipelineInfo(id="deblur"),
        pipeline_run_id="20250101-000000.000001",
        pipeline_node=pipeline_pb2.PipelineNode(
            node_info=pipeline_pb2.NodeInfo(id="RegistryPusher")))
    C.Executor(ctx).Do(inputs, {C.PUSHED_MODEL_KEY: [out]},
                       {"registry_uri": str(registry), "model_name": "deblur-icdpm"})
    return out, json.loads((Path(out.uri) / C.PUSH_RECORD_FILE).read_text())


def test_blessed_model_becomes_version_1_with_a_full_manifest(tmp_path):
    registry = tmp_path / "registry"
    inputs = make_inputs(tmp_path, blessed=True)
    out, record = run_executor(tmp_path, inputs, registry)

    assert out.get_int_custom_property("pushed") == 1
    assert out.get_string_custom_property("pushed_version") == "1"
    dest = str(registry / "deblur-icdpm" / "1")
    assert out.get_string_custom_property("pushed_destination") == dest
    assert not out.has_custom_property("reason")
    assert record["pushed"] and record["version"] == 1 and record["destination"] == dest

    reg = Registry(str(registry), "deblur-icdpm")
    assert reg.versions() == [1]
    m = reg.show(1)
    assert m == record["manifest"]
    assert m["metrics"] == BEST and m["sampling"] == SETTING
    assert m["sampling_source"] == "evaluation best_setting"
    assert m["blessing"] == {"blessed": True, "rules": RULES_OK, "reason": "r",
                             "config": {"ood_lpips_max": 0.25}}
    assert m["mlmd"] == {"model": 11, "model_blessing": 12, "evaluation": 13, "examples": 14}
    assert m["pipeline"] == {"name": "deblur", "run_id": "20250101-000000.000001",
                             "node_id": "RegistryPusher"}
    assert m["source"]["model_uri"] == inputs[C.MODEL_KEY][0].uri
    assert m["source"]["model_dir"].endswith("Format-Serving")
    assert m["source"]["experiment"] == "tiny"
    assert m["data"]["fingerprint"].startswith("sha256:") and m["data"]["files"] == 2
    assert m["data"]["summary"]["written"] == 4
    assert m["code"]["package"] == "deblur-pipeline"
    assert m["code"]["git_sha"] and len(m["code"]["git_sha"]) == 40  # this is a git checkout
    assert {"saved_model.pb", "variables/variables.index", "deblur.json"} <= set(m["files"])
    # the pushed copy's serving_default samples with the evaluator's setting
    assert m["serving_default"] == SETTING
    pushed = tf.saved_model.load(dest)
    assert (int(pushed.default_steps.numpy()), float(pushed.default_max_noise.numpy()),
            int(pushed.default_samples.numpy()), bool(pushed.default_deterministic.numpy())) == \
        (20, pytest.approx(0.1), 1, False)
    described = json.loads((Path(dest) / "deblur.json").read_text())
    assert described["default_sampling"] == SETTING and described["sampling_chosen_by"] == "evaluator"

    # the fingerprint follows the data: one more byte in a shard changes it
    ex = inputs[C.EXAMPLES_KEY][0].uri
    before = pusher.data_fingerprint(ex)["fingerprint"]
    (Path(ex) / "Split-train" / "data_tfrecord-00000-of-00001.gz").write_bytes(b"x" * 101)
    assert pusher.data_fingerprint(ex)["fingerprint"] != before

    # a second blessed model becomes version 2
    _, record2 = run_executor(tmp_path / "second", make_inputs(tmp_path / "second", True), registry)
    assert record2["version"] == 2 and reg.latest()[0] == 2
    assert m["warm_start"] is None  # deblur.json records none (see test_pipeline_retraining)

    # the first model again (a cached Trainer, blessed again): not a third version
    out3, record3 = run_executor(tmp_path, inputs, registry)
    assert out3.get_int_custom_property("pushed") == 0 and record3["already_registered"] == 1
    assert out3.get_int_custom_property("already_registered") == 1
    assert out3.get_string_custom_property("reason").startswith("already registered as version 1")
    assert reg.versions() == [1, 2]


def test_not_blessed_model_is_recorded_as_not_pushed_and_the_registry_stays_empty(tmp_path):
    registry = tmp_path / "registry"
    out, record = run_executor(tmp_path, make_inputs(tmp_path, blessed=False), registry)
    assert out.get_int_custom_property("pushed") == 0
    reason = out.get_string_custom_property("reason")
    assert reason == record["reason"]
    assert reason == ("model not blessed: ood_lpips: out-domain LPIPS 0.3100 > 0.25; "
                      "regression = 0.31 (threshold 0.21)")  # passed and skipped rules left out
    assert not out.has_custom_property("pushed_version")
    assert not record["pushed"] and record["version"] is None
    assert not registry.exists()  # nothing written, not even the model folder
    assert Registry(str(registry), "deblur-icdpm").versions() == []


def test_without_evaluation_metrics_and_setting_come_from_the_blessing_or_the_export(tmp_path):
    registry = tmp_path / "registry"
    inputs = make_inputs(tmp_path, blessed=True, with_eval=False, with_examples=False)
    _, record = run_executor(tmp_path, inputs, registry)
    m = record["manifest"]
    assert m["sampling"] == BLESSING_SETTING and m["sampling_source"] == "blessing best_setting"
    assert m["metrics"] == BEST and m["data"] is None

    inputs = make_inputs(tmp_path / "b", blessed=True, with_eval=False, with_examples=False)
    (Path(inputs[C.BLESSING_KEY][0].uri) / "blessing.json").write_text(
        json.dumps({"blessed": True, "rules": RULES_OK}))
    _, record = run_executor(tmp_path / "b", inputs, registry)
    m = record["manifest"]
    assert m["sampling"]["sampler"] == "ddim" and m["sampling_source"] == "deblur.json default"
    assert m["metrics"] is None
    assert m["mlmd"] == {"model": 11, "model_blessing": 12, "evaluation": None, "examples": None}


def test_inconsistent_or_broken_inputs_fail_loudly(tmp_path):
    inputs = make_inputs(tmp_path, blessed=True)
    inputs[C.BLESSING_KEY][0].set_int_custom_property("blessed", 0)  # file says blessed
    with pytest.raises(ValueError, match="custom property blessed=0 but blessing.json says"):
        run_executor(tmp_path, inputs, tmp_path / "registry")

    inputs = make_inputs(tmp_path / "b", blessed=True)
    (Path(inputs[C.EVALUATION_KEY][0].uri) / "evaluation.json").write_text('{"best": {}}')
    with pytest.raises(ValueError, match=r"lacks \['best_setting'\]"):
        run_executor(tmp_path / "b", inputs, tmp_path / "registry")

    inputs = make_inputs(tmp_path / "c", blessed=True)
    (Path(inputs[C.MODEL_KEY][0].uri) / "Format-Serving" / "saved_model.pb").unlink()
    with pytest.raises(RegistryError, match="is not a SavedModel"):
        run_executor(tmp_path / "c", inputs, tmp_path / "registry")
    assert Registry(str(tmp_path / "registry"), "deblur-icdpm").versions() == []


def test_component_wires_channels_and_checks_the_name():
    model = channel_utils.as_channel([standard_artifacts.Model()])
    blessing = channel_utils.as_channel([standard_artifacts.ModelBlessing()])
    p = C.RegistryPusher(model=model, model_blessing=blessing, registry_uri="gs://b/registry")
    assert p.exec_properties == {"registry_uri": "gs://b/registry", "model_name": "deblur-icdpm"}
    assert p.outputs[C.PUSHED_MODEL_KEY].type is standard_artifacts.PushedModel
    assert set(p.inputs) == {C.MODEL_KEY, C.BLESSING_KEY}
    with pytest.raises(ValueError, match="model name"):
        C.RegistryPusher(model=model, model_blessing=blessing, registry_uri="/r", model_name="7")


def _run_with_report(tmp: Path, inputs, registry: Path):
    from components import run_page

    out = _artifact(standard_artifacts.PushedModel, tmp / "RegistryPusher" / "pushed_model" / "9", 0)
    report = run_page.Markdown()
    report.uri = str(tmp / "RegistryPusher" / "report" / "9" / "value")
    C.Executor(base_executor.BaseExecutor.Context(tmp_dir=str(tmp / "tmp"), unique_id="9")).Do(
        inputs, {C.PUSHED_MODEL_KEY: [out], C.REPORT_KEY: [report]},
        {"registry_uri": str(registry), "model_name": "deblur-icdpm"})
    return report, Path(report.uri).read_text()


def test_the_run_page_report_names_the_version_and_its_uri(tmp_path):
    """The pusher's system.Markdown output (components/run_page.py): what the Kubeflow run page
    shows for the push."""
    registry = tmp_path / "registry"
    report, md = _run_with_report(tmp_path, make_inputs(tmp_path, blessed=True), registry)
    assert report.TYPE_NAME == "system.Markdown"
    assert report.get_string_custom_property("display_name") == "registry: deblur-icdpm"
    assert md.splitlines()[0] == "## Registered: deblur-icdpm version 1"
    assert f"- URI: `{registry / 'deblur-icdpm' / '1'}`" in md
    assert "- blessed: r" in md


def test_the_run_page_report_gives_the_reason_nothing_was_registered(tmp_path):
    report, md = _run_with_report(tmp_path, make_inputs(tmp_path, blessed=False),
                                  tmp_path / "registry")
    assert md.splitlines()[0] == "## Nothing registered"
    assert "model not blessed" in md


def test_the_manifest_records_the_choice_on_validation_and_the_baselines_as_plain_json(tmp_path):
    """evaluation.json's validation choice, classical baselines and paired comparisons go into
    the manifest; an interval over one image (NaN) is null there: a manifest is plain JSON (a
    one-image comparison failed the push with "Out of range float values are not JSON
    compliant")."""
    nan = float("nan")
    inputs = make_inputs(tmp_path, blessed=True)
    cmp = {"n": 1, "mean_diff": -0.01, "ci_low": nan, "ci_high": nan, "wins": 1, "losses": 0,
           "ties": 0}
    ev = {"best_setting": SETTING, "best": BEST, "grid": [], "chosen_on": "validation",
          "validation": {"splits": {"val": {}, "val_ood": {}}},
          "splits": {"test": {}, "test_ood": {}},
          "domains": {"out": {"input": {"psnr": 24.0, "lpips": 0.3}}},
          "classical": {"gaussian_s1": {"label": "Gaussian", "domains": {"out": {"psnr": 25.5}}}},
          "comparisons": {"baselines": {"gaussian_s1": {"out": {"psnr": cmp}}}}}
    (Path(inputs[C.EVALUATION_KEY][0].uri) / "evaluation.json").write_text(json.dumps(ev))
    # the gate's rules carry the same comparisons (beats_input's per-domain checks)
    blessing = Path(inputs[C.BLESSING_KEY][0].uri) / "blessing.json"
    b = json.loads(blessing.read_text())
    b["rules"] = RULES_OK + [{"rule": "beats_input", "verdict": "pass", "value": None,
                              "threshold": None, "detail": "",
                              "domains": {"out": {"psnr": {**cmp, "value": 25.1}}}}]
    blessing.write_text(json.dumps(b))
    _, record = run_executor(tmp_path, inputs, tmp_path / "registry")
    m = Registry(str(tmp_path / "registry"), "deblur-icdpm").show(record["version"])
    e = m["evaluation"]
    assert e["chosen_on"] == "validation" and e["validation_splits"] == ["val", "val_ood"]
    assert e["test_splits"] == ["test", "test_ood"]
    assert e["classical"]["gaussian_s1"]["domains"]["out"]["psnr"] == 25.5
    got = e["comparisons"]["baselines"]["gaussian_s1"]["out"]["psnr"]
    assert got["ci_low"] is None and got["ci_high"] is None and got["mean_diff"] == -0.01
    rule = m["blessing"]["rules"][-1]["domains"]["out"]["psnr"]
    assert rule["ci_low"] is None and rule["value"] == 25.1


# -------------------------------------------------------------------------------- gs://
gcs = bucket_fixture("pusher")


def _upload(emulator, folder: Path, prefix: str) -> str:
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        emulator.client.bucket("pusher").blob(
            f"{prefix}/{f.relative_to(folder).as_posix()}").upload_from_filename(str(f))
    return f"gs://pusher/{prefix}"


def test_the_pusher_reads_its_inputs_on_gs_through_the_registry_storage(gcs, tmp_path):
    """Blessing, evaluation and examples on gs:// (the Kubeflow layout), read over the
    registry's storage layer (registry.Storage, its one google-cloud-storage client): the same
    manifest as from local folders, and the same one-line errors naming the gs:// file."""
    inputs = make_inputs(tmp_path, blessed=True)
    local = {k: Path(inputs[k][0].uri) for k in (C.BLESSING_KEY, C.EVALUATION_KEY, C.EXAMPLES_KEY)}
    uris = {k: _upload(gcs, folder, f"run/{k}") for k, folder in local.items()}
    model_dir = str(Path(inputs[C.MODEL_KEY][0].uri) / "Format-Serving")
    result = pusher.register_model(
        registry_uri="gs://pusher/registry", model_name="m", model_dir=model_dir,
        blessing_uri=uris[C.BLESSING_KEY], evaluation_uri=uris[C.EVALUATION_KEY],
        examples_uri=uris[C.EXAMPLES_KEY])
    assert result.pushed and result.version == 1
    m = result.manifest
    assert m["sampling"] == SETTING and m["metrics"] == BEST
    assert m["blessing"]["rules"] == RULES_OK
    from_local = pusher.data_fingerprint(str(local[C.EXAMPLES_KEY]))
    assert m["data"] == {**from_local, "uri": uris[C.EXAMPLES_KEY]}  # same files, same hash
    assert m["data"]["files"] == 2 and m["data"]["summary"]["written"] == 4

    with pytest.raises(ValueError, match=f"^blessing file gs://pusher/nowhere/blessing.json "
                                         "does not exist$"):
        pusher.register_model(registry_uri="gs://pusher/registry", model_name="m",
                              model_dir=model_dir, blessing_uri="gs://pusher/nowhere")
    gcs.client.bucket("pusher").blob("run/bad/evaluation.json").upload_from_string("{not json")
    with pytest.raises(ValueError, match="^evaluation file gs://pusher/run/bad/evaluation.json "
                                         "is not valid JSON"):
        pusher.register_model(registry_uri="gs://pusher/registry", model_name="m",
                              model_dir=model_dir, blessing_uri=uris[C.BLESSING_KEY],
                              evaluation_uri="gs://pusher/run/bad")
