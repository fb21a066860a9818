"""Fixture trees in the naming of the real archives as they unpack (docs/data.md has the
sources): REDS's NTIRE archives with the JPEG track, a blurry-only test split and val-300;
GoPro's GOPRO_Large vs GOPRO_Large_all; RealBlur's J and R under one root with the authors'
list files; HIDE_dataset with its GT folder and list files."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from components.ingest import layouts as L
from components.ingest.beam_ingest import run_ingest
from components.ingest.sources import IngestOptions, IngestSource
from deblur import cli
from pipelines import config as C
from tests import fixtures as fx
from tests.tfrecords import read_split

SIZE = (16, 24)
# the real bound: the point of these trees is that real archives pass it
OPTIONS = IngestOptions(train_crop_size=16, tiny_num_shards=1)


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _read_text(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def _files(root):
    return sorted((p.relative_to(root).as_posix(), p.stat().st_size)
                  for p in root.rglob("*") if p.is_file())


def reds_tree(root, clips=("000", "001"), frames=(0, 1), val_frames=(8, 9, 19), test=True):
    """REDS/{train,val,test}/<split>_{blur,blur_jpeg,sharp}/<clip>/<frame>, as the NTIRE
    archives (train_blur.zip, train_blur_jpeg.zip, train_sharp.zip, ...) unpack; the test
    split has blurry frames only (its ground truth is not published)."""
    for split, frame_numbers in (("train", frames), ("val", val_frames)):
        for clip in clips:
            for i in frame_numbers:
                name = f"{i:08d}"
                d = root / split
                fx.write_pair(str(d / f"{split}_blur" / clip / f"{name}.png"),
                              str(d / f"{split}_sharp" / clip / f"{name}.png"), SIZE,
                              seed=int(clip) * 100 + i)
                blurry = np.asarray(Image.open(d / f"{split}_blur" / clip / f"{name}.png"))
                fx.write(str(d / f"{split}_blur_jpeg" / clip / f"{name}.jpg"), _jpeg(blurry))
    # the super-resolution track's folders sit beside them and are not deblurring pairs
    fx.write(str(root / "train/train_sharp_bicubic/X4/000/00000000.png"),
             fx.png_bytes(fx.rgb(4, 6, 0)))
    if test:
        for clip in ("000",):
            for i in frames:
                fx.write(str(root / f"test/test_blur/{clip}/{i:08d}.png"), fx.png_bytes(fx.rgb(*SIZE, i)))
                fx.write(str(root / f"test/test_blur_jpeg/{clip}/{i:08d}.jpg"), _jpeg(fx.rgb(*SIZE, i)))


# --- REDS ------------------------------------------------------------------------------------
def test_reds_jpeg_track_pairs_jpg_with_png_by_clip_and_frame(tmp_path):
    """Issue (a): train_blur_jpeg/*.jpg pairs with train_sharp/*.png; nothing is quarantined
    under the real 5% bound, and the blurry-only test split is skipped, not quarantined (b)."""
    root = tmp_path / "REDS"
    reds_tree(root)
    out = str(tmp_path / "out")
    summary = run_ingest([IngestSource("reds", str(root), blur_kind="blur_jpeg")], out, OPTIONS)
    assert summary["status"] == "ok" and summary["quarantined"] == 0
    assert summary["splits"]["train"]["written"] == 4 and summary["splits"]["val"]["written"] == 6
    assert "test" not in summary["splits"]
    assert summary["unlabelled_skipped"] == [{
        "root": str(root), "layout": "reds", "subset": "test", "files": 2,
        "detail": "blurry images and no sharp image"}]
    # ignored: the PNG-track blurry frames (train 4, val 6, test 2) and the bicubic frame
    assert summary["ignored_files"] == {str(root): 13}
    train = read_split(out, "train")
    assert sorted(e["pair_id"].decode() for e in train) == [
        f"reds/train/{c}/{i:08d}.jpg" for c in ("000", "001") for i in (0, 1)]
    for e in train:
        _, _, clip, name = e["pair_id"].decode().split("/")
        stem = name[:-4]
        assert e["sharp"] == (root / f"train/train_sharp/{clip}/{stem}.png").read_bytes()
        # the JPEG is decoded and stored as RGB PNG: its pixels, not the PNG track's
        jpeg_pixels = np.asarray(Image.open(root / f"train/train_blur_jpeg/{clip}/{name}"))
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(e["blurry"]))), jpeg_pixels)
        assert e["dataset"] == b"reds" and e["domain"] == b"out"


def test_reds_png_track_keeps_its_pair_ids(tmp_path):
    root = tmp_path / "REDS"
    reds_tree(root, val_frames=(0,), test=False)
    pairing = L.pair_files("reds", str(root), _files(root))
    assert sorted(c.pair_id for c in pairing.candidates if c.subset == "val") == [
        "reds/val/000/00000000.png", "reds/val/001/00000000.png"]
    assert all(c.blurry.endswith(".png") and c.reason is None for c in pairing.candidates)


def test_reds_blurry_only_test_split_is_counted_and_printed_not_quarantined(tmp_path, capsys):
    """Issue (b) through the CLI at the default 5% bound: exit 0, the skipped split named in
    summary.json and in the printed summary."""
    root = tmp_path / "REDS"
    reds_tree(root, clips=("000",), val_frames=(0,))
    out = tmp_path / "out"
    assert cli.main(["ingest", "--layout", "reds", "--root", str(root), "--out", str(out),
                     "--crop-size", "16"]) == 0
    printed = capsys.readouterr().out
    assert "3 inputs = 3 written + 0 quarantined" in printed
    assert (f"skipped unlabelled subset test of {root} (reds): 2 blurry images and no sharp "
            "image; not ingested, not quarantined") in printed
    summary = json.loads((out / "summary.json").read_text())
    assert [u["subset"] for u in summary["unlabelled_skipped"]] == ["test"]
    assert summary["quarantined"] == 0 and set(summary["splits"]) == {"train", "val"}


def test_reds_val300_selects_frames_9_19_to_99_of_every_val_clip(tmp_path):
    """Issue (c): val300 as a subset, with its own output split name."""
    root = tmp_path / "REDS"
    reds_tree(root, val_frames=(0, 8, 9, 10, 19, 99))
    out = str(tmp_path / "out")
    summary = run_ingest([IngestSource("reds", str(root), subsets=["val300"], blur_kind="blur_jpeg",
                                       split_names={"val300": "test_ood"})], out, OPTIONS)
    ids = sorted(e["pair_id"].decode() for e in read_split(out, "test_ood"))
    assert ids == [f"reds/val/{c}/{i:08d}.jpg" for c in ("000", "001") for i in (9, 19, 99)]
    assert summary["inputs"] == 6 and summary["unlabelled_skipped"] == []
    # what was not selected is ignored, not lost: every file of the tree is accounted for
    assert summary["ignored_files"][str(root)] + 2 * 6 == len(_files(root))


def test_val300_is_the_documented_hinet_selection():
    def cand(name, subset="val"):
        return L.Candidate("x", "reds", "out", subset, f"r/{subset}/{subset}_blur/000/{name}", None)

    assert [n for n in (f"{i:08d}.png" for i in range(100)) if L.in_val300(cand(n))] == [
        f"{i:08d}.png" for i in range(9, 100, 10)]
    assert not L.in_val300(cand("00000009.png", subset="train"))
    assert not L.in_val300(cand(".DS_Store"))


@pytest.mark.parametrize("kwargs, message", [
    (dict(subsets=["train", "test"]), "reds subset test under .* is unlabelled \\(2 blurry images"),
    (dict(subsets=["val", "val300"]), "val and val300 overlap"),
    (dict(subsets=["val-300"]), "unknown reds subset\\(s\\) val-300; choose from train, val, val300, test"),
    (dict(blur_kind="blur_gamma"), "reds blur kind must be one of blur, blur_jpeg"),
    (dict(variant="J"), "variant applies to the realblur layout only"),
])
def test_reds_option_mistakes_are_clear_errors(tmp_path, kwargs, message):
    root = tmp_path / "REDS"
    reds_tree(root)
    with pytest.raises(L.LayoutError, match=message):
        L.pair_files("reds", str(root), _files(root), **kwargs)


def test_reds_wrong_blur_kind_says_which_one_is_there(tmp_path):
    """Only the JPEG track unpacked: the default blur kind finds no train_blur and says so,
    instead of quarantining every sharp frame."""
    root = tmp_path / "REDS"
    reds_tree(root, test=False)
    for p in sorted(root.rglob("*_blur/*/*.png")):
        p.unlink()
    with pytest.raises(L.LayoutError, match="reds subset train .* no 'blur' blurry images but "
                                            "has 'blur_jpeg': choose it with --blur-kind"):
        L.pair_files("reds", str(root), _files(root))


