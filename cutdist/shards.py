"""``python -m cutdist.shards {write,inspect,synth}``: build and check WebDataset shard directories.

  write SRC OUT_DIR [--max-count N] [--max-size BYTES] [--workers W] [--split NAME]
  inspect OUT_DIR [--verify] [--json]
  synth OUT_DIR [--size 64] [--count N] [--test-count N] [--seed S] [--max-count N] [--workers W]

Exit status: 0 done, 1 ``--verify`` found differences, 2 bad arguments or unusable data (one line on stderr).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from cutdist.data.manifest import DataError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cutdist.shards", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    write = sub.add_parser("write", help="image folder or CycleGAN-style root -> shards + manifest.parquet")
    write.add_argument("src", help="a dataset root with trainA/ trainB/ testA/ testB/ (testGT/), or an image folder")
    write.add_argument("out_dir")
    write.add_argument("--split", help="the split a plain image folder becomes (trainA, trainB, testA, testB, testGT)")
    write.add_argument("--max-count", type=int, default=200, help="images per shard (default 200)")
    write.add_argument("--max-size", type=int, default=256 * 2 ** 20, help="bytes per shard (default 256 MiB)")
    write.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                       help="processes decoding images to check them (default: CPUs, at most 8)")

    inspect = sub.add_parser("inspect", help="counts, shard sizes, image sizes; --verify re-reads everything")
    inspect.add_argument("out_dir", help="a shard directory or URL prefix holding manifest.parquet")
    inspect.add_argument("--verify", action="store_true", help="re-read every sample and check its sha256")
    inspect.add_argument("--json", action="store_true", help="print the report as one JSON object")

    synth = sub.add_parser("synth", help="the demo dataset: flat shapes (A) -> striped shapes (B), paired test GT")
    synth.add_argument("out_dir")
    synth.add_argument("--size", type=int, default=64)
    synth.add_argument("--count", type=int, default=400, help="training images per domain")
    synth.add_argument("--test-count", type=int, default=64, help="test images per domain (and ground truths)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--max-count", type=int, default=50, help="images per shard")
    synth.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    progress = sys.stderr.isatty()
    try:
        if args.command == "write":
            from cutdist.data.writer import write_image_folder

            report = write_image_folder(args.src, args.out_dir, split=args.split, max_count=args.max_count,
                                        max_size=args.max_size, workers=args.workers, progress=progress)
            print(report.summary())
            return 0
        if args.command == "synth":
            from cutdist.data.synth import write_synth_dataset

            out = write_synth_dataset(args.out_dir, size=args.size, count=args.count, test_count=args.test_count,
                                      seed=args.seed, max_count=args.max_count, workers=args.workers,
                                      progress=progress)
            print(f"wrote {out}: trainA/trainB {args.count} each, testA/testB/testGT {args.test_count} each, "
                  f"{args.size}x{args.size} PNG, seed {args.seed}")
            return 0
        from cutdist.data.inspection import format_report, inspect_shards, verify_shards

        report = inspect_shards(args.out_dir)
        problems = verify_shards(args.out_dir, progress=progress) if args.verify else None
        if args.json:
            if problems is not None:
                report["problems"] = problems
            print(json.dumps(report))
        else:
            print(format_report(report))
            if problems is not None:
                for line in problems:
                    print(f"MISMATCH {line}")
                verdict = f"{len(problems)} problem(s)" if problems else "OK, every sample matches the manifest"
                print(f"verify: {verdict}")
        return 1 if problems else 0
    except DataError as err:
        print(f"cutdist.shards {args.command}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
