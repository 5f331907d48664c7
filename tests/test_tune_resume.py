"""A sweep resumed after its driver died, without a cluster: what a restarted trial reports before its run goes
on, and what ASHA decides on it.

The case seen once in tests/test_tune_sweep.py: lr 2e-4 and lr 1e-4 reached ASHA's first rung (epoch 1) in the
same second, 1e-4 was stopped there, and the driver was killed while 2e-4 went on. Tune had last saved the sweep
(experiment state, result.json) with 2e-4 RUNNING and its epoch-1 result only; by the kill its run had trained to
the end and written checkpoint_000000008 with the epoch-2 FID, whose report died with the driver. Resumed, the
trial's run found itself at its end and reported nothing, so the trial ended with one result, STOPPED_EARLY at
epoch 1, although ASHA had let it continue. Here the trial's run is a stub that, like the real one at its end,
reports nothing; the run directory and result.json are what the killed sweep left.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from cutdist.train.checkpoint import METRICS_FILE, MODEL_FILE, TRAIN_STATE_FILE, TRAIN_STATE_FORMAT, checkpoint_dir_name
from cutdist.train.launcher import run_dir
from cutdist.tune.asha import ResumableASHA
from cutdist.tune.records import PROGRESS_FILE, RESULT_FILE, KeepTrialRecords, record_of
from cutdist.tune.results import STOPPED_EARLY, TERMINATED, summarise
from cutdist.tune.space import MODE, parse_space
from cutdist.tune.trial import lost_results, run_trial, trial_job

ROOT = Path(__file__).resolve().parents[1]
SPACE = {
    "search": "grid",
    "scheduler": {"type": "asha", "time_attr": "epoch", "grace_period": 1, "max_t": 2, "reduction_factor": 2},
    "fixed": {"eval.enabled": True, "eval.every": 1, "optim.epochs": 2, "optim.epochs_decay": 0,
              "optim.max_steps": 0, "train.num_workers": 1},
    "params": {"optim.lr": {"grid": [2.0e-4, 1.0e-4]}},
}
BEST, STOPPED = "t_00000", "t_00001"   # lr 2e-4 (went on at the first rung), lr 1e-4 (stopped there)


@pytest.fixture
def space():
    return parse_space(SPACE, yaml.safe_load((ROOT / "jobs" / "smoke.yaml").read_text()), {"data.root": "unused"})


def fid_result(step: int, fid: float, run: str) -> dict:
    """A report as the trainer makes it at an FID evaluation (4 steps per epoch) and writes it in its checkpoint."""
    return {"step": step, "epoch": step / 4, "fid": fid, "fid_backbone": "RANDOM-INIT-INCEPTION(seed=0)",
            "fid_real": False, "ckpt_fid": fid, "resumed_from_step": 0,
            "checkpoint_path": f"{run}/{checkpoint_dir_name(step)}"}


def write_checkpoint(run: str, result: dict, *, complete: bool = True) -> None:
    ckpt = Path(run) / checkpoint_dir_name(result["step"])
    ckpt.mkdir(parents=True)
    torch.save({"g": {}, "d": {}, "f": {}}, ckpt / MODEL_FILE)
    if complete:
        torch.save({"format": TRAIN_STATE_FORMAT, "step": result["step"]}, ckpt / TRAIN_STATE_FILE)
    (ckpt / METRICS_FILE).write_text(json.dumps({k: v for k, v in result.items() if k != "checkpoint_path"}))


def save_tune_record(sweep_dir: Path, trial_id: str, results: list[dict]) -> None:
    """The trial's result.json and progress.csv as Tune logged them (training_iteration etc. added) in
    ``sweep_dir`` (the sweep directory, or the driver's staging directory)."""
    trial_dir = sweep_dir / f"trial_{trial_id}"
    trial_dir.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({**r, "training_iteration": i + 1, "done": False}) for i, r in enumerate(results)]
    (trial_dir / RESULT_FILE).write_text("".join(line + "\n" for line in lines))
    (trial_dir / PROGRESS_FILE).write_text("step,fid\n" + "".join(f"{r['step']},{r['fid']}\n" for r in results))


def tune_trial(sweep_dir: Path, trial_id: str, staging: Path | None = None, *, reported: bool = True):
    """What the restored driver knows of a trial: its directory in the sweep and in its staging directory."""
    import pyarrow.fs

    return SimpleNamespace(trial_id=trial_id, has_reported_at_least_once=reported,
                           path=str(sweep_dir / f"trial_{trial_id}"),
                           local_path=str((staging or sweep_dir.parent / "staging") / f"trial_{trial_id}"),
                           storage=SimpleNamespace(storage_filesystem=pyarrow.fs.LocalFileSystem()))


