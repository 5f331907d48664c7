"""``python -m cutdist.bench data --frames N``: synthetic GTA5/Cityscapes frames, PNG vs re-encoded JPEG per core."""
from __future__ import annotations

import json

import pytest

from cutdist.bench import data


@pytest.mark.slow
def test_frames_bench_reports_both_formats_per_core_and_cores_per_gpu(capsys):
    assert data.main(["--frames", "2", "--frame-scale", "0.1", "--batches", "2", "--warmup", "1", "--rounds", "1",
                      "--preprocess", "scale_width_and_crop", "--load", "128", "--crop", "64",
                      "--max-side", "96"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["png_gta_size"] == "191x105" and result["png_cityscapes_size"] == "205x102"
    assert result["jpeg96_gta_size"] == "96x53" and result["jpeg96_cityscapes_size"] == "96x48"
    per_core = result["stream_images_per_s_per_core"]
    assert set(per_core) == {"png", "jpeg96"} and min(per_core.values()) > 0
    assert result["write_png_images_per_cpu_s"] > 0 and result["write_jpeg96_images_per_cpu_s"] > 0
    assert result["flops_counted_at"].keys() == {"32", "64"} and result["flops_per_step"] == result["flops_counted_at"]["64"]
    needed = result["gpu_images_needed_per_s"]
    assert needed == round(2 * result["gpu_steps_per_s_estimated"], 1) or abs(needed - 2 * result["gpu_steps_per_s_estimated"]) < 0.1
    assert result["cores_per_gpu"]["png"] == round(needed / per_core["png"], 1)


def test_frames_bench_refuses_shard_arguments(capsys):
    assert data.main(["--frames", "1", "--train-a", "x.tar", "--train-b", "y.tar"]) == 2
    assert "--frames makes its own shards" in capsys.readouterr().err
    assert data.main([]) == 2
    assert "give --train-a and --train-b shards, or --frames N" in capsys.readouterr().err
