"""SinCUT: the single-image model of Park et al. 2020 (Fig. 9; the authors' ``sincut_model.py``) and ONE training
step, read top to bottom:

    D step:    L_D = 1/2 [ GAN(D(G(x).detach()), fake) + GAN(D(y), real) ] + lambda_R1 / 2 * E ||grad_y D(y)||^2
    G+F step:  L_G = lambda_GAN * GAN(D(G(x)), real)
                     + 1/2 [ lambda_X * PatchNCE(G(x), x) + lambda_X * PatchNCE(G(y), y) ]
                     + lambda_idt * || G(y) - y ||_1

GAN = non-saturating (softplus); PatchNCE on encoder taps 0, 2, 4 with one patch per tap per crop and the
negatives drawn from the whole minibatch (every crop comes from the same image): with the batch split over
workers, a rank's negatives are its own crops only (B/N - 1 of them instead of B - 1). R1 is computed on the
real crops every step (no lazy regularisation, as the reference), its gradient by a double backward
(``create_graph=True``) through the unwrapped D; E is the mean over the rank's crops, and DDP / DeepSpeed
average it over ranks.

The networks are the StyleGAN2-style ones of ``cutdist.model.stylegan``, F is CUT's ``PatchSampleF`` (xavier,
gain 0.02, as the reference's ``define_F``). The step uses the same ``Updater`` groups ("d", "gf") as
``cut_step``, so the DDP and DeepSpeed strategies serve both.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cutdist.config import JobConfig, LossConfig
from cutdist.model.cut import Updater, _autocast, _discriminator_precision, _set_requires_grad, patchnce_term
from cutdist.model.losses import GANLoss
from cutdist.model.networks import CUTNets, PatchSampleF, init_weights
from cutdist.model.stylegan import StyleGAN2Discriminator, StyleGAN2Generator


def build_sincut_generator(cfg: JobConfig) -> StyleGAN2Generator:
    return StyleGAN2Generator(ngf=cfg.model.ngf, crop_size=cfg.data.crop_size, n_downsampling=1,
                              n_blocks=cfg.model.n_blocks)


def build_sincut_nets(cfg: JobConfig) -> CUTNets:
    """G and D with their own (StyleGAN2) initialisation, F sized from the taps and xavier-initialised."""
    g = build_sincut_generator(cfg)
    d = StyleGAN2Discriminator(ndf=cfg.model.ndf, crop_size=cfg.data.crop_size)
    f = init_weights(PatchSampleF(g.tap_channels(list(cfg.loss.nce_layers)), nc=cfg.model.netf_nc),
                     cfg.model.init_gain)
    return CUTNets(g=g, d=d, f=f)


def r1_penalty(pred_real: torch.Tensor, real: torch.Tensor, lambda_r1: float) -> torch.Tensor:
    """lambda_R1 / 2 * mean over images of ||d sum(D(y)) / d y||^2, differentiable (create_graph) so that its
    gradient reaches D's weights. ``real`` must require grad and ``pred_real`` be computed from it."""
    (grad,) = torch.autograd.grad(_at_least_fp32(pred_real).sum(), real, create_graph=True)
    return _at_least_fp32(grad).pow(2).flatten(1).sum(1).mean() * (lambda_r1 * 0.5)


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def sincut_step(nets: CUTNets, updater: Updater, real_a: torch.Tensor, real_b: torch.Tensor, loss_cfg: LossConfig,
                *, generator: torch.Generator | None, precision: str = "fp32", bf16_discriminator: bool = False,
                d_for_g: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """One SinCUT iteration (see the module docstring). Returns DETACHED losses: ``d``, ``d_real``, ``d_fake``,
    ``d_r1``, ``g_gan``, ``nce``, ``nce_y``, ``idt``, ``g_total`` (``nce`` and ``nce_y`` include lambda_X, ``d``
    includes R1, as the reference logs them). Arguments as ``cut_step``."""
    if loss_cfg.lambda_x is None or loss_cfg.lambda_r1 is None or loss_cfg.lambda_identity_l1 is None:
        raise ValueError("sincut_step: loss_cfg has unresolved preset fields; load the config through cutdist.config")
    d_for_g = nets.d if d_for_g is None else d_for_g
    gan = GANLoss(loss_cfg.gan_mode)
    autocast = _autocast(real_a.device, precision)
    d_precision, d_input = _discriminator_precision(real_a.device, precision, bf16_discriminator)
    n_a = real_a.shape[0]
    layers = list(loss_cfg.nce_layers)
    use_nce = loss_cfg.lambda_x > 0

    # G over x and y together; the encoder taps of this forward are PatchNCE's keys (G is not updated before they
    # are used, and the encoder has no randomness: only the decoder injects noise).
    real = torch.cat((real_a, real_b), dim=0)
    with autocast:
        fake, feat_k = nets.g(real, layers)
    fake_b, idt_b = fake[:n_a], fake[n_a:]

    # D step, with R1 on the real crops (their gradient needs a graph to the input).
    _set_requires_grad(d_for_g, True)
    updater.zero_grad("d")
    real_b_grad = real_b.detach().requires_grad_(True)
    with autocast, d_precision:
        pred = nets.d(d_input(torch.cat((fake_b.detach(), real_b), dim=0)))
        loss_d_fake = gan(pred[:n_a], False)
        loss_d_real = gan(pred[n_a:], True)
        loss_gan_d = (loss_d_fake + loss_d_real) * 0.5
        # R1 through the unwrapped D, in a forward of its own on the real crops (D is deterministic: the same
        # D(y) as above). DeepSpeed hooks the backward of its engine's outputs and would run its gradient
        # reduction at the end of R1's inner autograd.grad; the parameter gradients of R1 still reach DDP's and
        # DeepSpeed's reduction through the outer backward, like every other term's.
        if loss_cfg.lambda_r1 > 0:
            loss_r1 = r1_penalty(d_for_g(d_input(real_b_grad)), real_b_grad, loss_cfg.lambda_r1)
        else:
            loss_r1 = loss_gan_d.new_zeros(())
    loss_d = loss_gan_d + loss_r1
    updater.backward("d", loss_d)
    updater.step("d")

    # G+F step through the (just updated) unwrapped D.
    _set_requires_grad(d_for_g, False)
    updater.zero_grad("gf")
    zero = real_a.new_zeros((), dtype=torch.float32)
    with autocast:
        with d_precision:
            loss_g_gan = gan(d_for_g(d_input(fake_b)), True) * loss_cfg.lambda_gan if loss_cfg.lambda_gan > 0 else zero
        if use_nce:
            feat_q = nets.g(fake, layers, encode_only=True)
            loss_nce = patchnce_term(nets, [k[:n_a] for k in feat_k], [q[:n_a] for q in feat_q], loss_cfg,
                                     generator=generator)
            if loss_cfg.identity:
                loss_nce_y = patchnce_term(nets, [k[n_a:] for k in feat_k], [q[n_a:] for q in feat_q], loss_cfg,
                                           generator=generator)
                loss_nce_both = (loss_nce + loss_nce_y) * 0.5
            else:
                loss_nce_y, loss_nce_both = zero, loss_nce
        else:
            loss_nce = loss_nce_y = loss_nce_both = zero
        loss_idt = (F.l1_loss(idt_b.float(), real_b.float()) * loss_cfg.lambda_identity_l1
                    if loss_cfg.lambda_identity_l1 > 0 else zero)
        loss_g = loss_g_gan + loss_nce_both + loss_idt
    updater.backward("gf", loss_g)
    updater.step("gf")
    _set_requires_grad(d_for_g, True)

    losses = {"d": loss_d, "d_real": loss_d_real, "d_fake": loss_d_fake, "d_r1": loss_r1, "g_gan": loss_g_gan,
              "nce": loss_nce, "nce_y": loss_nce_y, "idt": loss_idt, "g_total": loss_g}
    return {k: v.detach() for k, v in losses.items()}
