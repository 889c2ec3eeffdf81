"""Freezing all but the top blocks (strategies/freeze.py): block shares, restore, export, bad options."""

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


@pytest.mark.parametrize(("arch", "spec"), arch_cases("freeze"))
def test_trains_exactly_the_intended_parameters(arch, spec, tiny_backbones):
    check_trains_exactly_the_intended_parameters(arch, spec, tiny_backbones)


@pytest.mark.parametrize(("arch", "spec"), arch_cases("freeze"))
def test_restore_and_export_reproduce_the_trained_model(arch, spec, tiny_backbones):
    check_restore_and_export_reproduce_the_trained_model(arch, spec, tiny_backbones)


def test_docstring_examples_run():
    # The class docstring's examples are what --help shows; keep them true.
    result = doctest.testmod(importlib.import_module("strategies.freeze"), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


def test_other_architectures_gpt2_conv1d():
    check_gpt2_conv1d("freeze")


def test_bad_values_are_reported_together():
    for blocks in (1.5, -1, True, "two", 0.0):
        with pytest.raises(StrategyError, match="blocks"):
            build_strategy({"name": "freeze", "blocks": blocks})
    with pytest.raises(StrategyError, match="trains nothing"):
        build_strategy({"name": "freeze", "blocks": 0, "train_final_norm": False})


def test_freeze_fraction_rounds_to_blocks():
    freeze = build_strategy({"name": "freeze", "blocks": 0.25})
    assert [freeze.num_trained_blocks(d) for d in (1, 2, 6, 30)] == [1, 1, 2, 8]
    assert build_strategy({"name": "freeze", "blocks": 1.0}).num_trained_blocks(30) == 30
