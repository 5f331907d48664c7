"""Streams of images from WebDataset shards: the unpaired training stream and the test stream.

Training (``unpaired_loader``): on each rank, every DataLoader worker owns the shards
``urls[rank::world_size][worker::num_workers]`` (webdataset's split_by_node then split_by_worker, with the
rank given explicitly rather than read from the environment) and reads two independent *resampled* streams
over them, one per domain, zipped into pairs. A rank or worker left without a shard of its own (fewer shards
than ranks x workers) resamples from all shards of the split instead, with its own seed. Every random choice
(shard order, shuffle buffer, crops, flips) comes from seeds derived from (seed, rank, worker, epoch, domain),
so a stream is reproducible. One epoch = ``steps_per_epoch`` batches on every rank = |A| images globally.

Test (``test_loader``): every sample of the test shards gets a global ordinal (shards in the given order,
samples in tar order); the sample with ordinal g belongs to slot g mod (world_size x workers). Every slot reads
all test shards (test splits are small) and decodes only its own samples, so each image is visited exactly
once across ranks, nothing is resampled, and ranks differ by at most one image per worker.

Corrupt samples and unreadable or truncated shards are warned about (shard and key), skipped and counted;
the count travels with each batch (``skipped``) or on the loader (``TestLoader.skipped``).
"""
from __future__ import annotations

import math
import random
import warnings
from collections.abc import Iterator
from dataclasses import replace
from functools import partial

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from webdataset.tariterators import group_by_keys

from cutdist.data.manifest import CorruptSampleWarning, DataError, describe_error
from cutdist.data.members import MemberError, tar_members
from cutdist.data.splits import Splits
from cutdist.data.transforms import TrainAugment, decode_rgb, image_field, resize_square, stack

# Give up when this many samples/shards in a row fail: the data is broken, not a sample.
MAX_CONSECUTIVE_FAILURES = 1000
# ... or when this many shards in a row (empty, unreadable, refused) give no sample: a resampled stream over
# shards without samples would otherwise loop forever.
MAX_CONSECUTIVE_BAD_SHARDS = 50


def steps_per_epoch(num_train_a: int, batch_size: int, world_size: int) -> int:
    """Batches per rank in one epoch: ceil(|A| / (B * world)); an epoch counts images of A seen globally."""
    if num_train_a < 1 or batch_size < 1 or world_size < 1:
        raise DataError(f"steps_per_epoch: need |A|, batch size and world size >= 1, "
                        f"got {num_train_a}, {batch_size}, {world_size}")
    return math.ceil(num_train_a / (batch_size * world_size))


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers, well mixed (numpy SeedSequence), the same on every platform."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def shards_for(urls: list[str], rank: int, world_size: int, worker: int, num_workers: int) -> list[str]:
    """The shards a (rank, worker) owns; all shards when it owns none (see the module docstring)."""
    own = urls[rank::world_size][worker::num_workers]
    return own or list(urls)


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


class SkipCounter:
    """Counts samples skipped in this process, warns once per sample (shard and key)."""

    def __init__(self, warn: bool = True):
        self.pending = 0
        self.total = 0
        self.consecutive = 0
        self.bad_shards = 0
        self.warn = warn

    def skip(self, shard: str, what: str, reason: str) -> None:
        """Count one skipped sample or shard remainder; ``what`` names it (``key K``, ``rest of shard``...)."""
        self.pending += 1
        self.total += 1
        self.consecutive += 1
        if self.warn:
            warnings.warn(f"skipped {what} in shard {shard}: {reason}", CorruptSampleWarning, stacklevel=2)
        if self.consecutive >= MAX_CONSECUTIVE_FAILURES:
            raise DataError(f"{shard}: {self.consecutive} samples/shards in a row could not be read "
                            f"(last: {what}: {reason})")

    def bad_shard(self, shard: str, what: str, reason: str) -> None:
        """Count a shard that gave no sample (or broke midway); too many in a row is a DataError."""
        self.skip(shard, what, reason)
        self.bad_shards += 1
        if self.bad_shards >= MAX_CONSECUTIVE_BAD_SHARDS:
            raise DataError(f"{shard}: {self.bad_shards} shards in a row could not be read or held no sample "
                            f"(last: {what}: {reason}); check the shards with `python -m cutdist.shards inspect --verify`")

    def shard_ok(self) -> None:
        self.bad_shards = 0

    def ok(self) -> None:
        self.consecutive = 0

    def take(self) -> int:
        pending, self.pending = self.pending, 0
        return pending


