"""Search-space files: the shipped ones load against their jobs; every malformed or invalid one is a single
SpaceError line naming the file and the key, before any trial (no Ray here)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cutdist.config import ConfigError
from cutdist.tune.space import SpaceError, load_space, parse_space

ROOT = Path(__file__).resolve().parents[1]


def job(name: str) -> dict:
    return yaml.safe_load((ROOT / "jobs" / name).read_text())


SMOKE = job("smoke.yaml")
GOOD_PARAMS = {"loss.lambda_x": {"loguniform": [0.1, 10.0]}}


def space(params=None, **top) -> dict:
    return {"params": params if params is not None else GOOD_PARAMS, **top}


def test_shipped_smoke_space_loads_and_names_resolve():
    s = load_space(ROOT / "tune_spaces" / "smoke.yaml", SMOKE)
    assert (s.search, s.num_samples, s.max_concurrent_trials) == ("random", 4, 1)
    assert (s.scheduler.type, s.scheduler.time_attr, s.scheduler.grace_period) == ("asha", "epoch", 1)
    assert set(s.params) == {"loss.lambda_x", "loss.num_patches", "loss.nce_layers", "loss.temperature"}
    sampled = {"loss.lambda_x": 2.5, "loss.num_patches": 32, "loss.nce_layers": "no_pixels",
               "loss.temperature": 0.05}
    assert s.values_of(sampled)["loss.nce_layers"] == [4, 8, 12]
    cfg = s.trial_config(sampled)
    assert (cfg.loss.lambda_x, cfg.loss.num_patches, cfg.loss.nce_layers, cfg.loss.temperature) == (
        2.5, 32, [4, 8, 12], 0.05)
    assert cfg.eval.enabled and cfg.eval.every == 1 and cfg.optim.max_steps == 0   # the space's fixed values
    assert cfg.model.ngf == 8   # the rest is the job's


def test_shipped_cut_core_space_loads_against_horse2zebra():
    s = load_space(ROOT / "tune_spaces" / "cut_core.yaml", job("horse2zebra_cut.yaml"))
    assert s.search == "optuna" and s.scheduler.max_t == 200
    assert s.params["loss.nce_layers"].names == ["all", "no_pixels", "no_blocks", "blocks_only"]
    assert s.params["loss.nce_layers"].values[0] == [0, 4, 8, 12, 16]
    assert s.params["optim.lr"].low == pytest.approx(1e-4)
    assert s.trial_config({"optim.lr": 3e-4}).optim.epochs == 100   # fixed: the halved schedule


def test_overrides_come_after_fixed_and_searched_values_after_both():
    s = parse_space(space({"loss.temperature": {"choice": [0.05, 0.1]}}, fixed={"eval.every": 3, "eval.max_images": 7}),
                    SMOKE, {"eval.every": 5})
    cfg = s.trial_config({"loss.temperature": 0.1})
    assert (cfg.eval.every, cfg.eval.max_images, cfg.loss.temperature) == (5, 7, 0.1)


def test_yaml_exponents_without_a_dot_are_floats(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("params:\n  optim.lr: {loguniform: [1e-4, 4e-4]}\n  loss.temperature: {grid: [5e-2, 0.1]}\n")
    s = load_space(path, SMOKE)
    assert (s.params["optim.lr"].low, s.params["loss.temperature"].values) == (1e-4, [0.05, 0.1])


def test_grid_search_turns_choices_into_grids():
    params = {"loss.num_patches": {"choice": [8, 16]},
              "loss.nce_layers": {"grid": {"all": [0, 4, 8, 12], "deep": [8, 12]}}}
    assert parse_space(space(params), SMOKE).search == "random"   # grid is the default only when all are grids
    assert parse_space(space({"loss.num_patches": {"grid": [8, 16]}}), SMOKE).search == "grid"
    s = parse_space(space(params, search="grid"), SMOKE)
    ps = s.param_space()
    assert ps["loss.num_patches"] == {"grid_search": [8, 16]}
    assert ps["loss.nce_layers"] == {"grid_search": ["all", "deep"]}


BAD = [
    (space({"loss.lambda_y": {"choice": [1.0]}}), "params.loss.lambda_y: unknown config key"),
    (space({"loss": {"choice": [1.0]}}), "params.loss: a config section"),
    (space({"loss.lambda_x": {"loguniform": [0.1]}}), "params.loss.lambda_x: loguniform needs [low, high]"),
    (space({"loss.lambda_x": {"loguniform": [0.0, 1.0]}}), "params.loss.lambda_x: loguniform needs low > 0"),
    (space({"loss.lambda_x": {"uniform": [2.0, 1.0]}}), "params.loss.lambda_x: uniform needs low < high"),
    (space({"loss.lambda_x": {"normal": [0.0, 1.0]}}), "params.loss.lambda_x: expected one distribution"),
    (space({"loss.lambda_x": 1.0}), "params.loss.lambda_x: expected one distribution"),
    (space({"loss.num_patches": {"choice": []}}), "params.loss.num_patches: choice needs a non-empty list"),
    (space({"loss.num_patches": {"choice": [8, 8]}}), "params.loss.num_patches: choice has duplicate values"),
    (space({"loss.num_patches": {"randint": [8.5, 64]}}), "params.loss.num_patches: randint needs integer bounds"),
    (space({"loss.nce_layers": {"choice": [[0, 4], [4, 8]]}}), "params.loss.nce_layers: choice values that are lists"),
    (space({"loss.temperature": {"choice": [0.07, -1.0]}}),
     "params.loss.temperature: value -1.0 is invalid: loss.temperature: must be > 0"),
    (space({"loss.nce_layers": {"choice": {"ok": [0, 4], "deep": [4, 99]}}}),
     "params.loss.nce_layers: value [4, 99] is invalid: loss.nce_layers: layer 99 does not exist"),
    (space({"loss.num_patches": {"uniform": [64, 512]}}),
     "params.loss.num_patches: value 64.0 is invalid: loss.num_patches: expected an integer, got 64.0 "
     "(an integer key takes randint"),
    (space({"loss.identity": {"choice": [True, "yes"]}}),
     "params.loss.identity: value 'yes' is invalid: loss.identity: expected true or false"),
    (space(sampler="tpe"), "sampler: unknown key"),
    (space(search="bayes"), "search: must be one of ['random', 'grid', 'optuna']"),
    (space(num_samples=0), "num_samples: expected an integer >= 1"),
    (space(scheduler={"type": "asha", "time_attr": "step"}), "scheduler.time_attr: must be one of"),
    (space(scheduler={"type": "asha", "metric": "loss_g"}), "scheduler: this sweep minimises fid"),
    (space(metric="kid", scheduler={"type": "asha", "metric": "fid"}), "scheduler: this sweep minimises kid"),
    (space(metric="lpips"), "metric: must be one of ['fid', 'kid']"),
    (space(scheduler={"type": "asha", "reduction_factor": 1}), "scheduler.reduction_factor: must be > 1"),
    (space(scheduler={"type": "asha", "grace_period": 4, "max_t": 2}), "scheduler.max_t: must be >= grace_period"),
    (space(scheduler={"type": "hyperband"}), "scheduler.type: must be asha or fifo"),
    (space(search="grid"), "params.loss.lambda_x: search grid needs choice or grid values, got loguniform"),
    (space({"loss.num_patches": {"grid": [8, 16]}}, search="optuna"),
     "params.loss.num_patches: search optuna does not take grid values"),
    (space(fixed={"eval.every": -1}), "fixed: eval.every: must be >= 0"),
    (space(fixed=["eval.every=1"]), "fixed: expected a mapping"),
    ({"params": {}}, "params: expected a non-empty mapping"),
    ([1, 2], "expected a mapping with 'params'"),
]


@pytest.mark.parametrize("raw,message", BAD, ids=[m.split(":")[0] + f"-{i}" for i, (_, m) in enumerate(BAD)])
def test_bad_spaces_fail_with_one_line_naming_the_key(raw, message):
    with pytest.raises(SpaceError) as info:
        parse_space(raw, SMOKE, where="tune_spaces/x.yaml")
    text = str(info.value)
    assert text.startswith("tune_spaces/x.yaml: ") and message in text and "\n" not in text, text
    assert isinstance(info.value, ConfigError)   # the CLI maps both to exit 2


def test_a_searched_key_may_not_also_be_overridden():
    with pytest.raises(SpaceError, match="params.optim.lr: also set on the command line"):
        parse_space(space({"optim.lr": {"loguniform": [1e-4, 4e-4]}}), SMOKE, {"optim.lr": 1e-3})


def test_values_are_validated_against_the_base_job_with_its_overrides():
    # layer 20 exists in a 6-block generator but not in the smoke job's 2-block one
    deep = space({"loss.nce_layers": {"choice": {"deep": [12, 20]}}})
    parse_space(deep, SMOKE, {"model.n_blocks": 6})
    with pytest.raises(SpaceError, match="layer 20 does not exist"):
        parse_space(deep, {**SMOKE, "model": {**SMOKE["model"], "n_blocks": 1, "antialias": False}})


def test_missing_and_unreadable_space_files(tmp_path):
    with pytest.raises(SpaceError, match="--space: no such file"):
        load_space(tmp_path / "nope.yaml", SMOKE)
    bad = tmp_path / "bad.yaml"
    bad.write_text("params: [unclosed\n")
    with pytest.raises(SpaceError, match=f"{bad}: not valid YAML"):
        load_space(bad, SMOKE)


def test_optuna_search_without_optuna_installed_says_so(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "optuna" else real(name, *a))
    with pytest.raises(SpaceError, match="search: optuna is not installed"):
        parse_space(space({"optim.lr": {"choice": [1e-4, 2e-4]}}, search="optuna"), SMOKE, where="x.yaml")
    parse_space(space({"optim.lr": {"choice": [1e-4, 2e-4]}}, search="random"), SMOKE, where="x.yaml")
