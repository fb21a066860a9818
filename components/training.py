"""The pipeline's Trainer run_fn: trainer.tfx_trainer.run_fn with the warm start's parent found
where the gate finds its baseline, the latest blessed model:

- registry (open-source KFP, which cannot run Resolver nodes; or gate.baseline: registry): its
  newest whole version, which only ever holds blessed models (Registry.latest, local_path: a
  gs:// version is downloaded and checked against its manifest);
- ML Metadata (locally): the newest Model that a ModelBlessing with blessed=1 names as its
  current_model_id (what TFX's LatestBlessedModelStrategy picks), in this pipeline's context.

The parent is looked up when the Trainer executes, never in the pipeline definition: it is not
part of the Trainer's cache key, so a run on unchanged data reuses the cached training even
after that training's own model was blessed (the next changed data warm-starts from it).

custom_config["warm_start_source"]: {"registry_uri", "model_name"} or {"metadata_path",
"pipeline_name", "registry_uri", "model_name"} (pipelines/pipeline.py writes it).
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Optional

from trainer import tfx_trainer
from trainer.warm_start import Parent

log = logging.getLogger(__name__)


def run_fn(fn_args) -> None:
    source = dict((fn_args.custom_config or {}).get("warm_start_source") or {})
    tfx_trainer.run_fn(fn_args, find_parent=lambda: latest_blessed(source))


def latest_blessed(source: Dict[str, Any]) -> Optional[Parent]:
    if source.get("metadata_path"):
        return latest_blessed_in_metadata(source["metadata_path"], source["pipeline_name"],
                                          source.get("registry_uri"), source.get("model_name"))
    if source.get("registry_uri"):
        return latest_in_registry(source["registry_uri"], source["model_name"])
    raise ValueError("training.warm_start: latest_blessed needs a registry or an ML Metadata "
                     "store to look in (custom_config warm_start_source is empty)")


def latest_in_registry(uri: str, model_name: str) -> Optional[Parent]:
    from components.registry.registry import Registry

    registry = Registry(uri, model_name)
    latest = registry.latest(hashes=True)  # what local_path checks: a damaged one is skipped
    if latest is None:
        return None
    version, manifest = latest
    return Parent(saved_model_dir=registry.local_path(version),
                  name=f"registry version {version}", version=version,
                  model_uri=(manifest.get("source") or {}).get("model_uri"))


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
    from tfx.utils import path_utils

    from components.metadata_store import open_store

    store = open_store(metadata_path)
    if store is None:
        return None
    pipeline = store.get_context_by_type_and_name("pipeline", pipeline_name)
    if pipeline is None:
        return None
    types = {t.id: t.name for t in store.get_artifact_types()}
    blessed = [a for a in store.get_artifacts_by_context(pipeline.id)
               if types.get(a.type_id) == "ModelBlessing"
               and a.custom_properties["blessed"].int_value == 1
               and a.custom_properties["current_model_id"].int_value > 0]
    if not blessed:
        return None
    model_id = max(a.custom_properties["current_model_id"].int_value for a in blessed)
    model, = store.get_artifacts_by_id([model_id])
    version = None
    if registry_uri and model_name:  # which version the pusher made of it, if any
        from components.registry.pusher import registered_version
        from components.registry.registry import Registry

        version = registered_version(Registry(registry_uri, model_name), model.uri)
    return intact(Parent(saved_model_dir=path_utils.serving_model_path(model.uri),
                         name=f"ML Metadata model {model_id}"
                              + (f" (registry version {version})" if version else ""),
                         version=version, model_uri=model.uri), registry_uri, model_name)
