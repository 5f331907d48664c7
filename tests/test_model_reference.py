"""Our networks against an independent, plain functional transcription of the authors' reference code
(taesungp/contrastive-unpaired-translation, models/networks.py): state-dict keys, blur buffers, and the forward
computed from a state dict in the reference's key layout. Also holds the reference-layout state-dict builders
that tests/test_convert_translate.py writes as "official" checkpoints.
"""
from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F

from cutdist.model.networks import NLayerDiscriminator, PatchSampleF, ResnetGenerator


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------ the reference layout, written out by hand


def blur_down_filter(channels: int) -> torch.Tensor:
    a = torch.tensor([1.0, 2.0, 1.0])
    k = a[:, None] * a[None, :]
    return (k / k.sum())[None, None].repeat(channels, 1, 1, 1)


def blur_up_filter(channels: int) -> torch.Tensor:
    a = torch.tensor([1.0, 3.0, 3.0, 1.0])
    k = a[:, None] * a[None, :]
    return (k / k.sum() * 4)[None, None].repeat(channels, 1, 1, 1)


def reference_generator_layout(ngf: int, n_blocks: int, antialias: bool) -> "OrderedDict[str, tuple]":
    """Key -> shape (or 'filt' buffers as tensors) of the reference ResnetGenerator, in its layer order."""
    out: OrderedDict[str, object] = OrderedDict()

    def conv(idx, c_out, c_in, k):
        out[f"model.{idx}.weight"] = (c_out, c_in, k, k)
        out[f"model.{idx}.bias"] = (c_out,)

    conv(1, ngf, 3, 7)                                 # 0 pad, 1 conv, 2 norm, 3 relu
    if antialias:
        conv(4, 2 * ngf, ngf, 3)                       # 4 conv, 5 norm, 6 relu, 7 Downsample
        out["model.7.filt"] = blur_down_filter(2 * ngf)
        conv(8, 4 * ngf, 2 * ngf, 3)                   # 8 conv, 9 norm, 10 relu, 11 Downsample
        out["model.11.filt"] = blur_down_filter(4 * ngf)
        first_block = 12
    else:
        conv(4, 2 * ngf, ngf, 3)                       # 4 conv s2, 5 norm, 6 relu
        conv(7, 4 * ngf, 2 * ngf, 3)                   # 7 conv s2, 8 norm, 9 relu
        first_block = 10
    for i in range(n_blocks):
        for j in (1, 5):                               # [pad, conv, norm, relu, pad, conv, norm]
            out[f"model.{first_block + i}.conv_block.{j}.weight"] = (4 * ngf, 4 * ngf, 3, 3)
            out[f"model.{first_block + i}.conv_block.{j}.bias"] = (4 * ngf,)
    u = first_block + n_blocks
    if antialias:
        out[f"model.{u}.filt"] = blur_up_filter(4 * ngf)   # u Upsample, u+1 conv, u+2 norm, u+3 relu
        conv(u + 1, 2 * ngf, 4 * ngf, 3)
        out[f"model.{u + 4}.filt"] = blur_up_filter(2 * ngf)
        conv(u + 5, ngf, 2 * ngf, 3)
        conv(u + 9, 3, ngf, 7)                          # u+8 pad, u+9 conv, u+10 tanh
    else:
        out[f"model.{u}.weight"] = (4 * ngf, 2 * ngf, 3, 3)   # ConvTranspose2d weight: [in, out, k, k]
        out[f"model.{u}.bias"] = (2 * ngf,)
        out[f"model.{u + 3}.weight"] = (2 * ngf, ngf, 3, 3)
        out[f"model.{u + 3}.bias"] = (ngf,)
        conv(u + 7, 3, ngf, 7)                          # u+6 pad, u+7 conv, u+8 tanh
    return out


def reference_discriminator_layout(ndf: int, n_layers: int, antialias: bool) -> "OrderedDict[str, object]":
    out: OrderedDict[str, object] = OrderedDict()
    idx = 0
    out[f"model.{idx}.weight"], out[f"model.{idx}.bias"] = (ndf, 3, 4, 4), (ndf,)
    idx += 2                                              # conv, lrelu
    if antialias:
        out[f"model.{idx}.filt"] = blur_down_filter(ndf)
        idx += 1
    mult = 1
    for n in range(1, n_layers):
        prev, mult = mult, min(2 ** n, 8)
        out[f"model.{idx}.weight"], out[f"model.{idx}.bias"] = (ndf * mult, ndf * prev, 4, 4), (ndf * mult,)
        idx += 3                                          # conv, norm, lrelu
        if antialias:
            out[f"model.{idx}.filt"] = blur_down_filter(ndf * mult)
            idx += 1
    prev, mult = mult, min(2 ** n_layers, 8)
    out[f"model.{idx}.weight"], out[f"model.{idx}.bias"] = (ndf * mult, ndf * prev, 4, 4), (ndf * mult,)
    idx += 3
    out[f"model.{idx}.weight"], out[f"model.{idx}.bias"] = (1, ndf * mult, 4, 4), (1,)
    return out


