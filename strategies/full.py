"""Full fine-tuning: every parameter of the backbone trains."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lightning_embed.strategy import TuningStrategy

if TYPE_CHECKING:  # torch only inside methods: the recipe reads these classes without it
    from torch import nn

    from lightning_embed.recipe.catalogue import ModelCounts


class FullTuning(TuningStrategy):
    """Full fine-tuning: every parameter trains (the study's best method below about 9e16 FLOP).

    Example:
        >>> from lightning_embed.strategy import build_strategy
        >>> build_strategy("full")
        FullTuning()
    """

    name = "full"

    @classmethod
    def paper_flops_per_token(cls, non_embedding: float, trainable: float, tuned: nn.Module | None = None) -> float:
        """6N: forward 2N, backward 4N (input and weight gradients of every parameter)."""
        return 6.0 * float(non_embedding)

    @classmethod
    def law_setting(cls, options: dict[str, Any], record: Any = None) -> dict[str, Any]:
        """Full tuning has no setting: one law."""
        return {}

    @classmethod
    def tuning_spec(cls, setting: dict[str, Any]) -> str | dict[str, Any]:
        """``full``."""
        return "full" if not setting else super().tuning_spec(setting)

    @classmethod
    def trainable_params(cls, counts: ModelCounts, setting: dict[str, Any]) -> int | None:
        """Every non-embedding parameter."""
        return counts.non_embedding

    def __init__(self) -> None:
        pass

    def apply(self, backbone: nn.Module) -> nn.Module:
        for p in backbone.parameters():
            p.requires_grad_(True)
        return backbone
