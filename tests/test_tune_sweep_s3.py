"""A sweep whose directory is in an S3 bucket (moto, 127.0.0.1, signatures checked), its driver killed and
``--resume s3://...`` finishing it.

One module-scoped S3 server (the standard AWS environment set for this process and the Ray head started here)
and one `ray start` head with 2 CPUs. The sweep is a grid of two learning rates of the smoke job (1 worker,
4 synthetic images per domain at 32 px, shards in the bucket, 2 epochs with an FID after each), one trial at a
time, FIFO. The driver is SIGKILLed once the experiment state in the bucket shows the first trial finished;
``--resume`` of the bucket URI runs what is left and writes the leaderboard into the bucket.

Tune uploads its experiment state and its searcher state one file after the other, so a driver killed in
between leaves a searcher state older than the experiment state in the bucket (seen here: the experiment state
goes first, then the trials' files, then the searcher state). The test makes that case certain: it puts back the
searcher state it read while the first trial was still running. Before cutdist.tune.searcher, the resumed driver
then waited in Tune's trial queue for a trial the stale searcher never produced (the finished trial counted as
live, max_concurrent_trials 1 reached).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ray_head import ray_head

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
LRS = [2.0e-4, 1.0e-4]
SPACE = {
    "search": "grid",
    "max_concurrent_trials": 1,
    "scheduler": {"type": "fifo"},
    "fixed": {"eval.enabled": True, "eval.every": 1, "eval.max_images": 4, "eval.batch_size": 4,
              "optim.epochs": 2, "optim.epochs_decay": 0, "optim.max_steps": 0, "train.num_workers": 1,
              "checkpoint.every_steps": 1000, "logging.every_steps": 1000, "logging.sample_every_steps": 1000,
              "logging.tensorboard": False},
    "params": {"optim.lr": {"grid": LRS}},
}


@pytest.fixture(scope="module")
def head(s3):
    with ray_head("cds", worker_ports=(20000, 60000)) as started:
        yield started.address


def bucket_trial_states(s3, sweep: str) -> dict[str, str]:
    """{trial id: status} from the newest experiment state in the bucket ({} before the first)."""
    names = sorted(k for k in s3.keys(sweep) if k.startswith("experiment_state-") and k.endswith(".json"))
    try:
        data = json.loads(s3.read(f"{sweep}/{names[-1]}"))
    except (IndexError, ValueError):
        return {}
    return {json.loads(t)["trial_id"]: json.loads(t)["status"] for t, _ in data["trial_data"]}


def result_lines(s3, sweep: str, trial_id: str) -> int:
    try:
        return len(s3.read(f"{sweep}/trial_{trial_id}/result.json").decode().splitlines())
    except Exception:   # not written yet
        return 0


def test_resume_of_a_sweep_in_the_bucket(s3, head, tmp_path):
    import pandas as pd

    shards = s3.synth_shards("sweep-data", "shards", tmp_path / "shards", count=4)
    sweeps = s3.bucket("sweeps") + "/tune"
    sweep = f"{sweeps}/lr-grid"
    space_file = tmp_path / "lr_grid.yaml"
    space_file.write_text(yaml.safe_dump(SPACE))
    env = {**os.environ, "RAY_ADDRESS": head, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": str(ROOT)}
    log = tmp_path / "first.log"
    cmd = [sys.executable, "-m", "cutdist.tune", "--config", "jobs/smoke.yaml", "--space", str(space_file),
           "--name", "lr-grid", f"data.root={shards}", f"storage_path={sweeps}"]
    with log.open("w") as fh:
        driver = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        deadline = time.time() + 300
        early = None   # (key, bytes) of the searcher state while only the first trial exists
        while "TERMINATED" not in bucket_trial_states(s3, sweep).values():
            if early is None and len(bucket_trial_states(s3, sweep)) == 1:
                names = [k for k in s3.keys(sweep) if k.startswith("basic-variant-state-")]
                early = (names[-1], s3.read(f"{sweep}/{names[-1]}")) if names else None
            assert driver.poll() is None, f"the sweep ended before the kill:\n{log.read_text()[-4000:]}"
            assert time.time() < deadline, f"no finished trial in the bucket in 300 s:\n{log.read_text()[-4000:]}"
            time.sleep(0.5)
        os.killpg(driver.pid, signal.SIGKILL)
        at_kill = bucket_trial_states(s3, sweep)
        lines_at_kill = {tid: result_lines(s3, sweep, tid) for tid in at_kill}
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    assert list(at_kill.values()).count("TERMINATED") == 1 and early is not None, at_kill
    bucket, _, prefix = sweep.removeprefix("s3://").partition("/")
    s3.client().put_object(Bucket=bucket, Key=f"{prefix}/{early[0]}", Body=early[1])   # killed between uploads

    resumed = subprocess.run([sys.executable, "-m", "cutdist.tune", "--resume", sweep], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
    out = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, out[-4000:]
    assert resumed.stdout.strip().splitlines()[-1] == sweep
    keys = s3.keys(sweep)
    assert {"leaderboard.parquet", "leaderboard.csv", "sweep.yaml", "best_config.yaml"} <= set(keys), keys
    local = tmp_path / "leaderboard.parquet"
    local.write_bytes(s3.read(f"{sweep}/leaderboard.parquet"))
    board = pd.read_parquet(local)
    assert sorted(board["optim.lr"]) == sorted(LRS) and set(board["status"]) == {"TERMINATED"}, board.to_string()
    assert set(at_kill) <= set(board["trial_id"])
    for tid, status in at_kill.items():   # the finished trial was not run again
        if status == "TERMINATED":
            assert result_lines(s3, sweep, tid) == lines_at_kill[tid] == 2, tid
    for row in board.itertuples():
        assert row.steps_reached == row.planned_steps and row.evaluations == 2, board.to_string()
    assert s3.secret not in out and s3.secret not in s3.read(f"{sweep}/sweep.yaml").decode()
