"""The training half of a cutdist checkpoint, and finding the checkpoint to resume from.

A cutdist checkpoint is a directory. ``model.pt`` (G, D, F and the config) is written by
``cutdist.model.io.save_model``; beside it this module writes ``train_state.pt``:

    {"format": "cutdist-train-v1", "step", "epoch", "images_in_epoch", "world_size", "strategy",
     "optimizers": {"d": Adam state_dict, "gf": Adam state_dict},   # full (consolidated) torch-Adam format
     "lr_schedule": {"policy": "linear", "epoch", "epochs", "epochs_decay", "lr"},
     "best_fid": float | None, "rng": {"torch", "numpy", "python"}}

and ``metrics.json`` (the metrics reported with the checkpoint, for people). Everything in the ``.pt`` files is
plain tensors and Python scalars, written atomically and read with ``torch.load(weights_only=True)``.

Optimizer states are stored consolidated (as one process's torch Adam would hold them) whatever the strategy
and world size, so a checkpoint written by N DDP or DeepSpeed workers resumes on M workers of either.
"""
from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cutdist.config import ConfigError, JobConfig
from cutdist.train.context import CHECKPOINT_PREFIX

TRAIN_STATE_FILE = "train_state.pt"
MODEL_FILE = "model.pt"
METRICS_FILE = "metrics.json"
TRAIN_STATE_FORMAT = "cutdist-train-v1"

# Keys whose change makes a checkpoint's weights unloadable (or F's taps meaningless) in a new job.
ARCHITECTURE_KEYS = ("model.ngf", "model.ndf", "model.n_blocks", "model.n_layers_d", "model.antialias",
                     "model.netf_nc", "loss.nce_layers")


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from; ``str(err)`` is one line naming the path."""


@dataclass
class Position:
    """Where training stands. ``images_in_epoch`` counts the epoch's samples (positions of its permutation)
    consumed globally, so the position means the same thing whatever the world size that resumes it."""
    step: int = 0
    epoch: int = 0
    images_in_epoch: int = 0


def capture_rng() -> dict[str, Any]:
    py_state = random.getstate()
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_state[0], "state": list(py_state[1]),
                   "gauss_next": py_state[2]},
    }


def restore_rng(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    n = rng["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = rng["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))


def atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_train_state(ckpt_dir: Path, *, position: Position, world_size: int, strategy: str,
                     optimizers: dict[str, dict], lr_schedule: dict[str, Any], best_fid: float | None) -> Path:
    path = Path(ckpt_dir) / TRAIN_STATE_FILE
    atomic_torch_save({
        "format": TRAIN_STATE_FORMAT,
        "step": position.step, "epoch": position.epoch, "images_in_epoch": position.images_in_epoch,
        "world_size": world_size, "strategy": strategy,
        "optimizers": optimizers, "lr_schedule": lr_schedule, "best_fid": best_fid,
        "rng": capture_rng(),
    }, path)
    return path


def load_train_state(ckpt_dir: Path, map_location: str | torch.device = "cpu", *, mmap: bool = False) -> dict[str, Any]:
    """``train_state.pt`` (weights only); ``mmap=True`` maps its tensors instead of reading them (the driver's
    check before Ray starts)."""
    path = Path(ckpt_dir) / TRAIN_STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{ckpt_dir}: no {TRAIN_STATE_FILE} (not a cutdist training checkpoint)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:  # a truncated or foreign file: say which
        raise CheckpointError(f"{path}: unreadable ({err.__class__.__name__}: {str(err).splitlines()[0]})") from None
    if not isinstance(state, dict) or state.get("format") != TRAIN_STATE_FORMAT:
        raise CheckpointError(f"{path}: format is not {TRAIN_STATE_FORMAT}")
    return state


def is_checkpoint_dir(path: Path) -> bool:
    return (path / MODEL_FILE).is_file() and (path / TRAIN_STATE_FILE).is_file()


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory as given, or a run directory -> its latest checkpoint: the one Ray's snapshot
    names, else the highest-step ``checkpoint_<step>`` holding both files."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"checkpoint.resume_from: no such file or directory {path}")
    if is_checkpoint_dir(path):
        return path
    # A Ray Train run directory: its snapshot names the latest checkpoint that was completely persisted.
    snapshot = path / "checkpoint_manager_snapshot.json"
    if snapshot.is_file():
        try:
            latest = json.loads(snapshot.read_text())["latest_checkpoint_result"]["checkpoint_dir_name"]
        except (ValueError, KeyError, TypeError):
            latest = None
        if latest and is_checkpoint_dir(path / latest):
            return path / latest
    candidates = []
    for child in path.iterdir() if path.is_dir() else []:
        match = re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)", child.name)
        if match and is_checkpoint_dir(child):
            candidates.append((int(match.group(1)), child))
    if not candidates:
        raise CheckpointError(f"checkpoint.resume_from: {path} is neither a checkpoint directory "
                              f"(with {MODEL_FILE} and {TRAIN_STATE_FILE}) nor a run directory holding "
                              f"{CHECKPOINT_PREFIX}<step> checkpoints")
    return max(candidates)[1]


def check_compatible(saved: dict[str, Any], cfg: JobConfig, where: Path) -> None:
    """Refuse to resume a checkpoint whose architecture differs from the job's, naming the first key."""
    for key in ARCHITECTURE_KEYS:
        section, name = key.split(".")
        if section not in saved or name not in saved[section]:
            continue
        have, want = saved[section][name], getattr(getattr(cfg, section), name)
        if have != want:
            raise ConfigError(f"{key}: the job says {want!r} but the checkpoint {where} was trained with {have!r}")
