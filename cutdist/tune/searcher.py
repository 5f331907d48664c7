"""Tune's variant generator (grid and random search), with its restored state made consistent with the
restored trials.

Tune saves a sweep as two files, the experiment state (``experiment_state-*.json``: the trials and their
statuses) and the search algorithm's state (``basic-variant-state-*.json``: how many trials the grid or random
sampler has produced, and which of them are live), and uploads its staging directory to object storage one
file after the other (experiment state, each trial's files, then the searcher state, in directory order). A
driver killed in between leaves the bucket with a newer experiment state than searcher state. ``Tuner.restore``
then takes the searcher's stale view: a finished trial still counted as live, so with
``max_concurrent_trials`` reached the generator never produces the next trial and the resumed driver waits in
Tune's trial queue (10 minutes per round) for nothing; a produced trial not yet counted would be produced again.

``restore_from_dir`` here reads the experiment state Tune restores the trials from (in the same directory: Tune
downloads both before restoring the searcher) and brings the generator in line: it skips the trials already
produced and counts as live exactly the restored trials that have not ended.

Optuna (``search: optuna``) has the same race: Tune saves its search state (``search_gen_state-*.json``, with
the wrapping ``ConcurrencyLimiter``'s live trials) and Optuna's study (``searcher-state-*.pkl``) after the
experiment state. From an older pair, Tune's limiter kept a finished trial live forever (with
``max_concurrent_trials`` reached: the same endless wait), a trial started after the save was unknown to the
study (its first result or its completion: ``KeyError`` in ``OptunaSearch``), its generator's trial count was
behind (more trials than ``num_samples``), and a trial finished after the save stayed running in the study (TPE
never learnt its FID). ``ConsistentOptunaSearch`` limits concurrency itself (no ``ConcurrencyLimiter``), counts
its trials against ``num_samples`` itself, and on restore reads the experiment state: live = the restored trials
that have not ended; a trial unknown to the study is added to it with the values it was run with
(``enqueue_trial``, then ``ask``); an ended trial the study has as running is told its last result (Tune's own
completion call carries the same last result).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.tune.search import Searcher
from ray.tune.search.basic_variant import BasicVariantGenerator
from ray.tune.search.optuna import OptunaSearch

ENDED = ("TERMINATED", "ERROR")
log = logging.getLogger(__name__)


@dataclass
class RestoredTrial:
    status: str
    config: dict[str, Any] = field(default_factory=dict)
    last_result: dict[str, Any] = field(default_factory=dict)


def restored_trial_records(dirpath: str) -> dict[str, RestoredTrial] | None:
    """{trial id: RestoredTrial} of the newest experiment state in ``dirpath`` (the one Tune restores), or None."""
    states = sorted(Path(dirpath).glob("experiment_state-*.json"))
    if not states:
        return None
    data = json.loads(states[-1].read_text())
    out = {}
    for trial_json, metadata_json in data["trial_data"]:
        trial = json.loads(trial_json)
        try:
            last = json.loads(metadata_json).get("last_result") or {}
        except (TypeError, ValueError, AttributeError):
            last = {}
        config = trial.get("config")
        out[trial["trial_id"]] = RestoredTrial(trial["status"], config if isinstance(config, dict) else {},
                                               last if isinstance(last, dict) else {})
    return out


def restored_trials(dirpath: str) -> dict[str, str] | None:
    """{trial id: status} of the newest experiment state in ``dirpath``, or None."""
    records = restored_trial_records(dirpath)
    return None if records is None else {tid: r.status for tid, r in records.items()}


class ConsistentVariantGenerator(BasicVariantGenerator):
    def restore_from_dir(self, dirpath: str) -> None:
        super().restore_from_dir(dirpath)
        trials = restored_trials(dirpath)
        if trials is None:
            return
        prefix = self._uuid_prefix
        ours = {tid: status for tid, status in trials.items()
                if tid.startswith(prefix) and tid[len(prefix):].isdigit()}
        produced = max((int(tid[len(prefix):]) + 1 for tid in ours), default=0)
        counted = max((it.counter for it in self._iterators), default=0)
        if produced > counted and not self.is_finished():
            self._trial_iter = iter(self._trial_generator)
            for _ in range(produced - counted):   # the searcher state predates these trials: skip them
                try:
                    next(self._trial_iter)
                except StopIteration:
                    self._trial_generator = []
                    self._trial_iter = None
                    self.set_finished()
                    break
        self._live_trials = {tid for tid, status in ours.items() if status not in ENDED}


class ConsistentOptunaSearch(OptunaSearch):
    """Tune's OptunaSearch with the concurrency limit and the trial budget kept here, so that a restore from an
    older saved state can be brought in line with the restored trials (see the module docstring)."""

    def __init__(self, *, max_concurrent: int, num_samples: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_concurrent = max_concurrent
        self.num_samples = num_samples
        self._live: set[str] = set()
        self._produced: set[str] = set()

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        self.max_concurrent = max_concurrent
        return True

    def suggest(self, trial_id: str):
        if trial_id not in self._produced:
            if len(self._produced) >= self.num_samples:
                return Searcher.FINISHED
            if len(self._live) >= self.max_concurrent:
                return None
        config = super().suggest(trial_id)
        if isinstance(config, dict):
            self._produced.add(trial_id)
            self._live.add(trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # a trial the study does not hold, or has already been told the end of (an errored trial run again
        # with --retry-errored), has nowhere to report to
        if trial_id in self._ot_trials and trial_id not in self._completed_trials:
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self._live.discard(trial_id)
        if trial_id not in self._ot_trials:   # never produced by this study (restored from elsewhere)
            log.warning("trial %s is not in the Optuna study; its result is not told to it", trial_id)
            return
        super().on_trial_complete(trial_id, result=result, error=error)

    def restore_from_dir(self, checkpoint_dir: str) -> None:
        super().restore_from_dir(checkpoint_dir)
        records = restored_trial_records(checkpoint_dir)
        if records is None:
            return
        self._produced |= set(records)
        for tid, record in records.items():
            if tid not in self._ot_trials and isinstance(self._space, dict) and self._space:
                params = {k: record.config[k] for k in self._space if k in record.config}
                if len(params) == len(self._space):   # started after the saved study: add it with its values
                    self._ot_study.enqueue_trial(params)
                    self._ot_trials[tid] = self._ot_study.ask(fixed_distributions=self._space)
            if record.status in ENDED and tid in self._ot_trials and tid not in self._completed_trials:
                super().on_trial_complete(tid, result=record.last_result or None, error=record.status == "ERROR")
        self._live = {tid for tid, record in records.items() if record.status not in ENDED}
