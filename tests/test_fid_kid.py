"""``python -m cutdist.fid --kid``: KID from the FID's own features, equal to cutdist.eval.kid on activations
computed directly; features stored by --save-stats --kid; an npz without them is one error line."""
from __future__ import annotations

import re

import numpy as np
import pytest

from cutdist.eval import load_inception, load_stats, save_stats
from cutdist.eval.inception import activations
from cutdist.eval.kid import kid
from cutdist.fid import main
from eval_fixtures import as_tensor01, synth_uint8, write_folder

KID_LINE = re.compile(r"^KID (\S+) ± (\S+) \((\d+) subsets of (\d+)(.*?); backbone: (.+); (\d+) vs (\d+) images\)$",
                      re.M)


@pytest.mark.slow
def test_kid_line_equals_kid_of_the_features_and_npz_round_trip(tmp_path, capsys):
    images_a, images_b = synth_uint8("A", 6, 32), synth_uint8("B", 5, 32, seed=3)
    folder_a, folder_b = write_folder(tmp_path / "a", images_a), write_folder(tmp_path / "b", images_b)
    argv = [str(folder_a), str(folder_b), "--weights", "random", "--device", "cpu", "--no-progress", "--kid",
            "--kid-subsets", "20", "--kid-subset-size", "4", "--save-stats", str(tmp_path / "a.npz")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    match = KID_LINE.search(out)
    assert match and out.startswith("FID "), out
    model, backbone = load_inception("random", "cpu")
    feats = [activations(model, as_tensor01(x)) for x in (images_a, images_b)]
    want = kid(feats[0], feats[1], subsets=20, subset_size=4)
    assert float(match.group(1)) == pytest.approx(want.mean, abs=2e-6)
    assert float(match.group(2)) == pytest.approx(want.std, abs=2e-6) and want.std > 0
    assert match.group(3, 4, 7, 8) == ("20", "4", "6", "5") and match.group(6) == backbone

    _, _, meta = load_stats(tmp_path / "a.npz", with_meta=True)   # the features ride along in the npz
    np.testing.assert_allclose(meta["features"], feats[0], rtol=0, atol=2e-4)   # batching: float noise
    assert main([str(tmp_path / "a.npz"), str(folder_b), "--weights", "random", "--no-progress", "--kid",
                 "--kid-subsets", "20", "--kid-subset-size", "4"]) == 0
    again = KID_LINE.search(capsys.readouterr().out)
    assert again.group(1, 2) == match.group(1, 2)

    assert main([str(folder_a), str(folder_b), "--weights", "random", "--no-progress", "--kid"]) == 0
    whole = KID_LINE.search(capsys.readouterr().out)   # defaults: subsets of min(1000, 6, 5) = 5
    assert whole.group(4) == "5" and whole.group(5) == ""


def test_kid_needs_features_in_an_npz(tmp_path, capsys):
    save_stats(tmp_path / "s.npz", np.zeros(3), np.eye(3), backbone="RANDOM-INIT-INCEPTION(seed=0) — x")
    assert main([str(tmp_path / "s.npz"), str(tmp_path / "s.npz"), "--kid"]) == 2
    last = capsys.readouterr().err.splitlines()[-1]   # after the random backbone's warning
    assert last.startswith("error: ") and "s.npz: holds no Inception features" in last
    assert main([str(tmp_path / "s.npz"), str(tmp_path / "s.npz"), "--kid", "--kid-subset-size", "1"]) == 2
    assert "--kid-subset-size" in capsys.readouterr().err
