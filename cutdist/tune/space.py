"""Search-space files (``tune_spaces/*.yaml``): parsing, validation before any trial, and their Ray Tune form.

A space file holds::

    search: random            # random | grid | optuna (Optuna TPE); default: grid when every param is a grid
    seed: 0                   # the search algorithm's seed (reproducible sampling)
    num_samples: 8            # random/optuna: trials; grid: repetitions of the whole grid
    max_concurrent_trials: 2  # capped to what the cluster can place (see cutdist.tune.__main__)
    scheduler:                # omitted or {type: fifo}: every trial runs to its end
      type: asha
      time_attr: epoch        # epoch | training_iteration (= FID evaluations reported so far)
      grace_period: 1
      max_t: 4
      reduction_factor: 2
    fixed:                    # set on every trial, after the job file and before command-line overrides
      eval.every: 1
    params:                   # dotted job-config keys -> one distribution each
      loss.lambda_x: {loguniform: [0.1, 10.0]}
      loss.num_patches: {choice: [64, 128, 256, 512]}
      loss.nce_layers: {choice: {all: [0, 4, 8, 12, 16], no_pixels: [4, 8, 12, 16]}}

Distributions: ``uniform``/``loguniform`` ``[low, high]``; ``randint``/``lograndint`` ``[low, high)`` (integers,
high excluded, as in Ray Tune); ``choice``/``grid`` a list of values or a mapping of names to values (list values,
such as NCE layer subsets, must be named). ``grid`` values are crossed with each other and with every sample.

The metric: top-level ``metric: fid | kid`` (default fid), minimised; KID (unbiased, ``cutdist.eval.kid``) is
the better choice on small test sets, where FID's bias varies with the set. Every value a trial could receive is checked before any trial starts:
the key must exist, the distribution must be well formed, and each choice value and each range endpoint must pass
the job's config validation on the base job; any problem is one ``SpaceError`` line naming the file and the key.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cutdist import config as config_mod
from cutdist.config import ConfigError

METRIC = "fid"        # the default sweep metric
METRICS = ("fid", "kid")
MODE = "min"
SEARCHES = ("random", "grid", "optuna")
RANGE_KINDS = ("uniform", "loguniform", "randint", "lograndint")
SET_KINDS = ("choice", "grid")
TIME_ATTRS = ("epoch", "training_iteration")
TOP_KEYS = ("metric", "search", "seed", "num_samples", "max_concurrent_trials", "scheduler", "fixed", "params")


class SpaceError(ConfigError):
    """A search-space problem; ``str(err)`` is one line naming the space file and the key."""


@dataclass
class Param:
    """One searched key: a range (``low``, ``high``) or a finite set (``values``, with ``names`` when named)."""
    key: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    values: list[Any] = field(default_factory=list)
    names: list[str] | None = None

    @property
    def is_set(self) -> bool:
        return self.kind in SET_KINDS

    @property
    def log_scale(self) -> bool:
        return self.kind in ("loguniform", "lograndint")

    def value(self, sampled: Any) -> Any:
        """What a trial's config holds for this key -> the job-config value (names resolved)."""
        if self.names is not None:
            return self.values[self.names.index(sampled)]
        return sampled


@dataclass
class Scheduler:
    type: str = "fifo"
    time_attr: str = "epoch"
    grace_period: float = 1
    max_t: float = 100
    reduction_factor: float = 2


