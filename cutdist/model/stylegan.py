"""SinCUT's networks (Park et al. 2020, Sec. 5 / Fig. 9): the StyleGAN2-style encoder-decoder generator and
discriminator of the authors' single-image model, laid out so that their state dicts
(taesungp/contrastive-unpaired-translation, models/stylegan_networks.py, netG/netD ``stylegan2``) load key for key.

Building blocks (StyleGAN2, Karras et al. 2020): equalized-learning-rate convolutions and linears (weights drawn
from N(0, 1), scaled by 1/sqrt(fan_in) at every forward), FIR blur [1,3,3,1] before every stride-2 convolution and
after the stride-2 transposed one, leaky ReLU(0.2) with a learned bias and gain sqrt(2) ("fused" leaky ReLU),
residual blocks averaging skip and residual by 1/sqrt(2), and in the decoder a demodulated convolution with
noise injection. These nets are initialised by their constructors (N(0, 1) weights, zero biases, zero noise
strength); the reference skips its xavier ``init_weights`` for them, and so does ``build_sincut_nets``.

Layouts (ngf 10, ndf 8, 64 x 64 crops, one down-sampling; keys as the reference):

- ``StyleGAN2Generator.encoder.convs``: 0 identity (the RGB input), 1 ConvLayer 1x1 (3 -> C), 2 ResBlock down
  (C -> C'), 3..5 ResBlocks at half resolution. PatchNCE taps 0, 2, 4 index this list.
- ``StyleGAN2Generator.decoder.convs``: 3 ResBlocks, StyledConv up (C' -> C, noise injection), ConvLayer 1x1
  (C -> 3, with the fused leaky ReLU: the output is not squashed by a tanh, as the reference).
- ``StyleGAN2Discriminator``: ``convs`` = ConvLayer 1x1 then ResBlock downs from the crop size to 4 x 4,
  ``final_conv`` 3x3, ``final_linear`` = EqualLinear(16 C -> C, fused lrelu), EqualLinear(C -> 1): one logit per
  image; it takes exactly ``size`` x ``size`` inputs.

Where the reference calls ``.cuda()`` (the style-less modulated convolution's all-ones style) these modules run
on whatever device their input is on. The noise of ``NoiseInjection`` is drawn from torch's global generator
on the input's device exactly as the reference draws it (``new_empty(B, 1, H, W).normal_()``): seeding torch the
same way gives the same noise.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

BLUR_KERNEL = (1.0, 3.0, 3.0, 1.0)
SQRT2 = math.sqrt(2.0)


def blur_kernel_2d(taps: tuple[float, ...] = BLUR_KERNEL, gain: float = 1.0) -> torch.Tensor:
    """The separable FIR filter as a normalised 2-D kernel (outer product / sum), times ``gain``."""
    row = torch.tensor(taps, dtype=torch.float32)
    k = row[None, :] * row[:, None]
    return k / k.sum() * gain


def fir_filter(x: torch.Tensor, kernel: torch.Tensor, pad: tuple[int, int]) -> torch.Tensor:
    """Pad (pad0 before, pad1 after, both axes) with zeros, then correlate every channel with the flipped
    ``kernel`` (true convolution, StyleGAN2's upfirdn2d with up = down = 1)."""
    b, c, h, w = x.shape
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    weight = torch.flip(kernel, [0, 1]).to(x.dtype).expand(c, 1, *kernel.shape)
    return F.conv2d(x, weight, groups=c)


class Blur(nn.Module):
    """FIR blur with zero padding; buffer ``kernel`` as the reference (x4 when it follows a x2 up-sampling)."""

    def __init__(self, pad: tuple[int, int], upsample_factor: int = 1) -> None:
        super().__init__()
        self.register_buffer("kernel", blur_kernel_2d(gain=float(upsample_factor ** 2)))
        self.pad = tuple(pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fir_filter(x, self.kernel, self.pad)


class FusedLeakyReLU(nn.Module):
    """leaky_relu(x + bias, 0.2) * sqrt(2); ``bias`` of shape (1, C, 1, 1) as the reference."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x + self.bias, 0.2) * SQRT2


class EqualConv2d(nn.Module):
    """Conv with weights N(0, 1) scaled by 1/sqrt(in * k * k) at run time (equalized learning rate)."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int = 1, padding: int = 0, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, k, k))
        self.bias = nn.Parameter(torch.zeros(c_out)) if bias else None
        self.scale = 1.0 / math.sqrt(c_in * k * k)
        self.stride, self.padding = stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, stride=self.stride, padding=self.padding)


class EqualLinear(nn.Module):
    """Linear with N(0, 1) weights scaled by 1/sqrt(in); with ``activate`` the bias goes into a fused leaky ReLU."""

    def __init__(self, d_in: int, d_out: int, activate: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d_out, d_in))
        self.bias = nn.Parameter(torch.zeros(d_out))
        self.scale = 1.0 / math.sqrt(d_in)
        self.activate = activate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activate:
            return F.leaky_relu(F.linear(x, self.weight * self.scale) + self.bias, 0.2) * SQRT2
        return F.linear(x, self.weight * self.scale, self.bias)


