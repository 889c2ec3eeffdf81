"""The contrastive loss against an independent reference, and pooling with both padding sides."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_embed.losses.infonce import InfoNCELoss
from lightning_embed.models.pooling import pool


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


def _padded(hidden_rows, side):
    """Pads variable-length rows of (len, H) on ``side``; returns hidden (B, L, H) and mask (B, L)."""
    longest = max(len(r) for r in hidden_rows)
    h = hidden_rows[0].shape[1]
    out = torch.full((len(hidden_rows), longest, h), 99.0)  # garbage in padding must never leak
    mask = torch.zeros(len(hidden_rows), longest, dtype=torch.long)
    for i, r in enumerate(hidden_rows):
        sl = slice(longest - len(r), longest) if side == "left" else slice(0, len(r))
        out[i, sl] = r
        mask[i, sl] = 1
    return out, mask


@pytest.mark.parametrize("side", ["left", "right"])
def test_pooling_with_both_padding_sides(side):
    torch.manual_seed(0)
    rows = [torch.randn(n, 3) for n in (2, 5, 1)]
    hidden, mask = _padded(rows, side)
    mean = pool(hidden, mask, "mean")
    last = pool(hidden, mask, "last")
    cls = pool(hidden, mask, "cls")
    wmean = pool(hidden, mask, "weighted_mean")
    for i, r in enumerate(rows):
        assert torch.allclose(mean[i], r.mean(0), atol=1e-6)
        assert torch.allclose(last[i], r[-1])
        assert torch.allclose(cls[i], r[0])
        w = torch.arange(1, len(r) + 1, dtype=torch.float32)
        assert torch.allclose(wmean[i], (r * w[:, None]).sum(0) / w.sum(), atol=1e-6)


def test_pooling_is_fp32_under_bf16():
    hidden = torch.randn(2, 4, 3, dtype=torch.bfloat16)
    assert pool(hidden, torch.ones(2, 4, dtype=torch.long), "mean").dtype == torch.float32


def test_unknown_pooling():
    with pytest.raises(ValueError, match="unknown pooling"):
        pool(torch.randn(1, 2, 3), torch.ones(1, 2), "max")