@dataclass
class Space:
    path: str
    params: dict[str, Param]
    base: dict[str, Any]                  # job file <- space's fixed <- command-line overrides (from_dict input)
    fixed: dict[str, Any] = field(default_factory=dict)
    search: str = "random"
    seed: int | None = None
    num_samples: int = 1
    max_concurrent_trials: int | None = None
    scheduler: Scheduler = field(default_factory=Scheduler)
    metric: str = METRIC                  # fid | kid, minimised

    def values_of(self, sampled: dict[str, Any]) -> dict[str, Any]:
        """A trial's Tune config -> the dotted job-config values it sets."""
        return {key: self.params[key].value(sampled[key]) for key in self.params if key in sampled}

    def trial_config(self, sampled: dict[str, Any]) -> config_mod.JobConfig:
        """The validated job of one trial: the base job with the sampled values applied, then the preset."""
        return config_mod.from_dict({**self.base, **self.values_of(sampled)})

    # --------------------------------------------------------------------------------- Ray Tune objects
    def param_space(self) -> dict[str, Any]:
        from ray import tune

        out: dict[str, Any] = {}
        for key, p in self.params.items():
            options = p.names if p.names is not None else p.values
            if p.kind == "grid" or (p.kind == "choice" and self.search == "grid"):
                out[key] = tune.grid_search(list(options))
            elif p.kind == "choice":
                out[key] = tune.choice(list(options))
            else:
                out[key] = getattr(tune, p.kind)(p.low, p.high)
        return out

    def search_alg(self, max_concurrent: int):
        """The search algorithm, running at most ``max_concurrent`` trials at once (metric and mode come from
        the TuneConfig)."""
        from cutdist.tune.searcher import ConsistentOptunaSearch, ConsistentVariantGenerator

        if self.search == "optuna":   # limits concurrency itself and mends a stale saved state on resume
            from optuna.samplers import TPESampler

            return ConsistentOptunaSearch(sampler=TPESampler(seed=self.seed), max_concurrent=max_concurrent,
                                          num_samples=self.num_samples)
        # random and grid: Tune's variant generator (grid values crossed, the rest sampled) takes the limit itself;
        # this one also mends a stale saved state on resume (see cutdist.tune.searcher)
        return ConsistentVariantGenerator(random_state=self.seed, max_concurrent=max_concurrent)

    def tune_scheduler(self):
        from ray.tune.schedulers import FIFOScheduler

        from cutdist.tune.asha import ResumableASHA

        s = self.scheduler
        if s.type == "asha":
            return ResumableASHA(time_attr=s.time_attr, grace_period=s.grace_period, max_t=s.max_t,
                                 reduction_factor=s.reduction_factor)
        return FIFOScheduler()


# ------------------------------------------------------------------------------------------------ parsing

