"""data.decode_on_device: loader workers only read bytes; the training device decodes (nvJPEG on CUDA) and
augments. Run here on the CPU device: the same code path, with torchvision's CPU decoders."""
from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest
import torch
import webdataset as wds

from cutdist import config
from cutdist.config import DataConfig
from cutdist.data import CorruptSampleWarning, DataError, resolve_splits
from cutdist.data.gpu_decode import DeviceBatcher
from cutdist.data.stream import unpaired_loader
from cutdist.data.synth import write_synth_dataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return write_synth_dataset(tmp_path_factory.mktemp("device") / "demo", size=32, count=8, test_count=2,
                               max_count=2, seed=3)


def _cfg(root, **kw) -> DataConfig:
    values = dict(root=str(root), load_size=32, crop_size=32, batch_size=2, loader_workers=0,
                  no_flip=True)
    values.update(kw)
    return DataConfig(**values)


def _batches(root, **kw):
    cfg = _cfg(root, **kw)
    return list(unpaired_loader(resolve_splits(cfg), cfg, rank=0, world_size=1, epoch=0, seed=1))


def test_device_path_reads_the_same_samples_and_decodes_the_same_pixels(demo):
    """Same keys in the same order as the CPU path; with load = crop = image size and no flip the augmentation is
    the identity, so the device-decoded tensors equal the CPU path's exactly (the demo's PNGs decode losslessly)."""
    cpu = _batches(demo)
    encoded = _batches(demo, decode_on_device=True)
    assert [b["keys_a"] + b["keys_b"] for b in encoded] == [b["keys_a"] + b["keys_b"] for b in cpu]
    assert "a" not in encoded[0] and isinstance(encoded[0]["a_encoded"][0][1], bytes)
    batcher = DeviceBatcher("cpu", crop_size=32, no_flip=True)
    for enc, ref in zip(encoded, cpu):
        a, b, skipped = batcher(enc, load_size=32)
        assert skipped == 0 and a.dtype == torch.float32
        torch.testing.assert_close(a, ref["a"], rtol=0, atol=1e-6)
        torch.testing.assert_close(b, ref["b"], rtol=0, atol=1e-6)


def test_device_augmentation_is_seeded_by_the_stream(demo):
    """Crops and flips come from the per-batch seeds the stream draws from (seed, rank, epoch): reproducible."""
    first = _batches(demo, decode_on_device=True, load_size=40, no_flip=False)
    again = _batches(demo, decode_on_device=True, load_size=40, no_flip=False)
    run = [DeviceBatcher("cpu", crop_size=32)(b, load_size=40) for b in (first[0], again[0])]
    assert torch.equal(run[0][0], run[1][0]) and run[0][0].shape == (2, 3, 32, 32)
    assert -1.0 <= run[0][0].min() and run[0][0].max() <= 1.0
    assert first[0]["augment_seeds"] != first[1]["augment_seeds"]


def test_an_undecodable_image_is_warned_counted_and_stood_in_for(demo, tmp_path):
    root = tmp_path / "damaged"
    shutil.copytree(demo, root)
    shard = root / "trainA-000001.tar"
    with tarfile.open(shard) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    with wds.TarWriter(str(shard), encoder=False) as writer:
        for i, (name, data) in enumerate(members):
            key, ext = name.split(".")
            writer.write({"__key__": key, ext: data[:200] if i == 0 else data})   # a truncated PNG
    bad_key = members[0][0].split(".")[0]
    batches = _batches(root, decode_on_device=True)
    batcher = DeviceBatcher("cpu", crop_size=32, no_flip=True)
    hit = 0
    with pytest.warns(CorruptSampleWarning, match=rf"trainA-000001.tar: key {bad_key}: cannot decode"):
        for batch in batches:
            a, b, skipped = batcher(batch, load_size=32)
            assert a.shape == b.shape == (2, 3, 32, 32)          # the batch size is kept
            if bad_key in batch["keys_a"]:
                hit += 1
                assert skipped == 1
                good = 1 - batch["keys_a"].index(bad_key)
                assert torch.equal(a[0], a[1]) and torch.equal(a[good], a[1 - good])   # the other image stood in
    assert hit >= 1


def test_a_batch_with_nothing_decodable(demo):
    good = _batches(demo, decode_on_device=True)[0]
    junk = {**good, "a_encoded": [("s.tar: key 9", b"junk"), ("s.tar: key 10", b"")]}
    with pytest.warns(CorruptSampleWarning), pytest.raises(DataError, match="s.tar: key 9: no image of this rank's "
                                                                           "first A batch decodes"):
        DeviceBatcher("cpu", crop_size=32)(junk, load_size=32)
    batcher = DeviceBatcher("cpu", crop_size=32, no_flip=True)
    a, _, _ = batcher(good, load_size=32)
    with pytest.warns(CorruptSampleWarning):
        a2, _, skipped = batcher(junk, load_size=32)
    assert skipped == 2 and torch.equal(a, a2)   # the previous batch's images of A stand in


def test_config_refuses_other_preprocessing():
    with pytest.raises(config.ConfigError, match=r"^data.decode_on_device"):
        config.from_dict({"data.root": "x", "data.decode_on_device": True, "data.preprocess": "none"})


def test_training_with_decode_on_device(demo, tmp_path):
    from cutdist.train.loop import run_local

    cfg = config.load(ROOT / "jobs" / "smoke.yaml", {"data.root": str(demo), "storage_path": str(tmp_path),
                                                     "data.decode_on_device": True, "optim.max_steps": 3,
                                                     "data.load_size": 36, "data.crop_size": 32})
    metrics, _ = run_local(cfg, resolve_splits(cfg.data), run_dir=tmp_path / "run")
    assert metrics["step"] == 3
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(m["loss_nce"])) for m in logged if "loss_nce" in m)
