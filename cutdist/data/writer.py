"""Writing shard directories: image folders (or CycleGAN-style roots) and generated images alike.

``write_splits`` writes each split from its own folder (recursively): it plans which file goes into which
``<split>-%06d.tar`` first (held-out test images, a seeded order, count and size limits), then writes the
shards in parallel processes, each image kept as its original bytes or re-encoded (``Encoding``: down-scaled,
JPEG/WebP/PNG). Shards are finished one by one in a ``.<out>.partial`` sibling directory, so a killed write
resumes where it stopped; the set is moved into place only when complete. ``ShardSetWriter`` is the
in-memory variant for generated images (the demo dataset), written atomically in one go.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import tarfile
import time
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
    timing: dict = field(default_factory=dict)   # seconds, images (written this run), workers, resumed_images

    def images_per_s(self) -> float:
        return self.timing["images"] / self.timing["seconds"] if self.timing.get("seconds") else 0.0

    def images_per_cpu_s(self) -> float:
        """Images per CPU-second spent writing (this process and its workers): one process's rate on a core of
        its own, whatever else the machine is doing."""
        return self.timing["images"] / self.timing["cpu_seconds"] if self.timing.get("cpu_seconds") else 0.0

    def summary(self, limit: int = 50) -> str:
        lines = [f"wrote {self.out_dir}"]
        for split, count in self.counts.items():
            lines.append(f"  {split}: {count} images in {len(self.shards[split])} shard(s)")
        if self.timing:
            t = self.timing
            rate = self.images_per_s()
            lines.append(f"  {t['encoding']}; {t['images']} images in {t['seconds']:.1f} s: {rate:.2f} images/s "
                         f"over {t['workers']} process(es), {self.images_per_cpu_s():.2f} per CPU-second"
                         + (f" ({t['resumed_images']} done by an earlier, interrupted run)"
                            if t['resumed_images'] else ""))
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


# ----------------------------------------------------------------------------------------- re-encoding

ENCODE_FORMATS = {"jpeg": ("JPEG", "jpg"), "webp": ("WEBP", "webp"), "png": ("PNG", "png")}
DEFAULT_QUALITY = {"jpeg": 95, "webp": 90}
_PIL_FORMAT_OF_EXT = {"jpg": "jpeg", "jpeg": "jpeg", "png": "png", "webp": "webp"}


@dataclass(frozen=True)
class Encoding:
    """How images are stored: original bytes (all None), or re-encoded.

    ``max_side``: images whose longer side exceeds it are down-scaled (Lanczos, aspect kept, never up-scaled);
    ``format``: jpeg | webp | png for every image (None: resized images keep their own format, where PIL
    writes it, else PNG); ``quality``: JPEG/WebP quality (None: 95 / 90). An image already in the target
    format and size keeps its original bytes: re-encoding a JPEG as JPEG only loses quality.
    """
    max_side: int | None = None
    format: str | None = None
    quality: int | None = None

    def __post_init__(self):
        if self.max_side is not None and self.max_side < 8:
            raise DataError(f"--max-side: must be >= 8, got {self.max_side}")
        if self.format is not None and self.format not in ENCODE_FORMATS:
            raise DataError(f"--format: must be one of {', '.join(ENCODE_FORMATS)}, got {self.format!r}")
        if self.quality is not None:
            if self.format not in DEFAULT_QUALITY:
                raise DataError("--quality: only with --format jpeg or webp")
            if not 1 <= self.quality <= 100:
                raise DataError(f"--quality: must be in 1..100, got {self.quality}")

    @property
    def keeps_bytes(self) -> bool:
        return self.max_side is None and self.format is None

    def describe(self) -> str:
        if self.keeps_bytes:
            return "original bytes"
        parts = [f"longer side <= {self.max_side} (Lanczos)"] if self.max_side else []
        if self.format:
            quality = self.quality or DEFAULT_QUALITY.get(self.format)
            parts.append(self.format + (f" quality {quality}" if quality else ""))
        return "re-encoded: " + ", ".join(parts)


def encode_image(data: bytes, ext: str, encoding: Encoding) -> tuple[bytes, str, int, int]:
    """(bytes, extension, width, height) of one image as stored; decodes fully, so a corrupt file raises."""
    if not data:
        raise ValueError("empty file")
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        rgb = img.convert("RGB")
    width, height = rgb.size
    scale = encoding.max_side / max(width, height) if encoding.max_side else 1.0
    target = encoding.format or (_PIL_FORMAT_OF_EXT.get(ext, "png") if scale < 1 else None)
    if scale >= 1 and (target is None or _PIL_FORMAT_OF_EXT.get(ext) == target):
        return data, ext, width, height
    if scale < 1:
        width, height = max(1, round(width * scale)), max(1, round(height * scale))
        rgb = rgb.resize((width, height), Image.Resampling.LANCZOS)
    pil_format, out_ext = ENCODE_FORMATS[target]
    options = {}
    if target in DEFAULT_QUALITY:
        options["quality"] = encoding.quality or DEFAULT_QUALITY[target]
    if target == "webp":
        options["method"] = 4
    buffer = io.BytesIO()
    rgb.save(buffer, format=pil_format, **options)
    return buffer.getvalue(), out_ext, width, height


# ----------------------------------------------------------------------------------------- image folders

def scan_source(src: str | Path, split: str | None = None) -> dict[str, Path]:
    """The split folders of ``src``: a CycleGAN-style root (``trainA/ trainB/ testA/ testB/``, optional
    ``testGT/``) or, with ``split``, one plain image folder."""
    src = Path(src).expanduser()
    if not src.is_dir():
        raise DataError(f"{src}: no such directory")
    split_dirs = [name for name in SPLITS if (src / name).is_dir()]
    if split_dirs and split:
        raise DataError(f"{src}: is a dataset root with {', '.join(split_dirs)}; --split is for a plain image folder")
    if split_dirs:
        return {name: src / name for name in split_dirs}
    if not split:
        raise DataError(f"{src}: has none of {', '.join(SPLITS)}; to write a plain image folder, "
                        "name its split with --split")
    if split not in SPLITS:
        raise DataError(f"--split: must be one of {', '.join(SPLITS)}, got {split!r}")
    return {split: src}


@dataclass
class _Source:
    """One image file to write: where it is, its sample key, its size in bytes, the folder it was found in."""
    path: str
    key: str
    size: int
    folder: str


def _list_split(split: str, directory: Path, skipped: list) -> list[_Source]:
    if not directory.is_dir():
        raise DataError(f"{directory}: no such directory (source of {split})")
    images = list_images(directory)
    if not images:
        raise DataError(f"{directory}: split {split} has no images ({', '.join(IMAGE_EXTENSIONS)})")
    seen: dict[str, PurePosixPath] = {}
    found = []
    for relative in images:
        path = directory / relative
        key = sample_key(relative)
        if key in seen:
            skipped.append((str(path), f"duplicate key {key!r} (also {directory / seen[key]})"))
            continue
        seen[key] = relative
        found.append(_Source(str(path), key, path.stat().st_size, str(directory)))
    return found


def _chunk(sources: list[_Source], max_count: int, max_size: int) -> list[list[_Source]]:
    """Shards by count and by size; sizes are the source files' (exact when bytes are kept as they are)."""
    shards: list[list[_Source]] = []
    size = 0
    for source in sources:
        member = 512 + -(-source.size // 512) * 512   # tar header + padded data
        if not shards or len(shards[-1]) >= max_count or (shards[-1] and size + member > max_size):
            shards.append([])
            size = 0
        shards[-1].append(source)
        size += member
    return shards


def plan_write(sources: dict[str, Path], *, holdout: dict[str, int] | None = None, seed: int | None = None,
               max_count: int = 200, max_size: int = 256 * 2 ** 20) -> tuple[dict, list]:
    """Which image goes into which shard, decided before anything is read: ({split: [[shard name,
    [source, ...]], ...]}, skipped duplicates). Deterministic in its arguments, which is what lets a killed
    write resume: the same plan names the same shards with the same images.

    ``holdout`` ({"testA": N}) moves N images of the matching train split, drawn with ``seed`` (0 if None),
    into that test split. ``seed`` also shuffles every split's order (None: file order), so sequential readers
    of consecutive frames (GTA5) get mixed data."""
    skipped: list = []
    listed = {split: _list_split(split, Path(directory).expanduser(), skipped)
              for split, directory in sources.items()}
    for test_split, count in (holdout or {}).items():
        if not count:
            continue
        train_split = "train" + test_split[-1]
        flag = f"--{test_split[:-1]}-{test_split[-1].lower()}-from-train"
        if test_split in listed:
            raise DataError(f"{flag}: {test_split} already has a source ({sources[test_split]})")
        if train_split not in listed:
            raise DataError(f"{flag}: no {train_split} source to take it from")
        train = listed[train_split]
        if not 0 < count < len(train):
            raise DataError(f"{flag}: must be between 1 and {len(train) - 1} ({train_split} has {len(train)} images), "
                            f"got {count}")
        chosen = set(random.Random(f"{seed or 0}:{test_split}:holdout").sample(range(len(train)), count))
        listed[test_split] = [s for i, s in enumerate(train) if i in chosen]
        listed[train_split] = [s for i, s in enumerate(train) if i not in chosen]
    plan = {}
    for split in SPLITS:
        if split not in listed:
            continue
        ordered = listed[split]
        if seed is not None:
            ordered = list(ordered)
            random.Random(f"{seed}:{split}:order").shuffle(ordered)
        plan[split] = [[SHARD_PATTERN.format(split=split, index=i), chunk]
                       for i, chunk in enumerate(_chunk(ordered, max_count, max_size))]
    return plan, skipped


_PROGRESS = None   # a multiprocessing queue in pool workers: one item per image done


def _init_worker(queue) -> None:
    global _PROGRESS
    _PROGRESS = queue


def _write_shard(task: tuple) -> dict:
    """Write one planned shard into the partial directory: ``<name>.json`` (its manifest rows and skipped
    files) first, then the tar under its final name, each through a temporary name. A shard whose tar exists
    is finished; runs in a worker process."""
    directory, name, split, sources, encoding, tick = task
    directory = Path(directory)
    rows, skipped = [], []
    tmp_tar = directory / f"{name}.part"
    with tarfile.open(tmp_tar, "w", format=tarfile.PAX_FORMAT) as tar:
        for source in sources:
            path, key, folder = source["path"], source["key"], source["folder"]
            try:
                data = Path(path).read_bytes()
                data, ext, width, height = encode_image(data, Path(path).suffix[1:].lower(), encoding)
            except Exception as err:   # any decoder failure means: skip and report this file
                text = str(err).splitlines()[0] if str(err) else "unreadable"
                skipped.append((path, f"{err.__class__.__name__}: {text}"))
            else:
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(data), TAR_MTIME, 0o444
                info.uname = info.gname = "bigdata"
                tar.addfile(info, io.BytesIO(data))
                rows.append({"split": split, "shard": name, "key": key, "format": ext, "bytes": len(data),
                             "width": width, "height": height, "sha256": hashlib.sha256(data).hexdigest(),
                             "folder": folder})
            if tick is not None:
                tick()
            elif _PROGRESS is not None:
                _PROGRESS.put(1)
    result = {"rows": rows, "skipped": skipped}
    tmp_json = directory / f"{name}.json.part"
    tmp_json.write_text(json.dumps(result))
    os.replace(tmp_json, directory / f"{name}.json")
    os.replace(tmp_tar, directory / name)
    return result


def _finished(directory: Path, name: str) -> dict | None:
    if (directory / name).is_file() and (directory / f"{name}.json").is_file():
        return json.loads((directory / f"{name}.json").read_text())
    return None


def _run_tasks(tasks: list[tuple], workers: int, bar) -> None:
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            _write_shard(task[:-1] + (lambda: bar.update(1),))
        return
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, wait
    from queue import Empty

    context = mp.get_context()
    queue = context.Queue()
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker,
                             initargs=(queue,)) as pool:
        pending = {pool.submit(_write_shard, task) for task in tasks}
        try:
            while pending:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                for future in done:
                    future.result()   # a worker's exception surfaces here
                while True:
                    try:
                        bar.update(queue.get_nowait())
                    except Empty:
                        break
        except BaseException:
            for future in pending:
                future.cancel()
            raise


