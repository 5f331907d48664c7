"""benchmarks/summarize.py: JSON lines of gpu.sh -> markdown (table rows, speed-ups, anchor, data feed, failures)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "summarize.py"


@pytest.fixture(scope="module")
def summarize():
    spec = importlib.util.spec_from_file_location("bench_summarize", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def row(**extra):
    base = {"bench": "train-step", "mode": "cut", "size": 256, "batch": 8, "precision": "fp32", "compile": False,
            "compile_mode": None, "compile_backend": None, "channels_last": False, "fused_adam": False,
            "device_name": "NVIDIA H200", "torch": "2.11.0", "cuda": "13.0", "python": "3.12.3",
            "date": "2026-11-28T10:00:00+00:00", "ngf": 64, "ndf": 64, "n_blocks": 9, "num_patches": 256,
            "nce_layers": [0, 4, 8, 12, 16], "antialias": True, "images_per_s": 40.0, "ms_per_step": 200.0,
            "ms_per_step_median": 199.0, "tflops_per_s": 51.4, "peak_mem_gib": 12.5, "host_sync_free": True,
            "losses_finite": True, "compile_fallbacks": {}, "frames_compiled_while_timed": 0}
    base.update(extra)
    return base


def test_summary_table_speedups_anchor_feed_and_failures(summarize, tmp_path):
    train = tmp_path / "train_step.jsonl"
    feed = tmp_path / "data_feed.jsonl"
    lines = [row(), row(precision="bf16", channels_last=True, fused_adam=True, compile=True, compile_mode="default",
                        compile_backend="inductor", images_per_s=120.0, ms_per_step=66.7, warmup_s=80.1,
                        compile_fallbacks={"f": "BackendCompilerFailed: x"}),
             {"bench": "train-step", "args": "--batch 32 --precision fp32", "error": "timeout after 200s", "rc": 124}]
    train.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    feed.write_text(json.dumps({"bench": "decode", "load": 286, "crop": 256, "decode_device_name": "NVIDIA H200",
                                "decode_augment_images_per_s": 5000.0, "decode_batch": 64,
                                "cpu_decode_augment_images_per_s_per_core": 250.0, "decode_speedup_vs_one_core": 20.0,
                                "decode_skipped": 0, "decode_cpu_fallback": 0}) + "\n")
    text = summarize.summarize(summarize.read_lines([str(train), str(feed)]))
    assert text.startswith("# CUT train step on NVIDIA H200")
    table = [line for line in text.splitlines() if line.startswith("| cut |")]
    assert len(table) == 2
    assert "| 40.0 |" in table[0] and "| 1.00 |" in table[0]
    assert "compiled" in table[1] and "| 3.00 |" in table[1] and "EAGER FALLBACK: f: BackendCompilerFailed" in table[1]
    assert "~43 img/s (16.7 GiB) | 40.0 img/s (12.5 GiB) | 120.0 img/s: bf16, NHWC, compiled |" in text
    assert "**120.0 images/s**" in text and "2.18x the reference's best" in text and "not met" in text
    assert "**5000 images/s**" in text and "20.0 cores' worth" in text
    assert "`--batch 32 --precision fp32`: timeout after 200s" in text


def test_a_bf16_discriminator_is_labelled_and_not_the_goals_best(summarize, tmp_path):
    """A faster line with D under autocast is shown as such, but the goal line (fp32's training behaviour) takes
    the best line that keeps D in fp32."""
    train = tmp_path / "train_step.jsonl"
    lines = [row(precision="bf16", images_per_s=90.0),
             row(precision="bf16", bf16_discriminator=True, images_per_s=95.0)]
    train.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    text = summarize.summarize(summarize.read_lines([str(train)]))
    table = [line for line in text.splitlines() if line.startswith("| cut |")]
    assert [("(D bf16)" in line) for line in table] == [False, True]
    assert "Best CUT setting (D in fp32): **90.0 images/s**" in text


def test_bad_input_exits_2(summarize, tmp_path, capsys):
    assert summarize.main([str(tmp_path / "missing.jsonl")]) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(SystemExit, match="bad.jsonl:1: not a JSON line"):
        summarize.main([str(bad)])


def test_gradient_checks_get_their_own_table_and_failures(summarize, tmp_path):
    grads = tmp_path / "grads.jsonl"
    case = {"mode": "fastcut", "batch": 1, "flipped": True, "draws": [{}, {}]}
    lines = [
        {"bench": "grads", "switch": "channels_last", "metric": "max_rel_diff", "tolerance": 1e-3,
         "max_rel_diff": {"d": 4e-6, "g": 1.6e-5, "f": 1.2e-5}, "within_tolerance": True, "cases": [case]},
        {"bench": "grads", "switch": "bf16", "metric": "norm_rel_diff", "tolerance": 0.5,
         "max_rel_diff": {"d": 0.2, "g": 0.44, "f": 0.61}, "norm_rel_diff": {"d": 0.12, "g": 0.61, "f": 0.25},
         "within_tolerance": False, "cases": [{**case, "compile_fallbacks": {"g": "x"}}]},
        {"bench": "grads", "switch": "decode_on_device", "metric": "pixel_max_diff", "tolerance": 3.0,
         "pixel_max_diff": 1.0, "max_rel_diff": {"d": 0.16, "g": 0.38, "f": 1.2}, "within_tolerance": True,
         "cases": []},
        {"bench": "grads", "args": "--switch compile", "error": "timeout after 200s", "rc": 124},
    ]
    grads.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    train = tmp_path / "train_step.jsonl"
    train.write_text(json.dumps(row()) + "\n")
    text = summarize.summarize(summarize.read_lines([str(train), str(grads)]))
    table = text.split("## Gradient checks")[1].split("## Data feed")[0]
    assert "| channels_last | max_rel_diff | 4.00e-06 | 1.60e-05 | 1.20e-05 | 0.001 | yes | 1 | 1 case(s) redrawn |" in table
    assert "| bf16 | norm_rel_diff | 1.20e-01 | 6.10e-01 | 2.50e-01 | 0.5 | **NO** |" in table
    assert "EAGER FALLBACK" in table
    assert "pixels 1.0 / grads 1.60e-01" in table
    assert "- grads `--switch compile`: timeout after 200s" in text
