"""Turn the JSON lines of ``benchmarks/gpu.sh`` (train_step.jsonl, grads.jsonl, data_feed.jsonl) into a markdown summary.

    python benchmarks/summarize.py RESULTS/train_step.jsonl [RESULTS/grads.jsonl] [RESULTS/data_feed.jsonl] > RESULTS/summary.md

Rows are sorted by mode, batch, compile, precision, channels_last; failed and skipped configurations are listed
with their arguments. The anchor (the authors' code on one H200, from issue 7) is quoted beside our eager and best
rows. Standard library only.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

# Issue 7's anchor: the authors' CUT code, 256², one H200, images/s (and GiB).
ANCHOR = [("batch 1 fp32", 1, "fp32", "10-16 img/s (2.3 GiB)"), ("batch 8 fp32", 8, "fp32", "~43 img/s (16.7 GiB)"),
          ("batch 8 bf16 autocast", 8, "bf16", "53-55 img/s (8.6 GiB)")]
REFERENCE_BEST = 55.0
GOAL = 200.0


def read_lines(paths: list[str]) -> list[dict]:
    rows = []
    for path in paths:
        for number, text in enumerate(Path(path).read_text().splitlines(), 1):
            if not text.strip():
                continue
            try:
                rows.append(json.loads(text))
            except json.JSONDecodeError as err:
                raise SystemExit(f"summarize.py: {path}:{number}: not a JSON line ({err.msg})") from None
    return rows


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _compile_label(row: dict) -> str:
    if not row.get("compile"):
        return "eager"
    mode = row.get("compile_mode") or "default"
    backend = row.get("compile_backend") or "inductor"
    label = "compiled" if mode == "default" else f"compiled ({mode})"
    return label if backend == "inductor" else f"{label} [{backend}]"


def _precision_label(row: dict) -> str:
    """bf16 keeps D in fp32 unless the line says bf16_discriminator (D under autocast too)."""
    precision = row.get("precision", "")
    return f"{precision} (D bf16)" if row.get("bf16_discriminator") else precision


def _key(row: dict) -> tuple:
    return (row.get("mode", ""), row.get("batch", 0), bool(row.get("compile")), row.get("compile_mode") or "",
            _precision_label(row), bool(row.get("channels_last")), bool(row.get("fused_adam")))


def train_table(rows: list[dict]) -> list[str]:
    ok = sorted((r for r in rows if "error" not in r), key=_key)
    if not ok:
        return ["No train-step configuration produced a result."]
    baseline = {(r["mode"], r["batch"]): r["images_per_s"] for r in ok
                if not r["compile"] and r["precision"] == "fp32" and not r["channels_last"]}
    out = ["| mode | batch | precision | channels_last | compile | fused Adam | images/s | ms/step (median) | "
           "TFLOP/s | peak GiB | x eager fp32 | sync-free | note |",
           "|---|---:|---|---|---|---|---:|---:|---:|---:|---:|---|---|"]
    for r in ok:
        base = baseline.get((r["mode"], r["batch"]))
        speedup = f"{r['images_per_s'] / base:.2f}" if base else "-"
        notes = []
        if r.get("compile_fallbacks"):
            notes.append("EAGER FALLBACK: " + "; ".join(f"{k}: {v}" for k, v in r["compile_fallbacks"].items()))
        if r.get("frames_compiled_while_timed"):
            notes.append(f"{r['frames_compiled_while_timed']} recompiles while timed")
        if r.get("losses_finite") is False:
            notes.append("NON-FINITE LOSS")
        if r.get("compile"):
            notes.append(f"warm-up {r.get('warmup_s', '-')} s")
        sync = r.get("host_sync_free")
        sync_text = "-" if sync is None else ("yes" if sync is True else f"NO: {sync}")
        out.append(f"| {r['mode']} | {r['batch']} | {_precision_label(r)} | {'yes' if r['channels_last'] else 'no'} | "
                   f"{_compile_label(r)} | {'yes' if r['fused_adam'] else 'no'} | {_fmt(r['images_per_s'])} | "
                   f"{_fmt(r['ms_per_step'])} ({_fmt(r.get('ms_per_step_median'))}) | {_fmt(r.get('tflops_per_s'))} | "
                   f"{_fmt(r.get('peak_mem_gib'), 2)} | {speedup} | {sync_text} | {' '.join(notes)} |")
    return out


def anchor_section(rows: list[dict]) -> list[str]:
    ok = [r for r in rows if "error" not in r and r.get("mode") == "cut"]
    out = ["| setting | authors' code, H200 (issue 7) | ours, eager, same setting | ours, best at this batch |",
           "|---|---|---|---|"]
    for label, batch, precision, reference in ANCHOR:
        same = [r for r in ok if r["batch"] == batch and r["precision"] == precision and not r["compile"]
                and not r["channels_last"]]
        at_batch = [r for r in ok if r["batch"] == batch]
        best = max(at_batch, key=lambda r: r["images_per_s"], default=None)
        ours = ", ".join(f"{r['images_per_s']:.1f} img/s ({r['peak_mem_gib']:.1f} GiB)" for r in same) or "-"
        best_text = (f"{best['images_per_s']:.1f} img/s: {_precision_label(best)}, "
                     f"{'NHWC' if best['channels_last'] else 'NCHW'}, {_compile_label(best)}") if best else "-"
        out.append(f"| {label} | {reference} | {ours} | {best_text} |")
    # the goal asks for fp32's training behaviour: a bf16 D failed that on the demo (results/cpu-2026-11-27)
    best = max((r for r in ok if not r.get("bf16_discriminator")), key=lambda r: r["images_per_s"], default=None)
    if best:
        out.append("")
        out.append(f"Best CUT setting (D in fp32): **{best['images_per_s']:.1f} images/s** (batch {best['batch']}, "
                   f"{_precision_label(best)}, {'channels_last' if best['channels_last'] else 'NCHW'}, "
                   f"{_compile_label(best)}, fused Adam {'on' if best['fused_adam'] else 'off'}) = "
                   f"{best['images_per_s'] / REFERENCE_BEST:.2f}x the reference's best ({REFERENCE_BEST:.0f} img/s); "
                   f"goal {GOAL:.0f} img/s: {'met' if best['images_per_s'] >= GOAL else 'not met'}.")
    return out


def feed_table(rows: list[dict]) -> list[str]:
    out = []
    for r in rows:
        if "error" in r:
            continue
        if r.get("bench") == "decode":
            out.append(f"- decode + augment (resize {r['load']} -> crop {r['crop']}) on {r['decode_device_name']}: "
                       f"**{r['decode_augment_images_per_s']:.0f} images/s** (batches of {r['decode_batch']}); one "
                       f"CPU core (PIL): {r['cpu_decode_augment_images_per_s_per_core']:.0f} images/s -> "
                       f"{r['decode_speedup_vs_one_core']:.1f} cores' worth; skipped {r['decode_skipped']}, "
                       f"CPU-decoded {r['decode_cpu_fallback']}")
        elif r.get("bench") == "data":
            out.append(f"- CPU loader (unpaired shard stream), {r['workers']} worker(s), batch {r['batch_size']} "
                       f"pairs: **{r['images_per_s']:.0f} images/s** "
                       f"({r['images_per_s'] / max(r['workers'], 1):.0f} per worker), start-up {r['startup_s']:.1f} s")
    return out or ["No data-feed measurement produced a result."]


def grads_table(rows: list[dict]) -> list[str]:
    """Issue 11's gradient checks: per switch, the largest difference from the plain fp32 step per net."""
    ok = [r for r in rows if "error" not in r]
    if not ok:
        return ["No gradient check produced a result."]
    out = ["| switch | held to | D | G | F | tolerance | within | cases | note |", "|---|---|---:|---:|---:|---:|---|---:|---|"]
    for r in ok:
        metric = r.get("metric", "max_rel_diff")
        values = r.get(metric, r.get("max_rel_diff"))
        if isinstance(values, dict):
            cells = [f"{values.get(n, float('nan')):.2e}" for n in ("d", "g", "f")]
        else:   # decode_on_device: pixels
            grads = r.get("max_rel_diff", {})
            cells = [f"{grads.get(n, float('nan')):.2e}" for n in ("d", "g", "f")]
            cells[0] = f"pixels {values} / grads {cells[0]}"
        notes = []
        if any(c.get("compile_fallbacks") for c in r.get("cases", [])):
            notes.append("EAGER FALLBACK")
        redrawn = sum(len(c.get("draws", [])) > 1 for c in r.get("cases", []))
        if redrawn:
            notes.append(f"{redrawn} case(s) redrawn")
        if r.get("tf32"):
            notes.append("TF32 on")
        out.append(f"| {r['switch']} | {metric} | {' | '.join(cells)} | {r['tolerance']:g} | "
                   f"{'yes' if r['within_tolerance'] else '**NO**'} | {len(r.get('cases', []))} | {' '.join(notes)} |")
    return out


