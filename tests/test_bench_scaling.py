"""``python -m cutdist.bench scaling`` and ``optim.lr_scaling``: the single-process equivalence the bench rests on
(one batch of B = the mean of B per-image gradients, which is what DDP's all-reduce makes of B workers), the lr
rules, the verdict's arithmetic, and one tiny end-to-end run (resumed)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from cutdist import config
from cutdist.bench.scaling import ANY_RULE, main, plan_runs, verdict

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "jobs" / "smoke.yaml"


class CapturingUpdater:
    """Records each group's gradients instead of stepping (so both G passes see the same D)."""

    def __init__(self, nets) -> None:
        self.params = {"d": list(nets.d.parameters()), "gf": list(nets.g.parameters()) + list(nets.f.parameters())}
        self.grads: dict[str, list[torch.Tensor]] = {}

    def zero_grad(self, group: str) -> None:
        for p in self.params[group]:
            p.grad = None

    def backward(self, group: str, loss: torch.Tensor) -> None:
        loss.backward()
        self.grads[group] = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in self.params[group]]

    def step(self, group: str) -> None:
        pass


def _grads(nets, loss_cfg, real_a, real_b, seed: int) -> dict[str, list[torch.Tensor]]:
    from cutdist.model.cut import cut_step

    updater = CapturingUpdater(nets)
    cut_step(nets, updater, real_a, real_b, loss_cfg, generator=torch.Generator().manual_seed(seed))
    return updater.grads


def test_one_batch_of_b_has_the_mean_gradient_of_b_single_image_ranks(one_torch_thread):
    """What DDP computes for W workers x 1 image (the mean of their gradients) is what one process computes
    for a batch of W: the bench's single-process runs are gradient-equivalent (identity term included)."""
    from cutdist.model.networks import build_nets

    cfg = config.load(SMOKE, {"data.root": "unused"})
    assert cfg.loss.identity and not cfg.loss.negatives_from_minibatch
    torch.manual_seed(0)
    nets = build_nets(cfg)
    gen = torch.Generator().manual_seed(1)
    real_a, real_b = (torch.rand(3, 3, 32, 32, generator=gen) * 2 - 1 for _ in range(2))
    batch = _grads(nets, cfg.loss, real_a, real_b, seed=7)
    singles = [_grads(nets, cfg.loss, real_a[i:i + 1], real_b[i:i + 1], seed=7) for i in range(3)]
    for group in ("d", "gf"):
        assert len(batch[group]) > 0
        # biases ahead of instance norm have ~0 gradients (float noise): tolerance relative to the group's scale
        scale = max(float(g.abs().max()) for g in batch[group])
        for i, whole in enumerate(batch[group]):
            mean = sum(s[group][i] for s in singles) / 3
            torch.testing.assert_close(whole, mean, rtol=1e-4, atol=1e-5 * scale)
    assert any(float((s["gf"][0] - singles[0]["gf"][0]).abs().max()) > 1e-4 for s in singles[1:])   # not trivial


def test_lr_rules_and_the_config_key():
    optim = config.load(SMOKE, {"data.root": "x", "optim.lr": 1e-4}).optim
    assert optim.lr_scaling == "none" and config.scaled_lr(optim, 8) == pytest.approx(1e-4)
    for rule, want in (("sqrt", 1e-4 * math.sqrt(8)), ("linear", 8e-4)):
        scaled = config.load(SMOKE, {"data.root": "x", "optim.lr": 1e-4, "optim.lr_scaling": rule}).optim
        assert config.scaled_lr(scaled, 8) == pytest.approx(want) and config.scaled_lr(scaled, 1) == pytest.approx(1e-4)
    with pytest.raises(config.ConfigError, match="optim.lr_scaling"):
        config.load(SMOKE, {"data.root": "x", "optim.lr_scaling": "cubic"})


def test_plan_runs_batch_one_once_and_seed_by_seed():
    assert plan_runs([1, 2], ["none", "linear"], [0, 1]) == [
        (1, ANY_RULE, 0), (2, "none", 0), (2, "linear", 0), (1, ANY_RULE, 1), (2, "none", 1), (2, "linear", 1)]


def _records(values: dict[tuple[int, str], list[float]]) -> list[dict]:
    return [{"global_batch": b, "rule": rule, "seed": s, "lowfreq_l1": v}
            for (b, rule), vs in values.items() for s, v in enumerate(vs)]


