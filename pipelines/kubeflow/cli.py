"""`deblur compile`, `deblur pipeline upload|release|versions`, `deblur submit` and `deblur
schedule list|pause|resume|delete` (deblur/cli.py adds these parsers and dispatches here)."""
from __future__ import annotations

import argparse
import os
import sys

DEFAULT_OUT = "deblur-icdpm.json"  # = runner.DEFAULT_OUT (imported only when run)


def add_parsers(sub) -> None:
    s = sub.add_parser("compile",
                       help="compile the pipeline to a KFP v2 spec (KubeflowV2DagRunner)")
    s.add_argument("--config", default=None,
                   help="JSON or YAML config with a kubeflow section (infra/kubeflow.example.yaml)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config field, e.g. --set training.train.steps=1000 "
                        "(repeatable)")
    s.add_argument("--out", default=DEFAULT_OUT,
                   help=f"PipelineJob JSON (default {DEFAULT_OUT}); the KFP package is written "
                        f"beside it as .yaml")
    s.add_argument("--keep-tags", action="store_true",
                   help="write the images as the config names them (no registry needed; upload "
                        "and submit pin them when they send the package). Default: every image "
                        "by digest, resolved through its registry now")

    s = sub.add_parser("submit",
                       help="start a run, or a recurring (cron) run, on Kubeflow Pipelines")
    s.add_argument("--config", default=None, help="JSON or YAML config with a kubeflow section")
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config field, e.g. --set training.train.steps=1000 "
                        "(repeatable)")
    s.add_argument("--host", default=None, help="KFP API URL (default kubeflow.host), e.g. "
                                                "http://localhost:8080 after kubectl port-forward")
    s.add_argument("--schedule", default=None,
                   help="cron with 6 fields, seconds first (KFP's format), e.g. '0 0 3 * * 1' = "
                        "Mondays 03:00 UTC; or @daily, @every 24h")
    s.add_argument("--kfp-experiment", default=None,
                   help="the KFP experiment to file the run under (default "
                        "kubeflow.kfp_experiment)")
    s.add_argument("--experiment", default=None, help=argparse.SUPPRESS)  # old_flags()
    s.add_argument("--run-name", default=None)
    s.add_argument("--param", action="append", metavar="NAME=VALUE",
                   help="a run parameter for this run (repeatable), e.g. --param train_steps=5000 "
                        "--param gate_ood_lpips_max=0.25; names: pipelines/run_params.py")
    s.add_argument("--spec", default=None,
                   help="a compiled .json (or KFP .yaml package) to submit instead of compiling")
    s.add_argument("--no-cache", action="store_true",
                   help="this run computes everything again (the run parameter cache=off)")
    s.add_argument("--pin-version", action="store_true",
                   help="with --schedule: run today's newest release for ever (default: the "
                        "newest release at each run, KFP backend >= 2.5.0)")
    s.add_argument("--version-name", default=None,
                   help="a run: the dev version's name (default <project version>-<git "
                        "commit>-<package hash>); with --schedule: pin the release of that name")
    _add_wait_arguments(s)

    s = sub.add_parser("pipeline", help="versions of the pipeline in Kubeflow Pipelines: "
                                        "experiments (dev) and releases")
    psub = s.add_subparsers(dest="pipeline_command", required=True)
    u = psub.add_parser("upload", help="upload the package as a new version of the dev "
                                       "pipeline (kubeflow.dev_pipeline; created when missing)")
    r = psub.add_parser("release", help="release a clean commit: a dev version by name, or "
                                        "this checkout; its newest release is what following "
                                        "schedules run next")
    r.add_argument("version", nargs="?", default=None, metavar="DEV_VERSION",
                   help="a version of the dev pipeline to release as it is (default: compile "
                        "this checkout, which must have no uncommitted changes)")
    v = psub.add_parser("versions", help="list the release and dev versions and what protects "
                                         "them; prune old ones")
    v.add_argument("--keep", type=int, default=None, metavar="N",
                   help="mark the versions after each pipeline's N newest for deletion (never "
                        "the newest release or a version a schedule pins)")
    v.add_argument("--delete", action="store_true",
                   help="with --keep: delete them (without it: a dry run)")
    v.add_argument("--json", action="store_true")
    for x in (u, r, v):
        x.add_argument("--config", default=None,
                       help="JSON or YAML config with a kubeflow section")
        x.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a config field (repeatable)")
        x.add_argument("--host", default=None, help="KFP API URL (default kubeflow.host)")
    for x in (u, r):
        x.add_argument("--spec", default=None,
                       help="a compiled .json (or KFP .yaml package) instead of compiling")
    u.add_argument("--version-name", default=None,
                   help="the version's name (default <project version>-<git commit>-"
                        "<package hash>)")

    s = sub.add_parser("schedule", help="list, pause, resume or delete recurring runs")
    s.add_argument("action", choices=("list", "pause", "resume", "delete"))
    s.add_argument("ids", nargs="*", metavar="RECURRING_RUN_ID")
    s.add_argument("--config", default=None, help="JSON or YAML config with a kubeflow section")
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config field (repeatable)")
    s.add_argument("--host", default=None, help="KFP API URL (default kubeflow.host)")
    s.add_argument("--kfp-experiment", default=None,
                   help="list this KFP experiment's schedules (default kubeflow.kfp_experiment)")
    s.add_argument("--experiment", default=None, help=argparse.SUPPRESS)  # old_flags()
    s.add_argument("--all", action="store_true",
                   help="list the schedules of every KFP experiment")
    s.add_argument("--json", action="store_true")

    _add_runs_parser(sub)


