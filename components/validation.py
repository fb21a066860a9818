"""Data validation beyond ExampleValidator: the stop rule and the domain-drift report.

- anomalies_by_split(): reads ExampleValidator's output; ValidationGate (a TFX component)
  fails the pipeline run when any split has an anomaly, so nothing downstream trains on data
  that breaks the checked-in schema (ExampleValidator itself only records anomalies).
- domain_drift(): TFDV drift comparison of every split against a baseline split (the
  in-domain training data), with the Jensen-Shannon thresholds of the checked-in schema on
  the per-image statistics. DomainDriftReport writes it as a JSON artifact; the main job's
  summary prints it. A drifted split is reported, not failed: out-of-domain splits (test_ood,
  the out-of-domain validation split val_ood) are *meant* to differ, and the report says so
  from the split's `domain` feature; an in-domain split (val, test, new training data) that
  drifts is the signal to look at.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Sequence

from core import example_format as ef
from core.artifacts import split_dir

STATS_FILE = "FeatureStats.pb"
ANOMALIES_FILE = "SchemaDiff.pb"
DRIFT_FILE = "domain_drift.json"


def load_schema(path: str):
    import tensorflow_data_validation as tfdv

    return tfdv.load_schema_text(path)


def split_statistics(statistics_uri: str, split: str):
    import tensorflow_data_validation as tfdv

    return tfdv.load_stats_binary(os.path.join(split_dir(statistics_uri, split), STATS_FILE))


def anomalies_by_split(anomalies_uri: str, splits: Sequence[str]) -> Dict[str, List[str]]:
    """{split: ["feature: description", ...]} from ExampleValidator's SchemaDiff.pb files."""
    from tensorflow_metadata.proto.v0 import anomalies_pb2
    from tfx.dsl.io import fileio  # local, gs:// and every file system TensorFlow knows

    out = {}
    for split in splits:
        path = os.path.join(split_dir(anomalies_uri, split), ANOMALIES_FILE)
        anomalies = anomalies_pb2.Anomalies()
        with fileio.open(path, "rb") as f:
            anomalies.ParseFromString(f.read())
        msgs = [f"{name}: {info.description}" for name, info in sorted(anomalies.anomaly_info.items())]
        if anomalies.HasField("dataset_anomaly_info"):
            msgs.append(f"<dataset>: {anomalies.dataset_anomaly_info.description}")
        out[split] = msgs
    return out


def _num_mean(stats, feature: str):
    for f in stats.datasets[0].features:
        if f.path.step and f.path.step[-1] == feature and f.HasField("num_stats"):
            return f.num_stats.mean
    return None


def split_domain(stats):
    """The `domain` values of a split's examples ("in", "out", "in+out"), None when the
    statistics do not have them."""
    for f in stats.datasets[0].features:
        if f.path.step and f.path.step[-1] == "domain" and f.HasField("string_stats"):
            values = sorted(b.label for b in f.string_stats.rank_histogram.buckets
                            if b.sample_count > 0) or \
                sorted(v.value for v in f.string_stats.top_values if v.frequency > 0)
            return "+".join(values) or None
    return None


def domain_drift(statistics_uri: str, schema_path: str, baseline_split: str,
                 splits: Sequence[str]) -> dict:
    """Drift of each split against the baseline for the schema's drift comparators.

    Returns {"baseline": split, "splits": {split: {"drifted": [features],
    "features": {feature: {"js_divergence": v, "threshold": t, "mean": m,
    "baseline_mean": b}}, "num_examples": n, "domain": "in" | "out" | "in+out" | None}}}.
    """
    import tensorflow_data_validation as tfdv

    schema = load_schema(schema_path)
    base = split_statistics(statistics_uri, baseline_split)
    report = {"baseline": baseline_split, "splits": {}}
    for split in splits:
        if split == baseline_split:
            continue
        stats = split_statistics(statistics_uri, split)
        anomalies = tfdv.validate_statistics(stats, schema, previous_statistics=base)
        feats = {}
        for info in anomalies.drift_skew_info:
            name = info.path.step[-1]
            for m in info.drift_measurements:
                feats[name] = {
                    "js_divergence": round(m.value, 4), "threshold": m.threshold,
                    "mean": _num_mean(stats, name), "baseline_mean": _num_mean(base, name),
                }
        report["splits"][split] = {
            "num_examples": stats.datasets[0].num_examples,
            "domain": split_domain(stats),
            "features": dict(sorted(feats.items())),
            "drifted": sorted(n for n, v in feats.items() if v["js_divergence"] > v["threshold"]),
        }
    return report


def format_drift(report: dict) -> str:
    lines = [f"domain drift vs split '{report['baseline']}' (TFDV Jensen-Shannon divergence):"]
    for split, r in report["splits"].items():
        domain = r.get("domain")
        note = ""
        if r["drifted"] and domain == "out":
            note = " (an out-of-domain split: expected)"
        elif r["drifted"] and domain == "in":
            note = " (an in-domain split: look at it)"
        lines.append(f"  {split} ({r['num_examples']} examples"
                     + (f", {'out-of-domain' if domain == 'out' else 'in-domain'}"
                        if domain in ("in", "out") else "") + "): "
                     + (f"DRIFT in {', '.join(r['drifted'])}{note}" if r["drifted"] else "no drift"))
        for name, v in r["features"].items():
            flag = "  <-- drift" if name in r["drifted"] else ""
            mean = "" if v["mean"] is None else f"  mean {v['baseline_mean']:.4g} -> {v['mean']:.4g}"
            lines.append(f"    {name:28s} JS {v['js_divergence']:.3f} (threshold {v['threshold']:g}){mean}{flag}")
    return "\n".join(lines)


def drift_markdown(report: dict) -> str:
    """format_drift as a Markdown table (the Kubeflow run page's system.Markdown)."""
    lines = [f"### Domain drift vs split `{report['baseline']}` (TFDV Jensen-Shannon divergence)",
             "", "| split | feature | JS | threshold | mean (baseline -> split) | drift |",
             "|---|---|---|---|---|---|"]
    for split, r in report["splits"].items():
        for name, v in r["features"].items():
            mean = "" if v["mean"] is None else f"{v['baseline_mean']:.4g} -> {v['mean']:.4g}"
            lines.append(f"| {split} ({r['num_examples']}) | {name} | {v['js_divergence']:.3f} | "
                         f"{v['threshold']:g} | {mean} | "
                         f"{'DRIFT' if name in r['drifted'] else ''} |")
    return "\n".join(lines) + "\n"


DRIFT_FEATURES = ef.STAT_KEYS
