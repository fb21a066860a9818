"""The data half of the pipeline through LocalDagRunner + SQLite ML Metadata, on synthetic data."""
from __future__ import annotations

import json
import os
import re

import pytest

from deblur import cli
from pipelines import config as config_lib


# The "tiny" experiment with a one-level UNet (guidance "input"): for the runs whose subject is
# not the model (a resume, the retraining runs); it traces and exports in about half the time.
# test_run_local_end_to_end trains the tiny experiment itself.
FAST_MODEL = {"guidance": "input", "channel_multipliers": [1], "num_middle_blocks": 0}


def tiny_config(tmp_path, **runner):
    return {
        # 192: NIQE needs two 96-pixel blocks per side
        "data": {"synthetic": {"pairs": 3, "test_pairs": 2, "size": [192, 192], "seed": 1}},
        "ingest": {"train_crop_size": 64},
        "training": {"experiment": "tiny", "train": {"steps": 3, "global_batch_size": 2}},
        "evaluation": {"grid": [{"sampler": "ddpm", "steps": 2, "max_noise": 0.05},
                                {"sampler": "ddim", "steps": 2, "max_noise": 0.05}],
                       "max_images_per_split": 2},
        # a 3-step model: the absolute threshold only excludes non-finite metrics here
        # a 3-step model cannot beat its blurry input: beats_input is opened up (the test is
        # about the wiring; components/evaluator tests the rule)
        "gate": {"ood_lpips_max": 0.99, "regression_tolerance": 1.0, "input_lpips_margin": -1.0,
                 "input_psnr_tolerance": 100.0},
        "runner": {"work_dir": str(tmp_path / "run"), **runner},
    }


def write_config(tmp_path, d) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(d))
    return str(path)


def _store(metadata_path):
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    cfg = metadata_store_pb2.ConnectionConfig()
    cfg.sqlite.filename_uri = metadata_path
    return metadata_store.MetadataStore(cfg)


def executions(metadata_path):
    """{execution type: state of its latest execution}"""
    from ml_metadata.proto import metadata_store_pb2

    store = _store(metadata_path)
    types = {t.id: t.name for t in store.get_execution_types()}
    return {types[e.type_id]: metadata_store_pb2.Execution.State.Name(e.last_known_state)
            for e in sorted(store.get_executions(), key=lambda e: e.id)}


def execution_states(metadata_path):
    """{execution type: [states of its executions, oldest first]}"""
    from ml_metadata.proto import metadata_store_pb2

    store = _store(metadata_path)
    types = {t.id: t.name for t in store.get_execution_types()}
    out = {}
    for e in sorted(store.get_executions(), key=lambda e: e.id):
        out.setdefault(types[e.type_id], []).append(
            metadata_store_pb2.Execution.State.Name(e.last_known_state))
    return out