def test_reds_two_blurry_files_for_one_frame_are_a_duplicate_not_a_silent_choice(tmp_path):
    root = tmp_path / "REDS"
    reds_tree(root, clips=("000",), frames=(0,), val_frames=(), test=False)
    fx.write(str(root / "train/train_blur_jpeg/000/00000000.png"), fx.png_bytes(fx.rgb(*SIZE, 3)))
    cands = L.pair_files("reds", str(root), _files(root), blur_kind="blur_jpeg").candidates
    by_id = {c.pair_id: c for c in cands}
    assert by_id["reds/train/000/00000000.jpg"].reason is None
    dup = by_id["reds/train/000/00000000.png"]
    assert dup.reason == L.DUPLICATE_PAIR_ID and "two blur_jpeg files" in dup.detail


def test_reds_options_from_yaml_config_and_cli(tmp_path, capsys):
    cfg = C.from_dict({"data": {"sources": [
        {"layout": "reds", "root": "/data/REDS", "blur_kind": "blur_jpeg",
         "subsets": ["train", "val300"], "split_names": {"val300": "test_ood"}}]}})
    [src] = cfg.ingest_sources()
    assert (src.blur_kind, list(src.subsets), src.split_of("val300")) == (
        "blur_jpeg", ["train", "val300"], "test_ood")
    for bad, message in (({"blur_kind": "jpeg"}, "reds blur kind must be one of blur, blur_jpeg"),
                         ({"subsets": ["val_300"]}, "unknown reds subset"),
                         ({"subsets": "train"}, "subsets must be a non-empty list"),
                         ({"subsets": []}, "subsets must be a non-empty list")):
        with pytest.raises(C.ConfigError, match=message):
            C.from_dict({"data": {"sources": [{"layout": "reds", "root": "/r", **bad}]}})
    root = tmp_path / "REDS"
    reds_tree(root, test=False)
    assert cli.main(["ingest", "--layout", "reds", "--root", str(root), "--out",
                     str(tmp_path / "o"), "--split", "val,val300"]) == cli.EXIT_USAGE
    assert "val and val300 overlap" in capsys.readouterr().err
    assert cli.main(["ingest", "--layout", "gopro", "--root", str(root), "--out",
                     str(tmp_path / "o"), "--blur-kind", "blur_jpeg"]) == cli.EXIT_USAGE
    assert "gopro blur kind must be one of blur, blur_gamma" in capsys.readouterr().err


