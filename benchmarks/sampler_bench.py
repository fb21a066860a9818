"""Sampler overhead: one sampling step and a whole sampling run against bare UNet passes.

    .venv/bin/python -m benchmarks.sampler_bench               # ~2-5 min on 2 shared cores
    .venv/bin/python -m benchmarks.sampler_bench --size 128x128 --steps 20,100 --repeats 5

For each model (default: S+Guide-S and tiny, random weights: the cost does not depend on them),
one process, one run, on a batch of one HxW image:

  forward   T bare forward passes of the diffusion UNet given precomputed guidance features:
            a tf.function of model.denoise(x_t, y, gamma, guidance), called T times in a Python
            loop (each synchronised); what a perfect sampler would pay.
  sample T  trainer.sampling.Sampler (the compiled deblurring function the evaluator, the
            export and `deblur predict` use) on a uint8 image with T steps: padding, phi, the
            guidance once, the tf.while_loop of T steps, the crop back to uint8.
  sample t  the same with t < T steps (default 4).

Reported (medians over interleaved repeats, and per-repeat paired ratios):
  step ratio  = ((sample T - sample t) / (T - t)) / (forward / T): the marginal cost of one
                sampling step against one bare forward pass (target <= 1.1)
  whole ratio = sample T / forward: the whole sampling time of a guided model against T
                forward passes (target <= 1.1); the guidance network, run once, is in it.
  guidance    the guidance network H_k, R_k once (a tf.function of model.guide): the whole
                ratio cannot go below 1 + guidance / (T forwards)
Results: benchmarks/results/sampler.md and .json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np


def _size(text):
    h, w = (int(v) for v in text.lower().split("x"))
    return h, w


def _cpu():
    t = os.times()
    return t.user + t.system


def bench_model(name, size, steps, short, repeats, log):
    import tensorflow as tf

    from trainer import experiments, sampling
    from trainer.model import GuidedDenoiser

    tf.random.set_seed(0)
    model = GuidedDenoiser(experiments.get(name).model)
    h, w = size
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (1, h, w, 3), dtype=np.uint8)
    x01 = tf.constant(image, tf.float32) / 255.0
    y = x01 * 2 - 1
    guidance = model.guide(sampling.phi_from_image(x01, tuple(model.cfg.guidance_scales)))
    x_t = tf.random.normal(y.shape)
    gamma = tf.constant([0.5])
    forward_fn = tf.function(lambda x: model.denoise(x, y, gamma, guidance, training=False))
    phi = sampling.phi_from_image(x01, tuple(model.cfg.guidance_scales))
    guide_fn = tf.function(lambda: tf.nest.flatten(model.guide(phi)))
    sampler = sampling.Sampler(model)
    long_s = sampling.SamplingSetting("ddpm", steps, 1.0, 1)
    short_s = sampling.SamplingSetting("ddpm", short, 1.0, 1)

    def forward():
        for _ in range(steps):
            forward_fn(x_t).numpy()

    rows = {"forward": forward, "guidance": lambda: [v.numpy() for v in guide_fn()], f"sample T={steps}": lambda: sampler(image, long_s),
            f"sample t={short}": lambda: sampler(image, short_s)}
    for fn in rows.values():  # warm-up: traces, allocations
        fn()
    times = {k: [] for k in rows}
    cpus = {k: [] for k in rows}
    loads = []
    for r in range(repeats):
        for k, fn in rows.items():
            loads.append(os.getloadavg()[0])
            t0, c0 = time.perf_counter(), _cpu()
            fn()
            times[k].append(time.perf_counter() - t0)
            cpus[k].append(_cpu() - c0)
        log(f"  {name} repeat {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()))
    f, lt, st = times["forward"], times[f"sample T={steps}"], times[f"sample t={short}"]
    step_ratio = [((a - b) / (steps - short)) / (c / steps) for a, b, c in zip(lt, st, f)]
    whole_ratio = [a / c for a, c in zip(lt, f)]
    med = statistics.median
    return {
        "model": name, "size": [h, w], "steps": steps, "short_steps": short,
        "params": int(sum(np.prod(v.shape) for v in model.trainable_variables)),
        "median_s": {k: med(v) for k, v in times.items()},
        "median_cpu_s": {k: med(v) for k, v in cpus.items()},
        "forward_pass_s": med(f) / steps,
        "step_ratio_of_medians": ((med(lt) - med(st)) / (steps - short)) / (med(f) / steps),
        "whole_ratio_of_medians": med(lt) / med(f),
        "step_ratio_paired_median": med(step_ratio),
        "whole_ratio_paired_median": med(whole_ratio),
        # the floor of the whole ratio: T forwards plus the guidance network once
        "guidance_over_forward": med(times["guidance"]) / (med(f) / steps),
        "whole_ratio_floor": 1.0 + med(times["guidance"]) / med(f),
        "raw_s": times, "raw_cpu_s": cpus, "loadavg_1m": loads,
        "tracing_count": sampler._fn.experimental_get_tracing_count(),
    }


def render(result) -> str:
    m = result["machine"]
    lines = [
        "# Sampler overhead (benchmarks/sampler_bench.py)", "",
        f"{m['date']}, {m['nproc']} CPUs ({m['cpu_model']}), TF {m.get('tensorflow')}; "
        f"load average {min(result['loadavg'])}-{max(result['loadavg'])} during the run; "
        f"{result['repeats']} interleaved repeats, medians.", "",
        "| model | image | params | bare forward s | one sampling step / forward | "
        "whole sampling (T) / T forwards | floor: 1 + guidance / T forwards | target <= 1.1 |",
        "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in result["models"]:
        step, whole = r["step_ratio_paired_median"], r["whole_ratio_paired_median"]
        ok = "MET" if max(step, whole) <= 1.1 else "MISSED"
        lines.append(
            f"| {r['model']} | {r['size'][0]}x{r['size'][1]}, T={r['steps']} | {r['params']:,} | "
            f"{r['forward_pass_s']:.4f} | {step:.3f} (of medians {r['step_ratio_of_medians']:.3f}) | "
            f"{whole:.3f} (of medians {r['whole_ratio_of_medians']:.3f}) | "
            f"{r['whole_ratio_floor']:.3f} (guidance = {r['guidance_over_forward']:.2f} forwards) | {ok} |")
    lines += ["", "One sampling step = (time(T) - time(t)) / (T - t) of the compiled Sampler; "
              "whole = time(T) of the Sampler (uint8 in and out, padding, phi, guidance once); "
              "both against a tf.function of model.denoise with precomputed guidance, called "
              "T times. The Sampler traced once per model for every size and step count "
              "(tracing_count in the json).", ""]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="S+Guide-S,tiny")
    p.add_argument("--size", type=_size, default=(64, 64))
    p.add_argument("--steps", default="20,50", help="comma-separated T values, one row each")
    p.add_argument("--short-steps", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--results-dir", default=os.path.join(os.path.dirname(__file__), "out"))
    a = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    from benchmarks.machine import machine_info

    result = {"machine": machine_info(tensorflow=tf.__version__), "repeats": a.repeats,
              "models": []}
    for name in a.models.split(","):
        for steps in (int(v) for v in a.steps.split(",")):
            print(f"{name} at {a.size[0]}x{a.size[1]}, T={steps} vs t={a.short_steps}", flush=True)
            result["models"].append(bench_model(name, a.size, steps, a.short_steps, a.repeats,
                                                lambda s: print(s, flush=True)))
    result["loadavg"] = [round(v, 2) for r in result["models"] for v in r["loadavg_1m"]]
    os.makedirs(a.results_dir, exist_ok=True)
    with open(os.path.join(a.results_dir, "sampler.json"), "w") as f:
        json.dump(result, f, indent=2)
    md = render(result)
    with open(os.path.join(a.results_dir, "sampler.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
