"""Ingest of every layout from small fixture trees, and the quarantine of bad inputs."""
from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from components.ingest import layouts as L
from components.ingest.beam_ingest import IngestError, run_ingest
from components.ingest.sources import IngestOptions, IngestSource
from core import example_format as ef
from tests import fixtures as fx
from tests.tfrecords import read_split

SMALL = IngestOptions(train_crop_size=16, max_quarantine_fraction=1.0, tiny_num_shards=2)


def ingest(tmp_path, *sources, options=SMALL):
    out = str(tmp_path / "out")
    summary = run_ingest(list(sources), out, options)
    return out, summary


def quarantine(out):
    with open(os.path.join(out, "quarantine", "quarantine.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_gopro_pairs_by_relative_path(tmp_path):
    root = tmp_path / "GOPRO_Large"
    for split in ("train", "test"):
        for seq in ("GOPR0001_00", "GOPR0002_00"):
            for i in range(2):
                d = root / split / seq
                fx.write_pair(str(d / "blur" / f"{i:06d}.png"), str(d / "sharp" / f"{i:06d}.png"),
                              (24, 32), seed=hash((split, seq, i)) % 1000)
                # blur_gamma exists as in the real data set; blur is chosen
                fx.write(str(d / "blur_gamma" / f"{i:06d}.png"), fx.png_bytes(fx.rgb(24, 32, 1)))
    out, summary = ingest(tmp_path, IngestSource("gopro", str(tmp_path)))
    assert summary["inputs"] == summary["written"] == 8
    assert summary["quarantined"] == 0
    assert summary["ignored_files"][str(tmp_path)] == 8  # the blur_gamma frames
    train = read_split(out, "train")
    ids = sorted(e["pair_id"].decode() for e in train)
    assert ids == sorted(f"gopro/train/{s}/{i:06d}.png" for s in ("GOPR0001_00", "GOPR0002_00")
                         for i in range(2))
    # The stored images are the files themselves: pairing followed the relative path.
    for e in train:
        _, _, seq, name = e["pair_id"].decode().split("/")
        with open(root / "train" / seq / "sharp" / name, "rb") as f:
            assert e["sharp"] == f.read()
        with open(root / "train" / seq / "blur" / name, "rb") as f:
            assert e["blurry"] == f.read()
        assert e["domain"] == b"in" and e["dataset"] == b"gopro" and e["split"] == b"train"
        assert (e["height"], e["width"]) == (24, 32)
    assert len(read_split(out, "test")) == 4


def test_realblur_list_files(tmp_path):
    root = tmp_path / "RealBlur"
    lines = {"train": [], "test": []}
    for k, split in enumerate(["train", "train", "test"]):
        gt = f"RealBlur-J_ECC_IMCORR_centroid_itensity_ref/scene{k:03d}/gt/gt_1.png"
        bl = f"RealBlur-J_ECC_IMCORR_centroid_itensity_ref/scene{k:03d}/blur/blur_1.png"
        fx.write_pair(str(root / bl), str(root / gt), (20, 28), seed=k)
        lines[split].append(f"{gt} {bl}")
    for split, ls in lines.items():
        fx.write(str(root / f"RealBlur_J_{split}_list.txt"), ("\n".join(ls) + "\n").encode())
    out, summary = ingest(tmp_path, IngestSource("realblur", str(root), subsets=["test"],
                                                 split_names={"test": "test_ood"}))
    assert summary["written"] == 1 and summary["inputs"] == 1
    [e] = read_split(out, "test_ood")
    assert e["pair_id"] == b"realblur_j/test/RealBlur-J_ECC_IMCORR_centroid_itensity_ref/scene002/blur/blur_1.png"
    assert e["domain"] == b"out" and e["dataset"] == b"realblur_j"
    with open(root / "RealBlur-J_ECC_IMCORR_centroid_itensity_ref/scene002/gt/gt_1.png", "rb") as f:
        assert e["sharp"] == f.read()


def test_hide_matches_gt_by_name(tmp_path):
    root = tmp_path / "HIDE_dataset"
    for folder, names in (("test/test-close-ups", ["a.png", "b.png"]),
                          ("test/test-long-shot", ["c.png"]), ("train", ["d.png"])):
        for n in names:
            fx.write_pair(str(root / folder / n), str(root / "GT" / n), (16, 16), seed=ord(n[0]))
    out, summary = ingest(tmp_path, IngestSource("hide", str(root), subsets=["test"]))
    assert summary["written"] == 3 and summary["quarantined"] == 0
    ids = sorted(e["pair_id"].decode() for e in read_split(out, "test"))
    assert ids == ["hide/test/test-close-ups/a.png", "hide/test/test-close-ups/b.png",
                   "hide/test/test-long-shot/c.png"]


def test_reds_and_folder(tmp_path):
    reds = tmp_path / "REDS"
    for clip in ("000", "001"):
        for i in range(2):
            fx.write_pair(str(reds / "val_blur" / clip / f"{i:08d}.png"),
                          str(reds / "val_sharp" / clip / f"{i:08d}.png"), (16, 24), seed=i)
    folder = tmp_path / "mine"
    fx.write_pair(str(folder / "blurry" / "x" / "1.png"), str(folder / "gt" / "x" / "1.png"),
                  (16, 16), seed=5)
    out, summary = ingest(
        tmp_path, IngestSource("reds", str(reds)),
        IngestSource("folder", str(folder), split_names={"all": "val"}, domain="out"))
    assert summary["written"] == 5
    ids = sorted(e["pair_id"].decode() for e in read_split(out, "val"))
    assert ids == ["folder/all/x/1.png"] + [f"reds/val/{c}/{i:08d}.png" for c in ("000", "001")
                                            for i in range(2)]


def _bad_gopro_tree(root):
    """One good pair plus one of each bad input, in a GoPro train split."""
    d = root / "GOPRO_Large" / "train" / "SEQ"
    good = fx.rgb(24, 32, 0)
    fx.write_pair(str(d / "blur/good.png"), str(d / "sharp/good.png"), (24, 32), 0)
    fx.write(str(d / "blur/lonely_blur.png"), fx.png_bytes(good))
    fx.write(str(d / "sharp/lonely_sharp.png"), fx.png_bytes(good))
    full = fx.png_bytes(good)
    fx.write(str(d / "blur/truncated.png"), full[: len(full) // 2])
    fx.write(str(d / "sharp/truncated.png"), full)
    fx.write(str(d / "blur/mismatch.png"), fx.png_bytes(fx.rgb(24, 40, 1)))
    fx.write(str(d / "sharp/mismatch.png"), full)
    fx.write(str(d / "blur/deep.png"), fx.sixteen_bit_rgb_png(24, 32))
    fx.write(str(d / "sharp/deep.png"), full)
    fx.write(str(d / "blur/deepgray.png"), fx.sixteen_bit_png(24, 32))
    fx.write(str(d / "sharp/deepgray.png"), full)
    fx.write(str(d / "blur/tiny.png"), fx.png_bytes(fx.rgb(4, 32, 2)))
    fx.write(str(d / "sharp/tiny.png"), fx.png_bytes(fx.rgb(4, 32, 2)))
    fx.write(str(d / "blur/small.png"), fx.png_bytes(fx.rgb(12, 32, 2)))  # < 16 crop
    fx.write(str(d / "sharp/small.png"), fx.png_bytes(fx.rgb(12, 32, 2)))
    fx.write(str(d / "blur/notes.png"), b"these are not pixels\n")
    fx.write(str(d / "sharp/notes.png"), full)
    alpha = np.dstack([good, np.full(good.shape[:2], 128, np.uint8)])
    fx.write(str(d / "blur/alpha.png"), fx.png_bytes(alpha, "RGBA"))
    fx.write(str(d / "sharp/alpha.png"), full)
    # convertible: 8-bit grayscale and JPEG are accepted (and re-encoded as RGB PNG)
    fx.write(str(d / "blur/gray.png"), fx.png_bytes(good[..., 0], "L"))
    fx.write(str(d / "sharp/gray.png"), full)
    buf = io.BytesIO()
    Image.fromarray(good).save(buf, format="JPEG", quality=90)
    fx.write(str(d / "blur/jpeg.png"), buf.getvalue())
    fx.write(str(d / "sharp/jpeg.png"), full)


EXPECTED_REASONS = {
    "gopro/train/SEQ/lonely_blur.png": L.MISSING_PARTNER,
    "gopro/train/SEQ/lonely_sharp.png": L.MISSING_PARTNER,
    "gopro/train/SEQ/truncated.png": L.TRUNCATED,
    "gopro/train/SEQ/mismatch.png": L.SIZE_MISMATCH,
    "gopro/train/SEQ/deep.png": L.HIGH_BIT_DEPTH,
    "gopro/train/SEQ/deepgray.png": L.HIGH_BIT_DEPTH,
    "gopro/train/SEQ/tiny.png": L.TOO_SMALL,
    "gopro/train/SEQ/small.png": L.TOO_SMALL_FOR_TRAINING,
    "gopro/train/SEQ/notes.png": L.NOT_AN_IMAGE,
    "gopro/train/SEQ/alpha.png": L.UNCONVERTIBLE_MODE,
}


def test_bad_inputs_are_quarantined_with_reasons(tmp_path):
    _bad_gopro_tree(tmp_path)
    out, summary = ingest(tmp_path, IngestSource("gopro", str(tmp_path)))
    got = {q["pair_id"]: q["reason"] for q in quarantine(out)}
    assert got == EXPECTED_REASONS
    written = read_split(out, "train")
    assert sorted(e["pair_id"].decode() for e in written) == [
        "gopro/train/SEQ/good.png", "gopro/train/SEQ/gray.png", "gopro/train/SEQ/jpeg.png"]
    assert summary["inputs"] == 13 == summary["written"] + summary["quarantined"]
    assert summary["written"] == 3 and summary["quarantined"] == 10
    assert sum(summary["quarantine_by_reason"].values()) == 10
    with open(os.path.join(out, "summary.json")) as f:
        assert json.load(f)["quarantine_by_reason"][L.MISSING_PARTNER] == 2
    # a grayscale input becomes RGB with three equal channels
    gray = next(e for e in written if e["pair_id"].endswith(b"gray.png"))
    arr = np.asarray(Image.open(io.BytesIO(gray["blurry"])))
    assert arr.shape == (24, 32, 3) and (arr[..., 0] == arr[..., 2]).all()


def test_duplicate_pair_ids_are_quarantined(tmp_path):
    root = tmp_path / "rb"
    gt, bl = "s/gt/gt_1.png", "s/blur/blur_1.png"
    fx.write_pair(str(root / bl), str(root / gt), (16, 16), 0)
    fx.write(str(root / "RealBlur_J_test_list.txt"), f"{gt} {bl}\n{gt} {bl}\nonly_one_token\n".encode())
    out, summary = ingest(tmp_path, IngestSource("realblur", str(root)))
    reasons = sorted(q["reason"] for q in quarantine(out))
    assert reasons == [L.BAD_LIST_LINE, L.DUPLICATE_PAIR_ID]
    assert summary["written"] == 1 and summary["inputs"] == 3


def test_quarantine_bound_fails_the_run(tmp_path):
    _bad_gopro_tree(tmp_path)
    with pytest.raises(IngestError, match="10 of 13 inputs quarantined"):
        ingest(tmp_path, IngestSource("gopro", str(tmp_path)),
               options=IngestOptions(train_crop_size=16, max_quarantine_fraction=0.5))
    with open(tmp_path / "out" / "summary.json") as f:
        assert json.load(f)["status"] == "failed"


def test_layout_mistakes_are_clear_errors(tmp_path):
    fx.write(str(tmp_path / "x" / "a.txt"), b"x")
    with pytest.raises(L.LayoutError, match="no RealBlur"):
        run_ingest([IngestSource("realblur", str(tmp_path / "x"))], str(tmp_path / "o"))
    with pytest.raises(L.LayoutError, match="no gopro image pairs"):
        run_ingest([IngestSource("gopro", str(tmp_path / "x"))], str(tmp_path / "o"))
    with pytest.raises(L.LayoutError, match="no files found"):
        run_ingest([IngestSource("gopro", str(tmp_path / "missing"))], str(tmp_path / "o"))


def test_credential_failures_fail_the_run_instead_of_quarantining(tmp_path, monkeypatch):
    import google.auth.exceptions

    from components.ingest import beam_ingest

    fx.write_pair(str(tmp_path / "f/blur/a.png"), str(tmp_path / "f/sharp/a.png"), (16, 16), 0)

    def no_credentials(uri):
        raise google.auth.exceptions.DefaultCredentialsError("no credentials for " + uri)

    monkeypatch.setattr(beam_ingest, "read_bytes", no_credentials)
    with pytest.raises(Exception, match="no credentials for"):
        ingest(tmp_path, IngestSource("folder", str(tmp_path / "f")))


def test_blurry_only_subsets_are_unlabelled_and_requested_subsets_must_exist(tmp_path):
    """A subset with blurry images and no sharp one is skipped and counted, in any layout that
    pairs folders; a subset with some sharp images keeps quarantining its lone blurry ones; a
    requested subset that is not there is an error, not an empty selection."""
    root = tmp_path / "mine"
    fx.write_pair(str(root / "train/blur/a.png"), str(root / "train/sharp/a.png"), (16, 16), 0)
    fx.write(str(root / "train/blur/lonely.png"), fx.png_bytes(fx.rgb(16, 16, 1)))
    for n in ("b.png", "c.png"):
        fx.write(str(root / "challenge/blur" / n), fx.png_bytes(fx.rgb(16, 16, 2)))
    files = sorted((p.relative_to(root).as_posix(), p.stat().st_size)
                   for p in root.rglob("*") if p.is_file())
    pairing = L.pair_files("folder", str(root), files)
    assert sorted((c.pair_id, c.reason) for c in pairing.candidates) == [
        ("folder/train/a.png", None), ("folder/train/lonely.png", L.MISSING_PARTNER)]
    assert pairing.unlabelled == [L.Unlabelled("challenge", 2, "blurry images and no sharp image")]
    assert pairing.ignored == 0
    only_train = L.pair_files("folder", str(root), files, subsets=["train"])
    assert only_train.unlabelled == [] and only_train.ignored == 2
    with pytest.raises(L.LayoutError, match="subset challenge under .* is unlabelled"):
        L.pair_files("folder", str(root), files, subsets=["train", "challenge"])
    with pytest.raises(L.LayoutError, match=r"for subset\(s\) valid \(found: train\)"):
        L.pair_files("folder", str(root), files, subsets=["train", "valid"])
