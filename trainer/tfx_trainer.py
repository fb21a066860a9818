"""run_fn for TFX's Trainer (GenericExecutor): the same train() the CLI calls.

The pipeline points Trainer(run_fn="trainer.tfx_trainer.run_fn") at this installed module
instead of a module_file, so nothing is packaged and pip-installed at run time.
custom_config carries {"experiment": name, "overrides": {section: {field: value}}}.
"""
from __future__ import annotations

import posixpath

from tfx.components.trainer.fn_args_utils import FnArgs

from trainer import experiments, train


def examples_uri(train_files) -> str:
    """<examples uri>/Split-<split>/* -> <examples uri>."""
    if not train_files:
        raise ValueError("the Trainer received no train files")
    return posixpath.dirname(posixpath.dirname(train_files[0].rstrip("/")))


def run_fn(fn_args: FnArgs) -> None:
    cfg = dict(fn_args.custom_config or {})
    overrides = {k: dict(v) for k, v in (cfg.get("overrides") or {}).items()}
    if fn_args.train_steps:
        overrides.setdefault("train", {})["steps"] = int(fn_args.train_steps)
    exp = experiments.get(cfg.get("experiment", "tiny"), **overrides)
    train.train(exp, examples_uri(fn_args.train_files), fn_args.model_run_dir,
                export_dir=fn_args.serving_model_dir)
