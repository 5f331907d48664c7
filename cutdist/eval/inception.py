"""pytorch-fid's FID InceptionV3 (pool3, 2048-d), built without its download, and its activations.

The network is pytorch-fid's own ``InceptionV3`` class (bilinear resize to 299x299, [0, 1] -> [-1, 1]) around
its ``FIDInception*`` blocks, so features are exactly pytorch-fid's. Its weights come from:

- a file path (the TensorFlow-ported ``pt_inception-2015-12-05-6726825d.pth`` or any state dict of that layout);
- ``"auto"``: the torch hub cache file, downloaded from pytorch-fid's ``FID_WEIGHTS_URL`` where the network allows;
- ``"random"``: a seeded random-init backbone whose batch-norm running statistics are calibrated on procedurally
  drawn images (cutdist.data.synth), so its features are not degenerate. Its label says it is not a real FID.

Every loaded model comes with a backbone label that travels with each FID number.
"""
from __future__ import annotations

import functools
import hashlib
import os
import re
import socket
import threading
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import torch.nn as nn
import pytorch_fid.inception as pfi

FID_WEIGHTS_URL: str = pfi.FID_WEIGHTS_URL
WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
FEATURE_DIM = 2048
RANDOM_LABEL_PREFIX = "RANDOM-INIT-INCEPTION"
_CALIBRATION_IMAGES = 4      # synthetic images (2 per demo domain) whose batch statistics become the BN stats
_CALIBRATION_SIZE = 64


class InceptionWeightsError(RuntimeError):
    """The FID Inception weights cannot be had; ``str(err)`` is one line saying where to put the file."""


def default_weights_path() -> Path:
    """Where ``"auto"`` looks: ``<torch.hub.get_dir()>/checkpoints/pt_inception-2015-12-05-6726825d.pth``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILENAME


def random_label(seed: int) -> str:
    return f"{RANDOM_LABEL_PREFIX}(seed={seed}) — not a real FID"


def is_random_backbone(label: str) -> bool:
    """True for the label of a random-init backbone (whose FID numbers are not comparable to real FIDs)."""
    return str(label).startswith(RANDOM_LABEL_PREFIX)


# torch hub names a file by the first 8 hex of its sha256: the official weights' digest starts with this
OFFICIAL_SHA256_PREFIX = WEIGHTS_FILENAME.removesuffix(".pth").rsplit("-", 1)[1]


def is_official_backbone(label: str) -> bool:
    """True only for pytorch-fid's own weights file (by content, whatever its name): a real, comparable FID."""
    return str(label).endswith(f"(sha256 {OFFICIAL_SHA256_PREFIX})")


def backbone_caveat(label: str) -> str | None:
    """Why FIDs from this backbone are not comparable to published ones, or None for the official weights."""
    if is_random_backbone(label):
        return ("a seeded random-init Inception, for offline demos and tests; "
                "this number is NOT comparable to any published FID")
    if not is_official_backbone(label):
        return (f"not pytorch-fid's official weights (whose sha256 starts {OFFICIAL_SHA256_PREFIX}); "
                "this number is NOT comparable to published FIDs")
    return None


# ------------------------------------------------------------------------------------------ architecture

def _fid_backbone() -> nn.Module:
    """pytorch_fid.inception.fid_inception_v3() without its download: torchvision's Inception3 with FID blocks."""
    inception = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    inception.Mixed_5b = pfi.FIDInceptionA(192, pool_features=32)
    inception.Mixed_5c = pfi.FIDInceptionA(256, pool_features=64)
    inception.Mixed_5d = pfi.FIDInceptionA(288, pool_features=64)
    inception.Mixed_6b = pfi.FIDInceptionC(768, channels_7x7=128)
    inception.Mixed_6c = pfi.FIDInceptionC(768, channels_7x7=160)
    inception.Mixed_6d = pfi.FIDInceptionC(768, channels_7x7=160)
    inception.Mixed_6e = pfi.FIDInceptionC(768, channels_7x7=192)
    inception.Mixed_7b = pfi.FIDInceptionE_1(1280)
    inception.Mixed_7c = pfi.FIDInceptionE_2(2048)
    return inception


