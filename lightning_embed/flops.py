"""The FLOP model: what one training (or inference) pass of a backbone costs, derived from the module itself.

Two numbers are kept apart (see DESIGN.md, "FLOP accounting"):

- **model FLOP**: the work the method intrinsically needs, on the real (non-padding) tokens, with no
  recomputation. This is what the scaling laws and budgets use.
- **hardware FLOP**: the work the machine actually does, on every computed (padded) position, including
  activation-checkpointing recomputation and GradCache's extra no-grad forward. This is what MFU uses.

How the count is derived, for any module (third-party strategies included, with no code of their own):
the backbone runs one tiny *probe* forward (on the ``meta`` device when its weights are there, so the
recipe solver can cost models it never materialises). Hooks on every matmul module (``nn.Linear``,
transformers' ``Conv1D``, peft's LoRA linears, bitsandbytes' ``Linear4bit``) and a function mode for the
bare matmuls (attention scores and values, rotary tables, SDPA) record, per matmul: its forward FLOP and
whether each operand requires grad *at that point of this forward*. That is exactly the rule autograd
follows: a weight gradient exists only where the weight trains, an input gradient only where something
earlier on the input's path trains (so the first matmul after frozen embeddings gets none). Matmuls whose
output does not reach ``last_hidden_state`` (BERT's pooler) get no backward. Running the probe at three
lengths gives each matmul's cost as ``c0 + c1*S + c2*S^2`` for one sequence of ``S`` tokens, so a padded
batch is costed exactly from its per-row lengths (sum of ``L`` and of ``L^2``) with no further forward.

``paper`` accounting reproduces the study (6N / 2N+4N_t / 4N+2N_t per token, N without embeddings) so
published budgets can be replayed; hardware FLOP stays exact in both modes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from functools import partial
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from lightning_embed.errors import UserError

Accounting = Literal["exact", "paper"]
ACCOUNTINGS: tuple[str, ...] = ("exact", "paper")
PaperMethod = Literal["full", "freeze", "lora", "qlora", "bias"]
PAPER_METHODS: tuple[str, ...] = ("full", "freeze", "lora", "qlora", "bias")

#: Sequence lengths of the probe forwards (three points fit c0 + c1*S + c2*S^2 exactly).
PROBE_LENGTHS: tuple[int, int, int] = (4, 8, 12)


# ---------------------------------------------------------------------------------------------- paper


def paper_flops_per_token(method: str, non_embedding_params: int, trainable_params: int) -> float:
    """Training FLOP per token as the study counts them (attention ignored).

    Args:
        method: ``full`` (6N), ``freeze`` (2N + 4N_t), ``lora``, ``qlora`` or ``bias`` (4N + 2N_t).
        non_embedding_params: N, every parameter whose name lacks ``emb``.
        trainable_params: N_t, the parameters that train (ignored for ``full``).

    Raises:
        UserError: an unknown method or negative counts.
    """
    if method not in PAPER_METHODS:
        raise UserError(f"paper FLOP accounting knows the methods {', '.join(PAPER_METHODS)}, not {method!r}.")
    if non_embedding_params < 0 or trainable_params < 0:
        raise UserError("parameter counts must be non-negative.")
    n, n_t = float(non_embedding_params), float(trainable_params)
    if method == "full":
        return 6.0 * n
    if method == "freeze":
        return 2.0 * n + 4.0 * n_t
    return 4.0 * n + 2.0 * n_t


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
        if width is None:
            return cls(len(lengths), sum(lengths), sum(x * x for x in lengths), sum(lengths), sum(x * x for x in lengths))
        return cls(len(lengths), sum(lengths), sum(x * x for x in lengths), len(lengths) * width,
                   len(lengths) * width * width)

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


@dataclass(frozen=True)
class Poly:
    """FLOP of one sequence of ``S`` tokens: ``c0 + c1*S + c2*S^2``."""

    c0: float = 0.0
    c1: float = 0.0
    c2: float = 0.0

    def at(self, length: float) -> float:
        return self.c0 + self.c1 * length + self.c2 * length * length

    def over(self, rows: float, tokens: float, squares: float) -> float:
        """Summed over rows with the given sums of lengths and squared lengths."""
        return self.c0 * rows + self.c1 * tokens + self.c2 * squares

    def __add__(self, other: Poly) -> Poly:
        return Poly(self.c0 + other.c0, self.c1 + other.c1, self.c2 + other.c2)

    def __mul__(self, factor: float) -> Poly:
        return Poly(self.c0 * factor, self.c1 * factor, self.c2 * factor)


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


# ---------------------------------------------------------------------------------------------- model


@dataclass(frozen=True)
class MatmulOp:
    """One matmul of the probe forward.

    Attributes:
        name: the module that ran it (``layers.0.attention.dense``) or ``module:function``.
        kind: ``linear`` (activation x weight) or ``attention`` (activation x activation).
        forward: its forward FLOP for one sequence of S tokens.
        grads: whether the gradient of (first operand, second operand) is computed, intrinsically.
        grads_hw: the same as the module actually runs (differs when gradient checkpointing made the
            embedding output require grad, which forces input gradients through frozen layers).
        block: index of the transformer block it ran in, if any.
        recomputed: activation checkpointing (of the blocks) runs it again in the backward. PyTorch's
            checkpoint stops recomputing once the last tensor the backward needs is saved again, so a
            block's trailing matmul whose output only feeds a residual add is not recomputed.
        fused: a fused attention kernel (SDPA) that recomputes its scores in the backward.
    """

    name: str
    kind: Literal["linear", "attention"]
    forward: Poly
    grads: tuple[bool, bool]
    grads_hw: tuple[bool, bool]
    block: int | None = None
    recomputed: bool = False
    fused: bool = False


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
            method: the paper formula to use (``full``, ``freeze``, ``lora``, ``qlora``, ``bias``); other
                names or None infer it from which parameters train.
            probe_lengths: three distinct sequence lengths for the probe forwards.

        Raises:
            UserError: the backbone's forward cannot be probed (reported with the reason).
        """
        ops = _probe_ops(backbone, tuple(probe_lengths))
        params = parameter_counts(backbone)
        paper = method if method in PAPER_METHODS else infer_paper_method(backbone)
        return cls(tuple(ops), params, accounting, paper)

    def with_accounting(self, accounting: Accounting, method: str | None = None) -> FlopModel:
        """The same model with another accounting (and optionally another paper method)."""
        method = method if method in PAPER_METHODS else self.paper_method
        return FlopModel(self.ops, self.params, accounting, method)

    # -- costs ----------------------------------------------------------------------------------------

    @property
    def paper_per_token(self) -> float:
        """The study's training FLOP per token for this model (2N when nothing trains)."""
        if self.params.trainable == 0:
            return 2.0 * self.params.non_embedding
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
        stats = TokenStats.from_lengths([query_tokens]) + TokenStats.from_lengths([document_tokens]) * (1 + num_negatives)
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


