"""Random access to the images of WebDataset shards, by byte offset: the index and the reads.

``split_index(urls)`` lists the image member of every sample of a split (shards in the given order, samples in
tar order): shard, key, field (the image's extension), byte offset and size of the member's data. It is read
from the tar headers only: Python's ``tarfile`` reads each 512-byte header and seeks past the member's data, so
a local shard costs one read per member and a remote one a few range requests. Samples are grouped by key the
way WebDataset groups them (``webdataset.tariterators.base_plus_ext``), and the image field is the one WebDataset
streaming would pick (``transforms.image_field``).

``MemberReader`` then fetches one member's bytes: ``os.pread`` on a kept-open local file, a ranged read of a
kept-open object for ``s3://`` / ``gs://`` (pyarrow's file systems, configured as Ray Train's: see
``cutdist.storage``), an HTTP range request (or any other fsspec filesystem's ranged ``cat_file``) for a URL. So the
format stays WebDataset's (any tar written by ``webdataset.TarWriter`` or ``shards write`` works, nothing is
added to the manifest), and the unpaired stream can read the exact sample the paper's sampler asks for.

Why not WebDataset's own indexed reader (``wids``, a separate package since webdataset 1.0)? It downloads every
remote shard whole into a local cache before reading from it; range reads avoid the copy (GTA5 is ~60 GB), and
its index is built from the same tar headers.

``pipe:`` locations (a command's output) cannot be read at an offset: training on them is refused with one line,
and so are compressed tars (their offsets are not file offsets).

This is the one random-access tar reader (``cutdist.data.members`` is the streaming one): it opens shards with
``tarfile`` in ``r:`` mode and passes every header through ``members.check_member``, which stops the shard at a
member declaring a negative size (random access would loop back to an earlier header) or more than
``members.MAX_MEMBER_BYTES``, so every indexed read is bounded; images are
decoded through ``members.open_image`` (``transforms.decode_rgb``) or the device decoder, both pixel-bounded.
"""
from __future__ import annotations

import os
import tarfile
from collections import OrderedDict
from dataclasses import dataclass, field

from webdataset.tariterators import base_plus_ext

from cutdist import storage
from cutdist.data.manifest import DataError, describe_error, is_url, local_path
from cutdist.data.members import MemberError, check_member
from cutdist.data.transforms import image_field

OPEN_FILES = 64   # local shard files a reader keeps open


@dataclass
class SplitIndex:
    """The image members of a split, column-wise (compact to pickle to loader workers)."""
    shards: list[str]
    shard: list[int] = field(default_factory=list)    # index into ``shards``
    key: list[str] = field(default_factory=list)
    ext: list[str] = field(default_factory=list)      # the image field (extension)
    offset: list[int] = field(default_factory=list)
    size: list[int] = field(default_factory=list)
    problems: list[tuple[str, str, str]] = field(default_factory=list)   # (shard, what, reason) skipped

    def __len__(self) -> int:
        return len(self.key)

    def head(self, count: int) -> SplitIndex:
        """The first ``count`` samples (``data.num_train_a``)."""
        return SplitIndex(self.shards, self.shard[:count], self.key[:count], self.ext[:count],
                          self.offset[:count], self.size[:count], list(self.problems))

    def label(self, i: int) -> str:
        return f"{self.shards[self.shard[i]]}: key {self.key[i]}"


def _check_random_access(url: str) -> None:
    if url.startswith("pipe:"):
        raise DataError(f"{url}: training reads samples by byte offset, which a pipe: command cannot serve; "
                        "use a local path or an http(s)/fsspec URL")


def _open_for_scan(url: str):
    _check_random_access(url)
    if not is_url(url):
        return open(local_path(url), "rb")
    if storage.is_object_store(url):
        return storage.open_random_access(url)
    import fsspec

    try:
        return fsspec.open(url, "rb", block_size=1 << 20).open()
    except ImportError as err:   # gs:// without gcsfs, s3:// without s3fs, ...
        raise DataError(f"{url}: reading these shards by byte range needs an fsspec filesystem package "
                        f"({describe_error(err)})") from None


