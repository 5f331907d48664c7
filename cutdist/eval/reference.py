"""Inception statistics of a dataset's real target test split (testB), computed once and cached.

The cache file is ``fid-stats/reference-<size>px-<key>.npz`` beside the shards (local shard directories), in
``cache_dir`` when one is given, else ``~/.cache/cutdist/fid-stats`` for remote shards. The key is a sha256
over: the manifest's bytes (or, without a manifest, the shard URL list), the shard file names, the backbone
label, the image size and ``max_images``. Any change to the data, the weights or the resolution therefore
misses the cache; a hit reads one npz and decodes no image. The npz is pytorch-fid's format plus metadata.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch.nn as nn

from cutdist.eval.sources import accumulate_stats, shard_batches
from cutdist.eval.stats import load_stats, save_stats

log = logging.getLogger(__name__)
USER_CACHE = Path("~/.cache/cutdist/fid-stats")


def _urls_and_manifest(splits_or_urls, manifest: str | None) -> tuple[list[str], str | None]:
    if isinstance(splits_or_urls, (str, os.PathLike)):
        return [str(splits_or_urls)], manifest
    if isinstance(splits_or_urls, (list, tuple)):
        return [str(u) for u in splits_or_urls], manifest
    test_b = getattr(splits_or_urls, "test_b", None)   # cutdist.data.Splits
    if test_b is None:
        raise TypeError(f"reference_stats: expected a Splits or a list of shard URLs, got {type(splits_or_urls)}")
    return list(test_b), manifest if manifest is not None else getattr(splits_or_urls, "manifest", None)


def reference_key(urls: list[str], manifest: str | None, backbone: str, size: int, max_images: int = 0) -> str:
    """The cache key (hex sha256) of the reference statistics of ``urls`` (see the module docstring)."""
    from cutdist.data.manifest import read_bytes

    if manifest:
        source = "manifest:" + hashlib.sha256(read_bytes(manifest)).hexdigest()
    else:
        source = "urls:" + hashlib.sha256("\n".join(urls).encode()).hexdigest()
    record = {"v": 1, "source": source, "shards": [u.rstrip("/").rsplit("/", 1)[-1] for u in urls],
              "backbone": backbone, "size": size, "max_images": max_images}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def reference_cache_path(urls: list[str], key: str, size: int, cache_dir: str | Path = "") -> Path:
    from cutdist.data.manifest import is_url, local_path

    if cache_dir:
        directory = Path(cache_dir).expanduser()
    elif not is_url(urls[0]):
        directory = local_path(urls[0]).parent / "fid-stats"
    else:
        directory = USER_CACHE.expanduser()
    return directory / f"reference-{size}px-{key[:16]}.npz"


def reference_stats(splits_or_urls, *, model: nn.Module, backbone: str, size: int, batch_size: int = 50,
                    device=None, cache_dir: str | Path = "", manifest: str | None = None,
                    max_images: int = 0, progress: bool = False, with_features: bool = False):
    """(mu, sigma) of the real test split: a ``cutdist.data.Splits`` (its ``test_b`` and ``manifest``) or a
    list of shard URLs (then ``manifest`` may name the manifest they are listed in).

    Computed with ``model`` (labelled ``backbone``) on images resized to ``size``, once; later calls with the
    same data, backbone and size read the cached npz. ``device`` is unused (the model's device is used);
    it is accepted so callers can pass their evaluation settings unchanged. ``with_features=True`` returns
    ``(mu, sigma, features)`` with the activations themselves (float32 ``[n, 2048]``, for KID), cached in the
    same npz (a cached file without them is recomputed once).
    """
    del device
    urls, manifest = _urls_and_manifest(splits_or_urls, manifest)
    if not urls:
        raise ValueError("reference_stats: no test shards of the target domain (testB)")
    key = reference_key(urls, manifest, backbone, size, max_images)
    path = reference_cache_path(urls, key, size, cache_dir)
    if path.is_file():
        mu, sigma, meta = load_stats(path, with_meta=True)
        cached = meta.get("features")
        if meta.get("key") == key and meta.get("backbone") == backbone:
            if not with_features:
                log.info("FID reference statistics: cache hit %s (%s images)", path, meta.get("n_images"))
                return mu, sigma
            if isinstance(cached, np.ndarray) and cached.ndim == 2:
                return mu, sigma, cached
            log.info("FID reference statistics: %s holds no features (KID needs them); recomputing", path)
        else:
            warnings.warn(f"{path}: cached statistics do not match their key; recomputing")

    skipped = []
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(unit="img", desc="FID reference (testB)")
    features: list = []
    try:
        stats = accumulate_stats(shard_batches(urls, size=size, batch_size=batch_size, max_images=max_images,
                                               on_skipped=skipped.append), model, batch_size=batch_size,
                                 progress=bar, features=features)
    finally:
        if bar is not None:
            bar.close()
    mu, sigma = stats.mu_sigma()
    feats = np.concatenate(features)
    try:   # the features always ride along (KID needs them; 8 KB per image)
        save_stats(path, mu, sigma, backbone=backbone, n_images=stats.n, size=size, key=key,
                   max_images=max_images, skipped=sum(skipped), shards=len(urls), manifest=manifest or "",
                   features=feats)
        log.info("FID reference statistics: %d images -> %s", stats.n, path)
    except OSError as err:
        warnings.warn(f"{path}: cannot cache the FID reference statistics ({err}); they will be recomputed "
                      "next time (set eval.cache_dir to a writable directory)")
    return (mu, sigma, feats) if with_features else (mu, sigma)
