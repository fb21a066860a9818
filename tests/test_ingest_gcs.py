"""Ingest from gs:// roots, served by a real GCS emulator (fake-gcs-server) on loopback.

The same small GoPro + RealBlur trees are ingested twice, once from a local copy and once
from gs://, and the outputs must agree: same pair ids, byte-identical examples (the PNGs
and every other feature), same quarantine records and the same summary counts. Only the
inputs are on gs://: Beam's gs:// sinks fail against the emulator at FinalizeWrite ("not
multi-part" uploads), so the output directory is local.

Environment the emulator needs: see tests/gcs_emulator.py (the `gcs` fixture runs it).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from components.ingest import layouts as L
from components.ingest.beam_ingest import list_files, run_ingest
from components.ingest.sources import IngestOptions, IngestSource
from tests import fixtures as fx
from tests.gcs_emulator import fake_gcs
from tests.tfrecords import read_split

BUCKET = "deblur-ingest-test"
SMALL = IngestOptions(train_crop_size=16, max_quarantine_fraction=1.0, tiny_num_shards=2)
RB_DIR = "RealBlur-J_ECC_IMCORR_centroid_itensity_ref"


def _make_trees(root: Path) -> None:
    """root/gopro: a GoPro tree; root/RealBlur: a RealBlur tree with its list file."""
    seq = root / "gopro" / "GOPRO_Large" / "test" / "SEQ"
    for i in range(2):
        fx.write_pair(str(seq / "blur" / f"{i:06d}.png"), str(seq / "sharp" / f"{i:06d}.png"),
                      (24, 32), seed=i)
    # a blurry frame with no sharp partner: quarantined as missing_partner
    fx.write(str(seq / "blur" / "000002.png"), fx.png_bytes(fx.rgb(24, 32, 7)))
    train = root / "gopro" / "GOPRO_Large" / "train" / "SEQ2"
    fx.write_pair(str(train / "blur" / "000000.png"), str(train / "sharp" / "000000.png"),
                  (24, 32), seed=3)
    fx.write(str(root / "gopro" / "README.txt"), b"not part of the data set\n")  # ignored

    rb = root / "RealBlur"
    lines = []
    for k in range(2):
        gt, bl = f"{RB_DIR}/scene{k:03d}/gt/gt_1.png", f"{RB_DIR}/scene{k:03d}/blur/blur_1.png"
        fx.write_pair(str(rb / bl), str(rb / gt), (20, 28), seed=10 + k)
        lines.append(f"{gt} {bl}")
    # a list line naming a file that is not there: quarantined as missing_file
    lines.append(f"{RB_DIR}/scene009/gt/gt_1.png {RB_DIR}/scene009/blur/blur_1.png")
    fx.write(str(rb / "RealBlur_J_test_list.txt"), ("\n".join(lines) + "\n").encode())


def _local_files(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """A running fake-gcs-server with a bucket holding the trees; yields a dict of paths."""
    base = tmp_path_factory.mktemp("gcs")
    with fake_gcs(base) as emulator:
        local = base / "local"
        _make_trees(local)
        files = _local_files(local)
        bucket = emulator.create_bucket(BUCKET)
        for rel, data in files.items():
            bucket.blob(f"data/{rel}").upload_from_string(data)
        yield {"local": local, "gs": f"gs://{BUCKET}/data", "files": files, "base": base,
               "server_log": emulator.log}


def _quarantine(out: str, roots) -> list:
    """Quarantine records with the source roots replaced by <root>, sorted by pair id."""
    recs = []
    with open(os.path.join(out, "quarantine", "quarantine.jsonl")) as f:
        for line in f:
            if line.strip():
                q = json.loads(line)
                for k in ("blurry", "sharp", "detail"):
                    for r in roots:
                        if q[k]:
                            q[k] = q[k].replace(r, "<root>")
                recs.append(q)
    return sorted(recs, key=lambda q: q["pair_id"])


def _examples(out: str, split: str) -> dict:
    return {e["pair_id"].decode(): e for e in read_split(out, split)}


def test_gs_listing_matches_local(gcs):
    for tree in ("gopro", "RealBlur"):
        local = [(rel, len(gcs["files"][f"{tree}/{rel}"])) for rel, _ in
                 list_files(str(gcs["local"] / tree))]
        assert list_files(f"{gcs['gs']}/{tree}") == local
        assert local  # the trees are not empty


def test_gs_roots_ingest_like_local_roots(gcs):
    def sources(root):
        return [IngestSource("gopro", f"{root}/gopro"),
                IngestSource("realblur", f"{root}/RealBlur", split_names={"test": "test_ood"})]

    gs_root, local_root = gcs["gs"], str(gcs["local"])
    out_gs, out_local = str(gcs["base"] / "out_gs"), str(gcs["base"] / "out_local")
    for out in (out_gs, out_local):
        shutil.rmtree(out, ignore_errors=True)
    summary_local = run_ingest(sources(local_root), out_local, SMALL)
    summary_gs = run_ingest(sources(gs_root), out_gs, SMALL)

    # Quarantine: the same records; from gs:// they name gs:// URIs.
    q_gs = _quarantine(out_gs, [gs_root])
    assert q_gs == _quarantine(out_local, [local_root]), "server log:\n" + "".join(
        gcs["server_log"])
    assert [(q["pair_id"], q["reason"], q["split"]) for q in q_gs] == [
        ("gopro/test/SEQ/000002.png", L.MISSING_PARTNER, "test"),
        (f"realblur_j/test/{RB_DIR}/scene009/blur/blur_1.png", L.MISSING_FILE, "test_ood"),
    ]
    with open(os.path.join(out_gs, "quarantine", "quarantine.jsonl")) as f:
        raw = [json.loads(line) for line in f if line.strip()]
    lonely = next(q for q in raw if q["reason"] == L.MISSING_PARTNER)
    assert lonely["blurry"] == f"{gs_root}/gopro/GOPRO_Large/test/SEQ/blur/000002.png"
    assert lonely["sharp"] is None

    # Examples: the same pair ids and every feature equal, per split.
    expected_ids = {
        "test": ["gopro/test/SEQ/000000.png", "gopro/test/SEQ/000001.png"],
        "train": ["gopro/train/SEQ2/000000.png"],
        "test_ood": [f"realblur_j/test/{RB_DIR}/scene{k:03d}/blur/blur_1.png" for k in range(2)],
    }
    for split, ids in expected_ids.items():
        got, want = _examples(out_gs, split), _examples(out_local, split)
        assert sorted(got) == ids == sorted(want)
        assert got == want  # blurry/sharp PNG bytes, pyramids, stats, height/width, ids
    # ... and the stored PNGs are the uploaded files, byte for byte.
    files = gcs["files"]
    for pid, e in _examples(out_gs, "test").items():
        name = pid.rsplit("/", 1)[1]
        assert e["blurry"] == files[f"gopro/GOPRO_Large/test/SEQ/blur/{name}"]
        assert e["sharp"] == files[f"gopro/GOPRO_Large/test/SEQ/sharp/{name}"]
        assert (e["height"], e["width"]) == (24, 32)
    for k in range(2):
        e = _examples(out_gs, "test_ood")[f"realblur_j/test/{RB_DIR}/scene{k:03d}/blur/blur_1.png"]
        assert e["blurry"] == files[f"RealBlur/{RB_DIR}/scene{k:03d}/blur/blur_1.png"]
        assert e["sharp"] == files[f"RealBlur/{RB_DIR}/scene{k:03d}/gt/gt_1.png"]
        assert (e["height"], e["width"]) == (20, 28)

    # Summary: the same counts; inputs = written + quarantined.
    assert summary_gs["status"] == summary_local["status"] == "ok"
    assert summary_gs["inputs"] == 7 == summary_gs["written"] + summary_gs["quarantined"]
    assert summary_gs["written"] == 5 and summary_gs["quarantined"] == 2
    assert summary_gs["quarantine_by_reason"] == {L.MISSING_FILE: 1, L.MISSING_PARTNER: 1}
    assert summary_gs["splits"] == {
        "test": {"inputs": 3, "written": 2, "quarantined": 1, "num_shards": 2},
        "test_ood": {"inputs": 3, "written": 2, "quarantined": 1, "num_shards": 2},
        "train": {"inputs": 1, "written": 1, "quarantined": 0, "num_shards": 2},
    }
    assert summary_gs["ignored_files"] == {f"{gs_root}/gopro": 1, f"{gs_root}/RealBlur": 0}
    assert summary_local["ignored_files"] == {f"{local_root}/gopro": 1,
                                              f"{local_root}/RealBlur": 0}
    # the fingerprints cover the roots and the files' times (GCS `updated`, local mtime)
    path_keys = ("ignored_files", "quarantine_file", "fingerprint", "units")
    assert ({k: v for k, v in summary_gs.items() if k not in path_keys}
            == {k: v for k, v in summary_local.items() if k not in path_keys})
    counts = ("layout", "status", "inputs", "written", "quarantined")
    assert [{k: u[k] for k in counts} for u in summary_gs["units"]] == \
        [{k: u[k] for k in counts} for u in summary_local["units"]]
    with open(os.path.join(out_gs, "summary.json")) as f:
        assert json.load(f) == summary_gs
