"""Calibrates the Jensen-Shannon drift thresholds of schemas/schema.pbtxt on the synthetic data.

    .venv/bin/python -m benchmarks.calibrate_drift [--seeds 0,1,2,3,4,5,6,7] [--train-pairs 48]
        [--test-sizes 8,16,24,32] [--train-sizes 16,32,48] [--size 256] [--cache DIR]

For every seed, core.synth.generate(pairs=TRAIN, test_pairs=max(test sizes)) writes an
in-domain GoPro-like set (train/test) and an out-of-domain RealBlur-like set (train/test) under
the cache directory (default /tmp/deblur_drift_calibration, reused on the next run). The pairs
are found with the ingest's own pairing (components.ingest.layouts.pair_files) and turned into
examples by components.ingest.decode.process_pair_bytes; its statistics dict (the 8 FLOAT
features blurry_* / sharp_*) is kept, in the generator's order.

Splits compared (all against a baseline = the first TRAIN_SIZE pairs of the in-domain train
split, i.e. DomainDriftReport's baseline 'train'):
  (a) in-domain:      disjoint consecutive windows of k pairs of the in-domain test split
                      (floor(max test size / k) windows per seed: with 32 generated test pairs,
                      k=8 -> 4 windows, k=16 -> 2, k=24 and k=32 -> 1);
                      the first window is what generate(test_pairs=k) writes (up to the length
                      of the last 2-4 frame sequence);
  (b) out-of-domain:  the same windows of the RealBlur-like test split *and* of its train split
                      (identically distributed, never part of the baseline), so (b) has twice as
                      many samples as (a).
For each split, TFDV statistics come from tfdv.generate_statistics_from_dataframe on a float32
DataFrame of the 8 statistics with the default StatsOptions (what StatisticsGen uses: the
pipeline passes it no schema and no stats options). --verify (default on) checks on the first
seed that these are identical to tfdv.generate_statistics_from_tfrecord on TFRecords of the
serialized examples (one file, and two shards like the ingest's tiny_num_shards). The divergence
is the one DomainDriftReport reads: tfdv.validate_statistics(split, schema,
previous_statistics=baseline) with the checked-in schema, anomalies.drift_skew_info (TFDV's
JS divergence, log2, capped at 1, on the standard 10-bucket histograms, re-bucketed onto the
union of both histograms' boundaries assuming a uniform density inside a bucket). The same is
also computed with the comparators' histogram source switched to QUANTILES, as an alternative.

Per feature, train size and test size: min/median/max of (a) and (b); "separates" when
max(a) < min(b); the recommended threshold is then (max(a) + min(b)) / 2. The recommendation
for a minimum test size k0 pools every test size >= k0 (a schema threshold is one number for
every split size that may run). Everything is in-sample (the thresholds are fit on the data they
are judged on); the margin min(b) - max(a) says how much room there is.

Results: benchmarks/results/drift_calibration.md and .json.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import shutil
import statistics
import sys
import time
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import numpy as np  # noqa: E402

from core import example_format as ef  # noqa: E402

RESULTS_DIR = os.path.join(REPO, "benchmarks", "out")  # not in git: copy what a document cites to results/
SCHEMA_PATH = os.path.join(REPO, "schemas", "schema.pbtxt")
FEATURES = tuple(ef.STAT_KEYS)
BLURRY = tuple(f for f in FEATURES if f.startswith("blurry_"))
SHARP = tuple(f for f in FEATURES if f.startswith("sharp_"))
CACHE_VERSION = 1
IN_SPLITS = ("train", "test")
OUT_SPLITS = ("test", "train")


def log(msg: str) -> None:
    print(f"[calibrate_drift {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _quiet() -> None:
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("apache_beam").setLevel(logging.ERROR)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)
    except Exception:  # noqa: BLE001
        pass


# --------------------------------------------------------------------------------------------
# Data: generate (cached), pair, per-image statistics
# --------------------------------------------------------------------------------------------
def _walk(root: str) -> List[Tuple[str, int]]:
    out = []
    for d, _, names in os.walk(root):
        for n in names:
            p = os.path.join(d, n)
            out.append((os.path.relpath(p, root).replace(os.sep, "/"), os.path.getsize(p)))
    return sorted(out)


def _read_text(uri: str) -> str:
    with open(uri, encoding="utf-8") as fh:
        return fh.read()


def _pairs(layout: str, root: str, dataset: str, domain: str):
    from components.ingest import layouts as L

    cands = L.pair_files(layout, root, _walk(root), dataset=dataset, domain=domain,
                         read_text=_read_text).candidates
    bad = [c for c in cands if c.reason]
    if bad:
        raise RuntimeError(f"{len(bad)} unpaired candidates under {root}: {bad[0]}")
    return cands


def seed_data(cache: str, seed: int, train_pairs: int, test_pairs: int,
              size: Tuple[int, int], keep_examples: bool) -> dict:
    """{"splits": {"in/train": {"pair_ids": [...], "stats": {feature: [...]}}, ...},
    "generate_s": t, "examples": {split: [bytes]} (only if keep_examples)}, cached."""
    from components.ingest import decode
    from core import synth

    d = os.path.join(cache, f"seed{seed}_p{train_pairs}_t{test_pairs}_{size[0]}x{size[1]}")
    meta_path = os.path.join(d, "stats.json")
    meta = None
    if os.path.exists(meta_path):
        with open(meta_path) as fh:
            meta = json.load(fh)
        if meta.get("version") != CACHE_VERSION:
            meta = None
    roots = {"in": os.path.join(d, synth.IN_ROOT), "out": os.path.join(d, synth.OUT_ROOT)}
    need_images = meta is None or (keep_examples and not all(os.path.isdir(r) for r in roots.values()))
    gen_s = None
    if need_images:
        os.makedirs(d, exist_ok=True)
        t0 = time.perf_counter()
        synth.generate(d, pairs=train_pairs, size=size, seed=seed, test_pairs=test_pairs)
        gen_s = time.perf_counter() - t0
        n = train_pairs + 3 * test_pairs
        log(f"seed {seed}: generated {n} pairs in {gen_s:.0f} s ({gen_s / n:.2f} s/pair)")
    if meta is not None and not keep_examples:
        return {"splits": meta["splits"], "generate_s": meta.get("generate_s")}

    splits: Dict[str, dict] = {}
    examples: Dict[str, List[bytes]] = {}
    for domain, layout, dataset, names in (("in", "gopro", "gopro_synth", IN_SPLITS),
                                           ("out", "realblur", "realblur_synth", OUT_SPLITS)):
        cands = _pairs(layout, roots[domain], dataset, domain)
        for sub in names:
            key = f"{domain}/{sub}"
            rows, ids, exs = [], [], []
            for c in (c for c in cands if c.subset == sub):
                with open(c.blurry, "rb") as fb, open(c.sharp, "rb") as fs:
                    ex, st = decode.process_pair_bytes(
                        fb.read(), fs.read(), pair_id=c.pair_id, dataset=c.dataset,
                        domain=c.domain, split=sub if domain == "in" else f"{sub}_ood")
                rows.append(st)
                ids.append(c.pair_id)
                exs.append(ex)
            want = train_pairs if (domain, sub) == ("in", "train") else test_pairs
            if len(rows) != want:
                raise RuntimeError(f"{key}: {len(rows)} pairs, expected {want}")
            splits[key] = {"pair_ids": ids, "stats": {f: [r[f] for r in rows] for f in FEATURES}}
            examples[key] = exs
    if meta is None:
        meta = {"version": CACHE_VERSION, "seed": seed, "size": list(size),
                "generate_s": gen_s, "splits": splits}
        with open(meta_path, "w") as fh:
            json.dump(meta, fh)
    out = {"splits": meta["splits"], "generate_s": meta.get("generate_s")}
    if keep_examples:
        out["examples"] = examples
    return out


# --------------------------------------------------------------------------------------------
# TFDV
# --------------------------------------------------------------------------------------------
def stats_from_values(values: Dict[str, Sequence[float]]):
    """TFDV statistics of a split from its 8 statistics (float32, like the tf.train.Example)."""
    import pandas as pd
    import tensorflow_data_validation as tfdv

    df = pd.DataFrame({f: np.asarray(values[f], dtype=np.float32) for f in FEATURES})
    return tfdv.generate_statistics_from_dataframe(df, tfdv.StatsOptions())


def schema_variants():
    """{"standard": the checked-in schema, "quantiles": same with source QUANTILES}."""
    import tensorflow_data_validation as tfdv
    from tensorflow_metadata.proto.v0 import schema_pb2

    schema = tfdv.load_schema_text(SCHEMA_PATH)
    q = schema_pb2.Schema()
    q.CopyFrom(schema)
    found = {}
    for f in q.feature:
        if f.HasField("drift_comparator") and f.drift_comparator.HasField("jensen_shannon_divergence"):
            js = f.drift_comparator.jensen_shannon_divergence
            found[f.name] = js.threshold
            js.source.type = schema_pb2.HistogramSelection.QUANTILES
    missing = set(FEATURES) - set(found)
    if missing:
        raise RuntimeError(f"schema has no JS drift comparator on {sorted(missing)}")
    return {"standard": schema, "quantiles": q}, found


def js_by_feature(stats, base, schema) -> Dict[str, float]:
    """What DomainDriftReport reads: drift_skew_info JS value per feature."""
    import tensorflow_data_validation as tfdv

    anomalies = tfdv.validate_statistics(stats, schema, previous_statistics=base)
    out = {}
    for info in anomalies.drift_skew_info:
        name = info.path.step[-1]
        for m in info.drift_measurements:
            out[name] = float(m.value)
    missing = set(FEATURES) - set(out)
    if missing:
        raise RuntimeError(f"no drift measurement for {sorted(missing)}")
    return out


def _feature_stats(stats, name):
    for f in stats.datasets[0].features:
        if f.path.step and f.path.step[-1] == name:
            return f
    raise KeyError(name)


def verify_equivalence(data: dict, schemas: dict, train_sizes: Sequence[int],
                       test_pairs: int, work: str) -> dict:
    """DataFrame statistics vs generate_statistics_from_tfrecord on the serialized examples."""
    import tensorflow as tf
    import tensorflow_data_validation as tfdv

    os.makedirs(work, exist_ok=True)
    report = {"compared": [], "histograms_identical": True, "num_stats_identical": True,
              "num_stats_differing_fields": {}, "num_stats_max_rel_difference": 0.0,
              "max_abs_js_difference": 0.0}
    base_n = max(train_sizes)
    exs = data["examples"]
    keys = [("in/train", base_n), ("in/test", test_pairs), ("out/test", test_pairs)]
    df_stats, rec_stats = {}, {}
    for key, n in keys:
        values = {f: data["splits"][key]["stats"][f][:n] for f in FEATURES}
        df_stats[key] = stats_from_values(values)
        for shards in (1, 2):
            paths = [os.path.join(work, f"{key.replace('/', '_')}-{i:05d}-of-{shards:05d}.tfrecord")
                     for i in range(shards)]
            writers = [tf.io.TFRecordWriter(p) for p in paths]
            for i, e in enumerate(exs[key][:n]):
                writers[i % shards].write(e)
            for w in writers:
                w.close()
            pattern = os.path.join(work, f"{key.replace('/', '_')}-*-of-{shards:05d}.tfrecord")
            s = tfdv.generate_statistics_from_tfrecord(pattern)
            rec_stats[(key, shards)] = s
            for f in FEATURES:
                a, b = _feature_stats(df_stats[key], f), _feature_stats(s, f)
                same_h = list(a.num_stats.histograms) == list(b.num_stats.histograms)
                ca, cb = a.num_stats, b.num_stats
                for fld in ("mean", "std_dev", "min", "max", "median", "num_zeros"):
                    x, y = float(getattr(ca, fld)), float(getattr(cb, fld))
                    if x != y:
                        report["num_stats_identical"] = False
                        tag = f"{fld} ({shards} shard(s))"
                        report["num_stats_differing_fields"][tag] = \
                            report["num_stats_differing_fields"].get(tag, 0) + 1
                        report["num_stats_max_rel_difference"] = max(
                            report["num_stats_max_rel_difference"], abs(x - y) / max(abs(x), abs(y)))
                report["histograms_identical"] &= same_h
            report["compared"].append(f"{key} ({n} examples, {shards} shard(s))")
    for key in ("in/test", "out/test"):
        for shards in (1, 2):
            for variant, schema in schemas.items():
                j_df = js_by_feature(df_stats[key], df_stats["in/train"], schema)
                j_rec = js_by_feature(rec_stats[(key, shards)], rec_stats[("in/train", shards)], schema)
                for f in FEATURES:
                    report["max_abs_js_difference"] = max(report["max_abs_js_difference"],
                                                          abs(j_df[f] - j_rec[f]))
    shutil.rmtree(work, ignore_errors=True)
    return report


# --------------------------------------------------------------------------------------------
# Analysis
# --------------------------------------------------------------------------------------------
_SEQ = re.compile(r"(GOPR\d+_synth|scene\d+)")


def sequence_of(pair_id: str) -> str:
    """The GoPro sequence / RealBlur scene a pair belongs to (its frames share one scene)."""
    m = _SEQ.search(pair_id)
    return m.group(1) if m else pair_id


def between_sequence_share(values: Sequence[float], seqs: Sequence[str]) -> Optional[float]:
    """1 - within-sequence sum of squares / total sum of squares (eta squared): near 1 means
    the frames of a sequence carry (almost) the same value, so a split of k pairs holds only
    about as many independent values as it has sequences."""
    v = np.asarray(values, dtype=np.float64)
    tot = float(((v - v.mean()) ** 2).sum())
    if tot <= 0:
        return None
    within = 0.0
    for q in set(seqs):
        x = v[[i for i, s in enumerate(seqs) if s == q]]
        within += float(((x - x.mean()) ** 2).sum())
    return 1.0 - within / tot


def _summ(v: Sequence[float]) -> dict:
    return {"n": len(v), "min": min(v), "median": statistics.median(v), "max": max(v)}


def separation(a: Sequence[float], b: Sequence[float]) -> dict:
    sep = max(a) < min(b)
    out = {"separates": sep, "margin": min(b) - max(a),
           "threshold": (max(a) + min(b)) / 2 if sep else None}
    # The fewest errors (in-domain flagged + out-of-domain missed) any threshold can reach.
    cands = sorted(set(a) | set(b) | {0.0, 1.0})
    best = min(sum(x > t for x in a) + sum(x <= t for x in b) for t in cands)
    out["best_errors"] = best
    return out


def windows(n_total: int, k: int) -> List[Tuple[int, int]]:
    return [(i, i + k) for i in range(0, n_total - k + 1, k)]


def analyse(per_seed: Dict[int, dict], schemas: dict, train_sizes: Sequence[int],
            test_sizes: Sequence[int], test_pairs: int) -> dict:
    """JS values: {variant: {train: {test: {"a": {f: [...]}, "b": {f: [...]}}}}}."""
    js: dict = {v: {n: {k: {"a": {f: [] for f in FEATURES}, "b": {f: [] for f in FEATURES},
                            "a_src": [], "b_src": []}
                        for k in test_sizes} for n in train_sizes} for v in schemas}
    for seed, data in per_seed.items():
        sp = data["splits"]
        cache: Dict[Tuple[str, int, int], object] = {}

        def st(key, lo, hi):
            if (key, lo, hi) not in cache:
                cache[(key, lo, hi)] = stats_from_values(
                    {f: sp[key]["stats"][f][lo:hi] for f in FEATURES})
            return cache[(key, lo, hi)]

        for n in train_sizes:
            base = st("in/train", 0, n)
            for k in test_sizes:
                for lo, hi in windows(test_pairs, k):
                    for which, keys in (("a", ("in/test",)), ("b", ("out/test", "out/train"))):
                        for key in keys:
                            s = st(key, lo, hi)
                            for variant, schema in schemas.items():
                                vals = js_by_feature(s, base, schema)
                                cell = js[variant][n][k]
                                for f in FEATURES:
                                    cell[which][f].append(vals[f])
                                cell[f"{which}_src"].append(f"seed{seed}:{key}[{lo}:{hi}]")
        log(f"seed {seed}: drift computed")
    return js


def summarise(js: dict, train_sizes, test_sizes, current: Dict[str, float]) -> dict:
    out = {}
    for variant, by_n in js.items():
        out[variant] = {}
        for n in train_sizes:
            rows = {}
            for f in FEATURES:
                rows[f] = {}
                for k in test_sizes:
                    a, b = by_n[n][k]["a"][f], by_n[n][k]["b"][f]
                    r = {"a": _summ(a), "b": _summ(b), **separation(a, b),
                         "current_threshold": current[f],
                         "current_false_alarms": sum(x > current[f] for x in a),
                         "current_misses": sum(x <= current[f] for x in b)}
                    rows[f][k] = r
                # pooled over every test size >= k0
                pooled = {}
                for k0 in test_sizes:
                    a = [x for k in test_sizes if k >= k0 for x in by_n[n][k]["a"][f]]
                    b = [x for k in test_sizes if k >= k0 for x in by_n[n][k]["b"][f]]
                    pooled[k0] = {"max_a": max(a), "min_b": min(b), **separation(a, b)}
                rows[f]["pooled_from"] = pooled
            out[variant][n] = rows
    return out


def feature_set_eval(js: dict, summary: dict, variant: str, n: int, test_sizes, k0: int,
                     feats: Sequence[str]) -> dict:
    """Split-level rule of DomainDriftReport (drifted = any comparator over its threshold) with
    the thresholds pooled from k0 on the features of `feats` that separate there."""
    rows = summary[variant][n]
    kept = [f for f in feats if rows[f]["pooled_from"][k0]["separates"]]
    thr = {f: rows[f]["pooled_from"][k0]["threshold"] for f in kept}
    res = {"kept": kept, "thresholds": thr, "by_test_size": {}}
    for k in test_sizes:
        cell = js[variant][n][k]
        na, nb = len(cell["a_src"]), len(cell["b_src"])
        fa = sum(any(cell["a"][f][i] > thr[f] for f in kept) for i in range(na)) if kept else 0
        det = sum(any(cell["b"][f][i] > thr[f] for f in kept) for i in range(nb)) if kept else 0
        res["by_test_size"][k] = {"in_domain_flagged": fa, "in_domain_n": na,
                                  "out_of_domain_detected": det, "out_of_domain_n": nb}
    return res


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------
def _f(x: Optional[float], nd: int = 3) -> str:
    return "—" if x is None else f"{x:.{nd}f}"


def _table(summary_n: dict, test_sizes, with_current: bool) -> List[str]:
    head = ("| feature | test k | (a) in-domain min / med / max | (b) out-of-domain min / med / max "
            "| separates | threshold (mid) | margin |")
    sep = "|---|---:|---|---|:-:|---:|---:|"
    if with_current:
        head += " at 0.3: in flagged / out missed |"
        sep += "---:|"
    lines = [head, sep]
    for f in FEATURES:
        for k in test_sizes:
            r = summary_n[f][k]
            a, b = r["a"], r["b"]
            row = (f"| {f} | {k} | {_f(a['min'])} / {_f(a['median'])} / {_f(a['max'])} (n={a['n']}) "
                   f"| {_f(b['min'])} / {_f(b['median'])} / {_f(b['max'])} (n={b['n']}) "
                   f"| {'yes' if r['separates'] else 'no (best ' + str(r['best_errors']) + ' err)'} "
                   f"| {_f(r['threshold'], 2)} | {r['margin']:+.3f} |")
            if with_current:
                row += f" {r['current_false_alarms']}/{a['n']} / {r['current_misses']}/{b['n']} |"
            lines.append(row)
    return lines


def _matrix(summary: dict, variant: str, train_sizes, test_sizes) -> List[str]:
    """margin (min(b) - max(a)) per feature x (train, test) size; positive = separates."""
    cols = [(n, k) for n in train_sizes for k in test_sizes]
    lines = ["| feature | " + " | ".join(f"train {n} / test {k}" for n, k in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for f in FEATURES:
        cells = []
        for n, k in cols:
            r = summary[variant][n][f][k]
            cells.append(f"{r['margin']:+.2f}" + ("" if r["separates"] else " ✗"))
        lines.append(f"| {f} | " + " | ".join(cells) + " |")
    return lines


def _rounded(obj, sig: int = 5):
    if isinstance(obj, float):
        return float(f"{obj:.{sig}g}")
    if isinstance(obj, dict):
        return {k: _rounded(v, sig) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_rounded(v, sig) for v in obj]
    return obj


def write_report(res: dict, md_path: str, json_path: str) -> None:
    with open(json_path, "w") as fh:
        json.dump(_rounded(res), fh, indent=None, separators=(",", ":"), default=str)
        fh.write("\n")
    cfg, summ, rec = res["config"], res["summary"], res["recommendation"]
    train_sizes, test_sizes = cfg["train_sizes"], cfg["test_sizes"]
    nmain = cfg["train_pairs"]
    L: List[str] = []
    L.append("# Drift-threshold calibration (TFDV Jensen-Shannon, synthetic data)")
    L.append("")
    gen = [t for t in res["generate_seconds_by_seed"].values() if t]
    n_gen = cfg["train_pairs"] + 3 * cfg["test_pairs"]
    gen_txt = (f"; data generation {sum(gen):.0f} s for {len(gen)} seed(s) x {n_gen} pairs "
               f"({sum(gen) / (len(gen) * n_gen):.2f} s/pair), cached under `{cfg['cache']}`"
               if gen else "")
    L.append(f"Generated {res['generated']} by `benchmarks/calibrate_drift.py` "
             f"(this run {res['elapsed_s']:.0f} s{gen_txt}; {res['host']}).")
    L.append("")
    L.append(f"- Seeds {cfg['seeds']}; images {cfg['size'][0]}x{cfg['size'][1]}; per seed "
             f"`core.synth.generate(pairs={nmain}, test_pairs={cfg['test_pairs']})`.")
    L.append("- Baseline = the first N pairs of the in-domain train split (N = train size). "
             "(a) = in-domain test windows, (b) = out-of-domain windows (RealBlur-like test *and* "
             "train subsets); disjoint consecutive windows of k pairs "
             "(" + ", ".join(f"k={k}: {len(windows(cfg['test_pairs'], k))}" for k in test_sizes)
             + " per split and seed).")
    L.append("- JS = `tfdv.validate_statistics(split, schemas/schema.pbtxt, previous_statistics="
             "baseline).drift_skew_info`, i.e. exactly what `DomainDriftReport` reads "
             "(source: standard 10-bucket histograms; the checked-in comparators do not set `source`).")
    v = res["verification"]
    if v:
        L.append(f"- Statistics from `generate_statistics_from_dataframe` (float32 columns, default "
                 f"StatsOptions, like StatisticsGen without schema) vs `generate_statistics_from_tfrecord` "
                 f"on the serialized examples ({'; '.join(v['compared'])}): histograms identical: "
                 f"**{v['histograms_identical']}**; max |JS difference| **{v['max_abs_js_difference']:.2g}**; "
                 f"num_stats identical: {v['num_stats_identical']}"
                 + ("" if v["num_stats_identical"] else
                    f" (differing: {', '.join(f'{k} x{n}' for k, n in v['num_stats_differing_fields'].items())}; "
                    f"max relative difference {v['num_stats_max_rel_difference']:.1g}: float summation "
                    "order across shards; not used by the JS comparator)") + ".")
    L.append("- *separates* = max(a) < min(b); threshold = midpoint; margin = min(b) - max(a); "
             "'best N err' = fewest misclassified splits any single threshold could reach. "
             "In-sample: fit and judged on the same runs.")
    L.append("")
    L.append("## Recommendation")
    L.append("")
    for line in rec["text"]:
        L.append(line)
    L.append("")
    L.append(f"## Per feature, train {nmain}, checked-in comparators (standard histograms)")
    L.append("")
    L += _table(summ["standard"][nmain], test_sizes, with_current=True)
    L.append("")
    L.append("## Separation margin min(b) - max(a) by train and test size (standard histograms; ✗ = overlap)")
    L.append("")
    L += _matrix(summ, "standard", train_sizes, test_sizes)
    L.append("")
    for variant in ("standard", "quantiles"):
        L.append(f"## Thresholds pooled over every test size >= k0 ({variant} histograms)")
        L.append("")
        L.append("Cell: midpoint threshold, or ✗ (max(a) ≥ min(b)) when the pooled values overlap.")
        L.append("")
        cols = [(n, k0) for n in train_sizes for k0 in test_sizes]
        L.append("| feature | " + " | ".join(f"train {n}, k>={k0}" for n, k0 in cols) + " |")
        L.append("|---|" + "---:|" * len(cols))
        for f in FEATURES:
            cells = []
            for n, k0 in cols:
                p = summ[variant][n][f]["pooled_from"][k0]
                cells.append(f"{p['threshold']:.2f}" if p["separates"] else
                             f"✗ ({p['max_a']:.2f} ≥ {p['min_b']:.2f})")
            L.append(f"| {f} | " + " | ".join(cells) + " |")
        L.append("")
    L.append("## Split-level rule (drifted = any kept comparator over its threshold)")
    L.append("")
    L.append("Thresholds pooled from k0 (the row's minimum size); a feature is kept only if it "
             "separates there. Cells: in-domain splits flagged / out-of-domain splits detected.")
    L.append("")
    L.append("| histograms | train | k0 | feature set | kept | " +
             " | ".join(f"test {k}" for k in test_sizes) + " |")
    L.append("|---|---:|---:|---|---|" + "---|" * len(test_sizes))
    for e in res["feature_sets"]:
        cells = []
        for k in test_sizes:
            c = e["by_test_size"][str(k)] if str(k) in e["by_test_size"] else e["by_test_size"][k]
            if k < e["k0"]:
                cells.append("(below k0) " + f"{c['in_domain_flagged']}/{c['in_domain_n']} ; "
                             f"{c['out_of_domain_detected']}/{c['out_of_domain_n']}")
            else:
                cells.append(f"{c['in_domain_flagged']}/{c['in_domain_n']} ; "
                             f"{c['out_of_domain_detected']}/{c['out_of_domain_n']}")
        L.append(f"| {e['variant']} | {e['train']} | {e['k0']} | {e['set']} | "
                 f"{', '.join(x.replace('blurry_', 'b.').replace('sharp_', 's.') for x in e['kept']) or 'none'} | "
                 + " | ".join(cells) + " |")
    L.append("")
    L.append(f"## Alternative: comparators with `source {{ type: QUANTILES }}`, train {nmain}")
    L.append("")
    L += _table(summ["quantiles"][nmain], test_sizes, with_current=False)
    L.append("")
    L.append("Margins (QUANTILES):")
    L.append("")
    L += _matrix(summ, "quantiles", train_sizes, test_sizes)
    L.append("")
    L.append("## Feature values")
    L.append("")
    L.append("Means over seeds of the split means; 'between-seq.' = share of the variance between "
             "sequences/scenes (eta squared of the full split, mean over seeds): the frames of one "
             "2-4 frame sequence carry nearly the same value, so a split holds about as many "
             "independent values as sequences.")
    L.append("")
    L.append("| feature | in train | in test | out test | out train | between-seq. in train | between-seq. out test |")
    L.append("|---|---:|---:|---:|---:|---:|---:|")
    for f in FEATURES:
        m, sh = res["feature_means"][f], res["between_sequence_share"][f]
        L.append(f"| {f} | {m['in/train']:.4g} | {m['in/test']:.4g} | {m['out/test']:.4g} | "
                 f"{m['out/train']:.4g} | {_f(sh['in/train'], 2)} | {_f(sh['out/test'], 2)} |")
    L.append("")
    sc = res["sequences_per_split"]
    L.append("Distinct sequences/scenes per window: " + "; ".join(
        f"k={k}: in {sc[k]['in/test']['mean']:.1f} ({sc[k]['in/test']['min']}-{sc[k]['in/test']['max']}), "
        f"out {sc[k]['out/test']['mean']:.1f}" for k in test_sizes) + "; baselines: " + ", ".join(
        f"train {n}: {v:.1f}" for n, v in sc["baseline"].items()) + ".")
    L.append("")
    with open(md_path, "w") as fh:
        fh.write("\n".join(L))


def recommend(summary: dict, js: dict, cfg: dict) -> Tuple[dict, List[dict]]:
    """Feature sets and minimum sizes; returns (recommendation, feature-set evaluations)."""
    test_sizes, train_sizes = cfg["test_sizes"], cfg["train_sizes"]
    evals = []
    for variant in ("standard", "quantiles"):
        for n in train_sizes:
            for k0 in test_sizes:
                for name, feats in (("all 8", FEATURES), ("blurry only", BLURRY),
                                    ("sharp only", SHARP)):
                    e = feature_set_eval(js, summary, variant, n, test_sizes, k0, feats)
                    evals.append({"variant": variant, "train": n, "k0": k0, "set": name, **e})

    def perfect(e):
        return e["kept"] and all(
            c["in_domain_flagged"] == 0 and c["out_of_domain_detected"] == c["out_of_domain_n"]
            for k, c in e["by_test_size"].items() if k >= e["k0"])

    rec = {"by_train": {}}
    for variant in ("standard", "quantiles"):
        for n in train_sizes:
            rows = summary[variant][n]
            per_k0 = {}
            for k0 in test_sizes:
                sep = [f for f in FEATURES if rows[f]["pooled_from"][k0]["separates"]]
                per_k0[k0] = {
                    "separating": sep,
                    "separating_blurry": [f for f in sep if f in BLURRY],
                    "thresholds": {f: round(rows[f]["pooled_from"][k0]["threshold"], 3) for f in sep},
                    "margins": {f: round(rows[f]["pooled_from"][k0]["margin"], 3) for f in FEATURES},
                }
            # the smallest k0 at which the features that separate at the largest size all
            # separate (for every test size >= k0)
            full = set(per_k0[max(test_sizes)]["separating"])
            min_k_all = next((k0 for k0 in test_sizes if full and full <= set(per_k0[k0]["separating"])), None)
            full_b = set(per_k0[max(test_sizes)]["separating_blurry"])
            min_k_blurry = next((k0 for k0 in test_sizes
                                 if full_b and full_b <= set(per_k0[k0]["separating_blurry"])), None)
            min_k_any_blurry = next((k0 for k0 in test_sizes if per_k0[k0]["separating_blurry"]), None)
            rule_blurry = next((e["k0"] for e in evals if e["variant"] == variant and e["train"] == n
                                and e["set"] == "blurry only" and perfect(e)), None)
            rule_all = next((e["k0"] for e in evals if e["variant"] == variant and e["train"] == n
                             and e["set"] == "all 8" and perfect(e)), None)
            rec["by_train"][f"{variant}/{n}"] = {
                "per_k0": per_k0,
                "features_separating_at_max_k": sorted(full),
                "min_test_size_all_separating_features": min_k_all,
                "min_test_size_all_separating_blurry_features": min_k_blurry,
                "min_test_size_some_blurry_feature": min_k_any_blurry,
                "min_test_size_split_rule_perfect_blurry_only": rule_blurry,
                "min_test_size_split_rule_perfect_all8": rule_all,
            }
    return rec, evals


def _short(f: str) -> str:
    return f.replace("blurry_", "b.").replace("sharp_", "s.")


def _rule_cell(rr: dict, k0: Optional[int], kmax: int, feats: Sequence[str] = FEATURES) -> str:
    if k0 is None:
        return ">" + str(kmax)
    p = rr["per_k0"][k0]
    kept = [f for f in p["separating"] if f in feats]
    return (f"{k0} ({', '.join(_short(f) for f in kept)}; "
            f"min margin {min(p['margins'][f] for f in kept):+.2f})")


def recommendation_text(rec: dict, summary: dict, cfg: dict) -> List[str]:
    """Derived mechanically from the runs: for each histogram source and baseline size, the
    comparators that separate at the largest test size, the smallest test size from which all
    of them separate (pooled), their thresholds there, and the split-level rule."""
    n_main = cfg["train_pairs"]
    kmax = max(cfg["test_sizes"])
    out = []
    for variant in ("standard", "quantiles"):
        r = rec["by_train"][f"{variant}/{n_main}"]
        keep = r["features_separating_at_max_k"]
        k0 = r["min_test_size_all_separating_features"]
        label = ("checked-in comparators (standard histograms)" if variant == "standard"
                 else "comparators with `source { type: QUANTILES }`")
        out.append(f"**{label}, baseline train {n_main}:**")
        out.append("")
        if keep and k0 is not None:
            p = r["per_k0"][k0]
            out.append(f"- keep ({len(keep)}): " + ", ".join(
                f"`{f}` {p['thresholds'][f]:.2f} (margin {p['margins'][f]:+.2f})" for f in keep)
                + f" — thresholds pooled over every test size >= {k0}, the smallest size from "
                  f"which all of them separate in every run")
        else:
            out.append(f"- no comparator separates at test {kmax}")
        drop = [f for f in FEATURES if f not in keep]
        out.append(f"- no separation even at test {kmax} (drop or disable): "
                   + (", ".join(f"`{f}`" for f in drop) or "none"))
        out.append(f"- split-level rule (drifted = any comparator that separates from k0 fires) "
                   f"perfect from k0 = {_rule_cell(r, r['min_test_size_split_rule_perfect_all8'], kmax)} "
                   f"with all features; blurry_* only: "
                   f"{_rule_cell(r, r['min_test_size_split_rule_perfect_blurry_only'], kmax, BLURRY)}")
        out.append("")
    out.append("**Smallest test size (k0) per baseline size** — 'all sep.': all comparators that "
               f"separate at test {kmax} separate for every size >= k0; 'rule': the any-comparator "
               "rule with the comparators separating (pooled) from k0 has no false alarm and no "
               "miss for every size >= k0:")
    out.append("")
    out.append("| histograms | train | separate at test " + str(kmax) + " | all sep. | rule, all 8 | rule, blurry only |")
    out.append("|---|---:|---|---:|---:|---:|")
    def cell(rr, k0, feats=FEATURES):
        return _rule_cell(rr, k0, kmax, feats)

    for key, rr in rec["by_train"].items():
        variant, n = key.split("/")
        k_all = rr["min_test_size_all_separating_features"]
        out.append(f"| {variant} | {n} | {', '.join(_short(f) for f in rr['features_separating_at_max_k']) or 'none'} "
                   f"| {k_all if k_all is not None else '>' + str(kmax)} "
                   f"| {cell(rr, rr['min_test_size_split_rule_perfect_all8'])} "
                   f"| {cell(rr, rr['min_test_size_split_rule_perfect_blurry_only'], BLURRY)} |")
    out.append("")
    out.append("Margins are in-sample (min over the runs of out-of-domain JS minus max of in-domain "
               "JS); a margin of a few hundredths is within run-to-run noise.")
    return out


# --------------------------------------------------------------------------------------------
def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="0,1,2,3,4,5,6,7")
    ap.add_argument("--train-pairs", type=int, default=48)
    ap.add_argument("--test-sizes", default="8,16,24,32")
    ap.add_argument("--train-sizes", default="16,32,48",
                    help="baseline sizes (prefixes of the generated train split); 16 = synthetic default")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--cache", default="/tmp/deblur_drift_calibration")
    ap.add_argument("--no-verify", action="store_true")
    ap.add_argument("--out", default=os.path.join(RESULTS_DIR, "drift_calibration"))
    args = ap.parse_args(argv)
    _quiet()
    t_start = time.perf_counter()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    test_sizes = sorted(int(s) for s in args.test_sizes.split(","))
    train_sizes = sorted(int(s) for s in args.train_sizes.split(","))
    test_pairs = max(test_sizes)
    if max(train_sizes) > args.train_pairs:
        ap.error("--train-sizes must not exceed --train-pairs")
    if args.train_pairs not in train_sizes:
        train_sizes.append(args.train_pairs)
        train_sizes.sort()
    size = (args.size, args.size)
    os.makedirs(args.cache, exist_ok=True)

    import tensorflow_data_validation as tfdv

    schemas, current = schema_variants()
    per_seed, gen_times = {}, {}
    verification = None
    for i, seed in enumerate(seeds):
        verify = (i == 0 and not args.no_verify)
        data = seed_data(args.cache, seed, args.train_pairs, test_pairs, size, keep_examples=verify)
        gen_times[seed] = data.get("generate_s")
        if verify:
            log("verifying DataFrame statistics against TFRecord statistics ...")
            verification = verify_equivalence(data, schemas, train_sizes, test_pairs,
                                              os.path.join(args.cache, "verify_tfrecords"))
            log(f"verification: {verification}")
            data.pop("examples", None)
        per_seed[seed] = data

    js = analyse(per_seed, schemas, train_sizes, test_sizes, test_pairs)
    summary = summarise(js, train_sizes, test_sizes, current)
    cfg = {"seeds": seeds, "train_pairs": args.train_pairs, "test_pairs": test_pairs,
           "test_sizes": test_sizes, "train_sizes": train_sizes, "size": list(size),
           "cache": args.cache, "schema": os.path.relpath(SCHEMA_PATH, REPO),
           "current_thresholds": current}
    rec, evals = recommend(summary, js, cfg)
    rec["text"] = recommendation_text(rec, summary, cfg)
    keys4 = ("in/train", "in/test", "out/test", "out/train")
    means = {f: {key: float(np.mean([np.mean(per_seed[s]["splits"][key]["stats"][f]) for s in seeds]))
                 for key in keys4} for f in FEATURES}
    share = {}
    for f in FEATURES:
        share[f] = {}
        for key in keys4:
            vals = [between_sequence_share(per_seed[s]["splits"][key]["stats"][f],
                                           [sequence_of(p) for p in per_seed[s]["splits"][key]["pair_ids"]])
                    for s in seeds]
            vals = [x for x in vals if x is not None]
            share[f][key] = float(np.mean(vals)) if vals else None
    seq_counts = {}
    for k in test_sizes:
        c = {}
        for key in ("in/test", "out/test", "out/train"):
            c[key] = [len({sequence_of(p) for p in per_seed[s]["splits"][key]["pair_ids"][lo:hi]})
                      for s in seeds for lo, hi in windows(test_pairs, k)]
        seq_counts[k] = {key: {"min": min(v), "mean": float(np.mean(v)), "max": max(v)}
                         for key, v in c.items()}
    seq_counts["baseline"] = {n: float(np.mean([len({sequence_of(p) for p in
                                                     per_seed[s]["splits"]["in/train"]["pair_ids"][:n]})
                                                for s in seeds])) for n in train_sizes}
    res = {
        "generated": _dt.datetime.now().isoformat(timespec="seconds"),
        "elapsed_s": time.perf_counter() - t_start,
        "host": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
                f"TFDV {tfdv.__version__}",
        "config": cfg,
        "generate_seconds_by_seed": gen_times,
        "verification": verification,
        "recommendation": rec,
        "feature_sets": evals,
        "summary": summary,
        "js_values": js,
        "feature_means": means,
        "between_sequence_share": share,
        "sequences_per_split": seq_counts,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    write_report(res, args.out + ".md", args.out + ".json")
    log(f"wrote {args.out}.md and .json in {res['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
