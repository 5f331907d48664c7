"""Where a training loop runs: the thin layer between the loop and Ray Train (or no Ray at all).

The loop asks its context for rank, world size and device, hands it finished checkpoint directories and
metrics, and asks it for the checkpoint to resume from. ``RayContext`` forwards these to ``ray.train``;
``LocalContext`` runs the same loop in one plain process (world size 1), persisting checkpoints itself into
``<storage_path>/<name>/checkpoint_<step>`` with Ray's retention rule (``cutdist.train.checkpoint.retain``).
"""
from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from cutdist.train import checkpoint
from cutdist.train.logger import say


class WorkerContext:
    """What the loop needs from its runtime. Every method is called by every rank at the same points."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    resume_source: str | None = None   # where resume_checkpoint's directory came from, for the log (a URI)

    def resume_checkpoint(self) -> Path | None:
        """The checkpoint the runtime restored after a failure (None on a fresh start)."""
        raise NotImplementedError

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None, step: int, *,
               checkpointed: bool = False, final: bool = False) -> bool:
        """Publish metrics (all ranks call it; rank 0's metrics count) and, on rank 0, a checkpoint dir;
        ``checkpointed``: this report carries a checkpoint (the same on every rank); ``final``: the run's last.
        True: the runtime took the directory over (deletes it once uploaded); False: the caller deletes it."""
        raise NotImplementedError

    def any_rank(self, flag: bool) -> bool:
        """True on every rank when it is on any (all-reduce MAX of one integer; one rank: its own, no collective).
        A decision all ranks must take at the same step from per-rank inputs (a clock) goes through here."""
        if self.world_size == 1:
            return flag
        t = torch.tensor([int(flag)], dtype=torch.int32, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def barrier(self) -> None:
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.barrier()


class RayContext(WorkerContext):
    """A Ray Train worker: ranks and device from ``ray.train``, checkpoints through ``ray.train.report``."""

    def __init__(self, upload: str = "async") -> None:
        """``upload``: ``checkpoint.upload``, how each checkpoint reaches storage (``upload_mode_kwargs``)."""
        import ray.train
        import ray.train.torch

        self.upload = upload
        _quiet_ray_report_log()
        ctx = ray.train.get_context()
        self.rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()
        self.local_rank = ctx.get_local_rank()
        self.device = ray.train.torch.get_device()
        self._restored = ray.train.get_checkpoint()

    def resume_checkpoint(self) -> Path | None:
        """The newest complete checkpoint of this run: Ray's restored one, or a newer one in the run directory.

        Ray hands a restarted worker group only the checkpoints its controller registered, and a report is
        registered only once the controller has polled it from every worker (one result per worker every
        health check, ~2 s). When a node is lost, the reports still queued on its workers are lost with it, so
        a checkpoint already persisted in the run directory may be unknown to Ray (seen: the restarted group
        started afresh with ``checkpoint_000000010`` in storage). Rank 0 therefore also looks at the run
        directory itself and takes the newest checkpoint that loads; every rank resumes from what rank 0 chose.
        """
        import ray.train

        from cutdist.train.checkpoint import newest_complete_checkpoint

        chosen = None
        if self.rank == 0:
            storage = ray.train.get_context().get_storage()
            known = self._restored.path if self._restored is not None else None
            chosen = newest_complete_checkpoint(storage.storage_filesystem, storage.experiment_fs_path, known=known)
            if chosen is not None and chosen[1] != known:
                say(f"[cutdist.train] Ray restored {Path(known).name if known else 'no checkpoint'}; the run "
                    f"directory holds the newer complete {Path(chosen[1]).name}: resuming from that")
        if self.world_size > 1:
            box = [chosen]
            dist.broadcast_object_list(box, src=0)
            chosen = box[0]
        if chosen is None:
            return None
        fs, path = chosen
        checkpoint = ray.train.Checkpoint(path, filesystem=fs)
        # Local storage: the path itself. Remote storage: downloaded to a local temporary directory, kept for
        # the life of the worker (the loop reads it once, right away).
        if type(fs).__name__ == "LocalFileSystem":
            return Path(path)
        self.resume_source = f"{fs.type_name}://{path}"   # s3://bucket/... (gcs:// for Google's)
        return Path(checkpoint.to_directory())

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None, step: int, *,
               checkpointed: bool = False, final: bool = False) -> bool:
        """Only reports with a checkpoint (every checkpoint, FID evaluation and the end) go to Ray: rank 0's
        logger already has every interval's metrics, and each ``ray.train.report`` waits for the previous
        one to be taken by the controller (one per ~2 s health check) and for the previous checkpoint's
        upload, so reporting every interval would hold training up for nothing."""
        if not checkpointed:
            return False
        import ray.train

        ckpt = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        # Only rank 0 holds a checkpoint (the state is consolidated); Ray uses rank 0's directory name.
        # ASYNC (checkpoint.upload=async): Ray uploads the directory in a background thread and deletes it
        # afterwards, so training goes on while a slow store receives it (an upload that fails is raised into
        # the training loop by Ray). At most one upload in flight: Ray's ASYNC reports return at once and queue
        # their uploads, so a loop faster than the store would run ahead of what is persisted (seen: a lost node
        # cost 5 intervals). The previous upload is done once Ray has deleted its directory; it had a whole
        # interval to finish. SYNC (checkpoint.upload=sync, and always the last checkpoint): the report returns
        # once the checkpoint is in storage, and the caller deletes the local directory.
        self._wait_for_upload()
        upload = upload_mode_kwargs(ckpt is not None and not final, self.upload)
        ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=checkpoint.checkpoint_dir_name(step),
                         **upload)
        handed_over = bool(upload.get("delete_local_checkpoint_after_upload"))
        self._uploading = checkpoint_dir if handed_over else None
        return handed_over

    def _wait_for_upload(self, warn_every_s: float = 60.0, give_up_s: float = 1800.0) -> None:
        import time

        pending, t0, warned = getattr(self, "_uploading", None), time.monotonic(), 0
        while pending is not None and Path(pending).exists():
            waited = time.monotonic() - t0
            if waited > give_up_s:
                say(f"[cutdist.train] warning: the previous checkpoint's upload has not finished after "
                    f"{waited:.0f} s; going on")
                break
            if waited > warned + warn_every_s:
                warned = waited
                say(f"[cutdist.train] waiting {waited:.0f} s for the previous checkpoint's upload")
            time.sleep(0.05)


def upload_mode_kwargs(with_checkpoint: bool, mode: str = "async") -> dict[str, Any]:
    """``ray.train.report`` arguments for a report's checkpoint upload: ``mode`` "async" (``checkpoint.upload``)
    uploads in the background where this Ray offers it and Ray deletes the local copy afterwards; "sync", a
    report without a checkpoint, or a Ray without ``CheckpointUploadMode`` (which uploads synchronously) waits
    for the upload and leaves the local copy to the caller."""
    try:
        from ray.train import CheckpointUploadMode
    except ImportError:   # a Ray without it uploads synchronously
        return {}
    if not with_checkpoint:
        return {}
    if mode == "sync":
        return {"checkpoint_upload_mode": CheckpointUploadMode.SYNC}
    return {"checkpoint_upload_mode": CheckpointUploadMode.ASYNC, "delete_local_checkpoint_after_upload": True}


def _quiet_ray_report_log() -> None:
    """Ray Train logs every report's full metrics at INFO (a logger named after its file); our console line
    says the same more readably, so only its warnings stay."""
    try:
        from ray.train.v2._internal.execution import context as ray_context
    except ImportError:   # another Ray layout: keep its logging as it is
        return
    logging.getLogger(ray_context.__file__).setLevel(logging.WARNING)


@dataclass
class LocalContext(WorkerContext):
    """One plain process, world size 1: the loop without Ray (tests, debugging, one GPU)."""

    run_dir: Path
    num_to_keep: int = 2
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    restored: Path | None = None
    reports: list[dict[str, Any]] = field(default_factory=list)
    checkpoints: list[tuple[Path, float]] = field(default_factory=list)   # (dir, fid or +inf), oldest first

    def __post_init__(self) -> None:
        self.rank, self.world_size, self.local_rank = 0, 1, 0
        self.run_dir = Path(self.run_dir)

    def resume_checkpoint(self) -> Path | None:
        return self.restored

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None, step: int, *,
               checkpointed: bool = False, final: bool = False) -> bool:
        self.reports.append(dict(metrics))
        if checkpoint_dir is None:
            return False
        dest = checkpoint.persist(checkpoint_dir, self.run_dir, step)
        kept = [(p, s) for p, s in self.checkpoints if p != dest] + [(dest, checkpoint.score(metrics))]
        self.checkpoints = checkpoint.retain(kept, self.num_to_keep)
        return False


def init_single_process_group(backend: str = "gloo") -> None:
    """A world-size-1 process group for strategies that insist on one (DeepSpeed) outside Ray."""
    if dist.is_initialized():
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_WORLD_SIZE", "1")):
        os.environ.setdefault(key, value)   # what a launcher would set; DeepSpeed insists on LOCAL_RANK
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