def _describe(err: BaseException) -> str:
    if isinstance(err, MemberError):   # its reason: the line names the shard already
        return err.reason
    text = describe_error(err)
    return text if text.startswith(err.__class__.__name__) else f"{err.__class__.__name__}: {text}"


def _shard_samples(shards, skips: SkipCounter) -> Iterator[dict]:
    """Samples of each shard in turn (webdataset's tar reading and grouping); a shard that cannot be opened,
    or breaks midway (truncated, download failed), is warned about with the last good key, and skipped from
    there on."""
    for shard in shards:
        url, last, failure = shard["url"], None, None
        try:
            stream = wds.gopen(url, "rb")
        except Exception as err:   # no such file, bad URL scheme, ...
            skips.bad_shard(url, "the whole shard", _describe(err))
            continue
        broken: list[BaseException] = []

        def files():   # ends cleanly at a broken member, so group_by_keys still yields the sample before it
            try:
                for name, data in tar_members(stream, url):
                    yield {"fname": name, "data": data, "__url__": url}
            except Exception as err:   # MemberError, OSError from curl, ...
                broken.append(err)

        try:
            for sample in group_by_keys(files()):
                if last is None:
                    skips.shard_ok()
                last = sample["__key__"]
                yield sample
            failure = broken[0] if broken else None
        except Exception as err:   # a grouping error
            failure = err
        finally:
            try:
                stream.close()
            except Exception as err:   # curl's exit status shows up here (e.g. HTTP 404)
                failure = failure or err
        if failure is not None:
            what = f"the rest of the shard after key {last}" if last else "the whole shard"
            (skips.skip if last else skips.bad_shard)(url, what, _describe(failure))
        elif last is None:
            skips.bad_shard(url, "the whole shard", "no samples (an empty tar, or directories only)")


def _with_image(samples, skips: SkipCounter) -> Iterator[tuple[str, str, str, bytes]]:
    """(key, shard, image field, encoded bytes) of each sample; one without an image field is skipped and counted."""
    for sample in samples:
        key, shard = sample.get("__key__", "?"), sample.get("__url__", "?")
        name = image_field(sample)
        if name is None:
            fields = sorted(k for k in sample if not k.startswith("__"))
            skips.skip(shard, f"key {key}", f"no image field (fields: {fields})")
            continue
        yield key, shard, name, sample[name]


def _decoded(samples, skips: SkipCounter, transform) -> Iterator[tuple[str, torch.Tensor]]:
    """(key, tensor) for each sample that decodes; the others are skipped and counted."""
    for key, shard, name, data in _with_image(samples, skips):
        try:
            image = transform(decode_rgb(data))
        except Exception as err:   # PIL raises many types for bad data
            skips.skip(shard, f"key {key}", f"cannot decode {name}: {err.__class__.__name__}: {err}")
            continue
        skips.ok()
        yield key, image


def _encoded(samples, skips: SkipCounter) -> Iterator[tuple[str, tuple[str, bytes]]]:
    """(key, (label, encoded bytes)) for each sample with an image field, undecoded (data.decode_on_device: the
    training device decodes them, and counts what does not decode)."""
    for key, shard, _, data in _with_image(samples, skips):
        skips.ok()
        yield key, (f"{shard}: key {key}", bytes(data))


def _zero() -> int:
    return 0