class ConvLayer(nn.Sequential):
    """[Blur (down only)], EqualConv2d (stride 2 when down), [FusedLeakyReLU]: keys ``0.*``, ``1.*``, ``2.*`` in
    that order. With ``activate`` the conv has no bias of its own (the activation's bias stands in)."""

    def __init__(self, c_in: int, c_out: int, k: int, down: bool = False, bias: bool = True,
                 activate: bool = True) -> None:
        layers: list[nn.Module] = []
        if down:
            p = (len(BLUR_KERNEL) - 2) + (k - 1)
            layers.append(Blur(((p + 1) // 2, p // 2)))
            layers.append(EqualConv2d(c_in, c_out, k, stride=2, padding=0, bias=bias and not activate))
        else:
            layers.append(EqualConv2d(c_in, c_out, k, stride=1, padding=k // 2, bias=bias and not activate))
        if activate:
            if not bias:
                raise ValueError("ConvLayer: an activated layer without bias is not part of SinCUT's networks")
            layers.append(FusedLeakyReLU(c_out))
        super().__init__(*layers)


class ResBlock(nn.Module):
    """(conv2(conv1(x)) + skip(x)) / sqrt(2); conv2 and skip down-sample when ``down``; skip is a bias-free 1x1
    conv when the shape changes, else the identity."""

    def __init__(self, c_in: int, c_out: int, down: bool) -> None:
        super().__init__()
        self.conv1 = ConvLayer(c_in, c_in, 3)
        self.conv2 = ConvLayer(c_in, c_out, 3, down=down)
        self.skip = (ConvLayer(c_in, c_out, 1, down=down, bias=False, activate=False)
                     if down or c_in != c_out else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.conv2(self.conv1(x)) + self.skip(x)) / SQRT2


class UpModulatedConv2d(nn.Module):
    """The reference's ModulatedConv2d with no style (all-ones modulation), demodulated, up-sampling x2:
    transposed conv stride 2, then Blur (x4 kernel, pad (1, 1) for k = 3). Weight shape (1, out, in, k, k).

    With no style the demodulated weight is the same for every image, so one ordinary (transposed) convolution
    over the batch replaces the reference's per-image grouped one: the same arithmetic."""

    def __init__(self, c_in: int, c_out: int, k: int = 3) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, c_out, c_in, k, k))
        self.scale = 1.0 / math.sqrt(c_in * k * k)
        p = (len(BLUR_KERNEL) - 2) - (k - 1)
        self.blur = Blur(((p + 1) // 2 + 1, p // 2 + 1), upsample_factor=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight[0] * self.scale                                   # [out, in, k, k]
        w = w * torch.rsqrt(w.pow(2).sum([1, 2, 3], keepdim=True) + 1e-8)
        out = F.conv_transpose2d(x, w.transpose(0, 1), stride=2, padding=0)
        return self.blur(out)


class NoiseInjection(nn.Module):
    """x + weight * N(0, 1) noise of shape (B, 1, H, W); ``weight`` starts at 0 as the reference."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        return x + self.weight * x.new_empty(b, 1, h, w).normal_()


class StyledConv(nn.Module):
    """UpModulatedConv2d -> NoiseInjection -> FusedLeakyReLU (keys ``conv.*``, ``noise.weight``, ``activate.bias``)."""

    def __init__(self, c_in: int, c_out: int, inject_noise: bool = True) -> None:
        super().__init__()
        self.conv = UpModulatedConv2d(c_in, c_out, 3)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(c_out)
        self.inject_noise = inject_noise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        if self.inject_noise:
            out = self.noise(out)
        return self.activate(out)


def generator_channels(ngf: int) -> dict[int, int]:
    """The reference's channel table for G: resolution -> channels (multiplier ngf / 32, rounded)."""
    mult = ngf / 32
    table = {4: 4096, 8: 2048, 16: 1024, 32: 512}
    out = {r: min(512, int(round(v * mult))) for r, v in table.items()}
    out.update({r: int(round(v * mult)) for r, v in {64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}.items()})
    return out


def discriminator_channels(ndf: int) -> dict[int, int]:
    """The reference's channel table for D (multiplier ndf / 64, truncated, capped at 384 up to 32 px)."""
    mult = ndf / 64
    out = {r: min(384, int(v * mult)) for r, v in {4: 4096, 8: 2048, 16: 1024, 32: 512}.items()}
    out.update({r: int(v * mult) for r, v in {64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}.items()})
    return out


def power_of_two_size(crop_size: int) -> int:
    """The reference's ``2 ** rint(log2(min(load_size, crop_size)))`` (SinCUT: load 1024 > crop)."""
    return 2 ** int(round(math.log2(crop_size)))


class StyleGAN2Generator(nn.Module):
    """Encoder-decoder: see the module docstring. ``G(x)`` -> image; ``G(x, layers)`` -> (image, taps);
    ``G(x, layers, encode_only=True)`` -> the taps only (the encoder stops at the deepest one)."""

    def __init__(self, ngf: int = 10, crop_size: int = 64, n_downsampling: int = 1, n_blocks: int = 6,
                 inject_noise: bool = True) -> None:
        super().__init__()
        if n_downsampling < 1 or n_blocks < 0:
            raise ValueError(f"StyleGAN2Generator: need n_downsampling >= 1 and n_blocks >= 0, got "
                             f"{n_downsampling}, {n_blocks}")
        ch = generator_channels(ngf)
        res = power_of_two_size(crop_size)
        if res // 2 ** n_downsampling not in ch or res not in ch:
            raise ValueError(f"StyleGAN2Generator: crop {crop_size} with {n_downsampling} down-samplings is outside "
                             "the channel table (4..1024 px)")
        enc: list[nn.Module] = [nn.Identity(), ConvLayer(3, ch[res], 1)]
        for _ in range(n_downsampling):
            enc.append(ResBlock(ch[res], ch[res // 2], down=True))
            res //= 2
        enc += [ResBlock(ch[res], ch[res], down=False) for _ in range(n_blocks // 2)]
        dec: list[nn.Module] = [ResBlock(ch[res], ch[res], down=False) for _ in range(n_blocks // 2)]
        for _ in range(n_downsampling):
            dec.append(StyledConv(ch[res], ch[res * 2], inject_noise=inject_noise))
            res *= 2
        dec.append(ConvLayer(ch[res], 3, 1))
        self.encoder = nn.Module()
        self.encoder.convs = nn.Sequential(*enc)
        self.decoder = nn.Module()
        self.decoder.convs = nn.Sequential(*dec)
        self.n_downsampling = n_downsampling

    def tap_channels(self, layers: list[int]) -> list[int]:
        """Channel count of each encoder layer in ``layers`` (layer 0 is the RGB input)."""
        self._check_layers(layers)
        channels, after = 3, []
        for layer in self.encoder.convs:
            for module in layer.modules():
                if isinstance(module, EqualConv2d):
                    channels = module.weight.shape[0]
            after.append(channels)
        return [after[i] for i in layers]

    def _check_layers(self, layers: list[int]) -> None:
        n = len(self.encoder.convs)
        bad = [i for i in layers if not 0 <= i < n]
        if bad:
            raise ValueError(f"StyleGAN2Generator: encoder layers {bad} do not exist (layers 0..{n - 1})")

    def forward(self, x: torch.Tensor, layers: list[int] | None = None, encode_only: bool = False):
        layers = list(layers or [])
        self._check_layers(layers)
        wanted, found = set(layers), {}
        feat = x
        last = max(layers) if (encode_only and layers) else len(self.encoder.convs) - 1
        for index, layer in enumerate(self.encoder.convs):
            feat = layer(feat)
            if index in wanted:
                found[index] = feat
            if index == last:
                break
        feats = [found[i] for i in layers]
        if encode_only:
            return feats
        image = self.decoder.convs(feat)
        return (image, feats) if layers else image


class StyleGAN2Discriminator(nn.Module):
    """The reference's netD ``stylegan2`` (see the module docstring); one logit per ``size`` x ``size`` image."""

    def __init__(self, ndf: int = 8, crop_size: int = 64) -> None:
        super().__init__()
        ch = discriminator_channels(ndf)
        size = power_of_two_size(crop_size)
        if size not in ch or size < 8:
            raise ValueError(f"StyleGAN2Discriminator: crop {crop_size} is outside 8..1024 px")
        convs: list[nn.Module] = [ConvLayer(3, ch[size], 1)]
        c_in = ch[size]
        for i in range(int(math.log2(size)), 2, -1):
            convs.append(ResBlock(c_in, ch[2 ** (i - 1)], down=True))
            c_in = ch[2 ** (i - 1)]
        self.convs = nn.Sequential(*convs)
        self.final_conv = ConvLayer(c_in, ch[4], 3)
        self.final_linear = nn.Sequential(EqualLinear(ch[4] * 16, ch[4], activate=True), EqualLinear(ch[4], 1))
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.size, self.size):
            raise ValueError(f"StyleGAN2Discriminator: built for {self.size}x{self.size} crops, got "
                             f"{tuple(x.shape[-2:])}")
        out = self.final_conv(self.convs(x))
        return self.final_linear(out.flatten(1))
