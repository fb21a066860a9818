"""The container command of every compiled task: TFX's KFP v2 entrypoint, with what it needs to
run under the open-source KFP v2 driver/launcher contract.

    python -m pipelines.kubeflow.entrypoint --executor_class_path C \
        --json_serialized_invocation_args '{{$}}' --json_serialized_inputs_spec_args '{...}' \
        [beam args]

It takes the arguments of tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor
(TFX 1.16), rewrites the ExecutorInput, hands it to that module's main(), and touches up the
ExecutorOutput it wrote. TFX itself is not modified (no file in site-packages changes):

1. Input artifact types. KFP's driver resolves an upstream artifact from ML Metadata and sends
   it with `type: {instanceSchema: ""}`: backend/src/v2/metadata/client.go
   (GetOutputArtifactsByExecutionId, `Schema: "" // TODO(Bobgy): figure out how to get
   schema`), from tag 2.0.5 to master. TFX rebuilds an artifact's class from that schema's
   title (kubeflow_v2_entrypoint_utils._retrieve_class_path): yaml.safe_load("") is None and
   the task dies with AttributeError before its executor starts. Every task with an input
   artifact hits it. The type of each input is in the component's inputs spec, which TFX's
   compiler passes as --json_serialized_inputs_spec_args: an input whose type is empty gets
   the spec's. (Third-party projects patch TFX in their images for the same defect, e.g.
   sky-uk/kfp-operator.)
2. The project's own artifact types. TFX's compiler gives a type that is not one of its
   first-party ones the schema title TYPE_NAME (deblur.DomainDrift; components/run_page.py's
   system.Metrics / system.Markdown / system.HTML), and TFX's entrypoint imports that title as
   a class path at run time: ImportError "Could not import deblur.DomainDrift" (found by
   tests/test_kfp_contract.py). The executor's module is imported first, so every artifact
   class its component uses is defined, and each such title is mapped to its class for TFX;
   KFP records the types from its own copy of the ExecutorInput, under the titles.
3. Run parameters (pipelines/run_params.py): each parameter's value is folded into the exec
   property it stands for, so executors see their usual config.
4. TFX tags every output with a `tfx_version` custom property; on a system.Metrics artifact the
   run page would list it as a metric, so it is dropped there from the ExecutorOutput.
5. Folder markers on gs://. TensorFlow's GCS file system writes a zero-byte object "<dir>/"
   for each folder it makes (a SavedModel's Format-Serving/, variables/, ...). KFP's launcher
   copies an input artifact to /gcs/... object by object (objectstore.DownloadBlob): the
   marker becomes a FILE named like the folder, and the next object under it fails with "not a
   directory", so the task that reads a Trainer's Model would die before its command starts
   (reported by sky-uk/kfp-operator, read in backend/src/v2/objectstore/object_store.go). After
   the executor, zero-byte "/"-ended objects under each gs:// output are deleted.
6. An output URI on a local path (KFP's own launcher takes only object stores; the contract
   test runs with a local pipeline root): its folder is made before the executor runs, as
   LocalDagRunner does, since on GCS an executor writes <uri>/file with no folder to make.
   Nothing is made on gs:// (TensorFlow would write zero-byte "folder/" marker objects).
7. The cache salt (run_params.CACHE_SALT): an input parameter the compiler gives every cached
   task whose cache key would not otherwise change with the `cache` run parameter
   (pipelines/kubeflow/compiler.py add_cache_salt). It is there for KFP's cache key only and
   is removed, from the parameters and the inputs spec, before TFX sees the exec properties.
8. KFP's PipelineTaskFinalStatus (the exit task's `final_status`, backend >= 2.14) arrives as a
   struct; TFX takes a string exec property (and would pass the Struct proto on), so a struct
   value not declared STRUCT is handed over as JSON text.
9. A failed executor's one-line error is written to <run folder>/<task>/task_error.json
   (core/artifacts.py), beside its outputs, before the exception goes on and fails the task:
   the exit task RunEnd names it in the failure summary. A task with no output artifact
   (ValidationGate) has no folder to write it to.

The executor output file (ExecutorInput.outputs.outputFile) is what KFP's launcher reads: the
output artifacts' metadata, which the driver hands to the next task as its inputs' metadata.
tests/test_kfp_contract.py runs every compiled task through this command the way the driver and
launcher do.
"""
from __future__ import annotations

