"""What the instance-norm fix costs: the ``bench train-step`` step (``cutdist.bench.train_step.Bench``) with our
``InstanceNorm2d`` (incoming gradient made contiguous) vs torch's ``nn.InstanceNorm2d`` (the unfixed code), same
weights and inputs, steps ALTERNATED in one process so that a shared machine's load hits both alike. Prints one JSON
line: median wall and CPU (process) milliseconds per step of each, and fixed / unfixed ratios.

    PYTHONPATH=. python benchmarks/instance_norm_fix_cost.py [--size 64] [--batch 1] [--steps 10] [--nchw] [--threads 1]

Paper-size networks (ngf 64, 9 blocks, 256 patches); channels_last unless --nchw (there the hook has nothing to do).
"""
import argparse
import json
import statistics
import sys
import time

import torch
from torch import nn

from cutdist import config
from cutdist.bench.train_step import Bench
from cutdist.model import networks


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=10, help="timed steps of each, alternated")
    p.add_argument("--nchw", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = config.from_dict({"model.mode": "cut", "data.root": "(synthetic)", "data.crop_size": args.size,
                            "data.load_size": args.size, "data.batch_size": args.batch,
                            "train.channels_last": not args.nchw})
    fixed = Bench(cfg, torch.device("cpu"))
    torch_norm = networks._norm
    networks._norm = lambda c: nn.InstanceNorm2d(c, affine=False, track_running_stats=False)
    try:
        unfixed = Bench(cfg, torch.device("cpu"))
    finally:
        networks._norm = torch_norm
    assert not any(type(m) is nn.InstanceNorm2d for m in fixed.nets.g.modules())
    assert any(type(m) is nn.InstanceNorm2d for m in unfixed.nets.g.modules())
    times = {"fixed": ([], []), "unfixed": ([], [])}
    for bench in (fixed, unfixed):
        bench.apply_fast_path("inductor")     # compile off: channels_last only
        bench.step()                          # warm-up
    for _ in range(args.steps):
        for name, bench in (("fixed", fixed), ("unfixed", unfixed)):
            wall, cpu = time.perf_counter(), time.process_time()
            bench.step()
            times[name][0].append((time.perf_counter() - wall) * 1000)
            times[name][1].append((time.process_time() - cpu) * 1000)
    out = {"size": args.size, "batch": args.batch, "channels_last": not args.nchw, "steps": args.steps,
           "threads": args.threads, "torch": torch.__version__}
    for name, (wall, cpu) in times.items():
        out[f"{name}_ms_wall_median"] = round(statistics.median(wall), 1)
        out[f"{name}_ms_cpu_median"] = round(statistics.median(cpu), 1)
    out["fixed_over_unfixed_wall"] = round(out["fixed_ms_wall_median"] / out["unfixed_ms_wall_median"], 3)
    out["fixed_over_unfixed_cpu"] = round(out["fixed_ms_cpu_median"] / out["unfixed_ms_cpu_median"], 3)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
