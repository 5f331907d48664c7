"""SinCUT's data: one image per domain, cut into random zoomed 64 x 64 cells (the authors' ``singleimage_dataset.py``
with ``preprocess=zoom_and_patch``), and the whole image at test time.

Sources (``load_single_images(data_cfg, splits)``): ``data.image_a`` / ``data.image_b`` (two image files or
URLs), else the one sample of trainA and of trainB in the shards of ``data.root`` (``python -m cutdist.shards
write`` accepts a root whose trainA/ and trainB/ hold one image each). Anything else is one DataError.

A crop (``ZoomAndPatch``), as the reference: a per-axis zoom factor uniform in [1/random_scale_max, 1] (the
zoomed side never below the crop), bilinear; then the image is tiled by a grid of crop x crop cells whose
origin is offset at random within the leftover margin, and the cell ``perm[i] mod (#cells)`` is taken, where
``perm`` is a random permutation of the epoch's sample indices (so the crops of one batch come from different
cells); then a horizontal flip on a fair coin. The resize runs in torch (``F.interpolate`` bilinear with
antialiasing, the filter PIL applies when it shrinks) on the training device, in float, where the reference
resizes the 8-bit PIL image: the crops agree with PIL's to a few grey levels (tests/test_sincut.py).

Every random draw of an epoch comes from (seed, epoch, domain) alone and is the same on every rank; rank r of
N takes samples ``[s B + r B/N, s B + (r+1) B/N)`` of step s, so the global batch of a step is the same whatever
the number of workers, and a resumed run cuts the same crops.

The reference draws one zoom per *index* and tiles them per batch, but its loader shuffles the indices, so in
effect every crop gets its own zoom: that is what is done here.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cutdist.data.manifest import DataError, read_bytes

DOMAINS = {"A": 0, "B": 1}


@dataclass
class SingleImages:
    """The two training images as float tensors [3, H, W] in [-1, 1], and where they came from."""
    a: torch.Tensor
    b: torch.Tensor
    source_a: str
    source_b: str


def decode_image(data: bytes, label: str) -> torch.Tensor:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            rgb = img.convert("RGB")
    except Exception as err:  # noqa: BLE001 - any undecodable image is one clear line
        raise DataError(f"{label}: not a readable image ({type(err).__name__}: {str(err)[:120]})") from None
    array = np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0
    return torch.from_numpy(np.ascontiguousarray(array))


def _one_from_shards(urls: list[str], split: str) -> tuple[bytes, str]:
    from cutdist.data.gpu_decode import read_encoded

    if not urls:
        raise DataError(f"data.root: no {split} shards (sincut needs one image in {split})")
    found = []
    try:
        for url, name, data in read_encoded(urls):
            found.append((data, f"{url} member {name}"))
            if len(found) > 1:
                break
    except (OSError, ValueError, EOFError) as err:
        raise DataError(f"{urls[0]}: cannot read {split} ({type(err).__name__}: {err})") from None
    if len(found) != 1:
        raise DataError(f"data.root: sincut needs exactly one image in {split}, found "
                        f"{'none' if not found else 'more than one'} in {urls}")
    return found[0]


def load_single_images(data_cfg, splits=None) -> SingleImages:
    """The two images of a sincut job (see the module docstring); DataError naming the culprit otherwise."""
    if data_cfg.image_a and data_cfg.image_b:
        raw = [(read_bytes(data_cfg.image_a), data_cfg.image_a), (read_bytes(data_cfg.image_b), data_cfg.image_b)]
        keys = ("data.image_a", "data.image_b")
    else:
        if splits is None:
            raise DataError("data.root: the sincut shards were not resolved")
        raw = [_one_from_shards(splits.train_a, "trainA"), _one_from_shards(splits.train_b, "trainB")]
        keys = ("trainA", "trainB")
    images = [decode_image(data, f"{key} {label}") for (data, label), key in zip(raw, keys)]
    for image, (_, label), key in zip(images, raw, keys):
        if min(image.shape[1:]) < 4:
            raise DataError(f"{key} {label}: image of {image.shape[2]}x{image.shape[1]} px is too small")
    return SingleImages(images[0], images[1], raw[0][1], raw[1][1])


def resize_bilinear(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[3, H, W] or [B, 3, H, W] -> bilinear resize (antialiased when shrinking, as PIL's BILINEAR)."""
    batch = image if image.dim() == 4 else image[None]
    if tuple(batch.shape[-2:]) == (height, width):
        return image
    out = F.interpolate(batch.float(), size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return out if image.dim() == 4 else out[0]


def round_to_4(size: int) -> int:
    return max(4, int(round(size / 4) * 4))


def whole_image(image: torch.Tensor) -> torch.Tensor:
    """The test-time input: the whole image, each side rounded to a multiple of 4 (bilinear), as [1, 3, H, W]."""
    h, w = image.shape[-2:]
    return resize_bilinear(image, round_to_4(h), round_to_4(w))[None] if image.dim() == 3 else image


@dataclass
class EpochPlan:
    """Every random draw of one epoch for one domain (index = sample of the epoch)."""
    zoom: np.ndarray      # [N, 2] (width factor, height factor)
    cell: np.ndarray      # [N] a permutation of 0..N-1
    offset: np.ndarray    # [N, 2] uniform [0, 1): grid origin within the margin (x, y)
    flip: np.ndarray      # [N] bool


class ZoomAndPatch:
    """The reference's ``zoom_and_patch`` crops of one image (see the module docstring)."""

    def __init__(self, image: torch.Tensor, *, crop: int, scale_max: float, epoch_size: int, no_flip: bool,
                 seed: int, domain: str) -> None:
        self.image, self.crop, self.scale_max = image, crop, scale_max
        self.epoch_size, self.no_flip, self.seed, self.domain = epoch_size, no_flip, seed, DOMAINS[domain]
        self._plan: tuple[int, EpochPlan] | None = None

    def plan(self, epoch: int) -> EpochPlan:
        if self._plan is None or self._plan[0] != epoch:
            rng = np.random.default_rng(np.random.SeedSequence([self.seed & 0xFFFFFFFF, epoch, self.domain, 13]))
            n = self.epoch_size
            plan = EpochPlan(zoom=rng.uniform(1.0 / self.scale_max, 1.0, size=(n, 2)), cell=rng.permutation(n),
                             offset=rng.random((n, 2)), flip=rng.random(n) < 0.5)
            self._plan = (epoch, plan)
        return self._plan[1]

    def sample(self, epoch: int, index: int) -> torch.Tensor:
        """The crop of sample ``index`` of ``epoch``: [3, crop, crop] on the image's device."""
        p = self.plan(epoch)
        crop = self.crop
        h, w = self.image.shape[-2:]
        zw = int(round(max(crop, w * float(p.zoom[index, 0]))))
        zh = int(round(max(crop, h * float(p.zoom[index, 1]))))
        nw, nh = zw // crop, zh // crop
        start_x = int(p.offset[index, 0] * (zw - nw * crop + 1))
        start_y = int(p.offset[index, 1] * (zh - nh * crop + 1))
        cell = int(p.cell[index]) % (nw * nh)
        x0 = start_x + (cell // nh) * crop
        y0 = start_y + (cell % nh) * crop
        zoomed = resize_bilinear(self.image, zh, zw)
        out = zoomed[:, y0:y0 + crop, x0:x0 + crop]
        if not self.no_flip and p.flip[index]:
            out = torch.flip(out, [2])
        return out

    def batch(self, epoch: int, indices: range) -> torch.Tensor:
        return torch.stack([self.sample(epoch, i) for i in indices])


class SingleImageStream:
    """Per-rank batches of (A crops, B crops) for one epoch, starting at ``start_step``."""

    def __init__(self, images: SingleImages, data_cfg, *, seed: int, device: torch.device) -> None:
        common = dict(crop=data_cfg.crop_size, scale_max=data_cfg.random_scale_max,
                      epoch_size=data_cfg.sincut_epoch_size, no_flip=data_cfg.no_flip, seed=seed)
        self.a = ZoomAndPatch(images.a.to(device), domain="A", **common)
        self.b = ZoomAndPatch(images.b.to(device), domain="B", **common)
        self.global_batch = data_cfg.batch_size
        self.steps_per_epoch = data_cfg.sincut_epoch_size // data_cfg.batch_size

    def epoch(self, epoch: int, *, rank: int, world_size: int, start_step: int = 0):
        per_rank = self.global_batch // world_size
        for step in range(start_step, self.steps_per_epoch):
            first = step * self.global_batch + rank * per_rank
            indices = range(first, first + per_rank)
            yield {"a": self.a.batch(epoch, indices), "b": self.b.batch(epoch, indices)}
