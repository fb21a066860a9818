"""Small dataset trees for the ingest tests, written by the tests themselves."""
from __future__ import annotations

import io
import os
from typing import Tuple

import numpy as np
from PIL import Image


def rgb(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8)
    img = np.kron(base, np.ones((4, 4, 1), dtype=np.uint8))[:h, :w]
    return img


def png_bytes(arr: np.ndarray, mode: str = "RGB", **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format="PNG", **save)
    return buf.getvalue()


def write(path: str, data: bytes) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


def write_pair(blur_path: str, sharp_path: str, size: Tuple[int, int], seed: int) -> None:
    sharp = rgb(*size, seed)
    blurry = ((sharp.astype(np.uint16) + np.roll(sharp, 3, axis=1)) // 2).astype(np.uint8)
    write(blur_path, png_bytes(blurry))
    write(sharp_path, png_bytes(sharp))


def sixteen_bit_png(h: int, w: int) -> bytes:
    """A 16-bit grayscale PNG (Pillow writes mode I;16 as 16-bit)."""
    arr = (np.arange(h * w, dtype=np.uint16).reshape(h, w) * 37)
    buf = io.BytesIO()
    Image.fromarray(arr, "I;16").save(buf, format="PNG")
    return buf.getvalue()


def sixteen_bit_rgb_png(h: int, w: int) -> bytes:
    """A 16-bit-per-channel RGB PNG written by hand (Pillow cannot write one)."""
    import struct
    import zlib

    arr = (np.arange(h * w * 3, dtype=np.uint16).reshape(h, w, 3) * 101).astype(">u2")
    raw = b"".join(b"\x00" + arr[y].tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
