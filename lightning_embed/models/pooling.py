"""Pooling token states into one vector per text; correct with left or right padding.

Every mode reads the attention mask rather than assuming a padding side, so a left-padded decoder batch
and a right-padded encoder batch pool the same real tokens.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch

PoolingMode = Literal["mean", "last", "cls", "weighted_mean"]
POOLING_MODES: tuple[str, ...] = get_args(PoolingMode)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: PoolingMode = "mean") -> torch.Tensor:
    """Pools ``hidden`` (B, L, H) over the real tokens marked by ``attention_mask`` (B, L).

    Args:
        hidden: last hidden states.
        attention_mask: 1 for real tokens, 0 for padding (either side).
        mode: ``mean`` over real tokens (the study's choice); ``last`` real token (for causal decoders);
            ``cls``: the first real token (BERT-style encoders); ``weighted_mean``: position-weighted mean,
            later tokens weigh more (SGPT, Muennighoff 2022), suited to causal decoders.

    Returns:
        (B, H) pooled states, in fp32 (the contrastive logits are computed in fp32 under mixed precision).
    """
    hidden = hidden.float()
    mask = attention_mask.to(hidden.dtype)
    if mode == "mean":
        return (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp_min(1.0)
    if mode == "weighted_mean":
        # Weights 1..n over the real tokens only, whichever side the padding is on.
        weights = torch.cumsum(mask, dim=1) * mask
        return (hidden * weights.unsqueeze(-1)).sum(1) / weights.sum(1, keepdim=True).clamp_min(1.0)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    if mode == "last":
        # Position of the last 1 in each row: correct for left padding (last column) and right padding.
        last = attention_mask.shape[1] - 1 - attention_mask.flip(1).int().argmax(1)
        return hidden[rows, last]
    if mode == "cls":
        first = attention_mask.int().argmax(1)
        return hidden[rows, first]
    raise ValueError(f"unknown pooling {mode!r}; choose one of {', '.join(POOLING_MODES)}")


def prompt_token_count(tokenizer, prompt: str) -> int:
    """How many leading tokens of ``prompt + text`` belong to the prompt, counted as sentence-transformers does.

    The prompt is tokenised alone; a trailing special token (BERT's ``[SEP]``, an EOS) is not counted, a
    leading one (``[CLS]``, a BOS) is. This is the count sentence-transformers' ``Pooling(include_prompt=False)``
    leaves out, so training, :meth:`~lightning_embed.models.encoder.Encoder.encode` and an exported model agree.
    """
    if not prompt:
        return 0
    ids = tokenizer(prompt)["input_ids"]
    count = len(ids)
    if ids and ids[-1] in set(getattr(tokenizer, "all_special_ids", ())):
        count -= 1
    return count


def without_prompt(attention_mask: torch.Tensor, prompt_length: int) -> torch.Tensor:
    """``attention_mask`` with each row's first ``prompt_length`` real tokens set to 0 (pooled without the prompt).

    With right padding these are the first columns, as sentence-transformers masks them.

    Example:
        >>> without_prompt(torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]]), 2).tolist()
        [[0, 0, 1, 0], [0, 0, 0, 1]]
    """
    if prompt_length <= 0:
        return attention_mask
    mask = attention_mask.long()
    seen = torch.cumsum(mask, dim=1)  # real tokens up to and including each position
    return (mask * (seen > prompt_length)).to(attention_mask.dtype)
