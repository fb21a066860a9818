"""paired_comparison against scipy's bootstrap and brute force; better_by's signs and margins."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.stats

from components.evaluator.stats import better_by, paired_comparison

KEYS = {"n", "dropped", "mean_a", "mean_b", "mean_diff", "ci_low", "ci_high", "wins", "losses",
        "ties", "confidence", "n_boot", "higher_is_better"}


def lpips_like(n: int, seed: int):
    rng = np.random.default_rng(seed)
    b = rng.normal(0.3, 0.05, n)
    return b + rng.normal(-0.01, 0.02, n), b  # a: the candidate, 0.01 better on average


def mc_tolerance(d: np.ndarray, *n_boots: int) -> float:
    """4 standard errors of the difference of two Monte-Carlo estimates of a 2.5% / 97.5%
    percentile of the bootstrap distribution of mean(d).

    That distribution is close to normal with sd s = std(d) / sqrt(n) (ddof 0); a q-quantile
    estimated from B draws has SE sqrt(q (1 - q) / B) / f(x_q), f(x_q) = phi(1.96) / s, i.e.
    2.67 s / sqrt(B) (measured over 200 seeds, n = 8 and 30: 0.84-0.98 of this).
    """
    s = np.std(d) / math.sqrt(d.size)
    se = 2.67 * s * math.sqrt(sum(1 / b for b in n_boots))
    return 4 * se


@pytest.mark.parametrize("n,seed", [(8, 0), (8, 1), (30, 2), (100, 3)])
@pytest.mark.parametrize("n_boot", [2000, 20000])
def test_interval_agrees_with_scipy(n, seed, n_boot):
    a, b = lpips_like(n, seed)
    d = a - b
    ref = scipy.stats.bootstrap((d,), np.mean, method="percentile", confidence_level=0.95,
                                n_resamples=20000, random_state=np.random.default_rng(seed + 100))
    c = paired_comparison(a, b, higher_is_better=False, n_boot=n_boot, seed=seed)
    tol = mc_tolerance(d, n_boot, 20000)
    assert c["ci_low"] == pytest.approx(ref.confidence_interval.low, abs=tol)
    assert c["ci_high"] == pytest.approx(ref.confidence_interval.high, abs=tol)
    assert c["ci_low"] < c["mean_diff"] < c["ci_high"]


def test_fields_means_and_json():
    a, b = lpips_like(8, 0)
    c = paired_comparison(a, b, higher_is_better=False)
    assert set(c) == KEYS
    assert c["n"] == 8 and c["dropped"] == 0 and c["n_boot"] == 2000 and c["confidence"] == 0.95
    assert c["mean_a"] == pytest.approx(np.mean(a)) and c["mean_b"] == pytest.approx(np.mean(b))
    assert c["mean_diff"] == pytest.approx(np.mean(a) - np.mean(b))
    assert json.loads(json.dumps(c)) == c  # plain Python numbers


def test_wider_confidence_wider_interval():
    a, b = lpips_like(20, 4)
    c90 = paired_comparison(a, b, False, confidence=0.90)
    c99 = paired_comparison(a, b, False, confidence=0.99)
    assert c99["ci_low"] < c90["ci_low"] < c90["ci_high"] < c99["ci_high"]


@pytest.mark.parametrize("higher_is_better", [True, False])
def test_wins_losses_ties_brute_force(higher_is_better):
    rng = np.random.default_rng(5)
    a, b = rng.integers(0, 4, 50).astype(float), rng.integers(0, 4, 50).astype(float)
    wins = losses = ties = 0
    for x, y in zip(a, b):
        if x == y:
            ties += 1
        elif (x > y) == higher_is_better:
            wins += 1
        else:
            losses += 1
    c = paired_comparison(a, b, higher_is_better)
    assert (c["wins"], c["losses"], c["ties"]) == (wins, losses, ties)
    assert ties > 0 and wins > 0 and losses > 0


def test_mean_favours_a_but_interval_straddles_zero():
    b = np.full(6, 25.0)  # PSNR
    a = b + np.array([5.0, -4.0, 3.0, -3.0, 1.0, -1.5])  # mean +0.083 dB, wildly spread
    c = paired_comparison(a, b, higher_is_better=True)
    assert c["mean_diff"] == pytest.approx(0.5 / 6)
    assert c["ci_low"] < 0 < c["ci_high"]
    assert better_by(c, True, bound="mean")
    assert not better_by(c, True, bound="interval")


def test_consistent_improvement_passes_the_interval():
    _, b = lpips_like(8, 0)
    c = paired_comparison(b - 0.03, b, higher_is_better=False)  # every image 0.03 better
    assert c["ci_low"] == pytest.approx(-0.03) and c["ci_high"] == pytest.approx(-0.03)
    assert better_by(c, False, margin=0.01, bound="interval")
    assert not better_by(c, False, margin=0.04, bound="interval")


def test_signs_lower_and_higher_is_better():
    b = np.array([0.30, 0.40, 0.35, 0.50])
    a = b - np.array([0.02, 0.03, 0.025, 0.02])  # a lower everywhere
    lower = paired_comparison(a, b, higher_is_better=False)  # LPIPS: a is better
    higher = paired_comparison(a, b, higher_is_better=True)  # PSNR-like: a is worse
    assert lower["mean_diff"] == higher["mean_diff"] < 0
    assert (lower["wins"], lower["losses"]) == (4, 0)
    assert (higher["wins"], higher["losses"]) == (0, 4)
    assert better_by(lower, False) and better_by(lower, False, bound="interval")
    assert not better_by(higher, True) and not better_by(higher, True, bound="interval")
    with pytest.raises(ValueError, match="higher_is_better=False"):
        better_by(lower, True)


def test_margin_sign_convention():
    # LPIPS, a better by 0.02 on average: passes margin 0.01, fails margin 0.03
    c = {"mean_diff": -0.02, "ci_low": -0.03, "ci_high": -0.012}
    assert better_by(c, False, margin=0.01) and not better_by(c, False, margin=0.03)
    assert better_by(c, False, margin=0.01, bound="interval")  # ci_high -0.012 < -0.01
    assert not better_by(c, False, margin=0.015, bound="interval")
    # a negative margin tolerates a worse a (non-inferiority): PSNR 0.05 dB worse, margin -0.1
    c = {"mean_diff": -0.05, "ci_low": -0.08, "ci_high": -0.02}
    assert not better_by(c, True) and better_by(c, True, margin=-0.1)
    assert better_by(c, True, margin=-0.1, bound="interval")
    assert not better_by(c, True, margin=-0.07, bound="interval")
    # strict: equal to the margin is not better
    assert not better_by({"mean_diff": 0.0}, True) and not better_by({"mean_diff": 0.0}, False)
    with pytest.raises(ValueError, match="bound"):
        better_by(c, True, bound="median")


def test_deterministic_for_a_seed():
    a, b = lpips_like(12, 6)
    assert paired_comparison(a, b, False, seed=3) == paired_comparison(a, b, False, seed=3)
    assert paired_comparison(a, b, False, seed=3) != paired_comparison(a, b, False, seed=4)


def test_nan_pairs_dropped_and_counted():
    a, b = lpips_like(10, 7)
    a_nan, b_nan = a.copy(), b.copy()
    a_nan[2], b_nan[5], a_nan[7], b_nan[7] = math.nan, math.nan, math.nan, math.nan
    c = paired_comparison(a_nan, b_nan, False)
    keep = [i for i in range(10) if i not in (2, 5, 7)]
    ref = paired_comparison(a[keep], b[keep], False)
    assert c["dropped"] == 3 and c["n"] == 7
    assert {k: v for k, v in c.items() if k != "dropped"} == {
        k: v for k, v in ref.items() if k != "dropped"}


def test_infinite_values_raise():
    with pytest.raises(ValueError, match="2 infinite"):
        paired_comparison([30.0, math.inf, 25.0], [math.inf, 20.0, 24.0], True)


def test_fewer_than_two_pairs():
    one = paired_comparison([0.2, math.nan], [0.3, 0.1], False)
    assert one["n"] == 1 and one["dropped"] == 1 and one["mean_diff"] == pytest.approx(-0.1)
    assert math.isnan(one["ci_low"]) and math.isnan(one["ci_high"])
    assert better_by(one, False) and not better_by(one, False, bound="interval")
    none = paired_comparison([math.nan], [0.1], False)
    assert none["n"] == 0 and none["wins"] == 0
    assert all(math.isnan(none[k]) for k in ("mean_a", "mean_b", "mean_diff", "ci_low", "ci_high"))
    assert not better_by(none, False) and not better_by(none, False, bound="interval")


@pytest.mark.parametrize("kwargs,match", [
    ({"a": [1.0, 2.0], "b": [1.0]}, "one length"),
    ({"a": [[1.0]], "b": [[1.0]]}, "1-D"),
    ({"confidence": 1.0}, "confidence"),
    ({"n_boot": 0}, "n_boot"),
    ({"n_boot": 2.5}, "n_boot"),
])
def test_bad_arguments(kwargs, match):
    args = {"a": [1.0, 2.0], "b": [1.5, 2.5], "higher_is_better": True, **kwargs}
    with pytest.raises(ValueError, match=match):
        paired_comparison(**args)
