"""Training checkpoints: the only code that writes, reads, resolves, validates and prunes them.

A checkpoint is a directory ``checkpoint_<step>`` (nine digits) in the run directory, holding

- ``model.pt``: G, D, F and the job's config (``cutdist.model.io``, the file ``translate`` also reads);
- ``train_state.pt``::

    {"format": "cutdist-train-v1", "step", "epoch", "images_in_epoch", "images_seen", "world_size", "strategy",
     "optimizers": {"d": Adam state_dict, "gf": Adam state_dict},   # full (consolidated) torch-Adam format
     "best_fid": float | None, "rng": {"torch", "numpy", "python"}}

  (checkpoints written before the schedule moved to ``cutdist.schedule`` also hold an ``lr_schedule`` entry,
  which nothing reads: the lr is a function of the epoch and the job's ``optim`` section; those written before
  ``images_seen`` was counted lack it: it is then taken as step x the checkpoint's images per step);
- ``metrics.json``: the metrics reported with it, for people.

Everything in the ``.pt`` files is plain tensors and Python scalars, written atomically
(``cutdist.model.io.write_atomic``) and read with ``torch.load(weights_only=True)``. Optimizer states are stored
consolidated (as one process's torch Adam would hold them) whatever the strategy and world size, so a checkpoint
written by N DDP or DeepSpeed workers resumes on M workers of either.

Retention: ``checkpoint.num_to_keep`` checkpoints ranked by ``SCORE_KEY`` (the FID measured with that checkpoint,
+inf when none was), always plus the latest: Ray Train's ``CheckpointConfig`` (``ray_checkpoint_config``) for Ray
runs, ``retain`` for a plain process (``LocalContext``), the same rule. ``best_checkpoint_of_run`` picks a finished
run's best one (``translate --checkpoint RUN_DIR``); ``newest_complete_checkpoint`` the newest loadable one (resume
after a lost node).
"""
from __future__ import annotations

import json
import math
import random
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cutdist.config import ConfigError, JobConfig
from cutdist.model.io import MODEL_FILE, ModelIOError, load_model, save_model, write_atomic
from cutdist.model.networks import CUTNets
from cutdist.redact import redact_uri
from cutdist.schedule import Position

TRAIN_STATE_FILE = "train_state.pt"
METRICS_FILE = "metrics.json"
TRAIN_STATE_FORMAT = "cutdist-train-v1"
CHECKPOINT_PREFIX = "checkpoint_"
SCORE_KEY = "ckpt_fid"   # the reported metric checkpoints are ranked by (lower is better)

