"""What an ingest reads and how: IngestSource (one dataset root) and IngestOptions, plain data
(no Apache Beam), so the pipeline config and the CLI load them without importing Beam;
components/ingest/beam_ingest.py runs them."""
from __future__ import annotations

import dataclasses
import numbers
from typing import Dict, Optional, Sequence

from components.ingest import layouts as L
from components.ingest.spans import SpanPattern

MB = 1 << 20
HOLDOUT_KEYS = ("subset", "split", "fraction")


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
    span_pattern: the root holds one layout per span folder, e.g. "span-{SPAN}" or
      "{YYYY}-{MM}-{DD}" (components/ingest/spans.py); None: the root is one layout.
    holdout: {"subset": "train", "split": "val", "fraction": 0.2}: the pairs of that subset
      whose group (holdout_group: the parent folder of the layout's pair id, i.e. the GoPro
      sequence, RealBlur scene, REDS clip) is selected go to `split` instead of the subset's
      own split, whole groups at a time; a group is selected when the SHA-256 of its key, read
      as a number in [0, 1), is < fraction, so the choice is deterministic and new groups never
      move old ones. A subset with a single group is split by pair id instead.
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
    span_pattern: Optional[str] = None
    holdout: Optional[Dict[str, object]] = None

    def __post_init__(self):
        L.check_options(self.layout, self.subsets, self.blur_kind, self.domain, self.variant)
        if self.span_pattern is not None:
            SpanPattern.parse(self.span_pattern)
        if self.holdout is not None:
            self._check_holdout()

    def _check_holdout(self) -> None:
        h = self.holdout
        example = '{subset: train, split: val, fraction: 0.2}'
        if not isinstance(h, dict) or set(h) != set(HOLDOUT_KEYS):
            raise L.LayoutError(f"holdout must be a mapping with keys subset, split and fraction, "
                                f"e.g. {example}; got {h!r}"[:300])
        subset, split, fraction = h["subset"], h["split"], h["fraction"]
        if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) \
                or not 0.0 < fraction < 1.0:
            raise L.LayoutError(f"holdout fraction must be a number in (0, 1), got {fraction!r}")
        read = list(self.subsets) if self.subsets is not None else L.SUBSETS[self.layout]
        if not isinstance(subset, str) or (read is not None and subset not in read):
            raise L.LayoutError(f"holdout subset {subset!r} is not among the subsets read "
                                f"({', '.join(read) if read else 'none'})")
        if not isinstance(split, str) or not split:
            raise L.LayoutError(f"holdout split must be a non-empty split name, got {split!r}")
        others = ({self.split_of(s) for s in (read or [subset])}
                  | set((self.split_names or {}).values()))
        if split in others:
            raise L.LayoutError(f"holdout split {split!r} is already a split of this source "
                                f"({', '.join(sorted(others))}): choose another name, e.g. val")

    def split_of(self, subset: str) -> str:
        return (self.split_names or {}).get(subset, subset)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        if d["holdout"] is None:  # a source without one keeps the fingerprint it had before
            del d["holdout"]
        return d

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
    # the latest N spans of each source with a span_pattern (0: every span)
    span_window: int = 0

    def __post_init__(self):
        if not 0.0 <= self.max_quarantine_fraction <= 1.0:
            raise ValueError("max_quarantine_fraction must be in [0, 1]")
        if self.train_crop_size < 8 or self.train_crop_size % 8:
            raise ValueError("train_crop_size must be a positive multiple of 8")
        if self.target_shard_bytes <= 0 or self.tiny_num_shards < 1:
            raise ValueError("shard sizing must be positive")
        if isinstance(self.span_window, bool) or not isinstance(self.span_window, int) \
                or self.span_window < 0:
            raise ValueError(f"span_window must be an integer >= 0 (0: every span), "
                             f"got {self.span_window!r}")

    def unit_options(self) -> dict:
        """What shapes a unit's examples and shards (span_window selects units, the quarantine
        bound judges the whole ingest: neither changes what a unit holds)."""
        d = dataclasses.asdict(self)
        d.pop("span_window")
        d.pop("max_quarantine_fraction")
        return d
