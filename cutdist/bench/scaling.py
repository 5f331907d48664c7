"""``python -m cutdist.bench scaling``: does CUT keep its quality at a larger global batch, and with which lr rule?

  [--config jobs/demo.yaml] [--batches 1,2,4,8] [--rules none,sqrt,linear] [--seeds 0,1,2] [--out DIR]
  [--threads T] [--device auto|cpu|cuda] [--keep-runs] [key=value ...]   (--keep-runs: OUT/runs/, else a temp dir)

Trains the job (default: the demo, whose synthetic test images have a paired ground truth) once per (global
batch B, lr rule, seed) and measures the final generator: the paired error against the ground truth
(``cutdist.eval.paired``: ``lowfreq_l1``, lower is better; ``stripe_energy_ratio``, 1 = as striped as the truth)
and FID/KID of G(test A) vs test B from the job's Inception backbone. Every run sees the SAME images: the job's
epochs (``optim.epochs`` + ``optim.epochs_decay`` over the |A| training images, lr decayed by epoch), so a
larger B takes proportionally fewer steps. The lr rules are ``optim.lr_scaling``: ``none`` (lr), ``sqrt``
(lr * sqrt(B)), ``linear`` (lr * B); at B = 1 they coincide and it is run once (rule ``any`` in the table).

What runs: ONE process per configuration, world size 1, per-rank batch B (``cutdist.train.loop.run_local``).
That is gradient-equivalent to W workers x B/W per rank under DDP: every loss term of CUT is a mean of per-image
terms (instance norm, PatchNCE with negatives from the same image, the per-patch GAN loss), DDP averages the
ranks' gradients, so the mean over W ranks of per-rank means over B/W images is the mean over the B images;
Adam then takes the same step. What differs is only which images and patch locations are drawn (a per-rank
stream vs one stream), which is the seed-to-seed randomness the seeds measure anyway. Not equivalent:
``loss.negatives_from_minibatch`` (negatives from the per-rank batch) and FastCUT's flip coin (one per rank);
the bench refuses the former and says so for the latter.

Output in ``--out`` (default ``benchmarks/results/scaling-<date>``), rewritten after every run so a killed run
leaves what it finished, and ``--out`` of an earlier run resumes it (runs already there are skipped):
``scaling.json`` (settings, one record per run, the aggregate per (B, rule): mean and sample std over seeds,
and the verdict), ``scaling.csv`` (the aggregate table), ``scaling.md`` (the same as Markdown, with the verdict), ``scaling.png`` (paired error, stripe ratio and FID vs
B, one line per rule, error bars = std over seeds). The last stdout line is the JSON of the aggregate and verdict.

The verdict: for each rule, ``mean_gap`` = mean over B > 1 of (its lowfreq_l1 at B - lowfreq_l1 at B = 1), and
``gap_se`` its standard error from the seed spread; ``recommended`` is the rule with the smallest gap if that
gap is below ``none``'s by more than 2 standard errors of the difference, else ``none`` (no change without
evidence) — and ``none`` as inconclusive when the batch-1 runs do not beat G at initialisation (runs too short:
a smaller gap would only mean a generator that moved less). Exit 0; 2 on a usage or data error (one line on stderr); 1 when a run fails (the JSON so far, with
``error``).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
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

RULES = ("none", "sqrt", "linear")
ANY_RULE = "any"     # B = 1: every rule gives the same lr
NEVER = 10**9
METRICS = ("lowfreq_l1", "stripe_energy_ratio", "fid", "kid")
# keys the bench sets itself -> the flag that sets them
OWNED_KEYS = {"data.batch_size": "--batches", "optim.lr_scaling": "--rules", "train.seed": "--seeds",
              "train.num_workers": "(always 1: see the module docstring)", "optim.max_steps": "(the job's epochs)"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cutdist.bench scaling", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[4:]))
    p.add_argument("--config", help="job YAML (default: jobs/demo.yaml)")
    p.add_argument("--batches", default="1,2,4,8", help="global batches, comma-separated (must include 1)")
    p.add_argument("--rules", default=",".join(RULES), help=f"lr rules, from {', '.join(RULES)}")
    p.add_argument("--seeds", default="0,1,2", help="seeds, at least two (the spread is the noise)")
    p.add_argument("--out", help="results directory (default benchmarks/results/scaling-<date>); resumes")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=0, help="CPU: torch intra-op threads (0 = torch's default)")
    p.add_argument("--keep-runs", action="store_true", help="keep each run's checkpoints under OUT/runs/")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted job overrides, e.g. loss.lambda_x=4")
    return p


def _ints(flag: str, text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{flag}: expected comma-separated integers, got {text!r}") from None
    if len(set(values)) != len(values) or not values or min(values) < 0:
        raise UsageError(f"{flag}: expected distinct non-negative integers, got {text!r}")
    return values


def parse_plan(args: argparse.Namespace) -> tuple[list[int], list[str], list[int]]:
    batches = sorted(_ints("--batches", args.batches))
    if 1 not in batches or min(batches) < 1:
        raise UsageError(f"--batches: must include 1 (the reference) and only batches >= 1, got {args.batches!r}")
    rules = [r.strip() for r in args.rules.split(",") if r.strip()]
    bad = [r for r in rules if r not in RULES]
    if bad or not rules or len(set(rules)) != len(rules):
        raise UsageError(f"--rules: expected distinct names from {', '.join(RULES)}, got {args.rules!r}")
    seeds = _ints("--seeds", args.seeds)
    if len(seeds) < 2:
        raise UsageError(f"--seeds: need at least two (the noise is their spread), got {args.seeds!r}")
    return batches, rules, seeds


def plan_runs(batches: list[int], rules: list[str], seeds: list[int]) -> list[tuple[int, str, int]]:
    """(B, rule, seed) in the order they run: seed by seed, so a cut-short bench has whole sweeps."""
    return [(b, ANY_RULE if b == 1 else rule, seed) for seed in seeds for b in batches
            for rule in ([ANY_RULE] if b == 1 else rules)]


def build_job(config_path: Path, overrides: list[str], *, batch: int, rule: str, seed: int) -> Any:
    from cutdist import config

    values: dict[str, Any] = {}
    for text in overrides:
        key, value = config.parse_override(text)
        if key in OWNED_KEYS:
            raise UsageError(f"{key}: set by the bench ({OWNED_KEYS[key]}), not by an override")
        values[key] = value
    values.update({
        "train.num_workers": 1, "train.seed": seed, "data.batch_size": batch,
        "optim.lr_scaling": "none" if rule == ANY_RULE else rule, "optim.max_steps": 0,
        "eval.every": 0, "logging.sample_every_steps": NEVER, "logging.tensorboard": False,
        "checkpoint.every_steps": NEVER, "checkpoint.every_minutes": 0, "checkpoint.num_to_keep": 1,
    })
    try:
        cfg = config.load(config_path, values)
    except config.ConfigError as err:
        raise UsageError(str(err)) from None
    if cfg.loss.negatives_from_minibatch:
        raise UsageError("loss.negatives_from_minibatch: true draws negatives from the per-rank batch, so one "
                         "process with batch B is not equivalent to B workers; the bench refuses it")
    return cfg


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not values:
        return math.nan, math.nan
    m = sum(values) / len(values)
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else math.nan
    return m, s


def aggregate(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (B, rule): mean and sample std over seeds of each metric."""
    groups: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["global_batch"], r["rule"]), []).append(r)
    rows = []
    for (b, rule), group in sorted(groups.items(), key=lambda kv: (kv[0][0], RULES.index(kv[0][1])
                                                                   if kv[0][1] in RULES else -1)):
        row: dict[str, Any] = {"global_batch": b, "rule": rule, "lr": group[0]["lr"], "steps": group[0]["steps"],
                               "images_seen": group[0]["images_seen"], "seeds": len(group)}
        for metric in METRICS:
            mean, std = _mean_std([g.get(metric) for g in group])
            row[f"{metric}_mean"], row[f"{metric}_std"] = mean, std
        rows.append(row)
    return rows


