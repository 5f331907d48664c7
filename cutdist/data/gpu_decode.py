"""JPEG decoding and the training augmentation on the GPU, for when the CPU loaders cannot keep up with the step:
batches of encoded images are decoded by ``torchvision.io.decode_jpeg(..., device="cuda")`` (nvJPEG) and
resized / cropped / flipped as device tensors.

The augmentation follows ``TrainAugment``'s ``resize_and_crop`` (resize to load x load, random crop, random
horizontal flip, [-1, 1]) with the same draws from the same ``random.Random`` (left, top, flip), but torch's
bicubic kernel (a = -0.75) is not PIL's (a = -0.5): pixels differ by a few levels of 255 from the CPU path.
Images that are not JPEG are decoded on the CPU (``decode_image``) and moved over, and counted; images that
cannot be decoded, or whose header declares more pixels than ``members.MAX_IMAGE_PIXELS``, are skipped and counted.
Reads tar shards through ``cutdist.data.members`` (bounded member sizes; no webdataset needed).
"""
from __future__ import annotations

import random
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

from cutdist.data.manifest import IMAGE_EXTENSIONS, CorruptSampleWarning, DataError, open_location
from cutdist.data.members import MemberError, image_header_size, tar_members

JPEG_EXTENSIONS = ("jpg", "jpeg")


@dataclass
class DecodeCounts:
    """What a decode call did besides decoding JPEGs on the device."""
    cpu_decoded: int = 0                  # not JPEG: decoded on the CPU
    skipped: int = 0                      # undecodable
    skipped_names: list[str] = field(default_factory=list)


def read_encoded(urls: list[str]) -> Iterator[tuple[str, str, bytes]]:
    """(shard, member name, encoded bytes) of every image member of the tar shards, in order."""
    for url in urls:
        stream = open_location(url)
        try:
            for name, data in tar_members(stream, url):
                ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
                if ext in IMAGE_EXTENSIONS:
                    yield url, name, data
        finally:
            stream.close()


def _header_ok(name: str, data: bytes) -> bool:
    try:
        image_header_size(data)
    except MemberError:
        return False
    return True


def _is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


def decode_batch(encoded: list[tuple[str, bytes]], device: torch.device | str,
                 counts: DecodeCounts | None = None) -> list[torch.Tensor]:
    """RGB uint8 [3, H, W] tensors on ``device`` for the (name, bytes) pairs that decode, in order; JPEGs in one
    batched ``decode_jpeg`` call on the device, the others on the CPU. Undecodable ones are skipped and counted."""
    counts = counts if counts is not None else DecodeCounts()
    device = torch.device(device)
    out: list[torch.Tensor | None] = [None] * len(encoded)
    # the shared pixel bound, from the header, before any decoder allocates (nvJPEG and decode_image have none)
    sane = [_header_ok(name, data) for name, data in encoded]
    jpeg_at = [i for i, (_, data) in enumerate(encoded) if sane[i] and _is_jpeg(data)]
    datas = [torch.frombuffer(bytearray(encoded[i][1]), dtype=torch.uint8) for i in jpeg_at]
    if datas:
        try:
            decoded = decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:   # one bad JPEG fails the batch: decode them one by one to find it
            decoded = []
            for i, data in zip(jpeg_at, datas):
                try:
                    decoded.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    decoded.append(None)
        for i, image in zip(jpeg_at, decoded):
            out[i] = image
    for i, (name, data) in enumerate(encoded):
        if i in jpeg_at or not sane[i]:
            continue
        try:
            out[i] = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB).to(device)
            counts.cpu_decoded += 1
        except (RuntimeError, ValueError):
            pass
    images = []
    for (name, _), image in zip(encoded, out):
        if image is None:
            counts.skipped += 1
            counts.skipped_names.append(name)
        else:
            images.append(image)
    return images


def augment_batch(images: list[torch.Tensor], rng: random.Random, *, load_size: int = 286, crop_size: int = 256,
                  no_flip: bool = False) -> torch.Tensor:
    """``resize_and_crop`` on device uint8 images: [B, 3, crop, crop] float32 in [-1, 1]. Draws left, top and the
    flip from ``rng`` per image, in that order, as ``TrainAugment`` does."""
    if crop_size > load_size:
        raise ValueError(f"augment_batch: crop_size {crop_size} is larger than load_size {load_size}")
    if crop_size % 4:
        raise ValueError(f"augment_batch: crop_size must be a multiple of 4, got {crop_size}")
    if not images:
        raise ValueError("augment_batch: no images")
    resized: list[torch.Tensor | None] = [None] * len(images)
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(images):
        by_size.setdefault(tuple(image.shape[-2:]), []).append(i)
    for indices in by_size.values():   # one interpolate call per input size
        batch = torch.stack([images[i] for i in indices]).float()
        if batch.shape[-2:] != (load_size, load_size):
            batch = F.interpolate(batch, size=(load_size, load_size), mode="bicubic", align_corners=False,
                                  antialias=True)
            batch = batch.clamp_(0, 255).round_()   # PIL works in uint8: clamp and round as it does
        for i, image in zip(indices, batch):
            resized[i] = image
    out = []
    for image in resized:
        left = rng.randint(0, load_size - crop_size)
        top = rng.randint(0, load_size - crop_size)
        crop = image[:, top:top + crop_size, left:left + crop_size]
        if rng.random() > 0.5 and not no_flip:
            crop = crop.flip(-1)
        out.append(crop)
    return torch.stack(out).div_(127.5).sub_(1.0)


class DeviceBatcher:
    """Decodes and augments the encoded batches of the unpaired stream (``data.decode_on_device``) on the training
    device: ``batcher(batch, load_size) -> (real_a, real_b, skipped)``.

    An image that does not decode is warned about (shard and key), counted in ``skipped`` and stood in for by a
    decoded image of the same domain (of this batch, else of the previous one), so that every rank keeps its batch
    size: DDP needs every rank to step, and compiled graphs keep their shapes."""

    def __init__(self, device: torch.device | str, *, crop_size: int, no_flip: bool = False):
        self.device, self.crop_size, self.no_flip = torch.device(device), crop_size, no_flip
        self.last: dict[str, list[torch.Tensor]] = {}

    def __call__(self, batch: dict, load_size: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        out, skipped = [], 0
        for domain in ("a", "b"):
            encoded = batch[f"{domain}_encoded"]
            counts = DecodeCounts()
            images = decode_batch(encoded, self.device, counts)
            for label in counts.skipped_names:
                warnings.warn(f"{label}: cannot decode the image on {self.device}; skipped", CorruptSampleWarning,
                              stacklevel=2)
            skipped += counts.skipped
            if not images:
                if domain not in self.last:
                    raise DataError(f"{encoded[0][0]}: no image of this rank's first {domain.upper()} batch decodes "
                                    f"on {self.device}, and there is no earlier one to stand in")
                images = self.last[domain]
            images = [images[i % len(images)] for i in range(len(encoded))]
            self.last[domain] = images
            out.append(augment_batch(images, random.Random(batch["augment_seeds"][domain]), load_size=load_size,
                                     crop_size=self.crop_size, no_flip=self.no_flip))
        return out[0], out[1], skipped