@pytest.mark.slow
def test_run_local_end_to_end(tmp_path, capsys, monkeypatch):
    d = tiny_config(tmp_path)
    d["training"]["train"]["steps"] = 5  # --param train_steps (the Kubeflow run parameter) sets 3
    path = write_config(tmp_path, d)
    scratch = tmp_path / "tmp"  # the run's $TMPDIR: TFX left ~98 MB per run in it
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    monkeypatch.setenv("TMPDIR", str(scratch))
    assert cli.main(["run-local", "--config", path, "--param", "train_steps=3"]) == 0
    assert list(scratch.iterdir()) == []
    out = capsys.readouterr().out
    run = tmp_path / "run"
    states = executions(str(run / "metadata.sqlite"))
    for component in ("DeblurIngest", "StatisticsGen", "ImportSchemaGen", "ExampleValidator",
                      "ValidationGate", "DomainDriftReport", "Trainer", "DeblurEvaluator",
                      "RegistryPusher"):
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
    # evaluated in- and out-of-domain, blessed on the absolute rules (no baseline yet), pushed
    ev = summary["evaluation"]
    assert sorted(ev["domains"]) == ["in", "out"] and ev["baseline"] is None
    assert ev["best_setting"]["key"] in ("ddpm-T2-n0.05-K1", "ddim-T2-n0.05-K1")
    # FID/KID per domain with n, and the paper's Table 1 with the trained model's R_k
    for d in ("in", "out"):
        fk = ev["domains"][d]["fid_kid"]
        assert fk["images"] == 2 and fk["settings"][ev["best_setting"]["key"]]["n_a"] == 2
    gap = ev["domain_gap"]
    assert [r["scale"] for r in gap["rows"]] == ["full", "x2", "x4", "x8"]
    assert gap["guidance"]["available"] and all(r["guidance"] for r in gap["rows"][1:])
    assert "domain gap (paper Table 1)" in out and "against 2 sharp images" in out
    rules = {r["rule"]: r["verdict"] for r in summary["blessing"]["rules"]}
    assert summary["blessing"]["blessed"] and rules == {
        "finite": "pass", "ood_lpips": "pass", "beats_input": "pass",
        "regression": "skipped"}, summary["blessing"]
    assert summary["push"]["pushed"] == 1 and summary["push"]["pushed_version"] == "1"
    assert "blessed: YES" in out and "registered: version 1" in out
    first_model = summary["model_uri"]
    # the run-page artifacts (system.Markdown / HTML / Metrics types) under LocalDagRunner too
    store = _store(str(run / "metadata.sqlite"))
    by_type = {t.name: store.get_artifacts_by_type(t.name) for t in store.get_artifact_types()}
    pages = {a.custom_properties["display_name"].string_value: a.uri
             for a in by_type["system.Markdown"]}
    # the pusher's page (40b3c62) names the registered version
    assert set(pages) == {"gate verdict", "domain drift", "registry: deblur-icdpm"}
    with open(pages["gate verdict"]) as f:
        assert f.read().startswith("## Blessed: YES")
    with open(pages["domain drift"]) as f:
        assert "| test_ood (2) | blurry_mean_luma |" in f.read()
    assert len(by_type["system.HTML"]) == 1 and len(by_type["system.Metrics"]) == 3

    # The registered model loads through the registry API and deblurs an image of any size.
    from components.registry.registry import load_latest

    model, manifest = load_latest(str(run / "registry"), "deblur-icdpm")
    assert manifest["version"] == 1 and manifest["sampling"]["key"] == ev["best_setting"]["key"]
    assert manifest["metrics"]["out"]["lpips"] == pytest.approx(ev["best"]["out"]["lpips"])
    # serving_default of the registered copy samples with the chosen setting
    chosen = ev["best_setting"]
    assert manifest["serving_default"] == {k: chosen[k] for k in ("sampler", "steps",
                                                                  "max_noise", "samples")}
    assert int(model.default_steps.numpy()) == chosen["steps"]
    assert bool(model.default_deterministic.numpy()) == (chosen["sampler"] == "ddim")
    import numpy as np
    import tensorflow as tf

    img = np.random.default_rng(0).integers(0, 256, (21, 30, 3), dtype=np.uint8)
    out_img = model.signatures["serving_default"](image=tf.constant(img))["image"].numpy()
    assert out_img.shape == img.shape and out_img.dtype == np.uint8
    # deblur predict: the registry's newest version, at the setting its manifest records
    from PIL import Image

    Image.fromarray(img).save(tmp_path / "blurry.png")
    capsys.readouterr()
    assert cli.main(["predict", str(tmp_path / "blurry.png"), str(tmp_path / "sharp.png"),
                     "--model", str(run / "registry"), "--json"]) == 0
    pred = json.loads(capsys.readouterr().out)
    assert pred["model"].startswith("registry ") and pred["model"].endswith("(version 1)")
    assert {k: pred["setting"][k] for k in ("sampler", "steps", "max_noise", "samples")} == \
        {k: manifest["sampling"][k] for k in ("sampler", "steps", "max_noise", "samples")}
    assert np.asarray(Image.open(tmp_path / "sharp.png")).shape == img.shape
    # ... and tile by tile, from the registered SavedModel alone
    assert cli.main(["predict", str(tmp_path / "blurry.png"), str(tmp_path / "tiled.png"),
                     "--model", str(run / "registry"), "--tile", "16", "--overlap", "8",
                     "--json"]) == 0
    capsys.readouterr()
    assert np.asarray(Image.open(tmp_path / "tiled.png")).shape == img.shape

    # A second run: its baseline is the first run's blessed model, measured now; with a
    # threshold no model meets it is not blessed, and the pusher records why, pushing nothing.
    d = tiny_config(tmp_path)
    d["gate"]["ood_lpips_max"] = 0.001
    assert cli.main(["run-local", "--config", write_config(tmp_path, d)]) == 0
    out = capsys.readouterr().out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["model_uri"] != first_model
    assert summary["evaluation"]["baseline"]["model"].startswith(first_model)
    assert "baseline (latest blessed model" in out
    rules = {r["rule"]: r["verdict"] for r in summary["blessing"]["rules"]}
    assert not summary["blessing"]["blessed"] and rules["ood_lpips"] == "fail"
    assert rules["regression"] in ("pass", "fail")  # measured against the baseline, not skipped
    assert summary["push"]["pushed"] == 0 and "not blessed" in summary["push"]["reason"]
    assert "blessed: NO" in out and "not registered: model not blessed" in out
    from components.registry.registry import Registry

    assert Registry(str(run / "registry"), "deblur-icdpm").versions() == [1]
    states = execution_states(str(run / "metadata.sqlite"))
    for component in ("DeblurIngest", "Trainer", "DeblurEvaluator", "RegistryPusher"):
        runs = [v for t, v in states.items() if t.endswith(component)]
        assert runs == [["COMPLETE", "COMPLETE"]], (component, states)


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


