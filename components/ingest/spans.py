"""Spans: dated or numbered folders of new data under one dataset root (TFX's {SPAN} convention).

An IngestSource with `span_pattern` holds one complete layout (GoPro, RealBlur, folder, ...)
per span folder; new data arrives as a new folder, e.g.

    gs://bucket/gopro/span-1/train/GOPR0372_07_00/{blur,sharp}/...      span_pattern: span-{SPAN}
    gs://bucket/gopro/span-2/train/...
    gs://bucket/realblur/2024-05-01/RealBlur_J_test_list.txt ...        span_pattern: {YYYY}-{MM}-{DD}
    gs://bucket/realblur/2024/05/08/...                                 span_pattern: {YYYY}/{MM}/{DD}

Tokens as in TFX's ExampleGen input patterns: {SPAN} (a non-negative integer), or the date
tokens {YYYY} {MM} {DD} together, whose span number is the day count since 1970-01-01 (TFX's
date_to_span_number). The pattern names the folder relative to the root, one or more path
components; files outside every span folder are not part of the data (counted as ignored).
"""
from __future__ import annotations

import dataclasses
import datetime
import re
from typing import Optional, Tuple

from components.ingest.layouts import LayoutError

_TOKEN = re.compile(r"\{(SPAN|YYYY|MM|DD)\}")
_GROUPS = {"SPAN": r"(?P<span>\d+)", "YYYY": r"(?P<yyyy>\d{4})", "MM": r"(?P<mm>\d{2})",
           "DD": r"(?P<dd>\d{2})"}
EPOCH = datetime.date(1970, 1, 1)


@dataclasses.dataclass(frozen=True)
class SpanPattern:
    text: str
    regex: "re.Pattern"
    depth: int  # path components of a span folder

    @classmethod
    def parse(cls, text: str) -> "SpanPattern":
        where = f"span_pattern {text!r}"
        if not isinstance(text, str) or not text.strip("/"):
            raise LayoutError(f"{where}: empty")
        text = text.strip("/")
        tokens = _TOKEN.findall(text)
        if sorted(tokens) not in (["SPAN"], ["DD", "MM", "YYYY"]):
            raise LayoutError(f"{where}: use {{SPAN}} once, or {{YYYY}}, {{MM}} and {{DD}} once each "
                              f"(TFX's span tokens)")
        parts = text.split("/")
        if any(p in ("", ".", "..") for p in parts) or re.search(r"[*?\[\]]", text):
            raise LayoutError(f"{where}: a folder path relative to the root, without wildcards")
        regex, pos = "", 0
        for m in _TOKEN.finditer(text):
            regex += re.escape(text[pos:m.start()]) + _GROUPS[m.group(1)]
            pos = m.end()
        regex += re.escape(text[pos:])
        return cls(text, re.compile(regex), len(parts))

    def match(self, rel: str) -> Optional[Tuple[int, str, str]]:
        """(span number, span folder, path inside it) of a path relative to the root, or None
        when the path is not inside a span folder."""
        parts = rel.split("/")
        if len(parts) <= self.depth:
            return None
        folder = "/".join(parts[:self.depth])
        m = self.regex.fullmatch(folder)
        if not m:
            return None
        return span_number(m, self.text), folder, "/".join(parts[self.depth:])


def span_number(m: "re.Match", pattern: str) -> int:
    g = m.groupdict()
    if g.get("span") is not None:
        return int(g["span"])
    try:
        day = datetime.date(int(g["yyyy"]), int(g["mm"]), int(g["dd"]))
    except ValueError as e:
        raise LayoutError(f"span folder {m.group(0)!r} of {pattern!r} is not a date: {e}") from None
    return (day - EPOCH).days
