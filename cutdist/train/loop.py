"""The per-worker training loop: restore, build, then epochs of step -> log -> evaluate -> checkpoint.

``train_loop_per_worker(loop_config)`` is what Ray Train runs on every worker; ``run_training(ctx, ...)`` is
the loop itself, which also runs in one plain process (``LocalContext``, world size 1) with the same code.
What is due after each step (samples, log line, FID, checkpoint) is decided by ``cutdist.schedule.Schedule.due``
from the position alone, so all ranks take the same decisions (the checkpoint by wall time,
``checkpoint.every_minutes``: each rank's clock, agreed on log steps through ``WorkerContext.any_rank``);
checkpoints are written and read by ``cutdist.train.checkpoint``; FID by ``cutdist.eval.during_training.FidEvaluator``.

Randomness: nets are initialised from ``train.seed`` on every rank (identical weights); the data stream draws
from (seed, epoch[, rank, step]) in ``unpaired_loader``; patch ids and the flip coin come from generators seeded
per (seed, rank, step) (``cutdist.schedule.mix_seed``). So a resumed run draws exactly what an uninterrupted
one would, with no generator state to carry (the process-global RNG states are saved and restored anyway, for
anything outside).

Reports: every log step, losses averaged over the interval and the ranks, lr, images/s, ETA, corrupt samples
skipped (rank 0 prints/writes them and every rank calls ``report``, which reaches Ray only with a
checkpoint: see ``RayContext.report``); a checkpoint goes with every checkpoint
step, every evaluation and the end (rank 0 writes it; the optimizer state is consolidated first, a collective
under DeepSpeed; Ray uploads it in the background), carrying ``ckpt_fid`` (the FID measured with it, else +inf) so the best-FID one is kept.
"""
from __future__ import annotations

import math
import random
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from cutdist import config as config_mod
from cutdist.config import JobConfig
from cutdist.schedule import FLIP_SEEDS, PATCH_SEEDS, CheckpointTimer, Position, Schedule, mix_seed
from cutdist.train import checkpoint
from cutdist.train import sincut as sincut_mode
from cutdist.train.checkpoint import Restored
from cutdist.train.context import LocalContext, RayContext, WorkerContext
from cutdist.train.logger import RunLogger, say
from cutdist.train.strategy import Strategy, build_strategy


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train's entry on every worker. ``loop_config``: see ``cutdist.train.launcher.loop_config``."""
    cfg = config_mod.from_dict(loop_config["config"])
    run_training(RayContext(upload=cfg.checkpoint.upload), cfg, loop_config["splits"],
                 resume_from=loop_config.get("resume_from") or None,
                 logs_dir=Path(loop_config["logs_dir"]), started_at=loop_config.get("started_at"),
                 logs_mirror=loop_config.get("logs_mirror"))


