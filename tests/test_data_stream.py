"""The unpaired training stream, the exactly-once test stream, corrupt data, and shards over real HTTP."""
from __future__ import annotations

import random
import shutil
import tarfile
from collections import Counter

import pytest
import torch
import webdataset as wds
from data_fixtures import ServedDirectory, _QuietHandler
from PIL import Image

from cutdist.config import DataConfig
from cutdist.data import CorruptSampleWarning, DataError, resolve_splits
from cutdist.data.stream import load_test_pairs, test_loader, unpaired_loader
from cutdist.data.synth import write_synth_dataset
from cutdist.data.transforms import TrainAugment

MAX_COUNT = 2   # images per shard of the demo below: 8 shards per training split


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return write_synth_dataset(tmp_path_factory.mktemp("stream") / "demo", size=32, count=16, test_count=11,
                               max_count=MAX_COUNT, seed=5)


def _cfg(root, **kw) -> DataConfig:
    values = dict(root=str(root), load_size=36, crop_size=32, batch_size=2, loader_workers=0, num_train_a=0)
    values.update(kw)
    return DataConfig(**values)


def _shard_of(key: str) -> int:
    return int(key) // MAX_COUNT


def _rewrite(shard, change) -> None:
    """Rewrite a tar shard with ``change(index, key, data) -> data`` applied to each image."""
    with tarfile.open(shard) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    with wds.TarWriter(str(shard), encoder=False) as writer:
        for i, (name, data) in enumerate(members):
            key, ext = name.split(".")
            writer.write({"__key__": key, ext: change(i, key, data)})


def test_batches_shapes_range_and_exact_steps_on_every_rank(demo):
    splits = resolve_splits(_cfg(demo))
    counts = []
    for rank in range(3):
        batches = list(unpaired_loader(splits, _cfg(demo), rank=rank, world_size=3, epoch=0, seed=0))
        counts.append(len(batches))
        for b in batches:
            assert b["a"].shape == b["b"].shape == (2, 3, 32, 32) and b["a"].dtype == torch.float32
            assert -1.0 <= b["a"].min() and b["b"].max() <= 1.0 and b["a"].max() > 0.5
            assert len(b["keys_a"]) == len(b["keys_b"]) == 2 and b["skipped"] == 0
    assert counts == [3, 3, 3]   # ceil(16 / (2 * 3)) on every rank, or DDP would hang


def test_deterministic_given_seed_rank_epoch(demo):
    splits = resolve_splits(_cfg(demo))

    def run(**kw):
        args = dict(rank=1, world_size=2, epoch=3, seed=7) | kw
        return list(unpaired_loader(splits, _cfg(demo, loader_workers=2), **args))

    first, again = run(), run()
    assert [b["keys_a"] for b in first] == [b["keys_a"] for b in again]
    assert all(torch.equal(x["a"], y["a"]) and torch.equal(x["b"], y["b"]) for x, y in zip(first, again))
    for other in (run(epoch=4), run(seed=8)):
        assert [b["keys_a"] + b["keys_b"] for b in other] != [b["keys_a"] + b["keys_b"] for b in first]


def test_corrupt_sample_and_truncated_shard_are_warned_skipped_counted(demo, tmp_path):
    root = tmp_path / "damaged"
    shutil.copytree(demo, root)
    _rewrite(root / "trainA-000003.tar", lambda i, key, data: data[:300] if i == 1 else data)
    data = (root / "trainB-000005.tar").read_bytes()
    (root / "trainB-000005.tar").write_bytes(data[:1500])   # mid-way through the first image
    cfg = _cfg(root, batch_size=1)
    splits = resolve_splits(cfg)
    with pytest.warns(CorruptSampleWarning) as caught:
        batches = list(unpaired_loader(splits, cfg, rank=0, world_size=1, epoch=0, seed=0))
    assert len(batches) == 16
    messages = {str(w.message) for w in caught}
    assert any("key 000007 in shard" in m and m.endswith("trainA-000003.tar: cannot decode png: OSError: "
                                                         "image file is truncated") for m in messages), messages
    # the index keeps the first member (its header is whole); reading it would come up short and be stood in for
    assert any("after key 000010 in shard" in m and "trainB-000005.tar: ReadError" in m for m in messages), messages
    assert sum(b["skipped"] for b in batches) >= 1   # the truncated shard is warned about when indexed
    assert "000007" not in {k for b in batches for k in b["keys_a"]}
    # the count crosses the worker-process boundary too
    workers = list(unpaired_loader(splits, _cfg(root, batch_size=1, loader_workers=2), rank=0, world_size=1,
                                   epoch=0, seed=0))
    assert len(workers) == 16 and sum(b["skipped"] for b in workers) >= 1


