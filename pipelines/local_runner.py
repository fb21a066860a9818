"""Runs create_pipeline() with LocalDagRunner and SQLite ML Metadata (the embedded default)."""
from __future__ import annotations

import logging
import os

from tfx.orchestration import metadata
from tfx.orchestration.local.local_dag_runner import LocalDagRunner

from pipelines.config import PipelineConfig
from pipelines.pipeline import create_pipeline


def run(config: PipelineConfig) -> str:
    """Lists the inputs for their fingerprint (the ingest's cache key sees it), then runs the
    pipeline. Returns the fingerprint."""
    from components.ingest.beam_ingest import plan_ingest

    work = config.runner
    os.makedirs(os.path.dirname(os.path.abspath(work.resolved_metadata_path())), exist_ok=True)
    plan = plan_ingest(config.ingest_sources(), config.ingest)
    fingerprint = plan.fingerprint()
    logging.getLogger("deblur.progress").info(  # deblur run-local prints these
        "inputs: %d pairs in %d unit(s), fingerprint %s; caching %s", len(plan.candidates),
        len(plan.units), fingerprint[:12], "on" if work.enable_cache else "off")
    pipeline = create_pipeline(
        config,
        metadata_connection_config=metadata.sqlite_metadata_connection_config(
            os.path.abspath(work.resolved_metadata_path())),
        pipeline_root=os.path.abspath(work.resolved_pipeline_root()),
        input_fingerprint=fingerprint,
    )
    LocalDagRunner().run(pipeline)
    return fingerprint


ABANDONED = "abandoned: its run-local process ended without finishing it (killed?)"


def cancel_abandoned_executions(metadata_path: str):
    """Marks executions left NEW or RUNNING by a run-local that died (SIGKILL, power loss) as
    CANCELED, with the reason in the custom property `deblur_abandoned`, so ML Metadata does not
    keep a zombie. Only safe while no other run uses the store: run-local holds the work dir's
    lock when it calls this. Returns [(execution type, id)] of those it marked."""
    if not os.path.exists(metadata_path):
        return []
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    cfg = metadata_store_pb2.ConnectionConfig()
    cfg.sqlite.filename_uri = metadata_path
    store = metadata_store.MetadataStore(cfg)
    live = (metadata_store_pb2.Execution.NEW, metadata_store_pb2.Execution.RUNNING)
    types = {t.id: t.name for t in store.get_execution_types()}
    dead = [e for e in store.get_executions() if e.last_known_state in live]
    for e in dead:
        e.last_known_state = metadata_store_pb2.Execution.CANCELED
        e.custom_properties["deblur_abandoned"].string_value = ABANDONED
    if dead:
        store.put_executions(dead)
    return [(types.get(e.type_id, "?").split(".")[-1], e.id) for e in dead]
