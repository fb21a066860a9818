"""The ingest library: paired datasets -> sharded GZIP TFRecords of the example format.

    plan = plan_ingest(sources, options)        # driver: list roots, pair, find duplicates,
                                                 # fingerprint every unit (source, span)
    run = start_ingest(plan, out_dir, store)     # which units the store already holds
    expand_ingest(pipeline, run)                 # Beam: read, validate, encode, write the others
    summary = finalize_ingest(run)               # driver: publish every unit into out_dir,
                                                 # summary.json, quarantine bound

run_ingest() is the only driver of the four: with a pipeline built from Beam options
(DirectRunner by default; Dataflow / Flink / Spark through the standard options), or with the
pipeline TFX makes from its beam_pipeline_args (the TFX component), and checking the
fingerprint the run computed when given one. `deblur ingest` and the component call it.

Units and the store (new data without redoing the old)
    A unit is one source, or one span folder of a source with a span_pattern (spans.py). Its
    fingerprint covers what it reads (every candidate's split, pair id, dataset, domain and
    known defect; each input file's path, size and modification time, GCS's `updated` on
    gs://, which changes whenever an object is rewritten; list files read), the source, the
    options that shape examples and shards, and UNIT_FORMAT. A unit store (a folder, local or
    gs://; the TFX component's is <pipeline root>/DeblurIngest/units) keeps each ingested unit
    under its fingerprint: <store>/<fingerprint>/{Split-<split>/*.gz, quarantine.jsonl,
    unit.json, COMPLETE}; unit.json records every shard's size, SHA-256 and record count (and
    on gs:// the object's CRC32C) and the quarantine's size and SHA-256, and a unit is reused
    only while its shards and its quarantine still match (else it is ingested again, with a
    warning naming it). An ingest runs Beam only over the
    units the store lacks, then
    publishes every selected unit into out_dir (hard links on a local file system, copies on
    gs://). Without a store (`deblur ingest`), units are written to <out_dir>/.units and moved
    into place. options.span_window keeps the latest N spans of each spanned source.

Output under out_dir (the layout of a TFX Examples artifact):
    Split-<split>/<unit fp>-data_tfrecord-SSSSS-of-NNNNN.gz   examples, GZIP TFRecord
    quarantine/quarantine.jsonl                     one JSON line per bad input, with reason
    counts/counts-*.jsonl                           counters of the units ingested now
    summary.json                                    inputs = written + quarantined, by reason,
                                                    per unit: ingested now or reused

gs:// roots are read with Beam's own GCS file system (listing with FileSystems.match, reads
with FileSystems.open), so local paths and gs:// URIs behave the same; gs:// outputs are
written by Beam's sinks (on Dataflow, or anywhere with GCS credentials).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import posixpath
import shutil
import time
from collections import Counter, defaultdict
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from components.ingest import decode
from components.ingest import layouts as L
from components.ingest.sources import MB, IngestOptions, IngestSource
from components.ingest.spans import SpanPattern
from core import artifacts
from core.artifacts import (COUNTS_DIR, COUNTS_PREFIX, QUARANTINE_DIR, QUARANTINE_FILE,
                            SUMMARY_FILE, UNIT_FILE, split_dir)

log = logging.getLogger(__name__)
PRIVATE_STORE = ".units"  # under out_dir when the ingest has no unit store
UNIT_DONE = "COMPLETE"  # written last: a unit folder without it is not reused
UNIT_QUARANTINE = QUARANTINE_FILE  # a stored unit's quarantine lines
# Bump when what a stored unit holds changes (example format, decoding, shard naming): every
# stored unit then has another fingerprint and is ingested again.
UNIT_FORMAT = 1
# Output bytes per input byte: the PNGs are stored as they came, plus the float32 pyramids
# (1/4 + 1/16 + 1/64 of H x W x 4 bytes per image, ~0.42 of raw RGB), GZIP'd. Measured on the
# synthetic sets; only used to choose a shard count.
OUTPUT_PER_INPUT_BYTE = 1.6
CHANGED_LISTED = 20  # pair ids named per unit in the summary (new, changed, removed)


class IngestError(RuntimeError):
    """The ingest ran but its result is not acceptable (e.g. too much was quarantined)."""


def holdout_group(pair_id: str) -> str:
    """The group a pair is held out with: the parent folder of the layout's pair id (GoPro
    `gopro/train/GOPR0372_07_00`, RealBlur `realblur_j/train/<variant dir>/scene001/blur`, REDS
    `reds/train/000`), so that neighbouring frames of one sequence, scene or clip never
    straddle the training and the held-out split. Span folders are not part of it (the same
    sequence in two spans is one group)."""
    return posixpath.dirname(pair_id)


def holdout_value(key: str) -> float:
    """SHA-256 of the group key as a number in [0, 1): a group is held out when it is below the
    fraction, independently of every other group (adding data never moves an existing one)."""
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest(), 16) / float(1 << 256)


@dataclasses.dataclass
class Unit:
    """One source, or one span folder of it: what is ingested, stored and reused as a whole."""

    key: str  # "<source root>[/<span folder>]#<source hash>": unique in a plan
    source: IngestSource
    span: Optional[int]  # None: the source has no span_pattern
    span_dir: Optional[str]
    fingerprint: str = ""
    pairs: Dict[str, str] = dataclasses.field(default_factory=dict)  # pair id -> input stamp
    num_shards: Dict[str, int] = dataclasses.field(default_factory=dict)  # per split

    @property
    def tag(self) -> str:
        """The prefix of its shard files in an output folder."""
        return self.fingerprint[:16]

    def describe(self) -> dict:
        return {"source": self.source.root, "layout": self.source.layout,
                "dataset": self.source.dataset, "span": self.span, "span_dir": self.span_dir,
                "fingerprint": self.fingerprint}


@dataclasses.dataclass
class IngestPlan:
    candidates: List[tuple]  # (split, Candidate); Candidate.unit is its unit's key
    units: List[Unit]  # the selected ones (span_window), in source and span order
    ignored_files: Dict[str, int]  # per source root
    options: IngestOptions
    # blurry-only subsets that were skipped: {"root", "layout", "subset", "files", "detail"}
    unlabelled: List[dict] = dataclasses.field(default_factory=list)
    excluded_spans: Dict[str, List[int]] = dataclasses.field(default_factory=dict)
    # folder links followed and entries not listed (loops, dangling links, unreadable
    # folders), per source: {"root", "path", "target", "status", "reason"}
    links: List[dict] = dataclasses.field(default_factory=list)
    # what each source's holdout took: {"root", "subset", "split", "fraction", "by" ("group" or
    # "pair_id"), "groups", "held_groups", "pairs", "held_pairs"}
    holdouts: List[dict] = dataclasses.field(default_factory=list)

    @property
    def num_shards(self) -> Dict[str, int]:
        out: Counter = Counter()
        for u in self.units:
            out.update(u.num_shards)
        return dict(out)

    @property
    def splits(self) -> List[str]:
        return sorted(self.num_shards)

    def fingerprint(self) -> str:
        """SHA-256 of what this ingest reads and how: the fingerprints of the selected units
        (see the module doc: names, sizes, modification times, defects, source, options) and
        the options. Equal fingerprints mean the same inputs, so it is what the ingest's cache
        key sees (the TFX component's `input_fingerprint`); the Trainer also keys the resume
        of an interrupted training on it."""
        blob = json.dumps({"format": UNIT_FORMAT, "units": sorted(u.fingerprint for u in self.units),
                           "options": dataclasses.asdict(self.options)}, sort_keys=True,
                          default=list)
        return hashlib.sha256(blob.encode()).hexdigest()


def _walk_local(root: str) -> Tuple[List[Tuple[str, int, float]], List[dict]]:
    """(files, links) under a local folder, following folder links (Beam's local listing,
    os.walk, silently leaves out a linked folder, a dangling link and a folder it cannot
    read). A link to a folder on its own path (an ancestor, directly or through other links)
    would recurse forever: it is not followed. links: one record per folder link followed
    and per entry that could not be listed, {"path" (relative to root), "target", "status":
    "followed" | "skipped", "reason"}."""
    files: List[Tuple[str, int, float]] = []
    links: List[dict] = []

    def skip(rel, target, reason):
        links.append({"path": rel, "target": target, "status": "skipped", "reason": reason})

    def walk(folder: str, prefix: str, chain: Tuple[str, ...]) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            skip(prefix.rstrip("/") or ".", folder, f"cannot list: {e.strerror or e}")
            return
        for e in entries:
            rel = prefix + e.name
            try:
                if e.is_symlink():
                    target = os.path.realpath(e.path)
                    if not os.path.exists(target):
                        skip(rel, os.readlink(e.path), f"a dangling link, to {os.readlink(e.path)}, "
                                                    "which does not exist")
                        continue
                    if os.path.isdir(target):
                        if target in chain:
                            skip(rel, target, f"a link loop, to {target}, a folder it is in")
                            continue
                        links.append({"path": rel, "target": target, "status": "followed",
                                      "reason": "folder link"})
                        walk(e.path, rel + "/", chain + (target,))
                        continue
                elif e.is_dir():
                    walk(e.path, rel + "/", chain + (os.path.realpath(e.path),))
                    continue
                st = os.stat(e.path)
            except OSError as err:
                skip(rel, e.path, f"cannot read: {err.strerror or err}")
                continue
            files.append((rel, st.st_size, float(st.st_mtime)))

    walk(root, "", (os.path.realpath(root),))
    return sorted(files), links


def list_with_links(root: str) -> Tuple[List[Tuple[str, int, float]], List[dict]]:
    """list_stamped's files and, for a local root, the folder links it followed and the
    entries it could not list (_walk_local; gs:// has no links)."""
    root = root.rstrip("/")
    if "://" not in root and os.path.isdir(root):
        return _walk_local(root)
    return list_stamped(root), []


def list_stamped(root: str) -> List[Tuple[str, int, float]]:
    """[(path relative to root, size, modification time)] of every file under root (local or
    gs://; on gs:// the time is the object's `updated`, which a rewrite changes). A local root
    is walked following folder links (_walk_local)."""
    root = root.rstrip("/")
    if "://" not in root and os.path.isdir(root):
        return _walk_local(root)[0]
    try:
        results = FileSystems.match([root + "/**"])
    except Exception as e:  # noqa: BLE001 - surface as a one-line user error
        raise L.LayoutError(f"cannot list {root}: {e}") from e
    out = []
    for md in results[0].metadata_list:
        path = md.path
        if not path.startswith(root + "/"):
            continue
        out.append((path[len(root) + 1:], md.size_in_bytes,
                    float(getattr(md, "last_updated_in_seconds", 0.0) or 0.0)))
    return sorted(out)


def list_files(root: str) -> List[tuple]:
    """[(path relative to root, size)] of every file under root (local or gs://)."""
    return [(rel, size) for rel, size, _ in list_stamped(root)]


def read_text(uri: str) -> str:
    with FileSystems.open(uri) as f:
        return f.read().decode("utf-8")


def read_bytes(uri: str) -> bytes:
    with FileSystems.open(uri, compression_type="uncompressed") as f:
        return f.read()


def num_shards_for(estimated_bytes: int, options: IngestOptions) -> int:
    if estimated_bytes < options.target_shard_bytes:
        return options.tiny_num_shards
    return max(options.tiny_num_shards, math.ceil(estimated_bytes / options.target_shard_bytes))


def _units_of(src: IngestSource, files: List[Tuple[str, int, float]], window: int):
    """[(span, span folder, files relative to it)] of a source (one entry without a pattern),
    the number of files outside every span folder, and the span numbers left out by the
    window."""
    if src.span_pattern is None:
        return [(None, None, files)], 0, []
    pattern = SpanPattern.parse(src.span_pattern)
    by_span: Dict[int, Dict[str, list]] = defaultdict(lambda: defaultdict(list))
    outside = 0
    for rel, size, mtime in files:
        m = pattern.match(rel)
        if m is None:
            outside += 1
            continue
        span, folder, inner = m
        by_span[span][folder].append((inner, size, mtime))
    for span, folders in by_span.items():
        if len(folders) > 1:
            raise L.LayoutError(f"{src.root}: span {span} has several folders "
                                f"({', '.join(sorted(folders))}) under {src.span_pattern!r}")
    if not by_span:
        raise L.LayoutError(f"{src.root}: no span folder matches {src.span_pattern!r}")
    spans = sorted(by_span)
    kept = spans[-window:] if window else spans
    units = [(s, *next(iter(by_span[s].items()))) for s in kept]
    return units, outside, [s for s in spans if s not in kept]


def _span_pair_id(c: L.Candidate, span_dir: str) -> str:
    """Pair ids stay unique across spans: <dataset>/<span folder>/<the layout's id>."""
    prefix = f"{c.dataset}/"
    if c.pair_id.startswith(prefix):
        return f"{prefix}{span_dir}/{c.pair_id[len(prefix):]}"
    return f"{span_dir}/{c.pair_id}"


def _stamp(uri: Optional[str], stamps: Dict[str, Tuple[int, float]]) -> str:
    if uri is None:
        return "-"
    size, mtime = stamps.get(uri, (0, 0.0))
    return f"{size}@{mtime!r}"


def _hold_out(src: IngestSource, pairs: List[tuple], first: int, groups: List[str]) -> dict:
    """Moves the candidates of src.holdout's subset whose group is selected (holdout_value <
    fraction) into the holdout split, in place (pairs[first:] are src's candidates, groups[i]
    the group of pairs[first + i]), and returns what it took (IngestPlan.holdouts). A subset
    with one group only is split by pair id. Selecting every group is an error (nothing left
    to train on); selecting none is a warning (no holdout split: the evaluator then says it
    has no validation split)."""
    h = src.holdout
    idx = [first + i for i, g in enumerate(groups) if pairs[first + i][1].subset == h["subset"]]
    keys = {i: groups[i - first] for i in idx}
    by = "group"
    if len(set(keys.values())) == 1:
        keys, by = {i: pairs[i][1].pair_id for i in idx}, "pair_id"
    every = set(keys.values())
    chosen = {k for k in every if holdout_value(k) < h["fraction"]}
    record = {"root": src.root, "subset": h["subset"], "split": h["split"],
              "fraction": h["fraction"], "by": by, "groups": len(every),
              "held_groups": len(chosen), "pairs": len(idx),
              "held_pairs": sum(1 for i in idx if keys[i] in chosen)}
    if every and chosen == every:
        raise L.LayoutError(
            f"{src.root}: the holdout of subset {h['subset']} at fraction {h['fraction']} selects "
            f"all {len(every)} of its group(s) ({len(idx)} pairs), leaving nothing for split "
            f"{src.split_of(h['subset'])}; lower the fraction or add data")
    if every and not chosen:
        log.warning("ingest: %s: the holdout of subset %s at fraction %s selects none of its %d "
                    "group(s) (%d pairs): no %s split", src.root, h["subset"], h["fraction"],
                    len(every), len(idx), h["split"])
    for i in idx:
        if keys[i] in chosen:
            pairs[i] = (h["split"], pairs[i][1])
    return record


def plan_ingest(sources: Iterable[IngestSource], options: IngestOptions = IngestOptions()) -> IngestPlan:
    """Lists and pairs every source, per unit (driver side; nothing is decoded here)."""
    pairs, ignored, units, excluded, unlabelled, links, holdouts = [], {}, [], {}, [], [], []
    stamps: Dict[str, Tuple[int, float]] = {}
    reads: Dict[str, List[str]] = defaultdict(list)  # unit key -> list files it read
    for src in sources:
        first = len(pairs)  # this source's candidates are pairs[first:]
        groups: List[str] = []  # their holdout groups (from the layout's pair id, before spans)
        root = src.root.rstrip("/")
        files, found_links = list_with_links(root)
        links.extend({"root": src.root, **rec} for rec in found_links)
        for rec in found_links:
            if rec["status"] == "skipped":
                log.warning("ingest: %s/%s not listed: %s", root, rec["path"], rec["reason"])
        if not files:
            raise L.LayoutError(f"{src.root}: no files found (wrong path?)")
        for rel, size, mtime in files:
            stamps[L.join(root, rel)] = (size, mtime)
        found, outside, left_out = _units_of(src, files, options.span_window)
        ignored[src.root] = ignored.get(src.root, 0) + outside
        if left_out:
            excluded[src.root] = left_out
        for span, span_dir, unit_files in found:
            unit_root = L.join(root, span_dir) if span_dir else root
            # one root may be read by two sources (RealBlur's J and R variants): the key names
            # the source too
            source_id = hashlib.sha256(json.dumps(src.to_json(), sort_keys=True,
                                                  default=list).encode()).hexdigest()[:12]
            key = f"{unit_root}#{source_id}"
            if any(u.key == key for u in units):
                raise L.LayoutError(f"the source of {unit_root} is listed twice")

            def tracked(uri, key=key):
                reads[key].append(uri)
                return read_text(uri)

            try:
                pairing = L.pair_files(
                    src.layout, unit_root, [(rel, size) for rel, size, _ in unit_files],
                    dataset=src.dataset, domain=src.domain, subsets=src.subsets,
                    blur_kind=src.blur_kind, variant=src.variant, read_text=tracked)
            except L.LayoutError as e:
                raise L.LayoutError(f"span {span_dir} of {src.root}: {e}" if span_dir else str(e)) \
                    from None
            ignored[src.root] += pairing.ignored
            unlabelled.extend({"root": unit_root, "layout": src.layout, "subset": u.subset,
                               "files": u.files, "detail": u.detail} for u in pairing.unlabelled)
            cands = pairing.candidates
            groups.extend(holdout_group(c.pair_id) for c in cands)
            if span_dir:
                cands = [c._replace(pair_id=_span_pair_id(c, span_dir)) for c in cands]
            pairs.extend((src.split_of(c.subset), c._replace(unit=key)) for c in cands)
            units.append(Unit(key, src, span, span_dir))
        if src.holdout is not None:
            holdouts.append(_hold_out(src, pairs, first, groups))
    # Duplicate pair ids are found across all units (two roots can hold the same data); a
    # candidate's defect is part of its unit's fingerprint, so units stay independent.
    split_of = {}
    for split, c in pairs:
        split_of.setdefault((c.pair_id, c.blurry, c.sharp), split)
    marked = L.mark_duplicates([c for _, c in pairs])
    candidates = [(split_of[(c.pair_id, c.blurry, c.sharp)], c) for c in marked]
    rows: Dict[str, list] = defaultdict(list)
    est: Dict[str, Counter] = defaultdict(Counter)
    for split, c in candidates:
        stamp = f"b:{_stamp(c.blurry, stamps)}|s:{_stamp(c.sharp, stamps)}|{c.reason or ''}"
        rows[c.unit].append((split, c.pair_id, c.dataset, c.domain, c.blurry or "",
                             c.sharp or "", stamp))
        est[c.unit][split] += c.size_bytes * OUTPUT_PER_INPUT_BYTE
    for u in units:
        u.pairs = {r[1]: r[-1] for r in rows[u.key]}
        u.num_shards = {s: num_shards_for(int(n), options) for s, n in sorted(est[u.key].items())}
        blob = json.dumps({
            "format": UNIT_FORMAT, "source": u.source.to_json(), "span_dir": u.span_dir,
            "options": options.unit_options(), "candidates": sorted(rows[u.key]),
            "read": sorted((uri, *stamps.get(uri, (0, 0.0))) for uri in set(reads[u.key])),
        }, sort_keys=True, default=list)
        u.fingerprint = hashlib.sha256(blob.encode()).hexdigest()
    if len({u.fingerprint for u in units}) != len(units):
        raise L.LayoutError("two sources name the same data")
    return IngestPlan(candidates, units, ignored, options, unlabelled, excluded, links,
                      holdouts)


def input_fingerprint(sources: Sequence[IngestSource], options: IngestOptions = IngestOptions()) -> str:
    """The fingerprint an ingest of these sources would have (plan_ingest's listing, no
    decoding): what runners pass to the DeblurIngest component, so the cache key changes
    exactly when the inputs do."""
    return plan_ingest(sources, options).fingerprint()


# ---- the unit store ----------------------------------------------------------------------------
def _exists(path: str) -> bool:
    try:
        return FileSystems.exists(path)
    except Exception:  # noqa: BLE001 - an unreadable store is a store without the unit
        return False


def _delete_tree(path: str) -> None:
    """Removes a folder and everything under it (local, or every object under a gs:// prefix)."""
    if "://" not in path:
        if os.path.isdir(path):
            shutil.rmtree(path)
        return
    paths = [m.path for m in FileSystems.match([path.rstrip("/") + "/**"])[0].metadata_list]
    if paths:
        FileSystems.delete(paths)


def _write_text(path: str, text: str) -> None:
    with FileSystems.create(path) as f:
        f.write(text.encode())


def read_json_or_none(path: str) -> Optional[dict]:
    """The JSON at path (Beam's FileSystems: local or gs://), or None when it is missing or
    damaged: a unit store record or a summary that does not read back is redone, never an error
    (core.artifacts.read_json, which raises on damage, parses it)."""
    try:
        return artifacts.read_json(path, lambda p: read_text(p) if _exists(p) else None)
    except ValueError:
        return None


def _index_path(store: str, unit: Unit) -> str:
    return f"{store}/index/{hashlib.sha256(unit.key.encode()).hexdigest()[:24]}.json"


@dataclasses.dataclass
class IngestRun:
    """One ingest of a plan into out_dir: which units the store holds (reused) and which
    Beam ingests now (todo)."""

    plan: IngestPlan
    out_dir: str
    store: str
    private: bool  # the store is <out_dir>/.units, removed when the units are in place
    todo: List[Unit]
    reused: List[Unit]

    def unit_dir(self, unit: Unit) -> str:
        return f"{self.store}/{unit.fingerprint}"


def _shards(folder: str, split: str) -> List[str]:
    return [m.path for m in FileSystems.match([f"{split_dir(folder, split)}/*"])[0].metadata_list]


def _stored_whole(folder: str, unit: Unit) -> bool:
    """The store holds the unit: its COMPLETE marker, every split's shards (a folder emptied
    by hand or by a lifecycle rule is not reused: it would lose examples silently), and each
    shard as unit.json recorded it when the unit was stored (size and checksum: a truncated or
    overwritten shard is not reused either). A unit that fails is ingested again, with a
    warning naming it."""
    if not _exists(f"{folder}/{UNIT_DONE}"):
        return False
    short = {s: (len(_shards(folder, s)), n) for s, n in unit.num_shards.items()}
    short = {s: c for s, c in short.items() if c[0] != c[1]}
    if short:
        log.warning("unit store %s lacks shards (%s): ingesting the unit again", folder,
                    ", ".join(f"{s}: {have} of {want}" for s, (have, want) in short.items()))
        return False
    recorded = (read_json_or_none(f"{folder}/{UNIT_FILE}") or {}).get("shards")
    if not isinstance(recorded, dict) or set(recorded) != set(unit.num_shards):
        log.warning("unit store %s (unit %s) has no shard checksums in its %s (stored by an "
                    "older version): ingesting the unit again", folder, unit.key, UNIT_FILE)
        return False
    damaged = []
    for split in sorted(recorded):
        by_name = {r["name"]: r for r in recorded[split]}
        for path in sorted(_shards(folder, split)):
            name = path.rsplit("/", 1)[-1]
            why = _shard_damage(path, by_name[name]) if name in by_name else "not recorded"
            if why:
                damaged.append(f"{split}/{name}: {why}")
    if damaged:
        log.warning("unit store %s (unit %s) holds damaged shards (%s): ingesting the unit "
                    "again", folder, unit.key, "; ".join(damaged))
        return False
    why = _quarantine_damage(folder, read_json_or_none(f"{folder}/{UNIT_FILE}") or {})
    if why:
        log.warning("unit store %s (unit %s): its %s %s: ingesting the unit again", folder,
                    unit.key, UNIT_QUARANTINE, why)
        return False
    return True


def _quarantine_damage(folder: str, record: dict) -> Optional[str]:
    """Why a stored unit's quarantine.jsonl is not the one it was stored with (None: it is).
    A unit reused without it published an empty quarantine while its summary counted the
    quarantined inputs. Checked: it exists, and its size and SHA-256 as unit.json recorded
    them, or (a unit stored before those were recorded) one line per quarantined input."""
    path = f"{folder}/{UNIT_QUARANTINE}"
    if not _exists(path):
        return "is missing"
    try:
        data = read_bytes(path)
    except Exception as e:  # noqa: BLE001 - unreadable: the unit is ingested again
        return f"cannot be read ({type(e).__name__}: {e})"
    want = record.get("quarantine")
    if isinstance(want, dict):
        if len(data) != want.get("bytes"):
            return f"has {len(data)} bytes, stored with {want.get('bytes')}"
        if hashlib.sha256(data).hexdigest() != want.get("sha256"):
            return "differs from the stored one (SHA-256)"
        return None
    lines = sum(1 for ln in data.decode("utf-8", "replace").splitlines() if ln.strip())
    if lines != record.get("quarantined"):
        return f"has {lines} line(s) for {record.get('quarantined')} quarantined input(s)"
    return None


def start_ingest(plan: IngestPlan, out_dir: str, store: Optional[str] = None) -> IngestRun:
    """Decides, per selected unit, whether the store holds it whole (reused) or Beam must
    ingest it (todo). A unit folder that is not whole (a run that died, files deleted since)
    is deleted first."""
    out_dir = out_dir.rstrip("/")
    private = not store
    store = (store or f"{out_dir}/{PRIVATE_STORE}").rstrip("/")
    todo, reused = [], []
    for u in plan.units:
        folder = f"{store}/{u.fingerprint}"
        if not private and _stored_whole(folder, u):
            reused.append(u)
            continue
        _delete_tree(folder)
        todo.append(u)
    return IngestRun(plan, out_dir, store, private, todo, reused)


class ProcessPairFn(beam.DoFn):
    """Candidate -> example (main output, keyed by (unit, split)) or quarantine record."""

    QUARANTINE = "quarantine"

    def __init__(self, options: IngestOptions):
        self._options = options

    def process(self, element):
        split, c = element
        if c.reason is None:
            min_side = (self._options.train_crop_size if split in self._options.train_splits
                        else 8)
            try:
                blurry = _read(c.blurry)
                sharp = _read(c.sharp)
                example, _ = decode.process_pair_bytes(
                    blurry, sharp, pair_id=c.pair_id, dataset=c.dataset, domain=c.domain,
                    split=split, min_side=min_side, blurry_name=c.blurry, sharp_name=c.sharp,
                )
                yield (c.unit, split), example
                return
            except decode.Quarantine as q:
                c = c._replace(reason=q.reason, detail=q.detail)
        yield beam.pvalue.TaggedOutput(self.QUARANTINE, (split, c))


def _is_infrastructure_error(e: BaseException) -> bool:
    """Credentials / permission failures say nothing about the file: they fail the run
    instead of quarantining every input as unreadable."""
    name, module = type(e).__name__, type(e).__module__
    return module.startswith("google.auth") or name in ("Forbidden", "Unauthorized",
                                                        "DefaultCredentialsError")


def _read(uri: str) -> bytes:
    try:
        return read_bytes(uri)
    except Exception as e:  # noqa: BLE001 - a missing/unreadable file is a quarantine reason
        if _is_infrastructure_error(e) or _is_infrastructure_error(e.__cause__ or e):
            raise
        raise decode.Quarantine(L.UNREADABLE, f"{uri}: {type(e).__name__}: {e}")


def quarantine_record(split: str, c: L.Candidate) -> str:
    return json.dumps({"pair_id": c.pair_id, "split": split, "dataset": c.dataset,
                       "domain": c.domain, "blurry": c.blurry, "sharp": c.sharp,
                       "reason": c.reason, "detail": c.detail, "unit": c.unit}, sort_keys=True)


def expand_ingest(p: beam.Pipeline, run: IngestRun) -> None:
    """The Beam part: decodes the candidates of the units to ingest now (run.todo) and writes
    each unit's shards into its folder of the store, the quarantine and the counters into
    out_dir. Nothing of the reused units is read."""
    todo = {u.key for u in run.todo}
    candidates = [(split, c) for split, c in run.plan.candidates if c.unit in todo]
    # one partition per (unit, split): one pass over the examples whatever the number of units
    sinks = [(u, split) for u in run.todo for split in sorted(u.num_shards)]
    index = {(u.key, split): i for i, (u, split) in enumerate(sinks)}
    results = (
        p
        | "Candidates" >> beam.Create(candidates, reshuffle=False)
        # Decoding dominates: spread candidates over workers before it.
        | "Spread" >> beam.Reshuffle()
        | "DecodeValidateEncode" >> beam.ParDo(ProcessPairFn(run.plan.options)).with_outputs(
            ProcessPairFn.QUARANTINE, main="examples")
    )
    examples, quarantined = results.examples, results[ProcessPairFn.QUARANTINE]
    parts = examples | "ByUnitSplit" >> beam.Partition(
        lambda kv, n, index=index: index[kv[0]], max(1, len(sinks)))
    for i, (u, split) in enumerate(sinks):
        _ = (
            parts[i]
            | f"Bytes[{u.tag}/{split}]" >> beam.Map(lambda kv: kv[1])
            | f"Write[{u.tag}/{split}]" >> beam.io.WriteToTFRecord(
                f"{split_dir(run.unit_dir(u), split)}/data_tfrecord", file_name_suffix=".gz",
                num_shards=u.num_shards[split],
                compression_type=beam.io.filesystem.CompressionTypes.GZIP)
        )
    _ = (
        quarantined
        | "QuarantineJson" >> beam.MapTuple(quarantine_record)
        | "WriteQuarantine" >> beam.io.WriteToText(
            f"{run.out_dir}/{QUARANTINE_DIR}/ingested", file_name_suffix=".jsonl",
            shard_name_template="")
    )
    written = examples | "WrittenKey" >> beam.Map(lambda kv: (f"written|{kv[0][0]}|{kv[0][1]}", 1))
    bad = quarantined | "QuarantineKey" >> beam.MapTuple(
        lambda s, c: (f"quarantined|{c.unit}|{s}|{c.reason}", 1))
    _ = (
        (written, bad)
        | "AllCounts" >> beam.Flatten()
        | "Count" >> beam.CombinePerKey(sum)
        | "CountJson" >> beam.MapTuple(lambda k, n: json.dumps({"key": k, "n": n}))
        | "WriteCounts" >> beam.io.WriteToText(
            f"{run.out_dir}/{COUNTS_DIR}/{COUNTS_PREFIX}", file_name_suffix=".jsonl",
            shard_name_template="")
    )


def _read_lines(pattern: str) -> List[str]:
    lines = []
    for md in FileSystems.match([pattern])[0].metadata_list:
        lines.extend(read_text(md.path).splitlines())
    return [ln for ln in lines if ln.strip()]


class _HashingReader:
    """A read-only file object that hashes (SHA-256) and counts the bytes read through it."""

    def __init__(self, f):
        self._f, self.sha256, self.bytes = f, hashlib.sha256(), 0

    def read(self, n=-1):
        data = self._f.read(n)
        self.sha256.update(data)
        self.bytes += len(data)
        return data

    def drain(self) -> None:
        while self.read(MB):
            pass


def _shard_record(path: str) -> dict:
    """What a stored shard must still be when its unit is reused: its size, the SHA-256 of its
    bytes, its number of TFRecord records (the GZIP stream walked record by record: a shard
    that does not read back whole fails here, before it is stored) and, on gs://, the object's
    own CRC32C (checked on reuse without downloading the shard)."""
    import gzip
    import struct

    with FileSystems.open(path, compression_type="uncompressed") as raw:
        reader = _HashingReader(raw)
        records = 0
        with gzip.GzipFile(fileobj=reader, mode="rb") as z:
            while True:
                head = z.read(12)  # length (uint64) + its masked CRC32C
                if not head:
                    break
                if len(head) < 12:
                    raise ValueError(f"{path}: truncated record header after {records} records")
                (length,) = struct.unpack("<Q", head[:8])
                left = length + 4  # payload + its masked CRC32C
                while left:
                    chunk = z.read(min(left, 4 * MB))
                    if not chunk:
                        raise ValueError(f"{path}: truncated record after {records} records")
                    left -= len(chunk)
                records += 1
        reader.drain()
    out = {"name": path.rsplit("/", 1)[-1], "bytes": reader.bytes,
           "sha256": reader.sha256.hexdigest(), "records": records}
    if "://" in path:
        try:
            out["crc32c"] = FileSystems.checksum(path)
        except Exception:  # noqa: BLE001 - then the SHA-256 is read back on reuse
            pass
    return out


def _shard_damage(path: str, want: dict) -> Optional[str]:
    """Why a stored shard is not the one recorded in unit.json (None: it is): its size, then
    its CRC32C (gs://, object metadata) or the SHA-256 of its bytes."""
    try:
        size = FileSystems.match([path])[0].metadata_list[0].size_in_bytes
    except Exception:  # noqa: BLE001 - gone since the listing
        return "missing"
    if size != want["bytes"]:
        return f"{size} bytes, stored with {want['bytes']}"
    if "://" in path and want.get("crc32c"):
        try:
            if FileSystems.checksum(path) == want["crc32c"]:
                return None
        except Exception:  # noqa: BLE001 - fall back to reading it
            pass
        else:
            return "CRC32C differs from the stored one"
    digest = hashlib.sha256()
    with FileSystems.open(path, compression_type="uncompressed") as f:
        for chunk in iter(lambda: f.read(4 * MB), b""):
            digest.update(chunk)
    if digest.hexdigest() != want["sha256"]:
        return "SHA-256 differs from the stored one"
    return None


def _store_units(run: IngestRun) -> Tuple[Dict[str, Tuple[dict, List[str]]], List[str]]:
    """After Beam: each unit ingested now gets its quarantine, unit.json (counts, and per
    shard its size, SHA-256 and record count) and, last, COMPLETE in its store folder, unless
    its counts do not add up or a shard does not read back whole (returned as problems: such
    a unit is never reused). Returns ({unit key: (unit.json's record, quarantine lines)} of
    the units stored now, problems)."""
    written: Dict[str, Counter] = defaultdict(Counter)
    bad: Dict[str, Counter] = defaultdict(Counter)
    reasons: Dict[str, Counter] = defaultdict(Counter)
    if run.todo:
        for line in _read_lines(f"{run.out_dir}/{COUNTS_DIR}/{COUNTS_PREFIX}*.jsonl"):
            rec = json.loads(line)
            kind, unit, split, *rest = rec["key"].split("|")
            if kind == "written":
                written[unit][split] += rec["n"]
            else:
                bad[unit][split] += rec["n"]
                reasons[unit][rest[0]] += rec["n"]
    lines: Dict[str, List[str]] = defaultdict(list)
    problems: List[str] = []
    stored: Dict[str, Tuple[dict, List[str]]] = {}
    ingested = f"{run.out_dir}/{QUARANTINE_DIR}/ingested.jsonl"
    if _exists(ingested):
        for line in _read_lines(ingested):
            rec = json.loads(line)  # the unit key only groups them: each unit has its file
            lines[rec.pop("unit")].append(json.dumps(rec, sort_keys=True))
        FileSystems.delete([ingested])
    for u in run.todo:
        inputs = Counter(split for split, c in run.plan.candidates if c.unit == u.key)
        record = {
            **u.describe(), "format": UNIT_FORMAT, "created": time.time(),
            "inputs": sum(inputs.values()), "written": sum(written[u.key].values()),
            "quarantined": sum(bad[u.key].values()),
            "quarantine_by_reason": dict(sorted(reasons[u.key].items())),
            "splits": {s: {"inputs": inputs[s], "written": written[u.key][s],
                           "quarantined": bad[u.key][s], "num_shards": u.num_shards[s]}
                       for s in sorted(u.num_shards)},
            "pairs": u.pairs,
        }
        folder = run.unit_dir(u)
        shards, unreadable = {}, []
        for s in sorted(u.num_shards):
            shards[s] = []
            for path in sorted(_shards(folder, s)):
                try:
                    shards[s].append(_shard_record(path))
                except (OSError, EOFError, ValueError) as e:
                    unreadable.append(f"{s}/{path.rsplit('/', 1)[-1]} ({e})")
        record["shards"] = shards
        quarantine_text = "".join(ln + "\n" for ln in lines[u.key]).encode()
        record["quarantine"] = {"bytes": len(quarantine_text), "lines": len(lines[u.key]),
                                "sha256": hashlib.sha256(quarantine_text).hexdigest()}
        _write_text(f"{folder}/{UNIT_QUARANTINE}", quarantine_text.decode())
        _write_text(f"{folder}/{UNIT_FILE}", json.dumps(record, indent=1, sort_keys=True))
        stored[u.key] = (record, lines[u.key])
        if record["written"] + record["quarantined"] != record["inputs"]:
            problems.append(f"{u.key}: {record['written']} written + {record['quarantined']} "
                            f"quarantined != {record['inputs']} inputs")
            continue
        if unreadable:
            problems.append(f"{u.key}: shard(s) that do not read back: {', '.join(unreadable)}")
            continue
        short = {s: (sum(r["records"] for r in shards[s]), written[u.key][s]) for s in shards}
        short = {s: c for s, c in short.items() if c[0] != c[1]}
        if short:
            problems.append(f"{u.key}: " + ", ".join(
                f"{s}: {have} records in the shards, {want} written" for s, (have, want)
                in short.items()))
            continue
        _write_text(f"{folder}/{UNIT_DONE}", u.fingerprint + "\n")
    return stored, problems


def _changes(run: IngestRun, u: Unit) -> dict:
    """What differs from the unit's previous ingest in this store (the index names the
    fingerprint last ingested for the same source/span): new, changed and removed pair ids."""
    previous = (read_json_or_none(_index_path(run.store, u)) or {}).get("fingerprint")
    if previous == u.fingerprint:
        return {"change": "unchanged"}
    old = (read_json_or_none(f"{run.store}/{previous}/{UNIT_FILE}") or {}).get("pairs") if previous else None
    if old is None:
        return {"change": "new", "new_pairs": len(u.pairs)}
    added = sorted(set(u.pairs) - set(old))
    removed = sorted(set(old) - set(u.pairs))
    changed = sorted(k for k in set(u.pairs) & set(old) if u.pairs[k] != old[k])
    out = {"change": "changed", "previous_fingerprint": previous}
    for name, ids in (("new_pairs", added), ("changed_pairs", changed), ("removed_pairs", removed)):
        out[name] = len(ids)
        if ids:
            out[f"{name}_ids"] = ids[:CHANGED_LISTED]
    return out


def _publish(run: IngestRun, u: Unit) -> None:
    """The unit's shards into out_dir/Split-<split>/<tag>-<name>: moved out of a private store,
    hard-linked (local) or copied (gs://) from a shared one, whose folders stay as they are."""
    for split in sorted(u.num_shards):
        dst = split_dir(run.out_dir, split)
        if "://" not in dst:
            os.makedirs(dst, exist_ok=True)
        for path in _shards(run.unit_dir(u), split):
            target = f"{dst}/{u.tag}-{path.rsplit('/', 1)[-1]}"
            if run.private:
                FileSystems.rename([path], [target])
            elif "://" not in path and "://" not in target:
                try:
                    os.link(path, target)
                except OSError:  # another file system, or links not allowed
                    shutil.copyfile(path, target)
            elif path.split("://")[0] == target.split("://")[0]:
                FileSystems.copy([path], [target])  # gs:// to gs://: a server-side copy
            else:  # a local store and a gs:// output, or the other way round
                with FileSystems.open(path, compression_type="uncompressed") as r, \
                        FileSystems.create(target, compression_type="uncompressed") as w:
                    shutil.copyfileobj(r, w, 16 * MB)


def finalize_ingest(run: IngestRun) -> dict:
    """Stores the units ingested now, publishes every selected unit into out_dir, writes
    summary.json; raises IngestError past the quarantine bound.

    inputs = candidate pairs (a pair, or a lone file / list line / duplicate that could not
    become one); every input is either written or quarantined. Blurry-only (unlabelled)
    subsets are not inputs: they are listed under unlabelled_skipped with their file counts.
    """
    plan, out_dir = run.plan, run.out_dir
    stored, problems = _store_units(run)
    units, quarantine_lines = [], []
    written, quarantined, inputs, by_reason = Counter(), Counter(), Counter(), Counter()
    for u in plan.units:
        if u.key in stored:  # ingested now: its record and quarantine are at hand
            rec, unit_quarantine = stored[u.key]
        else:  # reused from the store
            rec = read_json_or_none(f"{run.unit_dir(u)}/{UNIT_FILE}")
            if rec is None:
                raise IngestError(f"unit {u.key} ({u.fingerprint[:12]}) has no {UNIT_FILE} "
                                  f"in {run.store}")
            unit_quarantine = _read_lines(f"{run.unit_dir(u)}/{UNIT_QUARANTINE}")
        _publish(run, u)
        quarantine_lines += unit_quarantine
        for s, c in rec["splits"].items():
            written[s] += c["written"]
            quarantined[s] += c["quarantined"]
            inputs[s] += c["inputs"]
        by_reason.update(rec["quarantine_by_reason"])
        entry = {**u.describe(), "status": "ingested" if u.key in stored else "reused",
                 **{k: rec[k] for k in ("inputs", "written", "quarantined")}}
        if not run.private:
            entry.update(_changes(run, u))
            if entry["change"] != "unchanged" and not problems:  # the last one seen, for the next
                _write_text(_index_path(run.store, u), json.dumps(
                    {"key": u.key, "fingerprint": u.fingerprint}))
        units.append(entry)
    _write_text(f"{out_dir}/{QUARANTINE_DIR}/{QUARANTINE_FILE}",
                "".join(ln + "\n" for ln in quarantine_lines))
    if run.private:
        _delete_tree(run.store)
    n_in, n_written, n_bad = sum(inputs.values()), sum(written.values()), sum(quarantined.values())
    fraction = n_bad / n_in if n_in else 0.0
    processed = [e for e in units if e["status"] == "ingested"]
    summary = {
        "inputs": n_in, "written": n_written, "quarantined": n_bad,
        "quarantined_fraction": round(fraction, 6),
        "max_quarantine_fraction": plan.options.max_quarantine_fraction,
        "quarantine_by_reason": dict(sorted(by_reason.items())),
        "splits": {
            s: {"inputs": inputs[s], "written": written[s], "quarantined": quarantined[s],
                "num_shards": plan.num_shards[s]}
            for s in plan.splits
        },
        "ignored_files": plan.ignored_files,
        # skipped, neither inputs nor quarantined: not counted against the bound
        "unlabelled_skipped": plan.unlabelled,
        # folder links followed, and what the listing could not enter (a link loop, a
        # dangling link, an unreadable folder): never dropped without a word
        "links_followed": [r for r in plan.links if r["status"] == "followed"],
        "not_listed": [r for r in plan.links if r["status"] == "skipped"],
        "quarantine_file": f"{out_dir}/{QUARANTINE_DIR}/{QUARANTINE_FILE}",
        "fingerprint": plan.fingerprint(),
        # what this ingest decoded now, and what it took from the unit store unchanged
        "processed": {"units": len(processed), "inputs": sum(e["inputs"] for e in processed)},
        "reused": {"units": len(units) - len(processed),
                   "inputs": sum(e["inputs"] for e in units if e["status"] == "reused")},
        "units": units,
        "unit_store": None if run.private else run.store,
        "status": "ok",
    }
    if plan.excluded_spans:
        summary["spans_outside_window"] = plan.excluded_spans
    if plan.holdouts:  # what each source's holdout moved into its split (plan_ingest)
        summary["holdouts"] = plan.holdouts
    if problems:
        summary["status"] = "failed"
        summary["error"] = ("units not stored (their counts or shards do not check out): "
                            + "; ".join(problems))
    elif fraction > plan.options.max_quarantine_fraction:
        summary["status"] = "failed"
        summary["error"] = (f"{n_bad} of {n_in} inputs quarantined ({fraction:.1%}), above the "
                            f"bound of {plan.options.max_quarantine_fraction:.1%}; see "
                            f"{summary['quarantine_file']}")
    _write_text(f"{out_dir}/{SUMMARY_FILE}", json.dumps(summary, indent=2, sort_keys=True))
    if summary["status"] != "ok":
        raise IngestError(summary["error"])
    return summary


def unlabelled_lines(summary: dict) -> List[str]:
    """One line per skipped blurry-only subset of a summary, per folder link or folder the
    listing could not enter, one for the folder links it followed, and one per source's
    holdout (the CLI and the pipeline summary print them)."""
    lines = [f"skipped unlabelled subset {u['subset']} of {u['root']} ({u['layout']}): "
             f"{u['files']} {u['detail']}; not ingested, not quarantined"
             for u in summary.get("unlabelled_skipped", [])]
    followed = summary.get("links_followed", [])
    if followed:
        lines.append(f"followed {len(followed)} folder link(s): "
                     + ", ".join(f"{r['path']} -> {r['target']}" for r in followed[:5])
                     + (", ..." if len(followed) > 5 else "") + f" ({SUMMARY_FILE}: links_followed)")
    lines.extend(f"not listed: {r['root'].rstrip('/')}/{r['path']}: {r['reason']}; "
                 f"nothing under it is an input" for r in summary.get("not_listed", []))
    lines.extend(f"held out {h['held_groups']} of {h['groups']} "
                 f"{'group(s)' if h['by'] == 'group' else 'pair(s) (a single group: by pair id)'}"
                 f" of subset {h['subset']} of {h['root']} ({h['held_pairs']} of {h['pairs']} "
                 f"pairs, fraction {h['fraction']}) into split {h['split']}"
                 for h in summary.get("holdouts", []))
    return lines


def check_fingerprint(plan: IngestPlan, expected: str) -> None:
    """The inputs must be those whose fingerprint the run computed before it started (the
    cache key holds it): examples are never recorded under the key of other data."""
    if expected and expected != plan.fingerprint():
        raise IngestError(
            f"the inputs changed after the run computed their fingerprint ({expected[:12]} "
            f"then, {plan.fingerprint()[:12]} now: files added, removed or rewritten "
            f"meanwhile); start the run again once the data is in place")


def run_ingest(sources: Sequence[IngestSource], out_dir: str,
               options: IngestOptions = IngestOptions(),
               beam_args: Optional[Sequence[str]] = None, store: Optional[str] = None, *,
               make_pipeline: Optional[Callable[[], "beam.Pipeline"]] = None,
               expected_fingerprint: str = "",
               progress: Optional[Callable[[str], None]] = None) -> dict:
    """The ingest driver, the one copy of plan -> Beam if there is work -> finalize, which the
    TFX executor and `deblur ingest` call.

    Plans (lists and pairs the roots), checks the plan against `expected_fingerprint` when one
    is given, runs a Beam pipeline over the units `store` lacks (all of them without a store;
    none, and no pipeline, when the store holds them all) and finalizes. `make_pipeline()`
    returns the pipeline (the TFX executor passes its own); by default one is built from
    `beam_args`. `progress(line)` is told what it does. Returns the summary (what summary.json
    holds); raises IngestError past the quarantine bound or when the inputs changed."""
    say = progress or (lambda line: None)
    plan = plan_ingest(sources, options)
    check_fingerprint(plan, expected_fingerprint)
    say(f"{len(plan.candidates)} inputs in split(s) {', '.join(plan.splits)}; "
        f"running the Beam pipeline...")
    run = start_ingest(plan, out_dir, store)
    if run.reused:
        say(f"{len(run.reused)} of {len(plan.units)} unit(s) unchanged in {store}: reused")
    if run.todo:
        if make_pipeline is None:
            def make_pipeline():
                return beam.Pipeline(options=PipelineOptions(list(beam_args or [])))
        with make_pipeline() as p:
            expand_ingest(p, run)
    return finalize_ingest(run)
