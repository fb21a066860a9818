"""The pipeline's Trainer run_fn (TFX's GenericExecutor): the same trainer.train.train() the CLI
calls, with the warm start's parent found by the gate's own lookup of the latest blessed model
(components/latest_blessed.py):

- registry (open-source KFP, which cannot run Resolver nodes; or gate.baseline: registry): its
  newest whole version, which only ever holds blessed models (latest_blessed.in_registry: a
  gs:// version is downloaded and checked against its manifest, a damaged one skipped);
- ML Metadata (locally): what the evaluator's Resolver hands the gate, TFX's
  LatestBlessedModelStrategy over this pipeline's Models and ModelBlessings
  (latest_blessed.in_metadata).

The parent is looked up when the Trainer executes, never in the pipeline definition: it is not
part of the Trainer's cache key, so a run on unchanged data reuses the cached training even
after that training's own model was blessed (the next changed data warm-starts from it).

custom_config["warm_start_source"]: {"registry_uri", "model_name"} or {"metadata_path",
"pipeline_name", "registry_uri", "model_name"} (pipelines/pipeline.py writes it).

The pipeline points Trainer(run_fn="components.training.run_fn") at this installed module
instead of a module_file, so nothing is packaged and pip-installed at run time. custom_config
also carries {"experiment": name, "overrides": {section: {field: value}}} (the config's
training.model/diffusion/data/train less train.steps, which comes as train_args.num_steps, the
train_steps run parameter's target: pipelines/pipeline.py trainer_overrides) and, when the
Kubeflow placement (pipelines/kubeflow/placement.py) puts the Trainer on a TPU, "tpu": "local"
(a TPU VM: GKE TPU node pools, Vertex ct* machine types), "env" (Vertex AI cloud-tpu workers,
whose TPU TPUClusterResolver() finds through the TPU_CONFIG variable Vertex sets) or a TPU
name. trainer/ itself imports no TFX.
"""
from __future__ import annotations

import logging
import posixpath
from typing import Any, Dict, Optional

from tfx.components.trainer.fn_args_utils import FnArgs

from core.artifacts import CHECKPOINTS_DIR, SUMMARY_FILE, TRAININGS_DIR
from trainer import experiments, train, warm_start
from trainer.warm_start import Parent

log = logging.getLogger(__name__)
PROGRESS_LOGGER = "deblur.progress"


def run_fn(fn_args) -> None:
    source = dict((fn_args.custom_config or {}).get("warm_start_source") or {})
    mode = (fn_args.custom_config or {}).get("warm_start") or "none"
    if warm_start.is_ref(mode):  # @production, deblur-icdpm@staging, deblur-icdpm/3
        train_from_fn_args(fn_args, find_parent=lambda: from_registry_ref(source, mode))
    else:
        train_from_fn_args(fn_args, find_parent=lambda: latest_blessed(source))


def from_registry_ref(source: Dict[str, Any], ref: str) -> Parent:
    """The version a registry ref names (an alias: complete, intact, blessed), as a parent;
    one line naming the ref when it names none."""
    from components.registry.aliases import resolve_ref
    from components.registry.registry import RegistryError

    if not source.get("registry_uri"):
        raise ValueError(f"training.warm_start {ref}: no registry to look in")
    try:
        resolved = resolve_ref(source["registry_uri"], ref,
                               default_model=source.get("model_name") or "deblur-icdpm")
    except RegistryError as e:
        raise warm_start.WarmStartError(f"training.warm_start {ref}: {e}") from None
    reg, version = resolved.registry, resolved.version
    named = f"{reg.model_name}@{resolved.alias}, " if resolved.alias else ""
    model_source = resolved.manifest.get("source")
    return Parent(saved_model_dir=resolved.path,
                  name=f"registry version {version} ({named}{ref})", version=version,
                  model_uri=model_source.get("model_uri") if isinstance(model_source, dict)
                  else None)


def examples_uri(train_files) -> str:
    """<examples uri>/Split-<split>/* -> <examples uri>."""
    if not train_files:
        raise ValueError("the Trainer received no train files")
    return posixpath.dirname(posixpath.dirname(train_files[0].rstrip("/")))


