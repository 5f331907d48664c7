"""The sweep's search algorithms restored from a saved search state older than the experiment state (Tune
uploads the experiment state first; a driver killed in between leaves them so in a bucket), driven through
Tune's own ``SearchGenerator`` as ``Tuner.restore`` drives them, no Ray cluster. The grid/random case runs end to
end in tests/test_tune_sweep_s3.py; here Optuna: a finished trial must not hold a concurrency slot, a trial
started after the save must be known to the study, the trial budget must hold, and Optuna must learn the
finished trials' FIDs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

pytest.importorskip("optuna")

from cutdist.tune.space import parse_space  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMOKE = yaml.safe_load((ROOT / "jobs" / "smoke.yaml").read_text())


def optuna_space(max_concurrent: int, num_samples: int = 3):
    return parse_space({"search": "optuna", "num_samples": num_samples, "max_concurrent_trials": max_concurrent,
                        "fixed": {"eval.enabled": True},
                        "params": {"optim.lr": {"loguniform": [1.0e-5, 1.0e-3]}}}, SMOKE)


def generator(space, max_concurrent: int, tmp_path: Path):
    """What Tune builds from ``TuneConfig(search_alg=space.search_alg(...))`` (the Tuner pickles it unrestored)."""
    from ray.tune.experiment import Experiment
    from ray.tune.search import SearchGenerator

    gen = SearchGenerator(space.search_alg(max_concurrent))
    gen.set_search_properties("fid", "min", space.param_space())
    gen.add_configurations([Experiment("sweep", run=lambda config: None, config=space.param_space(),
                                       num_samples=space.num_samples, storage_path=str(tmp_path / "tune"))])
    return gen


def write_experiment_state(dirpath: Path, trials) -> None:
    """The experiment state as Tune writes it (each trial's own JSON state and run metadata)."""
    (dirpath / "experiment_state-2026-01-01_00-00-00.json").write_text(
        json.dumps({"trial_data": [list(t.get_json_state()) for t in trials]}))


def finish(gen, trial, fid: float) -> None:
    trial.update_last_result({"fid": fid, "training_iteration": 1})
    trial.set_status("TERMINATED")
    gen.on_trial_complete(trial.trial_id, trial.last_result)


def study_of(gen):
    searcher = gen.searcher
    while hasattr(searcher, "searcher"):   # Tune's ConcurrencyLimiter, where one is used
        searcher = searcher.searcher
    return searcher


def test_optuna_restored_from_an_older_state_frees_the_finished_trials_slot(tmp_path):
    """max_concurrent 1: saved while trial 1 ran; trial 1 finished; killed before trial 2 was made. Restored,
    the searcher must make trial 2 (before: trial 1 held the only slot forever, the resumed sweep waited)."""
    space = optuna_space(max_concurrent=1)
    saved = tmp_path / "saved"
    saved.mkdir()
    gen = generator(space, 1, tmp_path)
    first = gen.next_trial()
    gen.save_to_dir(str(saved), "s")   # the searcher state in the bucket: trial 1 running
    finish(gen, first, 10.0)
    write_experiment_state(saved, [first])   # the newer experiment state: trial 1 TERMINATED

    resumed = generator(space, 1, tmp_path)
    resumed.restore_from_dir(str(saved))
    second = resumed.next_trial()
    assert second is not None and second.trial_id != first.trial_id
    # Optuna learnt trial 1's FID although the saved study had it running
    values = {t.number: t.value for t in study_of(resumed)._ot_study.trials if t.value is not None}
    assert list(values.values()) == [10.0], values


def test_optuna_restored_from_an_older_state_knows_later_trials_and_keeps_the_budget(tmp_path):
    """max_concurrent 2, 3 trials: saved while trial 1 ran; trial 2 started and trial 1 finished after the save.
    Restored: trial 2's results reach the study (before: KeyError), one more trial is made, then no more."""
    space = optuna_space(max_concurrent=2, num_samples=3)
    saved = tmp_path / "saved"
    saved.mkdir()
    gen = generator(space, 2, tmp_path)
    first = gen.next_trial()
    gen.save_to_dir(str(saved), "s")
    second = gen.next_trial()
    second.set_status("RUNNING")
    finish(gen, first, 10.0)
    write_experiment_state(saved, [first, second])

    resumed = generator(space, 2, tmp_path)
    resumed.restore_from_dir(str(saved))
    resumed.on_trial_result(second.trial_id, {"fid": 6.0, "training_iteration": 1})
    third = resumed.next_trial()   # a free slot: trial 1 ended, trial 2 runs
    assert third is not None and resumed.next_trial() is None   # two live
    resumed.on_trial_complete(second.trial_id, {"fid": 5.0, "training_iteration": 2})
    assert resumed.next_trial() is None and resumed.is_finished()   # 3 trials made: the budget
    study = study_of(resumed)._ot_study
    done = sorted(t.value for t in study.trials if t.value is not None)
    assert done == [5.0, 10.0], done
    lr = second.config["optim.lr"]
    assert any(t.params.get("optim.lr") == lr and t.value == 5.0 for t in study.trials)   # with its own values
