"""The training precision ``fit`` uses when a config does not set ``trainer.precision``.

bf16 mixed precision (weights and optimizer state in fp32, matmuls in bf16, the contrastive logits and
loss in fp32: see :meth:`lightning_embed.training.module.EmbeddingModule._contrastive_loss`) keeps the held-out
loss within noise of fp32 (``benchmarks/bench_throughput.py`` and ``benchmarks/bench_precision_quality.py``
measure both), and is much faster where the hardware multiplies bf16 natively: NVIDIA GPUs from Ampere on,
and CPUs with AMX or AVX512-BF16 (measured in ``benchmarks/results/``). Elsewhere bf16 is emulated and
slower, so fp32 stays the default there. Set ``trainer.precision`` to choose yourself.
"""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name as the OS reports it, with its family and model numbers on Linux (a virtual
    machine often reports only "AMD EPYC", which covers several generations), else the platform's guess.

    Imports nothing heavy: light commands (``recipe``, ``laws``) record it in their provenance.
    """
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
            if not key.strip() and fields:  # the end of the first processor's block
                break
    except OSError:
        pass
    if "model name" in fields:
        numbers = f" (family {fields['cpu family']} model {fields['model']})" if "cpu family" in fields else ""
        return fields["model name"] + numbers
    return platform.processor() or platform.machine() or "unknown CPU"


def bf16_path() -> str:
    """Which bf16 hardware path this machine has: ``CUDA``, ``AMX``, ``AVX512-BF16`` or ``none (emulated)``."""
    import torch

    if torch.cuda.is_available():
        return "CUDA" if torch.cuda.is_bf16_supported(including_emulation=False) else "none (emulated)"
    if getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)():
        return "AMX"
    if getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)():
        return "AVX512-BF16"
    return "none (emulated)"


def describe_hardware() -> str:
    """One line naming the hardware a run (or a test session) ran on and the precision ``fit`` picks there.

    Example output: ``CPU: AMD EPYC; 2 threads; bf16 path: AVX512-BF16; fit default precision: bf16-mixed``.
    """
    import torch

    device = f"GPU: {torch.cuda.get_device_name()}; " if torch.cuda.is_available() else ""
    return (f"{device}CPU: {cpu_model()}; {torch.get_num_threads()} threads; bf16 path: {bf16_path()}; "
            f"fit default precision: {default_precision()}")


def native_bf16() -> bool:
    """Whether this machine's training device multiplies bf16 natively (the GPU if there is one)."""
    return bf16_path() != "none (emulated)"


def default_precision() -> str:
    """``bf16-mixed`` where bf16 is native (see :func:`native_bf16`), else ``32-true``."""
    return "bf16-mixed" if native_bf16() else "32-true"
