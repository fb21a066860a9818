"""run_fn for TFX's Trainer (GenericExecutor): the same train() the CLI calls.

The pipeline points Trainer(run_fn="trainer.tfx_trainer.run_fn") at this installed module
instead of a module_file, so nothing is packaged and pip-installed at run time.
custom_config carries {"experiment": name, "overrides": {section: {field: value}}} and, when
the Kubeflow placement (pipelines/placement.py) puts the Trainer on a TPU, "tpu": "local" (a TPU
VM: GKE TPU node pools, Vertex ct* machine types), "env" (Vertex AI cloud-tpu workers, whose
TPU TPUClusterResolver() finds through the TPU_CONFIG variable Vertex sets) or a TPU name.
"""
from __future__ import annotations

import logging
import posixpath

from tfx.components.trainer.fn_args_utils import FnArgs

from trainer import experiments, train

PROGRESS_LOGGER = "deblur.progress"


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
    tpu = cfg.get("tpu")
    if tpu:  # as `deblur train --tpu`: TPUStrategy, bfloat16 unless the overrides say otherwise
        overrides.setdefault("train", {})["tpu"] = tpu
        overrides["train"].setdefault("mixed_precision", "bfloat16")
    exp = experiments.get(cfg.get("experiment", "tiny"), **overrides)
    strategy = tpu_strategy_from_environment() if tpu == "env" else None
    total = exp.train.steps
    progress = logging.getLogger(PROGRESS_LOGGER)
    every = max(1, total // 10)
    last = [0]

    def on_step(step, row):  # about 10 lines a run; `deblur run-local` prints them
        if step - last[0] >= every or step == total:
            last[0] = step
            progress.info("Trainer: step %d/%d, loss %.4f, %.0f s", step, total, row["loss"],
                          row["seconds"])

    train.train(exp, examples_uri(fn_args.train_files), fn_args.model_run_dir,
                strategy=strategy, export_dir=fn_args.serving_model_dir, on_step=on_step)


def tpu_strategy_from_environment():
    """TPUClusterResolver() without a name resolves TPU_CONFIG / KUBE_GOOGLE_CLOUD_TPU_ENDPOINTS /
    TPU_NAME (train.make_strategy passes train.tpu as the name, and "env" is none)."""
    import tensorflow as tf

    resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)
