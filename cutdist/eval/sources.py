"""Where FID images come from, as batches of float tensors in [0, 1], and their accumulated statistics.

- An image folder, read exactly as pytorch-fid reads it (``Image.open(f).convert("RGB")`` then
  torchvision's ``to_tensor``, no resize: the network resizes bilinearly to 299), files sorted by name, not
  recursive. Extensions are pytorch-fid's set, matched case-insensitively (pytorch-fid's glob is case
  sensitive on Linux, so it would miss ``.PNG``). Images of different sizes go in separate batches.
  ``size`` > 0 first resizes to size x size (bicubic, as the shards' test-time transform).
- One split of a shard directory (its ``manifest.parquet``, else ``<split>-*.tar``), through the data
  package's ``test_loader`` (each image once, resized to size x size).

An image that cannot be decoded is warned about (its file), skipped and counted; it never stops a run.
"""
from __future__ import annotations

import glob
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from torchvision.transforms import functional as TVF

from cutdist.eval.inception import FEATURE_DIM, activations
from cutdist.eval.stats import ActivationStats

# pytorch_fid.fid_score.IMAGE_EXTENSIONS (kept here: importing fid_score parses its command line options).
IMAGE_EXTENSIONS = frozenset({"bmp", "jpg", "jpeg", "pgm", "png", "ppm", "tif", "tiff", "webp"})


@dataclass
class SkipCount:
    """Images skipped as undecodable, with the first few culprits for the summary line."""
    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, what: str, reason: str) -> None:
        self.count += 1
        if len(self.examples) < 5:
            self.examples.append(what)
        warnings.warn(f"{what}: skipped, cannot decode ({reason})", stacklevel=2)


def image_files(folder: str | Path) -> list[Path]:
    """The image files directly inside ``folder``, sorted by name."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix[1:].lower() in IMAGE_EXTENSIONS)


def _read_image(path: Path, size: int) -> torch.Tensor:
    with Image.open(path) as img:
        img = img.convert("RGB")
    if size:
        img = img.resize((size, size), Image.BICUBIC)
    return TVF.to_tensor(img)


def folder_batches(files: list[Path], *, batch_size: int, size: int = 0,
                   skipped: SkipCount | None = None) -> Iterator[torch.Tensor]:
    """Batches ``[B, 3, H, W]`` in [0, 1] of ``files`` in order; a change of image size starts a new batch."""
    skipped = skipped if skipped is not None else SkipCount()
    pending: list[torch.Tensor] = []
    for path in files:
        try:
            image = _read_image(path, size)
        except Exception as err:   # PIL raises many types for bad data
            skipped.add(str(path), f"{type(err).__name__}: {err}")
            continue
        if pending and (len(pending) == batch_size or pending[0].shape != image.shape):
            yield torch.stack(pending)
            pending = []
        pending.append(image)
    if pending:
        yield torch.stack(pending)


@dataclass
class ShardSplit:
    """One split of a shard directory: its shard URLs, image count and sizes (from the manifest, if any)."""
    root: str
    split: str
    urls: list[str]
    count: int | None
    sizes: set[tuple[int, int]]
    manifest: str | None


def shard_split(root: str, split: str) -> ShardSplit:
    """The shards of ``split`` under ``root``: from its manifest, else the files ``<split>-*.tar``."""
    from cutdist.data.manifest import DataError, is_url, join, read_manifest

    if is_url(root) or os.path.isfile(os.path.join(root, "manifest.parquet")):
        rows = [r for r in read_manifest(root).to_pylist() if r["split"] == split]
        if not rows:
            raise DataError(f"{join(root, 'manifest.parquet')}: no {split!r} split")
        urls = [join(root, name) for name in sorted({r["shard"] for r in rows})]
        return ShardSplit(root, split, urls, len(rows), {(r["width"], r["height"]) for r in rows},
                          join(root, "manifest.parquet"))
    urls = sorted(glob.glob(os.path.join(glob.escape(root), f"{split}-*.tar")))
    if not urls:
        raise DataError(f"{root}: no manifest.parquet and no {split}-*.tar shards")
    return ShardSplit(root, split, urls, None, set(), None)


def shard_batches(urls: list[str], *, size: int, batch_size: int, rank: int = 0, world_size: int = 1,
                  max_images: int = 0, on_skipped: Callable[[int], None] | None = None) -> Iterator[torch.Tensor]:
    """This rank's share of the test shards ``urls`` as [0, 1] batches (cutdist.data.stream.test_loader)."""
    from cutdist.data.stream import test_loader

    loader = test_loader(urls, rank=rank, world_size=world_size, size=size, batch_size=batch_size,
                         max_images=max_images)
    for _keys, images in loader:
        yield ((images + 1) / 2).clamp_(0, 1)
    if on_skipped is not None:
        on_skipped(loader.skipped)


def accumulate_stats(batches: Iterable[torch.Tensor], model: nn.Module, *, batch_size: int = 50,
                     stats: ActivationStats | None = None, progress=None,
                     features: list | None = None) -> ActivationStats:
    """Inception statistics of image batches in [0, 1]; ``progress`` (a tqdm bar) is advanced per image;
    ``features``: a list that receives each batch's activations too (float32 ``[B, 2048]``, for KID)."""
    stats = stats if stats is not None else ActivationStats(FEATURE_DIM)
    for images in batches:
        if images.shape[0] == 0:
            continue
        acts = activations(model, images, batch_size=batch_size)
        stats.update(acts)
        if features is not None:
            features.append(np.asarray(acts, dtype=np.float32))
        if progress is not None:
            progress.update(images.shape[0])
    return stats

