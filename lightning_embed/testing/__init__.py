"""Helpers for tests and benchmarks: tiny random backbones and tolerance-scaled numeric comparison."""

from lightning_embed.testing.backbones import TinyArch, make_tiny_backbone, tiny_config
from lightning_embed.testing.tolerances import (
    FP32_REL,
    assert_close_relative,
    close_mismatches,
    relative_difference,
)

__all__ = [
    "FP32_REL", "TinyArch", "assert_close_relative", "close_mismatches", "make_tiny_backbone", "relative_difference",
    "tiny_config",
]