def train_from_fn_args(fn_args: FnArgs, find_parent=None) -> None:
    """custom_config["warm_start"]: "none" or "latest_blessed" (trainer/warm_start.py);
    find_parent() returns the latest blessed model (a warm_start.Parent) or None: run_fn
    passes one that looks in the registry or ML Metadata. train.steps is train_args.num_steps
    (fn_args.train_steps: create_pipeline's experiment's train.steps, or the train_steps run
    parameter), the steps to train beyond the parent's step; warm_start.prepare sets up the
    rest, as for `deblur train --warm-start`."""
    cfg = dict(fn_args.custom_config or {})
    overrides = {k: dict(v) for k, v in (cfg.get("overrides") or {}).items()}
    if fn_args.train_steps:
        overrides.setdefault("train", {})["steps"] = int(fn_args.train_steps)
    tpu = cfg.get("tpu")
    if tpu:  # as `deblur train --tpu`: TPUStrategy, bfloat16 unless the overrides say otherwise
        overrides.setdefault("train", {})["tpu"] = tpu
        overrides["train"].setdefault("mixed_precision", "bfloat16")
    if not cfg.get("experiment"):
        raise ValueError("the Trainer's custom_config names no experiment (create_pipeline "
                         "passes training.experiment): no experiment to fall back to")
    exp = experiments.get(cfg["experiment"], **overrides)
    strategy = tpu_strategy_from_environment() if tpu == "env" else None
    examples = examples_uri(fn_args.train_files)
    chief = train.is_chief_task()
    progress = logging.getLogger(PROGRESS_LOGGER)
    # the parent is decided first (it is part of the training's identity, so of its folder);
    # every worker makes the same decision (the same registry). Only the chief writes it, into
    # the training's checkpoint folder, outside this execution's output: a failed execution's
    # output is deleted (TFX's launcher), the checkpoints must survive it
    prepared = warm_start.prepare(
        exp, lambda planned: training_dir(exp, examples, fn_args.model_run_dir, planned),
        mode=cfg.get("warm_start") or "none", find_parent=find_parent,
        base_model=(cfg.get("warm_start_source") or {}).get("base_model") or "none",
        write=chief)
    work, record = prepared.out_dir, prepared.record
    if tf_gfile().exists(posixpath.join(work, CHECKPOINTS_DIR)):
        progress.info("Trainer: resuming the interrupted training in %s (same data, experiment "
                      "and warm start)", work)
    else:
        progress.info("Trainer: checkpoints in %s until the training is done", work)
    if record["parent"]:
        progress.info(
            "Trainer: warm start from %s (step %d), %d more steps", record["parent"]["name"],
            record["start_step"], record["steps"])
    exp, warm = prepared.exp, prepared.train_kwargs
    total, first = exp.train.steps, record["start_step"]
    every = max(1, (total - first) // 10)
    last = [first]

    def on_step(step, row):  # about 10 lines a run; `deblur run-local` prints them
        if step - last[0] >= every or step == total:
            last[0] = step
            progress.info("Trainer: step %d/%d, loss %.4f, %.0f s", step, total, row["loss"],
                          row["seconds"])

    # Multi-worker (TF_CONFIG, e.g. Vertex AI worker pools: every replica runs this executor
    # with the same artifact URIs): the chief alone records and moves the files; train()
    # returns on every worker once the chief has exported, so TFX's check for the export
    # passes on all
    train.train(exp, examples, work,
                strategy=strategy, export_dir=fn_args.serving_model_dir, on_step=on_step, **warm)
    if chief:
        training_finished(work, fn_args.model_run_dir)


def checkpoint_root(model_run_dir: str) -> str:
    """Where trainings keep their checkpoints until they finish: <the pipeline's folder>/
    Trainer/checkpoints, the pipeline's folder being three levels above the ModelRun (TFX's
    LocalDagRunner: <pipeline root>/Trainer/model_run/<execution>, so the pipeline root;
    KFP: <pipeline root>/<pipeline>/<run id>/Trainer/model_run, so <pipeline root>/<pipeline>,
    shared by every run and every retry of a task). Never inside the execution's output."""
    path = model_run_dir.rstrip("/")
    for _ in range(3):
        up = posixpath.dirname(path)
        if up in ("", "/") or up.endswith(":") or up.endswith(":/"):  # gs://b/x: stop at gs://b
            break
        path = up
    return posixpath.join(path, "Trainer", TRAININGS_DIR)


def training_dir(exp, examples_dir: str, model_run_dir: str, record: dict) -> str:
    """The training's own folder, <checkpoint_root>/<key>: it trains there (checkpoints,
    history, TensorBoard, warm_start.json, resumed.json) and training_finished moves it into
    the ModelRun. Key: the ingest fingerprint of the examples (their folder when the summary
    has none), the experiment and the warm-start parent, so a rerun of the same training
    (after SIGTERM, SIGKILL, a crash, a lost pod) finds its checkpoints and resumes, and any
    other training starts afresh."""
    import hashlib
    import json

    gfile = tf_gfile()
    fingerprint = None
    summary = posixpath.join(examples_dir, SUMMARY_FILE)
    if gfile.exists(summary):
        with gfile.GFile(summary) as f:
            fingerprint = json.load(f).get("fingerprint")
    parent = record.get("parent") or {}
    key = hashlib.sha256(json.dumps({
        "data": fingerprint or examples_dir, "experiment": exp.to_dict(),
        "warm_start": {"mode": record.get("mode"),
                       **{k: parent.get(k) for k in ("name", "version", "model_uri", "step")}}},
        sort_keys=True).encode()).hexdigest()[:24]
    return posixpath.join(checkpoint_root(model_run_dir), key)


def training_finished(work: str, model_run_dir: str) -> None:
    """The finished training's folder becomes the ModelRun's content (checkpoints, history,
    TensorBoard, experiment, warm start, resumes): copied, then removed, so a crash between
    the two leaves the training whole where a rerun finds it."""
    gfile = tf_gfile()
    for name in gfile.listdir(work):
        name = name.rstrip("/")
        _copy_tree(posixpath.join(work, name), posixpath.join(model_run_dir, name))
    gfile.rmtree(work)


def tf_gfile():
    import tensorflow as tf

    return tf.io.gfile


def _copy_tree(src: str, dst: str) -> None:
    gfile = tf_gfile()
    if not gfile.exists(src):
        return
    if not gfile.isdir(src):
        gfile.makedirs(posixpath.dirname(dst))
        gfile.copy(src, dst, overwrite=True)
        return
    for root, _, files in gfile.walk(src):
        rel = root[len(src):].lstrip("/")
        gfile.makedirs(posixpath.join(dst, rel))
        for name in files:
            gfile.copy(posixpath.join(root, name), posixpath.join(dst, rel, name), overwrite=True)


def tpu_strategy_from_environment():
    """TPUClusterResolver() without a name resolves TPU_CONFIG / KUBE_GOOGLE_CLOUD_TPU_ENDPOINTS /
    TPU_NAME (train.make_strategy passes train.tpu as the name, and "env" is none)."""
    import tensorflow as tf

    resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def latest_blessed(source: Dict[str, Any]) -> Optional[Parent]:
    """The warm start's parent: the latest blessed model where warm_start_source says the gate
    finds it (ML Metadata's SQLite store, else the registry); None before the first blessing."""
    if source.get("metadata_path"):
        return latest_blessed_in_metadata(source["metadata_path"], source["pipeline_name"],
                                          source.get("registry_uri"), source.get("model_name"))
    if source.get("registry_uri"):
        return latest_in_registry(source["registry_uri"], source["model_name"])
    raise ValueError("training.warm_start: latest_blessed needs a registry or an ML Metadata "
                     "store to look in (custom_config warm_start_source is empty)")


def latest_in_registry(uri: str, model_name: str) -> Optional[Parent]:
    """The registry's newest whole version (the gate's registry baseline, when it loads)."""
    from components import latest_blessed as lookup

    found = next(lookup.in_registry(uri, model_name), None)
    if found is None:
        return None
    return Parent(saved_model_dir=found.path, name=f"registry version {found.version}",
                  version=found.version, model_uri=found.model_uri)


def intact(parent: Parent, registry_uri: Optional[str], model_name: Optional[str]) -> Parent:
    """The parent when its SavedModel can initialise a training (warm_start.check_parent);
    else, when it was registered, the registry's copy of it (checked against the manifest's
    SHA-256 by local_path), with a warning; else the parent as it is, and warm_start.decide
    fails in one line naming it."""
    from trainer.warm_start import check_parent

    problem = check_parent(parent.saved_model_dir)
    if problem is None or not (parent.version and registry_uri and model_name):
        return parent
    from components.registry.registry import Registry, RegistryError

    try:
        copy = Registry(registry_uri, model_name).local_path(parent.version)
    except RegistryError as e:
        log.warning("warm start: %s %s, and its registry copy is damaged too (%s)", parent.name,
                    problem, e)
        return parent
    if check_parent(copy) is not None:
        return parent
    log.warning("warm start: %s %s; using the registry's intact copy, version %d (%s)",
                parent.name, problem, parent.version, copy)
    return Parent(saved_model_dir=copy, name=f"{parent.name}, from registry version "
                                             f"{parent.version}",
                  version=parent.version, model_uri=parent.model_uri)


def latest_blessed_in_metadata(metadata_path: str, pipeline_name: str,
                               registry_uri: Optional[str] = None,
                               model_name: Optional[str] = None) -> Optional[Parent]:
    """The model the evaluator's Resolver hands the gate (latest_blessed.in_metadata), with the
    registry version the pusher made of it, if any; its registry copy when it is damaged
    (intact)."""
    from tfx.utils import path_utils

    from components import latest_blessed as lookup

    found = lookup.in_metadata(metadata_path, pipeline_name)
    if found is None:
        return None
    model, _ = found
    version = None
    if registry_uri and model_name:  # which version the pusher made of it, if any
        from components.registry.pusher import registered_version
        from components.registry.registry import Registry

        version = registered_version(Registry(registry_uri, model_name), model.uri)
    return intact(Parent(saved_model_dir=path_utils.serving_model_path(model.uri),
                         name=f"ML Metadata model {model.id}"
                              + (f" (registry version {version})" if version else ""),
                         version=version, model_uri=model.uri), registry_uri, model_name)