# --- GoPro -----------------------------------------------------------------------------------
def test_gopro_large_unzipped_without_its_folder_and_blur_gamma(tmp_path):
    """GOPRO_Large.zip unpacked straight into a folder (train/ and test/ at the root, as
    RealBlur's extract script does), blur_gamma chosen."""
    for split in ("train", "test"):
        d = tmp_path / split / "GOPR0372_07_00"
        for kind in ("blur", "blur_gamma"):
            fx.write_pair(str(d / kind / "000047.png"), str(d / "sharp" / "000047.png"), SIZE, 1)
    pairing = L.pair_files("gopro", str(tmp_path), _files(tmp_path), blur_kind="blur_gamma")
    assert sorted(c.pair_id for c in pairing.candidates) == [
        "gopro/test/GOPR0372_07_00/000047.png", "gopro/train/GOPR0372_07_00/000047.png"]
    assert all("/blur_gamma/" in c.blurry for c in pairing.candidates)
    assert pairing.ignored == 2  # the blur frames


def test_gopro_large_all_is_named_in_the_error(tmp_path):
    """GOPRO_Large_all.zip holds every sharp 240 fps frame and no blurry image."""
    root = tmp_path / "GOPRO_Large_all"
    for i in range(3):
        fx.write(str(root / "train" / "GOPR0372_07_00" / f"{i:06d}.png"), fx.png_bytes(fx.rgb(*SIZE, i)))
    for r in (root, tmp_path):
        with pytest.raises(L.LayoutError, match="looks like GOPRO_Large_all .* ingest GOPRO_Large"):
            L.pair_files("gopro", str(r), _files(r))


