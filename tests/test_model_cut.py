"""The CUT step: determinism, presets' loss terms, flip-equivariance, update order, schedule, optimisers."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from cutdist import config
from cutdist.model.cut import LocalUpdater, cut_step, make_optimizers
from cutdist.model.losses import GANLoss
from cutdist.model.networks import build_nets
from cutdist.model.patchnce import patchnce_loss


pytestmark = pytest.mark.usefixtures("one_torch_thread")



def tiny_cfg(mode: str, **extra) -> config.JobConfig:
    values = {"model.mode": mode, "model.ngf": 4, "model.ndf": 4, "model.n_blocks": 2, "loss.nce_layers": [0, 4, 8, 12],
              "loss.num_patches": 16, "model.netf_nc": 16, "data.root": "unused"}
    values.update(extra)
    return config.from_dict(values)


def images(seed: int, n: int = 2, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=gen) * 2 - 1, torch.rand(n, 3, size, size, generator=gen) * 2 - 1


def fresh(cfg, seed=0):
    torch.manual_seed(seed)
    nets = build_nets(cfg)
    return nets, LocalUpdater(make_optimizers(nets, cfg.optim))


def run_steps(cfg, steps=2, flip_seed=5, precision="fp32"):
    nets, updater = fresh(cfg)
    patches, flips = torch.Generator().manual_seed(11), torch.Generator().manual_seed(flip_seed)
    history = []
    for i in range(steps):
        a, b = images(100 + i)
        history.append(cut_step(nets, updater, a, b, cfg.loss, generator=patches, flip_generator=flips,
                                precision=precision))
    return nets, history


def coin(seed: int) -> bool:
    return bool(torch.rand((), generator=torch.Generator().manual_seed(seed)) < 0.5)


@pytest.mark.parametrize("mode", ["cut", "fastcut"])
def test_seeded_steps_are_bit_identical(mode):
    cfg = tiny_cfg(mode)
    nets1, h1 = run_steps(cfg)
    nets2, h2 = run_steps(cfg)
    for s1, s2 in zip(h1, h2):
        assert s1.keys() == s2.keys()
        for k in s1:
            assert torch.equal(s1[k], s2[k]), k
    for a, b in zip(nets1.g.parameters(), nets2.g.parameters()):
        assert torch.equal(a, b)
    # and the patch seed matters: another patch generator gives other NCE values
    nets3, updater = fresh(cfg)
    a, b = images(100)
    other = cut_step(nets3, updater, a, b, cfg.loss, generator=torch.Generator().manual_seed(12),
                     flip_generator=torch.Generator().manual_seed(5))
    assert not torch.equal(other["nce"], h1[0]["nce"])


def test_loss_terms_match_each_preset():
    _, (cut, *_) = run_steps(tiny_cfg("cut"), steps=1)
    _, (fast, *_) = run_steps(tiny_cfg("fastcut"), steps=1)
    assert set(cut) == {"d", "d_real", "d_fake", "g_gan", "nce", "nce_y", "g_total"}
    assert set(fast) == {"d", "d_real", "d_fake", "g_gan", "nce", "g_total"}
    torch.testing.assert_close(cut["g_total"], cut["g_gan"] + (cut["nce"] + cut["nce_y"]) / 2)
    torch.testing.assert_close(fast["g_total"], fast["g_gan"] + fast["nce"])
    for losses in (cut, fast):
        torch.testing.assert_close(losses["d"], (losses["d_real"] + losses["d_fake"]) / 2)
        assert all(not v.requires_grad for v in losses.values())


def test_lambda_x_scales_the_nce_term():
    # Same init, same patches, no flip: the NCE term is computed from G and F before they are updated.
    lam1 = tiny_cfg("fastcut", **{"loss.flip_equivariance": False, "loss.lambda_x": 1.0})
    lam10 = tiny_cfg("fastcut", **{"loss.flip_equivariance": False})
    assert lam10.loss.lambda_x == 10.0
    _, (one, *_) = run_steps(lam1, steps=1)
    _, (ten, *_) = run_steps(lam10, steps=1)
    torch.testing.assert_close(ten["nce"], one["nce"] * 10, rtol=1e-5, atol=0)


def expected_nce(nets, cfg, a, flipped: bool, patch_seed: int) -> torch.Tensor:
    """PatchNCE(x, G(x)) by hand: queries from G_enc(G(x')) flipped back when x' = flip(x), keys from G_enc(x)."""
    layers, gen = cfg.loss.nce_layers, torch.Generator().manual_seed(patch_seed)
    with torch.no_grad():
        fake = nets.g(torch.flip(a, [3]) if flipped else a)
        feat_q = nets.g(fake, layers, encode_only=True)
        if flipped:
            feat_q = [torch.flip(f, [3]) for f in feat_q]
        feat_k = nets.g(a, layers, encode_only=True)
        pool_k, ids = nets.f(feat_k, cfg.loss.num_patches, None, gen)
        pool_q, _ = nets.f(feat_q, cfg.loss.num_patches, ids)
        terms = [patchnce_loss(q, k, cfg.loss.temperature, a.shape[0]).mean() * cfg.loss.lambda_x
                 for q, k in zip(pool_q, pool_k)]
    return sum(terms) / len(terms)


@pytest.mark.parametrize("flip_seed", [0, 1, 2, 3])
def test_flip_equivariance_flips_the_input_and_the_features_back(flip_seed):
    cfg = tiny_cfg("fastcut")
    nets, updater = fresh(cfg)
    before = copy.deepcopy(nets)
    a, b = images(7)
    flipped = coin(flip_seed)
    got = cut_step(nets, updater, a, b, cfg.loss, generator=torch.Generator().manual_seed(9),
                   flip_generator=torch.Generator().manual_seed(flip_seed))["nce"]
    torch.testing.assert_close(got, expected_nce(before, cfg, a, flipped, 9), rtol=1e-5, atol=1e-6)
    wrong = expected_nce(before, cfg, a, not flipped, 9)
    assert (got - wrong).abs() > 1e-4


def test_flip_coin_comes_from_the_flip_generator():
    """cut_step takes its coin from ``flip_generator``, one draw per step, and never from torch's global RNG (which
    here is set to say the opposite)."""
    assert {coin(s) for s in range(4)} == {True, False}   # the seeds of the test above exercise both branches
    cfg = tiny_cfg("fastcut")
    a, b = images(7)
    for flip_seed in (next(s for s in range(10) if coin(s)), next(s for s in range(10) if not coin(s))):
        flipped = coin(flip_seed)
        nets, updater = fresh(cfg)
        before = copy.deepcopy(nets)
        flips = torch.Generator().manual_seed(flip_seed)
        torch.manual_seed(next(s for s in range(10) if coin(s) != flipped))
        global_rng = torch.get_rng_state()
        got = cut_step(nets, updater, a, b, cfg.loss, generator=torch.Generator().manual_seed(9),
                       flip_generator=flips)["nce"]
        torch.testing.assert_close(got, expected_nce(before, cfg, a, flipped, 9), rtol=1e-5, atol=1e-6)
        assert torch.equal(torch.get_rng_state(), global_rng)
        one_draw = torch.Generator().manual_seed(flip_seed)
        torch.rand((), generator=one_draw)
        assert torch.equal(flips.get_state(), one_draw.get_state())


def test_no_flip_when_disabled_even_on_a_flipping_coin():
    cfg = tiny_cfg("cut")
    nets, updater = fresh(cfg)
    before = copy.deepcopy(nets)
    a, b = images(8)
    seed = next(s for s in range(10) if coin(s))
    cfg.loss.identity = False
    got = cut_step(nets, updater, a, b, cfg.loss, generator=torch.Generator().manual_seed(3),
                   flip_generator=torch.Generator().manual_seed(seed))["nce"]
    torch.testing.assert_close(got, expected_nce(before, cfg, a, False, 3), rtol=1e-5, atol=1e-6)


class Recorder(LocalUpdater):
    def __init__(self, optimizers, d):
        super().__init__(optimizers)
        self.d, self.calls = d, []

    def _log(self, op, group):
        self.calls.append((op, group, all(p.requires_grad for p in self.d.parameters())))

    def zero_grad(self, group):
        self._log("zero_grad", group)
        super().zero_grad(group)

    def backward(self, group, loss):
        d_grads = [p.grad.clone() for p in self.d.parameters()] if group == "gf" else None
        self._log("backward", group)
        super().backward(group, loss)
        if d_grads is not None:
            assert all(torch.equal(g, p.grad) for g, p in zip(d_grads, self.d.parameters())), \
                "G's backward reached D's gradients"

    def step(self, group):
        self._log("step", group)
        super().step(group)


class CountingWrapper(nn.Module):
    """Stands in for a DDP/DeepSpeed wrapper: only its forward may be called."""

    def __init__(self, inner):
        super().__init__()
        self.module, self.calls = inner, 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.module(*args, **kwargs)


def test_d_then_gf_update_order_and_unwrapped_d_for_the_generator():
    cfg = tiny_cfg("cut")
    nets, _ = fresh(cfg)
    raw_d = nets.d
    d_before = copy.deepcopy(raw_d.state_dict())
    g_before = copy.deepcopy(nets.g.state_dict())
    f_before = copy.deepcopy(nets.f.state_dict())
    recorder = Recorder(make_optimizers(nets, cfg.optim), raw_d)
    nets.d = CountingWrapper(raw_d)
    unwrapped = CountingWrapper(raw_d)
    a, b = images(1)
    cut_step(nets, recorder, a, b, cfg.loss, generator=torch.Generator().manual_seed(0), d_for_g=unwrapped)
    assert recorder.calls == [("zero_grad", "d", True), ("backward", "d", True), ("step", "d", True),
                              ("zero_grad", "gf", False), ("backward", "gf", False), ("step", "gf", False)]
    assert all(p.requires_grad for p in raw_d.parameters())   # restored after the step
    assert nets.d.calls == 1 and unwrapped.calls == 1          # D step: fake and real in one forward; G step: the unwrapped D
    for before, net in ((d_before, raw_d), (g_before, nets.g), (f_before, nets.f)):
        assert any(not torch.equal(v, net.state_dict()[k]) for k, v in before.items())


def test_bf16_autocast_step_runs_with_float32_losses():
    _, (losses, *_) = run_steps(tiny_cfg("fastcut"), steps=1, precision="bf16")
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    with pytest.raises(ValueError, match="precision"):
        run_steps(tiny_cfg("fastcut"), steps=1, precision="fp16")


def test_negatives_from_minibatch_changes_the_contrastive_batch():
    base = tiny_cfg("fastcut", **{"loss.flip_equivariance": False})
    single = tiny_cfg("fastcut", **{"loss.flip_equivariance": False, "loss.negatives_from_minibatch": True})
    _, (per_image, *_) = run_steps(base, steps=1)
    _, (whole, *_) = run_steps(single, steps=1)
    assert whole["nce"] > per_image["nce"]                     # more negatives per query


def test_make_optimizers_cover_g_and_f_in_one_adam():
    cfg = tiny_cfg("cut")
    nets, _ = fresh(cfg)
    opts = make_optimizers(nets, cfg.optim)
    gf_params = [p for group in opts["gf"].param_groups for p in group["params"]]
    assert {id(p) for p in gf_params} == {id(p) for p in list(nets.g.parameters()) + list(nets.f.parameters())}
    assert len(gf_params) == len(set(map(id, gf_params)))
    assert [p for g in opts["d"].param_groups for p in g["params"]] == list(nets.d.parameters())
    for opt in opts.values():
        assert opt.defaults["lr"] == 2e-4 and opt.defaults["betas"] == (0.5, 0.999)


def test_gan_losses():
    pred = torch.tensor([[[[0.5, 2.0]]], [[[-1.0, 0.0]]]])
    lsgan = GANLoss("lsgan")
    assert lsgan(pred, True).item() == pytest.approx(((0.5 - 1) ** 2 + 1 + 4 + 1) / 4)
    assert lsgan(pred, False).item() == pytest.approx((0.25 + 4 + 1 + 0) / 4)
    ns = GANLoss("nonsaturating")
    assert ns(pred, True).item() == pytest.approx(torch.nn.functional.softplus(-pred).mean().item())
    assert ns(pred, False).item() == pytest.approx(torch.nn.functional.softplus(pred).mean().item())
    with pytest.raises(ValueError, match="mode"):
        GANLoss("wgan")