def _compile(cfg, out: str, keep_tags: bool = False):
    from pipelines.kubeflow import compiler as kc

    kc.kubeflow_config(cfg)  # one-line config errors first
    print(f"compiling {cfg.runner.pipeline_name} (TFX KubeflowV2DagRunner)...", file=sys.stderr)
    path = kc.compile_pipeline(cfg, out)
    entries = kc.describe(kc.load_job(path), cfg)
    print(f"{len(entries)} tasks:")
    print(kc.format_tasks(entries))
    unsupported = kc.unsupported_on_kfp(entries)
    if unsupported:
        print(f"warning: {', '.join(unsupported)}: resolver executors run on Vertex AI Pipelines, "
              f"not on the open-source KFP backend; there, set gate.baseline: registry "
              f"(pipelines/kubeflow/compiler.py)", file=sys.stderr)
    from pipelines.kubeflow import images

    if not keep_tags:
        for tag, digest in kc.pin_compiled(cfg, path).items():
            print(f"image {tag} -> {digest}", file=sys.stderr)
    tagged = images.tag_images(kc.load_job(path)["pipelineSpec"])
    if tagged:  # --keep-tags: no registry asked; the version is what must not move
        print(f"note: {len(tagged)} image(s) named by tag ({', '.join(tagged)}); `deblur "
              f"pipeline upload` and `deblur submit` send them by digest, resolved then "
              f"(pipelines/kubeflow/images.py)", file=sys.stderr)
    print(f"pipeline spec: {os.path.abspath(path)}")
    print(f"KFP package:   {os.path.abspath(kc.package_path(path))}")
    return path


def old_flags(args) -> None:
    """`--experiment` was the KFP experiment here and is the training preset in `deblur train`
    (training.experiment): one spelling per knob, so the KFP one is --kfp-experiment."""
    if getattr(args, "experiment", None) is not None:
        from pipelines.config import ConfigError

        raise ConfigError(f"--experiment {args.experiment}: the KFP experiment is "
                          f"--kfp-experiment {args.experiment} (kubeflow.kfp_experiment); "
                          f"--experiment is the training preset of deblur train, "
                          f"training.experiment in the config")


