"""The blessing rules (SPEC section 7): a model ships only when every rule passes.

  finite      every metric of the chosen setting, in every domain, is a finite number
  ood_lpips   out-of-domain LPIPS at the chosen setting <= an absolute threshold
  beats_input in every domain, the chosen setting beats the do-nothing reference (the blurry
              input, scored against the same sharp images): LPIPS <= the input's - a margin,
              and PSNR >= the input's - a tolerance; a model that returns its input, or adds
              grain to it, fails here whatever the absolute threshold
  regression  out-of-domain LPIPS <= the latest blessed model's + a tolerance, both measured
              now on the same images with the same seeds (each at the setting it would serve);
              on the first run there is no blessed model and the rule is skipped
The decision and every rule (value, threshold, verdict) are written to blessing.json.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Optional, Sequence

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
    # beats_input: in every domain LPIPS must be at least this much under the blurry input's
    # (a negative margin lets a model worse than its input through: smoke tests of the wiring)...
    input_lpips_margin: float = 0.01
    # ...and PSNR at most this much (dB) under the blurry input's (0: not lower at all)
    input_psnr_tolerance: float = 0.0
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
        for name in ("regression_tolerance", "input_psnr_tolerance", "input_lpips_margin"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value)
                    and (value >= 0 or name == "input_lpips_margin")):
                raise ValueError(f"{name} must be a finite number"
                                 f"{'' if name == 'input_lpips_margin' else ' >= 0'}, got {value!r}")


@dataclasses.dataclass
class Rule:
    rule: str
    verdict: str
    value: Optional[float] = None
    threshold: Optional[float] = None
    detail: str = ""
    # per-domain checks of a rule that looks at every domain (beats_input):
    # {domain: {metric: {"value", "threshold", "verdict"}, "verdict": ...}}
    domains: Optional[Dict[str, dict]] = None


def domain_name(domain: str) -> str:
    """'in' -> 'in-domain', 'out' -> 'out-of-domain' (reports, plots, the run summary)."""
    return {"in": "in-domain", "out": "out-of-domain"}.get(domain, f"domain {domain!r}")


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def beats_input(best: Dict[str, Dict[str, float]], inputs: Optional[Dict[str, Dict[str, float]]],
                config: GateConfig) -> Rule:
    """The candidate against the blurry input, domain by domain (LPIPS lower by the margin,
    PSNR not lower than the tolerance allows)."""
    if not best:
        return Rule("beats_input", FAIL, detail="no metrics: nothing to compare with the input")
    domains, failed = {}, []
    for d in sorted(best):
        ref = (inputs or {}).get(d)
        if not ref or not all(_finite(ref.get(m)) for m in ("lpips", "psnr")):
            domains[d] = {"verdict": FAIL}
            failed.append(f"{domain_name(d)}: the blurry input has no finite LPIPS/PSNR")
            continue
        checks = {"lpips": (best[d].get("lpips"), ref["lpips"] - config.input_lpips_margin,
                            lambda v, t: v <= t),
                  "psnr": (best[d].get("psnr"), ref["psnr"] - config.input_psnr_tolerance,
                           lambda v, t: v >= t)}
        entry = {}
        for metric, (value, threshold, ok) in checks.items():
            good = _finite(value) and ok(value, threshold)
            entry[metric] = {"value": value, "threshold": threshold, "input": ref[metric],
                             "verdict": PASS if good else FAIL}
        entry["verdict"] = PASS if all(entry[m]["verdict"] == PASS for m in checks) else FAIL
        domains[d] = entry
        if entry["verdict"] == FAIL:
            lp, ps = entry["lpips"], entry["psnr"]
            failed.append(f"{domain_name(d)} LPIPS {format_value(lp['value'], '.4f')} vs input "
                          f"{ref['lpips']:.4f} (must be <= {lp['threshold']:.4f}), PSNR "
                          f"{format_value(ps['value'], '.2f')} vs input {ref['psnr']:.2f} "
                          f"(must be >= {ps['threshold']:.2f})")
    if failed:
        return Rule("beats_input", FAIL, detail="worse than the blurry input: " + "; ".join(failed),
                    domains=domains)
    return Rule("beats_input", PASS, domains=domains, detail="; ".join(
        f"{domain_name(d)} LPIPS {_lpips_vs_input(e['lpips'], config.input_lpips_margin)}, "
        f"PSNR {e['psnr']['value']:.2f} vs input {e['psnr']['input']:.2f}"
        for d, e in domains.items()))


def _lpips_vs_input(entry: Dict[str, float], margin: float) -> str:
    """"0.1500 < input 0.1620", the relation as it is: with a negative input_lpips_margin a
    model worse than its input passes, and the text says so (it printed "0.6210 < input
    0.1620")."""
    value, ref = entry["value"], entry["input"]
    rel = "<" if value < ref else "=" if value == ref else ">"
    text = f"{value:.4f} {rel} input {ref:.4f}"
    if value >= ref:
        text += (f", worse than the input but within the allowed {entry['threshold']:.4f} "
                 f"(gate.input_lpips_margin {margin:g})")
    return text


def format_value(v, spec: str) -> str:
    """v formatted with spec when it is a finite number, else as it is (nan, None)."""
    return format(v, spec) if _finite(v) else str(v)


def decide(best: Dict[str, Dict[str, float]], config: GateConfig,
           baseline: Optional[Dict[str, Dict[str, float]]] = None,
           inputs: Optional[Dict[str, Dict[str, float]]] = None,
           non_finite_outputs: Sequence[str] = ()) -> dict:
    """best: {domain: {metric: value}} of the candidate at its chosen setting; baseline: the
    same for the latest blessed model measured now, or None (first run); inputs: the same for
    the blurry inputs themselves (the do-nothing reference; None fails beats_input);
    non_finite_outputs: the settings at which the model's output had a NaN or an Inf.
    Returns {"blessed": bool, "rules": [Rule as dict], "reason": str}."""
    rules: List[Rule] = []
    bad = sorted(f"{d}.{m}={v}" for d, ms in best.items() for m, v in ms.items() if not _finite(v))
    if non_finite_outputs:
        rules.append(Rule("finite", FAIL, detail="the model's output is not finite (NaN or Inf) "
                          f"at {len(non_finite_outputs)} setting(s): "
                          + ", ".join(non_finite_outputs)))
    elif not best:
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
    rules.append(beats_input(best, inputs, config))
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