def reference_f_layout(in_channels: list[int], nc: int) -> "OrderedDict[str, object]":
    out: OrderedDict[str, object] = OrderedDict()
    for i, c in enumerate(in_channels):
        out[f"mlp_{i}.0.weight"], out[f"mlp_{i}.0.bias"] = (nc, c), (nc,)
        out[f"mlp_{i}.2.weight"], out[f"mlp_{i}.2.bias"] = (nc, nc), (nc,)
    return out


def random_state(layout: "OrderedDict[str, object]", seed: int, scale: float = 0.2) -> "OrderedDict[str, torch.Tensor]":
    """Random tensors for every shape in ``layout``; blur buffers keep their fixed values."""
    gen = torch.Generator().manual_seed(seed)
    return OrderedDict((k, v.clone() if isinstance(v, torch.Tensor) else torch.randn(v, generator=gen) * scale)
                       for k, v in layout.items())


# ------------------------------------------------------------- the reference forward, transcribed plainly


def _inorm(h):
    return F.instance_norm(h, eps=1e-5)


def _blur_down(h):
    return F.conv2d(F.pad(h, (1, 1, 1, 1), mode="reflect"), blur_down_filter(h.shape[1]), stride=2,
                    groups=h.shape[1])


def _blur_up(h):
    y = F.conv_transpose2d(F.pad(h, (1, 1, 1, 1), mode="replicate"), blur_up_filter(h.shape[1]), stride=2,
                           padding=2, groups=h.shape[1])[:, :, 1:, 1:]
    return y[:, :, :-1, :-1]


def reference_generator_forward(sd, x, n_blocks: int, antialias: bool):
    """(image, {layer index: output}) following the reference's layer list."""
    taps = {}

    def conv(h, idx, **kw):
        return F.conv2d(h, sd[f"model.{idx}.weight"], sd[f"model.{idx}.bias"], **kw)

    h = F.pad(x, (3, 3, 3, 3), mode="reflect")
    taps[0] = h
    h = torch.relu(_inorm(conv(h, 1)))
    if antialias:
        h = conv(h, 4, padding=1)
        taps[4] = h
        h = _blur_down(torch.relu(_inorm(h)))
        h = conv(h, 8, padding=1)
        taps[8] = h
        h = _blur_down(torch.relu(_inorm(h)))
        first = 12
    else:
        h = conv(h, 4, stride=2, padding=1)
        taps[4] = h
        h = torch.relu(_inorm(h))
        h = conv(h, 7, stride=2, padding=1)
        taps[7] = h
        h = _inorm(h)
        taps[8] = torch.relu(h)          # the reference's in-place ReLU rewrites the tapped norm output
        h = torch.relu(h)
        first = 10
    for i in range(n_blocks):
        p = f"model.{first + i}.conv_block"
        r = F.pad(h, (1, 1, 1, 1), mode="reflect")
        r = torch.relu(_inorm(F.conv2d(r, sd[f"{p}.1.weight"], sd[f"{p}.1.bias"])))
        r = F.pad(r, (1, 1, 1, 1), mode="reflect")
        r = _inorm(F.conv2d(r, sd[f"{p}.5.weight"], sd[f"{p}.5.bias"]))
        h = h + r
        taps[first + i] = h
    u = first + n_blocks
    if antialias:
        h = torch.relu(_inorm(conv(_blur_up(h), u + 1, padding=1)))
        h = torch.relu(_inorm(conv(_blur_up(h), u + 5, padding=1)))
        out_idx = u + 9
    else:
        for idx in (u, u + 3):
            h = F.conv_transpose2d(h, sd[f"model.{idx}.weight"], sd[f"model.{idx}.bias"], stride=2, padding=1,
                                   output_padding=1)

            h = torch.relu(_inorm(h))
        out_idx = u + 7
    h = F.pad(h, (3, 3, 3, 3), mode="reflect")
    return torch.tanh(conv(h, out_idx)), taps


