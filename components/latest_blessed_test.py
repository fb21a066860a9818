"""The latest blessed model, one lookup (components/latest_blessed.py): the warm start's parent
(components/training.py) and the gate's baseline (components/evaluator/component.py) are the
same model, in ML Metadata and in the registry, on a local folder and on gs://."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2 as pb

from components import latest_blessed, training
from components.metadata_store import sqlite_config
from components.registry.registry import Registry
from components.registry.registry_test import make_source
from tests.gcs_emulator import bucket_fixture

SETTING = {"sampler": "ddim", "steps": 4, "max_noise": 0.2, "samples": 1}


class Store:
    """A SQLite ML Metadata store filled as TFX's launcher fills it: each artifact the output
    of an execution in its pipeline's context."""

    def __init__(self, path: Path):
        self.path = str(path)
        self.store = metadata_store.MetadataStore(sqlite_config(self.path))
        self.types = {name: self.store.put_artifact_type(pb.ArtifactType(name=name))
                      for name in ("Model", "ModelBlessing")}
        self.context_type = self.store.put_context_type(pb.ContextType(name="pipeline"))
        self.execution_type = self.store.put_execution_type(pb.ExecutionType(name="Component"))
        self.contexts = {}
        self.n = 0

    def _context(self, pipeline: str) -> pb.Context:
        if pipeline not in self.contexts:
            [cid] = self.store.put_contexts([pb.Context(type_id=self.context_type, name=pipeline)])
            self.contexts[pipeline] = pb.Context(id=cid, type_id=self.context_type, name=pipeline)
        return self.contexts[pipeline]

    def output(self, pipeline: str, type_name: str, state=pb.Artifact.LIVE, **props) -> int:
        self.n += 1
        a = pb.Artifact(type_id=self.types[type_name], state=state,
                        uri=f"/pipeline/{pipeline}/{type_name}/{self.n}")
        for k, v in props.items():
            a.custom_properties[k].int_value = v
        execution = pb.Execution(type_id=self.execution_type,
                                 last_known_state=pb.Execution.COMPLETE)
        _, [artifact_id], _ = self.store.put_execution(
            execution, [(a, pb.Event(type=pb.Event.OUTPUT))], [self._context(pipeline)])
        return artifact_id

    def model(self, pipeline: str, blessed=None, state=pb.Artifact.LIVE) -> int:
        model = self.output(pipeline, "Model", state)
        if blessed is not None:
            self.output(pipeline, "ModelBlessing", blessed=int(blessed), current_model_id=model)
        return model


def test_in_ml_metadata_the_warm_start_takes_the_resolvers_model(tmp_path):
    """The Trainer resolves the evaluator's Resolver node itself: the newest live Model of this
    pipeline that a blessed ModelBlessing names. A garbage-collected (not live) model, blessed
    and newer, is not it (the Trainer's own MLMD query took it: the newest current_model_id of
    any blessed blessing, whose files are gone), nor another pipeline's."""
    assert latest_blessed.in_metadata(str(tmp_path / "none.sqlite"), "p") is None
    s = Store(tmp_path / "metadata.sqlite")
    assert latest_blessed.in_metadata(s.path, "p") is None  # no run of the pipeline yet
    s.model("p")  # trained, not evaluated
    assert latest_blessed.in_metadata(s.path, "p") is None  # no blessed model yet
    s.model("p", blessed=True)
    newest_blessed = s.model("p", blessed=True)
    s.model("p", blessed=False)
    s.model("p", blessed=True, state=pb.Artifact.DELETED)
    other = s.model("q", blessed=True)

    model, blessing = latest_blessed.in_metadata(s.path, "p")
    assert model.id == newest_blessed and model.type_name == "Model"
    assert blessing.get_int_custom_property("current_model_id") == newest_blessed
    assert latest_blessed.in_metadata(s.path, "q")[0].id == other
    parent = training.latest_blessed({"metadata_path": s.path, "pipeline_name": "p"})
    assert parent.name == f"ML Metadata model {newest_blessed}" and parent.version is None
    assert parent.saved_model_dir == f"{model.uri}/Format-Serving" and parent.model_uri == model.uri


