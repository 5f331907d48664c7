"""The whole job as nested dataclasses: YAML file + dotted ``key=value`` overrides, validated up front.

Knows nothing of Ray or torch, so the driver can reject a bad job before any cluster is touched.
Every problem is reported as one ``ConfigError`` whose message names the offending key.

Fields left ``None`` are filled from the preset named by ``model.mode`` (``cut``, ``fastcut`` or ``sincut``,
Park et al. 2020, Sec. 4 / Table 1 / Fig. 9) by :func:`resolve`. ``sincut`` also starts from its own defaults
(``SINCUT_DEFAULTS``: the authors' single-image recipe) before the job file and the overrides apply.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration problem; ``str(err)`` is one line naming the key."""


# The paper's two settings. CUT: lambda_X=1 with identity PatchNCE on G(y), 200+200 epochs.
# FastCUT: lambda_X=10, no identity term, flip-equivariance augmentation, 150+50 epochs.
PRESETS: dict[str, dict[str, Any]] = {
    "cut": {"loss.lambda_x": 1.0, "loss.identity": True, "loss.flip_equivariance": False,
            "optim.epochs": 200, "optim.epochs_decay": 200},
    "fastcut": {"loss.lambda_x": 10.0, "loss.identity": False, "loss.flip_equivariance": True,
                "optim.epochs": 150, "optim.epochs_decay": 50},
    # SinCUT (the authors' sincut_model.py): lambda_X = 4 with identity PatchNCE, 8 + 8 epochs of 100,000 crops.
    "sincut": {"loss.lambda_x": 4.0, "loss.identity": True, "loss.flip_equivariance": False,
               "optim.epochs": 8, "optim.epochs_decay": 8},
}
for _preset in ("cut", "fastcut"):
    PRESETS[_preset].update({"loss.lambda_r1": 0.0, "loss.lambda_identity_l1": 0.0})
PRESETS["sincut"].update({"loss.lambda_r1": 1.0, "loss.lambda_identity_l1": 1.0})

# Where SinCUT's recipe differs from the dataclass defaults (which are CUT's): its starting point, under the job
# file and the overrides. StyleGAN2-style G (ngf 10, one down-sampling, 6 residual blocks split between encoder and
# decoder) and D (ndf 8) on 64 x 64 crops; non-saturating GAN; PatchNCE on encoder layers 0, 2, 4 with one patch
# per tap and the negatives taken from the whole minibatch; Adam 2e-3 (0, 0.99); 16 crops per step (the GLOBAL
# batch for sincut, split over the workers).
SINCUT_DEFAULTS: dict[str, Any] = {
    "model.ngf": 10, "model.ndf": 8, "model.n_blocks": 6,
    "loss.gan_mode": "nonsaturating", "loss.nce_layers": [0, 2, 4], "loss.num_patches": 1,
    "loss.negatives_from_minibatch": True,
    "optim.lr": 0.002, "optim.beta1": 0.0, "optim.beta2": 0.99,
    "data.crop_size": 64, "data.load_size": 64, "data.batch_size": 16, "data.preprocess": "none",
}
SINCUT_ENCODER_LAYERS = lambda n_blocks: 3 + n_blocks // 2  # noqa: E731 - identity, 1x1 conv, 1 down, blocks


def generator_num_layers(n_blocks: int, antialias: bool) -> int:
    """Length of the ResNet generator's layer list, in the reference implementation's order.

    stem [pad, conv, norm, relu] + 2 downsamplings of [conv, norm, relu(, blurpool)] + n_blocks residual
    blocks + 2 upsamplings of [(upsample,) conv, norm, relu] + [pad, conv, tanh].
    """
    per_resample = 4 if antialias else 3
    return 4 + 2 * per_resample + n_blocks + 2 * per_resample + 3


# torch.compile modes (cutdist.model.fastpath applies them); "reduce-overhead" adds CUDA graphs.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

# checkpoint.upload (Ray runs only): "async" training goes on while Ray uploads the checkpoint (a lost node may
# redo up to two checkpoint intervals); "sync" each checkpoint is in storage before training goes on (at most one).
CHECKPOINT_UPLOADS = ("async", "sync")

