"""The job config: YAML + dotted overrides, presets, and one clear error naming the key for each bad value."""
from __future__ import annotations

import pytest
import torch

from cutdist import config
from cutdist.config import ConfigError, generator_num_layers

BASE = {"data.root": "shards/x"}


def load(**overrides):
    return config.load(None, {**BASE, **overrides})


def test_defaults_resolve_the_cut_preset():
    cfg = load()
    assert (cfg.loss.lambda_x, cfg.loss.identity, cfg.loss.flip_equivariance) == (1.0, True, False)
    assert (cfg.optim.epochs, cfg.optim.epochs_decay) == (200, 200)


def test_fastcut_preset_and_explicit_values_win():
    cfg = load(**{"model.mode": "fastcut"})
    assert (cfg.loss.lambda_x, cfg.loss.identity, cfg.loss.flip_equivariance) == (10.0, False, True)
    assert (cfg.optim.epochs, cfg.optim.epochs_decay) == (150, 50)
    cfg = load(**{"model.mode": "fastcut", "loss.lambda_x": 3})
    assert cfg.loss.lambda_x == 3.0


def test_yaml_file_then_overrides(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("name: j\ndata:\n  root: r\nloss:\n  num_patches: 32\n")
    cfg = config.load(path, ["loss.num_patches=64", "loss.nce_layers=[0,4]", "optim.lr=1e-3", "train.use_gpu=true"])
    assert cfg.name == "j" and cfg.data.root == "r"
    assert cfg.loss.num_patches == 64 and cfg.loss.nce_layers == [0, 4]
    assert cfg.optim.lr == pytest.approx(1e-3) and cfg.train.use_gpu is True


def test_yaml_exponents_become_floats_and_signed_inf_nan_stay_text():
    # YAML 1.1 reads 1e-3 (no dot) as a string; job files, overrides and space files share the one fix
    assert config.yaml_floats({"a": ["1e-3", "2.5E2", "x.y", "e"], "b": {"c": "-1e-2"}}) == \
        {"a": [1e-3, 250.0, "x.y", "e"], "b": {"c": -1e-2}}
    assert config.yaml_floats(["inf", "+inf", "-inf", "nan", "-nan", "+Infinity"]) == \
        ["inf", "+inf", "-inf", "nan", "-nan", "+Infinity"]
    assert config.parse_override("optim.lr=+inf") == ("optim.lr", "+inf")
    with pytest.raises(config.ConfigError, match=r"^optim.lr: expected a number, got '\+inf'"):
        load(**{"optim.lr": "+inf"})


def test_round_trip_through_to_dict():
    cfg = load(**{"train.resources_per_worker": {"CPU": 2, "GPU": 1}})
    again = config.from_dict(cfg.to_dict())
    assert again == cfg


@pytest.mark.parametrize("key, value, named", [
    ("loss.lambda_x", -1.0, "loss.lambda_x"),
    ("loss.lambda_gan", -0.5, "loss.lambda_gan"),
    ("loss.num_patches", 0, "loss.num_patches"),
    ("loss.temperature", 0.0, "loss.temperature"),
    ("loss.nce_layers", [0, 4, 99], "loss.nce_layers"),
    ("loss.nce_layers", [], "loss.nce_layers"),
    ("data.crop_size", 512, "data.crop_size"),          # larger than load_size 286
    ("data.crop_size", 30, "data.crop_size"),           # not a multiple of 4
    ("train.num_workers", 0, "train.num_workers"),
    ("train.zero_stage", 2, "train.zero_stage"),
    ("train.strategy", "fsdp", "train.strategy"),
    ("train.precision", "fp16", "train.precision"),
    ("train.bf16_discriminator", True, "train.bf16_discriminator"),   # needs precision bf16
    ("optim.lr", 0.0, "optim.lr"),
    ("model.mode", "cyclegan", "model.mode"),
    ("checkpoint.every_steps", -1, "checkpoint.every_steps"),
    ("checkpoint.every_minutes", -0.5, "checkpoint.every_minutes"),
    ("checkpoint.every_minutes", "soon", "checkpoint.every_minutes"),   # wrong type
    ("checkpoint.upload", "eventually", "checkpoint.upload"),
    ("loss.num_patches", "many", "loss.num_patches"),   # wrong type
    ("train.use_gpu", "yes", "train.use_gpu"),          # wrong type
    ("loss.no_such_key", 1, "loss.no_such_key"),        # unknown key
    ("nosection.key", 1, "nosection"),
])
def test_bad_values_name_their_key(key, value, named):
    with pytest.raises(ConfigError) as err:
        load(**{key: value})
    message = str(err.value)
    assert message.startswith(named) and "\n" not in message


def test_checkpoint_upload_defaults_to_async():
    assert load().checkpoint.upload == "async" and load(**{"checkpoint.upload": "sync"}).checkpoint.upload == "sync"


def test_tap_bound_follows_the_generator_depth():
    n = generator_num_layers(2, True)
    load(**{"model.n_blocks": 2, "loss.nce_layers": [0, n - 1]})
    with pytest.raises(ConfigError, match="loss.nce_layers"):
        load(**{"model.n_blocks": 2, "loss.nce_layers": [0, n]})


def test_crop_must_fit_the_discriminator_depth():
    """The smallest crops D and G run on (found by running them): 3 * 2**n_layers_d, and 8 for G."""
    from cutdist.model.networks import NLayerDiscriminator

    load(**{"model.n_layers_d": 4, "data.load_size": 48, "data.crop_size": 48})
    with pytest.raises(ConfigError, match="model.n_layers_d=4"):
        load(**{"model.n_layers_d": 4, "data.load_size": 44, "data.crop_size": 44})
    with pytest.raises((RuntimeError, ValueError)):   # the size the check refuses really cannot run
        NLayerDiscriminator(3, 4, 4)(torch.zeros(1, 3, 44, 44))
    with pytest.raises(ConfigError, match="data.crop_size"):
        load(**{"model.n_layers_d": 1, "data.load_size": 4, "data.crop_size": 4})


def test_missing_data_is_named():
    with pytest.raises(ConfigError, match=r"^data\.root"):
        config.load(None, {})


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="key=value"):
        config.load(None, ["data.root"])
    with pytest.raises(ConfigError, match="--config"):
        config.load("/no/such/job.yaml")