def test_all_shards_broken_is_an_error_not_a_hang(tmp_path):
    root = write_synth_dataset(tmp_path / "broken", size=16, count=2, test_count=1)
    (root / "trainA-000000.tar").write_bytes(b"garbage" * 100)
    cfg = _cfg(root, crop_size=16, load_size=16, batch_size=1)
    with pytest.warns(CorruptSampleWarning), pytest.raises(DataError, match="no readable sample in any trainA"):
        list(unpaired_loader(resolve_splits(cfg), cfg, rank=0, world_size=1, epoch=0, seed=0))


def test_test_stream_visits_every_image_once_across_ranks(demo):
    splits = resolve_splits(_cfg(demo))
    assert len(splits.test_a) == 6 and splits.num_test_a == 11
    per_rank = []
    for rank in range(2):
        loader = test_loader(splits.test_a, rank=rank, world_size=2, size=24, batch_size=2, loader_workers=2)
        keys = []
        for batch_keys, images in loader:
            assert images.shape == (len(batch_keys), 3, 24, 24) and -1 <= images.min() and images.max() <= 1
            keys += batch_keys
        assert loader.count == len(keys) and loader.skipped == 0
        per_rank.append(keys)
    counts = Counter(per_rank[0] + per_rank[1])
    assert sorted(counts) == [f"{i:06d}" for i in range(11)] and set(counts.values()) == {1}
    assert abs(len(per_rank[0]) - len(per_rank[1])) <= 2
    first5 = [k for rank in range(3) for keys, _ in test_loader(splits.test_a, rank=rank, world_size=3, size=8,
                                                                 batch_size=4, max_images=5) for k in keys]
    assert sorted(first5) == [f"{i:06d}" for i in range(5)]


def test_test_stream_skips_and_counts_a_corrupt_image_once(demo, tmp_path):
    root = tmp_path / "damaged"
    shutil.copytree(demo, root)
    _rewrite(root / "testA-000001.tar", lambda i, key, data: b"" if i == 0 else data)   # key 000002
    splits = resolve_splits(_cfg(root))
    keys, skipped = [], 0
    for rank in range(2):
        loader = test_loader(splits.test_a, rank=rank, world_size=2, size=8, batch_size=3, loader_workers=2)
        keys += [k for batch_keys, _ in loader for k in batch_keys]
        skipped += loader.skipped
    assert skipped == 1 and sorted(keys) == [f"{i:06d}" for i in range(11) if i != 2]


def test_load_test_pairs_aligns_by_key(demo):
    keys, a, gt = load_test_pairs(resolve_splits(_cfg(demo)), 32)
    assert keys == [f"{i:06d}" for i in range(11)] and a.shape == gt.shape == (11, 3, 32, 32)
    assert not torch.equal(a, gt)
    assert (a - gt).abs().mean(dim=(1, 2, 3)).min() > 0.01   # every pair differs (the stripes)


