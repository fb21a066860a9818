"""DeblurEvaluator: the TFX wrapper of components.evaluator.evaluate (what `deblur evaluate` runs).

Inputs: the ingested Examples, the Trainer's Model, and optionally the latest blessed model,
found by components/latest_blessed.py (the warm start's lookup too): with its blessing from
that module's Resolver (LatestBlessedModelStrategy; absent on the first run), or, where
Resolver nodes cannot run (open-source KFP), the newest whole version of the model registry
(baseline_registry_uri), which holds only blessed models. Outputs: a ModelEvaluation
(evaluation.json, per-split metrics, the perception-distortion plot, sample grids) and a
ModelBlessing (blessing.json with every rule; custom properties `blessed`, `current_model_id`,
... as TFX's own Evaluator writes them, so LatestBlessedModelStrategy finds blessed models).
For the Kubeflow run page
(components/run_page.py): `verdict` (system.Markdown: the decision and every rule), `report`
(system.HTML: verdict, per-domain metrics of the chosen setting and of the blurry input, the
perception-distortion plot and the sample grids, embedded), `metrics` and `input_metrics`
(system.Metrics: per-domain scalars of the chosen setting and of the blurry input).
"""
import dataclasses
import json
import logging
import os
from itertools import chain
from typing import Any, Iterable, Iterator, Optional, Tuple

from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.dsl.io import fileio
from tfx.types import standard_artifacts
from tfx.utils import path_utils

from components import artifact_io, latest_blessed, run_page
from components.evaluator import evaluate as ev
from components.evaluator import report as report_lib
from components.evaluator.gate import GateConfig
from trainer.setting import SamplingSetting

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Baseline:
    """A blessed model that loads: the gate's baseline."""
    model_dir: str
    setting: Optional[dict]  # its recorded sampling setting (None: its best over the grid)
    name: str  # "ML Metadata model 7", "registry version 3"
    loaded: Any  # ev.load_model(model_dir)


def _setting(setting) -> Optional[dict]:
    return SamplingSetting.from_dict(setting).to_dict() if setting else None


def registry_candidates(uri: str, model_name: str) -> Iterator[Tuple[str, Optional[dict], str]]:
    """(SavedModel dir, sampling setting, name) of the registry's versions, newest first (the
    registry holds only blessed models): latest_blessed.in_registry, the warm start's lookup
    too, which skips a version whose files do not match its manifest, or whose manifest is
    unreadable, with a warning naming it; so is one whose sampling setting does not parse."""
    for found in latest_blessed.in_registry(uri, model_name):
        try:
            setting = _setting(found.manifest.get("sampling"))
        except (ValueError, TypeError) as e:
            log.warning("DeblurEvaluator: skipping registry version %d as the baseline: %s",
                        found.version, _first_line(e))
            continue
        yield found.path, setting, f"registry version {found.version}"


def _first_line(e: BaseException) -> str:
    text = (getattr(e, "message", None) or str(e)).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


def choose_baseline(candidates: Iterable[Tuple[str, Optional[dict], str]]) -> Optional[Baseline]:
    """The first candidate (newest first) that loads in TensorFlow. A blessed model whose files
    are damaged (a truncated variables file: IndexError; a bit flip: DataLossError; a
    saved_model.pb that does not parse), even one whose registry manifest was rewritten to
    match, is skipped with a warning naming it, and the next older one is tried; None (no
    baseline: the gate's regression rule is skipped) when none loads."""
    skipped = []
    for model_dir, setting, name in candidates:
        try:
            loaded = ev.load_model(model_dir)
        except Exception as e:  # noqa: BLE001 (TensorFlow fails a damaged model in many ways)
            log.warning("DeblurEvaluator: skipping the blessed %s as the baseline: %s does not "
                        "load (%s: %s); trying the next older blessed version", name, model_dir,
                        type(e).__name__, _first_line(e))
            skipped.append(name)
            continue
        if skipped:
            log.warning("DeblurEvaluator: baseline %s (%s), the newest blessed model that loads",
                        name, model_dir)
        return Baseline(model_dir, setting, name, loaded)
    if skipped:
        log.warning("DeblurEvaluator: no blessed model loads (skipped %s): no baseline, the "
                    "gate's regression rule is skipped", ", ".join(skipped))
    return None


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
    baseline_fallback_registry_uri: Parameter[str] = "",
) -> None:
    """Samples the model over the grid on every evaluation split, scores it, blesses it or not."""
    config = ev.EvalConfig(**json.loads(eval_config))
    gate = GateConfig(**json.loads(gate_config))
    candidates = []
    if baseline_model is not None:  # the Resolver's latest blessed model (latest_blessed.py)
        prior = artifact_io.read_json(os.path.join(baseline_blessing.uri, ev.BLESSING_FILE)) \
            if baseline_blessing is not None else None
        candidates.append((path_utils.serving_model_path(baseline_model.uri),
                           _setting((prior or {}).get("best_setting")),
                           f"ML Metadata model {baseline_model.id}"))
    registry_uri = baseline_registry_uri if baseline_model is None else \
        baseline_fallback_registry_uri  # a damaged one: the registry's newest that loads
    registry = registry_candidates(registry_uri, baseline_model_name) if registry_uri else ()
    baseline = choose_baseline(chain(candidates, registry))
    resolved = baseline is not None and bool(candidates) and \
        baseline.model_dir == candidates[0][0]
    result = ev.evaluate(path_utils.serving_model_path(model.uri), examples.uri, evaluation.uri,
                         config, baseline_dir=baseline and baseline.model_dir,
                         baseline_setting=baseline and baseline.setting,
                         baseline_loaded=baseline and baseline.loaded,
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
    if resolved:
        blessing.set_string_custom_property("baseline_model", baseline_model.uri)
        blessing.set_int_custom_property("baseline_model_id", baseline_model.id)
    elif baseline is not None:
        blessing.set_string_custom_property("baseline_model", baseline.model_dir)
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