# ---------------------------------------------------------------------------------------------- params


def _adapter_param_ids(module: nn.Module) -> set[int]:
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


def _logical_numel(module: nn.Module, name: str, p: torch.Tensor) -> int:
    # bitsandbytes packs 4-bit weights two per byte; the study counts the logical matrix.
    if name == "weight" and type(p).__name__ == "Params4bit":
        return int(module.in_features) * int(module.out_features)
    return p.numel()


def parameter_counts(backbone: nn.Module) -> ParameterCounts:
    """Total, non-embedding (N), trainable and trainable non-embedding (N_t) parameter counts.

    Agrees with :func:`lightning_embed.models.count_parameters` on plain models; on wrapped ones it also
    leaves adapters out of N and counts 4-bit weights at their logical size.
    """
    adapters = _adapter_param_ids(backbone)
    seen: set[int] = set()
    total = non_emb = trainable = trainable_non_emb = 0
    for module_name, module in backbone.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            n = _logical_numel(module, name, p)
            full = f"{module_name}.{name}" if module_name else name
            is_emb = "emb" in full
            total += n
            if not is_emb and id(p) not in adapters:
                non_emb += n
            if p.requires_grad:
                trainable += n
                trainable_non_emb += 0 if is_emb else n
    return ParameterCounts(total, non_emb, trainable, trainable_non_emb)


