"""``python -m cutdist.tune`` before any trial: bad input is one line and exit 2 with no cluster touched; how
many trials run at once; and the result files (leaderboard, plot, best job) written from trial summaries."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from cutdist import config
from cutdist.train.launcher import worker_resources
from cutdist.tune import __main__ as cli
from cutdist.tune.results import (ERROR, INCOMPLETE, STOPPED_EARLY, TERMINATED, TrialSummary, error_line,
                                  plot_fid_vs_hparams, summarise, write_best_config, write_leaderboard)
from cutdist.tune.space import parse_space
from cutdist.tune.trial import trials_that_fit

ROOT = Path(__file__).resolve().parents[1]
SMOKE_JOB = ROOT / "jobs" / "smoke.yaml"
SMOKE_SPACE = ROOT / "tune_spaces" / "smoke.yaml"


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from cutdist.data.synth import write_synth_dataset

    return write_synth_dataset(tmp_path_factory.mktemp("shards"), size=16, count=2, test_count=2, seed=0)


@pytest.fixture
def no_ray(monkeypatch):
    """Any attempt to start or join a cluster fails the test."""
    import ray

    def refuse(*args, **kwargs):
        raise AssertionError("ray.init() was called")
    monkeypatch.setattr(ray, "init", refuse)


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = cli.main([str(a) for a in argv])
    return code, capsys.readouterr().err.strip()


def write_space(tmp_path, raw) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_bad_space_is_one_line_exit_2(tmp_path, shards, capsys, no_ray):
    space = write_space(tmp_path, {"params": {"loss.temperature": {"loguniform": [0.0, 0.2]}}})
    code, err = run_cli(capsys, "--config", SMOKE_JOB, "--space", space, f"data.root={shards}")
    assert code == 2 and err == f"error: {space}: params.loss.temperature: loguniform needs low > 0, got [0.0, 0.2]"


def test_bad_job_override_is_exit_2(tmp_path, shards, capsys, no_ray):
    code, err = run_cli(capsys, "--config", SMOKE_JOB, "--space", SMOKE_SPACE, "loss.temprature=0.1")
    assert code == 2 and err.startswith("error: loss.temprature: unknown key") and "\n" not in err


def test_a_sweep_needs_fid(tmp_path, shards, capsys, no_ray):
    space = write_space(tmp_path, {"params": {"loss.lambda_x": {"choice": [1.0, 2.0]}}})   # smoke: eval off
    code, err = run_cli(capsys, "--config", SMOKE_JOB, "--space", space, f"data.root={shards}")
    assert code == 2 and err.startswith("error: eval.enabled: a sweep ranks its trials by FID")


def test_missing_shards_are_exit_2(tmp_path, capsys, no_ray):
    code, err = run_cli(capsys, "--config", SMOKE_JOB, "--space", SMOKE_SPACE, f"data.root={tmp_path / 'none'}",
                        "data.synth_if_missing=false")
    assert code == 2 and err == f"error: data.root: no such directory {tmp_path / 'none'}"


@pytest.fixture(scope="module")
def train_only_shards(tmp_path_factory):
    """Shards with trainA/trainB and no test split at all."""
    import pyarrow.parquet as pq

    root = write_synth_dataset_at(tmp_path_factory.mktemp("train_only"))
    table = pq.read_table(root / "manifest.parquet")
    keep = [s.startswith("train") for s in table.column("split").to_pylist()]
    for shard in set(table.column("shard").to_pylist()) - set(table.filter(keep).column("shard").to_pylist()):
        (root / shard).unlink()
    pq.write_table(table.filter(keep), root / "manifest.parquet")
    return root


def write_synth_dataset_at(root):
    from cutdist.data.synth import write_synth_dataset

    return write_synth_dataset(root, size=16, count=2, test_count=1, seed=0)


def test_fid_without_a_test_split_is_the_train_drivers_error(tmp_path, train_only_shards, capsys, no_ray):
    """One preflight for both drivers: the sweep refuses shards without testA/testB before Ray, with the very line
    and exit status of ``python -m cutdist.train``."""
    from cutdist.train import __main__ as train_cli

    job = [f"data.root={train_only_shards}", f"storage_path={tmp_path}", "eval.enabled=true"]
    code, err = run_cli(capsys, "--config", SMOKE_JOB, "--space", SMOKE_SPACE, *job)
    assert code == 2 and err == (f"error: eval.enabled: {train_only_shards / 'manifest.parquet'} has no testA/testB "
                                 "split to compute FID on (add them, or set eval.enabled=false)")
    assert train_cli.main(["--config", str(SMOKE_JOB), *job]) == 2
    assert capsys.readouterr().err.strip() == err
    assert not (tmp_path / "runs").exists() and len(list(tmp_path.iterdir())) == 0   # no sweep directory made


def test_an_existing_sweep_directory_is_not_overwritten(tmp_path, shards, capsys, no_ray):
    (tmp_path / "runs" / "mine").mkdir(parents=True)
    code, err = run_cli(capsys, "--config", SMOKE_JOB, "--space", SMOKE_SPACE, "--name", "mine",
                        f"data.root={shards}", f"storage_path={tmp_path / 'runs'}")
    assert code == 2 and f"--resume {tmp_path / 'runs' / 'mine'}" in err


def test_resume_needs_a_sweep_directory(tmp_path, capsys, no_ray):
    code, err = run_cli(capsys, "--resume", tmp_path)
    assert code == 2 and "is not a cutdist sweep directory" in err


def test_usage_errors_exit_2(capsys):
    for argv in (["--config", str(SMOKE_JOB)], ["--resume", "x", "--config", str(SMOKE_JOB)],
                 ["--config", str(SMOKE_JOB), "--space", str(SMOKE_SPACE), "--retry-errored"]):
        with pytest.raises(SystemExit) as info:
            cli.parse_args(argv)
        assert info.value.code == 2


def job(**values) -> config.JobConfig:
    return config.load(SMOKE_JOB, values)


def test_trials_that_fit_the_cluster():
    two_cpus = {"CPU": 2.0, "memory": 8e9}
    assert worker_resources(job()) == {"CPU": 1.0}
    assert trials_that_fit(job(**{"train.num_workers": 1}), two_cpus) == 2
    assert trials_that_fit(job(), two_cpus) == 1                                       # 2 workers x 1 CPU
    assert trials_that_fit(job(**{"train.resources_per_worker": {"CPU": 0.5}}), two_cpus) == 2
    assert trials_that_fit(job(**{"train.num_workers": 3}), two_cpus) == 0
    gpu = job(**{"train.use_gpu": True, "train.num_workers": 1})
    assert worker_resources(gpu) == {"GPU": 1.0}
    assert trials_that_fit(gpu, two_cpus) == 0 and trials_that_fit(gpu, {**two_cpus, "GPU": 8.0}) == 8
    assert trials_that_fit(job(**{"train.num_workers": 1}), {"CPU": 2.0, "memory": 1e8}) == 0   # trial memory


def test_concurrency_is_capped_to_what_fits(capsys):
    s = parse_space({"params": {"loss.lambda_x": {"choice": [1.0]}}, "max_concurrent_trials": 4}, {"data.root": "x"})
    cluster = {"CPU": 2.0, "memory": 8e9}
    assert cli.choose_concurrency(job(**{"train.num_workers": 1}), s, cluster, local=True) == 2
    assert "max_concurrent_trials 4 -> 2" in capsys.readouterr().out
    assert cli.choose_concurrency(job(**{"train.num_workers": 3}), s, cluster, local=True) is None
    assert cli.choose_concurrency(job(**{"train.num_workers": 3}), s, cluster, local=False) == 4
    assert "wait for an autoscaler" in capsys.readouterr().out
    unset = parse_space({"params": {"loss.lambda_x": {"choice": [1.0]}}}, {"data.root": "x"})
    assert cli.choose_concurrency(job(**{"train.num_workers": 1}), unset, cluster, local=True) == 2


# ------------------------------------------------------------------------------------- result files

SPACE = {"params": {"loss.lambda_x": {"loguniform": [0.1, 10.0]},
                    "loss.nce_layers": {"choice": {"all": [0, 4, 8, 12], "no_pixels": [4, 8, 12]}}}}
LABEL = "RANDOM-INIT-INCEPTION(seed=0) — not a real FID"


def summary(tid, lam, layers, status, fid, tmp_path, epochs=2.0, metric="fid", kid=math.nan) -> TrialSummary:
    ckpt = tmp_path / "runs" / tid / "checkpoint_000000008"
    return TrialSummary(trial_id=tid, sampled={"loss.lambda_x": lam, "loss.nce_layers": layers}, status=status,
                        metric=metric, best_fid=fid, best_kid=kid, best_kid_std=0.01, fid_backbone=LABEL if not math.isnan(fid) else "",
                        fid_real=False if not math.isnan(fid) else None, epochs_reached=epochs,
                        steps_reached=int(4 * epochs), planned_steps=8, evaluations=int(epochs),
                        best_checkpoint=str(ckpt) if not math.isnan(fid) else "", run_dir=str(ckpt.parent),
                        error="ValueError: frechet_distance: mu1 has non-finite values" if status == ERROR else "")


def test_leaderboard_plot_and_best_config(tmp_path, shards):
    import pandas as pd
    from PIL import Image

    s = parse_space(SPACE, yaml.safe_load(SMOKE_JOB.read_text()), {"data.root": str(shards)})
    rows = [summary("a_00000", 1.0, "all", TERMINATED, 500.0, tmp_path, kid=0.12),
            summary("a_00001", 0.2, "no_pixels", STOPPED_EARLY, 900.0, tmp_path, epochs=1.0),
            summary("a_00002", 5.0, "all", ERROR, math.nan, tmp_path, epochs=0.0)]
    parquet, csv = write_leaderboard(rows, s, tmp_path)
    board = pd.read_parquet(parquet)
    assert list(board["rank"]) == [1, 2, 3] and list(board["status"]) == [TERMINATED, STOPPED_EARLY, ERROR]
    assert list(board["loss.nce_layers"]) == ["all", "no_pixels", "all"]   # names, not lists
    assert list(pd.read_csv(csv)["trial_id"]) == ["a_00000", "a_00001", "a_00002"]

    png = plot_fid_vs_hparams(rows, s, tmp_path / "plot.png", title="t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as image:
        image.load()
        assert image.width > 2 * image.height   # one panel per searched key, side by side

    best = write_best_config(rows[0], s, tmp_path / "best.yaml", name="sweep-best", storage_path=str(tmp_path))
    cfg = config.load(best)   # what python -m cutdist.train --config reads first
    assert (cfg.name, cfg.loss.lambda_x, cfg.loss.nce_layers) == ("sweep-best", 1.0, [0, 4, 8, 12])
    assert cfg.to_dict() == {**s.trial_config(rows[0].sampled).to_dict(), "name": "sweep-best",
                             "storage_path": str(tmp_path)}
    assert "ranked by FID: best FID 500.0000, best KID 0.12000 [RANDOM-INIT-INCEPTION" in best.read_text().splitlines()[2]


def test_plot_without_any_fid_still_writes_a_png(tmp_path):
    s = parse_space(SPACE, {"data.root": "x"})
    png = plot_fid_vs_hparams([summary("b", 1.0, "all", ERROR, math.nan, tmp_path)], s, tmp_path / "p.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class FakeResult:
    def __init__(self, path, config, rows, error=None):
        import pandas as pd

        self.path, self.config, self.error = str(path), config, error
        self.metrics_dataframe = pd.DataFrame(rows) if rows else None


def test_summaries_from_results_classify_each_trial(tmp_path, shards):
    s = parse_space(SPACE, yaml.safe_load(SMOKE_JOB.read_text()),
                    {"data.root": str(shards), "train.num_workers": 1, "optim.max_steps": 0})
    fid = {"fid_backbone": LABEL, "fid_real": False}
    results = [
        FakeResult(tmp_path / "trial_x_00000", {"loss.lambda_x": 1.0, "loss.nce_layers": "all"},
                   [{"fid": 600.0, "epoch": 1.0, "step": 4, "checkpoint_path": "/c4", **fid},
                    {"fid": 550.0, "epoch": 2.0, "step": 8, "checkpoint_path": "/c8", **fid}]),
        FakeResult(tmp_path / "trial_x_00001", {"loss.lambda_x": 3.0, "loss.nce_layers": "all"},
                   [{"fid": 700.0, "epoch": 1.0, "step": 4, "checkpoint_path": "/d4", **fid}]),
        FakeResult(tmp_path / "trial_x_00002", {"loss.lambda_x": 0.2, "loss.nce_layers": "no_pixels"}, [],
                   error=RuntimeError("Training failed.\nTraceback ...\nValueError: mu1 has non-finite values")),
        FakeResult(tmp_path / "trial_x_00003", {"loss.lambda_x": 0.5, "loss.nce_layers": "all"},
                   [{"fid": 650.0, "epoch": 1.0, "step": 4, "checkpoint_path": "/e4", **fid}]),
    ]
    status = {"x_00000": "TERMINATED", "x_00001": "TERMINATED", "x_00002": "ERROR", "x_00003": "RUNNING"}
    out = summarise(results, s, lambda cfg: 8, str(tmp_path), status)
    assert [(o.trial_id, o.status) for o in out] == [("x_00000", TERMINATED), ("x_00003", INCOMPLETE),
                                                     ("x_00001", STOPPED_EARLY), ("x_00002", ERROR)]
    out = {o.trial_id: o for o in out}
    out = [out[f"x_0000{i}"] for i in range(3)]
    best = out[0]
    assert (best.best_fid, best.best_checkpoint, best.epochs_reached, best.evaluations) == (550.0, "/c8", 2.0, 2)
    assert out[1].steps_reached == 4 and out[2].error == "ValueError: mu1 has non-finite values"
    assert out[0].run_dir == f"{tmp_path}/runs/x_00000"

    # metric: kid ranks the trials and picks each one's best evaluation by KID (FID's best stays reported)
    by_kid = parse_space({**SPACE, "metric": "kid"}, yaml.safe_load(SMOKE_JOB.read_text()),
                         {"data.root": str(shards), "train.num_workers": 1, "optim.max_steps": 0})
    with_kid = [FakeResult(tmp_path / "trial_y_00000", {"loss.lambda_x": 1.0, "loss.nce_layers": "all"},
                           [{"fid": 600.0, "kid": 0.05, "kid_std": 0.01, "epoch": 1.0, "step": 4,
                             "checkpoint_path": "/k4", **fid},
                            {"fid": 550.0, "kid": 0.07, "kid_std": 0.02, "epoch": 2.0, "step": 8,
                             "checkpoint_path": "/k8", **fid}]),
                FakeResult(tmp_path / "trial_y_00001", {"loss.lambda_x": 3.0, "loss.nce_layers": "all"},
                           [{"fid": 500.0, "kid": 0.06, "kid_std": 0.01, "epoch": 2.0, "step": 8,
                             "checkpoint_path": "/m8", **fid}])]
    ranked = summarise(with_kid, by_kid, lambda cfg: 8, str(tmp_path), {"y_00000": "TERMINATED", "y_00001": "TERMINATED"})
    assert [o.trial_id for o in ranked] == ["y_00000", "y_00001"]   # by KID, although y_00001 has the best FID
    assert (ranked[0].score, ranked[0].best_kid, ranked[0].best_kid_std, ranked[0].best_fid) == (0.05, 0.05, 0.01, 550.0)
    assert ranked[0].best_checkpoint == "/k4" and ranked[0].metric == "kid"
    board = write_leaderboard(ranked, by_kid, tmp_path)[1].read_text().splitlines()
    assert board[0].startswith("rank,trial_id,status,metric,best_fid,best_kid,best_kid_std,")


def test_error_line_picks_the_cause():
    assert error_line(None) == ""
    err = RuntimeError("ray.train.TrainingFailedError: Training failed due to worker errors:\n"
                       "  File x, line 3\nValueError: frechet_distance: mu1 has non-finite values\n")
    assert error_line(err) == "ValueError: frechet_distance: mu1 has non-finite values"


def test_sincut_is_refused_no_fid_to_rank_by(tmp_path, capsys, no_ray):
    space = write_space(tmp_path, {"params": {"loss.lambda_x": {"choice": [2.0, 4.0]}}})
    code, err = run_cli(capsys, "--config", ROOT / "jobs" / "sincut_smoke.yaml", "--space", space,
                        f"data.root={tmp_path / 'pair'}")
    assert code == 2 and err == "error: model.mode: sincut has no FID to rank trials by; sweeps support cut and fastcut"
