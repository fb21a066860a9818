"""Turning one candidate pair into a serialized example, or into a quarantine reason.

Pure functions of the file bytes (no Beam, no TensorFlow): the Beam DoFn, the benchmark floor
and the tests all call process_pair_bytes.
"""
from __future__ import annotations

import io
import struct
from typing import Dict, Optional, Tuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from components.ingest import layouts as L
from core import example_format as ef
from core.image_stats import image_stats

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Modes with a well-defined 8-bit RGB rendition. Alpha is accepted only when fully opaque.
_CONVERTIBLE = {"L", "P", "CMYK", "YCbCr", "LAB", "1", "RGBA", "LA", "PA", "RGBX", "RGBa", "La"}
_HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


class Quarantine(Exception):
    """Raised with (reason, detail) for an input that cannot become an example."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def _png_bit_depth(data: bytes) -> Optional[int]:
    # IHDR is always the first chunk: signature(8) length(4) "IHDR"(4) w(4) h(4) depth(1)
    if data[:8] == _PNG_SIGNATURE and data[12:16] == b"IHDR" and len(data) >= 25:
        return data[24]
    return None


def decode_rgb(data: bytes, name: str) -> Tuple[np.ndarray, bool]:
    """bytes -> (H x W x 3 uint8, is_png_rgb8). Raises Quarantine with the reason."""
    depth = _png_bit_depth(data)
    if depth is not None and depth > 8:
        raise Quarantine(L.HIGH_BIT_DEPTH, f"{name}: {depth}-bit PNG")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise Quarantine(L.NOT_AN_IMAGE, f"{name}: not an image file Pillow can identify")
    except Exception as e:  # noqa: BLE001 - any decoder failure is a quarantine reason
        raise Quarantine(L.NOT_AN_IMAGE, f"{name}: {type(e).__name__}: {e}")
    try:
        img.load()
    except (OSError, SyntaxError, ValueError, struct.error, EOFError) as e:
        reason = L.TRUNCATED if "truncat" in str(e).lower() or isinstance(e, (EOFError, struct.error)) else L.NOT_AN_IMAGE
        raise Quarantine(reason, f"{name}: {type(e).__name__}: {e}")
    mode = img.mode
    if mode in _HIGH_DEPTH_MODES or mode.startswith("I;16"):
        raise Quarantine(L.HIGH_BIT_DEPTH, f"{name}: mode {mode} (more than 8 bits per sample)")
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8), img.format == "PNG"
    if mode not in _CONVERTIBLE:
        raise Quarantine(L.UNCONVERTIBLE_MODE, f"{name}: mode {mode} has no 8-bit RGB rendition")
    if "A" in mode or "a" in mode:
        alpha = np.asarray(img.getchannel("A"))
        if alpha.min() < 255:
            raise Quarantine(L.UNCONVERTIBLE_MODE,
                             f"{name}: mode {mode} with transparent pixels (no defined background)")
    elif mode == "P" and "transparency" in img.info:
        rgba = img.convert("RGBA")
        if np.asarray(rgba.getchannel("A")).min() < 255:
            raise Quarantine(L.UNCONVERTIBLE_MODE, f"{name}: palette image with transparency")
    return np.asarray(img.convert("RGB"), dtype=np.uint8), False


def encode_png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def process_pair_bytes(
    blurry_data: bytes, sharp_data: bytes, *, pair_id: str, dataset: str, domain: str,
    split: str, min_side: int = ef.MIN_SIDE, blurry_name: str = "blurry",
    sharp_name: str = "sharp",
) -> Tuple[bytes, Dict[str, float]]:
    """Validates a pair and returns (serialized tf.train.Example, statistics).

    min_side: the smallest accepted image side (8 everywhere; the training crop size in a
    training split). Raises Quarantine.
    """
    blurry, blurry_png = decode_rgb(blurry_data, blurry_name)
    sharp, sharp_png = decode_rgb(sharp_data, sharp_name)
    if blurry.shape != sharp.shape:
        raise Quarantine(L.SIZE_MISMATCH, f"blurry {blurry.shape[0]}x{blurry.shape[1]} vs sharp "
                                          f"{sharp.shape[0]}x{sharp.shape[1]}")
    h, w = blurry.shape[:2]
    if min(h, w) < ef.MIN_SIDE:
        raise Quarantine(L.TOO_SMALL, f"{h}x{w} is under the {ef.MIN_SIDE}x{ef.MIN_SIDE} minimum")
    if min(h, w) < min_side:
        raise Quarantine(L.TOO_SMALL_FOR_TRAINING,
                         f"{h}x{w} is under the {min_side}x{min_side} training crop of split {split}")
    feats_b = {"pair_id": pair_id, "dataset": dataset, "domain": domain, "split": split}
    floats = {}
    for key, rgb, data, is_png in (("blurry", blurry, blurry_data, blurry_png),
                                   ("sharp", sharp, sharp_data, sharp_png)):
        y = ef.luma(rgb)
        for f in ef.PYRAMID_FACTORS:
            feats_b[ef.pyramid_key(key, f)] = ef.encode_level(ef.box_downsample(y, f))
        # An 8-bit RGB PNG is stored as it came (decoding it gives exactly `rgb`); anything
        # else (JPEG, palette, grayscale...) is re-encoded as RGB PNG.
        feats_b[key] = bytes(data) if is_png else encode_png(rgb)
        for name, v in image_stats(rgb, y).items():
            floats[f"{key}_{name}"] = v
    example = ef.serialize_example(
        {k: (v.encode() if isinstance(v, str) else v) for k, v in feats_b.items()},
        {"height": h, "width": w}, floats,
    )
    return example, floats
