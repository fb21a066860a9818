"""Does the trained denoiser deblur? Its one-step estimate of x_0 at each noise level.

    .venv/bin/python -m benchmarks.denoiser_probe --model SAVED_MODEL --examples INGEST_OUTPUT \
        [--splits test,test_ood,train] [--images 4] [--name NAME]

For the first --images pairs (smallest pair ids) of each split and each signal level gamma, the
exported model's noise prediction at x_t gives
    x0_hat = clip((x_t - sqrt(1 - gamma) eps_hat) / sqrt(gamma), -1, 1)      (Ho et al. eq. 15)
from two starts:
  sharp   x_t = sqrt(gamma) x + sqrt(1 - gamma) eps   the training distribution: how much of x
          the network recovers when x_t carries it (high gamma: denoising; low gamma: it must
          come from y and the guidance)
  blurry  x_t = sqrt(gamma) y + sqrt(1 - gamma) eps   the sampler's start (trainer/sampling.py):
          a model that deblurs moves x0_hat above the blurry input's PSNR here
and the guidance regressions R_k against phi_k(x), next to phi_k(y) (the identity). PSNR in
[-1, 1] units (peak-to-peak 2), the mean over images. The same eps draw is used for both
starts. Writes benchmarks/results/denoiser_probe_<name>.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os

from core.artifacts import model_info_path

GAMMAS = (0.999, 0.99, 0.95, 0.8, 0.5, 0.2, 0.05)


def _psnr(a, b) -> float:
    import numpy as np

    return float(np.mean([10 * np.log10(4.0 / np.mean((a[i] - b[i]) ** 2)) for i in range(len(a))]))


def probe(model_dir: str, examples: str, splits, images: int, seed: int = 0) -> dict:
    import numpy as np
    import tensorflow as tf

    from components.evaluator import evaluate as ev
    from trainer import sampling

    model = tf.saved_model.load(model_dir)
    with tf.io.gfile.GFile(model_info_path(model_dir)) as f:
        cfg = json.load(f)["experiment"]["model"]
    scales = [] if cfg["guidance"] == "none" else [int(k) for k in cfg["guidance_scales"]]
    out = {}
    for split in splits:
        items = ev.load_split(examples, split, images)
        y = np.stack([it["blurry"] for it in items]).astype(np.float32) / 127.5 - 1.0
        x = np.stack([it["sharp"] for it in items]).astype(np.float32) / 127.5 - 1.0
        phi_y = sampling.phi_from_image(tf.constant((y + 1) / 2), scales)  # phi_k(y), no noise
        phi_x = sampling.phi_from_image(tf.constant((x + 1) / 2), scales)
        guidance = model.guide_features([phi_y[k] for k in scales])
        rng = np.random.default_rng(seed)
        rows = []
        for gamma in GAMMAS:
            eps = rng.standard_normal(x.shape).astype(np.float32)
            row = {"gamma": gamma}
            for start, src in (("sharp", x), ("blurry", y)):
                x_t = np.sqrt(gamma) * src + np.sqrt(1 - gamma) * eps
                eps_hat = model.predict_noise(tf.constant(x_t), tf.constant(y),
                                              tf.fill([len(items)], float(gamma)), guidance)
                x0 = np.clip((x_t - np.sqrt(1 - gamma) * eps_hat.numpy()) / np.sqrt(gamma), -1, 1)
                row[f"x0_psnr_{start}"] = _psnr(x0, x)
            rows.append(row)
        regs = guidance[len(scales):]
        out[split] = {
            "images": len(items), "input_psnr": _psnr(y, x), "levels": rows,
            "guidance": {f"x{k}": {"R_k_psnr": _psnr(regs[i].numpy(), phi_x[k].numpy()),
                                   "phi_y_psnr": _psnr(phi_y[k].numpy(), phi_x[k].numpy())}
                         for i, k in enumerate(scales)} if regs else {}}
    return out


def to_markdown(result: dict) -> str:
    lines = [f"# Denoiser probe: {result['model']}", ""]
    for split, r in result["splits"].items():
        lines += [f"## {split} ({r['images']} images; blurry input PSNR {r['input_psnr']:.2f})", "",
                  "| gamma | x0_hat PSNR, sharp start | x0_hat PSNR, blurry start |", "|---:|---:|---:|"]
        lines += [f"| {row['gamma']} | {row['x0_psnr_sharp']:.2f} | {row['x0_psnr_blurry']:.2f} |"
                  for row in r["levels"]]
        if r["guidance"]:
            lines += ["", "| scale | R_k PSNR | phi_k(y) PSNR (identity) |", "|---|---:|---:|"]
            lines += [f"| {k} | {g['R_k_psnr']:.2f} | {g['phi_y_psnr']:.2f} |"
                      for k, g in r["guidance"].items()]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="an exported SavedModel (Format-Serving)")
    p.add_argument("--examples", required=True, help="an ingest output (Split-<name>/ folders)")
    p.add_argument("--splits", default="test,test_ood,train")
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--name", default="probe")
    p.add_argument("--results-dir", default=os.path.join("benchmarks", "out"))
    a = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from benchmarks.machine import machine_info

    result = {"machine": machine_info(), "model": a.model, "examples": a.examples,
              "splits": probe(a.model, a.examples, a.splits.split(","), a.images)}
    os.makedirs(a.results_dir, exist_ok=True)
    base = os.path.join(a.results_dir, f"denoiser_probe_{a.name}")
    with open(base + ".json", "w") as f:
        json.dump(result, f, indent=1)
    with open(base + ".md", "w") as f:
        f.write(to_markdown(result))
    print(to_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
