"""The fast-path switches applied to built networks, shared by training and ``python -m cutdist.bench train-step``:

- ``channels_last``: every 4-D parameter and buffer of G, D and F in NHWC (feed inputs through ``to_input_format``);
  cuDNN's fastest bf16/TF32 convolutions on tensor cores want this layout.
- ``compile``: each net's forward through ``torch.compile`` (fusing instance norm, padding and elementwise
  work). A net whose compilation fails warns once, saying which net and why, and runs eagerly from then on; the
  backward graph is compiled with the forward where torch allows it, so its failures fall back too.

bf16 autocast (PatchNCE in float32) lives in ``cut_step`` (``precision``) and fused Adam in ``make_optimizers``
(``fused``): both are switches of the step, not of the networks. The modules stay the same objects (compile
replaces ``forward`` on the instance), so their state-dict keys do not change.
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from cutdist import config
from cutdist.model.networks import CUTNets

NET_NAMES = ("g", "d", "f")
# "reduce-overhead" adds CUDA graphs: call ``begin_step`` at the start of every training step.
COMPILE_MODES = config.COMPILE_MODES


class CompileFallbackWarning(UserWarning):
    """torch.compile failed for a net, which now runs eagerly."""


def _compile_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "compilation failed" (not "the model is wrong")."""
    errors: list[type[BaseException]] = []
    try:
        from torch._dynamo.exc import TorchDynamoException
        errors.append(TorchDynamoException)
    except ImportError:   # pragma: no cover - every torch with torch.compile has it
        pass
    try:
        from torch._inductor.exc import InductorError
        errors.append(InductorError)
    except ImportError:   # pragma: no cover - older inductor
        pass
    return tuple(errors)


def _eager_backward_lowering():
    """Compile a graph's backward together with its forward, so a backward that cannot compile fails (and falls
    back) inside the forward call rather than later in ``loss.backward()``. Private torch flag: a no-op where a
    torch version lacks it (then such a failure is raised by ``backward``)."""
    try:
        import torch._functorch.config as functorch_config
    except ImportError:   # pragma: no cover
        return contextlib.nullcontext()
    if not hasattr(functorch_config, "force_non_lazy_backward_lowering"):
        return contextlib.nullcontext()
    return functorch_config.patch(force_non_lazy_backward_lowering=True)


class CompiledForward:
    """A module's forward through ``torch.compile``; after a compile failure, one warning and eager for good."""

    def __init__(self, name: str, eager_forward: Callable[..., Any], *, mode: str = "default",
                 backend: str | Callable = "inductor") -> None:
        self.name = name
        self.eager_forward = eager_forward
        # Static shapes: D sees 2B images in its own step and B in G's; without dynamic=False the second shape
        # would turn the batch dimension symbolic (slower kernels, no CUDA graphs). Each shape gets its own graph.
        options: dict[str, Any] = {"backend": backend, "dynamic": False}
        if backend == "inductor":
            options["mode"] = mode
        self.compiled_forward = torch.compile(eager_forward, **options)
        self.failure: str | None = None
        self._errors = _compile_errors()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.failure is None:
            # A failed attempt may already have drawn from a generator argument (F's patch ids run eagerly at a
            # graph break): rewind it so the eager call draws exactly what it would have.
            generators = [(g, g.get_state()) for g in (*args, *kwargs.values()) if isinstance(g, torch.Generator)]
            try:
                with _eager_backward_lowering():
                    return self.compiled_forward(*args, **kwargs)
            except self._errors as err:
                for generator, state in generators:
                    generator.set_state(state)
                self.failure = f"{type(err).__name__}: {_first_line(err)}"
                warnings.warn(f"torch.compile of {self.name} failed ({self.failure}); {self.name} runs eagerly",
                              CompileFallbackWarning, stacklevel=2)
        return self.eager_forward(*args, **kwargs)


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return " ".join(lines[:2])[:300] if lines else repr(err)


def apply_fast_path(nets: CUTNets, *, channels_last: bool = False, compile: bool = False,
                    compile_mode: str = "default", backend: str | Callable = "inductor") -> CUTNets:
    """Apply the network switches to G, D and F in place and return ``nets``. Call it on the plain modules, after
    they are on their device and their weights are loaded, before any DDP / DeepSpeed wrapping."""
    if compile_mode not in COMPILE_MODES:
        raise ValueError(f"apply_fast_path: compile_mode must be one of {list(COMPILE_MODES)}, got {compile_mode!r}")
    for name in NET_NAMES:
        module: nn.Module = getattr(nets, name)
        if channels_last:
            to_channels_last(module)
        if compile:
            if isinstance(module.__dict__.get("forward"), CompiledForward):
                raise ValueError(f"apply_fast_path: {name} is already compiled")
            module.forward = CompiledForward(name.upper(), module.forward, mode=compile_mode, backend=backend)
    return nets


def to_channels_last(module: nn.Module) -> nn.Module:
    """Every 4-D parameter and buffer of ``module`` in NHWC, in place. ``Module.to(memory_format=...)`` would also
    try its 5-D tensors (SinCUT's modulated-conv weight, shape (1, out, in, k, k)) and fail on them.

    ``.to(memory_format=...)``, not ``.contiguous(memory_format=...)``: a depthwise blur weight (C, 1, k, k) in NCHW
    already counts as channels_last-contiguous (size-1 dims are ignored), so ``.contiguous`` keeps its NCHW strides
    and those convolutions would silently stay NCHW (and the backward layout with them)."""
    with torch.no_grad():
        for tensor in (*module.parameters(), *module.buffers()):
            if tensor.dim() == 4:
                tensor.data = tensor.data.to(memory_format=torch.channels_last)
    return module


def compile_failures(nets: CUTNets) -> dict[str, str]:
    """{net name: why its compilation failed} for the nets that fell back to eager (empty when none did)."""
    out = {}
    for name in NET_NAMES:
        forward = getattr(nets, name).__dict__.get("forward")
        if isinstance(forward, CompiledForward) and forward.failure is not None:
            out[name] = forward.failure
    return out


def to_input_format(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """An image batch in the memory format the nets were given (NHWC when ``channels_last``)."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def begin_step(compile_mode: str) -> None:
    """Mark a new training step for CUDA graphs (compile mode ``reduce-overhead``), so the graphs' outputs of the
    previous step may be overwritten; nothing to do in the other modes."""
    if compile_mode == "reduce-overhead":
        torch.compiler.cudagraph_mark_step_begin()
