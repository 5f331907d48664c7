"""The training loop in one plain process (no Ray): checkpoints, exact resume, retention, FID wiring, DeepSpeed.

All runs use the tiny smoke model on a tiny synthetic dataset shared by the module.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from cutdist import config
from cutdist.train.checkpoint import CheckpointError, load_train_state, resolve_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "jobs" / "smoke.yaml"


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from cutdist.data.synth import write_synth_dataset
    root = tmp_path_factory.mktemp("shards")
    write_synth_dataset(root, size=32, count=16, test_count=4, seed=0)
    return root


def smoke_cfg(shards, tmp_path, **overrides):
    base = {"data.root": str(shards), "storage_path": str(tmp_path), "train.num_workers": 1}
    return config.load(SMOKE, {**base, **overrides})


def train(cfg, run_dir, resume_from=None):
    from cutdist.data import resolve_splits
    from cutdist.train.loop import run_local
    return run_local(cfg, resolve_splits(cfg.data), run_dir=run_dir, resume_from=resume_from)


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    payload = torch.load(ckpt / "model.pt", weights_only=True)
    return {f"{n}.{k}": v for n in ("g", "d", "f") for k, v in payload[n].items()}


def test_checkpoints_resume_exactly(shards, tmp_path):
    cfg = smoke_cfg(shards, tmp_path, **{"checkpoint.num_to_keep": 5})
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    metrics, ctx = train(cfg, straight)
    assert metrics["step"] == 6
    assert sorted(p.name for p, _ in ctx.checkpoints) == ["checkpoint_000000003", "checkpoint_000000006"]

    ckpt3 = straight / "checkpoint_000000003"
    state = load_train_state(ckpt3)   # weights_only=True inside
    assert (state["step"], state["epoch"], state["world_size"], state["strategy"]) == (3, 0, 1, "ddp")
    assert state["images_in_epoch"] == 3 and state["images_seen"] == 3
    adam = state["optimizers"]["gf"]
    assert len(adam["param_groups"]) == 2 and int(adam["state"][0]["step"]) == 3
    assert json.loads((ckpt3 / "metrics.json").read_text())["step"] == 3

    resumed_metrics, _ = train(cfg, resumed, resume_from=ckpt3)
    assert resumed_metrics["images_seen"] == metrics["images_seen"] == 6   # counted on from the checkpoint
    a, b = weights(straight / "checkpoint_000000006"), weights(resumed / "checkpoint_000000006")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses_straight = {m["step"]: m["loss_g_total"] for m in read_metrics(straight)}
    losses_resumed = {m["step"]: m["loss_g_total"] for m in read_metrics(resumed)}
    assert sorted(losses_resumed) == [4, 5, 6]
    assert all(losses_resumed[s] == losses_straight[s] for s in (4, 5, 6))
    # training actually moved the weights
    w3 = weights(ckpt3)
    assert any(not torch.equal(w3[k], a[k]) for k in a)

    # a run directory resolves to its latest checkpoint; junk is refused with the key named
    assert resolve_checkpoint(straight) == straight / "checkpoint_000000006"
    with pytest.raises(CheckpointError, match="checkpoint.resume_from"):
        resolve_checkpoint(tmp_path)


def test_resume_refuses_another_architecture(shards, tmp_path):
    from cutdist.train.checkpoint import resolve_resume
    cfg = smoke_cfg(shards, tmp_path, **{"optim.max_steps": 3})
    train(cfg, tmp_path / "run")
    other = smoke_cfg(shards, tmp_path, **{"model.ngf": 16, "checkpoint.resume_from": str(tmp_path / "run")})
    with pytest.raises(config.ConfigError, match=r"^model\.ngf: .*trained with 8"):
        resolve_resume(other)


def test_samples_logs_and_retention(shards, tmp_path):
    # also the fast-path switches: the loop must hand bf16 autocast and channels_last to the step; every
    # convolution's output dtype and input layout is recorded to see that it did
    cfg = smoke_cfg(shards, tmp_path, **{"optim.max_steps": 7, "checkpoint.every_steps": 2,
                                         "checkpoint.num_to_keep": 2, "logging.every_steps": 2,
                                         "train.precision": "bf16", "train.channels_last": True})
    convs: list[tuple[torch.dtype, bool]] = []

    def record(module, inputs, output):
        x = inputs[0]
        if isinstance(module, torch.nn.Conv2d) and torch.is_grad_enabled() and x.shape[1] > 1 and x.shape[-1] > 1:
            convs.append((output.dtype, x.is_contiguous(memory_format=torch.channels_last)))
    hook = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        metrics, ctx = train(cfg, tmp_path / "run")
    finally:
        hook.remove()
    assert torch.bfloat16 in {dtype for dtype, _ in convs}           # G under autocast (D stays fp32 by default)
    assert convs[0][1]                                               # G's stem was fed the batch as NHWC
    run = tmp_path / "run"
    kept = sorted(p.name for p in run.glob("checkpoint_*"))
    assert kept == ["checkpoint_000000006", "checkpoint_000000007"]   # no FID: the newest two
    lines = read_metrics(run)
    assert [m["step"] for m in lines] == [2, 4, 6, 7]
    for m in lines:
        assert {"loss_d", "loss_g_gan", "loss_nce", "loss_nce_y", "lr", "images_per_s", "eta_s",
                "skipped_samples", "epoch"} <= m.keys()
        assert math.isfinite(m["loss_g_total"]) and m["skipped_samples"] == 0
    grid = run / "samples" / "latest.png"
    from PIL import Image
    with Image.open(grid) as img:   # 4 rows x (real A | G(A) | real B | G(B)) of 32 px, 2 px padding
        assert img.size == (4 * 34 + 2, 4 * 34 + 2)
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))


def test_checkpoint_by_minutes_of_training(shards, tmp_path):
    # a step takes far longer than 1e-6 minutes: every log step (2, 4) checkpoints by time, and the end (5);
    # the step cadence (1000) never fires
    cfg = smoke_cfg(shards, tmp_path, **{"optim.max_steps": 5, "checkpoint.every_steps": 1000,
                                         "checkpoint.every_minutes": 1e-6, "checkpoint.num_to_keep": 5,
                                         "logging.every_steps": 2, "logging.sample_every_steps": 100,
                                         "logging.tensorboard": False})
    metrics, ctx = train(cfg, tmp_path / "run")
    assert metrics["step"] == 5
    assert sorted(p.name for p, _ in ctx.checkpoints) == [
        "checkpoint_000000002", "checkpoint_000000004", "checkpoint_000000005"]
    assert load_train_state(tmp_path / "run" / "checkpoint_000000002")["step"] == 2


@pytest.mark.slow
def test_fid_during_training_keeps_the_best_checkpoint(shards, tmp_path):
    # 16 steps per epoch on one worker: FID after epoch 1 (step 16) and at the end (step 20).
    cfg = smoke_cfg(shards, tmp_path, **{"optim.max_steps": 20, "optim.epochs": 2, "checkpoint.every_steps": 5,
                                         "checkpoint.num_to_keep": 1, "logging.every_steps": 5,
                                         "logging.sample_every_steps": 100, "eval.enabled": True,
                                         "eval.every": 1, "eval.max_images": 4, "eval.batch_size": 4,
                                         "eval.cache_dir": str(tmp_path / "fidcache")})
    metrics, ctx = train(cfg, tmp_path / "run")
    evals = [m for m in read_metrics(tmp_path / "run") if "fid" in m]
    assert [m["step"] for m in evals] == [16, 20]
    for m in evals:
        assert m["fid"] > 0 and math.isfinite(m["fid"])
        assert m["fid_real"] is False and "RANDOM" in m["fid_backbone"]
        assert m["fid_n_images"] == 4 and m["ckpt_fid"] == m["fid"]
    best_step = min(evals, key=lambda m: m["fid"])["step"]
    kept = {int(p.name.split("_")[1]) for p in (tmp_path / "run").glob("checkpoint_*")}
    assert kept == {best_step, 20}
    assert metrics["fid_best"] == min(m["fid"] for m in evals)
    assert list((tmp_path / "fidcache").glob("*.npz"))   # reference statistics cached


DEEPSPEED_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    from cutdist import config
    from cutdist.data import resolve_splits
    from cutdist.train.loop import run_local
    shards, out = sys.argv[1], sys.argv[2]
    def cfg(strategy, **kw):
        return config.load({smoke!r}, {{"data.root": shards, "train.num_workers": 1, "train.strategy": strategy,
                                        "optim.max_steps": 4, "checkpoint.every_steps": 2,
                                        "checkpoint.num_to_keep": 5, **kw}})
    c = cfg("deepspeed")
    splits = resolve_splits(c.data)
    run_local(c, splits, run_dir=out + "/ds")
    run_local(c, splits, run_dir=out + "/ds_resumed", resume_from=out + "/ds/checkpoint_000000002")
    run_local(cfg("ddp"), splits, run_dir=out + "/ddp")
    run_local(cfg("ddp"), splits, run_dir=out + "/ddp_from_ds", resume_from=out + "/ds/checkpoint_000000002")
""")


