"""Block freezing: only the last k transformer blocks (and optionally the final norm / embeddings) train."""

from __future__ import annotations

import math

from torch import nn

from lightning_embed.strategy import (
    TuningStrategy,
    backbone_kind,
    backbone_parts,
    raise_if_problems,
    set_trainable,
)


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
        if isinstance(self.blocks, float):
            return min(depth, max(1, math.floor(self.blocks * depth + 0.5)))
        return self.blocks

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
