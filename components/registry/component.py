"""RegistryPusher: the TFX component over components.registry.pusher.register_model.

Inputs
  model           Model; the SavedModel is at <uri>/Format-Serving
  model_blessing  ModelBlessing; custom property `blessed` (1/0) and <uri>/blessing.json
  evaluation      ModelEvaluation (optional); <uri>/evaluation.json (metrics, best setting)
  examples        Examples (optional); fingerprinted for the manifest
Exec properties: registry_uri (local folder or gs://bucket/prefix), model_name.
Output: pushed_model (PushedModel) with custom properties
  pushed              1 or 0
  pushed_version      the registry version, as a string (TFX's Pusher convention)
  pushed_destination  the version's URI, <registry>/<model_name>/<version>
  reason              only when not pushed: "model not blessed: <failed rules>", or
                      "already registered as version N ..." (the same Model artifact, which a
                      cached Trainer hands a run on unchanged data)
  already_registered  that N
and <pushed_model.uri>/push.json holding the same plus the stored manifest.
Output: report (system.Markdown, components/run_page.py): the Kubeflow run page's account of
the push: the registered version, its URI, its sampling setting and warm-start parent, or the
reason nothing was registered.

A model that is not blessed is recorded as not pushed; the execution succeeds, so the run
shows the reason instead of a failure. The executor is a custom class (not a @component
function) because it reads the pipeline name and run id from its execution context
(BaseExecutor.Context.pipeline_info / pipeline_run_id, set by the portable launcher that
LocalDagRunner uses) and the ML Metadata ids of its input artifacts. KubeflowV2's container
entrypoint builds the context without pipeline_info / pipeline_run_id; the manifest then
records None there, and the artifacts' ids as the entrypoint parsed them (None when 0).
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.dsl.io import fileio
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter
from tfx.utils import path_utils

from components import run_page
from components.registry import pusher
from components.registry.registry import DEFAULT_MODEL_NAME, Registry
from core.artifacts import PUSH_RECORD_FILE

MODEL_KEY = "model"
BLESSING_KEY = "model_blessing"
EVALUATION_KEY = "evaluation"
EXAMPLES_KEY = "examples"
PUSHED_MODEL_KEY = "pushed_model"
REPORT_KEY = "report"


class RegistryPusherSpec(types.ComponentSpec):
    PARAMETERS = {
        "registry_uri": ExecutionParameter(type=str),
        "model_name": ExecutionParameter(type=str),
    }
    INPUTS = {
        MODEL_KEY: ChannelParameter(type=standard_artifacts.Model),
        BLESSING_KEY: ChannelParameter(type=standard_artifacts.ModelBlessing),
        EVALUATION_KEY: ChannelParameter(type=standard_artifacts.ModelEvaluation, optional=True),
        EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples, optional=True),
    }
    OUTPUTS = {PUSHED_MODEL_KEY: ChannelParameter(type=standard_artifacts.PushedModel),
               REPORT_KEY: ChannelParameter(type=run_page.Markdown)}


def report_markdown(result: "pusher.PushResult", model_name: str) -> str:
    """The run page's Markdown of a push result."""
    if result.pushed:
        m = result.manifest or {}
        lines = [f"## Registered: {model_name} version {result.version}", "",
                 f"- URI: `{result.destination}`"]
        sampling = m.get("serving_default") or m.get("sampling")
        if sampling:
            lines.append(f"- serving setting: `{(sampling or {}).get('key', sampling)}`")
        warm = m.get("warm_start")
        if isinstance(warm, dict) and warm.get("parent"):
            p = warm["parent"]
            lines.append(f"- trained from: {p.get('name')} (step {warm.get('start_step')}), "
                         f"to step {warm.get('target_step')}")
        elif warm is not None:
            lines.append("- trained from: random weights")
        reason = (m.get("blessing") or {}).get("reason")
        if reason:
            lines.append(f"- blessed: {reason}")
        return "\n".join(lines) + "\n"
    if result.already_registered is not None:
        return (f"## Nothing new registered: already {model_name} version "
                f"{result.already_registered}\n\n{result.reason}\n")
    return f"## Nothing registered\n\n{result.reason}\n"


