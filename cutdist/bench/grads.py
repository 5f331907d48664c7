"""``python -m cutdist.bench grads --config JOB --switch NAME [--device D]``: is a fast-path switch gradient-exact?

  [--modes cut,fastcut|sincut] [--batches 1,2] [--compile-backend inductor|aot_eager] [key=value ...]

One training step from the same weights, batch, patch ids and flip coin, once plain (fp32, NCHW, eager, for-loop
Adam, CPU decode) and once with the switch; prints ONE JSON line with the maximum relative difference per net
(``max_rel_diff``: {"d": ..., "g": ..., "f": ...}) over every case (mode x flipped x batch), each case's numbers and
the tensor that was worst. Relative difference of a tensor: ``max|switched - plain| / max|plain|``. Every gradient
is taken at the step's starting weights (the recorder's optimiser ``step`` does nothing), so D's gradient comes from
D's objective and G's and F's from theirs, all at the same point. Excluded: the biases of convolutions that feed an
instance norm (the norm subtracts the per-channel mean, so their true gradient is 0 and the computed one is
rounding noise), as ``excluded`` says.

Switches (``SWITCHES``): ``channels_last``, ``compile``, ``bf16`` (``train.precision``; not exact: its own
tolerance, see ``BF16_TOLERANCE``), ``fused_adam`` (the parameters, and the update, after one Adam step from the same
gradients), ``decode_on_device`` (the batch decoded and augmented on the device vs the CPU loader's, from the same
JPEG bytes and crop/flip draws, through the same plain step; ``pixel_max_diff`` in 1/255 levels), combined with
``+`` among the network switches (``channels_last+compile``).

Exit 0 when every net is within the tolerance, 1 when one is not (or compile fell back to eager, which would check
nothing), 2 on a usage error. Never imports Ray or DeepSpeed.

SinCUT (``--modes sincut --config jobs/sincut_smoke.yaml``): unflipped cases only (no flip coin), the decoder's
noise seeded alike in both steps, ``compile`` refused (R1's double backward).

Adding a mode (a new objective): ``register_mode(name, Mode(...))`` with its network builder and its step
function; the step must drive its updates through the ``Updater`` protocol of ``cutdist.model.cut``.
"""
from __future__ import annotations

import argparse
import copy
import io
import json
import math
import random
import sys
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cutdist import config
from cutdist.bench.cli import UsageError, choose_device, device_name
from cutdist.model.cut import cut_step, make_optimizers
from cutdist.model.fastpath import CompileFallbackWarning, apply_fast_path, compile_failures, to_input_format
from cutdist.model.networks import CUTNets, build_nets

TOLERANCE = 1e-3
# bf16 keeps 8 significand bits (relative rounding 2**-9 = 2e-3 per operation) in G's and F's forward and backward,
# and that rounding moves many ReLU inputs across 0: its gradients cannot agree with fp32 to 1e-3. Measured on the
# smoke job (README, "Fast paths"): ||bf16 - fp32|| / ||fp32|| per tensor <= 0.38 (max-relative <= 0.62). Held to 0.5
# in that norm: it still fails on a gradient of the wrong sign (2) or scale (a lost factor 2: 0.5+), nothing finer.
BF16_TOLERANCE = 0.5
# decode_on_device: the largest pixel difference from the CPU loader, in 1/255 levels (nvJPEG's IDCT and the float
# antialiased bicubic vs PIL's fixed-point one); measured on the CPU: 1 level.
PIXEL_TOLERANCE = 3.0
NETS = ("d", "g", "f")
# The check's weights: xavier-normal with gain 1, not the job's init_gain (0.02). At gain 0.02 the features PatchNCE
# L2-normalises are tiny and the step is ill-conditioned: a 1e-7 relative nudge of the input moves G's gradient by
# 3 % (smoke job, FastCUT flipped, batch 1), so no switch could be held to 1e-3 there.
CHECK_INIT_GAIN = 1.0
NUDGE = 1e-7
REDRAWS = 2


# ------------------------------------------------------------------------------------------------ modes

@dataclass(frozen=True)
class Case:
    """One step to compare: the objective (mode), the batch size, and whether the step's flip coin comes up heads."""
    mode: str
    batch: int
    flipped: bool

    def label(self) -> str:
        return f"{self.mode} batch {self.batch}{' flipped' if self.flipped else ''}"


