"""`deblur runs list|status|wait|terminate|retry` and `deblur submit --wait`, over real HTTP
against the fake KFP API (tests/fake_kfp_api.py), whose scripted runs move one step per GET:
no test waits on the clock."""
from __future__ import annotations

import json
import os
import textwrap

import pytest

from pipelines.config import REPO_ROOT
from tests.kfp_fixtures import kfp_server  # noqa: F401 - the fixture

EXAMPLE = os.path.join(REPO_ROOT, "infra", "kubeflow.example.yaml")
RUN_PATH = "/apis/v2beta1/runs"


@pytest.fixture()
def package(tmp_path):
    """A small KFP package (no TFX compile): one run parameter, one task."""
    path = tmp_path / "small.yaml"
    path.write_text(textwrap.dedent("""\
        pipelineInfo:
          name: deblur-icdpm
        schemaVersion: 2.1.0
        sdkVersion: kfp-2.5.0
        root:
          inputDefinitions:
            parameters:
              train_steps:
                parameterType: NUMBER_INTEGER
                defaultValue: 100
          dag:
            tasks:
              RunSummary:
                taskInfo:
                  name: RunSummary
                componentRef:
                  name: comp-runsummary
        components:
          comp-runsummary:
            executorLabel: exec-runsummary
        deploymentSpec:
          executors:
            exec-runsummary:
              container:
                image: docker.io/library/busybox@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa
                command: [echo]
        """))
    return str(path)


def _deblur(*argv):
    from deblur import cli

    return cli.main(list(argv))


def _submit(srv, package, *more):
    assert _deblur("submit", "--config", EXAMPLE, "--spec", package, "--host", srv.url,
                   *more) == 0
    return list(srv.runs)[-1]


def _runs(srv, *argv):
    return _deblur("runs", argv[0], "--config", EXAMPLE, "--host", srv.url, *argv[1:])


def _gets(srv, run_id):
    return [r for r in srv.requests if (r["method"], r["path"]) == ("GET", f"{RUN_PATH}/{run_id}")]


def _posts(srv):
    return [r["path"] for r in srv.requests if r["method"] == "POST"]


# ---- list -----------------------------------------------------------------------------------
def test_list_shows_the_experiments_runs_newest_first_with_their_version(kfp_server, package,
                                                                         capsys):
    first = _submit(kfp_server, package, "--run-name", "first")
    second = _submit(kfp_server, package, "--run-name", "second")
    other = _submit(kfp_server, package, "--run-name", "elsewhere", "--kfp-experiment", "other")
    version = kfp_server.versions[next(iter(kfp_server.versions))]["display_name"]
    capsys.readouterr()
    assert _runs(kfp_server, "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == [second, first]  # newest first, one experiment
    assert "PENDING" in lines[0] and version in lines[0] and lines[0].endswith("second")
    # the list request is one the API server takes: its experiment, created_at descending
    listed = [r for r in kfp_server.requests if (r["method"], r["path"]) == ("GET", RUN_PATH)]
    assert listed[-1]["query"]["experiment_id"] == [kfp_server.runs[first]["experiment_id"]]
    assert listed[-1]["query"]["sort_by"] == ["created_at desc"]

    assert _runs(kfp_server, "list", "--all", "--json") == 0
    r = json.loads(capsys.readouterr().out)
    assert [x["id"] for x in r["runs"]] == [other, second, first]
    assert r["runs"][0]["version"] == version and r["runs"][0]["created"].startswith("2026-")

    assert _runs(kfp_server, "list", "--kfp-experiment", "nothing-here") == 0
    assert capsys.readouterr().out.strip() == "no runs in KFP experiment nothing-here"


def _schedule(srv, *more):
    """A recurring run of the newest release (submit --schedule compiles and uploads nothing)."""
    assert _deblur("submit", "--config", EXAMPLE, "--host", srv.url, *more) == 0
    return list(srv.recurring_runs)[-1]


def test_list_schedule_shows_the_runs_of_that_recurring_run_only(kfp_server, package, capsys,
                                                                 monkeypatch):
    from pipelines.kubeflow import client as kclient

    monkeypatch.setattr(kclient, "git_commit", lambda *a: ("0123456789", False))
    assert _deblur("pipeline", "release", "--config", EXAMPLE, "--spec", package,
                   "--host", kfp_server.url) == 0
    rr = _schedule(kfp_server, "--schedule", "@daily")
    other_rr = _schedule(kfp_server, "--schedule", "@weekly")
    one_off = _submit(kfp_server, package)  # same experiment, not started by the schedule
    older = kfp_server.scheduled_run(rr, "nightly-1")
    kfp_server.scheduled_run(other_rr, "weekly-1")
    newer = kfp_server.scheduled_run(rr, "nightly-2")
    capsys.readouterr()
    assert _runs(kfp_server, "list", "--schedule", rr) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == [newer, older]
    assert "the pipeline's newest" in lines[0]  # a schedule that follows the newest release
    assert _runs(kfp_server, "list") == 0  # the experiment: all five
    assert len(capsys.readouterr().out.splitlines()) == 4 and one_off
    assert _runs(kfp_server, "list", "--schedule", rr, "--limit", "1", "--json") == 0
    assert [x["id"] for x in json.loads(capsys.readouterr().out)["runs"]] == [newer]


def test_fake_refuses_run_lists_the_server_refuses(kfp_server):
    import kfp

    client = kfp.Client(host=kfp_server.url)
    for bad in ({"sort_by": "started_at desc"}, {"filter": json.dumps(
            {"predicates": [{"operation": "EQUALS", "key": "runId", "stringValue": "x"}]})}):
        with pytest.raises(Exception):
            client.list_runs(**bad)
    assert len(kfp_server.errors) == 2 and "started_at" in kfp_server.errors[0]
    kfp_server.errors.clear()


# ---- status ---------------------------------------------------------------------------------
def test_status_of_a_failed_run_names_the_failed_tasks_error(kfp_server, package, capsys):
    run_id = _submit(kfp_server, package)
    kfp_server.script_run(run_id, [("FAILED", {
        "DeblurRunCheck": "SUCCEEDED",
        "Trainer": {"state": "FAILED", "error": {
            "code": 2, "message": "ResourceExhausted: OOM when allocating tensor\n(traceback)"}},
        "DeblurEvaluator": "SKIPPED"})])
    capsys.readouterr()
    assert _runs(kfp_server, "status", run_id) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"run {run_id}: FAILED")
    assert "  failed: Trainer: ResourceExhausted: OOM when allocating tensor\n" in out
    assert "(traceback)" not in out  # one line
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines()[3:6]}
    assert rows == {"DeblurRunCheck": "SUCCEEDED", "Trainer": "FAILED",
                    "DeblurEvaluator": "SKIPPED"}
    assert _runs(kfp_server, "status", run_id, "--json") == 0
    r = json.loads(capsys.readouterr().out)
    assert r["state"] == "FAILED" and r["failure"].startswith("Trainer: ResourceExhausted")


