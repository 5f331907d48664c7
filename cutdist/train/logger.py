"""Rank 0's record of a run: console lines, TensorBoard scalars and images, ``metrics.jsonl``, sample grids.

Losses reach here as Python floats, already averaged over the logging interval and over all ranks by the loop
(the only place a training step's tensors are read back to the host).

With ``mirror`` (the run directory on object storage), files are written locally first and copied there by a
background thread (``LogMirror``), so a slow store never holds up a training step; ``close`` waits for the
copies, and ``sync`` before each checkpoint. Rank 0 continues the mirror's ``metrics.jsonl`` (it may now be on
another node); a resumed run (``resume_step``) tells TensorBoard to drop the events after the
checkpoint (``purge_step``), which the redone steps log again.
"""
from __future__ import annotations

import datetime
import json
import math
import queue
import sys
import threading
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
    def __init__(self, logs_dir: Path, *, tensorboard: bool = True, total_steps: int = 0,
                 mirror: str | None = None, resume_step: int = 0) -> None:
        self.logs_dir = Path(logs_dir)
        self.samples_dir = self.logs_dir / "samples"
        self.samples_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.logs_dir / "metrics.jsonl"
        self.total_steps = total_steps
        self.mirror = LogMirror(self.logs_dir, mirror) if mirror else None
        self._continue_metrics()
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(log_dir=str(self.logs_dir / "tensorboard"),
                                        purge_step=resume_step + 1 if resume_step else None)

    def _continue_metrics(self) -> None:
        """With a mirror, the run's metrics.jsonl is the mirror's (rank 0 may now be on another node, and this
        node's copy may be of an older run): downloaded over the local file, or started empty."""
        if self.mirror is None:
            return
        if self.mirror.size(self.metrics_path) > 0:
            self.mirror.fetch(self.metrics_path)
        else:
            self.metrics_path.write_text("")

    def sync(self) -> None:
        """Wait until the mirror holds everything logged so far (before a checkpoint is handed over, so a
        complete checkpoint in the bucket always has its metrics lines there too)."""
        if self.mirror is not None:
            self._push_all()
            self.mirror.flush()

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        say(format_line(step, self.total_steps, metrics))
        with self.metrics_path.open("a") as fh:
            fh.write(json.dumps({k: v for k, v in metrics.items() if _jsonable(v)}) + "\n")
        if self.writer is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    self.writer.add_scalar(_tb_tag(key), value, step)
            self.writer.flush()
        self._push_all()

    def _push_all(self) -> None:
        if self.mirror is None:
            return
        self.mirror.push(self.metrics_path)
        for events in (self.logs_dir / "tensorboard").glob("events.*"):
            self.mirror.push(events)

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
        if self.mirror is not None:
            self.mirror.push(path)
            self.mirror.push(self.samples_dir / "latest.png")
            self._push_all()
        return path

    def add_file(self, path: Path) -> str:
        """A file written under the logs directory by someone else (SinCUT's translated image) copied to the
        mirror like the samples; returns where it ends up (its URI with a mirror, else the local path)."""
        if self.mirror is None:
            return str(path)
        self.mirror.push(path)
        return self.mirror.remote(path)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.mirror is not None:
            self._push_all()
            self.mirror.close()


class LogMirror:
    """Copies files of a local log directory to the same relative names under a storage URI, in a background
    thread, newest content wins (a file queued twice is copied once). Failures are warned about on the console,
    never silently dropped; ``close`` waits for what is queued."""

    def __init__(self, local_root: Path, remote_root: str) -> None:
        self.local_root, self.remote_root = Path(local_root), remote_root.rstrip("/")
        self.pending: dict[Path, None] = {}
        self.lock = threading.Lock()
        self.wake: queue.Queue = queue.Queue()
        self.failures = 0
        self.idle = threading.Event()
        self.idle.set()
        self.thread = threading.Thread(target=self._run, name="cutdist-log-mirror", daemon=True)
        self.thread.start()

    def remote(self, local: Path) -> str:
        return f"{self.remote_root}/{Path(local).relative_to(self.local_root).as_posix()}"

    def size(self, local: Path) -> int:
        """Bytes of the mirror's copy of ``local`` (0 when it has none)."""
        import pyarrow.fs

        from cutdist import storage

        fs, path = storage.filesystem(self.remote(local))
        info = fs.get_file_info(path)
        return info.size if info.type == pyarrow.fs.FileType.File else 0

    def fetch(self, local: Path) -> None:
        """The mirror's copy of ``local`` downloaded over it."""
        from cutdist import storage

        storage.download(self.remote(local), local)

    def push(self, local: Path) -> None:
        with self.lock:
            self.pending[Path(local)] = None
            self.idle.clear()
        self.wake.put(True)

    def flush(self) -> None:
        self.idle.wait()

    def _run(self) -> None:
        from cutdist import storage
        from cutdist.redact import redact_uri

        while True:
            stop = self.wake.get() is None
            with self.lock:
                batch, self.pending = list(self.pending), {}
            for local in batch:
                try:
                    storage.upload(local, self.remote(local))
                except Exception as err:   # the run goes on; the line says what was not copied
                    self.failures += 1
                    say(f"[cutdist.train] warning: could not copy {local} to {redact_uri(self.remote(local))}: "
                        f"{storage.reason(err)}")
            with self.lock:
                if not self.pending:
                    self.idle.set()
            if stop:
                return

    def close(self) -> None:
        self.wake.put(None)
        self.thread.join()


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
