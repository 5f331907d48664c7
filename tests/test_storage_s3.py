"""Object storage without Ray, against a real S3 API server (moto, 127.0.0.1, signatures checked):
shards read from a bucket, the driver's pre-flight refusing bad storage input with one line and exit 2 before
any cluster is touched, rank 0's logs mirrored into the bucket and continued by a rank 0 on another node, and the newest
complete checkpoint of a run directory in the bucket found (one cut short by a lost node passed over)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from s3_server import environment

from cutdist import config, storage

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "jobs" / "smoke.yaml"


@pytest.fixture(scope="module")
def shards_uri(s3, tmp_path_factory):
    return s3.synth_shards("data", "shards/smoke", tmp_path_factory.mktemp("shards"), count=8)


def test_storage_round_trip(s3, tmp_path):
    base = s3.bucket("roundtrip") + "/a"
    storage.write_bytes(f"{base}/x.txt", b"hello")
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "sub" / "y.bin").write_bytes(b"\x00\x01")
    storage.upload(tmp_path / "d", f"{base}/tree")
    assert storage.read_bytes(f"{base}/x.txt") == b"hello"
    assert storage.list_names(base) == ["tree", "x.txt"]
    assert storage.list_names(base, recursive=True) == ["tree", "tree/sub", "tree/sub/y.bin", "x.txt"]
    assert storage.download(f"{base}/tree/sub/y.bin", tmp_path / "out.bin").read_bytes() == b"\x00\x01"
    assert storage.exists(f"{base}/x.txt") and not storage.exists(f"{base}/nothing")


def test_shards_stream_from_the_bucket(shards_uri):
    from cutdist.data import resolve_splits
    from cutdist.data.stream import test_loader, unpaired_loader

    cfg = config.load(SMOKE, {"data.root": shards_uri, "data.loader_workers": 1})   # read in a forked process too
    splits = resolve_splits(cfg.data)
    assert splits.num_train_a == 8 and all(u.startswith(shards_uri + "/") for u in splits.train_a)
    batch = next(iter(unpaired_loader(splits, cfg.data, rank=0, world_size=1, epoch=0, seed=0,
                                      load_size=cfg.data.load_size)))
    assert batch["a"].shape == (1, 3, 32, 32) and batch["b"].shape == (1, 3, 32, 32)
    assert batch.get("skipped", 0) == 0
    images = sum(len(b) for _, b in test_loader(splits.test_a, rank=0, world_size=1, size=32, batch_size=4))
    assert images == 4


def test_missing_shard_in_bucket_is_named(s3, shards_uri):
    from cutdist.data import DataError, resolve_splits

    key = "shards/smoke/testB-000000.tar"
    original = s3.read(f"s3://data/{key}")
    s3.client().delete_object(Bucket="data", Key=key)
    try:
        with pytest.raises(DataError, match=r"shard s3://data/shards/smoke/testB-000000.tar of split testB"):
            resolve_splits(config.load(SMOKE, {"data.root": shards_uri}).data)
    finally:   # put back as it was: later tests of this module train on these shards
        s3.client().put_object(Bucket="data", Key=key, Body=original)


def run_driver(capsys, monkeypatch, overrides: list[str]) -> tuple[int, list[str]]:
    """``python -m cutdist.train`` in this process; a Ray start would fail the test."""
    import ray

    from cutdist.train.__main__ import main

    def no_ray(*args, **kwargs):
        raise AssertionError("ray.init was called: the pre-flight let bad storage through")

    monkeypatch.setattr(ray, "init", no_ray)
    code = main(["--config", str(SMOKE), *overrides])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, err


def test_bad_storage_is_one_line_and_exit_2(s3, shards_uri, capsys, monkeypatch):
    s3.bucket("runs")
    cases = [
        (["storage_path=s3://no-such-bucket/runs"], {},
         "error: storage_path: s3://no-such-bucket/runs: bucket 'no-such-bucket' does not exist"),
        (["storage_path=s3://runs/x"], {"AWS_SECRET_ACCESS_KEY": "wrong"},
         "error: data.root: s3://data/shards/smoke: access denied"),
        (["storage_path=s3://runs/x", "data.root=/nonexistent"], {"AWS_SECRET_ACCESS_KEY": "wrong"},
         "error: storage_path: s3://runs/x: access denied"),
        (["storage_path=s3://AKIAX:SECRETX@runs/x"], {},
         "error: storage_path: s3://***@runs/x carries credentials in the URI"),
        (["storage_path=s3://runs/x", "data.root=s3://data/nothing-here"], {},
         "error: data.root: s3://data/nothing-here: no manifest.parquet there"),
        (["storage_path=s3://runs/x"], {"AWS_ENDPOINT_URL": "http://127.0.0.1:9"},
         "error: data.root: s3://data/shards/smoke: cannot reach the endpoint"),
    ]
    for overrides, env, expected in cases:
        with environment(env):
            code, err = run_driver(capsys, monkeypatch, [f"data.root={shards_uri}", *overrides])
        assert code == 2, (overrides, err)
        assert len(err) == 1 and err[0].startswith(expected), (overrides, err)
        assert "SECRETX" not in err[0] and "wrong" not in err[0] and s3.secret not in err[0]


def test_relative_storage_path_in_a_ray_job_is_refused(tmp_path):
    from cutdist.train.launcher import ephemeral_storage_problem

    cfg = config.load(SMOKE)
    pkg = tmp_path / "session_x" / "runtime_resources" / "working_dir_files" / "_ray_pkg_0123abcd"
    problem = ephemeral_storage_problem(cfg, "runs", cwd=pkg)
    assert problem.startswith("storage_path: 'runs' is relative") and "deleted with the cluster's session" in problem
    assert ephemeral_storage_problem(cfg, "/shared/runs", cwd=pkg) is None
    assert ephemeral_storage_problem(cfg, "s3://b/runs", cwd=pkg) is None
    assert ephemeral_storage_problem(cfg, "runs", cwd=tmp_path) is None


def test_logs_mirrored_and_continued_on_another_node(s3, tmp_path):
    from cutdist.train.logger import RunLogger

    run = s3.bucket("logs") + "/runs/r1"
    first = RunLogger(tmp_path / "node1", tensorboard=True, total_steps=30, mirror=run)
    for step in (5, 10, 15):
        first.log(step, {"step": step, "loss_nce": 1.0})
    first.samples(15, [torch.zeros(2, 3, 8, 8)] * 3, ["a", "b", "c"])
    first.close()
    names = s3.keys(run)
    assert "metrics.jsonl" in names and "samples/step_000000015.png" in names and "samples/latest.png" in names
    assert any(n.startswith("tensorboard/events.out.tfevents") for n in names)
    # rank 0 restarts on another node (empty local directory) from the checkpoint of step 10
    second = RunLogger(tmp_path / "node2", tensorboard=False, total_steps=30, mirror=run, resume_step=10)
    assert [json.loads(line)["step"] for line in second.metrics_path.read_text().splitlines()] == [5, 10, 15]
    second.log(15, {"step": 15, "loss_nce": 0.5})
    second.close()
    steps = [json.loads(line)["step"] for line in s3.read(f"{run}/metrics.jsonl").decode().splitlines()]
    assert steps == [5, 10, 15, 15]   # the record goes on where the lost node left it; step 15 was redone
    assert json.loads(s3.read(f"{run}/metrics.jsonl").decode().splitlines()[-1])["loss_nce"] == 0.5
    # a node holding an older run's lines locally (same name, another bucket) does not leak them into this run
    stale = tmp_path / "node3"
    stale.mkdir()
    (stale / "metrics.jsonl").write_text('{"step": 99}\n')
    fresh = s3.bucket("logs2") + "/runs/r1"
    third = RunLogger(stale, tensorboard=False, total_steps=30, mirror=fresh)
    third.log(5, {"step": 5})
    third.sync()
    assert [json.loads(line)["step"] for line in s3.read(f"{fresh}/metrics.jsonl").decode().splitlines()] == [5]
    third.close()


def test_newest_complete_checkpoint_in_bucket(s3, tmp_path):
    from cutdist.train.checkpoint import TRAIN_STATE_FORMAT, newest_complete_checkpoint

    run = s3.bucket("ckpts") + "/runs/r"
    fs, path = storage.filesystem(run)
    assert newest_complete_checkpoint(fs, path) is None
    for step in (10, 20):
        local = tmp_path / f"c{step}"
        local.mkdir()
        torch.save({"format": "x"}, local / "model.pt")
        torch.save({"format": TRAIN_STATE_FORMAT, "step": step}, local / "train_state.pt")
        storage.upload(local, f"{run}/checkpoint_{step:09d}")
    storage.write_bytes(f"{run}/checkpoint_000000030/model.pt", b"cut short")   # no train_state.pt
    assert newest_complete_checkpoint(fs, path) == (fs, f"{path}/checkpoint_000000020")
    # Ray registered 20: nothing newer is complete, so Ray's stands
    assert newest_complete_checkpoint(fs, path, known=f"{path}/checkpoint_000000020")[1].endswith("20")
    # Ray registered only 10 (the report of 20 was lost with its node): 20 is found in storage
    assert newest_complete_checkpoint(fs, path, known=f"{path}/checkpoint_000000010")[1].endswith("20")


def test_resume_from_a_checkpoint_in_the_bucket(s3, shards_uri, tmp_path, capsys, monkeypatch):
    """``checkpoint.resume_from=s3://…``: a run directory in the bucket resolves to its newest complete
    checkpoint (one cut short passed over, Ray's snapshot followed as for a local run directory), the driver
    reads it before any worker starts, and the loop resumes from it exactly; a missing or incomplete
    checkpoint is one line and exit 2."""
    from cutdist.data import resolve_splits
    from cutdist.train.checkpoint import resolve_resume
    from cutdist.train.loop import run_local
    from cutdist.train.preflight import preflight

    overrides = {"data.root": shards_uri, "storage_path": str(tmp_path), "train.num_workers": 1,
                 "checkpoint.num_to_keep": 5, "logging.sample_every_steps": 1000, "logging.tensorboard": False}
    cfg = config.load(SMOKE, overrides)
    splits = resolve_splits(cfg.data)
    run_local(cfg, splits, run_dir=tmp_path / "straight")
    run = s3.bucket("resume") + "/runs/straight"
    s3.upload_dir(tmp_path / "straight", run)
    storage.write_bytes(f"{run}/checkpoint_000000009/model.pt", b"cut short")   # no train_state.pt

    def resolved(location: str) -> str:
        return resolve_resume(config.load(SMOKE, {**overrides, "checkpoint.resume_from": location}))

    assert resolved(run) == f"{run}/checkpoint_000000006"
    assert resolved(f"{run}/checkpoint_000000003/") == f"{run}/checkpoint_000000003"
    storage.write_bytes(f"{run}/checkpoint_manager_snapshot.json", json.dumps(
        {"latest_checkpoint_result": {"checkpoint_dir_name": "checkpoint_000000003"}}).encode())
    assert resolved(run) == f"{run}/checkpoint_000000003"

    # the driver's pre-flight, then the loop: steps 4-6 again from the bucket's checkpoint 3, as trained straight
    job = config.load(SMOKE, {**overrides, "checkpoint.resume_from": run})
    ready = preflight(job, say=lambda line: None)
    assert ready.resume_from == f"{run}/checkpoint_000000003"
    metrics, _ = run_local(job, splits, run_dir=tmp_path / "resumed", resume_from=ready.resume_from)
    assert metrics["step"] == 6 and metrics["resumed_from_step"] == 3
    straight = torch.load(tmp_path / "straight" / "checkpoint_000000006" / "model.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "checkpoint_000000006" / "model.pt", weights_only=True)
    for net in ("g", "d", "f"):
        for key, value in straight[net].items():
            torch.testing.assert_close(resumed[net][key], value, rtol=0, atol=0, msg=f"{net}.{key}")

    cases = [
        (f"{run}-nothing", f"error: checkpoint.resume_from: nothing at {run}-nothing"),
        (f"{run}/checkpoint_000000009", f"error: checkpoint.resume_from: {run}/checkpoint_000000009: no "
                                        "train_state.pt (an incomplete checkpoint)"),
        ("s3://no-such-bucket/runs/x", "error: checkpoint.resume_from: s3://no-such-bucket/runs/x: bucket "
                                       "'no-such-bucket' does not exist"),
    ]
    for location, expected in cases:
        code, err = run_driver(capsys, monkeypatch, [f"data.root={shards_uri}", f"storage_path={tmp_path}",
                                                     f"checkpoint.resume_from={location}"])
        assert code == 2 and len(err) == 1 and err[0].startswith(expected), (location, err)


def test_sincut_translated_image_lands_in_the_bucket(s3, tmp_path):
    """SinCUT's evaluation (the whole image A translated) is copied into a run directory in the bucket with
    the samples, and its metric names the copy there."""
    from cutdist.data.synth_single import write_single_pair
    from cutdist.train.context import LocalContext
    from cutdist.train.loop import run_training
    from cutdist.train.preflight import preflight

    a, b = write_single_pair(tmp_path / "pair", size=(40, 48))
    cfg = config.from_dict({
        "model.mode": "sincut", "model.ngf": 1, "model.ndf": 4, "model.n_blocks": 2, "model.netf_nc": 16,
        "loss.nce_layers": [0, 2, 3], "data.image_a": a, "data.image_b": b, "data.crop_size": 16,
        "data.batch_size": 4, "data.sincut_epoch_size": 12, "optim.epochs": 1, "optim.epochs_decay": 0,
        "checkpoint.every_steps": 0, "logging.every_steps": 1, "logging.sample_every_steps": 3,
        "logging.tensorboard": False, "eval.every": 1, "storage_path": str(tmp_path / "runs")})
    splits = preflight(cfg, say=lambda line: None).splits
    run = s3.bucket("sincut") + "/runs/one"
    ctx = LocalContext(run_dir=tmp_path / "checkpoints", num_to_keep=1, device=torch.device("cpu"))
    metrics = run_training(ctx, cfg, splits, logs_dir=tmp_path / "logs", logs_mirror=run)
    assert metrics["step"] == 3 and metrics["translated_image"] == f"{run}/samples/translated_000000003.png"
    for name in ("translated_000000003.png", "translated_latest.png"):
        assert s3.read(f"{run}/samples/{name}") == (tmp_path / "logs" / "samples" / name).read_bytes(), name
