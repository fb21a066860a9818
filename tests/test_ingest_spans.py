"""Spans (TFX's {SPAN} folders), unit fingerprints and the unit store: an ingest decodes only
the new or changed sources/spans and reuses the others."""
from __future__ import annotations

import json
import os

import pytest

from components.ingest import layouts as L
from components.ingest import spans
from components.ingest.beam_ingest import (
    UNIT_DONE, IngestOptions, IngestSource, input_fingerprint, plan_ingest, run_ingest)
from tests import fixtures as fx
from tests.tfrecords import read_split

SMALL = IngestOptions(train_crop_size=16, max_quarantine_fraction=1.0, tiny_num_shards=1)


def write_span(root, span_dir, names, seed=0, subset="train"):
    for i, name in enumerate(names):
        fx.write_pair(str(root / span_dir / subset / "blur" / name),
                      str(root / span_dir / subset / "sharp" / name), (24, 32), seed=seed + i)


def source(root, **kw):
    return IngestSource("folder", str(root), dataset="shots", span_pattern="span-{SPAN}", **kw)


def test_span_patterns():
    p = spans.SpanPattern.parse("span-{SPAN}")
    assert p.match("span-7/train/blur/a.png") == (7, "span-7", "train/blur/a.png")
    assert p.match("span-x/train/blur/a.png") is None and p.match("span-7") is None
    d = spans.SpanPattern.parse("{YYYY}/{MM}/{DD}")
    assert d.match("1970/01/02/blur/a.png") == (1, "1970/01/02", "blur/a.png")  # TFX: days
    assert spans.SpanPattern.parse("{YYYY}-{MM}-{DD}").match("2024-05-01/x")[0] == 19844
    with pytest.raises(L.LayoutError, match="not a date"):
        d.match("2024/13/01/blur/a.png")
    for bad in ("", "span", "{SPAN}-{SPAN}", "{YYYY}-{MM}", "../{SPAN}", "s*/{SPAN}"):
        with pytest.raises(L.LayoutError):
            spans.SpanPattern.parse(bad)
    with pytest.raises(ValueError, match="span_pattern"):  # checked when the config loads
        IngestSource("folder", "/x", span_pattern="daily")


def test_plan_units_window_and_pair_ids(tmp_path):
    root = tmp_path / "shots"
    for n in (1, 2, 3):
        write_span(root, f"span-{n}", ["a.png", "b.png"], seed=10 * n)
    fx.write(str(root / "README.txt"), b"not data")  # outside every span folder
    plan = plan_ingest([source(root)], SMALL)
    assert [(u.span, u.span_dir) for u in plan.units] == [(1, "span-1"), (2, "span-2"), (3, "span-3")]
    ids = sorted(c.pair_id for _, c in plan.candidates)
    assert ids[:2] == ["shots/span-1/train/a.png", "shots/span-1/train/b.png"]  # unique per span
    assert len(set(ids)) == 6 and plan.ignored_files[str(root)] == 1
    latest = plan_ingest([source(root)], IngestOptions(**{**SMALL.__dict__, "span_window": 2}))
    assert [u.span for u in latest.units] == [2, 3] and latest.excluded_spans == {str(root): [1]}
    # a unit's fingerprint does not depend on the window, the ingest's does
    assert latest.units[0].fingerprint == plan.units[1].fingerprint
    assert latest.fingerprint() != plan.fingerprint()
    fx.write(str(root / "span-01" / "train" / "blur" / "c.png"), b"x")
    with pytest.raises(L.LayoutError, match="span 1 has several folders"):
        plan_ingest([source(root)], SMALL)


