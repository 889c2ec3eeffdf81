"""Retrieval metrics (lightning_embed/evaluation/metrics.py) on examples whose ranks are set by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_embed.evaluation.metrics import RETRIEVAL_METRICS, retrieval_metrics


def _ranked(scores: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Query embeddings whose dot products with the documents (one-hot embeddings) are ``scores``, up to
    each query's positive scale (which leaves its ranking unchanged)."""
    queries = F.normalize(torch.tensor(scores), dim=-1)
    return queries, torch.eye(len(scores[0]))


def test_hand_computed_mrr_recall_and_ndcg():
    # Documents carry ids out of order, so relevance goes by id, not by position.
    doc_ids = torch.tensor([7, 3, 9, 5])
    queries, documents = _ranked([
        [0.9, 0.5, 0.3, 0.1],  # relevant id 7 (column 0) ranks 1st
        [0.8, 0.2, 0.6, 0.4],  # relevant id 9 (column 2) ranks 2nd
        [0.7, 0.6, 0.5, 0.4],  # relevant id 5 (column 3) ranks 4th
    ])
    got = retrieval_metrics(queries, documents, torch.tensor([7, 9, 5]), doc_ids)
    assert set(got) == set(RETRIEVAL_METRICS)
    # One relevant document per query: reciprocal rank 1/r, DCG 1/log2(r + 1), ideal DCG 1.
    ranks = [1, 2, 4]
    assert got["mrr@10"] == pytest.approx((1 + 1 / 2 + 1 / 4) / 3, rel=1e-6)  # 0.5833
    assert got["recall@1"] == pytest.approx(1 / 3, rel=1e-6)
    assert got["recall@10"] == pytest.approx(1.0, rel=1e-6)
    assert got["ndcg@10"] == pytest.approx(sum(1 / math.log2(r + 1) for r in ranks) / 3, rel=1e-6)  # 0.6872


def test_a_relevant_document_below_the_cut_scores_zero():
    # 12 documents; query 0's relevant one ranks 11th (outside every @10), query 1's ranks 1st.
    scores = [[1.0 - 0.05 * i for i in range(12)], [0.1] * 12]
    scores[1][5] = 0.9
    queries, documents = _ranked(scores)
    got = retrieval_metrics(queries, documents, torch.tensor([10, 5]), torch.arange(12))
    assert got["mrr@10"] == pytest.approx(0.5, rel=1e-6)  # (0 + 1) / 2
    assert got["recall@10"] == pytest.approx(0.5, rel=1e-6) and got["recall@1"] == pytest.approx(0.5, rel=1e-6)
    assert got["ndcg@10"] == pytest.approx(0.5, rel=1e-6)


def test_perfect_embeddings_score_one_also_in_bf16():
    documents = F.normalize(torch.randn(20, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    ids = torch.arange(100, 120)
    order = torch.randperm(20, generator=torch.Generator().manual_seed(1))
    queries = documents[order]  # each query is its relevant document
    got = retrieval_metrics(queries.bfloat16(), documents.bfloat16(), ids[order], ids)
    assert got == pytest.approx(dict.fromkeys(RETRIEVAL_METRICS, 1.0), rel=1e-6)
