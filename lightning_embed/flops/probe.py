"""The probe: one tiny forward of a backbone that finds every matmul it runs and which gradients it needs.

Hooks on every matmul module (``nn.Linear``, transformers' ``Conv1D``, peft's LoRA linears, bitsandbytes'
``Linear4bit``) cost those from their shapes, whatever kernel runs inside; a function mode catches the
bare matmuls outside them (attention scores and values, rotary tables, SDPA, functional linears). For
each matmul it records, at that point of *this* forward: its FLOP, whether each operand requires grad (the
exact rule autograd follows: a weight gradient only where the weight trains, an input gradient only where
something earlier on the input's path trains), whether its output reaches ``last_hidden_state`` (BERT's
pooler does not, so it has no backward), and whether activation checkpointing would recompute it.

The forward runs on ``meta`` stand-ins of the weights (no compute, no memory), on the real weights only
where a module cannot run on meta (bitsandbytes' 4-bit layers). Three lengths give each matmul's cost as
``c0 + c1*S + c2*S^2`` for one sequence of ``S`` tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import partial
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from lightning_embed.errors import UserError

#: Sequence lengths of the probe forwards (three points fit c0 + c1*S + c2*S^2 exactly).
PROBE_LENGTHS: tuple[int, int, int] = (4, 8, 12)


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
    from lightning_embed.models.backbones import find_blocks

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


def _meta_state(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """Meta stand-ins for every parameter and buffer, with the same shapes and ``requires_grad``."""
    state: dict[str, torch.Tensor] = {}
    for name, p in backbone.named_parameters(remove_duplicate=False):
        state[name] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for name, b in backbone.named_buffers(remove_duplicate=False):
        state[name] = torch.empty_like(b, device="meta")
    return state


_Probe = list[tuple["_Event", bool, bool]]  # each matmul, whether it reaches the output, whether recomputed


def _probe_once(backbone: nn.Module, length: int, intrinsic: bool, on_meta: bool) -> tuple[_Probe, bool]:
    """One forward of ``length`` tokens: each matmul, whether its output reaches the output, and whether
    checkpointing would recompute it.

    With ``on_meta`` the forward runs on meta stand-ins of the weights (no compute, no memory), whatever
    device the weights are on; otherwise on the weights themselves.
    """
    param = next(backbone.parameters(), None)
    device = torch.device("meta") if on_meta or param is None else param.device
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
            if on_meta and param is not None and param.device.type != "meta":
                out = torch.func.functional_call(backbone, _meta_state(backbone), (), {"input_ids": ids})
            else:
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
    try:
        results = [_probe_once(backbone, s, intrinsic, on_meta=True) for s in lengths]
    except Exception:  # noqa: BLE001 - e.g. bitsandbytes 4-bit layers cannot run on meta stand-ins
        results = [_probe_once(backbone, s, intrinsic, on_meta=False) for s in lengths]
    runs = [events for events, _ in results]
    signature = [(e.name, e.kind) for e, *_ in runs[0]]
    for run in runs[1:]:
        if [(e.name, e.kind) for e, *_ in run] != signature:
            raise UserError(
                f"{type(backbone).__name__} runs different matmuls for different sequence lengths; its FLOP "
                "cannot be modelled per token. Use accounting='paper'.")
    return runs, any(artefact for _, artefact in results)


def probe_matmuls(backbone: nn.Module, lengths: Sequence[int] = PROBE_LENGTHS) -> list[MatmulOp]:
    """Every matmul of one forward of ``backbone``, with its cost per sequence length and its gradients.

    Raises:
        UserError: the forward cannot be probed, or runs different matmuls at different lengths.
    """
    lengths = tuple(lengths)
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


__all__ = ["MatmulOp", "PROBE_LENGTHS", "Poly", "probe_matmuls"]
