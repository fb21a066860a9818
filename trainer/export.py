"""Export: a SavedModel that deblurs an RGB image of any size with the EMA weights.

Signatures (load with tf.saved_model.load in a process that never imported this project):
  serving_default(image: uint8 [H, W, 3]) -> {"image": uint8 [H, W, 3]}
      samples with the setting held in the default_* variables: default_sampling(model) at
      export; in a registered copy, the evaluator's choice (set_serving_setting, run by the
      pusher). deblur.json's sampling_chosen_by says which ("export default" / "evaluator")
  deblur(image, steps: int32, max_noise: float32, samples: int32, seed: int64 [2],
         deterministic: bool) -> {"image": uint8 [H, W, 3]}
      the sampling settings as inputs (trainer/sampling.py); samples > 1 averages K
      independent samples ("SA" in the paper); deterministic selects DDIM over DDPM
  deblur_batch(images: uint8 [B, H, W, 3], steps, max_noise, samples, seed, deterministic)
      -> uint8 [B, H, W, 3]   a tf.function attribute (not a signature): same-size batches
  guide_features([phi_k]), predict_noise(x_t, y, gamma, features): one step's pieces, which
      sampling.SavedModelDenoiser wraps for tiled sampling (sampling.sample_tiled)
The image is padded (symmetric) to the UNet's multiple and cropped back; the guidance input
phi_k(y) is the box-averaged BT.601 luma of the padded image, as in training (no noise).
"""
from __future__ import annotations

import json
from typing import Optional

import tensorflow as tf

from core.artifacts import model_info_path, read_json
from trainer import sampling
from trainer.setting import EVALUATOR, EXPORT_DEFAULT

# The serving setting of a model no evaluation has seen yet (a Trainer's output; `deblur
# predict` on it says so). The paper's (section C.2) for its eps-output models; for the
# preconditioned output, the evaluator's pick for the local experiment at steps 4000 and 5425
# (docs/experiments.md): from pure noise, DDPM T20, the mean of 4 samples. The eps-output tiny
# model returns noise from pure noise (14.95 dB against its input's 19.88 at T50): run it
# through the evaluator, whose grid has its input-based starts.
DEFAULT_SAMPLING = {"sampler": "ddpm", "steps": 50, "max_noise": 1.0, "samples": 1}
PRECONDITIONED_SAMPLING = {"sampler": "ddpm", "steps": 20, "max_noise": 1.0, "samples": 4}


def default_sampling(model_cfg) -> dict:
    """The export-time serving setting of a model of this ModelConfig."""
    return dict(PRECONDITIONED_SAMPLING if model_cfg.output == "preconditioned"
                else DEFAULT_SAMPLING)

# The sampling inputs of deblur_batch and the deblur signature, after the image(s).
_SETTING_SPECS = (tf.TensorSpec([], tf.int32, name="steps"),
                  tf.TensorSpec([], tf.float32, name="max_noise"),
                  tf.TensorSpec([], tf.int32, name="samples"),
                  tf.TensorSpec([2], tf.int64, name="seed"),
                  tf.TensorSpec([], tf.bool, name="deterministic"))


class DeblurModule(tf.Module):
    def __init__(self, model, defaults: Optional[dict] = None):
        super().__init__()
        self.model = model
        self._multiple = int(model.multiple)
        d = sampling.SamplingSetting(**{**default_sampling(model.cfg), **(defaults or {})})
        # serving_default's setting, as variables: set_serving_setting() rewrites them in a
        # copy (the pusher stores the evaluator's choice), no model code needed
        self.default_steps = tf.Variable(d.steps, dtype=tf.int32, trainable=False)
        self.default_max_noise = tf.Variable(d.max_noise, dtype=tf.float32, trainable=False)
        self.default_samples = tf.Variable(d.samples, dtype=tf.int32, trainable=False)
        self.default_deterministic = tf.Variable(d.sampler == "ddim", trainable=False)
        # The pieces of one sampling step, for tiled sampling without the model code
        # (sampling.SavedModelDenoiser): the guidance once per tile, the noise prediction.
        cfg = model.cfg
        self._scales = tuple(cfg.guidance_scales) if model.guidance_net is not None else ()
        self.unet_multiple = tf.Variable(self._multiple, dtype=tf.int32, trainable=False)
        self.guidance_scales = tf.Variable(list(self._scales) or [0], dtype=tf.int32,
                                           trainable=False)  # [0]: no guidance network
        guide_specs = ([tf.TensorSpec([None, None, None, cfg.guidance_width], tf.float32)]
                       * len(self._scales)
                       + [tf.TensorSpec([None, None, None, cfg.regression_channels], tf.float32)]
                       * len(self._scales))
        self.guide_features = tf.function(self._guide_features, input_signature=[
            [tf.TensorSpec([None, None, None, 1], tf.float32, name=f"phi_x{k}")
             for k in self._scales]])
        self.predict_noise = tf.function(self._predict_noise, input_signature=[
            tf.TensorSpec([None, None, None, 3], tf.float32, name="x_t"),
            tf.TensorSpec([None, None, None, 3], tf.float32, name="y"),
            tf.TensorSpec([None], tf.float32, name="gamma"), guide_specs])

    def _guide_features(self, phis):
        """[H_k(phi_k) for k] + [R_k(H_k(phi_k)) for k] in guidance_scales order."""
        if not self._scales:
            return []
        feats, regs = self.model.guide(dict(zip(self._scales, phis)), training=False)
        return [feats[k] for k in self._scales] + [regs[k] for k in self._scales]

    def _predict_noise(self, x_t, y, gamma, guidance):
        n = len(self._scales)
        packed = (dict(zip(self._scales, guidance[:n])), dict(zip(self._scales, guidance[n:])))
        return self.model.denoise(x_t, y, gamma, packed, training=False)

    @property
    def default_setting(self) -> sampling.SamplingSetting:
        return sampling.SamplingSetting(
            "ddim" if bool(self.default_deterministic.numpy()) else "ddpm",
            int(self.default_steps.numpy()), float(self.default_max_noise.numpy()),
            int(self.default_samples.numpy()))

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images"),
                                  *_SETTING_SPECS])
    def deblur_batch(self, images, steps, max_noise, samples, seed, deterministic):
        """A batch of same-size images (what the evaluator calls); the signatures below call
        this one function, so the sampler is traced once."""
        return sampling.deblur_images(self.model, images, steps, max_noise, samples, seed,
                                      deterministic)

    def _deblur(self, image, steps, max_noise, samples, seed, deterministic):
        return {"image": self.deblur_batch(image[None], steps, max_noise, samples, seed,
                                           deterministic)[0]}

    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8, name="image"),
                                  *_SETTING_SPECS])
    def deblur(self, image, steps, max_noise, samples, seed, deterministic):
        return self._deblur(image, steps, max_noise, samples, seed, deterministic)

    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8, name="image")])
    def serve(self, image):
        return self._deblur(image, self.default_steps, self.default_max_noise,
                            self.default_samples, tf.constant([0, 0], tf.int64),
                            self.default_deterministic)


