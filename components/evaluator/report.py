"""The evaluation as a person reads it on the Kubeflow run page (components/run_page.py types).

    verdict_markdown(blessing)             the gate's decision and every rule (system.Markdown)
    domain_scalars(per_domain)             {"out-of-domain LPIPS": 0.41, ...} (system.Metrics)
    report_html(result, evaluation_dir)    verdict, per-domain metrics of the chosen setting and
                                           of the blurry input, the perception-distortion plot
                                           and the sample grids, images embedded (system.HTML)

Plain functions of evaluate()'s result, so the run page says what blessing.json and
evaluation.json say.
"""
from __future__ import annotations

import base64
import html
import os
from typing import Dict, List, Optional

from components.evaluator.evaluate import METRICS
from components.evaluator.gate import domain_name, format_value

_FORMATS = {"psnr": ".2f", "ssim": ".4f", "lpips": ".4f", "niqe": ".3f"}
_LABELS = {"psnr": "PSNR", "ssim": "SSIM", "lpips": "LPIPS", "niqe": "NIQE"}


def _fmt(metric: str, value) -> str:
    """A table cell: the value in the metric's format; an absent one (a rule without a
    threshold) empty, a non-finite one as it is (nan)."""
    return "" if value is None else format_value(value, _FORMATS.get(metric, ".4f"))


def _rule_rows(blessing: dict) -> List[List[str]]:
    rows = []
    for r in blessing.get("rules", []):
        rows.append([r["rule"], r["verdict"].upper(), _fmt("lpips", r.get("value")),
                     _fmt("lpips", r.get("threshold")), r.get("detail", "")])
        for d, e in sorted((r.get("domains") or {}).items()):
            for m in ("lpips", "psnr"):
                if m in e:
                    c = e[m]
                    rows.append([f"{r['rule']}: {domain_name(d)} {_LABELS[m]}",
                                 c["verdict"].upper(), _fmt(m, c["value"]),
                                 _fmt(m, c["threshold"]), f"input {_fmt(m, c['input'])}"])
    return rows


_RULE_HEADER = ["rule", "verdict", "value", "threshold", "detail"]


def verdict_markdown(blessing: dict) -> str:
    """The decision, its reason and one table row per rule (and per domain of beats_input)."""
    lines = [f"## Blessed: {'YES' if blessing.get('blessed') else 'NO'}", "",
             blessing.get("reason", ""), "",
             "| " + " | ".join(_RULE_HEADER) + " |", "|" + "---|" * len(_RULE_HEADER)]
    for row in _rule_rows(blessing):
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
    return "\n".join(lines) + "\n"


def domain_scalars(per_domain: Dict[str, Dict[str, float]]) -> Dict[str, float]:
    """{"<domain> <METRIC>": value} for every domain and metric (finite or not: a NaN shows)."""
    return {f"{domain_name(d)} {_LABELS.get(m, m)}": float(v)
            for d, ms in sorted(per_domain.items()) for m, v in ms.items() if v is not None}


def _table(header: List[str], rows: List[List[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _png(path: str) -> Optional[str]:
    from tfx.dsl.io import fileio

    if not fileio.exists(path):
        return None
    with fileio.open(path, "rb") as f:
        return "data:image/png;base64," + base64.b64encode(f.read()).decode("ascii")


def report_html(result: dict, evaluation_dir: str) -> str:
    """One self-contained page: the run page shows it in a sandboxed frame, so the images are
    data: URIs rather than links to the pipeline root."""
    blessing = result.get("blessing") or {}
    setting = (result.get("best_setting") or {}).get("key", "none (no setting with finite "
                                                            "metrics)")
    parts = ["<html><head><meta charset='utf-8'><style>body{font-family:sans-serif}"
             "table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;"
             "padding:2px 8px;text-align:left}img{max-width:100%}</style></head><body>",
             f"<h2>Blessed: {'YES' if blessing.get('blessed') else 'NO'}</h2>",
             f"<p>{html.escape(blessing.get('reason', ''))}</p>",
             _table(_RULE_HEADER, _rule_rows(blessing)),
             f"<h3>Per domain: the chosen setting ({html.escape(setting)}) and the blurry "
             f"input</h3>"]
    header = ["domain", ""] + [_LABELS[m] for m in METRICS]
    rows = []
    for d, info in sorted(result.get("domains", {}).items()):
        chosen = (result.get("best") or {}).get(d, {})
        rows.append([domain_name(d), "chosen setting"] + [_fmt(m, chosen.get(m)) for m in METRICS])
        rows.append(["", "blurry input"] + [_fmt(m, info["input"].get(m)) for m in METRICS])
    parts.append(_table(header, rows))
    plot = _png(os.path.join(evaluation_dir, "perception_distortion.png"))
    if plot:
        parts.append(f"<h3>Perception-distortion over the grid</h3><img src='{plot}'>")
    for split, info in sorted(result.get("splits", {}).items()):
        grid = _png(os.path.join(evaluation_dir, "samples", f"{split}.png"))
        if grid:
            parts.append(f"<h3>Samples of {html.escape(split)} ({domain_name(info['domain'])}): "
                         f"blurry | output | sharp</h3><img src='{grid}'>")
    parts.append("</body></html>")
    return "\n".join(parts)
