"""The ingest writes the same examples with the multi-process DirectRunner as in memory.

Beam's DirectRunner in multi_processing mode runs the DoFns in separate SDK worker processes
(started with this interpreter), which must import the project's modules from the editable
install and unpickle the pipeline's functions. Shards may hold the examples in a different
order, so the comparison is of the multiset of serialized examples per split.
"""
from __future__ import annotations

import glob
import json
import os
from collections import Counter

import pytest

from components.ingest import layouts as L
from components.ingest.beam_ingest import run_ingest
from components.ingest.sources import IngestOptions, IngestSource
from core import example_format as ef
from tests import fixtures as fx
from tests.tfrecords import read_records

pytestmark = pytest.mark.slow  # Beam multi-process workers

SMALL = IngestOptions(train_crop_size=16, max_quarantine_fraction=1.0, tiny_num_shards=2)
MULTI = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
SPLITS = ("train", "test")


def _tree(root):
    d = root / "GOPRO_Large"
    for split in SPLITS:
        for k in range(6):
            seq = f"GOPR000{k % 2}_00"
            name = f"{k:06d}.png"
            fx.write_pair(str(d / split / seq / "blur" / name), str(d / split / seq / "sharp" / name),
                          (24, 32), seed=100 * SPLITS.index(split) + k)
    good = fx.png_bytes(fx.rgb(24, 32, 7))
    bad = d / "train" / "GOPR0009_00"
    fx.write(str(bad / "blur" / "truncated.png"), good[: len(good) // 2])  # decoded in a worker
    fx.write(str(bad / "sharp" / "truncated.png"), good)
    fx.write(str(bad / "blur" / "lonely.png"), good)  # known bad at planning time
    small = d / "test" / "GOPR0009_00"
    fx.write(str(small / "blur" / "tiny.png"), fx.png_bytes(fx.rgb(4, 32, 1)))
    fx.write(str(small / "sharp" / "tiny.png"), fx.png_bytes(fx.rgb(4, 32, 1)))


def _examples(out, split):
    files = sorted(glob.glob(f"{out}/Split-{split}/*.gz"))
    return Counter(r for f in files for r in read_records(f))


def _quarantine(out):
    with open(os.path.join(out, "quarantine", "quarantine.jsonl")) as f:
        return sorted(line.strip() for line in f if line.strip())


def test_multi_processing_runner_writes_the_same_examples(tmp_path):
    src = tmp_path / "src"
    _tree(src)
    sources = [IngestSource("gopro", str(src))]
    out_mem, out_mp = str(tmp_path / "mem"), str(tmp_path / "mp")
    s_mem = run_ingest(sources, out_mem, SMALL)
    s_mp = run_ingest(sources, out_mp, SMALL, beam_args=MULTI)

    assert s_mem["inputs"] == 15 and s_mem["written"] == 12 and s_mem["quarantined"] == 3
    assert s_mem["quarantine_by_reason"] == {L.MISSING_PARTNER: 1, L.TRUNCATED: 1, L.TOO_SMALL: 1}
    for s in (s_mem, s_mp):
        s.pop("quarantine_file")  # names the output dir
    assert s_mp == s_mem

    for split in SPLITS:
        mem, mp = _examples(out_mem, split), _examples(out_mp, split)
        assert sum(mem.values()) == 6 and len(mem) == 6  # six distinct examples
        assert mp == mem, split
        assert len(glob.glob(f"{out_mp}/Split-{split}/*.gz")) == SMALL.tiny_num_shards
        ids = sorted(ef.parse_example(r)["pair_id"].decode() for r in mp)
        assert ids == sorted(f"gopro/{split}/GOPR000{k % 2}_00/{k:06d}.png" for k in range(6))

    assert _quarantine(out_mp) == _quarantine(out_mem)
    assert len(_quarantine(out_mem)) == 3
    with open(os.path.join(out_mp, "summary.json")) as f:
        on_disk = json.load(f)
    on_disk.pop("quarantine_file")
    assert on_disk == s_mem
