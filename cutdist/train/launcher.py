"""The driver side: from a validated job to a ``ray.train.torch.TorchTrainer`` (reused by ``cutdist.tune``).

``build_trainer(cfg, splits, ...)`` is the one place a TorchTrainer is constructed:
ScalingConfig(num_workers, use_gpu, resources_per_worker), TorchConfig(backend gloo on CPU / nccl on GPU),
RunConfig(name, storage_path, CheckpointConfig, FailureConfig(max_failures)).

Checkpoint retention (``cutdist.train.checkpoint.ray_checkpoint_config``): Ray keeps ``checkpoint.num_to_keep``
checkpoints ranked by ``ckpt_fid`` (the FID measured with that checkpoint, +inf when none was), always plus the
latest. So with FID on, the best-FID checkpoint stays beside the latest; with FID off (all +inf, ties broken by
age) it keeps the newest ones. Before any of this the drivers run ``cutdist.train.preflight.preflight``.

Run directory: ``<storage_path>/<name>/`` holds Ray's ``checkpoint_<step>/`` directories and the logs
(``metrics.jsonl``, ``tensorboard/``, ``samples/``). For object storage (``s3://``, ``gs://``) rank 0 writes the
logs under ``<tmp>/cutdist_logs/<name>/`` and a background thread copies them into the run directory
(``cutdist.train.logger.LogMirror``). Re-running a job with the same name and storage path
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


def display_uri(cfg: JobConfig, path: str | None) -> str | None:
    """A checkpoint path as Ray returns it (bucket/prefix/... for object storage) as a full URI."""
    from urllib.parse import urlparse

    from cutdist.storage import is_object_store

    if not path or not is_object_store(cfg.storage_path) or "://" in path:
        return path
    return f"{urlparse(cfg.storage_path).scheme}://{path}"


def logs_dir(cfg: JobConfig) -> str:
    """Where rank 0 writes the logs: the run directory, or for remote storage a local directory of this run
    alone (the name plus a digest of the run's URI: two runs of one name elsewhere never share it)."""
    if is_remote(cfg.storage_path):
        import hashlib

        digest = hashlib.sha1(run_dir(cfg).encode()).hexdigest()[:12]
        return str(Path(tempfile.gettempdir()) / "cutdist_logs" / f"{cfg.name}-{digest}")
    return run_dir(cfg)


def logs_mirror(cfg: JobConfig) -> str | None:
    """Where rank 0's local logs are copied: the run directory when it is on object storage."""
    from cutdist.storage import is_object_store

    return run_dir(cfg) if is_object_store(cfg.storage_path) else None


def loop_config(cfg: JobConfig, splits: Any, *, resume_from: str = "", started_at: float | None = None) -> dict:
    """What every worker receives (all picklable)."""
    return {"config": absolutize_paths(copy.deepcopy(cfg)).to_dict(), "splits": absolute_splits(splits),
            "resume_from": resume_from, "logs_dir": logs_dir(cfg), "logs_mirror": logs_mirror(cfg),
            "started_at": time.time() if started_at is None else started_at}


def scaling_config(cfg: JobConfig):
    """Ray Train's ScalingConfig for ``train.*``: ``num_workers: [min, max]`` becomes Ray's elastic
    ``num_workers=(min, max)`` (the group is restarted smaller when a node goes, larger when room comes back,
    looked for every ``train.elastic_resize_s``); the loop's schedule follows the live world size."""
    from ray.train import ScalingConfig

    from cutdist.config import worker_range

    t = cfg.train
    low, high = worker_range(t)
    resources = dict(t.resources_per_worker) or None
    if low == high:
        return ScalingConfig(num_workers=low, use_gpu=t.use_gpu, resources_per_worker=resources)
    return ScalingConfig(num_workers=(low, high), use_gpu=t.use_gpu, resources_per_worker=resources,
                         elastic_resize_monitor_interval_s=t.elastic_resize_s)


def ephemeral_storage_problem(cfg: JobConfig, given: str, cwd: Path | None = None) -> str | None:
    """A relative ``storage_path`` (as given, before it was made absolute) inside a ``ray job submit
    --working-dir`` job resolves into Ray's temporary package directory, which the cluster deletes with its
    session: refused, with the reason."""
    from cutdist.storage import is_object_store

    cwd = Path.cwd() if cwd is None else cwd
    if is_object_store(given) or Path(given).expanduser().is_absolute():
        return None
    if "runtime_resources" in cwd.parts and any(part.startswith("_ray_pkg_") for part in cwd.parts):
        return (f"storage_path: {given!r} is relative, and this job runs in Ray's temporary copy of its working "
                f"directory ({cwd}), deleted with the cluster's session; give an absolute path every node "
                "reaches, or s3://bucket/prefix")
    return None


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
    from ray.train import FailureConfig, LoggingConfig, RunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from cutdist.train.loop import train_loop_per_worker

    if name or storage:   # one run (e.g. a Tune trial) elsewhere: checkpoints, logs and saved config agree
        cfg = copy.deepcopy(cfg)
        cfg.name = name or cfg.name
        cfg.storage_path = storage or cfg.storage_path
    t = cfg.train
    scaling = scaling_config(cfg)
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
