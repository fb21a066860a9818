"""Runs you can follow: `deblur runs list|status|wait|terminate|retry` and `deblur submit --wait`.

    list_runs(config, host)                 # the experiment's (or a schedule's) runs, newest first
    status(config, host, run_id)            # the run, its tasks, and why it failed
    wait(config, host, run_id, report=...)  # polls until the run ends; exit_code tells how
    terminate(config, host, run_id)         # POST /runs/{id}:terminate
    retry(config, host, run_id)             # POST /runs/{id}:retry, a FAILED or CANCELED run only

Everything goes through client._kfp, so an API refusal or an HTML page is one SubmitError line.
The tasks are the API's run_details.task_details as the backend fills them (display name,
state, start and end, error): their names and how many there are (drivers, executors) depend
on the KFP backend version, so they are shown as given and followed by task id.

The run summary that `wait` prints is <pipeline root>/<pipeline>/<run id>/summary.md
(core/artifacts.kfp_run_summary_path): RunSummary writes it when the run succeeds, the exit
task RunEnd when a task failed (pipelines/kubeflow/run_end.py). The KFP API does not give
artifact URIs reliably, so it is found by path under the run's folder, as the KFP v2 driver
names it; a run compiled before RunEnd existed has only RunSummary's Markdown output,
<run folder>/RunSummary/summary (or a file named `summary` deeper under RunSummary/, for
backends that add a folder per execution), which is read instead. It is read
with tfx.dsl.io.fileio, so a local root (tests) and gs:// (a cluster) both work; on a cluster
the one who waits needs read access to the pipeline root's bucket (roles/storage.objectViewer),
or the summary is skipped with a one-line note and the run page shows it instead.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import posixpath
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from core import artifacts
from pipelines.config import ConfigError, PipelineConfig
from pipelines.kubeflow.client import SubmitError, _experiment_id, _host, _kfp
from pipelines.kubeflow.config import kubeflow_section

# the exit code of `deblur runs wait` by the run's final state; a timeout is EXIT_TIMEOUT
EXIT_CODES = {"SUCCEEDED": 0, "FAILED": 1, "SKIPPED": 1, "CANCELING": 2, "CANCELED": 2}
EXIT_TIMEOUT = 3
EXIT_INTERRUPTED = 130  # Ctrl-C: the waiting stops, the run goes on
RETRYABLE = ("FAILED", "CANCELED")
# RunSummary's task name in the compiled spec and its output key (run_summary.py
# SUMMARY_KEY; not imported: that module imports TFX)
SUMMARY_TASK = "RunSummary"
SUMMARY_OUTPUT = "summary"
RUN = "(run)"  # the name wait reports the run's own state changes under


def _time(value) -> Optional[str]:
    """A timestamp of the API as 'YYYY-MM-DD HH:MM:SS' UTC; the API's zero time (1970) is None."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
    if value.year <= 1970:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(datetime.timezone.utc)
    return value.strftime("%Y-%m-%d %H:%M:%S")


def _message(status) -> Optional[str]:
    """The first line of a GooglerpcStatus's message, if any."""
    text = (getattr(status, "message", None) or "").strip() if status is not None else ""
    return text.splitlines()[0] if text else None


def task_rows(run) -> List[Dict[str, Any]]:
    """The run's tasks, in the order they started: id, name, state, started, finished, error."""
    details = getattr(run.run_details, "task_details", None) if run.run_details else None
    rows = [{"id": t.task_id or t.display_name, "name": t.display_name or t.task_id,
             "state": t.state, "started": _time(t.start_time), "finished": _time(t.end_time),
             "error": _message(t.error)} for t in details or []]
    rows.sort(key=lambda r: (r["started"] is None, r["started"] or "", r["name"] or ""))
    return rows


def failure(run, rows: List[Dict[str, Any]]) -> Optional[str]:
    """Why a FAILED run failed, in one line: the first failed task's error, else the run's."""
    failed = [r for r in rows if r["state"] == "FAILED"]
    failed.sort(key=lambda r: (r["finished"] is None, r["finished"] or ""))
    for r in failed:
        if r["error"]:
            return f"{r['name']}: {r['error']}"
    if _message(run.error):
        return _message(run.error)
    return f"{failed[0]['name']} failed (no error message in the API)" if failed else None


class _Versions:
    """Pipeline version display names by id, each asked once."""

    def __init__(self, client):
        self.client, self.names = client, {}

    def name(self, run) -> Optional[str]:
        ref = run.pipeline_version_reference
        vid = (ref.pipeline_version_id if ref is not None else None) or run.pipeline_version_id
        if not vid:
            return ("the pipeline's newest" if ref is not None and ref.pipeline_id
                    else "inline spec")
        if vid not in self.names:
            try:
                self.names[vid] = self.client.get_pipeline_version(
                    ref.pipeline_id if ref is not None else None, vid).display_name
            except Exception:  # noqa: BLE001 - a deleted version: show its id
                self.names[vid] = vid
        return self.names[vid]


