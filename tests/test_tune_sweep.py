"""A real sweep: ``python -m cutdist.tune`` on a `ray start` head (2 CPUs), killed mid-sweep and resumed.

The space is a grid over the learning rate of the smoke job (1 worker, 4 synthetic images per domain at 32 px,
2 epochs, FID after each with the random-init Inception), 2 trials at a time, ASHA with its first rung at the
first FID:
- 2e-4 (the paper's) and 1e-4 train normally and start together: the first to reach the first rung trains to
  the end, the other may be stopped there;
- 0.05 diverges to an FID hundreds of times worse; it starts after one of those ended, i.e. after the first
  rung has a record, so ASHA stops it there;
- 1e30 overflows the weights to NaN within a few steps, so its first FID cannot be computed
  ("frechet_distance: mu1 has non-finite values"): a value that config validation accepts (lr > 0, finite)
  and that fails at run time. It is recorded as ERROR while the others finish.
The driver is SIGKILLed once Tune has saved a finished trial, then ``--resume`` finishes the sweep: finished
trials are not run again, and ASHA's rungs are rebuilt from the saved results.
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
from ray_head import ray_head
import yaml

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
LRS = [2.0e-4, 1.0e-4, 0.05, 1.0e30]
SPACE = {
    "search": "grid",
    "max_concurrent_trials": 2,
    "scheduler": {"type": "asha", "time_attr": "epoch", "grace_period": 1, "max_t": 2, "reduction_factor": 2},
    "fixed": {"eval.enabled": True, "eval.every": 1, "eval.max_images": 4, "eval.batch_size": 4,
              "optim.epochs": 2, "optim.epochs_decay": 0, "optim.max_steps": 0, "train.num_workers": 1,
              "checkpoint.every_steps": 1000, "logging.every_steps": 1000, "logging.sample_every_steps": 1000,
              "logging.tensorboard": False},
    "params": {"optim.lr": {"grid": LRS}},
}


@pytest.fixture(scope="module")
def head():
    """`ray start --head --block` on 127.0.0.1 with 2 CPUs, its own ports and temp dir; stopped by its pid."""
    with ray_head("cdt", worker_ports=(40000, 60000)) as started:
        yield started.address


def cli_env(address: str) -> dict[str, str]:
    return {**os.environ, "RAY_ADDRESS": address, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}


def trial_states(sweep_dir: Path) -> dict[str, str]:
    """{trial id: status} from the newest experiment state Tune saved ({} before the first)."""
    states = sorted(sweep_dir.glob("experiment_state-*.json"))
    try:
        data = json.loads(states[-1].read_text())
    except (IndexError, OSError, ValueError):
        return {}
    out = {}
    for trial_json, _ in data["trial_data"]:
        trial = json.loads(trial_json)
        out[trial["trial_id"]] = trial["status"]
    return out


def result_lines(sweep_dir: Path, trial_id: str) -> int:
    path = sweep_dir / f"trial_{trial_id}" / "result.json"
    return len(path.read_text().splitlines()) if path.is_file() else 0


@pytest.fixture(scope="module")
def sweep(head, tmp_path_factory):
    from cutdist.data.synth import write_synth_dataset

    work = tmp_path_factory.mktemp("tune")
    shards = write_synth_dataset(work / "shards", size=32, count=4, test_count=4, seed=0)
    space_file = work / "lr_grid.yaml"
    space_file.write_text(yaml.safe_dump(SPACE))
    sweep_dir = work / "sweeps" / "lr-grid"
    cmd = [sys.executable, "-m", "cutdist.tune", "--config", "jobs/smoke.yaml", "--space", str(space_file),
           "--name", "lr-grid", f"data.root={shards}", f"storage_path={work / 'sweeps'}"]
    first_log = work / "first.log"
    with first_log.open("w") as log:
        driver = subprocess.Popen(cmd, cwd=ROOT, env=cli_env(head), stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        deadline = time.time() + 420
        while "TERMINATED" not in trial_states(sweep_dir).values():
            assert driver.poll() is None, f"the sweep ended before the kill:\n{first_log.read_text()[-4000:]}"
            assert time.time() < deadline, f"no finished trial in 420 s:\n{first_log.read_text()[-4000:]}"
            time.sleep(0.5)
        at_kill = trial_states(sweep_dir)
        lines_at_kill = {tid: result_lines(sweep_dir, tid) for tid in at_kill}
        os.killpg(driver.pid, signal.SIGKILL)   # the driver dies: its trials' actors and workers go with it
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)

    resumed = subprocess.run([sys.executable, "-m", "cutdist.tune", "--resume", str(sweep_dir)], cwd=ROOT,
                             env=cli_env(head), capture_output=True, text=True, timeout=600)
    return {"dir": sweep_dir, "at_kill": at_kill, "lines_at_kill": lines_at_kill, "resumed": resumed,
            "shards": shards, "work": work}


@pytest.fixture(scope="module")
def board(sweep):
    import pandas as pd

    assert sweep["resumed"].returncode == 0, sweep["resumed"].stdout[-4000:] + sweep["resumed"].stderr[-4000:]
    return pd.read_parquet(sweep["dir"] / "leaderboard.parquet")


def test_resume_after_the_driver_was_killed_finishes_the_sweep(sweep, board):
    resumed, at_kill = sweep["resumed"], sweep["at_kill"]
    assert resumed.stdout.strip().splitlines()[-1] == str(sweep["dir"])   # the last line is the sweep dir
    unfinished = [tid for tid, status in at_kill.items() if status not in ("TERMINATED", "ERROR")]
    assert unfinished, f"the driver was killed with nothing left to do: {at_kill}"
    assert set(at_kill) <= set(board["trial_id"]) and len(board) == len(LRS)   # trials are created lazily
    for tid, status in at_kill.items():   # what had finished was not run again
        if status in ("TERMINATED", "ERROR"):
            assert result_lines(sweep["dir"], tid) == sweep["lines_at_kill"][tid], tid
    assert set(board["status"]) <= {"TERMINATED", "STOPPED_EARLY", "ERROR"}


def test_leaderboard_asha_stop_and_failed_trial(sweep, board):
    import pandas as pd

    assert len(board) == len(LRS)
    by_lr = {float(row["optim.lr"]): row for _, row in board.iterrows()}
    assert sorted(by_lr) == sorted(LRS)
    # the first of 2e-4 / 1e-4 to reach the first rung has nothing to be compared with, so it trains to the end
    sane = [by_lr[2.0e-4], by_lr[1.0e-4]]
    assert {row["status"] for row in sane} <= {"TERMINATED", "STOPPED_EARLY"}, board.to_string()
    finished = [row for row in sane if row["status"] == "TERMINATED"]
    assert finished, board.to_string()
    for row in finished:
        assert (row["epochs_reached"], row["evaluations"], row["steps_reached"]) == (2.0, 2, row["planned_steps"])
    diverged = by_lr[0.05]
    assert diverged["status"] == "STOPPED_EARLY", board.to_string()
    assert diverged["epochs_reached"] == 1.0 and diverged["steps_reached"] < diverged["planned_steps"]
    assert diverged["best_fid"] > 10 * max(row["best_fid"] for row in sane)
    overflow = by_lr[1.0e30]
    assert overflow["status"] == "ERROR" and "non-finite" in overflow["error"], overflow["error"]
    assert pd.isna(overflow["best_fid"]) and overflow["evaluations"] == 0
    scored = board[board["status"] != "ERROR"]
    assert list(board["rank"]) == list(range(1, len(LRS) + 1))
    assert list(scored["best_fid"]) == sorted(scored["best_fid"]) and board.iloc[0]["status"] != "ERROR"
    assert all(label.startswith("RANDOM-INIT-INCEPTION") for label in scored["fid_backbone"])
    assert not scored["fid_real"].any()
    for path in scored["best_checkpoint"]:
        assert (Path(path) / "model.pt").is_file(), path
    csv = pd.read_csv(sweep["dir"] / "leaderboard.csv")
    assert list(csv["trial_id"]) == list(board["trial_id"]) and list(csv["status"]) == list(board["status"])


def test_plot_is_a_valid_png(sweep, board):
    from PIL import Image

    path = sweep["dir"] / "fid_vs_hparams.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.load()
        assert image.width > 200 and image.height > 200


def test_best_config_runs_with_cutdist_train(sweep, board, head):
    from cutdist import config

    best = sweep["dir"] / "best_config.yaml"
    cfg = config.load(best)
    assert cfg.optim.lr == float(board.iloc[0]["optim.lr"])
    assert cfg.data.root == str(sweep["shards"]) and cfg.eval.inception_weights == "random"
    runs = sweep["work"] / "best_runs"
    proc = subprocess.run([sys.executable, "-m", "cutdist.train", "--config", str(best), "optim.max_steps=2",
                           "eval.enabled=false", f"storage_path={runs}"], cwd=ROOT, env=cli_env(head),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[cutdist.train] done" in proc.stdout
    assert (runs / cfg.name / "checkpoint_000000002" / "model.pt").is_file()
