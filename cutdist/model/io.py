"""The MODEL part of a cutdist checkpoint.

A cutdist checkpoint is a directory; its ``model.pt`` holds::

    {"format": "cutdist-model-v1", "g": state_dict, "d": state_dict | None, "f": state_dict | None,
     "config": JobConfig.to_dict(), "step": int, "epoch": int, "source": str}

(the stored config has URL credentials redacted, ``cutdist.redact``).

Plain CPU tensors only (read back with ``torch.load(weights_only=True)``), written atomically (temp file in the
same directory + ``os.replace``). Keys are saved without a leading ``module.`` / ``_orig_mod.`` so wrapped
(DDP, DeepSpeed, torch.compile) and plain models save the same file. ``translate``, ``convert`` and ``fid``
read and write this file alone; a training checkpoint directory as a whole (training state beside it,
resolving, validating, retention) belongs to ``cutdist.train.checkpoint``.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cutdist import config as config_mod
from cutdist.config import JobConfig
from cutdist.model.networks import CUTNets, build_generator
from cutdist.redact import redact_values

MODEL_FILE = "model.pt"
FORMAT = "cutdist-model-v1"
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class ModelIOError(ValueError):
    """A checkpoint that cannot be written or read; the message is one line naming the file."""


def strip_wrapper_prefix(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def plain_state_dict(obj: nn.Module | Mapping[str, Any] | None, name: str = "state dict") -> dict[str, torch.Tensor] | None:
    """A module's (or a state dict's) tensors on the CPU, with wrapper prefixes stripped from the keys."""
    if obj is None:
        return None
    state = obj.state_dict() if isinstance(obj, nn.Module) else obj
    if not isinstance(state, Mapping):
        raise ModelIOError(f"{name}: expected a module or a state dict, got {type(obj).__name__}")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ModelIOError(f"{name}: entry {key!r} is a {type(value).__name__}, not a tensor")
        plain = strip_wrapper_prefix(key)
        if plain in out:
            raise ModelIOError(f"{name}: keys {key!r} and another both map to {plain!r}")
        out[plain] = value.detach().cpu()
    return out


def model_file(ckpt: str | Path) -> Path:
    """``ckpt`` may be the checkpoint directory or its model.pt."""
    path = Path(ckpt).expanduser()
    return path if path.suffix == ".pt" and not path.is_dir() else path / MODEL_FILE


def save_model(ckpt_dir: str | Path, nets_or_state_dicts: CUTNets | Mapping[str, Any], cfg: JobConfig, step: int,
               epoch: int, source: str = "cutdist") -> Path:
    """Write ``ckpt_dir/model.pt`` atomically and return its path. ``nets_or_state_dicts``: CUTNets, or a mapping
    with "g" (required), "d", "f" holding modules, state dicts or None."""
    if isinstance(nets_or_state_dicts, CUTNets):
        parts: Mapping[str, Any] = {"g": nets_or_state_dicts.g, "d": nets_or_state_dicts.d, "f": nets_or_state_dicts.f}
    else:
        parts = nets_or_state_dicts
        unknown = sorted(set(parts) - {"g", "d", "f"})
        if unknown:
            raise ModelIOError(f"save_model: unknown parts {unknown} (expected g, d, f)")
    if parts.get("g") is None:
        raise ModelIOError("save_model: the generator ('g') is required")
    payload = {
        "format": FORMAT,
        "g": plain_state_dict(parts["g"], "g"),
        "d": plain_state_dict(parts.get("d"), "d"),
        "f": plain_state_dict(parts.get("f"), "f"),
        "config": redact_values(cfg.to_dict()),   # never a URL's credentials on disk
        "step": int(step),
        "epoch": int(epoch),
        "source": str(source),
    }
    ckpt_dir = Path(ckpt_dir).expanduser()
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    return write_atomic(ckpt_dir / MODEL_FILE, lambda tmp: torch.save(payload, tmp))


def write_atomic(path: Path, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` into a temporary file beside ``path``, then rename it onto ``path``: readers see the old
    file or the whole new one, never a part (the one atomic write of every checkpoint file)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_model(ckpt_dir: str | Path, map_location: str | torch.device = "cpu", *,
               mmap: bool = False) -> tuple[dict[str, Any], JobConfig]:
    """Read ``model.pt`` (weights only) -> (payload dict, its JobConfig); ``mmap=True`` maps the tensors instead
    of reading them (a driver that only checks the file)."""
    path = model_file(ckpt_dir)
    if not path.is_file():
        raise ModelIOError(f"{path}: no such file (a cutdist checkpoint is a directory holding {MODEL_FILE})")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:  # noqa: BLE001 - any unreadable file becomes one clear line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelIOError(f"{path}: cannot read ({first})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ModelIOError(f"{path}: not a {FORMAT} file (format: {found!r})")
    missing = [k for k in ("g", "config", "step", "epoch") if k not in payload]
    if missing or not isinstance(payload["g"], Mapping):
        raise ModelIOError(f"{path}: incomplete checkpoint (missing {missing or ['g state dict']})")
    if not isinstance(payload["config"], Mapping):
        raise ModelIOError(f"{path}: stored config is a {type(payload['config']).__name__}, not a mapping")
    try:
        cfg = config_mod.from_dict(payload["config"], validate_config=False, stored=True)
    except config_mod.ConfigError as err:
        raise ModelIOError(f"{path}: stored config: {err}") from None
    except Exception as err:  # noqa: BLE001 - a hostile config must not surface as a traceback
        raise ModelIOError(f"{path}: stored config unusable ({type(err).__name__}: {err})") from None
    return payload, cfg


def check_generator_config(cfg: JobConfig, state: Mapping[str, Any], what: str) -> None:
    """ModelIOError unless the stored config's generator (ngf, n_blocks, antialias) is the one its weights
    describe: checked on the state dict, before anything is built, so a hostile config (n_blocks=10^8) costs
    nothing. (A generator family other than the ResNet one needs its own such check here.)"""
    from cutdist.model.official import OfficialCheckpointError, infer_generator

    try:
        arch = infer_generator(state, what)
    except (OfficialCheckpointError, AttributeError, IndexError, TypeError) as err:
        raise ModelIOError(f"{what}: not a generator state dict ({err})") from None
    for key in ("ngf", "n_blocks", "antialias"):
        stored = getattr(cfg.model, key)
        if type(stored) is not type(arch[key]) or stored != arch[key]:
            raise ModelIOError(f"{what}: the stored config says model.{key}={stored!r} but the stored weights "
                               f"have {arch[key]!r}")


def check_sincut_generator_config(cfg: JobConfig, state: Mapping[str, Any], what: str) -> None:
    """The SinCUT (StyleGAN2-style) generator's counterpart of ``check_generator_config``: n_blocks from the
    encoder's residual blocks in the weights, ngf and crop size within the range convert accepts."""
    import re

    blocks = {m.group(1) for k in state if (m := re.fullmatch(r"encoder\.convs\.(\d+)\.conv1\.0\.weight", str(k)))}
    n_blocks = 2 * (len(blocks) - 1)
    if cfg.model.n_blocks != n_blocks:
        raise ModelIOError(f"{what}: the stored config says model.n_blocks={cfg.model.n_blocks!r} but the stored "
                           f"weights have {n_blocks}")
    if not (isinstance(cfg.model.ngf, int) and 1 <= cfg.model.ngf <= 1024):
        raise ModelIOError(f"{what}: the stored config says model.ngf={cfg.model.ngf!r}, outside 1..1024")
    if not (isinstance(cfg.data.crop_size, int) and 8 <= cfg.data.crop_size <= 4096):
        raise ModelIOError(f"{what}: the stored config says data.crop_size={cfg.data.crop_size!r}, outside 8..4096")


def check_state_dict(module: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise ModelIOError listing missing / unexpected keys and shape mismatches (strict loading, one line)."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
                    for k in set(expected) & set(state) if state[k].shape != expected[k].shape)
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    if shapes:
        problems.append(f"shape mismatches (stored vs expected) {shapes}")
    if problems:
        raise ModelIOError(f"{what}: " + "; ".join(problems))


def load_generator(ckpt_dir: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, JobConfig]:
    """The checkpoint's generator (ResNet for cut/fastcut, StyleGAN2-style for sincut), built from its stored config,
    on ``device``, in eval mode, frozen."""
    payload, cfg = load_model(ckpt_dir)
    what = f"{model_file(ckpt_dir)}: generator"
    if cfg.model.mode == "sincut":
        from cutdist.model.sincut import build_sincut_generator

        check_sincut_generator_config(cfg, payload["g"], what)
        g = build_sincut_generator(cfg)
    else:
        check_generator_config(cfg, payload["g"], what)
        g = build_generator(cfg)
    check_state_dict(g, payload["g"], f"{model_file(ckpt_dir)}: generator")
    g.load_state_dict(payload["g"])
    g.to(device).eval().requires_grad_(False)
    return g, cfg
