"""pipelines/kubeflow/entrypoint.py and pipelines/run_params.py without running an executor (the
whole contract runs in tests/test_kfp_contract.py)."""
from __future__ import annotations

import json

import pytest

from pipelines import run_params
from pipelines.kubeflow import entrypoint as kfp_entrypoint
from pipelines.config import ConfigError

EXAMPLES_SCHEMA = "title: tfx.Examples\ntype: object\n"


def _executor_input(**parameter_values):
    return json.dumps({
        "inputs": {
            "parameterValues": parameter_values,
            "artifacts": {"examples": {"artifacts": [
                # what KFP's driver sends for an upstream artifact
                {"name": "7", "uri": "/root/examples", "type": {"instanceSchema": ""},
                 "metadata": {"split_names": "[\"train\"]", "span": 0.0}}]}}},
        "outputs": {"artifacts": {
            "metrics": {"artifacts": [{"uri": "/root/metrics", "type": {
                "instanceSchema": "title: system.Metrics\ntype: object\n"}}]},
            "verdict": {"artifacts": [{"uri": "/root/verdict", "type": {
                "instanceSchema": "title: system.Markdown\ntype: object\n"}}]}},
            "outputFile": "/root/executor_output.json"}})


INPUTS_SPEC = json.dumps({
    "artifacts": {"examples": {"artifactType": {"instanceSchema": EXAMPLES_SCHEMA}}},
    "parameters": {"gate_config": {"parameterType": "STRING"},
                   "gate_ood_lpips_max": {"parameterType": "NUMBER_DOUBLE"}}})


def test_rewrite_gives_inputs_their_type_maps_run_page_titles_and_folds_parameters():
    ei, spec = kfp_entrypoint.rewrite_executor_input(
        _executor_input(gate_config=json.dumps({"ood_lpips_max": 0.2, "domain": "out"}),
                        gate_ood_lpips_max=0.35), INPUTS_SPEC)
    ei, spec = json.loads(ei), json.loads(spec)
    examples = ei["inputs"]["artifacts"]["examples"]["artifacts"][0]
    assert examples["type"] == {"instanceSchema": EXAMPLES_SCHEMA}
    outputs = ei["outputs"]["artifacts"]
    assert outputs["metrics"]["artifacts"][0]["type"] == {
        "schemaTitle": "components.run_page.Metrics"}
    assert outputs["verdict"]["artifacts"][0]["type"] == {
        "schemaTitle": "components.run_page.Markdown"}
    params = ei["inputs"]["parameterValues"]
    assert set(params) == {"gate_config"}
    assert json.loads(params["gate_config"]) == {"ood_lpips_max": 0.35, "domain": "out"}
    assert set(spec["parameters"]) == {"gate_config"}


def test_tfx_rebuilds_the_artifacts_after_the_rewrite():
    """TFX's own parser (kubeflow_v2_entrypoint_utils) on the rewritten input: without the
    rewrite it fails on the empty schema KFP's driver sends."""
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2 as pb
    from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_entrypoint_utils as utils
    from tfx.types import standard_artifacts

    from components import run_page

    raw = json_format.Parse(_executor_input(), pb.ExecutorInput())
    with pytest.raises(AttributeError):
        utils.parse_raw_artifact_dict(raw.inputs.artifacts)
    ei = json_format.Parse(kfp_entrypoint.rewrite_executor_input(_executor_input(),
                                                                 INPUTS_SPEC)[0],
                           pb.ExecutorInput())
    examples, = utils.parse_raw_artifact_dict(ei.inputs.artifacts)["examples"]
    assert isinstance(examples, standard_artifacts.Examples)
    assert examples.split_names == "[\"train\"]" and examples.span == 0
    outputs = utils.parse_raw_artifact_dict(ei.outputs.artifacts)
    assert isinstance(outputs["metrics"][0], run_page.Metrics)
    assert isinstance(outputs["verdict"][0], run_page.Markdown)


def test_fold_whole_value_and_proto_json_key():
    values = {"sources": "[]", "data_sources": "[{\"root\": \"gs://b/x\"}]",
              "train_args": json.dumps({"num_steps": 1000000, "splits": ["train"]}),
              "train_steps": 3.0}
    assert run_params.fold(values) == ["data_sources", "train_steps"]
    assert values == {"sources": "[{\"root\": \"gs://b/x\"}]",
                      "train_args": json.dumps({"num_steps": 3, "splits": ["train"]},
                                               sort_keys=True)}


def test_fold_warm_start_into_the_trainers_custom_config():
    custom = {"experiment": "tiny", "warm_start": "latest_blessed",
              "warm_start_source": {"registry_uri": "gs://b/registry", "model_name": "m"}}
    values = {"custom_config": json.dumps(custom), "warm_start": "none"}
    assert run_params.fold(values) == ["warm_start"]
    assert json.loads(values["custom_config"]) == {**custom, "warm_start": "none"}
    assert run_params.as_overrides({"warm_start": "none"}) == ["training.warm_start=none"]


def test_params_locally_are_config_overrides():
    assert run_params.as_overrides({"train_steps": "7", "gate_ood_lpips_max": "0.3"}) == [
        "training.train.steps=7", "gate.ood_lpips_max=0.3"]
    with pytest.raises(ConfigError, match="no such run parameter"):
        run_params.parse(["steps=3"], list(run_params.BY_NAME))
    for p in run_params.PARAMS:  # TFX's RuntimeParameter under KubeflowV2DagRunner
        assert p.ptype in (int, float, str), p.name


