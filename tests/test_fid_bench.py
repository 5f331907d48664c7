"""``python -m cutdist.bench fid``: two data-parallel workers extract features and report one JSON line."""
from __future__ import annotations

import json

import pytest

from cutdist.bench.__main__ import main
from eval_fixtures import weights_file


@pytest.mark.slow
def test_two_workers_report_images_per_second(capsys, monkeypatch):
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    assert main(["fid", "--workers", "2", "--images", "3", "--batch-size", "2", "--size", "16",
                 "--weights", str(weights_file())]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["benchmark"] == "fid" and result["workers"] == 2 and result["images"] == 3
    assert result["images_per_s"] > 0 and result["seconds"] > 0 and result["threads_per_worker"] >= 1
    assert result["backbone"].startswith("pt_inception-2015-12-05 (sha256 ")


def test_bad_arguments_exit_2(capsys):
    assert main(["fid", "--workers", "0"]) == 2
    assert main(["fid", "--workers", "2", "--images", "1"]) == 2
    assert main(["fid", "--weights", "/nonexistent/w.pth"]) == 2
    assert "/nonexistent/w.pth" in capsys.readouterr().err
