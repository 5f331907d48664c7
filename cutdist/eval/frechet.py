"""The Fréchet distance between two Gaussians, in float64, without scipy's ``sqrtm(disp=...)``.

    d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2)

``tr sqrt(S1 S2)`` is the sum of the square roots of the eigenvalues of ``S1 S2``, which equal those of the
symmetric positive semi-definite ``L^T S2 L`` where ``S1 = L L^T`` (see trace_sqrt_product). Both come from
symmetric eigendecompositions (``eigh``), so singular covariances (fewer images than 2048 features, the usual
case in tests and small test splits) need no inverse and give a finite answer; round-off eigenvalues below
zero are clamped. If a decomposition still fails, pytorch-fid's remedy is applied: ``eps`` is added to both
diagonals and the distance recomputed, with a warning.
"""
from __future__ import annotations

import warnings

import numpy as np


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """``tr sqrt(sigma1 @ sigma2)`` for symmetric positive semi-definite matrices.

    With ``sigma1 = L L^T`` (``L = V sqrt(lambda)`` over sigma1's non-zero eigenpairs), the non-zero eigenvalues
    of ``sigma1 sigma2`` are those of the small symmetric ``L^T sigma2 L`` (k x k, k = rank of sigma1).
    """
    values, vectors = np.linalg.eigh((sigma1 + sigma1.T) / 2)
    keep = values > values.max(initial=0.0) * values.shape[0] * np.finfo(np.float64).eps
    factor = vectors[:, keep] * np.sqrt(values[keep])
    inner = factor.T @ sigma2 @ factor
    inner_values = np.linalg.eigvalsh((inner + inner.T) / 2)
    return float(np.sqrt(np.clip(inner_values, 0.0, None)).sum())


def _checked(name: str, value: np.ndarray, ndim: int) -> np.ndarray:
    value = np.atleast_1d(np.asarray(value, dtype=np.float64)) if ndim == 1 else np.atleast_2d(
        np.asarray(value, dtype=np.float64))
    if value.ndim != ndim:
        raise ValueError(f"frechet_distance: {name} must have {ndim} dimension(s), got shape {value.shape}")
    if not np.isfinite(value).all():
        raise ValueError(f"frechet_distance: {name} has non-finite values")
    return value


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), computed in float64."""
    mu1, mu2 = _checked("mu1", mu1, 1), _checked("mu2", mu2, 1)
    sigma1, sigma2 = _checked("sigma1", sigma1, 2), _checked("sigma2", sigma2, 2)
    if mu1.shape != mu2.shape:
        raise ValueError(f"frechet_distance: mean vectors differ in length ({mu1.shape} vs {mu2.shape})")
    if sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0],) * 2:
        raise ValueError(f"frechet_distance: covariances {sigma1.shape}, {sigma2.shape} do not fit means "
                         f"of length {mu1.shape[0]}")
    diff = mu1 - mu2
    try:
        tr_covmean = trace_sqrt_product(sigma1, sigma2)
        ok = np.isfinite(tr_covmean)
    except np.linalg.LinAlgError:
        ok = False
    if not ok:
        warnings.warn(f"frechet_distance: singular product; adding {eps} to the diagonal of both covariances")
        offset = np.eye(sigma1.shape[0]) * eps
        tr_covmean = trace_sqrt_product(sigma1 + offset, sigma2 + offset)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)
