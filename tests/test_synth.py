"""Tests for core.synth: layout, determinism, physical sanity, argument checks."""
from __future__ import annotations

import hashlib
import json
import os
import re

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from core import synth

SIZE = (64, 96)
ODD_SIZE = (61, 90)  # not square, sides not multiples of 8

GOPRO_FILE = re.compile(r"^GOPRO_Large/(train|test)/(GOPR\d{4}_synth)/(blur|sharp)/(\d{6}\.png)$")
RB_DIR = "RealBlur-J_ECC_IMCORR_centroid_itensity_ref"
RB_GT = re.compile(rf"^{RB_DIR}/(scene\d{{3}})/gt/gt_(\d+)\.png$")
RB_BLUR = re.compile(rf"^{RB_DIR}/(scene\d{{3}})/blur/blur_(\d+)\.png$")


# ------------------------------------------------------------------------------- helpers
def _files(root):
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            out[os.path.relpath(p, root).replace(os.sep, "/")] = p
    return out


def _hashes(out_dir):
    return {rel: hashlib.sha256(open(p, "rb").read()).hexdigest()
            for rel, p in _files(str(out_dir)).items()}


def _load(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.mode == "RGB"
        return np.asarray(im)


def _gopro_pairs(summary):
    root = summary["in_domain"]["root"]
    pairs = {"train": [], "test": []}
    for rel, p in sorted(_files(root).items()):
        m = GOPRO_FILE.match(rel)
        assert m, f"unexpected file in the GoPro tree: {rel}"
        if m.group(3) == "blur":
            pairs[m.group(1)].append((p, p.replace(f"{os.sep}blur{os.sep}", f"{os.sep}sharp{os.sep}")))
    return pairs


def _realblur_pairs(summary):
    root = summary["out_of_domain"]["root"]
    pairs = {}
    for split in ("train", "test"):
        with open(os.path.join(root, f"RealBlur_J_{split}_list.txt")) as fh:
            lines = fh.read().splitlines()
        pairs[split] = []
        for line in lines:
            gt, blur = line.split(" ")
            pairs[split].append((os.path.join(root, blur), os.path.join(root, gt), gt, blur))
    return pairs


def _luma(img):
    return img.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def _noise_sigma(img):
    """Robust noise estimate: MAD of the luma minus its Gaussian-smoothed version."""
    y = _luma(img)
    r = y - ndimage.gaussian_filter(y, 1.5)
    return float(np.median(np.abs(r - np.median(r))) / 0.6745)


# ------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def run_a(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth_a")
    return out, synth.generate(str(out), pairs=8, size=SIZE, seed=0, test_pairs=4)


@pytest.fixture(scope="module")
def run_odd(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth_odd")
    return out, synth.generate(str(out), pairs=3, size=ODD_SIZE, seed=5, progress=True)


# ------------------------------------------------------------------------------- layout
def test_summary(run_a, run_odd):
    out, s = run_a
    assert s == {
        "in_domain": {"root": os.path.abspath(os.path.join(out, "gopro_synth")), "train": 8, "test": 4},
        "out_of_domain": {"root": os.path.abspath(os.path.join(out, "realblur_synth")),
                          "test": 4, "train": 4},
        "seed": 0,
        "size": [64, 96],
        "sources": os.path.join(os.path.abspath(out), "synth_sources.json"),
    }
    _, s = run_odd
    assert s["in_domain"]["train"] == 3
    assert s["in_domain"]["test"] == s["out_of_domain"]["test"] == s["out_of_domain"]["train"] == 2
    assert s["size"] == [61, 90]


@pytest.mark.parametrize("run", ["run_a", "run_odd"])
def test_gopro_layout(run, request):
    _, s = request.getfixturevalue(run)
    root = s["in_domain"]["root"]
    assert os.path.isdir(os.path.join(root, "GOPRO_Large", "train"))
    assert os.path.isdir(os.path.join(root, "GOPRO_Large", "test"))
    files = _files(root)
    seqs = {"train": {}, "test": {}}
    for rel in files:
        m = GOPRO_FILE.match(rel)
        assert m, f"unexpected file in the GoPro tree: {rel}"
        split, seq, kind, name = m.groups()
        seqs[split].setdefault(seq, {"blur": set(), "sharp": set()})[kind].add(name)
    assert not set(seqs["train"]) & set(seqs["test"]), "a sequence is in both splits"
    for split in ("train", "test"):
        n = sum(len(v["blur"]) for v in seqs[split].values())
        assert n == s["in_domain"][split]
        for seq, kinds in seqs[split].items():
            assert kinds["blur"] == kinds["sharp"], f"{seq}: blur and sharp frames differ"
            frames = sorted(kinds["blur"])
            assert frames == [f"{i:06d}.png" for i in range(1, len(frames) + 1)]
            assert 2 <= len(frames) <= 4 or (n == 1 and len(frames) == 1)
    if s["in_domain"]["train"] > 4:  # several sequences per split when there are enough pairs
        assert len(seqs["train"]) >= 2


@pytest.mark.parametrize("run", ["run_a", "run_odd"])
def test_realblur_layout(run, request):
    _, s = request.getfixturevalue(run)
    root = s["out_of_domain"]["root"]
    listed = set()
    scenes = {}
    for split in ("train", "test"):
        path = os.path.join(root, f"RealBlur_J_{split}_list.txt")
        assert os.path.isfile(path)
        with open(path) as fh:
            text = fh.read()
        lines = text.splitlines()
        assert text.endswith("\n") and len(lines) == s["out_of_domain"][split]
        for line in lines:
            parts = line.split(" ")
            assert len(parts) == 2, line
            gt, blur = parts
            mg, mb = RB_GT.match(gt), RB_BLUR.match(blur)
            assert mg and mb, line
            assert mg.groups() == mb.groups(), f"gt and blur of one line do not match: {line}"
            assert os.path.isfile(os.path.join(root, gt)) and os.path.isfile(os.path.join(root, blur))
            scenes.setdefault(mg.group(1), set()).add(split)
            listed.update((gt, blur))
    assert all(len(v) == 1 for v in scenes.values()), "a scene is in both splits"
    on_disk = set(_files(root)) - {"RealBlur_J_train_list.txt", "RealBlur_J_test_list.txt"}
    assert on_disk == listed, "every image is listed exactly once and every listed file exists"


@pytest.mark.parametrize("run", ["run_a", "run_odd"])
def test_images_rgb_uint8_and_sized(run, request):
    _, s = request.getfixturevalue(run)
    h, w = s["size"]
    gp, rb = _gopro_pairs(s), _realblur_pairs(s)
    pairs = [p for v in gp.values() for p in v] + [p[:2] for v in rb.values() for p in v]
    assert len(pairs) == s["in_domain"]["train"] + s["in_domain"]["test"] + 2 * s["out_of_domain"]["test"]
    for blur_path, sharp_path in pairs:
        b, t = _load(blur_path), _load(sharp_path)
        assert b.dtype == np.uint8 and t.dtype == np.uint8
        assert b.shape == t.shape == (h, w, 3)


def test_ingest_layouts_accept_the_output(run_a):
    """The repository's own layout parsers pair every file without quarantine."""
    layouts = pytest.importorskip("components.ingest.layouts")
    _, s = run_a

    def listing(root):
        return [(rel, os.path.getsize(p)) for rel, p in sorted(_files(root).items())]

    root = s["in_domain"]["root"]
    cands, ignored, unlabelled = layouts.pair_gopro(root, listing(root), "gopro", "in")
    assert ignored == 0 and not unlabelled and all(c.reason is None for c in cands)
    assert len(cands) == s["in_domain"]["train"] + s["in_domain"]["test"]

    root = s["out_of_domain"]["root"]
    cands, ignored, unlabelled = layouts.pair_realblur(root, listing(root), None, "out",
                                                      read_text=lambda p: open(p).read())
    assert ignored == 0 and not unlabelled and all(c.reason is None for c in cands)
    assert {c.dataset for c in cands} == {"realblur_j"}
    assert len(cands) == s["out_of_domain"]["train"] + s["out_of_domain"]["test"]


def test_rerun_replaces_previous_output(tmp_path):
    synth.generate(str(tmp_path), pairs=5, size=(32, 40), seed=2, test_pairs=3)
    s = synth.generate(str(tmp_path), pairs=1, size=(32, 40), seed=2)
    gp, rb = _gopro_pairs(s), _realblur_pairs(s)
    assert [len(gp["train"]), len(gp["test"])] == [1, 2]
    assert [len(rb["train"]), len(rb["test"])] == [2, 2]
    assert len(_files(s["out_of_domain"]["root"])) == 2 + 2 * 4


# ------------------------------------------------------------------------------- determinism
def test_same_seed_byte_identical(run_a, tmp_path):
    out, _ = run_a
    synth.generate(str(tmp_path), pairs=8, size=SIZE, seed=0, test_pairs=4)
    first, second = _hashes(out), _hashes(tmp_path)
    assert len(first) == 2 * 12 + 2 * 8 + 2 + 1  # + synth_sources.json
    assert first == second


def test_different_seed_differs(run_a, tmp_path):
    out, _ = run_a
    synth.generate(str(tmp_path), pairs=8, size=SIZE, seed=1, test_pairs=4)
    a, b = _hashes(out), _hashes(tmp_path)
    pngs_a = {h for rel, h in a.items() if rel.endswith(".png")}
    pngs_b = {h for rel, h in b.items() if rel.endswith(".png")}
    assert len(pngs_b) > 0 and not pngs_a & pngs_b, "an image is identical across seeds"


# ------------------------------------------------------------------------------- physics
def test_in_domain_blur_is_blurrier_than_sharp(run_a):
    _, s = run_a
    pairs = [p for v in _gopro_pairs(s).values() for p in v]
    lower, shift = 0, []
    for blur_path, sharp_path in pairs:
        b, t = _luma(_load(blur_path)), _luma(_load(sharp_path))
        lower += ndimage.laplace(b).var() < ndimage.laplace(t).var()
        shift.append(b.mean() - t.mean())
    assert lower >= 0.8 * len(pairs), f"blur sharper than sharp in {len(pairs) - lower}/{len(pairs)}"
    # the same scene: averaging sub-frames keeps the brightness (margins, no black borders);
    # averaging in linear light then re-applying the gamma makes the blur slightly brighter
    # on average (Jensen: the gamma curve is concave), never darker by much
    assert max(abs(d) for d in shift) < 15.0
    assert np.median(shift) > 0.0 and min(shift) > -3.0


def test_out_of_domain_darker_with_saturated_lights(run_a):
    _, s = run_a
    gp = [p for v in _gopro_pairs(s).values() for p in v]
    rb = [p for v in _realblur_pairs(s).values() for p in v]
    in_luma = [_luma(_load(b)).mean() for b, _ in gp] + [_luma(_load(t)).mean() for _, t in gp]
    out_blur = [_load(b) for b, *_ in rb]
    out_gt = [_load(g) for _, g, *_ in rb]
    out_luma = [_luma(x).mean() for x in out_blur + out_gt]
    assert np.mean(out_luma) < 0.75 * np.mean(in_luma)
    assert np.median(out_luma) < np.median(in_luma)
    saturated = sum(bool((x == 255).any()) for x in out_blur)
    assert saturated >= 0.75 * len(out_blur)
    # saturated pixels are rare: light streaks, not a blown-out frame
    assert all((x == 255).any(axis=-1).mean() < 0.2 for x in out_blur)


def test_out_of_domain_blur_is_noisier_than_gt(run_a):
    _, s = run_a
    rb = [p for v in _realblur_pairs(s).values() for p in v]
    sig = [(_noise_sigma(_load(b)), _noise_sigma(_load(g))) for b, g, *_ in rb]
    noisier = sum(sb > sg for sb, sg in sig)
    assert noisier >= 0.75 * len(sig), sig
    assert np.median([sb for sb, _ in sig]) > np.median([sg for _, sg in sig])


def test_shake_psf_is_a_centred_normalised_kernel():
    for i, size in enumerate((9, 15, 31)):
        k = synth.shake_psf(np.random.default_rng([0, i]), size)
        assert k.shape == (size, size)
        assert (k >= 0).all() and abs(k.sum() - 1.0) < 1e-9
        yy, xx = np.mgrid[0:size, 0:size]
        c = (size - 1) / 2
        assert abs((k * yy).sum() - c) < 1e-6 and abs((k * xx).sum() - c) < 1e-6
        assert (k > 0).sum() > 3  # a trajectory, not a delta


# ------------------------------------------------------------------------------- arguments
@pytest.mark.parametrize("kwargs", [
    dict(pairs=0), dict(pairs=-3), dict(pairs=2.5), dict(pairs=True),
    dict(size=(15, 64)), dict(size=(64, 8)), dict(size=(64,)), dict(size=(64, 64, 3)),
    dict(size="64x64"), dict(size=(64.0, 64)), dict(size=64),
    dict(test_pairs=0), dict(test_pairs=-1), dict(seed=-1), dict(seed=1.5),
])
def test_invalid_arguments(tmp_path, kwargs):
    args = dict(pairs=2, size=(32, 32), seed=0)
    args.update(kwargs)
    with pytest.raises(ValueError):
        synth.generate(str(tmp_path / "out"), **args)
    assert not (tmp_path / "out").exists(), "nothing is written for invalid arguments"


def test_motion_stays_inside_the_crop(tmp_path, monkeypatch):
    """Every sub-frame sample (and its interpolation support) lies inside the padded crop:
    warping with NaN outside the input must never produce a NaN."""
    real = synth.ndimage.affine_transform
    calls, nans = [], []

    def checked(*args, **kwargs):
        kwargs.update(mode="grid-constant", cval=np.nan)
        out = real(*args, **kwargs)
        calls.append(1)
        nans.append(bool(np.isnan(out).any()))
        return out

    monkeypatch.setattr(synth.ndimage, "affine_transform", checked)
    for i, size in enumerate([(16, 16), (40, 200), (120, 72)]):
        synth.generate(str(tmp_path / str(i)), pairs=4, size=size, seed=i, test_pairs=1)
    assert calls and not any(nans)


# ------------------------------------------------------------------------------- disjoint sources
@pytest.mark.parametrize("seed", [0, 1, 7, 4242, 2**31 - 1])
def test_no_test_source_feeds_train(tmp_path, monkeypatch, seed):
    """What the generator actually reads, spied on where it reads it (not its own provenance
    file): every photograph cropped for a train split is in TRAIN_PHOTOS, every one cropped for
    a test split in TEST_PHOTOS, the two pools share nothing, and every procedural scene is
    drawn from a random stream keyed by its own split ([seed, domain, split, group])."""
    assert synth.TRAIN_PHOTOS and synth.TEST_PHOTOS
    assert not set(synth.TRAIN_PHOTOS) & set(synth.TEST_PHOTOS)
    photos, streams = [], []
    crop, procedural = synth._crop_natural, synth._procedural

    def spy_crop(rng, name, h, w):
        photos.append((tuple(rng.bit_generator.seed_seq.entropy), name))
        return crop(rng, name, h, w)

    def spy_procedural(rng, h, w):
        streams.append(tuple(rng.bit_generator.seed_seq.entropy))
        return procedural(rng, h, w)

    monkeypatch.setattr(synth, "_crop_natural", spy_crop)
    monkeypatch.setattr(synth, "_procedural", spy_procedural)
    summary = synth.generate(str(tmp_path), pairs=24, size=(24, 24), seed=seed, test_pairs=24)
    split_of = {v: k for k, v in synth._SPLITS.items()}
    seen = {"train": set(), "test": set()}
    for key, name in photos:
        assert key[0] == seed
        seen[split_of[key[2]]].add(name)
    assert seen["train"] and seen["test"], seen  # both splits drew photographs
    assert seen["train"] <= set(synth.TRAIN_PHOTOS), seen["train"]
    assert seen["test"] <= set(synth.TEST_PHOTOS), seen["test"]
    assert streams and {k[2] for k in streams} == {0, 1}  # procedural scenes in both splits
    assert all(k[0] == seed and len(k) == 4 for k in streams)
    # the provenance file says the same as the spy
    with open(summary["sources"]) as fh:
        recorded = json.load(fh)
    for split in ("train", "test"):
        named = {p["source"] for p in recorded["pairs"] if p["split"] == split} - {"procedural"}
        assert named <= seen[split]
    assert len(recorded["pairs"]) == 24 + 3 * 24
