"""R1's double backward under DDP and DeepSpeed ZeRO-0 and ZeRO-1 (two gloo ranks, each with half of the global batch).

D's objective (GAN terms + R1) is a mean of per-crop terms, so the averaged gradient over two ranks holding half
the crops each is the gradient of the full batch: after one step, D must equal a single process's D stepped on
the whole batch. G and F are not compared with the single process (their PatchNCE negatives are per rank, the
documented difference), only across ranks: every replica must hold the same weights.
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cutdist import config

VALUES = {"model.mode": "sincut", "model.ngf": 1, "model.ndf": 4, "model.n_blocks": 2, "loss.nce_layers": [0, 2, 3],
          "data.crop_size": 16, "data.batch_size": 4, "data.image_a": "a", "data.image_b": "b", "model.netf_nc": 16,
          "train.num_workers": 2}


STRATEGIES = (("ddp", 1), ("deepspeed", 0), ("deepspeed", 1))


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    return torch.rand(4, 3, 16, 16, generator=g) * 2 - 1, torch.rand(4, 3, 16, 16, generator=g) * 2 - 1


def _one_step(cfg, world_size: int, rank: int) -> dict:
    from cutdist.model.sincut import build_sincut_nets, sincut_step
    from cutdist.train.strategy import build_strategy

    torch.manual_seed(0)
    plain = build_sincut_nets(cfg)
    strategy = build_strategy(cfg, plain, torch.device("cpu"), world_size)
    a, b = _batch()
    share = 4 // world_size
    a, b = a[rank * share:(rank + 1) * share], b[rank * share:(rank + 1) * share]
    torch.manual_seed(100 + rank)   # the noise of the decoder
    losses = sincut_step(strategy.nets, strategy.updater, a, b, cfg.loss, generator=torch.Generator().manual_seed(5),
                         d_for_g=strategy.plain.d)
    assert float(losses["d_r1"]) > 0
    return {name: {k: v.detach().clone() for k, v in getattr(plain, name).state_dict().items()}
            for name in ("g", "d", "f")}


def _worker(rank: int, tmp: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": open(f"{tmp}/port").read().strip(),
                       "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2"})
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        for strategy, stage in STRATEGIES:
            cfg = config.from_dict({**VALUES, "train.strategy": strategy, "train.zero_stage": stage})
            torch.save(_one_step(cfg, 2, rank), f"{tmp}/{strategy}{stage}_{rank}.pt")
            dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_r1_double_backward_under_ddp_and_deepspeed_zero0_zero1_equals_the_full_batch(tmp_path, one_torch_thread):
    from ray_head import free_ports

    (tmp_path / "port").write_text(str(free_ports(1)[0]))
    mp.spawn(_worker, args=(str(tmp_path),), nprocs=2, join=True)
    single = _one_step(config.from_dict({**VALUES, "train.num_workers": 1}), 1, 0)
    for strategy, stage in STRATEGIES:
        ranks = [torch.load(tmp_path / f"{strategy}{stage}_{r}.pt") for r in (0, 1)]
        for name in ("g", "d", "f"):
            for key, value in ranks[0][name].items():
                assert torch.equal(value, ranks[1][name][key]), (strategy, name, key)
        moved = 0
        for key, value in single["d"].items():
            assert torch.allclose(ranks[0]["d"][key], value, rtol=1e-4, atol=1e-6), (strategy, key)
            moved += not torch.equal(value, _initial_d()[key])
        assert moved > 0


def _initial_d() -> dict:
    from cutdist.model.sincut import build_sincut_nets

    torch.manual_seed(0)
    return build_sincut_nets(config.from_dict({**VALUES, "train.num_workers": 1})).d.state_dict()