def killed_sweep(tmp_path, space) -> tuple[Path, dict[str, str], dict[str, list[dict]]]:
    sweep_dir = tmp_path / "sweeps" / "lr-grid"
    runs = {tid: run_dir(trial_job(space, {"optim.lr": lr}, str(sweep_dir), tid))
            for tid, lr in ((BEST, 2.0e-4), (STOPPED, 1.0e-4))}
    ran = {BEST: [fid_result(4, 442.48, runs[BEST]), fid_result(8, 446.32, runs[BEST])],
           STOPPED: [fid_result(4, 449.07, runs[STOPPED])]}
    for tid, results in ran.items():
        for result in results:
            write_checkpoint(runs[tid], result)
    save_tune_record(sweep_dir, BEST, ran[BEST][:1])   # the epoch-2 report died with the driver
    save_tune_record(sweep_dir, STOPPED, ran[STOPPED])
    return sweep_dir, runs, ran


def restored_asha(sweep_dir: Path, trial_ids: list[str], staging: Path | None = None) -> tuple[ResumableASHA, dict]:
    """ASHA as ``Tuner.restore`` rebuilds it: each trial added back (and its record replayed), in order."""
    asha = ResumableASHA(time_attr="epoch", grace_period=1, max_t=2, reduction_factor=2)
    asha.set_search_properties("fid", MODE)
    trials = {tid: tune_trial(sweep_dir, tid, staging) for tid in trial_ids}
    for trial in trials.values():
        asha.on_trial_add(None, trial)
    return asha, trials


