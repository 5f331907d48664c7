"""How G, D and F are spread over the workers: ``ddp`` or ``deepspeed``, behind one small interface.

A strategy takes the plain networks (already initialised, or loaded from a checkpoint) and gives back

- ``nets``: what ``cut_step`` calls (wrapped modules; only their forward is used),
- ``plain``: the unwrapped modules (checkpoints, FID, sample grids, and G's adversarial term through D),
- ``updater``: the ``cutdist.model.cut.Updater`` protocol (zero_grad / backward / step per group "d", "gf"),
- ``set_lr``, and the optimizer state as one process's torch Adam would hold it (``optimizer_state`` /
  ``load_optimizer_state``), so checkpoints do not depend on the strategy or the world size.

``ddp``: G, D and F each in DistributedDataParallel (gloo on CPU, NCCL on GPU: the process group is Ray's);
the optimizers are plain Adam, the same on every rank. World size 1 skips the wrapping (pure overhead).

``deepspeed``: one engine for D and one for G+F (a container module whose forward dispatches to G or F;
two engines because the two updates alternate). ZeRO stage 0 or 1 only (stage 2+ breaks with two engines,
DeepSpeed#4923; the config refuses it). G's adversarial term goes through the unwrapped D (calling the D
engine there fails). ``train.precision=bf16`` means autocast inside ``cut_step`` with fp32 weights and fp32
optimizer state, as for ``ddp`` — the same objective in both strategies, not DeepSpeed's bf16 weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from cutdist.config import JobConfig
from cutdist.model.cut import LocalUpdater, make_optimizers
from cutdist.model.networks import CUTNets

GROUPS = ("d", "gf")


@dataclass
class WrappedNets:
    """What ``cut_step`` sees: G, D and F as callables (DDP modules, DeepSpeed engines, or the plain ones)."""
    g: Any
    d: Any
    f: Any


@dataclass
class Strategy:
    name: str
    nets: WrappedNets
    plain: CUTNets
    updater: Any
    optimizers: dict[str, Any]   # group -> the optimizer whose param_groups carry the lr

    def set_lr(self, lr: float) -> None:
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                group["lr"] = lr

    def optimizer_state(self) -> dict[str, dict]:
        """Full torch-Adam state dicts per group. A collective for deepspeed: every rank must call it."""
        return {k: opt.state_dict() for k, opt in self.optimizers.items()}

    def load_optimizer_state(self, state: dict[str, dict]) -> None:
        for k, opt in self.optimizers.items():
            opt.load_state_dict(state[k])


def build_strategy(cfg: JobConfig, plain: CUTNets, device: torch.device, world_size: int) -> Strategy:
    if cfg.train.strategy == "ddp":
        return _ddp(cfg, plain, device, world_size)
    if cfg.train.strategy == "deepspeed":
        return _deepspeed(cfg, plain, device)
    raise ValueError(f"train.strategy: unknown strategy {cfg.train.strategy!r}")


# ------------------------------------------------------------------------------------------------------ DDP

def _ddp(cfg: JobConfig, plain: CUTNets, device: torch.device, world_size: int) -> Strategy:
    optimizers = make_optimizers(plain, cfg.optim, fused=cfg.optim.fused)
    if world_size > 1:
        if not dist.is_initialized():
            raise RuntimeError("ddp with world size > 1 needs an initialised process group (Ray sets one up)")
        device_ids = [device.index] if device.type == "cuda" else None
        # No buffers need syncing (instance norm keeps no running stats; the blur filters are constants).
        wrap = lambda m: nn.parallel.DistributedDataParallel(m, device_ids=device_ids, forward_sync_buffers=False)  # noqa: E731
        nets = WrappedNets(g=wrap(plain.g), d=wrap(plain.d), f=wrap(plain.f))
    else:
        nets = WrappedNets(g=plain.g, d=plain.d, f=plain.f)
    # DDP averages gradients inside backward, so the local updater is the distributed one.
    return Strategy("ddp", nets, plain, LocalUpdater(optimizers), optimizers)


# ------------------------------------------------------------------------------------------------ DeepSpeed

class GeneratorAndF(nn.Module):
    """G and F as one module for one DeepSpeed engine; ``forward(branch, ...)`` runs G or F."""

    def __init__(self, g: nn.Module, f: nn.Module) -> None:
        super().__init__()
        self.g, self.f = g, f

    def forward(self, *args: Any, branch: str, **kwargs: Any) -> Any:
        return (self.g if branch == "g" else self.f)(*args, **kwargs)


class _EngineBranch:
    """Looks like G (or F) to ``cut_step``, but every call goes through the G+F engine's forward."""

    def __init__(self, engine: Any, branch: str) -> None:
        self.engine, self.branch = engine, branch

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.engine(*args, branch=self.branch, **kwargs)


class DeepSpeedUpdater:
    def __init__(self, engines: dict[str, Any]) -> None:
        self.engines = engines

    def zero_grad(self, group: str) -> None:
        self.engines[group].zero_grad()

    def backward(self, group: str, loss: torch.Tensor) -> None:
        self.engines[group].backward(loss)

    def step(self, group: str) -> None:
        self.engines[group].step()


