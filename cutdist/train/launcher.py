"""The driver side: from a validated job to a ``ray.train.torch.TorchTrainer`` (reused by ``cutdist.tune``).

``build_trainer(cfg, splits, ...)`` is the one place a TorchTrainer is constructed:
ScalingConfig(num_workers, use_gpu, resources_per_worker), TorchConfig(backend gloo on CPU / nccl on GPU),
RunConfig(name, storage_path, CheckpointConfig, FailureConfig(max_failures)).

Checkpoint retention (``cutdist.train.checkpoint.ray_checkpoint_config``): Ray keeps ``checkpoint.num_to_keep``
checkpoints ranked by ``ckpt_fid`` (the FID measured with that checkpoint, +inf when none was), always plus the
latest. So with FID on, the best-FID checkpoint stays beside the latest; with FID off (all +inf, ties broken by
age) it keeps the newest ones. Before any of this the drivers run ``cutdist.train.preflight.preflight``.

Run directory: ``<storage_path>/<name>/`` holds Ray's ``checkpoint_<step>/`` directories and, for a local
storage path, the logs (``metrics.jsonl``, ``tensorboard/``, ``samples/``). For object storage the logs stay on
rank 0's node under ``<tmp>/cutdist_logs/<name>/``. Re-running a job with the same name and storage path
continues that run (Ray restores its checkpoint list); ``checkpoint.resume_from`` starts a new run from a
given checkpoint or run directory (resolved by ``cutdist.train.checkpoint.resolve_resume``).
"""
from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path
from typing import Any

from cutdist.config import JobConfig
from cutdist.train.checkpoint import ray_checkpoint_config
from cutdist.train.preflight import absolute_splits, absolutize_paths, is_remote


def expand_name(cfg: JobConfig, now: float | None = None) -> JobConfig:
    """``{time}`` in ``name`` becomes the start time (YYYYmmdd-HHMMSS): a fresh run directory per launch, as
    the demo wants. Without it, launching the same name again continues that run (Ray restores it)."""
    if "{time}" in cfg.name:
        cfg.name = cfg.name.replace("{time}", time.strftime("%Y%m%d-%H%M%S", time.localtime(now)))
    return cfg


def run_dir(cfg: JobConfig) -> str:
    """``<storage_path>/<name>`` (local paths expanded and made absolute)."""
    return f"{storage_path(cfg)}/{cfg.name}"


def storage_path(cfg: JobConfig) -> str:
    if is_remote(cfg.storage_path):
        return cfg.storage_path.rstrip("/")
    return str(Path(cfg.storage_path).expanduser().resolve())


def logs_dir(cfg: JobConfig) -> str:
    if is_remote(cfg.storage_path):
        return str(Path(tempfile.gettempdir()) / "cutdist_logs" / cfg.name)
    return run_dir(cfg)


def loop_config(cfg: JobConfig, splits: Any, *, resume_from: str = "", started_at: float | None = None) -> dict:
    """What every worker receives (all picklable)."""
    return {"config": absolutize_paths(copy.deepcopy(cfg)).to_dict(), "splits": absolute_splits(splits),
            "resume_from": resume_from, "logs_dir": logs_dir(cfg),
            "started_at": time.time() if started_at is None else started_at}


def worker_resources(cfg: JobConfig) -> dict[str, float]:
    """What one Ray Train worker of the job asks for, as Ray's ScalingConfig computes it from the same fields
    (default: 1 CPU; with use_gpu: 1 GPU and no CPU; zero amounts dropped)."""
    per_worker = {k: float(v) for k, v in cfg.train.resources_per_worker.items() if v != 0}
    if not cfg.train.resources_per_worker:
        per_worker = {} if cfg.train.use_gpu else {"CPU": 1.0}
    if cfg.train.use_gpu:
        per_worker.setdefault("GPU", 1.0)
    return per_worker


def build_trainer(cfg: JobConfig, splits: Any, *, resume_from: str = "", started_at: float | None = None,
                  name: str | None = None, storage: str | None = None, callbacks: list | None = None,
                  train_log_level: str = "WARNING"):
    """One TorchTrainer for the job. ``name``/``storage`` override the run's location (Tune gives each trial its
    own); ``callbacks`` are Ray Train ``UserCallback``s (e.g. Tune's ``TuneReportCallback``)."""
    from ray.train import FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from cutdist.train.loop import train_loop_per_worker

    if name or storage:   # one run (e.g. a Tune trial) elsewhere: checkpoints, logs and saved config agree
        cfg = copy.deepcopy(cfg)
        cfg.name = name or cfg.name
        cfg.storage_path = storage or cfg.storage_path
    t = cfg.train
    resources = dict(t.resources_per_worker) or None
    scaling = ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker=resources)
    run = RunConfig(
        name=cfg.name,
        storage_path=storage_path(cfg),
        checkpoint_config=ray_checkpoint_config(cfg),
        failure_config=FailureConfig(max_failures=cfg.checkpoint.max_failures),
        callbacks=list(callbacks or []),
        logging_config=LoggingConfig(log_level=train_log_level),   # INFO repeats every report's metrics
    )
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config(cfg, splits, resume_from=resume_from, started_at=started_at),
        torch_config=TorchConfig(backend="nccl" if t.use_gpu else "gloo"),
        scaling_config=scaling,
        run_config=run,
    )
