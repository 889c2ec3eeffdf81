"""Fixtures shared by the model tests."""

from __future__ import annotations

import pytest

from tests.models.checkpoints import train_checkpoint

LORA = {"name": "lora", "rank": 4}


@pytest.fixture(scope="module")
def lora_run(tiny_backbones, tmp_path_factory):
    """A LoRA checkpoint with FLOP counted and held-out metrics (for the model card)."""
    from lightning_embed.flops.callback import FlopCallback

    root = tmp_path_factory.mktemp("lora_run")
    flops = FlopCallback(runs_file=str(root / "runs.jsonl"))
    # One full epoch (4 batches), so the end-of-epoch validation records held-out metrics.
    ckpt, _ = train_checkpoint(tiny_backbones["gpt_neox"], root, steps=4, tuning=LORA, callbacks=[flops], val=True)
    # LightningCLI saves the run's config beside its checkpoints; the model card names the data from it.
    (root / "config.yaml").write_text(f"data:\n  train: {root / 'pairs.jsonl'}\n  batch_size: 8\n")
    return ckpt
