"""Prompts and lengths of an export: plain encode adds no prompt on every route; query and document
encodes add the trained prompts and truncate at the trained lengths, as the module did in training."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from lightning_embed.errors import UserError
from lightning_embed.models.encoder import load
from lightning_embed.models.export import export_checkpoint
from tests.models.checkpoints import reference_embeddings, train_checkpoint

LONG = ["alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa",
        "return the number of items in the list after removing every duplicate and sorting them twice"]
SHORT = ["alpha", "split a string"]
TEXTS = LONG + SHORT


@pytest.fixture(scope="module")
def prompted(tiny_backbones, tmp_path_factory):
    """A full fine-tune with prompts and queries cut far shorter than documents (8 against 48 tokens)."""
    root = tmp_path_factory.mktemp("prompted")
    ckpt, module = train_checkpoint(tiny_backbones["llama"], root / "run", query_max_length=8,
                                    document_max_length=48)
    return ckpt, module, export_checkpoint(ckpt, root / "export")


def _agree(a, b) -> float:
    return float(F.cosine_similarity(torch.as_tensor(a), torch.as_tensor(b)).min())


def test_plain_encode_is_the_same_everywhere_and_prompts_match_training(prompted):
    from sentence_transformers import SentenceTransformer

    ckpt, module, folder = prompted
    config = json.loads((folder / "config_sentence_transformers.json").read_text())
    assert config["default_prompt_name"] is None and config["prompts"] == {"query": "q: ", "document": "d: "}
    st = SentenceTransformer(str(folder), device="cpu")
    assert len(module.tokenizer("q: " + LONG[0])["input_ids"]) > 8  # truncation matters for queries

    plain = torch.as_tensor(st.encode(TEXTS))
    for source in (folder, ckpt):
        encoder = load(source, device="cpu")
        assert _agree(encoder.encode(TEXTS), plain) > 0.9999, source
        # encode_query / encode_document: prompt and trained length, as the module embedded in training
        assert _agree(encoder.encode(TEXTS, prompt="query"), st.encode_query(TEXTS)) > 0.9999, source
        assert _agree(encoder.encode(TEXTS, prompt="document"), st.encode_document(TEXTS)) > 0.9999, source

    # The module itself (training's collator: prompt, then queries cut at 8 and documents at 48 tokens).
    from tests.models.checkpoints import DOCUMENTS, QUERIES

    ref_q, ref_d = reference_embeddings(module)
    assert _agree(st.encode_query(QUERIES), ref_q) > 0.9999
    assert _agree(st.encode_document(DOCUMENTS), ref_d) > 0.9999
    # and plain encode really differs from the prompted one (the prompt is not added behind one's back)
    assert _agree(plain, st.encode_query(TEXTS)) < 0.9999


def test_queries_are_cut_at_the_trained_length(prompted):
    _, _, folder = prompted
    encoder = load(folder, device="cpu")
    assert (encoder.query_max_length, encoder.document_max_length, encoder.max_length) == (8, 48, 48)
    bert = json.loads((folder / "sentence_bert_config.json").read_text())
    assert (bert["query_length"], bert["document_length"], bert["max_seq_length"]) == (8, 48, 48)
    cut = encoder.tokenizer.decode(encoder.tokenizer("q: " + LONG[0], truncation=True, max_length=8)["input_ids"])
    assert _agree(encoder.encode([LONG[0]], prompt="query"), encoder.encode([cut], prompt=None)) > 0.9999
    # an explicit max_length applies to every text
    assert load(folder, device="cpu", max_length=12).query_max_length == 12


@pytest.mark.parametrize("texts", [["fine", ""], ["fine", "   \n\t"]])
def test_empty_texts_are_refused_by_position(prompted, texts):
    _, _, folder = prompted
    encoder = load(folder, device="cpu")
    with pytest.raises(UserError, match=r"texts\[1\] is empty or only whitespace"):
        encoder.encode(texts)
    with pytest.raises(UserError, match=r"texts\[0\]"):
        encoder.encode("")
