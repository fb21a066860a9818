"""A damaged examples shard (deblur train, deblur evaluate) and a damaged SavedModel (deblur
evaluate) end in one line naming the file and what to do, not a traceback (issue 35.13)."""
from __future__ import annotations

import glob
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from deblur import cli
from tests import fixtures as fx

DAMAGES = ("head_overwritten", "truncated")


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    """A real ingest (GoPro layout, train and test, 2 shards of 4 records per split)."""
    root = tmp_path_factory.mktemp("damaged")
    for split in ("train", "test"):
        for i in range(8):
            d = root / "src" / "GOPRO_Large" / split / "SEQ"
            fx.write_pair(str(d / "blur" / f"{i}.png"), str(d / "sharp" / f"{i}.png"), (32, 32),
                          seed=i + (50 if split == "test" else 0))
    out = root / "examples"
    assert cli.main(["ingest", "--layout", "gopro", "--root", str(root / "src"), "--out",
                     str(out), "--crop-size", "16"]) == 0
    return out


def _damaged_copy(examples, tmp_path, split, damage):
    """A copy of the examples whose last shard of `split` is damaged: its first bytes
    overwritten (not GZIP any more), or cut after 60 % (its first record still reads)."""
    dst = tmp_path / "examples"
    shutil.copytree(examples, dst)
    shard = sorted(glob.glob(str(dst / f"Split-{split}" / "*.gz")))[-1]
    data = open(shard, "rb").read()
    with open(shard, "wb") as f:
        f.write(b"\0" * 64 + data[64:] if damage == "head_overwritten" else data[: len(data) * 6 // 10])
    return dst, shard


class _Identity(tf.Module):
    """A SavedModel with a variable (so it has a variables file) and deblur_batch."""

    def __init__(self):
        super().__init__()
        self.gain = tf.Variable(np.ones([64], np.float32))

    @tf.function(input_signature=[
        tf.TensorSpec([None, None, None, 3], tf.uint8), tf.TensorSpec([], tf.int32),
        tf.TensorSpec([], tf.float32), tf.TensorSpec([], tf.int32), tf.TensorSpec([2], tf.int64),
        tf.TensorSpec([], tf.bool)])
    def deblur_batch(self, images, steps, max_noise, samples, seed, deterministic):
        return tf.cast(tf.cast(images, tf.float32) * self.gain[0], tf.uint8)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("model") / "saved_model")
    tf.saved_model.save(_Identity(), path)
    return path


def _evaluate(model_dir, examples_dir, out):
    return cli.main(["evaluate", "--model", model_dir, "--examples", str(examples_dir),
                     "--out", str(out), "--setting", "ddim:1:0.5", "--max-images", "4"])


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("damage", DAMAGES)
def test_evaluate_names_a_damaged_examples_shard(examples, model, tmp_path, capsys, damage):
    damaged, shard = _damaged_copy(examples, tmp_path, "test", damage)
    assert _evaluate(model, damaged, tmp_path / "eval") == cli.EXIT_USAGE
    line = _one_line(capsys)
    assert line.startswith(f"deblur: error: examples shard {shard} is damaged (DataLossError: "), line
    assert line.endswith("ingest the data again into a new folder (or with --overwrite), or "
                         "restore the file"), line


@pytest.mark.parametrize("damage", ["variables_truncated", "saved_model_pb_garbage"])
def test_evaluate_names_a_damaged_saved_model(examples, model, tmp_path, capsys, damage):
    broken = tmp_path / "broken"
    shutil.copytree(model, broken)
    if damage == "variables_truncated":
        path = glob.glob(str(broken / "variables" / "variables.data-*"))[0]
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])
    else:
        open(broken / "saved_model.pb", "wb").write(b"not a protocol buffer" * 10)
    assert _evaluate(str(broken), examples, tmp_path / "eval") == cli.EXIT_USAGE
    line = _one_line(capsys)
    assert line.startswith(f"deblur: error: the SavedModel {broken} does not load ("), line
    assert line.endswith("): it is damaged or partial; export it again or give an intact copy "
                         "(e.g. its registry version)"), line
    # the intact model evaluates (the same command, the same examples)
    assert _evaluate(model, examples, tmp_path / "eval2") == 0
    capsys.readouterr()


def _train(examples_dir, out):
    return cli.main(["train", "--examples", str(examples_dir), "--out", str(out),
                     "--experiment", "tiny", "--steps", "40", "--batch-size", "2",
                     "--set", "data.crop_size=16", "--set", "data.shuffle_buffer=1",
                     "--set", "train.checkpoint_every=1000", "--set", "train.log_every=1000",
                     "--set", "train.steps_per_loop=1"])


def test_train_names_a_shard_whose_head_is_damaged_before_training(examples, tmp_path, capsys):
    damaged, shard = _damaged_copy(examples, tmp_path, "train", "head_overwritten")
    assert _train(damaged, tmp_path / "o") == cli.EXIT_USAGE
    line = _one_line(capsys)
    assert line.startswith(f"deblur: error: examples shard {shard} is damaged (DataLossError: "), line
    assert not (tmp_path / "o").exists()  # before any work


@pytest.mark.slow
def test_train_names_a_shard_damaged_past_its_first_record(examples, tmp_path, capsys):
    """The first record reads (the start-up check passes); the loop reaches the cut."""
    damaged, shard = _damaged_copy(examples, tmp_path, "train", "truncated")
    assert _train(damaged, tmp_path / "o") == cli.EXIT_FAILED
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]  # after the progress lines
    assert line.startswith(f"deblur: error: examples shard {shard} is damaged (DataLossError: "), line
    assert "; training stopped at step " in line
