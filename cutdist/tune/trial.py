"""One sweep trial: a Ray Tune function trainable that runs one full distributed training job (a TorchTrainer).

Per trial: the trial's job = base job + the space's fixed values + command-line overrides + the sampled values
(``Space.trial_config``), named ``<trial id>`` under ``<sweep dir>/runs`` (so a restarted trial finds its own
Ray Train run and resumes it from its last checkpoint), built by ``cutdist.train.launcher.build_trainer``
with ``FidReportCallback``: the workers' evaluation reports (those carrying ``fid``) reach Tune, one Tune
result per FID evaluation, with ``checkpoint_path`` the checkpoint measured with that FID; and with
``cutdist.tune.cleanup.RecordPlacementGroup``, so the driver can free the workers of a stopped trial.

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


def make_fid_report_callback():
    """A ``TuneReportCallback`` that forwards only the reports carrying an FID (one Tune result per evaluation),
    so the scheduler sees the metric in every result and ``training_iteration`` counts evaluations."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class FidReportCallback(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            if metrics and "fid" in metrics[0]:
                super().after_report(run_context, metrics, checkpoint)

    return FidReportCallback()


def run_trial(sampled: dict[str, Any], *, space: Space, sweep_dir: str) -> None:
    """The Tune function trainable: build the trial's job and run its TorchTrainer to the end (or until the
    scheduler stops the trial). A training failure raises, so Tune records the trial as ERROR."""
    import ray.tune

    from cutdist.data import resolve_splits
    from cutdist.train.checkpoint import resolve_resume
    from cutdist.train.launcher import build_trainer, run_dir
    from cutdist.tune.cleanup import PG_FILE, RecordPlacementGroup

    cfg = trial_job(space, sampled, sweep_dir, ray.tune.get_context().get_trial_id())
    splits = resolve_splits(cfg.data)
    callbacks = [make_fid_report_callback(), RecordPlacementGroup(f"{run_dir(cfg)}/{PG_FILE}")]
    trainer = build_trainer(cfg, splits, resume_from=resolve_resume(cfg), callbacks=callbacks)
    trainer.fit()   # raises ray.train.TrainingFailedError when the run fails
