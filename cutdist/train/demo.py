"""The demo's before-vs-after measure: G on test A against the paired ground truth (test GT, same keys).

Only datasets with a ``testGT`` split have it (the synthetic demo domains). The measure is
``cutdist.eval.paired.translation_quality`` (phase-invariant; see there). "Before" is G exactly as training
initialises it (same seed), "after" is G from the final checkpoint; the input itself is shown as a no-op baseline.
"""
from __future__ import annotations

from typing import Any

import torch

from cutdist.config import JobConfig


def load_pairs(splits: Any, size: int, max_images: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Test A images and their ground truth, matched by key, as [-1, 1] tensors [N,3,size,size]."""
    from cutdist.data.stream import load_test_pairs

    _, real_a, gt = load_test_pairs(splits, size, max_images=max_images)
    return real_a, gt


@torch.no_grad()
def quality(g: torch.nn.Module | None, real_a: torch.Tensor, gt: torch.Tensor, batch: int = 32) -> dict[str, float]:
    from cutdist.eval.paired import translation_quality

    if g is None:
        fake = real_a
    else:
        g.eval()
        fake = torch.cat([g(real_a[i:i + batch]) for i in range(0, len(real_a), batch)])
    return translation_quality((fake.clamp(-1, 1) + 1) / 2, (gt + 1) / 2)


def paired_quality_of_initial_g(cfg: JobConfig, splits: Any) -> dict[str, dict[str, float]]:
    from cutdist.model.networks import build_nets

    real_a, gt = load_pairs(splits, cfg.data.crop_size)
    torch.manual_seed(cfg.train.seed)   # the same initialisation the training loop starts from
    g = build_nets(cfg).g
    return {"identity": quality(None, real_a, gt), "g": quality(g, real_a, gt)}


def paired_quality_of_checkpoint(ckpt_dir: str, splits: Any) -> dict[str, float]:
    from cutdist.model.io import load_generator

    g, cfg = load_generator(ckpt_dir, "cpu")
    real_a, gt = load_pairs(splits, cfg.data.crop_size)
    return quality(g, real_a, gt)
