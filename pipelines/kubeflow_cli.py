"""`deblur compile` and `deblur submit` (deblur/cli.py adds these parsers and dispatches here)."""
from __future__ import annotations

import os
import sys

DEFAULT_OUT = "deblur-icdpm.json"  # = kubeflow_runner.DEFAULT_OUT (imported only when run)


def add_parsers(sub) -> None:
    s = sub.add_parser("compile",
                       help="compile the pipeline to a KFP v2 spec (KubeflowV2DagRunner)")
    s.add_argument("--config", default=None,
                   help="JSON or YAML config with a kubeflow section (infra/kubeflow.example.yaml)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config field, e.g. --set training.steps=1000 (repeatable)")
    s.add_argument("--out", default=DEFAULT_OUT,
                   help=f"PipelineJob JSON (default {DEFAULT_OUT}); the KFP package is written "
                        f"beside it as .yaml")

    s = sub.add_parser("submit",
                       help="start a run, or a recurring (cron) run, on Kubeflow Pipelines")
    s.add_argument("--config", default=None, help="JSON or YAML config with a kubeflow section")
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config field, e.g. --set training.steps=1000 (repeatable)")
    s.add_argument("--host", default=None, help="KFP API URL (default kubeflow.host), e.g. "
                                                "http://localhost:8080 after kubectl port-forward")
    s.add_argument("--schedule", default=None,
                   help="cron with 6 fields, seconds first (KFP's format), e.g. '0 0 3 * * 1' = "
                        "Mondays 03:00 UTC; or @daily, @every 24h")
    s.add_argument("--experiment", default=None,
                   help="KFP experiment (default kubeflow.experiment)")
    s.add_argument("--run-name", default=None)
    s.add_argument("--param", action="append", metavar="NAME=VALUE",
                   help="a run parameter for this run (repeatable), e.g. --param train_steps=5000 "
                        "--param gate_ood_lpips_max=0.25; names: pipelines/run_params.py")
    s.add_argument("--spec", default=None,
                   help="a compiled .json (or KFP .yaml package) to submit instead of compiling")


def _compile(cfg, out: str):
    from pipelines import kubeflow_runner as kr

    kr.kubeflow_config(cfg)  # one-line config errors first
    print(f"compiling {cfg.runner.pipeline_name} (TFX KubeflowV2DagRunner)...", file=sys.stderr)
    path = kr.compile_pipeline(cfg, out)
    entries = kr.describe(kr.load_job(path), cfg)
    print(f"{len(entries)} tasks:")
    print(kr.format_tasks(entries))
    unsupported = kr.unsupported_on_kfp(entries)
    if unsupported:
        print(f"warning: {', '.join(unsupported)}: resolver executors run on Vertex AI Pipelines, "
              f"not on the open-source KFP backend; there, set gate.baseline: registry "
              f"(pipelines/kubeflow_runner.py)", file=sys.stderr)
    print(f"pipeline spec: {os.path.abspath(path)}")
    print(f"KFP package:   {os.path.abspath(kr.package_path(path))}")
    return path


def run(args) -> int:
    from pipelines import config as config_lib
    from pipelines import kubeflow_runner as kr

    cfg = config_lib.load(args.config, args.set or ())
    if args.command == "compile":
        _compile(cfg, args.out)
        return 0
    from pipelines import run_params

    if args.schedule is not None:  # a bad cron fails before the minute of compiling
        kr.validate_cron(args.schedule)
    params = run_params.parse(args.param or (), list(run_params.BY_NAME))  # likewise
    spec = args.spec or _compile(cfg, DEFAULT_OUT)
    r = kr.submit(cfg, spec, args.host, schedule=args.schedule, experiment=args.experiment,
                  run_name=args.run_name, params=params)
    if r["kind"] == "recurring_run":
        print(f"recurring run {r['id']} ({r['schedule']}) in experiment {r['experiment']}")
    else:
        print(f"run {r['id']} in experiment {r['experiment']}")
    print(f"  {r['url']}")
    if params:
        print("  parameters: " + ", ".join(f"{k}={r['parameters'][k]}" for k in params))
    return 0
