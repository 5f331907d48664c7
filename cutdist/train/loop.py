"""The per-worker training loop: epochs x steps of ``cut_step``, reports, checkpoints, FID, resume.

``train_loop_per_worker(loop_config)`` is what Ray Train runs on every worker; ``run_training(ctx, ...)`` is
the loop itself, which also runs in one plain process (``LocalContext``, world size 1) with the same code.

Randomness: nets are initialised from ``train.seed`` on every rank (identical weights); the data stream is
seeded per (seed, rank, epoch) by ``unpaired_loader``; patch ids and the flip coin come from generators seeded
per (seed, rank, step). So a resumed run draws exactly what an uninterrupted one would, with no generator
state to carry (the process-global RNG states are saved and restored anyway, for anything outside).

Cadence (all ranks take the same decisions, from the step counter alone):
- every ``logging.every_steps``: losses (averaged over the interval and the ranks), lr, images/s, ETA,
  corrupt samples skipped; rank 0 prints/writes them and every rank calls ``report``;
- every ``logging.sample_every_steps``: a sample grid on rank 0 (real A | G(A) | real B | G(B) for CUT);
- every ``checkpoint.every_steps``, at every evaluation and at the end: a checkpoint (rank 0 writes it; the
  optimizer state is consolidated first, a collective under DeepSpeed);
- every ``eval.every`` epochs (0 = never in between) and at the end: FID over the test split of A, every
  rank translating its share; the checkpoint reported with it carries ``ckpt_fid`` so Ray keeps the best.
"""
from __future__ import annotations

import math
import random
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from cutdist import config as config_mod
from cutdist.config import JobConfig
from cutdist.train.context import LocalContext, RayContext, WorkerContext, write_json_atomic
from cutdist.train.logger import RunLogger, say
from cutdist.train.state import (METRICS_FILE, Position, check_compatible, load_train_state, restore_rng,
                                 save_train_state)
from cutdist.train.strategy import Strategy, build_strategy


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train's entry on every worker. ``loop_config``: see ``cutdist.train.launcher.loop_config``."""
    cfg = config_mod.from_dict(loop_config["config"])
    run_training(RayContext(), cfg, loop_config["splits"], resume_from=loop_config.get("resume_from") or None,
                 logs_dir=Path(loop_config["logs_dir"]), started_at=loop_config.get("started_at"))


def step_seed(seed: int, rank: int, step: int, stream: int) -> int:
    """A 63-bit seed for (seed, rank, step, stream); stream 0 = patch ids, 1 = flip coin."""
    return int(np.random.SeedSequence([seed, rank, step, stream]).generate_state(2, np.uint64)[0] >> np.uint64(1))


@dataclass
class Schedule:
    steps_per_epoch: int
    images_per_step: int       # global: batch x world size
    total_epochs: int          # epochs + epochs_decay (0 = run max_steps at constant lr)
    max_steps: int

    @property
    def total_steps(self) -> int:
        by_epochs = self.total_epochs * self.steps_per_epoch
        if self.max_steps and by_epochs:
            return min(self.max_steps, by_epochs)
        return self.max_steps or by_epochs

    def finished(self, pos: Position) -> bool:
        return bool((self.max_steps and pos.step >= self.max_steps)
                    or (self.total_epochs and pos.epoch >= self.total_epochs))


class LossMeter:
    """Sums detached losses on the device (no host sync per step); averaged over ranks at log time."""

    def __init__(self) -> None:
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


