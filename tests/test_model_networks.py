"""Shapes, tap semantics, eager F, init and build_nets of cutdist.model.networks."""
from __future__ import annotations

import math

import pytest
import torch

from cutdist import config
from cutdist.model.networks import (NLayerDiscriminator, PatchSampleF, ResnetGenerator, build_nets, init_weights)

PAPER_TAPS = [0, 4, 8, 12, 16]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("antialias", [True, False])
@pytest.mark.parametrize("n_blocks", [9, 6, 2])
def test_layer_list_length_matches_config_formula(antialias, n_blocks):
    g = ResnetGenerator(3, 3, ngf=4, n_blocks=n_blocks, antialias=antialias)
    assert len(g.model) == config.generator_num_layers(n_blocks, antialias)


@pytest.mark.parametrize("antialias", [True, False])
@pytest.mark.parametrize("size", [(256, 256), (64, 96)])
def test_output_and_tap_shapes(antialias, size):
    h, w = size
    g = ResnetGenerator(3, 3, ngf=8, n_blocks=9, antialias=antialias)
    x = torch.rand(2, 3, h, w) * 2 - 1
    with torch.no_grad():
        y = g(x)
        feats = g(x, PAPER_TAPS, encode_only=True)
    assert y.shape == x.shape
    assert y.abs().max() <= 1
    channels = g.tap_channels(PAPER_TAPS)
    assert [f.shape[1] for f in feats] == channels
    if antialias:
        # padded RGB, first down-sampling conv (stride 1, full size), second (half size), residual blocks 1 and 5
        assert channels == [3, 16, 32, 32, 32]
        assert [tuple(f.shape[2:]) for f in feats] == [(h + 6, w + 6), (h, w), (h // 2, w // 2), (h // 4, w // 4),
                                                       (h // 4, w // 4)]

    else:
        # strided convs: layer 4 = first conv (half size), 8 = second conv's norm (quarter), 12/16 = blocks 3 and 7
        assert channels == [3, 16, 32, 32, 32]
        assert [tuple(f.shape[2:]) for f in feats] == [(h + 6, w + 6), (h // 2, w // 2)] + [(h // 4, w // 4)] * 3


def test_encode_path_stops_after_last_tap_and_keeps_requested_order():
    g = ResnetGenerator(3, 3, ngf=4, n_blocks=6, antialias=True)
    ran = []
    for i, layer in enumerate(g.model):
        layer.register_forward_hook(lambda mod, inp, out, i=i: ran.append(i))
    x = torch.rand(1, 3, 32, 32)
    feats = g(x, [8, 4], encode_only=True)
    assert max(ran) == 8 and ran == list(range(9))
    assert [f.shape[1] for f in feats] == [16, 8]                     # tap 8 (4 * ngf), then tap 4 (2 * ngf)
    ran.clear()
    y, feats = g(x, [4, 8])
    assert ran == list(range(len(g.model))) and y.shape == x.shape and len(feats) == 2


def test_bad_taps_are_refused():
    g = ResnetGenerator(3, 3, ngf=4, n_blocks=2)
    with pytest.raises(ValueError, match="layers \\[25\\] do not exist"):
        g.tap_channels([0, 25])
    with pytest.raises(ValueError, match="do not exist"):
        g(torch.rand(1, 3, 16, 16), [-1], encode_only=True)


@pytest.mark.parametrize("antialias", [True, False])
def test_discriminator_is_a_70px_patchgan(antialias):
    d = NLayerDiscriminator(3, ndf=8, n_layers=3, antialias=antialias)
    with torch.no_grad():
        assert d(torch.rand(1, 3, 256, 256)).shape == (1, 1, 30, 30)
        assert d(torch.rand(2, 3, 64, 96)).shape[:2] == (2, 1)
    # Instance norm couples every output to the whole image; without it the receptive field is visible.
    for i, layer in enumerate(d.model):
        if isinstance(layer, torch.nn.InstanceNorm2d):
            d.model[i] = torch.nn.Identity()
    x = torch.zeros(1, 3, 256, 256, requires_grad=True)
    d(x)[0, 0, 15, 15].backward()
    rows = x.grad[0].abs().sum(dim=(0, 2)).nonzero()
    # 70x70 receptive field (plus the blur taps of anti-aliasing)
    assert 70 <= int(rows.max() - rows.min() + 1) <= (90 if antialias else 70)


def test_patch_sampler_uses_the_same_locations_and_caps_at_positions():
    torch.manual_seed(0)
    f = init_weights(PatchSampleF([3, 8], nc=16))
    feats = [torch.randn(2, 3, 5, 5), torch.randn(2, 8, 3, 3)]
    gen = torch.Generator().manual_seed(0)
    pooled, ids = f(feats, 16, None, gen)
    assert [p.shape for p in pooled] == [(32, 16), (18, 16)]          # 9 positions < 16 -> all of them
    assert sorted(ids[1].tolist()) == list(range(9))
    # MLP_0 on the features at the sampled locations, divided by (norm + 1e-7) as the reference does: the
    # freshly initialised MLP's outputs are tiny, so the +1e-7 visibly shortens some rows below unit norm.
    picked = feats[0].permute(0, 2, 3, 1).flatten(1, 2)[:, ids[0], :].flatten(0, 1)
    h = f.mlp_0(picked)
    torch.testing.assert_close(pooled[0], h / (h.norm(dim=1, keepdim=True) + 1e-7))
    again, ids_again = f(feats, 16, ids)
    assert all(torch.equal(a, b) for a, b in zip(ids, ids_again))
    torch.testing.assert_close(again[0], pooled[0])
    other, _ = f(feats, 16, None, torch.Generator().manual_seed(0))
    assert torch.equal(other[0], pooled[0])                           # seeded generator -> same patches


def test_patch_sampler_gradients_stay_finite_on_all_zero_features():
    # At init a tap location can be exactly zero (a conv over an all-zero ReLU patch, zero bias); the MLP maps it
    # to zero, and the reference's pow(2).sum().pow(0.5) norm would give NaN gradients there.
    f = init_weights(PatchSampleF([4], nc=8))
    feat = torch.randn(1, 4, 3, 3)
    feat[:, :, 1, 1] = 0
    feat.requires_grad_(True)
    pooled, _ = f([feat], 9, [torch.arange(9)])
    pooled[0].sum().backward()
    assert torch.isfinite(feat.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in f.parameters())


def test_patch_sampler_is_eager_and_checks_its_input():
    f = PatchSampleF([3, 128, 256], nc=256)
    keys = set(f.state_dict())
    assert {"mlp_0.0.weight", "mlp_0.2.bias", "mlp_2.0.weight"} <= keys and len(list(f.parameters())) == 12
    assert f.mlp_1[0].weight.shape == (256, 128)
    with pytest.raises(ValueError, match="built for 3 taps"):
        f([torch.randn(1, 3, 4, 4)], 4)


def test_xavier_init_gain_and_zero_biases():
    torch.manual_seed(0)
    g = init_weights(ResnetGenerator(3, 3, ngf=16, n_blocks=2), gain=0.02)
    conv = g.model[12].conv_block[1]
    fan_in = fan_out = 64 * 9
    expected_std = 0.02 * math.sqrt(2.0 / (fan_in + fan_out))
    assert abs(conv.weight.std().item() / expected_std - 1) < 0.05
    assert all((m.bias == 0).all() for m in g.modules() if isinstance(m, torch.nn.Conv2d))
    # the blur buffers are not touched by init
    assert torch.equal(g.model[7].filt[0, 0], torch.tensor([[1., 2., 1.], [2., 4., 2.], [1., 2., 1.]]) / 16)


def test_build_nets_sizes_f_from_the_taps():
    cfg = config.from_dict({"model.ngf": 8, "model.ndf": 8, "model.n_blocks": 6, "model.netf_nc": 32,
                            "data.root": "x"})
    torch.manual_seed(0)
    nets = build_nets(cfg)
    assert nets.f.in_channels == [3, 16, 32, 32, 32]
    assert nets.f.mlp_0[2].weight.shape == (32, 32)
    torch.manual_seed(0)
    again = build_nets(cfg)
    for a, b in zip(nets.g.state_dict().values(), again.g.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_replicate_pad_equals_replication_pad2d_forward_and_backward(memory_format):
    """The up-sampler's replicate padding (slices + cat, which compile cleanly) is nn.ReplicationPad2d(1):
    equal outputs, gradients equal up to float64 summation order."""
    from cutdist.model.networks import replicate_pad1

    x = torch.randn(2, 5, 7, 6, dtype=torch.float64).contiguous(memory_format=memory_format).requires_grad_()
    ref = x.detach().clone().requires_grad_()
    ours, theirs = replicate_pad1(x), torch.nn.ReplicationPad2d(1)(ref)
    assert torch.equal(ours, theirs)
    grad = torch.randn_like(theirs)
    ours.backward(grad)
    theirs.backward(grad)
    torch.testing.assert_close(x.grad, ref.grad, rtol=0, atol=1e-12)
