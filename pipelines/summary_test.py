"""The run summary's "what this run did" lines, from the records the Trainer leaves."""
from __future__ import annotations

from pipelines import summary


def _training_lines(s: dict):
    return [ln for ln in summary._format_retraining(summary.retraining(s))
            if ln.startswith("  training:")]


def test_a_resumed_training_is_not_called_a_training_from_random_weights():
    """After a killed run resumed from its checkpoint, the summary said "training: from random
    weights"."""
    cold = {"mode": "none", "parent": None, "start_step": 0, "steps": 20, "target_step": 20,
            "reason": "training.warm_start is none"}
    s = {"executions": {"Trainer": "COMPLETE"}, "warm_start": cold}
    assert _training_lines(s) == ["  training: from random weights (training.warm_start is none)"]
    s["resumed"] = [{"step": 50, "checkpoint": "ckpt-50", "time": "2026-01-01T00:00:00Z"}]
    assert _training_lines(s) == [
        "  training: resumed at step 50 from the checkpoint of an interrupted run (ckpt-50); "
        "that training began from random weights (training.warm_start is none)"]
    warm = {**cold, "mode": "latest_blessed", "parent": {"name": "registry version 3"},
            "start_step": 40, "target_step": 60, "reason": "from registry version 3"}
    s = {"executions": {"Trainer": "COMPLETE"}, "warm_start": warm, "resumed": s["resumed"]}
    assert _training_lines(s) == [
        "  training: resumed at step 50 from the checkpoint of an interrupted run (ckpt-50); "
        "that training began as a warm start from registry version 3 (its step 40), 20 more "
        "steps to step 60"]
