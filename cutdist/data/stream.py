"""Streams of images from WebDataset shards: the unpaired training stream and the test stream.

Training (``unpaired_loader``) samples the way the authors' ``UnalignedDataset`` + shuffled ``DataLoader`` do,
at any world size and loader worker count. An epoch is N = max(|A|, |B|) samples seen globally (the reference's
``__len__``); each rank takes ``ceil(N / (batch x world))`` steps. Every epoch draws one permutation of range(N)
from (seed, epoch) alone; the global step s of rank r takes positions ``s*batch*world + r*batch + k``
(k < batch) of it, and position p gives the A image ``perm[p mod N] mod |A|``: every A image once per epoch,
twice for the ``i mod |A|`` wrap-around when |B| > |A|, as in the reference. When batch x world does not divide
N, the last step is completed with the permutation's first entries (as torch's ``DistributedSampler`` pads),
so fewer than batch x world images are seen once more. The B image of each slot is drawn uniformly with
replacement, as the reference's ``random.randint``. Crops and flips, like the B draws, come from a generator
seeded by (seed, epoch, rank, step), so a batch does not depend on the loader worker that builds it: step s
goes to worker s mod workers, the order in which the DataLoader takes batches from its workers.

Samples are read by byte offset (``cutdist.data.indexed``: an index of the tar headers, then ``pread`` or HTTP
range reads), so the shards' order on disk does not matter. A run resumed in the middle of an epoch passes
``start`` (the positions already consumed, ``Position.images_in_epoch``) and goes on in the same permutation,
with neither a repeat nor a gap, whatever world size it resumes on.

Test (``test_loader``): every sample of the test shards gets a global ordinal (shards in the given order,
samples in tar order); the sample with ordinal g belongs to slot g mod (world_size x workers). Every slot reads
all test shards (test splits are small) and decodes only its own samples, so each image is visited exactly
once across ranks, nothing is resampled, and ranks differ by at most one image per worker.

Corrupt samples and unreadable or truncated shards are warned about (shard and key), skipped and counted;
the count travels with each batch (``skipped``) or on the loader (``TestLoader.skipped``). In training a
sample that cannot be read or decoded is stood in for by a uniformly drawn one of its domain, so every rank
keeps its batch size.
"""
from __future__ import annotations

import math
import random
import warnings
from collections.abc import Iterator

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from webdataset.tariterators import group_by_keys

from cutdist.data.indexed import MemberReader, SplitIndex, split_index
from cutdist.data.manifest import CorruptSampleWarning, DataError, describe_error, open_location
from cutdist.data.members import MemberError, tar_members
from cutdist.data.splits import Splits
from cutdist.data.transforms import TrainAugment, decode_rgb, image_field, resize_square, stack
from cutdist.schedule import mix_seed

# Give up when this many samples/shards in a row fail: the data is broken, not a sample.
MAX_CONSECUTIVE_FAILURES = 1000
# ... or when this many shards in a row (empty, unreadable, refused) give no sample: a resampled stream over
# shards without samples would otherwise loop forever.
MAX_CONSECUTIVE_BAD_SHARDS = 50


def epoch_permutation(seed: int, epoch: int, epoch_size: int) -> np.ndarray:
    """The epoch's order of positions, the same on every rank and worker: a permutation of range(N)."""
    return np.random.default_rng(mix_seed(seed, epoch, ord("P"))).permutation(epoch_size)


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
            stream = open_location(url)
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


def _decoded(samples, skips: SkipCounter, transform) -> Iterator[tuple[str, torch.Tensor]]:
    """(key, tensor) for each sample that has an image field and decodes; the others are skipped and counted."""
    for sample in samples:
        key, shard = sample.get("__key__", "?"), sample.get("__url__", "?")
        name = image_field(sample)
        if name is None:
            fields = sorted(k for k in sample if not k.startswith("__"))
            skips.skip(shard, f"key {key}", f"no image field (fields: {fields})")
            continue
        try:
            image = transform(decode_rgb(sample[name]))
        except Exception as err:   # PIL raises many types for bad data
            skips.skip(shard, f"key {key}", f"cannot decode {name}: {err.__class__.__name__}: {err}")
            continue
        skips.ok()
        yield key, image