# Keys whose change makes a checkpoint's weights unloadable (or F's taps meaningless) in a new job.
ARCHITECTURE_KEYS = ("model.ngf", "model.ndf", "model.n_blocks", "model.n_layers_d", "model.antialias",
                     "model.netf_nc", "loss.nce_layers")


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from; ``str(err)`` is one line naming the path."""


def checkpoint_dir_name(step: int) -> str:
    """Name of the checkpoint written after ``step`` steps (sortable; the step is part of the name)."""
    return f"{CHECKPOINT_PREFIX}{step:09d}"


def is_checkpoint_dir(path: Path) -> bool:
    return (path / MODEL_FILE).is_file() and (path / TRAIN_STATE_FILE).is_file()


# ---------------------------------------------------------------------------------------------------- write

def capture_rng() -> dict[str, Any]:
    py_state = random.getstate()
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_state[0], "state": list(py_state[1]),
                   "gauss_next": py_state[2]},
    }


def restore_rng(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    n = rng["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = rng["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))


def write_checkpoint(ckpt_dir: Path, *, nets: CUTNets, cfg: JobConfig, position: Position, world_size: int,
                     strategy: str, optimizers: dict[str, dict], best_fid: float | None,
                     metrics: dict[str, Any]) -> Path:
    """All three files of a checkpoint into ``ckpt_dir`` (rank 0; ``optimizers`` already consolidated)."""
    ckpt_dir = Path(ckpt_dir)
    save_model(ckpt_dir, nets, cfg, position.step, position.epoch, source="cutdist.train")
    state = {"format": TRAIN_STATE_FORMAT, "step": position.step, "epoch": position.epoch,
             "images_in_epoch": position.images_in_epoch, "images_seen": position.images_seen,
             "world_size": world_size, "strategy": strategy,
             "optimizers": optimizers, "best_fid": best_fid, "rng": capture_rng()}
    write_atomic(ckpt_dir / TRAIN_STATE_FILE, lambda tmp: torch.save(state, tmp))
    write_atomic(ckpt_dir / METRICS_FILE, lambda tmp: tmp.write_text(json.dumps(metrics, indent=2, default=str)))
    return ckpt_dir


def staging_dir() -> Path:
    """A fresh temporary directory for a checkpoint on its way to the runtime (removed after the report)."""
    return Path(tempfile.mkdtemp(prefix="cutdist_ckpt_"))


# ----------------------------------------------------------------------------------------------------- read

def load_train_state(ckpt_dir: Path, map_location: str | torch.device = "cpu", *, mmap: bool = False) -> dict[str, Any]:
    """``train_state.pt`` (weights only); ``mmap=True`` maps its tensors instead of reading them (the driver's
    check before Ray starts)."""
    path = Path(ckpt_dir) / TRAIN_STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{ckpt_dir}: no {TRAIN_STATE_FILE} (not a cutdist training checkpoint)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:  # a truncated or foreign file: say which
        raise CheckpointError(f"{path}: unreadable ({err.__class__.__name__}: {str(err).splitlines()[0]})") from None
    if not isinstance(state, dict) or state.get("format") != TRAIN_STATE_FORMAT:
        raise CheckpointError(f"{path}: format is not {TRAIN_STATE_FORMAT}")
    return state


@dataclass
class Restored:
    """A checkpoint read for resuming: ``model`` is model.pt's payload, ``train`` train_state.pt's, ``metrics``
    metrics.json's (the report it was written with; {} when absent or unreadable: it is for people)."""
    path: Path
    model: dict[str, Any]
    train: dict[str, Any]
    metrics: dict[str, Any]

    @property
    def position(self) -> Position:
        step = self.train["step"]
        seen = self.train.get("images_seen")
        if seen is None:   # written before the count was kept: step x that run's images per step
            saved = self.model.get("config", {})
            batch = saved.get("data", {}).get("batch_size", 1)
            sincut = saved.get("model", {}).get("mode") == "sincut"   # its batch is the global one
            seen = step * batch * (1 if sincut else self.train.get("world_size", 1))
        return Position(step, self.train["epoch"], self.train["images_in_epoch"], seen)

    @property
    def best_fid(self) -> float | None:
        return self.train.get("best_fid")


def read_checkpoint(ckpt_dir: str | Path, cfg: JobConfig, *, mmap: bool = False) -> Restored:
    """Read and validate a checkpoint directory for resuming ``cfg``: both files readable, the architecture the
    job's, G, D and F all there. Raises ``CheckpointError`` / ``ConfigError`` / ``ModelIOError`` (one line).
    ``mmap``: map the files' tensors rather than read them (the driver, which only checks: the workers are the
    ones that read the weights)."""
    ckpt_dir = Path(ckpt_dir)
    model_state, _ = load_model(ckpt_dir, map_location="cpu", mmap=mmap)
    check_compatible(model_state["config"], cfg, ckpt_dir)
    for name in ("g", "d", "f"):
        if model_state.get(name) is None:
            raise CheckpointError(f"checkpoint.resume_from: {ckpt_dir} holds no {name.upper()} weights")
    return Restored(ckpt_dir, model_state, load_train_state(ckpt_dir, mmap=mmap), read_metrics(ckpt_dir))