@pytest.mark.slow
def test_deepspeed_zero1_single_process_matches_ddp_and_resumes(shards, tmp_path):
    # Its own interpreter: DeepSpeed leaves a process group and global state behind.
    script = DEEPSPEED_SCRIPT.format(smoke=str(SMOKE))
    proc = subprocess.run([sys.executable, "-c", script, str(shards), str(tmp_path)], capture_output=True,
                          text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ds = tmp_path / "ds" / "checkpoint_000000004"
    state = load_train_state(ds)
    assert state["strategy"] == "deepspeed" and int(state["optimizers"]["gf"]["state"][0]["step"]) == 4
    ref = weights(ds)
    for other in ("ds_resumed", "ddp", "ddp_from_ds"):
        got = weights(tmp_path / other / "checkpoint_000000004")
        for k in ref:   # same objective, same Adam: equal up to float reassociation
            torch.testing.assert_close(got[k], ref[k], rtol=1e-5, atol=1e-6, msg=f"{other}: {k}")


def test_build_trainer_settings(shards, tmp_path):
    """The one TorchTrainer: scaling, storage, retention by FID, failures, backend; Tune's name/storage override."""
    from cutdist.data import resolve_splits
    from cutdist.train.checkpoint import SCORE_KEY
    from cutdist.train.launcher import build_trainer

    cfg = smoke_cfg(shards, tmp_path, **{"train.num_workers": 3, "train.resources_per_worker": {"CPU": 2},
                                         "checkpoint.max_failures": 2, "checkpoint.num_to_keep": 4})
    trainer = build_trainer(cfg, resolve_splits(cfg.data), name="trial_7", storage=str(tmp_path / "sweep"))
    scaling, run = trainer.scaling_config, trainer.run_config
    assert (scaling.num_workers, scaling.use_gpu, scaling.resources_per_worker) == (3, False, {"CPU": 2.0})
    assert run.name == "trial_7" and run.storage_path == str(tmp_path / "sweep")
    assert run.failure_config.max_failures == 2
    ckpt = run.checkpoint_config
    assert (ckpt.num_to_keep, ckpt.checkpoint_score_attribute, ckpt.checkpoint_score_order) == (4, SCORE_KEY, "min")
    assert trainer.backend_config.backend == "gloo"
    loop = trainer.train_loop_config
    assert loop["logs_dir"] == str(tmp_path / "sweep" / "trial_7")
    assert loop["config"]["name"] == "trial_7" and Path(loop["splits"].train_a[0]).is_absolute()


def test_worker_resources_are_what_ray_asks_for(tmp_path, capsys):
    """One per-worker computation serves the train driver's warning and the sweep's trial count; it must agree with
    Ray's own ScalingConfig for the same fields (a GPU worker without resources_per_worker asks for no CPU)."""
    from ray.train import ScalingConfig

    from cutdist.train.__main__ import warn_if_short_of_resources
    from cutdist.train.launcher import worker_resources

    cases = [{}, {"train.use_gpu": True}, {"train.resources_per_worker": {"CPU": 2, "GPU": 0}},
             {"train.use_gpu": True, "train.resources_per_worker": {"CPU": 8}},
             {"train.use_gpu": True, "train.resources_per_worker": {"CPU": 4, "GPU": 0.5}}]
    for values in cases:
        cfg = config.from_dict({"data.root": str(tmp_path), **values})
        t = cfg.train
        ray_asks = ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                                 resources_per_worker=dict(t.resources_per_worker) or None)
        assert worker_resources(cfg) == \
            {k: float(v) for k, v in ray_asks._resources_per_worker_not_none.items()}, values

    gpu = config.from_dict({"data.root": str(tmp_path), "train.use_gpu": True, "train.num_workers": 2})
    warn_if_short_of_resources(gpu, {"CPU": 16.0, "GPU": 1.0})
    err = capsys.readouterr().err
    assert "needs 2 GPU but the cluster has 1" in err and "CPU" not in err
    warn_if_short_of_resources(gpu, {"CPU": 0.0, "GPU": 2.0})
    assert capsys.readouterr().err == ""


def test_decode_on_device_without_a_test_split_writes_sample_grids(shards, tmp_path):
    # the grid falls back to the training batch; with decode_on_device that batch holds only encoded bytes
    cfg = smoke_cfg(shards, tmp_path, **{"data.root": "", "data.train_a": f"{shards}/trainA-*.tar",
                                         "data.train_b": f"{shards}/trainB-*.tar", "data.decode_on_device": True,
                                         "optim.max_steps": 2, "logging.sample_every_steps": 1})
    metrics, _ = train(cfg, tmp_path / "run")
    assert metrics["step"] == 2 and (tmp_path / "run" / "samples" / "latest.png").is_file()
