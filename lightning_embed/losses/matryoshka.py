"""Matryoshka embeddings: the contrastive loss summed over leading slices of each embedding.

Matryoshka representation learning (Kusupati et al., NeurIPS 2022; sentence-transformers' ``MatryoshkaLoss``,
nomic-embed v1.5) trains an embedding whose first d coordinates are a good embedding on their own, for
several d at once: the loss of the batch is computed on the full vectors and on each truncation (re-normalised
when the model normalises), and the weighted sum is minimised. The backbone runs once per batch: only the
loss is evaluated several times, on slices of the same embeddings, so GradCache, packing and split batches
work unchanged. At inference, keep the first d coordinates (``SentenceTransformer(DIR, truncate_dim=d)``,
``Encoder.encode(..., dimension=d)``, ``lightning-embed evaluate --dims``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lightning_embed.errors import UserError


def check_matryoshka(dims: Sequence[int] | None, weights: Sequence[float] | None, hidden_size: int) -> list[str]:
    """What is wrong with ``matryoshka_dims`` / ``matryoshka_weights`` for embeddings of ``hidden_size`` (empty: fine).

    Example:
        >>> check_matryoshka([576, 128], None, 576)
        []
        >>> check_matryoshka([64, 128], None, 576)
        ['matryoshka_dims=[64, 128] must be strictly decreasing (largest first, e.g. [576, 256, 128, 64])']
    """
    if dims is None:
        return [] if weights is None else ["matryoshka_weights needs matryoshka_dims"]
    problems = []
    dims = list(dims)
    if not dims or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims):
        problems.append(f"matryoshka_dims={dims} must be a non-empty list of positive integers")
    else:
        if any(a <= b for a, b in itertools.pairwise(dims)):
            problems.append(f"matryoshka_dims={dims} must be strictly decreasing (largest first, e.g. "
                            f"[{hidden_size}, 256, 128, 64])")
        if hidden_size and dims[0] > hidden_size:
            problems.append(f"matryoshka_dims={dims} exceeds the embedding size {hidden_size} of the backbone")
    if weights is not None and (len(list(weights)) != len(dims) or any(not w > 0 for w in weights)):
        problems.append(f"matryoshka_weights={list(weights)} must hold one positive weight per dimension "
                        f"({len(dims)})")
    return problems


class MatryoshkaLoss(nn.Module):
    """Sums a contrastive loss over leading slices of the embeddings (computed once, sliced per dimension).

    Args:
        loss: the per-dimension loss, called as ``loss(queries, documents, num_negatives)``.
        dims: the dimensions, strictly decreasing (the first usually the full embedding size).
        weights: one weight per dimension (default 1 each, as sentence-transformers).
        normalize: re-normalise each slice to unit length (the model is trained for cosine similarity).

    Reference: Kusupati et al., "Matryoshka Representation Learning" (NeurIPS 2022).

    Example:
        >>> import torch, torch.nn.functional as F
        >>> from lightning_embed.losses.infonce import InfoNCELoss
        >>> loss = MatryoshkaLoss(InfoNCELoss(), dims=[8, 4, 2])
        >>> q, d = F.normalize(torch.randn(4, 8), dim=-1), F.normalize(torch.randn(4, 8), dim=-1)
        >>> loss(q, d).shape
        torch.Size([])
    """

    def __init__(self, loss: nn.Module, dims: Sequence[int], weights: Sequence[float] | None = None,
                 normalize: bool = True) -> None:
        super().__init__()
        problems = check_matryoshka(dims, weights, 0)
        if problems:
            raise UserError("model options: " + "; ".join(problems) + ".")
        self.loss = loss
        self.dims = [int(d) for d in dims]
        self.weights = [float(w) for w in weights] if weights is not None else [1.0] * len(self.dims)
        self.normalize = normalize

    def forward(self, queries: torch.Tensor, documents: torch.Tensor, num_negatives: int = 0,
                **options: Any) -> torch.Tensor:
        total = queries.new_zeros(())
        for dim, weight in zip(self.dims, self.weights):
            q, d = queries[:, :dim], documents[:, :dim]
            if self.normalize:
                q, d = F.normalize(q, dim=-1), F.normalize(d, dim=-1)
            total = total + weight * self.loss(q, d, num_negatives, **options)
        return total


def truncate(embeddings: torch.Tensor, dimension: int | None, normalize: bool) -> torch.Tensor:
    """The first ``dimension`` coordinates of each embedding, re-normalised when ``normalize`` (None: all)."""
    if dimension is None or dimension >= embeddings.shape[-1]:
        return embeddings
    out = embeddings[..., :dimension]
    return F.normalize(out, dim=-1) if normalize else out
