"""`ingest --overwrite`: which files of an output folder an earlier ingest wrote, and the
deletion of those alone.

An existing ingest output is replaced only with --overwrite, and only what that ingest wrote
is deleted: its summary.json (with ingest counts), the shards its summary names
(Split-<split>/<unit tag>-data_tfrecord-SSSSS-of-NNNNN.gz of its splits and units), its
quarantine and counts files, a private unit store it left behind. A folder holding anything
else (a run-local work dir, a user's file, even one placed inside Split-<split>/ or
quarantine/) is refused in one line and nothing is deleted, even with --overwrite.
"""
from __future__ import annotations

import os
import re
from typing import Callable, Optional

from apache_beam.io.filesystems import FileSystems

from components.ingest.beam_ingest import PRIVATE_STORE, UNIT_DONE, read_json_or_none
from core.artifacts import (COUNTS_DIR, COUNTS_PREFIX, QUARANTINE_DIR, QUARANTINE_FILE,
                            SPLIT_PREFIX, SUMMARY_FILE, UNIT_FILE)


class OutputNotEmpty(ValueError):
    """The output folder holds files no ingest wrote, or an ingest output without --overwrite."""


def clear_output(out: str, overwrite: bool) -> None:
    """Deletes the files of the ingest output at `out` (the module doc), or raises
    OutputNotEmpty deleting nothing. An empty or missing folder is left as it is."""
    root = out.rstrip("/")
    existing = [m.path for m in FileSystems.match([root + "/**"])[0].metadata_list]
    if not existing:
        return
    summary = ingest_summary(f"{root}/{SUMMARY_FILE}")
    owned = output_files(summary) if summary is not None else (lambda rel: False)
    foreign = [p for p in existing if not owned(p[len(root) + 1:])]
    if foreign:
        raise OutputNotEmpty(f"{out} is not empty and holds files that are not part of an "
                             f"ingest output ({', '.join(sorted(foreign)[:3])}"
                             f"{', ...' if len(foreign) > 3 else ''}); choose an empty --out or "
                             "move them away (nothing was deleted)")
    if not overwrite:
        raise OutputNotEmpty(f"{out} already holds an ingest output; pass --overwrite to "
                             "replace it")
    FileSystems.delete(existing)
    if "://" not in root:  # the ingest's own folders, once empty (never the output folder)
        for dirpath, _, _ in sorted(os.walk(root), key=lambda w: -len(w[0])):
            if dirpath != root.rstrip(os.sep) and not os.listdir(dirpath):
                os.rmdir(dirpath)


def output_files(summary: dict) -> Callable[[str], bool]:
    """A predicate on paths relative to an ingest output: whether the ingest whose summary
    this is wrote that file (its names: beam_ingest's module doc)."""
    splits = [str(s) for s in (summary.get("splits") or {})]
    fingerprints = [str(u.get("fingerprint", "")) for u in summary.get("units") or []
                    if isinstance(u, dict) and u.get("fingerprint")]
    tags = [f[:16] for f in fingerprints]
    shard = r"data_tfrecord-\d{5}-of-\d{5}\.gz"
    split_re = "|".join(map(re.escape, splits)) or "(?!)"
    split = re.escape(SPLIT_PREFIX)
    # an output written before units had tags named its shards without one
    tagged = f"(?:{'|'.join(map(re.escape, tags))})-" if tags else ""
    patterns = [
        re.escape(SUMMARY_FILE),
        f"{re.escape(QUARANTINE_DIR)}/(?:{re.escape(QUARANTINE_FILE)}|ingested\\.jsonl)",
        f"{re.escape(COUNTS_DIR)}/{re.escape(COUNTS_PREFIX)}[^/]*\\.jsonl",
        f"{split}(?:{split_re})/{tagged}{shard}",
    ]
    if fingerprints:  # a private unit store left behind
        fp = "|".join(map(re.escape, fingerprints))
        patterns.append(f"{re.escape(PRIVATE_STORE)}/(?:{fp})/(?:{split}(?:{split_re})/{shard}|"
                        f"{re.escape(QUARANTINE_FILE)}|{re.escape(UNIT_FILE)}|{re.escape(UNIT_DONE)})")
    owned = re.compile("(?:" + "|".join(patterns) + ")")
    return lambda rel: owned.fullmatch(rel) is not None


def ingest_summary(path: str) -> Optional[dict]:
    """The ingest summary at path (with its counts), or None."""
    try:
        summary = read_json_or_none(path)
    except OSError:
        return None
    if isinstance(summary, dict) and {"inputs", "written", "quarantined", "splits"} <= set(summary) \
            and isinstance(summary["splits"], dict):
        return summary
    return None
