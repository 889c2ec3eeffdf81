"""Pooling (lightning_embed/models/pooling.py): both padding sides, fp32 under bf16, and ``model.pool_prompt: false``
(the prompt's tokens left out of pooling in training, encode and the export)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from lightning_embed.data.batches import PairExample
from lightning_embed.data.datamodule import PairDataModule
from lightning_embed.models.pooling import pool, prompt_token_count, without_prompt
from lightning_embed.testing import assert_close_relative
from lightning_embed.training.module import EmbeddingModule

QUERIES = ["alpha bravo", "return the number of items", "split a string into words please", "x"]
DOCUMENTS = ["the alpha and the bravo here", "def length(items):\n    return len(items)",
             "text.split() splits on whitespace", "open a file and read its lines"]
PROMPTS = {"query_prompt": "Represent this query: ", "document_prompt": "passage: "}


def _batch(module):
    return module.make_collator()([PairExample(q, d, (), i) for i, (q, d) in enumerate(zip(QUERIES, DOCUMENTS))])


@pytest.mark.parametrize("arch", ["llama", "bert"])
def test_prompt_length_is_counted_as_sentence_transformers_counts_it(tiny_backbones, arch):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(tiny_backbones[arch], device="cpu")
    module = EmbeddingModule(backbone=tiny_backbones[arch], pool_prompt=False, **PROMPTS)
    for prompt, count in zip(PROMPTS.values(), module.prompt_lengths):
        assert count == st[0]._get_prompt_length(prompt) == prompt_token_count(module.tokenizer, prompt) > 0


def test_without_prompt_on_both_padding_sides():
    mask = torch.tensor([[1, 1, 1, 1, 0], [0, 0, 1, 1, 1]])
    assert without_prompt(mask, 2).tolist() == [[0, 0, 1, 1, 0], [0, 0, 0, 0, 1]]
    assert without_prompt(mask, 0) is mask


@pytest.mark.parametrize("arch", ["llama", "bert"])
def test_training_pools_only_the_text_after_the_prompt(tiny_backbones, arch):
    torch.manual_seed(0)
    with_prompt = EmbeddingModule(backbone=tiny_backbones[arch], pack_sequences=False, **PROMPTS).eval()
    module = EmbeddingModule(backbone=tiny_backbones[arch], pool_prompt=False, pack_sequences=True,
                             **PROMPTS).eval()
    module.backbone.load_state_dict(with_prompt.backbone.state_dict())
    batch = _batch(module)
    with torch.no_grad():
        packed = module.encode_pair_batch(batch)
        module.choose_encoding(pack_sequences=False)
        padded = module.encode_pair_batch(batch)
        out = module.backbone(input_ids=batch.queries["input_ids"], attention_mask=batch.queries["attention_mask"])
        want = F.normalize(pool(out.last_hidden_state,
                                without_prompt(batch.queries["attention_mask"], module.prompt_lengths[0])), dim=-1)
        pooled_all = with_prompt.encode_pair_batch(batch)
    assert_close_relative({"q": packed[0], "d": packed[1]}, {"q": padded[0], "d": padded[1]}, what="packed/padded")
    assert_close_relative(padded[0], want, what="queries pooled without the prompt")
    assert (F.cosine_similarity(padded[0], pooled_all[0]) < 0.9999).all()


@pytest.mark.parametrize("padding", ["right", "left"])
def test_export_pools_without_the_prompt_in_sentence_transformers(tiny_backbones, tmp_path, padding):
    from sentence_transformers import SentenceTransformer

    from lightning_embed.models.encoder import load
    from lightning_embed.models.export import export_checkpoint

    L.seed_everything(0)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"query": f"alpha {i}", "positive": f"the alpha number {i}"}) + "\n"
                             for i in range(16)))
    backbone = tiny_backbones["llama"]
    if padding == "left":  # many decoder tokenizers pad on the left
        backbone = str(tmp_path / "left")
        shutil.copytree(tiny_backbones["llama"], backbone)
        config = json.loads((Path(backbone) / "tokenizer_config.json").read_text())
        (Path(backbone) / "tokenizer_config.json").write_text(json.dumps({**config, "padding_side": "left"}))
    module = EmbeddingModule(backbone=backbone, pool_prompt=False, learning_rate=1e-2,
                             warmup_ratio=0.0, query_max_length=32, document_max_length=48, **PROMPTS)
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, datamodule=PairDataModule(train=str(pairs), batch_size=8))
    ckpt = tmp_path / "model.ckpt"
    trainer.save_checkpoint(ckpt)
    module.eval()
    assert module.tokenizer.padding_side == padding
    with torch.no_grad():
        ref_q, ref_d = module.encode_pair_batch(_batch(module))
    out = export_checkpoint(ckpt, tmp_path / "export")
    assert json.loads((out / "1_Pooling" / "config.json").read_text())["include_prompt"] is False
    st = SentenceTransformer(str(out), device="cpu")
    st_q = torch.as_tensor(st.encode(QUERIES, prompt_name="query"))
    st_d = torch.as_tensor(st.encode(DOCUMENTS, prompt_name="document"))
    assert F.cosine_similarity(st_q, ref_q).min() > 0.9999
    assert F.cosine_similarity(st_d, ref_d).min() > 0.9999
    for source in (ckpt, out):
        encoder = load(source, device="cpu")
        assert not encoder.pool_prompt
        assert F.cosine_similarity(encoder.encode(QUERIES, prompt="query"), ref_q).min() > 0.9999, source
        assert F.cosine_similarity(encoder.encode(DOCUMENTS, prompt="document"), ref_d).min() > 0.9999, source
    # Read as a plain sentence-transformers folder, include_prompt: false is honoured too.
    from lightning_embed.models.encoder import load_pretrained

    foreign = load_pretrained(str(out))
    assert not foreign.pool_prompt
    assert F.cosine_similarity(foreign.encode(QUERIES, prompt="query"), ref_q).min() > 0.9999


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
