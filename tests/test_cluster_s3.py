"""Several Ray nodes, shards and runs in an S3 server, a node lost mid-run.

One module-scoped S3 server (moto, 127.0.0.1, signatures checked; the standard AWS environment set for every
process started here, Ray nodes included) and one Ray cluster on this machine: a head without CPUs (the
driver and Ray Train's controller live there) and one-CPU worker nodes (`ray start --address`, each its own
process group), so the two training workers land on different nodes.

The job is `python -m cutdist.train` as a user runs it (RAY_ADDRESS, data.root and storage_path s3://), elastic
(`train.num_workers=[1,2]`): once checkpoint 20 is complete in the bucket one worker node is SIGKILLed; the run
shrinks to one worker and resumes from that checkpoint (before the fix, Ray's restarted group started from the
last checkpoint its controller had registered, or afresh), then a replacement node joins
and the run grows back to two workers, and finishes. metrics.jsonl in the bucket lists every logged step once,
in order (no gap, nothing before a checkpoint repeated), with world sizes 2 -> 1 -> 2; summary.json counts the
images of exactly those steps and names the last checkpoint.
A new node needs longer to join and be counted by Ray's elastic policy than one worker needs to finish a short
run on an idle machine (seen: the group grew back only once the run was at its end), so the test SIGSTOPs the lone
worker once it has written a checkpoint and lets it go only after the group was resized: the order of events,
not the machine's speed, decides what is tested (a stopped worker only misses health checks, which Ray tolerates
for 10 min).

The same cluster runs a one-trial sweep (``python -m cutdist.tune``, sweep directory in the bucket) whose
training worker is on the only worker node; that node is SIGKILLed once the trial's checkpoint 20 is in the
bucket and a replacement joins: the trial (its actor on the head) resumes from the newest checkpoint in the
bucket and the sweep ends with the trial TERMINATED on its leaderboard.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ray_head import ray_head, ray_worker_node

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
STEPS = 100


@pytest.fixture(scope="module")
def head(s3):
    # the GCS declares a lost node dead after 5 missed 1-s health checks (Ray's default: 5 x 3 s): until then a
    # restarting worker group counts the dead node's CPU and waits for it (driver_env)
    with ray_head("cdc", num_cpus=0, worker_ports=(20000, 60000),
                  system_env={"RAY_health_check_period_ms": "1000"}) as started:
        yield started


@pytest.fixture(scope="module")
def shards(s3, tmp_path_factory):
    return s3.synth_shards("cluster-data", "shards/smoke", tmp_path_factory.mktemp("shards"), count=16)


def driver_env(address: str) -> dict[str, str]:
    """A driver's environment (``python -m cutdist.train`` / ``cutdist.tune``) for the module's cluster."""
    # a worker group restarted right after a node loss still counts that node (not yet declared dead: 5 s, head
    # fixture) and waits this long for its placement before counting the nodes again (Ray retries a group start
    # that timed out without limit, and without counting it in max_failures)
    return {**os.environ, "RAY_ADDRESS": address, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(ROOT), "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "10"}


def metrics_in_bucket(s3, run: str) -> list[dict]:
    try:
        text = s3.read(f"{run}/metrics.jsonl").decode()
    except Exception:   # not written yet
        return []
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:   # a line being appended while we read
            pass
    return out


def complete_checkpoints(s3, run: str) -> list[int]:
    """Steps of the checkpoints whose two files are both in the bucket, oldest first."""
    keys = set(s3.keys(run))
    return sorted(int(k.split("/")[0].split("_")[1]) for k in keys if k.endswith("/train_state.pt")
                  and k.replace("train_state.pt", "model.pt") in keys)


def wait_for(what: str, predicate, timeout: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"the driver exited ({proc.returncode}) while waiting for {what}:\n{log.read_text()[-4000:]}")
        if time.time() > deadline:
            pytest.fail(f"timed out waiting for {what}:\n{log.read_text()[-4000:]}")
        time.sleep(0.5)


@contextlib.contextmanager
def running_driver(cmd: list[str], log: Path, env: dict[str, str]) -> Iterator[subprocess.Popen]:
    """The driver (``cmd``) started from the repository with its output in ``log``; killed if still running."""
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env=env)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_lost_node_elastic_shrink_and_regrow(s3, head, shards, tmp_path):
    runs = s3.bucket("cluster-runs") + "/runs"
    run = f"{runs}/elastic"
    log = tmp_path / "driver.log"
    with ray_worker_node(head.address), ray_worker_node(head.address) as node_b:
        cmd = [sys.executable, "-m", "cutdist.train", "--config", "jobs/smoke.yaml", f"data.root={shards}",
               f"storage_path={runs}", "name=elastic", "train.num_workers=[1,2]", "train.elastic_resize_s=4",
               "optim.epochs=40", "optim.epochs_decay=0", f"optim.max_steps={STEPS}", "checkpoint.every_steps=10",
               "checkpoint.max_failures=3", "checkpoint.num_to_keep=2", "logging.every_steps=5",
               "logging.sample_every_steps=50"]
        env = driver_env(head.address)
        with running_driver(cmd, log, env) as proc:
            # the node goes as soon as checkpoint 20 is complete in the bucket: its report may well still be
            # queued on the workers, unseen by Ray's controller (polled every ~2 s)
            wait_for("checkpoint 20 in the bucket", lambda: (complete_checkpoints(s3, run) or [0])[-1] >= 20, 300,
                     proc, log)
            node_b.kill()
            newest = complete_checkpoints(s3, run)[-1]

            one = re.compile(r"RayTrainWorker pid=(\d+)[^\n]*?\[cutdist.train\] ddp x1 on cpu: .* at step (\d+) ")
            wait_for("the run to go on with one worker", lambda: one.search(log.read_text()), 240, proc, log)
            pid, resumed_at = map(int, one.search(log.read_text()).groups())

            def one_worker_checkpointed():   # the shrunk run's own checkpoint and metrics lines are in the bucket
                return ((complete_checkpoints(s3, run) or [0])[-1] > resumed_at
                        and any(m["world_size"] == 1 for m in metrics_in_bucket(s3, run)))
            wait_for("a checkpoint of the one-worker run", one_worker_checkpointed, 120, proc, log)
            os.kill(pid, signal.SIGSTOP)   # holds the lone worker until Ray has grown the group
            try:
                with ray_worker_node(head.address):   # a replacement node joins
                    grown = re.compile(r"ddp x2 on cpu: .* resumed from .* at step (\d+) ")
                    wait_for("the run to grow back to two workers", lambda: any(
                        int(n) > resumed_at for n in grown.findall(log.read_text())), 300, proc, log)
                    proc.wait(timeout=300)
            finally:
                with contextlib.suppress(ProcessLookupError):   # Ray killed it when it resized the group
                    os.kill(pid, signal.SIGCONT)
    text = log.read_text()
    assert proc.returncode == 0, text[-4000:]
    metrics = metrics_in_bucket(s3, run)
    record = [(m["step"], m["world_size"], m["resumed_from_step"]) for m in metrics]
    # attempts: each restart's lines carry the step it resumed from
    attempts = [[metrics[0]]]
    for m in metrics[1:]:
        (attempts[-1].append(m) if m["resumed_from_step"] == attempts[-1][-1]["resumed_from_step"]
         else attempts.append([m]))
    assert all(a[i]["step"] < a[i + 1]["step"] for a in attempts for i in range(len(a) - 1)), record
    resumes = list(dict.fromkeys(int(line.split(" at step ")[1].split()[0]) for line in text.splitlines()
                                 if "steps in all; resumed from" in line))
    assert len(attempts) >= 3 and len(resumes) >= len(attempts) - 1, (resumes, record)
    assert sorted({m["step"] for m in metrics}) == list(range(5, STEPS + 5, 5)), record   # no gap
    # each attempt started from a checkpoint of the one before it: at most one interval (10 steps) back, or two
    # when the latest checkpoint was still uploading (asynchronously, one upload at a time) at the loss
    for before, after in zip(attempts, attempts[1:]):
        start = after[0]["step"] - 5
        assert start == after[0]["resumed_from_step"], record
        assert start % 10 == 0 and before[-1]["step"] - 20 <= start <= before[-1]["step"], record
    # the first restart lost nothing that was complete in the bucket at the loss, whether Ray had registered it
    # or not (the lost node's worker may outlive its raylet for a moment and add a checkpoint)
    assert attempts[1][0]["resumed_from_step"] >= newest >= 20, (newest, record)
    sizes = [{m["world_size"] for m in attempt} for attempt in attempts]
    assert sizes[0] == {2} and {1} in sizes[1:-1] and sizes[-1] == {2}, record   # shrank, then grew back
    starts = list(dict.fromkeys(line for line in text.splitlines() if "steps in all;" in line))
    assert "fresh start" in starts[0] and sum("fresh start" in line for line in starts) == 1, starts
    keys = s3.keys(run)
    assert f"checkpoint_{STEPS:09d}/model.pt" in keys and "samples/latest.png" in keys
    # the summary: the last checkpoint and the images of the steps that made the final weights (each logged step
    # by the last attempt that ran it: 5 steps at that attempt's world size, batch 1)
    last_run = {m["step"]: m["world_size"] for m in metrics}
    summary = json.loads(s3.read(f"{run}/summary.json"))
    assert summary["images_seen"] == sum(5 * w for w in last_run.values()), (summary, record)
    assert summary["latest_checkpoint"].endswith(f"checkpoint_{STEPS:09d}"), summary
    assert f"latest checkpoint  {run}/checkpoint_{STEPS:09d}" in text
    assert any(k.startswith("tensorboard/events.out.tfevents") for k in keys)
    assert s3.secret not in text



TUNE_STEPS = 60
TUNE_SPACE = {
    "search": "grid",
    "max_concurrent_trials": 1,
    "scheduler": {"type": "fifo"},
    "fixed": {"eval.enabled": True, "eval.every": 0, "eval.max_images": 4, "eval.batch_size": 4,
              "optim.epochs": 40, "optim.epochs_decay": 0, "optim.max_steps": TUNE_STEPS, "train.num_workers": 1,
              "checkpoint.every_steps": 10, "checkpoint.max_failures": 2, "checkpoint.num_to_keep": 2,
              "checkpoint.upload": "sync",   # the strict bound: a lost node redoes at most one interval
              "logging.every_steps": 5, "logging.sample_every_steps": 1000, "logging.tensorboard": False},
    "params": {"optim.lr": {"grid": [2.0e-4]}},
}


def trial_runs(s3, sweep: str) -> list[str]:
    """The trials' run directories under ``<sweep>/runs`` in the bucket."""
    return sorted({f"{sweep}/runs/{k.split('/')[0]}" for k in s3.keys(f"{sweep}/runs") if "/" in k})


