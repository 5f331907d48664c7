"""Looking at a shard directory: summary statistics from the manifest, and a full re-read against it.

``inspect_shards`` reports counts per split, shard sizes and the image size distribution; ``verify_shards``
re-reads every sample of every shard (local or through ``gopen``) and lists every difference from the
manifest: a changed sha256, a sample missing or extra, an unreadable or truncated shard, a stray shard file.
"""
from __future__ import annotations

import hashlib
import os
import re
from collections import Counter, defaultdict
from pathlib import Path

from webdataset.tariterators import base_plus_ext

from cutdist.data.manifest import SPLITS, DataError, is_url, join, local_path, open_location, printable, read_manifest
from cutdist.data.members import image_header_size, tar_members
from cutdist.redact import redact_uri
from cutdist.data.transforms import image_field


def inspect_shards(root: str) -> dict:
    """Per split: images, shards, samples and bytes per shard, formats, and image sizes (from the manifest;
    shard file sizes too when the directory is local)."""
    rows = read_manifest(root).to_pylist()
    local = not is_url(root)
    report: dict = {"root": redact_uri(root), "images": len(rows), "splits": {}}
    by_split: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_split[row["split"]].append(row)
    for split in sorted(by_split, key=lambda s: (SPLITS.index(s) if s in SPLITS else len(SPLITS), s)):
        items = by_split[split]
        per_shard = Counter(r["shard"] for r in items)
        image_bytes = Counter()
        for r in items:
            image_bytes[r["shard"]] += r["bytes"]
        sizes = Counter((r["width"], r["height"]) for r in items)
        entry = {
            "images": len(items),
            "shards": len(per_shard),
            "samples_per_shard": [min(per_shard.values()), max(per_shard.values())],
            "image_bytes_per_shard": [min(image_bytes.values()), max(image_bytes.values())],
            "image_bytes": sum(image_bytes.values()),
            "formats": dict(Counter(r["format"] for r in items)),
            "width": [min(r["width"] for r in items), max(r["width"] for r in items)],
            "height": [min(r["height"] for r in items), max(r["height"] for r in items)],
            "common_sizes": [[f"{w}x{h}", n] for (w, h), n in sizes.most_common(5)],
        }
        if local:
            files = [local_path(join(root, name)) for name in per_shard]
            file_sizes = [f.stat().st_size for f in files if f.is_file()]
            entry["file_bytes"] = sum(file_sizes)
            entry["missing_shards"] = len(files) - len(file_sizes)
        report["splits"][split] = entry
    return report


def format_report(report: dict) -> str:
    lines = [f"{report['root']}: {report['images']} images"]
    for split, e in report["splits"].items():
        lines.append(f"  {printable(split)}: {e['images']} images in {e['shards']} shard(s), "
                     f"{e['samples_per_shard'][0]}-{e['samples_per_shard'][1]} per shard, "
                     f"{_mb(e['image_bytes_per_shard'][0])}-{_mb(e['image_bytes_per_shard'][1])} of images per shard"
                     + (f", {_mb(e['file_bytes'])} on disk" if "file_bytes" in e else ""))
        lines.append(f"    formats {e['formats']}; width {e['width'][0]}-{e['width'][1]}, "
                     f"height {e['height'][0]}-{e['height'][1]}; most common sizes "
                     + ", ".join(f"{s} ({n})" for s, n in e["common_sizes"]))
        if e.get("missing_shards"):
            lines.append(f"    MISSING: {e['missing_shards']} shard file(s) listed in the manifest")
    return "\n".join(lines)


def _mb(n: int) -> str:
    return f"{n / 2 ** 20:.1f} MiB" if n >= 2 ** 20 else f"{n / 2 ** 10:.1f} KiB"


def _header_size(data: bytes) -> tuple[int, int] | str:
    try:
        return image_header_size(data)
    except DataError as err:
        return str(err)


def _read_shard(location: str) -> tuple[dict[str, tuple], str | None]:
    """{key: (format, sha256, bytes, (width, height) or why the header is unreadable)} of a shard's samples as
    the training reader sees them, and the error that stopped reading early (None when read to its end)."""
    found: dict[str, tuple] = {}
    try:
        stream = open_location(location)
        try:
            for name, data in tar_members(stream, location):
                key, ext = base_plus_ext(name)
                if key is None:
                    continue
                ext = ext.lower()
                if image_field({ext: None}) is not None:
                    found[key] = (ext, hashlib.sha256(data).hexdigest(), len(data), _header_size(data))
        finally:
            stream.close()
    except Exception as err:   # MemberError, OSError from curl, ...: the shard is damaged from here on
        text = str(err).splitlines()[0] if str(err) else err.__class__.__name__
        return found, f"{err.__class__.__name__}: {text}"
    return found, None


def verify_shards(root: str, progress: bool = False) -> list[str]:
    """Every difference between the shards and the manifest, one line each (empty = all samples match)."""
    from tqdm import tqdm

    rows = read_manifest(root).to_pylist()
    expected: dict[str, dict[str, tuple]] = defaultdict(dict)
    for row in rows:
        expected[row["shard"]][row["key"]] = (row["format"], row["sha256"], row["bytes"], (row["width"], row["height"]))
    problems: list[str] = []
    for shard in tqdm(sorted(expected), unit="shard", desc="verify", disable=not progress):
        location = join(root, shard)
        if not is_url(root) and not local_path(location).is_file():
            problems.append(f"{shard}: listed in the manifest, file missing ({len(expected[shard])} samples)")
            continue
        found, error = _read_shard(location)
        if error:
            problems.append(f"{shard}: unreadable after {len(found)} samples ({error})")
        for key, (fmt, sha, size, dims) in expected[shard].items():
            name = printable(key)
            if key not in found:
                if not error:
                    problems.append(f"{shard}: key {name}: in the manifest, not in the shard")
                continue
            got_fmt, got_sha, got_size, got_dims = found[key]
            if got_fmt != fmt:
                problems.append(f"{shard}: key {name}: format {printable(got_fmt)}, manifest says {printable(fmt)}")
            if got_sha != sha:
                problems.append(f"{shard}: key {name}: sha256 {got_sha[:16]}..., manifest says {str(sha)[:16]}...")
            if got_size != size:
                problems.append(f"{shard}: key {name}: {got_size} bytes, manifest says {size}")
            if isinstance(got_dims, str):
                problems.append(f"{shard}: key {name}: image header unreadable or refused ({got_dims})")
            elif got_dims != dims:
                problems.append(f"{shard}: key {name}: {got_dims[0]}x{got_dims[1]}, manifest says {dims[0]}x{dims[1]}")
        for key in sorted(set(found) - set(expected[shard])):
            problems.append(f"{shard}: key {printable(key)}: in the shard, not in the manifest")
    if not is_url(root):
        pattern = re.compile(r"^(%s)-\d{6}\.tar$" % "|".join(SPLITS))
        for name in sorted(os.listdir(local_path(root))):
            if pattern.match(name) and name not in expected:
                problems.append(f"{name}: shard file not in the manifest")
    return problems


def shard_paths(root: str) -> list[Path]:
    """Local shard files listed in the manifest (for tests and tools)."""
    return [local_path(join(root, name)) for name in sorted({r["shard"] for r in read_manifest(root).to_pylist()})]
