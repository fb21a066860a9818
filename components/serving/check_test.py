"""The servability check on a real registry version (the shipped base model, models/local),
served by a real `deblur serve` process in the serving environment on 127.0.0.1."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from components.evaluator.evaluate_test import _pair
from components.ingest.decode import encode_png, process_pair_bytes
from components.registry.aliases import Aliases
from components.registry.registry import Registry
from components.serving import check

REPO = Path(__file__).resolve().parents[2]
SETTING = {"sampler": "ddim", "steps": 2, "max_noise": 0.5, "samples": 2}


@pytest.fixture(scope="module")
def examples_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("examples")
    for split, domain, size in (("test", "in", (40, 56)), ("test_ood", "out", (37, 53)),
                                ("train", "in", (32, 32))):
        os.makedirs(root / f"Split-{split}")
        opts = tf.io.TFRecordOptions(compression_type="GZIP")
        with tf.io.TFRecordWriter(str(root / f"Split-{split}" / "data-00000-of-00001.gz"),
                                  opts) as w:
            for i in range(2):
                blurry, sharp = _pair(*size, seed=7 * i + len(split))
                rec, _ = process_pair_bytes(encode_png(blurry), encode_png(sharp),
                                            pair_id=f"{split}/{i}", dataset="synthetic",
                                            domain=domain, split=split, min_side=8)
                w.write(rec)
    return str(root)


def _registry(tmp_path) -> Registry:
    src = tmp_path / "model"
    shutil.copytree(REPO / "models" / "local", src)
    reg = Registry(str(tmp_path / "registry"))
    for _ in range(2):
        reg.push(str(src), {"blessing": {"blessed": True}, "sampling": SETTING})
    return reg


def test_a_version_that_serves_moves_staging_one_that_does_not_moves_nothing(
        tmp_path, examples_dir):
    reg = _registry(tmp_path)
    aliases = Aliases(reg)
    run = {"pipeline": "p", "run_id": "r1"}
    result = check.check_servability(reg.uri, reg.model_name, 1, examples_dir, run=run)
    assert result.passed, result.reason
    assert [(r["pair_id"], r["domain"], r["mode"]) for r in result.requests] == [
        ("test/0", "in", "png"), ("test/0", "in", "binary"),
        ("test_ood/0", "out", "png"), ("test_ood/0", "out", "binary")]
    for r in result.requests:
        assert r["ok"] and r["model_version"] == "1" and r["seconds"] > 0
        assert r["max_abs_diff"] <= check.MAX_ABS_DIFF
    assert result.alias_moved == {"alias": "staging", "from": None, "to": 1}
    move = aliases.history("staging")[-1]
    assert (move.version, move.action, move.run) == (1, "promote", run)
    assert move.reason.startswith("servability check passed: 4 requests answered by version 1")
    assert aliases.get("production") is None  # production moves only when a person says so
    md = check.markdown(result, reg.model_name)
    assert "deblur-icdpm@staging: unset -> version 1" in md and "| test_ood/0 | out | binary |" in md

    # version 2 damaged after its push (same size, other bytes): the check fails, staging stays
    data = Path(reg.uri) / reg.model_name / "2" / "variables" / "variables.data-00000-of-00001"
    content = data.read_bytes()
    data.write_bytes(bytes([content[0] ^ 1]) + content[1:])
    result = check.check_servability(reg.uri, reg.model_name, 2, examples_dir, run=run)
    assert not result.passed and result.alias_moved is None
    assert result.reason.startswith("version 2 was not served: ") and "sha256" in result.reason
    assert result.alias_note == "no alias moved: the check failed"
    assert aliases.get("staging") == 1 and len(aliases.history()) == 1

    # nothing pushed: nothing checked, nothing moves
    result = check.check_servability(reg.uri, reg.model_name, None, examples_dir)
    assert not result.checked and aliases.get("staging") == 1
