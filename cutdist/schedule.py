"""The training schedule: epochs, steps, the learning rate, what is due after each step, and seeds.

One place for the arithmetic the data stream, the worker loop and the sweep's results all need (it sits beside
``cutdist.config``, below data/ and train/, so each of them imports it without reaching into another):

- an epoch is N = max(|A|, |B|) samples seen globally (``Splits.epoch_size``, the reference's ``__len__``):
  ``steps_per_epoch`` batches on every rank;
- the run ends after ``optim.epochs + optim.epochs_decay`` epochs or ``optim.max_steps`` steps, whichever
  comes first (with no epochs: ``max_steps`` at a constant learning rate);
- the learning rate: ``optim.lr`` scaled to the global batch (``config.scaled_lr``, ``optim.lr_scaling``), then
  the reference's ``linear`` policy (``lr_factor``); the decay epochs drop the resize-then-crop jitter;
- after every step ``Schedule.due`` says what is due: a sample grid, a log line, an FID evaluation, a
  checkpoint; every rank takes the same decisions, from the position alone, except the checkpoint by wall time
  (``checkpoint.every_minutes``, ``CheckpointTimer``), asked on log steps only and agreed across the ranks;
- ``mix_seed`` is the one seed mixer: stream seeds (per rank, worker, epoch, domain) and step seeds (per rank,
  step: patch ids, the flip coin) both come from it, so a resumed run draws what an uninterrupted one would.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cutdist.config import JobConfig, scaled_lr

SEED_MASK = 0xFFFFFFFF   # each part counts modulo 2**32 (config.train.seed is refused outside [0, 2**32))
PATCH_SEEDS, FLIP_SEEDS = 0, 1   # the two per-step streams of mix_seed(seed, rank, step, stream)


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers, well mixed (numpy SeedSequence), the same on every platform."""
    state = np.random.SeedSequence([int(p) & SEED_MASK for p in parts]).generate_state(2, np.uint64)
    return int(state[0] >> np.uint64(1))


def steps_per_epoch(epoch_size: int, batch_size: int, world_size: int) -> int:
    """Batches per rank in one epoch: ceil(N / (B * world)), N = max(|A|, |B|) samples seen globally."""
    if epoch_size < 1 or batch_size < 1 or world_size < 1:
        raise ValueError(f"steps_per_epoch: need an epoch size, batch size and world size >= 1, "
                         f"got {epoch_size}, {batch_size}, {world_size}")
    return math.ceil(epoch_size / (batch_size * world_size))


def lr_factor(epoch: int, epochs: int, epochs_decay: int) -> float:
    """The reference's 'linear' policy: lr factor for the epoch ``epoch`` (counted from 0).

    The reference computes ``1 - max(0, e + epoch_count - n_epochs) / (n_epochs_decay + 1)`` with its scheduler
    index e = 0 during the first epoch (epoch_count = 1, stepped at the end of every epoch). Our epoch ``i``
    (0-based) is its e = i, so the factor is ``1 - max(0, i + 1 - epochs) / (epochs_decay + 1)``: 1 for epochs
    0 .. epochs-1, then 1 - 1/(d+1), ..., 1/(d+1) in the last epoch (epochs + epochs_decay - 1). Beyond the
    schedule it is clamped at 0 (the reference would go negative; it never trains that long).
    """
    if epoch < 0 or epochs < 0 or epochs_decay < 0:
        raise ValueError(f"lr_factor: negative argument (epoch={epoch}, epochs={epochs}, epochs_decay={epochs_decay})")
    return max(0.0, 1.0 - max(0, epoch + 1 - epochs) / float(epochs_decay + 1))


@dataclass
class Position:
    """Where training stands. ``images_in_epoch`` counts the epoch's samples (positions of its permutation)
    consumed globally, so the position means the same thing whatever the world size that resumes it;
    ``images_seen`` counts every sample consumed since the start, at whatever world size each step ran."""
    step: int = 0
    epoch: int = 0
    images_in_epoch: int = 0
    images_seen: int = 0


@dataclass(frozen=True)
class Due:
    """What is due after a step (see ``Schedule.due``)."""
    finished: bool
    samples: bool
    eval: bool
    checkpoint: bool
    log: bool


def per_rank_batch(cfg: JobConfig, world_size: int) -> int:
    """Images per rank per step. SinCUT's data.batch_size is the global batch (the reference's 16 crops), split over
    the ranks; CUT's and FastCUT's is per rank (the paper's batch 1 on each)."""
    return cfg.data.batch_size // world_size if cfg.model.mode == "sincut" else cfg.data.batch_size

