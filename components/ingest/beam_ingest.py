"""The ingest library: paired datasets -> sharded GZIP TFRecords of the example format.

    plan = plan_ingest(sources, options)        # driver: list roots, pair, find duplicates
    expand_ingest(pipeline, plan, out_dir)       # Beam: read, validate, encode, write
    summary = finalize_ingest(plan, out_dir)     # driver: summary.json, quarantine bound

run_ingest() does the three with a pipeline built from Beam options (DirectRunner by
default; Dataflow / Flink / Spark through the standard options). The TFX component calls the
same three functions with the pipeline TFX makes from its beam_pipeline_args.

Output under out_dir (the layout of a TFX Examples artifact):
    Split-<split>/data_tfrecord-SSSSS-of-NNNNN.gz   examples, GZIP TFRecord
    quarantine/quarantine.jsonl                     one JSON line per bad input, with reason
    counts/counts-*.jsonl                           per-split counters (input of the summary)
    summary.json                                    inputs = written + quarantined, by reason

gs:// roots are read with Beam's own GCS file system (listing with FileSystems.match, reads
with FileSystems.open), so local paths and gs:// URIs behave the same; gs:// outputs are
written by Beam's sinks (on Dataflow, or anywhere with GCS credentials).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections import Counter
from typing import Dict, Iterable, List, Optional, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from components.ingest import decode
from components.ingest import layouts as L

MB = 1 << 20
SUMMARY_FILE = "summary.json"
QUARANTINE_DIR = "quarantine"
COUNTS_DIR = "counts"
# Output bytes per input byte: the PNGs are stored as they came, plus the float32 pyramids
# (1/4 + 1/16 + 1/64 of H x W x 4 bytes per image, ~0.42 of raw RGB), GZIP'd. Measured on the
# synthetic sets; only used to choose a shard count.
OUTPUT_PER_INPUT_BYTE = 1.6


class IngestError(RuntimeError):
    """The ingest ran but its result is not acceptable (e.g. too much was quarantined)."""


@dataclasses.dataclass(frozen=True)
class IngestSource:
    """One dataset root to ingest.

    layout: gopro | realblur | hide | reds | folder.  root: local path or gs:// URI.
    subsets: which of the layout's subsets to read (train/test/val, REDS's val300, the folder
      layout's own subset folders or "all"); None = every subset that has pairs (a subset of
      blurry images only, such as REDS's test, is then skipped and reported as unlabelled).
    split_names: output split per subset (default: the subset's own name).
    dataset / domain: override the layout's defaults (domain is "in" or "out").
    blur_kind: which blurry images: GoPro "blur" or "blur_gamma", REDS "blur" or "blur_jpeg"
      (the JPEG track); the other layouts have only "blur".
    variant: RealBlur only, "J" or "R" (default: the lists found; a root holding both must
      choose, or their images would share one split).
    Invalid values raise LayoutError (a ValueError) when the source is made.
    """

    layout: str
    root: str
    subsets: Optional[Sequence[str]] = None
    split_names: Optional[Dict[str, str]] = None
    dataset: Optional[str] = None
    domain: Optional[str] = None
    blur_kind: str = L.DEFAULT_BLUR_KIND
    variant: Optional[str] = None

    def __post_init__(self):
        L.check_options(self.layout, self.subsets, self.blur_kind, self.domain, self.variant)

    def split_of(self, subset: str) -> str:
        return (self.split_names or {}).get(subset, subset)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "IngestSource":
        return cls(**d)


@dataclasses.dataclass(frozen=True)
class IngestOptions:
    max_quarantine_fraction: float = 0.05  # the run fails above this share of inputs
    train_splits: Sequence[str] = ("train",)  # splits whose images must fit a training crop
    train_crop_size: int = 128
    target_shard_bytes: int = 150 * MB  # TPU hosts read 100-200 MB shards best
    tiny_num_shards: int = 2  # shards of a split whose estimated size is under one target

    def __post_init__(self):
        if not 0.0 <= self.max_quarantine_fraction <= 1.0:
            raise ValueError("max_quarantine_fraction must be in [0, 1]")
        if self.train_crop_size < 8 or self.train_crop_size % 8:
            raise ValueError("train_crop_size must be a positive multiple of 8")
        if self.target_shard_bytes <= 0 or self.tiny_num_shards < 1:
            raise ValueError("shard sizing must be positive")


@dataclasses.dataclass
class IngestPlan:
    candidates: List[tuple]  # (split, Candidate)
    num_shards: Dict[str, int]
    ignored_files: Dict[str, int]  # per source root
    options: IngestOptions
    # blurry-only subsets that were skipped: {"root", "layout", "subset", "files", "detail"}
    unlabelled: List[dict] = dataclasses.field(default_factory=list)

    @property
    def splits(self) -> List[str]:
        return sorted(self.num_shards)

    def fingerprint(self) -> str:
        """SHA-256 of what this ingest reads and how: every candidate's split, pair id,
        dataset, domain, input bytes and known defect, and the options. Equal fingerprints mean
        the same listing of the same inputs (a file replaced by another of exactly the same
        size is not seen: the listing is all the driver reads). The Trainer keys the resume of
        an interrupted training on it."""
        rows = sorted((split, c.pair_id, c.dataset, c.domain, c.size_bytes, c.reason or "")
                      for split, c in self.candidates)
        blob = json.dumps({"candidates": rows, "options": dataclasses.asdict(self.options)},
                          sort_keys=True, default=list)
        return hashlib.sha256(blob.encode()).hexdigest()


def list_files(root: str) -> List[tuple]:
    """[(path relative to root, size)] of every file under root (local or gs://)."""
    root = root.rstrip("/")
    try:
        results = FileSystems.match([root + "/**"])
    except Exception as e:  # noqa: BLE001 - surface as a one-line user error
        raise L.LayoutError(f"cannot list {root}: {e}") from e
    out = []
    for md in results[0].metadata_list:
        path = md.path
        if not path.startswith(root + "/"):
            continue
        out.append((path[len(root) + 1 :], md.size_in_bytes))
    return sorted(out)


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


def plan_ingest(sources: Iterable[IngestSource], options: IngestOptions = IngestOptions()) -> IngestPlan:
    """Lists and pairs every source (driver side; nothing is decoded here)."""
    pairs, ignored, unlabelled = [], {}, []
    for src in sources:
        files = list_files(src.root)
        if not files:
            raise L.LayoutError(f"{src.root}: no files found (wrong path?)")
        pairing = L.pair_files(
            src.layout, src.root, files, dataset=src.dataset, domain=src.domain,
            subsets=src.subsets, blur_kind=src.blur_kind, variant=src.variant,
            read_text=read_text,
        )
        ignored[src.root] = ignored.get(src.root, 0) + pairing.ignored
        unlabelled.extend({"root": src.root, "layout": src.layout, "subset": u.subset,
                           "files": u.files, "detail": u.detail} for u in pairing.unlabelled)
        pairs.extend((src.split_of(c.subset), c) for c in pairing.candidates)
    # Duplicate pair ids are found across all sources (two roots can hold the same data).
    split_of = {}
    for split, c in pairs:
        split_of.setdefault((c.pair_id, c.blurry, c.sharp), split)
    marked = L.mark_duplicates([c for _, c in pairs])
    candidates = [(split_of[(c.pair_id, c.blurry, c.sharp)], c) for c in marked]
    est = Counter()
    for split, c in candidates:
        est[split] += c.size_bytes * OUTPUT_PER_INPUT_BYTE
    splits = {split for split, _ in candidates}
    return IngestPlan(candidates, {s: num_shards_for(int(est[s]), options) for s in splits},
                      ignored, options, unlabelled)


class ProcessPairFn(beam.DoFn):
    """Candidate -> example (main output, keyed by split) or quarantine record."""

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
                yield split, example
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
                       "reason": c.reason, "detail": c.detail}, sort_keys=True)


