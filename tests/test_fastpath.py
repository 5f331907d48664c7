"""The fast path (cutdist.model.fastpath) and the step's fast-path properties, on CPU with tiny networks:
compile falls back to eager with a warning (forward and backward compile failures), compiled and channels_last
steps match the plain one, bf16 autocast stays within a stated tolerance of fp32, no host read inside a step."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch._dynamo.backends.common import aot_autograd

from cutdist import config
from cutdist.bench.train_step import Bench
from cutdist.model.cut import cut_step
from cutdist.model.fastpath import CompileFallbackWarning, apply_fast_path, compile_failures

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _one_thread_and_fresh_dynamo():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
    torch.set_num_threads(threads)


def tiny(mode: str = "cut", **extra) -> config.JobConfig:
    values = {"model.mode": mode, "model.ngf": 8, "model.ndf": 8, "model.n_blocks": 2, "model.netf_nc": 32,
              "loss.nce_layers": [0, 4, 8, 12], "loss.num_patches": 32, "data.root": "unused",
              "data.crop_size": 32, "data.load_size": 32, "data.batch_size": 2}
    values.update(extra)
    return config.from_dict(values)


# Compile tests trace G, D and F: tracing time grows with the number of layers, not with the image size.
ONE_BLOCK = {"model.n_blocks": 1}


def steps(bench: Bench, n: int) -> list[dict[str, float]]:
    return [{k: float(v) for k, v in bench.step().items()} for _ in range(n)]


def failing_backend(gm, example_inputs):
    raise RuntimeError("planted compiler failure")


def _ok(gm, example_inputs):
    return gm


failing_backward_backend = aot_autograd(fw_compiler=_ok, bw_compiler=failing_backend)


@pytest.mark.parametrize("backend", [failing_backend, failing_backward_backend], ids=["forward", "backward"])
def test_compile_failure_falls_back_to_eager_with_a_warning_naming_net_and_cause(backend):
    plain = Bench(tiny(**ONE_BLOCK), CPU)
    expected = steps(plain, 2)
    bench = Bench(tiny(**ONE_BLOCK, **{"train.compile": True}), CPU)
    bench.apply_fast_path(backend)
    with pytest.warns(CompileFallbackWarning) as caught:
        got = steps(bench, 2)
    messages = " | ".join(str(w.message) for w in caught)
    for net in ("G", "D", "F"):
        assert f"torch.compile of {net} failed" in messages
    assert "planted compiler failure" in messages
    assert set(compile_failures(bench.nets)) == {"g", "d", "f"}
    assert got == expected          # the fallback IS the eager step: same seed, same numbers


@pytest.mark.slow
def test_compiled_step_matches_the_eager_step_and_keeps_state_dict_keys():
    plain = Bench(tiny(**ONE_BLOCK), CPU)
    keys = {name: list(getattr(plain.nets, name).state_dict()) for name in ("g", "d", "f")}
    expected = steps(plain, 2)
    bench = Bench(tiny(**ONE_BLOCK, **{"train.compile": True}), CPU)
    bench.apply_fast_path("aot_eager")     # dynamo + AOTAutograd without inductor's C++ build (minutes on 2 cores)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)
        got = steps(bench, 2)
    assert compile_failures(bench.nets) == {}
    for k in expected[0]:
        assert got[0][k] == pytest.approx(expected[0][k], rel=1e-5, abs=1e-6), k
        assert got[1][k] == pytest.approx(expected[1][k], rel=1e-5, abs=1e-6), k
    assert {name: list(getattr(bench.nets, name).state_dict()) for name in ("g", "d", "f")} == keys


@pytest.mark.slow
def test_compiled_channels_last_fastcut_flipped_step_runs_and_matches_eager():
    """FastCUT's flipped step, compiled, NHWC: with nn.ReplicationPad2d in G's up-sampler this failed in the backward
    (torch 2.14: aot_eager on a view, inductor on a size/stride assert of replication_pad2d_backward)."""
    def heads() -> torch.Generator:   # a coin whose first draw flips (cut_step flips when it is < 0.5)
        coin = torch.Generator().manual_seed(0)
        assert torch.rand((), generator=torch.Generator().manual_seed(0)) < 0.5
        return coin

    overrides = {**ONE_BLOCK, "train.channels_last": True}
    plain = Bench(tiny("fastcut", **overrides), CPU)
    plain.apply_fast_path("inductor")      # compile off: NHWC only
    bench = Bench(tiny("fastcut", **overrides, **{"train.compile": True}), CPU)
    bench.apply_fast_path("aot_eager")
    expected = {k: float(v) for k, v in plain.step(heads()).items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)
        got = {k: float(v) for k, v in bench.step(heads()).items()}
    assert compile_failures(bench.nets) == {}
    for k in expected:
        assert got[k] == pytest.approx(expected[k], rel=1e-5, abs=1e-6), k


def test_channels_last_puts_weights_and_inputs_in_nhwc_and_matches_nchw():
    """Measured over 4 seeds: step 1 (same weights) <= 3e-7 relative, step 2 <= 7e-4 (Adam's first update is
    +-lr wherever a gradient is ~0, so rounding-level gradient differences move weights by ~lr). Tolerances: 1e-5
    and 5e-3."""
    plain = Bench(tiny(), CPU)
    expected = steps(plain, 2)
    bench = Bench(tiny(**{"train.channels_last": True}), CPU)
    bench.apply_fast_path("inductor")    # compile is off: only the memory format changes
    convs = [m for m in bench.nets.g.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    assert not convs[1].weight.is_contiguous()
    # NHWC strides proper (channel stride 1), also for the depthwise blur weights (C, 1, k, k), which an NCHW tensor
    # already "is" for is_contiguous(channels_last): left NCHW, their convolutions silently ran NCHW
    tensors = [t for net in (bench.nets.g, bench.nets.d) for t in (*net.parameters(), *net.buffers()) if t.dim() == 4]
    assert any(t.shape[1] == 1 for t in tensors)
    assert all(t.stride(1) == 1 for t in tensors)
    assert bench.real_a.is_contiguous(memory_format=torch.channels_last)
    got = steps(bench, 2)
    for (g, e), rel in zip(zip(got, expected), (1e-5, 5e-3)):
        for k in e:
            assert g[k] == pytest.approx(e[k], rel=rel, abs=1e-6), k


@pytest.mark.parametrize("mode", ["cut", "fastcut"])
def test_bf16_steps_stay_within_stated_tolerance_of_fp32(mode):
    """bf16 autocast (PatchNCE and D in fp32) vs fp32 from the same seed, every loss term of 2 steps.

    Measured on this CPU (6 seeds, both modes, 32 and 64 px, these tiny nets), as |bf16 - fp32| / (|fp32| + 0.1):
    step 1 (same weights: the forward's bf16 rounding) <= 0.28 %; step 2 (after one Adam update, which moves every
    weight by ~lr whatever the gradient's size, so rounding-level gradient differences show) <= 2.2 % (2.4 % with
    train.bf16_discriminator).
    Stated tolerances: 1 % at step 1, 10 % at step 2 (>= 3.5x margin). The losses must also differ somewhere
    (> 1e-6), so the test fails if autocast silently did nothing."""
    fp32 = steps(Bench(tiny(mode), CPU), 2)
    bf16 = steps(Bench(tiny(mode, **{"train.precision": "bf16"}), CPU), 2)
    largest = 0.0
    for f, b, tol in zip(fp32, bf16, (0.01, 0.10)):
        assert f.keys() == b.keys()
        for k in f:
            assert abs(b[k] - f[k]) <= tol * (abs(f[k]) + 0.1), (k, f[k], b[k])
            largest = max(largest, abs(b[k] - f[k]))
    assert largest > 1e-6


@pytest.mark.parametrize("bf16_discriminator", [False, True])
def test_under_bf16_the_discriminator_stays_fp32_unless_asked(bf16_discriminator):
    """Under bf16 autocast G's convolutions run in bf16 while D's (both its forwards: D's update and G's adversarial
    term) stay fp32 by default; train.bf16_discriminator puts D under autocast too. Seen through forward hooks on the
    first convolution of each net."""
    overrides = {"train.precision": "bf16", "train.bf16_discriminator": bf16_discriminator}
    bench = Bench(tiny("cut", **overrides), CPU)
    seen: dict[str, list[torch.dtype]] = {"g": [], "d": []}
    for name in seen:
        conv = next(m for m in getattr(bench.nets, name).modules() if isinstance(m, torch.nn.Conv2d))
        conv.register_forward_hook(lambda mod, inp, out, name=name: seen[name].append(out.dtype))
    steps(bench, 1)
    assert seen["g"] and set(seen["g"]) == {torch.bfloat16}
    assert len(seen["d"]) == 2 and set(seen["d"]) == {torch.bfloat16 if bf16_discriminator else torch.float32}


class HostReadError(AssertionError):
    pass


@pytest.mark.parametrize("mode", ["cut", "fastcut"])
def test_no_host_read_inside_a_step(monkeypatch, mode):
    """Every way to read a tensor's value on the host is spied on during a whole step (fused Adam, which keeps its
    step counter in a tensor). CUT: none at all. FastCUT: exactly one, the flip coin, a 0-dim bool drawn from the
    CPU flip generator by contract (never a device value). The CUDA check (set_sync_debug_mode) is in the bench."""
    bench = Bench(tiny(mode, **{"optim.fused": True}), CPU)
    bench.step()   # optimiser state exists before spying
    reads = []
    for name in ("item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__", "__array__"):
        original = getattr(torch.Tensor, name)

        def spy(self, *args, _name=name, _original=original, **kwargs):
            reads.append((_name, tuple(self.shape), self.dtype))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, spy)
    losses = bench.step()
    monkeypatch.undo()
    expected = [] if mode == "cut" else [("__bool__", (), torch.bool)]
    assert reads == expected
    assert all(torch.isfinite(v) for v in losses.values())


def test_the_spy_sees_a_planted_item(monkeypatch):
    """The spy above can fail: a step that reads a loss with .item() is caught."""
    bench = Bench(tiny(), CPU)
    reads = []
    original = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda self: reads.append("item") or original(self))
    from cutdist.model import patchnce

    real_loss = patchnce.patchnce_loss

    def loss_with_item(*args, **kwargs):
        out = real_loss(*args, **kwargs)
        out.mean().item()
        return out

    monkeypatch.setattr("cutdist.model.cut.patchnce_loss", loss_with_item)
    cut_step(bench.nets, bench.updater, bench.real_a, bench.real_b, bench.cfg.loss, generator=bench.patch_gen)
    assert "item" in reads


def test_config_accepts_exactly_the_fast_path_compile_modes():
    from cutdist.model.fastpath import COMPILE_MODES
    for mode in COMPILE_MODES:
        assert tiny(**{"train.compile_mode": mode}).train.compile_mode == mode
    with pytest.raises(config.ConfigError, match="train.compile_mode"):
        tiny(**{"train.compile_mode": "fastest"})


def test_apply_fast_path_rejects_bad_arguments():
    bench = Bench(tiny(), CPU)
    with pytest.raises(ValueError, match="compile_mode"):
        apply_fast_path(bench.nets, compile=True, compile_mode="fastest")
    apply_fast_path(bench.nets, compile=True, backend="aot_eager")
    with pytest.raises(ValueError, match="already compiled"):
        apply_fast_path(bench.nets, compile=True, backend="aot_eager")
