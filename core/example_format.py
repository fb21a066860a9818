"""The example format: the contract between ingest, trainer and evaluator (SPEC section 3).

One ``tf.train.Example`` per blurry/sharp pair:

=========================  ======  ==========================================================
feature                    type    content
=========================  ======  ==========================================================
blurry, sharp              bytes   PNG, RGB, 8 bit, same H x W
blurry_gray_x{2,4,8},      bytes   grayscale pyramid level k (factor 2^k): the box average of
sharp_gray_x{2,4,8}                BT.601 luma over 2^k x 2^k blocks, shape
                                   (floor(H / 2^k), floor(W / 2^k)); see PYRAMID ENCODING
height, width              int64   H, W of the full-resolution images
pair_id                    bytes   stable, unique id: "<dataset>/<subset>/<relative path>"
dataset                    bytes   gopro, realblur_j, hide, reds, folder, synthetic_...
domain                     bytes   "in" or "out"
split                      bytes   the output split the example was written to
blurry_mean_luma, ...      float   per-image statistics (see core.image_stats), for TFDV
=========================  ======  ==========================================================

PYRAMID ENCODING
    luma  Y = 0.299 R + 0.587 G + 0.114 B on the 8-bit (gamma-encoded) values, divided by 255,
    so Y is in [0, 1]; computed in float64, averaged over each full 2^k x 2^k block (the
    trailing rows/columns that do not fill a block are dropped, so the level is
    floor(H/2^k) x floor(W/2^k)), then stored as raw little-endian IEEE float32, row-major.
    Decoding is one ``tf.io.decode_raw(x, tf.float32)`` + reshape (no image codec), and the
    only loss is the float32 rounding (relative error < 6e-8), far below 8-bit quantisation.

The serialisation here does not import TensorFlow: Beam workers that only write examples
would otherwise pay TensorFlow's import (tens of seconds on the 2-core machines) per process.
The message classes below are built from a descriptor with the same field numbers as
tensorflow/core/example/{example,feature}.proto, so the bytes are a tf.train.Example on the
wire (tests parse them with tf.train.Example and tf.io.parse_single_example).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PYRAMID_FACTORS = (2, 4, 8)
# Every pyramid level of an image aligns with the full-resolution image only at offsets that
# are multiples of the coarsest factor; training crops honour this.
ALIGNMENT = max(PYRAMID_FACTORS)
MIN_SIDE = ALIGNMENT  # an image under 8 x 8 has an empty x8 level
LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601

IMAGE_KEYS = ("blurry", "sharp")
STAT_NAMES = ("mean_luma", "saturated_fraction", "blur_laplacian_var", "noise_sigma")


def pyramid_key(image_key: str, factor: int) -> str:
    return f"{image_key}_gray_x{factor}"


PYRAMID_KEYS = tuple(pyramid_key(i, f) for i in IMAGE_KEYS for f in PYRAMID_FACTORS)
STAT_KEYS = tuple(f"{i}_{s}" for i in IMAGE_KEYS for s in STAT_NAMES)
BYTES_KEYS = IMAGE_KEYS + PYRAMID_KEYS + ("pair_id", "dataset", "domain", "split")
INT_KEYS = ("height", "width")
FLOAT_KEYS = STAT_KEYS
DOMAINS = ("in", "out")


# --------------------------------------------------------------------------------------------
# Pyramid
# --------------------------------------------------------------------------------------------
def luma(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma of an H x W x 3 uint8 image, float64 in [0, 1]."""
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"expected an H x W x 3 image, got shape {rgb.shape}")
    r, g, b = (rgb[..., c].astype(np.float64) for c in range(3))
    return (LUMA_WEIGHTS[0] * r + LUMA_WEIGHTS[1] * g + LUMA_WEIGHTS[2] * b) / 255.0


def box_downsample(gray: np.ndarray, factor: int) -> np.ndarray:
    """Mean over factor x factor blocks; trailing rows/columns that do not fill a block drop."""
    h, w = gray.shape[0] // factor, gray.shape[1] // factor
    if h == 0 or w == 0:
        raise ValueError(f"image {gray.shape} is smaller than the pyramid factor {factor}")
    blocks = gray[: h * factor, : w * factor].reshape(h, factor, w, factor)
    return blocks.mean(axis=(1, 3))


