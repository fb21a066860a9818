"""Can the quickstart's network deblur at the quickstart's budget at all? A regression probe.

    python -m benchmarks.regression_probe --examples EXAMPLES [--config tiny] [--set ...] \
        [--steps 2000] [--images 4] [--name NAME]

Issue 11 asks for a local model that beats its blurry input in 15 minutes on 2 CPU cores. The
diffusion model (benchmarks/learning_curves.py, denoiser_probe.py) has not. This probe asks the
question one level down: the same UNet, guidance and data pipeline as the experiment, trained
for the same steps and batch as a plain regressor of the blur residual, x - y = G([0, y],
gamma_min, guidance) with an L1 loss (plus the same guidance loss L_guidance). This is the
prediction the diffusion model needs at its noisiest levels (E[x | y]). The output is y + G on
the full test images; PSNR/LPIPS against the sharp image, next to the input's.

If this regressor does not beat the input either, the 15-minute budget (data, steps, width)
is what binds, not the diffusion formulation; if it does, the formulation's use of the budget
is. Not a test: a measurement, written to benchmarks/results/regression_probe_<name>.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def run(examples: str, config: str, overrides: dict, steps: int, images: int, log=print) -> dict:
    import tensorflow as tf

    from trainer import experiments
    from trainer import train as train_lib
    from trainer.sampling import phi_from_image

    overrides = {k: dict(v) for k, v in overrides.items()}
    # G sees [0, y] and its last conv IS the estimate of x - y: model.output "eps" (the raw
    # conv output). Under "preconditioned" the model's output is eps_hat = -sd sqrt(gamma_min)
    # F / sqrt(q), about 0.0015 F for the local preset, and a probe fitting that to x - y asks
    # F for values near 100 (regression_probe_local_2000 was taken so).
    overrides.setdefault("model", {}).update(input_residual=False, output="eps")
    overrides.setdefault("train", {})["dpm_loss_weighting"] = "eps"  # L_DPM is not trained here
    exp = experiments.get(config, **overrides).replace(train={"steps": steps})
    trainer = train_lib.Trainer(exp, "", None)  # nothing is written
    model = trainer.model
    gamma_min = 1e-4  # the network's "pure noise" level: x_t carries nothing of x

    @tf.function
    def step(batch):
        x, y = batch["x"], batch["y"]
        g = tf.fill([tf.shape(x)[0]], gamma_min)
        with tf.GradientTape() as tape:
            pred, regs = model(tf.zeros_like(x), y, g, batch["phi"], training=True)
            loss_x = tf.reduce_mean(tf.abs(pred - (x - y)))
            loss_g = tf.add_n([tf.reduce_mean(tf.square(regs[k] - batch["target"][k]))
                               for k in sorted(regs)]) / len(regs) if regs else 0.0
            loss = loss_x + loss_g
        trainer.apply_gradients(tape.gradient(loss, trainer.variables))  # Adam, then the EMA
        return loss_x

    it = iter(trainer.dataset(examples))  # the default strategy: plain batches
    t0, history = time.time(), []
    for s in range(1, steps + 1):
        lx = float(step(next(it)))
        if s % max(1, steps // 20) == 0:
            history.append({"step": s, "loss_x": lx, "seconds": round(time.time() - t0, 1)})
            log(f"step {s}: L1(x - y) {lx:.4f}, {time.time() - t0:.0f} s")
    train_s = time.time() - t0
    for e, v in zip(trainer.ema, trainer.variables):  # evaluate the EMA, as the export does
        v.assign(e)
    result = {"experiment": exp.to_dict(), "steps": steps, "train_seconds": round(train_s, 1),
              "history": history}

    def predict(blurry_uint8):  # y + G([0, y], gamma_min, guidance), uint8
        y01 = tf.constant(blurry_uint8[None].astype(np.float32) / 255.0)
        y = y01 * 2.0 - 1.0
        phi = phi_from_image(y01, exp.model.guidance_scales)
        pred, _ = model(tf.zeros_like(y), y, tf.constant([gamma_min]), phi, training=False)
        return np.clip((y + pred).numpy()[0] * 0.5 + 0.5, 0, 1)

    result["domains"] = score_splits(examples, images, predict, "regression", log)
    return result


def score_splits(examples: str, images: int, predict, label: str, log=print) -> dict:
    """{split: {"n", "domain", "input": PSNR/SSIM/LPIPS/NIQE of the blurry image, label: of
    predict(blurry uint8) -> [0, 1] float image}} over the first `images` test images of every
    evaluation split, scored as the evaluator scores (components/evaluator)."""
    from components.evaluator import evaluate as ev

    scorer = ev.Scorer()
    _, data, domain_of = ev.select_data(examples, ev.EvalConfig(max_images_per_split=images))
    domains = {}
    for split, items in data.items():
        rows_in, rows_out = [], []
        for item in items:
            out = np.round(predict(item["blurry"]) * 255).astype(np.uint8)
            rows_out.append(scorer(out, item["sharp"]))
            rows_in.append(scorer(item["blurry"], item["sharp"]))
        d = domains[split] = {"n": len(items), "domain": domain_of[split],
                              "input": ev._mean(rows_in), label: ev._mean(rows_out)}
        log(f"{split}: {label} PSNR {d[label]['psnr']:.2f} (input {d['input']['psnr']:.2f}), "
            f"LPIPS {d[label]['lpips']:.4f} (input {d['input']['lpips']:.4f})")
    return domains


def write_results(base: str, result: dict, heading: str, caption: str, label: str) -> None:
    """base.json (the result) and base.md: heading, caption and the per-split table of the
    input's and `label`'s PSNR and LPIPS (result["domains"], as score_splits returns it)."""
    os.makedirs(os.path.dirname(base) or ".", exist_ok=True)
    with open(base + ".json", "w") as f:
        json.dump(result, f, indent=2, sort_keys=True)
    lines = [f"# {heading}", "", caption, "",
             f"| split | n | input PSNR | {label} PSNR | input LPIPS | {label} LPIPS |",
             "|---|---|---|---|---|---|"]
    for split, d in result["domains"].items():
        lines.append(f"| {split} | {d['n']} | {d['input']['psnr']:.2f} | "
                     f"{d[label]['psnr']:.2f} | {d['input']['lpips']:.4f} | "
                     f"{d[label]['lpips']:.4f} |")
    with open(base + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {base}.json, {base}.md")


def main(argv=None) -> int:
    from benchmarks.learning_curves import _overrides

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--examples", required=True)
    p.add_argument("--config", default="tiny")
    p.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--name", default="tiny")
    p.add_argument("--results-dir", default=os.path.join("benchmarks", "out"))
    a = p.parse_args(argv)
    result = run(a.examples, a.config, _overrides(a.set), a.steps, a.images)
    write_results(os.path.join(a.results_dir, f"regression_probe_{a.name}"), result,
                  f"Regression probe: {a.name} ({a.steps} steps, {result['train_seconds']:.0f} s)",
                  "The experiment's UNet trained as a regressor of x - y from [0, y] (L1), same "
                  "guidance, data and batch; EMA weights; full test images.", "regression")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
