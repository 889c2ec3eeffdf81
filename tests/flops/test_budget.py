"""Budgets and the dry run (lightning_embed/flops/budget.py)."""

from __future__ import annotations

import math

import pytest

from lightning_embed.errors import UserError
from lightning_embed.flops.budget import dry_run, parse_budget, plan_budget, report_table, sample_loader
from lightning_embed.flops.model import (
    FlopModel,
)
from lightning_embed.models.backbones import load_backbone
from tests.flops.reference import padded_batch


@pytest.mark.parametrize("bad", [-1, 0, "abc", True, float("nan"), "inf"])
def test_bad_budgets_are_user_errors(bad):
    from lightning_embed.flops.callback import FlopCallback

    with pytest.raises(UserError, match="max_flops"):
        FlopCallback(max_flops=bad)


def test_budget_strings_and_too_small_budgets(tiny_backbones):
    assert parse_budget("1.5e15") == 1.5e15 and parse_budget(None) is None
    flops = FlopModel.from_module(load_backbone(tiny_backbones["gpt_neox"]))
    _, mask = padded_batch()
    sample = sample_loader([{"attention_mask": mask}])
    step = flops.batch(mask).model
    assert plan_budget(flops, 3.5 * step, sample).steps == 3
    assert plan_budget(flops, 3 * step, sample).steps == 3
    with pytest.raises(UserError, match="does not buy one training step"):
        plan_budget(flops, 0.5 * step, sample)


def test_dry_run_matches_the_callback_plan(tiny_backbones, pairs_file):
    from lightning_embed.data.datamodule import PairDataModule
    from lightning_embed.training.module import EmbeddingModule

    module = EmbeddingModule(backbone=tiny_backbones["gpt_neox"], attn_implementation="eager")
    data = PairDataModule(train=pairs_file, batch_size=4)
    report = dry_run(module, data, 5e8)
    assert report.steps == math.floor(5e8 / report.per_step.model)
    assert report.examples == 4 * report.steps and report.steps_per_epoch == 12
    assert 0 < report.padding < 1 and report.per_step.hardware > report.per_step.model
    assert report_table(report).row_count >= 8
    with pytest.raises(UserError, match="budget must be a positive"):
        dry_run(module, data, "-3")
