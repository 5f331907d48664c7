"""GTA5 -> Cityscapes end to end in miniature: synthetic frames in both datasets' folder layouts and at their full
sizes -> ``python -m cutdist.shards write`` (per-split folders, held-out testA, re-encoded 1024-wide JPEG) ->
``python -m cutdist.train --config jobs/gta2cityscapes.yaml`` shrunk to one CPU step (the recipe's data
settings kept: scale_width_and_crop, load 1024, crop 512), with its FID and KID on Cityscapes val."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cutdist import config
from cutdist.data.frames import write_layouts

pytestmark = [pytest.mark.slow, pytest.mark.ray]

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "jobs" / "gta2cityscapes.yaml"


def test_recipe_is_the_authors_setting():
    cfg = config.load(RECIPE)
    assert (cfg.data.preprocess, cfg.data.load_size, cfg.data.crop_size, cfg.data.batch_size) == (
        "scale_width_and_crop", 1024, 512, 1)
    assert (cfg.optim.epochs, cfg.optim.epochs_decay) == (10, 10)
    assert cfg.train.precision == "bf16" and cfg.train.strategy == "ddp" and cfg.train.num_workers == 16
    assert cfg.eval.enabled and cfg.eval.every > 0


def test_miniature_layouts_write_and_train_one_step(tmp_path):
    folders = write_layouts(tmp_path / "data", gta=4, cityscapes_train=2, cityscapes_val=2, compress_level=1)
    assert sorted(p.relative_to(tmp_path / "data").as_posix() for p in (tmp_path / "data").rglob("*.png")) == [
        "GTA5/images/00001.png", "GTA5/images/00002.png", "GTA5/images/00003.png", "GTA5/images/00004.png",
        "cityscapes/leftImg8bit/train/aachen/aachen_000000_000000_leftImg8bit.png",
        "cityscapes/leftImg8bit/train/bochum/bochum_000000_000001_leftImg8bit.png",
        "cityscapes/leftImg8bit/val/frankfurt/frankfurt_000000_000000_leftImg8bit.png",
        "cityscapes/leftImg8bit/val/lindau/lindau_000000_000001_leftImg8bit.png"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": "local", "RAY_AUTH_MODE": "disabled"}
    shards = tmp_path / "shards"
    subprocess.run([sys.executable, "-m", "cutdist.shards", "write", str(shards),
                    "--train-a", str(folders["gta"]), "--train-b", str(folders["cityscapes_train"]),
                    "--test-b", str(folders["cityscapes_val"]), "--test-a-from-train", "2", "--seed", "0",
                    "--max-side", "1024", "--format", "jpeg", "--workers", "2"],
                   env=env, check=True, capture_output=True, text=True, timeout=300)
    rows = pq.read_table(shards / "manifest.parquet").to_pylist()
    sizes = {(r["split"], r["format"], r["width"], r["height"]) for r in rows}
    assert sizes == {("trainA", "jpg", 1024, 563), ("testA", "jpg", 1024, 563),
                     ("trainB", "jpg", 1024, 512), ("testB", "jpg", 1024, 512)}
    assert sorted(r["key"] for r in rows if r["split"] == "testB") == [
        "frankfurt/frankfurt_000000_000000_leftImg8bit", "lindau/lindau_000000_000001_leftImg8bit"]

    runs = tmp_path / "runs"
    proc = subprocess.run(
        [sys.executable, "-m", "cutdist.train", "--config", str(RECIPE), f"data.root={shards}",
         f"storage_path={runs}", "name=mini", "train.num_workers=1", "train.use_gpu=false",
         "train.resources_per_worker={}", "train.precision=fp32", "model.ngf=4", "model.ndf=4", "model.n_blocks=1",
         "model.netf_nc=8", "loss.num_patches=8", "optim.max_steps=1", "data.loader_workers=0",
         "logging.every_steps=1", "eval.inception_weights=random", "eval.batch_size=2",
         "checkpoint.max_failures=0"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = [json.loads(line) for line in (runs / "mini" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["step"] == 1
    assert any("fid" in m and "kid" in m and m.get("fid_n_images") == 2 for m in metrics), metrics
    checkpoints = sorted((runs / "mini").glob("checkpoint_0*"))
    payload = __import__("torch").load(checkpoints[-1] / "model.pt", weights_only=True)
    assert payload["config"]["data"]["crop_size"] == 512 and payload["step"] == 1