def run_training(ctx: WorkerContext, cfg: JobConfig, splits: Any, *, resume_from: str | Path | None = None,
                 logs_dir: Path, started_at: float | None = None, logs_mirror: str | None = None) -> dict[str, Any]:
    """Train on this worker; returns the last metrics reported (the same on every rank except logs).
    ``logs_mirror``: a run directory on object storage that rank 0's logs are copied to."""
    from cutdist.eval.during_training import FidEvaluator
    from cutdist.train.summary import BestSoFar

    seed_everything(cfg.train.seed)
    sincut = cfg.model.mode == "sincut"   # one image per domain: cutdist.train.sincut's feed, step and evaluation
    images = sincut_mode.load_images(cfg, splits) if sincut else None
    # a restart's newest checkpoint, else checkpoint.resume_from (in object storage: copied here first)
    ckpt_dir = ctx.resume_checkpoint()
    source = ctx.resume_source or ckpt_dir
    if ckpt_dir is None and resume_from:
        ckpt_dir, source = checkpoint.fetch(resume_from), resume_from
    restored = checkpoint.read_checkpoint(ckpt_dir, cfg) if ckpt_dir else None
    strategy = build_models(cfg, ctx, restored)
    pos, best_fid = (restored.position, restored.best_fid) if restored else (Position(), None)
    best = BestSoFar.from_metrics(restored.metrics if restored else None)   # FID / KID with step and epoch
    sched = Schedule.of(cfg, cfg.data.sincut_epoch_size if sincut else splits.epoch_size, ctx.world_size)
    rank0 = ctx.rank == 0
    if rank0:
        origin = f"resumed from {source} at step {pos.step} (epoch {pos.epoch})" if restored else "fresh start"
        say(f"[cutdist.train] {cfg.train.strategy} x{ctx.world_size} on {ctx.device}: {sched.steps_per_epoch} "
            f"steps/epoch, {sched.total_steps} steps in all; {origin}")
    logger = RunLogger(logs_dir, tensorboard=cfg.logging.tensorboard, total_steps=sched.total_steps,
                       mirror=logs_mirror, resume_step=pos.step) if rank0 else None
    if sincut:
        evaluator = (sincut_mode.WholeImageEvaluator(cfg, images, ctx, logs_dir, logger) if cfg.eval.enabled
                     else None)
        sample_inputs = sincut_mode.sample_inputs(cfg, images) if rank0 else None
        feed = sincut_mode.SinCUTFeed(cfg, images, ctx, sched)
    else:
        evaluator = (FidEvaluator(cfg, splits, rank=ctx.rank, world_size=ctx.world_size, device=ctx.device)
                     if cfg.eval.enabled else None)
        sample_inputs = _sample_inputs(cfg, splits) if rank0 else None
        feed = EpochFeed(cfg, splits, ctx, sched)
    if rank0 and sched.finished(pos):
        say(f"[cutdist.train] nothing to do: the run is already at step {pos.step} (epoch {pos.epoch}), its end")
    meter = LossMeter(started_at)
    last_metrics: dict[str, Any] = {"step": pos.step, "epoch": float(pos.epoch)}
    timer = CheckpointTimer(cfg.checkpoint.every_minutes, agree=ctx.any_rank)
    resumed_from_step = pos.step   # in every metrics line: a restart shows as a new value (0: a fresh start)

    while not sched.finished(pos):
        lr = sched.lr(pos.epoch)
        strategy.set_lr(lr)
        for real_a, real_b, skipped, epoch_end in feed.epoch(pos):
            step_fn = sincut_mode.sincut_train_step if sincut else train_step
            meter.add(step_fn(cfg, strategy, real_a, real_b, ctx, pos.step), skipped)
            sched.advance(pos, epoch_end)
            if meter.first_step(rank0):
                say(f"[cutdist.train] first training step done {meter.first_step_s:.1f} s after the driver started")
            due = sched.due(pos, epoch_end, timer)
            if due.samples and logger is not None:
                _write_samples(logger, strategy.plain, cfg, sample_inputs or (real_a, real_b), pos.step, ctx.device)
            if due.log:
                metrics = _interval_metrics(meter, ctx, pos, sched, lr)
                metrics["resumed_from_step"] = resumed_from_step
                if due.eval and sincut:
                    metrics.update(evaluator(strategy.plain.g, pos.step))
                elif due.eval:
                    metrics.update(evaluator(strategy.plain.g))
                    best_fid = metrics["fid"] if best_fid is None else min(best_fid, metrics["fid"])
                    best.update(metrics, pos.step, pos.epoch)
                metrics.update(best.as_metrics())
                if best_fid is not None:
                    metrics["fid_best"] = best_fid
                metrics[checkpoint.SCORE_KEY] = metrics["fid"] if "fid" in metrics else math.inf
                _publish(ctx, strategy, cfg, pos, metrics, best_fid, due.checkpoint, logger, final=due.finished)
                last_metrics = metrics
                if due.checkpoint:
                    timer.restart()
            if due.finished:
                break
    if logger is not None:
        logger.close()
    return last_metrics


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def build_models(cfg: JobConfig, ctx: WorkerContext, restored: Restored | None) -> Strategy:
    """G, D and F (same init on every rank, then the checkpoint's weights), the fast path, the strategy's
    wrapping and optimizers (then the checkpoint's optimizer and RNG states)."""
    from cutdist.model.fastpath import apply_fast_path
    from cutdist.model.networks import build_nets

    if cfg.model.mode == "sincut":
        from cutdist.model.sincut import build_sincut_nets

        plain = build_sincut_nets(cfg)
    else:
        plain = build_nets(cfg)
    for name in ("g", "d", "f"):
        setattr(plain, name, getattr(plain, name).to(ctx.device))
        if restored is not None:
            getattr(plain, name).load_state_dict(restored.model[name])
    # channels_last / torch.compile: the same switches, applied the same way, as ``python -m cutdist.bench
    # train-step`` measures them; on the plain modules, before any DDP / DeepSpeed wrapping.
    apply_fast_path(plain, channels_last=cfg.train.channels_last, compile=cfg.train.compile,
                    compile_mode=cfg.train.compile_mode)
    if ctx.device.type == "cuda":
        torch.backends.cudnn.benchmark = True   # fixed crop size: cuDNN's autotuned kernels pay off
    strategy = build_strategy(cfg, plain, ctx.device, ctx.world_size)
    if restored is not None:
        strategy.load_optimizer_state(restored.train["optimizers"])
        checkpoint.restore_rng(restored.train["rng"])
    return strategy


