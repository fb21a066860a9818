"""FID and KID against independent computations: scipy.linalg.sqrtm on full-rank covariances,
a symmetric-square-root numpy reference on rank-deficient ones, a pair-by-pair MMD loop."""
import numpy as np
import pytest
from scipy import linalg

from metrics import fid as fid_mod
from metrics.fid import fid, fid_kid, kid


def _sets(n1, n2, d, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n1, d)) @ rng.normal(size=(d, d)) * 0.3
    b = rng.normal(size=(n2, d)) @ rng.normal(size=(d, d)) * 0.3 + rng.normal(size=d) * 0.5
    return np.abs(a), np.abs(b)  # non-negative, like ReLU-pooled Inception features


def fid_sqrtm(f1, f2):
    """The textbook formula (pytorch-fid / TTUR): sqrtm of the product of np.cov matrices."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2)
    assert np.abs(covmean.imag).max() < 1e-8 if np.iscomplexobj(covmean) else True
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2)
                 - 2 * np.trace(covmean.real))


def trace_sqrt_symmetric(f1, f2):
    """tr sqrt(S1 S2) = tr sqrt(S1^1/2 S2 S1^1/2): a symmetric PSD matrix, whose eigenvalues
    eigh gives stably even when S1 and S2 are singular."""
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    w, v = np.linalg.eigh(s1)
    r1 = v @ np.diag(np.sqrt(np.clip(w, 0, None))) @ v.T
    return float(np.sqrt(np.clip(np.linalg.eigvalsh(r1 @ s2 @ r1), 0, None)).sum())


def fid_symmetric(f1, f2):
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2)
                 - 2 * trace_sqrt_symmetric(f1, f2))


@pytest.mark.parametrize("n1,n2", [(400, 300), (40, 30)])
def test_fid_equals_scipy_sqrtm_when_full_rank(n1, n2):
    # d = 16 < n: full-rank covariances, where sqrtm is reliable; (400, 300) takes the d x d
    # branch, (40, 30) with d = 32 below the n x n one
    d = 16 if n1 == 400 else 24
    a, b = _sets(n1, n2, d)
    assert fid(a, b) == pytest.approx(fid_sqrtm(a, b), rel=1e-9)
    assert fid(a, b) == pytest.approx(fid_symmetric(a, b), rel=1e-9)


def test_fid_rank_deficient_equals_numpy_reference():
    # 512-d features of 12 and 9 images (the evaluator's regime: n << d): covariances of rank
    # 11 and 8. scipy's sqrtm(S1 @ S2) is useless here (metrics/README.md: off by orders of
    # magnitude); the symmetric reference clips ~500 round-off eigenvalues, so it carries a
    # ~1e-7 relative error in the trace term, which bounds the tolerance.
    a, b = _sets(12, 9, 512, seed=1)
    assert fid(a, b) == pytest.approx(fid_symmetric(a, b), rel=1e-7)
    assert fid_mod.trace_sqrt_product(a, b) == pytest.approx(trace_sqrt_symmetric(a, b), rel=1e-6)
    # the same set twice is exactly 0 up to round-off (tr S + tr S - 2 ||Xc Xc^T|| / (n - 1))
    assert fid(a, a) < 1e-9 * np.trace(np.cov(a, rowvar=False))


def test_fid_trace_term_is_the_nuclear_norm():
    a, b = _sets(7, 5, 64, seed=2)
    xa, xb = a - a.mean(0), b - b.mean(0)
    m = xa @ xb.T / np.sqrt(6 * 4)
    assert fid_mod.trace_sqrt_product(a, b) == pytest.approx(
        np.linalg.norm(m, ord="nuc"), rel=1e-12)


def mmd_loop(x, y):
    """Unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, pair by pair."""
    d = x.shape[1]

    def k(p, q):
        return (float(np.dot(p, q)) / d + 1.0) ** 3

    n, m = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return kxx + kyy - 2 * kxy


def test_kid_is_the_full_set_unbiased_mmd_below_one_subset():
    a, b = _sets(9, 7, 2048, seed=3)
    a, b = a * 0.05, b * 0.05  # Inception-like scale: |f|^2 / d of order 0.1
    assert kid(a, b) == pytest.approx(mmd_loop(a, b), rel=1e-10)
    # with equal sizes clean-fid's subsets of min(n1, n2) images are permutations of the sets,
    # and the estimate does not depend on the order: its value is this one
    c = _sets(9, 9, 2048, seed=4)[1] * 0.05
    rng = np.random.default_rng(0)
    assert kid(a[rng.permutation(9)], c[rng.permutation(9)]) == pytest.approx(
        mmd_loop(a, c), rel=1e-10)
    assert kid(a, a) == pytest.approx(mmd_loop(a, a), rel=1e-10, abs=1e-15)


def test_kid_averages_subsets_above_the_subset_size():
    a, b = _sets(30, 25, 64, seed=5)
    a, b = a * 0.2, b * 0.2
    got = kid(a, b, max_subset_size=10, num_subsets=4, seed=7)
    rng = np.random.default_rng(7)  # the documented draw order: first set, second set
    want = []
    for _ in range(4):
        i = rng.choice(30, 10, replace=False)
        j = rng.choice(25, 10, replace=False)
        want.append(mmd_loop(a[i], b[j]))
    assert got == pytest.approx(np.mean(want), rel=1e-10)
    assert got != pytest.approx(kid(a, b), rel=1e-6)  # not the full-set value


def test_small_sets_and_bad_inputs():
    a, b = _sets(3, 2, 8)
    assert fid_kid(a[:1], b)["n_a"] == 1 and np.isnan(fid_kid(a[:1], b)["fid"])
    assert np.isnan(fid_kid(a, b[:0])["kid"])
    out = fid_kid(a, b)
    assert sorted(out) == ["fid", "kid", "n_a", "n_b"] and (out["n_a"], out["n_b"]) == (3, 2)
    with pytest.raises(ValueError, match="at least 2 images"):
        fid(a[:1], b)
    with pytest.raises(ValueError, match="dimensions differ"):
        kid(a, b[:, :4])
    with pytest.raises(ValueError, match="not finite"):
        fid(np.full((2, 8), np.nan), b)
