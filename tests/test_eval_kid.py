"""KID: against a direct NumPy implementation, unbiased on two samples of one distribution, the analytic value
for shifted Gaussians, and all-gathered features across two gloo ranks equal one process's."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch.multiprocessing as mp

from cutdist.eval import kid as kid_mod
from cutdist.eval.kid import kid, mmd2_unbiased


def direct_kid(x: np.ndarray, y: np.ndarray, subsets: int, subset_size: int, seed: int) -> tuple[float, float]:
    """The textbook estimator written out: per subset, k = (x.y/d + 1)^3 element by element in float64, the
    off-diagonal means of K_XX and K_YY minus twice the mean of K_XY; mean and std (ddof 0) over subsets.
    The draws follow kid()'s documented order (per subset: x's indices, then y's, without replacement)."""
    rng = np.random.default_rng(seed)
    d = x.shape[1]
    m = min(subset_size, len(x), len(y))
    values = []
    for _ in range(subsets):
        xs = x[rng.choice(len(x), m, replace=False)].astype(np.float64)
        ys = y[rng.choice(len(y), m, replace=False)].astype(np.float64)
        kxx = np.array([[(np.dot(a, b) / d + 1) ** 3 for b in xs] for a in xs])
        kyy = np.array([[(np.dot(a, b) / d + 1) ** 3 for b in ys] for a in ys])
        kxy = np.array([[(np.dot(a, b) / d + 1) ** 3 for b in ys] for a in xs])
        off = ~np.eye(m, dtype=bool)
        values.append(kxx[off].mean() + kyy[off].mean() - 2 * kxy.mean())
    return float(np.mean(values)), float(np.std(values))


def shifted_gaussian_mmd2(d: int, sigma: float, shift: np.ndarray) -> float:
    """MMD² of N(0, σ²I) vs N(δ, σ²I) under (x.y/d + 1)^3 = sum_k C(3,k) d^-k <x^⊗k, y^⊗k>:
    sum_k C(3,k) d^-k ||E x^⊗k - E y^⊗k||², with the Gaussian moment tensors up to order 3."""
    s = float(shift @ shift)
    third = s ** 3 + 6 * sigma ** 2 * s ** 2 + (3 * d + 6) * sigma ** 4 * s
    return 3 * s / d + 3 * s ** 2 / d ** 2 + third / d ** 3


def test_equals_a_direct_numpy_implementation(monkeypatch):
    rng = np.random.default_rng(1)
    x = rng.normal(0.2, 1.0, (90, 12)).astype(np.float32)
    y = rng.normal(0.0, 1.3, (70, 12)).astype(np.float32)
    want_mean, want_std = direct_kid(x, y, subsets=7, subset_size=40, seed=3)
    got = kid(x, y, subsets=7, subset_size=40, seed=3)
    assert got.mean == pytest.approx(want_mean, rel=1e-10) and got.std == pytest.approx(want_std, rel=1e-9)
    assert got.subset_size == 40 and (got.n_x, got.n_y) == (90, 70) and got.std > 0
    monkeypatch.setattr(kid_mod, "GRAM_LIMIT", 0)   # the per-subset path (sets too large for the Gram matrices)
    again = kid(x, y, subsets=7, subset_size=40, seed=3)
    assert again.mean == pytest.approx(want_mean, rel=1e-10) and again.std == pytest.approx(want_std, rel=1e-9)


def test_subset_size_is_capped_by_the_smaller_set_and_whole_sets_have_no_spread():
    rng = np.random.default_rng(2)
    x, y = rng.normal(0, 1, (30, 8)), rng.normal(0.5, 1, (25, 8))
    both_whole = kid(x[:25], y)   # defaults: 100 subsets of min(1000, 25, 25) = the whole sets
    assert both_whole.subset_size == 25 and both_whole.std == 0.0
    d = 8
    k = lambda a, b: (a @ b.T / d + 1) ** 3   # noqa: E731
    assert both_whole.mean == pytest.approx(mmd2_unbiased(k(x[:25], x[:25]), k(x[:25], y), k(y, y)), rel=1e-12)
    capped = kid(x, y)
    assert capped.subset_size == 25 and capped.std > 0   # x's 30 give different subsets of 25
    assert capped.mean == pytest.approx(direct_kid(x, y, 100, 1000, 0)[0], rel=1e-10)