def train_step(cfg: JobConfig, strategy: Strategy, real_a: torch.Tensor, real_b: torch.Tensor,
               ctx: WorkerContext, step: int) -> dict[str, torch.Tensor]:
    """One ``cut_step`` with this (rank, step)'s patch and flip generators."""
    from cutdist.model.cut import cut_step
    from cutdist.model.fastpath import begin_step

    begin_step(cfg.train.compile_mode if cfg.train.compile else "default")
    patches = torch.Generator(device=ctx.device)
    patches.manual_seed(mix_seed(cfg.train.seed, ctx.rank, step, PATCH_SEEDS))
    flips = torch.Generator()
    flips.manual_seed(mix_seed(cfg.train.seed, ctx.rank, step, FLIP_SEEDS))
    return cut_step(strategy.nets, strategy.updater, real_a, real_b, cfg.loss, generator=patches,
                    flip_generator=flips, precision=cfg.train.precision,
                    bf16_discriminator=cfg.train.bf16_discriminator, d_for_g=strategy.plain.d)


class EpochFeed:
    """This rank's batches of one epoch, on the device in the nets' input format, from where ``pos`` stands."""

    def __init__(self, cfg: JobConfig, splits: Any, ctx: WorkerContext, sched: Schedule) -> None:
        from cutdist.data.gpu_decode import DeviceBatcher

        self.cfg, self.splits, self.ctx, self.sched = cfg, splits, ctx, sched
        self.device_batcher = (DeviceBatcher(ctx.device, crop_size=cfg.data.crop_size, no_flip=cfg.data.no_flip)
                               if cfg.data.decode_on_device else None)

    def epoch(self, pos: Position) -> Iterator[tuple[torch.Tensor, torch.Tensor, int, bool]]:
        """(real A, real B, samples skipped as corrupt, whether it is the epoch's last batch) per batch."""
        from cutdist.data.stream import unpaired_loader
        from cutdist.model.fastpath import to_input_format

        sched, epoch, device = self.sched, pos.epoch, self.ctx.device
        if sched.epoch_done(pos):   # resumed after the epoch's last step
            pos.epoch, pos.images_in_epoch = pos.epoch + 1, 0
            return
        load_size = sched.epoch_load_size(epoch)
        # resuming mid-epoch: the stream goes on in the same permutation from the samples already consumed
        loader = unpaired_loader(self.splits, self.cfg.data, rank=self.ctx.rank, world_size=self.ctx.world_size,
                                 epoch=epoch, seed=self.cfg.train.seed, load_size=load_size,
                                 start=pos.images_in_epoch)
        seen = 0
        for i, batch in enumerate(loader):
            seen = i + 1
            skipped = batch.get("skipped", 0)
            if self.device_batcher is not None:
                a, b, undecodable = self.device_batcher(batch, load_size)
                skipped += undecodable
            else:
                a, b = batch["a"].to(device, non_blocking=True), batch["b"].to(device, non_blocking=True)
            channels_last = self.cfg.train.channels_last
            yield (to_input_format(a, channels_last), to_input_format(b, channels_last), skipped,
                   i == len(loader) - 1)
        if seen != len(loader):
            raise RuntimeError(f"data: unpaired_loader gave {seen} batches in epoch {epoch} on rank "
                               f"{self.ctx.rank}, expected {len(loader)} (ranks would fall out of step)")


