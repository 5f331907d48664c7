"""FID of a generator's translations of the test split, with the work split across torch.distributed ranks.

Each rank translates its own share of testA (``cutdist.data.stream.test_loader`` gives every image to exactly
one rank), accumulates Inception sufficient statistics, and the statistics are all-reduced, so the FID is
that of the whole split, whatever the number of ranks. Rank 0 computes the Fréchet distance and broadcasts
it: every rank returns the same dict. With the reference's features (``ref_features``) the same activations
also give the KID (``cutdist.eval.kid``): every rank's features are all-gathered (in image-key order, so the
subsets drawn do not depend on the number of ranks), rank 0 computes it and broadcasts it with the FID.
Translations are scored as float images in [0, 1] (no 8-bit rounding as saving PNGs would add).
``FidEvaluator`` is the training loop's: built once per run, called at every evaluation step.
"""
from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from cutdist.eval.frechet import frechet_distance
from cutdist.eval.inception import FEATURE_DIM, activations, is_official_backbone
from cutdist.eval.kid import KID_SUBSET_SIZE, KID_SUBSETS, gather_features, kid
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


def _keys(batch: Any, count: int) -> list[str] | None:
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[0], (list, tuple)) \
            and len(batch[0]) == count:
        return [str(k) for k in batch[0]]
    return None


def _broadcast_from_rank0(values: list[float]) -> list[float]:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" \
        else torch.device("cpu")
    buffer = torch.tensor(values, dtype=torch.float64, device=device)
    dist.broadcast(buffer, src=0)
    return [float(v) for v in buffer.tolist()]


def fid_during_training(translate: Callable[[torch.Tensor], torch.Tensor], batches: Iterable, *,
                        model: nn.Module, backbone: str, ref_mu: np.ndarray, ref_sigma: np.ndarray,
                        device: str | torch.device, batch_size: int = 50, ref_features: np.ndarray | None = None,
                        kid_subsets: int = KID_SUBSETS, kid_subset_size: int = KID_SUBSET_SIZE) -> dict[str, Any]:
    """FID between ``translate`` applied to this rank's ``batches`` (all ranks together) and the reference.

    ``translate(x) -> y``: both in [-1, 1], ``[B, 3, H, W]``; called under ``torch.no_grad``. ``batches``:
    this rank's share of ``test_loader`` (``(keys, images)``) or bare tensors. Every rank must call this
    (collectives inside). Returns ``{"fid", "backbone", "real_fid", "n_images"}``, the same on every rank;
    ``real_fid`` is True only for pytorch-fid's official weights file (False for the random backbone or any other
    weights). With ``ref_features`` (the reference images' activations, ``[n, 2048]``) it also holds ``kid``,
    ``kid_std``, ``kid_subset_size`` and ``kid_subsets``.
    """
    stats = ActivationStats(FEATURE_DIM)
    want_kid = ref_features is not None
    feats: list[np.ndarray] = []
    keys: list[str] | None = [] if want_kid else None
    with torch.no_grad():
        for batch in batches:
            x = _images(batch)
            if x.shape[0] == 0:
                continue
            y = translate(x.to(device))
            acts = activations(model, ((y.float() + 1) / 2).clamp(0, 1), batch_size=batch_size)
            stats.update(acts)
            if want_kid:
                feats.append(np.asarray(acts, dtype=np.float32))
                batch_keys = _keys(batch, x.shape[0])
                keys = None if batch_keys is None or keys is None else keys + batch_keys
    stats.all_reduce()
    if want_kid:   # every rank: a collective; keyless batches (bare tensors) keep rank order
        local = np.concatenate(feats) if feats else np.zeros((0, FEATURE_DIM), np.float32)
        gathered = gather_features(local, keys if _all_ranks_agree(keys is not None) else None)
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    fid = kid_mean = kid_std = float("nan")
    kid_size = 0.0
    if stats.n < 2:
        raise ValueError(f"fid_during_training: the test split gave {stats.n} image(s) across all ranks; "
                         "FID needs at least 2")
    failure = None
    if rank == 0:
        try:
            mu, sigma = stats.mu_sigma()
            fid = frechet_distance(mu, sigma, ref_mu, ref_sigma)
            if want_kid:
                result = kid(gathered, ref_features, subsets=kid_subsets, subset_size=kid_subset_size)
                kid_mean, kid_std, kid_size = result.mean, result.std, float(result.subset_size)
        except ValueError as err:   # still broadcast, so the other ranks do not wait forever
            failure = err
    fid, kid_mean, kid_std, kid_size = _broadcast_from_rank0([fid, kid_mean, kid_std, kid_size])
    if failure is not None:
        raise failure
    if not np.isfinite(fid) or (want_kid and not np.isfinite(kid_mean)):
        raise RuntimeError("fid_during_training: rank 0 failed to compute the FID/KID (see its log)")
    out = {"fid": fid, "backbone": backbone, "real_fid": is_official_backbone(backbone), "n_images": stats.n}
    if want_kid:
        out.update({"kid": kid_mean, "kid_std": kid_std, "kid_subset_size": int(kid_size), "kid_subsets": kid_subsets})
    return out


