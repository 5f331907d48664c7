"""``python -m cutdist.tune``: a Ray Tune sweep of full distributed CUT trainings, ranked by FID.

    python -m cutdist.tune --config jobs/X.yaml --space tune_spaces/Y.yaml [--name NAME] [key=value ...]
    python -m cutdist.tune --resume SWEEP_DIR [--retry-errored]

Order of business, so that a bad sweep fails in seconds with one line (exit 2) and no trial started: job file
and overrides -> space file (every value each trial could get is validated on the base job) -> FID on ->
``cutdist.train.preflight.preflight`` on the base job, the same as ``python -m cutdist.train`` runs (shards, the
test split FID needs, FID weights, resume checkpoint) -> a free sweep directory -> ``ray.init()``
(RAY_ADDRESS / the cluster the job was submitted to, else a new local one) -> how many trials fit at once ->
``Tuner.fit()``.

The sweep directory is ``<storage_path>/<name>`` (``storage_path`` of the job, a local or shared file system
path; default name
``tune-<space>-<YYYYmmdd-HHMMSS>``). It holds Tune's experiment state, ``sweep.yaml`` (what ``--resume``
needs), ``runs/<trial id>/`` (each trial's Ray Train run: checkpoints, metrics.jsonl, TensorBoard) and the
results (see ``cutdist.tune.results``). The command's last line is the sweep directory.

Resume: if the driver dies (Ctrl-C, lost node, SIGKILL), ``--resume SWEEP_DIR`` restores the sweep from its
directory with ``Tuner.restore``: finished trials are kept, unfinished ones continue (their Ray Train runs resume
from their last checkpoints), pending ones start; failed trials stay failed unless ``--retry-errored``
(they then start again from scratch). Exit status: 0 when at least one trial reported an FID, 1 when none did,
2 for a bad job, space or directory.
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from cutdist import config as config_mod
from cutdist import storage
from cutdist.config import ConfigError
from cutdist.redact import redact_uri, redact_values, redacted_values

SWEEP_FILE = "sweep.yaml"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m cutdist.tune",
                                     description="Sweep CUT hyperparameters with Ray Tune, ranked by FID.")
    parser.add_argument("--config", help="base job YAML (jobs/X.yaml)")
    parser.add_argument("--space", help="search-space YAML (tune_spaces/Y.yaml)")
    parser.add_argument("--name", help="sweep name (default: tune-<space>-<time>); the sweep directory is "
                                       "<storage_path>/<name>")
    parser.add_argument("--resume", metavar="SWEEP_DIR", help="continue the sweep in SWEEP_DIR after its driver died")
    parser.add_argument("--retry-errored", action="store_true", help="with --resume: run failed trials again")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted job overrides, e.g. data.root=...")
    args = parser.parse_args(argv)
    if args.resume:
        if args.config or args.space or args.name or args.overrides:
            parser.error("--resume takes only the sweep directory (and --retry-errored): the job, space and "
                         "overrides are read from its sweep.yaml")
    elif not (args.config and args.space):
        parser.error("--config and --space are required (or --resume SWEEP_DIR)")
    elif args.retry_errored:
        parser.error("--retry-errored goes with --resume")
    return args


def fail(message: str, code: int = 2) -> int:
    print(f"error: {redact_uri(message)}", file=sys.stderr)
    return code


def say(message: str) -> None:
    print(f"[cutdist.tune] {redact_uri(message)}", flush=True)


def read_job(path: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The job file's mapping, once the job with its overrides has passed validation on its own."""
    config_mod.load(path, overrides)
    return yaml.safe_load(Path(path).read_text()) or {}


