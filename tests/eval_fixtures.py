"""Shared helpers for the FID tests: test-made Inception weights, tiny image folders, image tensors."""
from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cutdist.data.synth import synth_image
from cutdist.eval.inception import WEIGHTS_FILENAME, random_inception_state_dict

WEIGHTS_SEED = 0   # the "random" backbone's default seed: one calibration per test process serves both


@functools.lru_cache(maxsize=1)
def weights_file() -> Path:
    """A seeded random state dict in pt_inception-2015-12-05's key layout, BN statistics calibrated, saved
    with torch.save under the hub file name, inside ``<dir>/hub/checkpoints/`` (so ``<dir>`` is a TORCH_HOME).
    One per test process."""
    home = Path(tempfile.mkdtemp(prefix="cutdist-test-torch-home-"))
    path = home / "hub" / "checkpoints" / WEIGHTS_FILENAME
    path.parent.mkdir(parents=True)
    torch.save(random_inception_state_dict(WEIGHTS_SEED), path)
    return path


def torch_home() -> Path:
    return weights_file().parents[2]


def synth_uint8(domain: str, count: int, size: int, seed: int = 11, offset: int = 0) -> np.ndarray:
    return np.stack([synth_image(seed, "fidtest", domain, offset + i, size) for i in range(count)])


def as_tensor01(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)


def write_folder(folder: Path, images: np.ndarray, fmt: str = "png") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:04d}.{fmt}")
    return folder