def test_verdict_needs_evidence_to_move_off_none():
    noisy = _records({(1, ANY_RULE): [0.10, 0.12, 0.11], (4, "none"): [0.13, 0.15, 0.12],
                      (4, "linear"): [0.12, 0.14, 0.11]})
    v = verdict(noisy, ["none", "linear"])
    assert v["rules"]["none"]["mean_gap"] == pytest.approx(0.14 - 0.11 - 0.0 + (0.1333333 - 0.14), abs=1e-6)
    assert v["recommended"] == "none" and "no evidence" in v["reason"]
    clear = _records({(1, ANY_RULE): [0.100, 0.101, 0.099], (4, "none"): [0.150, 0.151, 0.149],
                      (4, "linear"): [0.102, 0.103, 0.101]})
    v = verdict(clear, ["none", "linear"])
    assert v["recommended"] == "linear" and v["rules"]["linear"]["mean_gap"] == pytest.approx(0.002)
    trained = {"0": {"g": {"lowfreq_l1": 0.2}}}
    assert verdict(clear, ["none", "linear"], trained)["recommended"] == "linear"
    untrained = {"0": {"g": {"lowfreq_l1": 0.09}}}   # batch 1 (0.100) no better than G at init: too short to rank
    v = verdict(clear, ["none", "linear"], untrained)
    assert v["recommended"] == "none" and v["reason"].startswith("inconclusive")


@pytest.mark.slow
def test_a_key_added_by_a_newer_cutdist_at_its_default_does_not_block_a_resume():
    from cutdist.bench.scaling import _changed_keys

    runs = {"optim.lr": 0.0002, "loss.lambda_x": 1.0}
    assert _changed_keys(runs, {**runs, "checkpoint.upload": "async"}) == []      # new key, at its default
    assert _changed_keys(runs, {**runs, "checkpoint.upload": "sync"}) == ["checkpoint.upload"]
    assert _changed_keys({**runs, "checkpoint.upload": "sync"}, runs) == ["checkpoint.upload"]
    assert _changed_keys(runs, {**runs, "optim.lr": 0.001}) == ["optim.lr"]
    assert _changed_keys({}, runs) == []   # a fresh results directory


def test_tiny_end_to_end_run_and_resume(tmp_path, one_torch_thread, capsys):
    out = tmp_path / "out"
    argv = ["--config", str(SMOKE), "--batches", "1,2", "--rules", "linear", "--seeds", "0,1", "--out", str(out),
            "--keep-runs", f"data.root={tmp_path / 'shards'}", "data.synth_count=8", "optim.epochs=1",
            "optim.epochs_decay=0", "eval.enabled=false"]
    assert main(argv) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    result = json.loads((out / "scaling.json").read_text())
    assert (out / "scaling.png").stat().st_size > 1000 and (out / "scaling.csv").read_text().count("\n") == 3
    assert [(r["global_batch"], r["rule"], r["seed"]) for r in result["runs"]] == plan_runs([1, 2], ["linear"], [0, 1])
    assert {r["images_seen"] for r in result["runs"]} == {8}   # the same images seen at every batch
    assert {(r["global_batch"], r["steps"]) for r in result["runs"]} == {(1, 8), (2, 4)}
    assert [(row["global_batch"], row["rule"], row["seeds"]) for row in line["table"]] == [(1, "any", 2), (2, "linear", 2)]
    assert all(0 < r["lowfreq_l1"] < 1 and r.get("fid") is None for r in result["runs"])
    assert set(result["baselines"]) == {"0", "1"} and line["verdict"]["recommended"] in ("none", "linear")
    # the loop itself ran at the scaled lr: linear at B=2 is twice optim.lr
    logged = json.loads((out / "runs" / "b2-linear-seed0" / "metrics.jsonl").read_text().splitlines()[0])
    base_lr = config.load(SMOKE, {"data.root": "x"}).optim.lr
    assert logged["lr"] == pytest.approx(2 * base_lr) and result["runs"][1]["lr"] == pytest.approx(2 * base_lr)

    assert main(argv) == 0   # resumed: every run is already there, nothing retrained
    assert json.loads((out / "scaling.json").read_text())["runs"] == result["runs"]
    assert "B=1 rule=any seed=0 ..." not in capsys.readouterr().err

    assert main(argv[:-1] + ["train.seed=3"]) == 2
    assert "train.seed: set by the bench" in capsys.readouterr().err
    assert main(argv + ["optim.lr=0.001"]) == 2   # resuming with another job would mix incomparable runs
    assert "its runs were made with another job (optim.lr: " in capsys.readouterr().err
