"""Object storage (``s3://``, ``gs://``) for shards, runs and sweeps, through pyarrow's file systems.

pyarrow's ``FileSystem.from_uri`` is what Ray Train itself uses for ``RunConfig(storage_path)``, so the run's
checkpoints (written by Ray) and everything cutdist reads or writes beside them (shards, ``metrics.jsonl``,
samples, TensorBoard events, sweep files) go through the same client with the same configuration: the
standard AWS environment and config files (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` /
``AWS_SESSION_TOKEN``, ``AWS_PROFILE``, ``~/.aws/config``, an instance profile), ``AWS_DEFAULT_REGION`` /
``AWS_REGION``, and ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``) for an S3-compatible store; for ``gs://``
Google's application-default credentials.

Credentials never travel inside a URI: ``s3://KEY:SECRET@bucket`` and ``?access_key=&secret_key=`` query
parameters are refused (they would be printed in logs and stored in every checkpoint's config), so they stay in
each node's environment. Every message naming a URI goes through ``cutdist.redact.redact_uri`` as well.

``check(uri, key, writable=...)`` is the driver's pre-flight: unreachable endpoint, missing bucket, denied or
invalid credentials, no write permission -> one ``StorageError`` line naming the key and the URI.
"""
from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path
from urllib.parse import parse_qsl, urlparse

from cutdist.redact import redact_uri

OBJECT_SCHEMES = ("s3", "gs", "gcs")
# pyarrow's S3 URI options that carry a secret (its from_uri accepts them; we refuse them)
_SECRET_OPTIONS = ("access_key", "secret_key", "session_token")
_AWS_ERROR = re.compile(r"AWS Error (\w+)")
_AWS_REASONS = {
    "NETWORK_CONNECTION": "cannot reach the endpoint",
    "ACCESS_DENIED": "access denied (check the credentials and the bucket policy)",
    "INVALID_ACCESS_KEY_ID": "the access key id is not known to the store",
    "SIGNATURE_DOES_NOT_MATCH": "the secret access key is wrong",
    "NO_SUCH_BUCKET": "no such bucket",
    "EXPIRED_TOKEN": "the session token has expired",
}


class StorageError(ValueError):
    """A storage location that cannot be used; ``str(err)`` is one line naming the key and the URI."""


def is_object_store(location: str) -> bool:
    return isinstance(location, str) and urlparse(location).scheme in OBJECT_SCHEMES


def credentials_in_uri(location: str) -> bool:
    parsed = urlparse(location)
    return bool(parsed.username or parsed.password
                or any(name.lower() in _SECRET_OPTIONS for name, _ in parse_qsl(parsed.query)))


def refuse_credentials(location: str, key: str) -> None:
    if is_object_store(location) and credentials_in_uri(location):
        raise StorageError(f"{key}: {redact_uri(location)} carries credentials in the URI; put them in the "
                           "environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE, an instance "
                           "role) instead, so they are never printed or stored with the run")


