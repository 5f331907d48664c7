"""The PatchNCE loss (Park et al. 2020, Eq. 2-3 and Algorithm 1), usable on its own::

    from cutdist.model.patchnce import patchnce_loss
    loss = patchnce_loss(feat_q, feat_k, temperature=0.07, batch_size=B).mean()

``feat_q`` / ``feat_k`` are ``[N, D]`` rows, image-major (the ``P`` patches of image 0, then of image 1, ...,
``N = B * P``), as ``PatchSampleF`` returns them. Row ``i`` of ``feat_q`` is the query, row ``i`` of ``feat_k``
its positive; the negatives are the other ``P - 1`` key rows of the same image. ``batch_size=1`` over a flattened
batch therefore draws negatives from the whole batch (the paper's single-image setting).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# The reference fills the self-similarity diagonal of the negatives with -10 before dividing by the temperature,
# i.e. exp(-10 / tau): effectively zero weight.
_MASKED_LOGIT = -10.0


def patchnce_loss(feat_q: torch.Tensor, feat_k: torch.Tensor, temperature: float, batch_size: int) -> torch.Tensor:
    """Per-row InfoNCE loss, shape ``[N]``. Keys are detached; logits and cross-entropy run in float32."""
    if feat_q.dim() != 2 or feat_q.shape != feat_k.shape:
        raise ValueError(f"patchnce_loss: feat_q and feat_k must be equal [N, D] tensors, got "
                         f"{tuple(feat_q.shape)} and {tuple(feat_k.shape)}")
    n, dim = feat_q.shape
    if batch_size < 1 or n % batch_size:
        raise ValueError(f"patchnce_loss: {n} rows cannot be split into batch_size={batch_size} images")
    if temperature <= 0:
        raise ValueError(f"patchnce_loss: temperature must be > 0, got {temperature}")
    with torch.autocast(device_type=feat_q.device.type, enabled=False):
        q = feat_q.float()
        k = feat_k.detach().float()
        l_pos = torch.bmm(q.view(n, 1, dim), k.view(n, dim, 1)).view(n, 1)
        q_img = q.view(batch_size, -1, dim)
        k_img = k.view(batch_size, -1, dim)
        patches = q_img.shape[1]
        l_neg = torch.bmm(q_img, k_img.transpose(2, 1))                     # [B, P, P]
        diagonal = torch.eye(patches, device=q.device, dtype=torch.bool)[None]
        l_neg = l_neg.masked_fill(diagonal, _MASKED_LOGIT).view(-1, patches)
        logits = torch.cat((l_pos, l_neg), dim=1) / temperature
        target = torch.zeros(n, dtype=torch.long, device=q.device)
        return F.cross_entropy(logits, target, reduction="none")
