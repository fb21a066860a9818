"""DeblurEvaluator: the TFX wrapper of components.evaluator.evaluate (what `deblur evaluate` runs).

Inputs: the ingested Examples, the Trainer's Model, and optionally the latest blessed model
with its blessing (from a Resolver with LatestBlessedModelStrategy in the pipeline; absent on
the first run), or, where Resolver nodes cannot run (open-source KFP), the newest version of
the model registry (baseline_registry_uri), which holds only blessed models. Outputs: a ModelEvaluation (evaluation.json, per-split metrics, the
perception-distortion plot, sample grids) and a ModelBlessing (blessing.json with every rule;
custom properties `blessed`, `current_model_id`, ... as TFX's own Evaluator writes them, so
LatestBlessedModelStrategy finds blessed models). For the Kubeflow run page
(components/run_page.py): `verdict` (system.Markdown: the decision and every rule), `report`
(system.HTML: verdict, per-domain metrics of the chosen setting and of the blurry input, the
perception-distortion plot and the sample grids, embedded), `metrics` and `input_metrics`
(system.Metrics: per-domain scalars of the chosen setting and of the blurry input).
"""
import json
import os

from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.dsl.io import fileio
from tfx.types import standard_artifacts
from tfx.utils import path_utils

from components import run_page
from components.evaluator import evaluate as ev
from components.evaluator import report as report_lib
from components.evaluator.gate import GateConfig
from core import artifacts
from trainer.setting import SamplingSetting


def _read_json(path):
    return artifacts.read_json(path, artifacts.text_reader(fileio))


def _registry_baseline(uri: str, model_name: str):
    """(SavedModel dir, sampling setting) of the newest registered version, or (None, None)."""
    from components.registry.registry import Registry

    registry = Registry(uri, model_name)
    latest = registry.latest()
    if latest is None:
        return None, None
    version, manifest = latest
    setting = manifest.get("sampling") or None
    if setting:
        setting = SamplingSetting.from_dict(setting).to_dict()
    return registry.local_path(version), setting


@component
def DeblurEvaluator(
    examples: InputArtifact[standard_artifacts.Examples],
    model: InputArtifact[standard_artifacts.Model],
    evaluation: OutputArtifact[standard_artifacts.ModelEvaluation],
    blessing: OutputArtifact[standard_artifacts.ModelBlessing],
    verdict: OutputArtifact[run_page.Markdown],
    report: OutputArtifact[run_page.HTML],
    metrics: OutputArtifact[run_page.Metrics],
    input_metrics: OutputArtifact[run_page.Metrics],
    baseline_model: InputArtifact[standard_artifacts.Model] = None,
    baseline_blessing: InputArtifact[standard_artifacts.ModelBlessing] = None,
    eval_config: Parameter[str] = "{}",
    gate_config: Parameter[str] = "{}",
    baseline_registry_uri: Parameter[str] = "",
    baseline_model_name: Parameter[str] = "",
) -> None:
    """Samples the model over the grid on every evaluation split, scores it, blesses it or not."""
    config = ev.EvalConfig(**json.loads(eval_config))
    gate = GateConfig(**json.loads(gate_config))
    baseline_dir = baseline_setting = None
    if baseline_model is None and baseline_registry_uri:
        baseline_dir, baseline_setting = _registry_baseline(baseline_registry_uri,
                                                            baseline_model_name)
    if baseline_model is not None:
        baseline_dir = path_utils.serving_model_path(baseline_model.uri)
        prior = _read_json(os.path.join(baseline_blessing.uri, ev.BLESSING_FILE)) \
            if baseline_blessing is not None else None
        baseline_setting = (prior or {}).get("best_setting")
        if baseline_setting:
            baseline_setting = SamplingSetting.from_dict(baseline_setting).to_dict()
    result = ev.evaluate(path_utils.serving_model_path(model.uri), examples.uri, evaluation.uri,
                         config, baseline_dir=baseline_dir, baseline_setting=baseline_setting,
                         gate=gate, progress=False)
    decision = result["blessing"]
    blessed = bool(decision["blessed"])
    with fileio.open(os.path.join(blessing.uri, ev.BLESSING_FILE), "w") as f:
        json.dump(decision, f, indent=2, sort_keys=True)
    with fileio.open(os.path.join(blessing.uri, "BLESSED" if blessed else "NOT_BLESSED"), "w") as f:
        f.write(decision["reason"] + "\n")
    blessing.set_int_custom_property("blessed", int(blessed))
    blessing.set_string_custom_property("reason", decision["reason"])
    blessing.set_string_custom_property("current_model", model.uri)
    blessing.set_int_custom_property("current_model_id", model.id)
    if baseline_model is not None:
        blessing.set_string_custom_property("baseline_model", baseline_model.uri)
        blessing.set_int_custom_property("baseline_model_id", baseline_model.id)
    if result["best_setting"]:
        evaluation.set_json_value_custom_property("best_setting", result["best_setting"])
    evaluation.set_json_value_custom_property("best", result["best"])
    # the run page
    run_page.write_text(verdict, "gate verdict", report_lib.verdict_markdown(decision))
    run_page.write_text(report, "evaluation report",
                        report_lib.report_html(result, evaluation.uri))
    setting = (result["best_setting"] or {}).get("key", "no finite setting")
    run_page.set_scalars(metrics, f"chosen setting {setting}",
                         report_lib.domain_scalars(result["best"]))
    run_page.set_scalars(input_metrics, "blurry input (the do-nothing reference)",
                         report_lib.domain_scalars(
                             {d: i["input"] for d, i in result["domains"].items()}))