@dataclass(frozen=True)
class Mode:
    """How to build and run one mode's training step for the check.

    ``build_nets(cfg) -> CUTNets``; ``step(nets, updater, real_a, real_b, cfg, *, generator, flip_generator)`` runs
    ONE step, calling ``updater.zero_grad / backward / step`` per parameter group; ``job(cfg, case) -> cfg`` adapts the
    job to the case (e.g. forces flip-equivariance on for a flipped case); ``batch(cfg, case, generator) ->
    (real_a, real_b)`` draws the inputs (CPU, NCHW, fp32); ``optimizers(nets, optim_cfg, fused=) -> {group: optimizer}``
    for the ``fused_adam`` check."""
    build_nets: Callable[[config.JobConfig], CUTNets]
    step: Callable[..., Any]
    job: Callable[[config.JobConfig, Case], config.JobConfig]
    batch: Callable[[config.JobConfig, Case, torch.Generator], tuple[torch.Tensor, torch.Tensor]]
    optimizers: Callable[..., dict[str, torch.optim.Optimizer]] = make_optimizers   # (nets, optim_cfg, fused=)
    flips: bool = True                   # the objective has a flip coin (else only unflipped cases are run)
    refuses: dict[str, str] = field(default_factory=dict)   # switch -> why this mode cannot train with it


def _cut_job(cfg: config.JobConfig, case: Case) -> config.JobConfig:
    cfg = copy.deepcopy(cfg)
    cfg.data.batch_size = case.batch
    if case.flipped:
        cfg.loss.flip_equivariance = True     # CUT has no flip by its preset: a flipped CUT case turns it on
    return cfg


def _random_images(cfg: config.JobConfig, case: Case, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (case.batch, 3, cfg.data.crop_size, cfg.data.crop_size)
    return torch.rand(shape, generator=generator) * 2 - 1, torch.rand(shape, generator=generator) * 2 - 1


def _cut(nets, updater, real_a, real_b, cfg, *, generator, flip_generator):
    return cut_step(nets, updater, real_a, real_b, cfg.loss, generator=generator, flip_generator=flip_generator,
                    precision=cfg.train.precision, bf16_discriminator=cfg.train.bf16_discriminator)


MODES: dict[str, Mode] = {name: Mode(build_nets, _cut, _cut_job, _random_images) for name in ("cut", "fastcut")}


def _sincut_nets(cfg: config.JobConfig) -> CUTNets:
    from cutdist.model.sincut import build_sincut_nets

    return build_sincut_nets(cfg)


def _sincut(nets, updater, real_a, real_b, cfg, *, generator, flip_generator):
    from cutdist.model.sincut import sincut_step

    torch.manual_seed(0)    # the decoder's noise: the same draws in the plain and the switched step
    return sincut_step(nets, updater, real_a, real_b, cfg.loss, generator=generator, precision=cfg.train.precision,
                       bf16_discriminator=cfg.train.bf16_discriminator)


def _sincut_job(cfg: config.JobConfig, case: Case) -> config.JobConfig:
    cfg = copy.deepcopy(cfg)
    cfg.data.batch_size = case.batch
    return cfg


MODES["sincut"] = Mode(_sincut_nets, _sincut, _sincut_job, _random_images, flips=False, refuses={
    "compile": "SinCUT's R1 penalty needs a double backward, which torch.compile (AOTAutograd) does not support; "
               "the config refuses train.compile for sincut"})


def register_mode(name: str, mode: Mode) -> None:
    """Make ``name`` (a ``model.mode``) checkable: ``--modes NAME``."""
    MODES[name] = mode


# ------------------------------------------------------------------------------------------------ recording

class GradientRecorder:
    """An ``Updater`` that keeps, after each ``backward``, a copy of every gradient of every net, and never steps:
    every gradient of the step is taken at the same (starting) weights."""

    def __init__(self, nets: dict[str, nn.Module]) -> None:
        self.nets = nets
        self.grads: dict[str, dict[str, torch.Tensor]] = {name: {} for name in nets}

    def zero_grad(self, group: str) -> None:
        for net in self.nets.values():
            net.zero_grad(set_to_none=True)

    def backward(self, group: str, loss: torch.Tensor) -> None:
        loss.backward()
        for name, net in self.nets.items():
            for pname, p in net.named_parameters():
                if p.grad is not None:
                    if pname in self.grads[name]:
                        raise RuntimeError(f"grads: {name}.{pname} got a gradient in two backward passes")
                    self.grads[name][pname] = p.grad.detach().float().cpu().contiguous()

    def step(self, group: str) -> None:
        pass


def rel_diff(got: torch.Tensor, ref: torch.Tensor) -> float:
    """max|got - ref| / max|ref| (0 when both are 0; inf when only ``ref`` is)."""
    got, ref = got.detach().double().cpu(), ref.detach().double().cpu()
    if got.shape != ref.shape:
        return math.inf
    diff, scale = (got - ref).abs().max().item(), ref.abs().max().item()
    if not math.isfinite(diff):
        return math.inf
    return diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf)


