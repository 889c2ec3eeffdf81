"""The InfoNCE loss (lightning_embed/losses/infonce.py) against an independent reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_embed.losses.infonce import InfoNCELoss


def _reference_infonce(q, d, k, t, symmetric):
    """Plain-Python InfoNCE: softmax over every document, per query; then doc->query over queries."""
    b = len(q)
    sim = [[sum(a * c for a, c in zip(q[i], d[j])) / t for j in range(len(d))] for i in range(b)]
    forward = 0.0
    for i in range(b):
        denom = sum(math.exp(s) for s in sim[i])
        forward += -math.log(math.exp(sim[i][i]) / denom)
    forward /= b
    if not symmetric:
        return forward
    backward = 0.0
    for i in range(b):
        col = [sim[j][i] for j in range(b)]  # positive document i against every query
        backward += -math.log(math.exp(col[i]) / sum(math.exp(s) for s in col))
    return 0.5 * (forward + backward / b)


@pytest.mark.parametrize("k", [0, 1, 3])
@pytest.mark.parametrize("symmetric", [True, False])
def test_infonce_matches_reference(k, symmetric):
    torch.manual_seed(k)
    b, h, t = 5, 7, 0.05
    q = F.normalize(torch.randn(b, h, dtype=torch.float64), dim=-1)
    d = F.normalize(torch.randn(b * (1 + k), h, dtype=torch.float64), dim=-1)
    got = InfoNCELoss(temperature=t, symmetric=symmetric)(q, d, num_negatives=k).item()
    want = _reference_infonce(q.tolist(), d.tolist(), k, t, symmetric)
    assert got == pytest.approx(want, rel=1e-5)


def test_hard_negatives_raise_the_loss_when_they_are_close():
    torch.manual_seed(0)
    q = F.normalize(torch.randn(4, 16), dim=-1)
    pos = F.normalize(q + 0.3 * torch.randn(4, 16), dim=-1)
    far = F.normalize(torch.randn(4, 16), dim=-1)
    near = F.normalize(q + 0.35 * torch.randn(4, 16), dim=-1)
    loss = InfoNCELoss(temperature=0.05, symmetric=False)
    assert loss(q, torch.cat([pos, near]), 1) > loss(q, torch.cat([pos, far]), 1)


def test_loss_rejects_wrong_document_count():
    with pytest.raises(ValueError, match="expected 8 documents"):
        InfoNCELoss()(torch.randn(4, 3), torch.randn(5, 3), num_negatives=1)


def test_temperature_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        InfoNCELoss(temperature=0.0)
