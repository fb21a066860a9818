"""IngestSource.holdout: a held-out part of a training subset (the in-domain validation split),
whole sequences at a time, chosen by the SHA-256 of the sequence so that it is deterministic
and stable when data is added (docs/data.md "Validation splits")."""
from __future__ import annotations

import logging
from collections import defaultdict

import pytest

from components.ingest import layouts as L
from components.ingest.beam_ingest import (
    IngestOptions, IngestSource, holdout_group, holdout_value, plan_ingest, run_ingest,
    unlabelled_lines)
from tests import fixtures as fx
from tests.tfrecords import read_split

SMALL = IngestOptions(train_crop_size=16, max_quarantine_fraction=1.0, tiny_num_shards=1)
VAL = {"subset": "train", "split": "val", "fraction": 0.5}
SEQS = [f"GOPR{n:04d}_00" for n in range(1, 11)]


def write_gopro(root, seqs, frames=3, subset="train", size=(16, 16)):
    for s, seq in enumerate(seqs):
        for f in range(frames):
            d = root / "GOPRO_Large" / subset / seq
            fx.write_pair(str(d / "blur" / f"{f:06d}.png"), str(d / "sharp" / f"{f:06d}.png"),
                          size, seed=100 * s + f)


def gopro(root, holdout=VAL, **kw):
    return IngestSource("gopro", str(root), holdout=holdout, **kw)


def splits_of(plan):
    """{pair id: split}"""
    return {c.pair_id: split for split, c in plan.candidates}


def group(pair_id):
    return pair_id.rsplit("/", 1)[0]


def test_the_holdout_takes_whole_sequences_chosen_by_their_hash(tmp_path):
    write_gopro(tmp_path, SEQS)
    write_gopro(tmp_path, ["GOPR0100_00"], subset="test")
    plan = plan_ingest([gopro(tmp_path)], SMALL)
    by_group = defaultdict(set)
    for pid, split in splits_of(plan).items():
        by_group[group(pid)].add(split)
    assert by_group.pop("gopro/test/GOPR0100_00") == {"test"}  # other subsets are left alone
    # every sequence is on one side, and the side is its hash's
    assert all(len(s) == 1 for s in by_group.values()), by_group
    want = {g: {"val" if holdout_value(g) < 0.5 else "train"} for g in by_group}
    assert by_group == want
    held = [g for g, s in by_group.items() if s == {"val"}]
    assert 0 < len(held) < len(SEQS)  # a real split of this tree, not a degenerate one
    assert holdout_group("gopro/train/GOPR0001_00/000000.png") == "gopro/train/GOPR0001_00"
    (rec,) = plan.holdouts
    assert rec == {"root": str(tmp_path), "subset": "train", "split": "val", "fraction": 0.5,
                   "by": "group", "groups": 10, "held_groups": len(held), "pairs": 30,
                   "held_pairs": 3 * len(held)}
    # the same plan again: the same choice
    assert splits_of(plan_ingest([gopro(tmp_path)], SMALL)) == splits_of(plan)


def test_adding_sequences_moves_no_existing_sequence(tmp_path):
    write_gopro(tmp_path, SEQS[:5])
    before = splits_of(plan_ingest([gopro(tmp_path)], SMALL))
    write_gopro(tmp_path, SEQS[5:] + ["GOPR0200_00", "GOPR0300_00"])
    # and a new frame in an existing sequence: it joins its sequence's side
    d = tmp_path / "GOPRO_Large" / "train" / SEQS[0]
    fx.write_pair(str(d / "blur" / "000009.png"), str(d / "sharp" / "000009.png"), (16, 16), 7)
    after = splits_of(plan_ingest([gopro(tmp_path)], SMALL))
    assert {pid: after[pid] for pid in before} == before
    assert after[f"gopro/train/{SEQS[0]}/000009.png"] == before[f"gopro/train/{SEQS[0]}/000000.png"]
    assert len(after) == len(before) + 7 * 3 + 1  # 7 new sequences, 1 new frame


def test_a_sequence_in_two_spans_is_one_group(tmp_path):
    for span, frames in (("span-1", 2), ("span-2", 2)):
        for s, seq in enumerate(SEQS):
            for f in range(frames):
                d = tmp_path / span / "train" / seq
                name = f"{span}-{f:06d}.png"
                fx.write_pair(str(d / "blur" / name), str(d / "sharp" / name), (16, 16), s + f)
    plan = plan_ingest([gopro(tmp_path, span_pattern="span-{SPAN}")], SMALL)
    by_seq = defaultdict(set)
    for pid, split in splits_of(plan).items():  # gopro/span-N/train/<seq>/<frame>
        by_seq[pid.split("/")[3]].add(split)
    assert len(by_seq) == 10 and all(len(s) == 1 for s in by_seq.values()), by_seq
    assert {s for ss in by_seq.values() for s in ss} == {"train", "val"}


