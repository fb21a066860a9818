"""Warm start (trainer/warm_start.py): a training that begins from an exported model goes on
from where its parent stopped, instead of from random weights."""
from __future__ import annotations

import json
import os
import re
import signal

import numpy as np
import pytest

from trainer import warm_start
from trainer.train_test import CROP, MODEL, ingested  # noqa: F401 (the module fixture)

PARENT_STEPS, CHILD_STEPS = 40, 6
# w(step) reaches 1 at step 20 and the EMA forgets its random start within ~10 steps
# (0.9^40 = 1.5%), so the parent's export is the model its last losses come from
RECIPE = {"model": MODEL, "data": {"crop_size": CROP},
          "train": {"global_batch_size": 4, "log_every": 1, "checkpoint_every": 100,
                    "image_summary_every": 1000, "ema_decay": 0.9, "dpm_warmup_steps": 20,
                    "lr_warmup_steps": 20, "learning_rate": 2e-3}}


def _exp(steps, **model):
    from trainer import experiments

    exp = experiments.get("tiny", **RECIPE).replace(train={"steps": steps})
    return exp.replace(model=model) if model else exp


def _unweighted(row):  # the loss without w(step): comparable at any step
    return row["loss_guidance"] + row["loss_dpm"]


@pytest.fixture(scope="module")
def parent(ingested, tmp_path_factory):  # noqa: F811
    from trainer import train

    out = str(tmp_path_factory.mktemp("parent"))
    result = train.train(_exp(PARENT_STEPS), ingested[1], out)
    return out, result["history"]


def test_warm_start_goes_on_from_the_parent(parent, ingested, tmp_path):  # noqa: F811
    from trainer import train

    parent_dir, parent_history = parent
    saved = os.path.join(parent_dir, "saved_model")
    info = json.load(open(os.path.join(saved, "deblur.json")))
    assert info["step"] == PARENT_STEPS  # what a warm start continues from

    record = warm_start.decide(str(tmp_path / "child"), "latest_blessed", CHILD_STEPS,
                               lambda: warm_start.Parent(saved, "the parent"))
    assert (record["start_step"], record["target_step"]) == (PARENT_STEPS, PARENT_STEPS + CHILD_STEPS)
    child = train.train(_exp(record["target_step"]), ingested[1], str(tmp_path / "child"),
                        warm_start=saved, export_info={"warm_start": record})["history"]
    # the step count goes on (w(step) and the checkpoint/TensorBoard steps), the optimizer is
    # fresh: its learning rate warms up again from lr / lr_warmup_steps
    assert [h["step"] for h in child] == list(range(PARENT_STEPS + 1, PARENT_STEPS + CHILD_STEPS + 1))
    assert child[0]["w"] == parent_history[-1]["w"] == 1.0
    assert child[0]["lr"] == pytest.approx(RECIPE["train"]["learning_rate"] / 20)
    # its first loss is the parent's last (mean of the last 5 batches), not a random
    # network's: the parent's own first loss is a cold start's on the same first batch (same
    # seed, same data order). Measured: 0.60 vs 0.52, cold 1.04.
    first, cold = _unweighted(child[0]), _unweighted(parent_history[0])
    last = float(np.mean([_unweighted(h) for h in parent_history[-5:]]))
    assert abs(first - last) < 0.25 * abs(cold - last), (first, last, cold)
    exported = json.load(open(os.path.join(tmp_path, "child", "saved_model", "deblur.json")))
    assert exported["warm_start"]["parent"]["name"] == "the parent"
    assert exported["step"] == PARENT_STEPS + CHILD_STEPS


@pytest.mark.slow  # a SIGTERM and a resume
def test_a_warm_start_cosine_spans_its_own_steps_and_survives_a_resume(parent, ingested,  # noqa: F811
                                                                      tmp_path):
    """train.lr_schedule "cosine" on a warm start decays over the child's steps (its optimizer
    starts at 0 at the parent's step), also after an interruption and a resume."""
    from trainer import train

    saved = os.path.join(parent[0], "saved_model")
    steps, warmup, lr = 8, 2, RECIPE["train"]["learning_rate"]
    exp = _exp(PARENT_STEPS + steps).replace(train={
        "lr_schedule": "cosine", "lr_warmup_steps": warmup, "checkpoint_every": 4})
    out = str(tmp_path / "child")

    def stop_at_5(step, row):  # as Kubernetes would: a checkpoint of step parent + 5
        if step == PARENT_STEPS + 5:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(train.TrainingTerminated):
        train.train(exp, ingested[1], out, warm_start=saved, on_step=stop_at_5)
    history = train.train(exp, ingested[1], out, warm_start=saved)["history"]
    resumes = json.load(open(os.path.join(out, "resumed.json")))
    assert [r["step"] for r in resumes] == [PARENT_STEPS + 5]  # resumed, not warm-started again
    # brute force: iteration i = step - parent - 1; warm-up min(1, (i + 1) / 2), then
    # (1 + cos(pi (i - 2) / 6)) / 2
    i = np.arange(steps)
    expected = lr * np.minimum(1.0, (i + 1) / warmup) * 0.5 * (
        1 + np.cos(np.pi * np.clip((i - warmup) / (steps - warmup), 0, 1)))
    assert [h["step"] for h in history] == list(range(PARENT_STEPS + 1, PARENT_STEPS + steps + 1))
    np.testing.assert_allclose([h["lr"] for h in history], expected, rtol=1e-5)
    assert history[-1]["lr"] < 0.1 * lr