def write_splits(sources: dict[str, str | Path], out_dir: str | Path, *, holdout: dict[str, int] | None = None,
                 seed: int | None = None, encoding: Encoding | None = None, max_count: int = 200,
                 max_size: int = 256 * 2 ** 20, workers: int = 1, progress: bool = True) -> WriteReport:
    """Write each split from its own folder (recursive) as shards + manifest in ``out_dir``.

    The shards are planned first (``plan_write``), then written by ``workers`` processes, one shard per task,
    into ``.<out_dir>.partial/`` beside ``out_dir``; the finished set is moved into place at the end. A killed
    write leaves that directory behind, and running the same command again redoes only the unfinished shards
    (a different command is refused while it exists). Corrupt or unreadable files are skipped and listed in
    the report; a split left with no readable image is a DataError and the partial directory is removed.
    """
    from tqdm import tqdm

    encoding = encoding or Encoding()
    if max_count < 1:
        raise DataError(f"--max-count: must be >= 1, got {max_count}")
    if max_size < 1:
        raise DataError(f"--max-size: must be >= 1, got {max_size}")
    if not sources:
        raise DataError("shards write: no source (give a dataset root or --train-a/--train-b/... folders)")
    existing = ShardSetWriter(out_dir, max_count=max_count, max_size=max_size)   # checks out_dir
    plan, skipped = plan_write(sources, holdout=holdout, seed=seed, max_count=max_count, max_size=max_size)
    existing.check_new(plan)
    out = existing.out_dir
    partial = out.parent / f".{out.name}.partial"
    identity = {"version": 1, "encoding": vars(encoding), "seed": seed, "holdout": holdout or {},
                "max_count": max_count, "max_size": max_size, "skipped": skipped,
                "plan": {split: [[name, [vars(s) for s in chunk]] for name, chunk in shards]
                         for split, shards in plan.items()}}
    identity = json.loads(json.dumps(identity))   # tuples -> lists, as read back
    plan_file = partial / "plan.json"
    if partial.exists():
        if not plan_file.is_file() or json.loads(plan_file.read_text()) != identity:
            raise DataError(f"{partial}: holds an unfinished write of other sources or options; rerun that "
                            "command to finish it, or remove the directory")
    else:
        partial.mkdir(parents=True)
        plan_file.write_text(json.dumps(identity))

    started, cpu_started = time.perf_counter(), _cpu_seconds()
    results: dict[str, dict] = {}
    tasks = []
    for split, shards in identity["plan"].items():
        for name, chunk in shards:
            done = _finished(partial, name)
            if done is not None:
                results[name] = done
            else:
                tasks.append((str(partial), name, split, chunk, encoding, None))
    total = sum(len(chunk) for shards in identity["plan"].values() for _, chunk in shards)
    resumed = sum(len(r["rows"]) + len(r["skipped"]) for r in results.values())
    todo = total - resumed
    with tqdm(total=total, initial=resumed, unit="img", desc="shards write", disable=not progress) as bar:
        _run_tasks(tasks, workers, bar)
    seconds, cpu_seconds = time.perf_counter() - started, _cpu_seconds() - cpu_started

    report = WriteReport(out_dir=out, skipped=[tuple(s) for s in skipped])
    rows: list[dict] = []
    try:
        for split, shards in identity["plan"].items():
            names = []
            split_skipped = []
            for name, _ in shards:
                result = results.get(name) or _finished(partial, name)
                split_skipped += [tuple(s) for s in result["skipped"]]
                if result["rows"]:
                    names.append(name)
                    rows += result["rows"]
                else:
                    (partial / name).unlink()   # every image of the shard was unreadable: no empty shard
            report.skipped += split_skipped
            count = sum(1 for r in rows if r["split"] == split)
            if not count:
                folder = shards[0][1][0]["folder"]
                raise DataError(f"{folder}: split {split} has no readable image "
                                f"({len(split_skipped)} skipped, first: {split_skipped[0][1]})")
            report.counts[split] = count
            report.shards[split] = names
    except DataError:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    _commit(partial, out, existing.existing_rows, rows, report.shards)
    report.timing = {"seconds": seconds, "cpu_seconds": cpu_seconds, "images": todo, "workers": max(1, min(workers, len(tasks))),
                     "resumed_images": resumed, "encoding": encoding.describe()}
    return report


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the pool's workers, once joined)."""
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _commit(partial: Path, out: Path, existing_rows: list[dict], rows: list[dict],
            shards: dict[str, list[str]]) -> None:
    """Move the finished shards and the manifest from ``partial`` into ``out`` (the manifest last)."""
    manifest_rows = existing_rows + [{k: v for k, v in row.items() if k != "folder"} for row in rows]
    write_manifest(manifest_rows, partial / MANIFEST_NAME)
    for leftover in partial.iterdir():
        if leftover.name.endswith((".json", ".part")):
            leftover.unlink()
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    if not out.exists():
        os.rename(partial, out)   # the whole directory appears at once
        return
    for names in shards.values():   # adding splits: shards first, the manifest last
        for name in names:
            os.replace(partial / name, out / name)
    os.replace(partial / MANIFEST_NAME, out / MANIFEST_NAME)
    shutil.rmtree(partial, ignore_errors=True)


def write_image_folder(src: str | Path, out_dir: str | Path, *, split: str | None = None, **options) -> WriteReport:
    """Write the splits of a dataset root (or, with ``split``, one plain image folder): see ``scan_source``
    and ``write_splits`` (``options``: holdout, seed, encoding, max_count, max_size, workers, progress)."""
    return write_splits(scan_source(src, split), out_dir, **options)
