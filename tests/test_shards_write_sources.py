"""``shards write`` from per-split folders: held-out test images, seeded order, re-encoding, resuming a killed write."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from data_fixtures import make_root
from PIL import Image

from cutdist import shards
from cutdist.data import DataError
from cutdist.data.inspection import verify_shards
from cutdist.data.writer import Encoding, encode_image, write_splits

REPO = Path(__file__).resolve().parents[1]


def _rows(out: Path, split: str | None = None) -> list[dict]:
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    return [r for r in rows if split is None or r["split"] == split]


@pytest.fixture()
def layout(tmp_path):
    """GTA-like (flat, numbered) and Cityscapes-like (<city>/ sub-folders) sources, tiny."""
    make_root(tmp_path / "gta" / "images", {"part1": 6, "part2": 6})
    make_root(tmp_path / "cs" / "train", {"aachen": 3, "bremen": 3})
    make_root(tmp_path / "cs" / "val", {"frankfurt": 2, "lindau": 2})
    return tmp_path


def test_per_split_folders_recursive_with_held_out_test_a(layout):
    out = layout / "out"
    code = shards.main(["write", str(out), "--train-a", str(layout / "gta/images"), "--train-b", str(layout / "cs/train"),
                        "--test-b", str(layout / "cs/val"), "--test-a-from-train", "4", "--max-count", "3",
                        "--workers", "2"])
    assert code == 0
    keys = {s: [r["key"] for r in _rows(out, s)] for s in ("trainA", "trainB", "testA", "testB")}
    every_a = {f"part{p}/img{i:03d}" for p in (1, 2) for i in range(6)}
    assert len(keys["testA"]) == 4 and len(keys["trainA"]) == 8
    assert set(keys["testA"]) | set(keys["trainA"]) == every_a and not set(keys["testA"]) & set(keys["trainA"])
    assert sorted(keys["testB"]) == ["frankfurt/img000", "frankfurt/img001", "lindau/img000", "lindau/img001"]
    assert len(keys["trainB"]) == 6
    assert verify_shards(str(out)) == []
    again = layout / "again"
    write_splits({"trainA": layout / "gta/images", "trainB": layout / "cs/train"}, again, holdout={"testA": 4},
                 progress=False)
    assert [r["key"] for r in _rows(again, "testA")] == keys["testA"]   # seeded: the same images every time


def test_seed_shuffles_the_sample_order(layout):
    sources = {"trainA": layout / "gta/images", "trainB": layout / "cs/train"}
    order = {}
    for seed in (None, 1, 2):
        out = layout / f"out{seed}"
        write_splits(sources, out, seed=seed, max_count=5, progress=False)
        order[seed] = [r["key"] for r in _rows(out, "trainA")]
        assert verify_shards(str(out)) == []
    assert order[None] == sorted(order[None])
    assert sorted(order[1]) == order[None] and order[1] != order[None] and order[2] != order[1]
    out = layout / "out1b"
    write_splits(sources, out, seed=1, max_count=5, progress=False)
    assert [r["key"] for r in _rows(out, "trainA")] == order[1]


def test_reencoding_scales_down_keeps_aspect_and_small_images(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "a"
    folder.mkdir()
    Image.fromarray(rng.integers(0, 255, (52, 96, 3), dtype=np.uint8)).save(folder / "wide.png")
    Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(folder / "small.jpg", quality=80)
    out = tmp_path / "out"
    write_splits({"trainA": folder, "trainB": folder}, out, encoding=Encoding(max_side=48, format="jpeg", quality=90),
                 progress=False)
    rows = {r["key"]: r for r in _rows(out, "trainA")}
    assert (rows["wide"]["format"], rows["wide"]["width"], rows["wide"]["height"]) == ("jpg", 48, 26)
    with tarfile.open(out / rows["small"]["shard"]) as tar:
        small = tar.extractfile("small.jpg").read()
        wide = Image.open(io.BytesIO(tar.extractfile("wide.jpg").read()))
    assert small == (folder / "small.jpg").read_bytes()   # already JPEG and small enough: not re-encoded
    assert wide.format == "JPEG" and wide.size == (48, 26)
    data, ext, w, h = encode_image((folder / "wide.png").read_bytes(), "png", Encoding(max_side=48))
    assert (ext, w, h) == ("png", 48, 26) and Image.open(io.BytesIO(data)).format == "PNG"
    data, ext, _, _ = encode_image((folder / "wide.png").read_bytes(), "png", Encoding(format="webp"))
    assert ext == "webp" and Image.open(io.BytesIO(data)).size == (96, 52)


@pytest.mark.parametrize("argv, message", [
    (["write", "SRC", "OUT", "--train-a", "X"], "not both"),
    (["write", "OUT"], "no source"),
    (["write", "OUT", "--train-a", "A", "--train-b", "B", "--format", "png", "--quality", "80"],
     "--quality: only with --format jpeg or webp"),
    (["write", "OUT", "--train-a", "A", "--train-b", "B", "--test-a-from-train", "99"],
     "--test-a-from-train: must be between 1 and 11"),
    (["write", "OUT", "--train-a", "A", "--train-b", "B", "--test-a", "B", "--test-a-from-train", "2"],
     "--test-a-from-train: testA already has a source"),
    (["write", "OUT", "--train-a", "missing", "--train-b", "B"], "missing: no such directory (source of trainA)"),
])
def test_bad_write_arguments_are_one_line_exit_2(layout, capsys, argv, message):
    names = {"SRC": layout / "gta", "OUT": layout / "out", "A": layout / "gta/images", "B": layout / "cs/train",
             "X": layout / "cs/val", "missing": layout / "missing"}
    assert shards.main([str(names.get(a, a)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (layout / "out").exists() and not (layout / ".out.partial").exists()


def _frames(folder: Path, count: int) -> None:
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png",
                                                                               compress_level=1)


def _write_cli(src: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "cutdist.shards", "write", str(out), "--train-a", str(src), "--train-b", str(src),
            "--max-side", "160", "--format", "png", "--max-count", "2", "--workers", "1"]


def test_killed_write_resumes_without_redoing_finished_shards(tmp_path):
    _frames(tmp_path / "frames", 30)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    reference = tmp_path / "reference"
    subprocess.run(_write_cli(tmp_path / "frames", reference), env=env, check=True, capture_output=True)

    out = tmp_path / "out"
    partial = tmp_path / ".out.partial"
    proc = subprocess.Popen(_write_cli(tmp_path / "frames", out), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list(partial.glob("*.tar"))) >= 3:
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = sorted(partial.glob("*.tar"))
    assert not out.exists() and 3 <= len(finished) < 30, "the write was not killed mid-way"
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in finished}

    rerun = subprocess.run(_write_cli(tmp_path / "frames", out), env=env, check=True, capture_output=True, text=True)
    assert "done by an earlier, interrupted run" in rerun.stdout
    after = {name: ((out / name).stat().st_ino, (out / name).stat().st_mtime_ns) for name in before}
    assert after == before   # finished shards were not rewritten
    assert _rows(out) == _rows(reference)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in reference.iterdir())
    for shard in reference.glob("*.tar"):
        assert (out / shard.name).read_bytes() == shard.read_bytes()
    assert not partial.exists() and verify_shards(str(out)) == []


def test_an_unfinished_write_of_other_options_is_refused(tmp_path):
    _frames(tmp_path / "frames", 3)
    (tmp_path / ".out.partial").mkdir()
    (tmp_path / ".out.partial" / "plan.json").write_text("{}")
    with pytest.raises(DataError, match=r"\.out\.partial: holds an unfinished write of other sources or options"):
        write_splits({"trainA": tmp_path / "frames", "trainB": tmp_path / "frames"}, tmp_path / "out", progress=False)
