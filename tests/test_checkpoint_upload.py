"""``checkpoint.upload``: what a Ray worker's report hands to ``ray.train.report`` in each mode, from the job
config through ``train_loop_per_worker`` (Ray's worker API stubbed: no cluster). The upload itself is Ray's;
tests/test_cluster_s3.py loses a node with the default (async) mode."""
from __future__ import annotations

import shutil
import types
from pathlib import Path

import pytest

from cutdist import config
from cutdist.train import loop

ray_train = pytest.importorskip("ray.train")
import ray.train.torch  # noqa: E402

Mode = ray_train.CheckpointUploadMode


@pytest.fixture
def reports(monkeypatch):
    """Ray's worker API stubbed for one rank-0 worker; each ``ray.train.report`` call's keyword arguments."""
    calls = []
    world = types.SimpleNamespace(get_world_rank=lambda: 0, get_world_size=lambda: 1, get_local_rank=lambda: 0)
    monkeypatch.setattr(ray_train, "get_context", lambda: world)
    monkeypatch.setattr(ray_train, "get_checkpoint", lambda: None)
    monkeypatch.setattr(ray.train.torch, "get_device", lambda: "cpu")

    def report(metrics, checkpoint=None, **kwargs):
        calls.append(kwargs)
        if checkpoint is not None and kwargs.get("delete_local_checkpoint_after_upload"):
            shutil.rmtree(checkpoint.path)   # as Ray does once it has uploaded it
    monkeypatch.setattr(ray_train, "report", report)
    return calls


def ray_worker_context(monkeypatch, tmp_path, **overrides):
    """The context ``train_loop_per_worker`` builds for a job with ``overrides`` (training itself skipped)."""
    built = []
    monkeypatch.setattr(loop, "run_training", lambda ctx, *a, **k: built.append(ctx))
    cfg = config.load(None, {"data.root": "shards/x", **overrides})
    loop.train_loop_per_worker({"config": cfg.to_dict(), "splits": None, "logs_dir": str(tmp_path)})
    return built[0]


def staged(tmp_path: Path, step: int) -> Path:
    d = tmp_path / f"staged_{step}"
    d.mkdir()
    (d / "model.pt").write_bytes(b"x")
    return d


@pytest.mark.parametrize("upload, mode, ray_deletes", [
    (None, Mode.ASYNC, True),     # the default: async
    ("async", Mode.ASYNC, True),
    ("sync", Mode.SYNC, False),
])
def test_each_mode_reaches_ray_report(monkeypatch, tmp_path, reports, upload, mode, ray_deletes):
    ctx = ray_worker_context(monkeypatch, tmp_path, **({"checkpoint.upload": upload} if upload else {}))
    handed_over = ctx.report({"step": 10}, staged(tmp_path, 10), 10, checkpointed=True)
    assert reports[-1]["checkpoint_upload_mode"] is mode
    assert reports[-1]["checkpoint_dir_name"] == "checkpoint_000000010"
    # async: Ray deletes the directory once uploaded; sync: the report returns with it in storage, the loop
    # deletes it
    assert reports[-1].get("delete_local_checkpoint_after_upload", False) is ray_deletes
    assert handed_over is ray_deletes
    # the last checkpoint is always uploaded before the report returns
    assert ctx.report({"step": 20}, staged(tmp_path, 20), 20, checkpointed=True, final=True) is False
    assert reports[-1].get("checkpoint_upload_mode", Mode.SYNC) is Mode.SYNC