def run_training(ctx: WorkerContext, cfg: JobConfig, splits: Any, *, resume_from: str | Path | None = None,
                 logs_dir: Path, started_at: float | None = None) -> dict[str, Any]:
    """Train on this worker; returns the last metrics reported (the same on every rank except logs)."""
    from cutdist.data.gpu_decode import DeviceBatcher
    from cutdist.data.stream import steps_per_epoch, unpaired_loader
    from cutdist.model.cut import cut_step, lr_factor
    from cutdist.model.fastpath import apply_fast_path, begin_step, to_input_format
    from cutdist.model.io import load_model
    from cutdist.model.networks import build_nets

    device = ctx.device
    rank0 = ctx.rank == 0
    seed = cfg.train.seed
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    # ---- networks: same init everywhere, then the checkpoint if there is one, then the strategy's wrapping
    plain = build_nets(cfg)
    for name in ("g", "d", "f"):
        setattr(plain, name, getattr(plain, name).to(device))

    ckpt_dir = ctx.resume_checkpoint()
    if ckpt_dir is None and resume_from:
        ckpt_dir = Path(resume_from)
    train_state = None
    if ckpt_dir is not None:
        model_state, _ = load_model(ckpt_dir, map_location="cpu")
        check_compatible(model_state["config"], cfg, ckpt_dir)
        for name in ("g", "d", "f"):
            if model_state.get(name) is None:
                raise ValueError(f"checkpoint.resume_from: {ckpt_dir} holds no {name.upper()} weights")
            getattr(plain, name).load_state_dict(model_state[name])
        train_state = load_train_state(ckpt_dir)

    # channels_last / torch.compile: the same switches, applied the same way, as ``python -m cutdist.bench
    # train-step`` measures them; on the plain modules, before any DDP / DeepSpeed wrapping.
    apply_fast_path(plain, channels_last=cfg.train.channels_last, compile=cfg.train.compile,
                    compile_mode=cfg.train.compile_mode)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True   # fixed crop size: cuDNN's autotuned kernels pay off
    strategy = build_strategy(cfg, plain, device, ctx.world_size)
    pos, best_fid = Position(), None
    from cutdist.train.summary import BestSoFar

    best = BestSoFar.from_checkpoint(ckpt_dir)   # best FID / KID so far, with step and epoch (summary.json)
    if train_state is not None:
        strategy.load_optimizer_state(train_state["optimizers"])
        restore_rng(train_state["rng"])
        pos = Position(train_state["step"], train_state["epoch"], train_state["images_in_epoch"])
        best_fid = train_state.get("best_fid")

    sched = Schedule(steps_per_epoch(splits.epoch_size, cfg.data.batch_size, ctx.world_size),
                     cfg.data.batch_size * ctx.world_size, cfg.optim.epochs + cfg.optim.epochs_decay,
                     cfg.optim.max_steps)
    if rank0:
        origin = f"resumed from {ckpt_dir} at step {pos.step} (epoch {pos.epoch})" if ckpt_dir else "fresh start"
        say(f"[cutdist.train] {cfg.train.strategy} x{ctx.world_size} on {device}: {sched.steps_per_epoch} "
            f"steps/epoch, {sched.total_steps} steps in all; {origin}")

    evaluator = FidEvaluator(cfg, splits, ctx) if cfg.eval.enabled else None
    logger = RunLogger(logs_dir, tensorboard=cfg.logging.tensorboard, total_steps=sched.total_steps) if rank0 else None
    sample_inputs = _sample_inputs(cfg, splits) if rank0 else None

    if rank0 and sched.finished(pos):
        say(f"[cutdist.train] nothing to do: the run is already at step {pos.step} (epoch {pos.epoch}), its end")
    meter = LossMeter()
    last_metrics: dict[str, Any] = {"step": pos.step, "epoch": float(pos.epoch)}
    first_step_s = None
    base_lr = config_mod.scaled_lr(cfg.optim, sched.images_per_step)   # optim.lr_scaling at the global batch

    device_batcher = (DeviceBatcher(device, crop_size=cfg.data.crop_size, no_flip=cfg.data.no_flip)
                      if cfg.data.decode_on_device else None)
    while not sched.finished(pos):
        lr = base_lr * (lr_factor(pos.epoch, cfg.optim.epochs, cfg.optim.epochs_decay) if sched.total_epochs else 1.0)
        strategy.set_lr(lr)
        if pos.images_in_epoch >= splits.epoch_size:   # resumed after the epoch's last step
            pos.epoch, pos.images_in_epoch = pos.epoch + 1, 0
            continue
        seen = 0
        # The reference drops the resize-then-crop jitter (load_size = crop_size) in the lr-decay epochs.
        finetuning = sched.total_epochs and pos.epoch >= cfg.optim.epochs
        load_size = cfg.data.crop_size if finetuning else cfg.data.load_size
        # resuming mid-epoch: the stream goes on in the same permutation from the samples already consumed
        loader = unpaired_loader(splits, cfg.data, rank=ctx.rank, world_size=ctx.world_size, epoch=pos.epoch,
                                 seed=seed, load_size=load_size, start=pos.images_in_epoch)
        for i, batch in enumerate(loader):
            seen = i + 1
            if device_batcher is not None:
                a, b, undecodable = device_batcher(batch, load_size)
                batch["skipped"] = batch.get("skipped", 0) + undecodable
            else:
                a, b = batch["a"].to(device, non_blocking=True), batch["b"].to(device, non_blocking=True)
            real_a = to_input_format(a, cfg.train.channels_last)
            real_b = to_input_format(b, cfg.train.channels_last)
            begin_step(cfg.train.compile_mode if cfg.train.compile else "default")
            gen = torch.Generator(device=device)
            gen.manual_seed(step_seed(seed, ctx.rank, pos.step, 0))
            flip_gen = torch.Generator()
            flip_gen.manual_seed(step_seed(seed, ctx.rank, pos.step, 1))
            losses = cut_step(strategy.nets, strategy.updater, real_a, real_b, cfg.loss, generator=gen,
                              flip_generator=flip_gen, precision=cfg.train.precision,
                              bf16_discriminator=cfg.train.bf16_discriminator, d_for_g=plain.d)
            meter.add(losses, batch.get("skipped", 0))
            pos.step += 1
            pos.images_in_epoch += sched.images_per_step
            if first_step_s is None and started_at is not None:
                first_step_s = time.time() - started_at
                if rank0:
                    say(f"[cutdist.train] first training step done {first_step_s:.1f} s after the driver started")
            epoch_end = i == len(loader) - 1
            if epoch_end:
                pos.epoch, pos.images_in_epoch = pos.epoch + 1, 0
            finished = sched.finished(pos)
            eval_due = evaluator is not None and (
                finished or (epoch_end and cfg.eval.every > 0 and pos.epoch % cfg.eval.every == 0))
            ckpt_due = finished or eval_due or pos.step % cfg.checkpoint.every_steps == 0
            log_due = ckpt_due or pos.step % cfg.logging.every_steps == 0

            if rank0 and (finished or pos.step % cfg.logging.sample_every_steps == 0):
                _write_samples(logger, plain, cfg, sample_inputs or (a, b), pos.step, device)
            if log_due:
                metrics = _interval_metrics(meter, ctx, pos, sched, lr, first_step_s)
                if eval_due:
                    fid = evaluator(plain.g)
                    metrics.update(fid)
                    if best_fid is None or fid["fid"] < best_fid:
                        best_fid = fid["fid"]
                    best.update(fid, pos.step, pos.epoch)
                metrics.update(best.as_metrics())
                if best_fid is not None:
                    metrics["fid_best"] = best_fid
                metrics["ckpt_fid"] = metrics["fid"] if eval_due else math.inf
                _publish(ctx, strategy, cfg, pos, metrics, lr, best_fid, ckpt_due, logger)
                last_metrics = metrics
            if finished:
                break
        else:
            if seen != len(loader):
                raise RuntimeError(f"data: unpaired_loader gave {seen} batches in epoch {pos.epoch} on rank "
                                   f"{ctx.rank}, expected {len(loader)} (ranks would fall out of step)")
    if logger is not None:
        logger.close()
    return last_metrics


