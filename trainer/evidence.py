"""Evidence that the model learns: train a config, then measure on held-out data.

    python -m trainer.evidence --examples DIR --out DIR [--config tiny] [--steps 600]

Writes OUT/evidence.json and OUT/learning_curves.png:
- the noise loss L_DPM (L1) over training, first vs last logged value;
- per pyramid level, the guidance regression error MSE(R_k(H_k(phi_k(y))), phi_k(x)) of the
  EMA model on every example of a held-out split, against the identity baseline
  MSE(phi_k(y), phi_k(x)) (the clean blurry level taken as the prediction of the sharp one).
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Dict

import numpy as np
import tensorflow as tf

from core.artifacts import CHECKPOINTS_DIR
from trainer import data as data_lib
from trainer import experiments
from trainer import train as train_lib


def guidance_errors(model, examples_dir: str, split: str, scales, target: str) -> Dict[int, dict]:
    """Mean over the split's examples of the model's and the identity's MSE per scale."""
    files = data_lib.split_files(examples_dir, split)
    ds = tf.data.TFRecordDataset(files, compression_type="GZIP").map(
        lambda s: data_lib.parse_full(s, scales))
    sums = {k: {"model": 0.0, "identity": 0.0} for k in scales}
    n = 0
    m = model.multiple
    for ex in ds:
        # the largest area of the image that is a multiple of the UNet's factor (and so covers
        # whole cells of every pyramid level)
        hh, ww = (int(ex["height"]) // m) * m, (int(ex["width"]) // m) * m
        phi = {k: ex[f"blurry_x{k}"][None, : hh // k, : ww // k] * 2.0 - 1.0 for k in scales}
        if target == "gray":
            tgt = {k: ex[f"sharp_x{k}"][None, : hh // k, : ww // k] * 2.0 - 1.0 for k in scales}
        else:
            x = ex["sharp"][None, :hh, :ww] * 2.0 - 1.0
            tgt = {k: tf.nn.avg_pool2d(x, k, k, "VALID") for k in scales}
        _, reg = model.guide(phi, training=False)
        for k in scales:
            sums[k]["model"] += float(tf.reduce_mean(tf.square(reg[k] - tgt[k])))
            if phi[k].shape[-1] == tgt[k].shape[-1]:
                sums[k]["identity"] += float(tf.reduce_mean(tf.square(phi[k] - tgt[k])))
        n += 1
    return {k: {name: v / n for name, v in d.items()} | {"examples": n} for k, d in sums.items()}


def plot(history, errors, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].plot(steps, [h["loss_dpm"] for h in history], label="L_DPM (L1 on eps)")
    axes[0].set_xlabel("step"), axes[0].set_title("noise loss"), axes[0].legend()
    for k in sorted(errors):
        line, = axes[1].plot(steps, [h[f"loss_guidance_x{k}"] for h in history], label=f"x{k} MSE (train batch)")
        axes[1].axhline(errors[k]["identity"], color=line.get_color(), ls="--", lw=1,
                        label=f"x{k} identity (held-out)")
        axes[1].plot([steps[-1]], [errors[k]["model"]], "o", color=line.get_color())
    axes[1].set_yscale("log"), axes[1].set_xlabel("step")
    axes[1].set_title("guidance regression (dots: held-out, EMA)"), axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--config", default="tiny")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--learning-rate", type=float, default=None)
    p.add_argument("--eval-split", default="test")
    a = p.parse_args(argv)
    train_over = {"steps": a.steps}
    if a.learning_rate:
        train_over["learning_rate"] = a.learning_rate
    exp = experiments.get(a.config, train=train_over)
    result = train_lib.train(exp, a.examples, a.out, progress=True)
    from trainer.export import ema_model

    trainer = train_lib.Trainer(exp, a.out)
    ckpt = tf.train.Checkpoint(ema=trainer.ema)
    ckpt.restore(tf.train.latest_checkpoint(os.path.join(a.out, CHECKPOINTS_DIR))).expect_partial()
    model = ema_model(trainer)
    m = exp.model
    errors = guidance_errors(model, a.examples, a.eval_split, m.guidance_scales, m.guidance_target)
    history = result["history"]
    evidence = {
        "experiment": exp.name, "steps": result["step"], "eval_split": a.eval_split,
        "noise_loss_first": history[0]["loss_dpm"], "noise_loss_last": history[-1]["loss_dpm"],
        "noise_loss_last_10_mean": float(np.mean([h["loss_dpm"] for h in history[-10:]])),
        "guidance": {f"x{k}": v for k, v in errors.items()},
        "train_seconds": history[-1]["seconds"],
    }
    with open(os.path.join(a.out, "evidence.json"), "w") as f:
        json.dump(evidence, f, indent=2)
    plot(history, errors, os.path.join(a.out, "learning_curves.png"))
    print(json.dumps(evidence, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
