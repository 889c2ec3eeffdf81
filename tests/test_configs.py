"""Every shipped config parses, composes, and (slow) trains a step on its real offline backbone."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_embed.cli.main import main

CONFIGS = sorted(p for p in (Path(__file__).parent.parent / "configs").glob("*.yaml"))
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
