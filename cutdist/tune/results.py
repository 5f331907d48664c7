"""What a finished sweep leaves in its directory: the leaderboard, the FID-vs-hyperparameter plot, the best job.

- ``leaderboard.parquet`` / ``leaderboard.csv``: one row per trial, best first by the sweep's ``metric`` (fid or
  kid): ``rank``, ``trial_id``, ``status``, ``metric``, ``best_fid``, ``best_kid`` (each the trial's lowest over its
  evaluations), ``best_kid_std`` (KID's std over subsets at that evaluation), ``fid_backbone``, ``fid_real``, ``epochs_reached``, ``steps_reached``,
  ``planned_steps``, ``evaluations``, ``best_checkpoint``, ``run_dir``, ``error``, then one column per searched
  key (the value's name for named choices such as NCE layer subsets).
  ``status``: ``TERMINATED`` (trained to its planned end), ``STOPPED_EARLY`` (the scheduler, e.g. ASHA, stopped
  it before its end), ``ERROR`` (the trial failed; ``error`` holds the last line of the cause), or
  ``INCOMPLETE`` (the sweep was interrupted before the trial ended; ``--resume`` continues it).
- ``fid_vs_hparams.png``: one panel per searched key, each trial's best FID (best KID for ``metric: kid``) (hollow: stopped early; red x on
  the top edge: failed, no FID), the y label naming the FID backbone.
- ``best_config.yaml``: the best trial's full job (every field explicit), accepted by ``python -m cutdist.train``.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from cutdist.config import JobConfig
from cutdist.redact import redact_uri
from cutdist.tune.space import Space

LEADERBOARD = "leaderboard"
PLOT = "fid_vs_hparams.png"
BEST_CONFIG = "best_config.yaml"
TERMINATED, STOPPED_EARLY, ERROR, INCOMPLETE = "TERMINATED", "STOPPED_EARLY", "ERROR", "INCOMPLETE"
TRIAL_DIR_PREFIX = "trial_"


def trial_dirname(trial: Any) -> str:
    """Tune's directory name for a trial (``trial_<id>``: short, and the id can be read back)."""
    return f"{TRIAL_DIR_PREFIX}{trial.trial_id}"


@dataclass
class TrialSummary:
    trial_id: str
    sampled: dict[str, Any]       # the trial's Tune config (names for named choices)
    status: str
    metric: str                   # the sweep's metric: fid | kid (what best_checkpoint and the ranking follow)
    best_fid: float
    best_kid: float
    best_kid_std: float
    fid_backbone: str
    fid_real: bool | None
    epochs_reached: float
    steps_reached: int
    planned_steps: int
    evaluations: int
    best_checkpoint: str
    run_dir: str
    error: str

    @property
    def score(self) -> float:
        """The trial's best value of the sweep's metric (NaN: none reported)."""
        return self.best_kid if self.metric == "kid" else self.best_fid

    def row(self, space: Space) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "sampled"}
        for key in space.params:
            out[key] = self.sampled.get(key)
        return out


def error_line(error: BaseException | None) -> str:
    """The last line of an error's text that says what went wrong (``Type: message``), else its type."""
    if error is None:
        return ""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    causes = [line for line in lines if ": " in line and line.split(": ", 1)[0].split(".")[-1].endswith(
        ("Error", "Exception"))]
    return (causes or lines or [type(error).__name__])[-1]


def summarise(results: Any, space: Space, planned: Callable[[JobConfig], int], sweep_dir: str,
              tune_status: dict[str, str] | None = None) -> list[TrialSummary]:
    """One summary per trial of a Ray Tune ``ResultGrid``; ``planned(cfg)`` is a trial's planned last step;
    ``tune_status``: Tune's status of each trial id (a trial neither TERMINATED nor ERROR is INCOMPLETE)."""
    from cutdist.tune.trial import trial_job

    summaries = []
    for result in results:
        trial_id = Path(result.path).name.removeprefix(TRIAL_DIR_PREFIX)
        sampled = {k: v for k, v in (result.config or {}).items() if k in space.params}
        cfg = trial_job(space, sampled, sweep_dir, trial_id)
        frame = result.metrics_dataframe
        metric = space.metric
        rows = [] if frame is None or metric not in frame else frame[frame[metric].notna()].to_dict("records")
        best = min(rows, key=lambda r: r[metric]) if rows else {}
        best_kid = min(rows, key=lambda r: r.get("kid", math.inf)) if rows and "kid" in rows[0] else {}
        steps = int(max((r.get("step", 0) for r in rows), default=0))
        planned_steps = planned(cfg)
        if result.error is not None:
            status = ERROR
        elif (tune_status or {}).get(trial_id, "TERMINATED") not in ("TERMINATED", "ERROR"):
            status = INCOMPLETE   # the sweep was interrupted (e.g. Ctrl-C) before this trial finished
        elif rows and steps >= planned_steps:
            status = TERMINATED
        elif rows:
            status = STOPPED_EARLY
        else:
            status = INCOMPLETE
        summaries.append(TrialSummary(
            trial_id=trial_id, sampled=sampled, status=status, metric=metric,
            best_fid=float(min(r["fid"] for r in rows)) if rows else math.nan,
            best_kid=float(best_kid["kid"]) if best_kid else math.nan,
            best_kid_std=float(best_kid.get("kid_std", math.nan)) if best_kid else math.nan,
            fid_backbone=str(best.get("fid_backbone", "")), fid_real=bool(best["fid_real"]) if best else None,
            epochs_reached=float(max((r.get("epoch", 0.0) for r in rows), default=0.0)), steps_reached=steps,
            planned_steps=planned_steps, evaluations=len(rows),
            best_checkpoint=full_uri(str(best.get("checkpoint_path") or ""), sweep_dir),
            run_dir=f"{cfg.storage_path}/{cfg.name}", error=error_line(result.error)))
    summaries.sort(key=lambda s: (math.isnan(s.score), s.score, s.trial_id))
    return summaries


