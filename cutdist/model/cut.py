"""The CUT / FastCUT objective and ONE training step (Park et al. 2020, Sec. 3 and Eq. 5), read top to bottom:

    D step:    L_D   = 1/2 [ GAN(D(y), real) + GAN(D(G(x).detach()), fake) ]
    G+F step:  L_G   = lambda_GAN * GAN(D(G(x)), real) + L_NCE
               L_NCE = lambda_X * PatchNCE(G(x), x)                               (FastCUT)
                     = 1/2 [ lambda_X * PatchNCE(G(x), x) + lambda_X * PatchNCE(G(y), y) ]   (CUT, identity)

PatchNCE(target, source): query features from G_enc(target), key features from G_enc(source), sampled at the
same locations by F, averaged over the taps. With flip-equivariance (FastCUT) a fair coin flips the generator's
input horizontally; the query features of G(flip(x)) are flipped back before they are compared with x's.

The step knows nothing of Ray, DDP or DeepSpeed: an ``Updater`` does zero_grad/backward/step per group
("d" = D, "gf" = G and F); the networks may be wrapped and are only called through their forward.
The reference keeps separate Adam optimisers for G and F; Adam is elementwise, so one Adam over G and F
(``make_optimizers``) takes identical steps.
"""
from __future__ import annotations

import contextlib
from typing import Protocol

import torch
from torch import nn

from cutdist.config import LossConfig, OptimConfig
from cutdist.model.losses import GANLoss
from cutdist.model.networks import CUTNets
from cutdist.model.patchnce import patchnce_loss

GROUPS = ("d", "gf")
PRECISIONS = ("fp32", "bf16")


class Updater(Protocol):
    """How a step's gradients are made and applied, per parameter group ("d" or "gf")."""

    def zero_grad(self, group: str) -> None: ...

    def backward(self, group: str, loss: torch.Tensor) -> None: ...

    def step(self, group: str) -> None: ...


class LocalUpdater:
    """One process, plain autograd: ``loss.backward()`` and ``optimizer.step()``."""

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer]) -> None:
        if set(optimizers) != set(GROUPS):
            raise ValueError(f"LocalUpdater: needs optimizers for groups {list(GROUPS)}, got {sorted(optimizers)}")
        self.optimizers = optimizers

    def zero_grad(self, group: str) -> None:
        self.optimizers[group].zero_grad(set_to_none=True)

    def backward(self, group: str, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self, group: str) -> None:
        self.optimizers[group].step()


def make_optimizers(nets: CUTNets, optim_cfg: OptimConfig, fused: bool = False) -> dict[str, torch.optim.Optimizer]:
    """{"d": Adam(D), "gf": Adam over G (param group 0) and F (param group 1)}, lr and betas from ``optim_cfg``."""
    kwargs = dict(lr=optim_cfg.lr, betas=(optim_cfg.beta1, optim_cfg.beta2), fused=fused)
    return {
        "d": torch.optim.Adam(nets.d.parameters(), **kwargs),
        "gf": torch.optim.Adam([{"params": list(nets.g.parameters())}, {"params": list(nets.f.parameters())}],
                               **kwargs),
    }


def _set_requires_grad(net: nn.Module, flag: bool) -> None:
    for p in net.parameters():
        p.requires_grad_(flag)


def _autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _discriminator_precision(device: torch.device, precision: str, bf16_discriminator: bool):
    """(context, input cast) for D's forwards. Under bf16 D runs in fp32 unless ``bf16_discriminator``: on the demo
    a bf16 D shifted the adversarial balance beyond fp32's seed-to-seed noise (D's fake loss up, G's GAN loss down,
    growing with steps) while an fp32 D left every term within it (benchmarks/results/cpu-2026-11-27)."""
    if precision == "bf16" and not bf16_discriminator:
        return torch.autocast(device_type=device.type, enabled=False), (lambda x: x.float())
    return contextlib.nullcontext(), (lambda x: x)


def patchnce_term(nets: CUTNets, feat_k: list[torch.Tensor], feat_q: list[torch.Tensor], loss_cfg: LossConfig, *,
                  generator: torch.Generator | None) -> torch.Tensor:
    """lambda_X * PatchNCE between query features ``feat_q`` (G_enc of G(x), flipped back under flip-equivariance)
    and key features ``feat_k`` (G_enc of x), one tensor per tap, averaged over the taps. F draws the patch
    locations for the keys and samples the queries at the same ones."""
    pool_k, patch_ids = nets.f(feat_k, loss_cfg.num_patches, None, generator)
    pool_q, _ = nets.f(feat_q, loss_cfg.num_patches, patch_ids)
    # The batch of the contrastive loss is the per-rank batch; 1 = negatives from the whole batch.
    batch = 1 if loss_cfg.negatives_from_minibatch else feat_k[0].shape[0]
    total = feat_k[0].new_zeros((), dtype=torch.float32)
    for q, k in zip(pool_q, pool_k):
        total = total + (patchnce_loss(q, k, loss_cfg.temperature, batch) * loss_cfg.lambda_x).mean()
    return total / len(feat_k)


