"""Scheduled retraining, locally: caching on, warm start from the latest blessed model, new
spans. Four runs of `deblur run-local` in one work dir: a first run, then one on unchanged
data, one after a file changed, one after a new span arrived; each does the work its inputs
call for, and says so in ML Metadata and in its summary.

Tiny on purpose (3 training pairs of 64 x 64 per span, 3 steps of a one-level UNet, one
sampling setting on one image per evaluation split): a 3-step model cannot beat its blurry
input, so the gate's beats_input rule is opened up (input_lpips_margin -1, input_psnr_tolerance
100) and the regression tolerance is 1; components/evaluator tests those rules. Nothing here
depends on timing: file changes also move the modification time by a whole second.
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from deblur import cli
from tests import fixtures as fx
from tests.test_pipeline_local import FAST_MODEL, execution_states, write_config

pytestmark = pytest.mark.slow  # four whole run-locals in one work dir

PIPELINE = ("DeblurIngest", "StatisticsGen", "ImportSchemaGen", "ExampleValidator",
            "ValidationGate", "DomainDriftReport", "Trainer", "DeblurEvaluator", "RegistryPusher")


def synth(out, seed, pairs, size):
    from core import synth as synth_lib

    synth_lib.generate(str(out), pairs=pairs, test_pairs=1, size=size, seed=seed)
    return out


def add_span(root, n, seed):
    """span-<n>/train/<seq>/{blur,sharp}/*.png: a GoPro layout of its own."""
    src = synth(root.parent / f"synth-span-{n}", seed, pairs=3, size=(64, 64))
    shutil.copytree(src / "gopro_synth" / "GOPRO_Large" / "train", root / f"span-{n}" / "train")


def config(tmp_path):
    tests = synth(tmp_path / "synth-test", 7, pairs=1, size=(192, 192))  # NIQE: 2 x 96 px
    return {
        "data": {"sources": [
            {"layout": "gopro", "root": str(tmp_path / "train"), "subsets": ["train"],
             "dataset": "gopro_synth", "domain": "in", "span_pattern": "span-{SPAN}"},
            {"layout": "gopro", "root": str(tests / "gopro_synth"), "subsets": ["test"],
             "dataset": "gopro_synth", "domain": "in"},
            {"layout": "realblur", "root": str(tests / "realblur_synth"), "subsets": ["test"],
             "split_names": {"test": "test_ood"}, "dataset": "realblur_synth", "domain": "out"}]},
        "ingest": {"train_crop_size": 32},
        "training": {"experiment": "tiny", "model": FAST_MODEL, "data": {"crop_size": 32},
                     "train": {"steps": 3, "global_batch_size": 2, "log_every": 1}},
        "evaluation": {"grid": [{"sampler": "ddim", "steps": 2, "max_noise": 0.05}],
                       "max_images_per_split": 1},
        "gate": {"ood_lpips_max": 0.99, "regression_tolerance": 1.0, "input_lpips_margin": -1.0,
                 "input_psnr_tolerance": 100.0},
        "registry": {"servability_check": False, "promote_to": None},  # tested end to end
        "runner": {"work_dir": str(tmp_path / "run")},
    }


def run(tmp_path, path, capsys):
    # the options of the issue, as a user types them
    assert cli.main(["run-local", "--config", path, "--set", "runner.enable_cache=true",
                     "--set", "training.warm_start=latest_blessed"]) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    return summary, out


def latest_states(tmp_path):
    """{component: state of its newest execution}"""
    states = execution_states(str(tmp_path / "run" / "metadata.sqlite"))
    return {c: next(v[-1] for t, v in states.items() if t.endswith("." + c)) for c in PIPELINE}


def test_three_runs_do_the_work_their_inputs_call_for(tmp_path, capsys):
    add_span(tmp_path / "train", 1, seed=11)
    path = write_config(tmp_path, config(tmp_path))
    registry = tmp_path / "run" / "registry" / "deblur-icdpm"

    # 0. the first run: everything runs; no blessed model yet, so a cold start
    first, out = run(tmp_path, path, capsys)
    assert set(latest_states(tmp_path).values()) == {"COMPLETE"}
    assert first["ingest"]["processed"] == {"units": 3, "inputs": 5}
    assert first["warm_start"]["parent"] is None
    assert first["warm_start"]["reason"] == "no blessed model yet"
    assert first["push"]["pushed_version"] == "1"
    assert "training: from random weights (no blessed model yet)" in out
    assert "registry: new version 1 (blessed)" in out

    # 1. unchanged data: the ingest, the statistics, the validation and the training come from
    # the cache; the evaluator runs again (its baseline, the latest blessed model, is now the
    # cached model itself) and the pusher registers nothing new
    second, out = run(tmp_path, path, capsys)
    states = latest_states(tmp_path)
    assert {c for c, s in states.items() if s == "CACHED"} == {
        "DeblurIngest", "StatisticsGen", "ImportSchemaGen", "ExampleValidator", "ValidationGate",
        "DomainDriftReport", "Trainer"}, states
    assert states["DeblurEvaluator"] == states["RegistryPusher"] == "COMPLETE"
    assert second["examples_uri"] == first["examples_uri"]
    assert second["model_uri"] == first["model_uri"]
    assert second["push"]["pushed"] == 0 and second["push"]["already_registered"] == 1
    r = second["retraining"]
    assert r["inputs"]["changed"] is False and r["registered"]["new_version"] is None
    assert "Trainer" in r["cached"] and r["training"].startswith("reused (cached)")
    assert "inputs: unchanged" in out and "registry: nothing new (already registered as version 1" in out
    assert sorted(int(v) for v in os.listdir(registry) if v.isdigit()) == [1]

    # 2. one file changed in span 1: its span is ingested again (the test sets are reused),
    # and everything downstream runs, warm-started from version 1
    changed = sorted((tmp_path / "train" / "span-1" / "train").glob("*/sharp/*.png"))[0]
    changed.write_bytes(fx.png_bytes(np.ascontiguousarray(np.asarray(Image.open(changed))[:, ::-1])))
    st = os.stat(changed)
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    third, out = run(tmp_path, path, capsys)
    states = latest_states(tmp_path)
    assert {c for c, s in states.items() if s == "CACHED"} == {"ImportSchemaGen"}, states
    ing = third["ingest"]
    assert ing["processed"] == {"units": 1, "inputs": 3} and ing["reused"] == {"units": 2, "inputs": 2}
    span1 = next(u for u in ing["units"] if u["span"] == 1)
    assert (span1["status"], span1["change"], span1["changed_pairs"]) == ("ingested", "changed", 1)
    assert third["warm_start"]["parent"]["version"] == 1
    assert (third["warm_start"]["start_step"], third["warm_start"]["target_step"]) == (3, 6)
    assert third["training"]["first"]["step"] == 4 and third["training"]["last"]["step"] == 6
    assert third["push"]["pushed_version"] == "2"
    manifest = json.loads((registry / "2" / "manifest.json").read_text())
    assert manifest["warm_start"]["parent"]["version"] == 1  # the registry says where it began
    assert "warm start from registry version 1" in out or "warm start from ML Metadata model" in out
    assert "span 1 (span-1): changed, ingested (1 changed)" in out

    # 3. a new span: only it is ingested; the model trains on both spans, from version 2
    add_span(tmp_path / "train", 2, seed=22)
    fourth, out = run(tmp_path, path, capsys)
    states = latest_states(tmp_path)
    assert {c for c, s in states.items() if s == "CACHED"} == {"ImportSchemaGen"}, states
    ing = fourth["ingest"]
    assert ing["processed"] == {"units": 1, "inputs": 3} and ing["reused"] == {"units": 3, "inputs": 5}
    assert [(u["span"], u["status"], u["change"]) for u in ing["units"]][:2] == [
        (1, "reused", "unchanged"), (2, "ingested", "new")]
    assert ing["splits"]["train"]["written"] == 6  # old and new
    assert fourth["warm_start"]["parent"]["version"] == 2
    assert fourth["warm_start"]["target_step"] == 9
    assert fourth["push"]["pushed_version"] == "3"
    assert "span 2 (span-2): new, ingested (3 new)" in out
    assert sorted(int(v) for v in os.listdir(registry) if v.isdigit()) == [1, 2, 3]
