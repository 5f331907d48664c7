"""Each trial's record of results (``result.json``, ``progress.csv``) across a sweep's resume.

Tune's loggers write these files in a staging directory on the driver's node
(``/tmp/ray/session_*/artifacts/<sweep start>/<name>/driver_artifacts/trial_<id>``) and copy that directory into
the sweep directory whenever they save the sweep (every ~10 s), so the sweep directory's copy is behind the
staging one by whatever was reported since the last save. A restarted trial without a Tune checkpoint (ours
resume from their Ray Train runs' checkpoints, never from a Tune one) is not given its files back: when the
staging directory is not the dead driver's (a new Ray session, a driver on another node), Tune starts them empty
and its next save overwrites the sweep directory's copies, losing the trial's earlier results (seen: a resumed
trial with an FID ended with an empty result.json). ``KeepTrialRecords`` puts them back before the loggers open
them. Where the dead driver's staging directory is still there (the same Ray session), it is the record: it also
holds what was reported after the last save.

So at the start of every trial that has reported before, the staging copy and the sweep directory's copy are
the same record, the one the trial goes on from: ``ResumableASHA`` replays it into its rungs and
``cutdist.tune.trial.lost_results`` reports, before the trial's run resumes, the evaluations its run made that
are not in it.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ray.tune import Callback

RESULT_FILE = "result.json"
PROGRESS_FILE = "progress.csv"


def parse_results(text: str) -> list[dict]:
    results = []
    for line in text.splitlines():
        try:
            results.append(json.loads(line))
        except ValueError:   # a line cut short when the driver died
            continue
    return results


def _read(fs, path: str) -> bytes | None:
    import pyarrow.fs

    if fs.get_file_info(path).type == pyarrow.fs.FileType.NotFound:
        return None
    with fs.open_input_stream(path) as stream:
        return stream.read()


def record_of(trial) -> list[dict]:
    """The driver's view of a restored trial's results: its staging ``result.json`` when there is one, else the
    sweep directory's ([] for a new trial)."""
    staged = Path(trial.local_path, RESULT_FILE)
    if staged.is_file():
        return parse_results(staged.read_text())
    stored = _read(trial.storage.storage_filesystem, f"{trial.path}/{RESULT_FILE}")
    return parse_results(stored.decode()) if stored else []


def stored_results(trial_dir: str) -> list[dict]:
    """A trial's ``result.json`` in the sweep directory (``trial_dir``: a local path or a URI; [] when absent).
    A running driver rewrites it there when it saves the sweep (a local copy is truncated first), so it is read
    until two reads agree."""
    from cutdist import storage

    fs, path = storage.filesystem(trial_dir if storage.is_object_store(trial_dir) else os.path.abspath(trial_dir))
    path = f"{path.rstrip('/')}/{RESULT_FILE}"
    text = _read(fs, path)
    for _ in range(5):
        time.sleep(0.05)
        again = _read(fs, path)
        if again == text:
            break
        text = again
    return parse_results(text.decode()) if text else []


class KeepTrialRecords(Callback):
    """Runs in the sweep driver, before Tune's loggers: at the start of a trial that has reported before, its
    record goes where the loggers append to it (the staging directory) and where the trial reads it (the sweep
    directory)."""

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        if not trial.has_reported_at_least_once:
            return
        fs = trial.storage.storage_filesystem
        for name in (RESULT_FILE, PROGRESS_FILE):
            staged, stored = Path(trial.local_path, name), f"{trial.path}/{name}"
            if staged.is_file():   # the dead driver's, in this Ray session: everything it logged
                with fs.open_output_stream(stored) as out:
                    out.write(staged.read_bytes())
            elif (data := _read(fs, stored)) is not None:
                staged.parent.mkdir(parents=True, exist_ok=True)
                staged.write_bytes(data)
