"""Adversarial losses with the reference's semantics (models/networks.py ``GANLoss``), averaged over all patches
of the PatchGAN's output map; always computed in float32.

- ``lsgan`` (the paper's choice): mean squared error to 1 (real) or 0 (fake).
- ``nonsaturating``: softplus(-D) for real targets, softplus(D) for fake ones.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

GAN_MODES = ("lsgan", "nonsaturating")


class GANLoss:
    """``GANLoss(mode)(prediction, target_is_real) -> scalar Tensor``."""

    def __init__(self, mode: str) -> None:
        if mode not in GAN_MODES:
            raise ValueError(f"GANLoss: mode must be one of {list(GAN_MODES)}, got {mode!r}")
        self.mode = mode

    def __call__(self, prediction: torch.Tensor, target_is_real: bool) -> torch.Tensor:
        pred = prediction.float()
        if self.mode == "lsgan":
            target = torch.full_like(pred, 1.0 if target_is_real else 0.0)
            return F.mse_loss(pred, target)
        per_image = F.softplus(-pred if target_is_real else pred).view(pred.shape[0], -1).mean(dim=1)
        return per_image.mean()
