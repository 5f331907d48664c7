"""Decoding and the paper's augmentations, with an explicit RNG so a stream is reproducible.

Follows the reference implementation's ``get_transform`` (data/base_dataset.py of
taesungp/contrastive-unpaired-translation), bicubic throughout:

- ``resize_and_crop``: resize to load x load, random crop crop x crop;
- ``scale_width_and_crop``: scale the width to load (height keeps the aspect ratio, at least crop), random crop;
- ``none``: keep the size;
then round each side to a multiple of 4, random horizontal flip unless ``no_flip``, map to [-1, 1].
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from cutdist.data.manifest import IMAGE_EXTENSIONS
from cutdist.data.members import open_image

BICUBIC = InterpolationMode.BICUBIC


def image_field(sample: dict) -> str | None:
    """The field of a webdataset sample holding the image (its extension), or None."""
    for name in sample:
        if name.lower() in IMAGE_EXTENSIONS:
            return name
    return None


def decode_rgb(data: bytes) -> Image.Image:
    """Fully decode encoded image bytes to RGB; raises on empty, truncated or unknown data."""
    if not data:
        raise ValueError("empty image")
    img = open_image(data)   # the shared pixel bound (members.MAX_IMAGE_PIXELS)
    img.load()
    return img.convert("RGB")


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float tensor [3, H, W] in [-1, 1] (the reference's ToTensor + Normalize(0.5, 0.5)).

    Computed in numpy: torch's intra-op threads on such small tensors cost milliseconds each when the cores
    are busy (measured 5x slower per image with loader_workers=0 on a loaded 2-core machine)."""
    array = np.ascontiguousarray(np.asarray(img).transpose(2, 0, 1), dtype=np.float32)
    array /= 127.5
    array -= 1.0
    return torch.from_numpy(array)


def stack(images: list[torch.Tensor]) -> torch.Tensor:
    """Stack same-sized [3, H, W] images into a batch (numpy, for the reason given in ``to_tensor``)."""
    return torch.from_numpy(np.stack([image.numpy() for image in images]))


def _make_multiple_of_4(img: Image.Image) -> Image.Image:
    width, height = img.size
    w, h = int(round(width / 4) * 4), int(round(height / 4) * 4)
    return img if (w, h) == (width, height) else TF.resize(img, [h, w], interpolation=BICUBIC)


@dataclass(frozen=True)
class TrainAugment:
    """The training transform; ``augment(img, rng)`` draws crop position and flip from ``rng``."""
    preprocess: str = "resize_and_crop"   # resize_and_crop | scale_width_and_crop | none
    load_size: int = 286
    crop_size: int = 256
    no_flip: bool = False

    def __post_init__(self):
        if self.preprocess not in ("resize_and_crop", "scale_width_and_crop", "none"):
            raise ValueError(f"data.preprocess: unknown {self.preprocess!r}")

    def __call__(self, img: Image.Image, rng: random.Random) -> torch.Tensor:
        if self.preprocess == "resize_and_crop":
            img = TF.resize(img, [self.load_size, self.load_size], interpolation=BICUBIC)
        elif self.preprocess == "scale_width_and_crop":
            width, height = img.size
            if not (width == self.load_size and height >= self.crop_size):
                new_height = int(max(self.load_size * height / width, self.crop_size))
                img = TF.resize(img, [new_height, self.load_size], interpolation=BICUBIC)
        if self.preprocess != "none":
            width, height = img.size
            left = rng.randint(0, max(0, width - self.crop_size))
            top = rng.randint(0, max(0, height - self.crop_size))
            img = TF.crop(img, top, left, min(self.crop_size, height), min(self.crop_size, width))
        img = _make_multiple_of_4(img)
        flip = rng.random() > 0.5
        if flip and not self.no_flip:
            img = TF.horizontal_flip(img)
        return to_tensor(img)


def resize_square(img: Image.Image, size: int) -> torch.Tensor:
    """Test-time transform: resize to size x size (bicubic, as the reference's test options), [-1, 1]."""
    return to_tensor(TF.resize(img, [size, size], interpolation=BICUBIC))
