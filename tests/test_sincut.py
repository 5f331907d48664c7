"""SinCUT: networks (shapes, taps, reference keys), R1 against hand computations, a seeded step, the zoom-and-patch
crops against the reference's PIL pipeline, the single-image sources and the sincut preset."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cutdist import config
from cutdist.data.manifest import DataError
from cutdist.data.single_image import SingleImageStream, SingleImages, ZoomAndPatch, load_single_images, whole_image
from cutdist.data.synth_single import synth_single_pair, write_single_pair
from cutdist.model.cut import LocalUpdater, make_optimizers
from cutdist.model.sincut import build_sincut_nets, r1_penalty, sincut_step
from cutdist.model.stylegan import StyleGAN2Discriminator, StyleGAN2Generator


def sincut_cfg(**values):
    return config.from_dict({"model.mode": "sincut", "data.image_a": "a.png", "data.image_b": "b.png", **values})


def tiny_cfg(**values):
    return sincut_cfg(**{"model.ngf": 1, "model.ndf": 4, "model.n_blocks": 2, "data.crop_size": 16,
                         "data.batch_size": 4, "loss.nce_layers": [0, 2, 3], **values})


# ------------------------------------------------------------------------------------------------ networks

def test_preset_is_the_authors_recipe():
    cfg = sincut_cfg()
    assert (cfg.model.ngf, cfg.model.ndf, cfg.model.n_blocks) == (10, 8, 6)
    assert (cfg.loss.gan_mode, cfg.loss.lambda_x, cfg.loss.identity, cfg.loss.nce_layers) == \
        ("nonsaturating", 4.0, True, [0, 2, 4])
    assert (cfg.loss.num_patches, cfg.loss.negatives_from_minibatch, cfg.loss.temperature) == (1, True, 0.07)
    assert (cfg.loss.lambda_r1, cfg.loss.lambda_identity_l1, cfg.loss.flip_equivariance) == (1.0, 1.0, False)
    assert (cfg.optim.lr, cfg.optim.beta1, cfg.optim.beta2, cfg.optim.epochs, cfg.optim.epochs_decay) == \
        (0.002, 0.0, 0.99, 8, 8)
    assert (cfg.data.batch_size, cfg.data.crop_size, cfg.data.sincut_epoch_size, cfg.data.random_scale_max) == \
        (16, 64, 100000, 3.0)
    # the job's own values win over the sincut starting point, in any order of file and overrides
    assert sincut_cfg(**{"model.ngf": 12}).model.ngf == 12
    assert config.from_dict({"model": {"mode": "sincut", "ndf": 16}, "data.image_a": "a", "data.image_b": "b"}
                            ).model.ndf == 16
    # CUT's defaults are untouched
    cut = config.from_dict({"data.root": "x"})
    assert (cut.model.ngf, cut.loss.lambda_r1, cut.loss.lambda_identity_l1) == (64, 0.0, 0.0)


@pytest.mark.parametrize("values, key", [
    ({"train.compile": True}, "train.compile"),
    ({"train.num_workers": 3}, "data.batch_size"),
    ({"data.crop_size": 48}, "data.crop_size"),
    ({"loss.nce_layers": [0, 6]}, "loss.nce_layers"),
    ({"data.image_b": ""}, "data.image_a"),
])
def test_sincut_config_refusals(values, key):
    with pytest.raises(config.ConfigError, match=f"^{key}"):
        sincut_cfg(**values)


def test_sincut_terms_refused_for_cut():
    with pytest.raises(config.ConfigError, match="^loss.lambda_r1: is a sincut term"):
        config.from_dict({"data.root": "x", "loss.lambda_r1": 1.0})


def test_generator_shapes_taps_and_keys():
    torch.manual_seed(0)
    g = StyleGAN2Generator(ngf=10, crop_size=64)
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    fake, feats = g(x, [0, 2, 4])
    assert fake.shape == (1, 3, 64, 64)
    assert [tuple(f.shape) for f in feats] == [(1, 3, 64, 64), (1, 160, 32, 32), (1, 160, 32, 32)]
    assert g.tap_channels([0, 2, 4]) == [3, 160, 160]
    assert torch.equal(feats[0], x)                                  # tap 0 is the input itself
    only = g(x, [0, 2, 4], encode_only=True)
    assert all(torch.equal(a, b) for a, b in zip(only, feats))
    # fully convolutional at test time: any size that is a multiple of 4
    assert g(torch.zeros(1, 3, 36, 52)).shape == (1, 3, 36, 52)
    keys = {k: tuple(v.shape) for k, v in g.state_dict().items()}
    # the reference's layout (models/stylegan_networks.py, netG stylegan2, ngf 10, crop 64, one down-sampling)
    assert len(keys) == 39
    assert keys["encoder.convs.1.0.weight"] == (80, 3, 1, 1)
    assert keys["encoder.convs.1.1.bias"] == (1, 80, 1, 1)
    assert keys["encoder.convs.2.conv2.0.kernel"] == (4, 4)
    assert keys["encoder.convs.2.conv2.1.weight"] == (160, 80, 3, 3)
    assert keys["encoder.convs.2.skip.1.weight"] == (160, 80, 1, 1)
    assert "encoder.convs.2.skip.1.bias" not in keys
    assert keys["decoder.convs.3.conv.weight"] == (1, 80, 160, 3, 3)
    assert keys["decoder.convs.3.conv.blur.kernel"] == (4, 4)
    assert keys["decoder.convs.3.noise.weight"] == (1,)
    assert keys["decoder.convs.4.0.weight"] == (3, 80, 1, 1)
    # their initialisation: N(0, 1) weights, zero biases and noise strength
    assert float(g.decoder.convs[3].noise.weight.detach()) == 0.0
    assert abs(float(g.encoder.convs[2].conv1[0].weight.detach().std()) - 1.0) < 0.05


def test_discriminator_shape_and_keys():
    d = StyleGAN2Discriminator(ndf=8, crop_size=64)
    assert d(torch.zeros(3, 3, 64, 64)).shape == (3, 1)
    keys = {k: tuple(v.shape) for k, v in d.state_dict().items()}
    assert keys["convs.0.0.weight"] == (32, 3, 1, 1)
    assert keys["convs.4.conv2.1.weight"] == (384, 256, 3, 3)
    assert keys["final_conv.0.weight"] == (384, 384, 3, 3)
    assert keys["final_linear.0.weight"] == (384, 6144) and keys["final_linear.1.weight"] == (1, 384)
    with pytest.raises(ValueError, match="built for 64x64"):
        d(torch.zeros(1, 3, 32, 32))


def test_blur_is_the_normalised_1331_filter():
    from cutdist.model.stylegan import Blur

    blur = Blur((1, 2))          # the 1x1 skip's down-sampling pads (1, 1); here asymmetric to see the shift
    impulse = torch.zeros(1, 1, 6, 6)
    impulse[0, 0, 2, 2] = 1.0
    out = blur(impulse)[0, 0]
    row = torch.tensor([1.0, 3.0, 3.0, 1.0]) / 8
    assert out.shape == (6, 6)
    assert torch.allclose(out[0:4, 0:4], row[:, None] * row[None, :])
    assert abs(float(out.sum()) - 1.0) < 1e-6


# --------------------------------------------------------------------------------------------------- R1

def test_r1_equals_hand_computation_for_a_linear_critic():
    """D(y) = <w, y> + c has gradient w at every y: R1 = lambda / 2 * ||w||^2, whatever the batch."""
    w = torch.randn(3, 8, 8, dtype=torch.float64, requires_grad=True)
    y = torch.randn(5, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    pred = (y * w).flatten(1).sum(1, keepdim=True) + 0.3
    r1 = r1_penalty(pred, y, lambda_r1=2.5)
    assert torch.allclose(r1, 2.5 / 2 * w.pow(2).sum())
    (dw,) = torch.autograd.grad(r1, w)                               # double backward reaches the weights
    assert torch.allclose(dw, 2.5 * w)


def test_r1_of_the_stylegan_discriminator_per_image_and_its_weight_gradient():
    torch.manual_seed(0)
    d = StyleGAN2Discriminator(ndf=4, crop_size=16).double()
    y = torch.randn(3, 3, 16, 16, dtype=torch.float64, requires_grad=True)
    r1 = r1_penalty(d(y), y, lambda_r1=1.0)
    by_hand = 0.0
    for i in range(3):                                                # one image at a time
        yi = y[i:i + 1].detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(d(yi).sum(), yi)
        by_hand += 0.5 * float(g.pow(2).sum()) / 3
    assert abs(float(r1.detach()) - by_hand) < 1e-10
    # d R1 / d theta along a random direction, against central finite differences
    param = d.final_conv[0].weight
    (grad,) = torch.autograd.grad(r1, param)
    direction = torch.randn_like(param)
    eps = 1e-5

    def r1_at(delta: float) -> float:
        with torch.no_grad():
            param.add_(delta * direction)
        yy = y.detach().clone().requires_grad_(True)
        value = float(r1_penalty(d(yy), yy, 1.0).detach())
        with torch.no_grad():
            param.sub_(delta * direction)
        return value

    numeric = (r1_at(eps) - r1_at(-eps)) / (2 * eps)
    assert abs(float((grad * direction).sum()) - numeric) < 1e-6 * max(1.0, abs(numeric))


# ------------------------------------------------------------------------------------------------- step

def _run_steps(cfg, seed: int, steps: int = 2):
    torch.manual_seed(seed)
    nets = build_sincut_nets(cfg)
    updater = LocalUpdater(make_optimizers(nets, cfg.optim))
    data = torch.Generator().manual_seed(7)
    patches = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        a = torch.rand(4, 3, 16, 16, generator=data) * 2 - 1
        b = torch.rand(4, 3, 16, 16, generator=data) * 2 - 1
        out.append(sincut_step(nets, updater, a, b, cfg.loss, generator=patches))
    return out, nets


@pytest.mark.slow
def test_seeded_step_is_deterministic_and_updates_every_net(one_torch_thread):
    cfg = tiny_cfg()
    first, nets1 = _run_steps(cfg, seed=3)
    second, nets2 = _run_steps(cfg, seed=3)
    other, _ = _run_steps(cfg, seed=4, steps=1)
    assert set(first[0]) == {"d", "d_real", "d_fake", "d_r1", "g_gan", "nce", "nce_y", "idt", "g_total"}
    for a, b in zip(first, second):
        assert all(torch.equal(a[k], b[k]) for k in a)
    for name in ("g", "d", "f"):
        for p1, p2 in zip(getattr(nets1, name).parameters(), getattr(nets2, name).parameters()):
            assert torch.equal(p1, p2)
    assert not torch.equal(first[0]["g_total"], other[0]["g_total"])
    assert float(first[0]["d_r1"]) > 0
    torch.manual_seed(3)
    fresh = build_sincut_nets(cfg)
    for name in ("g", "d", "f"):   # every net moved (noise strength included: it gets a gradient)
        moved = [not torch.equal(p, q) for p, q in zip(getattr(fresh, name).parameters(),
                                                         getattr(nets1, name).parameters())]
        assert all(moved), (name, moved)


# ------------------------------------------------------------------------------------------------- data

def _reference_crop(img: Image.Image, zoom, cell_index: int, offset, flip: bool, crop: int) -> np.ndarray:
    """The reference's zoom_and_patch on a PIL image (base_dataset.__random_zoom, __patch, __flip), with the
    random margin offsets given."""
    iw, ih = img.size
    zw, zh = max(crop, iw * zoom[0]), max(crop, ih * zoom[1])
    img = img.resize((int(round(zw)), int(round(zh))), Image.BILINEAR)
    ow, oh = img.size
    nw, nh = ow // crop, oh // crop
    start_x = int(offset[0] * (ow - nw * crop + 1))
    start_y = int(offset[1] * (oh - nh * crop + 1))
    index = cell_index % (nw * nh)
    x, y = start_x + (index // nh) * crop, start_y + (index % nh) * crop
    img = img.crop((x, y, x + crop, y + crop))
    if flip:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(img, dtype=np.float32)


def test_zoom_and_patch_matches_the_reference_pil_pipeline():
    a, _ = synth_single_pair(0, (96, 128))
    tensor = torch.from_numpy(a).permute(2, 0, 1).float() / 127.5 - 1
    sampler = ZoomAndPatch(tensor, crop=32, scale_max=3.0, epoch_size=64, no_flip=False, seed=5, domain="A")
    plan = sampler.plan(0)
    assert sorted(plan.cell.tolist()) == list(range(64))             # cells drawn without repetition
    assert plan.zoom.min() >= 1 / 3 and plan.zoom.max() <= 1 and 0 < plan.flip.mean() < 1
    worst = 0.0
    for i in range(16):
        ours = (sampler.sample(0, i).permute(1, 2, 0).numpy() + 1) * 127.5
        ref = _reference_crop(Image.fromarray(a), plan.zoom[i], int(plan.cell[i]), plan.offset[i],
                              bool(plan.flip[i]), 32)
        worst = max(worst, float(np.abs(ours - ref).mean()))
    assert worst < 3.0, worst                                         # mean |difference| in grey levels
    assert not torch.equal(sampler.sample(0, 0), sampler.sample(1, 0))   # every epoch draws anew


def test_stream_splits_the_global_batch_over_ranks():
    a, b = synth_single_pair(1, (64, 80))
    images = SingleImages(*(torch.from_numpy(x).permute(2, 0, 1).float() / 127.5 - 1 for x in (a, b)), "a", "b")
    data = config.from_dict({"model.mode": "sincut", "data.image_a": "a", "data.image_b": "b",
                             "data.crop_size": 16, "data.batch_size": 4, "data.sincut_epoch_size": 12}).data
    stream = SingleImageStream(images, data, seed=0, device=torch.device("cpu"))
    single = list(stream.epoch(0, rank=0, world_size=1))
    halves = [list(stream.epoch(0, rank=r, world_size=2)) for r in (0, 1)]
    assert len(single) == 3 and single[0]["a"].shape == (4, 3, 16, 16)
    for step in range(3):
        for key in ("a", "b"):
            assert torch.equal(torch.cat([halves[0][step][key], halves[1][step][key]]), single[step][key])
    assert len(list(stream.epoch(0, rank=0, world_size=1, start_step=2))) == 1


def test_whole_image_rounds_sides_to_multiples_of_4():
    assert whole_image(torch.zeros(3, 101, 131)).shape == (1, 3, 100, 132)   # Python's round, as the reference


def test_single_images_from_files_and_from_shards(tmp_path):
    from cutdist.data import resolve_splits
    from cutdist.shards import main as shards_main

    path_a, path_b = write_single_pair(tmp_path / "src", size=(40, 56))
    data = config.from_dict({"model.mode": "sincut", "data.image_a": path_a, "data.image_b": path_b}).data
    files = load_single_images(data)
    assert files.a.shape == (3, 40, 56) and files.a.min() >= -1 and files.a.max() <= 1
    assert shards_main(["write", str(tmp_path / "src"), str(tmp_path / "shards")]) == 0
    data_root = config.from_dict({"model.mode": "sincut", "data.root": str(tmp_path / "shards")}).data
    shards = load_single_images(data_root, resolve_splits(data_root))
    assert torch.equal(shards.a, files.a) and torch.equal(shards.b, files.b)
    # two images in trainA: one line naming the split
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "src" / "trainA" / "second.png")
    assert shards_main(["write", str(tmp_path / "src"), str(tmp_path / "two")]) == 0
    data_two = config.from_dict({"model.mode": "sincut", "data.root": str(tmp_path / "two")}).data
    with pytest.raises(DataError, match="exactly one image in trainA"):
        load_single_images(data_two, resolve_splits(data_two))
    bad = config.from_dict({"model.mode": "sincut", "data.image_a": str(tmp_path / "nope.png"),
                            "data.image_b": path_b}).data
    with pytest.raises(DataError, match="nope.png"):
        load_single_images(bad)


def test_synth_if_missing_writes_the_single_pair_shards(tmp_path):
    from cutdist.data import resolve_splits

    data = config.from_dict({"model.mode": "sincut", "data.root": str(tmp_path / "pair"), "data.synth_if_missing": True,
                             "data.synth_kind": "single_pair", "data.synth_size": 64}).data
    images = load_single_images(data, resolve_splits(data))
    assert images.a.shape == images.b.shape == (3, 48, 64)
    painting, photo = synth_single_pair(0, (48, 64))
    assert torch.equal(images.a, torch.from_numpy(painting).permute(2, 0, 1).float() / 127.5 - 1)
