"""create_pipeline(config): the pure pipeline definition, shared by every runner.

    DeblurIngest ─> StatisticsGen ─> ExampleValidator ─> ValidationGate (stops on anomalies)
         │          ImportSchemaGen ─┘    └──────────> DomainDriftReport (in- vs out-of-domain)
         └──────────────────────────────────────────> Trainer (after the ValidationGate)

Later stages (DeblurEvaluator -> pusher) attach after the Trainer.
"""
from __future__ import annotations

from typing import Optional

from tfx.v1.components import ExampleValidator, ImportSchemaGen, StatisticsGen
from tfx.v1.proto import EvalArgs, TrainArgs
from tfx.orchestration import pipeline as tfx_pipeline

from components.ingest.component import DeblurIngest
from components.validation_component import DomainDriftReport, ValidationGate
from pipelines import placement
from pipelines.config import PipelineConfig


def create_pipeline(config: PipelineConfig, metadata_connection_config=None,
                    pipeline_root: Optional[str] = None) -> tfx_pipeline.Pipeline:
    ingest = DeblurIngest(sources=config.ingest_sources(), options=config.ingest)
    statistics = StatisticsGen(examples=ingest.outputs["examples"])
    schema = ImportSchemaGen(schema_file=config.validation.schema_path)
    validator = ExampleValidator(statistics=statistics.outputs["statistics"],
                                 schema=schema.outputs["schema"])
    gate = ValidationGate(anomalies=validator.outputs["anomalies"])
    drift = DomainDriftReport(statistics=statistics.outputs["statistics"],
                              schema=schema.outputs["schema"],
                              baseline_split=config.validation.drift_baseline_split)
    trainer = placement.trainer(  # TFX's Trainer, or its Vertex AI one (config.kubeflow)
        config,
        run_fn="trainer.tfx_trainer.run_fn",  # the installed package, not a module_file
        examples=ingest.outputs["examples"],
        train_args=TrainArgs(splits=[config.data.train_split], num_steps=config.training.steps),
        # evaluation is the DeblurEvaluator's job; TFX still wants an existing split here
        eval_args=EvalArgs(splits=[config.data.train_split], num_steps=0),
        custom_config={"experiment": config.training.experiment,
                       "overrides": config.training.overrides},
    )
    trainer.add_upstream_node(gate)  # never train on data that failed validation
    return tfx_pipeline.Pipeline(
        pipeline_name=config.runner.pipeline_name,
        pipeline_root=pipeline_root or config.runner.resolved_pipeline_root(),
        # place(): on Kubeflow, each component's resources from config.kubeflow.resources
        components=placement.place(
            config, [ingest, statistics, schema, validator, gate, drift, trainer]),
        enable_cache=config.runner.enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=list(config.runner.beam_args),
    )
