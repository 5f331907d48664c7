"""ActivationStats against np.cov (one process), pytorch-fid's npz format."""
from __future__ import annotations

import numpy as np
import pytest

from cutdist.eval.stats import ActivationStats, load_stats, save_stats


def _acts(n: int, dim: int, offset: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return offset + np.abs(rng.normal(0.3, 0.25, (n, dim))) * rng.uniform(0.5, 2.0, dim)


@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_batched_stats_equal_np_cov(offset):
    acts = _acts(203, 64, offset)
    stats = ActivationStats(64)
    for start, stop in [(0, 1), (1, 50), (50, 50), (50, 131), (131, 203)]:   # uneven, one empty
        stats.update(acts[start:stop])
    mu, sigma = stats.mu_sigma()
    assert stats.n == 203
    np.testing.assert_allclose(mu, acts.mean(0), rtol=0, atol=1e-9 * max(1.0, offset))
    np.testing.assert_allclose(sigma, np.cov(acts, rowvar=False), rtol=0, atol=1e-9)


def test_centred_form_keeps_precision_where_the_naive_sum_loses_it():
    # mean 1e4, spread ~0.3: sum(x x^T) - n mu mu^T cancels ~8 of float64's 16 digits; the centred form doesn't
    acts = _acts(500, 16, 1e4, seed=1)
    reference = np.cov(acts - 1e4, rowvar=False)   # the shift is exact: covariance is shift-invariant
    stats = ActivationStats(16)
    for chunk in np.array_split(acts, 7):
        stats.update(chunk)
    naive = (acts.T @ acts - len(acts) * np.outer(acts.mean(0), acts.mean(0))) / (len(acts) - 1)
    ours_err = np.abs(stats.mu_sigma()[1] - reference).max()
    naive_err = np.abs(naive - reference).max()
    assert ours_err < 1e-8
    assert naive_err > 100 * ours_err


def test_merge_equals_one_pass_and_rejects_other_dims():
    acts = _acts(90, 8, 2.0)
    left, right = ActivationStats(8).update(acts[:17]), ActivationStats(8).update(acts[17:])
    merged = ActivationStats(8).merge(left).merge(right)
    np.testing.assert_allclose(merged.mu_sigma()[1], np.cov(acts, rowvar=False), atol=1e-12)
    with pytest.raises(ValueError, match="dimensions differ"):
        merged.merge(ActivationStats(4))
    with pytest.raises(ValueError, match=r"shaped \[B, 8\]"):
        merged.update(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="at least 2 images"):
        ActivationStats(8).update(acts[:1]).mu_sigma()


def test_all_reduce_without_distributed_is_a_no_op():
    stats = ActivationStats(8).update(_acts(10, 8, 0.0))
    before = stats.mu_sigma()
    stats.all_reduce()
    np.testing.assert_array_equal(stats.mu_sigma()[1], before[1])


def test_npz_round_trip_and_pytorch_fid_reads_it(tmp_path):
    from pytorch_fid.fid_score import compute_statistics_of_path

    mu, sigma = np.arange(4.0), np.eye(4) * 2
    path = save_stats(tmp_path / "s.npz", mu, sigma, backbone="RANDOM-INIT-INCEPTION(seed=0) — not a real FID",
                      n_images=12)
    got_mu, got_sigma, meta = load_stats(path, with_meta=True)
    np.testing.assert_array_equal(got_mu, mu)
    np.testing.assert_array_equal(got_sigma, sigma)
    assert meta == {"backbone": "RANDOM-INIT-INCEPTION(seed=0) — not a real FID", "n_images": 12}
    their_mu, their_sigma = compute_statistics_of_path(str(path), None, 50, 2048, "cpu")
    np.testing.assert_array_equal(their_mu, mu)
    np.testing.assert_array_equal(their_sigma, sigma)
    assert [p.name for p in tmp_path.iterdir()] == ["s.npz"]   # no temporary file left behind


def test_load_stats_errors_name_the_file(tmp_path):
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="other.npz: not FID statistics"):
        load_stats(tmp_path / "other.npz")
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="broken.npz: cannot read FID statistics"):
        load_stats(tmp_path / "broken.npz")
