"""Bias-only tuning (strategies/bias.py): which parameters train, restore, export, models without biases."""

from __future__ import annotations

import doctest
import importlib

import pytest

from lightning_embed.models.backbones import load_backbone
from lightning_embed.strategy import StrategyError, apply_strategy, build_strategy
from tests.strategies.builtin_cases import (
    arch_cases,
    check_gpt2_conv1d,
    check_restore_and_export_reproduce_the_trained_model,
    check_trains_exactly_the_intended_parameters,
)


@pytest.mark.parametrize(("arch", "spec"), arch_cases("bias"))
def test_trains_exactly_the_intended_parameters(arch, spec, tiny_backbones):
    check_trains_exactly_the_intended_parameters(arch, spec, tiny_backbones)


@pytest.mark.parametrize(("arch", "spec"), arch_cases("bias"))
def test_restore_and_export_reproduce_the_trained_model(arch, spec, tiny_backbones):
    check_restore_and_export_reproduce_the_trained_model(arch, spec, tiny_backbones)


def test_docstring_examples_run():
    # The class docstring's examples are what --help shows; keep them true.
    result = doctest.testmod(importlib.import_module("strategies.bias"), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


def test_other_architectures_gpt2_conv1d():
    check_gpt2_conv1d("bias")


def test_bad_values_are_reported_together():
    with pytest.raises(StrategyError, match="norm_biases"):
        build_strategy({"name": "bias", "norm_biases": "yes"})


def test_bias_on_llama_errors_clearly(tiny_backbones):
    raw = load_backbone(tiny_backbones["llama"])
    problems = build_strategy("bias").validate(raw)
    assert len(problems) == 1 and "has no bias terms" in problems[0] and "lora" in problems[0]
    with pytest.raises(StrategyError, match="no bias terms"):
        apply_strategy(build_strategy("bias"), raw)
    with pytest.raises(StrategyError, match="no bias terms"):
        build_strategy("bias").apply(load_backbone(tiny_backbones["llama"]))  # apply checks too