def full_uri(path: str, sweep_dir: str) -> str:
    """Ray gives object-storage paths without their scheme (``bucket/prefix/...``): put it back."""
    from urllib.parse import urlparse

    from cutdist.storage import is_object_store

    if path and "://" not in path and is_object_store(sweep_dir):
        return f"{urlparse(sweep_dir).scheme}://{path}"
    return path


def write_leaderboard(summaries: list[TrialSummary], space: Space, sweep_dir: str | Path) -> tuple[Path, Path]:
    import pandas as pd

    frame = pd.DataFrame([dict(rank=i + 1, **s.row(space)) for i, s in enumerate(summaries)])
    for key in space.params:   # mixed-type columns (names, numbers) stay readable in parquet
        if key in frame and frame[key].map(type).nunique() > 1:
            frame[key] = frame[key].astype(str)
    parquet, csv = Path(sweep_dir) / f"{LEADERBOARD}.parquet", Path(sweep_dir) / f"{LEADERBOARD}.csv"
    frame.to_parquet(parquet, index=False)
    frame.to_csv(csv, index=False)
    return parquet, csv


def plot_fid_vs_hparams(summaries: list[TrialSummary], space: Space, path: str | Path, title: str = "") -> Path:
    """One panel per searched key: best FID of each trial against the trial's value (see the module docstring)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    keys = list(space.params)
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.8), squeeze=False, sharey=True)
    scored = [s for s in summaries if not math.isnan(s.score)]
    fids = [s.score for s in scored]
    label = "KID" if space.metric == "kid" else "FID"
    if fids and min(fids) > 0 and max(fids) / min(fids) > 50:   # a diverged trial would flatten the others
        axes[0][0].set_yscale("log")
    backbones = sorted({s.fid_backbone for s in scored if s.fid_backbone})
    for ax, key in zip(axes[0], keys):
        p = space.params[key]
        if p.is_set:
            labels = [str(v) for v in (p.names if p.names is not None else p.values)]

            def position(value, labels=labels):
                return labels.index(str(value))
            ax.set_xticks(range(len(labels)), labels, rotation=30 if max(map(len, labels)) > 6 else 0)
            ax.set_xlim(-0.5, len(labels) - 0.5)
        else:
            def position(value):
                return float(value)
            if p.log_scale:
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())   # minor labels overlap on a short decade
            pad = (p.high / p.low) ** 0.05 if p.log_scale else (p.high - p.low) * 0.05
            ax.set_xlim(p.low / pad, p.high * pad) if p.log_scale else ax.set_xlim(p.low - pad, p.high + pad)
        for status, style in ((TERMINATED, dict(marker="o", color="tab:blue", label="trained to the end")),
                              (STOPPED_EARLY, dict(marker="o", facecolors="none", edgecolors="tab:orange",
                                                   label="stopped early"))):
            points = [(position(s.sampled[key]), s.score) for s in scored if s.status == status and key in s.sampled]
            if points:
                ax.scatter(*zip(*points), s=40, **style)
        failed = [position(s.sampled[key]) for s in summaries if s.status == ERROR and key in s.sampled]
        if failed:
            top = ax.get_ylim()[1] if scored else 1.0
            ax.scatter(failed, [top] * len(failed), marker="x", color="tab:red", s=50, clip_on=False,
                       label=f"failed (no {label})")
        ax.set_xlabel(key + (" (log)" if p.log_scale else ""))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"best {label}" + (f"\n{'; '.join(backbones)}" if backbones else ""), fontsize=8)
    if not scored:
        fig.text(0.5, 0.5, f"no trial reported a {label}", ha="center", va="center", color="tab:red")
    handles = {h.get_label(): h for ax in axes[0] for h in ax.collections}
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="upper right", fontsize=8)
    fig.suptitle(title or f"{label} vs hyperparameters", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.88, 0.95))
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_best_config(best: TrialSummary, space: Space, path: str | Path, *, name: str, storage_path: str,
                      final_path: str | None = None) -> Path:
    """The best trial's job as a ready-to-run YAML (every field explicit), named ``name``; ``final_path``: where
    the file will be read from when it is copied elsewhere (object storage), for its header."""
    cfg = space.trial_config(best.sampled)
    cfg.name = name
    cfg.storage_path = storage_path
    values = ", ".join(f"{k}={best.sampled[k]}" for k in space.params if k in best.sampled)
    final_path = final_path or os.path.abspath(path)
    header = (f"# Best trial {best.trial_id} of the sweep in {final_path.rsplit('/', 1)[0]}:\n"
              f"#   {values}\n#   ranked by {best.metric.upper()}: best FID {best.best_fid:.4f}, best KID "
              f"{best.best_kid:.5f} [{best.fid_backbone}], trained to epoch "
              f"{best.epochs_reached:g} ({best.status}); its checkpoint: {best.best_checkpoint}\n"
              f"# Train it: python -m cutdist.train --config {final_path}\n")
    path = Path(path)
    path.write_text(redact_uri(header + cfg.to_yaml()))   # never a URL's credentials on disk
    return path
