"""Freeing the workers' placement group of a trial that ended without its Ray Train controller shutting down.

When the scheduler (ASHA) stops a trial, Tune ends the trial's actor, and the Ray Train controller it owns dies
with it, before it can remove its workers' placement group. Ray 2.60 leaves that to a detached
``PlacementGroupCleaner``, which finds its cluster through the state API with no address: on a host running
more than one Ray instance that lookup fails ("Found multiple active Ray instances"), the cleaner gives up, and
the group keeps its CPUs/GPUs until the driver exits, so the next trial waits for workers forever.

So each trial's controller records its workers' placement group (``RecordPlacementGroup``, a Ray Train
worker-group callback: Ray's own cleaner hooks in the same way) in ``<run dir>/placement_group``, and the sweep
driver removes it once the trial has ended (``RemoveEndedTrialsPlacementGroups``, a Tune callback). It keeps
looking for ``LINGER_S`` seconds after the end, in case the dying controller started a new worker group.
Removing a group that is already gone is a no-op.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from ray.train.v2._internal.execution.callback import WorkerGroupCallback
from ray.tune import Callback

PG_FILE = "placement_group"
LINGER_S = 60.0
CHECK_EVERY_S = 1.0
_ALIVE = ("PENDING", "PREPARED", "CREATED", "RESCHEDULING")


class RecordPlacementGroup(WorkerGroupCallback):
    """Runs in the Train controller: writes the id of each new worker group's placement group to ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def after_worker_group_start(self, worker_group) -> None:
        from cutdist import storage

        pg = worker_group.get_worker_group_state().placement_group_handle.placement_group
        if storage.is_object_store(self.path):   # the driver may be on another node: the sweep's bucket
            storage.write_bytes(self.path, pg.id.hex().encode())
            return
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        tmp = f"{self.path}.tmp"
        Path(tmp).write_text(pg.id.hex())
        os.replace(tmp, self.path)


def remove_recorded_placement_group(path: str) -> bool:
    """Remove the placement group recorded in ``path`` if it still holds (or waits for) resources."""
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

    from cutdist import storage

    try:
        if storage.is_object_store(path):
            pg_hex = storage.read_bytes(path).decode().strip()
        else:
            pg_hex = Path(path).read_text().strip()
    except (OSError, storage.StorageError):
        return False
    pg = PlacementGroup(PlacementGroupID(bytes.fromhex(pg_hex)))
    if placement_group_table(pg).get("state") not in _ALIVE:
        return False
    remove_placement_group(pg)
    return True


class RemoveEndedTrialsPlacementGroups(Callback):
    """Runs in the sweep driver: after a trial completes, is stopped or fails, removes its recorded group."""

    def __init__(self, runs_dir: str) -> None:
        self.runs_dir = runs_dir
        self.ended: dict[str, float] = {}
        self.checked_at = 0.0

    def _ended(self, trial) -> None:
        self.ended[trial.trial_id] = time.monotonic()
        self._sweep()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._ended(trial)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._ended(trial)

    def on_step_begin(self, iteration, trials, **info) -> None:
        if self.ended and time.monotonic() - self.checked_at >= CHECK_EVERY_S:
            self._sweep()

    def _sweep(self) -> None:
        now = self.checked_at = time.monotonic()
        for trial_id, ended_at in list(self.ended.items()):
            remove_recorded_placement_group(f"{self.runs_dir.rstrip('/')}/{trial_id}/{PG_FILE}")
            if now - ended_at > LINGER_S:
                del self.ended[trial_id]
