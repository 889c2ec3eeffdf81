"""The learning-rate schedule: linear warm-up, then cosine or linear decay to 0, or constant."""

from __future__ import annotations

import math


def warmup_then_decay(total_steps: int, warmup_ratio: float, schedule: str):
    """Learning-rate multiplier: linear warm-up over ``warmup_ratio`` of the steps, then decay to 0."""
    warmup = int(round(total_steps * warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        if schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor
