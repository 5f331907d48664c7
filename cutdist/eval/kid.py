"""Kernel Inception Distance (Bińkowski et al., "Demystifying MMD GANs", ICLR 2018), from the FID's features.

KID is the squared maximum mean discrepancy between two sets of Inception pool3 features (the same 2048-d
features FID uses) under the cubic polynomial kernel ``k(x, y) = (x . y / d + 1) ** 3``, estimated without
bias (the U-statistic: the diagonals of K_XX and K_YY are left out). Unlike FID it has an unbiased estimator,
so it can be compared across test-set sizes, and it is ~0 (possibly slightly negative) for two samples of
one distribution.

The usual definition (torch-fidelity's and clean-fid's defaults, after the authors' code): ``subsets`` = 100
random subsets of ``subset_size`` = min(1000, n_x, n_y) features from each set, drawn without replacement,
the unbiased MMD² of each pair; KID = mean over subsets, ± the standard deviation over subsets (``np.std``,
ddof 0, as torch-fidelity). When a set has no more than ``subset_size`` images every subset is the whole set:
the mean is then the unbiased MMD² of the full sets and the std is 0 — it says nothing about sampling noise.

Speed: the three Gram matrices are computed once over the full sets (float64) and each subset's kernel is
read from them, so 100 subsets cost about one kernel evaluation over the full sets; sets larger than
``GRAM_LIMIT`` features fall back to computing each subset's kernels directly (the same numbers).

Distributed: ``gather_features`` all-gathers every rank's features (and their keys) so that each rank holds
the whole set; ordered by key when keys are given, so the subsets drawn — and the KID — do not depend on the
number of ranks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist

KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
KID_SEED = 0
GRAM_LIMIT = 8000   # above this many features in a set, kernels are computed per subset (memory)


@dataclass(frozen=True)
class KidResult:
    mean: float          # KID: mean over subsets of the unbiased MMD²
    std: float           # standard deviation over subsets (ddof 0); 0 when each subset is the whole set
    subsets: int
    subset_size: int
    n_x: int
    n_y: int

    def as_metrics(self, prefix: str = "kid") -> dict[str, Any]:
        return {prefix: self.mean, f"{prefix}_std": self.std, f"{prefix}_subset_size": self.subset_size,
                f"{prefix}_subsets": self.subsets}

    def __str__(self) -> str:
        return f"{self.mean:.6f} ± {self.std:.6f}"


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``(x y^T / d + 1) ** 3`` in float64, for ``x`` [n, d] and ``y`` [m, d]."""
    d = x.shape[1]
    return (np.asarray(x, np.float64) @ np.asarray(y, np.float64).T / d + 1.0) ** 3


def mmd2_unbiased(k_xx: np.ndarray, k_xy: np.ndarray, k_yy: np.ndarray) -> float:
    """The unbiased estimate of MMD² from the kernel matrices of two equal-sized samples (m >= 2)."""
    m = k_xx.shape[0]
    if m < 2 or k_xx.shape != (m, m) or k_yy.shape != (m, m) or k_xy.shape != (m, m):
        raise ValueError(f"mmd2_unbiased: need square kernel matrices of one size >= 2, got {k_xx.shape}, "
                         f"{k_xy.shape}, {k_yy.shape}")
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.sum() / (m * m))


def _as_features(name: str, feats: Any) -> np.ndarray:
    if isinstance(feats, torch.Tensor):
        feats = feats.detach().cpu().numpy()
    feats = np.asarray(feats)
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise ValueError(f"KID: {name} must be features shaped [n >= 2, d], got {feats.shape}")
    if not np.all(np.isfinite(feats)):
        raise ValueError(f"KID: {name} holds non-finite features")
    return feats


def kid(feats_x: Any, feats_y: Any, *, subsets: int = KID_SUBSETS, subset_size: int = KID_SUBSET_SIZE,
        seed: int = KID_SEED) -> KidResult:
    """KID between two feature sets ``[n_x, d]`` and ``[n_y, d]`` (see the module docstring)."""
    x, y = _as_features("the first set", feats_x), _as_features("the second set", feats_y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"KID: feature dimensions differ ({x.shape[1]} vs {y.shape[1]})")
    if subsets < 1 or subset_size < 2:
        raise ValueError(f"KID: need subsets >= 1 and subset_size >= 2, got {subsets} and {subset_size}")
    m = min(subset_size, len(x), len(y))
    rng = np.random.default_rng(seed)
    whole = m == len(x) and m == len(y)
    if whole:   # every subset would be the whole set: one evaluation is all 100 would give
        draws = [(np.arange(m), np.arange(m))]
    else:
        draws = [(rng.choice(len(x), m, replace=False), rng.choice(len(y), m, replace=False))
                 for _ in range(subsets)]
    if max(len(x), len(y)) <= GRAM_LIMIT:
        g_xx, g_xy, g_yy = polynomial_kernel(x, x), polynomial_kernel(x, y), polynomial_kernel(y, y)
        values = [mmd2_unbiased(g_xx[np.ix_(i, i)], g_xy[np.ix_(i, j)], g_yy[np.ix_(j, j)]) for i, j in draws]
    else:
        values = [mmd2_unbiased(polynomial_kernel(x[i], x[i]), polynomial_kernel(x[i], y[j]),
                                polynomial_kernel(y[j], y[j])) for i, j in draws]
    if whole:
        return KidResult(values[0], 0.0, subsets, m, len(x), len(y))
    mmds = np.asarray(values)
    return KidResult(float(mmds.mean()), float(mmds.std()), subsets, m, len(x), len(y))


# ------------------------------------------------------------------------------------------- distributed

def _dist_on() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_features(feats: np.ndarray, keys: Sequence[str] | None = None) -> np.ndarray:
    """Every rank's ``feats`` ([n_r, d]) concatenated, on every rank; a no-op without torch.distributed.

    With ``keys`` (one per row, unique across ranks) the result is ordered by key, so it is the same array
    whatever the number of ranks and however the images were shared out. Every rank must call this.
    """
    feats = np.asarray(feats)
    if keys is not None and len(keys) != len(feats):
        raise ValueError(f"gather_features: {len(keys)} keys for {len(feats)} feature rows")
    if _dist_on():
        parts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, (feats, None if keys is None else list(keys)))
        shaped = [p[0] for p in parts if len(p[0])]
        feats = np.concatenate(shaped) if shaped else feats
        if keys is not None:
            keys = [k for p in parts for k in p[1]]
    if keys is not None:
        if len(set(keys)) != len(keys):
            raise ValueError("gather_features: duplicate image keys across ranks")
        feats = feats[np.argsort(np.asarray(keys, dtype=object).astype(str), kind="stable")]
    return feats