def read_metrics(ckpt_dir: str | Path) -> dict[str, Any]:
    """A checkpoint's metrics.json ({} when absent or unreadable)."""
    try:
        metrics = json.loads((Path(ckpt_dir) / METRICS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return metrics if isinstance(metrics, dict) else {}


def checkpoint_step(name: str) -> int | None:
    match = re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)", name)
    return int(match.group(1)) if match else None


def checkpoints_in(fs, run_path: str) -> list[tuple[int, str]]:
    """``(step, path)`` of every ``checkpoint_<step>`` directory under a run directory on any pyarrow file
    system, oldest first, complete or not ([] when the run directory does not exist)."""
    import pyarrow.fs as pafs

    found = []
    for info in fs.get_file_info(pafs.FileSelector(run_path, allow_not_found=True, recursive=False)):
        step = checkpoint_step(info.base_name) if info.type == pafs.FileType.Directory else None
        if step is not None:
            found.append((step, info.path))
    return sorted(found)


def read_metrics_in(fs, ckpt_path: str) -> dict[str, Any]:
    """``read_metrics`` on any pyarrow file system: a checkpoint's metrics.json ({} when absent or unreadable)."""
    try:
        with fs.open_input_stream(f"{ckpt_path}/{METRICS_FILE}") as src:
            metrics = json.loads(src.read().decode())
    except (OSError, ValueError):
        return {}
    return metrics if isinstance(metrics, dict) else {}


def newest_complete_checkpoint(fs, run_path: str, *, known: str | None = None):
    """``(filesystem, path)`` of the newest checkpoint under a run directory on any pyarrow file system that
    is complete (both ``.pt`` files there and loadable); ``known`` (a checkpoint path Ray restored) counts as
    complete. None when there is none. A checkpoint cut short by a lost node is passed over."""
    known_step = checkpoint_step(Path(known).name) if known else None
    for step, path in reversed(checkpoints_in(fs, run_path)):
        if known_step is not None and step <= known_step:
            break
        with tempfile.TemporaryDirectory(prefix="cutdist_probe_") as tmp:
            try:
                for name in (MODEL_FILE, TRAIN_STATE_FILE):
                    with fs.open_input_stream(f"{path}/{name}") as src, open(Path(tmp) / name, "wb") as out:
                        while chunk := src.read(1 << 22):
                            out.write(chunk)
                load_train_state(Path(tmp))
                torch.load(Path(tmp) / MODEL_FILE, map_location="cpu", weights_only=True)
            except (OSError, CheckpointError, RuntimeError, EOFError, ValueError):
                continue
        return fs, path
    return (fs, known) if known else None


def run_end(result) -> tuple[str | None, dict[str, Any]]:
    """(path, metrics) of a finished run's last checkpoint, from Ray's ``Result``: its checkpoint and metrics,
    unless the run directory holds a newer complete checkpoint, then that one with its metrics.json. A worker
    group restarted once the run was at its end (an elastic resize, a failure after the last report) resumes
    from the last checkpoint, has nothing to train and reports nothing, so Ray's last registered checkpoint
    can be older than the one that run ended with (the same gap ``RayContext.resume_checkpoint`` closes)."""
    known = result.checkpoint.path if result.checkpoint else None
    found = newest_complete_checkpoint(result.filesystem, result.path, known=known) if result.path else None
    if found is None or found[1] == known:
        return known, dict(result.metrics or {})
    fs, path = found
    # metrics.json is optional: else the step, from the name
    return path, read_metrics_in(fs, path) or {"step": checkpoint_step(Path(path).name)}


def best_checkpoint_of_run(run_dir: str | Path) -> tuple[Path, str] | None:
    """(checkpoint, why) of a run directory's best checkpoint: summary.json's best FID, else the lowest FID in the
    kept checkpoints' metrics.json, else (no evaluation) the latest; None when it holds no checkpoint."""
    from cutdist.train.summary import SUMMARY_FILE

    run_dir = Path(run_dir)
    path = run_dir / SUMMARY_FILE
    if path.is_file():
        try:
            best = (json.loads(path.read_text()).get("best") or {}).get("fid") or {}
        except ValueError:
            best = {}
        name = Path(best.get("checkpoint") or "").name
        if name and (run_dir / name / MODEL_FILE).is_file():
            return run_dir / name, f"best FID {best['value']:.4f} at epoch {best['epoch']:g} ({SUMMARY_FILE})"
    scored = []
    for child in sorted(run_dir.glob(f"{CHECKPOINT_PREFIX}*")):
        if not (child / MODEL_FILE).is_file():
            continue
        fid = read_metrics(child).get("fid")
        if isinstance(fid, (int, float)) and math.isfinite(fid):
            scored.append((fid, child))
    if scored:
        fid, child = min(scored)
        return child, f"lowest FID {fid:.4f} among the kept checkpoints"
    latest = [c for c in sorted(run_dir.glob(f"{CHECKPOINT_PREFIX}*")) if (c / MODEL_FILE).is_file()]
    if latest:
        return latest[-1], "the latest checkpoint: no FID was measured"
    return None


def check_compatible(saved: dict[str, Any], cfg: JobConfig, where: Path) -> None:
    """Refuse to resume a checkpoint whose architecture differs from the job's, naming the first key."""
    keys = ARCHITECTURE_KEYS
    if "sincut" in (saved.get("model", {}).get("mode"), cfg.model.mode):   # other nets; the crop sizes them
        keys = ("model.mode", "data.crop_size", *ARCHITECTURE_KEYS)
    for key in keys:
        section, name = key.split(".")
        if section not in saved or name not in saved[section]:
            continue
        have, want = saved[section][name], getattr(getattr(cfg, section), name)
        if have != want:
            raise ConfigError(f"{key}: the job says {want!r} but the checkpoint {where} was trained with {have!r}")


# -------------------------------------------------------------------------------------------------- resolve

SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"   # Ray Train's list of a run's kept checkpoints


def snapshot_latest(text: str) -> str | None:
    """The latest checkpoint's directory name in Ray's snapshot (None when it names none or is unreadable)."""
    try:
        return json.loads(text)["latest_checkpoint_result"]["checkpoint_dir_name"] or None
    except (ValueError, KeyError, TypeError):
        return None


def resolve_checkpoint(path: str | Path) -> Path | str:
    """A checkpoint directory as given, or a run directory -> its latest checkpoint: the one Ray's snapshot
    names, else the highest-step ``checkpoint_<step>`` holding both files. Object storage (``s3://``,
    ``gs://``): the same rule by listing, and the checkpoint's URI is returned (``fetch`` copies it locally)."""
    from cutdist import storage

    if storage.is_object_store(str(path)):
        return _resolve_in_bucket(str(path).rstrip("/"))
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"checkpoint.resume_from: no such file or directory {path}")
    names = set()
    for child in path.iterdir() if path.is_dir() else []:
        if child.is_file():
            names.add(child.name)
        elif child.is_dir():
            names.update(f"{child.name}/{f.name}" for f in child.iterdir() if f.is_file())
    snapshot = path / SNAPSHOT_FILE
    chosen = _latest_complete(names, snapshot.read_text() if snapshot.is_file() else "")
    if chosen is None:
        raise CheckpointError(f"checkpoint.resume_from: {path} is neither a checkpoint directory "
                              f"(with {MODEL_FILE} and {TRAIN_STATE_FILE}) nor a run directory holding "
                              f"{CHECKPOINT_PREFIX}<step> checkpoints")
    return path / chosen if chosen else path


