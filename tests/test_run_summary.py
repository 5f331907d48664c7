"""The end of a run: KID beside FID in every evaluation, the best FID/KID with step, epoch and checkpoint carried
by the reports, summary.json, and ``translate --checkpoint RUN_DIR`` taking the best checkpoint."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cutdist import config
from cutdist.train.checkpoint import best_checkpoint_of_run, read_metrics
from cutdist.train.summary import BestSoFar, build_summary, summary_lines, write_summary

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "jobs" / "smoke.yaml"


def test_best_so_far_follows_the_lowest_of_each_and_round_trips():
    best = BestSoFar()
    best.update({"fid": 300.0, "kid": 0.20, "kid_std": 0.01}, step=10, epoch=1.0)
    best.update({"fid": 250.0, "kid": 0.25, "kid_std": 0.02}, step=20, epoch=2.0)
    best.update({"fid": 280.0, "kid": 0.15, "kid_std": 0.03}, step=30, epoch=3.0)
    best.update({"loss_d": 1.0}, step=31, epoch=3.1)   # no evaluation: nothing changes
    m = best.as_metrics()
    assert (m["fid_best"], m["fid_best_step"], m["fid_best_epoch"]) == (250.0, 20, 2.0)
    assert (m["kid_best"], m["kid_best_std"], m["kid_best_step"]) == (0.15, 0.03, 30)
    assert BestSoFar.from_metrics(m).as_metrics() == m

    final = {**m, "fid": 280.0, "kid": 0.15, "kid_std": 0.03, "step": 30, "epoch": 3.0, "world_size": 2}
    summary = build_summary(final, run_dir="/r", kept=["/r/checkpoint_000000020", "/r/checkpoint_000000030"],
                            latest="/r/checkpoint_000000030", batch_size=4, wall_s=75.0)
    assert summary["best"]["fid"]["checkpoint"] == "/r/checkpoint_000000020"
    assert summary["best"]["kid"]["checkpoint"] == "/r/checkpoint_000000030"
    assert summary["images_seen"] == 30 * 4 * 2 and summary["final"]["kid"] == 0.15
    pruned = build_summary(final, run_dir="/r", kept=["/r/checkpoint_000000020"], latest=None, batch_size=1,
                           wall_s=1.0)
    assert pruned["best"]["kid"]["checkpoint"] is None and "not kept" in pruned["best"]["kid"]["checkpoint_note"]
    lines = summary_lines(summary)
    assert lines[0].startswith("  best FID   250.0000 at epoch 2 (step 20)  /r/checkpoint_000000020")
    assert lines[1].startswith("  best KID   0.15000 ± 0.03000 at epoch 3 (step 30)")
    assert "240 images (2 workers x batch 4) in 1 min 15 s" in lines[-1]


@pytest.mark.slow
def test_a_run_reports_kid_and_its_best_and_translate_takes_the_best(tmp_path, one_torch_thread, capsys):
    from cutdist.data import resolve_splits
    from cutdist.data.synth import write_synth_dataset
    from cutdist.train.loop import run_local
    from cutdist.translate import main as translate_main

    shards = write_synth_dataset(tmp_path / "shards", size=32, count=8, test_count=4, seed=0)
    cfg = config.load(SMOKE, {"data.root": str(shards), "train.num_workers": 1, "optim.max_steps": 16,
                              "optim.epochs": 2, "checkpoint.every_steps": 100, "checkpoint.num_to_keep": 3,
                              "logging.every_steps": 4, "logging.sample_every_steps": 100, "eval.enabled": True,
                              "eval.every": 1, "eval.max_images": 4, "eval.batch_size": 4,
                              "eval.cache_dir": str(tmp_path / "fidcache")})
    run = tmp_path / "run"
    final, _ = run_local(cfg, resolve_splits(cfg.data), run_dir=run)
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [m for m in evals if "fid" in m]
    assert [m["step"] for m in evals] == [8, 16]
    for m in evals:   # KID beside FID: 4 generated vs 4 reference images, the whole sets
        assert math.isfinite(m["kid"]) and m["kid_std"] == 0.0 and m["kid_subset_size"] == 4
    best = min(evals, key=lambda m: m["fid"])
    assert (final["fid_best"], final["fid_best_step"], final["fid_best_epoch"]) == (best["fid"], best["step"],
                                                                                     best["epoch"])
    assert final["kid_best"] == min(m["kid"] for m in evals)

    kept = [str(p) for p in run.glob("checkpoint_*")]
    summary = build_summary(final, run_dir=str(run), kept=kept, latest=None, batch_size=1, wall_s=1.0)
    assert summary["best"]["fid"]["checkpoint"] == str(run / f"checkpoint_{best['step']:09d}")
    write_summary(summary, run)
    assert best_checkpoint_of_run(run)[0] == run / f"checkpoint_{best['step']:09d}"
    (run / "summary.json").unlink()   # without it: the lowest FID among the kept checkpoints' metrics.json
    assert best_checkpoint_of_run(run)[0] == run / f"checkpoint_{best['step']:09d}"

    # a resumed run reads its best so far back from the checkpoint it starts from
    restored = read_metrics(run / "checkpoint_000000016")
    assert BestSoFar.from_metrics(restored).as_metrics()["fid_best"] == final["fid_best"]
    assert final["images_seen"] == 16 and restored["images_seen"] == 16

    # the driver's end of a run whose last worker group restarted at the end and reported nothing: Ray's result
    # still names checkpoint 8; the run directory's newer complete checkpoint 16 is the run's end, a cut-short
    # newer one is passed over
    import pyarrow.fs
    from types import SimpleNamespace

    from cutdist.train.checkpoint import best_checkpoint, kept_checkpoints, run_end

    (run / "checkpoint_000000024").mkdir()
    (run / "checkpoint_000000024" / "model.pt").write_bytes((run / "checkpoint_000000016" / "model.pt").read_bytes())
    eight = str(run / "checkpoint_000000008")

    def ray_result(known):
        return SimpleNamespace(checkpoint=SimpleNamespace(path=known), metrics=read_metrics(known), path=str(run),
                               filesystem=pyarrow.fs.LocalFileSystem(),
                               best_checkpoints=[(SimpleNamespace(path=known), read_metrics(known))])
    latest, metrics = run_end(ray_result(eight))
    assert latest == str(run / "checkpoint_000000016") and metrics == restored
    kept = kept_checkpoints(ray_result(eight), (latest, metrics))
    assert [path for path, _ in kept] == [eight, latest]
    assert best_checkpoint(kept)[0] == str(run / f"checkpoint_{best['step']:09d}")
    assert run_end(ray_result(latest)) == (latest, restored)   # Ray's is the newest: as it is
    summary = build_summary(metrics, run_dir=str(run), kept=[eight, latest], latest=latest, batch_size=1,
                            wall_s=1.0)
    assert summary["latest_checkpoint"] == latest and summary["images_seen"] == 16

    capsys.readouterr()
    code = translate_main(["--checkpoint", str(run), "--input", str(shards / "testA-000000.tar"),
                           "--output", str(tmp_path / "out"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 0 and f"using checkpoint_{best['step']:09d} (lowest FID" in err
    assert len(list((tmp_path / "out").glob("*.png"))) == 4


def test_images_seen_of_a_checkpoint_written_before_it_was_counted():
    from cutdist.train.checkpoint import Restored

    def position(mode, world):
        saved = {"config": {"data": {"batch_size": 4}, "model": {"mode": mode}}}
        return Restored(Path("x"), saved, {"step": 10, "epoch": 1, "images_in_epoch": 0, "world_size": world},
                        {}).position
    assert position("cut", 2).images_seen == 80 and position("sincut", 2).images_seen == 40   # SinCUT's batch is global
    now = Restored(Path("x"), {}, {"step": 10, "epoch": 1, "images_in_epoch": 0, "images_seen": 33}, {})
    assert now.position.images_seen == 33