@dataclass(frozen=True)
class Schedule:
    epoch_size: int           # samples per epoch, globally
    steps_per_epoch: int
    images_per_step: int      # global: batch x world size
    epochs: int               # at the initial lr
    epochs_decay: int         # lr decaying linearly to 0
    max_steps: int            # 0 = by epochs only
    base_lr: float            # optim.lr scaled to the global batch
    load_size: int
    crop_size: int
    eval_enabled: bool
    eval_every: int           # epochs; 0 = only at the end
    checkpoint_every: int     # steps; 0 = by time (CheckpointTimer), FID and the end only
    log_every: int            # steps
    sample_every: int         # steps

    @classmethod
    def of(cls, cfg: JobConfig, epoch_size: int, world_size: int) -> Schedule:
        """The job's schedule on ``world_size`` ranks; ``epoch_size``: ``Splits.epoch_size``."""
        per_rank = per_rank_batch(cfg, world_size)
        global_batch = per_rank * world_size
        return cls(epoch_size, steps_per_epoch(epoch_size, per_rank, world_size), global_batch,
                   cfg.optim.epochs, cfg.optim.epochs_decay, cfg.optim.max_steps, scaled_lr(cfg.optim, global_batch),
                   cfg.data.load_size, cfg.data.crop_size, cfg.eval.enabled, cfg.eval.every,
                   cfg.checkpoint.every_steps, cfg.logging.every_steps, cfg.logging.sample_every_steps)

    @property
    def total_epochs(self) -> int:
        return self.epochs + self.epochs_decay

    @property
    def total_steps(self) -> int:
        by_epochs = self.total_epochs * self.steps_per_epoch
        if self.max_steps and by_epochs:
            return min(self.max_steps, by_epochs)
        return self.max_steps or by_epochs

    def finished(self, pos: Position) -> bool:
        return bool((self.max_steps and pos.step >= self.max_steps)
                    or (self.total_epochs and pos.epoch >= self.total_epochs))

    def lr(self, epoch: int) -> float:
        return self.base_lr * (lr_factor(epoch, self.epochs, self.epochs_decay) if self.total_epochs else 1.0)

    def epoch_load_size(self, epoch: int) -> int:
        """The reference drops the resize-then-crop jitter (load_size = crop_size) in the lr-decay epochs."""
        return self.crop_size if self.total_epochs and epoch >= self.epochs else self.load_size

    def epoch_done(self, pos: Position) -> bool:
        """The epoch's samples are all consumed (a run resumed after an epoch's last step starts the next)."""
        return pos.images_in_epoch >= self.epoch_size

    def epoch_progress(self, pos: Position) -> float:
        return pos.epoch + pos.images_in_epoch / (self.steps_per_epoch * self.images_per_step)

    def advance(self, pos: Position, epoch_end: bool) -> None:
        """One step taken (the epoch's last batch when ``epoch_end``: the loader's last)."""
        pos.step += 1
        pos.images_in_epoch += self.images_per_step
        pos.images_seen += self.images_per_step
        if epoch_end:
            pos.epoch, pos.images_in_epoch = pos.epoch + 1, 0

    def due(self, pos: Position, epoch_end: bool, timer: CheckpointTimer | None = None) -> Due:
        """After a step: samples every ``sample_every`` steps; FID every ``eval_every`` epochs and at the end;
        a checkpoint every ``checkpoint_every`` steps, with every FID, at the end, and on a log step when
        ``timer`` says its minutes are up; a log line every ``log_every`` steps and with every checkpoint.

        ``timer`` is asked only on log steps that have no checkpoint already: steps every rank knows from the
        position, so a timer that agrees across the ranks (a collective) is called by all of them together."""
        finished = self.finished(pos)
        evaluate = self.eval_enabled and (
            finished or (epoch_end and self.eval_every > 0 and pos.epoch % self.eval_every == 0))
        checkpoint = finished or evaluate or (self.checkpoint_every > 0 and pos.step % self.checkpoint_every == 0)
        log_step = pos.step % self.log_every == 0
        if log_step and not checkpoint and timer is not None and timer.enabled:
            checkpoint = timer.up()
        return Due(finished=finished, samples=finished or pos.step % self.sample_every == 0, eval=evaluate,
                   checkpoint=checkpoint, log=checkpoint or log_step)


class CheckpointTimer:
    """``checkpoint.every_minutes``: has that much wall time passed since the last checkpoint (or since training
    started in this process)? Each rank reads its own ``clock``; ``agree`` turns this rank's answer into the run's
    (the loop passes an all-reduce MAX: any rank's yes is everyone's, so all ranks checkpoint at the same step;
    with one rank, the answer itself). ``restart`` after every checkpoint, whatever caused it."""

    def __init__(self, every_minutes: float, clock: Callable[[], float] = time.monotonic,
                 agree: Callable[[bool], bool] | None = None) -> None:
        self.every_s = 60.0 * every_minutes
        self.clock = clock
        self.agree = agree or (lambda flag: flag)
        self.since = clock()

    @property
    def enabled(self) -> bool:
        return self.every_s > 0

    def up(self) -> bool:
        return self.agree(self.clock() - self.since >= self.every_s)

    def restart(self) -> None:
        self.since = self.clock()