def norm_rel_diff(got: torch.Tensor, ref: torch.Tensor) -> float:
    """||got - ref||_2 / ||ref||_2: the error of the tensor as a whole (reported beside ``rel_diff``)."""
    got, ref = got.detach().double().cpu(), ref.detach().double().cpu()
    diff, scale = (got - ref).norm().item(), ref.norm().item()
    return diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf)


def biases_feeding_instance_norm(net: nn.Module) -> set[str]:
    """Names of the conv biases whose output goes straight into an instance norm (next in the same Sequential)."""
    out = set()
    for prefix, module in net.named_modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.named_children())
        for (name, layer), (_, after) in zip(children, children[1:]):
            if (isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)) and layer.bias is not None
                    and isinstance(after, nn.InstanceNorm2d)):
                out.add(f"{prefix}.{name}.bias" if prefix else f"{name}.bias")
    return out


def compare(got: dict[str, dict[str, torch.Tensor]], ref: dict[str, dict[str, torch.Tensor]],
            excluded: dict[str, set[str]]) -> dict[str, dict[str, Any]]:
    """{net: {"max_rel_diff", "worst", "tensors"}}: the largest relative difference over the net's tensors."""
    out = {}
    for net, tensors in ref.items():
        if set(got.get(net, {})) != set(tensors):
            missing = sorted(set(tensors) ^ set(got.get(net, {})))
            raise RuntimeError(f"grads: {net} has gradients for different tensors with the switch: {missing[:5]}")
        worst, name, norm = 0.0, None, 0.0
        for pname, value in tensors.items():
            if pname in excluded.get(net, ()):
                continue
            d = rel_diff(got[net][pname], value)
            if name is None or d > worst or math.isnan(d):
                worst, name = d, pname
            norm = max(norm, norm_rel_diff(got[net][pname], value))
        out[net] = {"max_rel_diff": worst, "worst": name, "norm_rel_diff": norm, "tensors": len(tensors)}
    return out


# ------------------------------------------------------------------------------------------------ switches

@dataclass(frozen=True)
class Switch:
    """A fast-path switch: the job keys it sets, what it is compared on, and the tolerance."""
    overrides: dict[str, Any]
    kind: str = "grads"            # grads | optimizer | data
    tolerance: float = TOLERANCE
    metric: str = "max_rel_diff"   # the case's field held to the tolerance
    note: str = ""


SWITCHES: dict[str, Switch] = {
    "channels_last": Switch({"train.channels_last": True}),
    "compile": Switch({"train.compile": True}),
    "bf16": Switch({"train.precision": "bf16"}, tolerance=BF16_TOLERANCE, metric="norm_rel_diff",
                   note="bf16 autocast is not exact: ||bf16 - fp32|| / ||fp32|| per tensor held to BF16_TOLERANCE"),
    "fused_adam": Switch({"optim.fused": True}, kind="optimizer",
                         note="parameters (and the update) after one Adam step from the same gradients"),
    "decode_on_device": Switch({"data.decode_on_device": True}, kind="data", tolerance=PIXEL_TOLERANCE,
                               metric="pixel_max_diff",
                               note="not exact: the device decodes and resizes with other rounding (pixels, in 1/255 "
                                    "levels, held to PIXEL_TOLERANCE); the gradients of the same plain step on the "
                                    "two batches are reported, not held to 1e-3"),
}


