"""TrainingReport: the Trainer's outcome on the Kubeflow run page.

TFX's Trainer (and its Vertex AI variant) has a fixed output spec, Model and ModelRun, which
the KFP frontend does not draw. This component reads the ModelRun the Trainer wrote
(history.json, warm_start.json, resumed.json) and outputs:

  curves   system.HTML     the loss curves (noise loss L1, guidance MSE per scale) and the
                           learning rate over the steps, as one PNG embedded as a data: URI,
                           with the warm start and the final values above it
  metrics  system.Metrics  final noise loss, final guidance losses, steps trained in this run,
                           final step, warm-start parent step (0: random weights), learning rate
                           at the end; display_name names the parent ("warm start from registry
                           version 3" / "from random weights")

It runs after the Trainer (on CPU, a second) and is cached with it: a cached Trainer's report
is the earlier run's. Locally it is not in the pipeline: `deblur run-local` prints the same from
ML Metadata (pipelines/summary.py).
"""
from __future__ import annotations

import base64
import html
import io
import math
import posixpath
from typing import Any, Dict, List, Optional, Tuple

from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter

from components import run_page
from components.artifact_io import read_json
from core.artifacts import HISTORY_FILE, RESUMED_FILE, WARM_START_FILE

MODEL_RUN_KEY = "model_run"
CURVES_KEY = "curves"
METRICS_KEY = "metrics"


def read_model_run(uri: str) -> Tuple[List[Dict[str, Any]], Optional[dict], Optional[list]]:
    return (read_json(posixpath.join(uri, HISTORY_FILE)) or [],
            read_json(posixpath.join(uri, WARM_START_FILE)),
            read_json(posixpath.join(uri, RESUMED_FILE)))


def _losses(row: Dict[str, Any]) -> List[str]:
    return [k for k in row if k == "loss_dpm" or k.startswith("loss_guidance_x")]


def start_text(warm: Optional[dict], resumed: Optional[list]) -> str:
    parent = (warm or {}).get("parent")
    if parent:
        text = (f"warm start from {parent.get('name')} (its step {warm.get('start_step')}), "
                f"{warm.get('steps')} more steps to step {warm.get('target_step')}")
    elif warm is not None:
        text = "from random weights" + (f" ({warm['reason']})" if warm.get("reason") else "")
    else:
        text = "from random weights (no warm-start record)"
    if resumed:
        text += (f"; resumed at step {resumed[-1].get('step')} from the checkpoint of an "
                 f"interrupted run")
    return text


def scalars(history: List[Dict[str, Any]], warm: Optional[dict]) -> Dict[str, float]:
    if not history:
        return {}
    last = history[-1]
    start = int((warm or {}).get("start_step") or 0)
    out = {"final step": float(last["step"]), "steps this run": float(last["step"] - start),
           "warm-start parent step": float(start)}
    for k in _losses(last):
        out[f"final {k}"] = float(last[k])
    if "lr" in last:
        out["final learning rate"] = float(last["lr"])
    if "skipped" in last:
        out["skipped steps"] = float(last["skipped"])
    return {k: v for k, v in out.items() if math.isfinite(v)}


def plot_png(history: List[Dict[str, Any]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    steps = [h["step"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for k in _losses(history[-1]):
        ax1.plot(steps, [h.get(k, float("nan")) for h in history], label=k)
    ax1.set_xlabel("step")
    ax1.set_ylabel("loss")
    if all(h.get(k, 1) > 0 for h in history for k in _losses(history[-1])):
        ax1.set_yscale("log")
    ax1.legend(fontsize=8)
    ax1.set_title("training losses")
    ax2.plot(steps, [h.get("lr", float("nan")) for h in history], color="tab:green")
    ax2.set_xlabel("step")
    ax2.set_ylabel("learning rate")
    ax2.set_title("learning rate")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def report_html(history: List[Dict[str, Any]], warm: Optional[dict],
                resumed: Optional[list]) -> str:
    head = f"<h2>Training</h2><p>{html.escape(start_text(warm, resumed))}</p>"
    if not history:
        return head + f"<p>No {HISTORY_FILE} in the ModelRun: the training logged no step.</p>"
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.6g}</td></tr>"
                   for k, v in scalars(history, warm).items())
    png = base64.b64encode(plot_png(history)).decode("ascii")
    return (f"<html><body>{head}<table border='1' cellpadding='4'>{rows}</table>"
            f"<p><img alt='loss and learning-rate curves' src='data:image/png;base64,{png}'/>"
            f"</p></body></html>")


class TrainingReportSpec(types.ComponentSpec):
    PARAMETERS = {}
    INPUTS = {MODEL_RUN_KEY: ChannelParameter(type=standard_artifacts.ModelRun)}
    OUTPUTS = {CURVES_KEY: ChannelParameter(type=run_page.HTML),
               METRICS_KEY: ChannelParameter(type=run_page.Metrics)}


class Executor(base_executor.BaseExecutor):
    def Do(self, input_dict, output_dict, exec_properties):
        model_run = artifact_utils.get_single_instance(input_dict[MODEL_RUN_KEY])
        history, warm, resumed = read_model_run(model_run.uri)
        curves = artifact_utils.get_single_instance(output_dict[CURVES_KEY])
        run_page.write_text(curves, "training curves", report_html(history, warm, resumed))
        metrics = artifact_utils.get_single_instance(output_dict[METRICS_KEY])
        run_page.set_scalars(metrics, f"training: {start_text(warm, resumed)}"[:200],
                             scalars(history, warm))


class TrainingReport(base_component.BaseComponent):
    SPEC_CLASS = TrainingReportSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, model_run: types.BaseChannel):
        super().__init__(spec=TrainingReportSpec(
            model_run=model_run, curves=types.Channel(type=run_page.HTML),
            metrics=types.Channel(type=run_page.Metrics)))