def _scan(url: str, number: int, index: SplitIndex) -> None:
    """Append the image members of one shard; a shard that cannot be opened or breaks midway keeps what was read
    before and records the problem."""
    pending: dict[str, tuple[int, int]] = {}
    current, last, before = None, None, len(index)

    def flush() -> None:
        nonlocal pending, last
        if current is None:
            return
        name = image_field(pending)
        if name is None:
            index.problems.append((url, f"key {current}", f"no image field (fields: {sorted(pending)})"))
        else:
            offset, size = pending[name]
            index.shard.append(number)
            index.key.append(current)
            index.ext.append(name)
            index.offset.append(offset)
            index.size.append(size)
            last = current
        pending = {}

    try:
        stream = _open_for_scan(url)
    except DataError:
        raise
    except Exception as err:   # no such file, HTTP 404, ...
        index.problems.append((url, "the whole shard", describe_error(err)))
        return
    try:
        with tarfile.open(fileobj=stream, mode="r:") as tar:
            while (member := tar.next()) is not None:
                tar.members = []   # keep no headers
                check_member(member, url)   # the shared bounds (cutdist.data.members): a size < 0 loops tarfile
                if not member.isreg():
                    continue
                key, ext = base_plus_ext(member.name)
                if key is None:
                    continue
                if key != current:
                    flush()
                    current = key
                pending[ext] = (member.offset_data, member.size)
            flush()
            current = None
        found = len(index) > before or any(problem[0] == url for problem in index.problems)
        if not found:
            index.problems.append((url, "the whole shard", "no samples (an empty tar, or directories only)"))
    except Exception as err:   # tarfile.ReadError (truncated, compressed, not a tar), a failed range request, ...
        flush()   # the members read before the failure are whole
        what = f"the rest of the shard after key {last}" if last else "the whole shard"
        reason = err.reason if isinstance(err, MemberError) else describe_error(err)
        index.problems.append((url, what, f"{err.__class__.__name__}: {reason}"))
    finally:
        stream.close()


_CACHE: dict[tuple[str, ...], SplitIndex] = {}


def split_index(urls: list[str]) -> SplitIndex:
    """The index of the shards ``urls`` (see the module docstring), computed once per process."""
    key = tuple(urls)
    if key not in _CACHE:
        index = SplitIndex(list(urls))
        for number, url in enumerate(urls):
            _scan(url, number, index)
        _CACHE[key] = index
    return _CACHE[key]


class MemberReader:
    """Reads members' bytes by (shard, offset, size); one per process (it keeps files and sessions open)."""

    def __init__(self) -> None:
        self.files: OrderedDict[str, int] = OrderedDict()
        self.objects: OrderedDict[str, object] = OrderedDict()   # object storage: open pyarrow input files
        self.filesystems: dict[str, object] = {}
        self.pid = os.getpid()

    def read(self, url: str, offset: int, size: int) -> bytes:
        if self.pid != os.getpid():   # forked into a loader worker: descriptors and sessions are the parent's
            self.files, self.objects, self.filesystems, self.pid = OrderedDict(), OrderedDict(), {}, os.getpid()
        data = self._read_local(url, offset, size) if not is_url(url) else self._read_remote(url, offset, size)
        if is_url(url) and len(data) > size:
            raise DataError(f"{url}: the server answered a range request with {len(data)} bytes for {size}: it "
                            "does not serve HTTP ranges (Python's http.server does not; nginx, object stores do)")
        if len(data) != size:
            raise OSError(f"read {len(data)} bytes at offset {offset}, expected {size} "
                          "(shard changed since it was indexed, or the server ignores range requests)")
        return data

    def _read_local(self, url: str, offset: int, size: int) -> bytes:
        fd = self.files.get(url)
        if fd is None:
            fd = os.open(local_path(url), os.O_RDONLY)
            self.files[url] = fd
            if len(self.files) > OPEN_FILES:
                os.close(self.files.popitem(last=False)[1])
        else:
            self.files.move_to_end(url)
        return os.pread(fd, size, offset)

    def _read_remote(self, url: str, offset: int, size: int) -> bytes:
        _check_random_access(url)
        if storage.is_object_store(url):
            handle = self.objects.get(url)
            if handle is None:
                handle = self.objects[url] = storage.open_random_access(url)
                if len(self.objects) > OPEN_FILES:
                    self.objects.popitem(last=False)[1].close()
            else:
                self.objects.move_to_end(url)
            return handle.read_at(size, offset)
        from fsspec.core import url_to_fs

        protocol = url.split("://", 1)[0]
        fs = self.filesystems.get(protocol)
        if fs is None:
            fs, _ = url_to_fs(url)
            self.filesystems[protocol] = fs
        return fs.cat_file(url, start=offset, end=offset + size)

    def close(self) -> None:
        for fd in self.files.values():
            os.close(fd)
        self.files.clear()
        for handle in self.objects.values():
            handle.close()
        self.objects.clear()
