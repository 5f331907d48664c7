"""patchnce_loss against a deliberately plain, row-by-row implementation of the paper's InfoNCE."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cutdist.model.patchnce import patchnce_loss


def plain_patchnce(q: torch.Tensor, k: torch.Tensor, temperature: float, batch_size: int) -> list[float]:
    """For each query row i of image b: logits = [q_i . k_i] + [q_i . k_j for the other rows j of image b, and
    -10 in place of j == i (the reference masks the self-similarity diagonal with -10)], all / temperature;
    loss_i = -log softmax(logits)[0]. Python floats, one row at a time."""
    q, k = q.double().tolist(), k.double().tolist()
    n = len(q)
    per_image = n // batch_size
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731
    losses = []
    for i in range(n):
        first = (i // per_image) * per_image
        logits = [dot(q[i], k[i])]
        for j in range(first, first + per_image):
            logits.append(-10.0 if j == i else dot(q[i], k[j]))
        logits = [v / temperature for v in logits]
        top = max(logits)
        log_sum = top + math.log(sum(math.exp(v - top) for v in logits))
        losses.append(log_sum - logits[0])
    return losses


def _features(n: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(n, dim, generator=gen), dim=1)
    k = F.normalize(q + 0.8 * torch.randn(n, dim, generator=gen), dim=1)   # positives correlate with queries
    return q, k


@pytest.mark.parametrize("batch_size,patches,dim,temperature", [
    (1, 8, 4, 0.07), (2, 5, 16, 0.07), (3, 4, 8, 0.5), (4, 16, 32, 1.0), (2, 1, 3, 0.2),
])
def test_matches_plain_implementation(batch_size, patches, dim, temperature):
    q, k = _features(batch_size * patches, dim, seed=batch_size * 100 + patches)
    got = patchnce_loss(q, k, temperature, batch_size)
    want = torch.tensor(plain_patchnce(q, k, temperature, batch_size), dtype=torch.float32)
    assert got.shape == (batch_size * patches,)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_batch_size_one_takes_negatives_from_the_whole_batch():
    q, k = _features(12, 8, seed=7)
    whole = patchnce_loss(q, k, 0.07, 1)
    per_image = patchnce_loss(q, k, 0.07, 3)
    torch.testing.assert_close(whole, torch.tensor(plain_patchnce(q, k, 0.07, 1), dtype=torch.float32),
                               rtol=1e-4, atol=1e-4)
    assert (whole > per_image + 1e-6).all()          # more negatives can only raise each row's loss


def test_gradients_reach_queries_but_not_keys():
    q, k = _features(8, 6, seed=3)
    q.requires_grad_(True)
    k.requires_grad_(True)
    patchnce_loss(q, k, 0.07, 2).mean().backward()
    assert k.grad is None
    assert q.grad is not None and q.grad.abs().sum() > 0


def test_bf16_inputs_and_autocast_give_float32_logits():
    q, k = _features(16, 32, seed=5)
    qb, kb = q.bfloat16(), k.bfloat16()
    want = patchnce_loss(qb.float(), kb.float(), 0.07, 2)
    got = patchnce_loss(qb, kb, 0.07, 2)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = patchnce_loss(qb, kb, 0.07, 2)
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, want, rtol=0, atol=0)   # bmm did not drop to bf16 under autocast


def test_rows_must_split_into_the_batch():
    q, k = _features(10, 4, seed=1)
    with pytest.raises(ValueError, match="batch_size=3"):
        patchnce_loss(q, k, 0.07, 3)
    with pytest.raises(ValueError, match="equal"):
        patchnce_loss(q, k[:5], 0.07, 1)