def test_a_subset_of_one_sequence_is_split_by_pair_id(tmp_path):
    write_gopro(tmp_path, ["GOPR0001_00"], frames=12)
    plan = plan_ingest([gopro(tmp_path)], SMALL)
    got = splits_of(plan)
    assert got == {pid: "val" if holdout_value(pid) < 0.5 else "train" for pid in got}
    assert set(got.values()) == {"train", "val"}
    assert plan.holdouts[0]["by"] == "pair_id" and plan.holdouts[0]["groups"] == 12


def test_holding_out_everything_fails_and_nothing_warns(tmp_path, caplog):
    write_gopro(tmp_path, SEQS[:4])
    values = sorted(holdout_value(f"gopro/train/{s}") for s in SEQS[:4])
    with pytest.raises(L.LayoutError, match="selects all 4 of its group"):
        plan_ingest([gopro(tmp_path, {**VAL, "fraction": (values[-1] + 1) / 2})], SMALL)
    with caplog.at_level(logging.WARNING):
        plan = plan_ingest([gopro(tmp_path, {**VAL, "fraction": values[0] / 2})], SMALL)
    assert set(splits_of(plan).values()) == {"train"} and "no val split" in caplog.text
    assert plan.holdouts[0]["held_groups"] == 0


@pytest.mark.parametrize("holdout, message", [
    ({**VAL, "fraction": 0}, "fraction must be a number in (0, 1), got 0"),
    ({**VAL, "fraction": 1.0}, "fraction must be a number in (0, 1), got 1.0"),
    ({**VAL, "fraction": -0.1}, "fraction must be a number in (0, 1)"),
    ({**VAL, "fraction": "0.2"}, "fraction must be a number in (0, 1), got '0.2'"),
    ({**VAL, "fraction": True}, "fraction must be a number in (0, 1), got True"),
    ({**VAL, "subset": "val"}, "holdout subset 'val' is not among the subsets read (train, test)"),
    ({**VAL, "split": "test"}, "holdout split 'test' is already a split of this source"),
    ({**VAL, "split": "train"}, "holdout split 'train' is already a split of this source"),
    ({**VAL, "split": ""}, "holdout split must be a non-empty split name"),
    ({"subset": "train", "split": "val"},
     "holdout must be a mapping with keys subset, split and fraction"),
    ({**VAL, "fractoin": 0.2}, "holdout must be a mapping with keys"),
    ("train:val:0.2", "holdout must be a mapping with keys"),
])
def test_holdout_mistakes_are_one_line_value_errors(holdout, message):
    with pytest.raises(ValueError) as e:
        IngestSource("gopro", "/nowhere", holdout=holdout)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_holdout_is_checked_against_the_subsets_and_split_names_read():
    with pytest.raises(ValueError, match="not among the subsets read \\(test\\)"):
        IngestSource("gopro", "/nowhere", subsets=["test"], holdout=VAL)
    with pytest.raises(ValueError, match="'val' is already a split of this source"):
        IngestSource("gopro", "/nowhere", split_names={"test": "val"}, holdout=VAL)
    with pytest.raises(ValueError, match="'val' is already a split of this source"):
        IngestSource("reds", "/nowhere", holdout=VAL)  # REDS's own val subset is read too
    # REDS's val read as val300 elsewhere, or not read: a holdout named val is fine
    IngestSource("reds", "/nowhere", subsets=["train", "val300"],
                 split_names={"val300": "test_ood"}, holdout=VAL)
    IngestSource("folder", "/nowhere", holdout={"subset": "mine", "split": "val_mine",
                                                "fraction": 0.1})  # any subset of a folder


def test_the_holdout_changes_the_fingerprint(tmp_path):
    write_gopro(tmp_path, SEQS)
    prints = {}
    for name, h in (("none", None), ("half", VAL), ("half again", dict(VAL)),
                    ("other fraction", {**VAL, "fraction": 0.25}),
                    ("other split", {**VAL, "split": "val_gopro"})):
        plan = plan_ingest([gopro(tmp_path, h)], SMALL)
        prints[name] = (plan.fingerprint(), plan.units[0].fingerprint)
    assert prints["half"] == prints["half again"]
    others = [v for k, v in prints.items() if k != "half again"]
    assert len({p for p, _ in others}) == len({u for _, u in others}) == len(others)


