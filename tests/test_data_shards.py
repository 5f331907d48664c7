"""Writing shard directories from image folders, inspecting them, verifying them against the manifest."""
from __future__ import annotations

import tarfile

import pyarrow.parquet as pq
import pytest
from data_fixtures import flip_byte, image_bytes, make_root, member_offsets

from cutdist.data import DataError
from cutdist.data.inspection import inspect_shards, verify_shards
from cutdist.data.writer import sample_key, write_image_folder

SPLIT_COUNTS = {"trainA": 7, "trainB": 5, "testA": 3, "testB": 2}


def _tar_members(shard) -> dict[str, bytes]:
    with tarfile.open(shard) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


@pytest.fixture()
def written(tmp_path):
    files = make_root(tmp_path / "src", SPLIT_COUNTS)
    (tmp_path / "src" / "trainA" / "nested").mkdir()
    nested = tmp_path / "src" / "trainA" / "nested" / "img.v2.jpeg"
    nested.write_bytes(image_bytes(20, 24, seed=7))
    files["trainA"].append(nested)
    (tmp_path / "src" / "trainA" / "notes.txt").write_text("not an image")
    report = write_image_folder(tmp_path / "src", tmp_path / "out", max_count=3, workers=1, progress=False)
    return tmp_path / "out", files, report


def test_write_keeps_original_bytes_keys_and_manifest(written):
    out, files, report = written
    assert report.counts == {"trainA": 8, "trainB": 5, "testA": 3, "testB": 2}
    assert report.skipped == []
    assert report.shards["trainA"] == ["trainA-000000.tar", "trainA-000001.tar", "trainA-000002.tar"]
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    assert len(rows) == 18
    by_key = {(r["split"], r["key"]): r for r in rows}
    nested = by_key[("trainA", "nested/img_v2")]   # dots in a file name would split a webdataset key
    assert (nested["format"], nested["width"], nested["height"]) == ("jpeg", 20, 24)
    members = _tar_members(out / nested["shard"])
    assert members["nested/img_v2.jpeg"] == files["trainA"][-1].read_bytes()
    img1 = by_key[("trainB", "img001")]
    assert img1["format"] == "png" and img1["width"] == 41 and img1["height"] == 32
    assert _tar_members(out / img1["shard"])["img001.png"] == files["trainB"][1].read_bytes()
    assert not any(p.name.startswith(".") for p in out.parent.iterdir())   # no temporary left


def test_inspect_counts_and_sizes(written):
    out, _, _ = written
    report = inspect_shards(str(out))
    assert report["images"] == 18
    train_a = report["splits"]["trainA"]
    assert train_a["images"] == 8 and train_a["shards"] == 3 and train_a["samples_per_shard"] == [2, 3]
    assert train_a["formats"] == {"jpg": 4, "png": 3, "jpeg": 1}
    assert train_a["width"] == [20, 46] and train_a["missing_shards"] == 0
    assert report["splits"]["testB"]["common_sizes"] == [["40x32", 1], ["41x32", 1]]


def test_verify_round_trip_is_clean(written):
    out, _, _ = written
    assert verify_shards(str(out)) == []


