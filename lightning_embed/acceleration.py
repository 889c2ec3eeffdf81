"""Faster kernels that keep the math: which attention implementation to train with, and when to compile.

Both choices are made when training starts, once the device, the precision and the number of steps are
known, and only when the user left them open (``attn_implementation: null``, ``compile: auto``):

- **Attention.** PyTorch's CPU flash-attention kernel is slow in bf16 for short sequences: forward plus
  backward of one SmolLM2 attention layer (9 heads of 64, 32 rows, padding + causal mask) took 35.6 ms at
  length 64 and 72.4 ms at 128, against 9.8 and 28.8 ms for the plain matmul-softmax-matmul ("eager")
  attention; at 256 they tie (26.4 vs 24.1 ms, 8 rows) and at 512 flash wins (70.9 vs 196 ms), and in fp32
  flash is never much slower (2-core AMX CPU, ``benchmarks/bench_attention.py``). In a bf16 SmolLM2-135M
  step at length 64 the flash backward alone was 21% of the time. So on CPU, in bf16, for texts of at most
  :data:`EAGER_MAX_LENGTH` tokens, training uses eager attention; everywhere else (GPUs above all, whose
  fused kernels are fast) the backbone keeps its own (``sdpa``). Eager attention rounds the scores to bf16
  before an fp32 softmax, as every bf16 eager model does; the held-out loss stays within noise
  (``benchmarks/bench_throughput.py`` reports it).
- **Compilation.** ``torch.compile`` fuses the elementwise work (norms, rotary, SiLU, autocast casts) that
  dominates a bf16 step on CPU: 1.27-1.36x faster per SmolLM2-135M step here, for 70-200 s of compilation,
  so it pays after a few hundred steps. ``compile: auto`` turns it on for runs of at least
  :data:`AUTO_COMPILE_MIN_STEPS` optimizer steps on a single CPU process with a C++ compiler (what
  inductor needs there), for tuning strategies that do not opt out (QLoRA does: bitsandbytes kernels). On GPUs
  ``auto`` leaves it off: unmeasured so far; ``compile: true`` turns it on anywhere.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass

import torch

#: Longest text (tokens) for which CPU bf16 training switches to eager attention.
EAGER_MAX_LENGTH = 256
#: Shortest run (optimizer steps) that ``compile: auto`` compiles.
AUTO_COMPILE_MIN_STEPS = 500


def training_attention(device: torch.device, precision: str, max_length: int) -> str | None:
    """The attention implementation to train with when the user chose none, or None to keep the backbone's.

    Args:
        device: the training device.
        precision: Lightning's precision string (``"bf16-mixed"``, ``"32-true"``, ...).
        max_length: the longest text a batch may hold (the larger of the query and document max lengths).
    """
    if device.type == "cpu" and precision.startswith("bf16") and max_length <= EAGER_MAX_LENGTH:
        return "eager"
    return None


@dataclass(frozen=True)
class CompileDecision:
    """Whether ``compile: auto`` compiles, and the reason (printed at the start of training)."""

    compile: bool
    reason: str


def auto_compile(device: torch.device, steps: int, world_size: int, strategy_compiles: bool) -> CompileDecision:
    """What ``compile: auto`` does for this run (see the module docstring for the measurements).

    Args:
        device: the training device.
        steps: optimizer steps the run plans (``trainer.estimated_stepping_batches``).
        world_size: number of training processes.
        strategy_compiles: the tuning strategy's :attr:`~lightning_embed.strategy.TuningStrategy.auto_compile`.
    """
    if device.type != "cpu":
        return CompileDecision(False, f"not on {device.type} (auto compiles on CPU only; set compile: true)")
    if world_size > 1:
        return CompileDecision(False, "several processes (set compile: true to compile each)")
    if not strategy_compiles:
        return CompileDecision(False, "the tuning strategy opts out (custom kernels)")
    if steps < AUTO_COMPILE_MIN_STEPS:
        return CompileDecision(False, f"{steps} steps < {AUTO_COMPILE_MIN_STEPS}: compilation would not pay")
    if not _has_cxx_compiler():
        return CompileDecision(False, "no C++ compiler found (inductor needs one on CPU)")
    return CompileDecision(True, f"{steps} steps >= {AUTO_COMPILE_MIN_STEPS}")


def _has_cxx_compiler() -> bool:
    try:
        from torch._inductor import config

        cxx = config.cpp.cxx[0] if config.cpp.cxx and config.cpp.cxx[0] else None
    except Exception:  # noqa: BLE001 - a torch without inductor: no compiling
        return False
    return any(shutil.which(c) for c in ([cxx] if cxx else ["g++", "clang++", "c++"]))