def test_weights_come_from_the_saved_model_into_model_and_ema(parent):
    """Restored by object path from the SavedModel's variables: the parent's EMA, in both."""
    import tensorflow as tf

    from trainer.train import Trainer

    parent_dir, _ = parent
    trainer = Trainer(_exp(PARENT_STEPS + 1), parent_dir + "-unused")
    assert warm_start.restore(trainer, os.path.join(parent_dir, "saved_model")) == PARENT_STEPS
    reader = tf.train.load_checkpoint(os.path.join(parent_dir, "checkpoints"))
    for i, (v, e) in enumerate(zip(trainer.variables, trainer.ema)):
        ema = reader.get_tensor(f"ema/{i}/.ATTRIBUTES/VARIABLE_VALUE")
        np.testing.assert_array_equal(v.numpy(), ema)
        np.testing.assert_array_equal(e.numpy(), ema)
    assert int(trainer.step.numpy()) == PARENT_STEPS and int(trainer.optimizer.iterations) == 0


def test_another_architecture_is_refused_in_one_line(parent):
    from trainer.train import Trainer

    trainer = Trainer(_exp(50, diffusion_channels=16), parent[0] + "-unused")
    with pytest.raises(warm_start.WarmStartError,
                       match="its model differs in diffusion_channels") as e:
        warm_start.restore(trainer, os.path.join(parent[0], "saved_model"))
    assert "\n" not in str(e.value) and "training.warm_start: none" in str(e.value)


def test_prepare_is_the_one_setup_of_deblur_train_and_the_trainer(parent, tmp_path):
    """warm_start.prepare, which `deblur train --warm-start` and the pipeline's Trainer both
    call: train.steps are the steps beyond the parent's step, and the experiment train.train
    runs ends at the parent's step + them; the record is written before training, and a folder
    that has one keeps its decision; a parent of another architecture is refused before
    anything is written, in the caller's words."""
    saved = os.path.join(parent[0], "saved_model")

    def find():
        return warm_start.Parent(saved, "the parent")

    got = warm_start.prepare(_exp(CHILD_STEPS), str(tmp_path / "a"), mode="latest_blessed",
                             find_parent=find)
    assert got.exp.train.steps == PARENT_STEPS + CHILD_STEPS
    assert (got.record["start_step"], got.record["steps"]) == (PARENT_STEPS, CHILD_STEPS)
    assert got.train_kwargs == {"warm_start": saved, "export_info": {"warm_start": got.record}}
    assert json.load(open(tmp_path / "a" / warm_start.WARM_START_FILE)) == got.record
    again = warm_start.prepare(_exp(CHILD_STEPS), str(tmp_path / "a"))  # mode none now
    assert again.record == got.record and again.exp == got.exp
    # the pipeline's Trainer names its folder after the new record; other workers write none
    keyed = warm_start.prepare(_exp(CHILD_STEPS), lambda r: str(tmp_path / f"b{r['start_step']}"),
                               mode="latest_blessed", find_parent=find, write=False)
    assert keyed.out_dir == str(tmp_path / f"b{PARENT_STEPS}")
    assert not os.path.exists(keyed.out_dir)
    cold = warm_start.prepare(_exp(CHILD_STEPS), str(tmp_path / "c"))  # no parent
    assert cold.exp.train.steps == CHILD_STEPS and cold.train_kwargs["warm_start"] is None
    with pytest.raises(warm_start.WarmStartError) as e:
        warm_start.prepare(_exp(CHILD_STEPS, diffusion_channels=16), str(tmp_path / "d"),
                           mode="latest_blessed", find_parent=find,
                           instead="deblur train without --warm-start starts from random weights")
    assert re.fullmatch(r"cannot warm-start from the parent: its model differs in "
                        r"diffusion_channels \(\d+ there, 16 here\); nothing was trained "
                        r"\(deblur train without --warm-start starts from random weights\)",
                        str(e.value))
    assert not (tmp_path / "d").exists()


