"""``python -m cutdist.bench train-step``: images/s of ONE full CUT / FastCUT training step, one JSON line.

  [--mode cut|fastcut] [--size 256] [--batch 1] [--precision fp32|bf16] [--compile [--compile-mode M]]
  [--channels-last] [--fused-adam] [--steps 20] [--warmup 5] [--device auto|cpu|cuda]
  [--ngf 64] [--ndf 64] [--n-blocks 9] [--num-patches 256] [--nce-layers 0,4,8,12,16] [--no-antialias]

The step is ``cut_step`` exactly as training runs it (D update, then G+F update, PatchNCE included) on networks
prepared by ``apply_fast_path``; inputs are fixed random images already on the device, so data loading is not
timed (``python -m cutdist.bench data`` measures the feed). Timing starts after ``--warmup`` steps (compilation
and cuDNN autotuning happen there) and covers ``--steps`` steps with no host synchronisation between them: CUDA
events around each step, one synchronisation at the end. FLOPs are counted by ``torch.utils.flop_counter`` over
one eager step at the same size and batch, forward and backward (FastCUT: the mean of a flipped and an
unflipped step, whose costs differ). Peak memory: ``torch.cuda.max_memory_allocated`` on CUDA, the process's max
RSS on CPU (``peak_mem_kind`` says which). Model sizes default to the paper's (ngf 64, ndf 64, 9 blocks, 256
patches, taps 0,4,8,12,16, anti-aliased). Never imports Ray or DeepSpeed.

Exit 0 with the JSON line; 2 on a usage error (one line on stderr); 1 when the run fails (out of memory, ...),
with a JSON line holding ``error``.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import platform
import resource
import sys
import traceback
import time
import warnings
from typing import Any

import torch

from cutdist import config
from cutdist.bench.cli import UsageError, choose_device, device_name
from cutdist.model.cut import LocalUpdater, cut_step, make_optimizers
from cutdist.model.fastpath import (COMPILE_MODES, CompileFallbackWarning, apply_fast_path, begin_step,
                                    compile_failures, to_input_format)
from cutdist.model.networks import build_nets


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cutdist.bench train-step", description=__doc__.splitlines()[0])
    p.add_argument("--mode", default="cut", choices=["cut", "fastcut"])
    p.add_argument("--size", type=int, default=256, help="image side (the paper: 256)")
    p.add_argument("--batch", type=int, default=1, help="images of each domain per step (the paper: 1)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                   help="bf16 = autocast, PatchNCE logits and losses and D in fp32")
    p.add_argument("--bf16-discriminator", action="store_true",
                   help="with --precision bf16: D under autocast too (train.bf16_discriminator)")
    p.add_argument("--compile", action="store_true", help="torch.compile G, D and F (eager with a warning if it fails)")
    p.add_argument("--compile-mode", default="default", choices=list(COMPILE_MODES))
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (tests use aot_eager)")
    p.add_argument("--channels-last", action="store_true", help="NHWC inputs and model memory format")
    p.add_argument("--fused-adam", action="store_true", help="torch.optim.Adam(fused=True)")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation, autotuning)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--ngf", type=int, default=64)
    p.add_argument("--ndf", type=int, default=64)
    p.add_argument("--n-blocks", type=int, default=9)
    p.add_argument("--num-patches", type=int, default=256)
    p.add_argument("--nce-layers", default="0,4,8,12,16", help="comma-separated generator taps")
    p.add_argument("--netf-nc", type=int, default=256, help="PatchNCE MLP width")
    p.add_argument("--no-antialias", action="store_true", help="strided convs instead of blur-pool")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP count (no TFLOP/s)")
    p.add_argument("--no-cudnn-benchmark", action="store_true", help="CUDA: leave cudnn.benchmark off")
    p.add_argument("--no-sync-check", action="store_true",
                   help="CUDA: skip the extra step run under torch.cuda.set_sync_debug_mode('error')")
    p.add_argument("--threads", type=int, default=0, help="CPU: torch intra-op threads (0 = torch's default)")
    return p


def _job(args: argparse.Namespace) -> config.JobConfig:
    for flag, value, low in (("--size", args.size, 16), ("--batch", args.batch, 1), ("--steps", args.steps, 1),
                             ("--warmup", args.warmup, 0), ("--threads", args.threads, 0)):
        if value < low:
            raise UsageError(f"{flag}: must be >= {low}, got {value}")
    if args.size % 4:
        raise UsageError(f"--size: must be a multiple of 4 (two down-samplings), got {args.size}")
    try:
        layers = [int(v) for v in args.nce_layers.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--nce-layers: expected comma-separated integers, got {args.nce_layers!r}") from None
    values = {"model.mode": args.mode, "model.ngf": args.ngf, "model.ndf": args.ndf, "model.n_blocks": args.n_blocks,
              "model.antialias": not args.no_antialias, "model.netf_nc": args.netf_nc,
              "loss.nce_layers": layers, "loss.num_patches": args.num_patches,
              "data.root": "(bench: synthetic tensors)", "data.crop_size": args.size, "data.load_size": args.size,
              "data.batch_size": args.batch, "train.precision": args.precision, "train.compile": args.compile,
              "train.bf16_discriminator": args.bf16_discriminator,
              "train.channels_last": args.channels_last, "train.compile_mode": args.compile_mode,
              "optim.fused": args.fused_adam, "train.seed": args.seed}
    try:
        return config.from_dict(values)
    except config.ConfigError as err:
        raise UsageError(str(err)) from None


def predicted_coins(flip_gen: torch.Generator, n: int) -> list[bool]:
    """The next ``n`` flip coins ``cut_step`` will draw from ``flip_gen`` (a copy of its state is consumed)."""
    probe = torch.Generator().manual_seed(0)
    probe.set_state(flip_gen.get_state())
    return [bool(torch.rand((), generator=probe) < 0.5) for _ in range(n)]


def _seed_for_coin(value: bool) -> int:
    return next(s for s in range(100) if predicted_coins(torch.Generator().manual_seed(s), 1)[0] == value)


class Bench:
    """Networks, optimisers, fixed inputs and generators for repeated ``cut_step`` calls."""

    def __init__(self, cfg: config.JobConfig, device: torch.device) -> None:
        self.cfg, self.device, self.compile_mode = cfg, device, cfg.train.compile_mode
        torch.manual_seed(cfg.train.seed)
        self.nets = build_nets(cfg)
        for name in ("g", "d", "f"):
            getattr(self.nets, name).to(device)
        self.updater = LocalUpdater(make_optimizers(self.nets, cfg.optim, fused=cfg.optim.fused))
        images = torch.Generator().manual_seed(cfg.train.seed + 1)
        shape = (cfg.data.batch_size, 3, cfg.data.crop_size, cfg.data.crop_size)
        self.real_a = (torch.rand(shape, generator=images) * 2 - 1).to(device)
        self.real_b = (torch.rand(shape, generator=images) * 2 - 1).to(device)
        self.patch_gen = torch.Generator(device=device).manual_seed(cfg.train.seed + 2)
        self.flip_gen = torch.Generator().manual_seed(cfg.train.seed + 3)

    def apply_fast_path(self, backend: str) -> None:
        t = self.cfg.train
        apply_fast_path(self.nets, channels_last=t.channels_last, compile=t.compile, compile_mode=self.compile_mode,
                        backend=backend)
        self.real_a = to_input_format(self.real_a, t.channels_last)
        self.real_b = to_input_format(self.real_b, t.channels_last)

    def step(self, flip_gen: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        begin_step(self.compile_mode)
        return cut_step(self.nets, self.updater, self.real_a, self.real_b, self.cfg.loss, generator=self.patch_gen,
                        flip_generator=self.flip_gen if flip_gen is None else flip_gen,
                        precision=self.cfg.train.precision,
                        bf16_discriminator=self.cfg.train.bf16_discriminator)


def count_step_flops(bench: Bench) -> dict[str, Any]:
    """FLOPs of one eager step (forward + backward, as FlopCounterMode counts them: convolutions, matmuls, ...).
    FastCUT: one unflipped and one flipped step (the flipped one runs G's encoder on x once more), and their mean."""
    from torch.utils.flop_counter import FlopCounterMode

    def counted(flip_gen: torch.Generator | None) -> int:
        with FlopCounterMode(display=False) as counter:
            bench.step(flip_gen)
        return int(counter.get_total_flops())

    if not bench.cfg.loss.flip_equivariance:
        flops = counted(None)
        return {"flops_per_step": flops}
    unflipped = counted(torch.Generator().manual_seed(_seed_for_coin(False)))
    flipped = counted(torch.Generator().manual_seed(_seed_for_coin(True)))
    return {"flops_per_step": (unflipped + flipped) // 2, "flops_per_step_unflipped": unflipped,
            "flops_per_step_flipped": flipped}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _dynamo_frames() -> int:
    """Frames dynamo has compiled so far in this process (to tell whether the timed steps recompiled)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:   # pragma: no cover
        return 0
    return int(counters["stats"]["unique_graphs"])


def timed_steps(bench: Bench, steps: int) -> tuple[float, list[float], dict[str, torch.Tensor]]:
    """(total seconds, per-step milliseconds, last losses) over ``steps`` steps, with no synchronisation between
    steps: CUDA events recorded around each step, read after one synchronisation at the end."""
    device = bench.device
    _sync(device)
    if device.type == "cuda":
        events = [torch.cuda.Event(enable_timing=True) for _ in range(steps + 1)]
        events[0].record()
        for i in range(steps):
            losses = bench.step()
            events[i + 1].record()
        torch.cuda.synchronize(device)
        per_step = [events[i].elapsed_time(events[i + 1]) for i in range(steps)]
        return events[0].elapsed_time(events[-1]) / 1000.0, per_step, losses
    per_step = []
    start = time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        losses = bench.step()
        per_step.append((time.perf_counter() - t0) * 1000.0)
    return time.perf_counter() - start, per_step, losses


def sync_check(bench: Bench) -> bool | str:
    """CUDA: one more step under ``set_sync_debug_mode('error')``: True, or the first line of what synchronised."""
    torch.cuda.synchronize(bench.device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        bench.step()
        result: bool | str = True
    except RuntimeError as err:
        result = str(err).strip().splitlines()[0][:300]
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize(bench.device)
    return result


def _peak_memory(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "cuda_max_memory_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "cpu_max_rss"   # ru_maxrss is in KiB


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def describe(args: argparse.Namespace, cfg: config.JobConfig, device: torch.device) -> dict[str, Any]:
    """The switches and sizes of this run (every JSON line carries them, errors included)."""
    out: dict[str, Any] = {
        "bench": "train-step", "mode": cfg.model.mode, "size": cfg.data.crop_size, "batch": cfg.data.batch_size,
        "precision": cfg.train.precision, "bf16_discriminator": cfg.train.bf16_discriminator,
        "compile": cfg.train.compile,
        "compile_mode": args.compile_mode if cfg.train.compile else None,
        "compile_backend": args.compile_backend if cfg.train.compile else None,
        "channels_last": cfg.train.channels_last, "fused_adam": cfg.optim.fused,
        "steps": args.steps, "warmup": args.warmup, "device": device.type, "device_name": device_name(device),
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "ngf": cfg.model.ngf, "ndf": cfg.model.ndf, "n_blocks": cfg.model.n_blocks, "n_layers_d": cfg.model.n_layers_d,
        "antialias": cfg.model.antialias, "num_patches": cfg.loss.num_patches, "nce_layers": list(cfg.loss.nce_layers),
        "netf_nc": cfg.model.netf_nc, "lambda_x": cfg.loss.lambda_x, "identity": cfg.loss.identity,
        "flip_equivariance": cfg.loss.flip_equivariance, "seed": cfg.train.seed,
    }
    if device.type == "cuda":
        out.update(cudnn_benchmark=torch.backends.cudnn.benchmark, cudnn_tf32=torch.backends.cudnn.allow_tf32,
                   matmul_tf32=torch.backends.cuda.matmul.allow_tf32)
    else:
        out["threads"] = torch.get_num_threads()
    return out


def run(args: argparse.Namespace, cfg: config.JobConfig, device: torch.device, result: dict[str, Any]) -> None:
    """Fill ``result`` with the measurements (it already holds ``describe``'s fields)."""
    bench = Bench(cfg, device)
    if not args.no_flops:
        t0 = time.perf_counter()
        result.update(count_step_flops(bench))     # eager, before the fast path; also warms cuDNN up
        result["flop_count_s"] = round(time.perf_counter() - t0, 2)
    bench.apply_fast_path(args.compile_backend)

    warmup = args.warmup
    if cfg.train.compile and cfg.loss.flip_equivariance:
        # Flipped and unflipped steps call G differently: warm up until both have been compiled.
        coins = predicted_coins(bench.flip_gen, warmup + 64)
        warmup = max(warmup, coins.index(True) + 1 if True in coins else 0, coins.index(False) + 1 if False in coins else 0)
    result["warmup_steps_run"] = warmup
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CompileFallbackWarning)
        t0 = time.perf_counter()
        for _ in range(warmup):
            bench.step()
        _sync(device)
        result["warmup_s"] = round(time.perf_counter() - t0, 2)
        frames = _dynamo_frames()
        total_s, per_step, losses = timed_steps(bench, args.steps)
        result["frames_compiled_while_timed"] = _dynamo_frames() - frames
    result["compile_fallbacks"] = compile_failures(bench.nets)
    result["warnings"] = sorted({str(w.message)[:300] for w in caught
                                 if issubclass(w.category, CompileFallbackWarning)})

    ms = total_s * 1000.0 / args.steps
    result["ms_per_step"] = round(ms, 3)
    result["ms_per_step_median"] = round(_median(per_step), 3)
    result["ms_per_step_min"] = round(min(per_step), 3)
    result["images_per_s"] = round(cfg.data.batch_size * args.steps / total_s, 3)
    if "flops_per_step" in result:
        result["flops_per_image"] = result["flops_per_step"] // cfg.data.batch_size
        result["tflops_per_s"] = round(result["flops_per_step"] * args.steps / total_s / 1e12, 3)
    peak, kind = _peak_memory(device)
    result["peak_mem_gib"] = round(peak, 3)
    result["peak_mem_kind"] = kind
    result["losses"] = {k: round(float(v), 5) for k, v in losses.items()}      # after timing: reading is fine
    result["losses_finite"] = all(torch.isfinite(v).item() for v in losses.values())
    if device.type == "cuda" and not args.no_sync_check:
        result["host_sync_free"] = sync_check(bench)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = _job(args)
        device = choose_device(args.device)
    except UsageError as err:
        print(f"cutdist.bench train-step: {err}", file=sys.stderr)
        return 2
    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not args.no_cudnn_benchmark
        torch.cuda.reset_peak_memory_stats(device)
    result = describe(args, cfg, device)
    code = 0
    try:
        run(args, cfg, device, result)
    except Exception as err:   # out of memory, a kernel failure...: one JSON line that says so, exit 1
        traceback.print_exc(file=sys.stderr)   # the whole story for the log; the JSON line keeps one line of it
        result["error"] = f"{type(err).__name__}: {' '.join(str(err).split())[:500]}"
        code = 1
        with contextlib.suppress(Exception):
            result["peak_mem_gib"], result["peak_mem_kind"] = _peak_memory(device)
    print(json.dumps(result), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