def parse_switch(name: str) -> tuple[list[str], Switch]:
    """``channels_last`` or ``channels_last+compile`` -> (names, the combined switch)."""
    names = [n.strip() for n in name.split("+") if n.strip()]
    unknown = [n for n in names if n not in SWITCHES]
    if not names or unknown:
        raise UsageError(f"--switch: unknown switch {'+'.join(unknown) or name!r}; choose from {', '.join(SWITCHES)} "
                         "(network switches combine with +)")
    if len(names) == 1:
        return names, SWITCHES[names[0]]
    kinds = {SWITCHES[n].kind for n in names}
    if kinds != {"grads"}:
        raise UsageError(f"--switch {name}: only network switches combine ({', '.join(n for n, s in SWITCHES.items() if s.kind == 'grads')})")
    overrides: dict[str, Any] = {}
    for n in names:
        overrides.update(SWITCHES[n].overrides)
    loosest = max((SWITCHES[n] for n in names), key=lambda sw: sw.tolerance)
    return names, Switch(overrides, tolerance=loosest.tolerance, metric=loosest.metric, note=loosest.note)


def _plain(cfg: config.JobConfig) -> config.JobConfig:
    """The reference job: fp32, NCHW, eager, for-loop Adam, CPU decode."""
    cfg = copy.deepcopy(cfg)
    cfg.train.precision, cfg.train.bf16_discriminator = "fp32", False
    cfg.train.channels_last, cfg.train.compile, cfg.optim.fused, cfg.data.decode_on_device = False, False, False, False
    return cfg


def _coin(flipped: bool) -> torch.Generator:
    """A CPU generator whose first draw makes ``cut_step``'s coin come up ``flipped``."""
    for seed in range(1000):
        if bool(torch.rand((), generator=torch.Generator().manual_seed(seed)) < 0.5) == flipped:
            return torch.Generator().manual_seed(seed)
    raise AssertionError("unreachable")


@dataclass
class Prepared:
    """Networks (with their switches applied) and the inputs of one case, ready for one recorded step."""
    cfg: config.JobConfig
    nets: CUTNets
    real_a: torch.Tensor
    real_b: torch.Tensor
    excluded: dict[str, set[str]] = field(default_factory=dict)


def prepare(mode: Mode, cfg: config.JobConfig, weights: dict[str, dict[str, torch.Tensor]],
            batch: tuple[torch.Tensor, torch.Tensor], device: torch.device, *, compile_backend: str) -> Prepared:
    """Build the nets of ``cfg``, load ``weights``, put them on ``device`` and apply the job's network switches the
    way training does (``apply_fast_path``, ``to_input_format``)."""
    nets = mode.build_nets(cfg)
    for name in NETS:
        net = getattr(nets, name)
        net.load_state_dict(weights[name])
        setattr(nets, name, net.to(device))
    excluded = {name: biases_feeding_instance_norm(getattr(nets, name)) for name in NETS}
    apply_fast_path(nets, channels_last=cfg.train.channels_last, compile=cfg.train.compile,
                    compile_mode=cfg.train.compile_mode, backend=compile_backend)
    real_a, real_b = (to_input_format(x.to(device), cfg.train.channels_last) for x in batch)
    return Prepared(cfg, nets, real_a, real_b, excluded)


def record(mode: Mode, prepared: Prepared, case: Case, patch_seed: int) -> dict[str, dict[str, torch.Tensor]]:
    """The gradients of one step of ``prepared`` with the given patch-id seed and flip coin."""
    nets = {name: getattr(prepared.nets, name) for name in NETS}
    recorder = GradientRecorder(nets)
    generator = torch.Generator(device=prepared.real_a.device).manual_seed(patch_seed)
    mode.step(prepared.nets, recorder, prepared.real_a, prepared.real_b, prepared.cfg, generator=generator,
              flip_generator=_coin(case.flipped))
    return recorder.grads


def _weights(mode: Mode, cfg: config.JobConfig, seed: int) -> dict[str, dict[str, torch.Tensor]]:
    torch.manual_seed(seed)
    cfg = copy.deepcopy(cfg)
    cfg.model.init_gain = CHECK_INIT_GAIN
    nets = mode.build_nets(cfg)
    return {name: {k: v.clone() for k, v in getattr(nets, name).state_dict().items()} for name in NETS}


