"""Warm start against cold start after the same number of steps, on a second span of data.

    .venv/bin/python -m benchmarks.warm_start [--parent-steps 1000] [--steps 500] \
        [--set model.diffusion_channels=16 ...] [--pairs 24] [--images 8] [--name NAME]

The retraining scenario of the pipeline, with its library functions: synthetic GoPro-like
training pairs arrive in two span folders (span-1, then span-2) beside fixed in- and
out-of-domain test sets. The parent trains --parent-steps steps on span 1. Span 2 arrives and
is ingested into the same unit store (only span 2 is decoded). Then, on spans 1 + 2, for
--steps steps each:
  warm  starts from the parent's exported SavedModel (trainer/warm_start.py: its EMA weights
        into model and EMA, its step, a fresh optimizer) and trains --steps more steps;
  cold  starts from random weights (the same seed as the parent).
All three are scored by the evaluator's library function (components/evaluator/evaluate.py) on
the first --images images of the test splits at each --setting, against the blurry input.

Writes benchmarks/results/warm_start_<name>.json (machine, recipe, timings of the two ingests
and the trainings, per model and domain the metrics per setting, the first losses of warm and
cold and the parent's last).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

from benchmarks.learning_curves import _overrides, _setting
from core.artifacts import SAVED_MODEL_DIR

DEFAULT_SETTINGS = ["ddim:20:1.0:1", "ddpm:20:0.5:4"]


def _data(work: str, pairs: int, test_pairs: int, size) -> dict:
    """span-1 and span-2 (GoPro layout each) under work/train, test sets under work/test."""
    from core import synth

    root = os.path.join(work, "train")
    for n, seed in ((1, 1), (2, 2)):
        tmp = os.path.join(work, f"synth-{n}")
        synth.generate(tmp, pairs=pairs, test_pairs=1, size=size, seed=seed)
        shutil.copytree(os.path.join(tmp, "gopro_synth", "GOPRO_Large", "train"),
                        os.path.join(root, f"span-{n}", "train"))
    synth.generate(os.path.join(work, "test"), pairs=1, test_pairs=test_pairs, size=size, seed=9)
    return {"train": root, "test": os.path.join(work, "test")}


def _sources(data: dict):
    from components.ingest.sources import IngestSource

    return [IngestSource("gopro", data["train"], subsets=["train"], dataset="gopro_synth",
                         domain="in", span_pattern="span-{SPAN}"),
            IngestSource("gopro", os.path.join(data["test"], "gopro_synth"), subsets=["test"],
                         dataset="gopro_synth", domain="in"),
            IngestSource("realblur", os.path.join(data["test"], "realblur_synth"),
                         subsets=["test"], split_names={"test": "test_ood"},
                         dataset="realblur_synth", domain="out")]


def run(work: str, overrides: dict, parent_steps: int, steps: int, pairs: int, test_pairs: int,
        size, images: int, settings, log=print) -> dict:
    from components.evaluator import evaluate as ev
    from components.evaluator.gate import GateConfig
    from components.ingest.beam_ingest import run_ingest
    from components.ingest.sources import IngestOptions
    from trainer import experiments, train as train_lib, warm_start

    data = _data(work, pairs, test_pairs, size)
    span2 = os.path.join(data["train"], "span-2")
    hidden = span2 + ".later"
    os.rename(span2, hidden)  # span 2 has not arrived yet
    store, options = os.path.join(work, "units"), IngestOptions(train_crop_size=64)
    timings = {}
    t0 = time.time()
    first = run_ingest(_sources(data), os.path.join(work, "examples-1"), options, store=store)
    timings["ingest_span_1"] = round(time.time() - t0, 1)
    os.rename(hidden, span2)
    t0 = time.time()
    both = run_ingest(_sources(data), os.path.join(work, "examples-12"), options, store=store)
    timings["ingest_span_2_arrives"] = round(time.time() - t0, 1)
    log(f"ingest: span 1 + tests {timings['ingest_span_1']} s ({first['processed']['inputs']} "
        f"pairs decoded); span 2 arrives: {timings['ingest_span_2_arrives']} s "
        f"({both['processed']['inputs']} decoded, {both['reused']['inputs']} reused)")

    base = experiments.get("tiny", **overrides) if overrides else experiments.get("tiny")
    examples = {"parent": os.path.join(work, "examples-1"), "both": os.path.join(work, "examples-12")}
    t0 = time.time()
    parent = train_lib.train(base.replace(train={"steps": parent_steps}), examples["parent"],
                             os.path.join(work, "parent"))["history"]
    timings["parent"] = round(time.time() - t0, 1)
    parent_model = os.path.join(work, "parent", SAVED_MODEL_DIR)
    record = warm_start.decide(os.path.join(work, "warm"), "latest_blessed", steps,
                               lambda: warm_start.Parent(parent_model, "parent"))
    t0 = time.time()
    exp_warm, warm_args = warm_start.training_arguments(base, record)
    warm = train_lib.train(exp_warm, examples["both"], os.path.join(work, "warm"),
                           **warm_args)["history"]
    timings["warm"] = round(time.time() - t0, 1)
    t0 = time.time()
    cold = train_lib.train(base.replace(train={"steps": steps}), examples["both"],
                           os.path.join(work, "cold"))["history"]
    timings["cold"] = round(time.time() - t0, 1)
    log(f"trained: parent {parent_steps} steps {timings['parent']} s; warm and cold {steps} "
        f"steps each, {timings['warm']} s and {timings['cold']} s")

    # only the per-setting PSNR/LPIPS are kept: no FID/KID or Table 1 work
    cfg = ev.EvalConfig(grid=settings, max_images_per_split=images, fid_kid=False,
                        domain_gap=False)
    models = {}
    for name in ("parent", "warm", "cold"):
        res = ev.evaluate(os.path.join(work, name, SAVED_MODEL_DIR), examples["both"],
                          os.path.join(work, f"eval_{name}"), cfg, gate=GateConfig())
        models[name] = {d: {"input": info["input"], "settings": info["settings"]}
                        for d, info in res["domains"].items()}
        for d, info in models[name].items():
            for key, m in info["settings"].items():
                log(f"{name:6s} {d:3s} {key:22s} PSNR {m['psnr']:6.2f} (input "
                    f"{info['input']['psnr']:6.2f})  LPIPS {m['lpips']:.4f} (input "
                    f"{info['input']['lpips']:.4f})")
    unweighted = lambda h: h["loss_guidance"] + h["loss_dpm"]  # noqa: E731 - w(step)-free
    losses = {"parent_last": unweighted(parent[-1]), "warm_first": unweighted(warm[0]),
              "cold_first": unweighted(cold[0]), "warm_last": unweighted(warm[-1]),
              "cold_last": unweighted(cold[-1])}
    return {"recipe": base.to_dict(), "parent_steps": parent_steps, "steps": steps,
            "warm_start": record, "pairs_per_span": pairs, "test_pairs": test_pairs,
            "size": list(size), "images": images, "settings": settings, "timings": timings,
            "losses_unweighted": losses, "models": models,
            "ingest": {"span_1": {k: first[k] for k in ("processed", "reused", "written")},
                       "span_2_arrives": {k: both[k] for k in ("processed", "reused", "written")}}}


def markdown(r: dict) -> str:
    lines = [f"# Warm start vs cold start ({r['machine']['date'][:10]})", "",
             f"Parent: {r['parent_steps']} steps on span 1 ({r['pairs_per_span']} pairs). Then "
             f"{r['steps']} steps on spans 1 + 2 for each of: warm (from the parent's export, "
             f"its step {r['warm_start']['start_step']}, fresh optimizer) and cold (random "
             f"weights). Evaluated on {r['images']} images per test split "
             f"({r['size'][0]}x{r['size'][1]}); `nproc` {r['machine']['nproc']}, load "
             f"{r['machine']['loadavg_start'][0]:.1f} at start.", "",
             "| model | domain | setting | PSNR | LPIPS | input PSNR | input LPIPS |",
             "|---|---|---|---|---|---|---|"]
    for name, domains in r["models"].items():
        for d, info in sorted(domains.items()):
            for key, m in info["settings"].items():
                lines.append(f"| {name} | {d} | {key} | {m['psnr']:.2f} | {m['lpips']:.4f} | "
                             f"{info['input']['psnr']:.2f} | {info['input']['lpips']:.4f} |")
    lo = r["losses_unweighted"]
    t = r["timings"]
    lines += ["", f"Training loss without w(step) (L_guidance + L_DPM, one batch): parent's "
                  f"last {lo['parent_last']:.4f}; first logged step: warm "
                  f"{lo['warm_first']:.4f}, cold {lo['cold_first']:.4f}; last: warm "
                  f"{lo['warm_last']:.4f}, cold {lo['cold_last']:.4f}.", "",
              f"Ingest: span 1 and the test sets {t['ingest_span_1']} s; when span 2 arrived "
              f"{t['ingest_span_2_arrives']} s ({r['ingest']['span_2_arrives']['processed']['inputs']} "
              f"pairs decoded, {r['ingest']['span_2_arrives']['reused']['inputs']} reused). "
              f"Training: parent {t['parent']} s, warm {t['warm']} s, cold {t['cold']} s."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parent-steps", type=int, default=1000)
    p.add_argument("--steps", type=int, default=500, help="steps of warm and of cold")
    p.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE",
                   help="override of the tiny experiment (repeatable); default "
                        "model.diffusion_channels=16 (docs/experiments.md's learning curves)")
    p.add_argument("--pairs", type=int, default=24, help="training pairs per span")
    p.add_argument("--test-pairs", type=int, default=8)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--images", type=int, default=8, help="images per evaluation split")
    p.add_argument("--setting", action="append", type=_setting, default=None)
    p.add_argument("--name", default="c16")
    p.add_argument("--results-dir", default=os.path.join("benchmarks", "out"))
    p.add_argument("--work-dir", default=None, help="default: a temporary folder")
    a = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from benchmarks.machine import machine_info

    info = machine_info()
    work = a.work_dir or tempfile.mkdtemp(prefix="warm_start_")
    settings = a.setting or [_setting(s) for s in DEFAULT_SETTINGS]
    t0 = time.time()
    result = run(work, _overrides(a.set or ["model.diffusion_channels=16"]), a.parent_steps,
                 a.steps, a.pairs, a.test_pairs, (a.size, a.size), a.images, settings,
                 log=lambda s: print(s, flush=True))
    result.update(machine=info, seconds=round(time.time() - t0, 1), work_dir=work,
                  overrides=a.set or ["model.diffusion_channels=16"])
    os.makedirs(a.results_dir, exist_ok=True)
    stem = os.path.join(a.results_dir, f"warm_start_{a.name}")
    with open(stem + ".json", "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)
    with open(stem + ".md", "w") as f:
        f.write(markdown(result))
    print(f"results: {stem}.json, {stem}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
