"""The blessing rules, table-driven."""
from __future__ import annotations

import math

import pytest

from components.evaluator.gate import GateConfig, decide

GOOD = {"in": {"psnr": 30.0, "ssim": 0.9, "lpips": 0.10, "niqe": 4.0},
        "out": {"psnr": 27.0, "ssim": 0.8, "lpips": 0.30, "niqe": 5.0}}


# the blurry inputs' own scores (the do-nothing reference of beats_input)
INPUT = {"in": {"psnr": 26.0, "ssim": 0.7, "lpips": 0.30, "niqe": 6.0},
         "out": {"psnr": 25.0, "ssim": 0.6, "lpips": 0.45, "niqe": 7.0}}


def metrics(base=GOOD, **changes):
    """base (GOOD) with 'domain_metric=value' changes, e.g. out_lpips=0.6."""
    m = {d: dict(v) for d, v in base.items()}
    for k, v in changes.items():
        d, name = k.split("_", 1)
        if v is None:
            m[d].pop(name)
        else:
            m[d][name] = v
    return m


CASES = [
    # id, candidate, baseline, config, blessed, {rule: verdict}
    ("first_run_passes", metrics(), None, {}, True,
     {"finite": "pass", "ood_lpips": "pass", "beats_input": "pass", "regression": "skipped"}),
    ("nan_in_domain_ssim", metrics(in_ssim=math.nan), None, {}, False,
     {"finite": "fail", "ood_lpips": "pass"}),
    ("inf_psnr_is_not_finite", metrics(out_psnr=math.inf), None, {}, False, {"finite": "fail"}),
    ("nan_ood_lpips", metrics(out_lpips=math.nan), None, {}, False,
     {"finite": "fail", "ood_lpips": "fail"}),
    ("ood_lpips_over_threshold", metrics(out_lpips=0.51), None, {}, False,
     {"finite": "pass", "ood_lpips": "fail"}),
    ("ood_lpips_at_threshold", metrics(out_lpips=0.4), None, {"ood_lpips_max": 0.4}, True,
     {"ood_lpips": "pass"}),
    ("stricter_threshold", metrics(), None, {"ood_lpips_max": 0.2}, False, {"ood_lpips": "fail"}),
    ("regression_beyond_tolerance", metrics(out_lpips=0.32), metrics(out_lpips=0.30), {}, False,
     {"ood_lpips": "pass", "regression": "fail"}),
    ("regression_within_tolerance", metrics(out_lpips=0.305), metrics(out_lpips=0.30), {}, True,
     {"regression": "pass"}),
    ("better_than_baseline", metrics(out_lpips=0.2), metrics(out_lpips=0.30), {}, True,
     {"regression": "pass"}),
    ("baseline_without_lpips", metrics(), metrics(out_lpips=None), {}, True,
     {"regression": "skipped"}),
    ("no_out_of_domain_split", {"in": GOOD["in"]}, None, {}, False, {"ood_lpips": "fail"}),
    ("nothing_scored", {}, None, {}, False,
     {"finite": "fail", "ood_lpips": "fail", "beats_input": "fail"}),
    # beats_input: LPIPS <= input - margin (0.01) and PSNR >= input - tolerance (0.0), per domain
    ("returns_its_input", metrics(INPUT), None, {"ood_lpips_max": 0.5}, False,
     {"ood_lpips": "pass", "beats_input": "fail"}),
    ("in_domain_lpips_within_margin", metrics(in_lpips=0.295), None, {}, False,
     {"beats_input": "fail"}),
    ("in_domain_lpips_at_margin", metrics(in_lpips=0.29), None, {}, True, {"beats_input": "pass"}),
    ("ood_psnr_under_input", metrics(out_psnr=24.99), None, {}, False, {"beats_input": "fail"}),
    ("ood_psnr_equal_to_input", metrics(out_psnr=25.0), None, {}, True, {"beats_input": "pass"}),
    ("psnr_tolerance", metrics(out_psnr=24.5), None, {"input_psnr_tolerance": 0.5}, True,
     {"beats_input": "pass"}),
    ("larger_lpips_margin", metrics(in_lpips=0.25), None, {"input_lpips_margin": 0.1}, False,
     {"beats_input": "fail"}),
    ("negative_margin_lets_a_worse_model_through", metrics(in_lpips=0.35), None,
     {"input_lpips_margin": -0.1}, True, {"beats_input": "pass"}),
    ("nan_psnr_fails_it_too", metrics(in_psnr=math.nan), None, {}, False,
     {"finite": "fail", "beats_input": "fail"}),
]


@pytest.mark.parametrize("name,cand,base,cfg,blessed,verdicts", CASES, ids=[c[0] for c in CASES])
def test_gate(name, cand, base, cfg, blessed, verdicts):
    out = decide(cand, GateConfig(**{"ood_lpips_max": 0.5, **cfg}), base,  # not the default
                 inputs=INPUT)
    assert out["blessed"] is blessed, out
    got = {r["rule"]: r["verdict"] for r in out["rules"]}
    assert [r["rule"] for r in out["rules"]] == ["finite", "ood_lpips", "beats_input", "regression",
                                                 "beats_baselines"]
    for rule, verdict in verdicts.items():
        assert got[rule] == verdict, (rule, out)
    if blessed:
        assert out["reason"] == "all rules pass"
    else:
        failed = [r for r, v in got.items() if v == "fail"]
        assert all(r in out["reason"] for r in failed), out["reason"]