class _UnpairedStream(IterableDataset):
    """``steps`` batches of (A, B) pairs for one rank (see the module docstring); worker w builds the steps
    s = w, w + workers, ..."""

    def __init__(self, index_a: SplitIndex, index_b: SplitIndex, augment: TrainAugment, *, batch_size: int,
                 rank: int, world_size: int, epoch: int, seed: int, epoch_size: int, start: int, steps: int,
                 encoded: bool = False):
        super().__init__()
        self.index = {"a": index_a, "b": index_b}
        self.augment, self.encoded = augment, encoded
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.epoch, self.seed, self.epoch_size = epoch, seed, epoch_size
        self.start, self.steps = start, steps

    def positions(self, step: int) -> list[int]:
        """The epoch positions (indices into the permutation, before the wrap) of this rank's ``step``."""
        first = self.start + step * self.batch_size * self.world_size + self.rank * self.batch_size
        return list(range(first, first + self.batch_size))

    def __iter__(self):
        worker, num_workers = _worker()
        perm = epoch_permutation(self.seed, self.epoch, self.epoch_size)
        reader, skips = MemberReader(), SkipCounter()
        try:
            for step in range(worker, self.steps, num_workers):
                yield self._batch(step, perm, reader, skips)
        finally:
            reader.close()

    def _batch(self, step: int, perm: np.ndarray, reader: MemberReader, skips: SkipCounter) -> dict:
        positions = self.positions(step)
        # one generator per (seed, epoch, rank, step): B draws, stand-ins and augmentations
        rng = np.random.default_rng(mix_seed(self.seed, self.epoch, self.rank, positions[0], ord("S")))
        picks = {"a": [int(perm[p % self.epoch_size]) % len(self.index["a"]) for p in positions],
                 "b": [int(i) for i in rng.integers(0, len(self.index["b"]), size=len(positions))]}
        batch: dict = {"step": step, "positions": positions, "skipped": 0}
        for domain in ("a", "b"):
            keys, images = [], []
            for i in picks[domain]:
                key, image = self._sample(domain, i, rng, reader, skips)
                keys.append(key)
                images.append(image)
            batch[f"keys_{domain}"] = keys
            if self.encoded:   # crops and flips are drawn on the device, from these seeds
                batch[f"{domain}_encoded"] = images
            else:
                try:
                    batch[domain] = stack(images)
                except ValueError:
                    raise DataError(f"{self.index['a'].shards[0]}: images of different sizes in one batch; with "
                                    "data.preprocess=none use data.batch_size=1 or images of one size") from None
        if self.encoded:
            batch["augment_seeds"] = {"a": int(rng.integers(2**63)), "b": int(rng.integers(2**63))}
        batch["skipped"] = skips.take()
        return batch

    def _sample(self, domain: str, i: int, rng: np.random.Generator, reader: MemberReader, skips: SkipCounter):
        """(key, image tensor or (label, bytes)) of sample i of the domain; one that cannot be read or decoded is
        warned about, counted and stood in for by a uniformly drawn one."""
        index = self.index[domain]
        augment_rng = random.Random(int(rng.integers(2**63)))
        while True:
            shard = index.shards[index.shard[i]]
            try:
                data = reader.read(shard, index.offset[i], index.size[i])
            except DataError:   # not this sample: the server or the configuration
                raise
            except Exception as err:   # OSError, a failed range request, ...
                reason = f"cannot read {index.ext[i]}: {_describe(err)}"
            else:
                if self.encoded:
                    skips.ok()
                    return index.key[i], (index.label(i), data)
                try:
                    image = self.augment(decode_rgb(data), augment_rng)
                    skips.ok()
                    return index.key[i], image
                except Exception as err:   # PIL raises many types for bad data
                    reason = f"cannot decode {index.ext[i]}: {err.__class__.__name__}: {err}"
            skips.skip(shard, f"key {index.key[i]}", reason)
            i = int(rng.integers(0, len(index)))


