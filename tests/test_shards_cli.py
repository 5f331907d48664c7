"""``python -m cutdist.shards``: write -> inspect -> verify, exit codes, one-line errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
from data_fixtures import flip_byte, image_bytes, make_root, member_offsets

from cutdist.shards import main

REPO = Path(__file__).resolve().parents[1]


def test_write_inspect_verify_round_trip_and_a_flipped_byte(tmp_path, capsys):
    make_root(tmp_path / "src", {"trainA": 5, "trainB": 4, "testA": 2, "testB": 2})
    good = image_bytes(48, 48, "JPEG", seed=1)
    (tmp_path / "src" / "trainA" / "broken.jpg").write_bytes(good[:200])
    (tmp_path / "src" / "trainB" / "zero.jpg").write_bytes(b"")
    out = tmp_path / "shards"
    assert main(["write", str(tmp_path / "src"), str(out), "--max-count", "2", "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    assert "trainA: 5 images in 3 shard(s)" in printed and "skipped: 2" in printed
    assert "broken.jpg" in printed and "zero.jpg" in printed

    assert main(["inspect", str(out), "--verify"]) == 0
    printed = capsys.readouterr().out
    assert "trainB: 4 images in 2 shard(s)" in printed and "verify: OK" in printed

    assert main(["inspect", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["splits"]["testA"]["images"] == 2 and "problems" not in report

    shard = next(r["shard"] for r in pq.read_table(out / "manifest.parquet").to_pylist() if r["key"] == "img003")
    offset, size = member_offsets(out / shard)["img003.png"]
    flip_byte(out / shard, offset + size - 20)
    assert main(["inspect", str(out), "--verify"]) == 1
    printed = capsys.readouterr().out
    assert f"MISMATCH {shard}: key img003: sha256" in printed and "verify: 1 problem(s)" in printed


def test_usage_and_data_errors_exit_2_with_one_line(tmp_path, capsys):
    (tmp_path / "src" / "trainA").mkdir(parents=True)
    assert main(["write", str(tmp_path / "src"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "split trainA has no images" in err
    assert not (tmp_path / "out").exists()
    assert main(["inspect", str(tmp_path / "nothing")]) == 2
    assert "no manifest" in capsys.readouterr().err


def test_synth_command_writes_a_verified_demo(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["synth", str(out), "--size", "16", "--count", "3", "--test-count", "2", "--seed", "1",
                 "--workers", "1"]) == 0
    assert "testA/testB/testGT 2 each" in capsys.readouterr().out
    assert main(["inspect", str(out), "--verify"]) == 0
    assert "testGT: 2 images" in capsys.readouterr().out


def test_module_entry_point(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-m", "cutdist.shards", "write", str(tmp_path / "missing"),
                             str(tmp_path / "out")], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().endswith("missing: no such directory") and result.stderr.count("\n") == 1
    usage = subprocess.run([sys.executable, "-m", "cutdist.shards"], capture_output=True, text=True, env=env,
                           cwd=REPO, timeout=120)
    assert usage.returncode == 2 and "usage:" in usage.stderr
