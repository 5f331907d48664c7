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
"""
from __future__ import annotations

import json
from pathlib import Path

from ray.tune.search.basic_variant import BasicVariantGenerator

ENDED = ("TERMINATED", "ERROR")


def restored_trials(dirpath: str) -> dict[str, str] | None:
    """{trial id: status} of the newest experiment state in ``dirpath`` (the one Tune restores), or None."""
    states = sorted(Path(dirpath).glob("experiment_state-*.json"))
    if not states:
        return None
    data = json.loads(states[-1].read_text())
    out = {}
    for trial_json, _ in data["trial_data"]:
        trial = json.loads(trial_json)
        out[trial["trial_id"]] = trial["status"]
    return out


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
