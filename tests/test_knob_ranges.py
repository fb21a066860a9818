"""Every numeric knob of the experiment is range-checked at start-up, in one line naming the
knob and its range, in both entry points (issue 35.5): a negative train.learning_rate trained
(the loss climbed from 0.035 to 54), exported and exited 0; a crop larger than the images and
shuffle_buffer 0 were tracebacks; keep_checkpoints 0 was TensorFlow's words after start-up."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from deblur import cli
from tests import fixtures as fx

# (deblur train --set, what the one line says); run-local spells it training.<same>
BAD = [
    ("train.learning_rate=-0.001", "train.learning_rate must be a number > 0, e.g. 1e-4, got -0.001"),
    ("train.learning_rate=.nan", "train.learning_rate must be a number > 0, e.g. 1e-4, got nan"),
    ("train.keep_checkpoints=0", "train.keep_checkpoints must be an integer >= 1, got 0"),
    ("data.shuffle_buffer=0", "data.shuffle_buffer must be an integer >= 1, got 0"),
    ("data.crop_size=60", "data.crop_size must be a multiple of 8 >= 8, got 60"),
    ("train.steps=0", "train.steps must be an integer >= 1, got 0"),
    ("train.global_batch_size=-8", "train.global_batch_size must be an integer >= 1, got -8"),
    ("train.lr_warmup_steps=-1", "train.lr_warmup_steps must be an integer >= 0, got -1"),
    ("train.dpm_warmup_steps=-5", "train.dpm_warmup_steps must be an integer >= 0, got -5"),
    ("train.ema_decay=1.0", "train.ema_decay must be in [0, 1), got 1.0"),
    ("train.adam_beta1=-0.1", "train.adam_beta1 must be in [0, 1), got -0.1"),
    ("train.adam_beta2=1", "train.adam_beta2 must be in [0, 1), got 1"),
    ("train.checkpoint_every=0", "train.checkpoint_every must be an integer >= 1, got 0"),
    ("train.log_every=0", "train.log_every must be an integer >= 1, got 0"),
    ("train.lpips_weight=-1", "train.lpips_weight must be >= 0 (0: no LPIPS term), got -1"),
    ("train.max_skipped_fraction=1.5", "train.max_skipped_fraction must be in [0, 1], got 1.5"),
    ("model.dropout=1.0", "model.dropout must be in [0, 1), got 1.0"),
    ("model.sigma_data=0", "model.sigma_data must be > 0, got 0"),
    ("diffusion.num_train_steps=0", "diffusion.num_train_steps must be an integer >= 1, got 0"),
    ("diffusion.beta_end=2.0", "diffusion.beta_start and beta_end must be 0 < beta_start <= "
                               "beta_end < 1, got 1e-06 and 2.0"),
]


@pytest.mark.parametrize("item,message", BAD)
def test_deblur_train_refuses_a_knob_out_of_range(tmp_path, capsys, item, message):
    out = tmp_path / "o"
    assert cli.main(["train", "--examples", str(tmp_path), "--out", str(out),
                     "--experiment", "local", "--set", item]) == cli.EXIT_USAGE
    assert capsys.readouterr().err == f"deblur: error: {message}\n"
    assert not out.exists()


@pytest.mark.parametrize("item,message", [BAD[0], BAD[2], BAD[3], BAD[9], BAD[16]])
def test_run_local_refuses_a_knob_out_of_range_before_anything_runs(tmp_path, capsys, item,
                                                                    message):
    work = tmp_path / "w"
    assert cli.main(["run-local", "--work-dir", str(work), "--set", f"training.{item}"]) \
        == cli.EXIT_USAGE
    assert capsys.readouterr().err == f"deblur: error: training.{message}\n"
    assert not work.exists()  # no synthetic data, no ingest, no ML Metadata


def test_a_negative_learning_rate_is_one_line_from_the_console_script(tmp_path):
    """The probe's command, as a process: it trained, exported and exited 0."""
    exe = os.path.join(os.path.dirname(sys.executable), "deblur")
    r = subprocess.run([exe, "train", "--examples", str(tmp_path), "--out", str(tmp_path / "o"),
                        "--experiment", "tiny", "--steps", "5", "--set",
                        "train.learning_rate=-0.001"], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        "deblur: error: train.learning_rate must be a number > 0, e.g. 1e-4, got -0.001"]
    assert not (tmp_path / "o").exists()


def test_a_crop_larger_than_the_images_is_one_line(tmp_path, capsys):
    """deblur train: checked against each training shard's first example before training
    starts (it was a traceback inside tf.data). run-local checks it against the synthetic size,
    or the ingest's own crop, before anything runs: pipelines/config_test.py."""
    src = tmp_path / "src" / "GOPRO_Large" / "train" / "SEQ"
    for i in range(2):
        fx.write_pair(str(src / "blur" / f"{i}.png"), str(src / "sharp" / f"{i}.png"), (64, 80), i)
    examples = tmp_path / "examples"
    assert cli.main(["ingest", "--layout", "gopro", "--root", str(tmp_path / "src"),
                     "--out", str(examples), "--crop-size", "64"]) == 0
    capsys.readouterr()
    shards = sorted(os.listdir(examples / "Split-train"))
    out = tmp_path / "o"
    assert cli.main(["train", "--examples", str(examples), "--out", str(out),
                     "--experiment", "tiny", "--steps", "2", "--set", "data.crop_size=128"]) \
        == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        "deblur: error: data.crop_size 128 is larger than the training images: "
        "gopro/train/SEQ/"), err
    assert " is 64x80; choose data.crop_size <= 64 (a multiple of 8)\n" in err
    assert any(name in err for name in shards)
    assert not out.exists()
