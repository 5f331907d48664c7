"""The unpaired stream samples as the authors' UnalignedDataset does, whatever the world size and loader workers.

Synthetic shards with horse2zebra's sizes (|A| = 1067, |B| = 1334); images stay encoded (data.decode_on_device),
so the visits are counted without decoding. Reference: an epoch has max(|A|, |B|) = 1334 samples, sample i of a
shuffled range(1334) takes A image i mod 1067 (images 0..266 twice, the others once) and a uniform B image.
"""
from __future__ import annotations

import io
from collections import Counter

import pytest
import webdataset as wds
from PIL import Image
from scipy.stats import chisquare

from cutdist.config import DataConfig
from cutdist.data import resolve_splits
from cutdist.data.stream import unpaired_loader

SIZE_A, SIZE_B, EPOCHS = 1067, 1334, 3
PER_SHARD = 100


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("sampling")
    image = _png()
    for split, size in (("trainA", SIZE_A), ("trainB", SIZE_B)):
        for first in range(0, size, PER_SHARD):
            with wds.TarWriter(str(root / f"{split}-{first // PER_SHARD:06d}.tar"), encoder=False) as writer:
                for i in range(first, min(first + PER_SHARD, size)):
                    writer.write({"__key__": f"{i:06d}", "png": image})
    return root


def _cfg(root, workers: int, batch_size: int = 1) -> DataConfig:
    return DataConfig(train_a=f"{root}/trainA-*.tar", train_b=f"{root}/trainB-*.tar", crop_size=8, load_size=8,
                      batch_size=batch_size, loader_workers=workers, decode_on_device=True)


def _epoch(root, splits, *, world: int, workers: int, epoch: int, seed: int = 0, batch_size: int = 1,
           start: int = 0, steps: int | None = None) -> list[list[dict]]:
    """Each rank's batches of one epoch (the first ``steps`` only, when given)."""
    out = []
    for rank in range(world):
        loader = unpaired_loader(splits, _cfg(root, workers, batch_size), rank=rank, world_size=world, epoch=epoch,
                                 seed=seed, start=start)
        batches = []
        for batch in loader:
            batches.append({k: batch[k] for k in ("keys_a", "keys_b", "positions", "step", "augment_seeds")})
            if steps is not None and len(batches) == steps:
                break
        out.append(batches)
    return out


def _reference_counts() -> Counter:
    """A's visits in one epoch of the reference: index i of range(max(|A|, |B|)) takes A image i mod |A|."""
    return Counter(f"{i % SIZE_A:06d}" for i in range(max(SIZE_A, SIZE_B)))


@pytest.mark.slow
def test_visits_match_the_reference_at_any_world_size_and_worker_count(shards):
    splits = resolve_splits(_cfg(shards, 0))   # no manifest: sizes counted from the tar headers
    assert (splits.num_train_a, splits.num_train_b, splits.epoch_size) == (SIZE_A, SIZE_B, SIZE_B)
    reference = _reference_counts()
    assert set(reference.values()) == {1, 2} and sum(v == 2 for v in reference.values()) == SIZE_B - SIZE_A
    b_visits: Counter = Counter()
    for world in (1, 2, 3):
        per_workers = {}
        for workers in (0, 2, 4):
            per_workers[workers] = [_epoch(shards, splits, world=world, workers=workers, epoch=e)
                                    for e in range(EPOCHS)]
        # nothing depends on the loader worker count: the same batches, key for key, seed for seed
        assert per_workers[0] == per_workers[2] == per_workers[4], world
        epochs = per_workers[0]
        steps = -(-SIZE_B // world)
        pad = steps * world - SIZE_B   # the last step is completed from the permutation's start
        for e, ranks in enumerate(epochs):
            assert [len(batches) for batches in ranks] == [steps] * world
            positions = [p for batches in ranks for b in batches for p in b["positions"]]
            assert sorted(positions) == list(range(SIZE_B + pad))   # ranks disjoint, nothing skipped
            counts = Counter(k for batches in ranks for b in batches for k in b["keys_a"])
            padded = Counter(ranks[0][0]["keys_a"][:pad]) if pad else Counter()   # positions 0..pad-1
            assert counts == reference + padded, (world, e)
            b_visits.update(k for batches in ranks for b in batches for k in b["keys_b"])
        # a fresh permutation every epoch
        orders = [[k for batches in ranks for b in batches for k in b["keys_a"]] for ranks in epochs]
        assert orders[0] != orders[1] != orders[2]
    # B uniform with replacement: 20 bins of ~67 images, ~600 draws each
    bins = Counter(int(k) * 20 // SIZE_B for k in b_visits.elements())
    observed = [bins[i] for i in range(20)]
    assert chisquare(observed).pvalue > 0.001, observed
    assert len(b_visits) > 0.9 * SIZE_B


def test_interrupted_and_resumed_epoch_uses_each_a_image_as_an_uninterrupted_one(shards):
    splits = resolve_splits(_cfg(shards, 0))
    whole = _epoch(shards, splits, world=2, workers=2, epoch=1, seed=3, batch_size=3)
    done = 70   # steps per rank before the interruption
    first = _epoch(shards, splits, world=2, workers=2, epoch=1, seed=3, batch_size=3, steps=done)
    rest = _epoch(shards, splits, world=2, workers=0, epoch=1, seed=3, batch_size=3, start=done * 2 * 3)

    def keys(ranks):
        return Counter(k for batches in ranks for b in batches for k in b["keys_a"])

    assert keys(first) + keys(rest) == keys(whole)
    # the very same batches, too: the resumed half is the uninterrupted epoch's tail
    assert [batches[done:] for batches in whole] == [[{**b, "step": b["step"] + done} for b in batches]
                                                      for batches in rest]
    # resumed on 3 ranks: every position of the epoch exactly once, none consumed before repeated
    moved = _epoch(shards, splits, world=3, workers=0, epoch=1, seed=3, batch_size=3, start=done * 2 * 3)
    seen = [p for ranks in (first, moved) for batches in ranks for b in batches for p in b["positions"]]
    assert sorted(p for p in seen if p < SIZE_B) == list(range(SIZE_B))


def test_deterministic_in_seed_rank_epoch(shards):
    splits = resolve_splits(_cfg(shards, 0))

    def run(**kw):
        args = dict(world=2, workers=0, epoch=0, seed=0, batch_size=4) | kw
        return [[b["keys_a"] + b["keys_b"] for b in batches[:20]] for batches in _epoch(shards, splits, **args)]

    base = run()
    assert run() == base
    assert base[0] != base[1]
    assert run(epoch=1) != base and run(seed=1) != base