def verdict(records: list[dict[str, Any]], rules: list[str], baselines: dict | None = None) -> dict[str, Any]:
    """Per rule: the mean over B > 1 of the seed-mean lowfreq_l1 gap to B = 1, its standard error, and the
    recommended default (module docstring). With ``baselines`` ({seed: {"g": G at init's quality, ...}}): when
    the B = 1 runs do not beat G at init on lowfreq_l1, the runs were too short to rank rules (a smaller gap
    then only means a G that moved less) and the verdict is inconclusive: ``none``."""
    by_b1 = [r["lowfreq_l1"] for r in records if r["global_batch"] == 1]
    ref, ref_sd = _mean_std(by_b1)
    out: dict[str, Any] = {"metric": "lowfreq_l1", "reference_b1": ref, "rules": {}}
    for rule in rules:
        batches = sorted({r["global_batch"] for r in records if r["rule"] == rule})
        gaps, variances = [], []
        for b in batches:
            values = [r["lowfreq_l1"] for r in records if r["rule"] == rule and r["global_batch"] == b]
            mean, sd = _mean_std(values)
            gaps.append(mean - ref)
            variances.append((sd ** 2 / len(values) if len(values) > 1 else math.nan)
                             + (ref_sd ** 2 / len(by_b1) if len(by_b1) > 1 else math.nan))
        if gaps:
            gap = sum(gaps) / len(gaps)
            se = math.sqrt(sum(variances)) / len(gaps)
            out["rules"][rule] = {"batches": batches, "gaps": gaps, "mean_gap": gap, "gap_se": se}
    scored = {rule: v for rule, v in out["rules"].items() if math.isfinite(v["mean_gap"])}
    recommended, reason = "none", "no rule measured"
    if scored:
        best = min(scored, key=lambda rule: scored[rule]["mean_gap"])
        recommended, reason = best, "smallest mean gap"
        if best != "none" and "none" in scored:
            diff = scored["none"]["mean_gap"] - scored[best]["mean_gap"]
            se = math.sqrt(scored["none"]["gap_se"] ** 2 + scored[best]["gap_se"] ** 2)
            if not (math.isfinite(se) and diff > 2 * se):
                recommended = "none"
                reason = (f"{best}'s mean gap is below none's by {diff:.4f}, within 2 standard errors ({2 * se:.4f}):"
                          " no evidence for a change")
            else:
                reason = f"{best}'s mean gap is below none's by {diff:.4f} > 2 standard errors ({2 * se:.4f})"
    at_init = [b["g"]["lowfreq_l1"] for b in (baselines or {}).values() if b and "g" in b]
    if at_init and math.isfinite(ref):
        out["g_at_init"] = sum(at_init) / len(at_init)
        if ref >= out["g_at_init"]:
            recommended = "none"
            reason = (f"inconclusive: the batch-1 runs ({ref:.4f}) do not beat G at init ({out['g_at_init']:.4f}) "
                      "on lowfreq_l1, so a smaller gap only means a G that moved less; too short to rank rules")
    out["recommended"], out["reason"] = recommended, reason
    return out


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("lowfreq_l1", "paired error lowfreq_l1 (lower = better)"),
              ("stripe_energy_ratio", "stripe energy vs ground truth (1 = as striped)"), ("fid", "FID"),
              ("kid", "KID")]
    panels = [p for p in panels if any(math.isfinite(r.get(f"{p[0]}_mean", math.nan)) for r in rows)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    b1 = [r for r in rows if r["rule"] == ANY_RULE]
    for ax, (metric, label) in zip(axes[0], panels):
        for i, rule in enumerate(RULES):
            line = b1 + [r for r in rows if r["rule"] == rule]
            if len(line) <= len(b1):
                continue
            xs = [r["global_batch"] * (1 + 0.03 * (i - 1)) for r in line]   # a little apart, to see the bars
            ax.errorbar(xs, [r[f"{metric}_mean"] for r in line], yerr=[r[f"{metric}_std"] for r in line],
                        marker="o", capsize=3, label=rule)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("global batch (same images seen)")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
    if axes[0][0].get_legend_handles_labels()[0]:
        axes[0][0].legend(title="lr rule", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _latest_checkpoint(run_dir: Path) -> Path:
    found = sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())
    if not found:
        raise RuntimeError(f"{run_dir}: the run left no checkpoint")
    return found[-1]


def _job_record(cfg: Any) -> dict[str, Any]:
    """The job's settings that a resumed bench must share with the runs already made (bench-owned keys out)."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            flat[prefix] = value
    walk("", cfg.to_dict())
    ignored = set(OWNED_KEYS) | {"name", "storage_path", "eval.every", "logging.sample_every_steps",
                                 "logging.tensorboard", "logging.every_steps", "checkpoint.every_steps",
                                 "checkpoint.every_minutes",
                                 "checkpoint.num_to_keep", "data.loader_workers"}
    return {k: v for k, v in flat.items() if k not in ignored}


def _changed_keys(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Job keys whose value differs between a results directory's runs and this bench. A key that only one side
    has (a cutdist newer or older than the runs added or removed it) counts only if it is not at its default."""
    if not before:
        return []
    from cutdist.config import JobConfig

    defaults = _job_record(JobConfig())
    missing = object()
    return sorted(k for k in set(before) | set(now)
                  if before.get(k, defaults.get(k, missing)) != now.get(k, defaults.get(k, missing)))


def run_one(cfg: Any, splits: Any, run_dir: Path, device: Any, baselines: dict) -> dict[str, Any]:
    from cutdist.config import scaled_lr
    from cutdist.train.demo import paired_quality_of_checkpoint, paired_quality_of_initial_g
    from cutdist.train.loop import run_local

    if cfg.train.seed not in baselines:
        baselines[cfg.train.seed] = paired_quality_of_initial_g(cfg, splits)
    shutil.rmtree(run_dir, ignore_errors=True)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):   # the loop's console lines: stdout holds only the JSON
        metrics, _ = run_local(cfg, splits, run_dir=run_dir, device=device)
    wall = time.perf_counter() - t0
    quality = paired_quality_of_checkpoint(str(_latest_checkpoint(run_dir)), splits)
    record = {"lowfreq_l1": quality["lowfreq_l1"], "stripe_energy_ratio": quality["stripe_energy_ratio"],
              "steps": int(metrics["step"]), "lr": scaled_lr(cfg.optim, cfg.data.batch_size), "wall_s": round(wall, 1)}
    for key in ("fid", "kid", "kid_std", "fid_backbone"):
        if key in metrics:
            record[key] = metrics[key]
    return record


