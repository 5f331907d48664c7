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
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cutdist.redact import redact_uri

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
    """A data problem; ``str(err)`` is one line naming the culprit (file, key, shard, config key), with any URL
    credentials redacted (``cutdist.redact``)."""

    def __init__(self, message: object = "", *args):
        super().__init__(redact_uri(str(message)), *args)


class CorruptSampleWarning(UserWarning):
    """A sample or shard that could not be read was skipped (the message's URL credentials redacted)."""

    def __init__(self, message: object = "", *args):
        super().__init__(redact_uri(str(message)), *args)


# A shard name in the manifest is a plain file name inside the shard directory: no path separator, no '..',
# no shell metacharacter or whitespace (a ``pipe:`` root appends it to a shell command), no leading '-' or '.'.
_SHARD_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+=-]{0,254}$")


def shard_name_problem(name: object) -> str | None:
    """Why ``name`` is not an acceptable manifest shard name, or None."""
    if not isinstance(name, str) or not name:
        return f"shard name {name!r} is empty"
    if not _SHARD_NAME.match(name) or ".." in name:
        return (f"shard name {printable(name)} is not a plain file name (letters, digits, '_', '.', '+', '=', '-'; "
                "no path separator, '..', whitespace or shell metacharacter)")
    return None


def printable(text: object) -> str:
    """``text`` as is when every character is printable, else quoted with escapes, so a hostile name cannot
    forge console lines."""
    text = str(text)
    return text if text.isprintable() else repr(text)


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
    """A readable binary stream for a local path, an object-storage URI (``s3://``, ``gs://``: pyarrow's file
    systems, see ``cutdist.storage``) or any other URL webdataset's ``gopen`` handles (http via curl...)."""
    import webdataset as wds

    from cutdist import storage

    if not is_url(location):
        return open(local_path(location), "rb")
    if storage.is_object_store(location):
        return storage.open_input(location)
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
    try:
        table = table.select(MANIFEST_SCHEMA.names).cast(MANIFEST_SCHEMA)
    except (pa.ArrowException, ValueError) as err:
        raise DataError(f"{location}: manifest columns of the wrong type ({describe_error(err)})") from None
    check_manifest_rows(table, location)
    return table


def check_manifest_rows(table: pa.Table, location: str) -> None:
    """DataError naming the first row with an unsafe shard name, a null, or a width/height < 1 / bytes < 0:
    the manifest decides which files are opened and how images are sized, so it is checked where it is read."""
    shards = table.column("shard").to_pylist()
    for name in sorted(set(shards), key=str):
        problem = shard_name_problem(name)
        if problem:
            row = shards.index(name)
            raise DataError(f"{location}: row {row}: {problem}")
    for column, low in (("width", 1), ("height", 1), ("bytes", 0)):
        bad = pc.fill_null(pc.less(table.column(column), low), True)
        if pc.any(bad).as_py():
            row = pc.index(bad, True).as_py()
            key = table.column("key")[row].as_py()
            raise DataError(f"{location}: row {row} (shard {shards[row]}, key {printable(key)}): "
                            f"{column} {table.column(column)[row].as_py()}, must be >= {low}")
    for column in ("split", "key", "format"):
        if table.column(column).null_count:
            row = pc.index(pc.is_null(table.column(column)), True).as_py()
            raise DataError(f"{location}: row {row} (shard {shards[row]}): {column} is null")


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


