"""Full fine-tuning: every parameter of the backbone trains."""

from __future__ import annotations

from torch import nn

from lightning_embed.strategy import TuningStrategy


class FullTuning(TuningStrategy):
    """Full fine-tuning: every parameter trains (the study's best method below about 9e16 FLOP).

    Example:
        >>> from lightning_embed.strategy import build_strategy
        >>> build_strategy("full")
        FullTuning()
    """

    name = "full"

    def __init__(self) -> None:
        pass

    def apply(self, backbone: nn.Module) -> nn.Module:
        for p in backbone.parameters():
            p.requires_grad_(True)
        return backbone