def test_an_unknown_run_is_one_line_and_wait_says_the_outcome_is_unknown(kfp_server, capsys):
    assert _runs(kfp_server, "status", "run-nope") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "404" in err[0] and "run-nope" in err[0]
    # wait: 4, not 2 (CANCELED): the API could not tell how the run ended
    assert _runs(kfp_server, "wait", "run-nope", "--poll", "0") == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "404" in err[0] and err[0].endswith("outcome unknown)")


# ---- wait -----------------------------------------------------------------------------------
def test_wait_prints_each_task_change_and_exits_0_on_success(kfp_server, package, capsys):
    run_id = _submit(kfp_server, package)
    kfp_server.script_run(run_id, [
        ("PENDING", {}),
        ("RUNNING", {"DeblurRunCheck": "RUNNING"}),
        ("RUNNING", {"DeblurRunCheck": "SUCCEEDED", "Trainer": "RUNNING"}),
        ("SUCCEEDED", {"Trainer": "SUCCEEDED"}),
    ])
    capsys.readouterr()
    assert _runs(kfp_server, "wait", run_id, "--poll", "0") == 0
    out = capsys.readouterr().out.splitlines()
    changes = [line.split("  ", 1)[1] for line in out if " -> " in line]
    assert changes == ["(run)  - -> PENDING", "(run)  PENDING -> RUNNING",
                       "DeblurRunCheck  - -> RUNNING", "DeblurRunCheck  RUNNING -> SUCCEEDED",
                       "Trainer  - -> RUNNING", "(run)  RUNNING -> SUCCEEDED",
                       "Trainer  RUNNING -> SUCCEEDED"]
    assert len(_gets(kfp_server, run_id)) == 4  # one GET per step, none after the end
    end = out.index(next(line for line in out if line.startswith(f"run {run_id}: SUCCEEDED")))
    assert [line.split()[:2] for line in out[end + 2:end + 4]] == [
        ["DeblurRunCheck", "SUCCEEDED"], ["Trainer", "SUCCEEDED"]]


