"""Numeric equality at a tolerance scaled to what is compared, so that it holds on every CPU.

Two float32 computations of the same quantity in another order (GradCache's mini-batches against one batch,
packed rows against padded ones, two processes against one, a merged LoRA weight against the adapter) differ
by rounding, and how much depends on the machine: the BLAS kernels (AMX, AVX512, AVX2), their blocking and the
thread count all change the order of the additions. That rounding is relative to the size of the *summands*,
so a per-element ``atol`` fails on entries that are small only because large terms cancel (a gradient whose
largest entry is 14.8 erred by 2.3e-5 on one AMD CPU and passed on an Intel one), while a loose per-element
``rtol`` would hide real errors in small entries.

The comparison here is normwise: ``||actual - expected||_2 <= rel * scale``, where ``scale`` is the norm of the
expected tensor, but at least ``floor_share`` times the norm of everything compared together (for a mapping of
gradients: all of them). The floor covers tensors whose exact value is zero or nearly so (a BERT key bias has a
gradient of exactly 0 in exact arithmetic: its computed norm is 4e-11, all rounding), without letting a
wrong tensor of ordinary size pass. A wrong computation (a GradCache chunk dropped, a sign flipped, a mask
that leaks) changes a tensor by a sizeable fraction of its norm, far above ``rel``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

#: Normwise relative tolerance for float32 results computed in another order. The largest rounding seen
#: is 3.7e-6 (GradCache gradients on an AMD EPYC with AVX512-BF16), so 1e-4 leaves a 25x margin and still
#: fails any error larger than 0.01% of a tensor's norm.
FP32_REL = 1e-4

Tensors = torch.Tensor | Mapping[str, torch.Tensor]


def _norm(t: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(t.detach().to(torch.float64)))


def relative_difference(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``||actual - expected|| / ||expected||`` in float64 (0 when both are zero, inf when only ``expected`` is).

    Example:
        >>> import torch
        >>> relative_difference(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0]))
        0.0
    """
    diff = _norm(actual.to(torch.float64) - expected.to(torch.float64))
    ref = _norm(expected)
    if ref == 0.0:
        return 0.0 if diff == 0.0 else math.inf
    return diff / ref


def close_mismatches(actual: Tensors, expected: Tensors, *, rel: float = FP32_REL,
                     floor_share: float = 1e-3) -> list[str]:
    """What differs by more than rounding: one message per tensor (empty when everything is close).

    Args:
        actual: a tensor, or a mapping of names to tensors (e.g. parameter gradients).
        expected: the reference, of the same structure, shapes and names.
        rel: normwise relative tolerance (see :data:`FP32_REL`).
        floor_share: each tensor's scale is at least this share of the norm of all expected tensors together.

    Returns:
        Messages naming the tensor, its relative difference and the allowed one; shape or name mismatches too.
    """
    if isinstance(expected, torch.Tensor):
        actual, expected = {"tensor": actual}, {"tensor": expected}
    elif isinstance(actual, torch.Tensor):
        return ["a tensor was compared with a mapping"]
    problems = [f"{name}: only on one side" for name in sorted(set(actual) ^ set(expected))]
    total = math.sqrt(sum(_norm(t) ** 2 for t in expected.values()))
    for name in sorted(set(actual) & set(expected)):
        a, e = actual[name], expected[name]
        if a.shape != e.shape:
            problems.append(f"{name}: shape {tuple(a.shape)} != {tuple(e.shape)}")
            continue
        if not torch.isfinite(a).all():
            problems.append(f"{name}: not finite")
            continue
        diff = _norm(a.to(torch.float64) - e.to(torch.float64))
        scale = max(_norm(e), floor_share * total)
        if diff > rel * scale:
            relative = diff / max(scale, 1e-300)
            problems.append(f"{name}: |diff| {diff:.3g} > {rel:g} x {scale:.3g} (relative {relative:.3g})")
    return problems


def assert_close_relative(actual: Tensors, expected: Tensors, *, rel: float = FP32_REL, floor_share: float = 1e-3,
                          what: str = "") -> None:
    """Asserts :func:`close_mismatches` finds nothing; the message lists every tensor that differs.

    Example:
        >>> import torch
        >>> assert_close_relative(torch.ones(3), torch.ones(3) * (1 + 1e-7))
    """
    problems = close_mismatches(actual, expected, rel=rel, floor_share=floor_share)
    if problems:
        shown = "; ".join(problems[:8]) + (f"; ... {len(problems) - 8} more" if len(problems) > 8 else "")
        raise AssertionError(f"{what + ': ' if what else ''}{shown}")
