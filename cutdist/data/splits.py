"""Which shards a job reads: ``resolve_splits(cfg.data)`` runs on the driver before any worker starts.

Shards come from ``data.root`` (a local directory or a URL prefix holding ``manifest.parquet``, read through
webdataset's ``gopen`` so the same URL schemes work) and/or explicit patterns ``data.train_a`` etc. (brace
patterns, local globs, URLs, ``pipe:`` commands). Missing paths, patterns that match nothing and manifests
without a needed split are one DataError naming the key and the path.
"""
from __future__ import annotations

import glob
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import braceexpand

from cutdist import storage
from cutdist.data.manifest import DataError, describe_error, is_url, join, local_path, read_manifest
from cutdist.redact import redact_uri

# config key -> manifest split
PATTERN_KEYS = {"train_a": "trainA", "train_b": "trainB", "test_a": "testA", "test_b": "testB"}


@dataclass
class Splits:
    """The shard lists of a job (sorted URLs or paths) and the sizes the schedule needs; picklable."""
    train_a: list[str]
    train_b: list[str]
    test_a: list[str] = field(default_factory=list)
    test_b: list[str] = field(default_factory=list)
    test_gt: list[str] = field(default_factory=list)
    num_train_a: int = 0
    num_test_a: int = 0
    manifest: str | None = None
    root: str = ""
    num_train_b: int = 0
    num_test_b: int = 0

    @property
    def epoch_size(self) -> int:
        """Samples in one epoch, seen globally: max(|A|, |B|), as the reference's ``UnalignedDataset.__len__``."""
        return max(self.num_train_a, self.num_train_b)


def expand_pattern(pattern: str, key: str) -> list[str]:
    """A brace pattern (``a-{000000..000009}.tar``, ``::`` separates several) as a list of shards.

    Local entries may also be globs; each must exist. URLs are only expanded here (checked by ``probe``).
    """
    shards: list[str] = []
    for part in pattern.split("::"):
        for item in braceexpand.braceexpand(part.strip()):
            if is_url(item):
                shards.append(item)
                continue
            path = str(local_path(item))
            if glob.has_magic(path):
                matched = sorted(glob.glob(path))
                if not matched:
                    raise DataError(f"data.{key}: pattern {item} matches no file")
                shards.extend(matched)
            elif not Path(path).is_file():
                raise DataError(f"data.{key}: no such shard {item}")
            else:
                shards.append(path)
    if not shards:
        raise DataError(f"data.{key}: pattern {pattern!r} names no shard")
    return shards


def probe(url: str, key: str) -> None:
    """Read the first tar header of a remote shard, so a wrong URL fails on the driver, not in a worker."""
    import tarfile

    from cutdist.data.manifest import open_location

    try:
        stream = open_location(url)
        try:
            header = stream.read(512)
        finally:
            stream.close()
        tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
    except Exception as err:   # curl, gsutil, a pipe command: each fails its own way
        raise DataError(f"data.{key}: cannot read shard {url} ({describe_error(err)})") from None


def _synthesise_if_missing(data_cfg) -> None:
    root = data_cfg.root
    if not data_cfg.synth_if_missing or not root or is_url(root):
        return
    from cutdist.data.synth import stale_demo_shards, write_synth_dataset

    if (local_path(root) / "manifest.parquet").is_file():
        problem = stale_demo_shards(local_path(root)) if data_cfg.synth_kind == "shapes" else None
        if problem:
            raise DataError(problem)
        return

    try:
        if data_cfg.synth_kind == "single_pair":
            _write_single_pair_shards(local_path(root), data_cfg.synth_size)
        else:
            write_synth_dataset(local_path(root), size=data_cfg.synth_size, count=data_cfg.synth_count,
                                workers=min(8, os.cpu_count() or 1))
    except (DataError, OSError):
        if not (local_path(root) / "manifest.parquet").is_file():   # another driver may have won the race
            raise


def _write_single_pair_shards(root: Path, width: int) -> None:
    """SinCUT's demo data: the synthetic painting (trainA) and photo (trainB), ``width`` px wide, 3:4, as shards."""
    import tempfile

    from cutdist.data.synth_single import write_single_pair
    from cutdist.data.writer import write_image_folder

    with tempfile.TemporaryDirectory(prefix="cutdist_single_pair_") as tmp:
        write_single_pair(tmp, size=(max(4, round(width * 3 / 4 / 4) * 4), width))
        write_image_folder(tmp, root, workers=1)


