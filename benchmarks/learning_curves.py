"""Learning curves: the training loss and the held-out quality of the exported (EMA) model over
training steps, against the blurry input's own scores.

    .venv/bin/python -m benchmarks.learning_curves --examples runs/local/pipeline_root/... \
        [--config tiny] [--set train.learning_rate=2e-3 ...] [--steps 1500] [--eval-every 500] \
        [--images 8] [--setting ddim:20:1.0:4 ...] [--name NAME]

--examples is an ingest output (Split-train, Split-test, Split-test_ood: `deblur ingest`, or the
DeblurIngest artifact of `make run-local`). The run trains in chunks of --eval-every steps (each
chunk resumes from the previous one's checkpoint, so the curve is one training run) and after
each chunk evaluates the exported SavedModel, the artifact that would ship, with the evaluator's
library function on the first --images images of every evaluation split, at each --setting.

Writes benchmarks/results/learning_curves_<name>.json (machine, experiment, per checkpoint:
step, training loss, wall time, per domain and setting PSNR/SSIM/LPIPS/NIQE, the input's
scores, the gate's verdict) and learning_curves_<name>.png.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

from core.artifacts import SAVED_MODEL_DIR

DEFAULT_SETTINGS = ["ddim:20:1.0:1", "ddim:20:1.0:4", "ddpm:20:0.5:4"]


def _setting(text: str) -> dict:
    sampler, steps, noise, *k = text.split(":")
    return {"sampler": sampler, "steps": int(steps), "max_noise": float(noise),
            "samples": int(k[0]) if k else 1}


def _overrides(pairs):
    """['train.learning_rate=2e-3', 'model.diffusion_channels=16'] -> {section: {field: value}}"""
    out = {}
    for p in pairs or ():
        key, value = p.split("=", 1)
        section, field = key.split(".", 1)
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
        out.setdefault(section, {})[field] = value
    return out


def run(examples: str, config: str, overrides: dict, steps: int, eval_every: int, images: int,
        settings, work: str, log=print) -> dict:
    from components.evaluator import evaluate as ev
    from components.evaluator.gate import GateConfig
    from trainer import experiments
    from trainer import train as train_lib

    base = experiments.get(config, **overrides) if overrides else experiments.get(config)
    # only the per-setting PSNR/LPIPS are kept: no FID/KID or Table 1 work
    cfg = ev.EvalConfig(grid=settings, max_images_per_split=images, fid_kid=False,
                        domain_gap=False)
    points, t_train = [], 0.0
    targets = list(range(eval_every, steps + 1, eval_every))
    if not targets or targets[-1] != steps:
        targets.append(steps)
    for target in targets:
        t0 = time.time()
        result = train_lib.train(base.replace(train={"steps": target}), examples, work)
        t_train += time.time() - t0
        t0 = time.time()
        res = ev.evaluate(os.path.join(work, SAVED_MODEL_DIR), examples,
                          os.path.join(work, f"eval_{target}"), cfg, gate=GateConfig())
        last = result["history"][-1]
        point = {"step": target, "train_seconds": round(t_train, 1),
                 "eval_seconds": round(time.time() - t0, 1),
                 "loss": last["loss"], "loss_dpm": last["loss_dpm"],
                 "domains": {d: {"input": info["input"], "settings": info["settings"]}
                             for d, info in res["domains"].items()},
                 "best_setting": (res["best_setting"] or {}).get("key"),
                 "blessed": res["blessing"]["blessed"], "reason": res["blessing"]["reason"]}
        points.append(point)
        for d, info in point["domains"].items():
            i = info["input"]
            for key, m in info["settings"].items():
                log(f"step {target:6d} {d:3s} {key:24s} PSNR {m['psnr']:6.2f} (input "
                    f"{i['psnr']:6.2f})  LPIPS {m['lpips']:.4f} (input {i['lpips']:.4f})")
        log(f"step {target}: loss {last['loss']:.4f}, trained {t_train:.0f} s; "
            f"gate: {'BLESSED' if point['blessed'] else 'not blessed'} ({point['reason'][:160]})")
    return {"experiment": base.replace(train={"steps": steps}).to_dict(), "points": points,
            "history": result["history"]}


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = result["points"]
    domains = sorted(pts[0]["domains"])
    keys = list(pts[0]["domains"][domains[0]]["settings"])
    fig, axes = plt.subplots(1, 1 + 2 * len(domains), figsize=(5 * (1 + 2 * len(domains)), 4))
    hist = result["history"]
    axes[0].plot([h["step"] for h in hist], [h["loss_dpm"] for h in hist], lw=0.8)
    axes[0].set_title("L_DPM (train batch)"), axes[0].set_xlabel("step")
    steps = [p["step"] for p in pts]
    for j, d in enumerate(domains):
        for i, metric in enumerate(("psnr", "lpips")):
            ax = axes[1 + 2 * j + i]
            for key in keys:
                ax.plot(steps, [p["domains"][d]["settings"][key][metric] for p in pts], "o-",
                        label=key)
            ax.axhline(pts[-1]["domains"][d]["input"][metric], color="k", ls="--",
                       label="blurry input")
            ax.set_title(f"{d}-domain {metric.upper()} (EMA model, held out)")
            ax.set_xlabel("step"), ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", required=True)
    p.add_argument("--config", default="tiny")
    p.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE",
                   help="experiment override, e.g. train.learning_rate=2e-3 (repeatable)")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--images", type=int, default=8, help="images per evaluation split")
    p.add_argument("--setting", action="append", type=_setting, default=None,
                   help="sampler:steps:max_noise[:samples] (repeatable); default "
                        + ", ".join(DEFAULT_SETTINGS))
    p.add_argument("--name", default="tiny")
    p.add_argument("--results-dir", default=os.path.join("benchmarks", "out"))
    p.add_argument("--work-dir", default=None, help="default: a temporary folder")
    a = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from benchmarks.machine import machine_info

    settings = a.setting or [_setting(s) for s in DEFAULT_SETTINGS]
    info = machine_info()
    work = a.work_dir or tempfile.mkdtemp(prefix="learning_curves_")
    t0 = time.time()
    result = run(a.examples, a.config, _overrides(a.set), a.steps, a.eval_every, a.images,
                 settings, work, log=lambda s: print(s, flush=True))
    result.update(machine=info, seconds=round(time.time() - t0, 1), examples=a.examples,
                  overrides=a.set or [], work_dir=work)
    os.makedirs(a.results_dir, exist_ok=True)
    stem = os.path.join(a.results_dir, f"learning_curves_{a.name}")
    with open(stem + ".json", "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)
    plot(result, stem + ".png")
    print(f"results: {stem}.json, {stem}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