def markdown(result: dict[str, Any]) -> str:
    """The aggregate table and the verdict as Markdown (scaling.md; what the README quotes)."""
    def cell(row: dict[str, Any], metric: str, digits: int) -> str:
        mean, std = row.get(f"{metric}_mean"), row.get(f"{metric}_std")
        if not isinstance(mean, float) or not math.isfinite(mean):
            return "–"
        return f"{mean:.{digits}f} ± {std:.{digits}f}" if isinstance(std, float) and math.isfinite(std) \
            else f"{mean:.{digits}f}"
    lines = ["| global batch | lr rule | lr | steps | seeds | lowfreq_l1 ↓ | stripe ratio (1 = GT) | FID ↓ | KID ↓ |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in result.get("table", []):
        lines.append(f"| {row['global_batch']} | {row['rule']} | {row['lr']:.2g} | {row['steps']} | {row['seeds']} | "
                     f"{cell(row, 'lowfreq_l1', 4)} | {cell(row, 'stripe_energy_ratio', 3)} | {cell(row, 'fid', 1)} | "
                     f"{cell(row, 'kid', 4)} |")
    base = result.get("baselines") or {}
    if base:
        for label, key in (("input A (no-op)", "identity"), ("G at init", "g")):
            values = [b[key]["lowfreq_l1"] for b in base.values()]
            lines.append(f"| – | {label} | – | 0 | {len(values)} | {sum(values) / len(values):.4f} | – | – | – |")
    v = result.get("verdict") or {}
    if v.get("rules"):
        def num(x: Any, spec: str) -> str:
            return format(x, spec) if isinstance(x, float) and math.isfinite(x) else "n/a"
        gaps = "; ".join(f"{rule} {num(r['mean_gap'], '+.4f')} ± {num(r['gap_se'], '.4f')}"
                         for rule, r in v["rules"].items())
        lines.append("")
        lines.append(f"Mean lowfreq_l1 gap to batch 1 over the larger batches (± standard error): {gaps}. "
                     f"Recommended `optim.lr_scaling`: **{v['recommended']}** ({v['reason']}).")
    return "\n".join(lines) + "\n"


def _finite(value: Any) -> Any:
    """NaN (a metric not measured, a std of one seed) as JSON null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _write(out: Path, result: dict[str, Any]) -> None:
    tmp = out / ".scaling.json.tmp"
    tmp.write_text(json.dumps(_finite(result), indent=1))
    tmp.replace(out / "scaling.json")
    rows = result.get("table", [])
    if rows:
        with open(out / "scaling.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            for row in rows:
                writer.writerow({k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()})
        (out / "scaling.md").write_text(markdown(result))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    config_path = Path(args.config) if args.config else default_config()
    try:
        batches, rules, seeds = parse_plan(args)
        if args.threads < 0:
            raise UsageError(f"--threads: must be >= 0, got {args.threads}")
        runs = plan_runs(batches, rules, seeds)
        jobs = {run: build_job(config_path, args.overrides, batch=run[0], rule=run[1], seed=run[2]) for run in runs}
        device = choose_device(args.device)
    except UsageError as err:
        print(f"cutdist.bench scaling: {err}", file=sys.stderr)
        return 2
    import torch

    from cutdist.data import DataError, resolve_splits

    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    first = jobs[runs[0]]
    try:
        splits = resolve_splits(first.data)   # synthesises the demo shards once when data.synth_if_missing
        if not splits.test_gt:
            raise DataError(f"{first.data.root}: no testGT split; the scaling bench needs paired ground truth "
                            "(the synthetic demo domains have it)")
        uneven = [b for b in batches if splits.epoch_size % b]
        if uneven:
            raise DataError(f"--batches: {uneven} do not divide the {splits.epoch_size} samples (max(|A|, |B|)) of "
                            "an epoch, so those runs would see more images than the others")
    except DataError as err:
        print(f"cutdist.bench scaling: {err}", file=sys.stderr)
        return 2
    date = datetime.datetime.now(datetime.timezone.utc)
    out = Path(args.out) if args.out else Path("benchmarks/results") / f"scaling-{date:%Y%m%d-%H%M}"
    out.mkdir(parents=True, exist_ok=True)
    previous = json.loads((out / "scaling.json").read_text()) if (out / "scaling.json").is_file() else {}
    job = _job_record(first)
    changed = _changed_keys(previous.get("job") or {}, job)
    if changed:
        print(f"cutdist.bench scaling: --out {out}: its runs were made with another job ({changed[0]}: "
              f"{previous['job'].get(changed[0])!r} there, {job.get(changed[0])!r} now); resume with the same job "
              "and overrides, or use another --out", file=sys.stderr)
        return 2
    records = [r for r in previous.get("runs", []) if (r["global_batch"], r["rule"], r["seed"]) in jobs]
    done = {(r["global_batch"], r["rule"], r["seed"]) for r in records}
    epochs = first.optim.epochs + first.optim.epochs_decay
    result: dict[str, Any] = {
        "bench": "scaling", "config": str(config_path), "overrides": list(args.overrides), "batches": batches,
        "rules": rules, "seeds": seeds, "workers": 1, "equivalence": "one process, per-rank batch = global batch B "
        "(gradient-equivalent to W workers x B/W under DDP: see cutdist/bench/scaling.py)",
        "images_seen": epochs * splits.epoch_size, "epochs": [first.optim.epochs, first.optim.epochs_decay],
        "base_lr": first.optim.lr, "mode": first.model.mode, "lambda_x": first.loss.lambda_x,
        "crop": first.data.crop_size, "device": device.type, "device_name": device_name(device),
        "threads": torch.get_num_threads() if device.type == "cpu" else None, "torch": torch.__version__,
        "python": platform.python_version(), "started": previous.get("started") or date.isoformat(timespec="seconds"),
        "runs": records, "baselines": previous.get("baselines", {}), "job": job,
    }
    baselines: dict = {}
    runs_root = out / "runs" if args.keep_runs else Path(tempfile.mkdtemp(prefix="cutdist_scaling_"))
    title = (f"{first.model.mode} on {Path(first.data.root).name}, {result['images_seen']} images seen, "
             f"{len(seeds)} seeds, lr {first.optim.lr:g} at B=1")
    code = 0
    try:
        for run in runs:
            if run in done:
                continue
            b, rule, seed = run
            cfg = jobs[run]
            print(f"[cutdist.bench scaling] B={b} rule={rule} seed={seed} ...", file=sys.stderr, flush=True)
            record = run_one(cfg, splits, runs_root / f"b{b}-{rule}-seed{seed}", device, baselines)
            if not args.keep_runs:
                shutil.rmtree(runs_root / f"b{b}-{rule}-seed{seed}", ignore_errors=True)
            record.update({"global_batch": b, "rule": rule, "seed": seed, "workers": 1, "per_rank_batch": b,
                           "images_seen": record["steps"] * b})
            if str(seed) not in result["baselines"] and seed in baselines:
                result["baselines"][str(seed)] = baselines[seed]
            records.append(record)
            result["table"] = aggregate(records)
            result["verdict"] = verdict(records, rules, result["baselines"])
            _write(out, result)
            plot(result["table"], out / "scaling.png", title)
            print(f"[cutdist.bench scaling] B={b} rule={rule} seed={seed}: lowfreq_l1 {record['lowfreq_l1']:.4f} "
                  f"stripes {record['stripe_energy_ratio']:.3f} fid {record.get('fid', math.nan):.3f} "
                  f"({record['wall_s']} s)", file=sys.stderr, flush=True)
    except Exception as err:   # a failed run: the JSON says which, the finished runs are kept
        text = str(err).strip().splitlines()
        result["error"] = f"{type(err).__name__}: {text[0] if text else ''}"
        code = 1
    if not args.keep_runs:
        shutil.rmtree(runs_root, ignore_errors=True)
    result["table"] = aggregate(records)
    result["verdict"] = verdict(records, rules, result["baselines"]) if records else {}
    result["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    _write(out, result)
    if records:
        plot(result["table"], out / "scaling.png", title)
    print(json.dumps(_finite({"out": str(out), "table": result["table"], "verdict": result["verdict"],
                              **({"error": result["error"]} if "error" in result else {})})), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