def reason(err: BaseException) -> str:
    """A short, credential-free reason for a storage failure (pyarrow's messages name the AWS error)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    match = _AWS_ERROR.search(text)
    if match and match.group(1) in _AWS_REASONS:
        return f"{_AWS_REASONS[match.group(1)]} ({match.group(1)})"
    return redact_uri(text)


def filesystem(location: str):
    """``(pyarrow FileSystem, path)`` for a URI, exactly as Ray Train resolves its storage_path."""
    import pyarrow.fs

    try:
        return pyarrow.fs.FileSystem.from_uri(location)
    except (OSError, ValueError, TypeError) as err:   # pyarrow.ArrowInvalid is a ValueError
        raise StorageError(f"{redact_uri(location)}: {reason(err)}") from None


def join(location: str, *names: str) -> str:
    return "/".join([location.rstrip("/"), *(n.strip("/") for n in names)])


def _bucket(path: str) -> str:
    return path.split("/", 1)[0]


def exists(location: str) -> bool:
    import pyarrow.fs

    fs, path = filesystem(location)
    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def open_input(location: str):
    """A readable binary stream (``read``, ``close``) for an object; OSError when it cannot be read."""
    fs, path = filesystem(location)
    return fs.open_input_stream(path)


def open_random_access(location: str):
    """A seekable file for an object (``read``, ``seek``, ``read_at(size, offset)``: ranged GETs)."""
    fs, path = filesystem(location)
    return fs.open_input_file(path)


def read_bytes(location: str) -> bytes:
    with open_input(location) as stream:
        return stream.read()


def write_bytes(location: str, data: bytes) -> None:
    """One object, written whole (object stores never show a half-written object)."""
    fs, path = filesystem(location)
    with fs.open_output_stream(path) as out:
        out.write(data)


def upload(local: str | Path, location: str) -> None:
    """A local file or directory tree to ``location`` (objects under that prefix)."""
    import pyarrow.fs

    fs, path = filesystem(location)
    local = Path(local)
    if local.is_dir():
        pyarrow.fs.copy_files(str(local), path, destination_filesystem=fs)
    else:
        with local.open("rb") as src, fs.open_output_stream(path) as out:
            shutil.copyfileobj(src, out, 1 << 20)


def download(location: str, local: str | Path) -> Path:
    """One object to a local file (written through a temporary name)."""
    fs, path = filesystem(location)
    local = Path(local)
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(f".{local.name}.part-{os.getpid()}")
    with fs.open_input_stream(path) as src, tmp.open("wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
    os.replace(tmp, local)
    return local


def list_names(location: str, *, recursive: bool = False) -> list[str]:
    """Names under a prefix, relative to it ([] when there is nothing)."""
    import pyarrow.fs

    fs, path = filesystem(location)
    path = path.rstrip("/")
    selector = pyarrow.fs.FileSelector(path, allow_not_found=True, recursive=recursive)
    return sorted(info.path[len(path) + 1:] for info in fs.get_file_info(selector))


def check(location: str, key: str, *, writable: bool = False, must_exist: str | None = None) -> None:
    """Pre-flight for an object-storage location (no-op for anything else): the URI carries no credentials,
    the endpoint answers, the bucket exists and these credentials may use it; with ``writable``, a probe object
    is written under the prefix and deleted; with ``must_exist``, that object under the prefix exists.
    Raises StorageError: one line naming ``key`` and the (redacted) URI."""
    import pyarrow.fs

    if not is_object_store(location):
        return
    refuse_credentials(location, key)
    shown = redact_uri(location)
    try:
        fs, path = filesystem(location)
    except StorageError as err:
        raise StorageError(f"{key}: {err}") from None
    bucket = _bucket(path)
    try:
        if fs.get_file_info(bucket).type == pyarrow.fs.FileType.NotFound:
            raise StorageError(f"{key}: {shown}: bucket {bucket!r} does not exist")
        if must_exist and fs.get_file_info(f"{path.rstrip('/')}/{must_exist}").type == pyarrow.fs.FileType.NotFound:
            raise StorageError(f"{key}: {shown}: no {must_exist} there")
        if writable:
            probe = f"{path.rstrip('/')}/.cutdist-write-probe-{uuid.uuid4().hex}"
            with fs.open_output_stream(probe) as out:
                out.write(b"ok")
            fs.delete_file(probe)
    except StorageError:
        raise
    except (OSError, ValueError) as err:
        raise StorageError(f"{key}: {shown}: {reason(err)}") from None


def check_job(cfg) -> None:
    """Pre-flight of every object-storage location of a job (see ``check``): ``data.root`` must hold
    ``manifest.parquet``, ``storage_path`` (and ``eval.cache_dir``) must be writable, shard patterns and
    ``checkpoint.resume_from`` must carry no credentials and be in a reachable bucket."""
    from cutdist.data.manifest import MANIFEST_NAME

    if cfg.data.root:
        check(cfg.data.root, "data.root", must_exist=MANIFEST_NAME)
    check(cfg.storage_path, "storage_path", writable=True)
    if cfg.eval.cache_dir:
        check(cfg.eval.cache_dir, "eval.cache_dir", writable=True)
    for key in ("train_a", "train_b", "test_a", "test_b"):
        pattern = getattr(cfg.data, key)
        if is_object_store(pattern):
            refuse_credentials(pattern, f"data.{key}")
    if cfg.checkpoint.resume_from:
        check(cfg.checkpoint.resume_from, "checkpoint.resume_from")
