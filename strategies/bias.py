"""Bias-only tuning (BitFit): every bias term trains, every weight stays frozen."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lightning_embed.strategy import (
    TuningStrategy,
    backbone_kind,
    backbone_parts,
    is_norm,
    raise_if_problems,
    set_trainable,
)

if TYPE_CHECKING:  # torch only inside methods: the recipe reads these classes without it
    from torch import nn

    from lightning_embed.recipe.catalogue import ModelCounts


class BiasTuning(TuningStrategy):
    """Bias-only tuning, BitFit (Ben Zaken et al., 2022): trains the bias terms, under 0.1% of a model.

    One of the study's four methods. It needs a backbone with bias terms (GPT-NeoX/Pythia, BERT, GPT-2,
    Qwen2's attention); Llama-family models (SmolLM2, Mistral, ...) have none, and :meth:`validate` says
    so instead of letting a run train nothing. Biases of a head that does not feed ``last_hidden_state``
    (BERT's pooler) stay frozen: they would never receive a gradient.

    Example:
        >>> from lightning_embed.strategy import build_strategy
        >>> build_strategy({"name": "bias", "norm_biases": False})
        BiasTuning(norm_biases=False)
    """

    name = "bias"

    @classmethod
    def paper_flops_per_token(cls, non_embedding: float, trainable: float, tuned: nn.Module | None = None) -> float:
        """4N + 2N_t, as the study counts it: the backward pass runs through the whole network."""
        return 4.0 * float(non_embedding) + 2.0 * float(trainable)

    @classmethod
    def law_setting(cls, options: dict[str, Any], record: Any = None) -> dict[str, Any]:
        """Bias tuning has no setting: one law."""
        return {}

    @classmethod
    def trainable_params(cls, counts: ModelCounts, setting: dict[str, Any]) -> int | None:
        """The biases outside head and embeddings; None where there are none (Llama-style models)."""
        return counts.bias or None

    def __init__(self, norm_biases: bool = True) -> None:
        """Configures bias-only tuning.

        Args:
            norm_biases: also train the biases (shifts) of LayerNorm layers, as BitFit does; off trains
                only the biases of linear layers.
        """
        self.norm_biases = norm_biases
        problems = []
        if not isinstance(norm_biases, bool):
            problems.append(f"norm_biases must be true or false, got {norm_biases!r}")
        raise_if_problems(self.name, problems)

    def trainable_names(self, backbone: nn.Module) -> list[str]:
        """Names of the parameters this strategy trains on ``backbone`` (before :meth:`apply`)."""
        parts = backbone_parts(backbone)
        skip = set(parts.head_params)
        norms = {n for n, m in backbone.named_modules() if is_norm(m)}
        out = []
        for name, _ in backbone.named_parameters():
            owner, _, leaf = name.rpartition(".")
            if leaf != "bias" or name in skip:
                continue
            if not self.norm_biases and owner in norms:
                continue
            out.append(name)
        return out

    def validate(self, backbone: nn.Module) -> list[str]:
        if self.trainable_names(backbone):
            return []
        has_any = any(n.rpartition(".")[2] == "bias" for n, _ in backbone.named_parameters())
        if has_any and not self.norm_biases:
            return [
                f"this {backbone_kind(backbone)} backbone has bias terms only in its norm layers, and "
                "norm_biases=false excludes those: nothing would train; set norm_biases=true"
            ]
        return [
            f"this {backbone_kind(backbone)} backbone has no bias terms, so bias-only tuning (BitFit) would "
            "train nothing (Llama-family models such as SmolLM2 have none); use lora or freeze instead"
        ]

    def apply(self, backbone: nn.Module) -> nn.Module:
        names = self.trainable_names(backbone)
        raise_if_problems(self.name, self.validate(backbone))
        set_trainable(backbone, set(names))
        return backbone

