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
        # 192: NIQE needs two 96-pixel blocks per side. 6 pairs at seed 1 are two sequences of
        # 3, one held out as val (data.synthetic.val_fraction 0.2): 3 train, 3 val
        "data": {"synthetic": {"pairs": 6, "test_pairs": 2, "size": [192, 192], "seed": 1}},
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
        # the servability check (a serving process, ~30 s) is the end-to-end test's business
        "registry": {"servability_check": False, "promote_to": None},
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
    d["registry"] = {}  # the defaults: the servability check, then staging moves
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
                      "RegistryPusher", "ServabilityCheck"):
        assert any(component in t for t in states), (component, states)
    assert set(states.values()) == {"COMPLETE"}, states
    summary = json.loads((run / "summary.json").read_text())
    ing = summary["ingest"]
    assert ing["written"] == 6 + 2 + 2 + 2 == ing["inputs"]
    # the in-domain val split is a held-out sequence of the train subset, val_ood the
    # RealBlur-like train list (docs/data.md "Validation splits")
    assert {s: c["written"] for s, c in ing["splits"].items()} == {
        "train": 3, "val": 3, "test": 2, "val_ood": 2, "test_ood": 2}
    assert [(h["split"], h["held_groups"], h["groups"]) for h in ing["holdouts"]] == [("val", 1, 2)]
    assert summary["anomalies"] == {s: [] for s in ("train", "val", "test", "val_ood", "test_ood")}
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
    # the setting was chosen on validation (val, val_ood) and judged on test, beside the
    # blurry input and the classical baselines, each with its paired comparison
    assert ev["chosen_on"] == "validation" and sorted(ev["validation"]["splits"]) == ["val", "val_ood"]
    assert sorted(ev["classical"]) == ["gaussian_s1", "nlmeans", "unsharp_r2_a0.5", "unsharp_r2_a1.0"]
    assert ev["comparisons"]["baselines"]["nlmeans"]["out"]["lpips"]["n"] == 2
    assert "chosen on validation (val, val_ood)" in out and "unsharp_r2_a1.0" in out
    assert re.search(r"model - it: LPIPS [+-]\d\.\d{4} \[[+-]\d\.\d{4}, [+-]\d\.\d{4}\], wins \d/2", out)
    rules = {r["rule"]: r["verdict"] for r in summary["blessing"]["rules"]}
    assert summary["blessing"]["blessed"] and {k: v for k, v in rules.items()
                                               if k != "beats_baselines"} == {
        "finite": "pass", "ood_lpips": "pass", "beats_input": "pass",
        "regression": "skipped"}, summary["blessing"]
    # a 3-step model: the classical baselines are reported, not enforced (the default)
    assert rules["beats_baselines"] in ("pass", "fail")
    assert summary["push"]["pushed"] == 1 and summary["push"]["pushed_version"] == "1"
    assert "blessed: YES" in out and "registered: version 1" in out
    # the pushed version served real requests (in- and out-of-domain, PNG and binary) through
    # deblur serve's code, matching the evaluator's outputs; then staging moved, production not
    sv = summary["servability"]
    assert sv["checked"] and sv["passed"], sv
    assert sorted({(r["domain"], r["mode"]) for r in sv["requests"]}) == [
        ("in", "binary"), ("in", "png"), ("out", "binary"), ("out", "png")]
    assert all(r["model_version"] == "1" and r["ok"] for r in sv["requests"])
    assert sv["alias_moved"] == {"alias": "staging", "from": None, "to": 1}
    assert "alias moved: staging: unset -> version 1" in out
    from components.registry.aliases import Aliases
    from components.registry.registry import Registry as _Registry

    aliases = Aliases(_Registry(str(run / "registry"), "deblur-icdpm"))
    (move,) = aliases.history()
    assert (move.alias, move.version, move.action) == ("staging", 1, "promote")
    assert move.run["run_id"] == summary["pipeline_run"] and aliases.get("production") is None
    first_model = summary["model_uri"]
    # the run-page artifacts (system.Markdown / HTML / Metrics types) under LocalDagRunner too
    store = _store(str(run / "metadata.sqlite"))
    by_type = {t.name: store.get_artifacts_by_type(t.name) for t in store.get_artifact_types()}
    pages = {a.custom_properties["display_name"].string_value: a.uri
             for a in by_type["system.Markdown"]}
    # the pusher's page (40b3c62) names the registered version
    assert set(pages) == {"gate verdict", "domain drift", "registry: deblur-icdpm",
                          "servability: deblur-icdpm"}
    with open(pages["servability: deblur-icdpm"]) as f:
        assert "**deblur-icdpm@staging: unset -> version 1**" in f.read()
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
    d["registry"] = {}
    d["gate"]["ood_lpips_max"] = 0.001
    assert cli.main(["run-local", "--config", write_config(tmp_path, d)]) == 0
    out = capsys.readouterr().out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["model_uri"] != first_model
    assert summary["evaluation"]["baseline"]["model"].startswith(first_model)
    assert "previous blessed model (the regression rule's reference" in out
    rules = {r["rule"]: r["verdict"] for r in summary["blessing"]["rules"]}
    assert not summary["blessing"]["blessed"] and rules["ood_lpips"] == "fail"
    assert rules["regression"] in ("pass", "fail")  # measured against the baseline, not skipped
    assert summary["push"]["pushed"] == 0 and "not blessed" in summary["push"]["reason"]
    assert "blessed: NO" in out and "not registered: model not blessed" in out
    assert not summary["servability"]["checked"] and aliases.get("staging") == 1
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
        trainings = list((run / "pipeline_root" / "Trainer" / "checkpoints").iterdir())
        assert len(trainings) == 1
        assert (trainings[0] / "checkpoints" / "ckpt-10.index").exists()
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
    # from the training's own folder outside the executions' outputs
    assert f"resumed from {run}/pipeline_root/Trainer/checkpoints/" in caplog.text
    assert "ckpt-10 at step 10" in caplog.text
    summary = json.loads((run / "summary.json").read_text())
    assert summary["training"]["last"]["step"] == 20
    # the resumed ModelRun holds the whole history: steps 1-10 from the killed run, 11-20 new
    new_run = summary["model_uri"].replace("/model/", "/model_run/")
    history = json.loads(open(os.path.join(new_run, "history.json")).read())
    assert [h["step"] for h in history] == list(range(1, 21))
    assert not list((run / "pipeline_root" / "Trainer" / "checkpoints").iterdir())


