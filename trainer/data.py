"""tf.data input of the guided icDPM from the ingest's GZIP TFRecords (docs/data.md).

Training element (images and pyramid levels scaled from [0, 1] to [-1, 1]):
    x        sharp crop      (crop, crop, 3)         the clean image
    y        blurry crop     (crop, crop, 3)         the condition
    phi      {k: (crop/k, crop/k, 1)}  blurry gray pyramid level + N(0, sigma^2): phi_k(y)
    target   {k: (crop/k, crop/k, 1 or 3)}  sharp gray level (or box-downsampled RGB): phi_k(x)

Crops start at offsets that are multiples of 8 so that pyramid level k covers exactly the
crop's pixels (level cell (i, j) = pixels [k i, k i + k)); flips are applied to every tensor
of an example together.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Sequence

import numpy as np
import tensorflow as tf

from core import artifacts
from core import example_format as ef


@dataclasses.dataclass(frozen=True)
class DataConfig:
    examples_dir: str = ""  # an ingest output (Examples artifact) folder
    train_split: str = "train"
    crop_size: int = 128
    scales: Sequence[int] = (2, 4, 8)
    target: str = "gray"  # "gray" | "rgb": what R_k regresses
    guidance_noise_sigma: float = 0.0  # sigma of n in phi_k(y), in the [-1, 1] scale
    random_flips: bool = True
    shuffle_buffer: int = 256
    interleave_cycle: int = 8
    # practical degradations of the conditioning input (trainer/degrade.py): exposure of the
    # pair, sensor noise and JPEG of the blurry crop; the crop's pyramid levels are recomputed
    degrade: bool = False

    def __post_init__(self):
        if self.crop_size % ef.ALIGNMENT or self.crop_size <= 0:
            raise ValueError(f"crop_size must be a positive multiple of {ef.ALIGNMENT}")
        if not set(self.scales) <= set(ef.PYRAMID_FACTORS) or not self.scales:
            raise ValueError(f"scales must be a non-empty subset of {ef.PYRAMID_FACTORS}")
        if self.target not in ("gray", "rgb"):
            raise ValueError("target must be 'gray' or 'rgb'")


FEATURE_SPEC = {
    **{k: tf.io.FixedLenFeature([], tf.string) for k in ef.BYTES_KEYS},
    **{k: tf.io.FixedLenFeature([], tf.int64) for k in ef.INT_KEYS},
    **{k: tf.io.FixedLenFeature([], tf.float32) for k in ef.FLOAT_KEYS},
}


def split_files(examples_dir: str, split: str) -> Sequence[str]:
    files = sorted(tf.io.gfile.glob(f"{artifacts.split_dir(examples_dir, split)}/*.gz"))
    if not files:
        raise ValueError(f"no TFRecord files for split {split!r} under {examples_dir}")
    return files


def damaged_shard_error(path: str, e: BaseException) -> str:
    """One line for an examples shard that does not read back (truncated, overwritten, not
    GZIP): the file and what to do (TensorFlow's DataLossError names neither)."""
    text = getattr(e, "message", None) or str(e) or type(e).__name__
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(e).__name__)
    return (f"examples shard {path} is damaged ({type(e).__name__}: {first[:200]}): ingest "
            f"the data again into a new folder (or with --overwrite), or restore the file")


def find_damaged_shard(files: Sequence[str]) -> Optional[str]:
    """damaged_shard_error of the first of files that does not read back whole (every record
    read, none parsed), or None: which file a DataLossError of an interleaved read came from."""
    for path in files:
        try:
            for _ in tf.data.TFRecordDataset(path, compression_type="GZIP"):
                pass
        except tf.errors.OpError as e:
            return damaged_shard_error(path, e)
    return None


def first_examples(files: Sequence[str]) -> Dict[str, tuple]:
    """{file: (height, width, pair id)} of each shard's first example: the cheap start-up
    check of a split (a shard whose head is damaged, or is not GZIP TFRecords, is a
    one-line ValueError naming it; nothing else of the shard is read)."""
    spec = {"height": FEATURE_SPEC["height"], "width": FEATURE_SPEC["width"],
            "pair_id": FEATURE_SPEC["pair_id"]}
    out = {}
    for path in files:
        try:
            for rec in tf.data.TFRecordDataset(path, compression_type="GZIP").take(1):
                ex = tf.io.parse_single_example(rec, spec)
                out[path] = (int(ex["height"]), int(ex["width"]), ex["pair_id"].numpy().decode())
        except tf.errors.OpError as e:
            raise ValueError(damaged_shard_error(path, e)) from None
    return out


