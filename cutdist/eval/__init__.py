"""Evaluation: pytorch-fid's Inception features, distributed statistics, the Fréchet distance, FID.

- ``cutdist.eval.inception``: ``load_inception``, ``activations``, ``InceptionWeightsError``, ``is_random_backbone``
- ``cutdist.eval.stats``: ``ActivationStats`` (mergeable, all-reducible), ``save_stats`` / ``load_stats`` (npz)
- ``cutdist.eval.frechet``: ``frechet_distance`` (in-house, float64)
- ``cutdist.eval.kid``: ``kid`` (Kernel Inception Distance from the same features), ``gather_features``
- ``cutdist.eval.sources``: image folders and shard splits as batches in [0, 1]
- ``cutdist.eval.reference``: ``reference_stats`` (the real testB statistics, cached)
- ``cutdist.eval.during_training``: ``fid_during_training`` (translate, all-reduce, FID on every rank) and
  ``FidEvaluator`` (the training loop's: reference statistics once, then FID of G at each evaluation)
- ``cutdist.eval.paired``: ``translation_quality`` against the synthetic demo's paired ground truth
"""
from cutdist.eval.during_training import FidEvaluator, fid_during_training
from cutdist.eval.frechet import frechet_distance
from cutdist.eval.inception import InceptionWeightsError, activations, is_random_backbone, load_inception
from cutdist.eval.reference import reference_stats
from cutdist.eval.stats import ActivationStats, load_stats, save_stats

__all__ = ["ActivationStats", "FidEvaluator", "InceptionWeightsError", "activations", "fid_during_training",
           "frechet_distance", "is_random_backbone", "load_inception", "load_stats", "reference_stats", "save_stats"]
