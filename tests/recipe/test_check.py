"""``laws check`` (lightning_embed/recipe/check.py): prediction error of held-out runs."""

from __future__ import annotations

import json

import pytest

from lightning_embed.errors import UserError
from lightning_embed.recipe import laws_check
from lightning_embed.recipe.laws import LawsFile, save_laws
from tests.recipe.runs_synthetic import write_synthetic_runs


def test_laws_check_reports_prediction_error_of_held_out_runs(fitted, tmp_path, capsys):
    _, laws = fitted
    # Held-out runs at budgets the laws never saw, from the same truth: errors are noise-sized ...
    held_out = write_synthetic_runs(tmp_path / "held.jsonl", [("full", ()), ("lora", (("rank", 16),))],
                                    budgets=[2e16, 5e17], seed=7)
    report = laws_check(laws.path, [held_out])
    assert len(report.checks) > 5 and report.mean_abs_error < 0.02 and report.rmse_log < 0.02
    assert "mean |error|" in capsys.readouterr().out
    # ... while runs whose loss is 10% worse than the law says show it, run by run.
    worse = tmp_path / "worse.jsonl"
    worse.write_text("".join(
        json.dumps({**json.loads(line), "val_loss": json.loads(line)["val_loss"] * 1.1}) + "\n"
        for line in held_out.read_text().splitlines()))
    report = laws_check(laws.path, [worse], json=True)
    assert all(-0.12 < c.error < -0.07 for c in report.checks)
    assert json.loads(capsys.readouterr().out)["mean_abs_error"] == pytest.approx(report.mean_abs_error)


def test_laws_check_lists_runs_without_a_law_and_refuses_when_none_has_one(fitted, tmp_path):
    _, laws = fitted
    only_full = tmp_path / "full.yaml"
    save_laws(LawsFile(laws=[law for law in laws.laws if law.method == "full"]), only_full)
    runs = write_synthetic_runs(tmp_path / "r.jsonl", [("full", ()), ("lora", (("rank", 16),))], budgets=[1e16])
    report = laws_check(only_full, [runs])
    assert report.checks and all(c.law == "full" for c in report.checks)
    assert report.unmatched and all("lora(rank=16) has no law" in u for u in report.unmatched)
    lora_only = write_synthetic_runs(tmp_path / "l.jsonl", [("lora", (("rank", 16),))], budgets=[1e16])
    with pytest.raises(UserError, match="no completed run .* has a law"):
        laws_check(only_full, [lora_only])
    with pytest.raises(UserError, match="does not exist"):
        laws_check(tmp_path / "missing.yaml", [tmp_path / "missing.jsonl"])
