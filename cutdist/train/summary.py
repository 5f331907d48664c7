"""The end of a run in one place: the best FID and KID, at which epoch, the checkpoint that holds each, the final
ones, images seen and wall time, as ``summary.json`` in the run directory and as the driver's last console lines.

The authors' repo reports the *best* epoch's FID (people who took the last epoch's got 61-68 instead of 45.5);
here both are kept. During training rank 0's ``BestSoFar`` follows every evaluation and every report carries
``fid_best`` / ``kid_best`` with their step and epoch (so the final report, and each checkpoint's metrics.json,
knows them; a resumed run reads them back from its checkpoint). The checkpoint of step S is
``checkpoint_<S>`` (one is written at every evaluation); Ray keeps ``checkpoint.num_to_keep`` of them ranked by
FID, so the best-FID one is always kept, the best-KID one only when it is also among those kept: the summary
says ``null`` (and why) otherwise.

``cutdist.train.checkpoint.best_checkpoint_of_run(run_dir)`` (what ``translate --checkpoint RUN_DIR`` uses) reads
summary.json's best-FID checkpoint back.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

SUMMARY_FILE = "summary.json"
TRACKED = ("fid", "kid")


class BestSoFar:
    """The lowest FID and KID seen so far, with the step and epoch of the evaluation (and KID's std)."""

    def __init__(self) -> None:
        self.best: dict[str, dict[str, float]] = {}

    def update(self, metrics: dict[str, Any], step: int, epoch: float) -> None:
        for name in TRACKED:
            value = metrics.get(name)
            if value is None or not math.isfinite(value):
                continue
            if name not in self.best or value < self.best[name]["value"]:
                entry = {"value": float(value), "step": int(step), "epoch": float(epoch)}
                if f"{name}_std" in metrics:
                    entry["std"] = float(metrics[f"{name}_std"])
                self.best[name] = entry

    def as_metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, entry in self.best.items():
            out[f"{name}_best"] = entry["value"]
            out[f"{name}_best_step"] = entry["step"]
            out[f"{name}_best_epoch"] = entry["epoch"]
            if "std" in entry:
                out[f"{name}_best_std"] = entry["std"]
        return out

    @classmethod
    def from_metrics(cls, metrics: dict[str, Any] | None) -> "BestSoFar":
        """Back from a report (e.g. a checkpoint's metrics.json) that carried ``as_metrics()``."""
        tracker = cls()
        for name in TRACKED:
            if metrics and f"{name}_best" in metrics and f"{name}_best_step" in metrics:
                tracker.best[name] = {"value": float(metrics[f"{name}_best"]),
                                      "step": int(metrics[f"{name}_best_step"]),
                                      "epoch": float(metrics.get(f"{name}_best_epoch", math.nan))}
                if f"{name}_best_std" in metrics:
                    tracker.best[name]["std"] = float(metrics[f"{name}_best_std"])
        return tracker



def build_summary(final: dict[str, Any], *, run_dir: str, kept: list[str], latest: str | None, batch_size: int,
                  wall_s: float) -> dict[str, Any]:
    """summary.json's content from the last report's metrics (``final``) and the kept checkpoint paths."""
    from cutdist.train.checkpoint import checkpoint_dir_name

    kept_names = {Path(p).name: p for p in kept}
    tracker = BestSoFar.from_metrics(final)
    best: dict[str, Any] = {}
    for name in TRACKED:
        entry = tracker.best.get(name)
        if entry is None:
            best[name] = None
            continue
        ckpt = kept_names.get(checkpoint_dir_name(entry["step"]))
        best[name] = {**entry, "checkpoint": ckpt}
        if ckpt is None:
            best[name]["checkpoint_note"] = (f"{checkpoint_dir_name(entry['step'])} was not kept (checkpoints are "
                                             "kept by FID; raise checkpoint.num_to_keep)")
    step = int(final.get("step", 0))
    world = int(final.get("world_size", 1))
    last_eval = {k: final[k] for k in ("fid", "kid", "kid_std", "fid_backbone", "fid_real", "fid_n_images")
                 if k in final}
    return {
        "run_dir": run_dir, "best": best,
        "final": {**last_eval, "step": step, "epoch": final.get("epoch"),
                  "evaluated_at_end": "fid" in final},
        # counted by the loop across restarts at any world size (older reports: as if all at the last one)
        "images_seen": int(final.get("images_seen", step * batch_size * world)), "world_size": world,
        "per_rank_batch": batch_size,
        "wall_s": round(wall_s, 1), "latest_checkpoint": latest, "kept_checkpoints": sorted(kept),
    }


def write_summary(summary: dict[str, Any], directory: str | Path) -> Path:
    from cutdist.model.io import write_atomic

    path = Path(directory) / SUMMARY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, lambda tmp: tmp.write_text(json.dumps(summary, indent=1, default=str)))


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s"


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The driver's last console lines."""
    lines = []
    for name, label in (("fid", "best FID"), ("kid", "best KID")):
        entry = summary["best"].get(name)
        if entry is None:
            continue
        value = f"{entry['value']:.4f}" if name == "fid" else f"{entry['value']:.5f} ± {entry.get('std', 0.0):.5f}"
        where = entry["checkpoint"] or entry.get("checkpoint_note", "not kept")
        lines.append(f"  {label:<10} {value} at epoch {entry['epoch']:g} (step {entry['step']})  {where}")
    final = summary["final"]
    if "fid" in final:
        kid = f", KID {final['kid']:.5f} ± {final.get('kid_std', 0.0):.5f}" if "kid" in final else ""
        lines.append(f"  final      FID {final['fid']:.4f}{kid} at epoch {final['epoch']:g} (step {final['step']})")
    lines.append(f"  seen       {summary['images_seen']} images ({summary['world_size']} workers x batch "
                 f"{summary['per_rank_batch']}) in {_duration(summary['wall_s'])}")
    return lines