def check_crop_fits(cfg: "DataConfig", knob: str = "data.crop_size") -> None:
    """The training crop must fit the training images: a one-line ValueError naming the knob,
    the smallest of the split's images seen (each shard's first example) and the largest crop
    it allows, instead of a traceback inside tf.data. The ingest quarantines training images
    smaller than its own crop (ingest.train_crop_size), so the first examples stand for the
    split unless the trainer's crop is larger than the ingest's."""
    files = split_files(cfg.examples_dir, cfg.train_split)
    seen = first_examples(files)
    if not seen:
        return
    path, (h, w, pair_id) = min(seen.items(), key=lambda kv: min(kv[1][:2]))
    if cfg.crop_size > min(h, w):
        fits = min(h, w) // ef.ALIGNMENT * ef.ALIGNMENT
        raise ValueError(f"{knob} {cfg.crop_size} is larger than the training images: "
                         f"{pair_id} ({path}) is {h}x{w}; choose {knob} <= {fits} (a multiple "
                         f"of {ef.ALIGNMENT})")


def parse_full(serialized: tf.Tensor, scales: Sequence[int] = ef.PYRAMID_FACTORS) -> Dict[str, tf.Tensor]:
    """One serialized example -> full-resolution tensors in [0, 1] (uint8 images as float)."""
    f = tf.io.parse_single_example(serialized, {k: FEATURE_SPEC[k] for k in
                                                ("blurry", "sharp", "height", "width", "pair_id",
                                                 "dataset", "domain")
                                                + tuple(ef.pyramid_key(i, s) for i in ef.IMAGE_KEYS
                                                        for s in scales)})
    h, w = tf.cast(f["height"], tf.int32), tf.cast(f["width"], tf.int32)
    out = {k: f[k] for k in ("pair_id", "dataset", "domain")}
    out["height"], out["width"] = h, w
    for key in ef.IMAGE_KEYS:
        img = tf.io.decode_png(f[key], channels=3)
        out[key] = tf.image.convert_image_dtype(img, tf.float32)  # [0, 1]
        for s in scales:
            level = tf.io.decode_raw(f[ef.pyramid_key(key, s)], tf.float32)
            out[f"{key}_x{s}"] = tf.reshape(level, [h // s, w // s, 1])
    return out


def luma_levels(img01: tf.Tensor, scales: Sequence[int]) -> Dict[int, tf.Tensor]:
    """{k: (B, H/k, W/k, 1)}: the k x k box averages of the BT.601 luma of a (B, H, W, 3) image
    in [0, 1], the example format's pyramid (core/example_format.py) computed in the graph."""
    luma = tf.reduce_sum(img01 * tf.constant(ef.LUMA_WEIGHTS, img01.dtype), -1, keepdims=True)
    return {k: tf.nn.avg_pool2d(luma, k, k, "VALID") for k in scales}


def _to_signed(x: tf.Tensor) -> tf.Tensor:
    return x * 2.0 - 1.0


def random_aligned_crop(ex: Dict[str, tf.Tensor], crop: int, scales: Sequence[int],
                        seed: tf.Tensor) -> Dict[str, tf.Tensor]:
    """Crop at offsets that are multiples of 8; each pyramid level is cropped to match."""
    h, w = ex["height"], ex["width"]
    a = ef.ALIGNMENT
    ny, nx = (h - crop) // a + 1, (w - crop) // a + 1
    oy = tf.random.stateless_uniform([], seed, 0, ny, dtype=tf.int32) * a
    ox = tf.random.stateless_uniform([], seed + 1, 0, nx, dtype=tf.int32) * a
    out = {}
    for key in ef.IMAGE_KEYS:
        out[key] = ex[key][oy : oy + crop, ox : ox + crop]
        out[key].set_shape([crop, crop, 3])
        for s in scales:
            lvl = ex[f"{key}_x{s}"][oy // s : oy // s + crop // s, ox // s : ox // s + crop // s]
            lvl.set_shape([crop // s, crop // s, 1])
            out[f"{key}_x{s}"] = lvl
    return out


def _flip(ex: Dict[str, tf.Tensor], axis: int, do: tf.Tensor) -> Dict[str, tf.Tensor]:
    return {k: tf.cond(do, lambda v=v: tf.reverse(v, [axis]), lambda v=v: v) for k, v in ex.items()}


def training_element(ex: Dict[str, tf.Tensor], cfg: DataConfig, seed: tf.Tensor) -> Dict[str, object]:
    """Crop, flip, scale to [-1, 1], add the guidance noise, build the regression targets.

    All randomness is stateless, from `seed` (int64 [2]): an input pipeline made of stateless
    ops can be checkpointed (tf.data refuses to serialize stateful random ops), so a resumed
    training run continues with exactly the crops and noise it would have seen."""
    s = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 4)
    c = random_aligned_crop(ex, cfg.crop_size, cfg.scales, seed=s[0])
    if cfg.random_flips:
        flips = tf.random.stateless_uniform([2], s[1]) < 0.5
        c = _flip(c, 1, flips[0])  # left-right
        c = _flip(c, 0, flips[1])  # up-down
    if cfg.degrade:
        from trainer.degrade import degrade_pair

        c["sharp"], c["blurry"] = degrade_pair(c["sharp"], c["blurry"], s[3])
        for key in ef.IMAGE_KEYS:
            for k, level in luma_levels(c[key][None], cfg.scales).items():
                c[f"{key}_x{k}"] = level[0]
    x, y = _to_signed(c["sharp"]), _to_signed(c["blurry"])
    phi, target = {}, {}
    noise_seeds = tf.random.experimental.stateless_split(s[2], len(cfg.scales))
    for i, k in enumerate(cfg.scales):
        clean = _to_signed(c[f"blurry_x{k}"])
        if cfg.guidance_noise_sigma > 0:
            clean = clean + cfg.guidance_noise_sigma * tf.random.stateless_normal(
                tf.shape(clean), noise_seeds[i])
        phi[k] = clean
        if cfg.target == "gray":
            target[k] = _to_signed(c[f"sharp_x{k}"])
        else:  # box-downsampled RGB of x; exact because the crop is aligned to 8
            target[k] = tf.nn.avg_pool2d(x[None], k, k, "VALID")[0]
    return {"x": x, "y": y, "phi": phi, "target": target}


def training_dataset(cfg: DataConfig, batch_size: int, *, input_context=None,
                     seed: Optional[int] = None, repeat: bool = True) -> tf.data.Dataset:
    """Batches of training elements (batch_size is per replica under tf.distribute). A
    shard whose first record does not read, or a crop larger than the images, is a one-line
    ValueError here (check_crop_fits), before any training step."""
    check_crop_fits(cfg)
    files = split_files(cfg.examples_dir, cfg.train_split)
    ds = tf.data.Dataset.from_tensor_slices(list(files))
    pipelines = input_context.num_input_pipelines if input_context is not None else 1
    # several input pipelines (one per worker): each reads its own files, or, with fewer files
    # than pipelines (small sets), every file and keeps every n-th record of its own (seeded)
    # stream: a sample of the records rather than a partition, at n times the reading
    by_file = pipelines > 1 and len(files) >= pipelines
    if by_file:
        ds = ds.shard(pipelines, input_context.input_pipeline_id)
    ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type="GZIP"),
        cycle_length=cfg.interleave_cycle, num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=seed is not None)
    if pipelines > 1 and not by_file:
        ds = ds.shard(pipelines, input_context.input_pipeline_id)
    ds = ds.shuffle(cfg.shuffle_buffer, seed=seed)
    base = seed if seed is not None else int(np.random.SeedSequence().generate_state(1)[0])
    ds = ds.enumerate().map(
        lambda i, s: training_element(parse_full(s, cfg.scales), cfg,
                                      tf.stack([tf.constant(base, tf.int64), i])),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=seed is not None)
    ds = ds.batch(batch_size, drop_remainder=True)
    return ds.prefetch(tf.data.AUTOTUNE)
