"""``python -m cutdist.bench data``: images/s of the unpaired shard stream, one JSON line.

  --train-a PATTERN --train-b PATTERN [--workers W] [--batches N] [--batch-size B] [--crop S] [--load L]
  [--preprocess P] [--compare-imagefolder [DIR]]

The stream is the training one (``unpaired_loader``, rank 0 of 1); a batch holds B images of A and B of B,
so images/s counts 2B per batch, timed after ``--warmup`` batches (worker start-up is reported apart).
``--compare-imagefolder`` also times a torchvision ImageFolder + DataLoader doing the same augmentations on the
same images stored as files (2B per batch, the same workers): alone, it extracts the shards' images into a
temporary folder; with DIR, it reads an existing ImageFolder layout (one sub-folder per class).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from cutdist.data.manifest import DataError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cutdist.bench data", description=__doc__.splitlines()[0])
    parser.add_argument("--train-a", required=True, help="shards of domain A (brace pattern, glob or URL)")
    parser.add_argument("--train-b", required=True, help="shards of domain B")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--batches", type=int, default=50, help="batches timed (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=2, help="batches read before timing starts")
    parser.add_argument("--batch-size", type=int, default=1, help="pairs per batch (the paper: 1)")
    parser.add_argument("--crop", type=int, default=256, help="crop size (the paper: 256)")
    parser.add_argument("--load", type=int, default=0, help="load size (default: crop * 286 / 256)")
    parser.add_argument("--preprocess", default="resize_and_crop",
                        choices=["resize_and_crop", "scale_width_and_crop", "none"])
    parser.add_argument("--shuffle-buffer", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch intra-op threads of this process (default 1: the loaders are measured, not "
                             "torch's thread pool; 0 keeps torch's default)")
    parser.add_argument("--compare-imagefolder", nargs="?", const="auto", default=None, metavar="DIR",
                        help="also time torchvision ImageFolder on the same images as files (DIR or extracted)")
    return parser


def _time(batches, count_images, warmup: int) -> tuple[float, float, int, int]:
    """(seconds until the warm-up batches arrived, images/s after them, images timed, skipped samples)."""
    start = time.perf_counter()
    timed_from = start
    images = skipped = 0
    for i, batch in enumerate(batches):
        if isinstance(batch, dict):
            skipped += batch["skipped"]
        if i < warmup:
            timed_from = time.perf_counter()
            continue
        images += count_images(batch)
    end = time.perf_counter()
    if images == 0:
        raise DataError("bench data: no batch was timed (raise --batches)")
    return timed_from - start, images / (end - timed_from), images, skipped


def bench_stream(args) -> dict:
    from cutdist.config import DataConfig
    from cutdist.data.splits import resolve_splits
    from cutdist.data.stream import unpaired_loader

    total = (args.batches + args.warmup) * args.batch_size
    cfg = DataConfig(train_a=args.train_a, train_b=args.train_b, num_train_a=total, load_size=args.load,
                     crop_size=args.crop, preprocess=args.preprocess, batch_size=args.batch_size,
                     loader_workers=args.workers, shuffle_buffer=args.shuffle_buffer)
    splits = resolve_splits(cfg)
    loader = unpaired_loader(splits, cfg, rank=0, world_size=1, epoch=0, seed=args.seed)
    startup, rate, images, skipped = _time(loader, lambda b: b["a"].shape[0] + b["b"].shape[0], args.warmup)
    return {"images_per_s": round(rate, 2), "startup_s": round(startup, 3), "images_timed": images,
            "skipped": skipped, "train_a_shards": len(splits.train_a), "train_b_shards": len(splits.train_b)}


def extract_images(splits, directory: Path) -> int:
    """Write the images of trainA/trainB shards as files ``directory/{A,B}/<key>.<ext>`` (original bytes)."""
    from cutdist.data.manifest import open_location
    from cutdist.data.transforms import image_field
    from webdataset.tariterators import base_plus_ext

    count = 0
    for domain, urls in (("A", splits.train_a), ("B", splits.train_b)):
        (directory / domain).mkdir(parents=True, exist_ok=True)
        for url in urls:
            stream = open_location(url)
            try:
                with tarfile.open(fileobj=stream, mode="r|*") as tar:
                    for member in tar:
                        key, ext = base_plus_ext(member.name)
                        if member.isreg() and key and image_field({ext.lower(): None}):
                            name = f"{Path(url).stem}__{key.replace('/', '__')}.{ext.lower()}"
                            (directory / domain / name).write_bytes(tar.extractfile(member).read())
                            count += 1
            finally:
                stream.close()
    return count


class _SeededAugment:
    """The training augmentation as a torchvision transform: one RNG per process, seeded by worker id."""

    def __init__(self, augment, seed: int):
        self.augment, self.seed = augment, seed
        self.rng, self.pid = None, None

    def __call__(self, img):
        if self.pid != os.getpid():
            from torch.utils.data import get_worker_info
            info = get_worker_info()
            self.rng, self.pid = random.Random(self.seed * 1000 + (info.id if info else 0)), os.getpid()
        return self.augment(img, self.rng)


def bench_imagefolder(args, folder: Path) -> dict:
    import torch
    from torch.utils.data import DataLoader, RandomSampler
    from torchvision.datasets import ImageFolder

    from cutdist.data.transforms import TrainAugment

    augment = TrainAugment(preprocess=args.preprocess, load_size=args.load, crop_size=args.crop)
    dataset = ImageFolder(str(folder), transform=_SeededAugment(augment, args.seed))
    per_batch = 2 * args.batch_size
    sampler = RandomSampler(dataset, replacement=True, num_samples=(args.batches + args.warmup) * per_batch,
                            generator=torch.Generator().manual_seed(args.seed))
    loader = DataLoader(dataset, batch_size=per_batch, sampler=sampler, num_workers=args.workers,
                        drop_last=True)
    startup, rate, images, _ = _time(loader, lambda b: b[0].shape[0], args.warmup)
    return {"imagefolder_images_per_s": round(rate, 2), "imagefolder_startup_s": round(startup, 3),
            "imagefolder_images": len(dataset)}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.load = args.load or int(round(args.crop * 286 / 256))
    import torch

    threads_before = torch.get_num_threads()
    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads_before)


def _run(args) -> int:
    try:
        if args.batches < 1 or args.batch_size < 1 or args.workers < 0 or args.warmup < 0:
            raise DataError("bench data: --batches and --batch-size must be >= 1, --workers and --warmup >= 0")
        if args.preprocess != "none" and args.crop > args.load:
            raise DataError(f"--crop: {args.crop} is larger than --load {args.load}")
        result = {"bench": "data", "batches": args.batches, "batch_size": args.batch_size,
                  "images_per_batch": 2 * args.batch_size, "workers": args.workers, "crop": args.crop,
                  "load": args.load, "preprocess": args.preprocess, "torch_threads": args.torch_threads}
        result.update(bench_stream(args))
        if args.compare_imagefolder:
            if args.compare_imagefolder == "auto":
                from cutdist.config import DataConfig
                from cutdist.data.splits import resolve_splits

                splits = resolve_splits(DataConfig(train_a=args.train_a, train_b=args.train_b, num_train_a=1))
                with tempfile.TemporaryDirectory(prefix="cutdist-bench-") as tmp:
                    extract_images(splits, Path(tmp))
                    result.update(bench_imagefolder(args, Path(tmp)))
                result["imagefolder_dir"] = "extracted from the shards (temporary)"
            else:
                folder = Path(args.compare_imagefolder)
                if not folder.is_dir():
                    raise DataError(f"--compare-imagefolder: no such directory {folder}")
                result.update(bench_imagefolder(args, folder))
                result["imagefolder_dir"] = str(folder)
            result["stream_over_imagefolder"] = round(result["images_per_s"] / result["imagefolder_images_per_s"], 3)
    except DataError as err:
        print(f"cutdist.bench data: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
