"""Parameter counts as the study counts them: total, non-embedding (N), trainable, trainable non-embedding (N_t).

The one place that counts a model's parameters: backbone descriptions, the FLOP model, run records, the
parameter table a fit prints and the catalogue's cached counts all read :func:`parameter_counts`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ParameterCounts:
    """Parameter counts as the study counts them (quantised weights at their logical size).

    Attributes:
        total: every parameter once (tied weights once, adapters included).
        non_embedding: N: the base model's parameters whose name lacks ``emb`` (adapters excluded).
        trainable: every parameter that requires grad.
        trainable_non_embedding: N_t: trainable parameters whose name lacks ``emb``.
    """

    total: int
    non_embedding: int
    trainable: int
    trainable_non_embedding: int


def adapter_param_ids(module: nn.Module) -> set[int]:
    """Parameters that adapters added (peft tuner layers name them in ``adapter_layer_names``)."""
    ids: set[int] = set()
    for m in module.modules():
        for attr in getattr(m, "adapter_layer_names", ()) or ():
            sub = getattr(m, attr, None)
            if isinstance(sub, nn.Module):
                ids.update(id(p) for p in sub.parameters())
            elif isinstance(sub, nn.ParameterDict):
                ids.update(id(p) for p in sub.values())
    return ids


def logical_numel(module: nn.Module, name: str, p: torch.Tensor) -> int:
    """Elements of a parameter as the model uses it: bitsandbytes packs two 4-bit values per byte."""
    shape = getattr(getattr(p, "quant_state", None), "shape", None)
    if shape is not None:
        return math.prod(int(d) for d in shape)
    if name == "weight" and type(p).__name__ == "Params4bit":  # not quantised yet: the layer knows its size
        return int(module.in_features) * int(module.out_features)
    return p.numel()


def parameter_counts(backbone: nn.Module) -> ParameterCounts:
    """Total, non-embedding (N), trainable and trainable non-embedding (N_t) parameter counts.

    Adapters (peft) count in the total and, when they train, in trainable, never in N; 4-bit weights count at
    their logical size.
    """
    adapters = adapter_param_ids(backbone)
    seen: set[int] = set()
    total = non_emb = trainable = trainable_non_emb = 0
    for module_name, module in backbone.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            n = logical_numel(module, name, p)
            full = f"{module_name}.{name}" if module_name else name
            is_emb = "emb" in full
            total += n
            if not is_emb and id(p) not in adapters:
                non_emb += n
            if p.requires_grad:
                trainable += n
                trainable_non_emb += 0 if is_emb else n
    return ParameterCounts(total, non_emb, trainable, trainable_non_emb)
