"""Ingest throughput: pairs per second on 720x1280 RGB pairs, three ways side by side (+2 diagnostics).

    .venv/bin/python -m benchmarks.ingest_bench [--pairs N] [--repeats R]

  (a) floor     a plain single-process loop doing only the unavoidable work: read both PNG files,
                decode.process_pair_bytes (decode both PNGs, validate, luma pyramid, image
                statistics, serialize the tf.train.Example), write one GZIP TFRecord file
                (gzip level 6 = Beam's zlib.Z_DEFAULT_COMPRESSION, framing and CRC by Beam's own
                tfrecordio._TFRecordUtil.write_record).
  (b) beam-1    run_ingest() on the default DirectRunner (FnApiRunner, in memory, 1 worker).
  (c) beam-2    run_ingest() with --direct_num_workers=2 --direct_running_mode=multi_processing.
  (d) beam-2+pyc  (c) again, with the worker processes allowed to cache bytecode (a warm
                PYTHONPYCACHEPREFIX under the temp dir). Diagnostic row: where the environment
                sets PYTHONDONTWRITEBYTECODE=1 and the venv holds no .pyc files, every Beam worker
                process byte-compiles apache_beam and its dependencies at start-up; (d) - (c) is
                that cost. Skip it with --no-pycache-row.
  (e) floor x2  two plain processes, already running and warm, each doing the floor loop on every
                other pair into its own file: what 2 processes can get from this machine at all,
                with no framework (diagnostic; skip with --no-parallel-floor-row).

The input is generated once (deterministically) into a temporary GoPro layout tree
GOPRO_Large/test/<seq>/{blur,sharp}/<frame>.png of photographic-like content: upscaled crops of
the scikit-image sample photographs plus sensor-like noise, the blurry frame a Gaussian-blurred
copy with its own noise, so the PNGs are ~1.2-1.7 MB like the real GoPro frames.

Repeats are interleaved (a, b, c, d, e, a1, b1, c1, d1, a, b, ...) so machine drift hits every row
alike.
The Beam timings are the whole run_ingest() call: planning (listing), pipeline construction,
worker start-up, the run and the summary. The fixed cost is measured separately by the same
runs on a one-pair tree (rows a1-d1): fixed ~= T(1 pair) - T_floor(1 pair), and the marginal
rate is (N - 1) / (T(N) - T(1)).

Results: benchmarks/results/ingest.md and benchmarks/results/ingest.json.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import resource
import shutil
import statistics
import struct
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Dict, List, Tuple

import numpy as np

from benchmarks.machine import machine_info as _machine_info
from core.artifacts import split_dir

HEIGHT, WIDTH = 720, 1280
PAIRS_PER_SEQ = 8
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")  # not in git
TWO_WORKERS = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
TARGET_RATIO = 1.5  # the target: beam-2 at least 1.5x the single-process floor

ROWS = {
    "a": "floor: single-process loop (read, process_pair_bytes, GZIP TFRecord)",
    "b": "Beam DirectRunner, in memory, 1 worker (run_ingest)",
    "c": "Beam DirectRunner, multi_processing, 2 workers (run_ingest)",
    "d": "(c) with a warm bytecode cache for the worker processes (diagnostic)",
    "e": "2 plain processes (already running), each the floor loop on half the pairs: the "
         "machine's 2-process ceiling (diagnostic)",
}


def _quiet() -> None:
    # google-auth / api-core print FutureWarnings on import; Beam warns about python-snappy.
    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")  # Beam's worker processes
    import logging

    logging.getLogger("apache_beam.io.tfrecordio").setLevel(logging.ERROR)


def log(msg: str) -> None:
    print(f"[ingest_bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Input data
# --------------------------------------------------------------------------------------------
def _sources() -> List[np.ndarray]:
    import skimage.data as skd

    return [skd.astronaut(), skd.coffee(), skd.chelsea(), skd.rocket(), skd.hubble_deep_field()]


def _make_pair(args: Tuple[str, str, int, int, int]) -> int:
    """Writes one blurry/sharp pair; returns the bytes written."""
    from PIL import Image, ImageFilter

    blur_path, sharp_path, index, h, w = args
    rng = np.random.default_rng(1000 + index)
    src = _sources()[index % 5]
    sh, sw = src.shape[:2]
    # A 16:9 crop covering 50-90% of the largest one that fits, upscaled to h x w.
    cw = min(sw, int(sh * w / h))
    cw = int(cw * rng.uniform(0.5, 0.9))
    ch = max(1, int(cw * h / w))
    y0, x0 = int(rng.integers(0, sh - ch + 1)), int(rng.integers(0, sw - cw + 1))
    crop = Image.fromarray(src[y0:y0 + ch, x0:x0 + cw]).resize((w, h), Image.BICUBIC)
    sharp = np.asarray(crop, dtype=np.float32) + rng.normal(0.0, rng.uniform(2.0, 4.0), (h, w, 3))
    sharp = np.clip(sharp, 0, 255).astype(np.uint8)
    blurry = Image.fromarray(sharp).filter(ImageFilter.GaussianBlur(rng.uniform(2.0, 4.0)))
    blurry = np.asarray(blurry, dtype=np.float32) + rng.normal(0.0, 1.5, (h, w, 3))
    blurry = np.clip(blurry, 0, 255).astype(np.uint8)
    n = 0
    for path, arr in ((blur_path, blurry), (sharp_path, sharp)):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(arr, "RGB").save(path, format="PNG")  # Pillow's default level, like most tools
        n += os.path.getsize(path)
    return n


def make_gopro_tree(root: str, n_pairs: int, h: int, w: int, first_index: int = 0) -> int:
    """GOPRO_Large/test/<seq>/{blur,sharp}/<frame>.png under root; returns total PNG bytes."""
    jobs = []
    for k in range(n_pairs):
        seq = f"GOPR{k // PAIRS_PER_SEQ + 1:04d}_00"
        frame = f"{k % PAIRS_PER_SEQ:06d}.png"
        d = os.path.join(root, "GOPRO_Large", "test", seq)
        jobs.append((os.path.join(d, "blur", frame), os.path.join(d, "sharp", frame),
                     first_index + k, h, w))
    workers = max(1, min(len(jobs), os.cpu_count() or 1))
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as ex:
        return sum(ex.map(_make_pair, jobs))


def gopro_pairs(root: str) -> List[Tuple[str, str, str]]:
    """(pair_id, blurry path, sharp path) of a tree written by make_gopro_tree, sorted."""
    base = os.path.join(root, "GOPRO_Large", "test")
    out = []
    for seq in sorted(os.listdir(base)):
        for name in sorted(os.listdir(os.path.join(base, seq, "sharp"))):
            out.append((f"gopro/test/{seq}/{name}", os.path.join(base, seq, "blur", name),
                        os.path.join(base, seq, "sharp", name)))
    return out


# --------------------------------------------------------------------------------------------
# The three ways
# --------------------------------------------------------------------------------------------
def floor_loop(pairs: List[Tuple[str, str, str]], path: str) -> Tuple[int, float]:
    """The unavoidable work, in one loop, into one GZIP TFRecord file. Returns (examples
    written, CPU seconds of this process)."""
    from apache_beam.io.tfrecordio import _TFRecordUtil

    from components.ingest import decode

    cpu0 = time.process_time()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    n = 0
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6) as f:
        for pair_id, blur_path, sharp_path in pairs:
            with open(blur_path, "rb") as fb:
                blurry = fb.read()
            with open(sharp_path, "rb") as fs:
                sharp = fs.read()
            example, _ = decode.process_pair_bytes(
                blurry, sharp, pair_id=pair_id, dataset="gopro", domain="in", split="test")
            _TFRecordUtil.write_record(f, example)
            n += 1
    return n, time.process_time() - cpu0


def run_floor(root: str, out_dir: str) -> int:
    """(a): the floor loop over every pair. Returns the number of examples written."""
    path = os.path.join(split_dir(out_dir, "test"), "data_tfrecord-00000-of-00001.gz")
    return floor_loop(gopro_pairs(root), path)[0]


def _floor_part(args) -> Tuple[int, float]:
    return floor_loop(*args)


def _pool_warm(_) -> None:
    _quiet()
    import apache_beam.io.tfrecordio  # noqa: F401

    from components.ingest import decode  # noqa: F401

    time.sleep(1.0)  # keeps this worker busy so the other task starts the second worker


def run_floor2(pool, root: str, out_dir: str) -> Tuple[int, float]:
    """(e): two already-running processes, each the floor loop on every other pair, each into
    its own file. Returns (examples written, CPU seconds of the two processes)."""
    pairs = gopro_pairs(root)
    parts = [(pairs[i::2], os.path.join(split_dir(out_dir, "test"),
                                             f"data_tfrecord-{i:05d}-of-00002.gz"))
             for i in range(2)]
    done = list(pool.map(_floor_part, parts))
    return sum(n for n, _ in done), sum(c for _, c in done)


def run_beam(root: str, out_dir: str, beam_args: List[str]) -> int:
    """(b) / (c): the library entry point. Returns the number of examples written."""
    from components.ingest.beam_ingest import run_ingest
    from components.ingest.sources import IngestOptions, IngestSource

    summary = run_ingest([IngestSource("gopro", root)], out_dir, IngestOptions(), beam_args)
    if summary["status"] != "ok" or summary["quarantined"]:
        raise RuntimeError(f"ingest did not write every pair: {summary}")
    return summary["written"]


def warm_up(tmp: str) -> None:
    """One untimed floor run on a small pair: imports, Pillow plugins, the CRC function."""
    import apache_beam.io.tfrecordio  # noqa: F401
    import components.ingest.beam_ingest  # noqa: F401

    root = os.path.join(tmp, "warmup")
    make_gopro_tree(root, 1, 64, 96)
    run_floor(root, os.path.join(tmp, "warmup_out"))
    shutil.rmtree(os.path.join(tmp, "warmup_out"), ignore_errors=True)


def _cpu() -> Tuple[float, float]:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime, c.ru_utime + c.ru_stime


class _worker_pycache:
    """Lets processes started inside the block (Beam's SDK workers inherit os.environ) write and
    read bytecode under `prefix` instead of byte-compiling every import."""

    def __init__(self, prefix: str):
        self.prefix, self.saved = prefix, {}

    def __enter__(self):
        for k in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX"):
            self.saved[k] = os.environ.pop(k, None)
        os.environ["PYTHONPYCACHEPREFIX"] = self.prefix

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            os.environ.pop(k, None)
            if v is not None:
                os.environ[k] = v


def warm_pycache(prefix: str) -> float:
    """Fills the bytecode cache of row (d) with what a worker imports (untimed)."""
    import subprocess

    t0 = time.perf_counter()
    with _worker_pycache(prefix):
        subprocess.run([sys.executable, "-c", "import apache_beam.runners.worker.sdk_worker_main, "
                        "components.ingest.beam_ingest"], check=True, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def timed(kind: str, root: str, out_dir: str, expected: int, pycache: str,
          pool=None) -> Dict[str, float]:
    shutil.rmtree(out_dir, ignore_errors=True)
    load = os.getloadavg()[0]
    pool_cpu = 0.0
    cpu0, t0 = _cpu(), time.perf_counter()
    if kind == "a":
        n = run_floor(root, out_dir)
    elif kind == "e":
        n, pool_cpu = run_floor2(pool, root, out_dir)
    elif kind == "d":
        with _worker_pycache(pycache):
            n = run_beam(root, out_dir, TWO_WORKERS)
    else:
        n = run_beam(root, out_dir, [] if kind == "b" else TWO_WORKERS)
    wall = time.perf_counter() - t0
    cpu1 = _cpu()
    if n != expected:
        raise RuntimeError(f"{kind}: wrote {n} examples, expected {expected}")
    # The pool's processes are reaped only at the end: their CPU is what they measured.
    return {"wall_s": wall, "cpu_self_s": cpu1[0] - cpu0[0],
            "cpu_children_s": cpu1[1] - cpu0[1] + pool_cpu, "loadavg_1min_before": load}


# --------------------------------------------------------------------------------------------
# Output check (once, outside the timings): every way writes the same examples
# --------------------------------------------------------------------------------------------
def read_records(path: str):
    with gzip.open(path, "rb") as f:
        data = f.read()
    pos = 0
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos:pos + 8])
        yield data[pos + 12:pos + 12 + length]
        pos += 12 + length + 4


def output_digest(out_dir: str) -> Tuple[List[str], int, int]:
    """(sorted sha256 of the examples, total example bytes, total .gz bytes) of Split-test."""
    d = split_dir(out_dir, "test")
    shas, ex_bytes, gz_bytes = [], 0, 0
    for name in sorted(os.listdir(d)):
        if name.endswith(".gz"):
            gz_bytes += os.path.getsize(os.path.join(d, name))
            for r in read_records(os.path.join(d, name)):
                shas.append(hashlib.sha256(r).hexdigest())
                ex_bytes += len(r)
    return sorted(shas), ex_bytes, gz_bytes


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------
def machine_info() -> dict:
    import apache_beam
    import PIL

    return _machine_info(apache_beam=apache_beam.__version__, numpy=np.__version__,
                         pillow=PIL.__version__)


def summarize(times: Dict[str, List[dict]], n_pairs: int) -> dict:
    med = {k: statistics.median(r["wall_s"] for r in v) for k, v in times.items()}
    cpu = {k: statistics.median(r["cpu_self_s"] + r["cpu_children_s"] for r in v)
           for k, v in times.items()}
    rows = {}
    for k in [k for k in ("a", "b", "c", "d", "e") if k in times]:
        walls = [r["wall_s"] for r in times[k]]
        rate = [n_pairs / w for w in walls]
        row = {
            "what": ROWS[k],
            "wall_s": walls,
            "median_wall_s": med[k],
            "median_pairs_per_s": n_pairs / med[k],
            "min_pairs_per_s": min(rate),
            "max_pairs_per_s": max(rate),
            "ratio_to_floor": med["a"] / med[k],
            # Interleaved repeats: the ratio within each repeat, then its median (robust to drift).
            "paired_ratio_to_floor": statistics.median(
                a["wall_s"] / r["wall_s"] for a, r in zip(times["a"], times[k])),
            "median_cpu_s": cpu[k],
        }
        one = k + "1"
        if one in times:
            row["one_pair_wall_s"] = med[one]
            row["one_pair_wall_s_all"] = [r["wall_s"] for r in times[one]]
            row["fixed_cost_s"] = med[one] - med["a1"]
            row["fixed_cpu_s"] = cpu[one] - cpu["a1"]
            # Per repeat (the N-pair and 1-pair runs of a repeat are close in time), then the
            # median; unreliable when the spread of the 1-pair runs is comparable to the
            # per-pair part, hence the min-max.
            diffs = [r["wall_s"] - r1["wall_s"] for r, r1 in zip(times[k], times[one])]
            rates = [(n_pairs - 1) / d if d > 0 else None for d in diffs]  # None: 1 pair > N
            valid = [x for x in rates if x is not None]
            row["marginal_pairs_per_s_all"] = rates
            row["marginal_pairs_per_s"] = statistics.median(valid) if valid else None
            row["marginal_cpu_s_per_pair"] = (cpu[k] - cpu[one]) / (n_pairs - 1)
        rows[k] = row
    if "a1" in times:
        for row in rows.values():
            m, fm = row.get("marginal_pairs_per_s"), rows["a"].get("marginal_pairs_per_s")
            if "marginal_pairs_per_s" in row:
                row["marginal_ratio_to_floor"] = m / fm if m and fm else None
    return rows


def _marg(r: dict) -> str:
    if r.get("marginal_pairs_per_s") is None:
        return "n/a"
    a = [x for x in r["marginal_pairs_per_s_all"] if x is not None]
    bad = len(r["marginal_pairs_per_s_all"]) - len(a)
    return (f"{r['marginal_pairs_per_s']:.3f} ({min(a):.2f}-{max(a):.2f}"
            + (f"; {bad} repeat(s) with wall(1) >= wall(N)" if bad else "") + ")")


def write_results(results: dict, out_dir: str) -> Tuple[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    jpath, mpath = os.path.join(out_dir, "ingest.json"), os.path.join(out_dir, "ingest.md")
    with open(jpath, "w") as f:
        json.dump(results, f, indent=2, sort_keys=True)
        f.write("\n")
    m, cfg, rows = results["machine"], results["config"], results["rows"]
    fmt = lambda v, p=2: "n/a" if v is None else f"{v:.{p}f}"  # noqa: E731
    lines = [
        "# Ingest throughput",
        "",
        f"{cfg['pairs']} pairs of {cfg['height']}x{cfg['width']} RGB PNG "
        f"({cfg['mean_png_mb_per_pair']:.2f} MB per pair on disk, "
        f"{cfg['mean_example_mb']:.2f} MB per serialized example, "
        f"{cfg['gz_over_examples']:.3f} GZIP ratio), {cfg['repeats']} interleaved repeats. "
        f"{m['date']}, {m['nproc']} CPUs ({m['cpu_model']}), Python {m['python']}, "
        f"Beam {m['apache_beam']}; load average at start {m['loadavg_start'][0]:.2f}, "
        f"at end {m['loadavg_end'][0]:.2f}.",
        "",
        "| row | what | median wall s | pairs/s (median) | pairs/s min-max | ratio to floor "
        "| paired ratio | CPU s | 1-pair run s | fixed cost s (wall / CPU) | marginal pairs/s "
        "| marginal ratio | marginal CPU s/pair |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for k in rows:
        r = rows[k]
        lines.append(
            f"| ({k}) | {r['what']} | {fmt(r['median_wall_s'])} | {fmt(r['median_pairs_per_s'], 3)} "
            f"| {fmt(r['min_pairs_per_s'], 3)}-{fmt(r['max_pairs_per_s'], 3)} "
            f"| {fmt(r['ratio_to_floor'])} | {fmt(r['paired_ratio_to_floor'])} "
            f"| {fmt(r['median_cpu_s'], 1)} | {fmt(r.get('one_pair_wall_s'))} "
            f"| {fmt(r.get('fixed_cost_s'), 1)} / {fmt(r.get('fixed_cpu_s'), 1)} "
            f"| {_marg(r)} | {fmt(r.get('marginal_ratio_to_floor'))} "
            f"| {fmt(r.get('marginal_cpu_s_per_pair'), 3)} |")
    c = rows["c"]
    verdict = "MET" if c["ratio_to_floor"] >= TARGET_RATIO else "MISSED"
    lines += [
        "",
        f"Target (c) >= {TARGET_RATIO}x (a): **{verdict}** ({c['ratio_to_floor']:.2f}x on medians, "
        f"{c['paired_ratio_to_floor']:.2f}x paired"
        + (f"; steady state without the fixed cost: {c['marginal_ratio_to_floor']:.2f}x"
           if c.get("marginal_ratio_to_floor") else "") + ").",
        f"Outputs identical across all rows (same set of serialized examples): "
        f"{results['outputs_identical']}.",
        "",
        "Columns: ratio to floor = median floor wall / median wall; paired ratio = median over "
        "repeats of floor wall / wall in the same repeat; CPU s = user+sys of this process and "
        "of its reaped child processes (Beam's worker processes) during the run; 1-pair run = "
        "the same run on a one-pair tree; fixed cost = 1-pair run - floor 1-pair run "
        "(planning, pipeline construction, worker start-up, summary), in wall and CPU seconds; "
        "marginal pairs/s = (N - 1) / (wall(N) - wall(1)) within each repeat, median (min-max): "
        "the steady-state rate with the fixed cost removed, only as good as the fixed cost is "
        "steady (see the min-max); marginal ratio = that rate / the floor's; marginal CPU s/pair "
        "= (CPU(N) - CPU(1)) / (N - 1) on the medians. Other columns: medians over the repeats.",
        "",
        f"Machine load: the 1-minute load average before each timed run was "
        f"{results['loadavg_before_runs']['min']:.2f}-{results['loadavg_before_runs']['max']:.2f} "
        f"(median {results['loadavg_before_runs']['median']:.2f}) on {m['nproc']} CPUs; the "
        "machine is shared, so a 2-worker run cannot count on 2 idle cores.",
        "",
        "Regenerate: `.venv/bin/python -m benchmarks.ingest_bench"
        f" --pairs {cfg['pairs']} --repeats {cfg['repeats']}` (see benchmarks/README.md).",
    ]
    with open(mpath, "w") as f:
        f.write("\n".join(lines) + "\n")
    return jpath, mpath


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=24, help="pairs in the tree (default 24)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats (default 3)")
    ap.add_argument("--no-startup", action="store_true",
                    help="skip the one-pair runs that measure the fixed cost")
    ap.add_argument("--no-pycache-row", action="store_true",
                    help="skip row (d), the 2-worker pipeline with a warm worker bytecode cache")
    ap.add_argument("--no-parallel-floor-row", action="store_true",
                    help="skip row (e), two plain processes splitting the floor loop")
    ap.add_argument("--results-dir", default=RESULTS_DIR)
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args(argv)
    if args.pairs < 2 or args.repeats < 1:
        ap.error("--pairs must be >= 2 and --repeats >= 1")
    _quiet()

    tmp = tempfile.mkdtemp(prefix="ingest_bench_")
    pool = None
    try:
        data, one = os.path.join(tmp, "data"), os.path.join(tmp, "one")
        t0 = time.perf_counter()
        png_bytes = make_gopro_tree(data, args.pairs, HEIGHT, WIDTH)
        if not args.no_startup:
            make_gopro_tree(one, 1, HEIGHT, WIDTH)
        log(f"generated {args.pairs} pairs ({png_bytes / args.pairs / 1e6:.2f} MB per pair) "
            f"in {time.perf_counter() - t0:.1f}s under {tmp}")
        info = machine_info()
        info["env_PYTHONDONTWRITEBYTECODE"] = os.environ.get("PYTHONDONTWRITEBYTECODE")
        # Everything this process needs is imported (and Pillow's lazily loaded plugins are
        # loaded) before the first timing.
        warm_up(tmp)

        kinds = (["a", "b", "c"] + ([] if args.no_pycache_row else ["d"])
                 + ([] if args.no_parallel_floor_row else ["e"]))
        order = kinds + ([] if args.no_startup else [k + "1" for k in kinds if k != "e"])
        if "e" in kinds:
            pool = ProcessPoolExecutor(2, mp_context=get_context("spawn"))
            list(pool.map(_pool_warm, range(2)))
        pycache = os.path.join(tmp, "pycache")
        if not args.no_pycache_row:
            log(f"warmed the worker bytecode cache for row (d) in {warm_pycache(pycache):.1f}s")
        times: Dict[str, List[dict]] = {k: [] for k in order}
        identical = None
        for rep in range(args.repeats):
            for k in order:
                root, n = (one, 1) if k.endswith("1") else (data, args.pairs)
                out = os.path.join(tmp, "out", k)
                r = timed(k[0], root, out, n, pycache, pool)
                times[k].append(r)
                log(f"repeat {rep + 1}/{args.repeats} ({k}) {r['wall_s']:.2f}s "
                    f"{n / r['wall_s']:.3f} pairs/s")
                if rep == 0 and n == args.pairs:
                    digest = output_digest(out)
                    if k == "a":
                        ref = digest
                    else:
                        identical = (identical is not False) and digest[0] == ref[0]
                shutil.rmtree(out, ignore_errors=True)
        info["loadavg_end"] = list(os.getloadavg())
        loads = [r["loadavg_1min_before"] for v in times.values() for r in v]
        results = {
            "loadavg_before_runs": {"min": min(loads), "max": max(loads),
                                    "median": statistics.median(loads)},
            "machine": info,
            "config": {
                "pairs": args.pairs, "repeats": args.repeats, "height": HEIGHT, "width": WIDTH,
                "mean_png_mb_per_pair": png_bytes / args.pairs / 1e6,
                "mean_example_mb": ref[1] / args.pairs / 1e6,
                "gz_over_examples": ref[2] / ref[1],
                "beam_args_c": TWO_WORKERS,
                "floor": "read files; components.ingest.decode.process_pair_bytes; "
                         "gzip.GzipFile(compresslevel=6) + apache_beam tfrecordio "
                         "_TFRecordUtil.write_record, one file",
                "order": order,
            },
            "rows": summarize(times, args.pairs),
            "raw": times,
            "outputs_identical": identical,
            "target_ratio_c_over_a": TARGET_RATIO,
        }
        jpath, mpath = write_results(results, args.results_dir)
        with open(mpath) as f:
            print(f.read())
        log(f"wrote {mpath} and {jpath}")
    finally:
        if pool is not None:
            pool.shutdown()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