@dataclass
class ModelConfig:
    mode: str = "cut"                 # preset: cut | fastcut | sincut
    ngf: int = 64                     # generator base channels
    ndf: int = 64                     # discriminator base channels
    n_blocks: int = 9                 # residual blocks (9 at 256², 6 in the smaller reference setting)
    n_layers_d: int = 3               # PatchGAN depth (3 = 70x70 receptive field)
    antialias: bool = True            # blur-pool down / blurred transposed up; False = strided convs
    init_gain: float = 0.02           # xavier init gain
    netf_nc: int = 256                # PatchNCE MLP width


@dataclass
class LossConfig:
    gan_mode: str = "lsgan"           # lsgan | nonsaturating
    lambda_gan: float = 1.0
    lambda_x: float | None = None     # PatchNCE weight (preset)
    identity: bool | None = None      # identity PatchNCE on G(y), lambda_Y = lambda_X (preset)
    flip_equivariance: bool | None = None  # (preset)
    nce_layers: list[int] = field(default_factory=lambda: [0, 4, 8, 12, 16])
    num_patches: int = 256
    temperature: float = 0.07
    negatives_from_minibatch: bool = False  # the paper's single-image setting
    lambda_r1: float | None = None    # sincut: R1 penalty on real B, lambda/2 E||grad D(y)||^2 (preset: 1; else 0)
    lambda_identity_l1: float | None = None  # sincut: L1 ||G(y) - y|| weight (preset: 1; else 0)


@dataclass
class OptimConfig:
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    epochs: int | None = None         # epochs at constant lr (preset)
    epochs_decay: int | None = None   # epochs of linear decay to zero (preset)
    max_steps: int = 0                # >0 ends training after this many steps (smoke runs, benchmarks)
    fused: bool = False               # fused Adam kernels (CUDA only)
    lr_scaling: str = "none"          # lr for a global batch B: none (lr), sqrt (lr*sqrt(B)), linear (lr*B)


@dataclass
class DataConfig:
    root: str = ""                    # shard directory (or URL prefix) holding manifest.parquet
    train_a: str = ""                 # explicit shard patterns; each overrides what root implies
    train_b: str = ""
    test_a: str = ""
    test_b: str = ""
    num_train_a: int = 0              # >0: train on the first N images of trainA only; 0 = all
    load_size: int = 286
    crop_size: int = 256
    preprocess: str = "resize_and_crop"  # resize_and_crop | scale_width_and_crop | none
    no_flip: bool = False
    batch_size: int = 1               # per rank; PatchNCE's batch is always the per-rank batch
    loader_workers: int = 2           # DataLoader worker processes per rank
    decode_on_device: bool = False    # loaders only read bytes; JPEG decode (nvJPEG on CUDA) + augment on the device
    synth_if_missing: bool = False    # demo: synthesise the demo shards into root when absent
    synth_count: int = 400            # images per training domain when synthesising
    synth_size: int = 64
    synth_kind: str = "shapes"        # what synth_if_missing makes: shapes (the CUT demo) | single_pair (sincut)
    image_a: str = ""                 # sincut: the one image of domain A (a file); "" = trainA of data.root
    image_b: str = ""                 # sincut: the one image of domain B
    random_scale_max: float = 3.0     # sincut: per-axis zoom uniform in [1/random_scale_max, 1]
    sincut_epoch_size: int = 100000   # sincut: crops per epoch (the reference's dataset length)


