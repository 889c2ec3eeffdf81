"""MTEBCallback (lightning_embed/evaluation/mteb_callback.py): scores logged during training for checkpoint
selection, the global generators handed back untouched, bad tasks refused."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from lightning_embed.errors import UserError
from lightning_embed.evaluation.mteb_callback import MTEBCallback
from tests.evaluation.task_files import jsonl


def test_mteb_callback_logs_scores_for_checkpoint_selection(tiny_backbones, task_files, tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lightning_embed.data.datamodule import PairDataModule
    from lightning_embed.training.module import EmbeddingModule
    from tests.models.checkpoints import write_pairs

    L.seed_everything(0)
    pairs = write_pairs(tmp_path / "train.jsonl", n=16)
    callback = MTEBCallback([f"code=retrieval:{task_files['retrieval']}", f"sts:{task_files['sts']}"])
    keep = ModelCheckpoint(dirpath=tmp_path / "ckpts", monitor="mteb/code", mode="max",
                           filename="{epoch}-{mteb/code:.3f}")
    module = EmbeddingModule(backbone=tiny_backbones["llama"], learning_rate=1e-3, query_max_length=16,
                             document_max_length=24, tuning={"name": "lora", "rank": 4})
    trainer = L.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu", callbacks=[callback, keep])
    trainer.fit(module, datamodule=PairDataModule(train=str(pairs), val=str(pairs), batch_size=8))
    assert trainer.callback_metrics["mteb/code"] == pytest.approx(1.0)
    assert "mteb/sts" in trainer.callback_metrics
    assert keep.best_model_score == pytest.approx(1.0)
    # mteb seeds the global generators; the callback must hand them back untouched.
    before = torch.get_rng_state()
    callback.score(module)
    assert torch.equal(before, torch.get_rng_state())


def test_mteb_callback_rejects_bad_tasks(tmp_path):
    with pytest.raises(UserError, match="local tasks only"):
        MTEBCallback(["BIOSSES"])
    bad = jsonl(tmp_path / "c.jsonl", [{"text": "a", "label": "x"}, {"label": "y"}])
    with pytest.raises(UserError, match="line 2 has no field 'text'"):
        MTEBCallback([f"clustering:{bad}"])