def trial_placements(address: str, n: int) -> list[str]:
    """Where ``n`` placement groups of a trial's resources land, one after the other: "head" or "worker"."""
    import ray
    from ray.tune.execution.placement_groups import resource_dict_to_pg_factory
    from ray.util.placement_group import remove_placement_group

    from cutdist.tune.trial import trial_resources

    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    try:
        heads = {node["NodeID"] for node in ray.nodes() if node["Alive"] and "node:__internal_head__" in
                 node["Resources"]}
        out = []
        for _ in range(n):
            pg = resource_dict_to_pg_factory(trial_resources()).to_placement_group()
            ray.get(pg.ready(), timeout=60)
            out.append("head" if ray.util.placement_group_table(pg)["bundles_to_node_id"][0] in heads else "worker")
            remove_placement_group(pg)
        return out
    finally:
        ray.shutdown()


def test_lost_node_of_a_tune_trial(s3, head, shards, tmp_path):
    """A sweep (directory in the bucket) whose one trial trains on a worker node; the node is lost once
    checkpoint 20 of the trial is in the bucket, a replacement joins; the trial resumes from its newest
    checkpoint in the bucket and the sweep ends with it TERMINATED on the leaderboard."""
    import pandas as pd
    import yaml

    sweeps = s3.bucket("cluster-sweeps") + "/tune"
    sweep = f"{sweeps}/lost"
    space_file = tmp_path / "space.yaml"
    space_file.write_text(yaml.safe_dump(TUNE_SPACE))
    log = tmp_path / "sweep.log"
    cmd = [sys.executable, "-m", "cutdist.tune", "--config", "jobs/smoke.yaml", "--space", str(space_file),
           "--name", "lost", f"data.root={shards}", f"storage_path={sweeps}"]
    env = driver_env(head.address)
    with ray_worker_node(head.address) as node:   # the only node with a CPU: the trial's worker lands there
        # the trial's actor (and so its trainer's controller) goes to the head, not to the node about to be lost
        assert trial_placements(head.address, 4) == ["head"] * 4
        with running_driver(cmd, log, env) as proc:
            def checkpoint_20():
                runs = trial_runs(s3, sweep)
                return len(runs) == 1 and (complete_checkpoints(s3, runs[0]) or [0])[-1] >= 20
            wait_for("checkpoint 20 of the trial in the bucket", checkpoint_20, 300, proc, log)
            (run,) = trial_runs(s3, sweep)
            node.kill()
            newest = complete_checkpoints(s3, run)[-1]
            with ray_worker_node(head.address):   # a replacement node joins
                proc.wait(timeout=300)
    text = log.read_text()
    assert proc.returncode == 0, text[-4000:]
    metrics = metrics_in_bucket(s3, run)
    record = [(m["step"], m["resumed_from_step"]) for m in metrics]
    steps = [m["step"] for m in metrics]
    assert sorted(set(steps)) == list(range(5, TUNE_STEPS + 5, 5)), record   # no gap
    resumes = sorted({m["resumed_from_step"] for m in metrics})
    assert resumes[0] == 0 and len(resumes) >= 2, record   # a fresh start, then at least one resume
    restart = next(i for i, m in enumerate(metrics) if m["resumed_from_step"] != 0)
    start = metrics[restart]["resumed_from_step"]
    # the resume started from the newest checkpoint complete in the bucket at the loss (or a later one the lost
    # worker finished), at most one interval back (checkpoint.upload sync: every reported checkpoint is in the
    # bucket before training goes on), and repeats nothing before it
    assert start >= newest >= 20 and start % 10 == 0 and metrics[restart - 1]["step"] - 10 <= start, record
    assert metrics[restart]["step"] == start + 5 and all(m["step"] > start for m in metrics[restart:]), record
    assert all(a["step"] < b["step"] for a, b in zip(metrics[restart:], metrics[restart + 1:])), record
    assert "fresh start" in text and f"resumed from {run}/checkpoint_{start:09d} at step {start}" in text
    assert s3.secret not in text
    local = tmp_path / "leaderboard.parquet"
    local.write_bytes(s3.read(f"{sweep}/leaderboard.parquet"))
    board = pd.read_parquet(local)
    assert list(board["status"]) == ["TERMINATED"], board.to_string()
    row = board.iloc[0]
    assert row.steps_reached == row.planned_steps == TUNE_STEPS and row.evaluations == 1, board.to_string()
