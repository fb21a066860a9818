"""Is a trained UNet alive? Per-block activation statistics and how much F depends on its input.

    python -m benchmarks.activation_probe --run-dir RUN_DIR --image BLURRY.png [--gamma 1e-4]

RUN_DIR is a `deblur train` output folder (experiment.json, checkpoints/). The UNet of its
latest checkpoint (raw weights, not the EMA) is run once on a 128 x 128 crop of the image at
the given noise level (x_t = sqrt(gamma) y + sqrt(1 - gamma) eps, the guidance from y), and
this prints, for every residual block's output and the read-out before conv_out, the mean,
the standard deviation and the spatial standard deviation (over pixels, averaged over
channels). Then F (conv_out, the preconditioned output) for two different noise draws and for
a second image crop: a dead network gives the same F whatever its input.

Why it exists: on 2026-12-03 the no-normalisation UNet (model.norm "none") was found dead
after training (docs/experiments.md): its decoder activations had drifted to -1e6, the SiLU
before conv_out returned 0 everywhere and F was a constant, so every sample was the blurry
input. The training loss does not show this (a constant F is the L1 median of the target);
this does. Not a test: a diagnostic of a run.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np

from core.artifacts import CHECKPOINTS_DIR, EXPERIMENT_FILE


def _load(run_dir: str):
    import tensorflow as tf

    from trainer import experiments
    from trainer import train as train_lib

    with open(os.path.join(run_dir, EXPERIMENT_FILE)) as f:
        exp = experiments.Experiment.from_dict(json.load(f))
    trainer = train_lib.Trainer(exp, "", None)
    items = {"unet": trainer.model.unet}
    if trainer.model.guidance_net is not None:
        items["guidance"] = trainer.model.guidance_net
    path = tf.train.latest_checkpoint(os.path.join(run_dir, CHECKPOINTS_DIR))
    if path is None:
        raise ValueError(f"no checkpoint under {run_dir}/{CHECKPOINTS_DIR}")
    tf.train.Checkpoint(**items).restore(path).expect_partial()
    return exp, trainer.model, path


def probe(run_dir: str, image: str, gamma: float = 1e-4, size: int = 128) -> dict:
    import keras
    import tensorflow as tf
    from PIL import Image

    from trainer.diffusion import add_noise
    from trainer.sampling import phi_from_image

    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"gamma must be in (0, 1], got {gamma}")
    exp, model, ckpt = _load(run_dir)
    img = np.asarray(Image.open(image).convert("RGB"), np.float32) / 255.0
    m = model.multiple
    size = size // m * m
    if img.shape[0] < 2 * size or img.shape[1] < size:
        raise ValueError(f"{image}: need at least {2 * size} x {size} pixels, got {img.shape[:2]}")
    crops = [img[:size, :size], img[size:2 * size, :size]]
    unet = model.unet
    names = [l.name for l in unet.layers
             if l.name.endswith("_out") and l.name.startswith(("enc", "mid", "dec"))]
    names += ["out_act", "conv_out"]
    sub = keras.Model(unet.inputs, [unet.get_layer(n).output for n in names])

    def run(crop01, seed):
        y01 = tf.constant(crop01[None])
        y = y01 * 2.0 - 1.0
        eps = tf.random.stateless_normal(tf.shape(y), [seed, 0])
        x_t = add_noise(y, tf.constant([gamma]), eps)
        feats, _ = model.guide(phi_from_image(y01, exp.model.guidance_scales))
        inputs = {"x_t": x_t, "gamma": tf.constant([gamma])}
        if exp.model.input_concat:
            inputs["y"] = y
        inputs.update({f"guide_x{k}": v for k, v in feats.items()})
        return [np.asarray(o, np.float64) for o in sub(inputs)]

    a, b, c = run(crops[0], 1), run(crops[0], 2), run(crops[1], 1)
    layers_ = [{"layer": n, "mean": float(o.mean()), "std": float(o.std()),
                "spatial_std": float(o.std(axis=(1, 2)).mean())} for n, o in zip(names, a)]
    f_a, f_b, f_c = a[-1], b[-1], c[-1]
    scale = float(np.abs(f_a - f_a.mean()).mean()) or 1e-30
    return {"run_dir": run_dir, "checkpoint": ckpt, "image": image, "gamma": gamma,
            "layers": layers_,
            "F_spatial_std": float(f_a.std(axis=(1, 2)).mean()),
            "F_change_other_noise": float(np.abs(f_a - f_b).mean()) / scale,
            "F_change_other_image": float(np.abs(f_a - f_c).mean()) / scale}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run-dir", required=True)
    p.add_argument("--image", required=True, help="a blurry image, at least 256 x 128 pixels")
    p.add_argument("--gamma", type=float, default=1e-4)
    args = p.parse_args(argv)
    r = probe(args.run_dir, args.image, args.gamma)
    print(f"{r['checkpoint']}, gamma {r['gamma']:g}")
    for row in r["layers"]:
        print(f"  {row['layer']:<16} mean {row['mean']:>11.4g}  std {row['std']:>10.4g}  "
              f"spatial std {row['spatial_std']:>10.4g}")
    print(f"F: spatial std {r['F_spatial_std']:.4g}; mean |change| relative to its spread: "
          f"{r['F_change_other_noise']:.3g} for another noise draw, "
          f"{r['F_change_other_image']:.3g} for another image crop")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