@dataclass
class TrainConfig:
    seed: int = 0
    num_workers: int | list[int] = 1  # Ray Train workers (ranks); [min, max]: elastic (Ray resizes the group)
    elastic_resize_s: float = 60.0    # elastic: how often Ray looks for room to grow the worker group
    use_gpu: bool = False
    resources_per_worker: dict[str, float] = field(default_factory=dict)
    strategy: str = "ddp"             # ddp | deepspeed
    precision: str = "fp32"           # fp32 | bf16 (autocast; PatchNCE logits and D stay fp32)
    bf16_discriminator: bool = False  # with bf16: D under autocast too (faster; shifts the GAN balance on the demo)
    channels_last: bool = False
    compile: bool = False             # torch.compile G, D, F (eager with a warning if it fails)
    compile_mode: str = "default"     # torch.compile mode (COMPILE_MODES); reduce-overhead = CUDA graphs
    zero_stage: int = 1               # DeepSpeed ZeRO stage: 0 or 1 (2+ is refused, DeepSpeed#4923)


@dataclass
class CheckpointConfig:
    every_steps: int = 1000           # 0 = no step cadence
    every_minutes: float = 0.0        # wall time of training between checkpoints, checked on log steps (0 = off)
    num_to_keep: int = 2
    resume_from: str = ""             # a checkpoint directory or a run directory
    max_failures: int = 0             # worker-group restarts Ray Train may make
    upload: str = "async"             # CHECKPOINT_UPLOADS: how a Ray run's checkpoint reaches storage


@dataclass
class LoggingConfig:
    every_steps: int = 100            # losses, lr, images/s, ETA (console + TensorBoard)
    sample_every_steps: int = 1000    # sample grid PNG + TensorBoard image
    tensorboard: bool = True


@dataclass
class EvalConfig:
    enabled: bool = True
    every: int = 0                    # FID every N epochs (0 = only at the end)
    inception_weights: str = "auto"   # a .pth path | auto (torch hub cache) | random (labelled, offline)
    batch_size: int = 50
    max_images: int = 0               # 0 = the whole test split
    cache_dir: str = ""               # reference-statistics cache; "" = beside the shards


@dataclass
class JobConfig:
    name: str = "cutdist"
    storage_path: str = "~/cutdist_runs"   # Ray RunConfig storage_path (local dir or s3://, gs://)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ----------------------------------------------------------------------------------------------- parsing

def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted for floats, nothing else is coerced."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError as err:
                errors.append(err)
        raise errors[0]
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value)]
    if origin is dict:
        k_tp, v_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {_coerce(key, k, k_tp): _coerce(f"{key}.{k}", v, v_tp) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, str) and _looks_like_float(value):
            value = float(value)   # YAML 1.1 reads "1e-3" (no dot) as a string: only a float field converts it
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(float(value)):
                raise ConfigError(f"{key}: expected a finite number, got {value!r}")
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")  # pragma: no cover


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


# Keys that no longer exist: a job file or override naming one is refused with the reason; a checkpoint's
# stored config (``from_dict(..., stored=True)``) drops them, so older checkpoints still load.
RETIRED = {
    "data.shuffle_buffer": "the training stream reads samples by index in a fresh permutation every epoch, "
                           "there is no shuffle buffer any more; remove the key",
}


def _set(obj: Any, dotted: str, value: Any, prefix: str = "") -> None:
    head, _, rest = dotted.partition(".")
    full = f"{prefix}{head}"
    if full in RETIRED or (not rest and isinstance(value, dict) and any(f"{full}.{k}" in RETIRED for k in value)):
        name = full if full in RETIRED else next(f"{full}.{k}" for k in value if f"{full}.{k}" in RETIRED)
        raise ConfigError(f"{name}: retired key ({RETIRED[name]})")
    hints = _hints(type(obj))
    if head not in hints:
        raise ConfigError(f"{full}: unknown key (known: {', '.join(hints)})")
    tp = hints[head]
    if dataclasses.is_dataclass(tp):
        sub = getattr(obj, head)
        if rest:
            _set(sub, rest, value, prefix=f"{full}.")
            return
        if not isinstance(value, dict):
            raise ConfigError(f"{full}: expected a mapping of its keys, got {value!r}")
        for k, v in value.items():
            _set(sub, str(k), v, prefix=f"{full}.")
        return
    if rest:
        if typing.get_origin(tp) is dict:
            current = dict(getattr(obj, head))
            current[rest] = value
            setattr(obj, head, _coerce(full, current, tp))
            return
        raise ConfigError(f"{full}.{rest}: unknown key ({full} has no sub-keys)")
    setattr(obj, head, _coerce(full, value, tp))


