"""``python -m cutdist.train [--config jobs/X.yaml] [key=value ...]``: validate, then train on Ray.

Order of business, so that a bad job fails in a second with one line and no cluster touched:
config (exit 2) -> ``cutdist.train.preflight.preflight``: paths, demo shards if asked, shards, FID's test split
and weights, resume checkpoint (exit 2) -> ``ray.init()`` (RAY_ADDRESS / the cluster this job was submitted to,
else a new local one) -> ``build_trainer(...).fit()`` -> where everything is.
With no ``--config`` it runs the demo, ``jobs/demo.yaml``.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

STARTED_AT = time.time()

from cutdist import config as config_mod  # noqa: E402
from cutdist import storage  # noqa: E402
from cutdist.config import ConfigError  # noqa: E402

DEMO_JOB = "demo.yaml"


def default_job() -> Path:
    """jobs/demo.yaml of this checkout (or of the working directory a Ray job was submitted with)."""
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        candidate = base / "jobs" / DEMO_JOB
        if candidate.is_file():
            return candidate
    return Path("jobs") / DEMO_JOB


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m cutdist.train",
                                     description="Train CUT / FastCUT on a Ray cluster (no --config: the demo).")
    parser.add_argument("--config", help="job YAML (default: jobs/demo.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. loss.lambda_x=2")
    return parser.parse_args(argv)


def fail(message: str, code: int = 2) -> int:
    from cutdist.redact import redact_uri

    print(f"error: {redact_uri(message)}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    is_demo = args.config is None
    job_path = Path(args.config) if args.config else default_job()
    try:
        if args.config and storage.is_object_store(args.config):   # e.g. a sweep's best_config.yaml in a bucket
            job_path = storage.download(args.config, Path(tempfile.mkdtemp(prefix="cutdist_job_")) / "job.yaml")
        cfg = config_mod.load(job_path, args.overrides)
    except (ConfigError, storage.StorageError) as err:
        return fail(str(err))
    except OSError as err:
        return fail(f"--config: {args.config}: {storage.reason(err)}")
    from cutdist.train import launcher
    from cutdist.train.preflight import PreflightError, preflight

    launcher.expand_name(cfg, STARTED_AT)
    try:
        ready = preflight(cfg, say=lambda line: print(f"[cutdist.train] {line}", flush=True))
    except PreflightError as err:
        return fail(str(err))
    splits, resume_from = ready.splits, ready.resume_from

    before = paired_quality_at_init(cfg, splits) if splits.test_gt else None

    import ray

    if not ray.is_initialized():   # a program that calls main() may have connected already
        ray.init(log_to_driver=True)
    warn_if_short_of_resources(cfg, ray.cluster_resources())
    low, high = config_mod.worker_range(cfg.train)
    workers = f"{low}" if low == high else f"{low}-{high} (elastic)"
    print(f"[cutdist.train] job {job_path} -> run {launcher.run_dir(cfg)} "
          f"({workers} {'GPU' if cfg.train.use_gpu else 'CPU'} workers, {cfg.train.strategy})", flush=True)
    trainer = launcher.build_trainer(cfg, splits, resume_from=resume_from, started_at=STARTED_AT)
    try:
        result = trainer.fit()
    except Exception as err:   # Ray's TrainingFailedError family (the worker tracebacks are in the log above)
        return fail(f"training failed: {failure_summary(err)}", code=1)
    print_summary(cfg, result, launcher, before=before, splits=splits, is_demo=is_demo)
    return 0


def failure_summary(err: BaseException) -> str:
    """One line: the last line of each failed worker's traceback (rank: Type: message), else the error."""
    failures = getattr(err, "worker_failures", None) or {}
    parts = []
    for rank, failure in sorted(failures.items()):
        lines = [line for line in str(failure).strip().splitlines() if line.strip()]
        parts.append(f"rank {rank}: {lines[-1].strip() if lines else type(failure).__name__}")
    if parts:
        return "; ".join(parts)
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


