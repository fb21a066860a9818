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


def _compile(cfg, out: str):
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

    tagged = images.tag_images(kc.load_job(path)["pipelineSpec"])
    if tagged:  # compile needs no registry; the version is what must not move
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

    old_flags(args)
    cfg = config_lib.load(args.config, args.set or ())
    if args.command == "compile":
        _compile(cfg, args.out)
        return 0
    if args.command == "schedule":
        return _schedule(cfg, args)
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
