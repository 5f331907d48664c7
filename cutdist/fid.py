"""``python -m cutdist.fid PATH_A [PATH_B] [options]``: the FID between two sets of images, as pytorch-fid.

Each PATH is one of:
- an image folder: read exactly as pytorch-fid reads one (no resize unless ``--size``);
- a shard directory (``manifest.parquet`` or ``*.tar``): its ``--split`` (default testB), resized to ``--size``
  (default: the split's own size when all its images share one, from the manifest);
- an ``.npz`` of statistics in pytorch-fid's format (``mu``, ``sigma``), e.g. written by ``--save-stats``.

Prints ``FID <value> (backbone: <label>; <n_a> vs <n_b> images)`` on stdout; a progress bar and notes go to
stderr. ``--kid`` adds ``KID <mean> ± <std> (<subsets> subsets of <size>; ...)``: the Kernel Inception Distance
from the same features (``cutdist.eval.kid``: unbiased MMD², cubic kernel, 100 subsets of min(1000, n));
an .npz then needs the features themselves, which ``--save-stats`` stores when ``--kid`` is given. ``--weights``: a .pth path, ``auto`` (torch hub cache, downloaded where the network allows) or
``random`` (a seeded random-init backbone for offline demos: warned about, and its label says it is not a
real FID). An .npz made here carries its backbone label and must match the one in use; pytorch-fid's own
.npz carry none and are assumed to match. ``--save-stats OUT.npz`` writes the statistics of PATH_A (PATH_B may
then be omitted) with the backbone label and image count as metadata. Errors are one line and exit 2.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

USAGE_ERROR = 2


class UsageError(Exception):
    """A bad argument or input; printed as one line, exit 2."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cutdist.fid", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path_a", metavar="PATH_A", help="image folder, shard directory or .npz statistics")
    p.add_argument("path_b", metavar="PATH_B", nargs="?", help="the second set (omit with --save-stats)")
    p.add_argument("--weights", default="auto",
                   help="FID Inception weights: a .pth path, 'auto' (torch hub cache, downloaded where the "
                        "network allows) or 'random' (offline demos; not a real FID). Default: auto")
    p.add_argument("--seed", type=int, default=0, help="seed of the random backbone (--weights random)")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--size", type=int, default=0,
                   help="resize images to SIZE x SIZE first (folders: default keep their size, as pytorch-fid; "
                        "shard directories: default the split's size from the manifest)")
    p.add_argument("--split", default="testB", help="the split read from a shard directory (default testB)")
    p.add_argument("--save-stats", metavar="OUT.npz", help="write the statistics of PATH_A to OUT.npz")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--kid", action="store_true",
                   help="also the Kernel Inception Distance (and --save-stats keeps the features it needs)")
    p.add_argument("--kid-subsets", type=int, default=100, help="KID: random subsets (default 100)")
    p.add_argument("--kid-subset-size", type=int, default=1000,
                   help="KID: images per subset, capped by the smaller set (default 1000)")
    return p


def _kind(path: str) -> str:
    p = Path(path)
    if p.suffix == ".npz":
        if not p.is_file():
            raise UsageError(f"{path}: no such statistics file")
        return "npz"
    if not p.exists():
        raise UsageError(f"{path}: no such file or directory")
    if not p.is_dir():
        raise UsageError(f"{path}: not an image folder, shard directory or .npz file")
    return "shards" if (p / "manifest.parquet").is_file() or any(p.glob("*.tar")) else "folder"


def _stats_of(path: str, kind: str, args, model, backbone: str):
    """(mu, sigma, n_images, meta) of one PATH; with ``--kid`` meta["features"] holds its activations."""
    from tqdm import tqdm

    from cutdist.data.manifest import DataError
    from cutdist.eval.sources import SkipCount, accumulate_stats, folder_batches, image_files, shard_batches, \
        shard_split
    from cutdist.eval.stats import load_stats

    if kind == "npz":
        try:
            mu, sigma, meta = load_stats(path, with_meta=True)
        except ValueError as err:
            raise UsageError(str(err)) from None
        theirs = meta.get("backbone")
        if theirs is None:
            print(f"note: {path} carries no backbone label (pytorch-fid's own file?); assuming it was made "
                  f"with {backbone}", file=sys.stderr)
        elif backbone and theirs != backbone:
            raise UsageError(f"{path}: statistics were made with backbone {theirs!r}, not {backbone!r}; "
                             "FIDs across backbones are meaningless")
        if args.kid and not isinstance(meta.get("features"), np.ndarray):
            raise UsageError(f"{path}: holds no Inception features, which KID needs (write it with "
                             "--save-stats ... --kid, or pass the images)")
        return mu, sigma, int(meta.get("n_images", 0)), meta

    skipped = SkipCount()
    if kind == "folder":
        files = image_files(path)
        if len(files) < 2:
            raise UsageError(f"{path}: {len(files)} image file(s); FID needs at least 2")
        batches = folder_batches(files, batch_size=args.batch_size, size=args.size, skipped=skipped)
        total, size = len(files), args.size
    else:
        try:
            split = shard_split(path, args.split)
        except DataError as err:
            raise UsageError(str(err)) from None
        size = args.size
        if not size:
            if len(split.sizes) != 1 or len(set(next(iter(split.sizes)))) != 1:
                raise UsageError(f"{path}: split {args.split} has images of sizes {sorted(split.sizes)[:4]} "
                                 "(or no manifest); pass --size")
            size = next(iter(split.sizes))[0]
        batches = shard_batches(split.urls, size=size, batch_size=args.batch_size,
                                on_skipped=lambda n: setattr(skipped, "count", skipped.count + n))
        total = split.count
    features: list | None = [] if args.kid else None
    with tqdm(total=total, unit="img", desc=Path(path).name, disable=args.no_progress, file=sys.stderr) as bar:
        stats = accumulate_stats(batches, model, batch_size=args.batch_size, progress=bar, features=features)
    if skipped.count:
        print(f"warning: {path}: {skipped.count} undecodable image(s) skipped, e.g. {skipped.examples[:3]}",
              file=sys.stderr)
    if stats.n < 2:
        raise UsageError(f"{path}: {stats.n} readable image(s); FID needs at least 2")
    mu, sigma = stats.mu_sigma()
    meta = {"skipped": skipped.count, "size": size}
    if features is not None:
        meta["features"] = np.concatenate(features)
    return mu, sigma, stats.n, meta