import json
import sys
from typing import Dict, List, Tuple

from components import run_page
from pipelines import run_params

_ARG_INVOCATION = "--json_serialized_invocation_args"
_ARG_INPUTS_SPEC = "--json_serialized_inputs_spec_args"


def _title(type_schema) -> str:
    import yaml

    kind = type_schema.WhichOneof("kind")
    if kind == "schema_title":
        return type_schema.schema_title
    if kind == "instance_schema":
        return (yaml.safe_load(type_schema.instance_schema) or {}).get("title", "")
    return ""


def custom_artifact_classes(executor_class_path: str = "") -> Dict[str, str]:
    """{schema title: class import path} of every loaded artifact class that is not one of TFX's
    first-party types, after importing the executor's module (which defines or imports the
    classes its component uses)."""
    import importlib

    from tfx.orchestration.kubeflow.v2 import compiler_utils
    from tfx.types import artifact

    if executor_class_path:
        importlib.import_module(executor_class_path.rsplit(".", 1)[0])
    out, stack = {}, [artifact.Artifact]
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        title = getattr(cls, "TYPE_NAME", None)
        if (isinstance(title, str) and compiler_utils._SCHEMA_TITLE_RE.fullmatch(title)
                and title not in compiler_utils.TITLE_TO_CLASS_PATH):
            out.setdefault(title, f"{cls.__module__}.{cls.__qualname__}")
    return out


def rewrite_executor_input(executor_input_json: str, inputs_spec_json: str,
                           executor_class_path: str = "") -> Tuple[str, str]:
    """(ExecutorInput JSON, inputs spec JSON) as TFX's entrypoint can run them (1-3 above)."""
    from google.protobuf import json_format, struct_pb2
    from kfp.pipeline_spec import pipeline_spec_pb2 as pb

    ei = json_format.Parse(executor_input_json, pb.ExecutorInput(), ignore_unknown_fields=True)
    spec = pb.ComponentInputsSpec()
    if inputs_spec_json:
        json_format.Parse(inputs_spec_json, spec, ignore_unknown_fields=True)
    for name, artifacts in ei.inputs.artifacts.items():
        for a in artifacts.artifacts:
            if not _title(a.type) and name in spec.artifacts:
                a.type.CopyFrom(spec.artifacts[name].artifact_type)
    classes = custom_artifact_classes(executor_class_path)
    for group in (ei.inputs.artifacts, ei.outputs.artifacts):
        for artifacts in group.values():
            for a in artifacts.artifacts:
                path = classes.get(_title(a.type))
                if path:
                    a.type.schema_title = path
    values = {k: json_format.MessageToDict(v) for k, v in ei.inputs.parameter_values.items()}
    for name in run_params.fold(values):
        spec.parameters.pop(name, None)
    values.pop(run_params.CACHE_SALT, None)  # 7
    spec.parameters.pop(run_params.CACHE_SALT, None)
    for name, v in list(values.items()):  # 8 (the compiled inputs spec may not list it)
        ptype = spec.parameters[name].parameter_type if name in spec.parameters else None
        if isinstance(v, dict) and ptype not in (pb.ParameterType.STRUCT,):
            values[name] = json.dumps(v, sort_keys=True)
            if ptype is not None:
                spec.parameters[name].parameter_type = pb.ParameterType.STRING
    ei.inputs.ClearField("parameter_values")
    for k, v in values.items():
        ei.inputs.parameter_values[k].CopyFrom(json_format.ParseDict(v, struct_pb2.Value()))
    return (json_format.MessageToJson(ei),
            json_format.MessageToJson(spec) if inputs_spec_json else "")


def remove_gcs_folder_markers(uris: List[str], client=None) -> List[str]:
    """Deletes the zero-byte "folder/" objects under each gs:// URI (5 above); returns their
    gs:// names. `client`: a google.cloud.storage.Client (default: from the environment)."""
    gcs = [u for u in uris if u.startswith("gs://")]
    if not gcs:
        return []
    if client is None:
        from google.cloud import storage

        client = storage.Client()
    removed = []
    for uri in gcs:
        bucket, _, prefix = uri[len("gs://"):].partition("/")
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        for blob in client.list_blobs(bucket, prefix=prefix):
            if blob.name.endswith("/") and not blob.size:
                blob.delete()
                removed.append(f"gs://{bucket}/{blob.name}")
    return removed


