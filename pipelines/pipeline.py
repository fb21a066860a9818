"""create_pipeline(config): the pure pipeline definition, shared by every runner.

    DeblurIngest ─> StatisticsGen ─> ExampleValidator ─> ValidationGate (stops on anomalies)
         │          ImportSchemaGen ─┘    └──────────> DomainDriftReport (in- vs out-of-domain)
         ├──────────────────────────────────────────> Trainer (after the ValidationGate)
         │                                               │ model
         └─────────────────────────────────────────> DeblurEvaluator <── latest blessed model
                                                         │ blessing      (Resolver over MLMD)
                                                         ▼
                                                    RegistryPusher (blessed models only)
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, Optional

from tfx.v1.components import ExampleValidator, ImportSchemaGen, StatisticsGen
from tfx.v1.proto import EvalArgs, TrainArgs
from tfx.orchestration import pipeline as tfx_pipeline

from components import latest_blessed as latest_blessed_lookup
from components.evaluator.component import DeblurEvaluator
from components.ingest.component import DeblurIngest, unit_store
from components.registry.component import RegistryPusher
from components.serving.component import ServabilityCheck
from components.validation_component import DomainDriftReport, ValidationGate
from pipelines.config import ConfigError, PipelineConfig


class LocalPlacement:
    """What differs by orchestrator, when the runner says nothing: TFX's standard Trainer, no
    resources, the SQLite ML Metadata store readable by the components, no extra components.
    The Kubeflow runner passes its own (pipelines/kubeflow/placement.py): its pods have no
    SQLite store, and its run page draws only its own artifact types, so it adds the
    components that write them (TrainingReport, RunSummary)."""

    SQLITE_METADATA = True  # the components can read the runner's ML Metadata store

    @staticmethod
    def trainer(config: PipelineConfig, custom_config: dict, **kwargs):
        from tfx.v1.components import Trainer

        return Trainer(custom_config=custom_config, **kwargs)

    @staticmethod
    def place(config: PipelineConfig, components: list) -> list:
        return components

    @staticmethod
    def run_page(config: PipelineConfig, outputs: Dict[str, Any]) -> list:
        """Extra components reading the pipeline's `outputs` ({name: channel}): none here."""
        return []


def warm_start_config(config: PipelineConfig, registry_uri: str,
                      sqlite_metadata: bool = True) -> dict:
    """The Trainer's custom_config keys of the warm start (components/training.py): the mode,
    and where the latest blessed model is, the same place the gate's baseline comes from (ML
    Metadata's SQLite store locally, the registry with gate.baseline: registry and always on
    Kubeflow, whose pods have no SQLite store: `sqlite_metadata` False, the placement's).
    Written for `none` too, so that a run can switch the mode alone (a run parameter) and
    still find the parent."""
    source = {"registry_uri": registry_uri, "model_name": config.registry.model_name}
    if config.gate.baseline == "ml-metadata" and sqlite_metadata:
        source.update(metadata_path=os.path.abspath(config.runner.resolved_metadata_path()),
                      pipeline_name=config.runner.pipeline_name)
    source["base_model"] = config.training.base_model_setting()  # resolved in the Trainer
    return {"warm_start": config.training.warm_start, "warm_start_source": source}


def trainer_overrides(config: PipelineConfig) -> dict:
    """custom_config["overrides"] of the Trainer (components/training.py): training.model/
    diffusion/data/train, {section: {field: value}}, less train.steps: the step count travels
    only as train_args.num_steps (create_pipeline), where the train_steps run parameter sets it."""
    overrides = config.training.experiment_overrides()
    train = {k: v for k, v in overrides.pop("train", {}).items() if k != "steps"}
    return {**overrides, **({"train": train} if train else {})}


