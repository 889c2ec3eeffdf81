"""The FLOP model: what one training (or inference) pass of a backbone costs, derived from the module itself.

Two numbers are kept apart (the README's "FLOP accounting, budgets and run records" says how each is used):

- **model FLOP**: the work the method intrinsically needs, on the real (non-padding) tokens, with no
  recomputation. This is what the scaling laws and budgets use.
- **hardware FLOP**: the work the machine actually does, on every computed (padded) position, including
  activation-checkpointing recomputation and GradCache's extra no-grad forward. This is what MFU uses.

How the count is derived, for any module (third-party strategies included, with no code of their own):
:mod:`lightning_embed.flops.probe` runs one tiny forward of the module that trains (on ``meta`` stand-ins
of its weights, so the recipe solver can cost models it never materialises) and records every matmul with
its forward FLOP as ``c0 + c1*S + c2*S^2`` for a sequence of ``S`` tokens and which of its operands need a
gradient, exactly as autograd decides: a weight gradient only where the weight trains, an input gradient
only where something earlier on the input's path trains (none for the first matmul after frozen
embeddings), no backward for matmuls whose output does not reach ``last_hidden_state``. A padded batch is
then costed exactly from its per-row lengths (sum of ``L`` and of ``L^2``) with no further forward.

``paper`` accounting reproduces the study (6N / 2N+4N_t / 4N+2N_t per token, N without embeddings) so
published budgets can be replayed; hardware FLOP stays exact in both modes. Each tuning strategy declares
its formula (:meth:`lightning_embed.strategy.TuningStrategy.paper_flops_per_token`); one that does not gets
it derived from which of its parameters train (:func:`backward_reach`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from lightning_embed.errors import UserError
from lightning_embed.flops.probe import PROBE_LENGTHS, MatmulOp, Poly, probe_matmuls
from lightning_embed.models.parameters import ParameterCounts, adapter_param_ids, parameter_counts

Accounting = Literal["exact", "paper"]
ACCOUNTINGS: tuple[str, ...] = ("exact", "paper")
BackwardReach = Literal["all", "top", "through"]


# ---------------------------------------------------------------------------------------------- paper


def paper_flops_per_token(method: str, non_embedding_params: int, trainable_params: int) -> float:
    """Training FLOP per token as the study counts them (attention ignored), by the method's strategy.

    Args:
        method: a registered tuning strategy: ``full`` (6N), ``freeze`` (2N + 4N_t), ``lora``, ``qlora``
            or ``bias`` (4N + 2N_t), or a third party's that declares its formula.
        non_embedding_params: N, every parameter whose name lacks ``emb``.
        trainable_params: N_t, the parameters that train (ignored for ``full``).

    Raises:
        UserError: an unknown method, a strategy whose formula needs the tuned module (use
            :meth:`FlopModel.from_module`), or negative counts.
    """
    from lightning_embed.strategy import strategy_class, strategy_names

    if method not in strategy_names():
        raise UserError(f"paper FLOP accounting knows the methods {', '.join(strategy_names())} (the installed "
                        f"tuning strategies), not {method!r}.")
    cls = strategy_class(method)  # a plugin that fails to import says so (StrategyError, a UserError)
    if non_embedding_params < 0 or trainable_params < 0:
        raise UserError("parameter counts must be non-negative.")
    per_token = cls.paper_flops_per_token(non_embedding_params, trainable_params)
    if per_token is None:
        raise UserError(f"tuning strategy {method!r} declares no paper FLOP formula; it is derived from the tuned "
                        "module: use FlopModel.from_module(tuned, accounting='paper').")
    return float(per_token)


# ---------------------------------------------------------------------------------------------- counts


@dataclass(frozen=True)
class FlopCount:
    """Model FLOP (real tokens, what laws and budgets use) and hardware FLOP (computed positions, for MFU)."""

    model: float = 0.0
    hardware: float = 0.0

    def __add__(self, other: FlopCount) -> FlopCount:
        if not isinstance(other, FlopCount):
            return NotImplemented
        return FlopCount(self.model + other.model, self.hardware + other.hardware)

    def __radd__(self, other: Any) -> FlopCount:
        # sum() starts from the integer 0.
        if other == 0:
            return self
        return self.__add__(other)

    def __mul__(self, factor: float) -> FlopCount:
        return FlopCount(self.model * factor, self.hardware * factor)

    __rmul__ = __mul__

    def __truediv__(self, divisor: float) -> FlopCount:
        return FlopCount(self.model / divisor, self.hardware / divisor)


@dataclass(frozen=True)
class TokenStats:
    """What the FLOP of a batch depends on: rows, and the sums of lengths and squared lengths.

    Linear layers cost per token (sum of L), attention per squared length (sum of L^2), a few heads per
    row. ``real_*`` count the attention mask's ones, ``padded_*`` every computed position. Stats add up,
    so a training step (queries + documents, all ranks) is one ``TokenStats``.
    """

    rows: float = 0
    real_tokens: float = 0
    real_squares: float = 0
    padded_tokens: float = 0
    padded_squares: float = 0

    @classmethod
    def from_mask(cls, attention_mask: torch.Tensor) -> TokenStats:
        """Stats of one padded batch; one small device->host copy."""
        if attention_mask.ndim != 2:
            raise ValueError(f"attention_mask must be (batch, length), got shape {tuple(attention_mask.shape)}")
        rows, width = attention_mask.shape
        lengths = attention_mask.sum(-1, dtype=torch.int64)
        real, squares = torch.stack([lengths.sum(), (lengths * lengths).sum()]).tolist()
        return cls(rows, real, squares, rows * width, rows * width * width)

    @classmethod
    def from_lengths(cls, lengths: Iterable[float], width: float | None = None) -> TokenStats:
        """Stats of rows of the given real lengths, padded to ``width`` (default: no padding)."""
        lengths = list(lengths)
        rows, tokens, squares = len(lengths), sum(lengths), sum(x * x for x in lengths)
        if width is None:
            return cls(rows, tokens, squares, tokens, squares)
        return cls(rows, tokens, squares, rows * width, rows * width * width)

    def __add__(self, other: TokenStats) -> TokenStats:
        if not isinstance(other, TokenStats):
            return NotImplemented
        return TokenStats(*(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))

    def __radd__(self, other: Any) -> TokenStats:
        if other == 0:
            return self
        return self.__add__(other)

    def __mul__(self, factor: float) -> TokenStats:
        return TokenStats(*(a * factor for a in dataclasses.astuple(self)))

    __rmul__ = __mul__


# ---------------------------------------------------------------------------------------------- model


@dataclass(frozen=True)
class FlopModel:
    """FLOP of a backbone as it trains, derived from the module (see the module docstring).

    Build it with :meth:`from_module`; cost sequences, batches or examples with :meth:`sequence`,
    :meth:`batch`, :meth:`per_example` or :meth:`count`.

    Example:
        >>> model = FlopModel.from_module(backbone)                      # doctest: +SKIP
        >>> model.per_example(query_tokens=14, document_tokens=64).model  # doctest: +SKIP
    """

    ops: tuple[MatmulOp, ...]
    params: ParameterCounts
    accounting: Accounting = "exact"
    paper_method: str = "full"
    #: The paper formula's FLOP per token for these counts, as the strategy gave it (None: ask by name).
    paper_flops: float | None = None
    _sums: dict[str, Poly] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.accounting not in ACCOUNTINGS:
            raise UserError(f"accounting must be one of {', '.join(ACCOUNTINGS)}, not {self.accounting!r}.")
        sums = {"forward": Poly(), "backward": Poly(), "backward_hw": Poly(), "recompute": Poly()}
        for op in self.ops:
            sums["forward"] += op.forward
            sums["backward"] += op.forward * sum(op.grads)
            # A fused kernel recomputes its score matrix when it has any backward to do.
            sums["backward_hw"] += op.forward * (sum(op.grads_hw) + (op.fused and any(op.grads_hw)))
            if op.recomputed:
                sums["recompute"] += op.forward
        self._sums.update(sums)

    # -- construction ---------------------------------------------------------------------------------

    @classmethod
    def from_module(
        cls,
        backbone: nn.Module,
        *,
        accounting: Accounting = "exact",
        method: str | None = None,
        probe_lengths: Sequence[int] = PROBE_LENGTHS,
    ) -> FlopModel:
        """Derives the FLOP model of the module that trains (frozen, LoRA-wrapped, quantised, ...).

        Args:
            backbone: what the tuning strategy's ``apply`` returned; weights may be on ``meta``.
            accounting: ``exact`` or ``paper`` (the study's per-token formulas for model FLOP).
            method: the registered tuning strategy that tuned it, whose paper formula to use; None or an
                unregistered name derives the formula from which parameters train (:func:`backward_reach`).
            probe_lengths: three distinct sequence lengths for the probe forwards.

        Raises:
            UserError: the backbone's forward cannot be probed (reported with the reason).
        """
        from lightning_embed.strategy import (
            StrategyError,
            TuningStrategy,
            strategy_class,
        )

        ops = probe_matmuls(backbone, probe_lengths)
        params = parameter_counts(backbone)
        strategy: type[TuningStrategy] = TuningStrategy  # the base class's default: derived from the module
        paper = infer_paper_method(backbone)
        if method:
            try:
                strategy, paper = strategy_class(method), method
            except StrategyError:
                pass  # e.g. a strategy given as an instance of an unregistered class: derive the formula
        per_token = strategy.paper_flops_per_token(params.non_embedding, params.trainable_non_embedding, backbone)
        return cls(tuple(ops), params, accounting, paper, None if per_token is None else float(per_token))

    def with_accounting(self, accounting: Accounting, method: str | None = None) -> FlopModel:
        """The same model with another accounting (and optionally another strategy's paper formula)."""
        if not method or method == self.paper_method:
            return FlopModel(self.ops, self.params, accounting, self.paper_method, self.paper_flops)
        return FlopModel(self.ops, self.params, accounting, method)

    # -- costs ----------------------------------------------------------------------------------------

    @property
    def paper_per_token(self) -> float:
        """The study's training FLOP per token for this model (2N when nothing trains)."""
        if self.params.trainable == 0:
            return 2.0 * self.params.non_embedding
        if self.paper_flops is not None:
            return self.paper_flops
        return paper_flops_per_token(self.paper_method, self.params.non_embedding, self.params.trainable_non_embedding)

    def count(self, stats: TokenStats, *, train: bool = True, gradcache: bool = False,
              recompute: bool = False) -> FlopCount:
        """FLOP of encoding rows with the given token stats.

        Args:
            stats: rows and (squared) lengths, real and computed.
            train: forward + backward (True) or forward only (False).
            gradcache: GradCache's extra no-grad forward (hardware only).
            recompute: activation-checkpointing recomputation (hardware only).
        """
        s = self._sums
        real = (stats.rows, stats.real_tokens, stats.real_squares)
        computed = (stats.rows, stats.padded_tokens, stats.padded_squares)
        if self.accounting == "paper":
            per_token = self.paper_per_token if train else 2.0 * self.params.non_embedding
            model = per_token * stats.real_tokens
        else:
            model = s["forward"].over(*real) + (s["backward"].over(*real) if train else 0.0)
        hardware = s["forward"].over(*computed)
        if train:
            hardware += s["backward_hw"].over(*computed)
            if gradcache:
                hardware += s["forward"].over(*computed)
            if recompute:
                hardware += s["recompute"].over(*computed)
        return FlopCount(float(model), float(hardware))

    def sequence(self, real_tokens: float, computed_tokens: float | None = None, *, train: bool = True,
                 gradcache: bool = False, recompute: bool = False) -> FlopCount:
        """FLOP of one sequence with ``real_tokens`` tokens, computed at ``computed_tokens`` positions."""
        computed = real_tokens if computed_tokens is None else computed_tokens
        if computed < real_tokens:
            raise ValueError(f"computed_tokens={computed} is below real_tokens={real_tokens}")
        stats = TokenStats(1, real_tokens, real_tokens * real_tokens, computed, computed * computed)
        return self.count(stats, train=train, gradcache=gradcache, recompute=recompute)

    def batch(self, attention_mask: torch.Tensor, *, train: bool = True, gradcache: bool = False,
              recompute: bool = False) -> FlopCount:
        """FLOP of one padded batch, from its per-row lengths (no forward is run)."""
        return self.count(TokenStats.from_mask(attention_mask), train=train, gradcache=gradcache, recompute=recompute)

    def per_example(self, query_tokens: float, document_tokens: float, num_negatives: int = 0, *,
                    train: bool = True, gradcache: bool = False, recompute: bool = False) -> FlopCount:
        """FLOP of one training example: a query and its positive plus ``num_negatives`` documents.

        Lengths may be averages; with ``exact`` accounting the attention term then uses the square of
        the average, a slight underestimate for varied lengths (the budget planner uses real stats).
        """
        documents = TokenStats.from_lengths([document_tokens]) * (1 + num_negatives)
        stats = TokenStats.from_lengths([query_tokens]) + documents
        return self.count(stats, train=train, gradcache=gradcache, recompute=recompute)

    def breakdown(self, tokens: int) -> dict[str, float]:
        """Training FLOP of one unpadded sequence of ``tokens`` tokens, split by where it goes (exact)."""
        out = {"forward: linear": 0.0, "forward: attention": 0.0, "backward: weight grads": 0.0,
               "backward: input grads": 0.0, "backward: attention": 0.0}
        for op in self.ops:
            f = op.forward.at(tokens)
            out[f"forward: {op.kind}"] += f
            if op.kind == "attention":
                out["backward: attention"] += f * sum(op.grads)
            else:
                out["backward: input grads"] += f * op.grads[0]
                out["backward: weight grads"] += f * op.grads[1]
        return out


def backward_reach(backbone: nn.Module) -> BackwardReach:
    """How far the backward pass of a tuned module reaches, as the study's formulas tell them apart.

    ``all`` when every base non-embedding parameter trains (6N); ``top`` when only whole top blocks (and
    what follows them) train, so the backward stops at the lowest trained block (2N + 4N_t); ``through``
    otherwise (adapters, biases, norms spread over the blocks): input gradients flow through the whole
    network (4N + 2N_t). A module where nothing trains counts as ``all`` (FlopModel costs it 2N).
    """
    from lightning_embed.models.backbones import find_blocks

    adapters = adapter_param_ids(backbone)
    named = [(n, p) for n, p in backbone.named_parameters() if "emb" not in n]
    trainable = [(n, p) for n, p in named if p.requires_grad]
    if not trainable:
        return "all"
    if any(id(p) in adapters for _, p in trainable):
        return "through"
    if all(p.requires_grad for n, p in named if id(p) not in adapters):
        return "all"
    try:
        _, blocks = find_blocks(backbone)
    except UserError:
        return "through"
    flags = [all(p.requires_grad for p in b.parameters()) for b in blocks]
    partial_blocks = [not f and any(p.requires_grad for p in b.parameters()) for f, b in zip(flags, blocks)]
    first = flags.index(True) if True in flags else len(flags)
    if not any(partial_blocks) and all(flags[first:]) and first < len(flags):
        return "top"
    return "through"


def infer_paper_method(backbone: nn.Module) -> str:
    """Which of the study's methods the way this module trains looks like (a label for reports).

    ``full`` when every base non-embedding parameter trains; ``lora`` when adapters train; ``bias`` when
    only biases train; ``freeze`` when only whole trailing blocks (and what follows them) train. Anything
    else (a third party's norm-only tuning, say) is labelled ``lora``: its backward still runs through the
    whole network, as with adapters. The cost itself comes from :func:`backward_reach`.
    """
    reach = backward_reach(backbone)
    if reach == "all":
        return "full"
    if reach == "top":
        return "freeze"
    adapters = adapter_param_ids(backbone)
    trainable = [(n, p) for n, p in backbone.named_parameters() if "emb" not in n and p.requires_grad]
    if not any(id(p) in adapters for _, p in trainable) and all(n.endswith("bias") for n, _ in trainable):
        return "bias"
    return "lora"


__all__ = [
    "ACCOUNTINGS", "Accounting", "BackwardReach", "FlopCount", "FlopModel", "MatmulOp", "ParameterCounts",
    "Poly", "TokenStats", "backward_reach", "infer_paper_method", "paper_flops_per_token", "parameter_counts",
]
