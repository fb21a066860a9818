"""FID and KID of two sets of Inception features (metrics/inception.py), in float64 numpy.

FID (Heusel et al. 2017): the Fréchet distance between the Gaussians fitted to the features,
    FID = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2),
with the unbiased covariances S = Xc^T Xc / (n - 1) (Xc: the centred n x d feature matrix).
The usual code takes scipy.linalg.sqrtm(S1 @ S2), which is unreliable when the covariances
are rank-deficient (fewer than d + 1 = 2049 images: rank <= n - 1): the product is then a
singular non-symmetric matrix, sqrtm returns complex parts and errors that do not vanish, and
implementations patch it with an epsilon on the diagonal. Here the trace term is computed
without it: the non-zero eigenvalues of S1 S2 are the squared singular values of
M = Xc1 Xc2^T / sqrt((n1 - 1)(n2 - 1)) (an n1 x n2 matrix), so
    tr sqrt(S1 S2) = ||M||_*   (the nuclear norm, a sum of singular values; an SVD is stable).
When both sets are larger than d, the same singular values come from the d x d product
S1^(1/2) S2^(1/2) of the symmetric square roots (eigh), which is cheaper than an n1 x n2 SVD.

KID (Binkowski et al. 2018): the unbiased estimate of the squared MMD with the cubic
polynomial kernel k(x, y) = (x.y / d + 1)^3,
    MMD^2_u = sum_{i!=j} k(x_i, x_j) / (n1 (n1 - 1)) + sum_{i!=j} k(y_i, y_j) / (n2 (n2 - 1))
              - 2 sum_{i,j} k(x_i, y_j) / (n1 n2).
clean-fid's convention for large sets: the mean over `num_subsets` (100) pairs of random
subsets of m = min(n1, n2, max_subset_size = 1000) images drawn without replacement. When both
sets fit in one subset (n1, n2 <= max_subset_size) KID here is exactly the full-set estimate
above (clean-fid would draw subsets of min(n1, n2) images of the larger set; with equal sizes
its draws are permutations and give this same value). The subsets are drawn from
numpy.random.default_rng(seed): the first set's indices, then the second's, per subset.

Small sets: FID is biased (its expectation depends on n, falling roughly as 1/n towards the
population value, Chong & Forsyth 2020), so FIDs are comparable only at equal image counts,
and at the evaluator's handful of images per domain they say little; KID is unbiased at any
n >= 2 but has a large variance there. Both need n >= 2 per set (a covariance, a pair).
"""
from __future__ import annotations

from typing import Dict

import numpy as np

MAX_SUBSET_SIZE = 1000
NUM_SUBSETS = 100


def _as_features(f, name: str) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"{name}: expected an [n, d] feature matrix, got shape {f.shape}")
    if not np.all(np.isfinite(f)):
        raise ValueError(f"{name}: features are not finite")
    return f


def _check_pair(f1, f2, min_n: int, what: str):
    f1, f2 = _as_features(f1, "first set"), _as_features(f2, "second set")
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"{what}: feature dimensions differ ({f1.shape[1]} vs {f2.shape[1]})")
    for f, name in ((f1, "first"), (f2, "second")):
        if f.shape[0] < min_n:
            raise ValueError(f"{what} needs at least {min_n} images per set; the {name} set has "
                             f"{f.shape[0]}")
    return f1, f2


def _sym_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def _trace_sqrt(x1: np.ndarray, x2: np.ndarray) -> float:
    """tr sqrt(S1 S2) from the centred feature matrices, as a nuclear norm (module doc)."""
    n1, n2, d = x1.shape[0], x2.shape[0], x1.shape[1]
    if min(n1, n2) <= d:
        m = (x1 @ x2.T) / np.sqrt((n1 - 1.0) * (n2 - 1.0))
    else:
        m = _sym_sqrt(x1.T @ x1 / (n1 - 1.0)) @ _sym_sqrt(x2.T @ x2 / (n2 - 1.0))
    return float(np.linalg.svd(m, compute_uv=False).sum())


def trace_sqrt_product(f1, f2) -> float:
    """tr sqrt(S1 S2) of two feature sets' unbiased covariances (n >= 2 each)."""
    f1, f2 = _check_pair(f1, f2, 2, "FID")
    return _trace_sqrt(f1 - f1.mean(axis=0), f2 - f2.mean(axis=0))


def fid(f1, f2) -> float:
    """Fréchet distance between the Gaussians of two feature sets [n1, d], [n2, d] (n >= 2)."""
    f1, f2 = _check_pair(f1, f2, 2, "FID")
    mu = f1.mean(axis=0) - f2.mean(axis=0)
    x1, x2 = f1 - f1.mean(axis=0), f2 - f2.mean(axis=0)
    tr1 = float(np.sum(x1 * x1)) / (f1.shape[0] - 1)
    tr2 = float(np.sum(x2 * x2)) / (f2.shape[0] - 1)
    value = float(mu @ mu) + tr1 + tr2 - 2.0 * _trace_sqrt(x1, x2)
    return max(value, 0.0)  # >= 0 in exact arithmetic; round-off can leave -1e-12


def _polynomial_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def mmd2_unbiased(f1: np.ndarray, f2: np.ndarray) -> float:
    """The unbiased MMD^2 estimate of two whole sets with the cubic polynomial kernel."""
    n1, n2 = f1.shape[0], f2.shape[0]
    kxx, kyy, kxy = _polynomial_kernel(f1, f1), _polynomial_kernel(f2, f2), _polynomial_kernel(f1, f2)
    return float((kxx.sum() - np.trace(kxx)) / (n1 * (n1 - 1.0))
                 + (kyy.sum() - np.trace(kyy)) / (n2 * (n2 - 1.0))
                 - 2.0 * kxy.sum() / (n1 * n2))


def kid(f1, f2, max_subset_size: int = MAX_SUBSET_SIZE, num_subsets: int = NUM_SUBSETS,
        seed: int = 0) -> float:
    """Kernel Inception distance (module doc): exact full-set MMD^2_u when both sets have at
    most max_subset_size images, else clean-fid's mean over random subsets."""
    f1, f2 = _check_pair(f1, f2, 2, "KID")
    if max_subset_size < 2 or num_subsets < 1:
        raise ValueError("KID needs max_subset_size >= 2 and num_subsets >= 1")
    n1, n2 = f1.shape[0], f2.shape[0]
    if max(n1, n2) <= max_subset_size:
        return mmd2_unbiased(f1, f2)
    m = min(n1, n2, max_subset_size)
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(num_subsets):
        i1 = rng.choice(n1, m, replace=False)
        i2 = rng.choice(n2, m, replace=False)
        total += mmd2_unbiased(f1[i1], f2[i2])
    return total / num_subsets


def fid_kid(f1, f2) -> Dict[str, float]:
    """{"fid", "kid", "n_a", "n_b"} of two feature sets; fid and kid are NaN below 2 images
    in a set (undefined there), never an exception for that."""
    n1, n2 = int(np.shape(f1)[0]), int(np.shape(f2)[0])
    if min(n1, n2) < 2:
        return {"fid": float("nan"), "kid": float("nan"), "n_a": n1, "n_b": n2}
    return {"fid": fid(f1, f2), "kid": kid(f1, f2), "n_a": n1, "n_b": n2}