def test_streams_shards_from_a_real_http_server(demo):
    with ServedDirectory(demo) as url:
        cfg = _cfg(url, loader_workers=2)
        splits = resolve_splits(cfg)
        assert splits.train_a[0] == f"{url}/trainA-000000.tar" and splits.num_train_a == 16
        batches = list(unpaired_loader(splits, cfg, rank=1, world_size=2, epoch=0, seed=0))
        assert len(batches) == 4 and all(b["skipped"] == 0 and b["a"].shape == (2, 3, 32, 32) for b in batches)
        local = list(unpaired_loader(resolve_splits(_cfg(demo, loader_workers=2)), cfg, rank=1, world_size=2,
                                     epoch=0, seed=0))
        assert [b["keys_a"] for b in batches] == [b["keys_a"] for b in local]   # same stream, other transport
        assert _QuietHandler.ranges_served > 0   # samples came by HTTP range requests
        assert all(torch.equal(x["a"], y["a"]) for x, y in zip(batches, local))
        keys = [k for ks, _ in test_loader(splits.test_a, rank=0, world_size=1, size=8, batch_size=4) for k in ks]
        assert len(keys) == 11
        pattern = DataConfig(train_a=f"{url}/trainA-{{000000..000007}}.tar", train_b=f"{url}/trainB-000000.tar",
                             num_train_a=4, load_size=36, crop_size=32, loader_workers=0)
        assert len(list(unpaired_loader(resolve_splits(pattern), pattern, rank=0, world_size=1, epoch=0, seed=0))) == 4
        with pytest.raises(DataError, match=r"/nowhere/manifest.parquet: cannot read \(curl exited with status 22\)$"):
            resolve_splits(DataConfig(root=f"{url}/nowhere"))
        with pytest.raises(DataError, match=r"^data.train_b: cannot read shard http://.*/trainB-000099.tar \(curl exited"):
            resolve_splits(DataConfig(train_a=f"{url}/trainA-000000.tar", train_b=f"{url}/trainB-000099.tar",
                                      num_train_a=4))


@pytest.mark.parametrize("preprocess, size, expected", [
    ("resize_and_crop", (50, 30), (32, 32)),
    ("scale_width_and_crop", (100, 50), (32, 32)),
    ("none", (30, 50), (32, 48)),   # each side rounded to a multiple of 4, as the reference does
])
def test_augment_sizes(preprocess, size, expected):
    augment = TrainAugment(preprocess=preprocess, load_size=40, crop_size=32)
    out = augment(Image.new("RGB", size, (255, 0, 0)), random.Random(0))
    assert tuple(out.shape) == (3, expected[1], expected[0])
    assert torch.allclose(out[0], torch.ones_like(out[0]), atol=0.02) and out[1].max() < -0.98


def test_augment_flips_half_the_time_unless_no_flip():
    img = Image.new("RGB", (8, 8), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 4, 8))   # left half white
    for no_flip, expected in ((False, (30, 70)), (True, (100, 100))):
        augment = TrainAugment(preprocess="resize_and_crop", load_size=8, crop_size=8, no_flip=no_flip)
        rng = random.Random(1)
        left_white = sum(bool(augment(img, rng)[0, 0, 0] > 0) for _ in range(100))
        assert expected[0] <= left_white <= expected[1]


def test_a_server_without_range_requests_is_one_clear_error(demo):
    import functools
    import http.server
    import threading

    class NoRanges(http.server.SimpleHTTPRequestHandler):   # Python's own server ignores Range headers
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(NoRanges, directory=str(demo)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        cfg = _cfg(f"http://127.0.0.1:{server.server_address[1]}")
        with pytest.raises(DataError, match=r"trainA-00000\d.tar: the server answered a range request with \d+ "
                                            r"bytes for \d+: it does not serve HTTP ranges"):
            next(iter(unpaired_loader(resolve_splits(cfg), cfg, rank=0, world_size=1, epoch=0, seed=0)))
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_index_keeps_the_members_before_a_hostile_one_and_refuses_compressed_shards(tmp_path):
    from test_hostile_data import gzip_bomb_tar, negative_size_tar

    from cutdist.data import indexed

    # random access would loop back to the first header forever on the negative size
    index = indexed.split_index([str(negative_size_tar(tmp_path / "neg.tar"))])
    assert index.key == ["000000"] and len(index.problems) == 1
    assert index.problems[0][1] == "the rest of the shard after key 000000" and "negative size" in index.problems[0][2]
    index = indexed.split_index([str(gzip_bomb_tar(tmp_path / "gz.tar", 2 ** 20))])
    assert len(index) == 0 and "ReadError" in index.problems[0][2]
