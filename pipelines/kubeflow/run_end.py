"""RunEnd: the exit task of the compiled Kubeflow pipeline. It runs once the rest of the run is
over, whatever its outcome, and tells on the run page (system.Markdown) and in
<run folder>/summary.md (core/artifacts.py kfp_run_summary_path) what happened:

- every task succeeded: RunSummary, the last task of the DAG, wrote the full summary to
  summary.md; this task leaves that file and puts "Run succeeded" above a copy of it;
- a task failed (RunSummary never runs then): the run's final state and error, the failed
  task(s) with their one-line error, and for every task whether it left outputs under this
  run's folder, failed, or did not start. That is the summary.md of a failed run.

How it is wired (pipelines/kubeflow/compiler.py): TFX's exit handler
(KubeflowV2DagRunner.set_exit_handler) puts every other task in a sub-DAG `tfx-dag` and this
one at the root with triggerPolicy ALL_UPSTREAM_TASKS_COMPLETED after it: KFP's Argo compiler
runs it when tfx-dag Succeeded, Failed, Errored or was Skipped (backend/src/v2/compiler/
argocompiler/dag.go depends_exit_handler, tags 2.0.5 to master). The exit task takes no input
artifact (TFX's step builder drops them), so everything is read under the run folder.

What it reads there (<pipeline root>/<pipeline>/<run id>, from its own output URI):
- a folder per task that wrote an output in this run (<task>/[<uuid>/]<output key>: KFP's
  driver); a cached task has none (its outputs are an earlier run's);
- <task>/task_error.json: the one-line error pipelines/kubeflow/entrypoint.py writes when a TFX
  executor raises; a pod killed from outside (out of memory, eviction) leaves none;
- DeblurRunCheck's report: refused run parameters stop the run in DeblurInputFingerprint.

`final_status`: KFP's PipelineTaskFinalStatus of tfx-dag ({"state", "error", "pipelineJobResourceName",
"pipelineTaskName"}), when the compiler asked for it (TFX's FinalStatusStr). The KFP backend
refuses such an input before 2.14.0 ("task final status not supported yet" in the Argo
compiler; kubeflow/pipelines#11953 added it, with state = the DAG execution's MLMD state and an
empty error), so on the project's backend (2.5.0) the state is inferred from the run folder.
`tasks`: the DAG's {task: [tasks it depends on]} as JSON, written by the compiler.
"""
from __future__ import annotations

import json
import posixpath
from typing import Any, Dict, List, Optional, Set

from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.dsl.io import fileio
from tfx.types import artifact_utils
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from components import artifact_io, run_page
from core import artifacts

SUMMARY_KEY = "summary"
FINAL_STATUS = "final_status"
TASKS = "tasks"
# create_pipeline's `tasks` before compiling: replaced by the compiled DAG's graph
TASKS_PLACEHOLDER = "the compiled DAG's tasks, written by pipelines/kubeflow/compiler.py"
NOT_TOLD = ("ValidationGate",)  # no output to tell by
CHECK_TASK = "DeblurRunCheck"
FINGERPRINT_TASK = "DeblurInputFingerprint"
SUCCEEDED_STATES = ("COMPLETE", "SUCCEEDED", "CACHED")


def _children(folder: str) -> Set[str]:
    if not fileio.exists(folder):
        return set()
    return {c.rstrip("/") for c in fileio.listdir(folder)}


def _find_file(folder: str, name: str) -> Optional[str]:
    """The first file called `name` under folder (<task>/[<uuid>/]<name>), newest uuid last."""
    for root, _, files in sorted(fileio.walk(folder)) if fileio.exists(folder) else ():
        if name in files:
            return posixpath.join(root, name)
    return None


def task_errors(run_dir: str, present: Set[str]) -> Dict[str, str]:
    """{task: one-line error} from the entrypoint's task_error.json files."""
    out = {}
    for task in sorted(present):
        # at <run>/<task>/, never under an output: no walk of a task's (large) outputs
        path = artifacts.join(run_dir, task, artifacts.TASK_ERROR_FILE)
        if fileio.exists(path):
            record = artifact_io.read_json(path) or {}
            out[task] = str(record.get("error") or "failed (no message)")
    return out


def refused_parameters(run_dir: str) -> List[str]:
    """The refusal lines of DeblurRunCheck's report ([] when every value was good)."""
    path = _find_file(posixpath.join(run_dir, CHECK_TASK), "report")
    text = artifact_io.read_text(path) if path else None
    if not text or "refused" not in text.splitlines()[0]:
        return []
    return [line[2:] for line in text.splitlines() if line.startswith("- **")]


def parse_status(final_status: str) -> Optional[Dict[str, Any]]:
    """PipelineTaskFinalStatus as a dict (KFP passes it as a struct, which reaches the executor
    as JSON text); None when the compiler did not ask for it."""
    if not final_status or not final_status.strip():
        return None
    try:
        value = json.loads(final_status)
    except json.JSONDecodeError:
        return {"state": final_status.strip()}
    return value if isinstance(value, dict) else {"state": str(value)}


