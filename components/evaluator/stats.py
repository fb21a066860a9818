"""Paired comparison of two methods on the same images, with a bootstrap interval (issue 37,
item 4).

With 8 images a split, "the model's mean LPIPS is 0.005 under the baseline's" may be one lucky
image. The images are shared, so the comparison is paired: per image d_i = a_i - b_i
(a = candidate, b = reference), and the uncertainty of mean(d) comes from resampling IMAGES
with replacement (percentile bootstrap, numpy Generator seeded: deterministic for a seed).

    c = paired_comparison(lpips_model, lpips_input, higher_is_better=False)
    better_by(c, higher_is_better=False, margin=0.01, bound="interval")

Choices:
  NaN   a pair where either value is NaN (NIQE of a too small image) is dropped and counted in
        "dropped"; every other number is over the remaining pairs. +-inf (PSNR of an exact
        copy) raises ValueError: a mean difference with it is meaningless; cap such values
        (e.g. PSNR at 100 dB) before comparing.
  n < 2 (after dropping) the interval is NaN, NaN: one image says nothing about the spread, and
        NaN never passes better_by(bound="interval"). n = 0: the means are NaN too.
"""
from __future__ import annotations

import math
from typing import Dict, Sequence, Union

import numpy as np

Number = Union[int, float]


def paired_comparison(a: Sequence[float], b: Sequence[float], higher_is_better: bool,
                      n_boot: int = 2000, confidence: float = 0.95,
                      seed: int = 0) -> Dict[str, Number]:
    """a (candidate) against b (reference), per-image values on the same images, same order.

    Returns n (pairs used), dropped (pairs with a NaN), mean_a, mean_b, mean_diff (a - b),
    ci_low/ci_high (the percentile bootstrap interval of mean(a - b) at `confidence`, n_boot
    resamples of the images), wins/losses/ties (images where a is better/worse/equal, by
    higher_is_better), confidence, n_boot, higher_is_better.
    """
    a_arr, b_arr = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a_arr.ndim != 1 or a_arr.shape != b_arr.shape:
        raise ValueError(f"a and b must be 1-D of one length, got {a_arr.shape} and {b_arr.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if int(n_boot) != n_boot or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot}")
    n_inf = int(np.isinf(a_arr).sum() + np.isinf(b_arr).sum())
    if n_inf:
        raise ValueError(f"{n_inf} infinite value(s) in a or b: cap them before comparing")
    keep = ~(np.isnan(a_arr) | np.isnan(b_arr))
    a_arr, b_arr = a_arr[keep], b_arr[keep]
    d = a_arr - b_arr
    n = d.size
    better = d > 0 if higher_is_better else d < 0
    worse = d < 0 if higher_is_better else d > 0
    ci_low = ci_high = math.nan
    if n >= 2:
        rng = np.random.default_rng(seed)
        means = d[rng.integers(0, n, size=(int(n_boot), n))].mean(axis=1)
        tail = 100 * (1 - confidence) / 2
        ci_low, ci_high = (float(x) for x in np.percentile(means, [tail, 100 - tail]))
    nan = math.nan
    return {"n": n, "dropped": int((~keep).sum()),
            "mean_a": float(a_arr.mean()) if n else nan,
            "mean_b": float(b_arr.mean()) if n else nan,
            "mean_diff": float(d.mean()) if n else nan,
            "ci_low": ci_low, "ci_high": ci_high,
            "wins": int(better.sum()), "losses": int(worse.sum()), "ties": int((d == 0).sum()),
            "confidence": float(confidence), "n_boot": int(n_boot),
            "higher_is_better": bool(higher_is_better)}


def better_by(comparison: Dict[str, Number], higher_is_better: bool, margin: float = 0.0,
              bound: str = "mean") -> bool:
    """Is a better than b by more than `margin` (in the metric's units)?

    The margin is an improvement: positive demands that much better, negative tolerates that
    much worse (non-inferiority). Strict inequalities; NaN gives False.
      higher is better (PSNR):  mean: mean_diff > margin     interval: ci_low > margin
      lower is better (LPIPS):  mean: mean_diff < -margin    interval: ci_high < -margin
    E.g. LPIPS, margin 0.01, "interval": the whole interval of mean(a - b) under -0.01.
    """
    if bound not in ("mean", "interval"):
        raise ValueError(f"bound must be 'mean' or 'interval', got {bound!r}")
    stored = comparison.get("higher_is_better")
    if stored is not None and bool(stored) != bool(higher_is_better):
        raise ValueError(f"the comparison was made with higher_is_better={stored}")
    if higher_is_better:
        value = comparison["mean_diff"] if bound == "mean" else comparison["ci_low"]
        return bool(value > margin)
    value = comparison["mean_diff"] if bound == "mean" else comparison["ci_high"]
    return bool(value < -margin)