def infer_paper_method(backbone: nn.Module) -> str:
    """Which of the study's formulas fits the way this module trains.

    ``full`` when every base non-embedding parameter trains; ``lora`` when adapters train; ``bias`` when
    only biases train; ``freeze`` when only whole trailing blocks (and what follows them) train. Anything
    else (a third party's norm-only tuning, say) gets the LoRA form 4N + 2N_t: its backward still runs
    through the whole network, which is what that formula assumes.
    """
    from lightning_embed.models import find_blocks

    adapters = _adapter_param_ids(backbone)
    named = [(n, p) for n, p in backbone.named_parameters() if "emb" not in n]
    trainable = [(n, p) for n, p in named if p.requires_grad]
    if not trainable:
        return "full"
    if any(id(p) in adapters for _, p in trainable):
        return "lora"
    base = [(n, p) for n, p in named if id(p) not in adapters]
    if all(p.requires_grad for _, p in base):
        return "full"
    if all(n.endswith("bias") for n, _ in trainable):
        return "bias"
    try:
        _, blocks = find_blocks(backbone)
    except UserError:
        return "lora"
    flags = [all(p.requires_grad for p in b.parameters()) for b in blocks]
    partial_blocks = [not f and any(p.requires_grad for p in b.parameters()) for f, b in zip(flags, blocks)]
    first = flags.index(True) if True in flags else len(flags)
    if not any(partial_blocks) and all(flags[first:]) and first < len(flags):
        return "freeze"
    return "lora"


# ---------------------------------------------------------------------------------------------- probe


def _is_matmul_module(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):  # also bitsandbytes Linear4bit/Linear8bitLt and peft's lora_A/lora_B
        return True
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")  # transformers' GPT-2 style linear


def _linear_dims(module: nn.Module) -> tuple[int, int]:
    if hasattr(module, "in_features") and hasattr(module, "out_features"):
        return int(module.in_features), int(module.out_features)
    return int(module.weight.shape[0]), int(module.nf)  # Conv1D stores (in, out)


def _matmul_flop(a: Sequence[int], b: Sequence[int]) -> int:
    """FLOP of ``torch.matmul`` of the given shapes (batch dims broadcast)."""
    a, b = list(a), list(b)
    if len(a) == 1:
        a = [1] + a
    if len(b) == 1:
        b = b + [1]
    batch = torch.broadcast_shapes(tuple(a[:-2]), tuple(b[:-2]))
    n = 1
    for d in batch:
        n *= d
    return 2 * n * a[-2] * a[-1] * b[-1]


def _einsum_flop(equation: str, operands: Sequence[torch.Tensor]) -> int | None:
    if len(operands) != 2 or "..." in equation or "->" not in equation:
        return None
    inputs, _ = equation.replace(" ", "").split("->")
    sizes: dict[str, int] = {}
    for letters, t in zip(inputs.split(","), operands):
        sizes.update(zip(letters, t.shape))
    n = 2
    for size in sizes.values():
        n *= size
    return n


@dataclass
class _Event:
    name: str
    kind: Literal["linear", "attention"]
    flop: int
    requires: tuple[bool, bool]
    output: Any  # grad_fn of the output, or None
    block: int | None
    fused: bool = False
    position: int = 0  # order among events and saved-tensor packs