KILLED_RUN_LOCAL = r"""
import sys, time
from trainer import train as T

original = T.train


def paused_train(exp, examples, out, **kw):
    on_step = kw.get("on_step")

    def hold(step, row):  # checkpoint 10 is written, step 12 is not: hold until SIGKILL
        if on_step:
            on_step(step, row)
        if step == 12:
            print("PAUSED", flush=True)
            time.sleep(3600)

    return original(exp, examples, out, **{**kw, "on_step": hold})


T.train = paused_train
from deblur import cli

sys.exit(cli.main(["run-local", "--config", sys.argv[1]]))
"""


@pytest.mark.slow
def test_a_killed_run_local_resumes_its_training_and_leaves_no_zombie(tmp_path, capsys, caplog):
    """SIGKILL during training left the Trainer RUNNING in ML Metadata for good, and the rerun
    trained from step 0. Now the rerun marks the dead execution CANCELED and its Trainer goes
    on from the killed training's last checkpoint (same data, same experiment)."""
    import logging
    import signal
    import subprocess
    import sys

    d = tiny_config(tmp_path)
    d["training"]["model"] = FAST_MODEL
    d["training"]["train"].update(steps=20, checkpoint_every=10, log_every=1)
    path = write_config(tmp_path, d)
    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    log = open(tmp_path / "killed.log", "w")
    p = subprocess.Popen([sys.executable, "-c", KILLED_RUN_LOCAL, path], stdout=subprocess.PIPE,
                         stderr=log, text=True, env=env, start_new_session=True)
    try:
        import select

        line = ""
        while "PAUSED" not in line:  # waits on the pipe (the bound only guards against a hang)
            if not select.select([p.stdout], [], [], 1800)[0]:
                raise AssertionError("no PAUSED line in 30 min")
            line = p.stdout.readline()
            if not line and p.poll() is not None:
                raise AssertionError((tmp_path / "killed.log").read_text()[-3000:])
        killed_runs = list((run / "pipeline_root" / "Trainer" / "model_run").iterdir())
        assert len(killed_runs) == 1
        assert (killed_runs[0] / "checkpoints" / "ckpt-10.index").exists()
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        log.close()
    zombie = [v for t, v in executions(str(run / "metadata.sqlite")).items() if t.endswith("Trainer")]
    assert zombie == ["RUNNING"]

    with caplog.at_level(logging.WARNING, logger="trainer.train"):
        assert cli.main(["run-local", "--config", path]) == 0
    err = capsys.readouterr().err
    states = execution_states(str(run / "metadata.sqlite"))
    trainer = [v for t, v in states.items() if t.endswith("Trainer")]
    assert trainer == [["CANCELED", "COMPLETE"]], states
    assert "Trainer execution" in err and "of an interrupted run marked CANCELED" in err
    assert f"resumed from {run}/pipeline_root/Trainer/model_run/" in caplog.text
    assert "ckpt-10 at step 10" in caplog.text
    summary = json.loads((run / "summary.json").read_text())
    assert summary["training"]["last"]["step"] == 20
    # the resumed ModelRun holds the whole history: steps 1-10 from the killed run, 11-20 new
    new_run = summary["model_uri"].replace("/model/", "/model_run/")
    history = json.loads(open(os.path.join(new_run, "history.json")).read())
    assert [h["step"] for h in history] == list(range(1, 21))
    assert not list((run / "pipeline_root" / "Trainer" / "interrupted").iterdir())
