"""Checks of EmbeddingModule's options that need no backbone, reported together in one line."""

from __future__ import annotations

from lightning_embed.errors import UserError
from lightning_embed.models.pooling import POOLING_MODES


def check_options(pooling, temperature, learning_rate, weight_decay, warmup_ratio, qlen, dlen,
                  gradcache_chunk_size=None, split_by_length=False, pack_sequences=False) -> None:
    """Raises one :class:`UserError` naming every bad option (those checkable before loading the backbone)."""
    problems = []
    if pack_sequences not in (True, False, "auto"):
        problems.append(f"pack_sequences={pack_sequences!r} must be true, false or auto")
    if pack_sequences is True and (split_by_length or gradcache_chunk_size is not None):
        problems.append("pack_sequences packs a whole batch into one forward pass and cannot be combined with "
                        "split_by_length or gradcache_chunk_size: keep one of them")
    if gradcache_chunk_size is not None and (isinstance(gradcache_chunk_size, bool)
                                             or not isinstance(gradcache_chunk_size, int) or gradcache_chunk_size < 1):
        problems.append(f"gradcache_chunk_size={gradcache_chunk_size!r} must be a positive integer (texts per "
                        "mini-batch) or None for no gradient caching")
    if pooling not in POOLING_MODES:
        problems.append(f"pooling={pooling!r} is not one of {', '.join(POOLING_MODES)}")
    if not temperature > 0:
        problems.append(f"temperature={temperature} must be positive (the study uses 0.025)")
    if not learning_rate > 0:
        problems.append(f"learning_rate={learning_rate} must be positive")
    if weight_decay < 0:
        problems.append(f"weight_decay={weight_decay} must be >= 0")
    if not 0 <= warmup_ratio < 1:
        problems.append(f"warmup_ratio={warmup_ratio} must be in [0, 1)")
    if qlen < 1 or dlen < 1:
        problems.append(f"query_max_length={qlen} and document_max_length={dlen} must be >= 1")
    if problems:
        raise UserError("model options: " + "; ".join(problems) + ".")