def run(args) -> int:
    from pipelines import config as config_lib
    from pipelines.kubeflow import client as kclient, cron as kcron
    from pipelines.kubeflow.config import kubeflow_section

    old_flags(args)
    cfg = config_lib.load(args.config, args.set or ())
    kubeflow_section(cfg)  # a typo in the kubeflow section: one line, before any request
    if args.command == "compile":
        _compile(cfg, args.out, keep_tags=args.keep_tags)
        return 0
    if args.command == "schedule":
        return _schedule(cfg, args)
    if args.command == "runs":
        return _runs(cfg, args)
    if args.command == "pipeline":
        return _pipeline(cfg, args)
    from pipelines import run_params

    if args.schedule is not None:  # a bad cron fails before the minute of compiling
        kcron.validate_cron(args.schedule)
    if args.schedule is not None and args.spec:
        raise config_lib.ConfigError("--spec with --schedule: a schedule runs a release, "
                                     "already uploaded (deblur pipeline release)")
    if args.pin_version and args.schedule is None:
        raise config_lib.ConfigError("--pin-version is for --schedule (a run always runs the "
                                     "version it names)")
    _check_wait(args)
    params = run_params.parse(args.param or (), list(run_params.BY_NAME))  # likewise
    # a schedule runs a release, already compiled and uploaded: nothing to compile here
    spec = None if args.schedule is not None else (args.spec or _compile(cfg, DEFAULT_OUT))
    r = kclient.submit(cfg, spec, args.host, schedule=args.schedule, experiment=args.kfp_experiment,
                  run_name=args.run_name, params=params, no_cache=args.no_cache,
                  pin_version=args.pin_version, version=args.version_name)
    ver = r["pipeline_version"]
    if r["kind"] == "recurring_run":
        follows = (f"the newest release of {ver['pipeline']} at each run (next: "
                   f"{ver['version_name']})" if r["follows"] == "newest"
                   else f"release {ver['version_name']} of {ver['pipeline']}")
        print(f"recurring run {r['id']} ({r['schedule']}) in KFP experiment {r['experiment']}: "
              f"{r['name']}; runs {follows}")
    else:
        print(f"pipeline {ver['pipeline']} version {ver['version_name']}"
              f" ({'uploaded' if ver['created'] else 'already there'})")
        print(f"run {r['id']} in KFP experiment {r['experiment']}: {r['name']}")
    print(f"  {r['url']}")
    shown = {k: r["parameters"][k] for k in list(params) + (
        [run_params.CACHE] if args.no_cache else []) if k in r["parameters"]}
    if shown:
        print("  parameters: " + ", ".join(f"{k}={v}" for k, v in shown.items()))
    if args.wait:
        return _wait_after_submit(cfg, args, r)
    return 0


def _pipeline(cfg, args) -> int:
    import json

    from pipelines.kubeflow import client as kclient

    if args.pipeline_command == "versions":
        r = kclient.versions(cfg, args.host, keep=args.keep, delete=args.delete)
        if args.json:
            print(json.dumps(r, indent=2, sort_keys=True, default=str))
            return 0
        if not r["versions"]:
            print(f"no versions of {kclient.release_pipeline(cfg)} or "
                  f"{kclient.dev_pipeline(cfg)}")
        for row in r["versions"]:
            mark = ("deleted" if row["version_id"] in r["deleted"]
                    else "delete " if row["action"] == "delete" else "       ")
            print(f"{mark} {row['pipeline']:24s} {row['version_name']:40s} {row['created_at']}"
                  + (f"  [{row['protected']}]" if row["protected"] else ""))
        marked = sum(row["action"] == "delete" for row in r["versions"])
        if marked and not args.delete:
            print(f"{marked} version(s) would be deleted: add --delete")
        return 0
    if args.pipeline_command == "release":
        spec = None if args.version else (args.spec or _compile(cfg, DEFAULT_OUT))
        r = kclient.release(cfg, args.host, spec_file=spec, version=args.version)
    else:
        spec = args.spec or _compile(cfg, DEFAULT_OUT)
        r = kclient.upload(cfg, spec, args.host, version=args.version_name)
    what = "uploaded" if r["created"] else "already there (same package)"
    print(f"pipeline {r['pipeline']} version {r['version_name']}: {what}")
    if args.pipeline_command == "release":
        print(f"  the newest release: schedules that follow {r['pipeline']} run it next")
    print(f"  {r['url']}")
    return 0


