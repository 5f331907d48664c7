"""Everything a driver checks before any cluster starts: ``preflight(cfg)``, called by ``python -m cutdist.train``
and ``python -m cutdist.tune`` alike.

In order, each failure one line naming the culprit (``PreflightError``; the drivers print it and exit 2):
local paths made absolute (Ray workers run in their own working directories; the one place this is done) ->
the demo's shards synthesised if the job asks (``data.synth_if_missing``) -> shard resolution -> with FID on, a
test split to compute it on and usable Inception weights -> the resume checkpoint (``checkpoint.resume_from``)
resolved and read as the workers will read it (both files, the architecture, G, D and F).

The job's config itself is validated when it is loaded (``cutdist.config``), before this is called.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cutdist.config import ConfigError, JobConfig

PATH_KEYS = ("data.root", "data.train_a", "data.train_b", "data.test_a", "data.test_b", "data.image_a", "data.image_b",
             "checkpoint.resume_from",
             "eval.cache_dir", "eval.inception_weights", "storage_path")


class PreflightError(ValueError):
    """A job that cannot start; ``str(err)`` is one line naming the key, file or shard."""


@dataclass
class Preflight:
    """What a driver needs once the job passed: its shards and the checkpoint to start from ("" = none)."""
    splits: Any
    resume_from: str


def is_remote(path: str) -> bool:
    return "://" in path or path.startswith("pipe:")


def absolute(path: str) -> str:
    """A local path made absolute (``~`` expanded); remote URIs, ``pipe:`` and "" as they are."""
    return path if not path or is_remote(path) else str(Path(path).expanduser().absolute())


def absolutize_paths(cfg: JobConfig) -> JobConfig:
    """The job's local paths (``PATH_KEYS``) made absolute, in place."""
    for key in PATH_KEYS:
        section, _, name = key.rpartition(".")
        obj = getattr(cfg, section) if section else cfg
        value = getattr(obj, name)
        if key == "eval.inception_weights" and value in ("auto", "random"):
            continue
        setattr(obj, name, absolute(value))
    return cfg


def absolute_splits(splits: Any) -> Any:
    """A copy of ``splits`` whose local shard paths and manifest are absolute (relative ones break on workers)."""
    changes = {f.name: [absolute(u) for u in getattr(splits, f.name)] for f in dataclasses.fields(splits)
               if isinstance(getattr(splits, f.name), list)}
    for name in ("manifest", "root"):
        value = getattr(splits, name, None)
        if isinstance(value, str):
            changes[name] = absolute(value)
    return dataclasses.replace(splits, **changes)


def preflight(cfg: JobConfig, *, say: Callable[[str], None] = print) -> Preflight:
    """Check the job as the workers will need it (see the module docstring); ``cfg``'s paths become absolute."""
    from cutdist.data import DataError, resolve_splits
    from cutdist.eval.inception import weights_problem
    from cutdist.model.io import ModelIOError
    from cutdist.train.checkpoint import CheckpointError, resolve_resume

    from cutdist import storage
    from cutdist.train.launcher import ephemeral_storage_problem

    problem = ephemeral_storage_problem(cfg, cfg.storage_path)   # as given, before it is made absolute
    if problem:
        raise PreflightError(problem)
    absolutize_paths(cfg)
    try:
        storage.check_job(cfg)   # object storage: endpoint, bucket, credentials, write access, before any worker
    except storage.StorageError as err:
        raise PreflightError(str(err)) from None
    root = Path(cfg.data.root)
    if cfg.data.synth_if_missing and cfg.data.root and not is_remote(cfg.data.root) \
            and not (root / "manifest.parquet").is_file():
        what = ("the synthetic painting/photo pair" if cfg.data.synth_kind == "single_pair"
                else f"{cfg.data.synth_count} images per domain")
        say(f"synthesising the demo shards into {root} ({what}, {cfg.data.synth_size} px)")
    sincut = cfg.model.mode == "sincut"   # one image per domain: no FID; its evaluation writes the translated image
    if sincut:
        splits = _sincut_images(cfg)
    else:
        try:
            splits = resolve_splits(cfg.data)   # writes the demo shards first when data.synth_if_missing
        except DataError as err:
            raise PreflightError(str(err)) from None
    if cfg.eval.enabled and not sincut and not (splits.test_a and splits.test_b):
        raise PreflightError(f"eval.enabled: {splits.manifest or cfg.data.root} has no testA/testB split to compute "
                             "FID on (add them, or set eval.enabled=false)")
    if cfg.eval.enabled and not sincut:
        problem = weights_problem(cfg.eval.inception_weights)
        if problem:
            raise PreflightError(f"eval.inception_weights: {problem}")
    try:
        resume_from = resolve_resume(cfg)
    except (CheckpointError, ConfigError, ModelIOError) as err:
        raise PreflightError(str(err)) from None
    return Preflight(splits=absolute_splits(splits), resume_from=resume_from)


def _sincut_images(cfg: JobConfig) -> Any:
    """SinCUT's two images, decoded here as the workers will: from data.image_a / data.image_b (then the splits are
    empty), else the one image of trainA and of trainB under data.root (synthesised first if the job asks)."""
    from cutdist.data import DataError, Splits, resolve_splits
    from cutdist.data.single_image import load_single_images

    try:
        splits = (Splits(train_a=[], train_b=[]) if cfg.data.image_a and cfg.data.image_b
                  else resolve_splits(cfg.data))
        load_single_images(cfg.data, splits)
    except DataError as err:
        raise PreflightError(str(err)) from None
    return splits