def _all_ranks_agree(flag: bool) -> bool:
    """True when ``flag`` is True on every rank (a MIN all-reduce; just ``flag`` without torch.distributed)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" \
        else torch.device("cpu")
    value = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


class FidEvaluator:
    """FID and KID of G(test A) against the real test B during training, every rank translating its share.

    Built on every rank (``rank`` of ``world_size``, images on ``device``); the reference statistics and features
    are computed (or read from their cache) on rank 0 once, then broadcast. ``evaluator(g)`` is a collective: every
    rank calls it at the same step, and every rank gets the same ``{"fid", "fid_backbone", "fid_real",
    "fid_n_images", "kid", "kid_std", "kid_subset_size", "fid_seconds"}``.
    """

    def __init__(self, cfg: Any, splits: Any, *, rank: int, world_size: int, device: torch.device) -> None:
        from cutdist.eval.inception import backbone_caveat, load_inception
        from cutdist.eval.reference import reference_stats

        self.cfg, self.splits = cfg, splits
        self.rank, self.world_size, self.device = rank, world_size, device
        self.model, self.backbone = load_inception(cfg.eval.inception_weights, device)
        caveat = backbone_caveat(self.backbone)
        if rank == 0 and caveat:
            print(f"[cutdist.train] warning: FID backbone {self.backbone}: {caveat}", flush=True)
        ref = [None, None, None]
        if rank == 0:   # the features too: KID (cutdist.eval.kid) from the same activations
            ref = list(reference_stats(splits.test_b, model=self.model, backbone=self.backbone,
                                       size=cfg.data.crop_size, batch_size=cfg.eval.batch_size, device=device,
                                       cache_dir=cfg.eval.cache_dir, manifest=splits.manifest, with_features=True))
        if world_size > 1:
            dist.broadcast_object_list(ref, src=0)
        self.ref_mu, self.ref_sigma, self.ref_features = ref

    def __call__(self, g: nn.Module) -> dict[str, Any]:
        from cutdist.data.stream import test_loader

        batches = test_loader(self.splits.test_a, rank=self.rank, world_size=self.world_size,
                              size=self.cfg.data.crop_size, batch_size=self.cfg.eval.batch_size,
                              max_images=self.cfg.eval.max_images)
        was_training = g.training
        g.eval()
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                out = fid_during_training(lambda x: g(x.to(self.device)), batches,   # (keys, images): KID order
                                          model=self.model, backbone=self.backbone, ref_mu=self.ref_mu,
                                          ref_sigma=self.ref_sigma, device=self.device,
                                          ref_features=self.ref_features)
        finally:
            g.train(was_training)
        return {"fid": float(out["fid"]), "fid_backbone": out["backbone"], "fid_real": bool(out["real_fid"]),
                "fid_n_images": int(out["n_images"]), "kid": float(out["kid"]), "kid_std": float(out["kid_std"]),
                "kid_subset_size": int(out["kid_subset_size"]), "fid_seconds": time.perf_counter() - t0}