def split_dir(out_dir: str, split: str) -> str:
    return f"{out_dir.rstrip('/')}/Split-{split}"


def expand_ingest(p: beam.Pipeline, plan: IngestPlan, out_dir: str) -> None:
    out_dir = out_dir.rstrip("/")
    results = (
        p
        | "Candidates" >> beam.Create(plan.candidates, reshuffle=False)
        # Decoding dominates: spread candidates over workers before it.
        | "Spread" >> beam.Reshuffle()
        | "DecodeValidateEncode" >> beam.ParDo(ProcessPairFn(plan.options)).with_outputs(
            ProcessPairFn.QUARANTINE, main="examples")
    )
    examples, quarantined = results.examples, results[ProcessPairFn.QUARANTINE]
    for split in plan.splits:
        _ = (
            examples
            | f"Only[{split}]" >> beam.Filter(lambda kv, s=split: kv[0] == s)
            | f"Bytes[{split}]" >> beam.Map(lambda kv: kv[1])
            | f"Write[{split}]" >> beam.io.WriteToTFRecord(
                f"{split_dir(out_dir, split)}/data_tfrecord", file_name_suffix=".gz",
                num_shards=plan.num_shards[split],
                compression_type=beam.io.filesystem.CompressionTypes.GZIP)
        )
    _ = (
        quarantined
        | "QuarantineJson" >> beam.MapTuple(quarantine_record)
        | "WriteQuarantine" >> beam.io.WriteToText(
            f"{out_dir}/{QUARANTINE_DIR}/quarantine", file_name_suffix=".jsonl",
            shard_name_template="")
    )
    written = examples | "WrittenKey" >> beam.MapTuple(lambda s, _: (f"written|{s}", 1))
    bad = quarantined | "QuarantineKey" >> beam.MapTuple(
        lambda s, c: (f"quarantined|{s}|{c.reason}", 1))
    _ = (
        (written, bad)
        | "AllCounts" >> beam.Flatten()
        | "Count" >> beam.CombinePerKey(sum)
        | "CountJson" >> beam.MapTuple(lambda k, n: json.dumps({"key": k, "n": n}))
        | "WriteCounts" >> beam.io.WriteToText(
            f"{out_dir}/{COUNTS_DIR}/counts", file_name_suffix=".jsonl", shard_name_template="")
    )


