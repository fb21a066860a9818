"""`deblur run-local` (LocalDagRunner) and the Kubeflow commands (pipelines/kubeflow/cli.py)."""
from __future__ import annotations

import logging
import sys
import time

from deblur.common import UserError, check_writable, config_arguments, load_config



class _ComponentProgress(logging.Filter):
    """Lets LocalDagRunner's 'Component X is running/finished' lines through as progress."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if (msg.startswith("Component ") and msg.endswith(("is running.", "is finished."))) \
                or record.name == "deblur.progress":
            print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
            return False
        if "property_predicate is not supported" in msg:
            # TFX's channel resolver, on the Resolver's channels; LatestBlessedModelStrategy
            # checks `blessed` itself, so nothing is lost: not the user's concern
            return False
        return record.levelno >= logging.WARNING


def cmd_run_local(args) -> int:
    from pipelines import run_params

    t0 = time.time()  # the wall time the summary reports: data, pipeline, summary
    # --param NAME=VALUE: the Kubeflow run parameters' names, each the --set of its field
    params = run_params.parse(args.param or (), list(run_params.BY_NAME))
    cfg = load_config(args, run_params.as_overrides(params))
    if args.work_dir:
        cfg.runner.work_dir = args.work_dir
    cfg.training.build_experiment()  # the whole config is valid before anything runs
    check_writable(cfg.runner.work_dir, "runner.work_dir")
    from pipelines import local_runner, summary

    # LocalDagRunner's "Component X is running/finished" lines, as progress
    logging.getLogger().addFilter(_ComponentProgress())
    for h in logging.getLogger().handlers:
        h.addFilter(_ComponentProgress())
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("tensorflow").setLevel(logging.WARNING)  # "Assets written to ..."
    try:
        s, out = local_runner.run_local(cfg, started=t0)
    except local_runner.LocalRunError as e:
        raise UserError(str(e)) from None
    finally:
        logging.getLogger().setLevel(logging.WARNING)
    print(summary.format_summary(s))
    print(f"summary written to {out}")
    return 0


def _kubeflow(args) -> int:
    from pipelines.kubeflow import cli as kubeflow_cli

    return kubeflow_cli.run(args)


def add_parsers(sub) -> None:
    """run-local, and compile, submit, pipeline, schedule, runs."""
    s = sub.add_parser("run-local", help="the whole pipeline with LocalDagRunner + SQLite MLMD")
    config_arguments(s, "JSON or YAML config (pipelines/config.py)")
    s.add_argument("--work-dir", default=None, help="overrides runner.work_dir")
    s.add_argument("--param", action="append", metavar="NAME=VALUE",
                   help="a run parameter, named as on Kubeflow (pipelines/run_params.py), e.g. "
                        "--param train_steps=300 (repeatable)")

    from pipelines.kubeflow import cli as kubeflow_cli

    kubeflow_cli.add_parsers(sub)  # compile, submit, pipeline upload|release|versions, schedule, runs


COMMANDS = {"run-local": cmd_run_local, "compile": _kubeflow, "submit": _kubeflow, "pipeline": _kubeflow, "schedule": _kubeflow, "runs": _kubeflow}
