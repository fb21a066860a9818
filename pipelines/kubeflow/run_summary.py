"""RunSummary: the last task of the compiled Kubeflow pipeline, never cached. It writes the run's
summary as a system.Markdown artifact on the run page: the same content as the summary
`deblur run-local` prints (pipelines/summary.py format_summary: ingest counts, validation,
drift, training, evaluation, blessing, registry, and "what this run did": the data units new,
changed or unchanged, the tasks cached and run, the warm-start parent, the registered version),
above a table of the tasks.

Which tasks were cached, without asking KFP's API: a task that KFP served from its cache hands
the next tasks the output artifacts of the earlier run that computed them, whose URIs are under
that run's folder (<pipeline root>/<pipeline>/<run id>/<task>/<output>, backend/src/v2/driver
provisionOutputs). This task's own output is under this run's folder, so an input artifact
whose URI is not under it came from the cache, and one under it was computed by this run.
DeblurRunCheck and DeblurInputFingerprint are never cached; ValidationGate has no output to
tell by and is listed as such. Locally the pipeline has no RunSummary (`deblur run-local`
prints the summary from ML Metadata, whose executions say CACHED or COMPLETE).

The same Markdown is also written to <run folder>/summary.md (core/artifacts.py
kfp_run_summary_path), where `deblur` can read it without KFP's API. If a task fails, the run
stops there and this task does not run (KFP v2 runs a task only when every task it depends on
succeeded): the exit task RunEnd (pipelines/kubeflow/run_end.py) then writes a failure
summary to the run page and to that same path.
"""
from __future__ import annotations

import posixpath
from typing import Any, Dict, Optional

from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.dsl.io import fileio
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter

from components import run_page
from components.artifact_io import read_json
from components.evaluator.evaluate import EVALUATION_SUMMARY_KEYS
from components.validation_component import DomainDrift
from core import artifacts
from core.artifacts import (BLESSING_FILE, EVALUATION_FILE, HISTORY_FILE, PUSH_RECORD_FILE,
                            RESUMED_FILE, SUMMARY_FILE, WARM_START_FILE)

SUMMARY_KEY = "summary"
# input key -> (the task that produces it, artifact type)
INPUTS = {
    "examples": ("DeblurIngest", standard_artifacts.Examples),
    "statistics": ("StatisticsGen", standard_artifacts.ExampleStatistics),
    "schema": ("ImportSchemaGen", standard_artifacts.Schema),
    "anomalies": ("ExampleValidator", standard_artifacts.ExampleAnomalies),
    "drift": ("DomainDriftReport", DomainDrift),
    "model": ("Trainer", standard_artifacts.Model),
    "model_run": ("Trainer", standard_artifacts.ModelRun),
    "evaluation": ("DeblurEvaluator", standard_artifacts.ModelEvaluation),
    "blessing": ("DeblurEvaluator", standard_artifacts.ModelBlessing),
    "pushed_model": ("RegistryPusher", standard_artifacts.PushedModel),
}
ALWAYS_RUN = ("DeblurRunCheck", "DeblurInputFingerprint")
NOT_TOLD = ("ValidationGate",)


def run_folder(own_output_uri: str) -> str:
    """<root>/<pipeline>/<run id> from this task's output URI <...>/<task>/[<uuid>/]<output>
    (the uuid: KFP backend >= 2.4, core/artifacts.py kfp_task_folder)."""
    return artifacts.kfp_run_folder(own_output_uri, SUMMARY_KEY)


def task_states(run_dir: str, uris: Dict[str, str]) -> Dict[str, str]:
    """{task: COMPLETE (computed by this run) | CACHED (an earlier run's outputs)}."""
    prefix = run_dir.rstrip("/") + "/"
    states: Dict[str, str] = {t: "COMPLETE" for t in ALWAYS_RUN}
    for key, uri in uris.items():
        task = INPUTS[key][0]
        state = "COMPLETE" if uri.startswith(prefix) else "CACHED"
        if states.get(task, state) != state:  # one output here, one from the cache: no such run
            state = "MIXED"
        states[task] = state
    return states


