"""CUT's networks, laid out exactly as the authors' reference code (taesungp/contrastive-unpaired-translation,
models/networks.py) so that its released state dicts load key for key:

- ``ResnetGenerator``: the CycleGAN ResNet generator with anti-aliased down/up-sampling. Its layers form ONE
  ``nn.Sequential`` (``G.model``) whose indices are the PatchNCE tap indices of published configs
  (0 = padded RGB input, 4 and 8 = the two down-sampling convs, 12 and 16 = residual blocks 1 and 5).
- ``NLayerDiscriminator``: the 70x70 PatchGAN (instance norm, anti-aliased).
- ``PatchSampleF``: the patch sampler + per-tap 2-layer MLP (``mlp_<i>.0`` / ``mlp_<i>.2``), L2-normalised.
  Unlike the reference it is built eagerly from the taps' channel counts, so DDP/DeepSpeed can wrap it at once.
- ``init_weights`` (xavier, gain 0.02) and ``build_nets(cfg) -> CUTNets``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from cutdist.config import JobConfig

# The reference's blur kernels: binomial rows [1,2,1] (down) and [1,3,3,1] (up), outer product, normalised.
_BINOMIAL = {3: [1.0, 2.0, 1.0], 4: [1.0, 3.0, 3.0, 1.0]}


def binomial_filter(size: int) -> torch.Tensor:
    row = torch.tensor(_BINOMIAL[size], dtype=torch.float64)
    filt = row[:, None] * row[None, :]
    return (filt / filt.sum()).float()


class Downsample(nn.Module):
    """Blur-pool (Zhang 2019): reflect-pad 1, depthwise [1,2,1]^2 blur, stride 2. Buffer ``filt`` as the reference."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.pad = nn.ReflectionPad2d(1)
        self.register_buffer("filt", binomial_filter(3)[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self.pad(x), self.filt.to(x.dtype), stride=2, groups=x.shape[1])


class Upsample(nn.Module):
    """Blurred x2 up-sampling: replicate-pad 1, depthwise transposed conv with [1,3,3,1]^2 * 4, trimmed as the
    reference does (output exactly 2H x 2W). Buffer ``filt`` as the reference."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("filt", (binomial_filter(4) * 4)[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # filt_size 4: padding = 1 + (4 - 1) // 2 = 2; then drop the first and (even filter) last row/column.
        y = F.conv_transpose2d(replicate_pad1(x), self.filt.to(x.dtype), stride=2, padding=2, groups=x.shape[1])
        return y[:, :, 1:-1, 1:-1]


def replicate_pad1(x: torch.Tensor) -> torch.Tensor:
    """nn.ReplicationPad2d(1), built from slices and cat. Under torch.compile with channels_last inputs (FastCUT's
    flipped step) the fake kernel of aten.replication_pad2d_backward disagrees with the real one on strides
    (torch 2.14: aot_eager fails on a view, inductor on its size/stride assert); cat and slicing compile cleanly."""
    x = torch.cat((x[:, :, :1], x, x[:, :, -1:]), dim=2)
    return torch.cat((x[:, :, :, :1], x, x[:, :, :, -1:]), dim=3)


def _contiguous_grad(grad: torch.Tensor) -> torch.Tensor:
    return grad.contiguous()


class InstanceNorm2d(nn.InstanceNorm2d):
    """``nn.InstanceNorm2d`` whose incoming gradient is made contiguous before its backward runs.

    torch's CPU kernel computes the input gradient wrongly when the batch is 1 and the incoming gradient has
    channels_last strides (torch 2.14: ~140 % relative error; benchmarks/instance_norm_channels_last_bug.py), which
    is what a channels_last network hands it. At batch >= 2 torch copies that gradient to contiguous itself (its
    reshape to (1, N*C, H, W) cannot be a view), so the copy costs nothing there; at batch 1 it is one copy of one
    activation. The forward, the outputs and the state dict are those of ``nn.InstanceNorm2d``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        if y.requires_grad:
            y.register_hook(_contiguous_grad)
        return y


def _norm(channels: int) -> nn.Module:
    # The reference's 'instance' norm: no affine parameters, no running statistics (nothing in the state dict).
    return InstanceNorm2d(channels, affine=False, track_running_stats=False)


class ResnetBlock(nn.Module):
    """x + [pad, conv3, norm, relu, pad, conv3, norm](x): keys ``conv_block.1.*`` and ``conv_block.5.*``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=True), _norm(dim), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=True), _norm(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """The ResNet generator as one indexed layer list (``self.model``), in the reference's order:

    stem [pad3, conv7, norm, relu] ; 2 x down [conv3 (stride 1), norm, relu, Downsample] (antialias) or
    [conv3 stride 2, norm, relu] ; n_blocks x ResnetBlock ; 2 x up [Upsample, conv3, norm, relu] (antialias) or
    [convT3 stride 2, norm, relu] ; [pad3, conv7, tanh].

    ReLUs are in place as in the reference; this matters for taps on a norm layer that is not the last tap
    (the tapped tensor then holds the ReLU'd values, exactly as the published configs saw it).
    """

    def __init__(self, input_nc: int = 3, output_nc: int = 3, ngf: int = 64, n_blocks: int = 9,
                 antialias: bool = True) -> None:
        super().__init__()
        if n_blocks < 0:
            raise ValueError(f"ResnetGenerator: n_blocks must be >= 0, got {n_blocks}")
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, 7, bias=True), _norm(ngf),
                                   nn.ReLU(True)]
        for i in range(2):
            c_in, c_out = ngf * 2 ** i, ngf * 2 ** (i + 1)
            if antialias:
                layers += [nn.Conv2d(c_in, c_out, 3, stride=1, padding=1, bias=True), _norm(c_out), nn.ReLU(True),
                           Downsample(c_out)]
            else:
                layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=True), _norm(c_out), nn.ReLU(True)]
        layers += [ResnetBlock(ngf * 4) for _ in range(n_blocks)]
        for i in range(2):
            c_in, c_out = ngf * 2 ** (2 - i), ngf * 2 ** (1 - i)
            if antialias:
                layers += [Upsample(c_in), nn.Conv2d(c_in, c_out, 3, stride=1, padding=1, bias=True), _norm(c_out),
                           nn.ReLU(True)]
            else:
                layers += [nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=1, bias=True),
                           _norm(c_out), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        self.input_nc = input_nc

    def tap_channels(self, layers: list[int]) -> list[int]:
        """Channel count of the output of each layer in ``layers``, without running a forward."""
        self._check_layers(layers)
        channels, after = self.input_nc, []
        for layer in self.model:
            for module in layer.modules():
                if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                    channels = module.out_channels
            after.append(channels)
        return [after[i] for i in layers]

    def _check_layers(self, layers: list[int]) -> None:
        bad = [i for i in layers if not 0 <= i < len(self.model)]
        if bad:
            raise ValueError(f"ResnetGenerator: layers {bad} do not exist (this generator has layers "
                             f"0..{len(self.model) - 1})")

    def forward(self, x: torch.Tensor, layers: list[int] | None = None, encode_only: bool = False):
        """``G(x)`` -> image in [-1, 1]. ``G(x, layers, encode_only=True)`` -> the outputs of ``layers`` (in the
        order given), stopping after the deepest one (the decoder is not run). ``G(x, layers)`` -> (image, feats)."""
        if not layers:
            return self.model(x)
        self._check_layers(layers)
        wanted = set(layers)
        last = max(layers)
        found: dict[int, torch.Tensor] = {}
        feat = x
        for index, layer in enumerate(self.model):
            feat = layer(feat)
            if index in wanted:
                found[index] = feat
            if index == last:
                if encode_only:
                    break
                # Running on would change the deepest tap if the next layer is an in-place ReLU: keep the value
                # encode_only returns, so a full forward's taps can stand in for an encoder pass.
                if index + 1 < len(self.model) and getattr(self.model[index + 1], "inplace", False):
                    found[index] = feat.clone()
        feats = [found[i] for i in layers]
        return feats if encode_only else (feat, feats)


class NLayerDiscriminator(nn.Module):
    """PatchGAN: [conv4 (stride 1), lrelu, Downsample] then (n_layers - 1) x [conv4, norm, lrelu, Downsample]
    (channels doubling up to 8 x ndf), [conv4, norm, lrelu], conv4 -> 1 channel. n_layers=3 sees 70x70 patches.
    Without antialias the convs have stride 2 and there is no Downsample, as the reference."""

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3, antialias: bool = True) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"NLayerDiscriminator: n_layers must be >= 1, got {n_layers}")
        stride = 1 if antialias else 2
        seq: list[nn.Module] = [nn.Conv2d(input_nc, ndf, 4, stride=stride, padding=1), nn.LeakyReLU(0.2, True)]
        if antialias:
            seq.append(Downsample(ndf))
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2 ** n, 8)
            seq += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1, bias=True), _norm(ndf * mult),
                    nn.LeakyReLU(0.2, True)]
            if antialias:
                seq.append(Downsample(ndf * mult))
        prev, mult = mult, min(2 ** n_layers, 8)
        seq += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=1, padding=1, bias=True), _norm(ndf * mult),
                nn.LeakyReLU(0.2, True), nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1)]
        self.model = nn.Sequential(*seq)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """The reference's ``Normalize(2)``: x / (||x||_2 + 1e-7) over dim 1, here always in float32.

    The reference computes the norm as ``x.pow(2).sum(1).pow(0.5)``, whose gradient is NaN for an all-zero row
    (0 * inf). Such rows happen: a tap conv reading an all-zero ReLU patch outputs exactly its bias, 0 at init,
    and F's MLP maps zero to zero at init (the likely cause of NaN runs seen with ngf=8 on a GPU).
    ``vector_norm`` gives the same values (to float rounding) and a zero subgradient there.
    """
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.float()
        norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)
        return x.div(norm + 1e-7)


class PatchSampleF(nn.Module):
    """PatchNCE's sampler and projection heads H_l: for each tap, pick ``num_patches`` random spatial locations
    (the same ones for every image of the batch, as the reference), run the tap's MLP C -> nc -> nc, L2-normalise.

    ``forward(feats, num_patches, patch_ids=None, generator=None) -> (features, patch_ids)``: pass the ids returned
    for the keys to sample the queries at the same locations. Ids are drawn on the features' device with
    ``generator`` (no host sync). More patches than positions -> all positions (in random order).
    """

    def __init__(self, in_channels: list[int], nc: int = 256) -> None:
        super().__init__()
        if not in_channels:
            raise ValueError("PatchSampleF: needs the channel count of at least one tap")
        self.in_channels = list(in_channels)
        self.nc = nc
        for i, c in enumerate(self.in_channels):
            setattr(self, f"mlp_{i}", nn.Sequential(nn.Linear(c, nc), nn.ReLU(), nn.Linear(nc, nc)))

    def forward(self, feats: list[torch.Tensor], num_patches: int, patch_ids: list[torch.Tensor] | None = None,
                generator: torch.Generator | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        if len(feats) != len(self.in_channels):
            raise ValueError(f"PatchSampleF: built for {len(self.in_channels)} taps, got {len(feats)} feature maps")
        if num_patches < 1:
            raise ValueError(f"PatchSampleF: num_patches must be >= 1, got {num_patches}")
        out_feats, out_ids = [], []
        for i, feat in enumerate(feats):
            flat = feat.flatten(2)                                   # [B, C, H*W]
            if patch_ids is not None:
                ids = patch_ids[i]
            else:
                ids = torch.randperm(flat.shape[2], device=feat.device, generator=generator)
                ids = ids[: min(num_patches, flat.shape[2])]
            # Gather the P columns first, then transpose: no [B, H*W, C] copy of the whole map.
            sample = flat[:, :, ids].transpose(1, 2).flatten(0, 1)  # [B * P, C], image-major
            sample = getattr(self, f"mlp_{i}")(sample)
            out_feats.append(l2_normalize(sample))
            out_ids.append(ids)
        return out_feats, out_ids


def init_weights(net: nn.Module, gain: float = 0.02) -> nn.Module:
    """The reference's ``init_type='xavier'``: xavier-normal weights (gain) on every Conv*/Linear, zero biases."""
    for module in net.modules():
        name = type(module).__name__
        if ("Conv" in name or "Linear" in name) and getattr(module, "weight", None) is not None:
            nn.init.xavier_normal_(module.weight.data, gain=gain)
            if getattr(module, "bias", None) is not None:
                nn.init.constant_(module.bias.data, 0.0)
    return net


@dataclass
class CUTNets:
    """The three networks of one CUT model; any of them may later be wrapped (DDP, DeepSpeed, compile)."""
    g: nn.Module
    d: nn.Module
    f: nn.Module


def build_generator(cfg: JobConfig) -> ResnetGenerator:
    m = cfg.model
    return ResnetGenerator(3, 3, ngf=m.ngf, n_blocks=m.n_blocks, antialias=m.antialias)


def build_nets(cfg: JobConfig) -> CUTNets:
    """G, D and F from ``cfg.model`` (F sized from ``cfg.loss.nce_layers``), initialised as the reference."""
    m = cfg.model
    g = init_weights(build_generator(cfg), m.init_gain)
    d = init_weights(NLayerDiscriminator(3, ndf=m.ndf, n_layers=m.n_layers_d, antialias=m.antialias), m.init_gain)
    f = init_weights(PatchSampleF(g.tap_channels(list(cfg.loss.nce_layers)), nc=m.netf_nc), m.init_gain)
    return CUTNets(g=g, d=d, f=f)
