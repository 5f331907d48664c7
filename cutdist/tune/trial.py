"""One sweep trial: a Ray Tune function trainable that runs one full distributed training job (a TorchTrainer).

Per trial: the trial's job = base job + the space's fixed values + command-line overrides + the sampled values
(``Space.trial_config``), named ``<trial id>`` under ``<sweep dir>/runs`` (so a restarted trial finds its own
Ray Train run and resumes it from its last checkpoint), built by ``cutdist.train.launcher.build_trainer``
with ``FidReportCallback``: the workers' evaluation reports (those carrying ``fid``) reach Tune, one Tune
result per FID evaluation, with ``checkpoint_path`` the checkpoint measured with that FID; and with
``cutdist.tune.cleanup.RecordPlacementGroup``, so the driver can free the workers of a stopped trial.

A resumed trial first reports what its run measured and the sweep lost (``lost_results``), then trains on.

Resources: the trial itself only waits on its TorchTrainer, so it reserves no CPU, only ``TRIAL_MEMORY`` bytes
of memory (a Tune placement group needs some resource), on the head node (``HEAD_RESOURCE``): Ray starts the
trainer's controller on the trial actor's node, and a trial actor on a worker node would die with that node,
failing the trial (seen: with a CPU-less head and two worker nodes, 5 of 8 such placement groups went to a worker
node). On the head, a lost worker node only takes training workers, which the trainer restarts
(``checkpoint.max_failures``) from the newest complete checkpoint in the run directory. The trainer's workers
ask for the job's ``train.num_workers`` x ``train.resources_per_worker`` as usual. ``trials_that_fit`` says how
many trials the cluster can hold at once.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from cutdist.config import JobConfig, worker_range
from cutdist.train.launcher import worker_resources
from cutdist.tune.space import Space

TRIAL_MEMORY = 256 * 1024 * 1024
HEAD_RESOURCE = "node:__internal_head__"   # 1.0 on the head node only (Ray's own state actors use it the same way)
RUNS_DIR = "runs"


def trial_resources() -> dict[str, float]:
    return {"cpu": 0, "memory": TRIAL_MEMORY, HEAD_RESOURCE: 0.001}


def trials_that_fit(cfg: JobConfig, cluster: dict[str, float]) -> int:
    """How many trials of this job the cluster's current resources hold at once (0: not even one)."""
    per_trial = {k: v * worker_range(cfg.train)[1] for k, v in worker_resources(cfg).items() if v > 0}
    per_trial["memory"] = per_trial.get("memory", 0.0) + TRIAL_MEMORY
    fits = [math.floor(cluster.get(k, 0.0) / v + 1e-9) for k, v in per_trial.items()]
    return max(0, min(fits))


def runs_dir(sweep_dir: str) -> str:
    return f"{sweep_dir.rstrip('/')}/{RUNS_DIR}"


def trial_job(space: Space, sampled: dict[str, Any], sweep_dir: str, trial_id: str) -> JobConfig:
    """The trial's job, placed at ``<sweep_dir>/runs/<trial_id>`` (its Ray Train run and logs)."""
    cfg = space.trial_config(sampled)
    cfg.name = trial_id
    cfg.storage_path = runs_dir(sweep_dir)
    return cfg