class LossMeter:
    """Sums detached losses on the device (no host sync per step); averaged over ranks at log time."""

    def __init__(self, started_at: float | None = None) -> None:
        self.started_at, self.first_step_s = started_at, None
        self.sums: dict[str, torch.Tensor] = {}
        self.steps = 0
        self.skipped = 0
        self.skipped_total = 0
        self.t0 = time.perf_counter()

    def add(self, losses: dict[str, torch.Tensor], skipped: int) -> None:
        for k, v in losses.items():
            self.sums[k] = self.sums[k] + v.detach().float() if k in self.sums else v.detach().float().clone()
        self.steps += 1
        self.skipped += int(skipped)

    def first_step(self, announce: bool) -> bool:
        """After the first step of this process: note the seconds since the driver started; True to announce."""
        if self.first_step_s is not None or self.started_at is None:
            return False
        self.first_step_s = time.time() - self.started_at
        return announce

    def collect(self, world_size: int, device: torch.device) -> dict[str, float]:
        keys = sorted(self.sums)
        values = [self.sums[k] for k in keys] + [torch.tensor(float(self.skipped), device=device)]
        packed = torch.stack([v.to(device) for v in values]) if values else torch.zeros(1, device=device)
        if world_size > 1:
            dist.all_reduce(packed)
        host = packed.cpu().tolist()   # the one host sync of the interval
        out = {f"loss_{k}": host[i] / max(1, self.steps * world_size) for i, k in enumerate(keys)}
        self.skipped_total += int(round(host[-1]))
        out["skipped_samples"] = self.skipped_total
        elapsed = time.perf_counter() - self.t0
        out["interval_s"] = elapsed
        out["interval_steps"] = self.steps
        self.sums, self.steps, self.skipped, self.t0 = {}, 0, 0, time.perf_counter()
        return out


def _interval_metrics(meter: LossMeter, ctx: WorkerContext, pos: Position, sched: Schedule,
                      lr: float) -> dict[str, Any]:
    m: dict[str, Any] = meter.collect(ctx.world_size, ctx.device)
    steps_per_s = m["interval_steps"] / m["interval_s"] if m["interval_s"] > 0 else 0.0
    remaining = max(0, sched.total_steps - pos.step)
    m.update({
        "step": pos.step,
        "epoch": sched.epoch_progress(pos),
        "lr": lr,
        "steps_per_s": steps_per_s,
        "images_per_s": steps_per_s * sched.images_per_step,
        "eta_s": remaining / steps_per_s if steps_per_s > 0 else math.inf,
        "world_size": ctx.world_size,
        "images_seen": pos.images_seen,
    })
    if meter.first_step_s is not None:
        m["first_step_s"] = meter.first_step_s
    return m