def check_case(cfg: config.JobConfig, switch: Switch, case: Case, device: torch.device, *, seed: int = 0,
               compile_backend: str = "inductor") -> dict[str, Any]:
    """One case: the plain step and the switched step from the same weights, batch, patch ids and flip.

    The step is piecewise smooth (ReLU, LeakyReLU): at a point where a pre-activation lies within rounding of 0, any
    change of rounding (a nudge of the input, another memory layout) flips that unit and moves a gradient by a finite
    jump; on the smoke job about 1 draw in 12 meets one (measured: a 1e-7 relative nudge of the input alone moved G's
    gradient by 2e-3 at one of 12 draws). So a draw that fails is redrawn at a fresh point (weights, batch, patch ids),
    up to ``REDRAWS`` times, and the case passes when one draw is within the tolerance. A failing draw also reports
    its noise floor (the same plain step with the input nudged by 1e-7; ``ill_conditioned`` when it is above
    tolerance / 10). A real error reproduces at every draw (the instance-norm bug: ~150 % at each). Every draw's
    numbers are in ``draws``."""
    draws = []
    for attempt in range(REDRAWS + 1):
        out = _check_point(cfg, switch, case, device, seed=seed + 100 * attempt, compile_backend=compile_backend)
        out["seed"] = seed + 100 * attempt
        out["passed"] = _passes(out, switch)
        draws.append({k: out[k] for k in ("seed", "passed", switch.metric, "noise_floor") if k in out})
        if out["passed"] or out.get("compile_fallbacks"):    # a fallback is no accident of the point
            break
    out["draws"] = draws
    return out


def _passes(out: dict[str, Any], switch: Switch) -> bool:
    if out.get("compile_fallbacks") or out.get("ill_conditioned"):
        return False
    value = out[switch.metric]
    values = value.values() if isinstance(value, dict) else [value]
    return all(v <= switch.tolerance for v in values)


def _check_point(cfg, switch, case, device, *, seed, compile_backend):
    mode = MODES[case.mode]
    plain = _plain(mode.job(cfg, case))
    switched = config.apply(copy.deepcopy(plain), dict(switch.overrides))
    weights = _weights(mode, plain, seed)
    batch = mode.batch(plain, case, torch.Generator().manual_seed(seed + 1))
    extra: dict[str, Any] = {}
    if switch.kind == "data":
        batch, device_batch, extra["pixel_max_diff"] = decoded_batches(plain, case, device, seed=seed + 1)
    ref_run = prepare(mode, plain, weights, batch, device, compile_backend=compile_backend)
    ref = record(mode, ref_run, case, seed + 2)
    if switch.kind == "optimizer":
        nets = compare_optimizer_step(mode, plain, switched, weights, ref, device)
        extra["max_rel_update_diff"] = {n: v["max_rel_update_diff"] for n, v in nets.items()}
    else:
        if switch.kind == "data":
            run = prepare(mode, plain, weights, device_batch, device, compile_backend=compile_backend)
        else:
            torch._dynamo.reset()    # fresh graphs per case: dynamo's recompile limit would silently run eager
            run = prepare(mode, switched, weights, batch, device, compile_backend=compile_backend)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CompileFallbackWarning)   # reported below, as a failure of the check
            got = record(mode, run, case, seed + 2)
        nets = compare(got, ref, ref_run.excluded)
        if compile_failures(run.nets):    # eager against eager would check nothing
            extra["compile_fallbacks"] = compile_failures(run.nets)
        extra["norm_rel_diff"] = {n: v["norm_rel_diff"] for n, v in nets.items()}
    if not _passes({**extra, "max_rel_diff": {n: v["max_rel_diff"] for n, v in nets.items()},
                    "norm_rel_diff": extra.get("norm_rel_diff")}, switch):
        # Only for a failing draw (it costs a step): the plain step with the input nudged by 1e-7. A floor above
        # tolerance / 10 says the point itself is ill-conditioned (a kink within rounding).
        nudged = prepare(mode, plain, weights, tuple(x * (1 + NUDGE) for x in batch), device,
                         compile_backend=compile_backend)
        floor = compare(record(mode, nudged, case, seed + 2), ref, ref_run.excluded)
        extra["noise_floor"] = {n: v["max_rel_diff"] for n, v in floor.items()}
        extra["ill_conditioned"] = max(extra["noise_floor"].values()) > TOLERANCE / 10
    return {"mode": case.mode, "batch": case.batch, "flipped": case.flipped,
            "max_rel_diff": {n: v["max_rel_diff"] for n, v in nets.items()},
            "worst": {n: v["worst"] for n, v in nets.items()}, **extra}