def resumed_trial_stream(monkeypatch, space, sweep_dir: Path, trial_id: str, lr: float, run_reports=()) -> list:
    """What the restarted trial hands Tune: its own ``ray.tune.report`` calls, ``"fit"`` when its run starts,
    then what its FidReportCallback forwards of the run's ``run_reports`` (none: the run was at its end)."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    import cutdist.data
    import cutdist.train.launcher

    stream: list = []

    def outside_a_tune_session(callback):   # the real one needs the trial actor's session queue
        callback._training_actor_item_queue = SimpleNamespace(put=stream.append)

    def trainer(cfg, splits, *, resume_from, callbacks):
        def fit():
            stream.append("fit")
            for metrics in run_reports:
                callbacks[0].after_report(None, [metrics], None)
        return SimpleNamespace(fit=fit)

    monkeypatch.setattr(ray.tune, "get_context", lambda: SimpleNamespace(get_trial_id=lambda: trial_id))
    monkeypatch.setattr(ray.tune, "report", lambda metrics, **kwargs: stream.append(dict(metrics)))
    monkeypatch.setattr(TuneReportCallback, "__init__", outside_a_tune_session)
    monkeypatch.setattr(cutdist.data, "resolve_splits", lambda data: None)
    monkeypatch.setattr(cutdist.train.launcher, "build_trainer", trainer)
    run_trial({"optim.lr": lr}, space=space, sweep_dir=str(sweep_dir))
    return stream


def test_a_trial_whose_last_fid_the_killed_driver_lost_reports_it_on_resume(tmp_path, monkeypatch, space):
    sweep_dir, runs, ran = killed_sweep(tmp_path, space)
    stream = resumed_trial_stream(monkeypatch, space, sweep_dir, BEST, 2.0e-4)
    # the epoch-2 FID, with its checkpoint, numbered after the saved one, before the run goes on
    assert stream == [{**ran[BEST][1], "training_iteration": 2}, "fit"]

    asha, trials = restored_asha(sweep_dir, [BEST, STOPPED])
    decisions = [asha.on_trial_result(None, trials[BEST], r) for r in stream if r != "fit"]
    assert decisions == ["STOP"]   # max_t reached: trained to its end, as without the kill

    class Result:   # what Tune's ResultGrid holds for the trial once the resumed sweep ends
        def __init__(self, tid, rows, lr):
            import pandas as pd

            self.path, self.config, self.error = str(sweep_dir / f"trial_{tid}"), {"optim.lr": lr}, None
            self.metrics_dataframe = pd.DataFrame(rows)

    saved = [json.loads(line) for line in (sweep_dir / f"trial_{BEST}" / RESULT_FILE).read_text().splitlines()]
    board = summarise([Result(BEST, saved + stream[:-1], 2.0e-4), Result(STOPPED, ran[STOPPED], 1.0e-4)], space,
                      lambda cfg: 8, str(sweep_dir), {BEST: "TERMINATED", STOPPED: "TERMINATED"})
    by_id = {s.trial_id: s for s in board}
    assert (by_id[BEST].status, by_id[BEST].evaluations, by_id[BEST].epochs_reached) == (TERMINATED, 2, 2.0)
    assert by_id[BEST].best_checkpoint == ran[BEST][0]["checkpoint_path"]   # FID 442 at epoch 1
    assert by_id[STOPPED].status == STOPPED_EARLY


def test_a_lost_first_fid_reaches_the_first_rung_and_nothing_past_the_resume_point_is_reported(
        tmp_path, monkeypatch, space):
    sweep_dir = tmp_path / "sweep"
    cfg = trial_job(space, {"optim.lr": 2.0e-4}, str(sweep_dir), BEST)
    run = run_dir(cfg)
    first, second = fid_result(4, 449.07, run), fid_result(8, 451.41, run)
    write_checkpoint(run, first)
    write_checkpoint(run, second, complete=False)   # cut short by the kill: the run resumes from step 4
    # no result.json at all: the driver died before it first saved the sweep
    assert lost_results(cfg, str(sweep_dir), BEST) == (0, [{**first, "training_iteration": 1}])
    # the run then measures epoch 2 again: Tune's iteration count follows on (it would restart at 1)
    interval = {"step": 6, "epoch": 1.5, "loss_g_total": 3.0}   # a report without FID: not forwarded
    stream = resumed_trial_stream(monkeypatch, space, sweep_dir, BEST, 2.0e-4, [interval, second])
    assert stream == [{**first, "training_iteration": 1}, "fit", {**second, "training_iteration": 2}]
    save_tune_record(sweep_dir, BEST, [first])
    assert lost_results(cfg, str(sweep_dir), BEST) == (1, [])   # what Tune has is never reported twice


def test_a_replayed_rung_does_not_judge_its_trial_again(tmp_path, space):
    """A trial restarted from before a rung it had passed reports that epoch again: the rung holds the trial's
    own value from the replay, so it is not judged there again (it would be stopped: 449 is the worse half)."""
    sweep_dir = tmp_path / "sweep"
    save_tune_record(sweep_dir, STOPPED, [fid_result(4, 449.07, "r1")])   # reached the rung first: went on
    save_tune_record(sweep_dir, BEST, [fid_result(4, 442.48, "r0")])
    asha, trials = restored_asha(sweep_dir, [STOPPED, BEST])
    assert asha.on_trial_result(None, trials[STOPPED], fid_result(4, 449.07, "r1")) == "CONTINUE"
    rung = dict(asha._brackets[0]._rungs)[1]
    assert rung == {STOPPED: -449.07, BEST: -442.48}   # one value per trial, the replayed ones
    assert math.isclose(asha._brackets[0].cutoff(rung), -445.775)


def test_a_resumed_trial_goes_on_from_the_fullest_record_in_both_places(tmp_path, space):
    """Tune logs in a staging directory and copies it into the sweep directory every ~10 s. A new Ray session
    has no staging copy: Tune would start the trial's files empty and overwrite the sweep's copies with them. In
    the dead driver's Ray session the staging copy also holds what was logged after the last copy."""
    sweep_dir, staging = tmp_path / "sweep", tmp_path / "staging"
    cfg = trial_job(space, {"optim.lr": 2.0e-4}, str(sweep_dir), BEST)
    run = run_dir(cfg)
    first, second = fid_result(4, 442.48, run), fid_result(8, 446.32, run)
    for result in (first, second):
        write_checkpoint(run, result)
    save_tune_record(sweep_dir, BEST, [first])
    keep = KeepTrialRecords()

    keep.on_trial_start(0, [], tune_trial(sweep_dir, BEST, staging))   # a new Ray session: no staging copy
    for name in (RESULT_FILE, PROGRESS_FILE):
        assert (staging / f"trial_{BEST}" / name).read_bytes() == (sweep_dir / f"trial_{BEST}" / name).read_bytes()
    assert [r["step"] for r in record_of(tune_trial(sweep_dir, BEST, staging))] == [4]
    assert lost_results(cfg, str(sweep_dir), BEST) == (1, [{**second, "training_iteration": 2}])

    save_tune_record(staging, BEST, [first, second])   # the same session: the dead driver had logged step 8
    asha, trials = restored_asha(sweep_dir, [BEST], staging)
    assert dict(asha._brackets[0]._rungs)[2] == {BEST: -446.32}   # replayed from the staging copy
    keep.on_trial_start(0, [], trials[BEST])
    assert (sweep_dir / f"trial_{BEST}" / RESULT_FILE).read_bytes() == \
        (staging / f"trial_{BEST}" / RESULT_FILE).read_bytes()
    assert lost_results(cfg, str(sweep_dir), BEST) == (2, [])   # step 8 is in the record: not reported twice

    new = tune_trial(sweep_dir, STOPPED, staging, reported=False)
    keep.on_trial_start(0, [], new)   # a trial starting for the first time: nothing to keep
    assert not Path(new.local_path).exists() and not Path(new.path).exists()
