"""`deblur serve` under load: latency, throughput and memory over real HTTP on 127.0.0.1, with
the bare SavedModel call timed side by side in the same run.

    .venv/bin/python -m benchmarks.serve_bench [--requests 200] [--concurrency 1,4,8]
        [--size 256] [--max-seconds 150] [--load-setting ddpm:2:1.0:1] [--no-registered]
    (make serve-bench ARGS=...)

1. bare     the SavedModel alone in the serving venv (.venv-serve, TensorFlow 2.21): a process
            that loads the model and times components.serving.runtime.deblur_image, the very
            call the server makes, on the same image at the same setting (after one warm-up).
2. load     a registry (a temporary folder) holding the repository's base model (models/local)
            registered with the load setting; `deblur serve` (serve_process, the server in
            .venv-serve) on a free port of 127.0.0.1; at each concurrency C, C client threads
            send --requests requests in all (each waits for its answer before the next: a
            closed loop), binary tensor extension both ways; bounded by --max-seconds per level.
            Latency p50/p95/p99, requests/s, errors (must be 0), and the server's peak resident
            memory (VmHWM of /proc/<pid>/status) after all levels.
3. registered  one request each at 256x256 and 1280x720 at the base model's registered setting
            (its deblur.json default_sampling, ddpm T=20 K=4), served (a second registry
            version, `/versions/2/infer`) and bare.

Why the load runs a cheap setting (T=2, K=1, one tenth of a second per 256x256 request): at the
registered setting one 256x256 request takes ~6 s on 2 cores, so 200 requests at three
concurrencies would take an hour. The server's own cost (HTTP, parsing, the copy of the pixels,
the event loop) is per request, not per sampling step, so the cheaper the setting, the larger
its share: the overhead measured at T=2 bounds the one at T=20 from above.

Overhead = served p50 at concurrency 1 / bare p50 - 1 (goal <= 10%); concurrency 4 should
serve at least the requests/s of concurrency 1 (goal: both cores used).
Results: benchmarks/results/serve_bench.md and .json.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

import numpy as np

from core.artifacts import model_info_path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE_MODEL = os.path.join(REPO, "models", "local")
NAME = "deblur-icdpm"
OUT = os.path.join(REPO, "benchmarks", "out", "serve_bench")


def _setting(text: str) -> dict:
    sampler, steps, max_noise, samples = text.split(":")
    return {"sampler": sampler, "steps": int(steps), "max_noise": float(max_noise),
            "samples": int(samples)}


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    # smooth content with edges (a blurred-looking picture), not white noise
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h // 16 + 2, w // 16 + 2, 3)).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w] / 16.0
    img = base[yy.astype(int), xx.astype(int)]
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


def _pct(values: List[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


# ------------------------------------------------------------------------------- bare
def bare_main(argv) -> int:
    """Runs in .venv-serve: times runtime.deblur_image; prints JSON {"seconds": [...]}."""
    p = argparse.ArgumentParser()
    p.add_argument("--bare", action="store_true")
    p.add_argument("--model-dir", required=True)
    p.add_argument("--setting", required=True)
    p.add_argument("--sizes", required=True, help="HxW,HxW,...")
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--max-seconds", type=float, default=60)
    p.add_argument("--stdin", action="store_true")
    a = p.parse_args(argv)
    import tensorflow as tf

    from components.serving import runtime
    from trainer.setting import SamplingSetting

    loaded = tf.saved_model.load(a.model_dir)
    setting = SamplingSetting(**_setting(a.setting))
    out = {"tensorflow": tf.__version__, "sizes": {}}
    # warm-up as the server's (one 16x16 call): the first call at each size is timed as the
    # server's first request at that size is
    runtime.deblur_image(loaded, _image(16, 16), SamplingSetting(setting.sampler, 1,
                                                                 setting.max_noise, 1))
    if a.stdin:  # interleaved with the served requests: "N" on stdin -> N timings on stdout
        h, w = (int(v) for v in a.sizes.split(",")[0].split("x"))
        image = _image(h, w)
        runtime.deblur_image(loaded, image, setting, seed=0)  # as the server's warm-up requests
        print(json.dumps({"tensorflow": tf.__version__, "ready": True}), flush=True)
        # in a worker thread, as the server runs it (its executor), not on the main thread
        pool = concurrent.futures.ThreadPoolExecutor(1)
        for line in sys.stdin:
            times = []
            for _ in range(int(line)):
                t0 = time.perf_counter()
                pool.submit(runtime.deblur_image, loaded, image, setting, seed=0).result()
                times.append(time.perf_counter() - t0)
            print(json.dumps(times), flush=True)
        return 0
    for size in a.sizes.split(","):
        h, w = (int(v) for v in size.split("x"))
        image = _image(h, w)
        times, t_end = [], time.monotonic() + a.max_seconds
        for i in range(a.n):
            t0 = time.perf_counter()
            runtime.deblur_image(loaded, image, setting, seed=0)
            times.append(time.perf_counter() - t0)
            if time.monotonic() > t_end:
                break
        out["sizes"][size] = times
    print(json.dumps(out))
    return 0


def run_bare(python: str, setting: str, sizes: List[str], n: int, max_seconds: float) -> Dict:
    from components.serving.process import server_env

    cmd = [python, "-m", "benchmarks.serve_bench", "--bare", "--model-dir", BASE_MODEL,
           "--setting", setting, "--sizes", ",".join(sizes), "--n", str(n),
           "--max-seconds", str(max_seconds)]
    proc = subprocess.run(cmd, cwd=REPO, env=server_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"bare run failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------- load
def load_level(url: str, image: np.ndarray, requests: int, concurrency: int,
               max_seconds: float, version: int) -> Dict:
    from components.serving.client import V2Client

    client = V2Client(url, timeout=600)
    body, headers, path = client.infer_request(NAME, image, "binary", version=version, seed=0)
    latencies, errors, sent = [], [], [0]
    deadline = time.monotonic() + max_seconds
    import threading

    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                if sent[0] >= requests or time.monotonic() > deadline:
                    return
                sent[0] += 1
            t0 = time.perf_counter()
            try:
                _, rh, rb = client.request("POST", path, body, headers)
                out, v, _ = client.parse_infer(rh, rb)
                if out.shape != image.shape or v != str(version):
                    raise ValueError(f"wrong answer: {out.shape}, version {v}")
                latencies.append(time.perf_counter() - t0)
            except Exception as e:  # noqa: BLE001 - counted, reported
                errors.append(f"{type(e).__name__}: {e}"[:200])

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(worker) for _ in range(concurrency)]:
            f.result()
    wall = time.perf_counter() - t0
    done = len(latencies)
    return {"concurrency": concurrency, "requests": done + len(errors), "ok": done,
            "errors": len(errors), "error_samples": errors[:3], "wall_s": round(wall, 2),
            "rps": round(done / wall, 3) if wall else None,
            "p50_s": round(_pct(latencies, 50), 4), "p95_s": round(_pct(latencies, 95), 4),
            "p99_s": round(_pct(latencies, 99), 4),
            "mean_s": round(statistics.mean(latencies), 4) if latencies else None,
            "bounded_by_time": done + len(errors) < requests, "latencies": latencies}


def interleaved(python: str, url: str, image: np.ndarray, setting: str, size: str,
                rounds: int, per_round: int) -> Dict:
    """The overhead, measured fairly on a shared machine: a bare process (the model loaded,
    warmed up) and the server alternate, `per_round` bare calls then `per_round` requests at
    concurrency 1, `rounds` times, so that machine drift hits both alike."""
    from components.serving.process import server_env

    cmd = [python, "-m", "benchmarks.serve_bench", "--bare", "--stdin", "--model-dir",
           BASE_MODEL, "--setting", setting, "--sizes", size]
    proc = subprocess.Popen(cmd, cwd=REPO, env=server_env(), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    bare, served = [], []
    try:
        json.loads(proc.stdout.readline())  # loaded
        for _ in range(rounds):
            proc.stdin.write(f"{per_round}\n")
            proc.stdin.flush()
            bare += json.loads(proc.stdout.readline())
            lv = load_level(url, image, per_round, 1, 1e9, 1)
            if lv["errors"]:
                raise SystemExit(f"errors while measuring the overhead: {lv['error_samples']}")
            served += lv["latencies"]
    finally:
        proc.stdin.close()
        proc.wait(60)
    b50, s50 = _pct(bare, 50), _pct(served, 50)
    return {"rounds": rounds, "per_round": per_round, "bare_p50_s": round(b50, 4),
            "served_p50_s": round(s50, 4), "bare_mean_s": round(statistics.mean(bare), 4),
            "served_mean_s": round(statistics.mean(served), 4),
            "overhead_p50": round(s50 / b50 - 1, 4),
            "overhead_mean": round(statistics.mean(served) / statistics.mean(bare) - 1, 4)}


def vm_hwm_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--bare" in argv:
        return bare_main(argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--concurrency", default="1,4,8")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--max-seconds", type=float, default=150.0, help="per concurrency level")
    p.add_argument("--load-setting", default="ddpm:2:1.0:1")
    p.add_argument("--bare-n", type=int, default=40)
    p.add_argument("--rounds", type=int, default=6,
                   help="interleaved rounds of bare calls and served requests (the overhead)")
    p.add_argument("--per-round", type=int, default=10)
    p.add_argument("--threads", type=int, default=None, help="the server's --threads")
    p.add_argument("--no-registered", action="store_true",
                   help="skip the registered-setting latencies (256x256 and 1280x720)")
    p.add_argument("--note", default="", help="what the machine was doing, for the record")
    p.add_argument("--out", default=OUT)
    a = p.parse_args(argv)

    sys.path.insert(0, REPO)
    from benchmarks.machine import machine_info
    from components.registry.registry import Registry
    from components.serving import process

    python = process.ensure_serve_venv()
    with open(model_info_path(BASE_MODEL)) as f:
        registered = json.load(f)["default_sampling"]
    reg_text = (f"{registered['sampler']}:{registered['steps']}:{registered['max_noise']}:"
                f"{registered['samples']}")
    size = f"{a.size}x{a.size}"
    result = {"machine": machine_info(), "note": a.note, "load_setting": _setting(a.load_setting),
              "registered_setting": registered, "size": size, "requests": a.requests}
    print(f"bare SavedModel call, {size}, {a.load_setting} ...", file=sys.stderr)
    bare = run_bare(python, a.load_setting, [size], a.bare_n, 60)
    bt = bare["sizes"][size]
    result["bare"] = {"n": len(bt), "p50_s": round(_pct(bt, 50), 4), "p95_s": round(_pct(bt, 95), 4),
                      "mean_s": round(statistics.mean(bt), 4), "tensorflow": bare["tensorflow"]}
    tmp = tempfile.mkdtemp(prefix="serve-bench-")
    try:
        reg = Registry(tmp)
        manifest = {"blessing": {"blessed": True}, "sampling_source": "serve_bench"}
        assert reg.push(BASE_MODEL, dict(manifest, sampling=_setting(a.load_setting))) == 1
        assert reg.push(BASE_MODEL, dict(manifest, sampling=registered)) == 2
        extra = ["--threads", str(a.threads)] if a.threads else []
        with process.serve_process(tmp, f"{NAME}/1", poll_seconds=0, extra_args=extra,
                                   log_path=os.path.join(tmp, "server.log")) as server:
            image = _image(a.size, a.size)
            load_level(server.url, image, 4, 1, 60, 1)  # warm-up
            result["interleaved"] = interleaved(python, server.url, image, a.load_setting, size,
                                                a.rounds, a.per_round)
            print(f"  interleaved: {result['interleaved']}", file=sys.stderr)
            levels = []
            for c in [int(v) for v in a.concurrency.split(",")]:
                print(f"load: {a.requests} requests at concurrency {c} ...", file=sys.stderr)
                levels.append(load_level(server.url, image, a.requests, c, a.max_seconds, 1))
                print(f"  { {k: v for k, v in levels[-1].items() if k != 'latencies'} }",
                      file=sys.stderr)
            result["load"] = levels
            result["server_peak_rss_mib_after_load"] = vm_hwm_mib(server.pid)
        if not a.no_registered:
            sizes = [size, "720x1280"]
            print(f"registered setting {reg_text}: bare {sizes} ...", file=sys.stderr)
            rbare = run_bare(python, reg_text, sizes, 1, 1)
            with process.serve_process(tmp, f"{NAME}/2", poll_seconds=0,
                                       log_path=os.path.join(tmp, "server2.log")) as server:
                rows = []
                for s in sizes:
                    h, w = (int(v) for v in s.split("x"))
                    print(f"registered setting: served {s} ...", file=sys.stderr)
                    lv = load_level(server.url, _image(h, w), 1, 1, 1e9, 2)
                    rows.append({"size": s, "served_s": lv["p50_s"], "errors": lv["errors"],
                                 "bare_s": round(rbare["sizes"][s][0], 3)})
                result["registered"] = rows
                result["server_peak_rss_mib_registered_720p"] = vm_hwm_mib(server.pid)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    c1 = next((lv for lv in result["load"] if lv["concurrency"] == 1), None)
    c4 = next((lv for lv in result["load"] if lv["concurrency"] == 4), None)
    goals = {}
    goals["overhead_p50"] = result["interleaved"]["overhead_p50"]
    goals["overhead_ok"] = goals["overhead_p50"] <= 0.10
    if c1 and c4:
        goals["c4_rps_over_c1"] = round(c4["rps"] / c1["rps"], 3)
        goals["c4_ok"] = c4["rps"] >= c1["rps"]
    goals["zero_errors"] = all(lv["errors"] == 0 for lv in result["load"]) and all(
        r["errors"] == 0 for r in result.get("registered", []))
    result["goals"] = goals
    for lv in result["load"]:
        lv.pop("latencies", None)
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out + ".json", "w") as f:
        json.dump(result, f, indent=2)
    with open(a.out + ".md", "w") as f:
        f.write(report(result))
    print(report(result))
    return 0 if goals["zero_errors"] else 1


def report(r: Dict) -> str:
    m = r["machine"]
    lines = [
        "# `deblur serve` load benchmark (benchmarks/serve_bench.py)", "",
        f"{m['date']}, {m['nproc']} CPUs ({m['cpu_model']}), {m['mem_gib']} GiB, "
        f"load average {m['loadavg_start'][0]:.2f} at the start, {m['loadavg_end'][0]:.2f} at "
        f"the end. {r.get('note') or ''}".rstrip(), "",
        f"Model: the repository's base model (models/local) through the registry; image "
        f"{r['size']}; binary tensor extension both ways; 127.0.0.1. Load setting "
        f"{r['load_setting']} (why a cheap one: the module docstring).", "",
        "| | requests | errors | req/s | p50 s | p95 s | p99 s |", "|---|---|---|---|---|---|---|",
        f"| bare SavedModel call (TF {r['bare']['tensorflow']}, same process kind, no HTTP) | "
        f"{r['bare']['n']} | 0 | {1 / r['bare']['mean_s']:.2f} | {r['bare']['p50_s']} | "
        f"{r['bare']['p95_s']} | |"]
    for lv in r["load"]:
        lines.append(f"| served, concurrency {lv['concurrency']} | {lv['requests']} | "
                     f"{lv['errors']} | {lv['rps']} | {lv['p50_s']} | {lv['p95_s']} | "
                     f"{lv['p99_s']} |")
    g, il = r["goals"], r["interleaved"]
    lines += ["", f"Server peak RSS (VmHWM) after the load: {r['server_peak_rss_mib_after_load']} MiB.",
              f"Overhead of the server, interleaved ({il['rounds']} rounds of {il['per_round']} "
              f"bare calls then {il['per_round']} requests at concurrency 1, so that the "
              f"machine's drift hits both): p50 {il['served_p50_s']} s served vs "
              f"{il['bare_p50_s']} s bare = {100 * il['overhead_p50']:+.1f}% (mean "
              f"{100 * il['overhead_mean']:+.1f}%); goal <= 10%: "
              f"{'met' if g.get('overhead_ok') else 'NOT met'}. The bare row above ran before "
              "the server started, the load rows after it: compare those with care.",
              f"Concurrency 4 / concurrency 1 requests/s: {g.get('c4_rps_over_c1')} (goal >= 1: "
              f"{'met' if g.get('c4_ok') else 'NOT met'}). Errors: "
              f"{'none' if g['zero_errors'] else 'SOME (see the json)'}."]
    if r.get("registered"):
        lines += ["", f"At the registered setting {r['registered_setting']} (one request each):",
                  "", "| size | served s | bare s |", "|---|---|---|"]
        lines += [f"| {row['size']} | {row['served_s']} | {row['bare_s']} |"
                  for row in r["registered"]]
        lines += ["", f"Server peak RSS after the 1280x720 request: "
                      f"{r.get('server_peak_rss_mib_registered_720p')} MiB."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
