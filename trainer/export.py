"""Export: a SavedModel that deblurs an RGB image of any size with the EMA weights.

Signatures (load with tf.saved_model.load in a process that never imported this project):
  serving_default(image: uint8 [H, W, 3]) -> {"image": uint8 [H, W, 3]}
      samples with the baked defaults (DEFAULT_SAMPLING, or the setting the evaluator chose)
  deblur(image, steps: int32, max_noise: float32, samples: int32, seed: int64 [2],
         deterministic: bool) -> {"image": uint8 [H, W, 3]}
      the sampling settings as inputs (trainer/sampling.py); samples > 1 averages K
      independent samples ("SA" in the paper); deterministic selects DDIM over DDPM
  deblur_batch(images: uint8 [B, H, W, 3], steps, max_noise, samples, seed, deterministic)
      -> uint8 [B, H, W, 3]   a tf.function attribute (not a signature): same-size batches
The image is padded (symmetric) to the UNet's multiple and cropped back; the guidance input
phi_k(y) is the box-averaged BT.601 luma of the padded image, as in training (no noise).
"""
from __future__ import annotations

import json
import os
from typing import Optional

import tensorflow as tf

from trainer import sampling

DEFAULT_SAMPLING = {"sampler": "ddpm", "steps": 50, "max_noise": 1.0, "samples": 1}


class DeblurModule(tf.Module):
    def __init__(self, model, defaults: Optional[dict] = None):
        super().__init__()
        self.model = model
        self._multiple = int(model.multiple)
        self.default_setting = sampling.SamplingSetting(**{**DEFAULT_SAMPLING, **(defaults or {})})

    @tf.function(input_signature=[
        tf.TensorSpec([None, None, None, 3], tf.uint8, name="images"),
        tf.TensorSpec([], tf.int32, name="steps"),
        tf.TensorSpec([], tf.float32, name="max_noise"),
        tf.TensorSpec([], tf.int32, name="samples"),
        tf.TensorSpec([2], tf.int64, name="seed"),
        tf.TensorSpec([], tf.bool, name="deterministic")])
    def deblur_batch(self, images, steps, max_noise, samples, seed, deterministic):
        """A batch of same-size images (what the evaluator calls); the signatures below call
        this one function, so the sampler is traced once."""
        return sampling.deblur_images(self.model, images, steps, max_noise, samples, seed,
                                      deterministic)

    def _deblur(self, image, steps, max_noise, samples, seed, deterministic):
        return {"image": self.deblur_batch(image[None], steps, max_noise, samples, seed,
                                           deterministic)[0]}

    @tf.function(input_signature=[
        tf.TensorSpec([None, None, 3], tf.uint8, name="image"),
        tf.TensorSpec([], tf.int32, name="steps"),
        tf.TensorSpec([], tf.float32, name="max_noise"),
        tf.TensorSpec([], tf.int32, name="samples"),
        tf.TensorSpec([2], tf.int64, name="seed"),
        tf.TensorSpec([], tf.bool, name="deterministic")])
    def deblur(self, image, steps, max_noise, samples, seed, deterministic):
        return self._deblur(image, steps, max_noise, samples, seed, deterministic)

    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8, name="image")])
    def serve(self, image):
        d = self.default_setting
        return self._deblur(image, tf.constant(d.steps), tf.constant(d.max_noise),
                            tf.constant(d.samples), tf.constant([0, 0], tf.int64),
                            tf.constant(d.sampler == "ddim"))


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
                   "default_sampling": module.default_setting.to_dict()},
                  f, indent=2, sort_keys=True)
    return path