def _interval_metrics(meter: LossMeter, ctx: WorkerContext, pos: Position, sched: Schedule, lr: float,
                      first_step_s: float | None) -> dict[str, Any]:
    m: dict[str, Any] = meter.collect(ctx.world_size, ctx.device)
    steps_per_s = m["interval_steps"] / m["interval_s"] if m["interval_s"] > 0 else 0.0
    remaining = max(0, sched.total_steps - pos.step)
    m.update({
        "step": pos.step,
        "epoch": pos.epoch + pos.images_in_epoch / (sched.steps_per_epoch * sched.images_per_step),
        "lr": lr,
        "steps_per_s": steps_per_s,
        "images_per_s": steps_per_s * sched.images_per_step,
        "eta_s": remaining / steps_per_s if steps_per_s > 0 else math.inf,
        "world_size": ctx.world_size,
    })
    if first_step_s is not None:
        m["first_step_s"] = first_step_s
    return m


def _publish(ctx: WorkerContext, strategy: Strategy, cfg: JobConfig, pos: Position, metrics: dict[str, Any],
             lr: float, best_fid: float | None, with_checkpoint: bool, logger: RunLogger | None) -> None:
    from cutdist.model.io import save_model

    if logger is not None:
        logger.log(pos.step, metrics)
    ckpt_dir = None
    if with_checkpoint:
        metrics["replica_divergence"] = replica_divergence(strategy.plain, ctx.world_size, ctx.device)
        optimizers = strategy.optimizer_state()   # every rank: a collective under DeepSpeed ZeRO-1
        if ctx.rank == 0:
            ckpt_dir = Path(tempfile.mkdtemp(prefix="cutdist_ckpt_"))
            save_model(ckpt_dir, strategy.plain, cfg, pos.step, pos.epoch, source="cutdist.train")
            save_train_state(ckpt_dir, position=pos, world_size=ctx.world_size, strategy=strategy.name,
                             optimizers=optimizers, best_fid=best_fid,
                             lr_schedule={"policy": "linear", "epoch": pos.epoch, "epochs": cfg.optim.epochs,
                                          "epochs_decay": cfg.optim.epochs_decay, "lr": lr})
            write_json_atomic(ckpt_dir / METRICS_FILE, metrics)
    try:
        ctx.report(metrics, ckpt_dir, pos.step)
    finally:
        if ckpt_dir is not None:
            shutil.rmtree(ckpt_dir, ignore_errors=True)


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
    try:
        columns, names = [real_a, plain.g(real_a), real_b], ["real A", "G(A)", "real B"]
        if cfg.loss.identity:
            columns.append(plain.g(real_b))
            names.append("G(B)")
    finally:
        plain.g.train(was_training)
    logger.samples(step, columns, names)


