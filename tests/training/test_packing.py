"""Sequence packing: queries and documents in packed rows give the padded batch's loss and gradients."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from lightning_embed.data.batches import PairExample
from lightning_embed.data.datamodule import PairDataModule
from lightning_embed.errors import UserError
from lightning_embed.flops.callback import FlopCallback
from lightning_embed.testing import assert_close_relative
from lightning_embed.training.module import EmbeddingModule
from lightning_embed.training.packing import plan_packing


def _examples(n: int = 12) -> list[PairExample]:
    return [PairExample(" ".join(["word"] * (1 + (i * 5) % 11)) + f" q{i}",
                        " ".join(["tok"] * (2 + (i * 17) % 40)) + f" d{i}", (f"neg {i} " * (1 + i % 4),), i)
            for i in range(n)]


def test_plan_places_every_text_once_within_the_width():
    lengths = [5, 40, 7, 38, 6, 12, 39, 8, 0]
    plan = plan_packing(lengths)
    placed = sorted(t for row in plan.rows for t, _ in row)
    assert placed == list(range(len(lengths)))
    assert plan.width == 40 and all(sum(n for _, n in row) <= plan.width for row in plan.rows)
    assert sum(lengths) <= plan.positions < len(lengths) * max(lengths) * 0.6
    assert plan_packing([]).rows == []


def _pair(backbone: str, pooling: str = "mean", **options):
    torch.manual_seed(0)
    packed = EmbeddingModule(backbone=backbone, query_max_length=16, document_max_length=48, pooling=pooling,
                             pack_sequences=True, **options)
    whole = EmbeddingModule(backbone=backbone, query_max_length=16, document_max_length=48, pooling=pooling,
                            pack_sequences=False, **options)
    whole.load_state_dict(packed.state_dict())
    return packed, whole


def _loss_and_grads(module, batch):
    module.eval()  # BERT's dropout would draw different masks; gradients flow all the same
    loss = module(batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def _assert_same(a, b):
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    # float rounding of differently shaped matmuls only (normwise: lightning_embed.testing.tolerances)
    assert grads_a and grads_a.keys() == grads_b.keys()
    assert_close_relative(loss_a, loss_b, what="loss")
    assert_close_relative(grads_a, grads_b, what="gradients")


@pytest.mark.parametrize("arch", ["llama", "gpt_neox", "bert"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_batch_has_the_loss_and_gradients_of_the_padded_batch(tiny_backbones, arch, attention):
    packed, whole = _pair(tiny_backbones[arch], attn_implementation=attention)
    batch = packed.make_collator()(_examples())
    positions, _ = packed.computed_positions(batch)[0]
    padded = sum(enc["attention_mask"].numel() for enc in (batch.queries, batch.documents))
    assert positions < 0.7 * padded  # the rows really are packed
    assert whole.computed_positions(batch) == [None, None]
    _assert_same(_loss_and_grads(packed, batch), _loss_and_grads(whole, batch))


@pytest.mark.parametrize("pooling", ["last", "cls", "weighted_mean"])
def test_packing_pools_each_text_as_alone(tiny_backbones, pooling):
    packed, whole = _pair(tiny_backbones["llama"], pooling=pooling)
    batch = packed.make_collator()(_examples())
    _assert_same(_loss_and_grads(packed, batch), _loss_and_grads(whole, batch))


def test_left_padded_batches_pack_the_same(tiny_backbones):
    packed, whole = _pair(tiny_backbones["llama"])
    packed.tokenizer.padding_side = "left"
    batch = packed.make_collator()(_examples())
    assert not bool(batch.documents["attention_mask"][:, 0].all())  # really left padded
    _assert_same(_loss_and_grads(packed, batch), _loss_and_grads(whole, batch))


def test_packing_refuses_what_it_cannot_combine_with(tiny_backbones):
    backbone = tiny_backbones["llama"]
    with pytest.raises(UserError, match="split_by_length or gradcache_chunk_size"):
        EmbeddingModule(backbone=backbone, pack_sequences=True, split_by_length=True)
    with pytest.raises(UserError, match="split_by_length or gradcache_chunk_size"):
        EmbeddingModule(backbone=backbone, pack_sequences=True, gradcache_chunk_size=4)


def test_auto_packs_where_packing_checks_out(tiny_backbone):
    module = EmbeddingModule(backbone=tiny_backbone, query_max_length=16, document_max_length=48)
    assert module.hparams.pack_sequences == "auto" and module.packing_enabled()
    assert not EmbeddingModule(backbone=tiny_backbone, gradcache_chunk_size=4).packing_enabled()
    assert not EmbeddingModule(backbone=tiny_backbone, split_by_length=True).packing_enabled()


def test_a_backbone_that_packs_differently_is_not_packed(tiny_backbones, monkeypatch):
    # As RoBERTa would: its position ids start after the padding index, so 0-based ones change the output.
    monkeypatch.setattr("lightning_embed.training.packing.packing_mismatch", lambda *args: 0.5)
    auto = EmbeddingModule(backbone=tiny_backbones["bert"])
    assert not auto.packing_enabled()
    assert "differ by 0.5" in auto._resolve_packing()[1]
    with pytest.raises(UserError, match="pack_sequences cannot pack this backbone"):
        EmbeddingModule(backbone=tiny_backbones["bert"], pack_sequences=True).packing_enabled()


def test_packing_mismatch_is_float_noise_on_real_architectures(tiny_backbone):
    from lightning_embed.models.backbones import hf_model
    from lightning_embed.training.packing import PACKING_TOLERANCE, packing_mismatch

    module = EmbeddingModule(backbone=tiny_backbone)
    for attention in ("eager", "sdpa"):
        hf_model(module.backbone).set_attn_implementation(attention)
        assert packing_mismatch(module.backbone, attention, module.backbone_info.is_decoder,
                                module.tokenizer) < PACKING_TOLERANCE / 10


def test_packed_training_counts_the_packed_positions(tiny_backbones, tmp_path):
    module = EmbeddingModule(backbone=tiny_backbones["llama"], query_max_length=16, document_max_length=48,
                             pack_sequences=True)
    data = PairDataModule(train="builtin:stdlib-code", batch_size=8, max_train_examples=32, seed=0)
    flops = FlopCallback(runs_file=str(tmp_path / "runs.jsonl"))
    trainer = L.Trainer(max_steps=3, precision="bf16-mixed", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        callbacks=[flops], default_root_dir=tmp_path)
    trainer.fit(module, datamodule=data)
    counts = flops.counter
    assert 0 < counts.tokens <= counts.padded_tokens < 1.15 * counts.tokens  # almost no padding computed
