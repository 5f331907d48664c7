"""The shard directory's vocabulary: split names, image formats, the manifest schema, and URL helpers.

A shard directory (local path or URL prefix) holds ``<split>-%06d.tar`` files and ``manifest.parquet`` with
one row per sample: split, shard (file name relative to the directory), key, format (the image's original
extension), bytes, width, height, sha256 (of the image's encoded bytes).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.parquet as pq

SPLITS = ("trainA", "trainB", "testA", "testB", "testGT")
MANIFEST_NAME = "manifest.parquet"
SHARD_PATTERN = "{split}-{index:06d}.tar"
# The reference implementation's IMG_EXTENSIONS (data/image_folder.py), lower case.
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "ppm", "bmp", "tif", "tiff", "webp")

MANIFEST_SCHEMA = pa.schema([
    ("split", pa.string()),
    ("shard", pa.string()),
    ("key", pa.string()),
    ("format", pa.string()),
    ("bytes", pa.int64()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("sha256", pa.string()),
])


class DataError(ValueError):
    """A data problem; ``str(err)`` is one line naming the culprit (file, key, shard, config key)."""


class CorruptSampleWarning(UserWarning):
    """A sample or shard that could not be read was skipped."""


def is_url(location: str) -> bool:
    """True for ``scheme://...`` and ``pipe:`` locations (anything webdataset's ``gopen`` opens remotely)."""
    scheme = urlparse(location).scheme
    return len(scheme) > 1 and scheme != "file"


def local_path(location: str) -> Path:
    """A local location (plain path or ``file://``) as a Path."""
    if location.startswith("file:"):
        return Path(urlparse(location).path)
    return Path(location).expanduser()


def join(root: str, name: str) -> str:
    """``root/name`` for a local directory or a URL prefix."""
    if is_url(root) or root.startswith("file:"):
        return root.rstrip("/") + "/" + name
    return os.path.join(os.path.expanduser(root), name)


def open_location(location: str):
    """A readable binary stream for a local path or any URL webdataset's ``gopen`` handles (http via curl...)."""
    import webdataset as wds

    if not is_url(location):
        return open(local_path(location), "rb")
    return wds.gopen(location, "rb")


def read_bytes(location: str) -> bytes:
    """The whole content at ``location``; a missing local file or a failed download is a DataError."""
    try:
        stream = open_location(location)
        try:
            data = stream.read()
        finally:
            stream.close()
    except (OSError, ValueError) as err:
        raise DataError(f"{location}: cannot read ({describe_error(err)})") from None
    return data


def read_manifest(root: str) -> pa.Table:
    """``<root>/manifest.parquet`` as a table (local or through ``gopen``); DataError when absent or invalid."""
    location = join(root, MANIFEST_NAME)
    if not is_url(location) and not local_path(location).is_file():
        raise DataError(f"{location}: no manifest (write shards with `python -m cutdist.shards write` or `synth`)")
    data = read_bytes(location)
    if not data:
        raise DataError(f"{location}: empty manifest (missing on the server?)")
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{location}: not a parquet manifest ({describe_error(err)})") from None
    missing = [name for name in MANIFEST_SCHEMA.names if name not in table.column_names]
    if missing:
        raise DataError(f"{location}: manifest lacks columns {missing}")
    return table.select(MANIFEST_SCHEMA.names)


def write_manifest(rows: list[dict], path: Path) -> None:
    """Write rows as the manifest at ``path`` through a temporary name, so readers never see half a file."""
    table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


_PIPE_EXIT = re.compile(r"^\(\(\[?'?([^',\]]+).*\): exit (\d+)")


def describe_error(err: BaseException) -> str:
    """One short line for an error from reading data: gopen's subprocess failures (``curl`` exiting 22 on an
    HTTP 404, ...) become ``curl exited with status 22``; webdataset's `` @ <stream>`` suffixes are dropped."""
    text = str(err).strip()
    if not text:
        return err.__class__.__name__
    pipe = _PIPE_EXIT.match(text)
    if pipe:
        return f"{pipe.group(1)} exited with status {pipe.group(2)}"
    return text.splitlines()[0].split(" @ ")[0]