def cut_step(nets: CUTNets, updater: Updater, real_a: torch.Tensor, real_b: torch.Tensor, loss_cfg: LossConfig, *,
             generator: torch.Generator | None, flip_generator: torch.Generator | None = None,
             precision: str = "fp32", bf16_discriminator: bool = False,
             d_for_g: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """One CUT iteration: D update on (real y, detached G(x)), then G+F update. Returns DETACHED losses
    (``d``, ``d_real``, ``d_fake``, ``g_gan``, ``nce``, ``nce_y`` with the identity term, ``g_total``); ``nce`` and
    ``nce_y`` include lambda_X, as the reference logs them.

    ``generator``: torch.Generator on the data's device for the patch locations. ``flip_generator``: CPU generator
    for the flip coin (None = torch's global CPU generator). ``precision``: "fp32" or "bf16" (autocast around the
    forwards; PatchNCE in float32; D in float32 unless ``bf16_discriminator``). ``d_for_g``: the UNWRAPPED
    discriminator used for G's adversarial term (its requires_grad is switched off meanwhile); defaults to
    ``nets.d``.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"cut_step: precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if loss_cfg.lambda_x is None or loss_cfg.identity is None or loss_cfg.flip_equivariance is None:
        raise ValueError("cut_step: loss_cfg has unresolved preset fields (lambda_x, identity, flip_equivariance); "
                         "load the config through cutdist.config")
    if loss_cfg.lambda_gan <= 0 and loss_cfg.lambda_x <= 0:
        raise ValueError("cut_step: loss.lambda_gan and loss.lambda_x are both 0: the generator has nothing to learn")
    d_for_g = nets.d if d_for_g is None else d_for_g
    gan = GANLoss(loss_cfg.gan_mode)
    use_nce = loss_cfg.lambda_x > 0
    use_identity = loss_cfg.identity and use_nce
    autocast = _autocast(real_a.device, precision)
    d_precision, d_input = _discriminator_precision(real_a.device, precision, bf16_discriminator)
    n_a = real_a.shape[0]

    # G(x) (and G(y) for the identity term) in one forward; FastCUT flips the input on a fair coin (drawn on the
    # CPU generator: no device sync).
    real = torch.cat((real_a, real_b), dim=0) if use_identity else real_a
    flipped = bool(loss_cfg.flip_equivariance) and bool(torch.rand((), generator=flip_generator) < 0.5)
    layers = list(loss_cfg.nce_layers)
    # Unflipped, G's forward over x already computes the encoder taps that PatchNCE's keys need (G is not updated
    # before they are used): take them from it instead of running G_enc on x again. Flipped, the taps are of
    # flip(x) and the keys need their own encoder pass on x.
    keys_from_forward = use_nce and not flipped
    with autocast:
        if keys_from_forward:
            fake, feat_k = nets.g(real, layers)
        else:
            fake, feat_k = nets.g(torch.flip(real, [3]) if flipped else real), None
    fake_b = fake[:n_a]

    # D step: real y -> 1, G(x) (detached) -> 0. D is per-image (instance norm), so both go in one forward.
    _set_requires_grad(d_for_g, True)
    updater.zero_grad("d")
    with autocast, d_precision:
        pred = nets.d(d_input(torch.cat((fake_b.detach(), real_b), dim=0)))
        loss_d_fake = gan(pred[:n_a], False)
        loss_d_real = gan(pred[n_a:], True)
        loss_d = (loss_d_fake + loss_d_real) * 0.5
    updater.backward("d", loss_d)
    updater.step("d")

    # G+F step: fool the (just updated) D through the unwrapped module, plus PatchNCE.
    _set_requires_grad(d_for_g, False)
    updater.zero_grad("gf")
    zero = real_a.new_zeros((), dtype=torch.float32)
    with autocast:
        with d_precision:
            loss_g_gan = gan(d_for_g(d_input(fake_b)), True) * loss_cfg.lambda_gan if loss_cfg.lambda_gan > 0 else zero
        if use_nce:
            # Queries: G_enc over G(x) (and G(y)) in one pass; keys: G_enc over x (and y).
            feat_q = nets.g(fake, layers, encode_only=True)
            if flipped:
                feat_q = [torch.flip(fq, [3]) for fq in feat_q]
                feat_k = nets.g(real, layers, encode_only=True)
            loss_nce = patchnce_term(nets, [k[:n_a] for k in feat_k], [q[:n_a] for q in feat_q], loss_cfg,
                                     generator=generator)
        else:
            loss_nce = zero
        if use_identity:
            loss_nce_y = patchnce_term(nets, [k[n_a:] for k in feat_k], [q[n_a:] for q in feat_q], loss_cfg,
                                       generator=generator)
            loss_nce_both = (loss_nce + loss_nce_y) * 0.5
        else:
            loss_nce_both = loss_nce
        loss_g = loss_g_gan + loss_nce_both
    updater.backward("gf", loss_g)
    updater.step("gf")
    _set_requires_grad(d_for_g, True)

    losses = {"d": loss_d, "d_real": loss_d_real, "d_fake": loss_d_fake, "g_gan": loss_g_gan, "nce": loss_nce,
              "g_total": loss_g}
    if use_identity:
        losses["nce_y"] = loss_nce_y
    return {k: v.detach() for k, v in losses.items()}