class _ProbeState:
    def __init__(self) -> None:
        self.events: list[_Event] = []
        self.stack: list[str] = []
        self.inside_matmul = 0
        self.block: int | None = None
        self.pending: list[tuple[torch.Tensor, nn.Module]] = []
        self.clock = 0
        self.artefact = False  # an embedding output required grad without any parameter behind it
        self.last_save: dict[int, int] = {}  # block -> clock of the last tensor saved for backward in it

    def add(self, event: _Event) -> None:
        event.position = self.clock
        self.clock += 1
        self.events.append(event)

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.block is not None:
            self.last_save[self.block] = self.clock
            self.clock += 1
        return tensor

    def recomputed(self, event: _Event) -> bool:
        # Checkpoint recomputation runs a block's forward until the last saved tensor is packed again;
        # a matmul's own inputs are packed before its kernel, so it only reruns if a save comes after it.
        return event.block is not None and self.last_save.get(event.block, -1) > event.position

    def where(self, fn: str) -> str:
        return f"{self.stack[-1] if self.stack else '<root>'}:{fn}"


_rg = lambda t: bool(isinstance(t, torch.Tensor) and t.requires_grad)  # noqa: E731


class _FunctionRecorder(TorchFunctionMode):
    """Records bare matmuls (attention, rotary tables, functional linears) outside the matmul modules."""

    def __init__(self, state: _ProbeState) -> None:
        super().__init__()
        self.state = state
        self.handlers = {
            F.linear: self._linear,
            torch.matmul: self._mm, torch.Tensor.matmul: self._mm, torch.Tensor.__matmul__: self._mm,
            torch.mm: self._mm, torch.Tensor.mm: self._mm, torch.bmm: self._mm, torch.Tensor.bmm: self._mm,
            torch.Tensor.__rmatmul__: self._rmm,
            torch.addmm: self._addmm, torch.Tensor.addmm: self._addmm,
            torch.baddbmm: self._addmm, torch.Tensor.baddbmm: self._addmm,
            torch.einsum: self._einsum,
            F.scaled_dot_product_attention: self._sdpa,
        }

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        handler = self.handlers.get(func)
        if handler is not None and not self.state.inside_matmul:
            handler(func, args, kwargs, out)
        return out

    def _add(self, fn: str, kind, flop: int, a: Any, b: Any, out: Any, fused: bool = False) -> None:
        grad_fn = out.grad_fn if isinstance(out, torch.Tensor) else None
        self.state.add(_Event(self.state.where(fn), kind, int(flop), (_rg(a), _rg(b)), grad_fn,
                              self.state.block, fused))

    def _linear(self, func, args, kwargs, out) -> None:
        x, w = args[0], args[1] if len(args) > 1 else kwargs["weight"]
        kind = "linear" if isinstance(w, nn.Parameter) else "attention"
        self._add("linear", kind, 2 * x.numel() * w.shape[0], x, w, out)

    def _mm(self, func, args, kwargs, out) -> None:
        a, b = args[0], args[1] if len(args) > 1 else kwargs.get("other", kwargs.get("mat2"))
        self._add("matmul", self._kind(a, b), _matmul_flop(a.shape, b.shape), a, b, out)

    def _rmm(self, func, args, kwargs, out) -> None:
        self._mm(func, (args[1], args[0]), {}, out)

    def _addmm(self, func, args, kwargs, out) -> None:
        a, b = args[1], args[2]
        self._add("addmm", self._kind(a, b), _matmul_flop(a.shape, b.shape), a, b, out)

    def _einsum(self, func, args, kwargs, out) -> None:
        operands = list(args[1]) if len(args) == 2 and isinstance(args[1], (list, tuple)) else list(args[1:])
        flop = _einsum_flop(args[0], operands)
        if flop is not None:
            self._add("einsum", self._kind(*operands), flop, operands[0], operands[1], out)

    def _sdpa(self, func, args, kwargs, out) -> None:
        q, k, v = (args + tuple(kwargs.get(n) for n in ("query", "key", "value")[len(args):]))[:3]
        batch = 1
        for d in q.shape[:-2]:
            batch *= d
        s_q, s_k = q.shape[-2], k.shape[-2]
        scores = 2 * batch * s_q * s_k * q.shape[-1]
        values = 2 * batch * s_q * s_k * v.shape[-1]
        probs_rg = _rg(q) or _rg(k)
        self._add("sdpa.scores", "attention", scores, q, k, out, fused=True)
        # The probabilities require grad exactly when the queries or keys do.
        self.state.add(_Event(self.state.where("sdpa.values"), "attention", values, (probs_rg, _rg(v)),
                              out.grad_fn, self.state.block))

    @staticmethod
    def _kind(a: Any, b: Any) -> Literal["linear", "attention"]:
        return "linear" if isinstance(a, nn.Parameter) or isinstance(b, nn.Parameter) else "attention"