class _UnpairedStream(IterableDataset):
    """Infinite batches of (A, B) pairs for one rank; each DataLoader worker builds its own streams."""

    def __init__(self, splits: Splits, augment: TrainAugment, *, batch_size: int, shuffle_buffer: int,
                 rank: int, world_size: int, epoch: int, seed: int, encoded: bool = False):
        super().__init__()
        self.encoded = encoded
        self.urls = {"A": list(splits.train_a), "B": list(splits.train_b)}
        self.augment = augment
        self.batch_size, self.shuffle_buffer = batch_size, shuffle_buffer
        self.rank, self.world_size, self.epoch, self.seed = rank, world_size, epoch, seed

    def _domain(self, domain: str, worker: int, num_workers: int, skips: SkipCounter):
        tag = ord(domain)
        own = shards_for(self.urls[domain], self.rank, self.world_size, worker, num_workers)
        shard_seed, buffer_seed, augment_seed = (derive_seed(self.seed, self.rank, worker, self.epoch, tag, purpose)
                                                 for purpose in range(3))
        stages = [wds.ResampledShards(own, seed=shard_seed, worker_seed=_zero, deterministic=True),
                  partial(_shard_samples, skips=skips)]
        if self.shuffle_buffer > 1:
            stages.append(wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer,
                                      rng=random.Random(buffer_seed)))
        rng = random.Random(augment_seed)
        if self.encoded:
            return _encoded(wds.DataPipeline(*stages), skips), rng
        return _decoded(wds.DataPipeline(*stages), skips, lambda img: self.augment(img, rng)), rng

    def __iter__(self):
        worker, num_workers = _worker()
        skips = SkipCounter()
        (stream_a, rng_a), (stream_b, rng_b) = (self._domain(d, worker, num_workers, skips) for d in "AB")
        batch = []
        for pair in zip(stream_a, stream_b):
            batch.append(pair)
            if len(batch) == self.batch_size:
                (keys_a, a), (keys_b, b) = (zip(*[p[i] for p in batch]) for i in (0, 1))
                if self.encoded:   # crops and flips are drawn on the device, from these seeds
                    yield {"a_encoded": list(a), "b_encoded": list(b), "keys_a": list(keys_a),
                           "keys_b": list(keys_b), "skipped": skips.take(),
                           "augment_seeds": {"a": rng_a.getrandbits(63), "b": rng_b.getrandbits(63)}}
                    batch = []
                    continue
                try:
                    a, b = stack(a), stack(b)
                except ValueError:
                    raise DataError(f"{self.urls['A'][0]}: images of different sizes in one batch; with "
                                    "data.preprocess=none use data.batch_size=1 or images of one size") from None
                yield {"a": a, "b": b, "keys_a": list(keys_a), "keys_b": list(keys_b), "skipped": skips.take()}
                batch = []


class UnpairedLoader:
    """``steps`` batches of the unpaired stream; iterate it once per epoch (``len()`` = steps)."""

    def __init__(self, dataset: _UnpairedStream, steps: int, loader_workers: int):
        self.dataset, self.steps, self.loader_workers = dataset, steps, loader_workers

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[dict]:
        loader = DataLoader(self.dataset, batch_size=None, num_workers=self.loader_workers,
                            prefetch_factor=2 if self.loader_workers else None)
        batches = iter(loader)
        try:
            for _ in range(self.steps):
                yield next(batches)
        finally:
            del batches   # shuts the worker processes down


def unpaired_loader(splits: Splits, data_cfg, *, rank: int, world_size: int, epoch: int, seed: int,
                    load_size: int | None = None) -> UnpairedLoader:
    """One epoch of the unpaired training stream for ``rank`` (see the module docstring).

    Yields exactly ``steps_per_epoch(splits.num_train_a, data_cfg.batch_size, world_size)`` batches, each
    ``{"a", "b": float [B, 3, H, W] in [-1, 1], "keys_a", "keys_b": list[str], "skipped": int}``; with
    ``data_cfg.decode_on_device`` the images stay encoded (``"a_encoded"``, ``"b_encoded"``: (label, bytes) pairs,
    plus ``"augment_seeds"``) for ``cutdist.data.gpu_decode.DeviceBatcher`` to decode on the training device.
    ``load_size`` overrides ``data_cfg.load_size`` (the reference trains its decay epochs at load = crop).
    """
    if not 0 <= rank < world_size:
        raise DataError(f"unpaired_loader: rank {rank} outside world size {world_size}")
    if not splits.train_a or not splits.train_b:
        raise DataError("unpaired_loader: splits have no trainA or trainB shards")
    augment = TrainAugment(preprocess=data_cfg.preprocess, load_size=load_size or data_cfg.load_size,
                           crop_size=data_cfg.crop_size, no_flip=data_cfg.no_flip)
    dataset = _UnpairedStream(splits, augment, batch_size=data_cfg.batch_size,
                              shuffle_buffer=data_cfg.shuffle_buffer, rank=rank, world_size=world_size,
                              epoch=epoch, seed=seed, encoded=data_cfg.decode_on_device)
    steps = steps_per_epoch(splits.num_train_a, data_cfg.batch_size, world_size)
    return UnpairedLoader(dataset, steps, data_cfg.loader_workers)


# ------------------------------------------------------------------------------------------------- test

