"""CUT learns: a few hundred CPU steps on the synthetic demo domains (flat-coloured shapes -> striped shapes, 64 px)
lower the PatchNCE loss and paint stripes where the input had a flat colour.

The main measure, ``shape_texture``: mean high-frequency energy |x - 5x5 box mean(x)| over the pixels of the shape
(where a test image of domain A and its ground-truth translation differ). A flat fill has almost none (only the
outline): on renderer-2 data the identity mapping scores 0.021, the generator at init (a near-grey image) 0.006.
It asks exactly "did the flat colour turn into a texture?". The project's paired measure
``cutdist.eval.paired.translation_quality`` is checked too, for its stripe energy ratio only: that ratio counts the
whole image, so sharper output without stripes also raises it, and its low-frequency L1 is no evidence of
translation here (PatchNCE alone lowers it too: 0.117 at init -> 0.090).

Evidence that the thresholds cannot be met by noise, on renderer-2 data (this CPU run, 2026-11-30): the control
with lambda_GAN = 0 (PatchNCE alone, ``loss.lambda_gan: 0.0`` added to the config below) ends at texture 0.022 and
stripe ratio 0.36 after 500 steps and fails the asserts; full CUT reaches texture 0.137 and ratio 0.99. (On
renderer-1 data, GPU sweeps of this setting: the control stayed <= 0.017 / 0.25 for 1200 steps, CUT reached
0.085-0.124 / 0.88-1.13 at step 500 over 3 seeds.) Asserted: texture > 2x the identity's, stripe ratio > 1.5x the
identity's, and a PatchNCE loss (the X term) at least 20% below its starting value.

Setting: the CUT preset (lambda_X = 1, identity PatchNCE, Adam 2e-4, betas 0.5/0.999), a tiny model (ngf = ndf = 8,
4 residual blocks, 2-layer PatchGAN, strided convs instead of anti-aliasing: cheaper on a CPU, and of the settings
swept the one that started painting stripes soonest), taps 0, 4, 8, 12, 64 patches, batch 1, one thread.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cutdist import config
from cutdist.data.synth import synth_image, synth_test_pair
from cutdist.eval.paired import translation_quality
from cutdist.model.cut import LocalUpdater, cut_step, make_optimizers
from cutdist.model.networks import build_nets

SIZE, STEPS, TRAIN_IMAGES, TEST_IMAGES = 64, 500, 200, 32


def _tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 127.5 - 1


def shape_texture(x01: torch.Tensor, a01: torch.Tensor, gt01: torch.Tensor) -> float:
    """Mean |x - 5x5 box mean| over channels, inside the shape (where A and its ground truth differ)."""
    shape = ((a01 - gt01).abs().sum(1, keepdim=True) > 0.15).float()
    k = SIZE // 16 + 1
    detail = (x01 - F.avg_pool2d(x01, k, 1, k // 2, count_include_pad=False)).abs().mean(1, keepdim=True)
    return float((detail * shape).sum() / shape.sum())


@pytest.mark.slow
def test_cut_learns_to_paint_stripes(one_torch_thread):
    cfg = config.from_dict({"model.mode": "cut", "model.ngf": 8, "model.ndf": 8, "model.n_blocks": 4,
                            "model.n_layers_d": 2, "model.antialias": False, "loss.nce_layers": [0, 4, 8, 12],
                            "loss.num_patches": 64, "data.root": "unused"})
    train_a = torch.stack([_tensor(synth_image(0, "train", "A", i, SIZE)) for i in range(TRAIN_IMAGES)])
    train_b = torch.stack([_tensor(synth_image(0, "train", "B", i, SIZE)) for i in range(TRAIN_IMAGES)])
    pairs = [synth_test_pair(0, i, SIZE) for i in range(TEST_IMAGES)]
    test_a = torch.stack([_tensor(a) for a, _ in pairs])
    a01, gt01 = (test_a + 1) / 2, (torch.stack([_tensor(g) for _, g in pairs]) + 1) / 2

    torch.manual_seed(0)
    nets = build_nets(cfg)
    updater = LocalUpdater(make_optimizers(nets, cfg.optim))

    def measure() -> tuple[float, dict]:
        with torch.no_grad():
            fake01 = (nets.g(test_a) + 1) / 2
        return shape_texture(fake01, a01, gt01), translation_quality(fake01, gt01)

    identity = shape_texture(a01, a01, gt01)
    quality_identity = translation_quality(a01, gt01)
    before, quality_before = measure()
    patches, flips, draws = (torch.Generator().manual_seed(s) for s in (1, 2, 3))
    nce = []
    for _ in range(STEPS):
        ia = torch.randint(0, TRAIN_IMAGES, (1,), generator=draws)
        ib = torch.randint(0, TRAIN_IMAGES, (1,), generator=draws)
        losses = cut_step(nets, updater, train_a[ia], train_b[ib], cfg.loss, generator=patches, flip_generator=flips)
        nce.append(losses["nce"].item())
    after, quality_after = measure()

    report = (f"shape texture: identity {identity:.4f}, G at init {before:.4f}, after {STEPS} steps {after:.4f}; "
              f"NCE first 50 {np.mean(nce[:50]):.3f}, last 50 {np.mean(nce[-50:]):.3f}; "
              f"translation_quality identity {quality_identity}, G at init {quality_before}, after {quality_after}")
    print(report)
    assert all(np.isfinite(nce)), report
    assert np.mean(nce[-50:]) < 0.8 * np.mean(nce[:50]), report
    assert before < 0.5 * identity, report            # sanity: the untrained G paints nothing
    assert after > 2.0 * identity, report             # stripes inside the shapes
    assert quality_after["stripe_energy_ratio"] > 1.5 * quality_identity["stripe_energy_ratio"], report
