"""Length-sorted micro-batches: the same loss and gradients as the padded batch, fewer positions computed."""

from __future__ import annotations

import pytest
import torch

from lightning_embed.data.batches import PairCollator, PairExample
from lightning_embed.testing import assert_close_relative
from lightning_embed.training.module import EmbeddingModule
from lightning_embed.training.unpadding import computed_positions, plan_micro_batches


def _examples(n: int = 12) -> list[PairExample]:
    return [PairExample(" ".join(["word"] * (1 + (i * 5) % 11)) + f" q{i}",
                        " ".join(["tok"] * (2 + (i * 17) % 40)) + f" d{i}", (f"neg {i} " * (1 + i % 4),), i)
            for i in range(n)]


def test_plan_covers_every_row_once_and_cuts_padding():
    lengths = [5, 40, 7, 38, 6, 12, 39, 8]
    plan = plan_micro_batches(lengths, overhead=16)
    assert sorted(i for rows, _ in plan for i in rows) == list(range(len(lengths)))
    assert all(w == max(lengths[i] for i in rows) for rows, w in plan)
    positions, _ = computed_positions(plan)
    assert sum(lengths) <= positions < len(lengths) * max(lengths) * 0.6
    # A huge overhead keeps the batch whole; a row limit (GradCache's mini-batch) is honoured.
    assert len(plan_micro_batches(lengths, overhead=10_000)) == 1
    assert all(len(rows) <= 3 for rows, _ in plan_micro_batches(lengths, overhead=0, max_rows=3))
    assert plan_micro_batches([], overhead=1) == []


@pytest.mark.parametrize("arch", ["llama", "gpt_neox", "bert"])
@pytest.mark.parametrize("gradcache", [None, 4])
def test_split_batch_has_the_loss_and_gradients_of_the_padded_batch(tiny_backbones, arch, gradcache, monkeypatch):
    # Tiny texts: a small per-micro-batch overhead so that the batch is cut as a real one would be.
    monkeypatch.setattr("lightning_embed.training.encoding.default_overhead", lambda device: 4)
    torch.manual_seed(0)
    split = EmbeddingModule(backbone=tiny_backbones[arch], query_max_length=16, document_max_length=48,
                            gradcache_chunk_size=gradcache, split_by_length=True)
    whole = EmbeddingModule(backbone=tiny_backbones[arch], query_max_length=16, document_max_length=48,
                            gradcache_chunk_size=gradcache, split_by_length=False, pack_sequences=False)
    whole.load_state_dict(split.state_dict())
    batch = split.make_collator()(_examples())
    plans = split.micro_batch_plans(batch)
    assert all(len(p) > 1 for p in plans)  # the batch really is cut
    assert whole.micro_batch_plans(batch) == [None, None]
    losses, grads = [], []
    for module in (split, whole):
        module.eval()  # BERT's dropout would draw different masks; gradients flow all the same
        loss = module(batch)
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None})
    # float rounding of differently shaped matmuls only (normwise: lightning_embed.testing.tolerances)
    assert grads[0] and grads[0].keys() == grads[1].keys()
    assert_close_relative(losses[0], losses[1], what="loss")
    assert_close_relative(grads[0], grads[1], what="gradients")


def test_left_padding_is_not_split(tiny_backbones):
    module = EmbeddingModule(backbone=tiny_backbones["llama"], query_max_length=16, document_max_length=48,
                             split_by_length=True)
    module.tokenizer.padding_side = "left"
    batch = module.make_collator()(_examples())
    assert batch.query_lengths is None and module.micro_batch_plans(batch) == [None, None]


def test_collator_lengths_match_the_masks(tiny_backbones):
    module = EmbeddingModule(backbone=tiny_backbones["llama"], query_max_length=16, document_max_length=48)
    collate: PairCollator = module.make_collator()
    batch = collate(_examples())
    assert batch.query_lengths == batch.queries["attention_mask"].sum(1).tolist()
    assert batch.document_lengths == batch.documents["attention_mask"].sum(1).tolist()