def _schedule(cfg, args) -> int:
    import json

    from pipelines.kubeflow import client as kclient

    r = kclient.schedules(cfg, args.host, args.action, args.ids, experiment=args.kfp_experiment,
                     all_experiments=args.all)
    if args.json:
        print(json.dumps(r, indent=2, sort_keys=True, default=str))
        return 0
    if args.action == "delete":
        for rid in r["ids"]:
            print(f"deleted recurring run {rid}")
        return 0
    rows = r["schedules"]
    if args.action == "list" and not rows:
        where = "any KFP experiment" if args.all else f"KFP experiment {r['experiment']}"
        print(f"no recurring runs in {where}")
        return 0
    for s in rows:
        state = {"ENABLED": "enabled", "DISABLED": "paused"}.get(str(s["status"]), s["status"])
        print(f"{s['id']}  {state:8s} {s['schedule']}  {s['name']}")
        how = {"pinned": "pinned", "newest": "the newest, today"}.get(s["follows"], s["follows"])
        print(f"    next run: {s['pipeline'] or '-'} {s['version']} ({how})"
              + (f"; parameters: {', '.join(f'{k}={v}' for k, v in sorted(s['parameters'].items()))}"
                 if s["parameters"] else ""))
    return 0


# ---- deblur runs, deblur submit --wait (pipelines/kubeflow/runs.py) ---------------------------
WAIT_EXITS = ("exit code: 0 the run SUCCEEDED, 1 it FAILED, 2 it was CANCELED (or is "
              "CANCELING), 3 --timeout passed first, 4 the KFP API could not be asked (the "
              "outcome is unknown); Ctrl-C stops the waiting (130), not the run")
EXIT_API_LOST = 4  # not 2, the usage errors' code: CANCELED is 2 here


def _add_wait_arguments(s) -> None:
    s.add_argument("--wait", action="store_true",
                   help="follow the run until it ends and exit by its outcome (as deblur runs "
                        "wait; not with --schedule)")
    s.add_argument("--poll", type=float, default=15, metavar="SECONDS",
                   help="with --wait: seconds between two looks at the run (default 15)")
    s.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="with --wait: stop waiting after this long (exit code 3)")


def _add_runs_parser(sub) -> None:
    s = sub.add_parser("runs", help="list, follow, terminate or retry the KFP runs")
    rsub = s.add_subparsers(dest="runs_command", required=True)

    def common(p):
        p.add_argument("--config", default=None,
                       help="JSON or YAML config with a kubeflow section")
        p.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a config field (repeatable)")
        p.add_argument("--host", default=None, help="KFP API URL (default kubeflow.host)")
        return p

    p = common(rsub.add_parser("list", help="the runs of the KFP experiment, or of one "
                                            "recurring run, newest first"))
    p.add_argument("--schedule", default=None, metavar="RECURRING_RUN_ID",
                   help="the runs this recurring run started (deblur schedule list shows ids)")
    p.add_argument("--kfp-experiment", default=None,
                   help="list this KFP experiment's runs (default kubeflow.kfp_experiment)")
    p.add_argument("--all", action="store_true", help="the runs of every KFP experiment")
    p.add_argument("--limit", type=int, default=20,
                   help="at most this many runs, the newest (default 20; 0: all)")
    p.add_argument("--json", action="store_true")
    p = common(rsub.add_parser("status", help="the run's state, its tasks, and why it failed"))
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--json", action="store_true")
    p = common(rsub.add_parser(
        "wait", help="follow a run until it ends: each task's state change, then the tasks and "
                     "the run summary", epilog=WAIT_EXITS))
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--poll", type=float, default=15, metavar="SECONDS",
                   help="seconds between two looks at the run (default 15)")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="stop waiting after this long (exit code 3; the run goes on)")
    p.add_argument("--json", action="store_true", help="the final status as JSON")
    p = common(rsub.add_parser("terminate", help="stop a run (KFP cancels its running tasks)"))
    p.add_argument("run_id", metavar="RUN_ID")
    p = common(rsub.add_parser("retry", help="run a FAILED or CANCELED run again from the tasks "
                                             "that did not succeed"))
    p.add_argument("run_id", metavar="RUN_ID")


def _check_wait(args) -> None:
    """--wait follows one run: refused with --schedule, and its seconds checked, before
    compiling and submitting."""
    from pipelines.config import ConfigError

    if not getattr(args, "wait", False):
        return
    if args.schedule is not None:
        raise ConfigError("--wait follows a run; a --schedule starts runs later (deblur runs "
                          "list --schedule ID shows them, deblur runs wait RUN_ID follows one)")
    if args.poll < 0 or (args.timeout is not None and args.timeout < 0):
        raise ConfigError("--poll and --timeout are seconds, not negative")