def ema_model(trainer):
    """A fresh float32 GuidedDenoiser holding the trainer's EMA weights (its variables are
    float32 under mixed precision too): the export takes and returns the same dtypes, and
    computes the same way, whatever the training's policy."""
    from trainer.model import GuidedDenoiser, dtype_policy

    with dtype_policy("float32"):
        model = GuidedDenoiser(trainer.exp.model)
    target = model.trainable_variables
    if len(target) != len(trainer.ema):
        raise RuntimeError("EMA and model variables differ in number")
    for v, e in zip(target, trainer.ema):
        if v.shape != e.shape:
            raise RuntimeError(f"EMA shape {e.shape} != variable {v.name} {v.shape}")
        v.assign(tf.cast(e.read_value() if hasattr(e, "read_value") else e, v.dtype))
    return model


def read_model_info(saved_model_dir: str) -> dict:
    """The export's deblur.json ({} when there is none); one that is not valid JSON is a
    ValueError naming the file (json's own "Expecting value: line 2 column 1" named none)."""
    def read_text(path):
        if not tf.io.gfile.exists(path):
            return None
        with tf.io.gfile.GFile(path) as f:
            return f.read()

    info = read_json(model_info_path(saved_model_dir), read_text, "the model's")
    if info is not None and not isinstance(info, dict):
        raise ValueError(f"the model's {model_info_path(saved_model_dir)} is not a JSON object")
    return info or {}


def set_serving_setting(src: str, dst: str, setting: dict) -> str:
    """A copy of the SavedModel at src whose serving_default samples with `setting`
    ({sampler, steps, max_noise, samples}); deblur.json's default_sampling says the same.
    Loads and re-saves the SavedModel: works without the project's model code."""
    s = sampling.SamplingSetting.from_dict(setting)
    loaded = tf.saved_model.load(src)
    for name in ("default_steps", "default_max_noise", "default_samples", "default_deterministic"):
        if not hasattr(loaded, name):
            raise ValueError(f"{src} has no {name}: exported before serving settings were "
                             "variables; export it again")
    loaded.default_steps.assign(s.steps)
    loaded.default_max_noise.assign(s.max_noise)
    loaded.default_samples.assign(s.samples)
    loaded.default_deterministic.assign(s.sampler == "ddim")
    tf.saved_model.save(loaded, dst, signatures={"serving_default": loaded.serve,
                                                  "deblur": loaded.deblur})
    info = read_model_info(src)
    info["default_sampling"] = s.to_dict()
    info["sampling_chosen_by"] = EVALUATOR
    with tf.io.gfile.GFile(model_info_path(dst), "w") as f:
        json.dump(info, f, indent=2, sort_keys=True)
    return dst


def export_saved_model(trainer, path: str, defaults: Optional[dict] = None,
                       info: Optional[dict] = None) -> str:
    """MODEL_INFO_FILE (deblur.json) beside the SavedModel: the experiment, the step it was
    trained to (what a warm start from it continues), the UNet's multiple, the default
    sampling, and `info`."""
    module = DeblurModule(ema_model(trainer), defaults)
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve,
                                                  "deblur": module.deblur})
    with tf.io.gfile.GFile(model_info_path(path), "w") as f:
        json.dump({**(info or {}), "experiment": trainer.exp.to_dict(),
                   "step": int(trainer.step.numpy()), "multiple": module._multiple,
                   "default_sampling": module.default_setting.to_dict(),
                   "sampling_chosen_by": EXPORT_DEFAULT},
                  f, indent=2, sort_keys=True)
    return path
