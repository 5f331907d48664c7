"""``python -m cutdist.bench fid [--workers 1|2] ...``: Inception feature extraction, images/s, one JSON line.

Each of ``--workers`` data-parallel processes (torch.distributed, gloo on CPU, NCCL on CUDA) takes every
world-size-th of ``--images`` synthetic images (cutdist.data.synth, ``--size`` px; the network resizes them to
299 px anyway), runs one untimed warm-up batch, then extracts pool3 features and accumulates statistics
between two barriers. ``images_per_s`` = all images / that wall time; the final all-reduce of the statistics
is timed separately (``all_reduce_s``). On CPU each worker gets ``--threads`` (default: cores / workers).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cutdist.bench fid", description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=1, help="data-parallel processes (default 1)")
    p.add_argument("--images", type=int, default=32, help="images in total, timed (default 32)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--size", type=int, default=64, help="synthetic image size before the 299 px resize")
    p.add_argument("--weights", default="random",
                   help="FID Inception weights (path | auto | random); the speed does not depend on them")
    p.add_argument("--device", default="cpu", help="cpu or cuda (worker r uses cuda:r)")
    p.add_argument("--threads", type=int, default=0, help="torch threads per worker on CPU (0 = cores/workers)")
    return p


def _images(indices: list[int], size: int):
    import numpy as np
    import torch

    from cutdist.data.synth import synth_image

    if not indices:
        return torch.empty(0, 3, size, size)
    stack = np.stack([synth_image(0, "bench", "AB"[i % 2], i, size) for i in indices])
    return torch.from_numpy(stack).permute(0, 3, 1, 2).float().div_(255)


def _measure(rank: int, world: int, args: argparse.Namespace, init_file: str, out_file: str) -> None:
    import torch
    import torch.distributed as dist

    from cutdist.eval.inception import activations, load_inception
    from cutdist.eval.stats import ActivationStats

    cuda = args.device.startswith("cuda")
    if not cuda:
        torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // world))
    device = f"cuda:{rank % max(1, torch.cuda.device_count())}" if cuda else "cpu"
    if world > 1:
        dist.init_process_group("nccl" if cuda else "gloo", init_method=f"file://{init_file}",
                                rank=rank, world_size=world)
    model, backbone = load_inception(args.weights, device)
    images = _images(list(range(rank, args.images, world)), args.size)
    warm = _images([args.images + rank], args.size)

    def sync():
        if cuda:
            torch.cuda.synchronize()
        if world > 1:
            dist.barrier()

    activations(model, warm, batch_size=1)
    stats = ActivationStats()
    sync()
    start = time.perf_counter()
    for i in range(0, images.shape[0], args.batch_size):
        stats.update(activations(model, images[i:i + args.batch_size], batch_size=args.batch_size))
    sync()
    extracted = time.perf_counter()
    stats.all_reduce()
    reduced = time.perf_counter()
    if rank == 0:
        seconds = extracted - start
        result = {"benchmark": "fid", "workers": world, "device": args.device,
                  "threads_per_worker": torch.get_num_threads() if not cuda else None,
                  "images": stats.n, "batch_size": args.batch_size, "size": args.size, "seconds": round(seconds, 4),
                  "images_per_s": round(stats.n / seconds, 3), "all_reduce_s": round(reduced - extracted, 4),
                  "backbone": backbone, "torch": torch.__version__,
                  "gpu": torch.cuda.get_device_name(0) if cuda else None}
        Path(out_file).write_text(json.dumps(result))
    if world > 1:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    for name in ("workers", "images", "batch_size", "size"):
        if getattr(args, name) < 1:
            print(f"cutdist.bench fid: --{name.replace('_', '-')} must be >= 1", file=sys.stderr)
            return 2
    if args.images < args.workers:
        print(f"cutdist.bench fid: --images {args.images} is fewer than --workers {args.workers}", file=sys.stderr)
        return 2
    from cutdist.eval.inception import InceptionWeightsError, load_inception

    if args.weights != "random":
        try:   # fail here, in one line, rather than inside every worker
            load_inception(args.weights, "cpu", download=False)
        except InceptionWeightsError as err:
            print(f"cutdist.bench fid: {err}", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="cutdist-bench-fid-") as tmp:
        init_file, out_file = os.path.join(tmp, "init"), os.path.join(tmp, "result.json")
        if args.workers == 1:
            import torch
            threads = torch.get_num_threads()
            try:
                _measure(0, 1, args, init_file, out_file)
            finally:
                torch.set_num_threads(threads)
        else:
            import torch.multiprocessing as mp
            if not args.device.startswith("cuda"):   # numpy's BLAS too: oversubscribed OpenBLAS slows down badly
                threads = str(args.threads or max(1, (os.cpu_count() or 1) // args.workers))
                os.environ.setdefault("OPENBLAS_NUM_THREADS", threads)
                os.environ.setdefault("OMP_NUM_THREADS", threads)
            mp.spawn(_measure, args=(args.workers, args, init_file, out_file), nprocs=args.workers, join=True)
        print(Path(out_file).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