def _registry(uri: str, tmp: Path, versions: int, **kwargs) -> Registry:
    reg = Registry(uri, "m", cache_dir=str(tmp / "cache"), **kwargs)
    for v in range(1, versions + 1):
        assert reg.push(str(make_source(tmp / "src" / str(v), seed=v, kib=4)),
                        {"sampling": SETTING, "blessing": {"blessed": True},
                         "source": {"model_uri": f"/Trainer/model/{v}"}}) == v
    return reg


def _same_from_both(uri: str, caplog):
    """(the warm start's parent, the gate's registry candidates) of the registry at uri, and the
    lookup's warnings."""
    from components.evaluator import component as evaluator

    caplog.clear()
    parent = training.latest_blessed({"registry_uri": uri, "model_name": "m"})
    candidates = list(evaluator.registry_candidates(uri, "m"))
    warnings = [r.getMessage() for r in caplog.records if r.name == latest_blessed.log.name]
    return parent, candidates, warnings


def test_in_the_registry_both_take_the_newest_whole_version(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("DEBLUR_REGISTRY_CACHE", str(tmp_path / "cache"))
    reg = _registry(str(tmp_path / "registry"), tmp_path, 3)
    caplog.set_level(logging.WARNING)
    parent, candidates, warnings = _same_from_both(reg.uri, caplog)
    assert (parent.version, parent.name, parent.model_uri) == (3, "registry version 3",
                                                              "/Trainer/model/3")
    assert [name for _, _, name in candidates] == [f"registry version {v}" for v in (3, 2, 1)]
    assert candidates[0][0] == parent.saved_model_dir == reg.local_path(3)
    assert candidates[0][1]["max_noise"] == pytest.approx(0.2) and warnings == []

    # version 3's variables change under the manifest (same size): both skip it, saying so once
    data = Path(reg.local_path(3)) / "variables" / "variables.data-00000-of-00001"
    content = data.read_bytes()
    data.write_bytes(bytes([content[0] ^ 1]) + content[1:])
    parent, candidates, warnings = _same_from_both(reg.uri, caplog)
    assert parent.version == 2 and candidates[0][0] == parent.saved_model_dir
    assert [name for _, _, name in candidates] == ["registry version 2", "registry version 1"]
    assert len(warnings) == 2 and all(w.startswith(
        f"latest blessed model: skipping registry version 3: {reg.model_uri}: version 3 is "
        "damaged: variables/variables.data-00000-of-00001 has sha256 ") for w in warnings)

    assert training.latest_blessed({"registry_uri": str(tmp_path / "empty"),
                                    "model_name": "m"}) is None


gcs = bucket_fixture("blessed")


def test_on_gs_a_damaged_newest_version_gives_way_to_the_next(gcs, tmp_path, caplog,
                                                              monkeypatch):
    """gs://: the manifest is checked when listed, the files on download. A newest version
    whose object changed under its manifest failed the warm start with the download's error
    (Registry.latest had taken it); now the warm start and the gate both take version 1."""
    monkeypatch.setenv("DEBLUR_REGISTRY_CACHE", str(tmp_path / "cache"))
    uri = "gs://blessed/registry"
    _registry(uri, tmp_path, 2)
    blob = gcs.client.bucket("blessed").blob("registry/m/2/variables/variables.index")
    content = blob.download_as_bytes()
    blob.upload_from_string(bytes([content[0] ^ 1]) + content[1:])
    caplog.set_level(logging.WARNING)
    parent, candidates, warnings = _same_from_both(uri, caplog)
    assert parent.version == 1 and parent.name == "registry version 1"
    assert [name for _, _, name in candidates] == ["registry version 1"]
    assert candidates[0][0] == parent.saved_model_dir
    assert warnings and all(w.startswith(
        "latest blessed model: skipping registry version 2: gs://blessed/registry/m/2/variables/"
        "variables.index does not match its manifest") for w in warnings)
