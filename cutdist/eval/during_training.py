"""FID of a generator's translations of the test split, with the work split across torch.distributed ranks.

Each rank translates its own share of testA (``cutdist.data.stream.test_loader`` gives every image to exactly
one rank), accumulates Inception sufficient statistics, and the statistics are all-reduced, so the FID is
that of the whole split, whatever the number of ranks. Rank 0 computes the Fréchet distance and broadcasts
it: every rank returns the same dict. Translations are scored as float images in [0, 1] (no 8-bit rounding
as saving PNGs would add).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from cutdist.eval.frechet import frechet_distance
from cutdist.eval.inception import FEATURE_DIM, activations, is_official_backbone
from cutdist.eval.stats import ActivationStats


def _images(batch: Any) -> torch.Tensor:
    """The image tensor of a test_loader batch ``(keys, images)``, or a bare tensor."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[1], torch.Tensor):
        return batch[1]
    if isinstance(batch, dict) and "a" in batch:
        return batch["a"]
    raise TypeError(f"fid_during_training: cannot find the images in a batch of type {type(batch).__name__}")


def _broadcast_from_rank0(value: float) -> float:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" \
        else torch.device("cpu")
    buffer = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(buffer, src=0)
    return float(buffer.item())


def fid_during_training(translate: Callable[[torch.Tensor], torch.Tensor], batches: Iterable, *,
                        model: nn.Module, backbone: str, ref_mu: np.ndarray, ref_sigma: np.ndarray,
                        device: str | torch.device, batch_size: int = 50) -> dict[str, Any]:
    """FID between ``translate`` applied to this rank's ``batches`` (all ranks together) and the reference.

    ``translate(x) -> y``: both in [-1, 1], ``[B, 3, H, W]``; called under ``torch.no_grad``. ``batches``:
    this rank's share of ``test_loader`` (``(keys, images)``) or bare tensors. Every rank must call this
    (collectives inside). Returns ``{"fid", "backbone", "real_fid", "n_images"}``, the same on every rank;
    ``real_fid`` is True only for pytorch-fid's official weights file (False for the random backbone or any other
    weights).
    """
    stats = ActivationStats(FEATURE_DIM)
    with torch.no_grad():
        for batch in batches:
            x = _images(batch)
            if x.shape[0] == 0:
                continue
            y = translate(x.to(device))
            stats.update(activations(model, ((y.float() + 1) / 2).clamp(0, 1), batch_size=batch_size))
    stats.all_reduce()
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    fid = float("nan")
    if stats.n < 2:
        raise ValueError(f"fid_during_training: the test split gave {stats.n} image(s) across all ranks; "
                         "FID needs at least 2")
    failure = None
    if rank == 0:
        try:
            mu, sigma = stats.mu_sigma()
            fid = frechet_distance(mu, sigma, ref_mu, ref_sigma)
        except ValueError as err:   # still broadcast, so the other ranks do not wait forever
            failure = err
    fid = _broadcast_from_rank0(fid)
    if failure is not None:
        raise failure
    if not np.isfinite(fid):
        raise RuntimeError("fid_during_training: rank 0 failed to compute the FID (see its log)")
    return {"fid": fid, "backbone": backbone, "real_fid": is_official_backbone(backbone), "n_images": stats.n}
