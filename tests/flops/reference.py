"""Hand-made references for the FLOP tests: tuning without any strategy plugin, torch's own count."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from lightning_embed.models.backbones import find_blocks

LORA_TARGETS = {"gpt_neox": ["query_key_value", "dense"], "llama": ["q_proj", "v_proj", "o_proj"],
                "bert": ["query", "value"]}


def tune_by_hand(model, arch: str, method: str):
    """Freezes/wraps by hand, so the FLOP model is checked independently of any strategy plugin."""
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        return get_peft_model(model, LoraConfig(target_modules=LORA_TARGETS[arch], r=4))
    if method == "bias":
        for name, p in model.named_parameters():
            p.requires_grad_(name.endswith("bias") or "norm" in name)  # Llama has no biases: norms instead
    elif method == "freeze":
        _, blocks = find_blocks(model)
        for p in model.parameters():
            p.requires_grad_(False)
        for p in blocks[-1].parameters():
            p.requires_grad_(True)
    return model


def counted_flops(model, ids, mask) -> int:
    """FLOP of forward + backward of sum(last_hidden_state), as torch counts them."""
    with FlopCounterMode(display=False) as counter:
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
        if hidden.requires_grad:
            hidden.sum().backward()
    return counter.get_total_flops()


def padded_batch(rows: int = 3, width: int = 20):
    torch.manual_seed(0)
    ids = torch.randint(5, 400, (rows, width))
    mask = torch.ones_like(ids)
    mask[1, 13:] = 0
    mask[2, 6:] = 0
    return ids, mask
