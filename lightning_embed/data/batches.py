"""Examples and tokenized batches: :class:`PairExample`, :class:`PairBatch` and :class:`PairCollator`.

A collator turns a list of examples (one batch from a sampler) into padded token tensors; the data
modules (:mod:`lightning_embed.data.datamodule`, :mod:`lightning_embed.data.mixtures`) share these.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lightning_embed.errors import UserError
from lightning_embed.training.unpadding import right_padded


@dataclass(frozen=True)
class PairExample:
    """One training pair.

    Attributes:
        query: the query text (without prompt).
        positive: the document that answers it (without prompt).
        negatives: hard negatives: documents that look relevant but are not.
        positive_id: equal ids if and only if identical positive text, stable over a dataset split.
    """

    query: str
    positive: str
    negatives: tuple[str, ...] = ()
    positive_id: int = 0


@dataclass
class PairBatch:
    """A tokenized batch of B pairs with k hard negatives each.

    Attributes:
        queries: ``input_ids`` and ``attention_mask``, shape (B, Lq).
        documents: the same keys, shape (B * (1 + k), Ld): rows 0..B-1 are the positives, then query i's k
            hard negatives at rows B + i*k .. B + i*k + k - 1.
        num_negatives: k, the same for every query of a run.
        positive_ids: (B,) long, the examples' ``positive_id``.
        query_lengths: each query's real token count, on the host (None: read from the mask when needed);
            it lets the model cut the batch into length-sorted micro-batches without a device sync
            (:mod:`lightning_embed.training.unpadding`).
        document_lengths: the same for the documents' rows.
    """

    queries: dict[str, torch.Tensor]
    documents: dict[str, torch.Tensor]
    num_negatives: int
    positive_ids: torch.Tensor
    query_lengths: list[int] | None = None
    document_lengths: list[int] | None = None

    def __len__(self) -> int:
        return int(self.positive_ids.shape[0])

    def pin_memory(self) -> PairBatch:
        """A copy in pinned memory (called by ``DataLoader(pin_memory=True)``)."""
        return PairBatch({k: v.pin_memory() for k, v in self.queries.items()},
                         {k: v.pin_memory() for k, v in self.documents.items()},
                         self.num_negatives, self.positive_ids.pin_memory(), self.query_lengths,
                         self.document_lengths)


def _host_lengths(attention_mask: torch.Tensor) -> list[int] | None:
    return attention_mask.sum(1).tolist() if right_padded(attention_mask) else None


class PairCollator:
    """Tokenizes a list of :class:`PairExample` into a :class:`PairBatch`.

    Pads dynamically to the longest text of the batch, on the tokenizer's ``padding_side``.

    Args:
        tokenizer: a Hugging Face tokenizer with a pad token.
        query_max_length: queries (prompt included) are truncated to this many tokens.
        document_max_length: documents (prompt included) are truncated to this many tokens.
        query_prompt: text prepended to every query, e.g. ``"query: "``.
        document_prompt: text prepended to every document (positives and negatives).
        pad_to_multiple_of: pad lengths up to a multiple of this (tensor-core friendly shapes); the padded
            length may then exceed the max length by less than this.
    """

    def __init__(self, tokenizer, query_max_length: int = 64, document_max_length: int = 256,
                 query_prompt: str = "", document_prompt: str = "", pad_to_multiple_of: int | None = None):
        if tokenizer.pad_token is None:
            raise UserError("the tokenizer has no pad token; set one (e.g. tokenizer.pad_token = "
                            "tokenizer.eos_token) or load it with lightning_embed.models.backbones.load_tokenizer.")
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise UserError(f"pad_to_multiple_of={pad_to_multiple_of} must be a positive integer or None.")
        self.tokenizer = tokenizer
        self.query_max_length = query_max_length
        self.document_max_length = document_max_length
        self.query_prompt = query_prompt
        self.document_prompt = document_prompt
        self.pad_to_multiple_of = pad_to_multiple_of
        for kind, prompt, limit in (("query", query_prompt, query_max_length),
                                    ("document", document_prompt, document_max_length)):
            if limit < 1:
                raise UserError(f"{kind}_max_length={limit} must be at least 1.")
            # The prompt's own tokens (with the special ones) count against the limit; at the limit, every
            # text would be cut away entirely.
            used = len(tokenizer(prompt)["input_ids"])
            if prompt and used >= limit:
                raise UserError(f"the {kind} prompt {prompt!r} alone takes {used} tokens, leaving no room for text "
                                f"within {kind}_max_length={limit}; raise {kind}_max_length or shorten the prompt.")

    def _encode(self, texts: list[str], prompt: str, max_length: int) -> dict[str, torch.Tensor]:
        encoded = self.tokenizer([prompt + text for text in texts], padding=True, truncation=True,
                                 max_length=max_length, pad_to_multiple_of=self.pad_to_multiple_of,
                                 return_tensors="pt")
        # Only these two: token_type_ids exist for some tokenizers only and the backbones default them.
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    def token_lengths(self, examples: Sequence[PairExample]) -> list[tuple[int, int]]:
        """Each example's (query, documents) token counts after prompts and truncation (without padding).

        The documents' count adds up the positive and the hard negatives. ``group_by_length`` sorts by these.
        """
        def counts(texts: list[str], prompt: str, max_length: int) -> list[int]:
            ids = self.tokenizer([prompt + t for t in texts], truncation=True, max_length=max_length)["input_ids"]
            return [len(i) for i in ids]

        queries = counts([e.query for e in examples], self.query_prompt, self.query_max_length)
        k = len(examples[0].negatives) if examples else 0
        docs = counts([d for e in examples for d in (e.positive, *e.negatives)], self.document_prompt,
                      self.document_max_length)
        return [(q, sum(docs[i * (1 + k):(i + 1) * (1 + k)])) for i, q in enumerate(queries)]

    def __call__(self, examples: Sequence[PairExample]) -> PairBatch:
        """Tokenizes one batch; every example must carry the same number of negatives."""
        if not examples:
            raise ValueError("cannot collate an empty batch")
        k = len(examples[0].negatives)
        if any(len(e.negatives) != k for e in examples):
            raise UserError("examples of one batch carry different numbers of hard negatives; truncate them all "
                            "to the same count (PairDataModule does this with num_negatives).")
        documents = [e.positive for e in examples] + [n for e in examples for n in e.negatives]
        queries = self._encode([e.query for e in examples], self.query_prompt, self.query_max_length)
        docs = self._encode(documents, self.document_prompt, self.document_max_length)
        return PairBatch(
            queries=queries,
            documents=docs,
            num_negatives=k,
            positive_ids=torch.tensor([e.positive_id for e in examples], dtype=torch.long),
            # Host-side lengths (the masks are still on the CPU here): only where cutting padding is safe.
            query_lengths=_host_lengths(queries["attention_mask"]),
            document_lengths=_host_lengths(docs["attention_mask"]),
        )