TERMINATED_RUN_LOCAL = r"""
import sys, threading
from trainer import train as T

termed = threading.Event()
handler = T.TermGuard._handler


def record(self, signum, frame):  # the real handler, and the test's hold below lets go
    termed.set()
    return handler(self, signum, frame)


T.TermGuard._handler = record
original = T.train


def paused_train(exp, examples, out, **kw):
    on_step = kw.get("on_step")

    def hold(step, row):  # checkpoint 10 is written, step 12 is not: hold until SIGTERM
        if on_step:
            on_step(step, row)
        if step == 12 and not termed.is_set():
            print("PAUSED", flush=True)
            termed.wait(1800)

    return original(exp, examples, out, **{**kw, "on_step": hold})


T.train = paused_train
from deblur import cli

sys.exit(cli.main(["run-local", "--config", sys.argv[1]]))
"""


def _wait_for_line(p, text, log_path, bound=1800):
    """Reads p's stdout until a line holds `text` (the bound only guards against a hang)."""
    import select

    line = ""
    while text not in line:
        if not select.select([p.stdout], [], [], bound)[0]:
            raise AssertionError(f"no {text} line in {bound} s")
        line = p.stdout.readline()
        if not line and p.poll() is not None:
            raise AssertionError(open(log_path).read()[-3000:])


