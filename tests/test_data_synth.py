"""The demo dataset: deterministic shards with paired ground truth for the test split."""
from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
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


def test_demo_shards_of_another_renderer_are_refused_with_one_line(tmp_path):
    from cutdist.config import DataConfig
    from cutdist.data.splits import resolve_splits
    from cutdist.data.synth import RENDERER_VERSION, SYNTH_RECORD, stale_demo_shards

    root = write_synth_dataset(tmp_path / "demo", **SMALL)
    record = root / SYNTH_RECORD
    assert json.loads(record.read_text())["renderer_version"] == RENDERER_VERSION
    assert stale_demo_shards(root) is None
    cfg = DataConfig(root=str(root), synth_if_missing=True)
    assert resolve_splits(cfg).train_a   # the current renderer's shards are used as they are

    record.unlink()   # shards written before the record existed: version 1
    with pytest.raises(DataError) as err:
        resolve_splits(cfg)
    assert str(root) in str(err.value) and "version 1" in str(err.value) and "delete" in str(err.value)
    assert (root / "manifest.parquet").is_file()   # nothing deleted on the user's behalf

    record.write_text(json.dumps({"renderer_version": RENDERER_VERSION + 1}))
    assert f"version {RENDERER_VERSION + 1}" in stale_demo_shards(root)


def test_a_users_own_shards_are_not_taken_for_demo_shards(tmp_path):
    from cutdist.data.synth import stale_demo_shards

    root = write_synth_dataset(tmp_path / "own", **SMALL)
    (root / "synth.json").unlink()
    rows = _manifest(root)
    pq.write_table(pq.read_table(root / "manifest.parquet").filter(
        pa.compute.not_equal(pa.compute.field("split"), "testGT")), root / "manifest.parquet")
    assert len(_manifest(root)) == len(rows) - 3
    assert stale_demo_shards(root) is None


def test_backgrounds_come_from_the_sky_ground_palette():
    """Renderer version 2: every background's top is sky-coloured and its bottom ground-coloured (see the module)."""
    from cutdist.data.synth import GROUND, PALETTE_JITTER, SKY, draw_scene, render_mask, scene_rng

    for index in range(20):
        scene = draw_scene(scene_rng(0, "train", "A", index), 64)
        image = synth_image(0, "train", "A", index, 64).astype(float) / 255
        outside = ~render_mask(scene)
        top, bottom = outside.copy(), outside.copy()
        top[8:], bottom[:-8] = False, False
        assert np.abs(image[top].mean(0) - SKY).max() < PALETTE_JITTER + 0.1, index
        assert np.abs(image[bottom].mean(0) - GROUND).max() < PALETTE_JITTER + 0.1, index
