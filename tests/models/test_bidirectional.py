"""Bidirectional attention for decoder backbones: training, packing, encoding and the export."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from lightning_embed.data.batches import PairExample
from lightning_embed.data.datamodule import PairDataModule
from lightning_embed.errors import UserError
from lightning_embed.models.bidirectional import attends_both_ways, attends_causally
from lightning_embed.testing import assert_close_relative
from lightning_embed.training.module import EmbeddingModule

TEXTS = [PairExample(f"query {i} " + "word " * (i % 3), f"document {i} about " + "topic " * (1 + i % 4), (), i)
         for i in range(6)]


def _train(backbone, root, **model_args):
    L.seed_everything(0)
    root.mkdir(parents=True, exist_ok=True)
    pairs = root / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"query": f"alpha {i}", "positive": f"the alpha number {i} " * (1 + i % 3)})
                             + "\n" for i in range(16)))
    module = EmbeddingModule(backbone=backbone, learning_rate=1e-2, warmup_ratio=0.0, lr_schedule="constant",
                             query_max_length=16, document_max_length=32, **model_args)
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", num_sanity_val_steps=0)
    trainer.fit(module, datamodule=PairDataModule(train=str(pairs), batch_size=8))
    path = root / "model.ckpt"
    trainer.save_checkpoint(path)
    module.eval()
    return path, module


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_decoder_becomes_bidirectional(tiny_backbones, arch):
    causal = EmbeddingModule(backbone=tiny_backbones[arch], pack_sequences=False)
    both = EmbeddingModule(backbone=tiny_backbones[arch], bidirectional=True, pack_sequences=False)
    assert causal.causal and not attends_both_ways(causal.backbone)
    assert not both.causal and not attends_causally(both.backbone) and attends_both_ways(both.backbone)


def test_encoder_gets_a_note_not_an_error(tiny_backbones, capsys):
    module = EmbeddingModule(backbone=tiny_backbones["bert"], bidirectional=True)
    assert "attends both ways already" in capsys.readouterr().err
    assert not module.causal


def test_architecture_that_ignores_the_flag_is_refused(tiny_backbones, monkeypatch):
    from lightning_embed.models import bidirectional

    monkeypatch.setattr(bidirectional, "attends_both_ways", lambda model: False)
    with pytest.raises(UserError, match="would stay causal"):
        EmbeddingModule(backbone=tiny_backbones["llama"], bidirectional=True)


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_bidirectional_packed_equals_bidirectional_padded(tiny_backbones, arch, attention):
    torch.manual_seed(0)
    module = EmbeddingModule(backbone=tiny_backbones[arch], bidirectional=True, attn_implementation=attention,
                             pack_sequences=True, query_max_length=16, document_max_length=24)
    module.backbone.eval()
    batch = module.make_collator()(TEXTS)
    with torch.no_grad():
        assert module.packing_enabled()
        packed = module.encode_pair_batch(batch)
        padded = (module.encode_batch(batch.queries), module.encode_batch(batch.documents))
        causal = EmbeddingModule(backbone=tiny_backbones[arch], attn_implementation=attention, pack_sequences=True,
                                 query_max_length=16, document_max_length=24).eval()
        causal_packed = causal.encode_pair_batch(batch)
    assert_close_relative({"queries": packed[0], "documents": packed[1]},
                          {"queries": padded[0], "documents": padded[1]}, what="packed vs padded bidirectional")
    # And it is not the causal model: every text longer than one token changes.
    assert (F.cosine_similarity(packed[1], causal_packed[1]) < 0.9999).all()


def test_export_runs_bidirectional_in_sentence_transformers_and_transformers(tiny_backbones, tmp_path):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    from lightning_embed.models.encoder import load
    from lightning_embed.models.export import export_checkpoint

    ckpt, module = _train(tiny_backbones["llama"], tmp_path / "run", bidirectional=True, tuning={"name": "lora",
                                                                                                   "rank": 4})
    batch = module.make_collator()(TEXTS)
    with torch.no_grad():
        ref_q, ref_d = module.encode_pair_batch(batch)
    out = export_checkpoint(ckpt, tmp_path / "export")
    assert json.loads((out / "config.json").read_text())["is_causal"] is False
    plain = AutoModel.from_pretrained(str(out))  # no trust_remote_code
    assert attends_both_ways(plain)
    st = SentenceTransformer(str(out), device="cpu")
    assert attends_both_ways(st[0].auto_model)
    st_q = torch.as_tensor(st.encode([e.query for e in TEXTS]))
    st_d = torch.as_tensor(st.encode([e.positive for e in TEXTS]))
    assert F.cosine_similarity(st_q, ref_q).min() > 0.9999
    assert F.cosine_similarity(st_d, ref_d[:len(TEXTS)]).min() > 0.9999
    for source in (ckpt, out):
        encoder = load(source, device="cpu")
        assert F.cosine_similarity(encoder.encode([e.query for e in TEXTS]), ref_q).min() > 0.9999, source


def test_export_refuses_a_model_that_would_run_causal(tiny_backbones, tmp_path):
    from lightning_embed.models.export import export_module

    module = EmbeddingModule(backbone=tiny_backbones["llama"], bidirectional=True)
    module.backbone.config.is_causal = True  # as if the architecture had dropped the flag
    with pytest.raises(UserError, match="silently run causal"):
        export_module(module, tmp_path / "export")
    assert not (tmp_path / "export").exists()


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "gpt_neox"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_the_saved_flag_makes_each_family_bidirectional_without_remote_code(family, attention, tmp_path):
    """What the export relies on: config.is_causal=false survives save/load and every layer attends both ways."""
    from transformers import AutoConfig, AutoModel

    from lightning_embed.models.bidirectional import make_bidirectional

    sizes = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 4}
    if family != "gpt_neox":
        sizes["num_key_value_heads"] = 2
    torch.manual_seed(0)
    model = AutoModel.from_config(AutoConfig.for_model(family, **sizes), attn_implementation=attention)
    assert not attends_both_ways(model)
    assert make_bidirectional(model, family, is_decoder=True)
    model.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path, attn_implementation=attention)
    assert reloaded.config.is_causal is False and attends_both_ways(reloaded)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():  # the padding mask still holds: a padded copy embeds its real tokens the same
        alone = reloaded(input_ids=ids).last_hidden_state
        padded = reloaded(input_ids=torch.cat([ids, torch.zeros(1, 2, dtype=torch.long)], 1),
                          attention_mask=torch.tensor([[1, 1, 1, 1, 1, 0, 0]])).last_hidden_state[:, :5]
    assert_close_relative(padded, alone, what="padded vs alone")