@pytest.mark.slow
def test_sigterm_during_run_local_training_keeps_the_checkpoint_it_announces(tmp_path, capsys):
    """Kubernetes stops pods with SIGTERM. The Trainer checkpointed and said "run the same
    command again to resume", then TFX deleted the failed execution's output folder, the
    checkpoint with it, and the rerun trained from step 0. Now the training lives in a folder
    of its own outside the execution's output, keyed by its data, experiment and warm start:
    the announced checkpoint survives, the rerun resumes from it and moves the finished
    training into its ModelRun."""
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
    log_path = tmp_path / "terminated.log"
    with open(log_path, "w") as log:
        p = subprocess.Popen([sys.executable, "-c", TERMINATED_RUN_LOCAL, path],
                             stdout=subprocess.PIPE, stderr=log, text=True, env=env,
                             start_new_session=True)
        try:
            _wait_for_line(p, "PAUSED", log_path)
            p.send_signal(signal.SIGTERM)
            code = p.wait(timeout=600)  # a guard against a hang (the watchdog ends it in 25 s)
        finally:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    err = log_path.read_text()
    assert code == 143, err[-3000:]
    said = [ln for ln in err.splitlines() if ln.startswith("deblur: error: ")]
    m = re.fullmatch(r"deblur: error: terminated by SIGTERM at step 12 of 20; checkpoint of step "
                     r"12 in (\S+): run the same command again to resume", said[-1])
    assert m, said
    announced = m.group(1)
    # the announced checkpoint is there: outside the failed execution's output, which TFX
    # removed
    assert os.path.exists(os.path.join(announced, "ckpt-12.index"))
    assert announced.startswith(f"{run}/pipeline_root/Trainer/checkpoints/")
    model_runs = run / "pipeline_root" / "Trainer" / "model_run"
    assert not model_runs.exists() or not any(
        (r / "checkpoints").exists() for r in model_runs.iterdir())

    assert cli.main(["run-local", "--config", path]) == 0
    out = capsys.readouterr().out
    assert "training: resumed at step 12 from the checkpoint of an interrupted run" in out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["training"]["last"]["step"] == 20
    new_run = summary["model_uri"].replace("/model/", "/model_run/")
    history = json.loads(open(os.path.join(new_run, "history.json")).read())
    assert [h["step"] for h in history] == list(range(1, 21))  # 1-12 before SIGTERM, 13-20 now
    assert os.path.exists(os.path.join(new_run, "checkpoints", "ckpt-20.index"))
    assert not os.path.exists(os.path.dirname(announced))  # moved into the ModelRun, gone


HELD_RUN_LOCAL = r"""
import signal, sys, threading
from trainer import train as T

released = threading.Event()
signal.signal(signal.SIGUSR1, lambda signum, frame: released.set())
original = T.train


def held_train(exp, examples, out, **kw):
    on_step = kw.get("on_step")

    def hold(step, row):  # the first logged step: hold (Trainer RUNNING) until SIGUSR1
        if on_step:
            on_step(step, row)
        if not released.is_set():
            print("PAUSED", flush=True)
            released.wait(1800)

    return original(exp, examples, out, **{**kw, "on_step": hold})


T.train = held_train
from deblur import cli

sys.exit(cli.main(["run-local", "--config", sys.argv[1]]))
"""


def _trainer_state(metadata_path) -> str:
    state, = [v for t, v in executions(str(metadata_path)).items() if t.endswith("Trainer")]
    return state


