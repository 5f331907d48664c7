"""SinCUT's training step at the authors' size (ngf 10, ndf 8, 64 x 64 crops, batch 16): seconds per step on this
machine's CPU and the FLOPs of one step (forward, backward and R1's double backward, counted by
torch.utils.flop_counter), for the README's time per 1,000 steps and its GPU estimate.

    python benchmarks/sincut_step.py [--steps 5] [--threads N] [--batch 16]

Prints one JSON line. The first step (allocations, oneDNN primitive creation) is not timed.
"""
from __future__ import annotations

import argparse
import json
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from cutdist import config
from cutdist.model.cut import LocalUpdater, make_optimizers
from cutdist.model.sincut import build_sincut_nets, sincut_step


class FlopCount(TorchDispatchMode):
    """Matmul and convolution FLOPs (forward and backward) by torch's own formulas (``flop_registry``), counted
    at the dispatcher. torch's FlopCounterMode cannot run here: its module hooks refuse autograd.grad (R1)."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0
        self.ops = 0     # aten operators dispatched: about the kernels a GPU would launch

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.ops += 1
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.flops += formula(*args, **kwargs, out_val=out)
        return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--batch", type=int, default=16)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = config.from_dict({"model.mode": "sincut", "data.image_a": "a", "data.image_b": "b",
                            "data.batch_size": args.batch})
    torch.manual_seed(0)
    nets = build_sincut_nets(cfg)
    updater = LocalUpdater(make_optimizers(nets, cfg.optim))
    size = cfg.data.crop_size
    a = torch.rand(args.batch, 3, size, size) * 2 - 1
    b = torch.rand(args.batch, 3, size, size) * 2 - 1
    patches = torch.Generator().manual_seed(0)
    with FlopCount() as counter:
        sincut_step(nets, updater, a, b, cfg.loss, generator=patches)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        sincut_step(nets, updater, a, b, cfg.loss, generator=patches)
    per_step = (time.perf_counter() - t0) / args.steps
    print(json.dumps({"bench": "sincut-step", "batch": args.batch, "crop": size, "threads": args.threads,
                      "steps_timed": args.steps, "s_per_step": round(per_step, 3),
                      "s_per_1000_steps": round(per_step * 1000, 1), "gflop_per_step": round(counter.flops / 1e9, 1), "aten_ops_per_step": counter.ops}))


if __name__ == "__main__":
    main()
