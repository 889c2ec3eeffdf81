"""Padding-free attention for packed rows: PyTorch FlexAttention with a document (block-diagonal) mask.

:mod:`lightning_embed.training.packing` lays several texts end to end in each row. Through SDPA that needs a dense
4-D boolean mask, and SDPA's memory-efficient kernel still computes every score of the row, masked or not.
FlexAttention takes the mask as a ``mask_mod`` (``segment[q] == segment[kv]``, and ``q >= kv`` for decoders)
compiled into a :class:`~torch.nn.attention.flex_attention.BlockMask`: the kernel skips the tiles in which
no query sees any key, no dense mask is materialised, and for texts longer than a tile (128 tokens) the
attention work follows the sum of the texts' squares instead of the rows' (packed rows are as wide as the
longest text, so short texts share tiles; the win grows with the length).

The attention is registered with Hugging Face's attention interface under :data:`FLEX_ATTENTION` (not
transformers' own ``flex_attention``, which compiles the kernel on every device): the backbone receives the
``BlockMask`` as its ``attention_mask`` (transformers passes a 4-D mask through untouched) and
:func:`flex_attention_forward` runs the compiled kernel on GPUs and the unfused reference implementation on
CPU (exact, slow, forward only: PyTorch has no CPU backward for it; that is how the CPU tests check the
forward of this code path without a compiler). Padded batches (packing off) get a ``BlockMask`` built from
their 2-D padding mask by :func:`padded_block_mask`.

FLOP accounting (:mod:`lightning_embed.flops.model`) counts the dense ``rows x width^2`` scores of a packed batch,
which is what FlexAttention computes while rows fit in one tile; with longer texts it computes fewer, so the
hardware FLOP and MFU of such runs are upper bounds.

:func:`lightning_embed.training.acceleration.training_attention` chooses it on CUDA when batches may be packed;
:func:`lightning_embed.training.packing.decide_packing` then checks packed against padded embeddings with it, as for
every packed attention.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

#: Name under which :func:`flex_attention_forward` is registered with Hugging Face's attention interface.
FLEX_ATTENTION = "lightning_embed_flex"


def flex_available() -> bool:
    """Whether this torch has FlexAttention (``torch.nn.attention.flex_attention``, torch >= 2.5)."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def document_block_mask(segment: torch.Tensor, causal: bool):
    """The ``BlockMask`` of packed rows: a slot sees the slots of its own text (earlier ones only if ``causal``).

    Args:
        segment: (rows, width) integer id of the text in each slot, unique within a row; filler slots share
            one id (-1), so they see each other only and no attention row is empty.
        causal: a decoder (each token sees only earlier tokens of its own text).
    """
    from torch.nn.attention.flex_attention import create_block_mask

    def same_text(b, h, q, kv):
        return segment[b, q] == segment[b, kv]

    def same_text_causal(b, h, q, kv):
        return (segment[b, q] == segment[b, kv]) & (q >= kv)

    rows, width = segment.shape
    return create_block_mask(same_text_causal if causal else same_text, B=rows, H=None, Q_LEN=width,
                             KV_LEN=width, device=segment.device, _compile=_compiles(segment.device))


def padded_block_mask(batch_size: int, q_length: int, kv_length: int, q_offset: int = 0, kv_offset: int = 0,
                      mask_function: Callable | None = None, attention_mask: torch.Tensor | None = None,
                      device: torch.device | str = "cpu", **kwargs):
    """Hugging Face's mask interface for :data:`FLEX_ATTENTION`: the ``BlockMask`` of an ordinary padded batch.

    On GPUs transformers' own ``flex_attention_mask`` (mask builder compiled); elsewhere the same mask built
    eagerly (see the module docstring). ``mask_function`` is the model's (causal for decoders,
    bidirectional for encoders).
    """
    from torch.nn.attention.flex_attention import create_block_mask
    from transformers.masking_utils import (
        add_offsets_to_mask_function,
        and_masks,
        causal_mask_function,
        flex_attention_mask,
        padding_mask_function,
        prepare_padding_mask,
    )

    device = torch.device(device)
    if _compiles(device):
        return flex_attention_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                                   kv_offset=kv_offset, mask_function=mask_function or causal_mask_function,
                                   attention_mask=attention_mask, device=device, **kwargs)
    mask_function = causal_mask_function if mask_function is None else mask_function
    if attention_mask is not None and not bool(attention_mask.all()):
        padding = prepare_padding_mask(attention_mask, kv_length, kv_offset)
        mask_function = and_masks(mask_function, padding_mask_function(padding))
    mask_function = add_offsets_to_mask_function(mask_function, q_offset, kv_offset)
    return create_block_mask(mask_function, B=batch_size, H=None, Q_LEN=q_length, KV_LEN=kv_length,
                             device=device, _compile=False)


