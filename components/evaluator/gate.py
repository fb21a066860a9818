"""The blessing rules (SPEC section 7): a model ships only when every rule passes.

  finite      every metric of the chosen setting, in every domain, is a finite number
  ood_lpips   out-of-domain LPIPS at the chosen setting <= an absolute threshold
  regression  out-of-domain LPIPS <= the latest blessed model's + a tolerance, both measured
              now on the same images with the same seeds (each at the setting it would serve);
              on the first run there is no blessed model and the rule is skipped
The decision and every rule (value, threshold, verdict) are written to blessing.json.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Optional

PASS, FAIL, SKIPPED = "pass", "fail", "skipped"


@dataclasses.dataclass
class GateConfig:
    # Out-of-domain LPIPS (AlexNet, lower is better) must be at or under this. The local default
    # 0.48 sits under the blurry inputs' own out-of-domain LPIPS on the evaluated images of the
    # default synthetic sets (0.496): a model must do better than doing nothing
    # (docs/evaluation.md). The paper's GoPro-trained model reaches 0.123 on RealBlur-J;
    # production configs set ~0.2 (infra/kubeflow.example.yaml).
    ood_lpips_max: float = 0.48
    # A new model may be at most this much worse (out-of-domain LPIPS) than the latest blessed.
    regression_tolerance: float = 0.01
    domain: str = "out"  # the domain whose LPIPS gates
    # Where the latest blessed model comes from: "ml-metadata" (a Resolver with
    # LatestBlessedModelStrategy; LocalDagRunner, Vertex AI Pipelines) or "registry" (the newest
    # version of registry.uri: open-source KFP's backend cannot run Resolver nodes).
    baseline: str = "ml-metadata"

    def __post_init__(self):
        if self.baseline not in ("ml-metadata", "registry"):
            raise ValueError(f"baseline must be 'ml-metadata' or 'registry', got {self.baseline!r}")
        if not self.ood_lpips_max > 0:
            raise ValueError(f"ood_lpips_max must be > 0, got {self.ood_lpips_max}")
        if not self.regression_tolerance >= 0:
            raise ValueError(f"regression_tolerance must be >= 0, got {self.regression_tolerance}")


@dataclasses.dataclass
class Rule:
    rule: str
    verdict: str
    value: Optional[float] = None
    threshold: Optional[float] = None
    detail: str = ""


def domain_name(domain: str) -> str:
    """'in' -> 'in-domain', 'out' -> 'out-of-domain' (reports, plots, the run summary)."""
    return {"in": "in-domain", "out": "out-of-domain"}.get(domain, f"domain {domain!r}")


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def decide(best: Dict[str, Dict[str, float]], config: GateConfig,
           baseline: Optional[Dict[str, Dict[str, float]]] = None) -> dict:
    """best: {domain: {metric: value}} of the candidate at its chosen setting; baseline: the
    same for the latest blessed model measured now, or None (first run).
    Returns {"blessed": bool, "rules": [Rule as dict], "reason": str}."""
    rules: List[Rule] = []
    bad = sorted(f"{d}.{m}={v}" for d, ms in best.items() for m, v in ms.items() if not _finite(v))
    if not best:
        rules.append(Rule("finite", FAIL, detail="no metrics: no evaluation split was scored"))
    else:
        rules.append(Rule("finite", FAIL if bad else PASS,
                          detail="not finite: " + ", ".join(bad) if bad else
                          f"{sum(len(m) for m in best.values())} metrics finite"))
    lpips = best.get(config.domain, {}).get("lpips")
    if lpips is None:
        rules.append(Rule("ood_lpips", FAIL, threshold=config.ood_lpips_max,
                          detail=f"no {config.domain!r}-domain split was evaluated"))
    else:
        ok = _finite(lpips) and lpips <= config.ood_lpips_max
        rules.append(Rule("ood_lpips", PASS if ok else FAIL, lpips, config.ood_lpips_max,
                          f"{domain_name(config.domain)} LPIPS {lpips:.4f} "
                          f"{'<=' if ok else '>'} {config.ood_lpips_max}"))
    if baseline is None:
        rules.append(Rule("regression", SKIPPED, lpips,
                          detail="no blessed model yet: the absolute rules decide"))
    else:
        base = baseline.get(config.domain, {}).get("lpips")
        if base is None or not _finite(base):
            rules.append(Rule("regression", SKIPPED, lpips,
                              detail=f"the baseline has no finite {domain_name(config.domain)} LPIPS"))
        elif lpips is None or not _finite(lpips):
            rules.append(Rule("regression", FAIL, lpips, base + config.regression_tolerance,
                              "the candidate has no finite LPIPS"))
        else:
            limit = base + config.regression_tolerance
            ok = lpips <= limit
            rules.append(Rule("regression", PASS if ok else FAIL, lpips, limit,
                              f"{domain_name(config.domain)} LPIPS {lpips:.4f} vs baseline {base:.4f} "
                              f"+ tolerance {config.regression_tolerance}"))
    failed = [r for r in rules if r.verdict == FAIL]
    return {"blessed": not failed,
            "reason": "all rules pass" if not failed else
            "; ".join(f"{r.rule}: {r.detail}" for r in failed),
            "rules": [dataclasses.asdict(r) for r in rules],
            "config": dataclasses.asdict(config)}
