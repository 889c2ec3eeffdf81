"""Full fine-tuning (strategies/full.py) on the tiny GPT-NeoX, Llama and BERT."""

from __future__ import annotations

import doctest
import importlib

import pytest

from tests.strategies.builtin_cases import (
    arch_cases,
    check_restore_and_export_reproduce_the_trained_model,
    check_trains_exactly_the_intended_parameters,
)


@pytest.mark.parametrize(("arch", "spec"), arch_cases("full"))
def test_trains_exactly_the_intended_parameters(arch, spec, tiny_backbones):
    check_trains_exactly_the_intended_parameters(arch, spec, tiny_backbones)


@pytest.mark.parametrize(("arch", "spec"), arch_cases("full"))
def test_restore_and_export_reproduce_the_trained_model(arch, spec, tiny_backbones):
    check_restore_and_export_reproduce_the_trained_model(arch, spec, tiny_backbones)


def test_docstring_examples_run():
    # The class docstring's examples are what --help shows; keep them true.
    result = doctest.testmod(importlib.import_module("strategies.full"), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0