def test_fingerprint_changes_exactly_when_the_inputs_do(tmp_path):
    root = tmp_path / "shots"
    write_span(root, "span-1", ["a.png", "b.png"])
    write_span(root, "span-2", ["c.png"], seed=5)
    fp = input_fingerprint([source(root)], SMALL)
    units = {u.span: u.fingerprint for u in plan_ingest([source(root)], SMALL).units}
    assert input_fingerprint([source(root)], SMALL) == fp  # listing twice: the same
    # the same bytes written again (a new modification time) is a change, of its span only
    path = root / "span-1" / "train" / "sharp" / "b.png"
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    after = {u.span: u.fingerprint for u in plan_ingest([source(root)], SMALL).units}
    assert after[1] != units[1] and after[2] == units[2]
    assert input_fingerprint([source(root)], SMALL) != fp
    # an option that shapes examples changes every unit; the quarantine bound changes none
    crop = IngestOptions(**{**SMALL.__dict__, "train_crop_size": 8})
    assert all(u.fingerprint != after[u.span] for u in plan_ingest([source(root)], crop).units)
    bound = IngestOptions(**{**SMALL.__dict__, "max_quarantine_fraction": 0.5})
    assert {u.span: u.fingerprint for u in plan_ingest([source(root)], bound).units} == after


def test_unit_store_ingests_only_new_and_changed_spans(tmp_path):
    root, store = tmp_path / "shots", str(tmp_path / "store")
    write_span(root, "span-1", ["a.png", "b.png"])
    write_span(root, "span-2", ["c.png"], seed=5)
    fx.write(str(root / "span-2" / "train" / "blur" / "lonely.png"), fx.png_bytes(fx.rgb(24, 32, 9)))
    first = run_ingest([source(root)], str(tmp_path / "out1"), SMALL, store=store)
    assert first["processed"] == {"units": 2, "inputs": 4} and first["reused"]["units"] == 0
    assert [u["change"] for u in first["units"]] == ["new", "new"]
    assert all(os.path.exists(os.path.join(store, u["fingerprint"], UNIT_DONE))
               for u in first["units"])

    second = run_ingest([source(root)], str(tmp_path / "out2"), SMALL, store=store)
    assert second["processed"] == {"units": 0, "inputs": 0}
    assert second["reused"] == {"units": 2, "inputs": 4}
    assert [(u["status"], u["change"]) for u in second["units"]] == [("reused", "unchanged")] * 2
    for out in ("out1", "out2"):  # both outputs hold every example and the quarantine
        assert sorted(e["pair_id"].decode() for e in read_split(str(tmp_path / out), "train")) == [
            "shots/span-1/train/a.png", "shots/span-1/train/b.png", "shots/span-2/train/c.png"]
        with open(tmp_path / out / "quarantine" / "quarantine.jsonl") as f:
            assert [json.loads(ln)["reason"] for ln in f] == [L.MISSING_PARTNER]
    assert {k: second[k] for k in ("inputs", "written", "quarantined", "splits")} == \
        {k: first[k] for k in ("inputs", "written", "quarantined", "splits")}

    # one file changed in span 1, a new span 3: only those are decoded
    fx.write(str(root / "span-1" / "train" / "sharp" / "b.png"), fx.png_bytes(fx.rgb(24, 32, 77)))
    write_span(root, "span-3", ["d.png", "e.png"], seed=30)
    third = run_ingest([source(root)], str(tmp_path / "out3"), SMALL, store=store)
    by_span = {u["span"]: u for u in third["units"]}
    assert (by_span[1]["status"], by_span[1]["change"]) == ("ingested", "changed")
    assert by_span[1]["changed_pairs_ids"] == ["shots/span-1/train/b.png"]
    assert (by_span[1]["new_pairs"], by_span[1]["removed_pairs"]) == (0, 0)
    assert (by_span[2]["status"], by_span[3]["status"], by_span[3]["change"]) == (
        "reused", "ingested", "new")
    assert third["processed"] == {"units": 2, "inputs": 4} and third["reused"]["inputs"] == 2
    new_b = next(e for e in read_split(str(tmp_path / "out3"), "train")
                 if e["pair_id"] == b"shots/span-1/train/b.png")
    assert new_b["sharp"] == (root / "span-1" / "train" / "sharp" / "b.png").read_bytes()
    assert third["written"] == 5 and third["inputs"] == 6


def test_a_unit_left_incomplete_is_ingested_again(tmp_path):
    root, store = tmp_path / "shots", str(tmp_path / "store")
    write_span(root, "span-1", ["a.png"])
    first = run_ingest([source(root)], str(tmp_path / "out1"), SMALL, store=store)
    os.remove(os.path.join(store, first["units"][0]["fingerprint"], UNIT_DONE))  # died there
    again = run_ingest([source(root)], str(tmp_path / "out2"), SMALL, store=store)
    assert again["units"][0]["status"] == "ingested" and again["written"] == 1