def downstream(graph: Dict[str, List[str]], of: Set[str]) -> Set[str]:
    out: Set[str] = set()
    changed = True
    while changed:
        changed = False
        for task, deps in graph.items():
            if task not in out and task not in of and set(deps) & (of | out):
                out.add(task)
                changed = True
    return out


def build(run_dir: str, graph: Dict[str, List[str]], status: Optional[Dict[str, Any]]
          ) -> Dict[str, Any]:
    """What the run left: state, error, failed tasks and each task's outcome."""
    present = _children(run_dir) & set(graph)
    errors = task_errors(run_dir, present)
    refused = refused_parameters(run_dir)
    if refused and FINGERPRINT_TASK in graph and FINGERPRINT_TASK not in errors:
        errors[FINGERPRINT_TASK] = "run parameters refused: " + "; ".join(refused)
    summary_written = fileio.exists(artifacts.kfp_run_summary_path(run_dir))
    if status and status.get("state"):
        state = str(status["state"])
        succeeded = state.upper() in SUCCEEDED_STATES
    else:
        succeeded = summary_written and not errors
        state = "SUCCEEDED (inferred)" if succeeded else "FAILED (inferred from the run folder)"
    message = ((status or {}).get("error") or {}).get("message") or ""
    blocked = downstream(graph, set(errors))
    outcome = {}
    for task in graph:
        if task in errors:
            outcome[task] = "FAILED"
        elif task in present:
            outcome[task] = "outputs here"
        elif task in blocked:
            outcome[task] = "not started"
        elif task in NOT_TOLD:
            outcome[task] = "no output to tell by"
        else:
            outcome[task] = "no output here"
    # with no error record: the first tasks without outputs are where to look
    suspects = [] if errors or succeeded else [
        t for t in graph if outcome[t] == "no output here"
        and all(outcome.get(d) == "outputs here" for d in graph[t])]
    return {"run": posixpath.basename(run_dir.rstrip("/")), "state": state,
            "succeeded": succeeded, "error": message, "errors": errors, "outcome": outcome,
            "suspects": suspects, "summary_written": summary_written,
            "status": status or {}}


def markdown(s: Dict[str, Any]) -> str:
    words = {"FAILED": "**FAILED**", "outputs here": "wrote outputs in this run",
             "not started": "not started (after a failure)",
             "no output to tell by": "(no output to tell by)",
             "no output here": "no output in this run (cached, or stopped without a record)"}
    lines = [f"## Run failed: {', '.join(sorted(s['errors'])) or 'task unknown'}", "",
             f"- run: {s['run']}", f"- final state: {s['state']}"]
    if s["status"].get("pipelineTaskName"):
        lines.append(f"- reported by KFP for: {s['status']['pipelineTaskName']}")
    if s["error"]:
        lines.append(f"- error: {s['error']}")
    for task, error in sorted(s["errors"].items()):
        lines.append(f"- **{task}**: {error}")
    if s["suspects"]:
        lines.append(f"- no task left an error record (killed from outside: out of memory, "
                     f"eviction, an image or driver error?); the first without outputs: "
                     f"{', '.join(s['suspects'])}: their pages in the KFP UI tell why")
    lines += ["", "| task | this run |", "|---|---|"]
    for task, o in s["outcome"].items():
        lines.append(f"| {task} | {words[o]} |")
    return "\n".join(lines) + "\n"


class RunEndSpec(types.ComponentSpec):
    PARAMETERS = {FINAL_STATUS: ExecutionParameter(type=str, optional=True),
                  TASKS: ExecutionParameter(type=str)}
    INPUTS = {}
    OUTPUTS = {SUMMARY_KEY: ChannelParameter(type=run_page.Markdown)}


class Executor(base_executor.BaseExecutor):
    def Do(self, input_dict, output_dict, exec_properties):
        out = artifact_utils.get_single_instance(output_dict[SUMMARY_KEY])
        run_dir = artifacts.kfp_run_folder(out.uri, SUMMARY_KEY)
        graph = json.loads(exec_properties[TASKS])
        s = build(run_dir, graph, parse_status(exec_properties.get(FINAL_STATUS) or ""))
        path = artifacts.kfp_run_summary_path(run_dir)
        if s["succeeded"]:
            full = artifact_io.read_text(path) if s["summary_written"] else None
            text = f"## Run succeeded: {s['run']}\n\n" + (full or "")
            run_page.write_text(out, "run end: succeeded", text)
        else:
            text = markdown(s)
            run_page.write_text(out, "run end: failed", text)
            with fileio.open(path, "w") as f:
                f.write(text)
        print(text.split("\n", 1)[0].lstrip("# "))


class RunEnd(base_component.BaseComponent):
    SPEC_CLASS = RunEndSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, final_status: Optional[str] = None):
        """final_status: tfx.dsl.experimental.FinalStatusStr() for a KFP backend >= 2.14."""
        super().__init__(spec=RunEndSpec(summary=types.Channel(type=run_page.Markdown),
                                         tasks=TASKS_PLACEHOLDER, final_status=final_status))
