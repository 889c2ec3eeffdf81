"""Block freezing: only the last k transformer blocks (and optionally the final norm / embeddings) train."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from lightning_embed.strategy import (
    TuningStrategy,
    backbone_kind,
    backbone_parts,
    raise_if_problems,
    set_trainable,
)

if TYPE_CHECKING:  # torch only inside methods: the recipe reads these classes without it
    from torch import nn

    from lightning_embed.recipe.catalogue import ModelCounts


class FreezeTuning(TuningStrategy):
    """Block freezing: trains the top ``blocks`` transformer blocks, the ones below stay frozen.

    One of the study's four methods; its backward pass stops at the lowest trained block, which is why it
    costs 2N + 4N_t FLOP per token instead of full tuning's 6N. ``blocks`` is a count (``4``) or a fraction
    of the depth (``0.25``: the top quarter, rounded to the nearest block, at least one).

    Example:
        >>> from lightning_embed.strategy import build_strategy
        >>> build_strategy({"name": "freeze", "blocks": 0.25})
        FreezeTuning(blocks=0.25, train_final_norm=True, train_embeddings=False)
    """

    name = "freeze"
    setting_defaults = {"share": (0.25,)}

    @classmethod
    def paper_flops_per_token(cls, non_embedding: float, trainable: float, tuned: nn.Module | None = None) -> float:
        """2N + 4N_t: forward 2N; the backward pass stops at the lowest trained block (4N_t)."""
        return 2.0 * float(non_embedding) + 4.0 * float(trainable)

    @classmethod
    def law_setting(cls, options: dict[str, Any], record: Any = None) -> dict[str, Any]:
        """``{share: s}``, the share of blocks trained, so one law covers models of different depths.

        ``blocks`` given as a fraction is the share; a count is divided by the record's depth. Without the
        depth, the trained share of N stands in (the top blocks dominate it).
        """
        blocks = options.get("blocks", 0.5)
        if isinstance(blocks, float) and 0 < blocks <= 1:
            return {"share": round(blocks, 4)}
        depth = _number(_field(record, "num_blocks", "backbone_info.num_blocks", "num_layers"))
        if depth:
            return {"share": round(int(blocks) / depth, 4)}
        n, n_t = (_number(_field(record, k)) for k in ("non_embedding_params", "trainable_params"))
        return {"share": round(n_t / n, 2)} if n and n_t else {"blocks": int(blocks)}

    @classmethod
    def tuning_spec(cls, setting: dict[str, Any]) -> str | dict[str, Any]:
        """``{name: freeze, blocks: share}``: a float is a fraction of the depth, so one spec fits every model."""
        if "share" in setting:
            return {"name": "freeze", "blocks": float(setting["share"])}
        return super().tuning_spec(setting)

    @classmethod
    def trainable_params(cls, counts: ModelCounts, setting: dict[str, Any]) -> int | None:
        """The top k blocks (k from the share as :meth:`num_trained_blocks` rounds it) and the final norm."""
        if "share" in setting:
            k = _top_blocks(float(setting["share"]), counts.num_blocks)
        elif "blocks" in setting:
            k = min(int(setting["blocks"]), counts.num_blocks)
        else:
            return None
        return k * counts.block // counts.num_blocks + counts.final_norm

    def __init__(
        self,
        blocks: int | float = 0.5,
        train_final_norm: bool = True,
        train_embeddings: bool = False,
    ) -> None:
        """Configures block freezing.

        Args:
            blocks: how many of the top blocks train: an integer count (0 trains only what the other
                options add) or a fraction of the depth in (0, 1].
            train_final_norm: also train the norm after the last block (Llama's ``norm``, GPT-NeoX's
                ``final_layer_norm``); post-LN encoders such as BERT have none.
            train_embeddings: also train everything below the blocks (token and position embeddings and
                their norm). The backward pass then runs through the whole model.
        """
        self.blocks = blocks
        self.train_final_norm = train_final_norm
        self.train_embeddings = train_embeddings
        problems = []
        if isinstance(blocks, bool) or not isinstance(blocks, (int, float)):
            problems.append(f"blocks must be an integer count or a fraction in (0, 1], got {blocks!r}")
        elif isinstance(blocks, int) and blocks < 0:
            problems.append(f"blocks must not be negative, got {blocks}")
        elif isinstance(blocks, float) and not 0 < blocks <= 1:
            problems.append(
                f"blocks={blocks} is a float, so it is a fraction of the depth and must be in (0, 1]; "
                "for a count of blocks give an integer"
            )
        for opt in ("train_final_norm", "train_embeddings"):
            if not isinstance(getattr(self, opt), bool):
                problems.append(f"{opt} must be true or false, got {getattr(self, opt)!r}")
        if blocks == 0 and not isinstance(blocks, bool) and train_final_norm is False and train_embeddings is False:
            problems.append("blocks=0 with train_final_norm=false and train_embeddings=false trains nothing")
        raise_if_problems(self.name, problems)

    def num_trained_blocks(self, depth: int) -> int:
        """How many top blocks train on a backbone with ``depth`` blocks (a fraction rounds half up)."""
        return _top_blocks(self.blocks, depth) if isinstance(self.blocks, float) else self.blocks

    def trainable_names(self, backbone: nn.Module) -> list[str]:
        """Names of the parameters this strategy trains on ``backbone`` (before :meth:`apply`)."""
        parts = backbone_parts(backbone)
        k = min(self.num_trained_blocks(parts.num_blocks), parts.num_blocks)
        names: list[str] = []
        if self.train_embeddings:
            names += parts.embedding_params
        for block in parts.block_params[parts.num_blocks - k :]:
            names += block
        if self.train_final_norm:
            names += parts.final_norm_params
        return names

    def validate(self, backbone: nn.Module) -> list[str]:
        parts = backbone_parts(backbone)
        problems = []
        if isinstance(self.blocks, int) and self.blocks > parts.num_blocks:
            problems.append(
                f"blocks={self.blocks} but this {backbone_kind(backbone)} backbone has only "
                f"{parts.num_blocks} blocks; use at most {parts.num_blocks} (that is full tuning of the blocks) "
                "or a fraction such as 0.5"
            )
        elif not self.trainable_names(backbone):
            problems.append(
                f"blocks=0 trains nothing here: this {backbone_kind(backbone)} backbone has no final norm "
                "after its blocks; train at least one block"
            )
        return problems

    def apply(self, backbone: nn.Module) -> nn.Module:
        raise_if_problems(self.name, self.validate(backbone))
        set_trainable(backbone, set(self.trainable_names(backbone)))
        return backbone


def _top_blocks(share: float, depth: int) -> int:
    """Blocks a share of the depth trains: rounded half up, at least one, at most all."""
    return min(depth, max(1, math.floor(share * depth + 0.5)))


def _field(record: Any, *names: str) -> Any:
    """The first present field among ``names`` of a run record or mapping (dotted names reach inside)."""
    for name in names:
        value = record
        for part in name.split("."):
            value = value.get(part) if isinstance(value, dict) else getattr(value, part, None)
            if value is None:
                break
        if value is not None:
            return value
    return None


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
