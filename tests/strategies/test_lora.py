"""LoRA (strategies/lora.py): which parameters train, restore, export, GPT-2's Conv1D, bad options."""

from __future__ import annotations

import doctest
import importlib

import pytest

from lightning_embed.strategy import StrategyError, build_strategy
from tests.strategies.builtin_cases import (
    arch_cases,
    check_gpt2_conv1d,
    check_restore_and_export_reproduce_the_trained_model,
    check_trains_exactly_the_intended_parameters,
)


@pytest.mark.parametrize(("arch", "spec"), arch_cases("lora"))
def test_trains_exactly_the_intended_parameters(arch, spec, tiny_backbones):
    check_trains_exactly_the_intended_parameters(arch, spec, tiny_backbones)


@pytest.mark.parametrize(("arch", "spec"), arch_cases("lora"))
def test_restore_and_export_reproduce_the_trained_model(arch, spec, tiny_backbones):
    check_restore_and_export_reproduce_the_trained_model(arch, spec, tiny_backbones)


def test_docstring_examples_run():
    # The class docstring's examples are what --help shows; keep them true.
    result = doctest.testmod(importlib.import_module("strategies.lora"), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


def test_other_architectures_gpt2_conv1d():
    check_gpt2_conv1d("lora")


def test_bad_values_are_reported_together():
    with pytest.raises(StrategyError) as err:
        build_strategy({"name": "lora", "rank": 0, "alpha": -1, "dropout": -0.1, "embeddings": "sometimes"})
    msg = str(err.value)
    assert msg.startswith("tuning strategy 'lora': ")
    for part in ("rank must be a positive integer, got 0", "alpha", "dropout must be in [0, 1), got -0.1"):
        assert part in msg
    assert "embeddings must be 'frozen', 'lora' or 'train', got 'sometimes'" in msg
    assert msg.count("tuning strategy") == 1  # not wrapped twice by the registry
    with pytest.raises(StrategyError, match="target_modules"):
        build_strategy({"name": "lora", "target_modules": []})
