"""``python -m cutdist.fid``: equals pytorch-fid on the same folders and weights; npz, shard dirs, errors."""
from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from cutdist.eval import load_stats, save_stats
from cutdist.eval.inception import WEIGHTS_FILENAME
from cutdist.fid import main
from eval_fixtures import synth_uint8, torch_home, write_folder

FID_LINE = re.compile(r"^FID (\S+) \(backbone: (.+); (\S+) vs (\S+) images\)$", re.M)


def _fid(out: str) -> tuple[float, str]:
    match = FID_LINE.search(out)
    assert match, out
    return float(match.group(1)), match.group(2)


@pytest.mark.slow
def test_equals_pytorch_fid_on_the_same_folders_and_weights(tmp_path, monkeypatch, capsys):
    from pytorch_fid.fid_score import calculate_fid_given_paths, compute_statistics_of_path

    folder_a = write_folder(tmp_path / "a", synth_uint8("A", 4, 32))
    folder_b = write_folder(tmp_path / "b", synth_uint8("B", 4, 40, seed=12), fmt="jpg")
    # pytorch-fid finds the test-made weights where it would have downloaded the real ones: no network
    monkeypatch.setenv("TORCH_HOME", str(torch_home()))
    code = main([str(folder_a), str(folder_b), "--weights", "auto", "--device", "cpu", "--no-progress",
                 "--save-stats", str(tmp_path / "a.npz")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    ours, label = _fid(captured.out)
    assert label.startswith("pt_inception-2015-12-05 (sha256 ")
    # test-made weights under the official name: flagged by content, and not mistaken for the random backbone
    assert "not pytorch-fid's official weights" in captured.err and "random-init" not in captured.err

    theirs = float(calculate_fid_given_paths([str(folder_a), str(folder_b)], 50, "cpu", 2048, num_workers=0))
    assert ours > 1.0
    assert ours == pytest.approx(theirs, rel=1e-4)

    # the saved statistics: pytorch-fid reads them; our metadata rides along
    mu, sigma, meta = load_stats(tmp_path / "a.npz", with_meta=True)
    their_mu, their_sigma = compute_statistics_of_path(str(tmp_path / "a.npz"), None, 50, 2048, "cpu")
    np.testing.assert_array_equal(their_mu, mu)
    np.testing.assert_array_equal(their_sigma, sigma)
    assert meta["backbone"] == label and meta["n_images"] == 4 and sigma.shape == (2048, 2048)


def test_random_backbone_and_shard_directory(tmp_path, capsys):
    from cutdist.data.synth import write_synth_dataset

    shards = write_synth_dataset(tmp_path / "shards", size=32, count=2, test_count=3, seed=8)
    out = tmp_path / "testB.npz"
    assert main([str(shards), "--weights", "random", "--save-stats", str(out), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "RANDOM-INIT-INCEPTION(seed=0)" in err and "NOT comparable" in err
    mu, sigma, meta = load_stats(out, with_meta=True)
    assert meta["backbone"] == "RANDOM-INIT-INCEPTION(seed=0) — not a real FID" and meta["n_images"] == 3
    # two npz files need no network at all; the label comes from the files and is still shown
    assert main([str(out), str(out)]) == 0
    captured = capsys.readouterr()
    fid, label = _fid(captured.out)
    assert abs(fid) < 1e-6 and label == meta["backbone"] and "NOT comparable" in captured.err


def test_errors_are_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    folder = write_folder(tmp_path / "imgs", synth_uint8("A", 2, 16))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    cases = [
        ([str(tmp_path / "missing"), str(folder)], "missing: no such file or directory"),
        ([str(folder)], "PATH_B: required unless --save-stats"),
        ([str(folder), str(tmp_path / "none.npz")], "none.npz: no such statistics file"),
        ([str(folder), str(folder), "--weights", str(tmp_path / "w.pth")], f"no such file {tmp_path / 'w.pth'}"),
        ([str(folder), str(folder)], str(tmp_path / "home" / "hub" / "checkpoints" / WEIGHTS_FILENAME)),
    ]
    save_stats(tmp_path / "r.npz", np.zeros(3), np.eye(3), backbone="RANDOM-INIT-INCEPTION(seed=0) — x")
    save_stats(tmp_path / "s.npz", np.zeros(3), np.eye(3), backbone="pt_inception-2015-12-05 (sha256 0)")
    cases.append(([str(tmp_path / "r.npz"), str(tmp_path / "s.npz")], "different backbones"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _offline)   # "auto" with no network
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
        if "w.pth" in message or "checkpoints" in message:
            assert "eval.inception_weights=random" in err


def _offline(url, dst, **kwargs):
    raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")


def test_python_dash_m_exits_2_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cutdist.fid", str(tmp_path / "nope"), str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == f"error: {tmp_path / 'nope'}: no such file or directory\n"