def get(cfg: JobConfig, dotted: str) -> Any:
    obj: Any = cfg
    for part in dotted.split("."):
        if not (dataclasses.is_dataclass(obj) and part in _hints(type(obj))):
            raise ConfigError(f"{dotted}: unknown key")
        obj = getattr(obj, part)
    return obj


def apply(cfg: JobConfig, values: dict[str, Any]) -> JobConfig:
    """Apply a nested mapping and/or dotted keys onto ``cfg`` (in place) and return it."""
    if not isinstance(values, dict):
        raise ConfigError(f"config: expected a mapping at the top level, got {type(values).__name__}")
    for k, v in values.items():
        _set(cfg, str(k), v)
    return cfg


def parse_override(text: str) -> tuple[str, Any]:
    """``loss.lambda_x=2`` -> (``loss.lambda_x``, 2); the value is read as YAML (``[0,4]``, ``true``, ``1e-3``)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{text}: an override must look like key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"{key}: cannot read value {raw!r} ({err.__class__.__name__})") from None
    key = key.strip()
    if value is not None and not isinstance(value, (str, list, dict)) and _accepts_text(key):
        value = raw.strip()   # name=2.0, tag=true: a text field takes the text as written
    return key, value


def field_takes(dotted: str, tp: type) -> bool:
    """True when the config field ``dotted`` is of type ``tp`` (possibly optional); False when unknown."""
    obj: Any = JobConfig
    for part in dotted.split("."):
        hints = _hints(obj) if dataclasses.is_dataclass(obj) else {}
        if part not in hints:
            return False
        obj = hints[part]
    return obj is tp or tp in typing.get_args(obj)


def _accepts_text(dotted: str) -> bool:
    return field_takes(dotted, str)


def _looks_like_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return any(c in text.lower() for c in "e.") and not text.lower().lstrip("+-").startswith(("inf", "nan"))


def load(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None,
         *, validate_config: bool = True) -> JobConfig:
    """Read a job: defaults <- YAML file <- overrides; then the preset fills what is unset; then validate."""
    layers: list[dict[str, Any]] = []
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"--config: no such file {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
        layers.append(data)
    if isinstance(overrides, dict):
        layers.append(overrides)
    else:
        layers += [dict([parse_override(text)]) for text in overrides or []]
    cfg = base_config(layers)
    for values in layers:
        apply(cfg, values)
    resolve(cfg)
    if validate_config:
        validate(cfg)
    return cfg


def base_config(layers: list[dict[str, Any]]) -> JobConfig:
    """The defaults a job starts from: the dataclass defaults, plus ``SINCUT_DEFAULTS`` when the last
    ``model.mode`` the layers set (nested or dotted) is ``sincut``."""
    cfg, mode = JobConfig(), None
    for values in layers:
        if not isinstance(values, dict):
            continue
        model = values.get("model")
        if isinstance(model, dict) and "mode" in model:
            mode = model["mode"]
        if "model.mode" in values:
            mode = values["model.mode"]
    if mode == "sincut":
        apply(cfg, dict(SINCUT_DEFAULTS))
    return cfg


def from_dict(values: dict[str, Any], *, validate_config: bool = True, stored: bool = False) -> JobConfig:
    """A config from a mapping; ``stored``: a checkpoint's saved config, whose retired keys are dropped."""
    if stored and isinstance(values, dict):
        values = {section: ({k: v for k, v in keys.items() if f"{section}.{k}" not in RETIRED}
                            if isinstance(keys, dict) else keys) for section, keys in values.items()}
    cfg = apply(base_config([values]), values)
    resolve(cfg)
    if validate_config:
        validate(cfg)
    return cfg


