"""Norm-only tuning: a third-party lightning-embed tuning strategy, registered by entry point.

It uses only lightning-embed's public plugin API (:mod:`lightning_embed.strategy`).
"""

from __future__ import annotations

from torch import nn

from lightning_embed.strategy import (
    TuningStrategy,
    backbone_kind,
    backbone_parts,
    is_norm,
    raise_if_problems,
    set_trainable,
)

__all__ = ["NormTuning"]


class NormTuning(TuningStrategy):
    """Trains only the normalisation layers (LayerNorm / RMSNorm gains and shifts); all else is frozen.

    Example:
        >>> from lightning_embed.strategy import build_strategy
        >>> build_strategy({"name": "norm", "embedding_norm": False})
        NormTuning(final_norm=True, embedding_norm=False)
    """

    name = "norm"

    def __init__(self, final_norm: bool = True, embedding_norm: bool = True) -> None:
        """Configures norm-only tuning.

        Args:
            final_norm: also train the norm after the last block (Llama's ``norm``, GPT-NeoX's
                ``final_layer_norm``).
            embedding_norm: also train a norm below the blocks (BERT's ``embeddings.LayerNorm``).
        """
        self.final_norm = final_norm
        self.embedding_norm = embedding_norm
        raise_if_problems(
            self.name,
            [f"{k} must be true or false, got {v!r}" for k, v in vars(self).items() if not isinstance(v, bool)],
        )

    def trainable_names(self, backbone: nn.Module) -> list[str]:
        """Names of the parameters this strategy trains on ``backbone``."""
        parts = backbone_parts(backbone)
        allowed = {p for block in parts.block_params for p in block}
        if self.final_norm:
            allowed.update(parts.final_norm_params)
        if self.embedding_norm:
            allowed.update(parts.embedding_params)
        norm_params = {
            f"{m}.{p}" if m else p
            for m, module in backbone.named_modules()
            if is_norm(module)
            for p, _ in module.named_parameters(recurse=False)
        }
        return [n for n, _ in backbone.named_parameters() if n in norm_params and n in allowed]

    def validate(self, backbone: nn.Module) -> list[str]:
        if self.trainable_names(backbone):
            return []
        return [f"this {backbone_kind(backbone)} backbone has no trainable normalisation layers with these options"]

    def apply(self, backbone: nn.Module) -> nn.Module:
        raise_if_problems(self.name, self.validate(backbone))
        set_trainable(backbone, set(self.trainable_names(backbone)))
        return backbone