@pytest.mark.slow
def test_two_run_locals_sharing_a_metadata_store_do_not_cancel_each_other(tmp_path):
    """Two run-locals on different work dirs with one runner.metadata_path: the second took
    the first's running executions for a dead run's and marked them CANCELED, and the first
    crashed building its summary. Now the second refuses at once, in one line naming the
    first's work dir and pid, and the first finishes untouched."""
    import signal
    import subprocess
    import sys

    from pipelines import local_runner

    shared = tmp_path / "shared" / "metadata.sqlite"
    paths = {}
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        d = tiny_config(tmp_path / name)
        d["training"]["model"] = FAST_MODEL
        d["training"]["train"].update(steps=20)  # tiny logs every 10 steps
        d["runner"]["metadata_path"] = str(shared)
        paths[name] = write_config(tmp_path / name, d)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    log_path = tmp_path / "a.log"
    with open(log_path, "w") as log:
        a = subprocess.Popen([sys.executable, "-c", HELD_RUN_LOCAL, paths["a"]],
                             stdout=subprocess.PIPE, stderr=log, text=True, env=env,
                             start_new_session=True)
        try:
            _wait_for_line(a, "PAUSED", log_path)
            assert _trainer_state(shared) == "RUNNING"
            b = subprocess.run(
                [sys.executable, "-c", "import sys; from deblur import cli; "
                 "sys.exit(cli.main(sys.argv[1:]))", "run-local", "--config", paths["b"]],
                capture_output=True, text=True, env=env, timeout=1800)
            said = [ln for ln in b.stderr.splitlines() if ln.startswith("deblur: error: ")]
            assert b.returncode == 2, b.stderr[-3000:]
            assert len(said) == 1 and said[0].startswith(
                f"deblur: error: another deblur run-local is using the ML Metadata store "
                f"{shared} (work dir {tmp_path / 'a' / 'run'}, pid {a.pid}, started "), said
            assert said[0].endswith("); wait for it to end, or give this run its own "
                                    "runner.metadata_path")
            assert _trainer_state(shared) == "RUNNING"  # not CANCELED by b
            assert not (tmp_path / "b" / "run" / "data").exists()  # b did nothing
            a.send_signal(signal.SIGUSR1)
            code = a.wait(timeout=1800)  # a guard against a hang
        finally:
            if a.poll() is None:
                os.killpg(a.pid, signal.SIGKILL)
                a.wait()
    assert code == 0, log_path.read_text()[-3000:]
    assert set(executions(str(shared)).values()) == {"COMPLETE"}
    summary = json.loads((tmp_path / "a" / "run" / local_runner.RUN_SUMMARY_FILE).read_text())
    assert summary["training"]["last"]["step"] == 20


@pytest.mark.slow
def test_a_missing_base_model_is_said_at_start_up_and_in_the_summary(tmp_path, capsys,
                                                                      monkeypatch):
    """training.base_model: auto without the shipped models/<experiment>/saved_model.pb
    trained from random weights, and the summary only said "training.warm_start is none". Now
    a warning at start-up and in the summary says the base model was not found, where it was
    looked for, what that means for the quickstart's gate, and how to get it. (The shipped
    folder here is one without its saved_model.pb, for the tiny experiment: the test's own.)"""
    from trainer import experiments, warm_start

    shipped = tmp_path / "models"
    (shipped / "tiny").mkdir(parents=True)
    monkeypatch.setattr(warm_start, "SHIPPED_MODELS", str(shipped))
    monkeypatch.setitem(experiments.EXPERIMENTS, "tiny",
                        {**experiments.EXPERIMENTS["tiny"], "base_model": "tiny"})
    d = tiny_config(tmp_path)
    d["training"]["model"] = FAST_MODEL
    assert cli.main(["run-local", "--config", write_config(tmp_path, d)]) == 0
    cap = capsys.readouterr()
    said = (f"WARNING: the base model was not found: training.base_model is auto and there is "
            f"no {shipped}/tiny/saved_model.pb, so the Trainer starts from random weights")
    err = cap.err.splitlines()
    first = next(i for i, ln in enumerate(err) if ln.startswith(said))
    assert first < next(i for i, ln in enumerate(err) if "synthetic data:" in ln)  # start-up
    assert "quickstart's gate expects the fine-tuned base model" in err[first]
    assert "`git checkout models/tiny` or `make base-model`" in err[first]
    assert f"  {said}" in cap.out  # the printed summary
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["warm_start"]["warning"].startswith("the base model was not found")
    assert summary["warm_start"]["parent"] is None
