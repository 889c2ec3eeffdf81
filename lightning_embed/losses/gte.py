"""GTE's improved contrastive loss: in-batch negatives of both types in one partition function."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightning_embed.losses.infonce import gather_with_grad, own_negatives_loss


class GTELoss(nn.Module):
    """The improved contrastive loss of GTE (Li et al. 2023): one softmax over four kinds of in-batch pairs.

    For query i with positive document d_i, the loss is ``-log(exp(s(q_i, d_i) / t) / Z_i)`` with

    ``Z_i = sum_j exp(s(q_i, d_j)/t) + sum_{j != i} exp(s(q_i, q_j)/t) + sum_j exp(s(q_j, d_i)/t)
    + sum_{d_j not of query i} exp(s(d_j, d_i)/t)``

    where the d_j are every document of the batch (positives and hard negatives) and the q_j every query: the
    symmetric InfoNCE's two directions plus query-query and document-document negatives, in a single partition
    function. It is symmetric by construction (``symmetric`` is not an option). Under DDP with
    ``gather_across_devices`` every rank's queries and documents are gathered with their gradients and each
    rank averages over its own queries, so DDP's gradient averaging gives exactly the loss and gradients of the
    concatenated global batch (and GradCache, which only sees embeddings, works unchanged).

    Inputs are as for :class:`~lightning_embed.losses.infonce.InfoNCELoss`: L2-normalised ``queries`` (B, H) and
    ``documents`` (B*(1+k), H), the B positives first and then k hard negatives per query, query i's at rows
    B+i*k .. B+i*k+k-1. The same computation as sentence-transformers' ``MultipleNegativesRankingLoss`` with
    ``directions=("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")`` and
    ``partition_mode="joint"``.

    Reference: Li, Zhang, Zhang, Long, Xie and Zhang, "Towards General Text Embeddings with Multi-stage
    Contrastive Learning" (arXiv 2308.03281, 2023), section 3.3.

    Args:
        temperature: softmax temperature (GTE uses 0.01; the module passes its ``temperature``).
        gather_across_devices: under DDP, every rank's queries and documents are negatives.

    Example:
        >>> import torch, torch.nn.functional as F
        >>> loss = GTELoss(temperature=0.025)
        >>> q = F.normalize(torch.randn(4, 8), dim=-1)
        >>> d = F.normalize(torch.randn(4 * 2, 8), dim=-1)   # 4 positives + 1 hard negative each
        >>> loss(q, d, num_negatives=1).shape
        torch.Size([])
    """

    def __init__(self, temperature: float = 0.025, gather_across_devices: bool = True) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature
        self.gather_across_devices = gather_across_devices

    def forward(self, queries: torch.Tensor, documents: torch.Tensor, num_negatives: int = 0,
                in_batch_negatives: bool = True) -> torch.Tensor:
        queries, documents = queries.float(), documents.float()
        b, k = queries.shape[0], num_negatives
        if documents.shape[0] != b * (1 + k):
            raise ValueError(f"expected {b * (1 + k)} documents for {b} queries with {k} negatives each, got "
                             f"{documents.shape[0]}")
        positives, negatives = documents[:b], documents[b:]
        if not in_batch_negatives:  # every extra GTE term is an in-batch negative: only the own ones remain
            return own_negatives_loss(queries, positives, negatives, k, self.temperature)
        rank = 0
        all_queries, all_positives, all_negatives = queries, positives, negatives
        if self.gather_across_devices:
            all_queries, rank = gather_with_grad(queries)
            all_positives, _ = gather_with_grad(positives)
            if k:
                all_negatives, _ = gather_with_grad(negatives)
        world_b = all_queries.shape[0]
        labels = torch.arange(b, device=queries.device) + rank * b
        candidates = torch.cat([all_positives, all_negatives], dim=0)
        rows = torch.arange(b, device=queries.device)
        query_doc = queries @ candidates.T
        query_query = (queries @ all_queries.T).index_put((rows, labels), torch.tensor(float("-inf")))
        doc_query = positives @ all_queries.T  # the positive pair itself included, as in the paper
        doc_doc = positives @ candidates.T
        # Documents of the same query (its positive and its own hard negatives) are not its negatives.
        own = torch.zeros(b, candidates.shape[0], dtype=torch.bool, device=queries.device)
        own[rows, labels] = True
        if k:
            negative_rows = world_b + labels[:, None] * k + torch.arange(k, device=queries.device)[None, :]
            own.scatter_(1, negative_rows, True)
        doc_doc = doc_doc.masked_fill(own, float("-inf"))
        logits = torch.cat([query_doc, query_query, doc_query, doc_doc], dim=1) / self.temperature
        return F.cross_entropy(logits, labels)
