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

from components.evaluator.evaluate import METRICS, chosen_text, versus_text
from components.evaluator.gate import comparison_text, domain_name, format_value

_FORMATS = {"psnr": ".2f", "ssim": ".4f", "lpips": ".4f", "niqe": ".3f"}
_LABELS = {"psnr": "PSNR", "ssim": "SSIM", "lpips": "LPIPS", "niqe": "NIQE"}


def _fmt(metric: str, value) -> str:
    """A table cell: the value in the metric's format; an absent one (a rule without a
    threshold) empty, a non-finite one as it is (nan)."""
    return "" if value is None else format_value(value, _FORMATS.get(metric, ".4f"))


def _verdict(r: dict) -> str:
    v = r["verdict"].upper()
    return v if r.get("enforced", True) else f"{v} (not enforced)"


def _check_rows(label: str, entry: dict, reference: str) -> List[List[str]]:
    rows = []
    for m in ("lpips", "psnr"):
        if m in entry:
            c = entry[m]
            ref = c.get("reference", c.get("input"))
            rows.append([f"{label} {_LABELS[m]}", c["verdict"].upper(), _fmt(m, c["value"]),
                         _fmt(m, c["threshold"]),
                         f"{reference} {_fmt(m, ref)}; {comparison_text(c, m)}".rstrip("; ")])
    return rows


def _rule_rows(blessing: dict) -> List[List[str]]:
    rows = []
    for r in blessing.get("rules", []):
        rows.append([r["rule"], _verdict(r), _fmt("lpips", r.get("value")),
                     _fmt("lpips", r.get("threshold")), r.get("detail", "")])
        for d, e in sorted((r.get("domains") or {}).items()):
            rows.extend(_check_rows(f"{r['rule']}: {domain_name(d)}", e, "input"))
        for name, domains in sorted((r.get("references") or {}).items()):
            for d, e in sorted(domains.items()):
                rows.extend(_check_rows(f"{r['rule']}: {name}, {domain_name(d)}", e, name))
    return rows


_RULE_HEADER = ["rule", "verdict", "value", "threshold", "detail"]


def verdict_markdown(blessing: dict) -> str:
    """The decision, its reason and one table row per rule (and per domain of beats_input)."""
    lines = [f"## Blessed: {'YES' if blessing.get('blessed') else 'NO'}", "",
             *([f"Sampling setting chosen on {blessing['chosen_on']}; every rule judges it on "
                f"the test splits.", ""] if blessing.get("chosen_on") else []),
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
    parts = ["<html><head><meta charset='utf-8'><style>body{font-family:sans-serif}"
             "table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;"
             "padding:2px 8px;text-align:left}img{max-width:100%}</style></head><body>",
             f"<h2>Blessed: {'YES' if blessing.get('blessed') else 'NO'}</h2>",
             f"<p>{html.escape(blessing.get('reason', ''))}</p>",
             _table(_RULE_HEADER, _rule_rows(blessing)),
             f"<h3>Test: the model beside the blurry input and the classical baselines</h3>"
             f"<p>{html.escape(chosen_text(result))}. Differences are model minus the row's "
             f"method, with the paired bootstrap interval; wins count the images where the "
             f"model is better.</p>"]
    header = ["domain", "method"] + [_LABELS[m] for m in METRICS] + ["model - it"]
    rows = []
    comps = result.get("comparisons") or {}
    for d, info in sorted(result.get("domains", {}).items()):
        chosen = (result.get("best") or {}).get(d, {})
        rows.append([domain_name(d), "model (chosen setting)"]
                    + [_fmt(m, chosen.get(m)) for m in METRICS] + [""])
        rows.append(["", "blurry input"] + [_fmt(m, info["input"].get(m)) for m in METRICS]
                    + [versus_text((comps.get("input") or {}).get(d))])
        for name, ref in sorted((result.get("classical") or {}).items()):
            m_ = ref["domains"].get(d, {})
            rows.append(["", f"{name}: {ref.get('label', '')}"]
                        + [_fmt(m, m_.get(m)) for m in METRICS]
                        + [versus_text(((comps.get("baselines") or {}).get(name) or {}).get(d))])
    parts.append(_table(header, rows))
    val = (result.get("validation") or {}).get("domains") or {}
    if val:
        best_key = (result.get("best_setting") or {}).get("key")
        parts.append("<h3>Validation: the sampling grid the setting was chosen on</h3>")
        vrows = []
        for d, info in sorted(val.items()):
            vrows.append([domain_name(d), "blurry input"]
                         + [_fmt(m, info["input"].get(m)) for m in METRICS])
            for key, ms in info["settings"].items():
                vrows.append(["", key + (" (chosen)" if key == best_key else "")]
                             + [_fmt(m, ms.get(m)) for m in METRICS])
        parts.append(_table(["domain", "setting"] + [_LABELS[m] for m in METRICS], vrows))
    plot = _png(os.path.join(evaluation_dir, "perception_distortion.png"))
    if plot:
        parts.append(f"<h3>Perception-distortion</h3><img src='{plot}'>")
    for split, info in sorted(result.get("splits", {}).items()):
        grid = _png(os.path.join(evaluation_dir, "samples", f"{split}.png"))
        if grid:
            parts.append(f"<h3>Samples of {html.escape(split)} ({domain_name(info['domain'])}): "
                         f"blurry | output | sharp</h3><img src='{grid}'>")
    parts.append("</body></html>")
    return "\n".join(parts)