def test_rules_record_values_and_thresholds():
    out = decide(metrics(out_lpips=0.32), GateConfig(ood_lpips_max=0.4, regression_tolerance=0.01),
                 metrics(out_lpips=0.30), inputs=INPUT)
    rules = {r["rule"]: r for r in out["rules"]}
    per_domain = rules["beats_input"]["domains"]
    assert per_domain["in"]["lpips"] == {"value": 0.10, "threshold": pytest.approx(0.29),
                                         "input": 0.30, "reference": 0.30, "verdict": "pass"}
    assert per_domain["out"]["psnr"] == {"value": 27.0, "threshold": 25.0, "input": 25.0,
                                         "reference": 25.0, "verdict": "pass"}
    assert per_domain["in"]["verdict"] == per_domain["out"]["verdict"] == "pass"
    assert rules["ood_lpips"]["value"] == 0.32 and rules["ood_lpips"]["threshold"] == 0.4
    assert rules["regression"]["value"] == 0.32
    assert rules["regression"]["threshold"] == pytest.approx(0.31)


def test_config_validation():
    with pytest.raises(ValueError, match="ood_lpips_max"):
        GateConfig(ood_lpips_max=0)
    with pytest.raises(ValueError, match="regression_tolerance"):
        GateConfig(regression_tolerance=-1)
    with pytest.raises(ValueError, match="input_lpips_margin"):
        GateConfig(input_lpips_margin=math.inf)
    with pytest.raises(ValueError, match="input_psnr_tolerance"):
        GateConfig(input_psnr_tolerance=-0.1)
    with pytest.raises(ValueError, match="input_psnr_tolerance"):
        GateConfig(input_psnr_tolerance=math.nan)


def test_without_the_inputs_scores_beats_input_fails():
    out = decide(metrics(), GateConfig(ood_lpips_max=0.5))
    rule = {r["rule"]: r for r in out["rules"]}["beats_input"]
    assert not out["blessed"] and rule["verdict"] == "fail"
    assert "the blurry input has no finite LPIPS/PSNR" in out["reason"]


def test_a_negative_margin_says_the_model_is_worse_than_its_input():
    """With input_lpips_margin < 0 a model worse than its input passes beats_input; its detail
    said "LPIPS 0.6210 < input 0.1620"."""
    out = decide(metrics(in_lpips=0.35), GateConfig(ood_lpips_max=0.5, input_lpips_margin=-0.1),
                 None, inputs=INPUT)
    rule = next(r for r in out["rules"] if r["rule"] == "beats_input")
    assert rule["verdict"] == "pass"
    assert rule["detail"].startswith(
        "in-domain LPIPS 0.3500 > input 0.3000, worse than the input but within the allowed "
        "0.4000 (gate.input_lpips_margin -0.1), PSNR "), rule["detail"]
    assert " < input" not in rule["detail"].split(";")[0]
    # a model better than its input reads as before
    good = decide(metrics(), GateConfig(ood_lpips_max=0.5), None, inputs=INPUT)
    detail = next(r for r in good["rules"] if r["rule"] == "beats_input")["detail"]
    assert "LPIPS 0.1000 < input 0.3000, PSNR" in detail and "worse" not in detail


# ---- beats_baselines and decisions on the paired bootstrap interval ----------------------------
UNSHARP = {"in": {"psnr": 29.0, "ssim": 0.8, "lpips": 0.12, "niqe": 4.0},
           "out": {"psnr": 24.0, "ssim": 0.5, "lpips": 0.50, "niqe": 6.0}}
DENOISE = {"in": {"psnr": 27.0, "ssim": 0.8, "lpips": 0.25, "niqe": 5.0},
           "out": {"psnr": 27.5, "ssim": 0.8, "lpips": 0.29, "niqe": 5.0}}  # beats GOOD out


def _rule(out, name):
    return next(r for r in out["rules"] if r["rule"] == name)


