"""The in-house Fréchet distance against pytorch-fid's and an independent (scipy sqrtm) formula."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import linalg

from cutdist.eval.frechet import frechet_distance, trace_sqrt_product


def _gaussians(n1: int, n2: int, dim: int, seed: int = 0):
    """Statistics of activation-like samples (non-negative, correlated) of two different distributions."""
    rng = np.random.default_rng(seed)
    mix = np.eye(dim) + 0.3 * rng.normal(size=(dim, dim)) / np.sqrt(dim)
    a = np.abs(rng.normal(0.4, 0.3, (n1, dim))) @ mix
    b = np.abs(rng.normal(0.5, 0.35, (n2, dim))) @ mix.T
    return a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)


def _sqrtm_route(mu1, s1, mu2, s2) -> float:
    """The textbook formula with scipy's general matrix square root of the product (no disp argument)."""
    covmean = linalg.sqrtm(s1 @ s2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


@pytest.mark.parametrize("n1,n2,dim", [(400, 300, 48), (20, 30, 64)], ids=["full-rank", "singular"])
def test_matches_pytorch_fid_and_sqrtm(n1, n2, dim):
    from pytorch_fid.fid_score import calculate_frechet_distance

    stats = _gaussians(n1, n2, dim)
    ours = frechet_distance(*stats)
    theirs = float(calculate_frechet_distance(*stats))
    independent = _sqrtm_route(*stats)
    assert ours > 1.0
    assert ours == pytest.approx(theirs, rel=1e-6)
    assert ours == pytest.approx(independent, rel=1e-6)


def test_trace_sqrt_product_known_values():
    # commuting diagonal matrices: tr sqrt(S1 S2) = sum sqrt(d1 d2); a zero eigenvalue stays exact
    d1, d2 = np.array([4.0, 9.0, 0.0, 1.0]), np.array([1.0, 4.0, 5.0, 0.25])
    assert trace_sqrt_product(np.diag(d1), np.diag(d2)) == pytest.approx(2 + 6 + 0 + 0.5, abs=1e-12)
    # a rotation of both leaves the trace unchanged
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(4, 4)))
    assert trace_sqrt_product(q @ np.diag(d1) @ q.T, q @ np.diag(d2) @ q.T) == pytest.approx(8.5, abs=1e-9)


def test_same_distribution_is_zero_and_mean_shift_is_its_square():
    mu, sigma, _, _ = _gaussians(30, 30, 32, seed=2)   # singular: 30 samples in 32 dimensions
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-8
    shift = np.full_like(mu, 0.5)
    assert frechet_distance(mu, sigma, mu + shift, sigma) == pytest.approx(shift @ shift, abs=1e-8)


def test_bad_inputs_are_clear_errors():
    mu, sigma = np.zeros(3), np.eye(3)
    with pytest.raises(ValueError, match="mean vectors differ"):
        frechet_distance(mu, sigma, np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="do not fit"):
        frechet_distance(mu, sigma, mu, np.eye(4))
    with pytest.raises(ValueError, match="sigma2 has non-finite"):
        frechet_distance(mu, sigma, mu, np.full((3, 3), np.nan))
