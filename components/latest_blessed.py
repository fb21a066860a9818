"""The latest blessed model, looked up in one place for its two users: the gate's baseline
(DeblurEvaluator, components/evaluator/component.py) and the warm start's parent (the Trainer's
run_fn, components/training.py), so that both mean the same model.

Two places hold it (gate.baseline; pipelines/pipeline.py chooses, per orchestrator):

- ML Metadata (`ml-metadata`: LocalDagRunner, Vertex AI Pipelines): the newest Model (highest
  id) that a ModelBlessing with blessed=1 names as its current_model_id, among the live outputs
  of this pipeline's executions: TFX's LatestBlessedModelStrategy over the channels below. The
  evaluator receives it from the Resolver node `resolver()` builds; the Trainer asks
  `in_metadata`, which resolves that same node against the store when the Trainer executes.
- the registry (`registry`: open-source KFP, whose backend cannot run Resolver nodes): its
  versions newest first, each whole (`in_registry`); the pusher registers blessed models only.

Why the Trainer does not take the Resolver's output as an input (TFX's Trainer has a base_model
channel): an input artifact is part of the component's cache key. Once a run's model is
blessed the Resolver's answer changes, so the next run on unchanged data would train again
instead of reusing its cached training (tests/test_pipeline_retraining.py, its second run);
and where the Resolver cannot run (open-source KFP) there would be no parent at all. So the
Trainer looks its parent up when it executes, outside its cache key. The evaluator keeps the
Resolver for the converse reason: a newly blessed model is a new reference, and the unchanged
run evaluates again against it (the pusher then says "already registered").

Kubeflow pods have no SQLite store, so there the warm start reads the registry whatever
gate.baseline says (pipelines/pipeline.py warm_start_config; on Vertex AI with ml-metadata the
gate's Resolver and the warm start's registry then hold the same blessed models, the registry
only those the pusher registered).
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Dict, Iterator, Optional, Tuple

log = logging.getLogger(__name__)

RESOLVER_ID = "latest_blessed_model_resolver"
MODEL_KEY, BLESSING_KEY = "model", "model_blessing"


def resolver():
    """The Resolver node handing the evaluator the latest blessed model and its blessing
    (outputs "model" and "model_blessing", both empty before the first blessing)."""
    from tfx.dsl.components.common import resolver as tfx_resolver
    from tfx.dsl.input_resolution.strategies.latest_blessed_model_strategy import (
        LatestBlessedModelStrategy)
    from tfx.types import Channel, standard_artifacts

    return tfx_resolver.Resolver(
        strategy_class=LatestBlessedModelStrategy,
        model=Channel(type=standard_artifacts.Model),
        model_blessing=Channel(type=standard_artifacts.ModelBlessing),
    ).with_id(RESOLVER_ID)


def in_metadata(metadata_path: str, pipeline_name: str) -> Optional[Tuple[Any, Any]]:
    """(Model, ModelBlessing) artifacts the Resolver hands the evaluator, resolved now in the
    SQLite ML Metadata store at metadata_path; None without a store, a run of the pipeline or a
    blessed model.

    It is that very Resolver: `resolver()` compiled as a node of pipeline `pipeline_name` and
    its inputs resolved by TFX's own input resolution (the channels: this type among the live
    outputs of the pipeline's executions; then LatestBlessedModelStrategy), as LocalDagRunner
    resolves it for the evaluator."""
    if not os.path.exists(metadata_path):  # no run has written one yet
        return None
    from tfx.dsl.compiler import compiler
    from tfx.orchestration import metadata
    from tfx.orchestration import pipeline as tfx_pipeline
    from tfx.orchestration.portable import inputs_utils

    from components.metadata_store import sqlite_config

    ir = compiler.Compiler().compile(tfx_pipeline.Pipeline(
        pipeline_name=pipeline_name, components=[resolver()],
        pipeline_root=os.path.dirname(os.path.abspath(metadata_path))))  # (not read)
    node, = [n.pipeline_node for n in ir.nodes]
    with metadata.Metadata(sqlite_config(metadata_path, readonly=True)) as m:
        resolved = inputs_utils.resolve_input_artifacts(pipeline_node=node, metadata_handle=m)
    for inputs in resolved:  # one dict of the node's outputs; none when resolution skips it
        if inputs.get(MODEL_KEY):
            return inputs[MODEL_KEY][0], inputs[BLESSING_KEY][0]
    return None


@dataclasses.dataclass(frozen=True)
class RegistryModel:
    version: int
    path: str  # a local folder holding the SavedModel (Registry.local_path: checked)
    manifest: Dict[str, Any]

    @property
    def model_uri(self) -> Optional[str]:
        """The Model artifact the pusher registered (the manifest's source.model_uri)."""
        source = self.manifest.get("source")
        return source.get("model_uri") if isinstance(source, dict) else None


def in_registry(uri: str, model_name: str, *, client=None) -> Iterator[RegistryModel]:
    """The registry's versions, newest first, each whole: its manifest readable and every file
    matching it in size and SHA-256 (a gs:// version is downloaded into the cache and checked:
    Registry.local_path). Lazily: an older version is checked (and downloaded) only when the
    caller asks for it. A version that is not whole is skipped with a warning naming it."""
    from components.registry.registry import Registry

    registry = Registry(uri, model_name, client=client)
    for version in reversed(registry.versions()):
        try:
            path = registry.local_path(version)
            manifest = registry.show(version)
        except (ValueError, TypeError) as e:  # RegistryError is a ValueError
            log.warning("latest blessed model: skipping registry version %d: %s", version, e)
            continue
        yield RegistryModel(version, path, manifest)