def _read_lines(pattern: str) -> List[str]:
    lines = []
    for md in FileSystems.match([pattern])[0].metadata_list:
        lines.extend(read_text(md.path).splitlines())
    return [ln for ln in lines if ln.strip()]


def finalize_ingest(plan: IngestPlan, out_dir: str) -> dict:
    """Writes summary.json from the pipeline's counters; raises IngestError past the bound.

    inputs = candidate pairs (a pair, or a lone file / list line / duplicate that could not
    become one); every input is either written or quarantined. Blurry-only (unlabelled)
    subsets are not inputs: they are listed under unlabelled_skipped with their file counts.
    """
    out_dir = out_dir.rstrip("/")
    written, quarantined, by_reason = Counter(), Counter(), Counter()
    for line in _read_lines(f"{out_dir}/{COUNTS_DIR}/counts*.jsonl"):
        rec = json.loads(line)
        kind, split, *rest = rec["key"].split("|")
        if kind == "written":
            written[split] += rec["n"]
        else:
            quarantined[split] += rec["n"]
            by_reason[rest[0]] += rec["n"]
    inputs = Counter(split for split, _ in plan.candidates)
    n_in, n_written, n_bad = sum(inputs.values()), sum(written.values()), sum(quarantined.values())
    fraction = n_bad / n_in if n_in else 0.0
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
        "quarantine_file": f"{out_dir}/{QUARANTINE_DIR}/quarantine.jsonl",
        "fingerprint": plan.fingerprint(),
        "status": "ok",
    }
    if n_written + n_bad != n_in:
        summary["status"] = "failed"
        summary["error"] = f"counts do not add up: {n_written} written + {n_bad} quarantined != {n_in} inputs"
    elif fraction > plan.options.max_quarantine_fraction:
        summary["status"] = "failed"
        summary["error"] = (f"{n_bad} of {n_in} inputs quarantined ({fraction:.1%}), above the "
                            f"bound of {plan.options.max_quarantine_fraction:.1%}; see "
                            f"{summary['quarantine_file']}")
    with FileSystems.create(f"{out_dir}/{SUMMARY_FILE}") as f:
        f.write(json.dumps(summary, indent=2, sort_keys=True).encode())
    if summary["status"] != "ok":
        raise IngestError(summary["error"])
    return summary


def unlabelled_lines(summary: dict) -> List[str]:
    """One line per skipped blurry-only subset of a summary (the CLI and the pipeline summary
    print them)."""
    return [f"skipped unlabelled subset {u['subset']} of {u['root']} ({u['layout']}): "
            f"{u['files']} {u['detail']}; not ingested, not quarantined"
            for u in summary.get("unlabelled_skipped", [])]


def run_ingest(sources: Sequence[IngestSource], out_dir: str,
               options: IngestOptions = IngestOptions(),
               beam_args: Optional[Sequence[str]] = None) -> dict:
    """Plan, run the Beam pipeline to completion, and summarize. Returns the summary dict."""
    plan = plan_ingest(sources, options)
    with beam.Pipeline(options=PipelineOptions(list(beam_args or []))) as p:
        expand_ingest(p, plan, out_dir)
    return finalize_ingest(plan, out_dir)