_build_lock = threading.Lock()


def _wrap(backbone: nn.Module) -> pfi.InceptionV3:
    """pytorch-fid's own InceptionV3 (its __init__ and forward) around ``backbone``.

    Its __init__ calls ``fid_inception_v3()``, which downloads; we hand it our already-loaded backbone instead,
    so the block layout, resize and normalisation stay pytorch-fid's code, not a copy of it.
    """
    block_idx = pfi.InceptionV3.BLOCK_INDEX_BY_DIM[FEATURE_DIM]
    with _build_lock, mock.patch.object(pfi, "fid_inception_v3", lambda: backbone):
        return pfi.InceptionV3([block_idx], resize_input=True, normalize_input=True, use_fid_inception=True)


def fid_inception_from_state_dict(state_dict: dict[str, torch.Tensor], device: str | torch.device = "cpu",
                                  *, source: str = "state dict") -> pfi.InceptionV3:
    """The FID InceptionV3 (eval mode, on ``device``) with ``state_dict`` (pt_inception-2015-12-05 key layout)."""
    with torch.device("meta"):   # no random init of 24M parameters that the state dict replaces anyway
        backbone = _fid_backbone()
    expected = set(backbone.state_dict())
    given = set(state_dict)
    missing = sorted(k for k in expected - given if not k.endswith("num_batches_tracked"))
    unexpected = sorted(given - expected)
    if missing or unexpected:
        raise InceptionWeightsError(
            f"{source}: not a pytorch-fid FID-Inception state dict ({len(missing)} keys missing, e.g. "
            f"{missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]})")
    # older torch.save layouts have no num_batches_tracked (unused in eval mode)
    full = {**{k: torch.zeros((), dtype=torch.long) for k in expected - given}, **state_dict}
    try:
        backbone.load_state_dict(full, strict=True, assign=True)
    except RuntimeError as err:   # a tensor of the wrong shape
        detail = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), str(err))
        raise InceptionWeightsError(f"{source}: not a pytorch-fid FID-Inception state dict ({detail})") from None
    return _wrap(backbone).to(device).eval()


# ----------------------------------------------------------------------------------------------- weights

@functools.lru_cache(maxsize=8)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_label(path: str | Path) -> str:
    """``"<name> (sha256 <first 8 hex>)"``; a torch-hub ``-<hash>`` suffix is dropped from the name."""
    path = Path(path)
    stat = path.stat()
    sha = _file_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    name = re.sub(r"-[0-9a-f]{8}$", "", path.name.removesuffix(".pth").removesuffix(".pt"))
    return f"{name} (sha256 {sha[:8]})"


def _missing_weights_message(where: Path, reason: str) -> str:
    return (f"FID Inception weights not found ({reason}): put {WEIGHTS_FILENAME} (from {FID_WEIGHTS_URL}) at "
            f"{where}, or set eval.inception_weights to its path; eval.inception_weights=random exists for "
            f"offline demos (labelled, not a real FID)")


DOWNLOAD_TIMEOUT_S = 60.0   # per connect / read: a firewalled node that drops packets fails instead of hanging


def _download(dst: Path, url: str = FID_WEIGHTS_URL) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    # torch.hub's urlopen takes no timeout: it uses the process-wide socket default, set only for this call
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        torch.hub.download_url_to_file(url, str(dst), progress=True)
    except Exception as err:   # no network, proxy, HTTP error, timeout: all mean the same to the user
        raise InceptionWeightsError(_missing_weights_message(dst, f"download failed: {type(err).__name__}")) \
            from None
    finally:
        socket.setdefaulttimeout(previous)


def _load_weights_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise InceptionWeightsError(f"{path}: cannot read FID Inception weights ({type(err).__name__}: "
                                    f"{str(err).splitlines()[0] if str(err) else ''})") from None
    if not isinstance(state, dict):
        raise InceptionWeightsError(f"{path}: not a state dict (got {type(state).__name__})")
    return state


