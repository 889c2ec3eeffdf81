"""The encoding path: how a fit turns a batch of pairs into query and document embeddings.

Four paths compute the same embeddings (the exactness tests hold them equal) at different cost:

- ``padded``: one forward per side over the padded batch.
- ``gradcache``: the same in mini-batches of ``gradcache_chunk_size`` rows, each under activation checkpointing
  (:mod:`lightning_embed.training.gradcache`): a large batch at the memory of a small one.
- ``split``: each side in length-sorted micro-batches cut at the widths that minimise computed positions
  (:mod:`lightning_embed.training.unpadding`; ``split_by_length``), checkpointed when GradCache is on too.
- ``packed``: queries and documents of a batch in one forward over packed rows with a block-diagonal mask
  (:mod:`lightning_embed.training.packing`; ``pack_sequences``).

The module chooses its path once, at fit start, after the training attention is set (packing depends on it).
Every :meth:`EncodingPath.encode` records :attr:`EncodingPath.computed`, the positions it actually ran; the FLOP
callback costs a training step from that record instead of re-planning the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

import torch
import torch.nn.functional as F

from lightning_embed.models.backbones import hf_model
from lightning_embed.models.pooling import pool, without_prompt
from lightning_embed.training.gradcache import cached_encode
from lightning_embed.training.packing import decide_packing, pack_and_encode, plan_packing
from lightning_embed.training.unpadding import (
    computed_positions,
    default_overhead,
    encode_micro_batches,
    plan_micro_batches,
    right_padded,
)

if TYPE_CHECKING:
    from lightning_embed.training.module import EmbeddingModule

EncodingKind = Literal["padded", "gradcache", "split", "packed"]
#: (positions computed, sum of squared row widths) of one encoding; None: its padded shape, as given.
Computed = tuple[int, int] | None
#: Length-sorted micro-batches of one side: (rows, width) each; None: the side is encoded whole.
MicroBatchPlan = list[tuple[list[int], int]] | None


@dataclass(frozen=True)
class EncodingOptions:
    """The module options that choose a path (``model.*`` in a config)."""

    pack_sequences: bool | Literal["auto"] = "auto"
    split_by_length: bool = False
    gradcache_chunk_size: int | None = None

    @property
    def other_scheme(self) -> bool:
        """Split or GradCache is on: they encode padded (mini-)batches, so packing steps aside."""
        return self.split_by_length or self.gradcache_chunk_size is not None


class EncodingPath:
    """Encodes a :class:`~lightning_embed.data.batches.PairBatch` for a module and reports what it computed.

    Args:
        module: the module whose ``encode_batch`` (backbone, pooling, normalisation) and prompt lengths it uses.
        options: the module's encoding options.
    """

    kind: ClassVar[EncodingKind]

    def __init__(self, module: EmbeddingModule, options: EncodingOptions) -> None:
        self.module = module
        self.options = options
        #: Per encoding (queries, documents) of the last batch: what :meth:`encode` computed.
        self.computed: list[Computed] = [None, None]

    def encode(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Query and document embeddings of ``batch``; records :attr:`computed`."""
        queries, documents, self.computed = self._encode(batch)
        return queries, documents

    def plan(self, batch) -> list[Computed]:
        """What :meth:`encode` would compute for ``batch``, without encoding it."""
        return [None, None]

    def _encode(self, batch) -> tuple[torch.Tensor, torch.Tensor, list[Computed]]:
        queries, documents = self._sides(batch)
        return self._encode_side(queries), self._encode_side(documents), [None, None]

    def _encode_side(self, encoding: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.module.encode_batch(encoding)

    def _sides(self, batch) -> list[dict[str, torch.Tensor]]:
        """The batch's two encodings, with a pooling mask leaving the prompt out where ``pool_prompt`` is off."""
        return [enc if not n else {**enc, "pooling_mask": without_prompt(enc["attention_mask"], n)}
                for enc, n in zip((batch.queries, batch.documents), self.module.prompt_lengths)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class PaddedEncoding(EncodingPath):
    """One forward per side over the padded batch."""

    kind = "padded"


class GradCacheEncoding(EncodingPath):
    """Each side in checkpointed mini-batches of ``gradcache_chunk_size`` rows (GradCache)."""

    kind = "gradcache"

    def _encode_side(self, encoding: dict[str, torch.Tensor]) -> torch.Tensor:
        return cached_encode(self.module.encode_batch, encoding, self.options.gradcache_chunk_size)


class SplitEncoding(EncodingPath):
    """Each side in length-sorted micro-batches (``split_by_length``); checkpointed when GradCache is on."""

    kind = "split"

    def micro_batch_plans(self, batch) -> list[MicroBatchPlan]:
        """The micro-batches of each side; deterministic in the batch's lengths (None: a side is left-padded)."""
        overhead = default_overhead(self.module.device)
        plans: list[MicroBatchPlan] = []
        for encoding, lengths in ((batch.queries, getattr(batch, "query_lengths", None)),
                                  (batch.documents, getattr(batch, "document_lengths", None))):
            mask = encoding["attention_mask"]
            if lengths is None and right_padded(mask):
                lengths = mask.sum(1).tolist()
            plans.append(None if lengths is None
                         else plan_micro_batches(lengths, overhead, self.options.gradcache_chunk_size))
        return plans

    def plan(self, batch) -> list[Computed]:
        return [None if p is None else computed_positions(p) for p in self.micro_batch_plans(batch)]

    def _encode(self, batch) -> tuple[torch.Tensor, torch.Tensor, list[Computed]]:
        plans = self.micro_batch_plans(batch)
        checkpointed = self.options.gradcache_chunk_size is not None
        out = []
        for encoding, plan in zip(self._sides(batch), plans):
            if plan is None:
                out.append(cached_encode(self.module.encode_batch, encoding, self.options.gradcache_chunk_size)
                           if checkpointed else self.module.encode_batch(encoding))
            else:
                out.append(encode_micro_batches(self.module.encode_batch, encoding, plan, checkpointed=checkpointed))
        return out[0], out[1], [None if p is None else computed_positions(p) for p in plans]


class PackedEncoding(EncodingPath):
    """Queries and documents in one forward over packed rows; the total is reported on the queries."""

    kind = "packed"

    def plan(self, batch) -> list[Computed]:
        packing = plan_packing([n for side in pair_lengths(batch) for n in side])
        return [(packing.positions, packing.squares), (0, 0)]

    def _encode(self, batch) -> tuple[torch.Tensor, torch.Tensor, list[Computed]]:
        module = self.module
        lengths = pair_lengths(batch)
        hidden, mask, packing = pack_and_encode(module.backbone, hf_model(module.backbone).config._attn_implementation,
                                                module.causal, (batch.queries, batch.documents), lengths,
                                                module.tokenizer.pad_token_id or 0)
        split = len(lengths[0])
        query_prompt, document_prompt = module.prompt_lengths
        if query_prompt or document_prompt:
            mask = torch.cat([without_prompt(mask[:split], query_prompt),
                              without_prompt(mask[split:], document_prompt)])
        emb = pool(hidden, mask, module.hparams.pooling)
        emb = F.normalize(emb, dim=-1) if module.hparams.normalize else emb
        return emb[:split], emb[split:], [(packing.positions, packing.squares), (0, 0)]


def pair_lengths(batch) -> list[list[int]]:
    """Real lengths of a batch's query and document rows, from the collator's host copy when it has one."""
    out = []
    for encoding, lengths in ((batch.queries, getattr(batch, "query_lengths", None)),
                              (batch.documents, getattr(batch, "document_lengths", None))):
        out.append(list(lengths) if lengths is not None else encoding["attention_mask"].sum(1).tolist())
    return out


def resolve_packing(module: EmbeddingModule, options: EncodingOptions) -> tuple[bool, str | None]:
    """Decides ``pack_sequences`` for the module's backbone as it is now: (pack?, why; None: nothing to say)."""
    return decide_packing(options.pack_sequences, module.backbone, module.tokenizer, causal=module.causal,
                          other_scheme=options.other_scheme)


def choose_encoding_path(
    module: EmbeddingModule, options: EncodingOptions, resolve: Callable[[], tuple[bool, str | None]] | None = None,
) -> tuple[EncodingPath, str | None]:
    """The path a module encodes with, and a line saying why when there is something to say.

    Packing wins where it applies and is exact (see :func:`~lightning_embed.training.packing.decide_packing`,
    which also says why it is off); else ``split_by_length``, else GradCache, else padded.
    """
    pack, why = resolve() if resolve is not None else resolve_packing(module, options)
    if pack:
        return PackedEncoding(module, options), why
    if options.split_by_length:
        return SplitEncoding(module, options), why
    if options.gradcache_chunk_size is not None:
        return GradCacheEncoding(module, options), why
    return PaddedEncoding(module, options), why