def flex_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           attention_mask, scaling: float | None = None, dropout: float = 0.0,
                           **kwargs) -> tuple[torch.Tensor, None]:
    """FlexAttention in Hugging Face's attention interface (``AttentionInterface``).

    Args:
        module: the attention layer (its ``num_key_value_groups`` says whether keys and values are grouped).
        query: (batch, heads, length, head dim); key and value alike, with their own number of heads.
        attention_mask: a ``BlockMask`` (:func:`document_block_mask` or :func:`padded_block_mask`) or None.
        scaling: the score scale (None: 1 / sqrt(head dim)).
        dropout: attention dropout; FlexAttention has none, so only 0 is accepted.

    Returns:
        ``(output, None)``: output (batch, length, heads, head dim); no attention weights.
    """
    from torch.nn.attention.flex_attention import BlockMask

    if query.device.type == "cpu" and torch.is_grad_enabled() and query.requires_grad:
        from lightning_embed.errors import UserError

        raise UserError("attn_implementation flex (FlexAttention) cannot train on CPU: PyTorch has no CPU backward "
                        "for it. Train with attn_implementation sdpa or eager (or unset), or on a GPU.")
    if dropout > 0:
        raise ValueError(f"{FLEX_ATTENTION} has no attention dropout (got {dropout}); use sdpa or eager attention")
    if attention_mask is not None and not isinstance(attention_mask, BlockMask):
        raise ValueError(f"{FLEX_ATTENTION} takes a BlockMask as attention_mask, not {type(attention_mask).__name__}")
    # Under autocast rotary embeddings leave queries and keys in fp32 beside bf16 values; sdpa is cast by
    # autocast, the flex kernel is not and wants one dtype: the autocast dtype, as sdpa gets.
    device_type = query.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else query.dtype
    query, key, value = query.to(dtype), key.to(dtype), value.to(dtype)
    heads, kv_heads = query.shape[1], key.shape[1]
    # The fused kernel's grouped-query path wants a power-of-two number of query heads (as transformers does).
    gqa = kv_heads != heads and heads & (heads - 1) == 0
    if kv_heads != heads and not gqa:
        key = key.repeat_interleave(heads // kv_heads, dim=1)
        value = value.repeat_interleave(heads // kv_heads, dim=1)
    output = _flex_kernel(device_type)(query, key, value, block_mask=attention_mask, scale=scaling,
                                             enable_gqa=gqa)
    return output.transpose(1, 2).contiguous(), None


def register_flex_attention() -> None:
    """Makes :data:`FLEX_ATTENTION` a valid ``attn_implementation`` (with :func:`padded_block_mask` masks)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(FLEX_ATTENTION, flex_attention_forward)
    AttentionMaskInterface.register(FLEX_ATTENTION, padded_block_mask)


def _compiles(device: torch.device) -> bool:
    # Inductor's CPU compile of these takes minutes; the eager reference is exact, so CPU stays eager.
    return device.type == "cuda"


def _flex_kernel(device_type: str) -> Callable:
    from torch.nn.attention.flex_attention import flex_attention

    if device_type != "cuda" or torch.compiler.is_compiling():  # a compiled backbone traces the op itself
        return flex_attention
    return _compiled_flex()


@functools.cache
def _compiled_flex() -> Callable:
    # Compiled once per process; shapes that change between batches make it dynamic after one recompile.
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention)
