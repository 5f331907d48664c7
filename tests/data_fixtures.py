"""Shared helpers for the data tests: tiny image folders, tiny synthetic shard sets, a local HTTP server."""
from __future__ import annotations

import functools
import http.server
import io
import re
import tarfile
import threading
from pathlib import Path

import numpy as np
from PIL import Image


def image_bytes(width: int, height: int, fmt: str = "JPEG", seed: int = 0) -> bytes:
    """A smooth random RGB image, encoded."""
    rng = np.random.default_rng(seed)
    small = (rng.uniform(0, 255, size=(4, 4, 3))).astype(np.uint8)
    img = Image.fromarray(small).resize((width, height), Image.BICUBIC)
    buffer = io.BytesIO()
    img.save(buffer, format=fmt)
    return buffer.getvalue()


def make_root(root: Path, counts: dict[str, int], size: tuple[int, int] = (40, 32)) -> dict[str, list[Path]]:
    """A CycleGAN-style root with ``counts[split]`` images per split, alternating JPEG and PNG."""
    files: dict[str, list[Path]] = {}
    for s, (split, count) in enumerate(counts.items()):
        (root / split).mkdir(parents=True, exist_ok=True)
        files[split] = []
        for i in range(count):
            fmt, ext = ("JPEG", "jpg") if i % 2 == 0 else ("PNG", "png")
            path = root / split / f"img{i:03d}.{ext}"
            path.write_bytes(image_bytes(size[0] + i, size[1], fmt, seed=100 * s + i))
            files[split].append(path)
    return files


def member_offsets(shard: Path) -> dict[str, tuple[int, int]]:
    """{member name: (data offset, size)} of a tar file."""
    with tarfile.open(shard) as tar:
        return {m.name: (m.offset_data, m.size) for m in tar.getmembers()}


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Python's file server, plus single ``Range: bytes=a-b`` requests (answered 206), as object stores and
    production web servers serve them; ``ranges_served`` counts them (class-wide)."""
    ranges_served = 0

    def log_message(self, *args):
        pass

    def send_head(self):
        wanted = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", "").strip())
        path = Path(self.translate_path(self.path))
        if wanted is None or not path.is_file():
            return super().send_head()
        data = path.read_bytes()
        first = int(wanted.group(1))
        last = min(int(wanted.group(2)) if wanted.group(2) else len(data) - 1, len(data) - 1)
        if first >= len(data):
            self.send_error(416)
            return None
        type(self).ranges_served += 1
        self.send_response(206)
        self.send_header("Content-Type", "application/x-tar")
        self.send_header("Content-Range", f"bytes {first}-{last}/{len(data)}")
        self.send_header("Content-Length", str(last - first + 1))
        self.end_headers()
        return io.BytesIO(data[first:last + 1])


class ServedDirectory:
    """``with ServedDirectory(path) as url:`` serves ``path`` over HTTP on 127.0.0.1 (a real server)."""

    def __init__(self, directory: Path):
        handler = functools.partial(_QuietHandler, directory=str(directory))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
