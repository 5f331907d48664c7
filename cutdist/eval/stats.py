"""Sufficient statistics of Inception activations, combinable across batches and torch.distributed ranks,
and pytorch-fid's ``.npz`` statistics format (``mu``, ``sigma``) plus metadata keys it ignores.

Precision: the naive ``sum(x x^T) - n mu mu^T`` loses digits when the mean is large next to the spread, so
the statistics are held centred (Chan et al.'s pairwise update): ``n``, ``mean`` and ``m2 = sum (x - mean)(x -
mean)^T``, all float64. Merging two sets adds ``delta delta^T * n_a n_b / n``. Across ranks, the global mean is
all-reduced first and each rank then adds its own ``m2 + n_r (mean_r - mean)(mean_r - mean)^T``: one SUM
all-reduce of a [2048, 2048] matrix, still centred, and the same bytes on every rank.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


class ActivationStats:
    """Count, mean and centred sum of outer products of ``dim``-dimensional activations (float64)."""

    def __init__(self, dim: int = 2048) -> None:
        self.dim = dim
        self.n = 0
        self.mean = np.zeros(dim, dtype=np.float64)
        self.m2 = np.zeros((dim, dim), dtype=np.float64)

    def update(self, acts: np.ndarray | torch.Tensor) -> "ActivationStats":
        """Add a batch of activations shaped ``[B, dim]``."""
        if isinstance(acts, torch.Tensor):
            acts = acts.detach().cpu().numpy()
        acts = np.asarray(acts, dtype=np.float64)
        if acts.ndim != 2 or acts.shape[1] != self.dim:
            raise ValueError(f"ActivationStats.update: expected activations shaped [B, {self.dim}], "
                             f"got {acts.shape}")
        if acts.shape[0] == 0:
            return self
        batch = ActivationStats(self.dim)
        batch.n = acts.shape[0]
        batch.mean = acts.mean(axis=0)
        centred = acts - batch.mean
        batch.m2 = centred.T @ centred
        return self.merge(batch)

    def merge(self, other: "ActivationStats") -> "ActivationStats":
        """Fold ``other`` into this one (in place) and return self."""
        if other.dim != self.dim:
            raise ValueError(f"ActivationStats.merge: dimensions differ ({self.dim} vs {other.dim})")
        if other.n == 0:
            return self
        if self.n == 0:
            self.n, self.mean, self.m2 = other.n, other.mean.copy(), other.m2.copy()
            return self
        n = self.n + other.n
        delta = other.mean - self.mean
        self.m2 += other.m2 + np.outer(delta, delta) * (self.n * other.n / n)
        self.mean += delta * (other.n / n)
        self.n = n
        return self

    def all_reduce(self) -> "ActivationStats":
        """Combine the statistics of every torch.distributed rank (in place); no-op when not initialised.

        Every rank ends with the same n, mean and m2. Works with gloo (CPU tensors) and NCCL (CUDA tensors).
        """
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" \
            else torch.device("cpu")
        weighted = torch.from_numpy(np.concatenate([[float(self.n)], self.mean * self.n])).to(device)
        dist.all_reduce(weighted)
        total = int(round(weighted[0].item()))
        if total == 0:
            self.n = 0
            return self
        mean = weighted[1:].cpu().numpy() / total
        shift = self.mean - mean
        local = self.m2 + np.outer(shift, shift) * self.n if self.n else np.zeros_like(self.m2)
        m2 = torch.from_numpy(np.ascontiguousarray(local)).to(device)
        dist.all_reduce(m2)
        self.n, self.mean, self.m2 = total, mean, m2.cpu().numpy()
        return self

    def mu_sigma(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and unbiased covariance, as ``np.mean(acts, 0)`` and ``np.cov(acts, rowvar=False)`` give them."""
        if self.n < 2:
            raise ValueError(f"FID statistics need at least 2 images, got {self.n}")
        return self.mean.copy(), self.m2 / (self.n - 1)


# ------------------------------------------------------------------------------------------- npz format

def save_stats(path: str | Path, mu: np.ndarray, sigma: np.ndarray, **meta: Any) -> Path:
    """Write pytorch-fid's npz (``mu``, ``sigma``) plus metadata keys (e.g. ``backbone``, ``n_images``).

    Written to a temporary name and renamed, so a reader never sees half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp.npz")
    try:
        np.savez(tmp, mu=np.asarray(mu, dtype=np.float64), sigma=np.asarray(sigma, dtype=np.float64),
                 **{k: np.asarray(v) for k, v in meta.items()})
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_stats(path: str | Path, *, with_meta: bool = False):
    """``(mu, sigma)`` from a pytorch-fid npz; with ``with_meta=True``, ``(mu, sigma, meta)`` where ``meta``
    holds every other key as a plain Python value (``{}`` for pytorch-fid's own files)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as err:   # missing, truncated, not a zip, pickled objects
        detail = str(err).splitlines()[0] if str(err) else ""
        raise ValueError(f"{path}: cannot read FID statistics ({type(err).__name__}: {detail})") from None
    if "mu" not in arrays or "sigma" not in arrays:
        raise ValueError(f"{path}: not FID statistics (needs arrays 'mu' and 'sigma', has {sorted(arrays)})")
    mu, sigma = arrays.pop("mu").astype(np.float64), arrays.pop("sigma").astype(np.float64)
    meta = {k: v.item() if v.ndim == 0 else v for k, v in arrays.items()}
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{path}: mu {mu.shape} and sigma {sigma.shape} do not fit together")
    return (mu, sigma, meta) if with_meta else (mu, sigma)