def test_a_parent_from_before_a_new_model_field_is_read_with_its_default(parent, tmp_path):
    """A ModelConfig field added after models were registered: a parent whose deblur.json has
    no such field was built with its default and warm-starts (here dropout, whose default the
    tiny experiment keeps); one that records another value is refused like any other
    architecture."""
    import shutil

    from trainer.train import Trainer

    old = str(tmp_path / "old")
    shutil.copytree(os.path.join(parent[0], "saved_model"), old)
    info_path = os.path.join(old, "deblur.json")
    info = json.load(open(info_path))
    assert info["experiment"]["model"].pop("dropout") == 0.0
    json.dump(info, open(info_path, "w"))
    trainer = Trainer(_exp(PARENT_STEPS + 1), str(tmp_path / "unused"))
    assert warm_start.restore(trainer, old) == PARENT_STEPS
    info["experiment"]["model"]["dropout"] = 0.1
    json.dump(info, open(info_path, "w"))
    with pytest.raises(warm_start.WarmStartError, match="differs in dropout"):
        warm_start.restore(trainer, old)  # refused before any variable is read


def test_a_retry_keeps_its_decision(tmp_path):
    """A retried Trainer (its own checkpoints) trains to the target it chose, even if another
    model was blessed meanwhile; no parent yet is a cold start that says so."""
    first = warm_start.decide(str(tmp_path), "latest_blessed", 5, lambda: None)
    assert first == {"mode": "latest_blessed", "parent": None, "start_step": 0, "steps": 5,
                     "target_step": 5, "reason": "no blessed model yet"}
    newer = warm_start.Parent("/nowhere", "a newer one")
    assert warm_start.decide(str(tmp_path), "latest_blessed", 5, lambda: newer) == first
    assert warm_start.decide(str(tmp_path / "b"), "none", 5)["reason"] == "training.warm_start is none"
    with pytest.raises(warm_start.WarmStartError, match="none, latest_blessed"):
        warm_start.decide(str(tmp_path / "c"), "latest", 5)


def test_the_base_model_serves_when_no_blessed_model_does(parent, tmp_path):
    """training.base_model: the parent of a training that has no blessed model to start from
    (warm_start none, or latest_blessed before the first blessing); a blessed one wins."""
    model_dir = os.path.join(parent[0], "saved_model")
    base = warm_start.Parent(model_dir, "the base model B")
    for mode, why in (("none", "training.warm_start is none"),
                      ("latest_blessed", "no blessed model yet")):
        rec = warm_start.decide(str(tmp_path / mode), mode, 5, lambda: None, base=base)
        assert rec["parent"]["saved_model_dir"] == model_dir
        assert rec["reason"] == f"from the base model B ({why})"
        assert (rec["start_step"], rec["target_step"]) == (PARENT_STEPS, PARENT_STEPS + 5)
    blessed = warm_start.Parent(model_dir, "registry version 2")
    rec = warm_start.decide(str(tmp_path / "b"), "latest_blessed", 5, lambda: blessed, base=base)
    assert rec["reason"] == "from registry version 2"


def test_base_model_auto_is_the_shipped_model_of_the_experiment(tmp_path, monkeypatch):
    shipped = tmp_path / "models"
    (shipped / "local").mkdir(parents=True)
    (shipped / "local" / "saved_model.pb").write_bytes(b"")
    monkeypatch.setattr(warm_start, "SHIPPED_MODELS", str(shipped))
    assert warm_start.base_model_dir("auto", "local") == str(shipped / "local")
    # the fine-tune's base model is the local experiment's (trainer/experiments.py base_model)
    assert warm_start.base_model_dir("auto", "local-finetune") == str(shipped / "local")
    assert warm_start.base_model_dir("auto", "tiny") is None  # none shipped: random weights
    assert warm_start.base_model_dir("none", "local") is None
    assert warm_start.base_model_dir("/m/x", "tiny") == "/m/x"


