"""The data half of the pipeline through LocalDagRunner + SQLite ML Metadata, on synthetic data."""
from __future__ import annotations

import json
import os
import re

import pytest

from deblur import cli
from pipelines import config as config_lib


def tiny_config(tmp_path, **runner):
    return {
        "data": {"synthetic": {"pairs": 3, "test_pairs": 2, "size": [64, 80], "seed": 1}},
        "ingest": {"train_crop_size": 64},
        "training": {"experiment": "tiny", "steps": 3,
                     "overrides": {"train": {"global_batch_size": 2}}},
        "runner": {"work_dir": str(tmp_path / "run"), **runner},
    }


def write_config(tmp_path, d) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(d))
    return str(path)


def executions(metadata_path):
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    cfg = metadata_store_pb2.ConnectionConfig()
    cfg.sqlite.filename_uri = metadata_path
    store = metadata_store.MetadataStore(cfg)
    types = {t.id: t.name for t in store.get_execution_types()}
    return {types[e.type_id]: metadata_store_pb2.Execution.State.Name(e.last_known_state)
            for e in store.get_executions()}


def test_run_local_end_to_end(tmp_path, capsys):
    path = write_config(tmp_path, tiny_config(tmp_path))
    assert cli.main(["run-local", "--config", path]) == 0
    out = capsys.readouterr().out
    run = tmp_path / "run"
    states = executions(str(run / "metadata.sqlite"))
    for component in ("DeblurIngest", "StatisticsGen", "ImportSchemaGen", "ExampleValidator",
                      "ValidationGate", "DomainDriftReport", "Trainer"):
        assert any(component in t for t in states), (component, states)
    assert set(states.values()) == {"COMPLETE"}, states
    summary = json.loads((run / "summary.json").read_text())
    ing = summary["ingest"]
    assert ing["written"] == 3 + 2 + 2 == ing["inputs"]
    assert {s: c["written"] for s, c in ing["splits"].items()} == {"train": 3, "test": 2, "test_ood": 2}
    assert summary["anomalies"] == {"train": [], "test": [], "test_ood": []}
    drift = summary["drift"]["splits"]["test_ood"]["features"]
    # the schema's comparators: the blurry (model input) statistics that separate the domains
    assert set(drift) == {"blurry_mean_luma", "blurry_noise_sigma", "blurry_blur_laplacian_var"}
    # the out-of-domain set is darker than the in-domain training set, and says so
    assert drift["blurry_mean_luma"]["mean"] < drift["blurry_mean_luma"]["baseline_mean"]
    assert "no anomalies" in out and "test_ood" in out and re.search(r"JS \d\.\d{3}", out)
    # the Trainer ran the same train() as the CLI and exported a SavedModel for serving
    assert summary["training"]["last"]["step"] == 3
    assert "training: 3 steps" in out
    serving = [os.path.join(r, d) for r, ds, _ in os.walk(summary["model_uri"]) for d in ds
               if d == "Format-Serving"]
    assert serving and os.path.exists(os.path.join(serving[0], "saved_model.pb"))


def test_anomalies_stop_the_pipeline(tmp_path, capsys):
    # A schema that admits only in-domain examples: the out-of-domain split is an anomaly.
    with open(config_lib.DEFAULT_SCHEMA) as f:
        text = f.read()
    strict = text.replace('  value: "in"\n  value: "out"\n', '  value: "in"\n')
    assert strict != text
    schema = tmp_path / "schema.pbtxt"
    schema.write_text(strict)
    d = tiny_config(tmp_path)
    d["validation"] = {"schema_path": str(schema)}
    code = cli.main(["run-local", "--config", write_config(tmp_path, d)])
    err = capsys.readouterr().err
    assert code == cli.EXIT_FAILED
    assert "ExampleValidator found" in err and "test_ood" in err and "domain" in err
    states = executions(str(tmp_path / "run" / "metadata.sqlite"))
    assert any("ValidationGate" in t and s == "FAILED" for t, s in states.items()), states
    assert not any("Trainer" in t for t in states), states  # nothing trained on bad data


def test_config_errors_are_one_line(tmp_path, capsys):
    path = write_config(tmp_path, {"runner": {"wrok_dir": "x"}})
    assert cli.main(["run-local", "--config", path]) == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert err.startswith("deblur: error: runner: unknown key(s) wrok_dir") and "\n" not in err
    assert cli.main(["run-local", "--config", str(tmp_path / "nope.yaml")]) == cli.EXIT_USAGE
    assert "does not exist" in capsys.readouterr().err
