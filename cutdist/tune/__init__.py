"""Hyperparameter sweeps of full distributed CUT trainings with Ray Tune, ranked by FID: ``python -m cutdist.tune``.

- ``cutdist.tune.space``: search-space files (``tune_spaces/*.yaml``), validated before any trial; their Ray Tune
  param space, search algorithm (random / grid / Optuna TPE) and scheduler (ASHA or FIFO)
- ``cutdist.tune.trial``: the Tune function trainable (one TorchTrainer per trial, built by
  ``cutdist.train.launcher.build_trainer``), FID-only reporting to Tune, trial resources
- ``cutdist.tune.asha``: ASHA whose rungs are rebuilt from saved results when a sweep resumes
- ``cutdist.tune.cleanup``: freeing the workers of trials the scheduler stopped
- ``cutdist.tune.results``: leaderboard (parquet + CSV), FID-vs-hyperparameter plot, best job YAML
- ``cutdist.tune.__main__``: the command line (new sweep or ``--resume``)
"""