def test_a_worker_that_is_not_the_chief_decides_without_writing(tmp_path):
    """A multi-worker Trainer's other workers share the chief's ModelRun folder: they make the
    same decision but leave the record to the chief; once it exists they read it."""
    run = tmp_path / "run"
    mine = warm_start.decide(str(run), "latest_blessed", 5, lambda: None, write=False)
    assert mine["reason"] == "no blessed model yet" and not run.exists()
    chief = warm_start.decide(str(run), "latest_blessed", 5, lambda: None)
    assert (run / warm_start.WARM_START_FILE).exists() and chief == mine
    other = warm_start.Parent("/nowhere", "a newer one")
    assert warm_start.decide(str(run), "latest_blessed", 5, lambda: other, write=False) == chief


def test_train_cli_warm_start_needs_a_saved_model(ingested, tmp_path, capsys):  # noqa: F811
    from deblur import cli

    assert cli.main(["train", "--examples", ingested[1], "--out", str(tmp_path / "o"),
                     "--warm-start", str(tmp_path / "nope"), "--steps", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("deblur: error: --warm-start") and "no saved_model.pb" in err


def test_a_missing_parent_is_said_to_be_missing(tmp_path):
    """A parent whose model folder is gone was reported as "the parent's deblur.json records
    neither its step nor its experiment"; nothing is written for it."""
    gone = str(tmp_path / "models" / "7" / "Format-Serving")
    with pytest.raises(warm_start.WarmStartError) as e:
        warm_start.decide(str(tmp_path / "run"), "latest_blessed", 5,
                          lambda: warm_start.Parent(gone, "ML Metadata model 7"))
    assert str(e.value) == (f"cannot warm-start from ML Metadata model 7: its model {gone} is "
                            "missing (no saved_model.pb there: deleted or moved?); nothing was "
                            "trained (training.warm_start: none starts from random weights)")
    assert not (tmp_path / "run" / warm_start.WARM_START_FILE).exists()


def _damaged_copy(parent_dir, dest):
    import shutil

    shutil.copytree(os.path.join(parent_dir, "saved_model"), dest)
    data = os.path.join(dest, "variables", "variables.data-00000-of-00001")
    content = open(data, "rb").read()
    with open(data, "wb") as f:  # same size, one bit off: only the checksums tell
        f.write(content[:1000] + bytes([content[1000] ^ 1]) + content[1001:])
    return str(dest)


def test_a_parent_whose_variables_fail_their_checksum(parent, ingested, tmp_path, capsys):  # noqa: F811
    """89 lines of DataLossError in the middle of training: now one line naming the parent,
    before anything is written; in the pipeline, a registered parent falls back to the
    registry's intact copy of it."""
    from components.registry.registry import Registry
    from components.training import intact
    from deblur import cli

    damaged = _damaged_copy(parent[0], tmp_path / "damaged")
    with pytest.raises(warm_start.WarmStartError) as e:
        warm_start.decide(str(tmp_path / "run"), "latest_blessed", 5,
                          lambda: warm_start.Parent(damaged, "ML Metadata model 3"))
    message = str(e.value)
    assert message.startswith(f"cannot warm-start from ML Metadata model 3: its variables in "
                              f"{damaged}/variables do not read back (TensorBundle at "), message
    assert "Checksum does not match" in message
    assert "\n" not in message and not (tmp_path / "run").exists()
    # deblur train --warm-start: the same line, exit 2, nothing written
    out = tmp_path / "out"
    assert cli.main(["train", "--examples", ingested[1], "--out", str(out), "--warm-start",
                     damaged, "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        f"deblur: error: cannot warm-start from {damaged}: its variables in "), err
    assert not out.exists() or not os.listdir(out)
    # registered as version 1: the pipeline warm-starts from the registry's copy instead
    registry = str(tmp_path / "registry")
    Registry(registry, "m").push(os.path.join(parent[0], "saved_model"), {})
    chosen = intact(warm_start.Parent(damaged, "ML Metadata model 3 (registry version 1)",
                                      version=1), registry, "m")
    assert chosen.saved_model_dir == os.path.join(registry, "m", "1")
    assert chosen.name == "ML Metadata model 3 (registry version 1), from registry version 1"
    record = warm_start.decide(str(tmp_path / "run2"), "latest_blessed", 5, lambda: chosen)
    assert record["start_step"] == PARENT_STEPS
    # not registered: the parent as it is, and decide fails naming it
    assert intact(warm_start.Parent(damaged, "p"), registry, "m").saved_model_dir == damaged


def _truncated_copy(parent_dir, dest):
    """A copy of the parent's SavedModel whose variables file is cut to half its size (a full
    disk, a killed copy): TensorFlow's reader raised IndexError ("Read less bytes than
    requested") out of check_parent."""
    import shutil

    shutil.copytree(os.path.join(parent_dir, "saved_model"), dest)
    data = os.path.join(dest, "variables", "variables.data-00000-of-00001")
    content = open(data, "rb").read()
    with open(data, "wb") as f:
        f.write(content[:len(content) // 2])
    return str(dest), data


def test_a_truncated_parent_base_model_or_blessed_parent_is_one_line(parent, ingested, tmp_path,  # noqa: F811
                                                                     capsys):
    """A truncated variables file in a --warm-start parent, in the base model or in the
    blessed parent was an IndexError traceback; now one line naming the file and what to do,
    and in the pipeline the registry's intact copy of a registered parent serves instead."""
    from components.registry.registry import Registry
    from components.training import intact
    from deblur import cli

    damaged, data = _truncated_copy(parent[0], tmp_path / "truncated")
    problem = (f"its variables file {data} is truncated (shorter than its index says: Read "
               "less bytes than requested); replace the model with an intact copy")
    # the blessed parent (ML Metadata's latest blessed model)
    with pytest.raises(warm_start.WarmStartError) as e:
        warm_start.decide(str(tmp_path / "run"), "latest_blessed", 5,
                          lambda: warm_start.Parent(damaged, "ML Metadata model 3"))
    assert str(e.value) == (f"cannot warm-start from ML Metadata model 3: {problem}; nothing "
                            "was trained (training.warm_start: none starts from random weights)")
    # the base model (training.base_model), which serves when no blessed model does
    with pytest.raises(warm_start.WarmStartError) as e:
        warm_start.decide(str(tmp_path / "run"), "none", 5,
                          base=warm_start.Parent(damaged, f"the base model {damaged}"))
    assert str(e.value) == (f"cannot warm-start from the base model {damaged} (training."
                            f"warm_start is none): {problem}; nothing was trained (training."
                            "base_model: none starts from random weights)")
    assert not (tmp_path / "run").exists()
    # deblur train --warm-start: the same line, exit 2, nothing written
    out = tmp_path / "out"
    assert cli.main(["train", "--examples", ingested[1], "--out", str(out), "--warm-start",
                     damaged, "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert err == f"deblur: error: cannot warm-start from {damaged}: {problem}; nothing was " \
                  "trained (deblur train without --warm-start starts from random weights)\n"
    assert not out.exists() or not os.listdir(out)
    # the pipeline: a registered parent whose local copy is truncated falls back to the
    # registry's intact copy (the IndexError stopped that fall-back too)
    registry = str(tmp_path / "registry")
    Registry(registry, "m").push(os.path.join(parent[0], "saved_model"), {})
    chosen = intact(warm_start.Parent(damaged, "ML Metadata model 3 (registry version 1)",
                                      version=1), registry, "m")
    assert chosen.saved_model_dir == os.path.join(registry, "m", "1")
    record = warm_start.decide(str(tmp_path / "run2"), "latest_blessed", 5, lambda: chosen)
    assert record["start_step"] == PARENT_STEPS
    assert record["reason"] == ("from ML Metadata model 3 (registry version 1), from registry "
                                "version 1")


def test_a_base_model_of_another_architecture_names_the_base_model_knob(parent, ingested,  # noqa: F811
                                                                        tmp_path):
    """The pipeline's Trainer with the default training.warm_start: none and a base model of
    another architecture: the hint said to set training.warm_start: none, which was set; the
    knob is training.base_model: none. Said in one line before anything trains."""
    from types import SimpleNamespace

    from components import training

    saved = os.path.join(parent[0], "saved_model")
    fn_args = SimpleNamespace(
        custom_config={"experiment": "tiny", "warm_start": "none",
                       "overrides": {**RECIPE, "model": {**MODEL, "diffusion_channels": 16}},
                       "warm_start_source": {"base_model": saved}},
        train_steps=5, train_files=[os.path.join(ingested[1], "Split-train", "*")],
        model_run_dir=str(tmp_path / "root" / "Trainer" / "model_run" / "7"),
        serving_model_dir=str(tmp_path / "root" / "Trainer" / "model" / "7"))
    with pytest.raises(warm_start.WarmStartError) as e:
        training.train_from_fn_args(fn_args)
    text = str(e.value)
    assert "\n" not in text and f"cannot warm-start from the base model {saved}" in text
    assert re.search(r"its model differs in diffusion_channels \(\d+ there, 16 here\)", text)
    assert text.endswith("(training.base_model: none starts from random weights)")
    assert "training.warm_start" not in text.split(";")[-1]
    assert not (tmp_path / "root" / "Trainer" / "checkpoints").exists()  # nothing trained
