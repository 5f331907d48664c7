"""``replica_divergence``: 0.0 only when G, D and F are identical on every rank. The Ray tests assert 0.0 after real
DDP steps; this shows the measure is not 0.0 whatever happens. The all-gather is played by the test in one process:
rank 1's fingerprint is what the same function computes on rank 1's nets."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist

from cutdist import config
from cutdist.model.networks import build_nets
from cutdist.train.loop import replica_divergence

CPU = torch.device("cpu")


def tiny_nets():
    cfg = config.from_dict({"data.root": "unused", "model.ngf": 4, "model.ndf": 4, "model.n_blocks": 1,
                            "model.netf_nc": 8, "loss.nce_layers": [0, 4, 8], "data.crop_size": 32,
                            "data.load_size": 32})
    torch.manual_seed(0)
    return build_nets(cfg)


def divergence_between(mine, peer, monkeypatch) -> float:
    """replica_divergence on rank 0 holding ``mine`` while rank 1 holds ``peer``."""
    sent = []
    monkeypatch.setattr(dist, "all_gather", lambda out, tensor: (sent.append(tensor.clone()), out[0].copy_(tensor)))
    replica_divergence(peer, 2, CPU)            # what rank 1 puts into the all-gather

    def all_gather(out, tensor):
        out[0].copy_(tensor)
        out[1].copy_(sent[0])
    monkeypatch.setattr(dist, "all_gather", all_gather)
    return replica_divergence(mine, 2, CPU)


@pytest.mark.parametrize("name", ["g", "d", "f"])
def test_divergence_is_zero_only_for_identical_replicas(name, monkeypatch):
    mine = tiny_nets()
    assert divergence_between(mine, copy.deepcopy(mine), monkeypatch) == 0.0
    peer = copy.deepcopy(mine)
    with torch.no_grad():   # one element of one parameter of one net differs on rank 1
        list(getattr(peer, name).parameters())[-1].view(-1)[0] += 1e-3
    assert divergence_between(mine, peer, monkeypatch) > 1e-6
    assert replica_divergence(mine, 1, CPU) == 0.0   # one rank: nothing to compare