@pytest.mark.parametrize("state, code", [("FAILED", 1), ("CANCELED", 2), ("CANCELING", 2)])
def test_wait_exits_by_the_runs_outcome(kfp_server, package, capsys, state, code):
    run_id = _submit(kfp_server, package)
    tasks = {"Trainer": {"state": "FAILED", "error": {"message": "exit status 1"}}} \
        if state == "FAILED" else {"Trainer": "CANCELED" if state == "CANCELED" else "RUNNING"}
    kfp_server.script_run(run_id, [("RUNNING", {"Trainer": "RUNNING"}), (state, tasks)])
    capsys.readouterr()
    assert _runs(kfp_server, "wait", run_id, "--poll", "0") == code
    out = capsys.readouterr().out
    assert f"run {run_id}: {state}" in out
    assert ("failed: Trainer: exit status 1" in out) == (state == "FAILED")
    assert not [p for p in _posts(kfp_server) if p.startswith(f"{RUN_PATH}/")]  # no terminate


def test_wait_timeout_exits_3_and_leaves_the_run(kfp_server, package, capsys):
    run_id = _submit(kfp_server, package)
    # it would succeed at the second look (so a wait that missed its timeout ends 0, not hangs)
    kfp_server.script_run(run_id, [("RUNNING", {"Trainer": "RUNNING"}),
                                   ("SUCCEEDED", {"Trainer": "SUCCEEDED"})])
    capsys.readouterr()
    assert _runs(kfp_server, "wait", run_id, "--poll", "0", "--timeout", "0") == 3
    out = capsys.readouterr().out
    assert f"run {run_id}: still RUNNING after --timeout 0 s" in out
    assert len(_gets(kfp_server, run_id)) == 1  # --timeout 0: one look
    assert not [p for p in _posts(kfp_server) if p.startswith(f"{RUN_PATH}/")]


def test_wait_polls_every_poll_seconds_until_the_timeout(kfp_server, package):
    """The library with a clock and a sleep of its own: polls, sleeps `poll` between them, and
    stops after the first poll at or past the timeout; Ctrl-C (a KeyboardInterrupt in the sleep)
    stops the waiting with 130 and asks nothing of the run."""
    from pipelines import config as config_lib
    from pipelines.kubeflow import runs

    cfg = config_lib.load(EXAMPLE)
    run_id = _submit(kfp_server, package)
    kfp_server.script_run(run_id, [("RUNNING", {})] * 3 + [("SUCCEEDED", {})])
    ticks, slept = iter([0, 4, 8, 12]), []
    r = runs.wait(cfg, kfp_server.url, run_id, poll=7, timeout=10, sleep=slept.append,
                  clock=lambda: next(ticks))
    assert (r["exit_code"], r["timed_out"], slept) == (runs.EXIT_TIMEOUT, True, [7, 7])
    assert len(_gets(kfp_server, run_id)) == 3

    def interrupt(seconds):
        raise KeyboardInterrupt

    kfp_server.script_run(run_id, [("RUNNING", {})])
    r = runs.wait(cfg, kfp_server.url, run_id, poll=1, sleep=interrupt)
    assert (r["exit_code"], r["interrupted"], r["state"]) == (130, True, "RUNNING")
    assert not [p for p in _posts(kfp_server) if p.startswith(f"{RUN_PATH}/")]


def test_wait_prints_the_run_summary_markdown_under_the_pipeline_root(kfp_server, tmp_path,
                                                                      capsys):
    root = tmp_path / "pipeline_root"
    run_id = kfp_server.add_run(display_name="local root", experiment_id="exp-0",
                                runtime_config={"pipeline_root": str(root)})
    summary = "## Run summary: 9 task(s) ran, 2 cached\n\n| task | this run |\n"
    # where the KFP v2 driver puts RunSummary's `summary` output
    out_dir = root / "deblur-icdpm" / run_id / "RunSummary"
    out_dir.mkdir(parents=True)
    (out_dir / "summary").write_text(summary)
    kfp_server.script_run(run_id, [("RUNNING", {"RunSummary": "RUNNING"}),
                                   ("SUCCEEDED", {"RunSummary": "SUCCEEDED"})])
    capsys.readouterr()
    assert _runs(kfp_server, "wait", run_id, "--poll", "0") == 0
    out = capsys.readouterr().out
    assert out.rstrip("\n").endswith(summary.rstrip("\n"))

    # a backend that adds a folder per execution: found below RunSummary/
    run2 = kfp_server.add_run(display_name="deeper", runtime_config={"pipeline_root": str(root)})
    deeper = root / "deblur-icdpm" / run2 / "RunSummary" / "42"
    deeper.mkdir(parents=True)
    (deeper / "summary").write_text("## Run summary: deeper\n")
    kfp_server.script_run(run2, [("SUCCEEDED", {"RunSummary": "SUCCEEDED"})])
    assert _runs(kfp_server, "wait", run2, "--poll", "0") == 0
    assert "## Run summary: deeper" in capsys.readouterr().out

    # none written: the run's outcome still decides, the summary is skipped in one line
    run3 = kfp_server.add_run(display_name="none", runtime_config={"pipeline_root": str(root)})
    kfp_server.script_run(run3, [("SUCCEEDED", {"RunSummary": "SUCCEEDED"})])
    assert _runs(kfp_server, "wait", run3, "--poll", "0") == 0
    captured = capsys.readouterr()
    assert "## Run summary" not in captured.out
    assert captured.err.strip() == (f"run summary not shown: no summary.md in "
                                    f"{root}/deblur-icdpm/{run3}, no summary under "
                                    f"{root}/deblur-icdpm/{run3}/RunSummary")

    # a failed run: the exit task RunEnd's failure summary, <run folder>/summary.md (also
    # where RunSummary writes on success), is printed, and the exit code is the outcome's
    from core import artifacts

    run4 = kfp_server.add_run(display_name="failed", runtime_config={"pipeline_root": str(root)})
    folder = root / "deblur-icdpm" / run4
    folder.mkdir(parents=True)
    failure = "## Run failed: DeblurEvaluator\n\nValueError: no test split\n"
    with open(artifacts.kfp_run_summary_path(str(folder)), "w") as f:
        f.write(failure)
    kfp_server.script_run(run4, [("FAILED", {"DeblurEvaluator": "FAILED"})])
    assert _runs(kfp_server, "wait", run4, "--poll", "0") == 1
    assert capsys.readouterr().out.rstrip("\n").endswith(failure.rstrip("\n"))


