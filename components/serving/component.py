"""ServabilityCheck: the TFX component over components.serving.check.check_servability.

Inputs
  pushed_model  PushedModel of the RegistryPusher (custom properties pushed, pushed_version)
  examples      Examples; one in-domain and one out-of-domain test image are sent
Exec properties: registry_uri, model_name, promote_to (an alias, "" for none), train_split.
Outputs
  result  deblur.Servability: <uri>/servability.json, custom properties passed (1/0),
          checked (1/0), alias_moved ("staging: 3 -> 4") or alias_note
  report  system.Markdown: the run page's account (what was sent, latencies, what moved)
A version that does not serve fails the execution after writing both outputs: the run shows a
failure, every alias stays where it was, and the reason is in the report and the log. Nothing
pushed (not blessed, or already registered) is recorded as not checked, and succeeds.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.dsl.io import fileio
from tfx.types import artifact, artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from components import run_page
from components.registry.registry import DEFAULT_MODEL_NAME, Registry
from components.serving import check

PUSHED_MODEL_KEY = "pushed_model"
EXAMPLES_KEY = "examples"
RESULT_KEY = "result"
REPORT_KEY = "report"


class Servability(artifact.Artifact):
    """servability.json: the requests sent to the pushed version, their answers, what moved."""

    TYPE_NAME = "deblur.Servability"


class ServabilityFailed(RuntimeError):
    pass


class ServabilityCheckSpec(types.ComponentSpec):
    PARAMETERS = {
        "registry_uri": ExecutionParameter(type=str),
        "model_name": ExecutionParameter(type=str),
        "promote_to": ExecutionParameter(type=str),
        "train_split": ExecutionParameter(type=str),
    }
    INPUTS = {
        PUSHED_MODEL_KEY: ChannelParameter(type=standard_artifacts.PushedModel),
        EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples),
    }
    OUTPUTS = {RESULT_KEY: ChannelParameter(type=Servability),
               REPORT_KEY: ChannelParameter(type=run_page.Markdown)}


def _single(input_dict: Dict[str, List[types.Artifact]], key: str) -> Optional[types.Artifact]:
    artifacts = input_dict.get(key) or []
    return artifact_utils.get_single_instance(artifacts) if artifacts else None


class Executor(base_executor.BaseExecutor):
    def _run(self) -> Dict[str, Any]:
        ctx = self._context
        info = getattr(ctx, "pipeline_info", None)
        return {"pipeline": info.id if info is not None and info.id else None,
                "run_id": getattr(ctx, "pipeline_run_id", None) or None}

    def Do(self, input_dict, output_dict, exec_properties):
        self._log_startup(input_dict, output_dict, exec_properties)
        pushed = _single(input_dict, PUSHED_MODEL_KEY)
        examples = _single(input_dict, EXAMPLES_KEY)
        if pushed is None or examples is None:
            raise ValueError("ServabilityCheck needs one pushed_model and one examples artifact")
        version = None
        if pushed.has_custom_property("pushed") and pushed.get_int_custom_property("pushed"):
            version = int(pushed.get_string_custom_property("pushed_version"))
        name = exec_properties.get("model_name") or DEFAULT_MODEL_NAME
        result = check.check_servability(
            exec_properties["registry_uri"], name, version, examples.uri,
            train_split=exec_properties.get("train_split") or "train",
            promote_to=exec_properties.get("promote_to") or None, run=self._run())
        out = artifact_utils.get_single_instance(output_dict[RESULT_KEY])
        out.set_int_custom_property("checked", int(result.checked))
        out.set_int_custom_property("passed", int(result.passed))
        if result.alias_moved:
            m = result.alias_moved
            out.set_string_custom_property("alias_moved", f"{m['alias']}: {m['from']} -> {m['to']}")
        if result.alias_note:
            out.set_string_custom_property("alias_note", result.alias_note)
        fileio.makedirs(out.uri)
        check.write(result, os.path.join(out.uri, check.SERVABILITY_FILE))
        report = output_dict.get(REPORT_KEY) or []
        if report:
            run_page.write_text(report[0], f"servability: {name}", check.markdown(result, name))
        if result.checked and not result.passed:
            raise ServabilityFailed(f"version {version} of {name!r} failed its servability "
                                    f"check; no alias moved: {result.reason}")


class ServabilityCheck(base_component.BaseComponent):
    """Serves the pushed version through `deblur serve`'s code, checks its answers against the
    evaluator's outputs, and only then moves `promote_to` (default staging)."""

    SPEC_CLASS = ServabilityCheckSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, pushed_model: types.BaseChannel, examples: types.BaseChannel,
                 registry_uri: str, model_name: str = DEFAULT_MODEL_NAME,
                 promote_to: str = "staging", train_split: str = "train"):
        Registry(registry_uri, model_name)  # a bad name or URI fails at pipeline build time
        if promote_to:
            from components.registry.aliases import check_alias

            check_alias(promote_to)
        spec = ServabilityCheckSpec(
            pushed_model=pushed_model, examples=examples, registry_uri=registry_uri,
            model_name=model_name, promote_to=promote_to or "", train_split=train_split,
            result=types.Channel(type=Servability), report=types.Channel(type=run_page.Markdown))
        super().__init__(spec=spec)
