"""The collator (lightning_embed/data/batches.py): prompts, truncation, dynamic padding on either side, the
layout of hard negatives, token lengths, bad setups."""

from __future__ import annotations

import pytest
import torch

from lightning_embed.data.batches import PairCollator, PairExample
from lightning_embed.errors import UserError
from lightning_embed.models.backbones import load_tokenizer
from tests.data.pair_files import ROWS


def test_collator_prompts_truncation_and_dynamic_padding(tokenizer):
    collate = PairCollator(tokenizer, query_max_length=12, document_max_length=40, query_prompt="query: ",
                           document_prompt="doc: ")
    batch = collate([PairExample("short", "def f(): pass"), PairExample("a much longer query " * 5, "x", (), 1)])
    queries = tokenizer.batch_decode(batch.queries["input_ids"], skip_special_tokens=True)
    assert queries[0] == "query: short"
    assert queries[1].startswith("query: a") and batch.queries["input_ids"].shape[1] == 12
    short = len(tokenizer("doc: def f(): pass")["input_ids"])
    assert batch.documents["input_ids"].shape == (2, short)  # padded to the longest, not to 40
    assert tokenizer.decode(batch.documents["input_ids"][1], skip_special_tokens=True) == "doc: x"
    assert batch.positive_ids.tolist() == [0, 1] and batch.positive_ids.dtype == torch.long
    assert set(batch.queries) == {"input_ids", "attention_mask"} and len(batch) == 2
    padded = PairCollator(tokenizer, pad_to_multiple_of=8)([PairExample("abc", "d")])
    assert padded.queries["input_ids"].shape[1] % 8 == 0


@pytest.mark.parametrize("arch,side", [("llama", "left"), ("llama", "right"), ("bert", "right"), ("bert", "left")])
def test_collator_respects_padding_side(tiny_backbones, arch, side):
    tok = load_tokenizer(tiny_backbones[arch])
    tok.padding_side = side
    batch = PairCollator(tok)([PairExample("a", "b"), PairExample("a longer query here", "c", (), 1)])
    mask, ids = batch.queries["attention_mask"], batch.queries["input_ids"]
    pad_at = 0 if side == "left" else -1
    assert mask[0, pad_at] == 0 and ids[0, pad_at] == tok.pad_token_id and mask[1].all()
    assert tok.decode(ids[0][mask[0].bool()], skip_special_tokens=True) == "a"


def test_negatives_layout(tokenizer):
    k = 3
    batch_examples = [PairExample(r["query"], r["positive"], tuple(r["negatives"]), i) for i, r in enumerate(ROWS[:4])]
    batch = PairCollator(tokenizer)(batch_examples)
    B = len(batch_examples)
    assert batch.num_negatives == k and batch.documents["input_ids"].shape[0] == B * (1 + k)

    def text(row: int) -> str:
        ids = batch.documents["input_ids"][row][batch.documents["attention_mask"][row].bool()]
        return tokenizer.decode(ids, skip_special_tokens=True)

    assert [text(i) for i in range(B)] == [e.positive for e in batch_examples]
    for i, e in enumerate(batch_examples):
        assert [text(B + i * k + j) for j in range(k)] == list(e.negatives)


def test_collator_rejects_bad_setups(tokenizer):
    with pytest.raises(UserError, match=r"different numbers of hard negatives"):
        PairCollator(tokenizer)([PairExample("a", "b", ("c",)), PairExample("d", "e")])
    with pytest.raises(UserError, match=r"query prompt .* alone takes \d+ tokens.*raise query_max_length"):
        PairCollator(tokenizer, query_max_length=3, query_prompt="Represent this query for retrieval: ")


def test_token_lengths_count_prompt_truncation_and_negatives(tiny_backbones):
    from lightning_embed.models.backbones import load_tokenizer

    tok = load_tokenizer(tiny_backbones["llama"])
    collate = PairCollator(tok, query_max_length=6, document_max_length=50, document_prompt="doc: ")
    ex = [PairExample("a b c d e f g h i j", "x y", ("z", "w w w")), PairExample("a", "x", ("y", "z"))]
    lengths = collate.token_lengths(ex)
    batch = collate(ex)
    assert [q for q, _ in lengths] == batch.queries["attention_mask"].sum(1).tolist()
    docs = batch.documents["attention_mask"].sum(1).tolist()  # positives, then each query's negatives
    assert [d for _, d in lengths] == [docs[0] + docs[2] + docs[3], docs[1] + docs[4] + docs[5]]
    assert lengths[0][0] == 6  # truncated