def test_clean_executor_output_drops_tfx_version_of_metrics_only(tmp_path):
    out = tmp_path / "executor_output.json"
    ei = json.loads(_executor_input())
    ei["outputs"]["outputFile"] = str(out)
    out.write_text(json.dumps({"artifacts": {
        "metrics": {"artifacts": [{"metadata": {"tfx_version": "1.16.0", "x": 1.0}}]},
        "verdict": {"artifacts": [{"metadata": {"tfx_version": "1.16.0"}}]}}}))
    kfp_entrypoint.clean_executor_output(json.dumps(ei))
    arts = json.loads(out.read_text())["artifacts"]
    assert arts["metrics"]["artifacts"][0]["metadata"] == {"x": 1.0}
    assert arts["verdict"]["artifacts"][0]["metadata"] == {"tfx_version": "1.16.0"}



class _Store:
    """In-memory objects with the google-cloud-storage calls remove_gcs_folder_markers makes.
    (fake-gcs-server cannot hold them: it drops zero-byte "folder/" objects.)"""

    def __init__(self, objects):
        self.objects = dict(objects)

    def list_blobs(self, bucket, prefix=""):
        store = self

        class Blob:
            def __init__(self, name):
                self.name, self.size = name, len(store.objects[name])

            def delete(self):
                del store.objects[self.name]

        return [Blob(n) for n in sorted(self.objects) if n.startswith(prefix)]


def _download_like_the_launcher(objects, prefix: str, local_dir):
    """objectstore.DownloadBlob (KFP backend/src/v2/objectstore/object_store.go): every object
    under the prefix, in listing order, to <local_dir>/<relative path> as a file, parents made
    first (filepath.Rel drops a trailing slash, so a marker becomes a file)."""
    import os

    for name in sorted(objects):
        if name.startswith(prefix):
            path = os.path.join(local_dir, os.path.relpath(name, prefix))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(objects[name])


def test_gcs_folder_markers_are_removed_so_the_launcher_can_copy_the_input(tmp_path):
    root = "root/Trainer/model"
    # what TensorFlow's GCS file system leaves for a SavedModel export: "folder/" markers
    store = _Store({f"{root}/Format-Serving/": b"", f"{root}/Format-Serving/variables/": b"",
                    f"{root}/Format-Serving/saved_model.pb": b"pb",
                    f"{root}/Format-Serving/variables/variables.index": b"ix"})
    with pytest.raises((NotADirectoryError, FileExistsError)):  # Go: "not a directory"
        _download_like_the_launcher(store.objects, root, tmp_path / "before")
    removed = kfp_entrypoint.remove_gcs_folder_markers([f"gs://bucket/{root}"], client=store)
    assert removed == [f"gs://bucket/{root}/Format-Serving/",
                       f"gs://bucket/{root}/Format-Serving/variables/"]
    _download_like_the_launcher(store.objects, root, tmp_path / "after")
    assert (tmp_path / "after/Format-Serving/variables/variables.index").read_bytes() == b"ix"
    assert kfp_entrypoint.remove_gcs_folder_markers(["/local/path"]) == []


def test_the_cache_salt_never_reaches_the_executor():
    """Rule 7: cache_salt is in the ExecutorInput for KFP's cache key only."""
    spec = json.dumps({"parameters": {"schema_file": {"parameterType": "STRING"},
                                      run_params.CACHE_SALT: {"parameterType": "STRING"}}})
    ei, out_spec = kfp_entrypoint.rewrite_executor_input(
        _executor_input(schema_file="/s.pbtxt", **{run_params.CACHE_SALT: "ab12"}), spec)
    assert json.loads(ei)["inputs"]["parameterValues"] == {"schema_file": "/s.pbtxt"}
    assert set(json.loads(out_spec)["parameters"]) == {"schema_file"}


def test_the_final_status_struct_reaches_tfx_as_json_text():
    """Rule 8: KFP's PipelineTaskFinalStatus (a struct) becomes a string exec property."""
    status = {"state": "FAILED", "error": {}, "pipelineTaskName": "tfx-dag",
              "pipelineJobResourceName": "run-1"}
    spec = json.dumps({"parameters": {"final_status": {"parameterType": "TASK_FINAL_STATUS"},
                                      "tasks": {"parameterType": "STRING"}}})
    ei, out_spec = kfp_entrypoint.rewrite_executor_input(
        _executor_input(final_status=status, tasks="{}"), spec)
    assert json.loads(json.loads(ei)["inputs"]["parameterValues"]["final_status"]) == status
    assert json.loads(out_spec)["parameters"]["final_status"] == {"parameterType": "STRING"}


def test_a_failed_executor_leaves_its_error_in_its_task_folder(tmp_path):
    """Rule 9: <run folder>/<task>/task_error.json, for either KFP output layout."""
    for layout in ("Trainer/model", "Trainer/0f4c6a1e-2b3d-4e5f-8a9b-0c1d2e3f4a5b/model"):
        run = tmp_path / layout.count("/").__str__()
        ei = json.dumps({"outputs": {"artifacts": {"model": {"artifacts": [
            {"uri": f"{run}/{layout}"}]}}}})
        path = kfp_entrypoint.write_task_error(ei, ValueError("no split 'train'\nmore"))
        assert path == f"{run}/Trainer/task_error.json"
        assert json.load(open(path)) == {"error": "ValueError: no split 'train'"}
    assert kfp_entrypoint.write_task_error(json.dumps({"outputs": {}}), ValueError("x")) == ""
