"""``python -m cutdist.bench data``: images/s of the unpaired shard stream, one JSON line.

  --train-a PATTERN --train-b PATTERN [--workers W] [--batches N] [--batch-size B] [--crop S] [--load L]
  [--preprocess P] [--compare-sequential] [--rounds R] [--compare-imagefolder [DIR]]
  --frames N [--rounds R] [--max-side 1024] [--quality 95] [--gpu-peak-tflops T] [--mfu F] [--crop ...]

With ``--frames N`` no shards are given: synthetic full-size GTA5/Cityscapes frames are written, stored as PNG
and as re-encoded JPEG, and read per CPU core, with the cores a GPU needs (``cutdist.bench.frames``).

The stream is the training one (``unpaired_loader``, rank 0 of 1); a batch holds B images of A and B of B,
so images/s counts 2B per batch, timed after ``--warmup`` batches (worker start-up is reported apart); it
reads on into the next epochs when ``--batches`` is more than one epoch.
``--compare-sequential`` also times the stream as it was before it sampled by index (each loader worker reading
its own shards in file order through webdataset's ResampledShards and a 100-sample shuffle buffer, with the same
decoding and augmentation), alternating the two ``--rounds`` times, and reports ``indexed_over_sequential``.
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

from torch.utils.data import IterableDataset

from cutdist.data.manifest import DataError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cutdist.bench data", description=__doc__.splitlines()[0])
    parser.add_argument("--train-a", help="shards of domain A (brace pattern, glob or URL)")
    parser.add_argument("--train-b", help="shards of domain B")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--batches", type=int, default=50, help="batches timed (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=2, help="batches read before timing starts")
    parser.add_argument("--batch-size", type=int, default=1, help="pairs per batch (the paper: 1)")
    parser.add_argument("--crop", type=int, default=256, help="crop size (the paper: 256)")
    parser.add_argument("--load", type=int, default=0, help="load size (default: crop * 286 / 256)")
    parser.add_argument("--preprocess", default="resize_and_crop",
                        choices=["resize_and_crop", "scale_width_and_crop", "none"])
    parser.add_argument("--compare-sequential", action="store_true",
                        help="also time the sequential shard stream (before issue 12) on the same shards")
    parser.add_argument("--rounds", type=int, default=1,
                        help="alternations of what is compared (--compare-sequential, --frames)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch intra-op threads of this process (default 1: the loaders are measured, not "
                             "torch's thread pool; 0 keeps torch's default)")
    parser.add_argument("--compare-imagefolder", nargs="?", const="auto", default=None, metavar="DIR",
                        help="also time torchvision ImageFolder on the same images as files (DIR or extracted)")
    from cutdist.bench.frames import add_arguments

    add_arguments(parser)
    return parser


def _time(batches, count_images, warmup: int) -> tuple[float, float, int, int, float]:
    """(seconds until the warm-up batches arrived, images/s after them, images timed, skipped samples,
    images per CPU-second of this process after them: with no loader workers, the rate of one core whatever
    else the machine is doing)."""
    start = time.perf_counter()
    timed_from, cpu_from = start, time.process_time()
    images = skipped = 0
    for i, batch in enumerate(batches):
        if isinstance(batch, dict):
            skipped += batch["skipped"]
        if i < warmup:
            timed_from, cpu_from = time.perf_counter(), time.process_time()
            continue
        images += count_images(batch)
    end, cpu_end = time.perf_counter(), time.process_time()
    if images == 0:
        raise DataError("bench data: no batch was timed (raise --batches)")
    return timed_from - start, images / (end - timed_from), images, skipped, images / max(cpu_end - cpu_from, 1e-9)


def _data_cfg(args):
    from cutdist.config import DataConfig

    return DataConfig(train_a=args.train_a, train_b=args.train_b, load_size=args.load, crop_size=args.crop,
                      preprocess=args.preprocess, batch_size=args.batch_size, loader_workers=args.workers)


def _epochs(splits, cfg, seed: int, count: int):
    """``count`` batches of the training stream, over as many epochs as that takes."""
    from cutdist.data.stream import unpaired_loader

    epoch = 0
    while count > 0:
        for batch in unpaired_loader(splits, cfg, rank=0, world_size=1, epoch=epoch, seed=seed):
            yield batch
            count -= 1
            if count == 0:
                return
        epoch += 1


def bench_stream(args, splits) -> dict:
    cfg = _data_cfg(args)
    batches = _epochs(splits, cfg, args.seed, args.batches + args.warmup)
    startup, rate, images, skipped, per_cpu_s = _time(batches, lambda b: b["a"].shape[0] + b["b"].shape[0],
                                                      args.warmup)
    return {"images_per_s": round(rate, 2), "images_per_cpu_s": round(per_cpu_s, 2), "startup_s": round(startup, 3),
            "images_timed": images,
            "skipped": skipped, "train_a_shards": len(splits.train_a), "train_b_shards": len(splits.train_b),
            "epoch_size": splits.epoch_size}


def _zero() -> int:
    return 0


class _SequentialStream(IterableDataset):
    """The stream before issue 12, for comparison: each loader worker resamples its own shards in file order
    through a shuffle buffer, A and B zipped; same decoding, augmentation and batching as the training stream."""

    def __init__(self, splits, augment, batch_size: int, seed: int, buffer: int = 100):
        self.urls = {"A": list(splits.train_a), "B": list(splits.train_b)}
        self.augment, self.batch_size, self.seed, self.buffer = augment, batch_size, seed, buffer

    def _domain(self, domain: str, worker: int, workers: int):
        import webdataset as wds

        from cutdist.data.transforms import decode_rgb, image_field

        own = self.urls[domain][worker::workers] or self.urls[domain]
        seeds = [hash((self.seed, worker, domain, purpose)) & 0xFFFFFFFF for purpose in range(3)]
        pipeline = wds.DataPipeline(wds.ResampledShards(own, seed=seeds[0], worker_seed=_zero, deterministic=True),
                                    wds.tarfile_to_samples(),
                                    wds.shuffle(self.buffer, initial=self.buffer, rng=random.Random(seeds[1])))
        rng = random.Random(seeds[2])
        for sample in pipeline:
            yield self.augment(decode_rgb(sample[image_field(sample)]), rng)

    def __iter__(self):
        from torch.utils.data import get_worker_info

        from cutdist.data.transforms import stack

        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        pairs = zip(self._domain("A", worker, workers), self._domain("B", worker, workers))
        while True:
            batch = [next(pairs) for _ in range(self.batch_size)]
            yield {"a": stack([p[0] for p in batch]), "b": stack([p[1] for p in batch]), "skipped": 0}


def bench_sequential(args, splits) -> dict:
    from itertools import islice

    from torch.utils.data import DataLoader

    from cutdist.data.transforms import TrainAugment

    augment = TrainAugment(preprocess=args.preprocess, load_size=args.load, crop_size=args.crop)
    dataset = _SequentialStream(splits, augment, args.batch_size, args.seed)
    loader = DataLoader(dataset, batch_size=None, num_workers=args.workers,
                        prefetch_factor=2 if args.workers else None)
    batches = islice(iter(loader), args.batches + args.warmup)
    startup, rate, images, _, _ = _time(batches, lambda b: b["a"].shape[0] + b["b"].shape[0], args.warmup)
    return {"sequential_images_per_s": round(rate, 2), "sequential_startup_s": round(startup, 3)}


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
    startup, rate, images, _, _ = _time(loader, lambda b: b[0].shape[0], args.warmup)
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
        from cutdist.data.splits import resolve_splits

        if args.frames:
            if args.train_a or args.train_b or args.compare_imagefolder or args.compare_sequential:
                raise DataError("bench data: --frames makes its own shards; leave out --train-a/--train-b/"
                                "--compare-imagefolder/--compare-sequential")
            from cutdist.bench.frames import run_frames

            args.workers = result["workers"] = 0
            result.update(run_frames(args, lambda a: bench_stream(a, resolve_splits(_data_cfg(a)))))
            print(json.dumps(result))
            return 0
        if not (args.train_a and args.train_b):
            raise DataError("bench data: give --train-a and --train-b shards, or --frames N")
        splits = resolve_splits(_data_cfg(args))
        if args.compare_sequential:   # alternated, so a machine shared with others disturbs both alike
            if args.rounds < 1:
                raise DataError("bench data: --rounds must be >= 1")
            indexed, sequential = [], []
            for _ in range(args.rounds):
                indexed.append(bench_stream(args, splits))
                sequential.append(bench_sequential(args, splits))
            result.update(indexed[-1])
            result["images_per_s"] = round(sum(r["images_per_s"] for r in indexed) / args.rounds, 2)
            result["sequential_images_per_s"] = round(
                sum(r["sequential_images_per_s"] for r in sequential) / args.rounds, 2)
            result["rounds"] = args.rounds
            result["indexed_over_sequential"] = round(result["images_per_s"] / result["sequential_images_per_s"], 3)
        else:
            result.update(bench_stream(args, splits))
        if args.compare_imagefolder:
            if args.compare_imagefolder == "auto":
                from cutdist.config import DataConfig
                from cutdist.data.splits import resolve_splits

                splits = resolve_splits(DataConfig(train_a=args.train_a, train_b=args.train_b))
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
