"""``python -m cutdist.bench data --frames N``: the GTA5 -> Cityscapes data rate at full size, one JSON line.

Writes N synthetic GTA5-sized (1914 x 1052) and N Cityscapes-sized (2048 x 1024) PNG frames in their folder
layouts (``cutdist.data.frames``), builds two shard sets from them with ``shards write`` in ONE process each:
PNG as shipped (original bytes) and re-encoded (``--max-side``, JPEG ``--quality``), timing both writes; then
reads each set through the training stream in this one process (no loader workers, one torch thread),
``--rounds`` times alternating, with the job's augmentation (``--preprocess``, ``--load``,
``--crop``). Rates per core are images per CPU-second of the process doing the work (``time.process_time``,
plus its children's for the writes), so they hold on a machine shared with other work; wall-clock rates are
reported beside them. Last, the training rate one GPU would have at ``--crop``: FLOPs of one CUT step (the paper's
model) from ``torch.utils.flop_counter`` at crop/8 and crop/4, extrapolated as a + b * pixels (convolutions
cost in proportion to pixels, PatchNCE's fixed 256 locations do not; from 64^2 and 128^2 this fit gives the
counted 256^2 FLOPs within 0.2 % and the counted 512^2 FLOPs within 0.3 %), divided into ``--gpu-peak-tflops`` x ``--mfu``. A step reads batch images of A and of B, so a GPU
needs 2 x steps/s images/s, i.e. that divided by the per-core rate in cores.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("full-size frames (--frames N)")
    group.add_argument("--frames", type=int, default=0, metavar="N",
                       help="benchmark synthetic full-size GTA5/Cityscapes frames (N per domain) instead of shards")
    group.add_argument("--frame-scale", type=float, default=1.0,
                       help="frames this fraction of full size, same layout (quick checks; default 1)")
    group.add_argument("--max-side", type=int, default=1024, help="re-encoded variant: longer side (default 1024)")
    group.add_argument("--quality", type=int, default=95, help="re-encoded variant: JPEG quality (default 95)")
    group.add_argument("--gpu-peak-tflops", type=float, default=989.0,
                       help="dense bf16 peak of the GPU (default 989: H100/H200 SXM)")
    group.add_argument("--mfu", type=float, default=0.3,
                       help="assumed fraction of that peak a CUT step reaches (default 0.3)")


def step_flops(size: int, batch: int) -> tuple[int, dict]:
    """FLOPs of one CUT training step at ``size``^2, from counts at size/8 and size/4 (see the module doc)."""
    import torch

    from cutdist.bench import train_step

    counts = {}
    for side in (max(32, size // 8), max(64, size // 4)):   # D needs >= 24 pixels
        side -= side % 4
        args = train_step._parser().parse_args(["--size", str(side), "--batch", str(batch)])
        counts[side] = train_step.count_step_flops(train_step.Bench(train_step._job(args), torch.device("cpu")))[
            "flops_per_step"]
    (s1, f1), (s2, f2) = counts.items()
    per_pixel = (f2 - f1) / (s2 * s2 - s1 * s1)
    return int(f1 + per_pixel * (size * size - s1 * s1)), {str(k): v for k, v in counts.items()}


def run_frames(args, bench_stream) -> dict:
    from cutdist.data.frames import write_layouts
    from cutdist.data.manifest import DataError
    from cutdist.data.writer import Encoding, write_splits

    if args.frames < 1 or args.rounds < 1 or not 0 < args.mfu <= 1 or not 0 < args.frame_scale <= 1:
        raise DataError("bench data: --frames and --rounds must be >= 1, --mfu and --frame-scale in (0, 1]")
    result = {"mode": "frames", "frames_per_domain": args.frames}
    variants = {"png": Encoding(), f"jpeg{args.max_side}": Encoding(args.max_side, "jpeg", args.quality)}
    with tempfile.TemporaryDirectory(prefix="cutdist-frames-") as tmp:
        folders = write_layouts(Path(tmp) / "src", gta=args.frames, cityscapes_train=args.frames,
                                scale=args.frame_scale)
        sources = {"trainA": folders["gta"], "trainB": folders["cityscapes_train"]}
        shard_sets = {}
        for name, encoding in variants.items():
            out = Path(tmp) / name
            report = write_splits(sources, out, encoding=encoding, workers=1, max_count=max(1, args.frames // 2),
                                  progress=False)
            result[f"write_{name}_images_per_cpu_s"] = round(report.images_per_cpu_s(), 2)
            result[f"write_{name}_images_per_s_wall"] = round(report.images_per_s(), 2)
            import pyarrow.parquet as pq

            rows = pq.read_table(out / "manifest.parquet").to_pylist()
            for split, label in (("trainA", "gta"), ("trainB", "cityscapes")):
                mine = [r for r in rows if r["split"] == split]
                result[f"{name}_{label}_mean_mb"] = round(statistics.mean(r["bytes"] for r in mine) / 1e6, 3)
                result[f"{name}_{label}_size"] = f"{mine[0]['width']}x{mine[0]['height']}"
            shard_sets[name] = out
        rates: dict[str, list[float]] = {name: [] for name in variants}
        wall: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, out in shard_sets.items():
                args.train_a, args.train_b = str(out / "trainA-*.tar"), str(out / "trainB-*.tar")
                timed = bench_stream(args)
                rates[name].append(timed["images_per_cpu_s"])
                wall[name].append(timed["images_per_s"])
    per_core = {name: round(statistics.mean(values), 2) for name, values in rates.items()}
    result["stream_images_per_s_per_core"] = per_core
    result["stream_rounds_per_cpu_s"] = rates
    result["stream_rounds_per_s_wall"] = wall
    names = list(variants)
    result[f"{names[1]}_over_png"] = round(per_core[names[1]] / per_core["png"], 2)
    flops, counted = step_flops(args.crop, args.batch_size)
    steps = args.gpu_peak_tflops * 1e12 * args.mfu / flops
    needed = 2 * args.batch_size * steps
    result.update({"flops_per_step": flops, "flops_counted_at": counted,
                   "gpu_effective_tflops": round(args.gpu_peak_tflops * args.mfu, 1),
                   "gpu_steps_per_s_estimated": round(steps, 2), "gpu_images_needed_per_s": round(needed, 1),
                   "cores_per_gpu": {name: round(needed / rate, 1) for name, rate in per_core.items()}})
    return result