def _latest_complete(names: set[str], snapshot: str) -> str | None:
    """``resolve_checkpoint``'s rule over the file names under a location (``model.pt``,
    ``checkpoint_000000010/model.pt``, ...): "" when the location is itself a complete checkpoint, else the
    checkpoint Ray's ``snapshot`` names if complete (the latest one completely persisted), else the highest-step
    complete ``checkpoint_<step>``; None when there is none."""
    def complete(prefix: str) -> bool:
        return f"{prefix}{MODEL_FILE}" in names and f"{prefix}{TRAIN_STATE_FILE}" in names

    if complete(""):
        return ""
    latest = snapshot_latest(snapshot) if snapshot else None
    if latest and complete(f"{latest}/"):
        return latest
    steps = sorted((step, name) for name in {n.split("/")[0] for n in names if "/" in n}
                   if (step := checkpoint_step(name)) is not None and complete(f"{name}/"))
    return steps[-1][1] if steps else None


def _resolve_in_bucket(uri: str) -> str:
    """``resolve_checkpoint`` for a URI: objects under it are listed, nothing is downloaded."""
    from cutdist import storage

    try:
        names = set(storage.list_names(uri, recursive=True))
        snapshot = storage.read_bytes(storage.join(uri, SNAPSHOT_FILE)).decode() if SNAPSHOT_FILE in names else ""
    except (OSError, ValueError) as err:   # StorageError is a ValueError
        raise CheckpointError(f"checkpoint.resume_from: {redact_uri(uri)}: {storage.reason(err)}") from None

    if not names:
        raise CheckpointError(f"checkpoint.resume_from: nothing at {redact_uri(uri)}")
    if (MODEL_FILE in names) != (TRAIN_STATE_FILE in names):
        missing = TRAIN_STATE_FILE if MODEL_FILE in names else MODEL_FILE
        raise CheckpointError(f"checkpoint.resume_from: {redact_uri(uri)}: no {missing} (an incomplete checkpoint)")
    chosen = _latest_complete(names, snapshot)
    if chosen is None:
        raise CheckpointError(f"checkpoint.resume_from: {redact_uri(uri)} is neither a checkpoint (with "
                              f"{MODEL_FILE} and {TRAIN_STATE_FILE}) nor a run directory holding complete "
                              f"{CHECKPOINT_PREFIX}<step> checkpoints")
    return storage.join(uri, chosen) if chosen else uri