def _first_tensor(args: tuple, kwargs: dict) -> torch.Tensor | None:
    for value in list(args) + list(kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value
    return None


def _install_hooks(backbone: nn.Module, state: _ProbeState, intrinsic: bool) -> list[Any]:
    from lightning_embed.models import find_blocks

    try:
        _, blocks = find_blocks(backbone)
        block_index = {id(b): i for i, b in enumerate(blocks)}
    except UserError:
        block_index = {}
    handles = []

    def pre(name: str, module: nn.Module, args: tuple, kwargs: dict) -> None:
        state.stack.append(name)
        if id(module) in block_index:
            state.block = block_index[id(module)]
        if is_leaf.get(id(module)):
            state.inside_matmul += 1
            state.pending.append((_first_tensor(args, kwargs), module))

    def post(name: str, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        state.stack.pop()
        if id(module) in block_index:
            state.block = None
        if is_leaf.get(id(module)):
            state.inside_matmul -= 1
            x, _ = state.pending.pop()
            d_in, d_out = _linear_dims(module)
            flop = 2 * (x.numel() // d_in) * d_in * d_out
            weight = getattr(module, "weight", None)
            out = output if isinstance(output, torch.Tensor) else _first_tensor(tuple(output), {})
            state.add(_Event(name, "linear", flop, (_rg(x), _rg(weight)),
                             out.grad_fn if out is not None else None, state.block))

    def embedding_output(module: nn.Module, args: tuple, output: Any) -> None:
        # transformers' enable_input_require_grads (called for gradient checkpointing) marks the output of
        # frozen embeddings as requiring grad, which makes autograd compute input gradients through
        # frozen layers. Real hardware work, but not the method's: the intrinsic probe switches it off.
        if isinstance(output, torch.Tensor) and output.requires_grad and output.grad_fn is None:
            state.artefact = True
            if intrinsic:
                output.requires_grad_(False)

    is_leaf: dict[int, bool] = {}
    for name, module in backbone.named_modules():
        if isinstance(module, nn.Embedding):
            # Registered after transformers' own hook, so it runs after it.
            handles.append(module.register_forward_hook(embedding_output))
        # A matmul module that contains another (a wrapper subclassing nn.Linear) is costed by its child.
        is_leaf[id(module)] = _is_matmul_module(module) and not any(
            _is_matmul_module(c) for c in module.modules() if c is not module)
        handles.append(module.register_forward_pre_hook(partial(pre, name), with_kwargs=True))
        handles.append(module.register_forward_hook(partial(post, name), with_kwargs=True, always_call=True))
    return handles


def _reachable(root: Any) -> set[Any]:
    """Every autograd node the backward from ``root`` visits."""
    seen: set[Any] = set()
    todo = [root] if root is not None else []
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        todo.extend(fn for fn, _ in node.next_functions)
    return seen


def _probe_once(backbone: nn.Module, length: int, intrinsic: bool) -> tuple[list[tuple[_Event, bool, bool]], bool]:
    """One forward of ``length`` tokens: each matmul, whether its output reaches the output, and whether
    checkpointing would recompute it."""
    param = next(backbone.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    config = getattr(backbone, "config", None)
    vocab = int(getattr(config, "vocab_size", 2) or 2)
    pad = getattr(config, "pad_token_id", None)
    token = 1 if pad != 1 else 2
    ids = torch.full((1, length), min(token, vocab - 1), dtype=torch.long, device=device)
    state = _ProbeState()
    handles = _install_hooks(backbone, state, intrinsic)
    try:
        # No attention mask: all tokens are real, and on meta a mask would hit data-dependent checks.
        with torch.inference_mode(False), torch.enable_grad(), _FunctionRecorder(state), \
                torch.autograd.graph.saved_tensors_hooks(state.pack, lambda t: t):
            out = backbone(input_ids=ids)
    finally:
        for h in handles:
            h.remove()
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    reach = _reachable(hidden.grad_fn) if hidden.requires_grad else set()
    events = [(e, e.output is not None and e.output in reach, state.recomputed(e)) for e in state.events]
    return events, state.artefact


def _fit(lengths: Sequence[int], values: Sequence[int]) -> Poly:
    """Exact quadratic through three points (Lagrange form, in fractions)."""
    coeffs = [Fraction(0)] * 3
    for i, (xi, yi) in enumerate(zip(lengths, values)):
        others = [xj for j, xj in enumerate(lengths) if j != i]
        denom = Fraction((xi - others[0]) * (xi - others[1]))
        # (x - a)(x - b) = x^2 - (a + b) x + ab
        basis = (Fraction(others[0] * others[1]), Fraction(-(others[0] + others[1])), Fraction(1))
        for k in range(3):
            coeffs[k] += yi * basis[k] / denom
    return Poly(*(float(c) for c in coeffs))


def _probe_set(backbone: nn.Module, lengths: tuple[int, ...], intrinsic: bool = False):
    """Probes at each length; returns the runs and whether an embedding-output artefact was seen."""
    results = [_probe_once(backbone, s, intrinsic) for s in lengths]
    runs = [events for events, _ in results]
    signature = [(e.name, e.kind) for e, *_ in runs[0]]
    for run in runs[1:]:
        if [(e.name, e.kind) for e, *_ in run] != signature:
            raise UserError(
                f"{type(backbone).__name__} runs different matmuls for different sequence lengths; its FLOP "
                "cannot be modelled per token. Use accounting='paper'.")
    return runs, any(artefact for _, artefact in results)


def _probe_ops(backbone: nn.Module, lengths: tuple[int, ...]) -> list[MatmulOp]:
    if len(set(lengths)) != 3:
        raise ValueError(f"probe_lengths must be three distinct lengths, got {lengths}")
    modes = {m: m.training for m in backbone.modules()}
    # Eval mode: no dropout, and transformers only checkpoints in training (reentrant checkpointing
    # would hide requires_grad from the probe).
    backbone.eval()
    try:
        actual, artefact = _probe_set(backbone, lengths)
        # Model FLOP leave out the input gradients that only the embedding-output artefact causes.
        intrinsic = _probe_set(backbone, lengths, intrinsic=True)[0] if artefact else actual
    except (RuntimeError, TypeError, ValueError, NotImplementedError) as err:
        if isinstance(err, UserError):
            raise
        raise UserError(f"cannot derive the FLOP of {type(backbone).__name__}: its probe forward failed "
                        f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}).") from err
    finally:
        for m, mode in modes.items():
            m.train(mode)
    ops = []
    for i, (event, _, recomputed) in enumerate(actual[0]):
        poly = _fit(lengths, [run[i][0].flop for run in actual])
        grads = _grads(intrinsic[0][i])
        grads_hw = _grads(actual[0][i])
        ops.append(MatmulOp(event.name, event.kind, poly, grads, grads_hw, event.block, recomputed, event.fused))
    return ops


def _grads(item: tuple[_Event, bool, bool]) -> tuple[bool, bool]:
    event, reaches, _ = item
    if not reaches:
        return (False, False)
    return (event.requires[0], event.requires[1])


__all__ = [
    "ACCOUNTINGS", "Accounting", "FlopCount", "FlopModel", "MatmulOp", "PAPER_METHODS", "ParameterCounts",
    "Poly", "TokenStats", "infer_paper_method", "paper_flops_per_token", "parameter_counts",
]