def test_a_stored_unit_that_lost_shards_is_ingested_again(tmp_path, caplog):
    """A unit folder emptied by hand (or a lifecycle rule) must not publish fewer examples."""
    import glob

    root, store = tmp_path / "shots", str(tmp_path / "store")
    write_span(root, "span-1", ["a.png", "b.png"])
    first = run_ingest([source(root)], str(tmp_path / "out1"), SMALL, store=store)
    for shard in glob.glob(os.path.join(store, first["units"][0]["fingerprint"], "Split-*", "*")):
        os.remove(shard)
    again = run_ingest([source(root)], str(tmp_path / "out2"), SMALL, store=store)
    assert again["units"][0]["status"] == "ingested" and again["written"] == 2
    assert "lacks shards (train: 0 of 1)" in caplog.text


def _stored_shard(store, summary):
    import glob

    shards = glob.glob(os.path.join(store, summary["units"][0]["fingerprint"], "Split-train", "*.gz"))
    assert len(shards) == 1
    return shards[0]


def _unlinked_copy(path):
    """The store's shard is hard-linked into the first output: damage the store's file only."""
    data = open(path, "rb").read()
    os.remove(path)
    with open(path, "wb") as f:
        f.write(data)
    return data


@pytest.mark.parametrize("damage", ["truncated", "bit_flip"])
def test_a_stored_unit_with_a_damaged_shard_is_ingested_again(tmp_path, caplog, damage):
    """A truncated shard in the store was reused: the output then read 16 of 18 records and
    raised DataLossError. unit.json records every shard's size, checksum and record count when
    the unit is stored, and reuse checks them (a same-size bit flip too)."""
    root, store = tmp_path / "shots", str(tmp_path / "store")
    write_span(root, "span-1", ["a.png", "b.png", "c.png"])
    first = run_ingest([source(root)], str(tmp_path / "out1"), SMALL, store=store)
    shard = _stored_shard(store, first)
    with open(os.path.join(os.path.dirname(os.path.dirname(shard)), "unit.json")) as f:
        recorded = json.load(f)["shards"]["train"]
    assert [r["records"] for r in recorded] == [3]
    assert recorded[0]["bytes"] == os.path.getsize(shard) and len(recorded[0]["sha256"]) == 64
    data = _unlinked_copy(shard)
    with open(shard, "wb") as f:
        if damage == "truncated":
            f.write(data[: len(data) - 200])
        else:
            f.write(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    caplog.clear()
    again = run_ingest([source(root)], str(tmp_path / "out2"), SMALL, store=store)
    assert again["units"][0]["status"] == "ingested" and again["reused"]["units"] == 0
    assert again["written"] == 3
    assert len(read_split(str(tmp_path / "out2"), "train")) == 3  # every record reads back
    assert "holds damaged shards (train/data_tfrecord-00000-of-00001.gz:" in caplog.text
    assert first["units"][0]["fingerprint"] in caplog.text  # names the unit's folder
    # stored again whole: the next ingest reuses it
    third = run_ingest([source(root)], str(tmp_path / "out3"), SMALL, store=store)
    assert third["units"][0]["status"] == "reused" and len(read_split(str(tmp_path / "out3"), "train")) == 3


def test_a_stored_unit_without_shard_checksums_is_ingested_again(tmp_path, caplog):
    root, store = tmp_path / "shots", str(tmp_path / "store")
    write_span(root, "span-1", ["a.png"])
    first = run_ingest([source(root)], str(tmp_path / "out1"), SMALL, store=store)
    unit_json = os.path.join(store, first["units"][0]["fingerprint"], "unit.json")
    with open(unit_json) as f:
        rec = json.load(f)
    del rec["shards"]  # a unit stored before the checksums existed
    with open(unit_json, "w") as f:
        json.dump(rec, f)
    again = run_ingest([source(root)], str(tmp_path / "out2"), SMALL, store=store)
    assert again["units"][0]["status"] == "ingested" and again["written"] == 1
    assert "has no shard checksums" in caplog.text


def test_the_driver_checks_the_fingerprint_and_runs_no_pipeline_without_work(tmp_path):
    """run_ingest is the one driver (the TFX executor and the CLI call it): inputs changed
    since the run computed their fingerprint stop it before anything is written; a store that
    holds every unit means no Beam pipeline at all."""
    from components.ingest.beam_ingest import IngestError

    root, store = tmp_path / "shots", str(tmp_path / "store")
    write_span(root, "span-1", ["a.png"])
    fingerprint = plan_ingest([source(root)], SMALL).fingerprint()
    with pytest.raises(IngestError, match="inputs changed after the run computed"):
        run_ingest([source(root)], str(tmp_path / "out0"), SMALL, store=store,
                   expected_fingerprint="0" * 64)
    assert not (tmp_path / "out0").exists()
    lines = []
    run_ingest([source(root)], str(tmp_path / "out1"), SMALL, store=store,
               expected_fingerprint=fingerprint, progress=lines.append)
    assert lines == ["1 inputs in split(s) train; running the Beam pipeline..."]

    def no_pipeline():
        raise AssertionError("a pipeline was built with nothing to ingest")

    lines.clear()
    again = run_ingest([source(root)], str(tmp_path / "out2"), SMALL, store=store,
                       make_pipeline=no_pipeline, progress=lines.append)
    assert again["reused"] == {"units": 1, "inputs": 1} and again["written"] == 1
    assert lines[1] == f"1 of 1 unit(s) unchanged in {store}: reused"


@pytest.mark.parametrize("damage", ["deleted", "emptied", "old_unit_emptied"])
def test_a_stored_unit_whose_quarantine_is_gone_is_ingested_again(tmp_path, caplog, damage):
    """Issue 35.7: a stored unit whose quarantine.jsonl was deleted was reused: the output's
    quarantine file was empty while the summary counted the quarantined inputs. Every file of
    the unit is checked (the quarantine against the size and SHA-256 unit.json recorded; for a
    unit stored before those were, one line per quarantined input)."""
    root, store = tmp_path / "shots", str(tmp_path / "store")
    write_span(root, "span-1", ["a.png"])
    for name in ("l1.png", "l2.png"):  # blurry without a sharp partner: quarantined
        fx.write(str(root / "span-1" / "train" / "blur" / name), fx.png_bytes(fx.rgb(24, 32, 9)))
    first = run_ingest([source(root)], str(tmp_path / "out1"), SMALL, store=store)
    assert first["quarantined"] == 2
    folder = os.path.join(store, first["units"][0]["fingerprint"])
    with open(os.path.join(folder, "unit.json")) as f:
        rec = json.load(f)
    assert rec["quarantine"]["lines"] == 2 and len(rec["quarantine"]["sha256"]) == 64
    if damage == "deleted":
        os.remove(os.path.join(folder, "quarantine.jsonl"))
    else:
        open(os.path.join(folder, "quarantine.jsonl"), "w").close()
    if damage == "old_unit_emptied":  # stored before unit.json recorded the quarantine
        del rec["quarantine"]
        with open(os.path.join(folder, "unit.json"), "w") as f:
            json.dump(rec, f)
    caplog.clear()
    again = run_ingest([source(root)], str(tmp_path / "out2"), SMALL, store=store)
    assert again["units"][0]["status"] == "ingested" and again["quarantined"] == 2
    with open(tmp_path / "out2" / "quarantine" / "quarantine.jsonl") as f:
        assert sorted(json.loads(ln)["pair_id"] for ln in f) == [
            "shots/span-1/train/l1.png", "shots/span-1/train/l2.png"]
    why = {"deleted": "its quarantine.jsonl is missing",
           "emptied": "its quarantine.jsonl has 0 bytes, stored with ",
           "old_unit_emptied": "its quarantine.jsonl has 0 line(s) for 2 quarantined input(s)"}[damage]
    assert why in caplog.text and first["units"][0]["fingerprint"] in caplog.text
    # stored again whole: reused next time, quarantine and all
    third = run_ingest([source(root)], str(tmp_path / "out3"), SMALL, store=store)
    assert third["units"][0]["status"] == "reused"
    with open(tmp_path / "out3" / "quarantine" / "quarantine.jsonl") as f:
        assert len(f.read().splitlines()) == 2
