"""The authors' SinCUT weights -> ``cutdist.convert --mode sincut`` -> ``cutdist.translate``, against the reference.

The "official" files are written from the reference's key layout spelled out here by hand (models/
stylegan_networks.py: StyleGAN2Generator with stylegan2_G_num_downsampling=1, StyleGAN2Discriminator, and CUT's
PatchSampleF), not from cutdist's modules; ``reference_forward`` is the reference generator's arithmetic written
out functionally over that state dict: upfirdn2d as zero insertion + padding + a true convolution with the FIR
kernel, the modulated convolution per image with an all-ones style (grouped over the batch, as theirs), the noise
drawn with ``new_empty(B, 1, H, W).normal_()``. The noise strengths are set non-zero, so the seeded noise is
exercised.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cutdist import convert, translate
from cutdist.model.io import load_model

NGF, NDF, CROP = 4, 8, 32          # G: 32 px -> ch 32, 16 px -> ch 64 (ngf / 32 multiplier); D: 32 px -> ch 64

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def g_channels(res: int) -> int:
    base = {4: 4096, 8: 2048, 16: 1024, 32: 512, 64: 256}[res]
    value = int(round(base * NGF / 32))
    return min(512, value) if res <= 32 else value


def d_channels(res: int) -> int:
    base = {4: 4096, 8: 2048, 16: 1024, 32: 512, 64: 256}[res]
    value = int(base * NDF / 64)
    return min(384, value) if res <= 32 else value


def conv_layer(prefix: str, c_in: int, c_out: int, k: int, down: bool = False, activate: bool = True) -> dict:
    i = 0
    out = {}
    if down:
        out[f"{prefix}.0.kernel"] = (4, 4)
        i = 1
    out[f"{prefix}.{i}.weight"] = (c_out, c_in, k, k)
    if activate:
        out[f"{prefix}.{i + 1}.bias"] = (1, c_out, 1, 1)
    return out


def res_block(prefix: str, c_in: int, c_out: int, down: bool) -> dict:
    out = {**conv_layer(f"{prefix}.conv1", c_in, c_in, 3), **conv_layer(f"{prefix}.conv2", c_in, c_out, 3, down)}
    if down or c_in != c_out:
        out.update(conv_layer(f"{prefix}.skip", c_in, c_out, 1, down, activate=False))
    return out


def generator_layout() -> dict:
    hi, lo = g_channels(CROP), g_channels(CROP // 2)
    layout = {**conv_layer("encoder.convs.1", 3, hi, 1), **res_block("encoder.convs.2", hi, lo, True)}
    for i in (3, 4, 5):
        layout.update(res_block(f"encoder.convs.{i}", lo, lo, False))
    for i in (0, 1, 2):
        layout.update(res_block(f"decoder.convs.{i}", lo, lo, False))
    layout.update({"decoder.convs.3.conv.weight": (1, hi, lo, 3, 3), "decoder.convs.3.conv.blur.kernel": (4, 4),
                   "decoder.convs.3.noise.weight": (1,), "decoder.convs.3.activate.bias": (1, hi, 1, 1)})
    layout.update(conv_layer("decoder.convs.4", hi, 3, 1))
    return layout


def discriminator_layout() -> dict:
    layout = conv_layer("convs.0", 3, d_channels(CROP), 1)
    res, i = CROP, 1
    while res > 4:
        layout.update(res_block(f"convs.{i}", d_channels(res), d_channels(res // 2), True))
        res, i = res // 2, i + 1
    layout.update(conv_layer("final_conv", d_channels(4), d_channels(4), 3))
    c4 = d_channels(4)
    layout.update({"final_linear.0.weight": (c4, c4 * 16), "final_linear.0.bias": (c4,),
                   "final_linear.1.weight": (1, c4), "final_linear.1.bias": (1,)})
    return layout


def f_layout(channels: list[int], nc: int = 16) -> dict:
    out = {}
    for i, c in enumerate(channels):
        out.update({f"mlp_{i}.0.weight": (nc, c), f"mlp_{i}.0.bias": (nc,), f"mlp_{i}.2.weight": (nc, nc),
                    f"mlp_{i}.2.bias": (nc,)})
    return out


def seeded_state(layout: dict, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    row = torch.tensor([1.0, 3.0, 3.0, 1.0])
    out = {}
    for key, shape in layout.items():
        if key.endswith("kernel"):
            k = row[:, None] * row[None, :]
            out[key] = k / k.sum() * (4.0 if ".conv.blur." in key else 1.0)
        elif key.endswith("noise.weight"):
            out[key] = torch.tensor([0.3])
        elif key.endswith("bias"):
            out[key] = 0.1 * torch.randn(shape, generator=g)
        else:
            out[key] = torch.randn(shape, generator=g)
    return out


# ------------------------------------------------------------------------- the reference generator, functionally

def upfirdn(x, kernel, up=1, down=1, pad=(0, 0)):
    b, c, h, w = x.shape
    x = x.reshape(b * c, 1, h, w)
    if up > 1:
        x = x.reshape(b * c, 1, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(b * c, 1, h * up, w * up)
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    x = F.conv2d(x, torch.flip(kernel, [0, 1])[None, None])
    x = x[:, :, ::down, ::down]
    return x.reshape(b, c, x.shape[2], x.shape[3])


def flrelu(x, bias):
    return F.leaky_relu(x + bias, 0.2) * math.sqrt(2)


def econv(x, w, stride=1, padding=0):
    return F.conv2d(x, w / math.sqrt(w[0].numel()), stride=stride, padding=padding)


def res_forward(s, p, x, down):
    y = flrelu(econv(x, s[f"{p}.conv1.0.weight"], padding=1), s[f"{p}.conv1.1.bias"])
    if down:
        y = upfirdn(y, s[f"{p}.conv2.0.kernel"], pad=(2, 2))
        y = flrelu(econv(y, s[f"{p}.conv2.1.weight"], stride=2), s[f"{p}.conv2.2.bias"])
        skip = econv(upfirdn(x, s[f"{p}.skip.0.kernel"], pad=(1, 1)), s[f"{p}.skip.1.weight"], stride=2)
    else:
        y = flrelu(econv(y, s[f"{p}.conv2.0.weight"], padding=1), s[f"{p}.conv2.1.bias"])
        skip = x
    return (y + skip) / math.sqrt(2)


def reference_forward(s, x):
    """Their StyleGAN2Generator.forward(x) over the state dict ``s`` (noise from torch's global generator)."""
    h = flrelu(econv(x, s["encoder.convs.1.0.weight"]), s["encoder.convs.1.1.bias"])
    h = res_forward(s, "encoder.convs.2", h, True)
    for i in (3, 4, 5):
        h = res_forward(s, f"encoder.convs.{i}", h, False)
    for i in (0, 1, 2):
        h = res_forward(s, f"decoder.convs.{i}", h, False)
    batch, c_in, hh, ww = h.shape
    w = s["decoder.convs.3.conv.weight"]                      # (1, out, in, 3, 3)
    c_out = w.shape[1]
    style = torch.ones(batch, 1, c_in, 1, 1)
    weight = w / math.sqrt(c_in * 9) * style
    weight = weight * torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + 1e-8).view(batch, c_out, 1, 1, 1)
    weight = weight.transpose(1, 2).reshape(batch * c_in, c_out, 3, 3)
    out = F.conv_transpose2d(h.reshape(1, batch * c_in, hh, ww), weight, stride=2, groups=batch)
    out = out.view(batch, c_out, out.shape[2], out.shape[3])
    out = upfirdn(out, s["decoder.convs.3.conv.blur.kernel"], pad=(1, 1))
    out = out + s["decoder.convs.3.noise.weight"] * out.new_empty(batch, 1, out.shape[2], out.shape[3]).normal_()
    out = flrelu(out, s["decoder.convs.3.activate.bias"])
    return flrelu(econv(out, s["decoder.convs.4.0.weight"]), s["decoder.convs.4.1.bias"])


