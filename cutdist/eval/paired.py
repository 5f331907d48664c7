"""Translation quality against paired ground truth (the synthetic demo's test split).

Stripes have a random phase that no translator can guess from a flat-coloured shape, so a plain pixel L1
to the ground truth would mostly measure phase. Two phase-invariant measures instead, both on images in
[0, 1], shaped ``[N, 3, H, W]``:

- ``lowfreq_l1``: L1 between the images after averaging over ``pool`` x ``pool`` cells (at least one stripe
  period), where black/white stripes become mid-grey. It is low when the shape lost its flat colour, the
  background was kept and nothing else changed. 0 = perfect.
- ``stripe_energy_ratio``: high-frequency energy (mean |x - cell average|) of the output over that of the
  ground truth. A flat shape has ratio ~0.1, a well-striped one ~1.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _cell_mean(x: torch.Tensor, pool: int) -> torch.Tensor:
    return F.avg_pool2d(x, pool, stride=pool, ceil_mode=True)


def _high_freq_energy(x: torch.Tensor, pool: int) -> torch.Tensor:
    low = F.interpolate(_cell_mean(x, pool), scale_factor=pool, mode="nearest")[..., : x.shape[-2], : x.shape[-1]]
    return (x - low).abs().mean(dim=(1, 2, 3))


def translation_quality(fake: torch.Tensor, gt: torch.Tensor, pool: int | None = None) -> dict[str, float]:
    if fake.shape != gt.shape:
        raise ValueError(f"translation_quality: shapes differ, {tuple(fake.shape)} vs {tuple(gt.shape)}")
    pool = pool or max(4, fake.shape[-1] // 8)
    fake, gt = fake.double(), gt.double()
    lowfreq = (_cell_mean(fake, pool) - _cell_mean(gt, pool)).abs().mean().item()
    ratio = (_high_freq_energy(fake, pool) / _high_freq_energy(gt, pool).clamp_min(1e-8)).mean().item()
    return {"lowfreq_l1": lowfreq, "stripe_energy_ratio": ratio}