def _print_tasks(rows) -> None:
    if not rows:
        print("  (no tasks reported by the API yet)")
        return
    width = max(len("task"), *(len(str(r["name"])) for r in rows))
    print(f"  {'task':{width}s}  {'state':10s} {'started':19s}  finished")
    for r in rows:
        print(f"  {str(r['name']):{width}s}  {str(r['state'] or '-'):10s} "
              f"{r['started'] or '-':19s}  {r['finished'] or '-'}")


def _print_change(at, task, old, new) -> None:
    print(f"{at}  {task}  {old or '-'} -> {new}", flush=True)


def _print_end(r, timeout=None) -> int:
    """The end of a wait: the run, its tasks, why it failed, its summary; the exit code."""
    if r["interrupted"]:
        print(f"stopped waiting: run {r['id']} goes on ({r['state']}); deblur runs terminate "
              f"{r['id']} stops it", file=sys.stderr)
        return r["exit_code"]
    if r["timed_out"]:
        print(f"run {r['id']}: still {r['state']} after --timeout {timeout:g} s (it goes on; "
              f"deblur runs wait {r['id']} follows it again)")
    else:
        print(f"run {r['id']}: {r['state']}" + (f" at {r['finished']}" if r["finished"] else ""))
    _print_tasks(r["tasks"])
    if r["failure"]:
        print(f"  failed: {r['failure']}")
    print(f"  {r['url']}")
    if r["summary"]:
        print()
        print(r["summary"].rstrip("\n"))
    elif r["summary_note"]:
        print(f"run summary not shown: {r['summary_note']}", file=sys.stderr)
    return r["exit_code"]


def _wait(cfg, host, run_id, poll, timeout, report):
    """runs.wait, or None after printing why the API could not be asked (EXIT_API_LOST)."""
    from pipelines.kubeflow import runs
    from pipelines.kubeflow.client import SubmitError

    try:
        return runs.wait(cfg, host, run_id, poll=poll, timeout=timeout, report=report)
    except SubmitError as e:
        print(f"deblur: error: {e} (run {run_id}: outcome unknown)", file=sys.stderr)
        return None


def _wait_after_submit(cfg, args, submitted) -> int:
    r = _wait(cfg, submitted["host"], submitted["id"], args.poll, args.timeout, _print_change)
    return EXIT_API_LOST if r is None else _print_end(r, args.timeout)


def _runs(cfg, args) -> int:
    from pipelines.kubeflow import runs

    cmd = args.runs_command
    if cmd == "list":
        r = runs.list_runs(cfg, args.host, schedule=args.schedule,
                           experiment=args.kfp_experiment, all_experiments=args.all,
                           limit=args.limit)
        if args.json:
            print(runs.as_json(r))
            return 0
        if not r["runs"]:
            where = (f"of recurring run {args.schedule}" if args.schedule else
                     "in any KFP experiment" if args.all else
                     f"in KFP experiment {r['experiment']}")
            print(f"no runs {where}")
            return 0
        for x in r["runs"]:
            print(f"{x['id']}  {str(x['state']):10s} {x['created'] or '-'}  "
                  f"{x['version'] or '-'}  {x['name']}")
        return 0
    if cmd == "status":
        r = runs.status(cfg, args.host, args.run_id)
        if args.json:
            print(runs.as_json(r))
            return 0
        print(f"run {r['id']}: {r['state']}  {r['name']}")
        print(f"  created {r['created'] or '-'}, finished {r['finished'] or '-'}; "
              f"version {r['version'] or '-'}")
        _print_tasks(r["tasks"])
        if r["failure"]:
            print(f"  failed: {r['failure']}")
        print(f"  {r['url']}")
        return 0
    if cmd == "wait":
        r = _wait(cfg, args.host, args.run_id, args.poll, args.timeout,
                  (lambda *a: None) if args.json else _print_change)
        if r is None:
            return EXIT_API_LOST
        if args.json:
            print(runs.as_json(r))
            return r["exit_code"]
        return _print_end(r, args.timeout)
    r = (runs.terminate if cmd == "terminate" else runs.retry)(cfg, args.host, args.run_id)
    print(f"run {r['id']}: {r['state']} ({cmd} asked)"
          + (f"; deblur runs wait {r['id']} follows it" if r["state"] not in (
              "SUCCEEDED", "FAILED", "CANCELED") else ""))
    return 0
