"""The demo dataset: deterministic shards with paired ground truth for the test split."""
from __future__ import annotations

import io
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cutdist.data import DataError
from cutdist.data.inspection import verify_shards
from cutdist.data.synth import synth_image, synth_test_pair, write_synth_dataset

SMALL = dict(size=32, count=5, test_count=3, max_count=2)


def _manifest(root):
    return pq.read_table(root / "manifest.parquet").to_pylist()


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    first = write_synth_dataset(tmp_path / "a", seed=3, workers=2, **SMALL)
    second = write_synth_dataset(tmp_path / "b", seed=3, workers=1, **SMALL)
    other = write_synth_dataset(tmp_path / "c", seed=4, **SMALL)
    assert _manifest(first) == _manifest(second)
    assert (first / "trainB-000001.tar").read_bytes() == (second / "trainB-000001.tar").read_bytes()
    shas = {r["sha256"] for r in _manifest(first)}
    assert not shas & {r["sha256"] for r in _manifest(other)}
    assert verify_shards(str(first)) == []


def test_layout_keys_and_ground_truth(tmp_path):
    root = write_synth_dataset(tmp_path / "demo", seed=0, **SMALL)
    rows = _manifest(root)
    counts = {s: sum(r["split"] == s for r in rows) for s in ("trainA", "trainB", "testA", "testB", "testGT")}
    assert counts == {"trainA": 5, "trainB": 5, "testA": 3, "testB": 3, "testGT": 3}
    assert {(r["format"], r["width"], r["height"]) for r in rows} == {("png", 32, 32)}
    assert sorted({r["shard"] for r in rows if r["split"] == "trainA"}) == [
        "trainA-000000.tar", "trainA-000001.tar", "trainA-000002.tar"]
    key_a = [r["key"] for r in rows if r["split"] == "testA"]
    assert key_a == ["000000", "000001", "000002"] == [r["key"] for r in rows if r["split"] == "testGT"]

    with tarfile.open(root / "testGT-000000.tar") as tar:
        gt = np.asarray(Image.open(io.BytesIO(tar.extractfile("000001.png").read())))
    with tarfile.open(root / "testA-000000.tar") as tar:
        a = np.asarray(Image.open(io.BytesIO(tar.extractfile("000001.png").read())))
    expected_a, expected_gt = synth_test_pair(0, 1, 32)
    assert np.array_equal(a, expected_a) and np.array_equal(gt, expected_gt)
    with tarfile.open(root / "trainB-000000.tar") as tar:
        b0 = np.asarray(Image.open(io.BytesIO(tar.extractfile("000000.png").read())))
    assert np.array_equal(b0, synth_image(0, "train", "B", 0, 32))
    changed = np.abs(a.astype(int) - gt.astype(int)).sum(axis=2) > 30
    assert 0.02 < changed.mean() < 0.6   # the shape is re-textured, the background kept


def test_refuses_to_overwrite_and_bad_arguments(tmp_path):
    write_synth_dataset(tmp_path / "demo", **SMALL)
    with pytest.raises(DataError, match="already holds split"):
        write_synth_dataset(tmp_path / "demo", **SMALL)
    with pytest.raises(DataError, match="--count"):
        write_synth_dataset(tmp_path / "x", count=0)