def test_held_out_examples_are_written_to_their_split_and_not_checked_for_crops(tmp_path):
    # 16 x 16 images under a 32-pixel training crop: quarantined in train, not in val
    write_gopro(tmp_path, SEQS[:6], frames=2)
    write_gopro(tmp_path, ["GOPR0100_00"], frames=2, subset="test")
    plan = plan_ingest([gopro(tmp_path)], SMALL)
    want = splits_of(plan)
    options = IngestOptions(train_crop_size=32, max_quarantine_fraction=1.0, tiny_num_shards=1)
    summary = run_ingest([gopro(tmp_path)], str(tmp_path / "out"), options)
    n_val = sum(1 for s in want.values() if s == "val")
    assert summary["splits"]["val"]["written"] == n_val > 0
    assert summary["splits"]["train"]["written"] == 0
    assert summary["splits"]["train"]["quarantined"] == 12 - n_val
    assert summary["quarantine_by_reason"] == {L.TOO_SMALL_FOR_TRAINING: 12 - n_val}
    val = read_split(str(tmp_path / "out"), "val")
    assert sorted(e["pair_id"].decode() for e in val) == sorted(
        p for p, s in want.items() if s == "val")
    assert {e["split"] for e in val} == {b"val"} and {e["domain"] for e in val} == {b"in"}
    assert summary["holdouts"] == plan.holdouts
    line = (f"held out {plan.holdouts[0]['held_groups']} of 6 group(s) of subset train of "
            f"{tmp_path} ({n_val} of 12 pairs, fraction 0.5) into split val")
    assert line in unlabelled_lines(summary)


def test_the_synthetic_sources_have_validation_splits():
    from pipelines import config as config_lib

    cfg = config_lib.from_dict({})
    gopro_src, realblur_src = cfg.ingest_sources()
    assert gopro_src.holdout == {"subset": "train", "split": "val",
                                 "fraction": cfg.data.synthetic.val_fraction}
    assert realblur_src.subsets == ["train", "test"]
    assert realblur_src.split_names == {"train": "val_ood", "test": "test_ood"}
    cfg = config_lib.from_dict({"data": {"synthetic": {"val_fraction": 0.3}}})
    assert cfg.ingest_sources()[0].holdout["fraction"] == 0.3
    for bad in (0, 1, 1.5):
        with pytest.raises(config_lib.ConfigError, match="val_fraction must be a number in"):
            config_lib.from_dict({"data": {"synthetic": {"val_fraction": bad}}})
    # a configured source takes its holdout from the config file
    cfg = config_lib.from_dict({"data": {"sources": [
        {"layout": "gopro", "root": "/data/GOPRO_Large", "holdout": VAL}]}})
    assert cfg.ingest_sources()[0].holdout == VAL
    with pytest.raises(config_lib.ConfigError, match=r"data.sources\[0\]: holdout fraction"):
        config_lib.from_dict({"data": {"sources": [
            {"layout": "gopro", "root": "/x", "holdout": {**VAL, "fraction": 2}}]}})


def test_the_drift_report_expects_drift_of_out_of_domain_splits_only():
    from tensorflow_metadata.proto.v0 import statistics_pb2

    from components import validation

    stats = statistics_pb2.DatasetFeatureStatisticsList()
    f = stats.datasets.add().features.add()
    f.path.step.append("domain")
    f.string_stats.rank_histogram.buckets.add(label="out", sample_count=24)
    assert validation.split_domain(stats) == "out"
    f.string_stats.rank_histogram.buckets.add(label="in", sample_count=2)
    assert validation.split_domain(stats) == "in+out"
    assert validation.split_domain(statistics_pb2.DatasetFeatureStatisticsList(
        datasets=[statistics_pb2.DatasetFeatureStatistics()])) is None

    feature = {"js_divergence": 0.6, "threshold": 0.41, "mean": 4.4, "baseline_mean": 0.86}
    report = {"baseline": "train", "splits": {
        "val": {"num_examples": 13, "domain": "in", "features": {"blurry_noise_sigma": feature},
                "drifted": ["blurry_noise_sigma"]},
        "val_ood": {"num_examples": 24, "domain": "out", "drifted": ["blurry_noise_sigma"],
                    "features": {"blurry_noise_sigma": feature}},
        "old": {"num_examples": 2, "features": {}, "drifted": []}}}  # a report without domain
    text = validation.format_drift(report)
    assert ("val (13 examples, in-domain): DRIFT in blurry_noise_sigma (an in-domain split: "
            "look at it)") in text
    assert ("val_ood (24 examples, out-of-domain): DRIFT in blurry_noise_sigma (an "
            "out-of-domain split: expected)") in text
    assert "  old (2 examples): no drift" in text