def run_row(run, versions: Optional[_Versions] = None) -> Dict[str, Any]:
    return {"id": run.run_id, "name": run.display_name, "state": run.state,
            "created": _time(run.created_at), "finished": _time(run.finished_at),
            "version": versions.name(run) if versions is not None else None,
            "experiment_id": run.experiment_id, "recurring_run_id": run.recurring_run_id}


def list_runs(config: PipelineConfig, host: Optional[str], schedule: Optional[str] = None,
              experiment: Optional[str] = None, all_experiments: bool = False,
              limit: int = 20) -> Dict[str, Any]:
    """`deblur runs list`: the runs of the config's KFP experiment (or `experiment`, or every
    one), or of the recurring run `schedule`, newest first, at most `limit` (0: all).

    A recurring run's runs are its experiment's runs whose recurring_run_id is it, picked here:
    ListRuns takes no recurring run id, and its `recurring_run_id` filter key maps to a column
    that is not there on the 2.x backends (model/run.go: RecurringRunId, JobUUID since), so
    filtering on the server would fail there."""
    host = _host(config, host)
    kf = kubeflow_section(config)
    experiment = experiment or kf.kfp_experiment
    out: Dict[str, Any] = {"host": host, "experiment": None if all_experiments else experiment,
                           "schedule": schedule, "runs": []}
    with _kfp(host, kf) as client:
        experiment_id = None
        if schedule:
            rr = client.get_recurring_run(schedule)
            experiment_id = rr.experiment_id
            out["experiment"] = None
        elif not all_experiments:
            experiment_id = _experiment_id(client, experiment)
            if experiment_id is None:
                return out
        versions, rows, token = _Versions(client), [], ""
        while not limit or len(rows) < limit:
            r = client.list_runs(page_token=token, page_size=100, experiment_id=experiment_id,
                                 sort_by="created_at desc")
            rows += [x for x in r.runs or [] if not schedule or x.recurring_run_id == schedule]
            token = r.next_page_token or ""
            if not token:
                break
        out["runs"] = [run_row(x, versions) for x in (rows[:limit] if limit else rows)]
    return out


def status(config: PipelineConfig, host: Optional[str], run_id: str) -> Dict[str, Any]:
    """`deblur runs status`: the run, its tasks and, when it FAILED, why (one line)."""
    host = _host(config, host)
    with _kfp(host, kubeflow_section(config)) as client:
        run = client.get_run(run_id)
        out = run_row(run, _Versions(client))
    out["tasks"] = task_rows(run)
    out["failure"] = failure(run, out["tasks"]) if run.state == "FAILED" else None
    out["url"] = f"{host}/#/runs/details/{run_id}"
    return out


def terminate(config: PipelineConfig, host: Optional[str], run_id: str) -> Dict[str, Any]:
    """`deblur runs terminate`: asks KFP to stop the run (it goes CANCELING, then CANCELED)."""
    host = _host(config, host)
    with _kfp(host, kubeflow_section(config)) as client:
        client.terminate_run(run_id)
        return run_row(client.get_run(run_id))


def retry(config: PipelineConfig, host: Optional[str], run_id: str) -> Dict[str, Any]:
    """`deblur runs retry`: runs a FAILED or CANCELED run again from its failed tasks (KFP
    keeps the ones that succeeded). Any other state is refused before the request."""
    host = _host(config, host)
    with _kfp(host, kubeflow_section(config)) as client:
        run = client.get_run(run_id)
        if run.state not in RETRYABLE:
            raise SubmitError(f"run {run_id} is {run.state}: only a FAILED or CANCELED run can "
                              f"be retried")
        client._run_api.retry_run(run_id=run_id)
        return run_row(client.get_run(run_id))


def changes(before: Dict[str, Tuple[str, Optional[str]]],
            run) -> List[Tuple[str, Optional[str], str]]:
    """(task, old state, new state) for each task whose state is not what `before` ({task id:
    (name, state)}) says; `before` is brought up to date."""
    out = []
    for r in task_rows(run):
        old = before.get(r["id"], (r["name"], None))[1]
        if r["state"] != old:
            out.append((r["name"], old, r["state"]))
        before[r["id"]] = (r["name"], r["state"])
    return out


def summary_folder(pipeline_root: str, pipeline: str, run_id: str) -> str:
    # not os.path.join: the root is a URI (gs://...)
    return f"{pipeline_root.rstrip('/')}/{pipeline}/{run_id}/{SUMMARY_TASK}"


