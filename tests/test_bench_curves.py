"""``python -m cutdist.bench curves``: the verdict's arithmetic on hand-made curves, usage errors (exit 2), and one
tiny end-to-end run (smoke model, 10 steps, seeds 0 and 1, fp32 vs bf16) whose JSON line is checked against the
runs' own metrics.jsonl and against the verdict recomputed with numpy."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cutdist.bench.curves import main, parse_variants, term_verdict, verdict

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "jobs" / "smoke.yaml"
TERMS = {"d", "d_real", "d_fake", "g_gan", "nce", "nce_y", "g_total"}


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


BASE = [[1.0, 2.0, 3.0], [1.2, 2.2, 3.2], [0.8, 1.8, 2.8]]   # std over seeds 0.2 at every step


def shifted(curves, by):
    return [[v + by for v in c] for c in curves]


def test_term_verdict_arithmetic():
    close = term_verdict(BASE, shifted(BASE, 0.1))
    assert close["noise"] == pytest.approx(0.2)
    assert close["distance"] == pytest.approx(0.1)
    assert close["ratio"] == pytest.approx(0.5)
    assert close["paired_distance"] == pytest.approx(0.1)
    assert close["fp32_max_pairwise"] == pytest.approx(0.4)
    assert close["within_seed_noise"] is True

    far = term_verdict(BASE, shifted(BASE, 0.3))
    assert far["distance"] == pytest.approx(0.3) and far["within_seed_noise"] is False

    # same seed-mean curve, reshuffled seeds: distance 0 although every run differs from its fp32 twin
    swapped = term_verdict(BASE, [BASE[1], BASE[0], BASE[2]])
    assert swapped["distance"] == pytest.approx(0.0) and swapped["paired_distance"] == pytest.approx(0.4 / 3)
    assert swapped["within_seed_noise"] is True

    broken = term_verdict(BASE, [[1.0, None, 3.0]] + BASE[1:])
    assert broken["within_seed_noise"] is False and broken["distance"] is None

    with pytest.raises(ValueError, match="2 baseline seeds"):
        term_verdict(BASE[:1], BASE[:1])


def test_verdict_is_every_term():
    curves = {"fp32": {str(s): {"a": BASE[s], "b": BASE[s]} for s in range(3)},
              "bf16": {str(s): {"a": shifted(BASE, 0.1)[s], "b": shifted(BASE, 0.5)[s]} for s in range(3)}}
    out = verdict(curves, [0, 1, 2])
    assert set(out) == {"bf16"}
    assert out["bf16"]["terms"]["a"]["within_seed_noise"] is True
    assert out["bf16"]["terms"]["b"]["within_seed_noise"] is False
    assert out["bf16"]["within_seed_noise"] is False


def test_variants_map_to_switches():
    v = parse_variants("bf16,channels_last+compile+fused")
    assert list(v) == ["fp32", "bf16", "channels_last+compile+fused"]   # the baseline is always there, first
    assert v["fp32"] == {"train.precision": "fp32", "train.bf16_discriminator": False, "train.channels_last": False,
                         "train.compile": False, "optim.fused": False}
    assert v["bf16"]["train.precision"] == "bf16" and v["bf16"]["train.channels_last"] is False
    assert v["channels_last+compile+fused"] == {"train.precision": "fp32", "train.bf16_discriminator": False,
                                                "train.channels_last": True, "train.compile": True,
                                                "optim.fused": True}
    both = parse_variants("bf16+bf16_d")["bf16+bf16_d"]
    assert both["train.precision"] == "bf16" and both["train.bf16_discriminator"] is True


@pytest.mark.parametrize("args, culprit", [
    (["--seeds", "0"], "--seeds"),
    (["--seeds", "0,x"], "--seeds"),
    (["--variants", "fp32,fp16"], "fp16"),
    (["--variants", "bf16_d"], "needs bf16"),
    (["--interval", "20", "--steps", "10"], "--interval"),
    (["train.precision=bf16"], "train.precision"),
    (["loss.nope=1"], "loss.nope"),
    (["data.root=/nonexistent/cutdist", "data.synth_if_missing=false"], "data.root"),
])
def test_usage_errors_exit_2(capsys, args, culprit):
    assert main(["--config", str(SMOKE), "--steps", "10", "--interval", "5", *args]) == 2
    err = capsys.readouterr()
    assert err.out == "" and culprit in err.err and len(err.err.strip().splitlines()) == 1


def test_tiny_run_curves_and_verdict(capsys, tmp_path):
    runs = tmp_path / "runs"
    code = main(["--config", str(SMOKE), "--steps", "10", "--interval", "5", "--seeds", "0,1",
                 "--variants", "fp32,bf16", "--device", "cpu", "--threads", "1", "--runs-dir", str(runs),
                 f"data.root={tmp_path / 'shards'}"])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and len(out) == 1, out
    r = json.loads(out[0])
    assert "error" not in r
    assert (r["bench"], r["steps"], r["interval"], r["seeds"], r["device"]) == ("curves", 10, 5, [0, 1], "cpu")
    assert r["variants"] == {"fp32": {}, "bf16": {"train.precision": "bf16"}}
    assert r["steps_logged"] == [5, 10]
    assert set(r["curves"]) == {"fp32", "bf16"}

    for name in ("fp32", "bf16"):
        for seed in ("0", "1"):
            curves = r["curves"][name][seed]
            assert set(curves) == TERMS and all(len(v) == 2 for v in curves.values())
            assert r["runs"][name][seed]["images_per_s"] > 0
            # the curves are the run's own interval-averaged losses
            logged = [json.loads(line) for line in (runs / f"{name}-seed{seed}" / "metrics.jsonl").read_text().splitlines()]
            for term in TERMS:
                assert curves[term] == [round(m[f"loss_{term}"], 6) for m in logged]
    fp32, bf16 = r["curves"]["fp32"], r["curves"]["bf16"]
    assert fp32["0"]["g_total"] != fp32["1"]["g_total"]     # seeds differ (that is the noise)
    assert bf16["0"]["nce"] != fp32["0"]["nce"]             # the variant's switch took effect

    v = r["verdict"]["bf16"]
    assert set(v["terms"]) == TERMS
    for term, got in v["terms"].items():
        f = np.array([fp32[s][term] for s in ("0", "1")])
        b = np.array([bf16[s][term] for s in ("0", "1")])
        distance = np.abs(b.mean(0) - f.mean(0)).mean()
        noise = f.std(0, ddof=1).mean()
        assert got["distance"] == pytest.approx(distance, rel=1e-9, abs=1e-12)
        assert got["noise"] == pytest.approx(noise, rel=1e-9, abs=1e-12)
        assert got["within_seed_noise"] is bool(distance <= noise)
        assert got["paired_distance"] == pytest.approx(np.abs(b - f).mean(), rel=1e-9, abs=1e-12)
        assert math.isfinite(got["fp32_max_pairwise"])
    assert v["within_seed_noise"] is all(t["within_seed_noise"] for t in v["terms"].values())
    assert r["within_seed_noise"] is v["within_seed_noise"]