def test_two_samples_of_one_distribution_give_zero_within_the_expected_spread():
    """Unbiased: over many independent pairs of samples from one distribution the KIDs average to 0 (the
    biased V-statistic, diagonals kept, would be clearly positive); the std over subsets of one large pool
    matches the spread of independent draws of that subset size."""
    rng = np.random.default_rng(4)
    d, m, reps = 32, 40, 300
    values, biased = [], []
    for _ in range(reps):
        x, y = rng.normal(0, 1, (m, d)), rng.normal(0, 1, (m, d))
        values.append(kid(x, y).mean)
        kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        biased.append(kxx.mean() + kyy.mean() - 2 * kxy.mean())
    spread = float(np.std(values, ddof=1))
    standard_error = spread / math.sqrt(reps)
    assert abs(np.mean(values)) < 4 * standard_error
    assert np.mean(biased) > 20 * standard_error   # the test can tell a biased estimator

    pool_x, pool_y = rng.normal(0, 1, (4000, d)), rng.normal(0, 1, (4000, d))
    pooled = kid(pool_x, pool_y, subsets=100, subset_size=m, seed=9)
    assert abs(pooled.mean) < 4 * spread / math.sqrt(100)
    assert 0.7 * spread < pooled.std < 1.4 * spread   # 100 draws from the same sampling distribution


def test_shifted_gaussians_give_the_analytic_value():
    """The cubic kernel is heavy-tailed (one KID of 1,000 vs 1,000 points scatters by ~6% here), so the mean of
    independent draws is held to the analytic value within its own standard error, and within 10%."""
    rng = np.random.default_rng(6)
    d, sigma, reps = 32, 1.0, 8
    shift = np.zeros(d)
    shift[:4] = [0.8, -0.6, 0.5, 0.4]
    want = shifted_gaussian_mmd2(d, sigma, shift)
    draws = [kid(rng.normal(0, sigma, (1000, d)), rng.normal(0, sigma, (1000, d)) + shift, subset_size=500)
             for _ in range(reps)]
    means = np.array([r.mean for r in draws])
    assert all(r.subset_size == 500 and r.std > 0 for r in draws)
    assert abs(means.mean() - want) < 4 * means.std(ddof=1) / math.sqrt(reps)
    assert means.mean() == pytest.approx(want, rel=0.1)
    same = kid(rng.normal(0, sigma, (1000, d)), rng.normal(0, sigma, (1000, d)), subset_size=500)
    assert abs(same.mean) < 0.1 * want


def test_bad_input_is_one_clear_error():
    good = np.zeros((5, 4))
    with pytest.raises(ValueError, match="dimensions differ"):
        kid(good, np.zeros((5, 3)))
    with pytest.raises(ValueError, match=r"\[n >= 2, d\]"):
        kid(good[:1], good)
    with pytest.raises(ValueError, match="non-finite"):
        kid(good, np.full((5, 4), np.nan))


# ------------------------------------------------------------------------------------------ two ranks

def _features() -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(11)
    return rng.normal(0, 1, (23, 16)).astype(np.float32), [f"{i:06d}" for i in range(23)]


def _gather_worker(rank: int, world: int, tmp: str) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/init", rank=rank, world_size=world)
    feats, keys = _features()
    mine = [i for i in range(len(keys)) if i % 3 == rank % 3] if rank == 0 else \
        [i for i in range(len(keys)) if i % 3 != 0]   # an uneven, interleaved share
    gathered = kid_mod.gather_features(feats[mine], [keys[i] for i in mine])
    np.save(f"{tmp}/gathered-{rank}.npy", gathered)
    dist.destroy_process_group()


def test_gather_features_across_two_gloo_ranks_restores_the_whole_set_in_key_order(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    mp.spawn(_gather_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    feats, _ = _features()
    for rank in (0, 1):
        np.testing.assert_array_equal(np.load(tmp_path / f"gathered-{rank}.npy"), feats)
    with pytest.raises(ValueError, match="keys for"):
        kid_mod.gather_features(feats, ["a"])