def resolve_splits(data_cfg) -> Splits:
    """The shards and sizes of ``cfg.data`` (see the module docstring); DataError on any missing piece."""
    _synthesise_if_missing(data_cfg)
    root = data_cfg.root
    by_split: dict[str, list[str]] = {}
    counts: Counter = Counter()
    shard_counts: dict[str, Counter] = {}
    manifest = None
    if root:
        if not is_url(root) and not local_path(root).is_dir():
            raise DataError(f"data.root: no such directory {root}")
        table = read_manifest(root)
        manifest = join(root, "manifest.parquet")
        splits_col = table.column("split").to_pylist()
        shards_col = table.column("shard").to_pylist()
        counts = Counter(splits_col)
        for split, shard in zip(splits_col, shards_col):
            shard_counts.setdefault(split, Counter())[shard] += 1
        for split, shards in shard_counts.items():
            by_split[split] = [join(root, name) for name in sorted(shards)]
        missing = [split for key, split in (("train_a", "trainA"), ("train_b", "trainB"))
                   if not counts[split] and not getattr(data_cfg, key)]
        if missing:
            raise DataError(f"data.root: manifest {manifest} has no {' or '.join(missing)} split")
        if storage.is_object_store(root):   # one listing instead of a request per shard
            present = set(storage.list_names(root, recursive=True))
            for split, shards in by_split.items():
                absent = [s for s in shards if s[len(root.rstrip("/")) + 1:] not in present]
                if absent:
                    raise DataError(f"data.root: shard {redact_uri(absent[0])} of split {split} is listed in the "
                                    "manifest but missing")
        if not is_url(root):
            for split, shards in by_split.items():
                absent = [s for s in shards if not Path(s).is_file()]
                if absent:
                    raise DataError(f"data.root: shard {absent[0]} of split {split} is listed in the manifest "
                                    "but missing")

    def sized(key: str, split: str) -> tuple[list[str], int]:
        pattern = getattr(data_cfg, key)
        if not pattern:
            return by_split.get(split, []), counts[split]
        shards = expand_pattern(pattern, key)
        for url in sorted({shards[0], shards[-1]}):
            if is_url(url):
                probe(url, key)
        # a pattern's size: the manifest's rows of those shard files, if the manifest knows them all
        known = shard_counts.get(split, Counter())
        if split.startswith("train") and not all(Path(s).name in known for s in shards):
            from cutdist.data.indexed import split_index   # no manifest: count the samples in the tar headers

            index = split_index(shards)
            if not len(index) and index.problems:
                shard, what, reason = index.problems[0]
                raise DataError(f"data.{key}: no readable sample; {what} of {shard}: {reason}")
            return shards, len(index)
        return shards, sum(known.get(Path(s).name, 0) for s in shards)

    train_a, num_train_a = sized("train_a", "trainA")
    train_b, num_train_b = sized("train_b", "trainB")
    test_a, num_test_a = sized("test_a", "testA")
    test_b, num_test_b = sized("test_b", "testB")
    if not train_a or not train_b:
        raise DataError("data.root: set data.root (a shard directory) or both data.train_a and data.train_b")
    for key, shards, count in (("train_a", train_a, num_train_a), ("train_b", train_b, num_train_b)):
        if count < 1:
            raise DataError(f"data.{key}: no readable sample in {len(shards)} shard(s) from {shards[0]}")
    if data_cfg.num_train_a:   # the first N images of A, as the reference's --max_dataset_size keeps N paths
        if data_cfg.num_train_a > num_train_a:
            raise DataError(f"data.num_train_a: {data_cfg.num_train_a} images asked for, but trainA has "
                            f"{num_train_a}")
        num_train_a = data_cfg.num_train_a
    return Splits(train_a=train_a, train_b=train_b, test_a=test_a, test_b=test_b,
                  test_gt=by_split.get("testGT", []), num_train_a=num_train_a, num_test_a=num_test_a,
                  manifest=manifest, root=root, num_train_b=num_train_b, num_test_b=num_test_b)
