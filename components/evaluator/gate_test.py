"""The blessing rules, table-driven."""
from __future__ import annotations

import math

import pytest

from components.evaluator.gate import GateConfig, decide

GOOD = {"in": {"psnr": 30.0, "ssim": 0.9, "lpips": 0.10, "niqe": 4.0},
        "out": {"psnr": 27.0, "ssim": 0.8, "lpips": 0.30, "niqe": 5.0}}


def metrics(**changes):
    """GOOD with 'domain_metric=value' changes, e.g. out_lpips=0.6."""
    m = {d: dict(v) for d, v in GOOD.items()}
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
     {"finite": "pass", "ood_lpips": "pass", "regression": "skipped"}),
    ("nan_in_domain_ssim", metrics(in_ssim=math.nan), None, {}, False,
     {"finite": "fail", "ood_lpips": "pass"}),
    ("inf_psnr_is_not_finite", metrics(out_psnr=math.inf), None, {}, False, {"finite": "fail"}),
    ("nan_ood_lpips", metrics(out_lpips=math.nan), None, {}, False,
     {"finite": "fail", "ood_lpips": "fail"}),
    ("ood_lpips_over_threshold", metrics(out_lpips=0.51), None, {}, False,
     {"finite": "pass", "ood_lpips": "fail"}),
    ("ood_lpips_at_threshold", metrics(out_lpips=0.5), None, {}, True, {"ood_lpips": "pass"}),
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
    ("nothing_scored", {}, None, {}, False, {"finite": "fail", "ood_lpips": "fail"}),
]


@pytest.mark.parametrize("name,cand,base,cfg,blessed,verdicts", CASES, ids=[c[0] for c in CASES])
def test_gate(name, cand, base, cfg, blessed, verdicts):
    out = decide(cand, GateConfig(**{"ood_lpips_max": 0.5, **cfg}), base)  # not the default
    assert out["blessed"] is blessed, out
    got = {r["rule"]: r["verdict"] for r in out["rules"]}
    assert [r["rule"] for r in out["rules"]] == ["finite", "ood_lpips", "regression"]
    for rule, verdict in verdicts.items():
        assert got[rule] == verdict, (rule, out)
    if blessed:
        assert out["reason"] == "all rules pass"
    else:
        failed = [r for r, v in got.items() if v == "fail"]
        assert all(r in out["reason"] for r in failed), out["reason"]


def test_rules_record_values_and_thresholds():
    out = decide(metrics(out_lpips=0.32), GateConfig(ood_lpips_max=0.4, regression_tolerance=0.01),
                 metrics(out_lpips=0.30))
    rules = {r["rule"]: r for r in out["rules"]}
    assert rules["ood_lpips"]["value"] == 0.32 and rules["ood_lpips"]["threshold"] == 0.4
    assert rules["regression"]["value"] == 0.32
    assert rules["regression"]["threshold"] == pytest.approx(0.31)


def test_config_validation():
    with pytest.raises(ValueError, match="ood_lpips_max"):
        GateConfig(ood_lpips_max=0)
    with pytest.raises(ValueError, match="regression_tolerance"):
        GateConfig(regression_tolerance=-1)
