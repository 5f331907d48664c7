"""The single-image demo pair, made here (no downloads): one "painting" (domain A) and one "photo" (domain B) of
the same kind of scene, a coast with a cliff and an arch, Étretat-like, with known structure.

Both images share a layout of four regions (``REGIONS``: sky, sea, cliff, beach), drawn from the seed; the pair
uses two different layouts so the task is unpaired. The domains differ in how a region looks:

- painting (A): warm, flat, posterised colours per region with short oriented brush strokes;
- photo (B): cool, smooth vertical gradients per region with fine sensor-like noise.

``region_map(seed, which, h, w)`` returns the region index of every pixel, so tests can ask whether a translation
kept A's layout (the region of each pixel is still readable from the output) and took on B's colours.
"""
from __future__ import annotations

import numpy as np

REGIONS = ("sky", "sea", "cliff", "beach")
# Mean colours (RGB in [0, 1]) per region; luminance order sky > beach > cliff > sea in both domains.
PAINTING = np.array([[0.98, 0.72, 0.35], [0.45, 0.22, 0.42], [0.62, 0.42, 0.26], [0.92, 0.60, 0.30]])
PHOTO = np.array([[0.55, 0.75, 0.95], [0.05, 0.25, 0.38], [0.55, 0.57, 0.60], [0.80, 0.78, 0.70]])


def region_map(seed: int, which: str, height: int, width: int) -> np.ndarray:
    """[H, W] int region indices of the layout of image ``which`` ("A" or "B")."""
    rng = np.random.default_rng([seed, 0 if which == "A" else 1, 7])
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    y, x = y / height, x / width
    horizon = 0.42 + 0.08 * rng.random() + 0.02 * np.sin(2 * np.pi * (x * (1 + rng.random()) + rng.random()))
    shore = 0.78 + 0.06 * rng.random() + 0.04 * np.sin(2 * np.pi * (x * 0.7 + rng.random()))
    out = np.zeros((height, width), dtype=np.int64)          # sky
    out[y >= horizon] = 1                                     # sea
    out[y >= shore] = 3                                       # beach
    # A cliff on one side rising above the horizon, with an arch cut through it near the waterline.
    side = rng.random() < 0.5
    edge = 0.55 + 0.1 * rng.random()
    cliff_x = (1 - x) if side else x
    top = 0.18 + 0.1 * rng.random()
    cliff = (cliff_x < 1 - edge + 0.15 * np.sin(3 * y + rng.random())) & (y >= top) & (y < shore)
    cx, cy, r = (1 - edge - 0.12) if not side else (edge + 0.12), horizon.mean() + 0.12, 0.08 + 0.03 * rng.random()
    arch = ((x - cx) / 1.2) ** 2 + ((y - cy) / 1.0) ** 2 < r ** 2
    out[cliff & ~arch] = 2
    return out


def _painting(regions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = regions.shape
    img = PAINTING[regions].copy()
    # Brush strokes: short diagonal streaks of +-12% brightness, a few pixels wide.
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    phase = rng.random() * 2 * np.pi
    strokes = np.sin((x + 0.6 * y) * (2 * np.pi / 7.0) + phase) * np.sin(y * (2 * np.pi / 23.0) + 3 * phase)
    img *= (1 + 0.12 * np.sign(strokes) * (np.abs(strokes) > 0.3))[..., None]
    # Posterise: a painting's flat colour steps.
    return np.round(np.clip(img, 0, 1) * 6) / 6


def _photo(regions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = regions.shape
    y = np.linspace(0, 1, h)[:, None, None]
    img = PHOTO[regions] * (1.08 - 0.16 * y)                  # smooth vertical light falloff
    img += rng.normal(0, 0.025, size=img.shape)               # fine grain
    return np.clip(img, 0, 1)


def synth_single_pair(seed: int = 0, size: tuple[int, int] = (192, 256)) -> tuple[np.ndarray, np.ndarray]:
    """(painting A, photo B) as uint8 [H, W, 3] arrays of ``size`` = (height, width)."""
    h, w = size
    rng = np.random.default_rng([seed, 99])
    a = _painting(region_map(seed, "A", h, w), rng)
    b = _photo(region_map(seed, "B", h, w), rng)
    return (np.round(a * 255).astype(np.uint8), np.round(b * 255).astype(np.uint8))


def write_single_pair(out_dir, seed: int = 0, size: tuple[int, int] = (192, 256)) -> tuple[str, str]:
    """Write ``trainA/painting.png`` and ``trainB/photo.png`` under ``out_dir``: a source folder for
    ``python -m cutdist.shards write``. Returns the two training image paths."""
    from pathlib import Path

    from PIL import Image

    out = Path(out_dir)
    a, b = synth_single_pair(seed, size)
    paths = []
    for split, name, image in (("trainA", "painting", a), ("trainB", "photo", b)):
        (out / split).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(out / split / f"{name}.png")
        paths.append(str(out / split / f"{name}.png"))
    return paths[0], paths[1]
