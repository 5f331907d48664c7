"""GPU-side JPEG decode + augmentation (cutdist.data.gpu_decode), exercised on the CPU device, and
``python -m cutdist.bench decode``: the same draws as TrainAugment within a stated pixel tolerance, non-JPEG and
corrupt images counted, one JSON line."""
from __future__ import annotations

import io
import json
import random

import pytest
import torch
from PIL import Image

from cutdist.bench.gpu_decode import main, write_jpeg_shards
from cutdist.data.gpu_decode import DecodeCounts, augment_batch, decode_batch, read_encoded
from cutdist.data.transforms import TrainAugment, decode_rgb


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("jpeg")
    return write_jpeg_shards(out, domain="A", count=12, size=48, per_shard=8)


@pytest.fixture(scope="module")
def encoded(shards):
    return [(name, data) for _, name, data in read_encoded([str(p) for p in shards])]


def test_shards_hold_jpegs(shards, encoded):
    assert len(shards) == 2 and len(encoded) == 12
    assert all(data[:3] == b"\xff\xd8\xff" for _, data in encoded)


@pytest.mark.parametrize("load, crop", [(54, 48), (48, 48), (64, 32)])
def test_augment_batch_draws_like_train_augment(encoded, load, crop):
    """Same rng -> same crops and flips as the CPU path. Measured: mean |diff| <= 0.0017 and max <= 2/127.5 (two
    levels of 255, torch's bicubic a=-0.75 vs PIL's a=-0.5; 0 without resizing). Tolerances: mean 0.005, max
    4/127.5. A wrongly flipped batch is ~0.2 off on average, so the check can fail."""
    images = decode_batch(encoded, "cpu")
    got = augment_batch(images, random.Random(5), load_size=load, crop_size=crop)
    augment, rng = TrainAugment(load_size=load, crop_size=crop), random.Random(5)
    expected = torch.stack([augment(decode_rgb(data), rng) for _, data in encoded])
    assert got.shape == expected.shape == (12, 3, crop, crop) and got.dtype == torch.float32
    diff = (got - expected).abs()
    assert diff.mean() <= 0.005 and diff.max() <= 4 / 127.5
    assert (got.flip(-1) - expected).abs().mean() > 0.05


def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (20, 16), (10, 200, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_non_jpeg_decoded_on_cpu_and_corrupt_skipped_and_counted(encoded):
    corrupt = encoded[0][1][:200]                       # a truncated JPEG: the batched call fails, then 1 by 1
    batch = [encoded[1], ("x.png", _png_bytes()), ("bad.jpg", corrupt), ("junk.jpg", b"not an image")]
    counts = DecodeCounts()
    images = decode_batch(batch, "cpu", counts)
    assert [tuple(im.shape) for im in images] == [(3, 48, 48), (3, 16, 20)]
    assert images[1][:, 0, 0].tolist() == [10, 200, 30]
    assert counts.cpu_decoded == 1 and counts.skipped == 2 and counts.skipped_names == ["bad.jpg", "junk.jpg"]


def test_augment_batch_refuses_bad_sizes(encoded):
    images = decode_batch(encoded[:2], "cpu")
    with pytest.raises(ValueError, match="larger"):
        augment_batch(images, random.Random(0), load_size=32, crop_size=48)
    with pytest.raises(ValueError, match="multiple of 4"):
        augment_batch(images, random.Random(0), load_size=54, crop_size=46)


def test_bench_decode_prints_one_json_line(shards, capsys):
    code = main(["--shards", str(shards[0].parent / "trainA-*.tar"), "--decode-device", "cpu", "--batch", "4",
                 "--batches", "3", "--warmup", "1", "--crop", "48", "--cpu-images", "6"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    r = json.loads(lines[0])
    assert (r["bench"], r["shards"], r["decode_device"], r["decode_images_timed"], r["load"]) == \
        ("decode", 2, "cpu", 12, 54)
    assert r["decode_augment_images_per_s"] > 0 and r["cpu_decode_augment_images_per_s_per_core"] > 0
    assert r["decode_jpeg_fraction"] == 1.0 and r["decode_skipped"] == 0


def test_bench_decode_bad_input_exits_2(tmp_path, capsys):
    assert main(["--shards", str(tmp_path / "none-*.tar"), "--decode-device", "cpu"]) == 2
    assert "matches no file" in capsys.readouterr().err
    if not torch.cuda.is_available():
        (tmp_path / "empty.tar").write_bytes(b"\0" * 1024)
        assert main(["--shards", str(tmp_path / "empty.tar")]) == 2
        assert "no CUDA device" in capsys.readouterr().err
