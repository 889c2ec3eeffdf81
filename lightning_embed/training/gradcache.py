"""Gradient caching: a large contrastive batch at the activation memory of a small one.

GradCache (Gao, Zhang, Han and Callan, "Scaling Deep Contrastive Learning Batch Size under Memory Limited
Setup", 2021) splits the encoder from the loss. The embeddings of all B examples are computed in
mini-batches of m without keeping activations; the loss over the whole batch (every in-batch, hard and
cross-device negative) is computed on those embeddings; its gradient with respect to each embedding
(the "cache") is then pushed through the encoder one mini-batch at a time, by running that mini-batch's
forward again. Loss and gradients are those of the uncached batch; activation memory is that of one
mini-batch, plus the (B, H) embeddings.

This module gets exactly that schedule from autograd itself instead of a hand-written second pass: each
mini-batch is encoded under non-reentrant activation checkpointing (:func:`torch.utils.checkpoint`), which
keeps only the mini-batch's inputs. When the single ``backward()`` of the loss reaches a mini-batch, its
forward is recomputed and back-propagated with the cached embedding gradient, and its activations are
freed before the next one (autograd runs the mini-batches' sub-graphs one after the other, newest
first). What GradCache's reference implementation does by hand comes for free:

- **random state**: the checkpoint saves the CPU and accelerator RNG states of each mini-batch's first
  forward and restores them for the re-forward (GradCache's ``RandContext``), so dropout masks match;
- **mixed precision**: the re-forward runs under the autocast state of the first forward (Lightning's
  precision plugin wraps ``training_step`` in autocast; backward runs outside it, the checkpoint
  re-enters it);
- **one backward per step**: Lightning's automatic optimisation is untouched, so gradient accumulation,
  gradient clipping, fp16 loss scaling and every distributed strategy work as without caching. Under
  DDP there is exactly one gradient all-reduce per step (each parameter's gradient is complete when its
  accumulation hook fires, after the last mini-batch), no ``no_sync`` juggling needed; under FSDP the
  usual per-unit reduce-scatter;
- **cost**: one extra forward per example (the FLOP model counts it as hardware FLOP when
  ``gradcache_chunk_size`` is set). Activation checkpointing inside the blocks
  (``gradient_checkpointing``) nests and adds its own recomputation, as without caching.

Limitations:

- A chunk size at or above the batch size saves nothing but still pays the extra forward.
- Memory still grows with B through the (B, H) embeddings, the (B, B(1+k)) similarity matrix and
  autograd's bookkeeping of the mini-batches (no activations): negligible next to activations.
- With dropout active the masks are drawn per mini-batch, so they differ from an uncached run's (which
  are random too); equality with the uncached gradients holds exactly without dropout (``eval()`` or a
  dropout-free model) and, with dropout, for the same mini-batches run once with activations kept.
- Under FSDP the re-forward all-gathers each unit's parameters once more (the extra forward's traffic).
- On CPU, glibc may keep freed mini-batch activations in its heap, so peak RSS can exceed the live
  tensors (see ``benchmarks/scale.py``); GPU memory is governed by the caching allocator and is not
  affected.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint

Encoding = dict[str, torch.Tensor]


def split_encoding(encoding: Encoding, chunk_size: int) -> list[Encoding]:
    """Row slices of a tokenised batch (every tensor cut along dim 0), ``chunk_size`` rows each.

    Padding is kept as the collator made it, so every row is computed exactly as in the uncached batch
    (trimming a slice's padding would shift positions of left-padded decoders).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    rows = next(iter(encoding.values())).shape[0]
    return [{k: v[start:start + chunk_size] for k, v in encoding.items()} for start in range(0, rows, chunk_size)]


def cached_encode(encode: Callable[[Encoding], torch.Tensor], encoding: Encoding, chunk_size: int) -> torch.Tensor:
    """Embeds a tokenised batch ``chunk_size`` rows at a time with GradCache's memory and gradients.

    With gradients enabled, each mini-batch runs under non-reentrant activation checkpointing (RNG and
    autocast state preserved), so the backward pass re-runs one mini-batch at a time with its cached
    embedding gradient. Without gradients (validation) the mini-batches are simply encoded one by one.

    Args:
        encode: maps a tokenised mini-batch to its embeddings (rows in order).
        encoding: the tokenised batch (``input_ids``, ``attention_mask``, ...), rows along dim 0.
        chunk_size: rows per mini-batch (GradCache's m); the activation memory of a step is that of m rows.

    Returns:
        The embeddings of all rows, concatenated in order, as ``encode(encoding)`` would return them.

    Example:
        >>> import torch
        >>> layer = torch.nn.Linear(3, 2)
        >>> batch = {"x": torch.randn(5, 3)}
        >>> out = cached_encode(lambda e: layer(e["x"]), batch, chunk_size=2)
        >>> torch.allclose(out, layer(batch["x"]))
        True
    """
    chunks = split_encoding(encoding, chunk_size)
    if not torch.is_grad_enabled():
        return torch.cat([encode(chunk) for chunk in chunks])
    # determinism_check stays on: a re-forward that saves different tensors (e.g. a data-dependent branch)
    # fails loudly instead of giving wrong gradients.
    return torch.cat([checkpoint(encode, chunk, use_reentrant=False, preserve_rng_state=True) for chunk in chunks])
