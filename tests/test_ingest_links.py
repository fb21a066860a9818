"""Folder links under an ingest root (issue 35.2): Beam's local listing (os.walk) left out a
symlinked GoPro sequence without a word (4 of 16 pairs gone, `ignored_files: 0`). The listing
follows folder links, stops at a link loop, and names in the summary every link it followed
and everything it could not list."""
from __future__ import annotations

import json
import os

from components.ingest.beam_ingest import list_files, run_ingest
from components.ingest.sources import IngestOptions, IngestSource
from deblur import cli
from tests import fixtures as fx
from tests.tfrecords import read_split


def _seq(folder, n, seed):
    for i in range(n):
        fx.write_pair(str(folder / "blur" / f"{i:06d}.png"), str(folder / "sharp" / f"{i:06d}.png"),
                      (24, 32), seed=seed + i)


def _gopro_with_a_linked_sequence(tmp_path):
    """GOPRO_Large/train: two sequences in place and one symlinked from elsewhere, as the
    probe had it (a sequence kept on another disk)."""
    root = tmp_path / "src" / "GOPRO_Large"
    _seq(root / "train" / "GOPR0001_00", 2, 0)
    _seq(root / "train" / "GOPR0002_00", 2, 10)
    _seq(tmp_path / "elsewhere" / "GOPR0003_00", 2, 20)
    os.symlink(tmp_path / "elsewhere" / "GOPR0003_00", root / "train" / "GOPR0003_00")
    return root


def test_a_symlinked_sequence_is_ingested_and_named(tmp_path, capsys):
    _gopro_with_a_linked_sequence(tmp_path)
    out = tmp_path / "out"
    assert cli.main(["ingest", "--layout", "gopro", "--root", str(tmp_path / "src"),
                     "--out", str(out), "--crop-size", "16"]) == 0
    printed = capsys.readouterr().out
    assert "6 inputs = 6 written + 0 quarantined" in printed
    assert ("followed 1 folder link(s): GOPRO_Large/train/GOPR0003_00 -> "
            f"{tmp_path / 'elsewhere' / 'GOPR0003_00'}") in printed
    ids = sorted(e["pair_id"].decode() for e in read_split(str(out), "train"))
    assert ids == [f"gopro/train/GOPR000{s}_00/{i:06d}.png" for s in (1, 2, 3) for i in range(2)]
    summary = json.loads((out / "summary.json").read_text())
    assert [r["path"] for r in summary["links_followed"]] == ["GOPRO_Large/train/GOPR0003_00"]
    assert summary["not_listed"] == [] and summary["ignored_files"] == {str(tmp_path / "src"): 0}


def test_link_loops_and_dangling_links_are_reported_not_followed_forever(tmp_path, capsys):
    root = _gopro_with_a_linked_sequence(tmp_path)
    os.symlink("../..", root / "train" / "GOPR0001_00" / "up")  # -> GOPRO_Large: a loop
    os.symlink(tmp_path / "gone", root / "train" / "GOPR0004_00")  # dangling
    # a loop through two links: elsewhere/GOPR0003_00/back -> train (the link's own parent)
    os.symlink(root / "train", tmp_path / "elsewhere" / "GOPR0003_00" / "back")
    out = tmp_path / "out"
    assert cli.main(["ingest", "--layout", "gopro", "--root", str(tmp_path / "src"),
                     "--out", str(out), "--crop-size", "16"]) == 0
    printed = capsys.readouterr().out
    assert "6 inputs = 6 written + 0 quarantined" in printed
    summary = json.loads((out / "summary.json").read_text())
    skipped = {r["path"]: r["reason"] for r in summary["not_listed"]}
    assert sorted(skipped) == ["GOPRO_Large/train/GOPR0001_00/up",
                               "GOPRO_Large/train/GOPR0003_00/back",
                               "GOPRO_Large/train/GOPR0004_00"]
    assert skipped == {
        "GOPRO_Large/train/GOPR0001_00/up": f"a link loop, to {root}, a folder it is in",
        "GOPRO_Large/train/GOPR0003_00/back": f"a link loop, to {root / 'train'}, a folder it is in",
        "GOPRO_Large/train/GOPR0004_00": f"a dangling link, to {tmp_path / 'gone'}, which does "
                                         "not exist"}
    src = tmp_path / "src"
    assert (f"  not listed: {src}/GOPRO_Large/train/GOPR0001_00/up: a link loop, to {root}, a "
            "folder it is in; nothing under it is an input\n") in printed
    assert f"  not listed: {src}/GOPRO_Large/train/GOPR0004_00: a dangling link" in printed


def test_the_listing_is_beams_for_a_tree_without_links(tmp_path):
    """Same files, sizes and order as FileSystems.match for a plain tree (the gs:// listing
    and the fingerprint rely on it)."""
    from apache_beam.io.filesystems import FileSystems

    _seq(tmp_path / "a" / "x", 2, 0)
    fx.write(str(tmp_path / "a" / "notes.txt"), b"hello")
    root = str(tmp_path / "a")
    beam = sorted((m.path[len(root) + 1:], m.size_in_bytes)
                  for m in FileSystems.match([root + "/**"])[0].metadata_list)
    assert list_files(root) == beam and len(beam) == 5


def test_a_spanned_source_follows_a_linked_span(tmp_path):
    root = tmp_path / "shots"
    _seq(root / "span-1" / "train", 1, 0)
    _seq(tmp_path / "disk2" / "train", 1, 5)
    os.symlink(tmp_path / "disk2", root / "span-2")
    summary = run_ingest([IngestSource("folder", str(root), dataset="shots",
                                       span_pattern="span-{SPAN}")], str(tmp_path / "out"),
                         IngestOptions(train_crop_size=16, tiny_num_shards=1))
    assert [u["span"] for u in summary["units"]] == [1, 2] and summary["written"] == 2