# ------------------------------------------------------------------------------------------------------ tests

@pytest.fixture(scope="module")
def official(tmp_path_factory):
    root = tmp_path_factory.mktemp("sincut_official")
    states = {"G": seeded_state(generator_layout(), 1), "D": seeded_state(discriminator_layout(), 2),
              "F": seeded_state(f_layout([3, g_channels(CROP // 2), g_channels(CROP // 2)]), 3)}
    for name, state in states.items():
        torch.save(state, root / f"latest_net_{name}.pth")
    return root, states


def test_convert_infers_sincut_and_keeps_every_tensor(official, tmp_path, capsys):
    root, states = official
    out = tmp_path / "ckpt"
    assert convert.main(["--official-dir", str(root), "--out", str(out), "--mode", "sincut"]) == 0
    assert "SinCUT G ngf=4 n_blocks=6 crop=32; D ndf=8; F nc=16 taps=[0, 2, 4]" in capsys.readouterr().out
    payload, cfg = load_model(out)
    assert (cfg.model.mode, cfg.model.ngf, cfg.model.ndf, cfg.data.crop_size) == ("sincut", NGF, NDF, CROP)
    for part in ("g", "d", "f"):
        assert set(payload[part]) == set(states[part.upper()])
        assert all(torch.equal(payload[part][k], v) for k, v in states[part.upper()].items())
    # without --mode sincut: one line saying so
    assert convert.main(["--official-dir", str(root), "--out", str(tmp_path / "no")]) == 2
    assert "pass --mode sincut" in capsys.readouterr().err


def test_convert_refuses_a_broken_sincut_state(official, tmp_path, capsys):
    root, states = official
    bad = tmp_path / "bad"
    bad.mkdir()
    g = dict(states["G"])
    del g["decoder.convs.3.noise.weight"]
    g["decoder.convs.9.weight"] = torch.zeros(1)
    torch.save(g, bad / "latest_net_G.pth")
    assert convert.main(["--official-dir", str(bad), "--out", str(tmp_path / "x"), "--mode", "sincut"]) == 2
    err = capsys.readouterr().err
    assert "decoder.convs.3.noise.weight" in err and "decoder.convs.9.weight" in err


def test_translate_reproduces_the_reference_generator(official, tmp_path):
    root, states = official
    ckpt = tmp_path / "ckpt"
    assert convert.main(["--official-dir", str(root), "--out", str(ckpt), "--mode", "sincut"]) == 0
    arr = np.random.default_rng(0).integers(0, 256, size=(37, 45, 3), dtype=np.uint8)   # not multiples of 4
    Image.fromarray(arr).save(tmp_path / "in.png")
    assert translate.main(["--checkpoint", str(ckpt), "--input", str(tmp_path / "in.png"),
                           "--output", str(tmp_path / "out"), "--device", "cpu", "--seed", "5"]) == 0
    ours = np.asarray(Image.open(tmp_path / "out" / "in.png"))

    image = Image.fromarray(arr).resize((44, 36), Image.BILINEAR)       # the reference's bilinear rounding to x4
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1).float()[None] / 127.5 - 1
    torch.manual_seed(5)
    with torch.no_grad():
        y = reference_forward(states["G"], x)[0]
    ref = ((y.permute(1, 2, 0).numpy() + 1) / 2 * 255).clip(0, 255).astype(np.uint8)
    assert ours.shape == ref.shape == (36, 44, 3)
    assert np.abs(ours.astype(int) - ref.astype(int)).max() <= 1      # float rounding at the truncation
    # the noise is real: another seed changes the output
    assert translate.main(["--checkpoint", str(ckpt), "--input", str(tmp_path / "in.png"),
                           "--output", str(tmp_path / "out2"), "--device", "cpu", "--seed", "6"]) == 0
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "out2" / "in.png")), ours)
