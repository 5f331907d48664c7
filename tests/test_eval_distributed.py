"""Two real torch.distributed (gloo) processes: all-reduced statistics, FID and KID equal one process's."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from eval_fixtures import weights_file

DIM = 2048
ROWS = {0: (0, 23), 1: (23, 37)}          # uneven split of 37 activation rows
ROWS_EMPTY_RANK = {0: (0, 37), 1: (37, 37)}


def _acts() -> np.ndarray:
    rng = np.random.default_rng(5)
    return np.abs(rng.normal(0.35, 0.3, (37, DIM))) * rng.uniform(0.2, 3.0, DIM) + rng.uniform(0, 2, DIM)


def _translate(x: torch.Tensor) -> torch.Tensor:
    """A stand-in generator: deterministic, image-dependent, output in [-1, 1]."""
    return torch.tanh(1.5 * x.flip(-1)) * 0.95


def _worker(rank: int, world: int, tmp: str, urls: list[str], weights: str) -> None:
    import torch.distributed as dist

    from cutdist.eval import ActivationStats, fid_during_training, load_inception
    from cutdist.data.stream import test_loader

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/init", rank=rank, world_size=world)
    acts = _acts()
    for name, rows in (("uneven", ROWS), ("empty", ROWS_EMPTY_RANK)):
        start, stop = rows[rank]
        stats = ActivationStats(DIM)
        for i in range(start, stop, 5):   # several updates per rank
            stats.update(acts[i:min(i + 5, stop)])
        stats.all_reduce()
        mu, sigma = stats.mu_sigma()
        np.save(f"{tmp}/{name}-mu-{rank}.npy", mu)
        np.save(f"{tmp}/{name}-sigma-{rank}.npy", sigma)

    model, backbone = load_inception(weights)
    ref = np.load(f"{tmp}/ref.npz")
    seen = []

    def batches():   # this rank's share of the test shards, as test_loader gives it (keys, images in [-1, 1])
        for keys, images in test_loader(urls, rank=rank, world_size=world, size=32, batch_size=2):
            seen.extend(keys)
            yield keys, images

    result = fid_during_training(_translate, batches(), model=model, backbone=backbone, ref_mu=ref["mu"],
                                 ref_sigma=ref["sigma"], device="cpu", ref_features=ref["features"])
    with open(f"{tmp}/fid-{rank}.json", "w") as fh:
        json.dump({**result, "keys": seen}, fh)
    dist.destroy_process_group()
    if rank == 0:   # the same evaluation in one process (no process group), all 5 images in one batch
        single = fid_during_training(_translate, test_loader(urls, rank=0, world_size=1, size=32, batch_size=5),
                                     model=model, backbone=backbone, ref_mu=ref["mu"], ref_sigma=ref["sigma"],
                                     device="cpu", ref_features=ref["features"])
        with open(f"{tmp}/fid-single.json", "w") as fh:
            json.dump(single, fh)


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process(tmp_path, monkeypatch):
    from cutdist.data.synth import write_synth_dataset
    from cutdist.eval.sources import shard_split

    root = write_synth_dataset(tmp_path / "shards", size=32, count=2, test_count=5, seed=4, max_count=2)
    urls = shard_split(str(root), "testA").urls
    assert len(urls) == 3   # 2 + 2 + 1 images
    rng = np.random.default_rng(0)
    ref_acts = np.abs(rng.normal(0.4, 0.3, (40, DIM)))
    np.savez(tmp_path / "ref.npz", mu=ref_acts.mean(0), sigma=np.cov(ref_acts, rowvar=False), features=ref_acts)

    # one BLAS thread per rank: two ranks share this machine's cores (and OpenBLAS degrades badly when oversubscribed)
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(2, str(tmp_path), urls, str(weights_file())), nprocs=2, join=True)

    acts = _acts()
    for name in ("uneven", "empty"):
        for rank in (0, 1):
            np.testing.assert_allclose(np.load(tmp_path / f"{name}-mu-{rank}.npy"), acts.mean(0), rtol=0, atol=1e-9)
            np.testing.assert_allclose(np.load(tmp_path / f"{name}-sigma-{rank}.npy"), np.cov(acts, rowvar=False),
                                       rtol=0, atol=1e-6)
        np.testing.assert_array_equal(np.load(tmp_path / f"{name}-sigma-0.npy"),
                                      np.load(tmp_path / f"{name}-sigma-1.npy"))   # every rank: same bytes

    results = [json.loads((tmp_path / f"fid-{rank}.json").read_text()) for rank in (0, 1)]
    assert sorted(results[0]["keys"] + results[1]["keys"]) == [f"{i:06d}" for i in range(5)]   # each once
    assert {len(results[0]["keys"]), len(results[1]["keys"])} == {2, 3}
    assert results[0]["fid"] == results[1]["fid"]

    single = json.loads((tmp_path / "fid-single.json").read_text())
    assert single["n_images"] == 5 and results[0]["n_images"] == 5
    assert single["backbone"] == results[0]["backbone"] and single["real_fid"] is False   # test-made weights
    assert "sha256" in single["backbone"]
    assert single["fid"] > 1.0
    assert results[0]["fid"] == pytest.approx(single["fid"], rel=1e-6)
    # KID from all-gathered features (key order): the same on both ranks and as in one process
    assert results[0]["kid"] == results[1]["kid"] and results[0]["kid_std"] == results[1]["kid_std"]
    assert results[0]["kid_subset_size"] == 5 and results[0]["kid_std"] > 0   # 5 of 5 generated, 5 of 40 refs
    assert results[0]["kid"] == pytest.approx(single["kid"], rel=1e-6, abs=1e-9)
    assert results[0]["kid_std"] == pytest.approx(single["kid_std"], rel=1e-6)
