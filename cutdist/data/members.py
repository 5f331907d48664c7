"""The one bounded reader of shard members and image headers. EVERY path that reads tar shards or decodes their
images must go through it: the training stream (``data.stream``), the test stream and FID's shard sources,
``shards inspect --verify`` (``data.inspection``), ``translate`` and the device decoder (``data.gpu_decode``).
Do not open shards with ``tarfile.open(path)`` (random access: a member of negative size sends it back to an
earlier header forever) or read members with webdataset's ``tar_file_iterator`` (no size bound) anywhere else.

- ``tar_members(stream, where)``: (name, bytes) of each regular member, streaming (``r|*``: plain or compressed,
  never seeks), one member in memory at a time. A member whose header declares a negative size, or more than
  ``MAX_MEMBER_BYTES``, ends the shard with a ``MemberError`` *before* its data is read: a gzip bomb (1 GiB of
  zeros in 1 MB) costs a header, not a gigabyte. ``check_member(info, where)`` is that header check alone, for
  readers that index tar headers and read members by offset later (``data.indexed``, the training stream). Names starting ``__`` and ending ``__`` (webdataset's meta
  files) are skipped as webdataset skips them.
- ``open_image(data, where)``: a lazily opened PIL image whose declared width x height was checked against
  ``MAX_IMAGE_PIXELS`` before any pixel is decoded (``check_pixels`` does the same for decoders other than PIL).

The bounds are generous for photographs (a member up to 64 MiB, an image up to PIL's own 89.5 megapixel
default, e.g. 9000 x 9000) and can be raised for a trusted dataset with the environment variables
``CUTDIST_MAX_MEMBER_MB`` and ``CUTDIST_MAX_IMAGE_PIXELS``.
"""
from __future__ import annotations

import io
import os
import re
import tarfile
import warnings
import zlib
from collections.abc import Iterator
from typing import IO

from PIL import Image

from cutdist.data.manifest import DataError

MAX_MEMBER_BYTES = int(float(os.environ.get("CUTDIST_MAX_MEMBER_MB", "64")) * 2 ** 20)
MAX_IMAGE_PIXELS = int(float(os.environ.get("CUTDIST_MAX_IMAGE_PIXELS", str(89_478_485))))
_META = re.compile(r"__[^/]*__($|/)")


class MemberError(DataError):
    """A shard member or image that is refused or cannot be read; one line naming the shard and member.
    ``reason`` is the message without the location (for lines that name the shard already)."""

    def __init__(self, where: str, reason: str | None = None):
        if reason is None:   # unpickled from its message alone
            where, reason = "", where
        self.where, self.reason = where, reason
        super().__init__(f"{where}: {reason}" if where else reason)


def _bound_message(what: str, size: int, limit: int, env: str) -> str:
    return f"{what} declares {size:,} bytes, more than the {limit:,} a member may hold (raise {env} if it is real)"


def _unreadable(err: BaseException, after: str | None) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return (f"{type(err).__name__}{': ' + text if text else ''}"
            + (f" (after member {after!r})" if after else ""))


def check_member(info: tarfile.TarInfo, where: str, max_bytes: int | None = None) -> None:
    """MemberError when a tar header declares a negative size (random-access ``tarfile`` would then go back to
    an earlier header forever) or, for a regular file, more than ``MAX_MEMBER_BYTES``. Readers that index headers
    themselves (``data.indexed``) call it on every header before using it."""
    if info.size < 0:
        raise MemberError(where, f"member {info.name!r} declares a negative size ({info.size}); damaged or hostile "
                                 "shard")
    limit = MAX_MEMBER_BYTES if max_bytes is None else max_bytes
    if info.isreg() and info.size > limit:
        raise MemberError(where, _bound_message(f"member {info.name!r}", info.size, limit, "CUTDIST_MAX_MEMBER_MB"))


def tar_members(stream: IO[bytes], where: str, *, max_bytes: int | None = None) -> Iterator[tuple[str, bytes]]:
    """(member name, data) of each regular member of the tar stream ``stream`` (``where`` names it in errors).

    Raises MemberError on a negative or oversized declared size, a truncated member, or a damaged archive,
    after yielding every member before it."""
    limit = MAX_MEMBER_BYTES if max_bytes is None else max_bytes
    name = None
    try:
        tar = tarfile.open(fileobj=stream, mode="r|*")
        for info in tar:
            tar.members = []   # a streaming TarFile keeps every header otherwise
            name = info.name
            check_member(info, where, limit)
            if not info.isreg() or _META.match(name):
                continue
            handle = tar.extractfile(info)
            data = handle.read() if handle is not None else b""
            if len(data) != info.size:
                raise MemberError(where, f"member {name!r} truncated ({len(data)} of {info.size} bytes)")
            yield name, data
    except MemberError:
        raise
    except (tarfile.TarError, OSError, EOFError, zlib.error, ValueError, OverflowError) as err:
        raise MemberError(where, _unreadable(err, name)) from None


def tar_headers(stream: IO[bytes], where: str) -> Iterator[str]:
    """The names of the regular members of a tar stream, without keeping their data (plain tars skip it by
    reading blocks; memory stays bounded). MemberError on a negative size or a damaged archive."""
    try:
        tar = tarfile.open(fileobj=stream, mode="r|*")
        for info in tar:
            tar.members = []
            check_member(info, where)
            if info.isreg() and not _META.match(info.name):
                yield info.name
    except MemberError:
        raise
    except (tarfile.TarError, OSError, EOFError, zlib.error, ValueError, OverflowError) as err:
        raise MemberError(where, _unreadable(err, None)) from None


def check_pixels(width: int, height: int, where: str = "") -> None:
    """MemberError when ``width`` x ``height`` is not a sane image size within ``MAX_IMAGE_PIXELS``."""
    if width < 1 or height < 1:
        raise MemberError(where, f"image declares size {width}x{height}")
    if width * height > MAX_IMAGE_PIXELS:
        raise MemberError(where, f"image declares {width}x{height} = {width * height:,} pixels, more than "
                          f"the {MAX_IMAGE_PIXELS:,} allowed (raise CUTDIST_MAX_IMAGE_PIXELS if it is real)")


def open_image(data: bytes, where: str = "") -> Image.Image:
    """A PIL image of encoded ``data``, opened lazily (header only) and size-checked; decode it with ``.load()``
    or ``.convert()``. MemberError on an unidentifiable header or too many pixels."""
    if not data:
        raise MemberError(where, "empty image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)   # we apply our own bound below
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        raise MemberError(where, str(err)) from None
    except Exception as err:   # PIL raises many types for bad headers
        raise MemberError(where, f"not a readable image ({type(err).__name__}: {str(err)[:120]})") from None
    check_pixels(*image.size, where)
    return image


def image_header_size(data: bytes, where: str = "") -> tuple[int, int]:
    """(width, height) declared by encoded ``data``'s header, checked by ``check_pixels``; nothing decoded."""
    with open_image(data, where) as image:
        return image.size
