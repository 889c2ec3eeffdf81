"""Retrieval metrics over a whole validation split: every query against every distinct document."""

from __future__ import annotations

import torch
from torchmetrics.retrieval import RetrievalMRR, RetrievalNormalizedDCG, RetrievalRecall

RETRIEVAL_METRICS = ("ndcg@10", "mrr@10", "recall@1", "recall@10")


def retrieval_metrics(
    queries: torch.Tensor, documents: torch.Tensor, query_doc_ids: torch.Tensor, doc_ids: torch.Tensor
) -> dict[str, float]:
    """nDCG@10, MRR@10, Recall@1 and Recall@10 of each query against all documents (torchmetrics).

    Args:
        queries: (Q, H) normalised query embeddings.
        documents: (D, H) normalised embeddings of the distinct documents.
        query_doc_ids: (Q,) id of each query's relevant document.
        doc_ids: (D,) id of each document (unique).

    Returns:
        The four metrics, averaged over queries.
    """
    scores = (queries.float() @ documents.float().T).flatten()
    target = (query_doc_ids[:, None] == doc_ids[None, :]).flatten()
    indexes = torch.arange(queries.shape[0]).repeat_interleave(documents.shape[0])
    metrics = {
        "ndcg@10": RetrievalNormalizedDCG(top_k=10),
        "mrr@10": RetrievalMRR(top_k=10),
        "recall@1": RetrievalRecall(top_k=1),
        "recall@10": RetrievalRecall(top_k=10),
    }
    return {name: float(m(scores.cpu(), target.cpu(), indexes=indexes)) for name, m in metrics.items()}
