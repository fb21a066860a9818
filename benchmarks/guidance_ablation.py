"""The paper's Table 2 in miniature: the guided and the unguided icDPM at equal training compute
on the synthetic in-domain data, several seeds each, scored in and out of domain.

    .venv/bin/python -m benchmarks.guidance_ablation --examples DIR [--seeds 0,1,2] \
        [--steps 1500] [--images 8] [--fixed ddpm:20:0.5:4] [--variants guided,none,input] \
        [--experiment local] [--set train.dpm_loss_weighting=unit ...] [--name NAME]

--examples: an ingest output with Split-train (in-domain), Split-test and Split-test_ood (the
DeblurIngest artifact of `make run-local`). Variants are the --experiment preset (tiny by
default; --set section.field=value overrides it for every variant) with guidance
"latent" (the paper's guided residual blocks), "none" (plain icDPM) and, with --variants,
"input" (Table 8 (b): the regression upsampled and concatenated at the input). Equal compute:
the guided model trains --steps steps; every other variant trains as many steps as make the
same training FLOPs (trainer/flops.py counts one step's forward FLOPs on a crop, guidance
included; backward is the same multiple of forward for every variant), same batch and crop.

Each run is scored on the first --images images of every evaluation split over the grid
(--setting, repeatable; default the local pipeline's grid) and reported two ways: the best
point of the grid per domain (by LPIPS), and one fixed setting (--fixed). The spread over
seeds is the sample standard deviation. Writes benchmarks/results/guidance_ablation.{json,md}
and guidance_ablation.png (guidance_ablation_<name>.* with --name; PSNR vs LPIPS over the
grid per variant and domain: the paper's Fig. 5).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

from benchmarks.learning_curves import _overrides, _setting
from core.artifacts import SAVED_MODEL_DIR

VARIANTS = {"guided": {"guidance": "latent"}, "none": {"guidance": "none"},
            "input": {"guidance": "input"}}


def step_flops(exp) -> int:
    from trainer.flops import count_analytic

    c = exp.data.crop_size
    return int(count_analytic(exp.model, c, c)["flops"])


def variant_experiment(name: str, overrides: dict, variant: str, **train):
    from trainer import experiments

    sections = {k: dict(v) for k, v in overrides.items()}
    sections["model"] = {**sections.get("model", {}), **VARIANTS[variant]}
    sections["train"] = {**sections.get("train", {}), **train}
    return experiments.get(name, **sections)


def run_variant(examples, exp, variant, seed, grid, images, work, fixed):
    from components.evaluator import evaluate as ev
    from components.evaluator.gate import GateConfig
    from trainer import train as train_lib

    steps = exp.train.steps
    t0 = time.time()
    train_lib.train(exp, examples, work)
    seconds = time.time() - t0
    res = ev.evaluate(os.path.join(work, SAVED_MODEL_DIR), examples, os.path.join(work, "eval"),
                      ev.EvalConfig(grid=grid + ([fixed] if fixed not in grid else []),
                                    max_images_per_split=images, seed=seed,
                                    fid_kid=False, domain_gap=False),  # PSNR/LPIPS only
                      gate=GateConfig())
    fixed_key = ev.SamplingSetting(**fixed).key
    out = {"variant": variant, "seed": seed, "steps": steps, "train_seconds": round(seconds, 1),
           "flops_per_step": step_flops(exp), "domains": {}}
    for d, info in res["domains"].items():
        best_key = min(info["settings"], key=lambda k: info["settings"][k]["lpips"])
        out["domains"][d] = {"input": info["input"], "grid": info["settings"],
                             "best": {"setting": best_key, **info["settings"][best_key]},
                             "fixed": {"setting": fixed_key, **info["settings"][fixed_key]}}
    return out


def _mean_sd(values):
    return (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)


def table(runs) -> str:
    lines = ["| variant | steps | domain | best PSNR | best LPIPS | fixed PSNR | fixed LPIPS |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for variant in dict.fromkeys(r["variant"] for r in runs):
        rs = [r for r in runs if r["variant"] == variant]
        for d in sorted(rs[0]["domains"]):
            cells = []
            for kind in ("best", "fixed"):
                for m, spec in (("psnr", ".2f"), ("lpips", ".4f")):
                    mean, sd = _mean_sd([r["domains"][d][kind][m] for r in rs])
                    cells.append(f"{mean:{spec}} ± {sd:{spec}}")
            lines.append(f"| {variant} | {rs[0]['steps']} | {d} | " + " | ".join(cells) + " |")
    inp = runs[0]["domains"]
    lines.append("")
    lines.append("Blurry input: " + "; ".join(
        f"{d} PSNR {inp[d]['input']['psnr']:.2f}, LPIPS {inp[d]['input']['lpips']:.4f}"
        for d in sorted(inp)))
    return "\n".join(lines)


def plot(runs, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    domains = sorted(runs[0]["domains"])
    fig, axes = plt.subplots(1, len(domains), figsize=(6 * len(domains), 4.5))
    for ax, d in zip(axes, domains):
        for variant in dict.fromkeys(r["variant"] for r in runs):
            rs = [r for r in runs if r["variant"] == variant]
            keys = list(rs[0]["domains"][d]["grid"])
            lp = [statistics.fmean(r["domains"][d]["grid"][k]["lpips"] for r in rs) for k in keys]
            ps = [statistics.fmean(r["domains"][d]["grid"][k]["psnr"] for r in rs) for k in keys]
            ax.plot(lp, ps, "o", label=f"{variant} (mean of {len(rs)} seeds; a point per setting)")
        i = runs[0]["domains"][d]["input"]
        ax.plot(i["lpips"], i["psnr"], "kx", markersize=9, label="blurry input")
        ax.set_xlabel("LPIPS (lower is better)"), ax.set_ylabel("PSNR (dB)")
        ax.set_title(f"{d}-domain: perception-distortion over the grid"), ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", required=True)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=1500, help="the guided model's training steps")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--variants", default="guided,none")
    p.add_argument("--setting", action="append", type=_setting, default=None)
    p.add_argument("--fixed", type=_setting, default=_setting("ddpm:20:0.5:4"))
    p.add_argument("--experiment", default="tiny", help="the preset every variant starts from")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="an override of the preset for every variant (repeatable)")
    p.add_argument("--name", default=None, help="results go to guidance_ablation_<name>.*")
    p.add_argument("--results-dir", default=os.path.join("benchmarks", "out"))
    a = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from benchmarks.machine import machine_info
    from components.evaluator.evaluate import EvalConfig

    grid = a.setting or EvalConfig().grid
    variants = a.variants.split(",")
    overrides = _overrides(a.set)
    guided_flops = step_flops(variant_experiment(a.experiment, overrides, "guided"))
    info = machine_info()
    runs = []
    for seed in (int(s) for s in a.seeds.split(",")):
        for variant in variants:  # interleaved: drift in the machine's load hits all alike
            flops = step_flops(variant_experiment(a.experiment, overrides, variant))
            exp = variant_experiment(a.experiment, overrides, variant, seed=seed,
                                     steps=round(a.steps * guided_flops / flops))
            with tempfile.TemporaryDirectory(prefix=f"ablation_{variant}_{seed}_") as work:
                r = run_variant(a.examples, exp, variant, seed, grid, a.images, work, a.fixed)
            runs.append(r)
            print(json.dumps({k: r[k] for k in ("variant", "seed", "steps", "train_seconds")})
                  + " " + "; ".join(f"{d}: best {v['best']['setting']} PSNR {v['best']['psnr']:.2f}"
                                    f" LPIPS {v['best']['lpips']:.4f}"
                                    for d, v in r["domains"].items()), flush=True)
    os.makedirs(a.results_dir, exist_ok=True)
    stem = os.path.join(a.results_dir, "guidance_ablation" + (f"_{a.name}" if a.name else ""))
    with open(stem + ".json", "w") as f:
        json.dump({"machine": info, "args": vars(a) | {"fixed": a.fixed}, "grid": grid,
                   "runs": runs}, f, indent=1, sort_keys=True, default=str)
    text = table(runs)
    with open(stem + ".md", "w") as f:
        f.write(f"# Guided vs unguided at equal training compute ({a.experiment} preset"
                f"{', ' + ', '.join(a.set) if a.set else ''})\n\n{text}\n")
    plot(runs, stem + ".png")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