def warn_if_short_of_resources(cfg: config_mod.JobConfig, available: dict) -> None:
    from cutdist.train.launcher import worker_resources

    low, _ = config_mod.worker_range(cfg.train)
    for key, amount in worker_resources(cfg).items():
        need = amount * low
        if need > available.get(key, 0.0):
            print(f"[cutdist.train] warning: train.num_workers={low} x {amount:g} {key} needs {need:g} "
                  f"{key} but the cluster has {available.get(key, 0.0):g} now; the run waits for an autoscaler",
                  file=sys.stderr, flush=True)


def paired_quality_at_init(cfg: config_mod.JobConfig, splits) -> dict | None:
    """Translation quality of G at initialisation (same seed as training) against the paired ground truth."""
    from cutdist.train.demo import paired_quality_of_initial_g

    return paired_quality_of_initial_g(cfg, splits)


def print_summary(cfg, result, launcher, *, before, splits, is_demo: bool) -> None:
    from cutdist.train.checkpoint import best_checkpoint, kept_checkpoints, run_end
    from cutdist.train.demo import paired_quality_of_checkpoint

    latest, final = run_end(result)
    kept = kept_checkpoints(result, (latest, final))
    best, best_metrics = best_checkpoint(kept)
    logs = launcher.logs_mirror(cfg) or launcher.logs_dir(cfg)
    remote = launcher.logs_mirror(cfg) is not None
    print("\n[cutdist.train] done")
    print(f"  run directory      {launcher.run_dir(cfg)}")
    print(f"  latest checkpoint  {launcher.display_uri(cfg, latest)}")
    if best:
        print(f"  best-FID checkpoint {launcher.display_uri(cfg, best)} (FID {best_metrics['fid']:.4f}, "
              f"{best_metrics.get('fid_backbone')})")
    print(f"  sample grid        {logs}/samples/latest.png")
    if cfg.model.mode == "sincut" and cfg.eval.enabled:
        print(f"  translated image   {logs}/samples/translated_latest.png")
    print(f"  metrics            {logs}/metrics.jsonl")
    if cfg.logging.tensorboard:
        print(f"  TensorBoard        tensorboard --logdir {logs}/tensorboard"
              + ("   (or a local copy of it)" if remote else ""))
    if before is not None and latest and not remote:
        after = paired_quality_of_checkpoint(latest, splits)
        print("  paired quality vs testGT (lowfreq_l1: lower is better; stripe_energy_ratio: 1 = as striped as GT)")
        for label, q in (("input A (no-op)", before["identity"]), ("G at init", before["g"]), ("trained G", after)):
            print(f"    {label:<16} lowfreq_l1 {q['lowfreq_l1']:.4f}  stripe_energy_ratio {q['stripe_energy_ratio']:.3f}")
    write_run_summary(cfg, launcher, latest, final, [path for path, _ in kept])


def write_run_summary(cfg, launcher, latest: str | None, final: dict, kept: list[str]) -> None:
    """summary.json in the run directory (rank 0's log directory when the run directory is remote) and the
    last console lines: best FID and KID, their epochs and checkpoints, the final ones, images seen, wall time."""
    from cutdist.schedule import per_rank_batch
    from cutdist.train.summary import build_summary, summary_lines, write_summary

    run_dir = launcher.run_dir(cfg)
    summary = build_summary(final, run_dir=run_dir, kept=kept, latest=latest,
                            batch_size=per_rank_batch(cfg, int(final.get("world_size", 1))),
                            wall_s=time.time() - STARTED_AT)
    where = run_dir if not launcher.is_remote(run_dir) else launcher.logs_dir(cfg)
    try:
        path = write_summary(summary, where)
        if storage.is_object_store(run_dir):   # beside the checkpoints, like the logs rank 0 copied there
            storage.upload(path, storage.join(run_dir, Path(path).name))
            path = storage.join(run_dir, Path(path).name)
    except (OSError, storage.StorageError) as err:
        path = f"not written ({err})"
    print("[cutdist.train] summary")
    for line in summary_lines(summary):
        print(line)
    print(f"  summary    {path}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
