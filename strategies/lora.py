"""LoRA: low-rank adapters on the linear layers of every block (peft), base weights frozen."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Literal

from lightning_embed.strategy import (
    TuningStrategy,
    backbone_kind,
    backbone_parts,
    raise_if_problems,
)

if TYPE_CHECKING:  # torch only inside methods: the recipe reads these classes without it
    from torch import nn

    from lightning_embed.recipe.catalogue import ModelCounts


class LoRATuning(TuningStrategy):
    """LoRA (Hu et al., 2021): trains low-rank updates ``B @ A`` of frozen linear weights.

    The study's best method above about 9e16 FLOP. The default targets every linear layer of every
    transformer block, found by inspecting the blocks (so GPT-NeoX's ``query_key_value``, Llama's
    ``q_proj`` ... ``down_proj`` and BERT's ``query`` ... ``output.dense`` all get adapters without a
    table per family). :meth:`export` merges the adapters into a plain Hugging Face model.

    Example:
        >>> from lightning_embed.strategy import build_strategy
        >>> build_strategy({"name": "lora", "rank": 16, "alpha": 32})
        LoRATuning(rank=16, alpha=32, dropout=0.0, target_modules=None, embeddings='frozen', rslora=False)
    """

    name = "lora"
    setting_defaults = {"rank": (16,)}

    @classmethod
    def paper_flops_per_token(cls, non_embedding: float, trainable: float, tuned: nn.Module | None = None) -> float:
        """4N + 2N_t: forward 2N, input gradients through the whole network 2N, adapter weight gradients 2N_t."""
        return 4.0 * float(non_embedding) + 2.0 * float(trainable)

    @classmethod
    def law_setting(cls, options: dict[str, Any], record: Any = None) -> dict[str, Any]:
        """``{rank: r}``: one law per rank (alpha, dropout and the like do not split the runs)."""
        return {"rank": int(options.get("rank", options.get("r", 8)))}

    @classmethod
    def trainable_params(cls, counts: ModelCounts, setting: dict[str, Any]) -> int | None:
        """r * (in + out) summed over every linear layer of the blocks (the default targets)."""
        rank = setting.get("rank")
        return int(rank) * counts.lora_in_out if isinstance(rank, int) and rank > 0 else None

    def __init__(
        self,
        rank: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.0,
        target_modules: list[str] | None = None,
        embeddings: Literal["frozen", "lora", "train"] = "frozen",
        rslora: bool = False,
    ) -> None:
        """Configures LoRA.

        Args:
            rank: rank r of each adapter (its trainable size is r * (in + out) per layer).
            alpha: scaling numerator; the update is scaled by alpha / rank (alpha / sqrt(rank) with rslora).
            dropout: dropout on the adapter's input during training, in [0, 1).
            target_modules: which linear layers of the blocks get adapters, each a name suffix such as
                ``q_proj``, ``attention.dense`` or ``layers.3.mlp.up_proj``. Default: every linear layer of
                every block.
            embeddings: the input token embeddings stay ``frozen``, get a LoRA adapter too (``lora``, as
                the study's code did), or ``train`` fully.
            rslora: rank-stabilised LoRA (Kalajdzievski, 2023): scale by alpha / sqrt(rank), which keeps
                the update's size stable when the rank grows.
        """
        self.rank = rank
        self.alpha = alpha
        self.dropout = dropout
        self.target_modules = list(target_modules) if target_modules is not None else None
        self.embeddings = embeddings
        self.rslora = rslora
        raise_if_problems(self.name, self._option_problems())

    def _option_problems(self) -> list[str]:
        problems = []
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            problems.append(f"rank must be a positive integer, got {self.rank!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not self.alpha > 0:
            problems.append(f"alpha must be a positive number, got {self.alpha!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            problems.append(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.target_modules is not None:
            if not self.target_modules:
                problems.append("target_modules is an empty list; leave it unset to target every linear layer")
            bad = [t for t in self.target_modules if not isinstance(t, str) or not t.strip(". ")]
            if bad:
                problems.append(f"target_modules must be non-empty module names, got {bad!r}")
        if self.embeddings not in ("frozen", "lora", "train"):
            problems.append(f"embeddings must be 'frozen', 'lora' or 'train', got {self.embeddings!r}")
        if not isinstance(self.rslora, bool):
            problems.append(f"rslora must be true or false, got {self.rslora!r}")
        return problems

    # -- resolution: the same backbone always gives the same targets, in module order ----------------

    def _resolve(self, backbone: nn.Module) -> tuple[list[str], list[str]]:
        """``(target module names, problems)`` for this backbone."""
        parts = backbone_parts(backbone)
        linears = parts.linear_layers(backbone)
        problems = []
        if not linears:
            problems.append(f"the blocks of this {backbone_kind(backbone)} backbone contain no linear layers")
        if self.target_modules is None:
            targets = linears
        else:
            matched: set[str] = set()
            unmatched = []
            for t in self.target_modules:
                key = t.strip(". ")
                hits = [n for n in linears if n == key or n.endswith("." + key)]
                if not hits:
                    unmatched.append(t)
                matched.update(hits)
            if unmatched:
                problems.append(
                    f"target_modules {', '.join(map(repr, unmatched))} match no linear layer in the blocks of "
                    f"this {backbone_kind(backbone)} backbone; its blocks' linear layers are: "
                    + ", ".join(_relative_names(linears, parts.blocks))
                )
            targets = [n for n in linears if n in matched]  # module order, not option order: deterministic
        if self.embeddings != "frozen" and not parts.input_embedding:
            problems.append(
                f"embeddings={self.embeddings!r} but this {backbone_kind(backbone)} backbone has no input embedding"
            )
        return targets, problems

    def validate(self, backbone: nn.Module) -> list[str]:
        return self._resolve(backbone)[1]

    def _lora_config(self, targets: list[str]):
        from peft import LoraConfig

        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=float(self.dropout),
            # Full module names match exactly one module each (peft matches by suffix).
            target_modules=targets,
            use_rslora=self.rslora,
            bias="none",
        )

    def apply(self, backbone: nn.Module) -> nn.Module:
        from peft import get_peft_model

        targets, problems = self._resolve(backbone)
        raise_if_problems(self.name, problems)
        parts = backbone_parts(backbone)
        if self.embeddings == "lora":
            targets = [parts.input_embedding, *targets]
        for p in backbone.parameters():
            p.requires_grad_(False)
        model = get_peft_model(backbone, self._lora_config(targets))
        if self.embeddings == "train":
            # Unfreezing in place rather than peft's modules_to_save, which would keep a second copy of
            # the (large) embedding matrix and rename its parameters.
            model.get_base_model().get_input_embeddings().weight.requires_grad_(True)
        return model

    def export(self, model: nn.Module) -> nn.Module:
        """A plain Hugging Face model with the adapters merged into the weights.

        Works on a copy, so the trained (wrapped) model stays usable, e.g. to keep training or to compare.
        """
        from peft import PeftModel

        if not isinstance(model, PeftModel):
            return model
        return copy.deepcopy(model).merge_and_unload()


def _relative_names(linears: list[str], blocks: tuple[str, ...]) -> list[str]:
    """Distinct names of the linear layers inside one block (``attention.dense``, ...), in order."""
    out: list[str] = []
    for n in linears:
        for b in blocks:
            if n.startswith(b + "."):
                rel = n[len(b) + 1 :]
                if rel not in out:
                    out.append(rel)
                break
    return out
