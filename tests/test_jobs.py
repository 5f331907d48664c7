"""Every job file loads through config.load; the paper jobs carry the paper's settings; the runtime env parses."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cutdist import config

JOBS = Path(__file__).resolve().parents[1] / "jobs"
JOB_FILES = sorted(p for p in JOBS.glob("*.yaml") if p.name != "runtime_env.yaml")


def test_the_expected_job_files_exist():
    names = {p.name for p in JOBS.glob("*.yaml")}
    assert {"demo.yaml", "smoke.yaml", "horse2zebra_cut.yaml", "horse2zebra_fastcut.yaml", "gta2cityscapes.yaml",
            "runtime_env.yaml"} <= names


@pytest.mark.parametrize("path", JOB_FILES, ids=lambda p: p.name)
def test_job_loads_and_validates(path):
    cfg = config.load(path)
    assert cfg.name and cfg.data.root


def test_paper_settings():
    cut = config.load(JOBS / "horse2zebra_cut.yaml")
    fast = config.load(JOBS / "horse2zebra_fastcut.yaml")
    for cfg in (cut, fast):
        assert (cfg.model.ngf, cfg.model.ndf, cfg.model.n_blocks, cfg.model.n_layers_d) == (64, 64, 9, 3)
        assert cfg.model.antialias and cfg.loss.gan_mode == "lsgan"
        assert cfg.loss.nce_layers == [0, 4, 8, 12, 16] and cfg.loss.num_patches == 256
        assert cfg.loss.temperature == pytest.approx(0.07) and cfg.optim.lr == pytest.approx(2e-4)
        assert (cfg.optim.beta1, cfg.optim.beta2) == (0.5, 0.999)
        assert (cfg.data.load_size, cfg.data.crop_size, cfg.data.batch_size) == (286, 256, 1)
    assert (cut.loss.lambda_x, cut.loss.identity, cut.loss.flip_equivariance) == (1.0, True, False)
    assert (cut.optim.epochs, cut.optim.epochs_decay) == (200, 200)
    assert (fast.loss.lambda_x, fast.loss.identity, fast.loss.flip_equivariance) == (10.0, False, True)
    assert (fast.optim.epochs, fast.optim.epochs_decay) == (150, 50)


def test_cluster_job_is_multi_worker_gpu_on_object_storage():
    cfg = config.load(JOBS / "gta2cityscapes.yaml")
    assert cfg.train.use_gpu and cfg.train.num_workers > 1 and cfg.train.resources_per_worker.get("GPU") == 1
    assert "://" in cfg.data.root and "://" in cfg.storage_path


def test_smoke_is_tiny_and_demo_uses_two_cpu_workers_offline():
    smoke = config.load(JOBS / "smoke.yaml")
    assert smoke.optim.max_steps <= 10 and smoke.model.ngf <= 16 and smoke.data.crop_size <= 64
    demo = config.load(JOBS / "demo.yaml")
    assert demo.train.num_workers == 2 and not demo.train.use_gpu
    assert demo.data.synth_if_missing and demo.eval.inception_weights == "random"


def test_runtime_env_is_a_ray_runtime_env():
    env = yaml.safe_load((JOBS / "runtime_env.yaml").read_text())
    assert env["working_dir"] == "."
    assert set(env) <= {"working_dir", "excludes", "pip", "env_vars", "py_modules", "conda", "container"}
    from ray.runtime_env import RuntimeEnv
    RuntimeEnv(**env)   # Ray's own validation of the fields


def test_sincut_job_carries_the_authors_recipe():
    cfg = config.load(JOBS / "sincut.yaml")
    assert cfg.model.mode == "sincut" and (cfg.model.ngf, cfg.model.ndf, cfg.model.n_blocks) == (10, 8, 6)
    assert (cfg.loss.gan_mode, cfg.loss.lambda_r1, cfg.loss.lambda_x, cfg.loss.lambda_identity_l1) == \
        ("nonsaturating", 1.0, 4.0, 1.0)
    assert (cfg.loss.nce_layers, cfg.loss.num_patches, cfg.loss.negatives_from_minibatch) == ([0, 2, 4], 1, True)
    assert (cfg.optim.lr, cfg.optim.beta1, cfg.optim.beta2, cfg.optim.epochs, cfg.optim.epochs_decay) == \
        (0.002, 0.0, 0.99, 8, 8)
    assert (cfg.data.batch_size, cfg.data.crop_size, cfg.data.sincut_epoch_size) == (16, 64, 100000)
