"""ASHA whose rungs survive a sweep's resume.

Tune's experiment state keeps the search algorithm but not the scheduler: after ``Tuner.restore`` ASHA starts
with empty rungs, so a trial reaching a rung after the resume would only be compared with results reported
after it (possibly with none, and then never stopped). ``ResumableASHA`` replays each restored trial's earlier
results (its ``result.json`` in the trial directory) into its bracket when Tune adds the trial back, so the rungs
hold what they held before the driver died.
"""
from __future__ import annotations

import json
from pathlib import Path

from ray.tune.schedulers import AsyncHyperBandScheduler

RESULT_FILE = "result.json"


class ResumableASHA(AsyncHyperBandScheduler):
    def on_trial_add(self, tune_controller, trial) -> None:
        super().on_trial_add(tune_controller, trial)
        if not trial.has_reported_at_least_once:   # a new trial (its directory is not even named yet)
            return
        bracket = self._trial_info[trial.trial_id]
        for result in saved_results(trial.path):
            if self._time_attr in result and self._metric in result:
                bracket.on_result(trial, result[self._time_attr], self._metric_op * result[self._metric])


def saved_results(trial_dir: str | None) -> list[dict]:
    """The results Tune logged for a trial so far (none for a new trial)."""
    if not trial_dir:
        return []
    path = Path(trial_dir) / RESULT_FILE
    if not path.is_file():
        return []
    results = []
    for line in path.read_text().splitlines():
        try:
            results.append(json.loads(line))
        except ValueError:   # a line cut short when the driver died
            continue
    return results
