"""Writing shard directories: image folders (or CycleGAN-style roots) and generated images alike.

``ShardSetWriter`` takes encoded images split by split, rolls ``<split>-%06d.tar`` shards at a count or size
limit, and collects the manifest rows. Everything is written into a temporary sibling directory and moved
into place only when the whole set is complete, so a failure leaves nothing half-written behind.
``write_image_folder`` feeds it from files on disk, keeping each image's original bytes.
"""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from PIL import Image

from cutdist.data.manifest import (IMAGE_EXTENSIONS, MANIFEST_NAME, SHARD_PATTERN, SPLITS, DataError,
                                   read_manifest, write_manifest)

TAR_MTIME = 0   # fixed integer member times: byte-identical shards, and no PAX header per member (a float forces one)


@dataclass
class EncodedImage:
    """One sample as stored: its key, its format (= file extension) and its encoded bytes."""
    key: str
    format: str
    data: bytes
    width: int
    height: int


@dataclass
class WriteReport:
    """What a write produced: samples per split, shard files, and every image skipped with its reason."""
    out_dir: Path
    counts: dict[str, int] = field(default_factory=dict)
    shards: dict[str, list[str]] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (source path, reason)

    def summary(self, limit: int = 50) -> str:
        lines = [f"wrote {self.out_dir}"]
        for split, count in self.counts.items():
            lines.append(f"  {split}: {count} images in {len(self.shards[split])} shard(s)")
        lines.append(f"  skipped: {len(self.skipped)}")
        for path, reason in self.skipped[:limit]:
            lines.append(f"    {path}: {reason}")
        if len(self.skipped) > limit:
            lines.append(f"    ... and {len(self.skipped) - limit} more")
        return "\n".join(lines)