def output_uris(executor_input_json: str) -> List[str]:
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2 as pb

    ei = json_format.Parse(executor_input_json, pb.ExecutorInput(), ignore_unknown_fields=True)
    return [a.uri for lst in ei.outputs.artifacts.values() for a in lst.artifacts]


def make_local_output_dirs(executor_input_json: str) -> None:
    """The folders of output artifacts whose URI is a local path (6 above)."""
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2 as pb
    from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_entrypoint_utils as utils
    from tfx.orchestration.portable import outputs_utils

    ei = json_format.Parse(executor_input_json, pb.ExecutorInput(), ignore_unknown_fields=True)
    outputs = utils.parse_raw_artifact_dict(ei.outputs.artifacts)
    local = {k: [a for a in v if "://" not in a.uri] for k, v in outputs.items()}
    outputs_utils.make_output_dirs({k: v for k, v in local.items() if v})


def clean_executor_output(executor_input_json: str) -> None:
    """Drops tfx_version from the system.Metrics outputs of the ExecutorOutput file (4 above)."""
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2 as pb
    from tfx.dsl.io import fileio

    ei = json_format.Parse(executor_input_json, pb.ExecutorInput(), ignore_unknown_fields=True)
    metrics = {k for k, v in ei.outputs.artifacts.items()
               if v.artifacts and _title(v.artifacts[0].type) == run_page.Metrics.TYPE_NAME}
    path = ei.outputs.output_file
    if not metrics or not path or not fileio.exists(path):
        return
    with fileio.open(path, "r") as f:
        out = json.load(f)
    for k in metrics:
        for a in out.get("artifacts", {}).get(k, {}).get("artifacts", []):
            a.get("metadata", {}).pop("tfx_version", None)
    with fileio.open(path, "w") as f:
        json.dump(out, f)


def write_task_error(executor_input_json: str, error: BaseException) -> str:
    """<run folder>/<task>/task_error.json with the error's first line (9 above); returns its
    path, "" when the task has no output artifact to find its folder by."""
    from tfx.dsl.io import fileio

    from core import artifacts

    ei = json.loads(executor_input_json)
    outputs = ((ei.get("outputs") or {}).get("artifacts") or {})
    for key, lst in sorted(outputs.items()):
        for a in lst.get("artifacts", []):
            if a.get("uri"):
                folder = artifacts.kfp_task_folder(a["uri"], key)
                first = (str(error).strip().splitlines() or [""])[0][:500]
                path = artifacts.join(folder, artifacts.TASK_ERROR_FILE)
                fileio.makedirs(folder)
                with fileio.open(path, "w") as f:
                    json.dump({"error": f"{type(error).__name__}: {first}"}, f)
                return path
    return ""


def _replace(argv: List[str], flag: str, value: str) -> List[str]:
    out = list(argv)
    for i, a in enumerate(out):
        if a == flag and i + 1 < len(out):
            out[i + 1] = value
        elif a.startswith(flag + "="):
            out[i] = f"{flag}={value}"
    return out


def _value(argv: List[str], flag: str) -> str:
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return ""


def main(argv: List[str]) -> None:
    from absl import app
    from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_run_executor as tfx_entry

    original = _value(argv, _ARG_INVOCATION)
    inputs_spec = _value(argv, _ARG_INPUTS_SPEC)
    if not original:
        raise SystemExit(f"{_ARG_INVOCATION} is required")
    executor_input, inputs_spec = rewrite_executor_input(
        original, inputs_spec, _value(argv, "--executor_class_path"))
    argv = _replace(argv, _ARG_INVOCATION, executor_input)
    if inputs_spec:
        argv = _replace(argv, _ARG_INPUTS_SPEC, inputs_spec)

    def run(parsed):
        make_local_output_dirs(executor_input)
        try:
            tfx_entry.main(parsed)
        except Exception as e:  # noqa: BLE001 - recorded for RunEnd, then raised again
            try:
                write_task_error(original, e)
            except Exception:  # noqa: BLE001 - the task's own error is the one to show
                pass
            raise
        clean_executor_output(original)
        remove_gcs_folder_markers(output_uris(original))

    app.run(run, argv=[sys.argv[0], *argv], flags_parser=tfx_entry._parse_flags)


if __name__ == "__main__":
    main(sys.argv[1:])
