"""ASHA whose rungs survive a sweep's resume.

Tune's experiment state keeps the search algorithm but not the scheduler: after ``Tuner.restore`` ASHA starts
with empty rungs, so a trial reaching a rung after the resume would only be compared with results reported
after it (possibly with none, and then never stopped). ``ResumableASHA`` replays each restored trial's earlier
results (its record, ``cutdist.tune.records.record_of``) into its bracket when Tune adds the trial back, so the
rungs hold what they held before the driver died. A rung keeps one value per trial and judges a trial once, when
it first reaches the rung: a restored trial that reports a replayed rung's epoch again is not judged there again
(``_Bracket.on_result`` passes over a rung that holds the trial).
"""
from __future__ import annotations

from ray.tune.schedulers import AsyncHyperBandScheduler

from cutdist.tune.records import record_of


class ResumableASHA(AsyncHyperBandScheduler):
    def on_trial_add(self, tune_controller, trial) -> None:
        super().on_trial_add(tune_controller, trial)
        if not trial.has_reported_at_least_once:   # a new trial (its directory is not even named yet)
            return
        bracket = self._trial_info[trial.trial_id]
        for result in record_of(trial):
            if self._time_attr in result and self._metric in result:
                bracket.on_result(trial, result[self._time_attr], self._metric_op * result[self._metric])
