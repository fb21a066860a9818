"""Export: a SavedModel that deblurs an RGB image of any size with the EMA weights.

Signatures (load with tf.saved_model.load in a process that never imported this project):
  serving_default(image: uint8 [H, W, 3]) -> {"image": uint8 [H, W, 3]}
      samples with the baked defaults (DEFAULT_SAMPLING, or the setting the evaluator chose)
  deblur(image, steps: int32, max_noise: float32, samples: int32, seed: int64 [2])
      -> {"image": uint8 [H, W, 3]}    the sampling settings as inputs; samples > 1 averages
      K independent samples ("SA" in the paper)
The image is padded (symmetric) to the UNet's multiple and cropped back; the guidance input
phi_k(y) is the box-averaged BT.601 luma of the padded image, as in training (no noise).
"""
from __future__ import annotations

import json
import os
from typing import Optional

import tensorflow as tf

from deblur import example_format as ef
from trainer import sampling

DEFAULT_SAMPLING = {"steps": 50, "max_noise": 1.0, "samples": 1}


def phi_from_image(img01: tf.Tensor, scales) -> dict:
    """{k: (B, H/k, W/k, 1)} box-averaged luma in [-1, 1] of a (B, H, W, 3) image in [0, 1]."""
    w = tf.constant(ef.LUMA_WEIGHTS, img01.dtype)
    y = tf.reduce_sum(img01 * w, axis=-1, keepdims=True)
    return {k: tf.nn.avg_pool2d(y, k, k, "VALID") * 2.0 - 1.0 for k in scales}


def symmetric_pad_end(x: tf.Tensor, size, axis: int) -> tf.Tensor:
    """x extended along `axis` to `size` by mirroring at its end: tf.pad's SYMMETRIC mode, which
    refuses a padding larger than the side (a 3-pixel side padded to 8); this repeats it."""
    n = tf.shape(x)[axis]
    i = tf.range(size) % (2 * n)
    return tf.gather(x, tf.where(i < n, i, 2 * n - 1 - i), axis=axis)


class DeblurModule(tf.Module):
    def __init__(self, model, defaults: Optional[dict] = None):
        super().__init__()
        self.model = model
        self._multiple = int(model.multiple)
        self._scales = tuple(model.cfg.guidance_scales)
        d = {**DEFAULT_SAMPLING, **(defaults or {})}
        self._defaults = (int(d["steps"]), float(d["max_noise"]), int(d["samples"]))

    def _deblur(self, image, steps, max_noise, samples, seed):
        tf.debugging.assert_positive(samples, message="samples must be >= 1")
        h, w = tf.shape(image)[0], tf.shape(image)[1]
        m = self._multiple
        ph, pw = (m - h % m) % m, (m - w % m) % m
        x01 = tf.image.convert_image_dtype(image, tf.float32)
        x01 = symmetric_pad_end(symmetric_pad_end(x01, h + ph, 0), w + pw, 1)[None]
        y = x01 * 2.0 - 1.0
        phi = phi_from_image(x01, self._scales)
        seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), samples)

        def body(i, acc):
            out = sampling.ddpm_sample(self.model, y, phi, steps, max_noise, seeds[i])
            return i + 1, tf.ensure_shape(acc + out, y.shape)

        _, total = tf.while_loop(lambda i, _: i < samples, body, (tf.constant(0), tf.zeros_like(y)))
        mean = total / tf.cast(samples, tf.float32)
        out01 = (mean[0, :h, :w] + 1.0) / 2.0
        return {"image": tf.image.convert_image_dtype(out01, tf.uint8, saturate=True)}

    @tf.function(input_signature=[
        tf.TensorSpec([None, None, 3], tf.uint8, name="image"),
        tf.TensorSpec([], tf.int32, name="steps"),
        tf.TensorSpec([], tf.float32, name="max_noise"),
        tf.TensorSpec([], tf.int32, name="samples"),
        tf.TensorSpec([2], tf.int64, name="seed")])
    def deblur(self, image, steps, max_noise, samples, seed):
        return self._deblur(image, steps, max_noise, samples, seed)

    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8, name="image")])
    def serve(self, image):
        steps, max_noise, samples = self._defaults
        return self._deblur(image, tf.constant(steps), tf.constant(max_noise),
                            tf.constant(samples), tf.constant([0, 0], tf.int64))


def ema_model(trainer):
    """A fresh GuidedDenoiser holding the trainer's EMA weights."""
    from trainer.model import GuidedDenoiser

    model = GuidedDenoiser(trainer.exp.model)
    target = model.trainable_variables
    if len(target) != len(trainer.ema):
        raise RuntimeError("EMA and model variables differ in number")
    for v, e in zip(target, trainer.ema):
        if v.shape != e.shape:
            raise RuntimeError(f"EMA shape {e.shape} != variable {v.name} {v.shape}")
        v.assign(tf.cast(e.read_value() if hasattr(e, "read_value") else e, v.dtype))
    return model


def export_saved_model(trainer, path: str, defaults: Optional[dict] = None) -> str:
    module = DeblurModule(ema_model(trainer), defaults)
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve,
                                                  "deblur": module.deblur})
    with tf.io.gfile.GFile(os.path.join(path, "deblur.json"), "w") as f:
        json.dump({"experiment": trainer.exp.to_dict(), "multiple": module._multiple,
                   "default_sampling": dict(zip(("steps", "max_noise", "samples"), module._defaults))},
                  f, indent=2, sort_keys=True)
    return path