def _publish(ctx: WorkerContext, strategy: Strategy, cfg: JobConfig, pos: Position, metrics: dict[str, Any],
             best_fid: float | None, with_checkpoint: bool, logger: RunLogger | None, *, final: bool = False) -> None:
    if logger is not None:
        logger.log(pos.step, metrics)
        if with_checkpoint:
            logger.sync()   # a complete checkpoint in the bucket has its metrics lines there too
    staged = None
    if with_checkpoint:
        metrics["replica_divergence"] = replica_divergence(strategy.plain, ctx.world_size, ctx.device)
        optimizers = strategy.optimizer_state()   # every rank: a collective under DeepSpeed ZeRO-1
        if ctx.rank == 0:
            staged = checkpoint.write_checkpoint(checkpoint.staging_dir(), nets=strategy.plain, cfg=cfg,
                                                 position=pos, world_size=ctx.world_size, strategy=strategy.name,
                                                 optimizers=optimizers, best_fid=best_fid, metrics=metrics)
    handed_over = False
    try:
        handed_over = ctx.report(metrics, staged, pos.step, checkpointed=with_checkpoint, final=final)
    finally:
        if staged is not None and not handed_over:   # ASYNC upload (checkpoint.upload=async): Ray deletes it
            shutil.rmtree(staged, ignore_errors=True)


@torch.no_grad()
def replica_divergence(plain: Any, world_size: int, device: torch.device) -> float:
    """Largest difference between this run's replicas of G, D and F (0.0 = identical on every rank).

    Each rank projects every parameter tensor on a fixed random vector (seeded by the tensor's position, the
    same on every rank) and the projections are all-gathered: any differing element changes its projection.
    """
    if world_size == 1:
        return 0.0
    fingerprints = []
    for net in (plain.g, plain.d, plain.f):
        for i, p in enumerate(net.parameters()):
            weights = torch.randn(p.numel(), generator=torch.Generator().manual_seed(i), dtype=torch.float64)
            fingerprints.append((p.detach().double().flatten().cpu() * weights).sum())
    mine = torch.stack(fingerprints).to(device)
    gathered = [torch.empty_like(mine) for _ in range(world_size)]
    dist.all_gather(gathered, mine)
    return max(float((g - gathered[0]).abs().max()) for g in gathered)


def _sample_inputs(cfg: JobConfig, splits: Any, count: int = 4) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The same few test images at every sample step, so grids are comparable over time (None: no test split)."""
    from cutdist.data.stream import test_loader

    if not (splits.test_a and splits.test_b):
        return None
    picked = []
    for urls in (splits.test_a, splits.test_b):
        batches = test_loader(urls, rank=0, world_size=1, size=cfg.data.crop_size, batch_size=count,
                              max_images=count)
        picked.append(next(iter(batches))[1])
    n = min(len(picked[0]), len(picked[1]))
    return picked[0][:n], picked[1][:n]


@torch.no_grad()
def _write_samples(logger: RunLogger | None, plain: Any, cfg: JobConfig, inputs: tuple[torch.Tensor, torch.Tensor],
                   step: int, device: torch.device) -> None:
    if logger is None:
        return
    real_a, real_b = (x[:4].to(device) for x in inputs)
    was_training = plain.g.training
    plain.g.eval()
    # SinCUT's G draws noise from torch's generator: a sample grid must not move training's random stream (a run
    # resumed from a checkpoint written after a grid would otherwise draw other noise than an uninterrupted one).
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            columns, names = [real_a, plain.g(real_a), real_b], ["real A", "G(A)", "real B"]
            if cfg.loss.identity:
                columns.append(plain.g(real_b))
                names.append("G(B)")
    finally:
        plain.g.train(was_training)
    logger.samples(step, columns, names)


def run_local(cfg: JobConfig, splits: Any, *, run_dir: Path, resume_from: str | Path | None = None,
              device: str | torch.device = "cpu") -> tuple[dict[str, Any], LocalContext]:
    """The same loop in this process, world size 1, no Ray: checkpoints land in ``run_dir``."""
    from cutdist.train.context import init_single_process_group

    device = torch.device(device)
    if cfg.train.strategy == "deepspeed":
        init_single_process_group("nccl" if device.type == "cuda" else "gloo")
    ctx = LocalContext(run_dir=Path(run_dir), num_to_keep=cfg.checkpoint.num_to_keep, device=device)
    metrics = run_training(ctx, cfg, splits, resume_from=resume_from, logs_dir=Path(run_dir), started_at=time.time())
    return metrics, ctx
