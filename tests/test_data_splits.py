"""resolve_splits: shard lists and sizes for the driver, and one clear error for anything missing."""
from __future__ import annotations

import pickle

import pytest

from cutdist.config import DataConfig
from cutdist.data import DataError, Splits, resolve_splits
from cutdist.data.synth import write_synth_dataset


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return write_synth_dataset(tmp_path_factory.mktemp("splits") / "demo", size=16, count=5, test_count=3,
                               max_count=2)


def test_root_gives_sorted_shards_and_sizes(demo):
    splits = resolve_splits(DataConfig(root=str(demo)))
    assert splits.train_a == [str(demo / f"trainA-00000{i}.tar") for i in range(3)]
    assert len(splits.train_b) == 3 and len(splits.test_a) == 2 and len(splits.test_gt) == 2
    assert (splits.num_train_a, splits.num_test_a, splits.num_train_b, splits.num_test_b) == (5, 3, 5, 3)
    assert splits.manifest == str(demo / "manifest.parquet") and splits.root == str(demo)
    assert pickle.loads(pickle.dumps(splits)) == splits


def test_patterns_override_root_and_take_their_size_from_the_manifest(demo):
    cfg = DataConfig(root=str(demo), train_a=f"{demo}/trainA-{{000000..000001}}.tar")
    splits = resolve_splits(cfg)
    assert splits.train_a == [str(demo / "trainA-000000.tar"), str(demo / "trainA-000001.tar")]
    assert splits.num_train_a == 4
    # without a manifest, the sizes are counted from the tar headers
    globbed = resolve_splits(DataConfig(train_a=f"{demo}/trainA-*.tar", train_b=f"{demo}/trainB-*.tar"))
    assert len(globbed.train_a) == 3 and globbed.manifest is None
    assert (globbed.num_train_a, globbed.num_train_b, globbed.epoch_size) == (5, 5, 5)
    assert globbed.test_a == [] and globbed.test_gt == []


def test_num_train_a_keeps_the_first_images_of_a(demo):
    from cutdist.data.stream import unpaired_loader

    cfg = DataConfig(root=str(demo), num_train_a=3, batch_size=1, loader_workers=0, load_size=16, crop_size=16)
    splits = resolve_splits(cfg)
    assert (splits.num_train_a, splits.num_train_b, splits.epoch_size) == (3, 5, 5)
    keys = [k for b in unpaired_loader(splits, cfg, rank=0, world_size=1, epoch=0, seed=0) for k in b["keys_a"]]
    assert len(keys) == 5 and set(keys) == {"000000", "000001", "000002"}


def test_errors_name_the_key_and_the_path(demo, tmp_path):
    with pytest.raises(DataError, match=r"^data.root: no such directory .*nowhere$"):
        resolve_splits(DataConfig(root=str(tmp_path / "nowhere")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"manifest.parquet: no manifest"):
        resolve_splits(DataConfig(root=str(tmp_path / "empty")))
    with pytest.raises(DataError, match=r"^data.train_a: pattern .*trainQ-\*.tar matches no file$"):
        resolve_splits(DataConfig(train_a=f"{demo}/trainQ-*.tar", train_b=f"{demo}/trainB-*.tar", num_train_a=1))
    with pytest.raises(DataError, match=r"^data.train_b: no such shard .*trainB-000003.tar$"):
        resolve_splits(DataConfig(train_a=f"{demo}/trainA-*.tar", train_b=f"{demo}/trainB-{{000002..000003}}.tar",
                                  num_train_a=1))
    with pytest.raises(DataError, match=r"^data.num_train_a: 6 images asked for, but trainA has 5$"):
        resolve_splits(DataConfig(train_a=f"{demo}/trainA-*.tar", train_b=f"{demo}/trainB-*.tar", num_train_a=6))
    with pytest.raises(DataError, match=r"^pipe:cat .*: training reads samples by byte offset"):
        resolve_splits(DataConfig(train_a=f"pipe:cat {demo}/trainA-000000.tar", train_b=f"{demo}/trainB-*.tar"))


def test_manifest_without_a_training_split(tmp_path):
    from cutdist.data.manifest import read_manifest, write_manifest

    root = write_synth_dataset(tmp_path / "demo", size=16, count=2, test_count=1)
    rows = [r for r in read_manifest(str(root)).to_pylist() if r["split"] != "trainB"]
    write_manifest(rows, root / "manifest.parquet")
    with pytest.raises(DataError, match=r"^data.root: manifest .*manifest.parquet has no trainB split$"):
        resolve_splits(DataConfig(root=str(root)))
    (root / "trainA-000000.tar").unlink()
    with pytest.raises(DataError, match=r"trainA-000000.tar of split trainA is listed in the manifest but missing"):
        resolve_splits(DataConfig(root=str(root), train_b=str(root / "testB-000000.tar")))


def test_synth_if_missing_writes_the_demo(tmp_path):
    cfg = DataConfig(root=str(tmp_path / "demo"), synth_if_missing=True, synth_count=3, synth_size=16)
    splits = resolve_splits(cfg)
    assert isinstance(splits, Splits) and splits.num_train_a == 3 and splits.test_gt
    assert resolve_splits(cfg) == splits   # second call reuses it