def deepspeed_config(cfg: JobConfig) -> dict[str, Any]:
    return {
        "train_micro_batch_size_per_gpu": cfg.data.batch_size,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": cfg.train.zero_stage},
        "gradient_clipping": 0.0,   # DeepSpeed clips at norm 1.0 unless told; CUT (and our ddp) never clips
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


@dataclass
class DeepSpeedStrategy(Strategy):
    engines: dict[str, Any] = None            # type: ignore[assignment]
    param_order: dict[str, list[list[nn.Parameter]]] = None   # type: ignore[assignment]
    hyper: dict[str, list[dict[str, Any]]] = None             # type: ignore[assignment]

    def optimizer_state(self) -> dict[str, dict]:
        return {k: self._full_state(k) for k in GROUPS}

    def load_optimizer_state(self, state: dict[str, dict]) -> None:
        for k in GROUPS:
            self._load_full_state(k, state[k])

    def _zero(self, group: str) -> Any | None:
        opt = self.engines[group].optimizer
        return opt if hasattr(opt, "single_partition_of_fp32_groups") else None

    def _full_state(self, group: str) -> dict:
        zero = self._zero(group)
        if zero is None:   # ZeRO-0 fp32: the engine steps our own torch Adam
            return self.engines[group].optimizer.state_dict()
        from deepspeed.utils import safe_get_full_optimizer_state

        # DeepSpeed links each parameter to its optimizer-state fragments after the first step of param group 0,
        # before group 1 (F, in "gf") has any state: relink now that all groups have stepped.
        _relink_optimizer_state(zero)
        steps = [s["step"] for s in zero.optimizer.state.values() if "step" in s]
        step = torch.as_tensor(steps[0]).float().cpu() if steps else None
        state, groups, index = {}, [], 0
        for params, hyper in zip(self.param_order[group], self.hyper[group]):
            ids = []
            for p in params:
                entry = {}
                if step is not None:   # before the first step Adam has no state at all
                    entry = {"step": step.clone(),
                             "exp_avg": safe_get_full_optimizer_state(p, "exp_avg").cpu(),
                             "exp_avg_sq": safe_get_full_optimizer_state(p, "exp_avg_sq").cpu()}
                    state[index] = entry
                ids.append(index)
                index += 1
            groups.append({**hyper, "lr": zero.optimizer.param_groups[len(groups)]["lr"], "params": ids})
        return {"state": state, "param_groups": groups}

    def _load_full_state(self, group: str, full: dict) -> None:
        zero = self._zero(group)
        if zero is None:
            self.engines[group].optimizer.load_state_dict(full)
            return
        if not full["state"]:
            return
        by_param: dict[int, dict[str, torch.Tensor]] = {}
        index = 0
        for params in self.param_order[group]:
            for p in params:
                by_param[id(p)] = full["state"][index]
                index += 1
        for i, flat in enumerate(zero.single_partition_of_fp32_groups):
            entry = {"step": torch.as_tensor(next(iter(by_param.values()))["step"]).float().clone()}
            for key in ("exp_avg", "exp_avg_sq"):
                buf = torch.zeros_like(flat)
                for p in zero.bit16_groups[i]:
                    frag = p._hp_mapping
                    if frag is None:   # this rank's partition holds no piece of p
                        continue
                    src = by_param[id(p)][key].to(buf.device, buf.dtype).flatten()
                    buf.narrow(0, frag.hp_fragment_address.start, frag.hp_fragment_address.numel).copy_(
                        src.narrow(0, frag.lp_fragment_address.start, frag.lp_fragment_address.numel))
                entry[key] = buf
            zero.optimizer.state[flat] = entry
        _relink_optimizer_state(zero)


def _relink_optimizer_state(zero: Any) -> None:
    """Point each parameter's optimizer-state fragments at the current state buffers (as DeepSpeed's own
    checkpoint loading does)."""
    if any(flat not in zero.optimizer.state for flat in zero.single_partition_of_fp32_groups):
        return   # before the first step: nothing to link yet
    zero._hp_optimizer_states_linked = False
    zero._lazy_init_hp_params_optimizer_state()


def _deepspeed(cfg: JobConfig, plain: CUTNets, device: torch.device) -> Strategy:
    import deepspeed

    if cfg.train.zero_stage not in (0, 1):   # config validation refuses it too; keep the library honest
        raise ValueError(f"train.zero_stage: ZeRO stage {cfg.train.zero_stage} is not supported (use 0 or 1)")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    optimizers = make_optimizers(plain, cfg.optim, fused=cfg.optim.fused)
    param_order = {k: [list(g["params"]) for g in opt.param_groups] for k, opt in optimizers.items()}
    hyper = {k: [{h: v for h, v in g.items() if h != "params"} for g in opt.param_groups]
             for k, opt in optimizers.items()}
    ds_cfg = deepspeed_config(cfg)
    gf = GeneratorAndF(plain.g, plain.f)
    engine_gf, *_ = deepspeed.initialize(model=gf, optimizer=optimizers["gf"], config=ds_cfg)
    engine_d, *_ = deepspeed.initialize(model=plain.d, optimizer=optimizers["d"], config=ds_cfg)
    engines = {"d": engine_d, "gf": engine_gf}
    nets = WrappedNets(g=_EngineBranch(engine_gf, "g"), d=engine_d, f=_EngineBranch(engine_gf, "f"))
    return DeepSpeedStrategy("deepspeed", nets, plain, DeepSpeedUpdater(engines),
                             {k: e.optimizer for k, e in engines.items()},
                             engines=engines, param_order=param_order, hyper=hyper)
