"""The example format (core/example_format.py) against independent references.

- the grayscale pyramid that process_pair_bytes stores equals a brute-force, loop-by-loop
  computation of the documented encoding (BT.601 luma / 255, box mean over full blocks,
  trailing rows/columns dropped, little-endian float32);
- the TensorFlow-free serializer produces tf.train.Example wire bytes (parsed by TensorFlow,
  byte-identical to TensorFlow's own deterministic serialization), deterministically;
- the stored images decode back to the input pixels.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
import tensorflow as tf  # imported once for the module (slow: ~25 s)
from PIL import Image

from components.ingest.decode import process_pair_bytes
from core import example_format as ef

SIZES = [(37, 53), (8, 8), (15, 17), (64, 48), (9, 23), (17, 8)]
FACTORS = (2, 4, 8)


def _png(arr: np.ndarray, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format="PNG")
    return buf.getvalue()


def _random_rgb(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _process(blurry: np.ndarray, sharp: np.ndarray, **kw) -> bytes:
    args = dict(pair_id="test/x/a.png", dataset="gopro", domain="in", split="test")
    args.update(kw)
    example, _ = process_pair_bytes(_png(blurry), _png(sharp), **args)
    return example


# ------------------------------------------------------------------------------------------
# Independent references (explicit loops, no use of core.example_format's helpers)
# ------------------------------------------------------------------------------------------
def brute_luma(rgb: np.ndarray) -> np.ndarray:
    h, w, _ = rgb.shape
    out = np.zeros((h, w), dtype=np.float64)
    for y in range(h):
        for x in range(w):
            r, g, b = (int(v) for v in rgb[y, x])
            out[y, x] = (0.299 * r + 0.587 * g + 0.114 * b) / 255.0
    return out


def brute_level(gray: np.ndarray, f: int) -> np.ndarray:
    H, W = gray.shape
    out = np.zeros((H // f, W // f), dtype=np.float64)
    for i in range(H // f):
        for j in range(W // f):
            s = 0.0
            for dy in range(f):
                for dx in range(f):
                    s += gray[i * f + dy, j * f + dx]
            out[i, j] = s / (f * f)
    return out


def tf_example(serialized: bytes) -> tf.train.Example:
    return tf.train.Example.FromString(serialized)


def stored_level(ex: tf.train.Example, key: str) -> np.ndarray:
    [data] = ex.features.feature[key].bytes_list.value
    return np.frombuffer(data, dtype="<f4")


def feature_spec():
    spec = {k: tf.io.FixedLenFeature([], tf.string) for k in ef.BYTES_KEYS}
    spec.update({k: tf.io.FixedLenFeature([], tf.int64) for k in ef.INT_KEYS})
    spec.update({k: tf.io.FixedLenFeature([], tf.float32) for k in ef.FLOAT_KEYS})
    return spec


# ------------------------------------------------------------------------------------------
# Pyramid
# ------------------------------------------------------------------------------------------
def test_format_constants_match_the_docstring():
    assert ef.PYRAMID_FACTORS == FACTORS
    assert set(ef.PYRAMID_KEYS) == {f"{i}_gray_x{f}" for i in ("blurry", "sharp") for f in FACTORS}
    assert len(set(ef.BYTES_KEYS) | set(ef.INT_KEYS) | set(ef.FLOAT_KEYS)) == (
        len(ef.BYTES_KEYS) + len(ef.INT_KEYS) + len(ef.FLOAT_KEYS))


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_pyramid_equals_brute_force(size):
    h, w = size
    images = {"blurry": _random_rgb(h, w, seed=h * 1000 + w),
              "sharp": _random_rgb(h, w, seed=h * 1000 + w + 1)}
    ex = tf_example(_process(images["blurry"], images["sharp"]))
    feats = ex.features.feature
    assert feats["height"].int64_list.value == [h] and feats["width"].int64_list.value == [w]
    for key, rgb in images.items():
        y = brute_luma(rgb)
        for f in FACTORS:
            expected = brute_level(y, f)
            assert expected.shape == (h // f, w // f)
            flat = stored_level(ex, f"{key}_gray_x{f}")
            assert flat.size == (h // f) * (w // f), (key, f)
            got = flat.reshape(h // f, w // f)
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6, err_msg=f"{key} x{f}")
            # float32 rounding is the only loss: the nearest float32 of the exact mean
            np.testing.assert_allclose(got, expected.astype(np.float32), rtol=0, atol=1e-7)
            # TensorFlow's documented decoding (decode_raw + reshape) gives the same array
            tf_got = tf.reshape(tf.io.decode_raw(feats[f"{key}_gray_x{f}"].bytes_list.value[0],
                                                 tf.float32), (h // f, w // f)).numpy()
            np.testing.assert_array_equal(tf_got, got)
            # and the numpy helper for the trainer agrees
            np.testing.assert_array_equal(
                ef.decode_level(feats[f"{key}_gray_x{f}"].bytes_list.value[0], h, w, f), got)


def test_bright_band_outside_the_coarsest_block():
    # 12 x 12: x2 is 6 x 6, x4 is 3 x 3 and x8 is 1 x 1 over rows/cols 0..7 only. A bright
    # band at rows/cols 8..11 fills whole x2 and x4 blocks but lies outside the x8 block.
    rgb = np.zeros((12, 12, 3), np.uint8)
    rgb[8:, :] = 255
    rgb[:, 8:] = 255
    ex = tf_example(_process(rgb, rgb))
    x8 = stored_level(ex, "sharp_gray_x8").reshape(1, 1)
    x4 = stored_level(ex, "sharp_gray_x4").reshape(3, 3)
    x2 = stored_level(ex, "sharp_gray_x2").reshape(6, 6)
    assert x8[0, 0] == 0.0
    np.testing.assert_allclose(x4, [[0, 0, 1], [0, 0, 1], [1, 1, 1]], atol=1e-6)
    expected_x2 = np.ones((6, 6))
    expected_x2[:4, :4] = 0
    np.testing.assert_allclose(x2, expected_x2, atol=1e-6)


@pytest.mark.parametrize("axis", ["row", "col"])
def test_trailing_rows_and_columns_are_dropped(axis):
    # H = 9 (or W = 9): only the last row (column) is bright; it fills no block of any level.
    h, w = (9, 16) if axis == "row" else (16, 9)
    rgb = np.zeros((h, w, 3), np.uint8)
    if axis == "row":
        rgb[-1, :, :] = 255
    else:
        rgb[:, -1, :] = 255
    ex = tf_example(_process(rgb, rgb))
    for key in ("blurry", "sharp"):
        for f in FACTORS:
            level = stored_level(ex, f"{key}_gray_x{f}")
            assert level.size == (h // f) * (w // f)
            assert level.size > 0 and (level == 0).all(), (key, f, level)
    # control: the same bright line inside the first block does show up in x8
    rgb2 = np.zeros((9, 16, 3), np.uint8)
    rgb2[7, :, :] = 255
    x8 = stored_level(tf_example(_process(rgb2, rgb2)), "sharp_gray_x8")
    np.testing.assert_allclose(x8, [1 / 8, 1 / 8], atol=1e-6)


# ------------------------------------------------------------------------------------------
# Wire compatibility of the TensorFlow-free serializer
# ------------------------------------------------------------------------------------------
def _features(seed: int = 0):
    rng = np.random.default_rng(seed)
    b = {k: rng.integers(0, 256, size=int(rng.integers(0, 40)), dtype=np.uint8).tobytes()
         for k in ef.BYTES_KEYS}
    b["pair_id"] = "gopro/train/GOPR0001_00/000001.png".encode()
    b["dataset"] = b"\x00\xff not utf-8 \x80"  # arbitrary bytes survive
    b["domain"] = b""  # an empty bytes value is still present
    ints = {"height": 2**40 + 3, "width": -7}
    floats = dict(zip(ef.FLOAT_KEYS, [0.1, -3.5, 1e-30, 3.4e38, 0.0, 123456.789, 1 / 3, 2.5e-7]))
    assert set(floats) == set(ef.FLOAT_KEYS)
    return b, ints, floats


def _tf_reference(b, ints, floats) -> tf.train.Example:
    ex = tf.train.Example()
    for k, v in b.items():
        ex.features.feature[k].bytes_list.value.append(v)
    for k, v in ints.items():
        ex.features.feature[k].int64_list.value.append(v)
    for k, v in floats.items():
        ex.features.feature[k].float_list.value.append(v)
    return ex


def test_serialized_bytes_parse_as_tf_train_example():
    b, ints, floats = _features()
    data = ef.serialize_example(b, ints, floats)
    ex = tf.train.Example.FromString(data)
    feats = ex.features.feature
    assert set(feats.keys()) == set(b) | set(ints) | set(floats)
    for k, v in b.items():
        assert feats[k].WhichOneof("kind") == "bytes_list"
        assert list(feats[k].bytes_list.value) == [v]
    for k, v in ints.items():
        assert feats[k].WhichOneof("kind") == "int64_list"
        assert list(feats[k].int64_list.value) == [v]
    for k, v in floats.items():
        assert feats[k].WhichOneof("kind") == "float_list"
        assert list(feats[k].float_list.value) == [np.float32(v)]
    # byte-identical to TensorFlow's own (deterministic) serialization of the same example
    assert data == _tf_reference(b, ints, floats).SerializeToString(deterministic=True)
    # and our own parser agrees with TensorFlow
    parsed = ef.parse_example(data)
    assert {k: parsed[k] for k in b} == b and {k: parsed[k] for k in ints} == ints
    for k, v in floats.items():
        assert np.float32(parsed[k]) == np.float32(v)


def test_parse_single_example_with_feature_spec():
    b, ints, floats = _features(1)
    parsed = tf.io.parse_single_example(ef.serialize_example(b, ints, floats), feature_spec())
    assert set(parsed) == set(b) | set(ints) | set(floats)
    for k, v in b.items():
        assert parsed[k].dtype == tf.string and parsed[k].numpy() == v
    for k, v in ints.items():
        assert parsed[k].dtype == tf.int64 and int(parsed[k].numpy()) == v
    for k, v in floats.items():
        assert parsed[k].dtype == tf.float32 and parsed[k].numpy() == np.float32(v)


def test_ingested_example_parses_with_feature_spec():
    h, w = 37, 53
    blurry, sharp = _random_rgb(h, w, 5), _random_rgb(h, w, 6)
    data, stats = process_pair_bytes(_png(blurry), _png(sharp), pair_id="gopro/test/s/1.png",
                                     dataset="gopro", domain="in", split="test")
    parsed = tf.io.parse_single_example(data, feature_spec())
    assert int(parsed["height"]) == h and int(parsed["width"]) == w
    assert parsed["pair_id"].numpy() == b"gopro/test/s/1.png"
    assert parsed["dataset"].numpy() == b"gopro" and parsed["domain"].numpy() == b"in"
    assert parsed["split"].numpy() == b"test"
    assert set(stats) == set(ef.FLOAT_KEYS)
    for k, v in stats.items():
        assert parsed[k].numpy() == np.float32(v)
    lvl = tf.reshape(tf.io.decode_raw(parsed["blurry_gray_x4"], tf.float32), (h // 4, w // 4))
    np.testing.assert_allclose(lvl.numpy(), brute_level(brute_luma(blurry), 4), atol=1e-6)


def test_serialization_is_deterministic():
    b, ints, floats = _features(2)
    first = ef.serialize_example(b, ints, floats)
    assert ef.serialize_example(b, ints, floats) == first
    # insertion order of the mappings does not matter (map keys are sorted)
    rev = lambda d: dict(reversed(list(d.items())))  # noqa: E731
    assert ef.serialize_example(rev(b), rev(ints), rev(floats)) == first
    # the whole ingest path too
    rgb = _random_rgb(15, 17, 9)
    assert _process(rgb, rgb[::-1].copy()) == _process(rgb, rgb[::-1].copy())


@pytest.mark.parametrize("which", ["bytes", "int", "float"])
def test_missing_or_extra_feature_is_a_value_error(which):
    b, ints, floats = _features()
    maps = {"bytes": b, "int": ints, "float": floats}
    target = maps[which]
    missing = dict(target)
    missing.pop(next(iter(missing)))
    with pytest.raises(ValueError, match="missing"):
        ef.serialize_example(*(missing if k == which else maps[k] for k in maps))
    extra = dict(target)
    extra["not_a_feature"] = {"bytes": b"x", "int": 1, "float": 1.0}[which]
    with pytest.raises(ValueError, match="unexpected.*not_a_feature"):
        ef.serialize_example(*(extra if k == which else maps[k] for k in maps))
    # a feature under the wrong type is both missing and unexpected
    if which != "int":
        wrong = dict(ints)
        moved_key = next(iter(target))
        wrong[moved_key] = 1
        with pytest.raises(ValueError, match=moved_key):
            ef.serialize_example(b, wrong, floats)


# ------------------------------------------------------------------------------------------
# Stored images
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(37, 53), (8, 8), (64, 48)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_stored_png_decodes_to_the_input(size):
    blurry, sharp = _random_rgb(*size, 11), _random_rgb(*size, 12)
    ex = tf_example(_process(blurry, sharp))
    for key, rgb in (("blurry", blurry), ("sharp", sharp)):
        [data] = ex.features.feature[key].bytes_list.value
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        tf_img = tf.io.decode_png(data, channels=0, dtype=tf.uint8).numpy()
        assert tf_img.shape == rgb.shape and tf_img.dtype == np.uint8
        np.testing.assert_array_equal(tf_img, rgb)
        pil = Image.open(io.BytesIO(data))
        assert pil.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(pil), rgb)


def test_converted_input_is_stored_as_rgb_png():
    # an 8-bit grayscale PNG is re-encoded as an RGB PNG with three equal channels
    gray = np.random.default_rng(3).integers(0, 256, size=(15, 17), dtype=np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    data, _ = process_pair_bytes(_png(gray, "L"), _png(rgb), pair_id="p", dataset="d",
                                 domain="in", split="s")
    ex = tf_example(data)
    stored = ex.features.feature["blurry"].bytes_list.value[0]
    tf_img = tf.io.decode_png(stored, channels=0).numpy()
    assert tf_img.shape == (15, 17, 3)
    np.testing.assert_array_equal(tf_img, rgb)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(stored))), rgb)
    # the pyramid of the converted image is that of its RGB rendition
    for f in FACTORS:
        np.testing.assert_array_equal(stored_level(ex, f"blurry_gray_x{f}"),
                                      stored_level(ex, f"sharp_gray_x{f}"))
