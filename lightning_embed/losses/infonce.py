"""Contrastive losses: InfoNCE with in-batch, hard and cross-device negatives.

Embeddings are gathered from every rank *with* gradients (``torch.distributed.nn.all_gather``), so each
query sees every rank's documents as negatives, and the per-rank loss is the mean over its local queries:
DDP's gradient averaging then reproduces exactly the single-process gradient of the concatenated batch.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Concatenates ``x`` from all ranks (rank order), keeping gradients; returns it and this rank's index."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    from torch.distributed.nn.functional import all_gather

    # The autograd-aware gather Lightning's own all_gather(sync_grads=True) uses; its backward sums every
    # rank's gradient for this rank's rows. torch marks it deprecated in favour of a private module.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*all_gather is deprecated.*", category=FutureWarning)
        gathered = all_gather(x.contiguous())
    return torch.cat(gathered, dim=0), dist.get_rank()


def own_negatives_loss(queries: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor, num_negatives: int,
                       temperature: float) -> torch.Tensor:
    """Each query against its own positive (the target) and its own k hard negatives only: no in-batch negatives.

    For classification-like data (a mixture source with ``in_batch_negatives: false``), where another
    example's positive may answer a query too.
    """
    if not num_negatives:
        raise ValueError("in_batch_negatives=False needs hard negatives (num_negatives >= 1)")
    b = queries.shape[0]
    own = torch.cat([positives[:, None], negatives.view(b, num_negatives, -1)], dim=1)
    logits = torch.einsum("bh,bch->bc", queries, own) / temperature
    return F.cross_entropy(logits, torch.zeros(b, dtype=torch.long, device=queries.device))


class InfoNCELoss(nn.Module):
    """InfoNCE over cosine similarities with in-batch and hard negatives, optionally symmetric.

    Inputs are L2-normalised embeddings: ``queries`` (B, H) and ``documents`` (B*(1+k), H) whose first B
    rows are the positives (row i belongs to query i) and whose remaining B*k rows are the hard negatives,
    k per query, query i's at rows B+i*k .. B+i*k+k-1. Every query scores against every document of the
    batch (on every rank when ``gather_across_devices``), so the other queries' positives and negatives
    are its negatives too. With ``symmetric``, the document->query direction (each positive against all
    queries) is averaged in, as in the study. With ``in_batch_negatives=False`` (classification-like data,
    where another example's positive may answer a query too) a query scores only against its own positive
    and hard negatives: nothing is gathered across devices and there is no document->query direction.
    This is ``model.loss: infonce``, the default; see :mod:`lightning_embed.losses` for the others and for
    plugging in your own class.

    Reference: van den Oord et al., "Representation Learning with Contrastive Predictive Coding" (2018);
    Ziarko et al., "Repurposing Language Models into Embedding Models" (NeurIPS 2024), inverse
    temperature 40.

    Example:
        >>> import torch, torch.nn.functional as F
        >>> loss = InfoNCELoss(temperature=0.025)
        >>> q = F.normalize(torch.randn(4, 8), dim=-1)
        >>> d = F.normalize(torch.randn(4 * 3, 8), dim=-1)   # 4 positives + 2 hard negatives each
        >>> value = loss(q, d, num_negatives=2)
        >>> value.shape
        torch.Size([])
    """

    def __init__(self, temperature: float = 0.025, symmetric: bool = True, gather_across_devices: bool = True):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature
        self.symmetric = symmetric
        self.gather_across_devices = gather_across_devices

    def forward(self, queries: torch.Tensor, documents: torch.Tensor, num_negatives: int = 0,
                in_batch_negatives: bool = True) -> torch.Tensor:
        queries, documents = queries.float(), documents.float()
        b = queries.shape[0]
        if documents.shape[0] != b * (1 + num_negatives):
            raise ValueError(
                f"expected {b * (1 + num_negatives)} documents for {b} queries with {num_negatives} negatives "
                f"each, got {documents.shape[0]}"
            )
        positives, negatives = documents[:b], documents[b:]
        if not in_batch_negatives:
            return own_negatives_loss(queries, positives, negatives, num_negatives, self.temperature)
        rank = 0
        all_queries = queries
        if self.gather_across_devices:
            all_positives, rank = gather_with_grad(positives)
            all_negatives, _ = gather_with_grad(negatives) if num_negatives else (negatives, 0)
            if self.symmetric:
                all_queries, _ = gather_with_grad(queries)
        else:
            all_positives, all_negatives = positives, negatives
        labels = torch.arange(b, device=queries.device) + rank * b
        candidates = torch.cat([all_positives, all_negatives], dim=0)
        logits = queries @ candidates.T / self.temperature
        loss = F.cross_entropy(logits, labels)
        if self.symmetric:
            # Each local positive against every query (its own is the target); hard negatives have no query.
            loss = 0.5 * (loss + F.cross_entropy(positives @ all_queries.T / self.temperature, labels))
        return loss
