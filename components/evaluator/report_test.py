"""The run-page renderings of an evaluation (components/evaluator/report.py)."""
from __future__ import annotations

import math

from components.evaluator import report
from components.evaluator.gate import GateConfig, decide

BEST = {"in": {"psnr": 27.0, "ssim": 0.8, "lpips": 0.30, "niqe": 5.0},
        "out": {"psnr": 24.0, "ssim": 0.7, "lpips": 0.45, "niqe": 6.0}}
INPUTS = {"in": {"psnr": 26.0, "ssim": 0.75, "lpips": 0.35, "niqe": 7.0},
          "out": {"psnr": 23.0, "ssim": 0.6, "lpips": 0.50, "niqe": 8.0}}


def test_verdict_lists_every_rule_and_each_domain_of_beats_input():
    blessing = decide(BEST, GateConfig(ood_lpips_max=0.4), inputs=INPUTS)
    md = report.verdict_markdown(blessing)
    assert md.startswith("## Blessed: NO") and "ood_lpips: out-of-domain LPIPS 0.4500 > 0.4" in md
    rows = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [r.split(" | ")[0].lstrip("| ") for r in rows] == [
        "finite", "ood_lpips", "beats_input", "beats_input: in-domain LPIPS",
        "beats_input: in-domain PSNR", "beats_input: out-of-domain LPIPS",
        "beats_input: out-of-domain PSNR", "regression", "beats_baselines"]
    assert "| ood_lpips | FAIL | 0.4500 | 0.4000 |" in md
    assert "None" not in md  # a rule without a value or threshold leaves the cell empty


def test_scalars_are_named_by_domain_and_metric_and_keep_a_nan():
    s = report.domain_scalars({"out": {"lpips": float("nan"), "psnr": 20.0}})
    assert set(s) == {"out-of-domain LPIPS", "out-of-domain PSNR"}
    assert math.isnan(s["out-of-domain LPIPS"])


def test_report_page_embeds_the_plot_and_the_grids(tmp_path):
    (tmp_path / "samples").mkdir()
    for path in ("perception_distortion.png", "samples/test.png"):
        (tmp_path / path).write_bytes(b"\x89PNG fake")
    result = {"blessing": decide(BEST, GateConfig(), inputs=INPUTS), "best": BEST,
              "best_setting": {"key": "ddpm-T20-n0.05-K1"},
              "domains": {d: {"input": INPUTS[d]} for d in BEST},
              "splits": {"test": {"domain": "in"}, "test_ood": {"domain": "out"}}}
    page = report.report_html(result, str(tmp_path))
    assert "<h2>Blessed: YES</h2>" in page and "ddpm-T20-n0.05-K1" in page
    assert page.count("data:image/png;base64,") == 2  # test_ood has no grid file
    assert "<td>blurry input</td><td>23.00</td>" in page


def test_the_baselines_rows_and_their_comparisons():
    classical = {"gaussian_s1": {"in": {"psnr": 26.5, "ssim": 0.7, "lpips": 0.40, "niqe": 6.0},
                                 "out": {"psnr": 24.5, "ssim": 0.7, "lpips": 0.40, "niqe": 6.0}}}
    cmp = {"mean_diff": 0.05, "ci_low": 0.01, "ci_high": 0.09, "wins": 2, "losses": 6, "ties": 0,
           "n": 8, "confidence": 0.95}
    comparisons = {"baselines": {"gaussian_s1": {"out": {"lpips": cmp, "psnr": cmp}}}}
    blessing = decide(BEST, GateConfig(), inputs=INPUTS, classical=classical,
                      comparisons=comparisons)
    md = report.verdict_markdown(blessing)
    assert "| beats_baselines | FAIL (not enforced) |" in md
    assert "beats_baselines: gaussian_s1, out-of-domain LPIPS | FAIL | 0.4500 | 0.4000 | " \
           "gaussian_s1 0.4000; diff +0.0500 [+0.0100, +0.0900], wins 2/8 |" in md
    result = {"blessing": blessing, "best": BEST, "best_setting": {"key": "k"},
              "chosen_on": "validation", "validation": {"splits": {"val": {}, "val_ood": {}}},
              "classical": {"gaussian_s1": {"label": "Gaussian, sigma 1",
                                            "domains": classical["gaussian_s1"]}},
              "comparisons": comparisons,
              "domains": {d: {"input": INPUTS[d]} for d in BEST}, "splits": {}}
    page = report.report_html(result, "/nonexistent")
    assert "setting k chosen on validation (val, val_ood)" in page
    assert "<td>gaussian_s1: Gaussian, sigma 1</td><td>24.50</td>" in page
    assert "model - it: LPIPS +0.0500 [+0.0100, +0.0900], wins 2/8" in page
