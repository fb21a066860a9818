"""TrainingReport's executor on a hand-made ModelRun: the Trainer's run-page artifacts."""
from __future__ import annotations

import json

from tfx.types import standard_artifacts

from components import run_page
from pipelines.kubeflow import training_report as T


def test_curves_and_metrics_of_a_warm_started_training(tmp_path):
    run_dir = tmp_path / "model_run"
    run_dir.mkdir()
    history = [{"step": s, "lr": 1e-4 * min(1, s / 20), "loss_dpm": 1.0 / s,
                "loss_guidance_x2": 0.5 / s, "skipped": 0} for s in (110, 120, 130)]
    (run_dir / "history.json").write_text(json.dumps(history))
    (run_dir / "warm_start.json").write_text(json.dumps({
        "mode": "latest_blessed", "parent": {"name": "registry version 3"}, "start_step": 100,
        "steps": 30, "target_step": 130, "reason": "from registry version 3"}))
    model_run = standard_artifacts.ModelRun()
    model_run.uri = str(run_dir)
    curves, metrics = run_page.HTML(), run_page.Metrics()
    curves.uri = str(tmp_path / "TrainingReport" / "curves" / "value")
    metrics.uri = str(tmp_path / "TrainingReport" / "metrics")
    T.Executor().Do({"model_run": [model_run]}, {"curves": [curves], "metrics": [metrics]}, {})
    page = (tmp_path / "TrainingReport" / "curves" / "value").read_text()
    assert page.count("data:image/png;base64,") == 1
    assert "warm start from registry version 3 (its step 100), 30 more steps to step 130" in page
    assert metrics.get_string_custom_property("display_name").startswith(
        "training: warm start from registry version 3")
    values = {k: metrics.get_float_custom_property(k) for k in (
        "final step", "steps this run", "warm-start parent step", "final loss_dpm",
        "final loss_guidance_x2", "final learning rate")}
    assert values == {"final step": 130.0, "steps this run": 30.0,
                      "warm-start parent step": 100.0, "final loss_dpm": 1.0 / 130,
                      "final loss_guidance_x2": 0.5 / 130, "final learning rate": 1e-4}


def test_a_training_from_random_weights_says_so(tmp_path):
    assert T.start_text({"parent": None, "reason": "no blessed model yet"}, None) == \
        "from random weights (no blessed model yet)"
    assert T.scalars([], None) == {}
    assert "No history.json" in T.report_html([], None, None)
