"""Length-sorted micro-batches: compute fewer padding positions without changing a batch or its math.

A padded batch computes ``rows x longest`` positions; with short queries and documents of mixed lengths
a third or more of them are padding. Encoding the same texts in a few micro-batches of similar length,
each cut to its own longest text, computes the same real tokens with far less padding. Each text's
hidden states are unchanged: with right padding a real token never attends to a padding position
(masked keys; causal or bidirectional alike) and keeps its position ids, so cutting trailing padding
changes nothing but the work. The embeddings are put back in batch order and the contrastive loss sees
exactly the batch it would have seen - the same examples, negatives, loss and gradients (up to float
rounding of differently shaped matmuls; with dropout active the masks are drawn per micro-batch, as
random as before). This is not ``group_by_length``, which changes which examples
share a batch (and so the in-batch negatives).

Where to cut is a small dynamic programme over the sorted lengths: minimise the computed positions plus a
fixed ``overhead`` per micro-batch (kernel launches, Python dispatch, less efficient small matmuls),
with at most ``max_rows`` rows per micro-batch (GradCache's mini-batch size, so its memory bound holds).
With left padding (or no length information) nothing is split.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.utils.checkpoint import checkpoint

Encoding = dict[str, torch.Tensor]

#: Per-micro-batch overhead in token positions, by device type: a CPU pays little per extra forward, a
#: GPU needs large matmuls to be efficient.
DEFAULT_OVERHEAD = {"cpu": 64, "cuda": 2048}


def default_overhead(device: torch.device | str) -> int:
    """The per-micro-batch overhead (token positions) used on a device type."""
    return DEFAULT_OVERHEAD.get(torch.device(device).type, 2048)


def plan_micro_batches(lengths: Sequence[int], overhead: int,
                       max_rows: int | None = None) -> list[tuple[list[int], int]]:
    """Splits rows into length-sorted micro-batches that minimise computed positions plus overhead.

    Args:
        lengths: each row's real length (tokens).
        overhead: cost of one more micro-batch, in token positions.
        max_rows: at most this many rows per micro-batch (None: no limit).

    Returns:
        ``(row indices, width)`` per micro-batch, longest first; every row appears exactly once and
        ``width`` is the longest length among its rows.

    Example:
        >>> plan_micro_batches([3, 50, 4, 48], overhead=10)
        [([1, 3], 50), ([2, 0], 4)]
    """
    n = len(lengths)
    if n == 0:
        return []
    order = sorted(range(n), key=lambda i: -int(lengths[i]))  # stable: ties keep batch order
    width = [max(1, int(lengths[i])) for i in order]
    limit = n if max_rows is None else max(1, int(max_rows))
    best = [0.0] + [float("inf")] * n
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        for start in range(max(0, end - limit), end):
            # Sorted longest first, so the micro-batch [start, end) is as wide as its first row.
            cost = best[start] + (end - start) * width[start] + overhead
            if cost < best[end]:
                best[end], cut[end] = cost, start
    bounds, end = [], n
    while end > 0:
        bounds.append((cut[end], end))
        end = cut[end]
    return [(order[s:e], width[s]) for s, e in reversed(bounds)]


def computed_positions(plan: list[tuple[list[int], int]]) -> tuple[int, int]:
    """(positions, sum of squared widths over rows) a plan computes: the FLOP model's padded stats."""
    return (sum(len(rows) * w for rows, w in plan), sum(len(rows) * w * w for rows, w in plan))


def right_padded(attention_mask: torch.Tensor) -> bool:
    """Whether every row's real tokens come first (or there is no padding): safe to cut trailing columns."""
    return bool(attention_mask.shape[1] == 0 or attention_mask[:, 0].all())


def encode_micro_batches(encode: Callable[[Encoding], torch.Tensor], encoding: Encoding,
                         plan: list[tuple[list[int], int]], checkpointed: bool = False) -> torch.Tensor:
    """Embeds a right-padded batch micro-batch by micro-batch and returns the rows in batch order.

    Args:
        encode: maps a tokenised (micro-)batch to its embeddings.
        encoding: the padded batch (``input_ids``, ``attention_mask``, ...), rows along dim 0.
        plan: from :func:`plan_micro_batches` on this batch's lengths.
        checkpointed: run each micro-batch under activation checkpointing (GradCache's schedule, see
            :mod:`lightning_embed.training.gradcache`).

    Returns:
        The embeddings, row i of the result belonging to row i of ``encoding``.
    """
    device = next(iter(encoding.values())).device
    outputs, order = [], []
    for rows, width in plan:
        index = torch.tensor(rows, device=device)
        chunk = {k: (v.index_select(0, index)[:, :width] if v.dim() >= 2 else v.index_select(0, index))
                 for k, v in encoding.items()}
        if checkpointed and torch.is_grad_enabled():
            outputs.append(checkpoint(encode, chunk, use_reentrant=False, preserve_rng_state=True))
        else:
            outputs.append(encode(chunk))
        order += rows
    stacked = torch.cat(outputs)
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return stacked.index_select(0, inverse.to(stacked.device))