def absolute_path_values(space, cfg: config_mod.JobConfig) -> dict[str, Any]:
    """The job's local paths as absolute dotted values: trials run in their own working directories."""
    from cutdist.train.preflight import PATH_KEYS, absolutize_paths

    after = absolutize_paths(copy.deepcopy(cfg))
    return {key: config_mod.get(after, key) for key in PATH_KEYS if key not in space.params
            and config_mod.get(after, key) != config_mod.get(cfg, key)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from cutdist.tune.space import SpaceError, load_space, parse_space

    try:
        if args.resume:
            sweep_dir = args.resume.rstrip("/") if storage.is_object_store(args.resume) else \
                str(Path(args.resume).expanduser().absolute())
            storage.check(sweep_dir, "--resume", writable=True)
            saved_text = read_sweep_file(sweep_dir)
            if saved_text is None:
                return fail(f"--resume: {sweep_dir} is not a cutdist sweep directory (no {SWEEP_FILE})")
            saved = yaml.safe_load(saved_text)
            stripped = redacted_values(saved)
            if stripped:
                return fail(f"--resume: {storage.join(sweep_dir, SWEEP_FILE)} stores {stripped[0]} without the credentials its URL had "
                            "(cutdist never writes them); such a sweep cannot be resumed: start a new one")
            space = parse_space(saved["space"], saved["job_values"], saved["overrides"], where=saved["space_file"])
        else:
            overrides = dict(config_mod.parse_override(text) for text in args.overrides)
            job_values = read_job(args.config, overrides)
            space = load_space(args.space, job_values, overrides)
            absolute = absolute_path_values(space, config_mod.from_dict(space.base))
            space.base.update(absolute)
            overrides.update(absolute)
            name = args.name or f"tune-{Path(args.space).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
            if not name or "/" in name:
                return fail(f"--name: must be a non-empty name without '/', got {name!r}")
            from cutdist.train.launcher import storage_path

            sweep_dir = f"{storage_path(config_mod.from_dict(space.base))}/{name}"
            saved = {"job_file": str(args.config), "space_file": str(args.space), "job_values": job_values,
                     "overrides": overrides, "space": yaml.safe_load(Path(args.space).read_text())}
        base = config_mod.from_dict(space.base)
    except (SpaceError, ConfigError, storage.StorageError) as err:
        return fail(str(err))
    problem = sweep_problem(base, space)
    if base.model.mode == "sincut":   # trials are ranked by FID, which one image per domain does not have
        problem = "model.mode: sincut has no FID to rank trials by; sweeps support cut and fastcut"
    if problem:
        return fail(problem)

    from cutdist.train.preflight import PreflightError, preflight

    try:
        splits = preflight(base, say=say).splits
    except PreflightError as err:
        return fail(str(err))

    from ray.tune import Tuner

    from cutdist.train.launcher import worker_resources
    from cutdist.train.preflight import is_remote

    if args.resume and not Tuner.can_restore(sweep_dir):
        return fail(f"--resume: {sweep_dir} holds no Tune experiment state to restore")
    if not args.resume:
        if is_remote(sweep_dir) and not storage.is_object_store(sweep_dir):
            return fail(f"storage_path: sweeps keep their directory on a file system or object storage "
                        f"(s3://, gs://); got {base.storage_path}")
        if storage.is_object_store(sweep_dir) and storage.list_names(sweep_dir):
            return fail(f"--name: the sweep directory {sweep_dir} exists; continue it with --resume {sweep_dir} "
                        "or pick another --name")
        if not storage.is_object_store(sweep_dir) and Path(sweep_dir).exists():
            return fail(f"--name: the sweep directory {sweep_dir} exists; continue it with --resume {sweep_dir} "
                        "or pick another --name")

    import ray

    ray.init(log_to_driver=True)
    concurrency = choose_concurrency(base, space, ray.cluster_resources(), local=not os.environ.get("RAY_ADDRESS"))
    if concurrency is None:
        return fail(f"train.num_workers: one trial of this job needs {describe_need(base)}, more than this "
                    f"local Ray cluster has ({describe(ray.cluster_resources())})")
    if not args.resume:
        # never a URL's credentials on disk: a sweep whose job carries some cannot be resumed (see below)
        write_sweep_file(sweep_dir, yaml.safe_dump(redact_values(saved), sort_keys=False))
    say(f"{'resuming' if args.resume else 'starting'} sweep {sweep_dir}: space {saved['space_file']}, search "
        f"{space.search}, scheduler {space.scheduler.type}, {space.num_samples} sample(s), up to {concurrency} "
        f"trial(s) at once, each {base.train.num_workers} worker(s) x {describe(worker_resources(base))}")
    results = run_sweep(space, sweep_dir, concurrency, resume=bool(args.resume), retry_errored=args.retry_errored)
    return report(results, space, sweep_dir, splits)


def read_sweep_file(sweep_dir: str) -> str | None:
    """The sweep's ``sweep.yaml`` (local or object storage); None when there is none."""
    if storage.is_object_store(sweep_dir):
        location = storage.join(sweep_dir, SWEEP_FILE)
        return storage.read_bytes(location).decode() if storage.exists(location) else None
    path = Path(sweep_dir) / SWEEP_FILE
    return path.read_text() if path.is_file() else None


def write_sweep_file(sweep_dir: str, text: str) -> None:
    if storage.is_object_store(sweep_dir):
        storage.write_bytes(storage.join(sweep_dir, SWEEP_FILE), text.encode())
        return
    Path(sweep_dir).mkdir(parents=True)
    (Path(sweep_dir) / SWEEP_FILE).write_text(text)


def sweep_problem(base: config_mod.JobConfig, space) -> str | None:
    if not base.eval.enabled:
        return "eval.enabled: a sweep ranks its trials by FID; set eval.enabled=true (and eval.every)"
    if space.scheduler.type == "asha" and base.eval.every == 0:
        say("warning: eval.every=0: FID only at the end of each trial, so ASHA has nothing to stop early")
    return None


def describe(resources: dict[str, float]) -> str:
    """CPU, GPU and custom resources (not memory, object store or node ids), e.g. ``2 CPU, 1 GPU``."""
    shown = {k: v for k, v in resources.items()
             if "memory" not in k and "object_store" not in k and not k.startswith(("node:", "accelerator_type"))}
    return ", ".join(f"{v:g} {k}" for k, v in sorted(shown.items())) or "no CPU or GPU"


def describe_need(cfg: config_mod.JobConfig) -> str:
    from cutdist.train.launcher import worker_resources

    return describe({k: v * config_mod.worker_range(cfg.train)[1] for k, v in worker_resources(cfg).items()})


def choose_concurrency(cfg: config_mod.JobConfig, space, cluster: dict[str, float], *, local: bool) -> int | None:
    """Trials at once: the space's max_concurrent_trials, capped to what the cluster holds now (more would only
    queue their workers, and on a fixed cluster could leave every trial holding part of what it needs).
    None: not even one trial fits a local cluster (nothing can add nodes to it)."""
    from cutdist.tune.trial import trials_that_fit

    fit = trials_that_fit(cfg, cluster)
    wanted = space.max_concurrent_trials
    if fit == 0:
        if local:
            return None
        say(f"warning: one trial needs {describe_need(cfg)} and the cluster has {describe(cluster)} now; "
            "trials wait for an autoscaler")
        return wanted or 1
    if wanted and wanted > fit:
        say(f"max_concurrent_trials {wanted} -> {fit}: each trial needs {describe_need(cfg)} and the cluster has "
            f"{describe(cluster)}")
    return min(wanted or fit, fit)


def run_sweep(space, sweep_dir: str, concurrency: int, *, resume: bool, retry_errored: bool = False):
    from ray import tune

    from cutdist.tune.cleanup import RemoveEndedTrialsPlacementGroups
    from cutdist.tune.records import KeepTrialRecords
    from cutdist.tune.results import trial_dirname
    from cutdist.tune.space import MODE
    from cutdist.tune.trial import run_trial, runs_dir, trial_resources

    trainable = tune.with_resources(tune.with_parameters(run_trial, space=space, sweep_dir=sweep_dir),
                                    trial_resources())
    if resume:
        tuner = tune.Tuner.restore(sweep_dir, trainable, resume_unfinished=True, resume_errored=False,
                                   restart_errored=retry_errored)
    else:
        parent, name = os.path.split(sweep_dir.rstrip("/"))
        tuner = tune.Tuner(
            trainable,
            param_space=space.param_space(),
            tune_config=tune.TuneConfig(metric=space.metric, mode=MODE, search_alg=space.search_alg(concurrency),
                                        scheduler=space.tune_scheduler(), num_samples=space.num_samples,
                                        trial_dirname_creator=trial_dirname),
            run_config=tune.RunConfig(name=name, storage_path=parent, failure_config=tune.FailureConfig(max_failures=0),
                                      callbacks=[KeepTrialRecords(),   # first: before Tune's loggers
                                                 RemoveEndedTrialsPlacementGroups(runs_dir(sweep_dir))], verbose=1),
        )
    return tuner.fit()


def report(results, space, sweep_dir: str, splits) -> int:
    from cutdist.train.launcher import storage_path
    from cutdist.tune.results import (BEST_CONFIG, ERROR, INCOMPLETE, PLOT, STOPPED_EARLY, plot_fid_vs_hparams,
                                      summarise, write_best_config, write_leaderboard)
    from cutdist.schedule import Schedule

    from ray.tune import ExperimentAnalysis

    def planned_steps(cfg: config_mod.JobConfig) -> int:
        return Schedule.of(cfg, splits.epoch_size, config_mod.worker_range(cfg.train)[1]).total_steps

    tune_status = {t.trial_id: t.status for t in ExperimentAnalysis(sweep_dir).trials}
    summaries = summarise(results, space, planned_steps, sweep_dir, tune_status)
    # object storage: the result files are written to a local directory, then copied into the sweep directory
    remote = storage.is_object_store(sweep_dir)
    out_dir = tempfile.mkdtemp(prefix="cutdist_sweep_") if remote else sweep_dir
    shown = (lambda p: storage.join(sweep_dir, Path(p).name)) if remote else str
    parquet, csv = write_leaderboard(summaries, space, out_dir)
    plot = plot_fid_vs_hparams(summaries, space, Path(out_dir) / PLOT, title=os.path.basename(sweep_dir))
    scored = [s for s in summaries if not math.isnan(s.score)]
    counts = {status: sum(s.status == status for s in summaries) for status in dict.fromkeys(
        s.status for s in summaries)}
    print("\n[cutdist.tune] done: " + ", ".join(f"{n} {status}" for status, n in counts.items()))
    print(f"  leaderboard        {shown(parquet)} (+ .csv)")
    print(f"  plot               {shown(plot)}")
    for s in summaries:
        values = " ".join(f"{k}={s.sampled.get(k)}" for k in space.params)
        fid = f"FID {s.best_fid:.4f} KID {s.best_kid:.5f}" if s in scored else f"no {space.metric.upper()}"
        extra = f" | {s.error}" if s.status == ERROR else (f" at epoch {s.epochs_reached:g}"
                                                             if s.status == STOPPED_EARLY else "")
        print(f"    {s.trial_id:<14} {s.status:<13} {fid:<28} {values}{extra}")
    if scored:
        best = scored[0]
        base = config_mod.from_dict(space.base)
        path = write_best_config(best, space, Path(out_dir) / BEST_CONFIG,
                                 name=f"{os.path.basename(sweep_dir)}-best", storage_path=storage_path(base),
                                 final_path=shown(Path(out_dir) / BEST_CONFIG))
        path = shown(path)
        print(f"  best trial         {best.trial_id}: {space.metric.upper()} {best.score:.5g} (best FID "
              f"{best.best_fid:.4f}, best KID {best.best_kid:.5f}) [{best.fid_backbone}]")
        print(f"  best checkpoint    {best.best_checkpoint}")
        print(f"  best config        {path}  (python -m cutdist.train --config {path})")
    else:
        print(f"  no trial reported a {space.metric.upper()}: no best config", file=sys.stderr)
    if remote:
        storage.upload(out_dir, sweep_dir)
        shutil.rmtree(out_dir, ignore_errors=True)
    if counts.get(INCOMPLETE):
        print(f"  interrupted: continue with  python -m cutdist.tune --resume {sweep_dir}")
    print(sweep_dir, flush=True)
    return 0 if scored else 1


if __name__ == "__main__":
    sys.exit(main())