def reference_discriminator_forward(sd, x, n_layers: int, antialias: bool):
    stride = 1 if antialias else 2
    idx = 0
    h = F.leaky_relu(F.conv2d(x, sd["model.0.weight"], sd["model.0.bias"], stride=stride, padding=1), 0.2)
    idx += 2
    if antialias:
        h = _blur_down(h)
        idx += 1
    for _ in range(1, n_layers):
        h = F.conv2d(h, sd[f"model.{idx}.weight"], sd[f"model.{idx}.bias"], stride=stride, padding=1)
        h = F.leaky_relu(_inorm(h), 0.2)
        idx += 3
        if antialias:
            h = _blur_down(h)
            idx += 1
    h = F.leaky_relu(_inorm(F.conv2d(h, sd[f"model.{idx}.weight"], sd[f"model.{idx}.bias"], padding=1)), 0.2)
    idx += 3
    return F.conv2d(h, sd[f"model.{idx}.weight"], sd[f"model.{idx}.bias"], padding=1)


# ---------------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("antialias", [True, False])
def test_generator_keys_and_buffers_match_reference_layout(antialias):
    g = ResnetGenerator(3, 3, ngf=8, n_blocks=9, antialias=antialias)
    layout = reference_generator_layout(8, 9, antialias)
    ours = g.state_dict()
    assert list(ours) == list(layout)
    for key, want in layout.items():
        if isinstance(want, torch.Tensor):
            assert torch.equal(ours[key], want), key
        else:
            assert tuple(ours[key].shape) == want, key


@pytest.mark.parametrize("antialias", [True, False])
def test_discriminator_keys_match_reference_layout(antialias):
    d = NLayerDiscriminator(3, ndf=8, n_layers=3, antialias=antialias)
    layout = reference_discriminator_layout(8, 3, antialias)
    assert list(d.state_dict()) == list(layout)
    for key, want in layout.items():
        got = d.state_dict()[key]
        assert (torch.equal(got, want) if isinstance(want, torch.Tensor) else tuple(got.shape) == want), key


@pytest.mark.parametrize("antialias,size", [(True, (48, 64)), (False, (48, 64)), (True, (32, 32))])
def test_generator_forward_equals_reference_transcription(antialias, size):
    n_blocks = 5
    sd = random_state(reference_generator_layout(8, n_blocks, antialias), seed=1)
    g = ResnetGenerator(3, 3, ngf=8, n_blocks=n_blocks, antialias=antialias)
    g.load_state_dict(sd)
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(2)) * 2 - 1
    want, want_taps = reference_generator_forward(sd, x, n_blocks, antialias)
    with torch.no_grad():
        got = g(x)
        layers = [0, 4, 8, 12, 14]
        feats = g(x, layers, encode_only=True)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    for layer, feat in zip(layers, feats):
        torch.testing.assert_close(feat, want_taps[layer], rtol=1e-4, atol=1e-5, msg=f"tap {layer}")


@pytest.mark.parametrize("antialias", [True, False])
def test_discriminator_forward_equals_reference_transcription(antialias):
    sd = random_state(reference_discriminator_layout(8, 3, antialias), seed=3)
    d = NLayerDiscriminator(3, ndf=8, n_layers=3, antialias=antialias)
    d.load_state_dict(sd)
    x = torch.rand(2, 3, 64, 80, generator=torch.Generator().manual_seed(4)) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(d(x), reference_discriminator_forward(sd, x, 3, antialias), rtol=1e-4, atol=1e-5)


def test_patch_sampler_equals_reference_transcription():
    sd = random_state(reference_f_layout([3, 16], nc=32), seed=5)
    f = PatchSampleF([3, 16], nc=32)
    f.load_state_dict(sd)
    feats = [torch.randn(2, 3, 6, 5), torch.randn(2, 16, 4, 4)]
    ids = [torch.tensor([7, 0, 29, 3]), torch.tensor([15, 2, 9, 4])]
    got, got_ids = f(feats, 4, ids)
    for i, (feat, idx) in enumerate(zip(feats, ids)):
        rows = feat.permute(0, 2, 3, 1).flatten(1, 2)[:, idx, :].flatten(0, 1)
        h = F.linear(torch.relu(F.linear(rows, sd[f"mlp_{i}.0.weight"], sd[f"mlp_{i}.0.bias"])),
                     sd[f"mlp_{i}.2.weight"], sd[f"mlp_{i}.2.bias"])
        want = h / (h.pow(2).sum(1, keepdim=True).pow(0.5) + 1e-7)
        torch.testing.assert_close(got[i], want)
        assert torch.equal(got_ids[i], idx)
