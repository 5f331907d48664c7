"""SinCUT through the worker loop (``run_local``, one process): checkpoints, sample grid and the whole translated
image, a resumed run equal to an uninterrupted one, the driver's preflight for the two image sources."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cutdist import config
from cutdist.data.synth_single import write_single_pair
from cutdist.train.loop import run_local
from cutdist.train.preflight import PreflightError, preflight

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def job(tmp_path: Path, **values) -> config.JobConfig:
    a, b = write_single_pair(tmp_path / "pair", size=(40, 48))
    return config.from_dict({
        "model.mode": "sincut", "model.ngf": 1, "model.ndf": 4, "model.n_blocks": 2, "model.netf_nc": 16,
        "loss.nce_layers": [0, 2, 3], "data.image_a": a, "data.image_b": b, "data.crop_size": 16,
        "data.batch_size": 4, "data.sincut_epoch_size": 12, "optim.epochs": 1, "optim.epochs_decay": 1,
        "checkpoint.every_steps": 2, "checkpoint.num_to_keep": 5, "logging.every_steps": 1,
        "logging.sample_every_steps": 3, "logging.tensorboard": False, "eval.every": 1,
        "storage_path": str(tmp_path / "runs"), **values})


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    payload = torch.load(ckpt / "model.pt", weights_only=True)
    return {f"{n}.{k}": v for n in ("g", "d", "f") for k, v in payload[n].items()}


@pytest.mark.slow
def test_train_checkpoints_translated_image_and_exact_resume(tmp_path):
    cfg = job(tmp_path)
    splits = preflight(cfg).splits
    metrics, _ = run_local(cfg, splits, run_dir=tmp_path / "full")
    assert metrics["step"] == 6 and metrics["epoch"] == 2.0        # 12 crops / 4 per step = 3 steps per epoch
    full = tmp_path / "full"
    samples = full / "samples"
    # an evaluation at each epoch's end: the whole painting (40 x 48, already multiples of 4) translated
    assert (samples / "translated_000000003.png").is_file() and (samples / "translated_000000006.png").is_file()
    assert np.asarray(Image.open(samples / "translated_latest.png")).shape == (40, 48, 3)
    assert (samples / "step_000000003.png").is_file()
    assert "translated_image" in metrics and "fid" not in metrics
    assert {"loss_d_r1", "loss_idt", "loss_nce_y"} <= set(metrics)
    state = torch.load(full / "checkpoint_000000006" / "train_state.pt", weights_only=True)
    assert state["step"] == 6

    # stop after step 4 (mid-epoch), resume from that checkpoint: the same weights as the uninterrupted run
    short = job(tmp_path, **{"optim.max_steps": 4})
    run_local(short, splits, run_dir=tmp_path / "part")
    metrics, _ = run_local(job(tmp_path), splits, run_dir=tmp_path / "resumed",
                           resume_from=tmp_path / "part" / "checkpoint_000000004")
    assert [m["step"] for m in map(json.loads, (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines())] \
        == [5, 6]                                                    # steps 5 and 6 only: it did resume
    got, want = weights(tmp_path / "resumed" / "checkpoint_000000006"), weights(full / "checkpoint_000000006")
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want), [k for k in want if not torch.equal(got[k], want[k])]


def test_a_cut_job_cannot_resume_a_sincut_checkpoint(tmp_path):
    from cutdist.train.checkpoint import check_compatible

    cfg = job(tmp_path)
    cut = config.from_dict({"data.root": "x"})
    with pytest.raises(config.ConfigError, match="^model.mode: the job says 'cut'"):
        check_compatible(cfg.to_dict(), cut, tmp_path)
    with pytest.raises(config.ConfigError, match="^data.crop_size"):
        check_compatible(cfg.to_dict(), job(tmp_path, **{"data.crop_size": 32}), tmp_path)


def test_preflight_names_the_missing_image_and_reads_shards(tmp_path):
    cfg = job(tmp_path, **{"data.image_b": str(tmp_path / "missing.png")})
    with pytest.raises(PreflightError, match="missing.png"):
        preflight(cfg)
    root = tmp_path / "two_in_a"
    write_single_pair(tmp_path / "src", size=(40, 48))
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "src" / "trainA" / "other.png")
    from cutdist.data.writer import write_image_folder

    write_image_folder(tmp_path / "src", root, workers=1)
    cfg = job(tmp_path, **{"data.image_a": "", "data.image_b": "", "data.root": str(root)})
    with pytest.raises(PreflightError, match="exactly one image in trainA"):
        preflight(cfg)
