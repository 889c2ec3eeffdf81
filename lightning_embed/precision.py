"""The training precision ``fit`` uses when a config does not set ``trainer.precision``.

bf16 mixed precision (weights and optimizer state in fp32, matmuls in bf16, the contrastive logits and
loss in fp32: see :meth:`lightning_embed.module.EmbeddingModule._contrastive_loss`) keeps the held-out
loss within noise of fp32 (``benchmarks/bench_throughput.py`` and ``benchmarks/bench_precision_quality.py``
measure both), and is much faster where the hardware multiplies bf16 natively: NVIDIA GPUs from Ampere on,
and CPUs with AMX or AVX512-BF16 (about 2.3x per step on SmolLM2-135M here). Elsewhere bf16 is emulated and
slower, so fp32 stays the default there. Set ``trainer.precision`` to choose yourself.
"""

from __future__ import annotations

import torch


def native_bf16() -> bool:
    """Whether this machine's training device multiplies bf16 natively (the GPU if there is one)."""
    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    cpu = torch.cpu
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(cpu, probe, lambda: False)() for probe in probes)


def default_precision() -> str:
    """``bf16-mixed`` where bf16 is native (see :func:`native_bf16`), else ``32-true``."""
    return "bf16-mixed" if native_bf16() else "32-true"