class _SplitShards:
    """The open shard of one split and its running count/size."""

    def __init__(self, split: str, directory: Path, max_count: int, max_size: int):
        self.split, self.directory = split, directory
        self.max_count, self.max_size = max_count, max_size
        self.index, self.count, self.size = -1, 0, 0
        self.names: list[str] = []
        self.writer = None   # a webdataset TarWriter

    def add(self, image: EncodedImage) -> str:
        member = 512 + -(-len(image.data) // 512) * 512   # tar header + padded data
        if self.writer is None or self.count >= self.max_count or (self.count and self.size + member > self.max_size):
            self._roll()
        self.writer.write({"__key__": image.key, image.format: image.data})
        self.count += 1
        self.size += member
        return self.names[-1]

    def _roll(self) -> None:
        import webdataset as wds   # imports torch: only once there is something to write

        self.close()
        self.index += 1
        name = SHARD_PATTERN.format(split=self.split, index=self.index)
        self.names.append(name)
        self.writer = wds.TarWriter(str(self.directory / name), encoder=False, mtime=TAR_MTIME)
        self.count, self.size = 0, 0

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class ShardSetWriter:
    """Context manager writing one shard directory atomically.

    ``add(split, image)`` appends to that split's current shard; leaving the ``with`` block normally moves
    the shards and the manifest into ``out_dir``; leaving it with an exception deletes everything written.
    ``out_dir`` may be absent, empty, or an existing shard directory that lacks the splits being written.
    """

    def __init__(self, out_dir: str | Path, *, max_count: int = 200, max_size: int = 256 * 2 ** 20):
        if max_count < 1:
            raise DataError(f"--max-count: must be >= 1, got {max_count}")
        if max_size < 1:
            raise DataError(f"--max-size: must be >= 1, got {max_size}")
        self.out_dir = Path(out_dir).expanduser()
        self.max_count, self.max_size = max_count, max_size
        self.existing_rows: list[dict] = self._existing_rows()
        self.rows: list[dict] = []
        self.splits: dict[str, _SplitShards] = {}
        self.tmp: Path | None = None

    def _existing_rows(self) -> list[dict]:
        if not self.out_dir.exists():
            return []
        if not self.out_dir.is_dir():
            raise DataError(f"{self.out_dir}: exists and is not a directory")
        if not any(self.out_dir.iterdir()):
            return []
        if not (self.out_dir / MANIFEST_NAME).is_file():
            raise DataError(f"{self.out_dir}: exists, is not empty and holds no {MANIFEST_NAME}; "
                            "choose a new or empty output directory")
        return read_manifest(str(self.out_dir)).to_pylist()

    def check_new(self, splits: Iterable[str]) -> None:
        """Refuse, before any work, to write a split the output directory already holds."""
        present = {row["split"] for row in self.existing_rows}
        for split in splits:
            if split in present:
                raise DataError(f"{self.out_dir}: already holds split {split!r}; remove the directory or "
                                "write to another one")

    def __enter__(self) -> ShardSetWriter:
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.out_dir.parent / f".{self.out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
        self.tmp.mkdir()
        return self

    def add(self, split: str, image: EncodedImage) -> None:
        if split not in SPLITS:
            raise DataError(f"split {split!r}: must be one of {', '.join(SPLITS)}")
        if split not in self.splits:
            self.check_new([split])
            self.splits[split] = _SplitShards(split, self.tmp, self.max_count, self.max_size)
        shard = self.splits[split].add(image)
        self.rows.append({"split": split, "shard": shard, "key": image.key, "format": image.format,
                          "bytes": len(image.data), "width": image.width, "height": image.height,
                          "sha256": hashlib.sha256(image.data).hexdigest()})

    def shard_names(self) -> dict[str, list[str]]:
        return {split: list(shards.names) for split, shards in self.splits.items()}

    def __exit__(self, exc_type, exc, tb) -> None:
        for shards in self.splits.values():
            shards.close()
        try:
            if exc_type is None:
                self._commit()
        finally:
            if self.tmp is not None and self.tmp.exists():
                shutil.rmtree(self.tmp, ignore_errors=True)

    def _commit(self) -> None:
        write_manifest(self.existing_rows + self.rows, self.tmp / MANIFEST_NAME)
        if self.out_dir.is_dir() and not any(self.out_dir.iterdir()):
            self.out_dir.rmdir()
        if not self.out_dir.exists():
            os.rename(self.tmp, self.out_dir)   # the whole directory appears at once
            return
        for names in self.shard_names().values():   # adding splits: shards first, the manifest last
            for name in names:
                os.replace(self.tmp / name, self.out_dir / name)
        os.replace(self.tmp / MANIFEST_NAME, self.out_dir / MANIFEST_NAME)


# ----------------------------------------------------------------------------------------- image folders

def list_images(directory: Path) -> list[PurePosixPath]:
    """Image files under ``directory`` (recursive), as sorted relative paths."""
    found = [PurePosixPath(p.relative_to(directory).as_posix()) for p in directory.rglob("*")
             if p.suffix[1:].lower() in IMAGE_EXTENSIONS and p.is_file()]
    return sorted(found)


def sample_key(relative: PurePosixPath) -> str:
    """The relative path without its extension. Dots left in the file name become ``_``, because
    webdataset splits a tar member's name into key and extension at the first dot of its base name."""
    stem = relative.name[: -len(relative.suffix)] if relative.suffix else relative.name
    stem = stem.replace(".", "_")
    return stem if relative.parent == PurePosixPath(".") else f"{relative.parent}/{stem}"


def scan_source(src: str | Path, split: str | None = None) -> dict[str, tuple[Path, list[PurePosixPath]]]:
    """The splits to write from ``src``: a CycleGAN-style root (``trainA/ trainB/ testA/ testB/``, optional
    ``testGT/``) or, with ``split``, one plain image folder. Missing folders and empty splits are errors."""
    src = Path(src).expanduser()
    if not src.is_dir():
        raise DataError(f"{src}: no such directory")
    split_dirs = [name for name in SPLITS if (src / name).is_dir()]
    if split_dirs and split:
        raise DataError(f"{src}: is a dataset root with {', '.join(split_dirs)}; --split is for a plain image folder")
    if not split_dirs:
        if not split:
            raise DataError(f"{src}: has none of {', '.join(SPLITS)}; to write a plain image folder, "
                            "name its split with --split")
        if split not in SPLITS:
            raise DataError(f"--split: must be one of {', '.join(SPLITS)}, got {split!r}")
        split_dirs = [split]
        dirs = {split: src}
    else:
        dirs = {name: src / name for name in split_dirs}
    found = {}
    for name in split_dirs:
        images = list_images(dirs[name])
        if not images:
            raise DataError(f"{dirs[name]}: split {name} has no images ({', '.join(IMAGE_EXTENSIONS)})")
        found[name] = (dirs[name], images)
    return found


def probe_image(data: bytes) -> tuple[int, int]:
    """Decode the image fully (a truncated JPEG fails here, not at training time); its (width, height)."""
    if not data:
        raise ValueError("empty file")
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        img.convert("RGB")
        return img.size


def _read_and_probe(path: Path) -> tuple[bytes, int, int] | str:
    """The file's bytes and size, or the reason it cannot be used (runs in worker processes)."""
    try:
        data = path.read_bytes()
        width, height = probe_image(data)
    except Exception as err:   # any decoder failure means: skip and report this file
        return f"{err.__class__.__name__}: {str(err).splitlines()[0] if str(err) else 'unreadable'}"
    return data, width, height


def _ordered_map(fn: Callable, items: list, workers: int) -> Iterator:
    """``map(fn, items)`` in order, over ``workers`` processes, with a bounded number of results in flight
    (``Executor.map`` would submit everything at once and could hold a whole dataset's bytes in memory)."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        in_flight: deque = deque()
        for item in items:
            in_flight.append(pool.submit(fn, item))
            if len(in_flight) >= 16 * workers:
                yield in_flight.popleft().result()
        while in_flight:
            yield in_flight.popleft().result()


def write_image_folder(src: str | Path, out_dir: str | Path, *, split: str | None = None, max_count: int = 200,
                       max_size: int = 256 * 2 ** 20, workers: int = 1, progress: bool = True) -> WriteReport:
    """Write the images of ``src`` (see ``scan_source``) as shards + manifest in ``out_dir``.

    Each image keeps its original bytes and extension; corrupt or unreadable files are skipped and listed in
    the report; a split left with no readable image is a DataError and nothing is written.
    """
    from tqdm import tqdm

    sources = scan_source(src, split)
    writer = ShardSetWriter(out_dir, max_count=max_count, max_size=max_size)
    writer.check_new(sources)
    report = WriteReport(out_dir=writer.out_dir)
    total = sum(len(images) for _, images in sources.values())
    with writer, tqdm(total=total, unit="img", desc="shards write", disable=not progress) as bar:
        for name, (directory, images) in sources.items():
            seen: dict[str, PurePosixPath] = {}
            written, skipped_before = 0, len(report.skipped)
            for relative, result in zip(images, _ordered_map(_read_and_probe, [directory / r for r in images],
                                                             workers)):
                bar.update(1)
                path = str(directory / relative)
                if isinstance(result, str):
                    report.skipped.append((path, result))
                    continue
                key = sample_key(relative)
                if key in seen:
                    report.skipped.append((path, f"duplicate key {key!r} (also {directory / seen[key]})"))
                    continue
                seen[key] = relative
                data, width, height = result
                writer.add(name, EncodedImage(key, relative.suffix[1:].lower(), data, width, height))
                written += 1
            if not written:
                raise DataError(f"{directory}: split {name} has no readable image "
                                f"({len(report.skipped) - skipped_before} skipped, first: {report.skipped[-1][1]})")
            report.counts[name] = written
        report.shards = writer.shard_names()
    return report