def compare_optimizer_step(mode: Mode, plain: config.JobConfig, switched: config.JobConfig, weights, grads, device):
    """Both optimisers of ``make_optimizers`` (plain vs the switch's) take one step from the same weights and the same
    gradients (``grads``, the plain step's); compared: the parameters after it and the update itself."""
    after, before = {}, {}
    for label, cfg in (("plain", plain), ("switched", switched)):
        nets = mode.build_nets(cfg)
        for name in NETS:
            net = getattr(nets, name)
            net.load_state_dict(weights[name])
            setattr(nets, name, net.to(device))
        for name in NETS:
            for pname, p in getattr(nets, name).named_parameters():
                p.grad = grads[name][pname].to(device) if pname in grads[name] else None
        for optimizer in mode.optimizers(nets, cfg.optim, fused=cfg.optim.fused).values():
            optimizer.step()
        after[label] = {n: {k: v.detach().cpu() for k, v in getattr(nets, n).named_parameters()} for n in NETS}
    before = {n: {k: v for k, v in weights[n].items() if k in after["plain"][n]} for n in NETS}
    out = {}
    for name in NETS:
        worst, worst_name, update = 0.0, None, 0.0
        for pname, ref in after["plain"][name].items():
            d = rel_diff(after["switched"][name][pname], ref)
            u = rel_diff(after["switched"][name][pname] - before[name][pname], ref - before[name][pname])
            if worst_name is None or d > worst:
                worst, worst_name = d, pname
            update = max(update, u)
        out[name] = {"max_rel_diff": worst, "worst": worst_name, "max_rel_update_diff": update}
    return out


def decoded_batches(cfg: config.JobConfig, case: Case, device: torch.device, *, seed: int):
    """The same JPEG bytes and crop/flip draws, decoded and augmented by the CPU loader's path (PIL) and by
    ``data.decode_on_device``'s (``torchvision.io.decode_jpeg`` + ``augment_batch`` on ``device``):
    ((a, b) CPU, (a, b) device, the largest pixel difference in 1/255 levels)."""
    from PIL import Image

    from cutdist.data.gpu_decode import augment_batch, decode_batch
    from cutdist.data.transforms import TrainAugment, decode_rgb, stack

    rng = torch.Generator().manual_seed(seed)
    side = cfg.data.load_size + 13      # not the load size: the resize is part of what is compared
    cpu_aug = TrainAugment(preprocess="resize_and_crop", load_size=cfg.data.load_size, crop_size=cfg.data.crop_size,
                           no_flip=cfg.data.no_flip)
    cpu, dev = [], []
    for domain in range(2):
        encoded = []
        for i in range(case.batch):
            # smooth random content (a photo-like spectrum, not noise, which JPEG would turn into blocks)
            small = (torch.rand(3, 6, 6, generator=rng) * 255)
            image = torch.nn.functional.interpolate(small[None], size=(side, side), mode="bilinear",
                                                    align_corners=False)[0]
            array = image.clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            buffer = io.BytesIO()
            Image.fromarray(array).save(buffer, format="JPEG", quality=90)
            encoded.append((f"sample{domain}{i}.jpg", buffer.getvalue()))
        draws = seed * 10 + domain
        crop_rng = random.Random(draws)
        cpu.append(stack([cpu_aug(decode_rgb(data), crop_rng) for _, data in encoded]))
        dev.append(augment_batch(decode_batch(encoded, device), random.Random(draws), load_size=cfg.data.load_size,
                                 crop_size=cfg.data.crop_size, no_flip=cfg.data.no_flip).cpu())
    levels = max(((c - d).abs().max().item() * 127.5) for c, d in zip(cpu, dev))
    return (cpu[0], cpu[1]), (dev[0], dev[1]), round(levels, 3)


def cases_for(modes: list[str], batches: list[int]) -> list[Case]:
    return [Case(mode, batch, flipped) for mode in modes
            for flipped in ((False, True) if MODES[mode].flips else (False,)) for batch in batches]