def yaml_floats(value: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` (no dot) as a string: such strings, anywhere in ``value``, become floats. Only for
    values that must be numbers (a space's range bounds); config fields convert in ``_coerce``, float fields only."""
    if isinstance(value, dict):
        return {k: yaml_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [yaml_floats(v) for v in value]
    if isinstance(value, str) and _looks_like_float(value):
        return float(value)
    return value


def resolve(cfg: JobConfig) -> JobConfig:
    """Fill every ``None`` field from the preset named by ``model.mode``."""
    if cfg.model.mode not in PRESETS:
        raise ConfigError(f"model.mode: must be one of {sorted(PRESETS)}, got {cfg.model.mode!r}")
    for dotted, value in PRESETS[cfg.model.mode].items():
        section, name = dotted.split(".")
        if getattr(getattr(cfg, section), name) is None:
            setattr(getattr(cfg, section), name, value)
    return cfg


# -------------------------------------------------------------------------------------------- validation

def worker_range(t: TrainConfig) -> tuple[int, int]:
    """``train.num_workers`` as (min, max): equal for a fixed size, the elastic range for ``[min, max]``."""
    if isinstance(t.num_workers, list):
        return int(t.num_workers[0]), int(t.num_workers[1])
    return int(t.num_workers), int(t.num_workers)


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _one_of(cfg: JobConfig, key: str, allowed: list[Any]) -> None:
    value = get(cfg, key)
    _check(value in allowed, key, f"must be one of {allowed}, got {value!r}")


# optim.lr is the paper's lr, tuned for its batch of 1; the global batch is workers x data.batch_size.
LR_SCALING = {"none": lambda b: 1.0, "sqrt": lambda b: float(b) ** 0.5, "linear": lambda b: float(b)}


def scaled_lr(optim: OptimConfig, global_batch: int) -> float:
    """The Adam lr a run uses at ``global_batch`` images per step: ``optim.lr`` scaled by ``optim.lr_scaling``."""
    return optim.lr * LR_SCALING[optim.lr_scaling](global_batch)


def validate(cfg: JobConfig) -> JobConfig:
    m, lo, o, d, t, c, lg, e = (cfg.model, cfg.loss, cfg.optim, cfg.data, cfg.train, cfg.checkpoint,
                               cfg.logging, cfg.eval)
    _check(bool(cfg.name) and "/" not in cfg.name, "name", f"must be a non-empty name without '/', got {cfg.name!r}")
    _one_of(cfg, "model.mode", sorted(PRESETS))
    for key in ("model.ngf", "model.ndf", "model.netf_nc", "model.n_layers_d"):
        _check(get(cfg, key) >= 1, key, f"must be >= 1, got {get(cfg, key)}")
    _check(m.n_blocks >= 1, "model.n_blocks", f"must be >= 1, got {m.n_blocks}")
    _check(m.init_gain > 0, "model.init_gain", f"must be > 0, got {m.init_gain}")

    _one_of(cfg, "loss.gan_mode", ["lsgan", "nonsaturating"])
    for key in ("loss.lambda_gan", "loss.lambda_x"):
        _check(get(cfg, key) >= 0, key, f"must be >= 0, got {get(cfg, key)}")
    _check(lo.num_patches >= 1, "loss.num_patches", f"must be >= 1, got {lo.num_patches}")
    _check(lo.temperature > 0, "loss.temperature", f"must be > 0, got {lo.temperature}")
    sincut = m.mode == "sincut"
    n_layers = SINCUT_ENCODER_LAYERS(m.n_blocks) if sincut else generator_num_layers(m.n_blocks, m.antialias)
    _check(len(lo.nce_layers) >= 1, "loss.nce_layers", "must name at least one generator layer")
    _check(len(set(lo.nce_layers)) == len(lo.nce_layers), "loss.nce_layers", f"has duplicates: {lo.nce_layers}")
    for i in lo.nce_layers:
        _check(0 <= i < n_layers, "loss.nce_layers",
               f"layer {i} does not exist: the generator (n_blocks={m.n_blocks}, antialias={m.antialias}) "
               f"has layers 0..{n_layers - 1}" if not sincut else
               f"layer {i} does not exist: SinCUT's encoder (n_blocks={m.n_blocks}) has layers 0..{n_layers - 1}")
    for key in ("loss.lambda_r1", "loss.lambda_identity_l1"):
        _check(get(cfg, key) >= 0, key, f"must be >= 0, got {get(cfg, key)}")
        _check(sincut or get(cfg, key) == 0, key, f"is a sincut term; model.mode={m.mode!r} has none (set 0)")
    if sincut:
        _validate_sincut(cfg)

    _check(o.lr > 0, "optim.lr", f"must be > 0, got {o.lr}")
    for key in ("optim.beta1", "optim.beta2"):
        _check(0 <= get(cfg, key) < 1, key, f"must be in [0, 1), got {get(cfg, key)}")
    _check(o.epochs >= 0, "optim.epochs", f"must be >= 0, got {o.epochs}")
    _check(o.epochs_decay >= 0, "optim.epochs_decay", f"must be >= 0, got {o.epochs_decay}")
    _check(o.epochs + o.epochs_decay >= 1 or o.max_steps > 0, "optim.epochs",
           "epochs + epochs_decay must be >= 1 (or set optim.max_steps)")
    _check(o.max_steps >= 0, "optim.max_steps", f"must be >= 0, got {o.max_steps}")
    _one_of(cfg, "optim.lr_scaling", list(LR_SCALING))

    _check(bool(d.root) or bool(d.train_a and d.train_b) or bool(sincut and d.image_a and d.image_b), "data.root",
           "set data.root (a shard directory) or both data.train_a and data.train_b"
           + (" (or both data.image_a and data.image_b)" if sincut else ""))
    _check(d.num_train_a >= 0, "data.num_train_a", f"must be >= 0, got {d.num_train_a}")
    _one_of(cfg, "data.preprocess", ["resize_and_crop", "scale_width_and_crop", "none"])
    _check(d.crop_size >= 4, "data.crop_size", f"must be >= 4, got {d.crop_size}")
    _check(d.crop_size % 4 == 0, "data.crop_size",
           f"must be a multiple of 4 (two down-samplings), got {d.crop_size}")
    _check(d.crop_size >= 8, "data.crop_size",
           f"must be >= 8 (the generator's reflection padding at 1/4 resolution), got {d.crop_size}")
    # The PatchGAN halves the crop n_layers_d times, then two 4x4 convs (padding 1) each take one pixel off.
    _check(sincut or d.crop_size >= 3 * 2 ** m.n_layers_d, "data.crop_size",
           f"crop {d.crop_size} is too small for model.n_layers_d={m.n_layers_d} (needs >= {3 * 2 ** m.n_layers_d})")
    _check(d.load_size >= 1, "data.load_size", f"must be >= 1, got {d.load_size}")
    if d.preprocess != "none":
        _check(d.crop_size <= d.load_size, "data.crop_size",
               f"crop {d.crop_size} is larger than data.load_size {d.load_size}")
    _check(d.batch_size >= 1, "data.batch_size", f"must be >= 1, got {d.batch_size}")
    _check(d.loader_workers >= 0, "data.loader_workers", f"must be >= 0, got {d.loader_workers}")
    _check(not d.decode_on_device or d.preprocess == "resize_and_crop", "data.decode_on_device",
           f"true supports data.preprocess=resize_and_crop only (it is {d.preprocess!r})")
    _check(d.synth_count >= 2, "data.synth_count", f"must be >= 2, got {d.synth_count}")
    _one_of(cfg, "data.synth_kind", ["shapes", "single_pair"])
    _check(d.synth_size >= 16 and d.synth_size % 4 == 0, "data.synth_size",
           f"must be a multiple of 4, >= 16, got {d.synth_size}")

    if isinstance(t.num_workers, list):
        _check(len(t.num_workers) == 2 and 1 <= t.num_workers[0] <= t.num_workers[1], "train.num_workers",
               f"must be a number >= 1 or [min, max] with 1 <= min <= max, got {t.num_workers}")
    else:
        _check(t.num_workers >= 1, "train.num_workers", f"must be >= 1, got {t.num_workers}")
    _check(t.elastic_resize_s > 0, "train.elastic_resize_s", f"must be > 0, got {t.elastic_resize_s}")
    _check(0 <= t.seed < 2**32, "train.seed", f"must be in [0, 2**32), got {t.seed}")
    _one_of(cfg, "train.strategy", ["ddp", "deepspeed"])
    _one_of(cfg, "train.precision", ["fp32", "bf16"])
    _check(not t.bf16_discriminator or t.precision == "bf16", "train.bf16_discriminator",
           f"true needs train.precision=bf16 (it is {t.precision!r})")
    _one_of(cfg, "train.compile_mode", list(COMPILE_MODES))
    _check(t.zero_stage in (0, 1), "train.zero_stage",
           f"ZeRO stage {t.zero_stage} is not supported: two DeepSpeed engines (D and G+F) are broken across "
           "ranks at stage 2+ (DeepSpeed#4923); use 0 or 1")
    for k, v in t.resources_per_worker.items():
        _check(v >= 0, f"train.resources_per_worker.{k}", f"must be >= 0, got {v}")

    _check(c.every_steps >= 0, "checkpoint.every_steps", f"must be >= 0 (0 = no step cadence), got {c.every_steps}")
    _check(c.every_minutes >= 0, "checkpoint.every_minutes",
           f"must be >= 0 (minutes of training between checkpoints, 0 = off), got {c.every_minutes}")
    _check(c.num_to_keep >= 1, "checkpoint.num_to_keep", f"must be >= 1, got {c.num_to_keep}")
    _check(c.max_failures >= -1, "checkpoint.max_failures", f"must be >= -1 (-1 = retry forever), got {c.max_failures}")
    _one_of(cfg, "checkpoint.upload", list(CHECKPOINT_UPLOADS))
    _check(lg.every_steps >= 1, "logging.every_steps", f"must be >= 1, got {lg.every_steps}")
    _check(lg.sample_every_steps >= 1, "logging.sample_every_steps", f"must be >= 1, got {lg.sample_every_steps}")
    _check(e.every >= 0, "eval.every", f"must be >= 0, got {e.every}")
    _check(e.batch_size >= 1, "eval.batch_size", f"must be >= 1, got {e.batch_size}")
    _check(e.max_images >= 0, "eval.max_images", f"must be >= 0, got {e.max_images}")
    _check(bool(e.inception_weights), "eval.inception_weights", "must be a path, 'auto' or 'random'")
    return cfg


def _validate_sincut(cfg: JobConfig) -> None:
    """What SinCUT's networks, data and R1 penalty need (called by ``validate`` for model.mode=sincut)."""
    d, t = cfg.data, cfg.train
    size = d.crop_size
    _check(size >= 8 and size & (size - 1) == 0 and size <= 1024, "data.crop_size",
           f"sincut's discriminator takes power-of-two crops from 8 to 1024 px, got {size}")
    _check(d.batch_size % t.num_workers == 0, "data.batch_size",
           f"sincut splits its batch of {d.batch_size} crops over train.num_workers={t.num_workers}: "
           "use a multiple of the worker count")
    _check(d.random_scale_max >= 1, "data.random_scale_max", f"must be >= 1, got {d.random_scale_max}")
    _check(d.sincut_epoch_size >= d.batch_size and d.sincut_epoch_size % d.batch_size == 0, "data.sincut_epoch_size",
           f"must be a multiple of data.batch_size ({d.batch_size}), got {d.sincut_epoch_size}")
    _check(bool(d.image_a) == bool(d.image_b), "data.image_a",
           "set both data.image_a and data.image_b (or neither: one image each in trainA/trainB of data.root)")
    _check(not d.decode_on_device, "data.decode_on_device", "does not apply to sincut (its crops are cut on the "
           "training device from the one decoded image)")
    _check(cfg.optim.lr_scaling == "none", "optim.lr_scaling",
           "sincut's data.batch_size is already the global batch (the reference's 16 crops); keep 'none'")
    _check(not t.compile, "train.compile",
           "sincut's R1 penalty needs a double backward, which torch.compile (AOTAutograd) does not support")