def test_exponent_text_becomes_a_float_only_in_float_fields(tmp_path):
    # the YAML 1.1 fix converts where the field is a float; a text field keeps the text as written
    path = tmp_path / "job.yaml"
    path.write_text("name: 1e3\ndata:\n  root: r\noptim:\n  lr: 1e-3\n")
    cfg = config.load(path)
    assert cfg.name == "1e3" and cfg.optim.lr == pytest.approx(1e-3)
    cfg = config.load(None, ["name=2.0", "optim.lr=2e-4", "data.root=1e5"])
    assert cfg.name == "2.0" and cfg.data.root == "1e5" and cfg.optim.lr == pytest.approx(2e-4)
    assert config.parse_override("name=true") == ("name", "true")
    assert config.parse_override("optim.lr=0.5") == ("optim.lr", 0.5)
    with pytest.raises(config.ConfigError, match=r"^loss.num_patches: expected an integer, got '1e3'$"):
        load(**{"loss.num_patches": "1e3"})


def test_retired_key_is_refused_in_jobs_and_dropped_from_stored_configs():
    with pytest.raises(config.ConfigError, match=r"^data.shuffle_buffer: retired key \(the training stream"):
        config.load(None, ["data.root=r", "data.shuffle_buffer=8"])
    with pytest.raises(config.ConfigError, match=r"^data.shuffle_buffer: retired key"):
        config.from_dict({"data": {"shuffle_buffer": 8}})
    stored = load().to_dict()
    stored["data"]["shuffle_buffer"] = 100   # a checkpoint written before the key was retired
    assert config.from_dict(stored, stored=True) == load()