def test_verify_catches_one_flipped_byte(written):
    out, _, _ = written
    shard = out / "trainB-000001.tar"
    offset, size = member_offsets(shard)["img004.jpg"]
    flip_byte(shard, offset + size // 2)
    problems = verify_shards(str(out))
    assert len(problems) == 1
    assert problems[0].startswith("trainB-000001.tar: key img004: sha256")


def test_verify_catches_truncated_missing_and_stray_shards(written):
    out, _, _ = written
    data = (out / "trainA-000000.tar").read_bytes()
    (out / "trainA-000000.tar").write_bytes(data[: len(data) // 2])
    (out / "testB-000000.tar").unlink()
    (out / "testA-000009.tar").write_bytes((out / "testA-000000.tar").read_bytes())
    problems = verify_shards(str(out))
    assert any(p.startswith("trainA-000000.tar: unreadable after") for p in problems), problems
    assert "testB-000000.tar: listed in the manifest, file missing (2 samples)" in problems
    assert "testA-000009.tar: shard file not in the manifest" in problems


def test_corrupt_jpeg_and_zero_byte_file_are_skipped_and_reported(tmp_path):
    make_root(tmp_path / "src", {"trainA": 4, "trainB": 3})
    good = image_bytes(64, 64, "JPEG", seed=3)
    (tmp_path / "src" / "trainA" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (tmp_path / "src" / "trainB" / "empty.png").write_bytes(b"")
    report = write_image_folder(tmp_path / "src", tmp_path / "out", workers=2, progress=False)
    assert report.counts == {"trainA": 4, "trainB": 3}
    skipped = {p.split("/")[-1]: reason for p, reason in report.skipped}
    assert set(skipped) == {"truncated.jpg", "empty.png"}
    assert "truncated" in skipped["truncated.jpg"].lower() and "empty" in skipped["empty.png"]
    assert "skipped: 2" in report.summary() and "truncated.jpg" in report.summary()
    keys = set(pq.read_table(tmp_path / "out" / "manifest.parquet").column("key").to_pylist())
    assert "truncated" not in keys and "empty" not in keys


def test_empty_split_is_an_error_and_nothing_is_left(tmp_path):
    make_root(tmp_path / "src", {"trainA": 2})
    (tmp_path / "src" / "trainB").mkdir()
    with pytest.raises(DataError, match=r"trainB: split trainB has no images"):
        write_image_folder(tmp_path / "src", tmp_path / "out", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_failure_after_some_shards_leaves_nothing_half_written(tmp_path):
    make_root(tmp_path / "src", {"trainA": 3})
    (tmp_path / "src" / "trainB").mkdir()
    (tmp_path / "src" / "trainB" / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"split trainB has no readable image \(1 skipped"):
        write_image_folder(tmp_path / "src", tmp_path / "out", max_count=1, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_plain_folders_add_splits_to_one_directory(tmp_path):
    make_root(tmp_path / "horses", {"x": 2})
    make_root(tmp_path / "zebras", {"y": 3})
    write_image_folder(tmp_path / "horses", tmp_path / "out", split="trainA", progress=False)
    write_image_folder(tmp_path / "zebras", tmp_path / "out", split="trainB", progress=False)
    rows = pq.read_table(tmp_path / "out" / "manifest.parquet").to_pylist()
    assert sorted({(r["split"], r["key"]) for r in rows}) == [
        ("trainA", "x/img000"), ("trainA", "x/img001"),
        ("trainB", "y/img000"), ("trainB", "y/img001"), ("trainB", "y/img002")]
    assert verify_shards(str(tmp_path / "out")) == []
    with pytest.raises(DataError, match="already holds split 'trainA'"):
        write_image_folder(tmp_path / "horses", tmp_path / "out", split="trainA", progress=False)


def test_bad_sources_are_one_line_errors(tmp_path):
    with pytest.raises(DataError, match="no such directory"):
        write_image_folder(tmp_path / "missing", tmp_path / "out", progress=False)
    make_root(tmp_path / "plain", {"x": 1})
    with pytest.raises(DataError, match="name its split with --split"):
        write_image_folder(tmp_path / "plain", tmp_path / "out", progress=False)
    with pytest.raises(DataError, match="--split: must be one of"):
        write_image_folder(tmp_path / "plain", tmp_path / "out", split="train", progress=False)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    make_root(tmp_path / "root", {"trainA": 1, "trainB": 1})
    with pytest.raises(DataError, match="holds no manifest.parquet"):
        write_image_folder(tmp_path / "root", tmp_path / "busy", progress=False)


def test_duplicate_keys_are_skipped_and_reported(tmp_path):
    make_root(tmp_path / "src", {"trainA": 1, "trainB": 1})
    (tmp_path / "src" / "trainA" / "img000.png").write_bytes(image_bytes(8, 8, "PNG"))
    report = write_image_folder(tmp_path / "src", tmp_path / "out", progress=False)
    assert report.counts["trainA"] == 1
    assert len(report.skipped) == 1 and "duplicate key 'img000'" in report.skipped[0][1]


def test_sample_key():
    from pathlib import PurePosixPath
    assert sample_key(PurePosixPath("a/b.c/d.e.jpg")) == "a/b.c/d_e"
    assert sample_key(PurePosixPath("x.png")) == "x"
