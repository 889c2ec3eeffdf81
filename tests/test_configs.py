"""Every shipped config parses, composes, and (slow) trains a step on its real offline backbone."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from lightning_embed.cli.app import main
from lightning_embed.flops.records import read_runs

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
TRAINING = [p for p in CONFIGS if p.stem in {"quickstart", "full", "lora", "qlora", "freeze", "bias"}]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code == 0
    assert "backbone:" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("config", TRAINING, ids=lambda p: p.stem)
def test_config_trains_one_step(config, tmp_path):
    main(["fit", "--config", str(config), "--trainer.max_steps=1", "--trainer.limit_val_batches=1",
          "--data.max_val_examples=16", "--data.batch_size=4", "--model.document_max_length=32",
          "--trainer.enable_checkpointing=false", "--trainer.logger=false", "--compare_before_after=false",
          f"--trainer.default_root_dir={tmp_path}", f"--flops.runs_file={tmp_path}/runs.jsonl"])
    shipped = yaml.safe_load(config.read_text())["model"]
    tuning = shipped.get("tuning", "full")
    (record,) = read_runs(tmp_path / "runs.jsonl")
    assert record.status == "completed" and record.steps == 1 and record.examples == 4
    assert record.config["model"]["backbone"] == shipped["backbone"]
    options = {} if isinstance(tuning, str) else {k: v for k, v in tuning.items() if k != "name"}
    assert record.tuning == (tuning if isinstance(tuning, str) else tuning["name"])
    assert options.items() <= record.tuning_args.items()  # the shipped options are the ones trained with
    assert 0 < record.trainable_params <= record.total_params and record.flops_model > 0 and record.tokens > 0
    # One step ends before the end-of-epoch validation; the pass before training measured the held-out loss.
    assert record.val_examples == 4 and math.isfinite(record.initial_val_loss)