def build(arts: Dict[str, Any], run_dir: str) -> Dict[str, Any]:
    """The dict of pipelines/summary.py build_summary, read from the input artifacts."""
    from components import validation
    from pipelines import summary as summary_lib

    uris = {k: a.uri for k, a in arts.items()}
    s: Dict[str, Any] = {"pipeline_run": posixpath.basename(run_dir),
                         "executions": task_states(run_dir, uris)}
    if "examples" in arts:
        s["examples_uri"] = arts["examples"].uri
        ingest = read_json(posixpath.join(arts["examples"].uri, SUMMARY_FILE))
        if ingest:
            s["ingest"] = ingest
    if "anomalies" in arts:
        try:
            splits = artifact_utils.decode_split_names(arts["anomalies"].split_names)
            s["anomalies"] = validation.anomalies_by_split(arts["anomalies"].uri, splits)
        except Exception:  # noqa: BLE001 - the summary goes on without it
            pass
    if "drift" in arts:
        drift = read_json(posixpath.join(arts["drift"].uri, validation.DRIFT_FILE))
        if drift:
            s["drift"] = drift
    if "model_run" in arts:
        uri = arts["model_run"].uri
        history = read_json(posixpath.join(uri, HISTORY_FILE))
        if history:
            s["training"] = {"first": history[0], "last": history[-1]}
        for key, name in (("warm_start", WARM_START_FILE), ("resumed", RESUMED_FILE)):
            value = read_json(posixpath.join(uri, name))
            if value is not None:
                s[key] = value
    if "model" in arts:
        s["model_uri"] = arts["model"].uri
    if "evaluation" in arts:
        ev = read_json(posixpath.join(arts["evaluation"].uri, EVALUATION_FILE))
        if ev:
            s["evaluation"] = {"uri": arts["evaluation"].uri, "domains": ev["domains"],
                               "best_setting": ev["best_setting"], "best": ev["best"],
                               "baseline": ev.get("baseline"),
                               "fid_kid_note": ev.get("fid_kid_note"),
                               "domain_gap": ev.get("domain_gap"),
                               **{k: ev.get(k) for k in EVALUATION_SUMMARY_KEYS}}
    if "blessing" in arts:
        b = arts["blessing"]
        s["blessing"] = read_json(posixpath.join(b.uri, BLESSING_FILE)) or {}
        if b.has_custom_property("blessed"):
            s["blessing"]["blessed"] = bool(b.get_int_custom_property("blessed"))
    if "pushed_model" in arts:
        p = arts["pushed_model"]
        record = read_json(posixpath.join(p.uri, PUSH_RECORD_FILE)) or {}
        s["push"] = {"pushed": int(bool(record.get("pushed"))),
                     "pushed_version": (str(record["version"]) if record.get("version") is not None
                                        else None),
                     "pushed_destination": record.get("destination"),
                     "reason": record.get("reason"),
                     "already_registered": record.get("already_registered")}
    s["retraining"] = summary_lib.retraining(s)
    return s


def markdown(s: Dict[str, Any]) -> str:
    from pipelines import summary as summary_lib

    ex = s["executions"]
    order = ["DeblurRunCheck", "DeblurInputFingerprint", "DeblurIngest", "StatisticsGen",
             "ImportSchemaGen", "ExampleValidator", "ValidationGate", "DomainDriftReport",
             "Trainer", "DeblurEvaluator", "RegistryPusher", "ServabilityCheck"]
    words = {"COMPLETE": "ran", "CACHED": "cached (an earlier run's outputs)",
             "MIXED": "ran and cached (?)"}
    cached = [t for t in order if ex.get(t) == "CACHED"]
    ran = [t for t in order if ex.get(t) == "COMPLETE"]
    lines = [f"## Run summary: {len(ran)} task(s) ran, {len(cached)} cached", "",
             "| task | this run |", "|---|---|"]
    for t in order:
        if t in ex:
            lines.append(f"| {t} | {words.get(ex[t], ex[t])} |")
        elif t in NOT_TOLD:
            lines.append(f"| {t} | (no output to tell by) |")
    lines += ["", "```", summary_lib.format_summary(s), "```", ""]
    return "\n".join(lines)


class RunSummarySpec(types.ComponentSpec):
    PARAMETERS = {}
    INPUTS = {k: ChannelParameter(type=t, optional=True) for k, (_, t) in INPUTS.items()}
    OUTPUTS = {SUMMARY_KEY: ChannelParameter(type=run_page.Markdown)}


class Executor(base_executor.BaseExecutor):
    def Do(self, input_dict, output_dict, exec_properties):
        out = artifact_utils.get_single_instance(output_dict[SUMMARY_KEY])
        arts = {k: v[0] for k, v in input_dict.items() if v}
        s = build(arts, run_folder(out.uri))
        text = markdown(s)
        run_page.write_text(out, "run summary", text)
        with fileio.open(artifacts.kfp_run_summary_path(run_folder(out.uri)), "w") as f:
            f.write(text)
        print(text.split("\n", 1)[0].lstrip("# "))


class RunSummary(base_component.BaseComponent):
    SPEC_CLASS = RunSummarySpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, **channels: Optional[types.BaseChannel]):
        unknown = set(channels) - set(INPUTS)
        if unknown:
            raise ValueError(f"RunSummary: unknown input(s) {sorted(unknown)}")
        super().__init__(spec=RunSummarySpec(summary=types.Channel(type=run_page.Markdown),
                                             **channels))
