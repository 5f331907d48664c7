"""``python -m cutdist.shards {write,inspect,synth}``: build and check WebDataset shard directories.

  write [SRC] OUT_DIR [--split NAME] [--train-a DIR] [--train-b DIR] [--test-a DIR] [--test-b DIR] [--test-gt DIR]
        [--test-a-from-train N] [--test-b-from-train N] [--seed N] [--max-side PX] [--format jpeg|webp|png]
        [--quality Q] [--max-count N] [--max-size BYTES] [--workers W]
  inspect OUT_DIR [--verify] [--json]
  synth OUT_DIR [--size 64] [--count N] [--test-count N] [--seed S] [--max-count N] [--workers W]

Exit status: 0 done, 1 ``--verify`` found differences, 2 bad arguments or unusable data (one line on stderr).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from cutdist.data.manifest import SPLITS, DataError
from cutdist.data.writer import ENCODE_FORMATS


SPLIT_FLAGS = {"trainA": "--train-a", "trainB": "--train-b", "testA": "--test-a", "testB": "--test-b",
               "testGT": "--test-gt"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cutdist.shards", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    write = sub.add_parser("write", help="image folders -> shards + manifest.parquet (resumable, parallel)")
    write.add_argument("paths", nargs="+", metavar="[SRC] OUT_DIR",
                       help="SRC: a dataset root with trainA/ trainB/ testA/ testB/ (testGT/), or with --split an "
                            "image folder; leave it out when every split comes from its own --train-a/... folder")
    write.add_argument("--split", help="the split a plain image folder becomes (trainA, trainB, testA, testB, testGT)")
    for split in SPLITS:
        write.add_argument(SPLIT_FLAGS[split], dest=f"src_{split}", metavar="DIR",
                           help=f"the folder {split} is read from, recursively")
    for split in ("testA", "testB"):
        write.add_argument(f"--{split[:-1]}-{split[-1].lower()}-from-train", dest=f"holdout_{split}", type=int,
                           default=0, metavar="N", help=f"hold out N seeded images of train{split[-1]} as {split} "
                                                        "(they leave the train split)")
    write.add_argument("--seed", type=int, default=None,
                       help="shuffle each split's sample order with this seed (default: file order); also draws "
                            "the held-out images (default seed 0)")
    write.add_argument("--max-side", type=int, default=None, metavar="PX",
                       help="down-scale images whose longer side exceeds PX (Lanczos, aspect kept)")
    write.add_argument("--format", choices=sorted(ENCODE_FORMATS), default=None,
                       help="re-encode every image in this format (default: original bytes)")
    write.add_argument("--quality", type=int, default=None, help="JPEG/WebP quality (default 95 / 90)")
    write.add_argument("--max-count", type=int, default=200, help="images per shard (default 200)")
    write.add_argument("--max-size", type=int, default=256 * 2 ** 20,
                       help="bytes per shard, counted on the source files (default 256 MiB)")
    write.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                       help="processes reading, checking and re-encoding images, one shard each at a time "
                            "(default: CPUs, at most 8)")

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


def _write_sources(args) -> dict:
    """{split: folder} from SRC (a dataset root, or an image folder with --split) or the per-split flags."""
    from cutdist.data.writer import scan_source

    flags = {split: getattr(args, f"src_{split}") for split in SPLITS if getattr(args, f"src_{split}")}
    if len(args.paths) > 2:
        raise DataError(f"write: expected [SRC] OUT_DIR, got {len(args.paths)} paths")
    if len(args.paths) == 2:
        if flags:
            raise DataError("write: give a dataset root SRC or per-split folders (--train-a ...), not both")
        return scan_source(args.paths[0], args.split)
    if not flags:
        raise DataError("write: no source: give SRC OUT_DIR, or OUT_DIR with --train-a DIR --train-b DIR ...")
    if args.split:
        raise DataError("--split: only with a plain image folder SRC")
    return flags


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    progress = sys.stderr.isatty()
    try:
        if args.command == "write":
            from cutdist.data.writer import Encoding, write_splits

            report = write_splits(_write_sources(args), args.paths[-1],
                                  holdout={s: getattr(args, f"holdout_{s}") for s in ("testA", "testB")},
                                  seed=args.seed, encoding=Encoding(args.max_side, args.format, args.quality),
                                  max_count=args.max_count, max_size=args.max_size, workers=args.workers,
                                  progress=progress)
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