def read_summary(pipeline_root: str, pipeline: str,
                 run_id: str) -> Tuple[Optional[str], Optional[str], Optional[str]]:
    """(path, Markdown, None) of the run's RunSummary output, or (None, None, why not)."""
    from tfx.dsl.io import fileio

    folder = summary_folder(pipeline_root, pipeline, run_id)
    try:
        path = artifacts.kfp_run_summary_path(posixpath.dirname(folder))
        if fileio.exists(path):
            with fileio.open(path, "r") as f:
                return path, f.read(), None
        path = f"{folder}/{SUMMARY_OUTPUT}"
        if not (fileio.exists(path) and not fileio.isdir(path)):
            found = sorted(f"{d.rstrip('/')}/{SUMMARY_OUTPUT}" for d, _, files in
                           fileio.walk(folder) if SUMMARY_OUTPUT in files)
            if not found:
                return None, None, (f"no {artifacts.KFP_RUN_SUMMARY_FILE} in "
                                    f"{posixpath.dirname(folder)}, no {SUMMARY_OUTPUT} under "
                                    f"{folder}")
            path = found[0]
        with fileio.open(path, "r") as f:
            return path, f.read(), None
    except Exception as e:  # noqa: BLE001 - no read access to the bucket, a transport error
        text = (getattr(e, "message", None) or str(e)).strip()
        return None, None, (f"cannot read {posixpath.dirname(folder)}: "
                            f"{text.splitlines()[0] if text else type(e).__name__}")


def wait(config: PipelineConfig, host: Optional[str], run_id: str, poll: float = 15,
         timeout: Optional[float] = None,
         report: Callable[[str, str, Optional[str], str], None] = lambda *a: None,
         sleep: Callable[[float], None] = time.sleep,
         clock: Callable[[], float] = time.monotonic) -> Dict[str, Any]:
    """`deblur runs wait`: gets the run every `poll` seconds and calls report(time, task, old
    state, new state) for each change (the run's own under RUN), until it ends or `timeout`
    seconds have passed (checked after each poll, so 0 polls once). Ctrl-C stops the waiting,
    not the run. Returns the status with exit_code (EXIT_CODES, EXIT_TIMEOUT,
    EXIT_INTERRUPTED) and, when the run or its RunSummary task succeeded, the summary Markdown
    (`summary`, or why not in `summary_note`)."""
    if poll < 0 or (timeout is not None and timeout < 0):
        raise ConfigError("--poll and --timeout are seconds, not negative")
    host = _host(config, host)
    kf = kubeflow_section(config)
    seen: Dict[str, Tuple[str, Optional[str]]] = {}
    run_state, run, exit_code = None, None, None
    stdout = sys.stdout  # _kfp silences kfp's own prints; the reports go out

    def tell(*change):
        with contextlib.redirect_stdout(stdout):
            report(*change)

    start = clock()
    try:
        with _kfp(host, kf) as client:
            while True:
                run = client.get_run(run_id)
                now = datetime.datetime.now().strftime("%H:%M:%S")
                if run.state != run_state:
                    tell(now, RUN, run_state, run.state)
                    run_state = run.state
                for task, old, new in changes(seen, run):
                    tell(now, task, old, new)
                if run.state in EXIT_CODES:
                    exit_code = EXIT_CODES[run.state]
                    break
                if timeout is not None and clock() - start >= timeout:
                    exit_code = EXIT_TIMEOUT
                    break
                sleep(poll)
            out = run_row(run, _Versions(client))
    except KeyboardInterrupt:
        exit_code = EXIT_INTERRUPTED
        out = run_row(run) if run is not None else {"id": run_id, "state": run_state}
    out.update(exit_code=exit_code, timed_out=exit_code == EXIT_TIMEOUT,
               interrupted=exit_code == EXIT_INTERRUPTED, url=f"{host}/#/runs/details/{run_id}")
    out["tasks"] = task_rows(run) if run is not None else []
    out["failure"] = failure(run, out["tasks"]) if run is not None and run.state == "FAILED" \
        else None
    out["summary"] = out["summary_path"] = out["summary_note"] = None
    if run is not None and run.state in EXIT_CODES:  # ended: RunSummary's or RunEnd's
        root = (run.runtime_config.pipeline_root if run.runtime_config else None) \
            or kf.pipeline_root
        if root:
            out["summary_path"], out["summary"], out["summary_note"] = read_summary(
                root, config.runner.pipeline_name, run_id)
        else:
            out["summary_note"] = "no pipeline root (kubeflow.pipeline_root) to read it from"
    return out


def as_json(r: Dict[str, Any]) -> str:
    return json.dumps(r, indent=2, sort_keys=True, default=str)