class _TestStream(IterableDataset):
    """This slot's share of the test split: (keys, images [B, 3, size, size], skipped since last batch)."""

    def __init__(self, urls: list[str], *, rank: int, world_size: int, size: int, batch_size: int,
                 max_images: int):
        super().__init__()
        self.urls, self.rank, self.world_size = list(urls), rank, world_size
        self.size, self.batch_size, self.max_images = size, batch_size, max_images

    def __iter__(self):
        worker, num_workers = _worker()
        slots, slot = self.world_size * num_workers, self.rank * num_workers + worker
        # shard-level failures are seen by every slot; slot 0 alone reports and counts them
        shard_skips = SkipCounter(warn=slot == 0)
        skips = SkipCounter()
        samples = _shard_samples(wds.SimpleShardList(self.urls), shard_skips)

        def mine():
            for ordinal, sample in enumerate(samples):
                if self.max_images and ordinal >= self.max_images:
                    return
                if ordinal % slots == slot:
                    yield sample

        keys, images = [], []
        for key, image in _decoded(mine(), skips, lambda img: resize_square(img, self.size)):
            keys.append(key)
            images.append(image)
            if len(keys) == self.batch_size:
                yield keys, stack(images), skips.take() + (shard_skips.take() if slot == 0 else 0)
                keys, images = [], []
        if keys or skips.pending or shard_skips.pending:
            yield keys, stack(images) if images else torch.empty(0, 3, self.size, self.size), \
                skips.take() + (shard_skips.take() if slot == 0 else 0)


class TestLoader:
    """Iterates (keys, images) over this rank's share of the test split; ``skipped``/``count`` after a pass."""

    def __init__(self, dataset: _TestStream, loader_workers: int):
        self.dataset, self.loader_workers = dataset, loader_workers
        self.skipped = 0
        self.count = 0

    def __iter__(self) -> Iterator[tuple[list[str], torch.Tensor]]:
        self.skipped, self.count = 0, 0
        loader = DataLoader(self.dataset, batch_size=None, num_workers=self.loader_workers,
                            prefetch_factor=2 if self.loader_workers else None)
        for keys, images, skipped in loader:
            self.skipped += int(skipped)
            if keys:
                self.count += len(keys)
                yield keys, images


def test_loader(urls: list[str], *, rank: int, world_size: int, size: int, batch_size: int,
                loader_workers: int = 0, max_images: int = 0) -> TestLoader:
    """The test split, each image exactly once across all ranks (see the module docstring), resized to
    size x size, in [-1, 1]. ``max_images`` > 0 keeps the first max_images samples of the split's order."""
    if not urls:
        raise DataError("test_loader: no test shards (does the manifest have the test split?)")
    if not 0 <= rank < world_size:
        raise DataError(f"test_loader: rank {rank} outside world size {world_size}")
    if batch_size < 1 or size < 1:
        raise DataError(f"test_loader: batch_size and size must be >= 1, got {batch_size}, {size}")
    dataset = _TestStream(urls, rank=rank, world_size=world_size, size=size, batch_size=batch_size,
                          max_images=max_images)
    return TestLoader(dataset, loader_workers)


test_loader.__test__ = False   # not a pytest test, despite its name
TestLoader.__test__ = False


def load_test_pairs(splits: Splits, size: int, *, max_images: int = 0) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """The synthetic demo's paired test set: (keys, testA images, testGT images), both [N, 3, size, size] in
    [-1, 1], aligned by key (sorted); keys missing on either side (skipped as corrupt) are dropped."""
    if not splits.test_gt:
        raise DataError(f"{splits.manifest or splits.root}: no testGT split (only the synthetic demo has one)")
    if not splits.test_a:
        raise DataError(f"{splits.manifest or splits.root}: no testA split")
    sides = []
    for urls in (splits.test_a, splits.test_gt):
        found: dict[str, torch.Tensor] = {}
        for keys, images in test_loader(urls, rank=0, world_size=1, size=size, batch_size=64, max_images=max_images):
            found.update(zip(keys, images))
        sides.append(found)
    keys = sorted(set(sides[0]) & set(sides[1]))
    if not keys:
        raise DataError(f"{splits.manifest or splits.root}: testA and testGT share no key")
    return keys, torch.stack([sides[0][k] for k in keys]), torch.stack([sides[1][k] for k in keys])


def with_num_train_a(splits: Splits, num_train_a: int) -> Splits:
    """A copy of ``splits`` with another epoch length (benchmarks, smoke runs)."""
    return replace(splits, num_train_a=num_train_a)