# ---- terminate, retry -----------------------------------------------------------------------
def test_terminate_asks_kfp_to_stop_the_run(kfp_server, package, capsys):
    run_id = _submit(kfp_server, package)
    kfp_server.script_run(run_id, [("RUNNING", {"Trainer": "RUNNING"})])
    capsys.readouterr()
    assert _runs(kfp_server, "terminate", run_id) == 0
    assert f"{RUN_PATH}/{run_id}:terminate" in _posts(kfp_server)
    assert capsys.readouterr().out.startswith(f"run {run_id}: CANCELING (terminate asked)")
    assert _runs(kfp_server, "wait", run_id, "--poll", "0") == 2
    # a run that has ended: the API's refusal, in one line
    done = _submit(kfp_server, package)
    kfp_server.script_run(done, [("SUCCEEDED", {})])
    _runs(kfp_server, "status", done)
    capsys.readouterr()
    assert _runs(kfp_server, "terminate", done) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Failed to terminate" in err[0]


def test_retry_a_failed_run_and_refuse_a_succeeded_one_before_asking(kfp_server, package,
                                                                      capsys):
    failed = _submit(kfp_server, package)
    kfp_server.script_run(failed, [("FAILED", {"Trainer": "FAILED"})])
    capsys.readouterr()
    assert _runs(kfp_server, "retry", failed) == 0
    assert _posts(kfp_server)[-1] == f"{RUN_PATH}/{failed}:retry"
    assert capsys.readouterr().out.startswith(f"run {failed}: RUNNING (retry asked)")

    ok = _submit(kfp_server, package)
    kfp_server.script_run(ok, [("SUCCEEDED", {})])
    capsys.readouterr()
    posts = len(_posts(kfp_server))
    assert _runs(kfp_server, "retry", ok) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"deblur: error: run {ok} is SUCCEEDED: only a FAILED or CANCELED run can "
                   f"be retried"]
    assert len(_posts(kfp_server)) == posts  # no request to retry


# ---- submit --wait --------------------------------------------------------------------------
@pytest.mark.parametrize("state, code", [("SUCCEEDED", 0), ("FAILED", 1)])
def test_submit_wait_follows_the_new_run_and_exits_by_its_outcome(kfp_server, package, capsys,
                                                                 state, code):
    kfp_server.script_next_run([("RUNNING", {"Trainer": "RUNNING"}),
                                (state, {"Trainer": state})])
    assert _deblur("submit", "--config", EXAMPLE, "--spec", package, "--host", kfp_server.url,
                   "--wait", "--poll", "0") == code
    run_id, = kfp_server.runs
    out = capsys.readouterr().out
    assert f"run {run_id} in KFP experiment deblur" in out
    assert f"Trainer  RUNNING -> {state}" in out and f"run {run_id}: {state}" in out
    assert len(_gets(kfp_server, run_id)) == 2


def test_submit_wait_with_a_schedule_is_refused_before_any_request(kfp_server, package, capsys):
    assert _deblur("submit", "--config", EXAMPLE, "--host", kfp_server.url,
                   "--schedule", "@daily", "--wait") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("deblur: error: --wait follows a run")
    assert _deblur("submit", "--config", EXAMPLE, "--spec", package, "--host", kfp_server.url,
                   "--wait", "--poll", "-1") == 2
    assert "not negative" in capsys.readouterr().err
    assert kfp_server.requests == []
