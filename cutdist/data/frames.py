"""Synthetic stand-ins for GTA5 and Cityscapes, in their folder layouts and at their sizes, for tests and benchmarks.

``write_layouts(root, gta=N, cityscapes_train=N, cityscapes_val=N)`` writes

    root/GTA5/images/00001.png ...                                            1914 x 1052 (GTA5's frames)
    root/cityscapes/leftImg8bit/{train,val}/<city>/<city>_000000_%06d_leftImg8bit.png   2048 x 1024

Frames are smooth colour fields with blocks, mid-frequency texture and pixel noise, tuned so that a full-size
PNG at zlib level 6 is about the size of a real one (GTA5: ~57 GB / 24,966 frames = ~2.3 MB; Cityscapes:
~2 MB): PNG decoding time grows with what it inflates and unfilters, so the benchmarks' decode rates come
out near real data's. ``compress_level=1`` writes them ~3x faster (larger files) where only layout matters.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

GTA_SIZE = (1914, 1052)
CITYSCAPES_SIZE = (2048, 1024)
CITIES = {"train": ("aachen", "bochum", "bremen"), "val": ("frankfurt", "lindau", "munster")}


def frame(seed: int, width: int, height: int) -> np.ndarray:
    """One synthetic frame, [height, width, 3] uint8, deterministic in the seed."""
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(30, 220, (6, 10, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    img = np.asarray(base, dtype=np.int16)
    texture = Image.fromarray(rng.integers(0, 255, (height // 4, width // 4, 3), dtype=np.uint8))
    img = img + (np.asarray(texture.resize((width, height), Image.BILINEAR), dtype=np.int16) - 128) // 10
    for _ in range(12):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        block_h = int(rng.integers(height // 25 + 1, height // 3 + 2))
        block_w = int(rng.integers(width // 48 + 1, width // 3 + 2))
        img[y:y + block_h, x:x + block_w] += \
            rng.integers(-60, 60, 3).astype(np.int16)
    img = img + np.rint(rng.normal(0, 1.0, img.shape)).astype(np.int16)
    return np.clip(img, 0, 255).astype(np.uint8)


def _save(array: np.ndarray, path: Path, compress_level: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG", compress_level=compress_level)
    return path


def write_layouts(root: str | Path, *, gta: int = 0, cityscapes_train: int = 0, cityscapes_val: int = 0,
                  scale: float = 1.0, compress_level: int = 6, seed: int = 0) -> dict[str, Path]:
    """Write the GTA5 and Cityscapes folder layouts under ``root``; returns the folders ``shards write`` reads
    (``gta``, ``cityscapes_train``, ``cityscapes_val``). ``scale`` < 1 writes smaller frames (same layout)."""
    root = Path(root)
    folders = {"gta": root / "GTA5" / "images", "cityscapes_train": root / "cityscapes" / "leftImg8bit" / "train",
               "cityscapes_val": root / "cityscapes" / "leftImg8bit" / "val"}
    gw, gh = (round(side * scale) for side in GTA_SIZE)
    cw, ch = (round(side * scale) for side in CITYSCAPES_SIZE)
    for i in range(gta):
        _save(frame(seed * 100_003 + i, gw, gh), folders["gta"] / f"{i + 1:05d}.png", compress_level)
    for split, count, offset in (("train", cityscapes_train, 50_000), ("val", cityscapes_val, 80_000)):
        cities = CITIES[split]
        for i in range(count):
            city = cities[i % len(cities)]
            name = f"{city}_000000_{i:06d}_leftImg8bit.png"
            _save(frame(seed * 100_003 + offset + i, cw, ch), folders[f"cityscapes_{split}"] / city / name,
                  compress_level)
    return folders
