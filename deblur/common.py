"""What every command of `deblur` shares: the exit codes, the one-line user error, and the
checks and argument types several command groups use (deblur/commands/)."""
from __future__ import annotations

import argparse
import os

EXIT_USAGE = 2  # bad arguments / inputs
EXIT_FAILED = 1  # the work ran and its result is not acceptable
EXIT_TERMINATED = 143  # SIGTERM ended the work (128 + 15, as a process killed by it)


class UserError(Exception):
    """A mistake the user can fix; printed as one line."""


def check_writable(path: str, flag: str) -> None:
    """A local output folder must be a folder (or creatable) in a place we may write: said in
    one line, before Beam or TensorFlow print a page of traceback about it."""
    if "://" in path:
        return
    full = os.path.abspath(path)
    if os.path.exists(full) and not os.path.isdir(full):
        raise UserError(f"{flag} {path} is a file, not a folder")
    probe = full
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise UserError(f"{flag} {path}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: no permission to write in {probe}")


def size_arg(text: str):
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 256x256, got {text!r}")
    return h, w


# Each orchestrator's check of its own section of the pipeline config, which pipelines/config.py
# keeps as plain data: adding an orchestrator (a folder under pipelines/) adds its line here.
ORCHESTRATOR_SECTIONS = ("pipelines.kubeflow.config:kubeflow_section",)


def load_config(args, extra_overrides=()):
    """The pipeline config of --config and --set (then `extra_overrides`), every orchestrator's
    section checked too: a typo in `kubeflow:` fails `deblur run-local` as it fails `deblur
    compile`, before any work."""
    import importlib

    from pipelines import config as config_lib

    cfg = config_lib.load(args.config, [*(args.set or ()), *extra_overrides])
    for entry in ORCHESTRATOR_SECTIONS:
        module, _, name = entry.partition(":")
        getattr(importlib.import_module(module), name)(cfg)
    return cfg


def config_arguments(parser: argparse.ArgumentParser, text: str) -> argparse.ArgumentParser:
    parser.add_argument("--config", default=None, help=text)
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override a config field, e.g. --set training.train.steps=300 "
                             "(repeatable)")
    return parser
