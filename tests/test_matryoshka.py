"""Matryoshka training: the loss over leading slices, its checks, and truncated embeddings at inference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_embed.errors import UserError
from lightning_embed.loss import InfoNCELoss
from lightning_embed.losses import GTELoss
from lightning_embed.matryoshka import MatryoshkaLoss, check_matryoshka, truncate


def _embeddings(b=6, k=1, h=16):
    g = torch.Generator().manual_seed(1)
    return (F.normalize(torch.randn(b, h, generator=g), dim=-1),
            F.normalize(torch.randn(b * (1 + k), h, generator=g), dim=-1))


@pytest.mark.parametrize("base", [InfoNCELoss(0.05), GTELoss(0.05)])
def test_one_full_dimension_equals_the_plain_loss(base):
    q, d = _embeddings()
    plain = base(q, d, 1)
    assert abs(MatryoshkaLoss(base, [16])(q, d, 1).item() - plain.item()) <= 1e-6 * plain.item()


def test_sum_over_renormalised_slices_with_weights():
    q, d = _embeddings()
    base = InfoNCELoss(0.05)
    want = sum(w * base(F.normalize(q[:, :n], dim=-1), F.normalize(d[:, :n], dim=-1), 1)
               for n, w in ((16, 1.0), (8, 0.5), (2, 2.0)))
    got = MatryoshkaLoss(base, [16, 8, 2], [1.0, 0.5, 2.0])(q, d, 1)
    assert abs(got.item() - want.item()) <= 1e-6 * want.item()
    # Unnormalised models are not re-normalised.
    raw = MatryoshkaLoss(base, [16, 8], normalize=False)(q, d, 1)
    assert abs(raw.item() - (base(q, d, 1) + base(q[:, :8], d[:, :8], 1)).item()) <= 1e-6 * raw.item()


@pytest.mark.parametrize("dims, weights, message", [
    ([64, 128], None, "strictly decreasing"),
    ([64, 64], None, "strictly decreasing"),
    ([1024, 64], None, "exceeds the embedding size 576"),
    ([], None, "non-empty"),
    ([64, 0], None, "positive integers"),
    ([256, 64], [1.0], "one positive weight per dimension"),
    (None, [1.0], "needs matryoshka_dims"),
])
def test_bad_dims_are_named(dims, weights, message):
    assert any(message in p for p in check_matryoshka(dims, weights, 576))


def test_module_rejects_dims_above_hidden_size(tiny_backbones):
    from lightning_embed.module import EmbeddingModule

    with pytest.raises(UserError, match="exceeds the embedding size 32"):
        EmbeddingModule(backbone=tiny_backbones["llama"], matryoshka_dims=[64, 16])


def test_module_loss_is_computed_once_per_batch_and_trains(tiny_backbones):
    """The module's Matryoshka loss equals the sum of the plain losses on truncated embeddings of one forward."""
    from lightning_embed.data import PairExample
    from lightning_embed.module import EmbeddingModule

    torch.manual_seed(0)
    module = EmbeddingModule(backbone=tiny_backbones["llama"], matryoshka_dims=[32, 16, 8], loss="gte",
                             pack_sequences=False)
    module.backbone.eval()
    batch = module.make_collator()([PairExample(f"query {i}", f"document {i} " * (i + 1), (), i) for i in range(4)])
    calls = []
    module.backbone.register_forward_hook(lambda *args: calls.append(1))
    loss = module(batch)
    assert len(calls) == 2  # queries and documents, once each: the slices reuse them
    queries, documents = module.encode_pair_batch(batch)
    plain = GTELoss(module.hparams.temperature, gather_across_devices=False)
    want = sum(plain(truncate(queries, n, True), truncate(documents, n, True), 0) for n in (32, 16, 8))
    assert abs(loss.item() - want.item()) <= 1e-5 * want.item()
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.backbone.parameters())


def test_truncate():
    e = F.normalize(torch.randn(3, 8), dim=-1)
    assert torch.equal(truncate(e, None, True), e)
    t = truncate(e, 4, True)
    assert t.shape == (3, 4) and torch.allclose(t.norm(dim=-1), torch.ones(3))
    assert torch.equal(truncate(e, 4, False), e[:, :4])