class FidEvaluator:
    """FID of G(test A) against the real test B statistics, every rank translating its share.

    The reference statistics are computed (or read from their cache) on rank 0 once, then broadcast.
    """

    def __init__(self, cfg: JobConfig, splits: Any, ctx: WorkerContext) -> None:
        from cutdist.eval.inception import backbone_caveat, load_inception
        from cutdist.eval.reference import reference_stats

        self.cfg, self.splits, self.ctx = cfg, splits, ctx
        self.model, self.backbone = load_inception(cfg.eval.inception_weights, ctx.device)
        caveat = backbone_caveat(self.backbone)
        if ctx.rank == 0 and caveat:
            print(f"[cutdist.train] warning: FID backbone {self.backbone}: {caveat}", flush=True)
        ref = [None, None, None]
        if ctx.rank == 0:   # the features too: KID (cutdist.eval.kid) from the same activations
            ref = list(reference_stats(splits.test_b, model=self.model, backbone=self.backbone,
                                       size=cfg.data.crop_size, batch_size=cfg.eval.batch_size, device=ctx.device,
                                       cache_dir=cfg.eval.cache_dir, manifest=splits.manifest, with_features=True))
        if ctx.world_size > 1:
            dist.broadcast_object_list(ref, src=0)
        self.ref_mu, self.ref_sigma, self.ref_features = ref

    def __call__(self, g: torch.nn.Module) -> dict[str, Any]:
        from cutdist.data.stream import test_loader
        from cutdist.eval import fid_during_training

        batches = test_loader(self.splits.test_a, rank=self.ctx.rank, world_size=self.ctx.world_size,
                              size=self.cfg.data.crop_size, batch_size=self.cfg.eval.batch_size,
                              max_images=self.cfg.eval.max_images)
        was_training = g.training
        g.eval()
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                out = fid_during_training(lambda x: g(x.to(self.ctx.device)), batches,   # (keys, images): KID order
                                          model=self.model, backbone=self.backbone, ref_mu=self.ref_mu,
                                          ref_sigma=self.ref_sigma, device=self.ctx.device,
                                          ref_features=self.ref_features)
        finally:
            g.train(was_training)
        return {"fid": float(out["fid"]), "fid_backbone": out["backbone"], "fid_real": bool(out["real_fid"]),
                "fid_n_images": int(out["n_images"]), "kid": float(out["kid"]), "kid_std": float(out["kid_std"]),
                "kid_subset_size": int(out["kid_subset_size"]), "fid_seconds": time.perf_counter() - t0}


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
