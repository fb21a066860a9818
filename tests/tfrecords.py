"""An independent GZIP TFRecord reader for tests (the framing of tensorflow/core/lib/io/record_writer)."""
from __future__ import annotations

import glob
import gzip
import struct
from typing import Iterator, List

from core import example_format as ef


def read_records(path: str) -> Iterator[bytes]:
    with gzip.open(path, "rb") as f:
        data = f.read()
    pos = 0
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos : pos + 8])
        pos += 12  # length + its masked crc32c
        yield data[pos : pos + length]
        pos += length + 4  # payload + its masked crc32c


def read_split(out_dir: str, split: str) -> List[dict]:
    files = sorted(glob.glob(f"{out_dir}/Split-{split}/*.gz"))
    return [ef.parse_example(r) for f in files for r in read_records(f)]
