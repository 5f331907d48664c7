"""The model part of a cutdist checkpoint: format, prefix stripping, atomic write, strict loading."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from cutdist import config
from cutdist.model.io import FORMAT, MODEL_FILE, ModelIOError, load_generator, load_model, save_model
from cutdist.model.networks import build_nets


@pytest.fixture(scope="module")
def cfg():
    return config.from_dict({"model.ngf": 4, "model.ndf": 4, "model.n_blocks": 2, "loss.nce_layers": [0, 4, 8],
                             "model.netf_nc": 8, "data.root": "unused", "name": "io-test"})


@pytest.fixture(scope="module")
def nets(cfg):
    torch.manual_seed(0)
    return build_nets(cfg)


class Wrapped(nn.Module):
    """Keys like DDP (module.) around torch.compile (_orig_mod.)."""

    def __init__(self, inner):
        super().__init__()
        self.module = nn.Module()
        self.module._orig_mod = inner


def test_round_trip_with_wrapped_modules(tmp_path, cfg, nets):
    path = save_model(tmp_path / "ckpt", {"g": Wrapped(nets.g), "d": nets.d.state_dict(), "f": None}, cfg,
                      step=12, epoch=3, source="unit")
    assert path == tmp_path / "ckpt" / MODEL_FILE
    assert [p.name for p in path.parent.iterdir()] == [MODEL_FILE]       # no temp file left behind
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == FORMAT and raw["step"] == 12 and raw["epoch"] == 3 and raw["source"] == "unit"
    assert raw["f"] is None
    assert list(raw["g"]) == list(nets.g.state_dict())                   # prefixes stripped
    payload, loaded_cfg = load_model(tmp_path / "ckpt")
    assert loaded_cfg == cfg
    for k, v in nets.d.state_dict().items():
        assert torch.equal(payload["d"][k], v)


def test_load_generator_gives_the_same_function(tmp_path, cfg, nets):
    save_model(tmp_path, nets, cfg, step=0, epoch=0)
    g, loaded_cfg = load_generator(tmp_path)
    assert not g.training and not any(p.requires_grad for p in g.parameters())
    x = torch.rand(1, 3, 24, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(g(x), nets.g(x), rtol=0, atol=0)
    assert loaded_cfg.model.n_blocks == 2


def test_clear_errors(tmp_path, cfg, nets):
    with pytest.raises(ModelIOError, match="no such file"):
        load_model(tmp_path / "missing")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / MODEL_FILE).write_bytes(b"not a torch file")
    with pytest.raises(ModelIOError, match="cannot read"):
        load_model(tmp_path / "junk")
    (tmp_path / "other").mkdir()
    torch.save({"format": "something-else"}, tmp_path / "other" / MODEL_FILE)
    with pytest.raises(ModelIOError, match="not a cutdist-model-v1"):
        load_model(tmp_path / "other")
    state = nets.g.state_dict()
    state.pop("model.1.bias")
    save_model(tmp_path / "bad", {"g": state}, cfg, step=0, epoch=0)
    with pytest.raises(ModelIOError, match=r"missing keys \['model.1.bias'\]"):
        load_generator(tmp_path / "bad")
    with pytest.raises(ModelIOError, match="generator"):
        save_model(tmp_path / "nog", {"d": nets.d}, cfg, step=0, epoch=0)
