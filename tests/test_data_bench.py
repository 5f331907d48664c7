"""``python -m cutdist.bench data``: one JSON line with images/s, and the ImageFolder comparison."""
from __future__ import annotations

import json

from cutdist.bench.data import main
from cutdist.data.synth import write_synth_dataset


def test_bench_data_prints_one_json_line_with_both_loaders(tmp_path, capsys):
    root = write_synth_dataset(tmp_path / "demo", size=16, count=6, test_count=1, max_count=3)
    code = main(["--train-a", f"{root}/trainA-{{000000..000001}}.tar", "--train-b", f"{root}/trainB-*.tar",
                 "--workers", "1", "--batches", "4", "--batch-size", "2", "--crop", "16",
                 "--compare-imagefolder", "--compare-sequential"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["images_per_s"] > 0 and result["images_timed"] == 4 * 4
    assert result["imagefolder_images_per_s"] > 0 and result["imagefolder_images"] == 12
    assert result["train_a_shards"] == 2 and result["load"] == 18 and result["skipped"] == 0
    # 4 + 2 warm-up batches of 2 pairs: past the first epoch of max(|A|, |B|) = 6 samples
    assert result["epoch_size"] == 6
    assert result["sequential_images_per_s"] > 0 and result["indexed_over_sequential"] > 0


def test_bench_data_bad_pattern_exits_2(tmp_path, capsys):
    assert main(["--train-a", str(tmp_path / "a-*.tar"), "--train-b", str(tmp_path / "b.tar")]) == 2
    assert "matches no file" in capsys.readouterr().err
