"""``python -m cutdist.bench train-step`` on CPU at 64 px with tiny networks: one sane JSON line, FLOPs that scale
with the batch, FastCUT and channels_last runs, usage errors (exit 2) and run failures (exit 1, JSON error)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cutdist import config
from cutdist.bench.train_step import Bench, count_step_flops, main, predicted_coins

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--size", "64", "--ngf", "8", "--ndf", "8", "--n-blocks", "2", "--nce-layers", "0,4,8,12",
        "--num-patches", "32", "--netf-nc", "32", "--device", "cpu", "--threads", "1"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run_main(capsys, *extra: str) -> tuple[int, dict]:
    code = main([*TINY, *extra])
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1, out
    return code, json.loads(out[0])


def test_cli_prints_one_sane_json_line():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "cutdist.bench", "train-step", *TINY, "--batch", "2",
                           "--steps", "2", "--warmup", "1"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    r = json.loads(lines[0])
    assert (r["bench"], r["mode"], r["size"], r["batch"], r["precision"], r["device"]) == \
        ("train-step", "cut", 64, 2, "fp32", "cpu")
    assert r["compile"] is False and r["channels_last"] is False and r["fused_adam"] is False
    assert (r["ngf"], r["ndf"], r["n_blocks"], r["num_patches"], r["nce_layers"]) == (8, 8, 2, 32, [0, 4, 8, 12])
    assert r["torch"] == torch.__version__ and r["date"] and r["device_name"]
    assert r["ms_per_step"] > 0 and r["ms_per_step_median"] > 0
    assert r["images_per_s"] == pytest.approx(2 * 1000 / r["ms_per_step"], rel=0.01)
    assert r["flops_per_image"] == r["flops_per_step"] // 2 > 0
    assert r["tflops_per_s"] == pytest.approx(r["flops_per_step"] / (r["ms_per_step"] / 1000) / 1e12, rel=0.02,
                                              abs=1e-3)
    assert r["peak_mem_kind"] == "cpu_max_rss" and 0.05 < r["peak_mem_gib"] < 64
    assert r["losses_finite"] is True and set(r["losses"]) == {"d", "d_real", "d_fake", "g_gan", "nce", "nce_y",
                                                                "g_total"}
    assert "error" not in r


def test_paper_defaults_are_the_parsers_defaults(capsys):
    # --steps 0 is refused before anything runs, so this only checks what the defaults would describe.
    assert main(["--steps", "0"]) == 2
    assert "--steps" in capsys.readouterr().err
    from cutdist.bench.train_step import _job, _parser
    cfg = _job(_parser().parse_args([]))
    assert (cfg.model.ngf, cfg.model.ndf, cfg.model.n_blocks, cfg.loss.num_patches, cfg.loss.nce_layers,
            cfg.model.antialias, cfg.data.crop_size, cfg.data.batch_size) == (64, 64, 9, 256, [0, 4, 8, 12, 16],
                                                                               True, 256, 1)


def tiny_job(mode: str, batch: int) -> config.JobConfig:
    return config.from_dict({"model.mode": mode, "model.ngf": 8, "model.ndf": 8, "model.n_blocks": 2,
                             "model.netf_nc": 32, "loss.nce_layers": [0, 4, 8, 12], "loss.num_patches": 32,
                             "data.root": "x", "data.crop_size": 32, "data.load_size": 32, "data.batch_size": batch})


def test_step_flops_are_linear_in_the_batch():
    """Every counted op (convolutions, F's MLP rows, PatchNCE's per-image logits) scales with the batch exactly."""
    one = count_step_flops(Bench(tiny_job("cut", 1), torch.device("cpu")))
    three = count_step_flops(Bench(tiny_job("cut", 3), torch.device("cpu")))
    assert one["flops_per_step"] > 0 and three["flops_per_step"] == 3 * one["flops_per_step"]


def test_fastcut_with_channels_last_fused_adam_and_bf16(capsys):
    code, r = run_main(capsys, "--mode", "fastcut", "--channels-last", "--fused-adam", "--precision", "bf16",
                       "--steps", "2", "--warmup", "1")
    assert code == 0, r.get("error")
    assert (r["mode"], r["channels_last"], r["fused_adam"], r["precision"]) == ("fastcut", True, True, "bf16")
    assert (r["lambda_x"], r["identity"], r["flip_equivariance"]) == (10.0, False, True)
    assert r["flops_per_step_flipped"] > r["flops_per_step_unflipped"]   # flipped: G's encoder once more, on x
    assert r["losses_finite"] is True and "nce_y" not in r["losses"]


@pytest.mark.slow
def test_compiled_run_warms_up_both_flip_branches_and_does_not_recompile_while_timed(capsys):
    code, r = run_main(capsys, "--mode", "fastcut", "--compile", "--compile-backend", "aot_eager", "--n-blocks", "1",
                       "--size", "32", "--steps", "3", "--warmup", "1", "--no-flops")
    assert code == 0, r.get("error")
    assert r["compile"] is True and r["compile_backend"] == "aot_eager" and r["compile_fallbacks"] == {}
    coins = predicted_coins(torch.Generator().manual_seed(0 + 3), 64)
    assert r["warmup_steps_run"] == max(1, coins.index(True) + 1, coins.index(False) + 1)
    assert r["frames_compiled_while_timed"] == 0
    assert "tflops_per_s" not in r and r["losses_finite"] is True


@pytest.mark.parametrize("argv, culprit", [(["--size", "30"], "--size"), (["--batch", "0"], "--batch"),
                                           (["--nce-layers", "0,x"], "--nce-layers"),
                                           (["--nce-layers", "0,99"], "loss.nce_layers")])
def test_usage_errors_exit_2_naming_the_flag(capsys, argv, culprit):
    assert main([*TINY, *argv]) == 2
    captured = capsys.readouterr()
    assert culprit in captured.err and captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without CUDA")
def test_cuda_without_a_gpu_is_a_usage_error(capsys):
    assert main(["--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_a_failing_run_prints_a_json_error_and_exits_1(capsys, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("planted: tried to allocate 80 GiB")

    monkeypatch.setattr("cutdist.bench.train_step.cut_step", out_of_memory)
    code, r = run_main(capsys, "--steps", "1", "--warmup", "0")
    assert code == 1
    assert r["error"].startswith("OutOfMemoryError: planted") and r["batch"] == 1 and "images_per_s" not in r
