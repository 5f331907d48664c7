"""Reference statistics of the real testB split: computed once, cached beside the shards, reused."""
from __future__ import annotations

import numpy as np
import pytest

import cutdist.eval.reference as reference
from cutdist.data.splits import resolve_splits
from cutdist.eval import activations, load_inception, load_stats, reference_stats
from eval_fixtures import weights_file


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from cutdist.data.synth import write_synth_dataset
    return write_synth_dataset(tmp_path_factory.mktemp("ref") / "shards", size=32, count=2, test_count=3, seed=6,
                               max_count=2)


@pytest.fixture(scope="module")
def inception():
    return load_inception(str(weights_file()))


def test_computed_once_then_read_from_the_cache(shards, inception, monkeypatch):
    from cutdist.config import DataConfig
    from cutdist.data.stream import test_loader

    model, backbone = inception
    splits = resolve_splits(DataConfig(root=str(shards)))
    mu, sigma = reference_stats(splits, model=model, backbone=backbone, size=32, batch_size=4, device="cpu",
                                cache_dir="")
    # the same numbers as decoding testB by hand (test_loader, [-1, 1] -> [0, 1]) and np.cov
    images = [x for _, x in test_loader(splits.test_b, rank=0, world_size=1, size=32, batch_size=3)][0]
    acts = activations(model, (images + 1) / 2)
    np.testing.assert_allclose(mu, acts.mean(0), atol=1e-9)
    np.testing.assert_allclose(sigma, np.cov(acts, rowvar=False), atol=1e-9)

    cached = list((shards / "fid-stats").glob("reference-32px-*.npz"))
    assert len(cached) == 1   # beside the shards
    _, _, meta = load_stats(cached[0], with_meta=True)
    assert meta["backbone"] == backbone and meta["n_images"] == 3 and meta["size"] == 32

    def no_decoding(*args, **kwargs):
        raise AssertionError("a cache hit decoded images")
    monkeypatch.setattr(reference, "shard_batches", no_decoding)
    mu2, sigma2 = reference_stats(splits, model=model, backbone=backbone, size=32, batch_size=4, device="cpu",
                                  cache_dir="")
    np.testing.assert_array_equal(mu2, mu)
    np.testing.assert_array_equal(sigma2, sigma)
    # a URL list with the manifest named explicitly is the same key
    reference_stats(splits.test_b, model=model, backbone=backbone, size=32, manifest=splits.manifest, cache_dir="")


def test_key_changes_with_backbone_size_and_data(shards, tmp_path):
    from cutdist.data.splits import resolve_splits
    from cutdist.config import DataConfig

    splits = resolve_splits(DataConfig(root=str(shards)))
    base = reference.reference_key(splits.test_b, splits.manifest, "b1", 32)
    assert reference.reference_key(splits.test_b, splits.manifest, "b2", 32) != base
    assert reference.reference_key(splits.test_b, splits.manifest, "b1", 64) != base
    assert reference.reference_key(splits.test_b, splits.manifest, "b1", 32, max_images=3) != base
    assert reference.reference_key(splits.test_b, None, "b1", 32) != base
    other = tmp_path / "manifest.parquet"
    other.write_bytes((shards / "manifest.parquet").read_bytes() + b"\0")
    assert reference.reference_key(splits.test_b, str(other), "b1", 32) != base
    assert reference.reference_cache_path(splits.test_b, base, 32, tmp_path / "c").parent == tmp_path / "c"
    assert reference.reference_cache_path(["https://host/x/testB-000000.tar"], base, 32).parent == \
        reference.USER_CACHE.expanduser()
