"""``python -m cutdist.bench fid``: feature extraction images/s as one JSON line; argument errors exit 2."""
from __future__ import annotations

import json

from cutdist.bench.__main__ import main
from eval_fixtures import weights_file


def test_one_worker_reports_images_per_second(capsys):
    # (--workers 2 spawns two processes through the same _measure; measured in the notes, not here: each
    # spawned interpreter costs seconds of the test budget)
    assert main(["fid", "--workers", "1", "--images", "2", "--batch-size", "2", "--size", "16",
                 "--weights", str(weights_file()), "--threads", "1"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["benchmark"] == "fid" and result["workers"] == 1 and result["images"] == 2
    assert result["images_per_s"] > 0 and result["seconds"] > 0 and result["threads_per_worker"] >= 1
    assert result["backbone"].startswith("pt_inception-2015-12-05 (sha256 ")


def test_bad_arguments_exit_2(capsys):
    assert main(["fid", "--workers", "0"]) == 2
    assert main(["fid", "--workers", "2", "--images", "1"]) == 2
    assert main(["fid", "--weights", "/nonexistent/w.pth"]) == 2
    assert "/nonexistent/w.pth" in capsys.readouterr().err
