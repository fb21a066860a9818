"""The train step at scale: steps per host call, XLA, and the achieved FLOP/s against a matmul.

    .venv/bin/python -m benchmarks.train_step_bench                     # CPU: tiny and S+Guide-S
    .venv/bin/python -m benchmarks.train_step_bench --models S+Guide-S,L+Guide-L \
        --crop 128 --batch 64 --bf16 --steps 50 --loops 50 --jit default   # on an accelerator

One process. For every model (an experiment preset, global batch and crop overridden), one
Trainer (trainer/train.py) per XLA setting compiles Trainer.train_loop, the function train()
calls; then, repeats interleaved (model by model, setting by setting, so drift in the machine's
load hits all rows alike), it times `--steps` steps as --steps calls of one step and as
--steps / K calls of K = --loops steps (each call followed by the host sync train() does,
int(trainer.step.numpy())). A square matmul of --matmul-size in the step's compute dtype is
timed in the same process, in every repeat, as the device's reachable FLOP/s.

Input: a few random batches of the training element's structure (x, y, phi_k, target_k,
gamma, eps at the model's crop and scales), cached on the device side of tf.data and repeated,
so the rows time the step, not PNG decoding (benchmarks/train_input_bench.py times the input).
The numbers do not depend on the values (no data-dependent control flow).

FLOPs: trainer/flops.py's count_analytic of one forward pass (UNet and guidance network,
2 x multiply-adds of the convolutions and dense layers) at the crop, times 3 for the training
step (the backward pass costs about twice the forward one), times the batch. Achieved FLOP/s
over the matmul's FLOP/s is the reported ratio (an MFU against what this device reaches in a
matmul here and now, not against its datasheet).

Reported: steps/s per (model, XLA, K) (medians over repeats), the paired ratios K over 1 and
XLA over no XLA (per repeat, then the median), the first call's seconds (trace + compile), and
for each model at the device type's XLA default and K: examples/s, achieved TFLOP/s, matmul
TFLOP/s and their ratio. Results: benchmarks/results/<name>.json and .md (machine info from
benchmarks/machine.py, load averages before every timing).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings

from benchmarks.machine import machine_info

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO, "benchmarks", "out")  # not in git: copy what a document cites to results/


def log(msg: str) -> None:
    print(f"[train_step_bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def random_batches(exp, crop: int, batch: int, n: int = 4, seed: int = 0):
    """n batches with the training element's structure (trainer/data.py + the noise)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    m = exp.model
    scales = tuple(m.guidance_scales) if m.guidance != "none" else (2, 4, 8)

    def img(*shape):
        return rng.uniform(-1, 1, (n, batch) + shape).astype("float32")

    return {"x": img(crop, crop, 3), "y": img(crop, crop, 3),
            "phi": {k: img(crop // k, crop // k, m.phi_channels) for k in scales},
            "target": {k: img(crop // k, crop // k, m.regression_channels) for k in scales},
            "gamma": rng.uniform(0.01, 0.99, (n, batch)).astype("float32"),
            "eps": rng.standard_normal((n, batch, crop, crop, 3)).astype("float32")}


def make_trainer(exp, jit: bool, batches):
    import tensorflow as tf

    from trainer import train as train_lib

    exp = exp.replace(train={"jit_compile": jit})
    trainer = train_lib.Trainer(exp, out_dir="")
    ds = tf.data.Dataset.from_tensor_slices(batches).cache().repeat()
    iterator = iter(trainer.strategy.distribute_datasets_from_function(lambda ctx: ds))
    return trainer, iterator


def time_steps(trainer, iterator, steps: int, k: int) -> float:
    """Seconds for `steps` steps in calls of k steps, each followed by the host sync."""
    import tensorflow as tf

    n = tf.constant(k, tf.int64)
    t0 = time.perf_counter()
    for _ in range(steps // k):
        trainer.train_loop(iterator, n)
        int(trainer.step.numpy())
    return time.perf_counter() - t0


def matmul_rate(size: int, dtype: str, seconds: float = 2.0) -> float:
    """FLOP/s of size x size matmuls (chained in one tf.function, 10 per call)."""
    import tensorflow as tf

    a = tf.random.normal([size, size], dtype=tf.float32)
    a = tf.cast(a / size ** 0.5, dtype)

    @tf.function
    def chain(x):
        for _ in range(10):
            x = tf.linalg.matmul(x, a)
        return x

    x = chain(a)
    float(tf.reduce_sum(tf.cast(x[:1, :1], tf.float32)))  # traced and warm
    calls, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        x = chain(x)
        calls += 1
    float(tf.reduce_sum(tf.cast(x[:1, :1], tf.float32)))
    return calls * 10 * 2 * size ** 3 / (time.perf_counter() - t0)


def train_flops_per_example(exp, crop: int) -> int:
    from trainer.flops import count_analytic

    return 3 * count_analytic(exp.model, crop, crop)["flops"]


def run(args) -> dict:
    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    from trainer import experiments
    from trainer import train as train_lib

    models = [m for m in args.models.split(",") if m]
    crops = dict(zip(models, _per_model(args.crop, models)))
    batches = dict(zip(models, _per_model(args.batch, models)))
    jits = {"both": [False, True], "off": [False], "on": [True]}.get(args.jit)
    precision = "bfloat16" if args.bf16 else args.precision
    dtypes = ["float32", "bfloat16"] if precision == "both" else [precision]
    setup = {}
    for name in models:
        for dtype in dtypes:
            exp = experiments.get(name, data={"crop_size": crops[name]}, train={
                "global_batch_size": batches[name], "steps_per_loop": args.loops,
                "mixed_precision": dtype, "lr_warmup_steps": 1, "dpm_warmup_steps": 1})
            data = random_batches(exp, crops[name], batches[name])
            device = train_lib.device_type(train_lib.make_strategy(exp.train))
            default_jit = train_lib.JIT_COMPILE_DEFAULT.get(device, False)
            for jit in (jits if jits is not None else [default_jit]):
                log(f"{name} {dtype}: building and compiling (XLA {'on' if jit else 'off'}) ...")
                trainer, iterator = make_trainer(exp, jit, data)
                t0 = time.perf_counter()
                time_steps(trainer, iterator, 1, 1)  # trace (+ compile) and one step
                first = time.perf_counter() - t0
                time_steps(trainer, iterator, args.loops, args.loops)  # warm: one call of K,
                time_steps(trainer, iterator, 2, 1)  # and two calls of one step
                setup[(name, jit, dtype)] = {
                    "trainer": trainer, "iterator": iterator, "first_call_s": first,
                    "exp": exp, "device": device, "default_jit": default_jit}
                log(f"  first call {first:.1f} s")
    timings = {key: {1: [], args.loops: []} for key in setup}
    loads = []
    matmul = {d: [] for d in dtypes}
    for d in dtypes:
        matmul_rate(args.matmul_size, d, 0.5)  # warm
    for rep in range(args.repeats):
        loads.append(os.getloadavg()[0])
        for d in dtypes:
            matmul[d].append(matmul_rate(args.matmul_size, d))
        log(f"repeat {rep + 1}/{args.repeats}: matmul "
            + ", ".join(f"{d} {matmul[d][-1] / 1e9:.1f}" for d in dtypes)
            + f" GFLOP/s, load {loads[-1]:.2f}")
        for key, s in setup.items():
            for k in (1, args.loops):
                sec = time_steps(s["trainer"], s["iterator"], args.steps, k)
                timings[key][k].append(sec)
                log(f"  {key[0]} {key[2]} XLA {'on' if key[1] else 'off'} K={k}: "
                    f"{args.steps / sec:.2f} steps/s")
    rows = []
    for (name, jit, dtype), s in setup.items():
        t = timings[(name, jit, dtype)]
        sps = {k: statistics.median(args.steps / x for x in v) for k, v in t.items()}
        row = {"model": name, "crop": crops[name], "batch": batches[name], "xla": jit,
               "device": s["device"], "dtype": dtype, "first_call_s": round(s["first_call_s"], 1),
               "steps_per_s": {str(k): round(v, 4) for k, v in sps.items()},
               "loop_ratio": round(statistics.median(a / b for a, b in zip(t[1], t[args.loops])), 3),
               "flops_per_example": train_flops_per_example(s["exp"], crops[name]),
               "default_xla": s["default_jit"], "raw_seconds": {str(k): v for k, v in t.items()}}
        ex_s = sps[args.loops] * batches[name]
        achieved = ex_s * row["flops_per_example"]
        row.update(examples_per_s=round(ex_s, 3), achieved_flops=achieved,
                   matmul_flops=statistics.median(matmul[dtype]),
                   mfu_vs_matmul=round(achieved / statistics.median(matmul[dtype]), 4))
        rows.append(row)

    def paired(a, b):  # b's seconds over a's, per repeat, at K: a's speed-up over b
        return round(statistics.median(y / x for x, y in zip(a["raw_seconds"][str(args.loops)],
                                                             b["raw_seconds"][str(args.loops)])), 3)

    for name in models:
        for dtype in dtypes:  # XLA over no XLA
            on = next((r for r in rows if (r["model"], r["dtype"]) == (name, dtype) and r["xla"]),
                      None)
            off = next((r for r in rows if (r["model"], r["dtype"]) == (name, dtype)
                        and not r["xla"]), None)
            if on and off:
                on["xla_speedup"] = paired(on, off)
        for r in rows:  # bfloat16 over float32 at the same XLA setting
            if r["model"] == name and r["dtype"] == "bfloat16":
                f32 = next((o for o in rows if o["model"] == name and o["xla"] == r["xla"]
                            and o["dtype"] == "float32"), None)
                if f32:
                    r["bf16_speedup"] = paired(r, f32)
    return {"machine": machine_info(tensorflow=tf.__version__, keras=keras.__version__),
            "config": {"models": models, "crop": crops, "batch": batches, "steps": args.steps,
                       "loops": args.loops, "repeats": args.repeats, "dtype": precision,
                       "matmul_size": args.matmul_size, "jit": args.jit},
            "matmul_flops": matmul, "loadavg": loads, "rows": rows}


def _per_model(text: str, models):
    """"64" for every model, or "tiny=64,S+Guide-S=32"."""
    if "=" not in text:
        return [int(text)] * len(models)
    d = dict(item.split("=") for item in text.split(","))
    return [int(d[m]) for m in models]


def render(res: dict) -> str:
    c, m = res["config"], res["machine"]
    mf = res["matmul_flops"]  # {dtype: [...]} (a list: results of one dtype, before 'both')
    mm = {d: statistics.median(v) for d, v in mf.items()} if isinstance(mf, dict) else {
        c["dtype"]: statistics.median(mf)}
    k = c["loops"]
    lines = [f"# Train step: steps per host call, XLA, achieved FLOP/s ({m['date']})", "",
             f"{m['cpu_model']}, {m['nproc']} CPUs ({m['nproc_available']} available), "
             f"TF {m['tensorflow']}, Keras {m['keras']}; 1-min load {', '.join(f'{x:.2f}' for x in res['loadavg'])} "
             f"before the repeats. {c['repeats']} interleaved repeats of {c['steps']} steps per row; "
             f"K = {k}; {c['dtype']}; random batches cached in tf.data. Matmul "
             f"{c['matmul_size']}x{c['matmul_size']}: "
             + ", ".join(f"{d} {v / 1e9:.1f}" for d, v in mm.items()) + " GFLOP/s (median).", "",
             "## Steps per host call", "",
             f"| model | crop x batch | dtype | XLA | steps/s K=1 | steps/s K={k} | "
             f"K={k} over K=1 (paired) |", "|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['model']} | {r['crop']}x{r['crop']} x {r['batch']} | "
                     f"{r.get('dtype', c['dtype'])} | "
                     f"{'on' if r['xla'] else 'off'} | {r['steps_per_s']['1']:.3f} | "
                     f"{r['steps_per_s'][str(k)]:.3f} | {r['loop_ratio']:.3f} |")
    if any("xla_speedup" in r for r in res["rows"]):
        lines += ["", "## XLA (train.jit_compile: the gradients and the update)", "",
                  f"| model | step s, XLA off | step s, XLA on | XLA speed-up (paired, K={k}) | "
                  "first call s off / on (trace + compile) |", "|---|---|---|---|---|"]
        for r in res["rows"]:
            if "xla_speedup" not in r:
                continue
            off = next(o for o in res["rows"] if o["model"] == r["model"] and not o["xla"]
                       and o.get("dtype") == r.get("dtype"))
            lines.append(f"| {r['model']} | {1 / off['steps_per_s'][str(k)]:.3f} | "
                         f"{1 / r['steps_per_s'][str(k)]:.3f} | {r['xla_speedup']:.3f} | "
                         f"{off['first_call_s']:.0f} / {r['first_call_s']:.0f} |")
    lines += ["", "## Throughput against a matmul in the same process", "",
              "| model | device | dtype | XLA | examples/s | train GFLOP/example | achieved "
              "GFLOP/s | matmul GFLOP/s | ratio |", "|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['model']} | {r['device']} | {r['dtype']} | {'on' if r['xla'] else 'off'}"
                     f"{' (default)' if r['xla'] == r['default_xla'] else ''} | "
                     f"{r['examples_per_s']:.2f} | {r['flops_per_example'] / 1e9:.2f} | "
                     f"{r['achieved_flops'] / 1e9:.1f} | "
                     f"{r.get('matmul_flops', mm.get(r['dtype'], 0)) / 1e9:.1f} | "
                     f"{r['mfu_vs_matmul']:.3f} |")
    if any("bf16_speedup" in r for r in res["rows"]):
        lines += ["", "## Mixed bfloat16 against float32 (train.mixed_precision)", "",
                  f"| model | crop x batch | XLA | step s, float32 | step s, bfloat16 | "
                  f"bfloat16 speed-up (paired, K={k}) |", "|---|---|---|---|---|---|"]
        for r in res["rows"]:
            if "bf16_speedup" not in r:
                continue
            f32 = next(o for o in res["rows"] if o["model"] == r["model"]
                       and o["xla"] == r["xla"] and o.get("dtype") == "float32")
            lines.append(f"| {r['model']} | {r['crop']}x{r['crop']} x {r['batch']} | "
                         f"{'on' if r['xla'] else 'off'} | {1 / f32['steps_per_s'][str(k)]:.3f} | "
                         f"{1 / r['steps_per_s'][str(k)]:.3f} | {r['bf16_speedup']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="tiny,S+Guide-S")
    p.add_argument("--crop", default="tiny=64,S+Guide-S=64", help="one value or model=value,...")
    p.add_argument("--batch", default="tiny=8,S+Guide-S=2", help="global batch, as --crop")
    p.add_argument("--steps", type=int, default=10, help="steps per timed row")
    p.add_argument("--loops", type=int, default=10, help="K, steps per call")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--jit", choices=("both", "on", "off", "default"), default="both",
                   help="XLA settings to time (default: the device type's default only)")
    p.add_argument("--bf16", action="store_true", help="mixed bfloat16 (and a bfloat16 matmul)")
    p.add_argument("--precision", choices=("float32", "bfloat16", "both"), default="float32",
                   help="both: every model in float32 and in mixed bfloat16, timed side by side")
    p.add_argument("--matmul-size", type=int, default=2048)
    p.add_argument("--name", default="train_step")
    p.add_argument("--results-dir", default=RESULTS_DIR)
    p.add_argument("--render", default=None, help="re-render the md of a results .json")
    args = p.parse_args(argv)
    if args.render:
        with open(args.render) as f:
            res = json.load(f)
    else:
        if args.steps % args.loops:
            p.error("--steps must be a multiple of --loops")
        res = run(args)
        os.makedirs(args.results_dir, exist_ok=True)
        with open(os.path.join(args.results_dir, f"{args.name}.json"), "w") as f:
            json.dump(res, f, indent=2)
    md = render(res)
    out = (args.render[:-len(".json")] + ".md" if args.render
           else os.path.join(args.results_dir, f"{args.name}.md"))
    with open(out, "w") as f:
        f.write(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