def create_pipeline(config: PipelineConfig, metadata_connection_config=None,
                    pipeline_root: Optional[str] = None,
                    input_fingerprint: str = "", placement=None) -> tfx_pipeline.Pipeline:
    """input_fingerprint: components.ingest.beam_ingest.input_fingerprint of the sources, which
    the runner computes (this function reads nothing): the DeblurIngest's exec property, so the
    cache key of the ingest, and of everything downstream of it, changes exactly when the data
    do. Caching without it would reuse the ingest of whatever the roots held before.
    placement: where components run, the runner's own (trainer(config, custom_config,
    **kwargs) and place(config, components)); default LocalPlacement."""
    placement = placement or LocalPlacement
    # the Trainer's experiment (training.experiment and training.model/diffusion/data/train) is
    # checked now, not hours later in the Trainer: a ConfigError before any component runs
    experiment = config.training.build_experiment()
    # training.data.train_split, the one place of the training split: the Trainer's TFX
    # train_args, and the split the evaluator leaves out
    train_split = experiment.data.train_split
    if config.runner.enable_cache and not input_fingerprint:
        raise ConfigError("runner.enable_cache needs the fingerprint of the inputs (their roots "
                          "may hold other files than last time): start the run with `deblur "
                          "run-local` or `deblur compile`, which compute it")
    root = pipeline_root or config.runner.resolved_pipeline_root()
    store = config.runner.unit_store or unit_store(root)  # ingested units, for later runs
    ingest = DeblurIngest(sources=config.ingest_sources(), options=config.ingest,
                          input_fingerprint=input_fingerprint,
                          unit_store=store if "://" in store else os.path.abspath(store))
    statistics = StatisticsGen(examples=ingest.outputs["examples"])
    schema = ImportSchemaGen(schema_file=config.validation.schema_path)
    validator = ExampleValidator(statistics=statistics.outputs["statistics"],
                                 schema=schema.outputs["schema"])
    gate = ValidationGate(anomalies=validator.outputs["anomalies"])
    drift = DomainDriftReport(statistics=statistics.outputs["statistics"],
                              schema=schema.outputs["schema"],
                              baseline_split=config.validation.drift_baseline_split)
    registry_uri = config.registry.resolved_uri(config.runner.work_dir)
    trainer = placement.trainer(  # TFX's Trainer, or on Kubeflow its Vertex AI one
        config,
        # the installed package, not a module_file: components.training.run_fn, with the warm
        # start's parent looked up when it runs (not part of the cache key)
        run_fn="components.training.run_fn",
        examples=ingest.outputs["examples"],
        # the experiment's train.steps (training.train.steps when named) travels as
        # train_args.num_steps, and only there: the train_steps run parameter sets it
        train_args=TrainArgs(splits=[train_split], num_steps=experiment.train.steps),
        # evaluation is the DeblurEvaluator's job; TFX still wants an existing split here
        eval_args=EvalArgs(splits=[train_split], num_steps=0),
        custom_config={"experiment": config.training.experiment,
                       "overrides": trainer_overrides(config),
                       **warm_start_config(config, registry_uri, placement.SQLITE_METADATA)},
    )
    trainer.add_upstream_node(gate)  # never train on data that failed validation
    # The baseline of the gate: the latest blessed model (components/latest_blessed.py, where
    # the Trainer finds its warm start's parent too), from ML Metadata through a Resolver (none
    # on a first run; an input, so part of the evaluator's cache key, which the Trainer's
    # parent must not be), or from the registry where Resolver nodes cannot run. One that does
    # not load (damaged files) gives way to the registry's newest version that does.
    baseline = {}
    latest_blessed = None
    if config.gate.baseline == "ml-metadata":
        latest_blessed = latest_blessed_lookup.resolver()
        baseline = {"baseline_model": latest_blessed.outputs["model"],
                    "baseline_blessing": latest_blessed.outputs["model_blessing"],
                    "baseline_fallback_registry_uri": registry_uri,
                    "baseline_model_name": config.registry.model_name}
    else:
        baseline = {"baseline_registry_uri": registry_uri,
                    "baseline_model_name": config.registry.model_name}
    evaluator = DeblurEvaluator(
        examples=ingest.outputs["examples"],
        model=trainer.outputs["model"],
        eval_config=json.dumps(dataclasses.asdict(
            dataclasses.replace(config.evaluation, train_split=train_split))),
        gate_config=json.dumps(dataclasses.asdict(config.gate)),
        **baseline,
    )
    pusher = RegistryPusher(
        model=trainer.outputs["model"],
        model_blessing=evaluator.outputs["blessing"],
        evaluation=evaluator.outputs["evaluation"],
        examples=ingest.outputs["examples"],
        registry_uri=registry_uri,
        model_name=config.registry.model_name,
    )
    # InfraValidator's role: the pushed version answers real requests through the serving
    # code before an alias moves (components/serving/check.py)
    servability = None
    if config.registry.servability_check:
        servability = ServabilityCheck(
            pushed_model=pusher.outputs["pushed_model"], examples=ingest.outputs["examples"],
            registry_uri=registry_uri, model_name=config.registry.model_name,
            promote_to=config.registry.promote_to or "", train_split=train_split)
    # the orchestrator's own reporting (on Kubeflow, the run page's account of the Trainer and
    # of the whole run; locally `deblur run-local` prints the same from ML Metadata)
    extras = placement.run_page(config, {
        "examples": ingest.outputs["examples"], "statistics": statistics.outputs["statistics"],
        "schema": schema.outputs["schema"], "anomalies": validator.outputs["anomalies"],
        "drift": drift.outputs["report"], "model": trainer.outputs["model"],
        "model_run": trainer.outputs["model_run"], "evaluation": evaluator.outputs["evaluation"],
        "blessing": evaluator.outputs["blessing"], "pushed_model": pusher.outputs["pushed_model"]})
    return tfx_pipeline.Pipeline(
        pipeline_name=config.runner.pipeline_name,
        pipeline_root=root,
        # the Kubeflow placement sets each component's resources from config.kubeflow
        components=placement.place(
            config, [c for c in (ingest, statistics, schema, validator, gate, drift, trainer,
                                 latest_blessed, evaluator, pusher, servability, *extras)
                     if c is not None]),
        enable_cache=config.runner.enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=list(config.runner.beam_args),
    )