def fetch(location: str | Path) -> Path:
    """A resolved checkpoint as a local directory: a local one as it is; one in object storage copied (its
    files) into a new temporary directory, kept for the life of the process (read once, at the start)."""
    from cutdist import storage

    if not storage.is_object_store(str(location)):
        return Path(location)
    local = Path(tempfile.mkdtemp(prefix="cutdist_resume_"))
    for name in (MODEL_FILE, TRAIN_STATE_FILE, METRICS_FILE):
        try:
            storage.download(storage.join(str(location), name), local / name)
        except OSError as err:
            if name != METRICS_FILE:   # metrics.json is for people: optional
                raise CheckpointError(f"checkpoint.resume_from: {redact_uri(str(location))}/{name}: "
                                      f"{storage.reason(err)}") from None
    return local


def resolve_resume(cfg: JobConfig) -> str:
    """``checkpoint.resume_from`` -> the checkpoint directory (or object-storage URI) to start from ("" when
    unset), validated for this job by ``read_checkpoint``. Raises ``CheckpointError`` / ``ConfigError`` /
    ``ModelIOError`` naming the key."""
    if not cfg.checkpoint.resume_from:
        return ""
    ckpt = resolve_checkpoint(cfg.checkpoint.resume_from)
    if isinstance(ckpt, Path):
        read_checkpoint(ckpt, cfg, mmap=True)   # readable, the right format and architecture, before any worker
        return str(ckpt)
    local = fetch(ckpt)   # the driver reads it as the workers will (each worker fetches its own copy)
    try:
        read_checkpoint(local, cfg, mmap=True)
    except (CheckpointError, ConfigError, ModelIOError) as err:   # name the URI, not the temporary copy
        raise type(err)(str(err).replace(str(local), redact_uri(ckpt))) from None
    finally:
        shutil.rmtree(local, ignore_errors=True)
    return ckpt


def kept_checkpoints(result: Any, end: tuple[str | None, dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """``(path, metrics)`` of a finished run's kept checkpoints: Ray Train's, and ``end`` (``run_end``'s) when Ray
    never registered it."""
    kept = [(c.path, m) for c, m in (result.best_checkpoints or [])]
    if end[0] and end[0] not in {path for path, _ in kept}:
        kept.append(end)
    return kept


def best_checkpoint(kept: list[tuple[str, dict[str, Any]]]) -> tuple[str | None, dict | None]:
    """The checkpoint among ``kept`` (``kept_checkpoints``) with the lowest measured FID (None when none was
    evaluated)."""
    scored = [(m[SCORE_KEY], path, m) for path, m in kept
              if isinstance(m.get(SCORE_KEY), (int, float)) and math.isfinite(m[SCORE_KEY])]
    if not scored:
        return None, None
    _, path, metrics = min(scored, key=lambda item: item[0])
    return path, metrics


# ---------------------------------------------------------------------------------------------------- prune

def score(metrics: dict[str, Any]) -> float:
    value = metrics.get(SCORE_KEY, math.inf)
    return float(value) if isinstance(value, (int, float)) else math.inf


def ray_checkpoint_config(cfg: JobConfig):
    """Ray Train's retention for the job: ``num_to_keep`` best by ``SCORE_KEY`` (min), plus the latest."""
    from ray.train import CheckpointConfig

    return CheckpointConfig(num_to_keep=cfg.checkpoint.num_to_keep, checkpoint_score_attribute=SCORE_KEY,
                            checkpoint_score_order="min")


def retain(checkpoints: list[tuple[Path, float]], num_to_keep: int) -> list[tuple[Path, float]]:
    """Ray's rule outside Ray: of ``(dir, score)`` oldest first, keep the ``num_to_keep`` lowest scores (ties:
    the newer) plus the latest; delete the others. Returns the kept ones, oldest first."""
    if not checkpoints:
        return []
    latest = checkpoints[-1][0]
    ranked = sorted(enumerate(checkpoints), key=lambda item: (item[1][1], -item[0]))
    keep = {p for _, (p, _) in ranked[:num_to_keep]} | {latest}
    for path, _ in checkpoints:
        if path not in keep:
            shutil.rmtree(path, ignore_errors=True)
    return [(p, s) for p, s in checkpoints if p in keep]


def persist(staged: Path, run_dir: Path, step: int) -> Path:
    """Copy a staged checkpoint into ``run_dir/checkpoint_<step>`` (replacing one of that name) as a whole:
    copied beside it first, then renamed into place."""
    run_dir.mkdir(parents=True, exist_ok=True)
    dest = run_dir / checkpoint_dir_name(step)
    staging = Path(tempfile.mkdtemp(dir=run_dir, prefix=".staging_"))
    shutil.copytree(staged, staging, dirs_exist_ok=True)
    if dest.exists():
        shutil.rmtree(dest)
    staging.replace(dest)
    return dest