# --- RealBlur --------------------------------------------------------------------------------
REALBLUR_DIRS = {"J": "RealBlur-J_ECC_IMCORR_centroid_itensity_ref",
                 "R": "RealBlur-R_BM3D_ECC_IMCORR_centroid_itensity_ref"}


def realblur_tree(root):
    """RealBlur.tar.gz: both versions of every scene and the authors' four list files, lines
    '<gt> <blur> ' (with the trailing space of rimchang/SRN-Deblur's datalist files)."""
    for v, d in REALBLUR_DIRS.items():
        for split, scene in (("train", "scene183"), ("test", "scene230")):
            lines = []
            for i in (2, 7):
                gt, bl = f"{d}/{scene}/gt/gt_{i}.png", f"{d}/{scene}/blur/blur_{i}.png"
                fx.write_pair(str(root / bl), str(root / gt), SIZE, seed=i)
                lines.append(f"{gt} {bl} ")
            fx.write(str(root / f"RealBlur_{v}_{split}_list.txt"), "\n".join(lines).encode())


def test_realblur_j_and_r_under_one_root_must_not_share_a_split(tmp_path):
    root = tmp_path / "RealBlur"
    realblur_tree(root)
    with pytest.raises(L.LayoutError, match="holds RealBlur-J and RealBlur-R .* choose one with "
                                            "--variant J or R"):
        L.pair_files("realblur", str(root), _files(root), subsets=["test"],
                     read_text=_read_text)
    pairing = L.pair_files("realblur", str(root), _files(root), subsets=["test"], variant="J",
                           read_text=_read_text)
    assert sorted(c.pair_id for c in pairing.candidates) == [
        f"realblur_j/test/{REALBLUR_DIRS['J']}/scene230/blur/blur_{i}.png" for i in (2, 7)]
    assert pairing.ignored == 12  # the J train images and all the R images
    with pytest.raises(L.LayoutError, match="realblur variant must be one of J, R"):
        L.pair_files("realblur", str(root), _files(root), variant="j")


def test_realblur_both_variants_as_two_sources_in_their_own_splits(tmp_path):
    root = tmp_path / "RealBlur"
    realblur_tree(root)
    out = str(tmp_path / "out")
    summary = run_ingest([
        IngestSource("realblur", str(root), subsets=["test"], variant=v,
                     split_names={"test": f"test_{v.lower()}"}) for v in ("J", "R")], out, OPTIONS)
    assert summary["written"] == 4 and summary["quarantined"] == 0
    assert {e["dataset"] for e in read_split(out, "test_j")} == {b"realblur_j"}
    assert {e["dataset"] for e in read_split(out, "test_r")} == {b"realblur_r"}


# --- HIDE ------------------------------------------------------------------------------------
def test_hide_dataset_with_gt_and_list_files(tmp_path):
    """HIDE_dataset.zip: train/, test/test-close-ups/, test/test-long-shot/, GT/ (the sharp
    image under the blurry image's own name) and train.txt / test.txt (one name a line)."""
    root = tmp_path / "HIDE_dataset"
    names = {"train": ["10fromGOPR1063.png"], "test/test-close-ups": ["1fromGOPR0950.png"],
             "test/test-long-shot": ["3fromGOPR1105.png", "4fromGOPR1105.png"]}
    for folder, ns in names.items():
        for n in ns:
            fx.write_pair(str(root / folder / n), str(root / "GT" / n), SIZE, seed=len(n))
    fx.write(str(root / "train.txt"), b"10fromGOPR1063.png\n")
    fx.write(str(root / "test.txt"), b"1fromGOPR0950.png\n3fromGOPR1105.png\n4fromGOPR1105.png\n")
    pairing = L.pair_files("hide", str(tmp_path), _files(tmp_path), subsets=["test"])
    assert sorted(c.pair_id for c in pairing.candidates) == [
        "hide/test/test-close-ups/1fromGOPR0950.png", "hide/test/test-long-shot/3fromGOPR1105.png",
        "hide/test/test-long-shot/4fromGOPR1105.png"]
    assert all(c.reason is None and c.sharp.endswith("/GT/" + c.pair_id.split("/")[-1])
               for c in pairing.candidates)
    # the two list files, and the train image with its GT (not selected)
    assert pairing.ignored == 4
