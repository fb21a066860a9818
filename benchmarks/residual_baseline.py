"""The simplest baseline at equal compute: a plain residual UNet regressor next to the icDPM.

    python -m benchmarks.residual_baseline --examples EXAMPLES [--config local] [--set ...] \
        [--steps 2000] [--images 8] [--name NAME]

Issue 24 measured that a plain residual UNet (space-to-depth by 2, 48 then 96 channels, dilated
residual blocks, output = input + f(input), mixed bfloat16, Adam 1e-3 with cosine decay, L1)
beats the blurry input in-domain by 0.46 dB in 10 minutes of these 2 cores, where the icDPM's
one-step estimate and the same UNet trained as a plain regressor (benchmarks/regression_probe.py)
gain ~0.2 dB in as long. This is that baseline, written from the issue's description, trained
on exactly the icDPM experiment's training input (trainer/train.py's dataset: the same crops,
flips and `data.degrade`), scored like the evaluator scores (PSNR, LPIPS-Alex, full test
images). The switches below isolate what differs from the icDPM's UNet:

  --norm group     GroupNorm after each conv of a residual block, as the icDPM's UNet has
  --beta1 0.5      the icDPM presets' Adam beta1 (the baseline: 0.9)
  --constant-lr    no cosine decay (the icDPM presets: warm-up, then constant)

Not a test: a measurement, written to benchmarks/results/residual_baseline_<name>.{json,md}.
"""
from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np


def build(width: int = 48, norm: str = "none", dilations=(1, 2, 4, 8)):
    """y in [-1, 1] (B, H, W, 3) -> y + f(y). H, W multiples of 4."""
    import keras
    import tensorflow as tf
    from keras import layers

    def normalise(h):
        if norm == "group":
            return layers.GroupNormalization(groups=8, epsilon=1e-5)(h)
        return h

    def block(h, ch, dilation):
        r = layers.Conv2D(ch, 3, padding="same", dilation_rate=dilation)(h)
        r = layers.Activation("gelu")(normalise(r))
        r = layers.Conv2D(ch, 3, padding="same")(r)
        return layers.Add()([h, normalise(r)])

    y = keras.Input((None, None, 3))
    h = layers.Lambda(lambda t: tf.nn.space_to_depth(t, 2))(y)
    h1 = layers.Conv2D(width, 3, padding="same")(h)
    for d in dilations[:2]:
        h1 = block(h1, width, d)
    h2 = layers.Conv2D(2 * width, 3, strides=2, padding="same")(h1)
    for d in dilations:
        h2 = block(h2, 2 * width, d)
    u = layers.UpSampling2D(2, interpolation="bilinear")(h2)
    u = layers.Conv2D(width, 3, padding="same")(layers.Concatenate()([u, h1]))
    for d in dilations[:2]:
        u = block(u, width, d)
    out = layers.Conv2D(12, 3, padding="same", dtype="float32")(u)
    out = layers.Lambda(lambda t: tf.nn.depth_to_space(t, 2), dtype="float32")(out)
    return keras.Model(y, layers.Add(dtype="float32")([y, out]))


def run(examples: str, config: str, overrides: dict, steps: int, images: int, norm: str,
        beta1: float, cosine: bool, width: int, log=print) -> dict:
    import keras
    import tensorflow as tf

    from benchmarks.regression_probe import score_splits
    from trainer import experiments
    from trainer import train as train_lib

    exp = experiments.get(config, **overrides).replace(train={"steps": steps})
    data_trainer = train_lib.Trainer(exp, "", None)  # its dataset(): the icDPM's training input
    it = iter(data_trainer.dataset(examples))
    policy = "mixed_bfloat16" if data_trainer.precision == "bfloat16" else "float32"
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = build(width, norm)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    lr0 = 1e-3

    def lr():
        s = float(opt.iterations.numpy())
        return lr0 * (0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))) if cosine else 1.0)

    opt = keras.optimizers.Adam(learning_rate=lr0, beta_1=beta1)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.abs(tf.cast(model(y, training=True), tf.float32) - x))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    n_params = int(sum(np.prod(v.shape) for v in model.trainable_variables))
    log(f"{n_params} parameters, {policy}, norm {norm}, beta1 {beta1}, cosine {cosine}")
    t0, history = time.time(), []
    for s in range(1, steps + 1):
        batch = next(it)
        opt.learning_rate.assign(lr())
        loss = float(step(batch["x"], batch["y"]))
        if s % max(1, steps // 20) == 0:
            history.append({"step": s, "loss": loss, "seconds": round(time.time() - t0, 1)})
            log(f"step {s}: L1 {loss:.4f}, {time.time() - t0:.0f} s")
    train_s = time.time() - t0
    result = {"parameters": n_params, "policy": policy, "norm": norm, "beta1": beta1,
              "cosine": cosine, "width": width, "experiment_data": exp.to_dict()["data"],
              "steps": steps, "train_seconds": round(train_s, 1), "history": history}

    def predict(blurry_uint8):  # y + f(y), [0, 1]
        y = tf.constant(blurry_uint8[None].astype(np.float32) / 127.5 - 1.0)
        return np.clip(model(y, training=False).numpy()[0] * 0.5 + 0.5, 0, 1)

    result["domains"] = score_splits(examples, images, predict, "baseline", log)
    return result


def main(argv=None) -> int:
    from benchmarks.learning_curves import _overrides
    from benchmarks.regression_probe import write_results

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--examples", required=True)
    p.add_argument("--config", default="local")
    p.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--norm", choices=("none", "group"), default="none")
    p.add_argument("--beta1", type=float, default=0.9)
    p.add_argument("--constant-lr", action="store_true")
    p.add_argument("--width", type=int, default=48)
    p.add_argument("--name", default="local")
    p.add_argument("--results-dir", default=os.path.join("benchmarks", "out"))
    a = p.parse_args(argv)
    result = run(a.examples, a.config, _overrides(a.set), a.steps, a.images, a.norm, a.beta1,
                 not a.constant_lr, a.width)
    write_results(os.path.join(a.results_dir, f"residual_baseline_{a.name}"), result,
                  f"Residual UNet baseline: {a.name} ({a.steps} steps, "
                  f"{result['train_seconds']:.0f} s, {result['parameters']} parameters)",
                  f"norm {a.norm}, Adam beta1 {a.beta1}, cosine decay {not a.constant_lr}, width "
                  f"{a.width}; the {a.config} experiment's training input; full test images.",
                  "baseline")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