class UnpairedLoader:
    """``steps`` batches of the unpaired stream, in step order; iterate it once (``len()`` = steps)."""

    def __init__(self, dataset: _UnpairedStream, loader_workers: int):
        self.dataset, self.loader_workers = dataset, loader_workers
        self.steps = dataset.steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[dict]:
        if not self.steps:
            return
        workers = min(self.loader_workers, self.steps)
        loader = DataLoader(self.dataset, batch_size=None, num_workers=workers,
                            prefetch_factor=2 if workers else None)
        for expected, batch in enumerate(loader):
            if batch["step"] != expected:   # the DataLoader's round robin is what keeps steps in order
                raise RuntimeError(f"unpaired_loader: got step {batch['step']} where step {expected} was due")
            yield batch


_REPORTED: set[tuple[str, ...]] = set()


def train_index(urls: list[str], domain: str, limit: int = 0) -> SplitIndex:
    """The index of a training split; the problems found while indexing are warned about once per process."""
    index = split_index(urls)
    if tuple(urls) not in _REPORTED:
        _REPORTED.add(tuple(urls))
        for shard, what, reason in index.problems:
            warnings.warn(f"skipped {what} in shard {shard}: {reason}", CorruptSampleWarning, stacklevel=2)
    if limit:
        if limit > len(index):
            raise DataError(f"data.num_train_a: {limit} images asked for, but train{domain} has {len(index)} "
                            f"readable images")
        index = index.head(limit)
    if not len(index):
        first = f"; {index.problems[0][1]} of {index.problems[0][0]}: {index.problems[0][2]}" if index.problems else ""
        raise DataError(f"{urls[0]}: no readable sample in any train{domain} shard ({len(urls)} shard(s)){first}")
    return index


def unpaired_loader(splits: Splits, data_cfg, *, rank: int, world_size: int, epoch: int, seed: int,
                    load_size: int | None = None, start: int = 0) -> UnpairedLoader:
    """One epoch of the unpaired training stream for ``rank`` (see the module docstring), from epoch position
    ``start`` (the samples the run consumed globally in this epoch before it was interrupted).

    Yields ``ceil((N - start) / (batch x world))`` batches, N = ``splits.epoch_size``, each
    ``{"a", "b": float [B, 3, H, W] in [-1, 1], "keys_a", "keys_b": list[str], "positions": list[int],
    "step": int, "skipped": int}``; with ``data_cfg.decode_on_device`` the images stay encoded (``"a_encoded"``,
    ``"b_encoded"``: (label, bytes) pairs, plus ``"augment_seeds"``) for ``cutdist.data.gpu_decode.DeviceBatcher``
    to decode on the training device. ``load_size`` overrides ``data_cfg.load_size`` (the reference trains its
    decay epochs at load = crop).
    """
    if not 0 <= rank < world_size:
        raise DataError(f"unpaired_loader: rank {rank} outside world size {world_size}")
    if not splits.train_a or not splits.train_b:
        raise DataError("unpaired_loader: splits have no trainA or trainB shards")
    epoch_size = splits.epoch_size
    if epoch_size < 1:
        raise DataError("unpaired_loader: the sizes of trainA and trainB are unknown (splits from resolve_splits)")
    if not 0 <= start <= epoch_size:
        raise DataError(f"unpaired_loader: start {start} outside the epoch's {epoch_size} samples")
    index_a = train_index(splits.train_a, "A", data_cfg.num_train_a)
    index_b = train_index(splits.train_b, "B")
    augment = TrainAugment(preprocess=data_cfg.preprocess, load_size=load_size or data_cfg.load_size,
                           crop_size=data_cfg.crop_size, no_flip=data_cfg.no_flip)
    per_step = data_cfg.batch_size * world_size
    steps = math.ceil((epoch_size - start) / per_step)
    dataset = _UnpairedStream(index_a, index_b, augment, batch_size=data_cfg.batch_size, rank=rank,
                              world_size=world_size, epoch=epoch, seed=seed, epoch_size=epoch_size, start=start,
                              steps=steps, encoded=data_cfg.decode_on_device)
    return UnpairedLoader(dataset, data_cfg.loader_workers)


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