def test_beats_baselines_is_reported_and_enforced_only_when_required():
    classical = {"unsharp": UNSHARP, "denoise": DENOISE}
    reported = decide(metrics(), GateConfig(ood_lpips_max=0.5), None, inputs=INPUT,
                      classical=classical)
    rule = _rule(reported, "beats_baselines")
    assert reported["blessed"] and rule["verdict"] == "fail" and rule["enforced"] is False
    assert "beats 1 of 2 classical baselines" in rule["detail"]
    assert "denoise: out-of-domain LPIPS 0.3000 vs denoise 0.2900" in rule["detail"]
    assert "not enforced" in rule["detail"]
    assert rule["references"]["unsharp"]["out"]["verdict"] == "pass"
    assert rule["references"]["denoise"]["out"]["lpips"]["verdict"] == "fail"
    assert rule["references"]["denoise"]["out"]["psnr"]["verdict"] == "fail"
    assert rule["references"]["denoise"]["in"]["verdict"] == "pass"
    required = decide(metrics(), GateConfig(ood_lpips_max=0.5, require_beats_baselines=True),
                      None, inputs=INPUT, classical=classical)
    assert not required["blessed"] and "beats_baselines" in required["reason"]
    only_unsharp = decide(metrics(), GateConfig(ood_lpips_max=0.5, require_beats_baselines=True),
                          None, inputs=INPUT, classical={"unsharp": UNSHARP})
    assert only_unsharp["blessed"] and _rule(only_unsharp, "beats_baselines")["verdict"] == "pass"
    none = decide(metrics(), GateConfig(ood_lpips_max=0.5), None, inputs=INPUT)
    assert _rule(none, "beats_baselines")["verdict"] == "skipped"


def _cmp(mean_diff, lo, hi, wins=5, n=8):
    return {"mean_diff": mean_diff, "ci_low": lo, "ci_high": hi, "wins": wins,
            "losses": n - wins, "ties": 0, "n": n, "confidence": 0.95}


def test_interval_decisions_need_the_whole_interval_on_the_good_side():
    """The mean beats the input in both domains, but out-of-domain the LPIPS interval of
    (model - input) reaches above -margin: on the mean it passes, on the interval it fails."""
    comparisons = {"input": {
        "in": {"lpips": _cmp(-0.20, -0.25, -0.15), "psnr": _cmp(4.0, 3.0, 5.0)},
        "out": {"lpips": _cmp(-0.15, -0.30, 0.02), "psnr": _cmp(2.0, 0.5, 3.5)}}}
    mean = decide(metrics(), GateConfig(ood_lpips_max=0.5), None, inputs=INPUT,
                  comparisons=comparisons)
    assert mean["blessed"], mean["reason"]
    interval = decide(metrics(), GateConfig(ood_lpips_max=0.5, decide_on="interval"), None,
                      inputs=INPUT, comparisons=comparisons)
    rule = _rule(interval, "beats_input")
    assert not interval["blessed"] and rule["verdict"] == "fail"
    assert rule["domains"]["out"]["lpips"]["verdict"] == "fail"
    assert rule["domains"]["out"]["psnr"]["verdict"] == "pass"
    assert rule["domains"]["in"]["verdict"] == "pass"
    assert rule["domains"]["out"]["lpips"]["ci_high"] == 0.02
    # PSNR: the lower bound must be >= -tolerance
    comparisons["input"]["out"] = {"lpips": _cmp(-0.15, -0.30, -0.05),
                                   "psnr": _cmp(2.0, -0.1, 3.5)}
    psnr = decide(metrics(), GateConfig(ood_lpips_max=0.5, decide_on="interval"), None,
                  inputs=INPUT, comparisons=comparisons)
    assert _rule(psnr, "beats_input")["domains"]["out"]["psnr"]["verdict"] == "fail"
    tolerant = decide(metrics(), GateConfig(ood_lpips_max=0.5, decide_on="interval",
                                            input_psnr_tolerance=0.1), None,
                      inputs=INPUT, comparisons=comparisons)
    assert tolerant["blessed"], tolerant["reason"]
    # without comparisons an interval decision cannot pass
    bare = decide(metrics(), GateConfig(ood_lpips_max=0.5, decide_on="interval"), None,
                  inputs=INPUT)
    assert not bare["blessed"]


def test_regression_on_the_interval_is_a_non_inferiority_test():
    prev = metrics(out_lpips=0.30)
    within = {"previous": {"out": {"lpips": _cmp(0.0, -0.005, 0.008)}}}
    wide = {"previous": {"out": {"lpips": _cmp(0.0, -0.02, 0.03)}}}
    cfg = GateConfig(ood_lpips_max=0.5, decide_on="interval", regression_tolerance=0.01)
    ok = decide(metrics(), cfg, prev, inputs=INPUT, comparisons={
        **within, "input": {d: {"lpips": _cmp(-0.2, -0.3, -0.1), "psnr": _cmp(1, 0.5, 2)}
                            for d in ("in", "out")}})
    assert _rule(ok, "regression")["verdict"] == "pass"
    assert "[-0.0050, +0.0080], wins 5/8" in _rule(ok, "regression")["detail"]
    bad = decide(metrics(), cfg, prev, inputs=INPUT, comparisons=wide)
    assert _rule(bad, "regression")["verdict"] == "fail"
    # on the mean the same wide interval passes (equal means)
    assert _rule(decide(metrics(), GateConfig(ood_lpips_max=0.5), prev, inputs=INPUT,
                        comparisons=wide), "regression")["verdict"] == "pass"


def test_new_config_fields_are_checked():
    with pytest.raises(ValueError, match="decide_on"):
        GateConfig(decide_on="median")
    with pytest.raises(ValueError, match="require_beats_baselines"):
        GateConfig(require_beats_baselines="yes")
    with pytest.raises(ValueError, match="baseline_psnr_tolerance"):
        GateConfig(baseline_psnr_tolerance=-1)