def _single(input_dict: Dict[str, List[types.Artifact]], key: str) -> Optional[types.Artifact]:
    artifacts = input_dict.get(key) or []
    if not artifacts:
        return None
    return artifact_utils.get_single_instance(artifacts)


def _id(a: Optional[types.Artifact]) -> Optional[int]:
    return a.id if a is not None and a.id else None


class Executor(base_executor.BaseExecutor):
    """Pushes a blessed model into the registry; records a not-blessed one as not pushed."""

    def _pipeline(self) -> Dict[str, Any]:
        ctx = self._context
        info = getattr(ctx, "pipeline_info", None)
        node = getattr(ctx, "pipeline_node", None)
        return {"name": info.id if info is not None and info.id else None,
                "run_id": getattr(ctx, "pipeline_run_id", None) or None,
                "node_id": node.node_info.id if node is not None and node.node_info.id else None}

    def Do(self, input_dict, output_dict, exec_properties):
        self._log_startup(input_dict, output_dict, exec_properties)
        model = _single(input_dict, MODEL_KEY)
        blessing = _single(input_dict, BLESSING_KEY)
        evaluation = _single(input_dict, EVALUATION_KEY)
        examples = _single(input_dict, EXAMPLES_KEY)
        out = artifact_utils.get_single_instance(output_dict[PUSHED_MODEL_KEY])
        if model is None or blessing is None:
            raise ValueError("RegistryPusher needs one model and one model_blessing artifact")

        blessed_property = (blessing.get_int_custom_property("blessed")
                            if blessing.has_custom_property("blessed") else None)
        result = pusher.register_model(
            registry_uri=exec_properties["registry_uri"],
            model_name=exec_properties.get("model_name") or DEFAULT_MODEL_NAME,
            model_dir=path_utils.serving_model_path(model.uri),
            model_uri=model.uri,
            blessing_uri=blessing.uri,
            blessed_property=blessed_property,
            evaluation_uri=evaluation.uri if evaluation is not None else None,
            examples_uri=examples.uri if examples is not None else None,
            pipeline=self._pipeline(),
            mlmd_ids={"model": _id(model), "model_blessing": _id(blessing),
                      "evaluation": _id(evaluation), "examples": _id(examples)},
        )
        out.set_int_custom_property("pushed", int(result.pushed))
        if result.pushed:
            out.set_string_custom_property("pushed_version", str(result.version))
            out.set_string_custom_property("pushed_destination", result.destination)
        else:
            out.set_string_custom_property("reason", result.reason)
            if result.already_registered is not None:
                out.set_int_custom_property("already_registered", result.already_registered)
        fileio.makedirs(out.uri)
        with fileio.open(os.path.join(out.uri, PUSH_RECORD_FILE), "w") as f:
            f.write(json.dumps(result.to_json(), indent=2, sort_keys=True))
        report = output_dict.get(REPORT_KEY) or []
        if report:
            name = exec_properties.get("model_name") or DEFAULT_MODEL_NAME
            run_page.write_text(report[0], f"registry: {name}",
                                report_markdown(result, name))


class RegistryPusher(base_component.BaseComponent):
    """Registers blessed models in the versioned registry (TF Serving layout + manifest)."""

    SPEC_CLASS = RegistryPusherSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, model: types.BaseChannel, model_blessing: types.BaseChannel,
                 registry_uri: str, model_name: str = DEFAULT_MODEL_NAME,
                 evaluation: Optional[types.BaseChannel] = None,
                 examples: Optional[types.BaseChannel] = None):
        Registry(registry_uri, model_name)  # a bad name or URI fails at pipeline build time
        spec = RegistryPusherSpec(
            model=model, model_blessing=model_blessing, evaluation=evaluation,
            examples=examples, registry_uri=registry_uri, model_name=model_name,
            pushed_model=types.Channel(type=standard_artifacts.PushedModel),
            report=types.Channel(type=run_page.Markdown))
        super().__init__(spec=spec)
