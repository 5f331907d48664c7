"""``python -m cutdist.bench curves``: do fast-path variants train like fp32? Loss curves per seed, one JSON line.

  [--config jobs/demo.yaml] [--steps 300] [--interval 25] [--seeds 0,1,2,3,4] [--variants fp32,bf16,...]
  [--device auto|cpu|cuda] [--threads T] [--runs-dir DIR] [key=value ...]

Trains the job once per (variant, seed) in THIS process with ``cutdist.train.loop.run_local`` (the loop Ray runs,
world size 1: the same data stream, patch ids and initialisation for a seed), ``--steps`` steps each, and reads
each run's ``metrics.jsonl``: every ``--interval`` steps the loop writes each loss term averaged over the interval
(``loss_d``, ``loss_g_gan``, ``loss_nce``, ...). FID is off (``eval.enabled=false``), no sample grids or
TensorBoard, one checkpoint at the end; ``key=value`` overrides go onto the job before the bench's own settings.

Variants are configuration switches on top of the fp32 baseline (precision fp32, NCHW, eager, plain Adam; always
run, first): ``bf16`` = ``train.precision=bf16`` (D stays fp32), ``bf16_d`` = ``train.bf16_discriminator=true``
(with bf16 only: ``bf16+bf16_d`` puts D under autocast too), ``channels_last`` = ``train.channels_last=true``,
``compile`` = ``train.compile=true``, ``fused`` = ``optim.fused=true``; ``+`` combines them (``bf16+channels_last+compile``).
Every variant runs the SAME seeds as fp32. Those five keys, ``train.seed``, ``optim.max_steps``,
``logging.every_steps`` and ``eval.enabled`` belong to the bench: overriding them is a usage error.

The verdict, per variant other than fp32 and per loss term, with c[v][s][t] the term's value of variant v, seed s,
at logged interval t (S seeds, T intervals), m[v][t] = mean over seeds of c[v][s][t]:

- ``distance``  = mean over t of |m[v][t] - m[fp32][t]|   (how far the seed-mean curves are apart)
- ``noise``     = mean over t of std over s of c[fp32][s][t], sample std (ddof 1)   (fp32's seed-to-seed spread)
- ``ratio``     = distance / noise;  ``within_seed_noise`` = distance <= noise (and every value finite).
- overall ``within_seed_noise`` of a variant: every term within.

For information, not the verdict: ``paired_distance`` = mean over s, t of |c[v][s][t] - c[fp32][s][t]| (the
variant against its own fp32 twin, same seed), and ``fp32_max_pairwise`` = the largest mean over t of
|c[fp32][s][t] - c[fp32][s'][t]| over pairs of fp32 seeds. A variant that trains exactly like fp32 but from an
independent draw would land, on average, at distance ~ sqrt(2/pi) * sqrt(2/S) * noise (~0.65 * noise for 3
seeds, ~0.5 for 5), so the threshold leaves a margin, but a term can still cross it by chance: read ``ratio``.
The noise itself is estimated from S runs: on the demo, 3 seeds underestimated D's spread enough that even
channels_last (fp32 arithmetic in another order) failed; with 5 it passed (benchmarks/README.md, "Loss curves").
The verdict is computed from the curves exactly as printed (rounded to 6 decimals).

Exit 0 with the JSON line; 2 on a usage or data error (one line on stderr); 1 when a run fails (JSON line with
``error``, the curves so far included). Progress goes to stderr. Never imports Ray.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import json
import math
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cutdist.bench.cli import UsageError, choose_device, default_config, device_name

BASELINE = "fp32"
# variant part -> the config switch it turns on (the baseline has them all off)
SWITCHES: dict[str, tuple[str, Any]] = {
    "bf16": ("train.precision", "bf16"),
    "bf16_d": ("train.bf16_discriminator", True),     # only with bf16: "bf16+bf16_d"
    "channels_last": ("train.channels_last", True),
    "compile": ("train.compile", True),
    "fused": ("optim.fused", True),
}
BASELINE_SWITCHES: dict[str, Any] = {"train.precision": "fp32", "train.bf16_discriminator": False,
                                     "train.channels_last": False,
                                     "train.compile": False, "optim.fused": False}
# keys the bench sets itself -> the flag that sets them
OWNED_KEYS = {**{key: "--variants" for key in BASELINE_SWITCHES}, "train.seed": "--seeds",
              "optim.max_steps": "--steps", "logging.every_steps": "--interval", "eval.enabled": "(always false)"}
NEVER = 10**9   # a cadence that never comes round within a bench run
ROUND = 6


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cutdist.bench curves", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[4:]))
    p.add_argument("--config", help="job YAML (default: jobs/demo.yaml)")
    p.add_argument("--steps", type=int, default=300, help="training steps per run")
    p.add_argument("--interval", type=int, default=25, help="steps per logged point (logging.every_steps)")
    p.add_argument("--seeds", default="0,1,2,3,4",
                   help="comma-separated seeds, at least two, the same for every variant (3 proved too few on the demo)")
    p.add_argument("--variants", default="fp32,bf16",
                   help=f"comma-separated; each fp32 or parts of {sorted(SWITCHES)} joined by '+'")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=0, help="CPU: torch intra-op threads (0 = torch's default)")
    p.add_argument("--runs-dir", help="keep every run's directory here (default: a temporary one, removed)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted job overrides, e.g. data.root=/tmp/d")
    return p


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--seeds: expected comma-separated integers, got {text!r}") from None
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds: need at least two distinct seeds (the noise is their spread), got {text!r}")
    return seeds


def parse_variants(text: str) -> dict[str, dict[str, Any]]:
    """``fp32,bf16+channels_last`` -> {name: its config switches}, the baseline first (added if absent)."""
    variants: dict[str, dict[str, Any]] = {BASELINE: dict(BASELINE_SWITCHES)}
    for name in (v.strip() for v in text.split(",")):
        if not name or name == BASELINE:
            continue
        switches = dict(BASELINE_SWITCHES)
        parts = name.split("+")
        for part in parts:
            if part not in SWITCHES:
                raise UsageError(f"--variants: unknown switch {part!r} in {name!r} "
                                 f"(choose from {BASELINE} or {'+'.join(sorted(SWITCHES))} combinations)")
            key, value = SWITCHES[part]
            switches[key] = value
        if len(set(parts)) != len(parts) or name in variants:
            raise UsageError(f"--variants: {name!r} repeats a switch or a variant")
        if "bf16_d" in parts and "bf16" not in parts:
            raise UsageError(f"--variants: {name!r}: bf16_d (D under autocast) needs bf16 too, e.g. 'bf16+bf16_d'")
        variants[name] = switches
    return variants


def build_job(config_path: Path, overrides: list[str], *, steps: int, interval: int, seed: int,
              switches: dict[str, Any]) -> Any:
    """The job of one run: YAML <- user overrides <- the bench's settings <- the variant's switches."""
    from cutdist import config

    values: dict[str, Any] = {}
    for text in overrides:
        key, value = config.parse_override(text)
        if key in OWNED_KEYS:
            raise UsageError(f"{key}: set by the bench ({OWNED_KEYS[key]}), not by an override")
        values[key] = value
    values.update({
        "train.num_workers": 1, "train.seed": seed, "optim.max_steps": steps, "eval.enabled": False,
        "logging.every_steps": interval, "logging.sample_every_steps": NEVER, "logging.tensorboard": False,
        "checkpoint.every_steps": NEVER, "checkpoint.every_minutes": 0, "checkpoint.num_to_keep": 1,
    })
    values.update(switches)
    try:
        return config.load(config_path, values)
    except config.ConfigError as err:
        raise UsageError(str(err)) from None


def read_curves(metrics_path: Path) -> tuple[list[int], dict[str, list[float]], float]:
    """(steps logged, {term: values}, seconds spent training) from a run's metrics.jsonl; terms are the ``loss_``
    keys without it, the seconds the sum of the intervals' ``interval_s``.

    Values are rounded to ``ROUND`` decimals; a non-finite one becomes None (JSON has no NaN).
    """
    steps: list[int] = []
    curves: dict[str, list[float]] = {}
    busy_s = 0.0
    for line in metrics_path.read_text().splitlines():
        record = json.loads(line)
        steps.append(int(record["step"]))
        busy_s += record["interval_s"]
        terms = {k[len("loss_"):]: float(v) for k, v in record.items() if k.startswith("loss_")}
        if curves and set(terms) != set(curves):
            raise RuntimeError(f"{metrics_path}: step {record['step']} logs terms {sorted(terms)}, "
                               f"earlier lines {sorted(curves)}")
        for term, value in terms.items():
            curves.setdefault(term, []).append(round(value, ROUND) if math.isfinite(value) else None)
    if not steps:
        raise RuntimeError(f"{metrics_path}: no metrics logged")
    return steps, curves, busy_s


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _std(values: list[float]) -> float:
    m = _mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def term_verdict(base: list[list[float]], variant: list[list[float]]) -> dict[str, Any]:
    """Distance of ``variant``'s seed-mean curve from ``base``'s against base's seed-to-seed noise (module doc).

    ``base`` and ``variant``: one curve per seed (the same seeds in the same order), each T values.
    """
    if len(base) < 2 or len(base) != len(variant):
        raise ValueError(f"term_verdict: need >= 2 baseline seeds and as many variant seeds, got {len(base)} and "
                         f"{len(variant)}")
    lengths = {len(c) for c in base + variant}
    if len(lengths) != 1 or 0 in lengths:
        raise ValueError(f"term_verdict: curves of different or zero lengths {sorted(lengths)}")
    if not all(v is not None and math.isfinite(v) for c in base + variant for v in c):
        return {"distance": None, "noise": None, "ratio": None, "paired_distance": None, "fp32_max_pairwise": None,
                "within_seed_noise": False, "note": "non-finite loss values"}
    steps = range(lengths.pop())
    base_mean = [_mean([c[t] for c in base]) for t in steps]
    variant_mean = [_mean([c[t] for c in variant]) for t in steps]
    distance = _mean([abs(variant_mean[t] - base_mean[t]) for t in steps])
    noise = _mean([_std([c[t] for c in base]) for t in steps])
    paired = _mean([abs(v[t] - b[t]) for b, v in zip(base, variant) for t in steps])
    pairwise = max(_mean([abs(a[t] - b[t]) for t in steps]) for a, b in itertools.combinations(base, 2))
    return {"distance": distance, "noise": noise, "ratio": distance / noise if noise > 0 else None,
            "paired_distance": paired, "fp32_max_pairwise": pairwise, "within_seed_noise": distance <= noise}


def verdict(curves: dict[str, dict[str, dict[str, list[float]]]], seeds: list[int]) -> dict[str, Any]:
    """{variant: {"terms": {term: term_verdict}, "within_seed_noise": all terms}} for each variant but fp32.

    ``curves``: {variant: {str(seed): {term: values}}}, the baseline among the variants.
    """
    out: dict[str, Any] = {}
    base = curves[BASELINE]
    for name, runs in curves.items():
        if name == BASELINE:
            continue
        terms = {}
        for term in base[str(seeds[0])]:
            terms[term] = term_verdict([base[str(s)][term] for s in seeds], [runs[str(s)][term] for s in seeds])
        out[name] = {"terms": terms, "within_seed_noise": all(v["within_seed_noise"] for v in terms.values())}
    return out


def _describe(args: argparse.Namespace, cfg: Any, config_path: Path, device: Any, seeds: list[int],
              variants: dict[str, dict[str, Any]]) -> dict[str, Any]:
    import torch

    return {
        "bench": "curves", "config": str(config_path), "overrides": list(args.overrides), "steps": args.steps,
        "interval": args.interval, "seeds": seeds, "variants": {name: {k: v for k, v in sw.items()
                                                                      if BASELINE_SWITCHES[k] != v}
                                                               for name, sw in variants.items()},
        "device": device.type, "device_name": device_name(device), "torch": torch.__version__,
        "cuda": torch.version.cuda, "python": platform.python_version(),
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mode": cfg.model.mode, "size": cfg.data.crop_size, "batch": cfg.data.batch_size, "ngf": cfg.model.ngf,
        "ndf": cfg.model.ndf, "n_blocks": cfg.model.n_blocks, "num_patches": cfg.loss.num_patches,
        "nce_layers": list(cfg.loss.nce_layers), "netf_nc": cfg.model.netf_nc, "data_root": cfg.data.root,
        "verdict_rule": "distance = mean_t |seedmean_variant - seedmean_fp32|; noise = mean_t std_seeds(fp32, ddof=1); "
                        "within_seed_noise = distance <= noise",
    }


def run_all(args: argparse.Namespace, config_path: Path, seeds: list[int], variants: dict[str, dict[str, Any]],
            device: Any, splits: Any, runs_dir: Path, result: dict[str, Any]) -> None:
    """Train every (variant, seed), filling ``result["curves"]``, ``["steps_logged"]``, ``["runs"]``."""
    from cutdist.train.loop import run_local

    result["curves"], result["runs"] = {}, {}
    for name, switches in variants.items():
        result["curves"][name], result["runs"][name] = {}, {}
        for seed in seeds:
            cfg = build_job(config_path, args.overrides, steps=args.steps, interval=args.interval, seed=seed,
                            switches=switches)
            run_dir = runs_dir / f"{name}-seed{seed}"
            shutil.rmtree(run_dir, ignore_errors=True)
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(sys.stderr):   # the loop's console lines: stdout holds only the JSON
                run_local(cfg, splits, run_dir=run_dir, device=device)
            wall = time.perf_counter() - t0
            steps, curves, busy_s = read_curves(run_dir / "metrics.jsonl")
            if "steps_logged" not in result:
                result["steps_logged"] = steps
            elif steps != result["steps_logged"]:
                raise RuntimeError(f"{name} seed {seed}: logged steps {steps}, the first run {result['steps_logged']}")
            result["curves"][name][str(seed)] = curves
            result["runs"][name][str(seed)] = {"wall_s": round(wall, 2),
                                               "images_per_s": round(steps[-1] * cfg.data.batch_size / busy_s, 3)}
            print(f"[cutdist.bench curves] {name} seed {seed}: {steps[-1]} steps in {wall:.1f} s", file=sys.stderr,
                  flush=True)


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    config_path = Path(args.config) if args.config else default_config()
    try:
        for flag, value in (("--steps", args.steps), ("--interval", args.interval)):
            if value < 1:
                raise UsageError(f"{flag}: must be >= 1, got {value}")
        if args.interval > args.steps:
            raise UsageError(f"--interval: {args.interval} is longer than --steps {args.steps} (one point, no curve)")
        if args.threads < 0:
            raise UsageError(f"--threads: must be >= 0, got {args.threads}")
        seeds = parse_seeds(args.seeds)
        variants = parse_variants(args.variants)
        jobs = {name: build_job(config_path, args.overrides, steps=args.steps, interval=args.interval, seed=seeds[0],
                                switches=switches)   # every usage error before any training
                for name, switches in variants.items()}
        first = jobs[BASELINE]
        device = choose_device(args.device)
    except UsageError as err:
        print(f"cutdist.bench curves: {err}", file=sys.stderr)
        return 2

    import torch

    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    result = _describe(args, first, config_path, device, seeds, variants)
    from cutdist.data.manifest import DataError

    try:
        from cutdist.data import resolve_splits

        splits = resolve_splits(first.data)   # synthesises the demo shards once when data.synth_if_missing
    except DataError as err:
        print(f"cutdist.bench curves: {err}", file=sys.stderr)
        return 2
    except Exception as err:   # e.g. a package the loader or the shard synthesis needs is missing on this machine
        result["error"] = f"data: {_one_line(err)}"
        print(json.dumps(result), flush=True)
        return 1
    runs_dir = Path(args.runs_dir) if args.runs_dir else Path(tempfile.mkdtemp(prefix="cutdist_curves_"))
    runs_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    code = 0
    try:
        run_all(args, config_path, seeds, variants, device, splits, runs_dir, result)
        result["verdict"] = verdict(result["curves"], seeds)
        result["within_seed_noise"] = all(v["within_seed_noise"] for v in result["verdict"].values())
    except Exception as err:   # out of memory, a compile failure, a loader error: the line says which
        result["error"] = _one_line(err)
        code = 1
    finally:
        if not args.runs_dir:
            shutil.rmtree(runs_dir, ignore_errors=True)
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