@functools.lru_cache(maxsize=4)
def _random_state_dict(seed: int) -> dict[str, torch.Tensor]:
    """A seeded random-init backbone with BN running statistics calibrated on synthetic images."""
    from cutdist.data.synth import synth_image

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone = _fid_backbone()
    model = _wrap(backbone)
    images = np.stack([synth_image(seed, "fid-calibration", "AB"[i % 2], i, _CALIBRATION_SIZE)
                       for i in range(_CALIBRATION_IMAGES)])
    batch = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None          # cumulative average: running stats = the calibration batch's statistics
    model.train()
    with torch.no_grad():
        model(batch)
    state = {}
    for key, value in backbone.state_dict().items():
        if key.endswith(("running_mean", "running_var")):
            # Keep 12 mantissa bits: identical weights on every rank even if BLAS reductions differ in the last bits.
            mantissa, exponent = torch.frexp(value)
            value = torch.ldexp(torch.round(mantissa * 4096) / 4096, exponent)
        elif key.endswith("num_batches_tracked"):
            value = torch.zeros_like(value)
        state[key] = value.detach().clone()
    return state


def random_inception_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """The ``"random"`` backbone's weights in pt_inception-2015-12-05's key layout (a copy; tests save it)."""
    return {k: v.clone() for k, v in _random_state_dict(seed).items()}


def load_inception(weights: str, device: str | torch.device = "cpu", *, seed: int = 0,
                   download: bool = True) -> tuple[pfi.InceptionV3, str]:
    """The FID InceptionV3 in eval mode on ``device`` and its backbone label.

    ``weights``: a file path, ``"auto"`` (torch hub cache, downloaded if ``download`` and the network allows) or
    ``"random"`` (seeded, calibrated, labelled ``RANDOM-INIT-INCEPTION(seed=..) — not a real FID``).
    Raises InceptionWeightsError (one line naming the exact path to put the file at) when weights cannot be had.
    """
    if weights == "random":
        model = fid_inception_from_state_dict(random_inception_state_dict(seed), device, source="random")
        return model, random_label(seed)
    if weights == "auto":
        path = default_weights_path()
        if not path.is_file():
            if not download:
                raise InceptionWeightsError(_missing_weights_message(path, "not in the torch hub cache"))
            _download(path)
    else:
        path = Path(os.path.expanduser(weights))
        if not path.is_file():
            raise InceptionWeightsError(_missing_weights_message(path, f"no such file {path}"))
    label = weights_label(path)
    return fid_inception_from_state_dict(_load_weights_file(path), device, source=str(path)), label


def weights_problem(weights: str) -> str | None:
    """For drivers, before any cluster starts: None when FID weights are usable (the random backbone always
    is), else the one-line reason. Loads (and, for ``auto``, downloads) them once."""
    if weights == "random":
        return None
    try:
        load_inception(weights, "cpu")
    except InceptionWeightsError as err:
        return str(err)
    return None


# ------------------------------------------------------------------------------------------- activations

def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def activations(model: nn.Module, images: torch.Tensor, batch_size: int = 50) -> np.ndarray:
    """pool3 features, float64 ``[N, 2048]``, of float images in [0, 1] shaped ``[N, 3, H, W]`` (any H, W).

    The model resizes bilinearly to 299 and maps to [-1, 1] itself (pytorch-fid's convention); callers holding
    [-1, 1] tensors pass ``(x + 1) / 2``. Always fp32, whatever autocast the caller runs under.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"activations: expected images shaped [N, 3, H, W], got {tuple(images.shape)}")
    device = model_device(model)
    out = np.empty((images.shape[0], FEATURE_DIM), dtype=np.float64)
    with torch.autocast(device_type=device.type, enabled=False):
        for start in range(0, images.shape[0], batch_size):
            batch = images[start:start + batch_size].to(device, torch.float32)
            features = model(batch)[0]
            out[start:start + batch.shape[0]] = features.reshape(batch.shape[0], -1).double().cpu().numpy()
    return out