def run_check(cfg: config.JobConfig, switch_name: str, device: torch.device, *, modes: list[str],
              batches: list[int], compile_backend: str = "inductor", seed: int = 0) -> dict[str, Any]:
    """Every case for one switch: {"max_rel_diff": {net: worst over cases}, "cases": [...], "within_tolerance"}."""
    names, switch = parse_switch(switch_name)
    cases = []
    for case in cases_for(modes, batches):
        mode_cfg = config.apply(copy.deepcopy(cfg), {"model.mode": case.mode}) if case.mode != cfg.model.mode else cfg
        cases.append(check_case(_with_preset(mode_cfg, cfg), switch, case, device, seed=seed,
                                compile_backend=compile_backend))
    worst = _worst(cases, "max_rel_diff")
    result: dict[str, Any] = {
        "bench": "grads", "switch": "+".join(names), "kind": switch.kind, "device": device.type,
        "device_name": device_name(device), "torch": torch.__version__, "tolerance": switch.tolerance,
        "max_rel_diff": worst, "metric": switch.metric,
        "within_tolerance": all(c["passed"] for c in cases),
        "cases": cases, "excluded": "conv biases feeding an instance norm (true gradient 0)",
    }
    if switch.note:
        result["note"] = switch.note
    if "compile" in names:
        result["compile_backend"] = compile_backend
    if switch.metric != "max_rel_diff":
        result[switch.metric] = _worst(cases, switch.metric)
    return result


def _worst(cases: list[dict[str, Any]], key: str) -> Any:
    values = [c[key] for c in cases]
    if isinstance(values[0], dict):
        return {n: max(v[n] for v in values) for n in values[0]}
    return max(values)


def _with_preset(mode_cfg: config.JobConfig, job: config.JobConfig) -> config.JobConfig:
    """The job with another ``model.mode``: the preset's loss fields of that mode (the job file's explicit values for
    the job's own mode are not carried over to the other mode)."""
    if mode_cfg is job:
        return job
    cfg = copy.deepcopy(mode_cfg)
    for dotted in config.PRESETS[cfg.model.mode]:
        section, name = dotted.split(".")
        setattr(getattr(cfg, section), name, None)
    return config.resolve(cfg)


# ------------------------------------------------------------------------------------------------ CLI

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cutdist.bench grads", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="job YAML (model sizes, crop size, losses)")
    p.add_argument("--switch", required=True, help=f"one of {', '.join(SWITCHES)}; network switches combine with +")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--modes", default="cut,fastcut", help="comma-separated model modes to check")
    p.add_argument("--batches", default="1,2", help="comma-separated batch sizes to check")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend for --switch compile")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="CPU: torch intra-op threads (0 = torch's default). 1 by default: the job's small nets gain "
                        "nothing from more, and on a busy machine several threads spin (smoke job: 17 s with 1, "
                        "9 min with 2 at load 30)")
    p.add_argument("--tf32", action="store_true",
                   help="CUDA: leave TF32 on (torch's default for cuDNN convolutions) in both steps; off by default, "
                        "so the check sees the switch and not TF32's 10-bit rounding")
    p.add_argument("overrides", nargs="*", help="key=value job overrides")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        parse_switch(args.switch)
        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
        bad = [m for m in modes if m not in MODES]
        if not modes or bad:
            raise UsageError(f"--modes: unknown mode(s) {bad or args.modes!r}; choose from {', '.join(MODES)}")
        try:
            batches = [int(b) for b in args.batches.split(",") if b.strip()]
        except ValueError:
            raise UsageError(f"--batches: expected comma-separated integers, got {args.batches!r}") from None
        if not batches or min(batches) < 1:
            raise UsageError(f"--batches: every batch size must be >= 1, got {args.batches!r}")
        refused = [f"{m} refuses {n}: {MODES[m].refuses[n]}" for m in modes for n in args.switch.split("+")
                   if n in MODES[m].refuses]
        if refused:
            raise UsageError(f"--switch {args.switch}: " + "; ".join(refused))
        if not Path(args.config).is_file():
            raise UsageError(f"--config: no such file {args.config}")
        device = choose_device(args.device)
        try:
            cfg = config.load(args.config, args.overrides)
        except config.ConfigError as err:
            raise UsageError(str(err)) from None
    except UsageError as err:
        print(f"cutdist.bench grads: {err}", file=sys.stderr)
        return 2
    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = args.tf32
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
    try:
        result = run_check(cfg, args.switch, device, modes=modes, batches=batches,
                           compile_backend=args.compile_backend, seed=args.seed)
    except Exception as err:   # out of memory, a kernel failure...: one JSON line that says so, exit 1
        traceback.print_exc(file=sys.stderr)
        print(json.dumps({"bench": "grads", "switch": args.switch, "device": device.type,
                          "error": f"{type(err).__name__}: {' '.join(str(err).split())[:500]}"}), flush=True)
        return 1
    if device.type == "cuda":
        result["tf32"] = args.tf32
    print(json.dumps(result), flush=True)
    return 0 if result["within_tolerance"] else 1


if __name__ == "__main__":
    sys.exit(main())
