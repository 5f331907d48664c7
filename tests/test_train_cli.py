"""``python -m cutdist.train``: every bad job is one line naming the key, exit 2, before Ray is even imported."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "jobs" / "smoke.yaml")

# Runs the CLI in a fresh interpreter and reports whether Ray got imported before it exited.
RUNNER = (
    "import runpy, sys\n"
    "sys.argv = ['cutdist.train'] + sys.argv[1:]\n"
    "try:\n"
    "    runpy.run_module('cutdist.train', run_name='__main__')\n"
    "finally:\n"
    "    print('RAY_IMPORTED=%s' % ('ray' in sys.modules))\n"
)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", RUNNER, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**__import__("os").environ, "RAY_ADDRESS": "127.0.0.1:1"})


@pytest.mark.parametrize("override, key", [
    ("loss.no_such_knob=3", "loss.no_such_knob"),            # unknown key
    ("loss.num_patches=lots", "loss.num_patches"),           # wrong type
    ("loss.lambda_x=-1", "loss.lambda_x"),                   # negative lambda
    ("loss.num_patches=0", "loss.num_patches"),              # num_patches < 1
    ("loss.nce_layers=[0,4,40]", "loss.nce_layers"),         # a tap the generator does not have
    ("data.crop_size=64", "data.crop_size"),                 # crop larger than load_size (36)
    ("train.num_workers=0", "train.num_workers"),            # zero workers
    ("train.zero_stage=3", "train.zero_stage"),              # DeepSpeed stage 2+
])
def test_bad_config_exits_2_naming_the_key(override, key):
    proc = run_cli("--config", SMOKE, override)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {key}"), proc.stderr
    assert "RAY_IMPORTED=False" in proc.stdout


def test_missing_config_file():
    proc = run_cli("--config", "jobs/no_such_job.yaml")
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: --config")
    assert "RAY_IMPORTED=False" in proc.stdout


@pytest.mark.slow
def test_data_weights_and_resume_problems_exit_2_before_ray(tmp_path):
    base = ["--config", SMOKE, f"storage_path={tmp_path}"]
    cases = [
        ([f"data.root={tmp_path / 'nowhere'}", "data.synth_if_missing=false"], "error: "),
        ([f"data.root={tmp_path / 'shards'}", "eval.enabled=true",
          f"eval.inception_weights={tmp_path / 'missing.pth'}"], "error: eval.inception_weights"),
        ([f"data.root={tmp_path / 'shards'}", f"checkpoint.resume_from={tmp_path / 'no_run'}"],
         "error: checkpoint.resume_from"),
    ]
    for i, (extra, prefix) in enumerate(cases):
        proc = run_cli(*base, *extra)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(prefix), proc.stderr
        assert "RAY_IMPORTED=False" in proc.stdout
        if i == 0:   # names the missing shard location
            assert str(tmp_path / "nowhere") in proc.stderr