def lost_results(cfg: JobConfig, sweep_dir: str, trial_id: str) -> tuple[int, list[dict[str, Any]]]:
    """How many FID results the sweep has recorded for a trial, and those of its Ray Train run that it has not,
    oldest first: one per FID checkpoint in the run directory after the last step in the trial's
    ``result.json`` (the sweep's record, ``cutdist.tune.records``) and up to the newest complete checkpoint (the
    one the run resumes from), each as the trainer reported it, numbered (``training_iteration``) after the
    recorded ones.

    A result reaches the sweep's record only once the driver has logged it: a report still on its way from the
    trial's run (from the Ray Train controller through the trial's actor) dies with a killed driver, and so does
    what it logged after its last save of the sweep (~every 10 s) when the resumed driver is in another Ray
    session or on another node; the checkpoints those FIDs were measured with are already in the run directory,
    and the resumed run goes on from its newest one and never measures them again. Seen: a trial whose run had
    reached its end with its last FID on the way ended with its epoch-1 result only (STOPPED_EARLY at epoch 1,
    after ASHA had let it continue); a trial whose first FID was lost would pass ASHA's first rung without being
    judged there. Reported before the run resumes, they reach the scheduler, the searcher and ``result.json`` as
    they would have."""
    import pyarrow.fs as pafs
    from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY
    from ray.tune.result import TRAINING_ITERATION

    from cutdist import storage
    from cutdist.train.checkpoint import (MODEL_FILE, TRAIN_STATE_FILE, checkpoint_step, checkpoints_in,
                                          newest_complete_checkpoint, read_metrics_in)
    from cutdist.train.launcher import run_dir
    from cutdist.tune.records import stored_results
    from cutdist.tune.results import TRIAL_DIR_PREFIX

    recorded = [r for r in stored_results(storage.join(sweep_dir, f"{TRIAL_DIR_PREFIX}{trial_id}")) if "fid" in r]
    last = max((r["step"] for r in recorded if isinstance(r.get("step"), (int, float))), default=-1)
    fs, run_path = storage.filesystem(run_dir(cfg))

    def exists(path: str) -> bool:
        return fs.get_file_info(path).type != pafs.FileType.NotFound

    candidates = []
    for step, path in checkpoints_in(fs, run_path):
        if step <= last or not all(exists(f"{path}/{name}") for name in (MODEL_FILE, TRAIN_STATE_FILE)):
            continue
        metrics = read_metrics_in(fs, path)
        if "fid" in metrics:   # what FidReportCallback forwards
            candidates.append((step, path, metrics))
    if not candidates:
        return len(recorded), []
    newest = newest_complete_checkpoint(fs, run_path)
    newest_step = checkpoint_step(Path(newest[1]).name) if newest else -1
    lost = [{**metrics, CHECKPOINT_PATH_KEY: path} for step, path, metrics in candidates if step <= newest_step]
    return len(recorded), [{**r, TRAINING_ITERATION: len(recorded) + i + 1} for i, r in enumerate(lost)]


def make_fid_report_callback(reported_before: int = 0):
    """A ``TuneReportCallback`` that forwards only the reports carrying an FID (one Tune result per evaluation),
    so the scheduler sees the metric in every result and ``training_iteration`` counts evaluations: numbered
    after the ``reported_before`` ones the sweep has recorded (Tune counts a resumed trial's results from 1 again,
    having no Tune checkpoint of it, which would put ASHA with ``time_attr: training_iteration`` on the wrong
    rungs)."""
    from ray.tune.integration.ray_train import TuneReportCallback
    from ray.tune.result import TRAINING_ITERATION

    class FidReportCallback(TuneReportCallback):
        def __init__(self, reported: int) -> None:
            super().__init__()
            self.reported = reported

        def after_report(self, run_context, metrics, checkpoint):
            if metrics and "fid" in metrics[0]:
                self.reported += 1
                metrics = [{**metrics[0], TRAINING_ITERATION: self.reported}, *metrics[1:]]
                super().after_report(run_context, metrics, checkpoint)

    return FidReportCallback(reported_before)


def run_trial(sampled: dict[str, Any], *, space: Space, sweep_dir: str) -> None:
    """The Tune function trainable: build the trial's job and run its TorchTrainer to the end (or until the
    scheduler stops the trial). A training failure raises, so Tune records the trial as ERROR."""
    import ray.tune

    from cutdist.data import resolve_splits
    from cutdist.train.checkpoint import resolve_resume
    from cutdist.train.launcher import build_trainer, run_dir
    from cutdist.train.logger import say
    from cutdist.tune.cleanup import PG_FILE, RecordPlacementGroup

    trial_id = ray.tune.get_context().get_trial_id()
    cfg = trial_job(space, sampled, sweep_dir, trial_id)
    recorded, lost = lost_results(cfg, sweep_dir, trial_id)
    for result in lost:   # the scheduler may stop the trial on one of them
        say(f"[cutdist.tune] trial {trial_id}: reporting again the FID {result['fid']:.4f} at step "
            f"{result.get('step')} (checkpoint {result['checkpoint_path']}): the sweep's record lacks it (its "
            "driver died before logging it)")
        ray.tune.report(result)
    splits = resolve_splits(cfg.data)
    callbacks = [make_fid_report_callback(recorded + len(lost)), RecordPlacementGroup(f"{run_dir(cfg)}/{PG_FILE}")]
    trainer = build_trainer(cfg, splits, resume_from=resolve_resume(cfg), callbacks=callbacks)
    trainer.fit()   # raises ray.train.TrainingFailedError when the run fails