def failures(rows: list[dict]) -> list[str]:
    out = []
    for r in rows:
        if "error" in r:
            what = r.get("args") or " ".join(f"{k}={r[k]}" for k in ("mode", "batch", "precision", "channels_last",
                                                                     "compile") if k in r)
            out.append(f"- {r.get('bench', '?')} `{what}`: {r['error']}")
    return out


def summarize(rows: list[dict]) -> str:
    train = [r for r in rows if r.get("bench") == "train-step"]
    feed = [r for r in rows if r.get("bench") in ("data", "decode")]
    grads = [r for r in rows if r.get("bench") == "grads"]
    ok = [r for r in train if "error" not in r]
    devices = sorted({r["device_name"] for r in ok}) or ["?"]
    dates = sorted(r["date"] for r in ok)
    versions = sorted({f"torch {r['torch']}, CUDA {r.get('cuda')}, Python {r.get('python')}" for r in ok})
    lines = [f"# CUT train step on {', '.join(devices)}", ""]
    if dates:
        lines.append(f"{dates[0]} .. {dates[-1]}; {'; '.join(versions)}.")
    sample = ok[0] if ok else {}
    if sample:
        lines.append(f"Model: ngf {sample['ngf']}, ndf {sample['ndf']}, {sample['n_blocks']} blocks, "
                     f"{sample['num_patches']} patches, taps {sample['nce_layers']}, antialias {sample['antialias']}, "
                     f"{sample['size']}² images. One process per row (`python -m cutdist.bench train-step`); images/s "
                     f"= batch x timed steps / time; TFLOP/s from FlopCounterMode on one eager step.")
    lines += ["", "## Train step", ""] + train_table(train)
    lines += ["", "## Against the anchor", ""] + anchor_section(train)
    if grads:
        lines += ["", "## Gradient checks (`bench grads`: each switch vs the plain fp32 step, same weights/batch/"
                  "patch ids/flip)", ""] + grads_table(grads)
    lines += ["", "## Data feed", ""] + feed_table(feed)
    failed = failures(train + grads + feed)
    if failed:
        lines += ["", "## Failed or skipped", ""] + failed
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    paths = list(sys.argv[1:] if argv is None else argv)
    if not paths:
        print("usage: python benchmarks/summarize.py train_step.jsonl [data_feed.jsonl ...]", file=sys.stderr)
        return 2
    for path in paths:
        if not Path(path).is_file():
            print(f"summarize.py: no such file {path}", file=sys.stderr)
            return 2
    sys.stdout.write(summarize(read_lines(paths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
