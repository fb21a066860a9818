"""Runs create_pipeline() with LocalDagRunner and SQLite ML Metadata (the embedded default)."""
from __future__ import annotations

import os

from tfx.orchestration import metadata
from tfx.orchestration.local.local_dag_runner import LocalDagRunner

from pipelines.config import PipelineConfig
from pipelines.pipeline import create_pipeline


def run(config: PipelineConfig) -> None:
    work = config.runner
    os.makedirs(os.path.dirname(os.path.abspath(work.resolved_metadata_path())), exist_ok=True)
    pipeline = create_pipeline(
        config,
        metadata_connection_config=metadata.sqlite_metadata_connection_config(
            os.path.abspath(work.resolved_metadata_path())),
        pipeline_root=os.path.abspath(work.resolved_pipeline_root()),
    )
    LocalDagRunner().run(pipeline)