def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def load_space(path: str | Path, job_values: dict[str, Any], overrides: dict[str, Any] | None = None) -> Space:
    """Read and validate a space file against the base job: ``job_values`` (the job file's mapping) and
    ``overrides`` (dotted command-line values, applied after the space's ``fixed``; a searched key may not be one)."""
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise SpaceError(f"--space: no such file {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SpaceError(f"{where}: not valid YAML ({str(err).splitlines()[0]})") from None
    return parse_space(raw, job_values, overrides, where=where)


def parse_space(raw: Any, job_values: dict[str, Any], overrides: dict[str, Any] | None = None, *,
                where: str = "space") -> Space:
    """Validate an already-read space mapping (see the module docstring) and return it as a ``Space``."""
    if not isinstance(raw, dict):
        raise SpaceError(f"{where}: expected a mapping with 'params' at the top level")
    unknown = [k for k in raw if k not in TOP_KEYS]
    if unknown:
        raise SpaceError(f"{where}: {unknown[0]}: unknown key (known: {', '.join(TOP_KEYS)})")

    fixed = raw.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise SpaceError(f"{where}: fixed: expected a mapping of dotted keys to values, got {fixed!r}")
    fixed = {str(k): v for k, v in fixed.items()}
    overrides = dict(overrides or {})
    base = {**job_values, **fixed, **overrides}
    try:
        config_mod.from_dict(base)
    except ConfigError as err:   # the job with its overrides alone was valid (the CLI checks it first)
        raise SpaceError(f"{where}: fixed: {err}" if fixed else f"{where}: {err}") from None

    raw_params = raw.get("params")
    if not isinstance(raw_params, dict) or not raw_params:
        raise SpaceError(f"{where}: params: expected a non-empty mapping of dotted config keys to distributions")
    params = {str(k): _parse_param(str(k), v, where) for k, v in raw_params.items()}

    search = raw.get("search")
    if search is None:
        search = "grid" if all(p.kind == "grid" for p in params.values()) else "random"
    if search not in SEARCHES:
        raise SpaceError(f"{where}: search: must be one of {list(SEARCHES)}, got {search!r}")
    space = Space(path=where, params=params, base=base, fixed=fixed, search=search,
                  seed=_optional_int(raw, "seed", where, minimum=0),
                  num_samples=_optional_int(raw, "num_samples", where, minimum=1) or 1,
                  max_concurrent_trials=_optional_int(raw, "max_concurrent_trials", where, minimum=1),
                  scheduler=_parse_scheduler(raw.get("scheduler"), where, _parse_metric(raw, where)),
                  metric=_parse_metric(raw, where))
    _check_search(space, where)

    for key, p in params.items():
        if key in overrides:
            raise SpaceError(f"{where}: params.{key}: also set on the command line; drop one of the two")
        _check_values(p, base, where)
    return space


def _optional_int(raw: dict, key: str, where: str, minimum: int) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    if not _is_int(value) or value < minimum:
        raise SpaceError(f"{where}: {key}: expected an integer >= {minimum}, got {value!r}")
    return value


def _parse_param(key: str, spec: Any, where: str) -> Param:
    name = f"{where}: params.{key}"
    kinds = RANGE_KINDS + SET_KINDS
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in kinds:
        raise SpaceError(f"{name}: expected one distribution, e.g. {{loguniform: [0.1, 10]}} "
                         f"(kinds: {', '.join(kinds)}), got {spec!r}")
    kind, args = next(iter(spec.items()))
    if kind in RANGE_KINDS or config_mod.field_takes(key, float):
        args = config_mod.yaml_floats(args)   # YAML 1.1 reads 1e-3 as text: numbers only where numbers belong
    if kind in RANGE_KINDS:
        if not (isinstance(args, list) and len(args) == 2 and all(_is_number(a) for a in args)):
            raise SpaceError(f"{name}: {kind} needs [low, high] (two numbers), got {args!r}")
        low, high = args
        if kind in ("randint", "lograndint") and not (_is_int(low) and _is_int(high)):
            raise SpaceError(f"{name}: {kind} needs integer bounds [low, high), got {args!r}")
        if not low < high:
            raise SpaceError(f"{name}: {kind} needs low < high, got {args!r}")
        if kind.startswith("log") and low <= 0:
            raise SpaceError(f"{name}: {kind} needs low > 0, got {args!r}")
        if kind in ("randint", "lograndint") and high - low < 2:
            raise SpaceError(f"{name}: {kind} [low, high) excludes high, so {args!r} has one value: use fixed")
        return Param(key, kind, low=low, high=high)
    if isinstance(args, dict):
        if not args or not all(isinstance(n, str) and n for n in args):
            raise SpaceError(f"{name}: {kind} with names needs a non-empty mapping of names to values, got {args!r}")
        return Param(key, kind, values=list(args.values()), names=list(args))
    if not isinstance(args, list) or not args:
        raise SpaceError(f"{name}: {kind} needs a non-empty list of values (or a mapping of names), got {args!r}")
    if any(isinstance(v, (list, dict)) for v in args):
        raise SpaceError(f"{name}: {kind} values that are lists or mappings need names, e.g. "
                         f"{{{kind}: {{all: [0, 4, 8, 12, 16], no_pixels: [4, 8, 12, 16]}}}}")
    if len({yaml.safe_dump(v) for v in args}) != len(args):
        raise SpaceError(f"{name}: {kind} has duplicate values: {args!r}")
    return Param(key, kind, values=list(args))


def _parse_metric(raw: dict, where: str) -> str:
    metric = raw.get("metric", METRIC)
    if metric not in METRICS:
        raise SpaceError(f"{where}: metric: must be one of {list(METRICS)} (minimised), got {metric!r}")
    return metric


def _parse_scheduler(raw: Any, where: str, metric: str = METRIC) -> Scheduler:
    if raw is None:
        return Scheduler()
    if not isinstance(raw, dict):
        raise SpaceError(f"{where}: scheduler: expected a mapping such as {{type: asha, grace_period: 1}}, got {raw!r}")
    known = ("type", "time_attr", "grace_period", "max_t", "reduction_factor", "metric", "mode")
    unknown = [k for k in raw if k not in known]
    if unknown:
        raise SpaceError(f"{where}: scheduler.{unknown[0]}: unknown key (known: {', '.join(known)})")
    if raw.get("metric", metric) != metric or raw.get("mode", MODE) != MODE:
        raise SpaceError(f"{where}: scheduler: this sweep minimises {metric} (the top-level metric: {metric}, "
                         f"mode: {MODE}), got metric {raw.get('metric')!r}, mode {raw.get('mode')!r}")
    kind = raw.get("type", "asha")
    if kind not in ("asha", "fifo"):
        raise SpaceError(f"{where}: scheduler.type: must be asha or fifo, got {kind!r}")
    s = Scheduler(type=kind)
    if kind == "fifo":
        return s
    s.time_attr = raw.get("time_attr", s.time_attr)
    if s.time_attr not in TIME_ATTRS:
        raise SpaceError(f"{where}: scheduler.time_attr: must be one of {list(TIME_ATTRS)}, got {s.time_attr!r}")
    for key in ("grace_period", "max_t", "reduction_factor"):
        value = raw.get(key, getattr(s, key))
        if not _is_number(value) or value <= 0:
            raise SpaceError(f"{where}: scheduler.{key}: expected a number > 0, got {value!r}")
        setattr(s, key, value)
    if s.reduction_factor <= 1:
        raise SpaceError(f"{where}: scheduler.reduction_factor: must be > 1, got {s.reduction_factor!r}")
    if s.max_t < s.grace_period:
        raise SpaceError(f"{where}: scheduler.max_t: must be >= grace_period ({s.grace_period}), got {s.max_t!r}")
    return s


def _check_search(space: Space, where: str) -> None:
    if space.search == "grid":
        continuous = [k for k, p in space.params.items() if not p.is_set]
        if continuous:
            raise SpaceError(f"{where}: params.{continuous[0]}: search grid needs choice or grid values, "
                             f"got {space.params[continuous[0]].kind}")
    if space.search == "optuna":
        grids = [k for k, p in space.params.items() if p.kind == "grid"]
        if grids:
            raise SpaceError(f"{where}: params.{grids[0]}: search optuna does not take grid values; use choice")
        if importlib.util.find_spec("optuna") is None:
            raise SpaceError(f"{where}: search: optuna is not installed (pip install 'cutdist[optuna]'), "
                             "or use search: random")


def _candidates(p: Param) -> list[Any]:
    """The values whose validity stands for every value the distribution can give."""
    if p.is_set:
        return list(p.values)
    if p.kind in ("randint", "lograndint"):
        return [p.low, p.high - 1]
    # floats: a float config key accepts ints, an int key must reject these (uniform over an int key is an error)
    return [float(p.low), float(p.high)]


def _check_values(p: Param, base: dict[str, Any], where: str) -> None:
    try:
        default = config_mod.get(config_mod.JobConfig(), p.key)
    except ConfigError:
        raise SpaceError(f"{where}: params.{p.key}: unknown config key") from None
    if dataclasses.is_dataclass(default):
        raise SpaceError(f"{where}: params.{p.key}: a config section, not a value; search its keys one by one")
    for value in _candidates(p):
        try:
            config_mod.from_dict({**base, p.key: value})
        except ConfigError as err:
            hint = ""
            if "expected an integer" in str(err) and not p.is_set:
                hint = " (an integer key takes randint, lograndint, choice or grid)"
            raise SpaceError(f"{where}: params.{p.key}: value {value!r} is invalid: {err}{hint}") from None
