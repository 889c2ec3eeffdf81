"""Bidirectional attention for decoder backbones (LLM2Vec, GritLM): every token attends to the whole text.

A decoder LM attends causally; an embedding model may read each text both ways (BehnamGhader et al.,
"LLM2Vec", 2024; Muennighoff et al., "GritLM", 2024). Hugging Face transformers (5.x) builds the attention
mask of Llama, Qwen2, Mistral, GPT-NeoX and other decoders with ``create_causal_mask``, which returns a
bidirectional (padding-only) mask when the model's config has ``is_causal = False``. That flag is an ordinary
config attribute: ``save_pretrained`` writes it to ``config.json`` and ``from_pretrained`` reads it back, so an
exported model runs bidirectionally in ``transformers.AutoModel`` and ``SentenceTransformer`` without
``trust_remote_code`` (Gemma 3's ``use_bidirectional_attention`` is the one architecture-specific switch; it
also changes the sliding window, so it is not used here). Packing builds its own block-diagonal mask and
is told the backbone is not causal.

Not every architecture goes through that function (older or remote-code ones build their own causal mask),
so :func:`make_bidirectional` checks on two short inputs that the first token's state now depends on the last
token, and refuses the option otherwise: a model that silently stayed causal would be worse than an error.
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_embed.errors import UserError


def attends_causally(model: nn.Module) -> bool:
    """Whether the Hugging Face model inside ``model`` is set to attend causally (``config.is_causal``)."""
    from lightning_embed.models.backbones import hf_model

    inner = hf_model(model)
    return getattr(getattr(inner, "config", None), "is_causal", True) is not False


def attends_both_ways(model: nn.Module) -> bool:
    """Whether the first token's output depends on a later token (a short probe, eval mode, no gradients)."""
    from lightning_embed.models.backbones import hf_model

    inner = hf_model(model)
    vocab = int(getattr(inner.config, "vocab_size", 0) or 0)
    if vocab < 8:
        return False
    device = next(inner.parameters()).device
    ids = torch.tensor([[3, 5, 7, 4], [3, 5, 7, 6]], device=device)
    was_training = inner.training
    inner.eval()
    try:
        with torch.no_grad():
            out = inner(input_ids=ids, attention_mask=torch.ones_like(ids))
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        first = hidden[:, 0].float()
        return bool((first[0] - first[1]).abs().max() > 1e-6 * (1 + first.abs().max()))
    finally:
        inner.train(was_training)


def make_bidirectional(model: nn.Module, label: str, *, is_decoder: bool) -> bool:
    """Switches a decoder backbone to bidirectional attention in place (``config.is_causal = False``).

    Args:
        model: the loaded Hugging Face backbone.
        label: its name, for messages.
        is_decoder: whether it is a decoder (an encoder already attends both ways: a note, nothing changed).

    Returns:
        True when the backbone was switched; False for an encoder (already bidirectional).

    Raises:
        UserError: an architecture whose attention ignores ``is_causal`` (it would silently stay causal).
    """
    from lightning_embed.models.backbones import hf_model

    if not is_decoder:
        from rich.console import Console

        Console(stderr=True).print(f"note: model.bidirectional: {label!r} is an encoder and attends both ways "
                                   "already; nothing to change.")
        return False
    inner = hf_model(model)
    inner.config.is_causal = False
    if not attends_both_ways(inner):
        inner.config.is_causal = True
        raise UserError(f"model.bidirectional: the {type(inner).__name__} architecture of {label!r} ignores "
                        "config.is_causal=false in this transformers version, so it would stay causal (and so would "
                        "its export); set model.bidirectional: false or use a Llama, Qwen2, Mistral or GPT-NeoX "
                        "backbone.")
    return True
