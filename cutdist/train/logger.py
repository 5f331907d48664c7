"""Rank 0's record of a run: console lines, TensorBoard scalars and images, ``metrics.jsonl``, sample grids.

Losses reach here as Python floats, already averaged over the logging interval and over all ranks by the loop
(the only place a training step's tensors are read back to the host).
"""
from __future__ import annotations

import datetime
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch
from torchvision.utils import make_grid, save_image


def say(line: str) -> None:
    """One console line from a worker. Not ``print``: Ray Train patches print into its logger, which then
    shows each line twice on the driver."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class RunLogger:
    def __init__(self, logs_dir: Path, *, tensorboard: bool = True, total_steps: int = 0) -> None:
        self.logs_dir = Path(logs_dir)
        self.samples_dir = self.logs_dir / "samples"
        self.samples_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.logs_dir / "metrics.jsonl"
        self.total_steps = total_steps
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(log_dir=str(self.logs_dir / "tensorboard"))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        say(format_line(step, self.total_steps, metrics))
        with self.metrics_path.open("a") as fh:
            fh.write(json.dumps({k: v for k, v in metrics.items() if _jsonable(v)}) + "\n")
        if self.writer is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    self.writer.add_scalar(_tb_tag(key), value, step)
            self.writer.flush()

    def samples(self, step: int, columns: list[torch.Tensor], names: list[str]) -> Path:
        """One row per image, one column per tensor in ``columns`` (each [N,3,H,W] in [-1,1])."""
        rows = torch.stack([c.detach().float().cpu() for c in columns], dim=1).flatten(0, 1)
        grid = make_grid((rows.clamp(-1, 1) + 1) / 2, nrow=len(columns), padding=2, pad_value=1.0)
        path = self.samples_dir / f"step_{step:09d}.png"
        save_image(grid, path)
        (self.samples_dir / "latest.png").write_bytes(path.read_bytes())
        if self.writer is not None:
            self.writer.add_image("samples/" + " | ".join(names), grid, step)
            self.writer.flush()
        return path

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _jsonable(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool)) or value is None


def _tb_tag(key: str) -> str:
    head = key.split("_", 1)[0]
    return f"{head}/{key}" if head in ("loss", "fid", "kid") else f"train/{key}"


def format_line(step: int, total_steps: int, m: dict[str, Any]) -> str:
    losses = " ".join(f"{k[5:]} {v:.4f}" for k, v in m.items() if k.startswith("loss_"))
    parts = [f"step {step}" + (f"/{total_steps}" if total_steps else ""), f"epoch {m.get('epoch', 0):.2f}", losses]
    if "lr" in m:
        parts.append(f"lr {m['lr']:.3g}")
    if "images_per_s" in m:
        parts.append(f"{m['images_per_s']:.1f} img/s")
    if m.get("eta_s") is not None and math.isfinite(m["eta_s"]):
        parts.append(f"ETA {datetime.timedelta(seconds=round(m['eta_s']))}")
    if m.get("skipped_samples"):
        parts.append(f"skipped {m['skipped_samples']}")
    if "fid" in m:
        kid = f" KID {m['kid']:.5f} ± {m.get('kid_std', 0.0):.5f}" if "kid" in m else ""
        parts.append(f"FID {m['fid']:.4f}{kid} [{m.get('fid_backbone', '?')}]")
    return " | ".join(p for p in parts if p)
