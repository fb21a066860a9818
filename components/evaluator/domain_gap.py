"""The paper's Table 1: the in- vs out-of-domain gap, per scale, of the blurry inputs and of the
guidance network's regressions, measured with FID and KID (metrics/fid.py).

The paper (sec. 3, Table 1) motivates the guidance by a domain gap that shrinks once the input
is reduced to its multiscale grayscale structure: FID/KID between GoPro and RealBlur-J blurry
inputs fall from the full-resolution RGB images to the downsampled grayscale ones, and fall
further on the guidance network's outputs R_k. Here, on the evaluator's images (the blurry
inputs of the evaluation splits, grouped by domain):

  scale full  the blurry RGB images as they are
  scale x2/x4/x8, input      phi_k(y): box-averaged BT.601 luma (core.example_format, the
                             ingest's pyramid definition), fed to Inception as grey images
  scale x2/x4/x8, guidance   R_k(H_k(phi_k(y))) of the model (no guidance noise, as at
                             inference), the regression of the sharp image's phi_k(x),
                             clipped to [-1, 1] and fed as grey images

Grey values v in [0, 1] (R_k: (r + 1) / 2) enter the Inception as 255 v without rounding;
every set is resized to 299 x 299 by metrics.inception.to_inception_input (a 32 x 32 x8 level
is enlarged, a 720 x 1280 frame shrunk). The regressions come from the SavedModel's
guide_features function (trainer/export.py: [H_k(phi_k)] + [R_k(H_k(phi_k))] in
guidance_scales order); a SavedModel without it, or a model without guidance, gets the input
rows and a note instead of the guidance rows.

At the evaluator's few images per domain FID is strongly biased upwards (comparable only
between rows of the same table, which share n) and KID is noisy; the paper used whole test sets.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from components.evaluator.gate import format_value
from core import example_format as ef
from metrics.fid import fid_kid

NOTE = ("FID/KID between the in-domain and the out-of-domain blurry inputs (n_in vs n_out "
        "images): full-resolution RGB, the grayscale pyramid phi_k(y), and the model's guidance "
        "regressions R_k at each scale. FID is biased upwards at small n (compare rows of one "
        "table only: they share n); KID is unbiased but noisy at small n.")


def gray_levels(images: Sequence[np.ndarray], scales: Sequence[int]) -> Dict[int, List[np.ndarray]]:
    """{k: [phi_k in [0, 1], float64 (H/k, W/k)]} of uint8 RGB images (the ingest's pyramid)."""
    out: Dict[int, List[np.ndarray]] = {k: [] for k in scales}
    for img in images:
        y = ef.luma(img)
        for k in scales:
            out[k].append(ef.box_downsample(y, k))
    return out


def model_scales(loaded) -> Optional[List[int]]:
    """The guidance scales of an exported SavedModel, [] without a guidance network, None when
    the SavedModel predates guide_features (cannot give R_k)."""
    if not hasattr(loaded, "guide_features") or not hasattr(loaded, "guidance_scales"):
        return None
    return [int(k) for k in loaded.guidance_scales.numpy() if k > 0]


def guidance_regressions(loaded, levels: Dict[int, List[np.ndarray]],
                         scales: Sequence[int]) -> Dict[int, List[np.ndarray]]:
    """{k: [R_k(H_k(phi_k)) in [-1, 1]... ]} per image, through the SavedModel's guide_features
    with phi_k = 2 v - 1 (the model's [-1, 1] scale), one image at a time (sizes may differ)."""
    import tensorflow as tf

    n = len(levels[scales[0]])
    out: Dict[int, List[np.ndarray]] = {k: [] for k in scales}
    for i in range(n):
        phis = [tf.constant((levels[k][i] * 2.0 - 1.0)[None, :, :, None], tf.float32)
                for k in scales]
        regs = loaded.guide_features(phis)[len(scales):]
        for k, r in zip(scales, regs):
            out[k].append(np.asarray(r)[0, :, :, 0].astype(np.float64))
    return out


def _gap(feats_in: np.ndarray, feats_out: np.ndarray) -> Dict[str, float]:
    m = fid_kid(feats_in, feats_out)
    return {"fid": m["fid"], "kid": m["kid"]}


def _grey_features(inception: Callable, values01: List[np.ndarray]) -> Optional[np.ndarray]:
    """Inception features of grey images with values in [0, 1] (clipped), or None if any is not
    finite (a diverged model's regression)."""
    if not all(np.all(np.isfinite(v)) for v in values01):
        return None
    return inception([np.clip(v, 0.0, 1.0) * 255.0 for v in values01])


def domain_gap(loaded, items_by_domain: Dict[str, List[dict]], inception: Callable,
               full_features: Optional[Dict[str, np.ndarray]] = None) -> dict:
    """Table 1 for the blurry images of items_by_domain {"in": [...], "out": [...]} (each item
    with a uint8 "blurry"). inception: images (0..255) -> [n, 2048] features.
    full_features: the blurry images' features per domain if already computed."""
    if not items_by_domain.get("in") or not items_by_domain.get("out"):
        return {"skipped": "needs evaluation images of both domains (in and out), has "
                           + (", ".join(sorted(d for d, v in items_by_domain.items() if v)) or "none")}
    blurry = {d: [it["blurry"] for it in items_by_domain[d]] for d in ("in", "out")}
    scales = model_scales(loaded)
    if scales is None:
        guidance = {"available": False, "detail": "the SavedModel has no guide_features function "
                    "(exported before it existed): export the model again for the R_k rows"}
        level_scales = list(ef.PYRAMID_FACTORS)
    elif not scales:
        guidance = {"available": False, "detail": "the model has no guidance network "
                    "(guidance='none'): no R_k"}
        level_scales = list(ef.PYRAMID_FACTORS)
    else:
        guidance = {"available": True, "detail": "R_k(H_k(phi_k(y))) of the SavedModel's "
                    "guide_features, without guidance noise"}
        level_scales = sorted(set(ef.PYRAMID_FACTORS) | set(scales))
    full = full_features or {d: inception(blurry[d]) for d in ("in", "out")}
    rows = [{"scale": "full", "input": _gap(full["in"], full["out"]), "guidance": None}]
    levels = {d: gray_levels(blurry[d], level_scales) for d in ("in", "out")}
    regs = ({d: guidance_regressions(loaded, levels[d], scales) for d in ("in", "out")}
            if guidance["available"] else None)
    for k in level_scales:
        row = {"scale": f"x{k}",
               "input": _gap(*(_grey_features(inception, levels[d][k]) for d in ("in", "out"))),
               "guidance": None}
        if regs is not None and k in scales:
            f = [_grey_features(inception, [(r + 1.0) / 2.0 for r in regs[d][k]])
                 for d in ("in", "out")]
            if f[0] is None or f[1] is None:
                row["guidance"] = {"fid": math.nan, "kid": math.nan, "non_finite": True}
            else:
                row["guidance"] = _gap(*f)
                row["guidance_smaller"] = {m: bool(row["guidance"][m] < row["input"][m])
                                           for m in ("fid", "kid")}
        rows.append(row)
    compared = [r for r in rows if "guidance_smaller" in r]
    verdict = None
    if compared:
        counts = {m: sum(r["guidance_smaller"][m] for r in compared) for m in ("fid", "kid")}
        verdict = (f"the guidance output's gap is smaller than its input's at {counts['fid']} of "
                   f"{len(compared)} scales by FID and {counts['kid']} of {len(compared)} by KID")
    return {"n_in": len(blurry["in"]), "n_out": len(blurry["out"]), "rows": rows,
            "guidance": guidance, "verdict": verdict, "note": NOTE}


def format_domain_gap(gap: dict, indent: str = "  ") -> List[str]:
    """The table as text lines (the evaluator's and the summary's)."""
    if "skipped" in gap:
        return [f"{indent}domain gap: skipped ({gap['skipped']})"]
    lines = [f"{indent}domain gap (paper Table 1): FID / KID between in- and out-of-domain blurry "
             f"inputs, {gap['n_in']} vs {gap['n_out']} images (FID biased at this n)",
             f"{indent}  {'scale':<6} {'input FID':>10} {'input KID':>10}   "
             f"{'R_k FID':>10} {'R_k KID':>10}"]
    for r in gap["rows"]:
        g = r.get("guidance") or {}
        gtext = (f"{format_value(g.get('fid'), '.2f'):>10} {format_value(g.get('kid'), '.4f'):>10}"
                 if r.get("guidance") else f"{'':>10} {'':>10}")
        smaller = r.get("guidance_smaller")
        mark = "" if not smaller else ("  smaller" if all(smaller.values()) else
                                       "  larger" if not any(smaller.values()) else "  mixed")
        lines.append(f"{indent}  {r['scale']:<6} {format_value(r['input']['fid'], '.2f'):>10} "
                     f"{format_value(r['input']['kid'], '.4f'):>10}   {gtext}{mark}")
    if not gap["guidance"]["available"]:
        lines.append(f"{indent}  R_k: {gap['guidance']['detail']}")
    if gap.get("verdict"):
        lines.append(f"{indent}  {gap['verdict']}")
    return lines
