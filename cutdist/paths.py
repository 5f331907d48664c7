"""Output paths checked before any work: a CLI that computes for minutes and then cannot write its result
loses everything, so ``fid --save-stats``, ``convert --out`` and ``translate --output`` call these first and
turn a problem into one line and exit 2."""
from __future__ import annotations

import os
from pathlib import Path


def output_file_problem(path: str | Path, flag: str, suffix: str | None = None) -> str | None:
    """Why the file ``path`` cannot be written (a folder in its place, a parent that cannot be created or
    written, a wrong suffix), or None; creates the missing parent folders."""
    p = Path(path).expanduser()
    if suffix and p.suffix != suffix:
        return f"{flag}: {path} must end in {suffix}"
    if p.is_dir():
        return f"{flag}: {path} is a folder, not a file name"
    parent = p.parent
    if parent.exists() and not parent.is_dir():
        return f"{flag}: {parent} is not a folder"
    try:
        parent.mkdir(parents=True, exist_ok=True)   # as the writers do
    except OSError as err:
        return f"{flag}: cannot create the folder {parent} ({err.strerror or err})"
    if not os.access(parent, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        return f"{flag}: {path} is not writable"
    return None


def prepare_output_dir(path: str | Path, flag: str) -> str | None:
    """Create the folder ``path`` (and its parents); why it cannot be an output folder, or None."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        return f"{flag}: {path} exists and is not a folder"
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        return f"{flag}: cannot create {path} ({err.strerror or err})"
    if not os.access(p, os.W_OK | os.X_OK):
        return f"{flag}: {path} is not writable"
    return None


def output_dir_problem(path: str | Path, flag: str) -> str | None:
    """Why the folder ``path`` could not be created or written, or None; creates nothing."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        return f"{flag}: {path} exists and is not a folder"
    existing = p
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{flag}: cannot create {path} ({existing} is not a folder)"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{flag}: {existing} is not writable"
    return None