def run(args) -> int:
    if args.path_b is None and not args.save_stats:
        raise UsageError("PATH_B: required unless --save-stats is given")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size: must be >= 1, got {args.batch_size}")
    if args.size < 0:
        raise UsageError(f"--size: must be >= 0, got {args.size}")
    if args.kid_subsets < 1 or args.kid_subset_size < 2:
        raise UsageError(f"--kid-subsets / --kid-subset-size: need >= 1 and >= 2, got {args.kid_subsets} and "
                         f"{args.kid_subset_size}")
    paths = [p for p in (args.path_a, args.path_b) if p is not None]
    kinds = [_kind(p) for p in paths]   # before importing torch: a wrong path fails at once
    if args.save_stats and kinds[0] == "npz":
        raise UsageError(f"--save-stats: {args.path_a} already is statistics")
    if args.save_stats:   # before any statistics are computed
        from cutdist.paths import output_file_problem

        problem = output_file_problem(args.save_stats, "--save-stats", suffix=".npz")
        if problem:
            raise UsageError(problem)

    import torch

    from cutdist.eval.frechet import frechet_distance
    from cutdist.eval.inception import InceptionWeightsError, backbone_caveat, load_inception
    from cutdist.eval.stats import load_stats, save_stats

    if all(k == "npz" for k in kinds):
        # Nothing to extract: the label comes from the files (pytorch-fid's own npz carry none).
        try:
            labels = {str(load_stats(p, with_meta=True)[2].get("backbone", "")) for p in paths}
        except ValueError as err:   # a malformed .npz: load_stats names it
            raise UsageError(str(err)) from None
        labels.discard("")
        if len(labels) > 1:
            raise UsageError(f"{paths[0]} and {paths[1]}: statistics from different backbones {sorted(labels)}")
        model, backbone = None, labels.pop() if labels else "unknown (npz without backbone label)"
    else:
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            model, backbone = load_inception(args.weights, device, seed=args.seed)
        except InceptionWeightsError as err:
            raise UsageError(str(err)) from None

    caveat = backbone_caveat(backbone)
    if caveat:
        print(f"warning: backbone {backbone}: {caveat}", file=sys.stderr)
    results = [_stats_of(p, k, args, model, "" if model is None else backbone) for p, k in zip(paths, kinds)]
    if args.save_stats:
        mu, sigma, n, meta = results[0]
        extra = {"features": meta["features"]} if "features" in meta else {}
        try:
            out = save_stats(args.save_stats, mu, sigma, backbone=backbone, n_images=n, source=str(args.path_a),
                             size=meta["size"], skipped=meta["skipped"], **extra)
        except OSError as err:   # checked before the work; the disk may still fill up
            raise UsageError(f"--save-stats: cannot write {args.save_stats} ({err.strerror or err})") from None
        print(f"saved statistics of {args.path_a} ({n} images, backbone: {backbone}) to {out}", file=sys.stderr)
    if len(results) == 2:
        (mu1, s1, n1, _), (mu2, s2, n2, _) = results
        if mu1.shape != mu2.shape:
            raise UsageError(f"statistics of different dimensions: {mu1.shape[0]} vs {mu2.shape[0]}")
        fid = frechet_distance(mu1, s1, mu2, s2)
        counts = " vs ".join(str(n) if n else "?" for n in (n1, n2))
        print(f"FID {fid:.6f} (backbone: {backbone}; {counts} images)")
        if args.kid:
            from cutdist.eval.kid import kid

            result = kid(results[0][3]["features"], results[1][3]["features"], subsets=args.kid_subsets,
                         subset_size=args.kid_subset_size)
            note = "; whole sets, no spread" if result.subset_size == result.n_x == result.n_y \
                else ""
            print(f"KID {result.mean:.6f} ± {result.std:.6f} ({result.subsets} subsets of {result.subset_size}"
                  f"{note}; backbone: {backbone}; {result.n_x} vs {result.n_y} images)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return run(args)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return USAGE_ERROR


if __name__ == "__main__":
    warnings.simplefilter("default")
    sys.exit(main())
