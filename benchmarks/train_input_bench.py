"""Training input vs train step: crops/s of trainer/data.py against examples/s of the step.

    .venv/bin/python -m benchmarks.train_input_bench                 # ~10-14 min on 2 loaded cores
    .venv/bin/python -m benchmarks.train_input_bench --data-dir /tmp/tib  # keep/reuse the data

One process, one run, S+Guide-S everywhere (trainer/experiments.py, global batch overridden by
--batch, default 4):

  input rows   trainer.data.training_dataset(exp.data_config(dir), batch, seed=0) with the
               S+Guide-S data config (crop 128, scales (2, 4, 8), gray target, guidance noise
               sigma 0.05, flips, shuffle buffer 256), iterated as fast as Python can pull:
               (s)    the local pipeline's 256x256 examples (48 train examples; reused read-only
                      from runs/local/pipeline_root/DeblurIngest/examples/1 when present)
               (L)    720x1280 examples (GoPro-sized): --pairs pairs generated with
                      core.synth.generate and ingested with run_ingest (default 16)
               (L-kK) PROTOTYPE, not library code: the same 720x1280 input, but K random crops
                      per decoded example (parse_full once, training_element K times with seeds
                      (base, K i + j), unbatch, a crop-level shuffle of --crop-shuffle crops so a
                      batch does not hold K crops of one image, batch, prefetch). K from
                      --crops-per-example (default 4,8).
  step row     trainer.train.Trainer(exp, tmp).train_step(batch) on batches of the same size
               taken from Trainer.dataset() (so with the diffusion noise of add_diffusion_noise),
               after compile and one warm-up step; each step is synchronised on its loss.

Every input row keeps ONE iterator for the whole run (built and warmed up once: the shuffle
buffer of 256 serialized examples, tracing). Repeats are interleaved (s, L, L-k4, L-k8, step,
s, L, ...). Before each timed phase the process waits until it is idle (its own CPU use under
10% over 0.5 s, at most 30 s), so the background refill of the idle iterators' buffers cannot
leak into another row's timing. An idle iterator has refilled its prefetch/map buffers, so each
input phase first pulls untimed batches for --drain-seconds (default 2 s; a buffered batch is a
~1 ms dequeue, so the buffers empty in well under that), then times --batches batches for L,
K x that for L-kK (one decode there yields K/batch batches at once, so about half of its batches
are ready at once even in steady state). Reported: medians over repeats, the paired ratio (per
repeat, then median), CPU seconds per crop / per example, and the 1-minute load average before
every phase (the machine is shared).

Once per row, after its warm-up and outside the timings, the warm iterator is saved with
tf.train.Checkpoint (as train.py does with the default strategy) to record the checkpoint's size:
tf.data stores the shuffle buffers in it (--no-checkpoint-size skips this).

--data-dir DIR keeps the generated 720x1280 examples (DIR/720x1280_<pairs>p_seed0, with a
marker of the generation parameters) and reuses them on the next run: generating 16 pairs and
ingesting them takes ~1-3 min on a loaded 2-core machine.

The issue's requirement: input >= 5x the step (crops/s over examples/s), so that the input is
never the bottleneck. Results: benchmarks/results/train_input.md and .json.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from typing import List, Optional, Sequence

from benchmarks.machine import machine_info as _machine_info
from core.artifacts import split_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO, "benchmarks", "out")  # not in git: copy what a document cites to results/
LOCAL_EXAMPLES = os.path.join(REPO, "runs", "local", "pipeline_root", "DeblurIngest", "examples", "1")
EXPERIMENT = "S+Guide-S"
TARGET_RATIO = 5.0
# Diagnostic only: a batch returned faster than this was already buffered (a dequeue takes ~1
# ms); producing one takes >= ~7 ms even for the cheapest row here (256x256: ~3.5 ms CPU/crop).
SLOW_BATCH_S = 0.003
LARGE = (720, 1280)
SMALL = (256, 256)


def log(msg: str) -> None:
    print(f"[train_input_bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _quiet() -> None:
    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported
    import logging

    logging.getLogger("apache_beam").setLevel(logging.ERROR)


# --------------------------------------------------------------------------------------------
# Input data (prepared before TensorFlow is imported; Beam runs in this process, in memory)
# --------------------------------------------------------------------------------------------
def _marker(pairs: int, size, seed: int) -> dict:
    return {"pairs": pairs, "size": list(size), "seed": seed, "test_pairs": 1,
            "ingest": "run_ingest([IngestSource('gopro', root, subsets=['train'])], out, IngestOptions())"}


def prepare_examples(data_dir: str, pairs: int, size, seed: int = 0) -> dict:
    """synth.generate + run_ingest into DATA/<H>x<W>_<pairs>; reused if its marker matches."""
    out = os.path.join(data_dir, f"{size[0]}x{size[1]}_{pairs}p_seed{seed}")
    marker_path = os.path.join(out, "bench_marker.json")
    want = _marker(pairs, size, seed)
    if os.path.exists(marker_path):
        with open(marker_path) as f:
            if json.load(f) == want:
                log(f"reusing {out}")
                return {"examples_dir": os.path.join(out, "examples"), "generated": False,
                        "prepare_s": 0.0}
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out)
    from components.ingest.beam_ingest import run_ingest
    from components.ingest.sources import IngestOptions, IngestSource
    from core import synth

    t0 = time.time()
    log(f"generating {pairs} pairs of {size[0]}x{size[1]} (synth.generate) ...")
    s = synth.generate(os.path.join(out, "src"), pairs=pairs, size=tuple(size), seed=seed, test_pairs=1)
    t1 = time.time()
    log(f"  {t1 - t0:.0f} s; ingesting (run_ingest, DirectRunner) ...")
    summary = run_ingest([IngestSource("gopro", s["in_domain"]["root"], subsets=["train"])],
                         os.path.join(out, "examples"), IngestOptions())
    if summary["splits"]["train"]["written"] != pairs:
        raise RuntimeError(f"ingest wrote {summary['splits']['train']} train examples, wanted {pairs}")
    shutil.rmtree(os.path.join(out, "src"))  # the PNG tree is not needed any more
    with open(marker_path, "w") as f:
        json.dump(want, f)
    log(f"  {time.time() - t1:.0f} s")
    return {"examples_dir": os.path.join(out, "examples"), "generated": True,
            "prepare_s": round(time.time() - t0, 1)}


def split_stats(examples_dir: str) -> dict:
    files = sorted(f for f in os.listdir(split_dir(examples_dir, "train")) if f.endswith(".gz"))
    size = sum(os.path.getsize(os.path.join(split_dir(examples_dir, "train"), f)) for f in files)
    return {"files": len(files), "gz_bytes": size}


# --------------------------------------------------------------------------------------------
# The prototype: K crops per decoded example (benchmark-only; see the report)
# --------------------------------------------------------------------------------------------
def multi_crop_dataset(cfg, batch_size: int, crops_per_example: int, crop_shuffle: int,
                       seed: Optional[int] = 0):
    """training_dataset() with K = crops_per_example crops per decoded example.

    Identical to trainer.data.training_dataset up to the serialized-example shuffle; then each
    example is parsed/decoded ONCE (parse_full) and training_element runs K times on it with the
    stateless seeds (base, K i + j) (so the pipeline stays checkpointable and a crop's seed stays
    unique), the K crops are unbatched and shuffled at crop level (crop_shuffle elements), then
    batched. With crop_shuffle = 0 a batch would hold runs of K crops of the same image."""
    import numpy as np
    import tensorflow as tf

    from trainer import data as D

    K = int(crops_per_example)
    files = D.split_files(cfg.examples_dir, cfg.train_split)
    ds = tf.data.Dataset.from_tensor_slices(list(files))
    ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.interleave(lambda f: tf.data.TFRecordDataset(f, compression_type="GZIP"),
                       cycle_length=cfg.interleave_cycle, num_parallel_calls=tf.data.AUTOTUNE,
                       deterministic=seed is not None)
    ds = ds.shuffle(cfg.shuffle_buffer, seed=seed)
    base = seed if seed is not None else int(np.random.SeedSequence().generate_state(1)[0])

    def k_crops(i, s):
        ex = D.parse_full(s, cfg.scales)
        elems = [D.training_element(ex, cfg, tf.stack([tf.constant(base, tf.int64), i * K + j]))
                 for j in range(K)]
        return tf.nest.map_structure(lambda *xs: tf.stack(xs), *elems)

    ds = ds.enumerate().map(k_crops, num_parallel_calls=tf.data.AUTOTUNE,
                            deterministic=seed is not None)
    ds = ds.unbatch()
    if crop_shuffle:
        ds = ds.shuffle(crop_shuffle, seed=seed)
    ds = ds.batch(batch_size, drop_remainder=True)
    return ds.prefetch(tf.data.AUTOTUNE)


# --------------------------------------------------------------------------------------------
# Timing helpers
# --------------------------------------------------------------------------------------------
def quiesce(max_wait: float = 30.0, window: float = 0.5, threshold: float = 0.10) -> float:
    """Wait until this process uses < threshold of one core over `window` s (tf.data threads
    refilling buffers of idle iterators, Keras/TF background work). Returns the seconds waited."""
    t0 = time.time()
    while time.time() - t0 < max_wait:
        c0 = time.process_time()
        time.sleep(window)
        if (time.process_time() - c0) / window < threshold:
            break
    return round(time.time() - t0, 2)


def _sync(batch) -> None:
    """Make sure a batch is materialised (tf.data hands over ready tensors; this is cheap)."""
    import tensorflow as tf

    tf.nest.map_structure(lambda t: t.shape, batch)


class InputRow:
    def __init__(self, key: str, what: str, make_ds, examples_dir: str, size, k: int,
                 batch: int, batches: int, warmup: int, drain: int):
        self.key, self.what, self.make_ds, self.examples_dir = key, what, make_ds, examples_dir
        self.size, self.k, self.batch, self.batches = size, k, batch, batches
        self.warmup_batches, self.drain = warmup, drain
        self.it = None
        self.runs: List[dict] = []
        self.warmup: dict = {}
        self.crop, self.scales = 128, (2, 4, 8)  # set from the DataConfig by main()
        self.drain_s = 2.0  # set by main()
        self.checkpoint: dict = {}

    def start(self) -> None:
        t0, c0 = time.time(), time.process_time()
        self.it = iter(self.make_ds())
        first = None
        for i in range(self.warmup_batches):
            b = next(self.it)
            _sync(b)
            if i == 0:
                first = time.time() - t0
                self._check(b)
        self.warmup = {"first_batch_s": round(first, 2), "warmup_batches": self.warmup_batches,
                       "warmup_wall_s": round(time.time() - t0, 2),
                       "warmup_cpu_s": round(time.process_time() - c0, 2)}
        log(f"  ({self.key}) warm: first batch {first:.1f} s, {self.warmup_batches} batches "
            f"{self.warmup['warmup_wall_s']:.1f} s")

    def checkpoint_size(self, tmp: str) -> None:
        """Size of a tf.train.Checkpoint of the iterator (what train.py saves with the default
        strategy, every checkpoint_every steps): tf.data stores the shuffle buffers in it."""
        import tensorflow as tf

        d = os.path.join(tmp, f"ckpt_{self.key}")
        t0 = time.time()
        tf.train.Checkpoint(iterator=self.it).save(os.path.join(d, "c"))
        dt = time.time() - t0
        size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
        shutil.rmtree(d, ignore_errors=True)
        self.checkpoint = {"bytes": size, "save_s": round(dt, 2)}
        log(f"  ({self.key}) iterator checkpoint {size / 2**20:.0f} MiB, saved in {dt:.1f} s")

    def _check(self, b) -> None:
        c, ks = self.crop, sorted(self.scales)
        assert tuple(b["x"].shape) == (self.batch, c, c, 3), b["x"].shape
        assert tuple(b["y"].shape) == (self.batch, c, c, 3), b["y"].shape
        assert sorted(b["phi"]) == ks and sorted(b["target"]) == ks
        for k in ks:
            assert tuple(b["phi"][k].shape) == (self.batch, c // k, c // k, 1), b["phi"][k].shape
            assert tuple(b["target"][k].shape)[:3] == (self.batch, c // k, c // k)

    def run_once(self) -> dict:
        waited = quiesce()
        load = os.getloadavg()[0]
        # Drain what the iterator buffered while it was idle: pull untimed batches for at least
        # self.drain_s seconds (and self.drain batches). A buffered batch is a dequeue (~1 ms,
        # tens of ms at worst on a loaded machine), so the buffers are empty long before that
        # and the rest of the drain is already steady-state production.
        drain_lat = []
        t_drain = time.time()
        while len(drain_lat) < self.drain or time.time() - t_drain < self.drain_s:
            t = time.time()
            _sync(next(self.it))
            drain_lat.append(round(time.time() - t, 4))
        lat = []
        t0, c0 = time.time(), time.process_time()
        for _ in range(self.batches):
            t = time.time()
            _sync(next(self.it))
            lat.append(time.time() - t)
        wall, cpu = time.time() - t0, time.process_time() - c0
        crops = self.batches * self.batch
        r = {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "crops": crops,
             "crops_per_s": crops / wall, "cpu_s_per_crop": cpu / crops, "loadavg1": load,
             "quiesce_s": waited, "drained_batches": len(drain_lat),
             "drain_s": round(sum(drain_lat), 3), "drain_latencies_s": drain_lat,
             "batch_latency_s": {"min": round(min(lat), 4), "median": round(statistics.median(lat), 4),
                                 "max": round(max(lat), 4)},
             "fast_batches": sum(1 for x in lat if x < SLOW_BATCH_S)}
        self.runs.append(r)
        log(f"  ({self.key}) {r['crops_per_s']:.2f} crops/s, {1000 * r['cpu_s_per_crop']:.1f} ms CPU/crop "
            f"(load {load:.2f}; drained {len(drain_lat)}, {r['fast_batches']}/{self.batches} timed "
            f"batches were ready)")
        return r


class StepRow:
    def __init__(self, exp, examples_dir: str, steps: int, out_dir: str):
        self.exp, self.examples_dir, self.steps, self.out_dir = exp, examples_dir, steps, out_dir
        self.runs: List[dict] = []
        self.setup: dict = {}

    def start(self) -> None:
        import tensorflow as tf

        from trainer.train import Trainer

        t0 = time.time()
        self.trainer = Trainer(self.exp, self.out_dir)
        t1 = time.time()
        it = iter(self.trainer.dataset(self.examples_dir))
        self.batches = [next(it) for _ in range(2)]
        del it
        gc.collect()
        t2 = time.time()
        loss = self.trainer.train_step(self.batches[0])["loss"]
        float(loss.numpy())
        t3 = time.time()
        float(self.trainer.train_step(self.batches[1])["loss"].numpy())
        t4 = time.time()
        self.setup = {"build_s": round(t1 - t0, 1), "batches_s": round(t2 - t1, 1),
                      "compile_and_first_step_s": round(t3 - t2, 1),
                      "warmup_step_s": round(t4 - t3, 1),
                      "params": int(sum(int(tf.size(v)) for v in self.trainer.variables))}
        log(f"  (step) built {self.setup['build_s']} s, compile+first step "
            f"{self.setup['compile_and_first_step_s']} s, warm-up step {self.setup['warmup_step_s']} s")

    def run_once(self) -> dict:
        waited = quiesce()
        load = os.getloadavg()[0]
        per = []
        t0, c0 = time.time(), time.process_time()
        for i in range(self.steps):
            t = time.time()
            float(self.trainer.train_step(self.batches[i % 2])["loss"].numpy())
            per.append(round(time.time() - t, 3))
        wall, cpu = time.time() - t0, time.process_time() - c0
        n = self.steps * self.exp.train.global_batch_size
        r = {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "examples": n,
             "examples_per_s": n / wall, "cpu_s_per_example": cpu / n, "step_s": per,
             "loadavg1": load, "quiesce_s": waited}
        self.runs.append(r)
        log(f"  (step) {r['examples_per_s']:.3f} examples/s ({wall / self.steps:.1f} s/step, "
            f"{r['cpu_s_per_example']:.2f} CPU s/example; load {load:.2f})")
        return r


# --------------------------------------------------------------------------------------------
# Summary and output
# --------------------------------------------------------------------------------------------
def _med(rs: Sequence[dict], k: str) -> float:
    return statistics.median(r[k] for r in rs)


def summarize(inputs: List[InputRow], step: StepRow, batch: int, exp) -> dict:
    step_rate = _med(step.runs, "examples_per_s")
    step_cpu = _med(step.runs, "cpu_s_per_example")
    rows = {}
    for row in inputs:
        rate = _med(row.runs, "crops_per_s")
        paired = statistics.median(a["crops_per_s"] / b["examples_per_s"]
                                   for a, b in zip(row.runs, step.runs))
        cpu = _med(row.runs, "cpu_s_per_crop")
        rows[row.key] = {
            "what": row.what, "size": list(row.size), "crops_per_example": row.k,
            "examples_dir": row.examples_dir, "batches_timed": row.batches,
            "median_crops_per_s": rate,
            "min_crops_per_s": min(r["crops_per_s"] for r in row.runs),
            "max_crops_per_s": max(r["crops_per_s"] for r in row.runs),
            "median_cpu_ms_per_crop": 1000 * cpu,
            "ratio_to_step": rate / step_rate, "paired_ratio_to_step": paired,
            "input_cpu_share_of_step_cpu": cpu / step_cpu,
            "meets_target": rate / step_rate >= TARGET_RATIO,
            "median_ready_batches": statistics.median(r["fast_batches"] for r in row.runs),
            "cores_for_100_examples_per_s_at_5x": TARGET_RATIO * 100 * cpu,
            "warmup": row.warmup, "iterator_checkpoint": row.checkpoint, "runs": row.runs,
        }
    flops = None
    try:
        from trainer import flops as F

        fwd = F.count_analytic(exp.model, 128, 128)["flops"]
        flops = {"forward_flops_per_example_128": fwd,
                 "train_flops_per_example_approx": 3 * fwd,
                 "cpu_achieved_train_gflops_per_s": 3 * fwd * step_rate / 1e9}
    except Exception as e:  # noqa: BLE001 - informative only
        flops = {"error": repr(e)}
    loads = [r["loadavg1"] for row in inputs for r in row.runs] + [r["loadavg1"] for r in step.runs]
    return {
        "step": {"what": f"Trainer.train_step, {exp.name}, global batch {batch}",
                 "median_examples_per_s": step_rate,
                 "min_examples_per_s": min(r["examples_per_s"] for r in step.runs),
                 "max_examples_per_s": max(r["examples_per_s"] for r in step.runs),
                 "median_s_per_step": batch / step_rate,
                 "median_cpu_s_per_example": step_cpu, "setup": step.setup, "runs": step.runs,
                 "flops": flops},
        "inputs": rows,
        "loadavg_before_phases": {"min": min(loads), "median": statistics.median(loads),
                                  "max": max(loads)},
    }


def machine_info() -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    return _machine_info(tensorflow=tf.__version__, keras=keras.__version__, numpy=np.__version__,
                         tf_devices=[d.name for d in tf.config.list_logical_devices()])


def write_results(res: dict, out_dir: str) -> tuple:
    os.makedirs(out_dir, exist_ok=True)
    jpath, mpath = os.path.join(out_dir, "train_input.json"), os.path.join(out_dir, "train_input.md")
    with open(jpath, "w") as f:
        json.dump(res, f, indent=2, sort_keys=True)
        f.write("\n")
    m, c, s = res["machine"], res["config"], res["summary"]
    st = s["step"]
    la = s["loadavg_before_phases"]
    lines = [
        "# Training input vs train step",
        "",
        f"{c['experiment']} (`experiments.get(\"{c['experiment']}\", train={{\"global_batch_size\": {c['batch']}}})`), "
        f"batch {c['batch']} of 128x128 crops, data config crop 128, scales (2, 4, 8), gray target, "
        f"guidance noise sigma {c['guidance_noise_sigma']}, shuffle buffer {c['shuffle_buffer']}; "
        f"{c['repeats']} interleaved repeats, medians. {m['date']}, {m['nproc']} CPUs "
        f"({m['cpu_model']}), {m['mem_gib']} GiB, TF {m['tensorflow']}, Keras {m['keras']}, "
        f"devices {', '.join(m['tf_devices'])}. 1-minute load average before the timed phases: "
        f"{la['min']:.2f}-{la['max']:.2f} (median {la['median']:.2f}); at start "
        f"{res['loadavg_start'][0]:.2f}, at end {res['loadavg_end'][0]:.2f}.",
        "",
        "| row | what | crops (or examples)/s, median | min-max | CPU ms per crop (example) "
        "| ratio input/step | paired ratio | input CPU / step CPU | >= 5x "
        "| cores to feed 100 ex/s at 5x | iterator checkpoint MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|",
        f"| step | {st['what']} ({c['steps']} steps per repeat; {st['median_s_per_step']:.1f} s/step) "
        f"| {st['median_examples_per_s']:.3f} | {st['min_examples_per_s']:.3f}-{st['max_examples_per_s']:.3f} "
        f"| {1000 * st['median_cpu_s_per_example']:.0f} | 1 | | | | | |",
    ]
    order = sorted(s["inputs"].items(),  # the JSON is saved with sorted keys: s, L, L-k4, L-k8
                   key=lambda kv: (kv[1]["size"][0] * kv[1]["size"][1], kv[1]["crops_per_example"]))
    for k, r in order:
        lines.append(
            f"| {k} | {r['what']} ({r['batches_timed']} batches per repeat) | {r['median_crops_per_s']:.2f} "
            f"| {r['min_crops_per_s']:.2f}-{r['max_crops_per_s']:.2f} | {r['median_cpu_ms_per_crop']:.1f} "
            f"| **{r['ratio_to_step']:.1f}x** | {r['paired_ratio_to_step']:.1f}x "
            f"| {100 * r['input_cpu_share_of_step_cpu']:.1f}% | {'MET' if r['meets_target'] else 'MISSED'} "
            f"| {r['cores_for_100_examples_per_s_at_5x']:.1f} "
            f"| {(str(round(r['iterator_checkpoint']['bytes'] / 2**20)) if r['iterator_checkpoint'] else 'n/a')} |")
    lib = [k for k, r in order if r["crops_per_example"] == 1]
    ok = all(s["inputs"][k]["meets_target"] for k in lib)
    fl = st.get("flops") or {}
    lines += [
        "",
        f"Requirement (library pipeline, rows {', '.join(lib)}): input >= {TARGET_RATIO:.0f}x step: "
        f"**{'MET' if ok else 'MISSED'}** on this machine "
        "(" + ", ".join(f"{k}: {s['inputs'][k]['ratio_to_step']:.1f}x" for k in lib) + ").",
        "",
        "Columns: crops/s = batches x batch / wall time of the timed batches (the iterator pulled "
        "as fast as possible, both cores available to tf.data); step examples/s = steps x batch "
        "/ wall time, each step synchronised on its loss; CPU ms = user+sys CPU of this process "
        "over the timed window / crops (examples); ratio = median input crops/s / median step "
        "examples/s; paired ratio = the same within each repeat, then the median; input CPU / "
        "step CPU = CPU per crop / CPU per example: the share of the step's CPU the input would "
        "add if both ran on this CPU; cores to feed 100 ex/s at 5x = 5 x 100 x CPU s per crop: "
        "a projection for an accelerator stepping 100 examples/s (this CPU's cores; scale "
        "linearly); iterator checkpoint = size of tf.train.Checkpoint(iterator=...) of the warm "
        "iterator (what train.py saves with the default strategy), mostly the shuffle buffers.",
        "",
        "Load: the machine is shared; with a 1-minute load average well above the 2 CPUs, the "
        "wall-clock rates of the input rows mostly measure the CPU share this process got "
        "(min-max spread), so compare rows on CPU ms per crop, which is steadier; the ratio "
        "uses wall time as the requirement asks, and step and input phases are interleaved so "
        "both see the same load.",
        "",
        "Rows *-kK* are a PROTOTYPE in the benchmark script (not in trainer/data.py): K crops per "
        "decoded example (decode once, training_element K times with stateless seeds "
        f"(base, K i + j), unbatch, a {c['crop_shuffle']}-crop shuffle, batch).",
    ]
    if "train_flops_per_example_approx" in fl:
        lines += [
            "",
            f"Step cost: {fl['forward_flops_per_example_128'] / 1e9:.1f} GFLOPs forward per 128x128 "
            f"example (trainer/flops.py), ~{fl['train_flops_per_example_approx'] / 1e9:.0f} GFLOPs "
            f"per training example (3x forward); this CPU achieves "
            f"~{fl['cpu_achieved_train_gflops_per_s']:.0f} GFLOP/s on it. Setup: model build "
            f"{st['setup']['build_s']} s, compile + first step {st['setup']['compile_and_first_step_s']} s.",
        ]
    lines += [
        "",
        "Data: " + "; ".join(
            f"{k}: {v['examples']} train examples in {v['files']} GZIP files "
            f"({v['gz_bytes'] / 1e6:.1f} MB), {v['mean_serialized_example_mb']:.2f} MB per serialized "
            f"example (x shuffle buffer {c['shuffle_buffer']} = "
            f"{v['mean_serialized_example_mb'] * c['shuffle_buffer'] / 1e3:.2f} GB buffered), "
            f"{'generated by this run' if v.get('generated') else 'reused'} at `{v['examples_dir']}`"
            for k, v in c["data"].items()) + ".",
        "",
        "Regenerate: `.venv/bin/python -m benchmarks.train_input_bench "
        + " ".join(res["argv"]) + "` (see benchmarks/README.md).",
    ]
    with open(mpath, "w") as f:
        f.write("\n".join(lines) + "\n")
    return jpath, mpath


# --------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=4, help="global batch of input and step (default 4)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats (default 3)")
    ap.add_argument("--steps", type=int, default=2, help="timed train steps per repeat (default 2)")
    ap.add_argument("--batches", type=int, default=12,
                    help="timed input batches per repeat for the 720x1280 row; K x that for the "
                         "K-crop rows (default 12)")
    ap.add_argument("--small-batches", type=int, default=48,
                    help="timed input batches per repeat for the 256x256 row (default 48)")
    ap.add_argument("--drain", type=int, default=2,
                    help="minimum untimed batches before each input timing (default 2)")
    ap.add_argument("--drain-seconds", type=float, default=2.0,
                    help="minimum seconds of untimed batches before each input timing (default 2)")
    ap.add_argument("--no-checkpoint-size", action="store_true",
                    help="skip saving each warm iterator once to measure its checkpoint size")
    ap.add_argument("--pairs", type=int, default=16, help="720x1280 pairs to generate (default 16)")
    ap.add_argument("--crops-per-example", default="4,8",
                    help="K values of the multi-crop prototype, comma-separated; '' to skip")
    ap.add_argument("--crop-shuffle", type=int, default=256,
                    help="crop-level shuffle buffer of the prototype (default 256 crops)")
    ap.add_argument("--small-examples", default=None,
                    help=f"256x256 examples dir (default {LOCAL_EXAMPLES} if it exists, else generated)")
    ap.add_argument("--data-dir", default=None,
                    help="where generated examples go and are reused from (default: a temp dir, removed)")
    ap.add_argument("--no-small", action="store_true", help="skip the 256x256 row")
    ap.add_argument("--experiment", default=EXPERIMENT, help=argparse.SUPPRESS)  # dev: "tiny"
    ap.add_argument("--results-dir", default=RESULTS_DIR)
    ap.add_argument("--render", metavar="JSON",
                    help="only rewrite the md (and json) in --results-dir from a results JSON")
    args = ap.parse_args(argv)
    if args.render:
        with open(args.render) as f:
            res = json.load(f)
        print("wrote", *write_results(res, args.results_dir))
        return 0
    if min(args.batch, args.repeats, args.steps, args.batches, args.small_batches) < 1 or args.drain < 0:
        ap.error("counts must be >= 1 (--drain >= 0)")
    ks = [int(k) for k in args.crops_per_example.split(",") if k.strip()]
    if any(k < 2 for k in ks):
        ap.error("--crops-per-example values must be >= 2")
    _quiet()
    t_start = time.time()
    load_start = list(os.getloadavg())
    tmp = tempfile.mkdtemp(prefix="train_input_bench_")
    data_dir = args.data_dir or os.path.join(tmp, "data")
    try:
        data = {}
        large = prepare_examples(data_dir, args.pairs, LARGE)
        data["720x1280"] = {**large, **split_stats(large["examples_dir"]), "examples": args.pairs}
        small_dir = None
        if not args.no_small:
            small_dir = args.small_examples or (LOCAL_EXAMPLES if os.path.isdir(
                split_dir(LOCAL_EXAMPLES, "train")) else None)
            if small_dir is None:
                small = prepare_examples(data_dir, 48, SMALL)
                small_dir = small["examples_dir"]
                data["256x256"] = {**small, **split_stats(small_dir), "examples": 48}
            else:
                data["256x256"] = {"examples_dir": small_dir, "generated": False, **split_stats(small_dir)}

        log("importing TensorFlow ...")
        t0 = time.time()
        import tensorflow as tf

        from trainer import data as D
        from trainer import experiments

        log(f"  {time.time() - t0:.0f} s")
        for d in data.values():
            n = nbytes = 0
            for rec in tf.data.TFRecordDataset(D.split_files(d["examples_dir"], "train"),
                                               compression_type="GZIP"):
                n, nbytes = n + 1, nbytes + len(rec.numpy())
            d["examples"], d["mean_serialized_example_mb"] = n, round(nbytes / n / 1e6, 3)
        machine = machine_info()
        exp = experiments.get(args.experiment, train={"global_batch_size": args.batch})
        B = args.batch
        inputs: List[InputRow] = []
        warm_small, warm_large = 8, 4
        if small_dir:
            cfg_s = exp.data_config(small_dir)
            inputs.append(InputRow("s", "training_dataset, 256x256 examples", lambda c=cfg_s: D.training_dataset(c, B, seed=0),
                                   small_dir, SMALL, 1, B, args.small_batches, warm_small, args.drain))
        cfg_l = exp.data_config(large["examples_dir"])
        inputs.append(InputRow("L", "training_dataset, 720x1280 examples",
                               lambda: D.training_dataset(cfg_l, B, seed=0),
                               large["examples_dir"], LARGE, 1, B, args.batches, warm_large, args.drain))
        for k in ks:
            inputs.append(InputRow(
                f"L-k{k}", f"prototype: {k} crops per decoded example, 720x1280",
                lambda k=k: multi_crop_dataset(cfg_l, B, k, args.crop_shuffle, seed=0),
                large["examples_dir"], LARGE, k, B, args.batches * k, warm_large, args.drain))
        for row in inputs:
            row.crop, row.scales, row.drain_s = cfg_l.crop_size, tuple(cfg_l.scales), args.drain_seconds
        step = StepRow(exp, small_dir or large["examples_dir"], args.steps, os.path.join(tmp, "trainer_out"))

        log("warming up the input rows (one iterator each, kept for the whole run) ...")
        for row in inputs:
            row.start()
            if not args.no_checkpoint_size:
                row.checkpoint_size(tmp)
        log(f"building {args.experiment} and compiling train_step (minutes on a loaded 2-core machine) ...")
        step.start()

        for rep in range(args.repeats):
            log(f"repeat {rep + 1}/{args.repeats}")
            for row in inputs:
                row.run_once()
            step.run_once()

        summary = summarize(inputs, step, B, exp)
        res = {
            "benchmark": "train_input_bench", "argv": list(argv if argv is not None else sys.argv[1:]),
            "machine": machine, "loadavg_start": load_start, "loadavg_end": list(os.getloadavg()),
            "total_wall_s": round(time.time() - t_start, 1),
            "config": {"experiment": args.experiment, "batch": B, "repeats": args.repeats,
                       "steps": args.steps, "batches_large": args.batches,
                       "batches_small": args.small_batches, "batches_multicrop": {k: args.batches * k for k in ks},
                       "drain": args.drain, "crops_per_example": ks, "crop_shuffle": args.crop_shuffle,
                       "crop_size": cfg_l.crop_size, "scales": list(cfg_l.scales),
                       "target": cfg_l.target, "guidance_noise_sigma": cfg_l.guidance_noise_sigma,
                       "shuffle_buffer": cfg_l.shuffle_buffer, "seed": 0, "target_ratio": TARGET_RATIO,
                       "data": data},
            "summary": summary,
        }
        jpath, mpath = write_results(res, args.results_dir)
        log(f"wrote {mpath} and {jpath} (total {res['total_wall_s']:.0f} s)")
        with open(mpath) as f:
            print(f.read())
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
