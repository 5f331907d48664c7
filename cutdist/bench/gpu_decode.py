"""``python -m cutdist.bench data ... --gpu-decode``: decode + augment images/s of the same shards' images on the GPU
(``cutdist.data.gpu_decode``: batched ``decode_jpeg`` on CUDA) against one CPU core doing the same with PIL.

The encoded bytes are read into memory first (not timed): what is timed is the decoding and the augmentation,
on the device (synchronised at the end) and on the CPU (``decode_rgb`` + ``TrainAugment`` in this process, torch
on one thread), so the two rates compare like for like. Never imports Ray or DeepSpeed.
"""
from __future__ import annotations

import itertools
import random
import time
from pathlib import Path
from typing import Any

import torch

from cutdist.data.gpu_decode import DecodeCounts, augment_batch, decode_batch, read_encoded
from cutdist.data.manifest import DataError
from cutdist.data.transforms import TrainAugment, decode_rgb


def write_jpeg_shards(out_dir: str | Path, *, domain: str, count: int, size: int = 256, per_shard: int = 100,
                      quality: int = 90, seed: int = 0) -> list[Path]:
    """Synthetic JPEG shards ``out_dir/train{domain}-NNNNNN.tar`` (members ``<key>.jpg``): the demo renderer's
    scenes plus Gaussian noise (sigma 8), so the JPEGs carry photo-like entropy rather than flat colour."""
    import io
    import tarfile

    import numpy as np
    from PIL import Image

    from cutdist.data.synth import synth_image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(seed)
    paths = []
    for first in range(0, count, per_shard):
        path = out / f"train{domain}-{first // per_shard:06d}.tar"
        with tarfile.open(path, "w") as tar:
            for index in range(first, min(first + per_shard, count)):
                image = synth_image(seed, "train", domain, index, size).astype(np.float32)
                image = np.clip(image + noise.normal(0.0, 8.0, image.shape), 0, 255).astype(np.uint8)
                buffer = io.BytesIO()
                Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
                data = buffer.getvalue()
                info = tarfile.TarInfo(f"{domain}{index:06d}.jpg")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        paths.append(path)
    return paths


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_decode(urls: list[str], *, device: str, batch: int, batches: int, warmup: int, load_size: int,
                 crop_size: int, seed: int = 0, cpu_images: int = 200) -> dict[str, Any]:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DataError("--decode-device cuda: no CUDA device is visible to torch")
    pool = [(f"{url}:{name}", data) for url, name, data in read_encoded(urls)]
    if not pool:
        raise DataError(f"--gpu-decode: no image in {len(urls)} shard(s)")
    needed = (batches + warmup) * batch
    encoded = list(itertools.islice(itertools.cycle(pool), needed))
    rng = random.Random(seed)
    counts = DecodeCounts()

    def one(i: int) -> int:
        images = decode_batch(encoded[i * batch:(i + 1) * batch], dev, counts)
        if images:
            augment_batch(images, rng, load_size=load_size, crop_size=crop_size)
        return len(images)

    for i in range(warmup):
        one(i)
    _sync(dev)
    start = time.perf_counter()
    done = sum(one(warmup + i) for i in range(batches))
    _sync(dev)
    device_rate = done / (time.perf_counter() - start)

    augment = TrainAugment(preprocess="resize_and_crop", load_size=load_size, crop_size=crop_size)
    sample = encoded[:min(cpu_images, len(encoded))]
    start = time.perf_counter()
    for _, data in sample:
        augment(decode_rgb(data), rng)
    cpu_rate = len(sample) / (time.perf_counter() - start)

    jpeg = sum(1 for _, data in pool if data[:3] == b"\xff\xd8\xff")
    return {"decode_device": str(dev), "decode_device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda"
            else "cpu", "decode_batch": batch, "decode_images_timed": done,
            "decode_augment_images_per_s": round(device_rate, 1),
            "cpu_decode_augment_images_per_s_per_core": round(cpu_rate, 1),
            "decode_speedup_vs_one_core": round(device_rate / cpu_rate, 2),
            "decode_distinct_images": len(pool), "decode_jpeg_fraction": round(jpeg / len(pool), 3),
            "decode_cpu_fallback": counts.cpu_decoded, "decode_skipped": counts.skipped}


def main(argv: list[str] | None = None) -> int:
    import argparse
    import glob
    import json
    import sys

    parser = argparse.ArgumentParser(prog="python -m cutdist.bench decode", description=__doc__.splitlines()[0])
    parser.add_argument("--shards", nargs="+", required=True, help="tar shards (paths or globs) holding images")
    parser.add_argument("--decode-device", default="cuda", help="cuda (nvJPEG) or cpu (torchvision's CPU decoder)")
    parser.add_argument("--batch", type=int, default=64, help="images per decode_jpeg call")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--load", type=int, default=0, help="load size (default: crop * 286 / 256)")
    parser.add_argument("--cpu-images", type=int, default=200, help="images timed on one CPU core")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    load = args.load or int(round(args.crop * 286 / 256))
    try:
        if args.batch < 1 or args.batches < 1 or args.warmup < 0 or args.cpu_images < 1:
            raise DataError("--batch, --batches and --cpu-images must be >= 1, --warmup >= 0")
        urls = []
        for pattern in args.shards:
            found = sorted(glob.glob(pattern))
            if not found:
                raise DataError(f"--shards: {pattern} matches no file")
            urls += found
        result = {"bench": "decode", "shards": len(urls), "crop": args.crop, "load": load}
        result.update(bench_decode(urls, device=args.decode_device, batch=args.batch, batches=args.batches,
                                   warmup=args.warmup, load_size=load, crop_size=args.crop, seed=args.seed,
                                   cpu_images=args.cpu_images))
    except DataError as err:
        print(f"cutdist.bench decode: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    import sys
    sys.exit(main())
