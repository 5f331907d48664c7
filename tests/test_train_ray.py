"""Training on a real Ray cluster: one `ray start --head --block` (127.0.0.1, auth disabled, its own ports and
temp dir) shared by the module, stopped by its pid at the end.

- `ray job submit --working-dir .` of jobs/smoke.yaml (2 CPU DDP workers) -> SUCCEEDED, checkpoint and
  metrics on disk, G/D/F identical across the ranks at every checkpoint;
- 2-worker DeepSpeed ZeRO-1 (gloo) with one worker SIGKILLed mid-run (max_failures=1): finishes, resumed from
  its newest complete checkpoint (step counter continues, at most one interval redone, redone steps bit-identical),
  then its checkpoint resumes on 1 DDP worker.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from ray_head import RAY, ray_head
import torch

from cutdist import config

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "jobs" / "smoke.yaml"


@pytest.fixture(scope="module")
def head():
    with ray_head("cdr", worker_ports=(20000, 40000)) as started:
        try:
            yield started
        finally:
            import ray
            ray.shutdown()   # this process disconnects before the head goes away


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from cutdist.data.synth import write_synth_dataset
    root = tmp_path_factory.mktemp("shards")
    write_synth_dataset(root, size=32, count=16, test_count=4, seed=0)
    return root


@pytest.fixture(scope="module")
def connected(head):
    import ray
    ray.init(address=head.address, log_to_driver=False)
    yield head


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    payload = torch.load(Path(ckpt) / "model.pt", weights_only=True)
    return {f"{n}.{k}": v for n in ("g", "d", "f") for k, v in payload[n].items()}


def job_config(shards, runs, **overrides):
    return config.load(SMOKE, {"data.root": str(shards), "storage_path": str(runs), **overrides})


def submit_train_job(head, name: str, train_args: list[str], *, timeout: int) -> str:
    """`ray job submit --working-dir . -- python -m cutdist.train ARGS` to ``head``; asserts the job SUCCEEDED
    (else shows the CLI's output) and returns the job's logs."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    sid = f"{name}-{os.getpid()}-{int(time.time())}"
    cmd = [RAY, "job", "submit", "--address", head.dashboard, "--working-dir", ".", "--submission-id", sid,
           "--", sys.executable, "-m", "cutdist.train", *train_args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    client = JobSubmissionClient(head.dashboard)
    status = client.get_job_status(sid)
    assert status == JobStatus.SUCCEEDED, f"{status}\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}"
    return client.get_job_logs(sid)


def test_ray_job_submit_smoke(head, shards, tmp_path):
    runs = tmp_path / "runs"
    logs = submit_train_job(head, "smoke", ["--config", "jobs/smoke.yaml", f"data.root={shards}",
                                            f"storage_path={runs}", "name=submitted"], timeout=400)
    assert "[cutdist.train] done" in logs and "first training step done" in logs

    run = runs / "submitted"
    final = run / "checkpoint_000000006"
    assert (final / "model.pt").is_file() and (final / "train_state.pt").is_file()
    state = torch.load(final / "train_state.pt", weights_only=True)
    assert (state["step"], state["world_size"], state["strategy"]) == (6, 2, "ddp")
    steps = [m["step"] for m in read_metrics(run)]
    assert steps == [1, 2, 3, 4, 5, 6]
    for ckpt in ("checkpoint_000000003", "checkpoint_000000006"):   # DDP: G, D, F identical on both ranks
        saved = json.loads((run / ckpt / "metrics.json").read_text())
        assert saved["replica_divergence"] == 0.0 and saved["world_size"] == 2
    assert (run / "samples" / "latest.png").is_file()


def test_ray_job_submit_sincut_smoke(head, tmp_path):
    """SinCUT on the same cluster: jobs/sincut_smoke.yaml (2 DDP workers, 4 crops each, R1 every step) submitted
    as a Ray job; the synthetic painting/photo pair is written by the driver; checkpoints with identical replicas,
    the sample grid and the whole translated painting."""
    runs = tmp_path / "runs"
    logs = submit_train_job(head, "sincut", ["--config", "jobs/sincut_smoke.yaml", f"data.root={tmp_path / 'pair'}",
                                             f"storage_path={runs}", "name=sincut", "logging.tensorboard=false"],
                            timeout=600)
    assert "[cutdist.train] done" in logs and "translated image" in logs
    run = runs / "sincut"
    state = torch.load(run / "checkpoint_000000006" / "train_state.pt", weights_only=True)
    assert (state["step"], state["world_size"], state["strategy"]) == (6, 2, "ddp")
    for ckpt in ("checkpoint_000000004", "checkpoint_000000006"):   # kept: 2 (3 pruned; 4 = the epoch's end)
        saved = json.loads((run / ckpt / "metrics.json").read_text())
        assert saved["replica_divergence"] == 0.0 and saved["loss_d_r1"] > 0 and "translated_image" in saved
    assert (run / "samples" / "translated_latest.png").is_file() and (run / "samples" / "latest.png").is_file()


def test_deepspeed_zero1_survives_a_killed_worker_and_resumes_exactly(connected, shards, tmp_path):
    """2 DeepSpeed ZeRO-1 workers (gloo); one SIGKILLed after checkpoint 8 and a few more steps. Ray restarts
    the group (max_failures=1), every worker resumes from the last checkpoint, and the steps done twice give
    bit-identical losses (exact resume through the consolidated optimizer state).

    The moment of the kill is chosen with both workers SIGSTOPped, so what the test saw (steps logged, newest
    complete checkpoint) is what the run had: an idle machine trains the 16 steps faster than a poll of the run
    directory catches a step past a checkpoint (seen: the run ended before the kill)."""
    import pyarrow.fs
    from ray.util.state import list_actors

    from cutdist.data import resolve_splits
    from cutdist.train.launcher import build_trainer
    from cutdist.train.loop import run_local
    from cutdist.train.checkpoint import checkpoint_step, load_train_state, newest_complete_checkpoint

    every = 4
    cfg = job_config(shards, tmp_path, name="ds_kill", **{
        "train.strategy": "deepspeed", "train.zero_stage": 1,
        "optim.max_steps": 16, "optim.epochs": 10, "checkpoint.every_steps": every,
        "checkpoint.max_failures": 1, "checkpoint.num_to_keep": 2, "logging.every_steps": 1,
        "logging.sample_every_steps": 1000})
    splits = resolve_splits(cfg.data)
    trainer = build_trainer(cfg, splits)
    outcome: dict = {}

    def fit():
        try:
            outcome["result"] = trainer.fit()
        except BaseException as err:   # reported below
            outcome["error"] = err

    thread = threading.Thread(target=fit, daemon=True)
    thread.start()
    run = tmp_path / "ds_kill"
    deadline = time.time() + 300

    def logged() -> int:
        return max([m["step"] for m in read_metrics_if_any(run)] or [0])

    def newest_complete() -> int:
        found = newest_complete_checkpoint(pyarrow.fs.LocalFileSystem(), str(run))
        return checkpoint_step(Path(found[1]).name) if found else 0

    def signal_all(pids, sig) -> None:
        for pid in pids:
            os.kill(pid, sig)

    while logged() < 1:
        assert thread.is_alive(), f"training ended before it logged a step: {outcome}"
        assert time.time() < deadline, "no step logged within 300 s"
        time.sleep(0.1)
    workers = list_actors(address=connected.dashboard,
                          filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    assert len(workers) == 2, workers
    pids = [w.pid for w in workers]
    # checkpoint 8 complete in the run directory and a step past the newest checkpoint, so some are done twice
    while True:
        assert thread.is_alive(), f"training ended before the kill: {outcome}"
        assert time.time() < deadline, "no checkpoint at step 8 within 300 s"
        if logged() >= 9 and newest_complete() >= 8:
            signal_all(pids, signal.SIGSTOP)
            before_kill = newest_complete()
            if logged() > before_kill:
                break
            signal_all(pids, signal.SIGCONT)   # stopped right at a checkpoint: a few steps more
        time.sleep(0.02)
    os.kill(pids[-1], signal.SIGKILL)
    signal_all(pids[:-1], signal.SIGCONT)   # the other one meets the lost peer at its next collective

    thread.join(timeout=400)
    assert not thread.is_alive(), "training did not finish after the kill"
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert result.metrics["step"] == 16 and result.metrics["replica_divergence"] == 0.0
    assert result.checkpoint.path.endswith("checkpoint_000000016")

    lines = read_metrics(run)
    steps = [m["step"] for m in lines]
    restart = next(i for i in range(1, len(lines)) if lines[i]["resumed_from_step"] != lines[0]["resumed_from_step"])
    resumed_from = lines[restart]["resumed_from_step"]
    # from the newest complete checkpoint in the run directory (registered by Ray or not)
    assert resumed_from % every == 0 and before_kill <= resumed_from <= max(steps[:restart]), steps
    assert steps[restart] == resumed_from + 1, steps
    assert max(steps[:restart]) - resumed_from <= every, steps             # at most one interval redone
    assert steps[restart:] == list(range(resumed_from + 1, 17)), steps     # the counter continues to the end
    first, second = {m["step"]: m for m in lines[:restart]}, {m["step"]: m for m in lines[restart:]}
    redone = sorted(set(first) & set(second))
    assert redone, steps
    for step in redone:
        for key in ("loss_d", "loss_g_gan", "loss_nce", "loss_nce_y"):
            assert first[step][key] == second[step][key], (step, key, first[step], second[step])

    state = load_train_state(run / "checkpoint_000000016")
    assert (state["strategy"], state["world_size"], state["step"]) == ("deepspeed", 2, 16)
    adam = state["optimizers"]["gf"]["state"]
    g_shapes = [p.shape for p in weights(run / "checkpoint_000000016").values()]
    assert int(adam[0]["step"]) == 16 and adam[0]["exp_avg"].shape == g_shapes[0]   # consolidated, full shapes

    # written by 2 DeepSpeed workers, resumed by 1 DDP worker (a plain process)
    one = job_config(shards, tmp_path, **{"train.num_workers": 1, "optim.max_steps": 18,
                                          "optim.epochs": 10, "checkpoint.every_steps": 2})
    metrics, _ = run_local(one, splits, run_dir=tmp_path / "one", resume_from=run / "checkpoint_000000016")
    assert metrics["step"] == 18
    assert [m["step"] for m in read_metrics(tmp_path / "one")] == [17, 18]


def read_metrics_if_any(run: Path) -> list[dict]:
    try:
        return read_metrics(run)
    except (OSError, ValueError):
        return []
