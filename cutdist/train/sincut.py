"""What the worker loop does differently for ``model.mode: sincut`` (one image per domain):

- the feed: every step, this rank's share of the global batch of zoom-and-patch crops
  (``cutdist.data.single_image``), cut on the training device from the two decoded images; an epoch is
  ``data.sincut_epoch_size`` crops, ``data.batch_size`` (global) per step, so the schedule is the same on any
  number of workers and a resumed run cuts the very crops it would have;
- the step: ``sincut_step`` (R1 every step, identity L1) with this (rank, step)'s patch generator;
- the evaluation: one image has no FID; rank 0 translates the whole image A (sides rounded to x4, bilinear, noise
  seeded by the step) and writes it beside the sample grids (``samples/translated_<step>.png`` and
  ``samples/translated_latest.png``, also to TensorBoard; copied into a run directory in object storage like
  the samples);
- the sample grid: four fixed crops of A and of B (the first crops of epoch 0), the same at every sample step.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from cutdist.config import JobConfig


def load_images(cfg: JobConfig, splits: Any):
    from cutdist.data.single_image import load_single_images

    return load_single_images(cfg.data, splits)


class SinCUTFeed:
    """This rank's (A crops, B crops) of one epoch, from where ``pos`` stands; same interface as the loop's feed."""

    def __init__(self, cfg: JobConfig, images: Any, ctx: Any, sched: Any) -> None:
        from cutdist.data.single_image import SingleImageStream

        self.cfg, self.ctx, self.sched = cfg, ctx, sched
        self.stream = SingleImageStream(images, cfg.data, seed=cfg.train.seed, device=ctx.device)

    def epoch(self, pos: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor, int, bool]]:
        from cutdist.model.fastpath import to_input_format

        if self.sched.epoch_done(pos):   # resumed after the epoch's last step
            pos.epoch, pos.images_in_epoch = pos.epoch + 1, 0
            return
        start = pos.images_in_epoch // self.sched.images_per_step   # crops of the epoch already consumed, globally
        last = self.sched.steps_per_epoch - 1
        channels_last = self.cfg.train.channels_last
        for i, batch in enumerate(self.stream.epoch(pos.epoch, rank=self.ctx.rank, world_size=self.ctx.world_size,
                                                    start_step=start), start=start):
            yield (to_input_format(batch["a"], channels_last), to_input_format(batch["b"], channels_last), 0,
                   i == last)


def sincut_train_step(cfg: JobConfig, strategy: Any, real_a: torch.Tensor, real_b: torch.Tensor, ctx: Any,
                      step: int) -> dict[str, torch.Tensor]:
    """One ``sincut_step`` with this (rank, step)'s patch generator (the decoder's noise: torch's generator)."""
    from cutdist.model.sincut import sincut_step
    from cutdist.schedule import PATCH_SEEDS, mix_seed

    patches = torch.Generator(device=ctx.device)
    patches.manual_seed(mix_seed(cfg.train.seed, ctx.rank, step, PATCH_SEEDS))
    return sincut_step(strategy.nets, strategy.updater, real_a, real_b, cfg.loss, generator=patches,
                       precision=cfg.train.precision, bf16_discriminator=cfg.train.bf16_discriminator,
                       d_for_g=strategy.plain.d)


def sample_inputs(cfg: JobConfig, images: Any, count: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``count`` crops of epoch 0 of A and of B (a fixed set, so grids compare over time)."""
    from cutdist.data.single_image import SingleImageStream

    stream = SingleImageStream(images, cfg.data, seed=cfg.train.seed, device=torch.device("cpu"))
    indices = range(min(count, cfg.data.sincut_epoch_size))
    return stream.a.batch(0, indices), stream.b.batch(0, indices)


class WholeImageEvaluator:
    """SinCUT's evaluation: the whole image A translated by G, written by rank 0 (see the module docstring)."""

    def __init__(self, cfg: JobConfig, images: Any, ctx: Any, logs_dir: Path, logger: Any) -> None:
        from cutdist.data.single_image import whole_image

        self.cfg, self.ctx, self.logger = cfg, ctx, logger
        self.samples = Path(logs_dir) / "samples"
        self.input = whole_image(images.a)

    @torch.no_grad()
    def __call__(self, g: torch.nn.Module, step: int) -> dict[str, Any]:
        if self.ctx.rank != 0:
            return {}
        was_training = g.training
        g.eval()
        devices = [self.ctx.device] if self.ctx.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):   # the noise, seeded by the step; training's RNG untouched
                torch.manual_seed(step)
                out = g(self.input.to(self.ctx.device))[0]
        finally:
            g.train(was_training)
        array = ((out.float().cpu().permute(1, 2, 0) + 1) / 2 * 255).clamp(0, 255).numpy().astype(np.uint8)
        self.samples.mkdir(parents=True, exist_ok=True)
        path = self.samples / f"translated_{step:09d}.png"
        Image.fromarray(array).save(path)
        Image.fromarray(array).save(self.samples / "translated_latest.png")
        if self.logger is None:
            return {"translated_image": str(path)}
        if self.logger.writer is not None:
            self.logger.writer.add_image("translated", array, step, dataformats="HWC")
            self.logger.writer.flush()
        self.logger.add_file(self.samples / "translated_latest.png")   # run directory in a bucket: copied there
        return {"translated_image": self.logger.add_file(path)}