def encode_level(level: np.ndarray) -> bytes:
    return np.ascontiguousarray(level, dtype="<f4").tobytes()


def decode_level(data: bytes, height: int, width: int, factor: int) -> np.ndarray:
    """Inverse of encode_level for an image of height x width (numpy; the trainer uses
    tf.io.decode_raw with the same layout)."""
    shape = (height // factor, width // factor)
    arr = np.frombuffer(data, dtype="<f4")
    if arr.size != shape[0] * shape[1]:
        raise ValueError(f"pyramid level x{factor} has {arr.size} values, expected {shape}")
    return arr.reshape(shape)


# --------------------------------------------------------------------------------------------
# A TensorFlow-free tf.train.Example (same wire format)
# --------------------------------------------------------------------------------------------
def _build_example_classes():
    fdp = descriptor_pb2.FileDescriptorProto(
        name="deblur/tf_example_wire.proto", package="deblur_wire", syntax="proto3"
    )
    F = descriptor_pb2.FieldDescriptorProto

    def msg(name, *fields):
        m = fdp.message_type.add(name=name)
        for fname, number, ftype, label, type_name, packed in fields:
            f = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = type_name
            if packed:
                f.options.packed = True
        return m

    rep, opt = F.LABEL_REPEATED, F.LABEL_OPTIONAL
    msg("BytesList", ("value", 1, F.TYPE_BYTES, rep, None, False))
    msg("FloatList", ("value", 1, F.TYPE_FLOAT, rep, None, True))
    msg("Int64List", ("value", 1, F.TYPE_INT64, rep, None, True))
    msg(
        "Feature",
        ("bytes_list", 1, F.TYPE_MESSAGE, opt, ".deblur_wire.BytesList", False),
        ("float_list", 2, F.TYPE_MESSAGE, opt, ".deblur_wire.FloatList", False),
        ("int64_list", 3, F.TYPE_MESSAGE, opt, ".deblur_wire.Int64List", False),
    )
    features = msg("Features")
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=opt)
    entry.field.add(
        name="value", number=2, type=F.TYPE_MESSAGE, label=opt, type_name=".deblur_wire.Feature"
    )
    features.field.add(
        name="feature", number=1, type=F.TYPE_MESSAGE, label=rep,
        type_name=".deblur_wire.Features.FeatureEntry",
    )
    msg("Example", ("features", 1, F.TYPE_MESSAGE, opt, ".deblur_wire.Features", False))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    descriptor = pool.FindMessageTypeByName("deblur_wire.Example")
    if hasattr(message_factory, "GetMessageClass"):  # protobuf >= 4.21 (the serving venv's 6)
        return message_factory.GetMessageClass(descriptor)
    return message_factory.MessageFactory(pool).GetPrototype(descriptor)  # protobuf 3.20 (TFX)


Example = _build_example_classes()


def serialize_example(
    bytes_features: Mapping[str, bytes],
    int_features: Mapping[str, int],
    float_features: Mapping[str, float],
) -> bytes:
    """Serialized tf.train.Example with exactly the features of the format."""
    for keys, given in ((BYTES_KEYS, bytes_features), (INT_KEYS, int_features),
                        (FLOAT_KEYS, float_features)):
        if set(given) != set(keys):
            raise ValueError(
                f"example features mismatch: missing {sorted(set(keys) - set(given))}, "
                f"unexpected {sorted(set(given) - set(keys))}"
            )
    ex = Example()
    fmap = ex.features.feature
    for k, v in bytes_features.items():
        fmap[k].bytes_list.value.append(v if isinstance(v, bytes) else str(v).encode())
    for k, v in int_features.items():
        fmap[k].int64_list.value.append(int(v))
    for k, v in float_features.items():
        fmap[k].float_list.value.append(float(v))
    # deterministic=True sorts map keys: the same pair always gives the same bytes.
    return ex.SerializeToString(deterministic=True)


def parse_example(data: bytes) -> dict:
    """Serialized example -> {key: python value} (numpy-free, TensorFlow-free)."""
    ex = Example.FromString(data)
    out = {}
    for k, f in ex.features.feature.items():
        if f.bytes_list.value:
            out[k] = f.bytes_list.value[0]
        elif f.int64_list.value:
            out[k] = f.int64_list.value[0]
        elif f.float_list.value:
            out[k] = f.float_list.value[0]
        else:
            out[k] = None
    return out
